//! rope_cache reference: rope on the q and k heads of a fused qkv row, q
//! written out, rotated k and raw v written into the KV cache at each token's
//! position (see `kernels/rope_cache.cu`). The rotation is
//! [`super::rope::rope`]'s, so this is rope followed by the cache write.

use super::rope::{rope, RopeShape};
use crate::DType;

/// The heads, rope and cache length of one rope_cache step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeCacheShape {
    /// Heads and rope math; `rope.kh` is the number of key/value heads (>= 1).
    pub rope: RopeShape,
    /// Cache positions (`[KVH, S_MAX, HEAD_DIM]` caches).
    pub s_max: usize,
}

impl RopeCacheShape {
    /// Values in one token's qkv row: `(QH + 2 KVH) · HEAD_DIM`.
    pub fn row_len(&self) -> usize {
        (self.rope.qh + 2 * self.rope.kh) * self.rope.head_dim
    }
}

/// `(q_out[T,QH,HEAD_DIM], k_cache, v_cache)` for `qkv[T, (QH + 2 KVH)·HEAD_DIM]`
/// at `positions[T]`: the caches are `k_cache`, `v_cache` as given with the
/// rows at each position in `0..S_MAX` overwritten (q is rotated at every position).
pub fn rope_cache(
    qkv: &[f64],
    positions: &[i64],
    k_cache: &[f64],
    v_cache: &[f64],
    s: RopeCacheShape,
    dtype: DType,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (qh, kvh, hd) = (s.rope.qh, s.rope.kh, s.rope.head_dim);
    let row = s.row_len();
    let mut q_out = Vec::with_capacity(positions.len() * qh * hd);
    let (mut kc, mut vc) = (k_cache.to_vec(), v_cache.to_vec());
    for (t, &p) in positions.iter().enumerate() {
        let x = &qkv[t * row..(t + 1) * row];
        let (q, rest) = x.split_at(qh * hd);
        let (k, v) = rest.split_at(kvh * hd);
        q_out.extend(rope(q, qh, &[p], &s.rope, dtype));
        let Ok(p) = usize::try_from(p) else { continue };
        if p >= s.s_max {
            continue;
        }
        let k = rope(k, kvh, &[p as i64], &s.rope, dtype);
        for g in 0..kvh {
            let at = (g * s.s_max + p) * hd;
            kc[at..at + hd].copy_from_slice(&k[g * hd..(g + 1) * hd]);
            vc[at..at + hd].copy_from_slice(&v[g * hd..(g + 1) * hd]);
        }
    }
    (q_out, kc, vc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic dtype-representable values (a fixed LCG, no RNG dependency).
    fn values(n: usize, seed: u64, dtype: DType) -> Vec<f64> {
        let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                z = z
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                dtype.round(((z >> 11) as f64 / (1u64 << 53) as f64) * 6.0 - 3.0)
            })
            .collect()
    }

    /// What the models ran before the fusion, written independently: the
    /// qkv row split into q, k and v, `reference::rope::rope` on q and on k
    /// (every token at once), then the cache write (`KvCache::append`'s rows:
    /// cache[g, p, :] = new[t, g, :]) at each in-range position.
    fn rope_then_write(
        qkv: &[f64],
        positions: &[i64],
        k_cache: &[f64],
        v_cache: &[f64],
        s: RopeCacheShape,
        dtype: DType,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (qh, kvh, hd) = (s.rope.qh, s.rope.kh, s.rope.head_dim);
        let row = s.row_len();
        let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for x in qkv.chunks(row) {
            q.extend_from_slice(&x[..qh * hd]);
            k.extend_from_slice(&x[qh * hd..(qh + kvh) * hd]);
            v.extend_from_slice(&x[(qh + kvh) * hd..]);
        }
        let q = rope(&q, qh, positions, &s.rope, dtype);
        let k = rope(&k, kvh, positions, &s.rope, dtype);
        let (mut kc, mut vc) = (k_cache.to_vec(), v_cache.to_vec());
        for (t, &p) in positions.iter().enumerate() {
            if p < 0 || p as usize >= s.s_max {
                continue;
            }
            for g in 0..kvh {
                for d in 0..hd {
                    let (new, at) = ((t * kvh + g) * hd + d, (g * s.s_max + p as usize) * hd + d);
                    kc[at] = k[new];
                    vc[at] = v[new];
                }
            }
        }
        (q, kc, vc)
    }

    fn shape(qh: usize, kvh: usize, hd: usize, rot: usize, off: usize, il: bool) -> RopeShape {
        RopeShape {
            qh,
            kh: kvh,
            head_dim: hd,
            rot_dim: rot,
            rot_offset: off,
            interleaved: il,
            theta: 5e6,
            hf_rounding: true,
        }
    }

    /// The fused reference is bit for bit rope followed by the cache write:
    /// GLM-4-9B's heads (partial interleaved), rotate-half, an offset slice,
    /// f32 math, every dtype, decode and prefill rows, and positions outside
    /// the cache (q still rotated, no cache row written).
    #[test]
    fn is_rope_then_the_cache_write_bit_for_bit() {
        let shapes = [
            shape(32, 2, 128, 64, 0, true),
            shape(4, 2, 64, 64, 0, false),
            shape(3, 1, 32, 16, 8, true),
            shape(3, 1, 32, 16, 16, false),
            RopeShape {
                hf_rounding: false,
                theta: 1e4,
                ..shape(2, 1, 16, 8, 0, false)
            },
        ];
        let position_sets: [&[i64]; 4] = [&[0], &[37], &[5, 6, 7], &[-1, 8, 63, 64]];
        for (n, rs) in shapes.into_iter().enumerate() {
            for dtype in DType::ALL {
                for (m, &positions) in position_sets.iter().enumerate() {
                    let s = RopeCacheShape {
                        rope: rs,
                        s_max: 64,
                    };
                    let t = positions.len();
                    let seed = (n * 16 + m) as u64;
                    let qkv = values(t * s.row_len(), seed, dtype);
                    let cache_len = rs.kh * s.s_max * rs.head_dim;
                    let kc = values(cache_len, seed + 1000, dtype);
                    let vc = values(cache_len, seed + 2000, dtype);
                    let fused = rope_cache(&qkv, positions, &kc, &vc, s, dtype);
                    let split = rope_then_write(&qkv, positions, &kc, &vc, s, dtype);
                    let same = |a: &[f64], b: &[f64]| {
                        a.len() == b.len()
                            && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
                    };
                    let what = format!("{rs:?} {dtype} at {positions:?}");
                    assert!(same(&fused.0, &split.0), "q: {what}");
                    assert!(same(&fused.1, &split.1), "k cache: {what}");
                    assert!(same(&fused.2, &split.2), "v cache: {what}");
                }
            }
        }
    }

    /// Out-of-range positions leave both caches exactly as they were, and
    /// in-range ones touch only their own row.
    #[test]
    fn writes_only_the_rows_of_in_range_positions() {
        let s = RopeCacheShape {
            rope: shape(2, 1, 16, 8, 0, true),
            s_max: 4,
        };
        let qkv = values(2 * s.row_len(), 7, DType::BF16);
        let old = vec![0.25; 4 * 16];
        let (_, k, v) = rope_cache(&qkv, &[-3, 4], &old, &old, s, DType::BF16);
        assert_eq!((&k, &v), (&old, &old));
        let (_, k, v) = rope_cache(&qkv[..s.row_len()], &[2], &old, &old, s, DType::BF16);
        for (c, what) in [(&k, "k"), (&v, "v")] {
            assert_eq!(c[..32], old[..32], "{what}: rows 0, 1");
            assert_eq!(c[48..], old[48..], "{what}: row 3");
        }
        // v is the qkv row's v head, unchanged.
        assert_eq!(v[32..48], qkv[3 * 16..4 * 16]);
    }
}
