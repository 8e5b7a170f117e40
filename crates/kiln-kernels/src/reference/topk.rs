//! Router references: softmax_topk and sigmoid_topk.
//!
//! Tie rule (both ops): experts are ordered by descending selection score;
//! equal scores put the lower expert index first. Outputs are in that order.

use super::f32r;
use crate::DType;

/// Reference router output for `T` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    /// Experts per row.
    pub k: usize,
    /// `weights[T,K]`.
    pub weights: Vec<f64>,
    /// `indices[T,K]`, sorted by descending score, ties lower index first.
    pub indices: Vec<u32>,
    /// `scores[T,E]`: each expert's selection score (masked groups: -inf), for near-tie checks.
    pub scores: Vec<f64>,
}

/// Indices of the `k` largest scores (ties: lower index), in that order.
pub fn top_k_indices(scores: &[f64], k: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_by(|&a, &b| {
        scores[b as usize]
            .partial_cmp(&scores[a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    order.truncate(k);
    order
}

/// Qwen3 router: f32 softmax over all `e`, top-`k` of the probabilities,
/// optional renormalisation. Scores are the f32 probabilities.
pub fn softmax_topk(logits: &[f64], e: usize, k: usize, renorm: bool) -> TopK {
    let mut out = TopK {
        k,
        weights: Vec::new(),
        indices: Vec::new(),
        scores: Vec::new(),
    };
    for row in logits.chunks(e) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let ex: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = ex.iter().sum();
        let p: Vec<f64> = ex.iter().map(|v| f32r(v / s)).collect();
        let idx = top_k_indices(&p, k);
        out.weights.extend(softmax_weights(&p, &idx, renorm));
        out.indices.extend(&idx);
        out.scores.extend(p);
    }
    out
}

/// The weights softmax_topk gives a chosen set `idx` of a row with probabilities `p`.
pub fn softmax_weights(p: &[f64], idx: &[u32], renorm: bool) -> Vec<f64> {
    let sel: Vec<f64> = idx.iter().map(|&i| p[i as usize]).collect();
    let tot: f64 = sel.iter().sum();
    sel.iter()
        .map(|v| if renorm { f32r(v / tot) } else { *v })
        .collect()
}

/// Static configuration of the sigmoid router reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SigmoidRouting {
    /// Experts.
    pub e: usize,
    /// Experts per token.
    pub k: usize,
    /// Expert groups (1: no grouping).
    pub n_group: usize,
    /// Groups kept.
    pub topk_group: usize,
    /// Added to the weight sum before dividing.
    pub norm_eps: f64,
    /// Final weight scale (routed_scaling_factor).
    pub scale: f64,
    /// The model computes the sigmoid (and the weight arithmetic) in the logits' dtype.
    pub sigmoid_in_dtype: bool,
    /// The logits' dtype.
    pub dtype: DType,
}

/// DeepSeek-V3-style router: sigmoid, biased grouped selection, weights from the unbiased scores.
pub fn sigmoid_topk(logits: &[f64], bias: &[f64], cfg: &SigmoidRouting) -> TopK {
    let e = cfg.e;
    let mut out = TopK {
        k: cfg.k,
        weights: Vec::new(),
        indices: Vec::new(),
        scores: Vec::new(),
    };
    for row in logits.chunks(e) {
        let s = sigmoid_scores(row, cfg);
        let mut c: Vec<f64> = s.iter().zip(bias).map(|(a, b)| f32r(a + b)).collect();
        if cfg.n_group > 1 {
            let g = e / cfg.n_group;
            let group_scores: Vec<f64> = c
                .chunks(g)
                .map(|grp| {
                    let top = top_k_indices(grp, 2);
                    f32r(grp[top[0] as usize] + grp[top[1] as usize])
                })
                .collect();
            let kept = top_k_indices(&group_scores, cfg.topk_group);
            for (i, v) in c.iter_mut().enumerate() {
                if !kept.contains(&((i / g) as u32)) {
                    *v = f64::NEG_INFINITY;
                }
            }
        }
        let idx = top_k_indices(&c, cfg.k);
        out.weights.extend(sigmoid_weights(&s, &idx, cfg));
        out.indices.extend(&idx);
        out.scores.extend(c);
    }
    out
}

/// The unbiased sigmoid scores of one row, rounded as the model rounds them.
pub fn sigmoid_scores(row: &[f64], cfg: &SigmoidRouting) -> Vec<f64> {
    row.iter()
        .map(|&l| {
            let s = f32r(1.0 / (1.0 + (-l).exp()));
            if cfg.sigmoid_in_dtype {
                cfg.dtype.round(s)
            } else {
                s
            }
        })
        .collect()
}

/// The weights sigmoid_topk gives a chosen set `idx` of a row with scores `s`.
pub fn sigmoid_weights(s: &[f64], idx: &[u32], cfg: &SigmoidRouting) -> Vec<f64> {
    let sel: Vec<f64> = idx.iter().map(|&i| s[i as usize]).collect();
    let tot: f64 = sel.iter().sum();
    if cfg.sigmoid_in_dtype {
        let r = |v: f64| cfg.dtype.round(v);
        let den = r(r(tot) + f32r(cfg.norm_eps));
        sel.iter()
            .map(|v| r(r(v / den) * f32r(cfg.scale)))
            .collect()
    } else {
        let den = f32r(f32r(tot) + f32r(cfg.norm_eps));
        sel.iter()
            .map(|v| f32r(f32r(v / den) * f32r(cfg.scale)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glm() -> SigmoidRouting {
        SigmoidRouting {
            e: 8,
            k: 2,
            n_group: 1,
            topk_group: 1,
            norm_eps: 1e-20,
            scale: 1.8,
            sigmoid_in_dtype: false,
            dtype: DType::F32,
        }
    }

    #[test]
    fn renormalised_weights_sum_to_one() {
        let logits: Vec<f64> = (0..16).map(|i| ((i * 7) % 5) as f64 - 2.0).collect();
        let r = softmax_topk(&logits, 8, 3, true);
        for row in r.weights.chunks(3) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        }
        // Without renorm the weights are the probabilities themselves.
        let r0 = softmax_topk(&logits, 8, 3, false);
        assert!(r0.weights.iter().sum::<f64>() < 2.0);
    }

    #[test]
    fn top_k_matches_a_full_sort_and_ties_go_to_the_lower_index() {
        let logits = vec![0.5, 2.0, 2.0, -1.0, 2.0, 0.0, 3.0, 0.5];
        let r = softmax_topk(&logits, 8, 4, false);
        assert_eq!(r.indices, vec![6, 1, 2, 4]);
        let mut sorted: Vec<(f64, usize)> = logits.iter().cloned().zip(0..).collect();
        sorted.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
        let want: Vec<u32> = sorted.iter().take(4).map(|x| x.1 as u32).collect();
        assert_eq!(r.indices, want);
        // Weights descend.
        assert!(r.weights.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn all_equal_logits_pick_the_first_experts() {
        let r = softmax_topk(&[1.0; 128], 128, 8, true);
        assert_eq!(r.indices, (0..8).collect::<Vec<u32>>());
        assert!(r.weights.iter().all(|w| (w - 0.125).abs() < 1e-7));
    }

    #[test]
    fn bias_chooses_but_does_not_weigh() {
        let cfg = glm();
        let logits = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        let mut bias = [0.0; 8];
        bias[0] = 10.0; // expert 0 wins the choice with a low score
        let r = sigmoid_topk(&logits, &bias, &cfg);
        assert_eq!(r.indices, vec![0, 7]);
        let s0 = 0.5;
        let s7 = 1.0 / (1.0 + (-2f64).exp());
        let tot = s0 + s7;
        assert!((r.weights[0] - s0 / tot * 1.8).abs() < 1e-6);
        assert!((r.weights[1] - s7 / tot * 1.8).abs() < 1e-6);
    }

    #[test]
    fn grouped_selection_keeps_the_best_groups() {
        // 8 experts, 4 groups of 2, keep 2 groups, pick 2 experts.
        let cfg = SigmoidRouting {
            n_group: 4,
            topk_group: 2,
            ..glm()
        };
        // Group scores (sum of both members): g0 low, g1 has the single best expert
        // but a weak partner, g2 and g3 are strong pairs.
        let logits = [-3.0, -3.0, 4.0, -4.0, 1.5, 1.5, 1.0, 1.0];
        let r = sigmoid_topk(&logits, &[0.0; 8], &cfg);
        // Pair sums: g1 = s(4)+s(-4) = 1.0; g2 = 2*s(1.5) ≈ 1.635; g3 = 2*s(1) ≈ 1.462.
        assert_eq!(r.indices, vec![4, 5]);
        assert!(r.scores[2].is_infinite() && r.scores[2] < 0.0);
        // Without grouping the single best expert wins.
        let flat = sigmoid_topk(&logits, &[0.0; 8], &glm());
        assert_eq!(flat.indices[0], 2);
    }

    #[test]
    fn lfm2_rounds_in_dtype() {
        let cfg = SigmoidRouting {
            norm_eps: 1e-6,
            scale: 1.0,
            sigmoid_in_dtype: true,
            dtype: DType::BF16,
            ..glm()
        };
        let r = sigmoid_topk(&[0.3, 0.1, 0.2, -1.0, 0.0, 0.0, 0.0, 0.0], &[0.0; 8], &cfg);
        for w in &r.weights {
            assert_eq!(DType::BF16.round(*w), *w);
        }
        assert_eq!(r.indices, vec![0, 2]);
    }
}
