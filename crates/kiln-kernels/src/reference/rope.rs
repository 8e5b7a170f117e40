//! rope reference.

use super::f32r;
use crate::DType;

/// Static configuration of rope.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeShape {
    /// Query heads.
    pub qh: usize,
    /// Key heads (0: no k).
    pub kh: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Rotated values per head.
    pub rot_dim: usize,
    /// Where the rotated slice starts inside a head.
    pub rot_offset: usize,
    /// Adjacent pairs (GLM/DeepSeek) instead of NeoX rotate-half.
    pub interleaved: bool,
    /// RoPE base.
    pub theta: f64,
    /// Round cos/sin, each product and the sum to the dtype, as HF eager does.
    pub hf_rounding: bool,
}

/// `(cos, sin)` of pair `i` at `pos`, with the f32 steps HF uses to build them.
pub fn angle(pos: i64, i: usize, shape: &RopeShape) -> (f64, f64) {
    let exponent = f32r((2 * i) as f64 / shape.rot_dim as f64);
    let inv_freq = f32r(1.0 / f32r(f32r(shape.theta).powf(exponent)));
    let a = f32r(f32r(pos as f64) * inv_freq);
    (a.cos(), a.sin())
}

/// Applies rope to one tensor `x[T, heads, head_dim]`.
pub fn rope(
    x: &[f64],
    heads: usize,
    positions: &[i64],
    shape: &RopeShape,
    dtype: DType,
) -> Vec<f64> {
    let hd = shape.head_dim;
    let half = shape.rot_dim / 2;
    let mut out = x.to_vec();
    for (t, &pos) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = (t * heads + h) * hd + shape.rot_offset;
            for i in 0..half {
                let (mut c, mut s) = angle(pos, i, shape);
                let (p1, p2) = if shape.interleaved {
                    (base + 2 * i, base + 2 * i + 1)
                } else {
                    (base + i, base + half + i)
                };
                let (x1, x2) = (x[p1], x[p2]);
                let (y1, y2) = if shape.hf_rounding {
                    c = dtype.round(c);
                    s = dtype.round(s);
                    let r = |v: f64| dtype.round(v);
                    (r(x1 * c) - r(x2 * s), r(x2 * c) + r(x1 * s))
                } else {
                    (x1 * c - x2 * s, x2 * c + x1 * s)
                };
                out[p1] = dtype.round(y1);
                out[p2] = dtype.round(y2);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(interleaved: bool) -> RopeShape {
        RopeShape {
            qh: 2,
            kh: 1,
            head_dim: 16,
            rot_dim: 8,
            rot_offset: 8,
            interleaved,
            theta: 10000.0,
            hf_rounding: false,
        }
    }

    #[test]
    fn position_zero_is_identity() {
        for il in [false, true] {
            let x: Vec<f64> = (0..32).map(|i| i as f64 - 7.5).collect();
            assert_eq!(rope(&x, 2, &[0], &shape(il), DType::F32), x);
        }
    }

    #[test]
    fn preserves_pair_norms_and_copies_the_rest() {
        for il in [false, true] {
            let sh = shape(il);
            let x: Vec<f64> = (0..64).map(|i| ((i * 37) % 11) as f64 - 5.0).collect();
            let y = rope(&x, 2, &[5, 1234], &sh, DType::F32);
            for head in 0..4 {
                let b = head * 16;
                assert_eq!(&y[b..b + 8], &x[b..b + 8], "non-rotary dims copied");
                let n0: f64 = x[b + 8..b + 16].iter().map(|v| v * v).sum();
                let n1: f64 = y[b + 8..b + 16].iter().map(|v| v * v).sum();
                assert!((n0 - n1).abs() < 1e-4 * n0.max(1.0));
            }
        }
    }

    #[test]
    fn first_pair_rotates_by_the_position() {
        // Pair 0 has inv_freq 1: angle = pos.
        let sh = RopeShape {
            rot_offset: 0,
            head_dim: 8,
            ..shape(false)
        };
        let mut x = vec![0.0; 8];
        x[0] = 1.0;
        let y = rope(&x, 1, &[1], &sh, DType::F32);
        assert!((y[0] - 1f64.cos()).abs() < 1e-6);
        assert!((y[4] - 1f64.sin()).abs() < 1e-6);
    }
}
