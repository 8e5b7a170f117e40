//! rope_cache: rope on the q and k heads of a fused qkv projection, q
//! written out, k and v written into the KV cache, in one launch
//! (`kernels/rope_cache.cu`): the attention inputs of models without
//! qk-norm (GLM-4-9B). Bit for bit rope followed by the cache write.

use super::rope::{rope_defines, validate_shape};
use super::{unsupported, OpConfig};
use crate::catalog::Op;
use crate::error::Result;
use crate::reference::rope::RopeShape;
use crate::reference::rope_cache::RopeCacheShape;
use crate::DType;

/// Largest cache the kernel indexes (S_MAX is a launch argument; row offsets are 64-bit).
pub const MAX_S_MAX: usize = 1 << 20;

/// Configuration of rope_cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeCacheConfig {
    /// Heads, rope math and cache length (shared with the reference).
    pub shape: RopeCacheShape,
    /// Storage dtype.
    pub dtype: DType,
}

impl RopeCacheConfig {
    /// `rope` (its `kh` being the key/value heads) with caches of `s_max` positions.
    pub fn new(rope: RopeShape, s_max: usize, dtype: DType) -> Self {
        Self {
            shape: RopeCacheShape { rope, s_max },
            dtype,
        }
    }

    /// GLM-4-9B: 32 query heads, 2 KV heads, head dim 128, the first 64
    /// values of each head rotated on adjacent pairs, base 10000 · 500.
    pub fn glm4_9b(s_max: usize, dtype: DType) -> Self {
        Self::new(
            RopeShape {
                qh: 32,
                kh: 2,
                head_dim: 128,
                rot_dim: 64,
                rot_offset: 0,
                interleaved: true,
                theta: 5e6,
                hf_rounding: true,
            },
            s_max,
            dtype,
        )
    }
}

impl OpConfig for RopeCacheConfig {
    const OP: Op = Op::RopeCache;
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn validate(&self) -> Result<()> {
        let op = "rope_cache";
        let RopeCacheShape { rope: s, s_max } = self.shape;
        validate_shape(op, &s)?;
        // One thread per 8 values of every q, k and v head of a token.
        if s.kh == 0 || (s.qh + 2 * s.kh) * s.head_dim / 8 > 1024 {
            return Err(unsupported(
                op,
                format!(
                    "QH={}, KVH={}, HEAD_DIM={}: need KVH >= 1 and (QH + 2 KVH)·HEAD_DIM/8 <= 1024",
                    s.qh, s.kh, s.head_dim
                ),
            ));
        }
        if s_max == 0 || s_max > MAX_S_MAX {
            return Err(unsupported(
                op,
                format!("S_MAX={s_max} is not in 1..={MAX_S_MAX}"),
            ));
        }
        Ok(())
    }
    /// S_MAX is not a define: the kernel takes it as an argument.
    fn op_defines(&self) -> Vec<(String, String)> {
        let s = &self.shape.rope;
        let mut d = vec![
            ("KILN_QH".into(), s.qh.to_string()),
            ("KILN_KVH".into(), s.kh.to_string()),
        ];
        d.extend(rope_defines(s));
        d
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        let s = &self.shape.rope;
        vec![
            ("QH", s.qh as i64),
            ("KVH", s.kh as i64),
            ("HEAD_DIM", s.head_dim as i64),
            ("ROT_DIM", s.rot_dim as i64),
            ("ROT_OFFSET", s.rot_offset as i64),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::rope::RopeConfig;

    /// One block per token, one thread per 8 values of every q, k and v head,
    /// rounded up to a warp.
    #[test]
    fn the_launch_line_gives_one_thread_per_unit_per_token() {
        let mut odd = RopeCacheConfig::glm4_9b(1024, DType::F32);
        odd.shape.rope.qh = 3;
        odd.shape.rope.kh = 1;
        odd.shape.rope.head_dim = 64;
        for c in [RopeCacheConfig::glm4_9b(1024, DType::BF16), odd] {
            let s = c.shape.rope;
            let threads = ((s.qh + 2 * s.kh) * s.head_dim / 8).div_ceil(32) * 32;
            for t in [1, 7, 32] {
                let dims = c.launch_dims(t, 132).expect("dims");
                assert_eq!(dims.grid, (t as u32, 1, 1));
                assert_eq!(dims.block, (threads as u32, 1, 1));
                assert_eq!(dims.smem, 0);
            }
            assert!(c.build().is_ok());
        }
    }

    /// The rope defines are rope's, so both kernels build the same inv_freq
    /// and cos/sin from the same literals.
    #[test]
    fn shares_the_rope_defines() {
        let c = RopeCacheConfig::glm4_9b(1024, DType::BF16);
        let r = RopeConfig {
            shape: c.shape.rope,
            dtype: DType::BF16,
        };
        let rope_only = |d: Vec<(String, String)>| -> Vec<(String, String)> {
            d.into_iter().filter(|(k, _)| k != "KILN_KH").collect()
        };
        let mine: Vec<_> = c
            .op_defines()
            .into_iter()
            .filter(|(k, _)| k != "KILN_KVH")
            .collect();
        assert_eq!(mine, rope_only(r.op_defines()));
    }

    /// Shapes the kernel cannot hold are refused with a typed error naming the dimension.
    #[test]
    fn refuses_what_it_cannot_hold() {
        let base = RopeCacheConfig::glm4_9b(1024, DType::BF16);
        let with = |f: &dyn Fn(&mut RopeCacheConfig)| {
            let mut c = base;
            f(&mut c);
            c.validate().map_err(|e| e.to_string())
        };
        assert!(with(&|_| {}).is_ok());
        let e = with(&|c| c.shape.rope.kh = 0).unwrap_err();
        assert!(e.contains("rope_cache") && e.contains("KVH=0"), "{e}");
        let e = with(&|c| c.shape.rope.qh = 64).unwrap_err();
        assert!(e.contains("<= 1024"), "{e}");
        let e = with(&|c| c.shape.rope.rot_dim = 60).unwrap_err();
        assert!(e.contains("ROT_DIM=60"), "{e}");
        let e = with(&|c| c.shape.rope.rot_offset = 128).unwrap_err();
        assert!(e.contains("rotary slice"), "{e}");
        let e = with(&|c| c.shape.s_max = 0).unwrap_err();
        assert!(e.contains("S_MAX=0"), "{e}");
    }
}
