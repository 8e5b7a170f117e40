//! decode_attention reference: causal GQA attention of new tokens over a KV cache.
//!
//! Computes in f64 and rounds only the output. HF eager attention rounds the
//! scores and the probabilities to the model dtype before the PV product, so
//! it can differ from this (and from the kernel) by a few dtype ulps; the
//! kernel is verified against this reference, whose only rounding it shares.

use rayon::prelude::*;

use crate::DType;

/// Static shape of decode attention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    /// Query heads.
    pub qh: usize,
    /// KV heads (`qh % kvh == 0`; query head `j` reads kv head `j / (qh / kvh)`).
    pub kvh: usize,
    /// Query/key head dim.
    pub dqk: usize,
    /// Value head dim.
    pub dv: usize,
    /// Cache capacity in positions.
    pub s_max: usize,
    /// Score scale (usually `dqk^-0.5`).
    pub scale: f64,
}

/// `out[t,j] = dtype(Σ_p softmax_p(scale·q[t,j]·k[g,p]) · v[g,p])` over
/// positions `p = 0..=past+t` (clamped to `s_max`), `g = j / (qh/kvh)`.
///
/// Shapes: `q[T,QH,DQK]`, `k_cache[KVH,S_MAX,DQK]`, `v_cache[KVH,S_MAX,DV]`;
/// returns `out[T,QH,DV]`. The scale is applied as the kernel sees it (an f32).
pub fn decode_attention(
    q: &[f64],
    k_cache: &[f64],
    v_cache: &[f64],
    past: usize,
    shape: &AttentionShape,
    dtype: DType,
) -> Vec<f64> {
    let AttentionShape {
        qh,
        kvh,
        dqk,
        dv,
        s_max,
        scale,
    } = *shape;
    let scale = scale as f32 as f64;
    let group = qh / kvh;
    let t = q.len() / (qh * dqk);
    // Every (token, head) pair is independent: a long cache makes each
    // millions of multiply-adds, and verification runs this every trial.
    (0..t * qh)
        .into_par_iter()
        .flat_map_iter(|row| {
            let (ti, j) = (row / qh, row % qh);
            let n = (past + ti + 1).min(s_max);
            let g = j / group;
            let qr = &q[row * dqk..(row + 1) * dqk];
            let mut scores: Vec<f64> = (0..n)
                .map(|p| {
                    let kr = &k_cache[(g * s_max + p) * dqk..(g * s_max + p + 1) * dqk];
                    scale * qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f64>()
                })
                .collect();
            let m = scores.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let mut denom = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - m).exp();
                denom += *s;
            }
            (0..dv)
                .map(|d| {
                    let acc: f64 = scores
                        .iter()
                        .enumerate()
                        .map(|(p, w)| w * v_cache[(g * s_max + p) * dv + d])
                        .sum();
                    dtype.round(acc / denom)
                })
                .collect::<Vec<f64>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(qh: usize, kvh: usize, d: usize, s_max: usize) -> AttentionShape {
        AttentionShape {
            qh,
            kvh,
            dqk: d,
            dv: d,
            s_max,
            scale: 1.0,
        }
    }

    #[test]
    fn the_first_token_copies_its_only_value() {
        let s = shape(2, 1, 2, 4);
        let q = [3.0, -1.0, 0.5, 7.0];
        let k = [1.0, 2.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0];
        let v = [4.0, -2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        // past = 0, T = 1: one key, weight 1, whatever the score.
        let out = decode_attention(&q, &k, &v, 0, &s, DType::F32);
        assert_eq!(out, vec![4.0, -2.0, 4.0, -2.0]);
    }

    #[test]
    fn two_keys_by_hand_and_causality() {
        // One head, d=1, two tokens at positions 1 and 2 after past = 1.
        let s = shape(1, 1, 1, 4);
        let q = [1.0, 2.0];
        let k = [0.0, 1.0, 2.0, 100.0];
        let v = [10.0, 20.0, 30.0, -1e9];
        let out = decode_attention(&q, &k, &v, 1, &s, DType::F32);
        // Token 0 (position 1): scores [0, 1].
        let e = 1f64.exp();
        let want = (10.0 + 20.0 * e) / (1.0 + e);
        assert!((out[0] - want).abs() <= 1e-6 * want, "{} vs {want}", out[0]);
        // Token 1 (position 2): scores [0, 2, 4]; position 3 is in the future.
        let w: Vec<f64> = [0.0f64, 2.0, 4.0].iter().map(|s| (s - 4.0).exp()).collect();
        let want = (10.0 * w[0] + 20.0 * w[1] + 30.0 * w[2]) / w.iter().sum::<f64>();
        assert!((out[1] - want).abs() <= 1e-6 * want, "{} vs {want}", out[1]);
    }

    #[test]
    fn gqa_heads_share_their_kv_head() {
        // QH = 4, KVH = 2: heads 0,1 read kv head 0; heads 2,3 read kv head 1.
        let s = shape(4, 2, 1, 1);
        let q = [1.0, 2.0, 3.0, 4.0];
        let k = [1.0, 1.0];
        let v = [5.0, -5.0];
        let out = decode_attention(&q, &k, &v, 0, &s, DType::F32);
        assert_eq!(out, vec![5.0, 5.0, -5.0, -5.0]);
    }

    #[test]
    fn equal_scores_average_and_the_output_is_rounded_once() {
        let s = AttentionShape {
            scale: 0.125,
            ..shape(1, 1, 2, 3)
        };
        let q = [0.0, 0.0];
        let k = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let v = [1.0, 0.0, 2.0, 0.0, 1.0 + 2f64.powi(-8), 3.0];
        let out = decode_attention(&q, &k, &v, 2, &s, DType::BF16);
        // Mean of the first column: (4 + 2^-8)/3, rounded once to bf16.
        assert_eq!(out[0], DType::BF16.round((4.0 + 2f64.powi(-8)) / 3.0));
        assert_eq!(out[1], 1.0);
    }

    #[test]
    fn keys_clamp_to_the_cache_and_outputs_are_convex_combinations() {
        let s = shape(1, 1, 2, 3);
        let k = [0.3, -0.2, 1.0, 0.5, -0.7, 0.1];
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let a = decode_attention(&[1.0, 1.0], &k, &v, 2, &s, DType::F32);
        let b = decode_attention(&[1.0, 1.0], &k, &v, 50, &s, DType::F32);
        assert_eq!(a, b, "positions beyond S_MAX clamp to the whole cache");
        let c = decode_attention(&[1.0, 1.0], &k, &v, 1, &s, DType::F32);
        assert_ne!(a, c);
        // Outputs are convex combinations of the value rows.
        for (d, val) in a.iter().enumerate() {
            let col = (0..3).map(|p| v[p * 2 + d]);
            let (lo, hi) = (
                col.clone().fold(f64::MAX, f64::min),
                col.fold(f64::MIN, f64::max),
            );
            assert!(*val >= lo && *val <= hi);
        }
    }
}
