//! The skeleton every kiln decoder shares: embeddings, KV caches, rotary
//! tables, the layer loop with each residual add fused into the next RMSNorm,
//! the final norm and the output projection. A model supplies its layers
//! through [`DecoderStack`] and gets [`DecodeModel`] from it.

use candle_core::{DType, Device, Tensor};

use super::kv_cache::KvCache;
use super::layers::{add_rms_norm, linear, rms_norm, RopeTables};
use super::{DecodeModel, Kernels};
use crate::error::{Error, Result};

/// What every decoder holds besides its layers.
#[derive(Debug)]
pub struct Decoder {
    /// Token embeddings `[vocab, H]`.
    pub embed: Tensor,
    /// The final RMSNorm weight (None: no final norm).
    pub norm: Option<Tensor>,
    /// The output projection `[vocab, H]`.
    pub lm_head: Tensor,
    /// The RMSNorm eps of the hidden-size norms.
    pub eps: f64,
    /// Rotary tables (and the shape kiln's rope kernel takes).
    pub rope: RopeTables,
    /// One KV cache per layer.
    pub caches: Vec<KvCache>,
    /// Which ops the model runs on.
    pub kernels: Kernels,
    /// The device of every tensor above.
    pub device: Device,
}

/// What differs between the pre-norm decoders kiln implements.
pub trait DecoderStack {
    /// The shared parts.
    fn decoder(&self) -> &Decoder;
    /// The shared parts, mutably (the caches).
    fn decoder_mut(&mut self) -> &mut Decoder;
    /// Number of decoder layers.
    fn layer_count(&self) -> usize;
    /// Layer `l`'s input and post-attention RMSNorm weights.
    fn norms(&self, l: usize) -> (Tensor, Tensor);
    /// Layer `l`'s attention on the normed `x` at positions `pos..` (writes its
    /// cache); `positions` are the rope kernel's i32 positions (kiln only).
    fn attention(
        &mut self,
        l: usize,
        x: &Tensor,
        pos: usize,
        positions: Option<&Tensor>,
    ) -> Result<Tensor>;
    /// Layer `l`'s MLP or MoE on the normed `x`.
    fn feed_forward(&self, l: usize, x: &Tensor) -> Result<Tensor>;
}

impl<M: DecoderStack> DecodeModel for M {
    fn forward(&mut self, ids: &[u32], pos: usize) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(Error::Config("forward needs at least one token".into()));
        }
        let d = self.decoder();
        let (eps, k) = (d.eps, d.kernels);
        // The rope kernel's positions: one upload per step, not per layer.
        let positions = match k {
            Kernels::Kiln => Some(d.rope.positions(pos, ids.len(), &d.device)?),
            Kernels::Candle => None,
        };
        let mut residual = d.embed.index_select(&Tensor::new(ids, &d.device)?, 0)?;
        let mut delta: Option<Tensor> = None;
        for l in 0..self.layer_count() {
            let (ln1, ln2) = self.norms(l);
            let (n, h) = match delta.take() {
                None => (rms_norm(&residual, &ln1, eps, k)?, residual.clone()),
                Some(d) => add_rms_norm(&d, &residual, &ln1, eps, k)?,
            };
            let a = self.attention(l, &n, pos, positions.as_ref())?;
            let (n2, h2) = add_rms_norm(&a, &h, &ln2, eps, k)?;
            delta = Some(self.feed_forward(l, &n2)?);
            residual = h2;
        }
        let d = self.decoder();
        let n = match (delta, d.norm.as_ref()) {
            (Some(x), Some(w)) => add_rms_norm(&x, &residual, w, eps, k)?.0,
            (None, Some(w)) => rms_norm(&residual, w, eps, k)?,
            (Some(x), None) => (x + residual)?,
            (None, None) => residual,
        };
        let last = n.narrow(0, n.dim(0)? - 1, 1)?;
        Ok(linear(&last, &d.lm_head)?
            .to_dtype(DType::F32)?
            .squeeze(0)?)
    }

    fn reset(&mut self) {
        for c in &mut self.decoder_mut().caches {
            c.reset();
        }
    }

    fn device(&self) -> &Device {
        &self.decoder().device
    }
}
