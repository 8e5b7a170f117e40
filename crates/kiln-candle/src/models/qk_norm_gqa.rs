//! GQA attention with a per-head RMSNorm on q and k before NeoX RoPE (Qwen3,
//! LFM2): one fused q/k/v projection, the norms, rope and the cache write
//! (one launch on kiln's kernels on CUDA), attention, the output projection.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::decoder::Decoder;
use super::layers::{attention, linear, linear_normed, rms_norm, split_qkv, NormedInput};
use super::Kernels;
use crate::error::Result;
use crate::ops;
use crate::ops::rope::QkNormRopeShape;

/// One layer's weights and heads.
#[derive(Debug, Clone)]
pub struct QkNormGqa {
    /// `[q; k; v]` projections stacked: `[(QH + 2·KVH)·HD, H]`.
    qkv: Tensor,
    /// The output projection `[H, QH·HD]`.
    o: Tensor,
    q_norm: Tensor,
    k_norm: Tensor,
    /// Query heads, KV heads, head dim and the norms' eps.
    shape: QkNormRopeShape,
}

/// The checkpoint names of one attention layer (under its `self_attn`).
#[derive(Debug, Clone, Copy)]
pub struct QkNormGqaNames {
    /// Output projection (`o_proj`, LFM2's `out_proj`).
    pub o: &'static str,
    /// Query norm (`q_norm`, LFM2's `q_layernorm`).
    pub q_norm: &'static str,
    /// Key norm (`k_norm`, LFM2's `k_layernorm`).
    pub k_norm: &'static str,
}

impl QkNormGqa {
    /// Loads `q_proj`, `k_proj`, `v_proj` and the `names` under `vb` for hidden size `h`.
    pub fn load(
        vb: &VarBuilder,
        h: usize,
        shape: QkNormRopeShape,
        names: QkNormGqaNames,
    ) -> Result<Self> {
        let QkNormRopeShape { qh, kvh, d: hd, .. } = shape;
        let q = vb.pp("q_proj").get((qh * hd, h), "weight")?;
        let k = vb.pp("k_proj").get((kvh * hd, h), "weight")?;
        let v = vb.pp("v_proj").get((kvh * hd, h), "weight")?;
        Ok(Self {
            qkv: Tensor::cat(&[&q, &k, &v], 0)?,
            o: vb.pp(names.o).get((h, qh * hd), "weight")?,
            q_norm: vb.pp(names.q_norm).get(hd, "weight")?,
            k_norm: vb.pp(names.k_norm).get(hd, "weight")?,
            shape,
        })
    }

    /// Attention of the normed `x[T, H]` at positions `pos..`, writing the
    /// cache `dec.caches[cache]`; `positions` are the rope kernel's i32
    /// positions (kiln only).
    pub fn forward(
        &self,
        dec: &mut Decoder,
        cache: usize,
        x: &NormedInput,
        pos: usize,
        positions: Option<&Tensor>,
    ) -> Result<Tensor> {
        let QkNormRopeShape {
            qh,
            kvh,
            d: hd,
            eps,
        } = self.shape;
        let t = x.rows()?;
        let qkv = linear_normed(x, &self.qkv, None, dec.kernels)?;
        let q = match positions {
            // On CUDA: both norms, rope and the cache write in one launch.
            Some(p) if dec.kernels == Kernels::Kiln && x.device().is_cuda() => {
                let c = &mut dec.caches[cache];
                let q = ops::rope::qk_norm_rope_cache(
                    &qkv,
                    (&self.q_norm, &self.k_norm),
                    dec.rope.tables(),
                    p,
                    c.buffers(),
                    &self.shape,
                )?;
                c.set_len(pos + t);
                q
            }
            _ => {
                let (q, k, v) = split_qkv(&qkv, (qh, kvh, hd))?;
                let q = rms_norm(&q.contiguous()?, &self.q_norm, eps, dec.kernels)?;
                let k = rms_norm(&k.contiguous()?, &self.k_norm, eps, dec.kernels)?;
                let (q, k) = dec.rope.apply(&q, &k, pos, positions, dec.kernels)?;
                dec.caches[cache].append(&k, &v, pos, positions)?;
                q
            }
        };
        let o = attention(
            &q,
            &dec.caches[cache],
            pos,
            1.0 / (hd as f64).sqrt(),
            dec.kernels,
        )?;
        linear(&o, &self.o, dec.kernels)
    }
}
