//! Model implementations on kiln's ops or plain candle ops, plus candle's
//! own models (the stock baselines) behind the same decode interface.
//!
//! Every model reads its dims from `config.json` ([`config`]) and its weights
//! through a candle `VarBuilder` (a checkpoint's safetensors, or
//! [`crate::synth`]'s generator), decodes at batch 1 with a KV cache, and
//! returns the last position's logits in f32.

pub mod config;
pub mod decoder;
pub mod glm4;
pub mod glm4_moe_lite;
pub mod graph;
pub mod kv_cache;
pub mod layers;
pub mod lfm2_moe;
pub mod moe;
pub mod qk_norm_gqa;
pub mod qwen3_moe;
pub mod stock;

use candle_core::{Device, Tensor};

use crate::error::Result;

/// Which implementation a kiln model runs its ops on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// kiln's catalog kernels (and, with a pack, discovered ones).
    Kiln,
    /// Plain candle ops: the baseline where candle has no such model.
    Candle,
}

/// A causal LM that decodes at batch 1.
pub trait DecodeModel {
    /// Runs `ids` at positions `pos..pos+len` and returns the logits of the
    /// last one (f32, `[vocab]`). With graph decode on, a single token's
    /// logits live in the graph's output buffer: read them before the next call.
    fn forward(&mut self, ids: &[u32], pos: usize) -> Result<Tensor>;
    /// Turns graph decode on (single-token steps replay one captured CUDA
    /// graph) or off (every op launched from the host).
    fn set_graph_decode(&mut self, on: bool) -> Result<()> {
        match on {
            true => Err(crate::Error::Config(
                "this model has no graph decode; it decodes eagerly".into(),
            )),
            false => Ok(()),
        }
    }
    /// Whether graph decode is on.
    fn graph_decode(&self) -> bool {
        false
    }
    /// Forgets the KV cache and any other state a step leaves (LFM2's
    /// convolution rows), in place.
    fn reset(&mut self) -> Result<()>;
    /// The device it runs on.
    fn device(&self) -> &Device;
}

/// Turns candle's cross-stream event tracking off for every tensor made on
/// `dev` from now on. kiln decodes on one stream, so the tracking is pure
/// overhead (an event per tensor access), and a graph cannot be captured
/// with it: call this before building a kiln model.
pub fn single_stream(dev: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        // SAFETY: kiln uses every tensor it makes afterwards on this one stream.
        unsafe { d.disable_event_tracking() }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = dev;
}
