//! qk_norm_rope_cache: the attention inputs of Qwen3 and LFM2 in one launch
//! (`kernels/qk_norm_rope_cache.cu`).

use super::{unsupported, OpConfig};
use crate::catalog::Op;
use crate::error::Result;
use crate::reference::qk_norm_rope::QkNormRopeShape;
use crate::DType;

/// Configuration of qk_norm_rope_cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QkNormRopeConfig {
    /// Heads, head dim, eps and cache length (shared with the reference).
    pub shape: QkNormRopeShape,
    /// Storage dtype.
    pub dtype: DType,
}

impl QkNormRopeConfig {
    /// `qh` query and `kvh` key/value heads of dim `d`, qk-norm `eps`,
    /// caches of `s_max` positions.
    pub fn new(qh: usize, kvh: usize, d: usize, eps: f64, s_max: usize, dtype: DType) -> Self {
        Self {
            shape: QkNormRopeShape {
                qh,
                kvh,
                d,
                eps,
                s_max,
            },
            dtype,
        }
    }

    /// Qwen3-30B-A3B: 32 query heads, 4 KV heads, dim 128, eps 1e-6.
    pub fn qwen3_30b_a3b(s_max: usize, dtype: DType) -> Self {
        Self::new(32, 4, 128, 1e-6, s_max, dtype)
    }

    /// LFM2-8B-A1B's attention layers: 32 query heads, 8 KV heads, dim 64, eps 1e-5.
    pub fn lfm2_8b_a1b(s_max: usize, dtype: DType) -> Self {
        Self::new(32, 8, 64, 1e-5, s_max, dtype)
    }
}

impl OpConfig for QkNormRopeConfig {
    const OP: Op = Op::QkNormRopeCache;
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn validate(&self) -> Result<()> {
        let QkNormRopeShape {
            qh,
            kvh,
            d,
            eps,
            s_max,
        } = self.shape;
        let op = "qk_norm_rope_cache";
        if !matches!(d, 64 | 128 | 256) {
            return Err(unsupported(op, format!("D={d} is not 64, 128 or 256")));
        }
        if qh == 0 || kvh == 0 || (qh + 2 * kvh) * d / 8 > 1024 {
            return Err(unsupported(
                op,
                format!("QH={qh}, KVH={kvh}: need both >= 1 and (QH + 2 KVH)·D/8 <= 1024"),
            ));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(unsupported(
                op,
                format!("eps {eps} is not a positive number"),
            ));
        }
        if s_max == 0 || s_max > 1 << 20 {
            return Err(unsupported(op, format!("S_MAX={s_max} is not in 1..=2^20")));
        }
        Ok(())
    }
    /// S_MAX is not a define: the kernel takes it as an argument.
    fn op_defines(&self) -> Vec<(String, String)> {
        vec![
            ("KILN_QH".into(), self.shape.qh.to_string()),
            ("KILN_KVH".into(), self.shape.kvh.to_string()),
            ("KILN_D".into(), self.shape.d.to_string()),
            (
                "KILN_EPS".into(),
                crate::catalog::float_literal(self.shape.eps),
            ),
        ]
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        vec![
            ("QH", self.shape.qh as i64),
            ("KVH", self.shape.kvh as i64),
            ("D", self.shape.d as i64),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The launch line gives what the kernel's layout needs: one block per
    /// token, D/8 lanes per head for every q, k and v head, rounded up to a
    /// warp (the launch kiln-candle made by hand before it was a catalog op).
    #[test]
    fn the_launch_line_gives_d_over_8_lanes_per_head_per_token() {
        for c in [
            QkNormRopeConfig::qwen3_30b_a3b(1024, DType::BF16),
            QkNormRopeConfig::lfm2_8b_a1b(2048, DType::BF16),
            QkNormRopeConfig::new(8, 2, 256, 1e-6, 1024, DType::F32),
        ] {
            let s = c.shape;
            let threads = ((s.qh + 2 * s.kvh) * s.d / 8).div_ceil(32) * 32;
            for t in [1, 7, 32] {
                let dims = c.launch_dims(t, 132).expect("dims");
                assert_eq!(dims.grid, (t as u32, 1, 1));
                assert_eq!(dims.block, (threads as u32, 1, 1));
                assert_eq!(dims.smem, 0);
            }
            assert!(c.build().is_ok());
        }
        // Shapes the kernel cannot hold are refused, naming the dimension.
        let big = QkNormRopeConfig::new(64, 32, 128, 1e-6, 1024, DType::BF16);
        assert!(big.validate().is_err());
        let odd = QkNormRopeConfig::new(8, 2, 96, 1e-6, 1024, DType::BF16);
        assert!(odd.validate().unwrap_err().to_string().contains("D=96"));
    }
}
