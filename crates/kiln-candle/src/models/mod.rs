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
pub mod kv_cache;
pub mod layers;
pub mod moe;
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
    /// Runs `ids` at positions `pos..pos+len` and returns the logits of the last one (f32, `[vocab]`).
    fn forward(&mut self, ids: &[u32], pos: usize) -> Result<Tensor>;
    /// Forgets the KV cache.
    fn reset(&mut self);
    /// The device it runs on.
    fn device(&self) -> &Device;
}
