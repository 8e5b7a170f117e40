//! short_conv reference: LFM2's gated causal depthwise convolution with its
//! rolling state (see `kernels/short_conv.cu` for the math).

use crate::DType;

/// The shape of one short convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortConvShape {
    /// Channels (the hidden size).
    pub d: usize,
    /// Kernel length (`conv_L_cache`); the state keeps `L - 1` rows.
    pub l: usize,
}

/// `(out[T,D], new_state[L-1,D])` for `bcx[T,3D]` (B | C | x per row),
/// `w[D,L]` and `state[L-1,D]` (oldest row first).
pub fn short_conv(
    bcx: &[f64],
    w: &[f64],
    state: &[f64],
    s: ShortConvShape,
    dtype: DType,
) -> (Vec<f64>, Vec<f64>) {
    let (d, l) = (s.d, s.l);
    let t = bcx.len() / (3 * d);
    // seq[r][c]: the L-1 state rows, then one B ⊙ x row per token.
    let mut seq: Vec<Vec<f64>> = state.chunks(d).map(<[f64]>::to_vec).collect();
    for row in bcx.chunks(3 * d) {
        seq.push(
            (0..d)
                .map(|c| dtype.round(row[c] * row[2 * d + c]))
                .collect(),
        );
    }
    let mut out = Vec::with_capacity(t * d);
    for (r, row) in bcx.chunks(3 * d).enumerate() {
        for c in 0..d {
            let conv: f64 = (0..l).map(|j| w[c * l + j] * seq[r + j][c]).sum();
            out.push(dtype.round(row[d + c] * dtype.round(conv)));
        }
    }
    let new_state = seq[t..].concat();
    (out, new_state)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: ShortConvShape = ShortConvShape { d: 2, l: 3 };

    #[test]
    fn one_step_uses_the_state_and_shifts_it() {
        // Channel 0: B=2, C=3, x=5 → bx=10; state (1, 4); w (1, 10, 100).
        // conv = 1·1 + 10·4 + 100·10 = 1041; out = 3·1041.
        let bcx = [2.0, 1.0, 3.0, 1.0, 5.0, 0.5];
        let w = [1.0, 10.0, 100.0, 0.0, 0.0, 1.0];
        let state = [1.0, 7.0, 4.0, 8.0];
        let (out, next) = short_conv(&bcx, &w, &state, S, DType::F32);
        assert_eq!(out[0], 3.0 * 1041.0);
        // Channel 1: bx = 0.5, conv = w[2]·bx = 0.5, out = C·conv = 0.5.
        assert_eq!(out[1], 0.5);
        assert_eq!(next, vec![4.0, 8.0, 10.0, 0.5]);
    }

    #[test]
    fn two_steps_equal_one_call_over_two_rows() {
        let bcx = [
            0.5, -1.0, 2.0, 3.0, -4.0, 1.5, 1.0, 2.0, -0.5, 0.25, 3.0, 2.0,
        ];
        let w = [0.1, -0.2, 0.3, 0.4, 0.5, -0.6];
        let state = [0.7, -0.8, 0.9, 1.1];
        let (both, end) = short_conv(&bcx, &w, &state, S, DType::F32);
        let (a, mid) = short_conv(&bcx[..6], &w, &state, S, DType::F32);
        let (b, end2) = short_conv(&bcx[6..], &w, &mid, S, DType::F32);
        assert_eq!(both, [a, b].concat());
        assert_eq!(end, end2);
    }
}
