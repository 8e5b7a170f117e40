//! decode_attention: causal GQA attention of `T` new query tokens over a
//! head-major KV cache that already holds positions `0..past+T`.
//!
//! Casting: f32 scores, softmax and PV sum, one rounding at the output. HF
//! eager rounds the scores and probabilities to the model dtype, so it can
//! differ by a few dtype ulps (see `reference::attention`).

use kiln_cuda::{CudaSlice, Gpu, PushKernelArg};

use super::{check_len, launched, unsupported, Loaded, OpConfig};
use crate::catalog::{float_literal, Op};
use crate::error::Result;
use crate::reference::attention::AttentionShape;
use crate::{DType, Element};

/// Largest cache accepted: the limit of the one-block-per-head kernel (S_MAX
/// f32 scores plus 8 KiB of partial sums in the H100's 227 KiB of opt-in
/// shared memory). Each of the 8 blocks of a cluster now keeps S_MAX/8 scores,
/// so the limit could rise; it stays until longer caches are tested.
pub const MAX_S_MAX: usize = 49_152;

/// Positions kiln's models allocate their KV cache in multiples of. The
/// cache capacity is the kernel's `S_MAX`, a define: rounding every run up to
/// a multiple makes one build serve every run of up to that many positions,
/// so a searched kernel for `S_MAX = KV_CACHE_STEP` is the one a model runs.
pub const KV_CACHE_STEP: usize = 1024;

/// The KV cache capacity a model allocates to hold `positions` positions:
/// the next multiple of [`KV_CACHE_STEP`] (at least one step).
pub fn cache_positions(positions: usize) -> usize {
    positions.max(1).next_multiple_of(KV_CACHE_STEP)
}

/// Configuration of decode_attention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeAttentionConfig {
    /// Shape and scale (shared with the reference).
    pub shape: AttentionShape,
    /// Storage dtype.
    pub dtype: DType,
}

impl DecodeAttentionConfig {
    /// Equal q/k and v head dims, scale `head_dim^-0.5`.
    pub fn new(qh: usize, kvh: usize, head_dim: usize, s_max: usize, dtype: DType) -> Self {
        Self {
            shape: AttentionShape {
                qh,
                kvh,
                dqk: head_dim,
                dv: head_dim,
                s_max,
                scale: (head_dim as f64).powf(-0.5),
            },
            dtype,
        }
    }

    /// Qwen3-30B-A3B: 32 query heads, 4 kv heads, head dim 128.
    pub fn qwen3_30b_a3b(s_max: usize, dtype: DType) -> Self {
        Self::new(32, 4, 128, s_max, dtype)
    }

    /// GLM-4.7-Flash with MLA decompressed: 20 heads, q/k dim 256 (192 nope +
    /// 64 rope), v dim 256, scale 256^-0.5.
    pub fn glm47_flash(s_max: usize, dtype: DType) -> Self {
        Self::new(20, 20, 256, s_max, dtype)
    }

    /// GLM-4-9B: 32 query heads, 2 kv heads, head dim 128.
    pub fn glm4_9b(s_max: usize, dtype: DType) -> Self {
        Self::new(32, 2, 128, s_max, dtype)
    }

    /// LFM2-8B-A1B attention layers: 32 query heads, 8 kv heads, head dim 64.
    pub fn lfm2_8b_a1b(s_max: usize, dtype: DType) -> Self {
        Self::new(32, 8, 64, s_max, dtype)
    }
}

impl OpConfig for DecodeAttentionConfig {
    const OP: Op = Op::DecodeAttention;
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn validate(&self) -> Result<()> {
        let s = &self.shape;
        let op = "decode_attention";
        if s.qh == 0 || s.kvh == 0 || s.qh % s.kvh != 0 || s.qh > 4096 {
            return Err(unsupported(
                op,
                format!(
                    "QH={} KVH={}: need 1 <= KVH, QH a multiple of KVH, QH <= 4096",
                    s.qh, s.kvh
                ),
            ));
        }
        for (name, v, max) in [("DQK", s.dqk, 1024), ("DV", s.dv, 2048)] {
            if v == 0 || v % 8 != 0 || v > max {
                return Err(unsupported(
                    op,
                    format!("{name}={v} is not a multiple of 8 in 8..={max}"),
                ));
            }
        }
        if s.s_max == 0 || s.s_max > MAX_S_MAX {
            return Err(unsupported(
                op,
                format!("S_MAX={} is outside 1..={MAX_S_MAX}", s.s_max),
            ));
        }
        if !(s.scale.is_finite() && s.scale > 0.0 && (s.scale as f32).is_normal()) {
            return Err(unsupported(
                op,
                format!("SCALE={} must be a positive normal f32", s.scale),
            ));
        }
        Ok(())
    }
    fn op_defines(&self) -> Vec<(String, String)> {
        let s = &self.shape;
        vec![
            ("KILN_QH".into(), s.qh.to_string()),
            ("KILN_KVH".into(), s.kvh.to_string()),
            ("KILN_DQK".into(), s.dqk.to_string()),
            ("KILN_DV".into(), s.dv.to_string()),
            ("KILN_S_MAX".into(), s.s_max.to_string()),
            ("KILN_SCALE".into(), float_literal(s.scale)),
        ]
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        let s = &self.shape;
        vec![
            ("QH", s.qh as i64),
            ("KVH", s.kvh as i64),
            ("DQK", s.dqk as i64),
            ("DV", s.dv as i64),
            ("S_MAX", s.s_max as i64),
        ]
    }
}

impl Loaded<DecodeAttentionConfig> {
    /// `out[T,QH,DV]`: token `t` (at position `past + t`) attends to cache
    /// positions `0..=past+t`. Needs `past + T <= S_MAX` (the caches hold
    /// `[KVH, S_MAX, D]`, positions `0..past+T` written).
    #[allow(clippy::too_many_arguments)]
    pub fn launch<S: Element>(
        &self,
        gpu: &Gpu,
        q: &CudaSlice<S>,
        k_cache: &CudaSlice<S>,
        v_cache: &CudaSlice<S>,
        out: &mut CudaSlice<S>,
        t: usize,
        past: usize,
    ) -> Result<()> {
        self.check_dtype::<S>()?;
        let s = self.config.shape;
        let op = "decode_attention";
        check_len(op, "q", q.len(), t * s.qh * s.dqk)?;
        check_len(op, "k_cache", k_cache.len(), s.kvh * s.s_max * s.dqk)?;
        check_len(op, "v_cache", v_cache.len(), s.kvh * s.s_max * s.dv)?;
        check_len(op, "out", out.len(), t * s.qh * s.dv)?;
        if past.saturating_add(t) > s.s_max {
            return Err(unsupported(
                op,
                format!("past={past} + T={t} exceeds the cache (S_MAX={})", s.s_max),
            ));
        }
        let (cfg, t) = self.prepare(gpu, t)?;
        // past < S_MAX <= MAX_S_MAX: fits an int.
        let past = past as i32;
        let mut b = gpu.stream().launch_builder(self.kernel().function());
        b.arg(q)
            .arg(k_cache)
            .arg(v_cache)
            .arg(out)
            .arg(&t)
            .arg(&past);
        // SAFETY: signature matches; buffer lengths and past + T <= S_MAX checked above.
        launched(unsafe { b.launch(cfg) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_dims() {
        let c = DecodeAttentionConfig::qwen3_30b_a3b(4096, DType::BF16);
        c.validate().expect("valid");
        let d = c.launch_dims(3, 132).expect("dims");
        // 96 (token, head) pairs: 4 blocks each (512 / 96 = 5), each scoring a
        // quarter of the cache.
        assert_eq!(d.grid, (3 * 32 * 4, 1, 1));
        assert_eq!(d.smem, 4096 / 4 * 4);
        // One pair: 8 blocks; 512 pairs and more: one block each.
        assert_eq!(c.launch_dims(1, 132).expect("dims").grid, (32 * 8, 1, 1));
        assert_eq!(c.launch_dims(16, 132).expect("dims").grid, (16 * 32, 1, 1));
        assert_eq!(c.launch_dims(16, 132).expect("dims").smem, 4096 * 4);
        // GLM-4.7-Flash's 20 heads: 20 pairs, 8 blocks each; 3 tokens (60 pairs)
        // 8 each; 13 tokens (260 pairs) one each, the grid padded to 264.
        let glm = DecodeAttentionConfig::glm47_flash(4096, DType::BF16);
        assert_eq!(glm.launch_dims(1, 132).expect("dims").grid, (160, 1, 1));
        assert_eq!(glm.launch_dims(3, 132).expect("dims").grid, (480, 1, 1));
        assert_eq!(glm.launch_dims(13, 132).expect("dims").grid, (264, 1, 1));
        assert_eq!(
            c.op_defines().last().map(|(_, v)| v.as_str()),
            Some("8.8388346e-2f")
        );
        let bad = DecodeAttentionConfig::new(32, 5, 128, 4096, DType::BF16);
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "decode_attention: QH=32 KVH=5: need 1 <= KVH, QH a multiple of KVH, QH <= 4096"
        );
        let odd = DecodeAttentionConfig::new(4, 4, 100, 64, DType::BF16);
        assert!(odd.validate().unwrap_err().to_string().contains("DQK=100"));
        let huge = DecodeAttentionConfig::new(4, 4, 64, MAX_S_MAX + 1, DType::BF16);
        assert!(huge.validate().unwrap_err().to_string().contains("S_MAX="));
        let mut nan = c;
        nan.shape.scale = f64::NAN;
        assert!(nan.validate().unwrap_err().to_string().contains("SCALE"));
        for preset in [
            DecodeAttentionConfig::glm47_flash(512, DType::F32),
            DecodeAttentionConfig::glm4_9b(4096, DType::F16),
            DecodeAttentionConfig::lfm2_8b_a1b(4096, DType::BF16),
        ] {
            preset.validate().expect("valid");
        }
    }
}
