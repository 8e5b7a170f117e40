//! Top-k routing outputs compared as (expert, weight) sets with a tie rule.
//!
//! # The rule
//!
//! The reference selects, per row, the `k` experts with the largest selection
//! score, ties broken by the lower index ([`reference_topk`]). A candidate's
//! row is accepted when:
//!
//! 1. every index is in `[0, E)` and the row's indices are distinct;
//! 2. every weight is finite;
//! 3. **tie rule**: let `s_k` be the reference's k-th largest score and
//!    `band = score_tol.allowed(s_k, max|score| of the row)`. Experts scoring
//!    above `s_k + band` are *required*: all must be selected. The remaining
//!    slots may hold any experts within `band` of `s_k` (exact or near ties at
//!    the boundary), so either of two tied experts is accepted. Any other
//!    expert is wrong;
//! 4. each selected expert's weight matches the weight the reference gives that
//!    expert (`ref_weights[row][e]`, defined for every expert so a tied
//!    substitute has an expected weight) within `weight_tol`, scaled by the
//!    largest reference weight among the reference's selected experts.
//!
//! **Order within a row is not checked**: the downstream combine,
//! `sum_j w_j * expert_{idx_j}(x)`, is order-insensitive, so a candidate may
//! emit its k experts in any order.

use crate::tolerance::{Tolerance, ZERO_REFERENCE_ATOL};
use serde::{Deserialize, Serialize};

/// How a top-k output is compared.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TopkSpec {
    /// Experts per row.
    pub k: usize,
    /// Number of experts `E`.
    pub num_experts: usize,
    /// Width of the tie band around the k-th score.
    pub score_tol: Tolerance,
    /// Tolerance of the weights.
    pub weight_tol: Tolerance,
}

/// Statistics of a passing comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TopkStats {
    /// Rows compared.
    pub rows: usize,
    /// Rows whose boundary had more tied experts than free slots.
    pub rows_with_ties: usize,
    /// Rows where the candidate picked a different (tied) expert than the reference.
    pub rows_with_tie_substitutes: usize,
    /// Largest absolute weight error.
    pub max_weight_err: f64,
}

/// Why a top-k output was rejected (or the comparison could not run).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TopkError {
    /// The spec or buffer sizes are inconsistent (an evaluator bug).
    #[error("top-k comparison misconfigured: {0}")]
    Shape(String),
    /// The reference holds NaN/Inf (an evaluator bug).
    #[error("reference row {row} has a non-finite score or weight")]
    ReferenceNotFinite {
        /// Row.
        row: usize,
    },
    /// An index outside `[0, E)`.
    #[error("row {row} slot {slot}: expert index {index} is outside [0, {num_experts})")]
    IndexOutOfRange {
        /// Row.
        row: usize,
        /// Slot within the row.
        slot: usize,
        /// The index.
        index: i64,
        /// `E`.
        num_experts: usize,
    },
    /// The same expert twice in a row.
    #[error(
        "row {row}: expert {index} is selected twice; the k indices of a row must be distinct"
    )]
    DuplicateIndex {
        /// Row.
        row: usize,
        /// The index.
        index: i64,
    },
    /// A NaN/Inf weight.
    #[error("row {row} slot {slot}: weight is {value}, not finite")]
    NonFiniteWeight {
        /// Row.
        row: usize,
        /// Slot.
        slot: usize,
        /// Value.
        value: f64,
    },
    /// A clearly top-k expert is missing.
    #[error("row {row}: expert {expert} (score {score}) must be selected: it is above the k-th score {kth_score} by more than the tie band {band:.3e}")]
    MissingExpert {
        /// Row.
        row: usize,
        /// The expert.
        expert: usize,
        /// Its score.
        score: f64,
        /// The reference's k-th score.
        kth_score: f64,
        /// Tie band.
        band: f64,
    },
    /// An expert that is not in the top k (nor tied at the boundary).
    #[error("row {row}: expert {expert} (score {score}) is not in the top {k}: the k-th score is {kth_score} (tie band {band:.3e})")]
    WrongExpert {
        /// Row.
        row: usize,
        /// The expert.
        expert: usize,
        /// Its score.
        score: f64,
        /// The reference's k-th score.
        kth_score: f64,
        /// Tie band.
        band: f64,
        /// `k`.
        k: usize,
    },
    /// A weight out of tolerance.
    #[error("row {row}: expert {expert} has weight {got}, expected {expected} (allowed error {allowed:.3e})")]
    WeightMismatch {
        /// Row.
        row: usize,
        /// The expert.
        expert: usize,
        /// Candidate weight.
        got: f64,
        /// Reference weight.
        expected: f64,
        /// Tolerance.
        allowed: f64,
    },
}

/// The reference selection of one row: indices of the `k` largest scores, descending, ties by lower index.
pub fn reference_topk(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

/// Compares candidate `(indices, weights)` (rows × k) with the reference `scores` and `weights` (rows × E).
pub fn compare_topk(
    cand_indices: &[i64],
    cand_weights: &[f64],
    ref_scores: &[f64],
    ref_weights: &[f64],
    spec: &TopkSpec,
) -> Result<TopkStats, TopkError> {
    let (k, e) = (spec.k, spec.num_experts);
    if k == 0 || k > e {
        return Err(TopkError::Shape(format!("k = {k} must be in 1..={e}")));
    }
    let rows = cand_indices.len() / k;
    if rows * k != cand_indices.len() || cand_weights.len() != cand_indices.len() {
        return Err(TopkError::Shape(format!(
            "{} indices and {} weights do not form rows of k = {k}",
            cand_indices.len(),
            cand_weights.len()
        )));
    }
    if ref_scores.len() != rows * e || ref_weights.len() != rows * e {
        return Err(TopkError::Shape(format!(
            "reference has {} scores and {} weights, expected {rows} rows × {e} experts",
            ref_scores.len(),
            ref_weights.len()
        )));
    }
    let mut stats = TopkStats {
        rows,
        rows_with_ties: 0,
        rows_with_tie_substitutes: 0,
        max_weight_err: 0.0,
    };
    for row in 0..rows {
        let idx = &cand_indices[row * k..(row + 1) * k];
        let w = &cand_weights[row * k..(row + 1) * k];
        let scores = &ref_scores[row * e..(row + 1) * e];
        let weights = &ref_weights[row * e..(row + 1) * e];
        compare_row(row, idx, w, scores, weights, spec, &mut stats)?;
    }
    Ok(stats)
}

fn compare_row(
    row: usize,
    idx: &[i64],
    w: &[f64],
    scores: &[f64],
    weights: &[f64],
    spec: &TopkSpec,
    stats: &mut TopkStats,
) -> Result<(), TopkError> {
    let (k, e) = (spec.k, spec.num_experts);
    if scores.iter().chain(weights).any(|x| !x.is_finite()) {
        return Err(TopkError::ReferenceNotFinite { row });
    }
    let mut chosen = vec![false; e];
    let mut experts = Vec::with_capacity(k);
    for (slot, (&index, &weight)) in idx.iter().zip(w).enumerate() {
        let expert =
            usize::try_from(index)
                .ok()
                .filter(|&x| x < e)
                .ok_or(TopkError::IndexOutOfRange {
                    row,
                    slot,
                    index,
                    num_experts: e,
                })?;
        if chosen[expert] {
            return Err(TopkError::DuplicateIndex { row, index });
        }
        chosen[expert] = true;
        if !weight.is_finite() {
            return Err(TopkError::NonFiniteWeight {
                row,
                slot,
                value: weight,
            });
        }
        experts.push(expert);
    }

    let reference = reference_topk(scores, k);
    let kth = scores[reference[k - 1]];
    let score_scale = scores.iter().fold(0.0f64, |m, s| m.max(s.abs()));
    let band = spec.score_tol.allowed(kth, score_scale);
    let required = |s: f64| s > kth + band;
    let tied = |s: f64| (s - kth).abs() <= band;

    for (expert, &score) in scores.iter().enumerate() {
        if required(score) && !chosen[expert] {
            return Err(TopkError::MissingExpert {
                row,
                expert,
                score,
                kth_score: kth,
                band,
            });
        }
    }
    for &expert in &experts {
        let score = scores[expert];
        if !required(score) && !tied(score) {
            return Err(TopkError::WrongExpert {
                row,
                expert,
                score,
                kth_score: kth,
                band,
                k,
            });
        }
    }
    let n_required = scores.iter().filter(|&&s| required(s)).count();
    let n_tied = scores.iter().filter(|&&s| tied(s)).count();
    if n_tied > k - n_required {
        stats.rows_with_ties += 1;
    }
    if reference.iter().any(|&r| !chosen[r]) {
        stats.rows_with_tie_substitutes += 1;
    }

    let weight_scale = reference
        .iter()
        .fold(0.0f64, |m, &r| m.max(weights[r].abs()));
    for (&expert, &got) in experts.iter().zip(w) {
        let expected = weights[expert];
        let allowed = if weight_scale == 0.0 {
            ZERO_REFERENCE_ATOL
        } else {
            spec.weight_tol.allowed(expected, weight_scale)
        };
        let err = (got - expected).abs();
        stats.max_weight_err = stats.max_weight_err.max(err);
        if err > allowed {
            return Err(TopkError::WeightMismatch {
                row,
                expert,
                got,
                expected,
                allowed,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_kernels::DType;

    fn spec(k: usize, e: usize) -> TopkSpec {
        TopkSpec {
            k,
            num_experts: e,
            score_tol: Tolerance::for_dtype(DType::F32),
            weight_tol: Tolerance::for_dtype(DType::F32),
        }
    }

    /// Softmax over the row, renormalised over the reference's top k (weights for every expert).
    fn softmax_weights(scores: &[f64], k: usize) -> Vec<f64> {
        let top = reference_topk(scores, k);
        let z: f64 = top.iter().map(|&i| scores[i].exp()).sum();
        scores.iter().map(|s| s.exp() / z).collect()
    }

    fn row(scores: &[f64], k: usize) -> (Vec<i64>, Vec<f64>, Vec<f64>) {
        let w = softmax_weights(scores, k);
        let top = reference_topk(scores, k);
        (
            top.iter().map(|&i| i as i64).collect(),
            top.iter().map(|&i| w[i]).collect(),
            w,
        )
    }

    #[test]
    fn reference_order_is_descending_ties_by_lower_index() {
        assert_eq!(reference_topk(&[1.0, 3.0, 3.0, 2.0, 3.0], 3), vec![1, 2, 4]);
        assert_eq!(reference_topk(&[0.5, -1.0], 2), vec![0, 1]);
    }

    #[test]
    fn exact_match_and_any_order_pass() {
        let s = [0.1, 2.0, -1.0, 1.5, 0.7, 3.0];
        let (idx, w, rw) = row(&s, 3);
        let st = compare_topk(&idx, &w, &s, &rw, &spec(3, 6)).expect("exact");
        assert_eq!(
            (st.rows, st.rows_with_ties, st.rows_with_tie_substitutes),
            (1, 0, 0)
        );
        let rev_i: Vec<i64> = idx.iter().rev().copied().collect();
        let rev_w: Vec<f64> = w.iter().rev().copied().collect();
        compare_topk(&rev_i, &rev_w, &s, &rw, &spec(3, 6)).expect("order-insensitive");
    }

    #[test]
    fn exact_tie_at_boundary_accepts_either_expert() {
        // Experts 1, 3 and 4 tie at the k-th score 1.0; the reference picks 0 and 1 (lower index).
        let s = [2.0, 1.0, 0.0, 1.0, 1.0];
        let (idx, _, rw) = row(&s, 2);
        assert_eq!(idx, vec![0, 1]);
        for other in [1, 3, 4] {
            let ci = vec![0, other];
            let cw = vec![rw[0], rw[other as usize]];
            let st = compare_topk(&ci, &cw, &s, &rw, &spec(2, 5)).expect("tied substitute");
            assert_eq!(st.rows_with_ties, 1);
            assert_eq!(st.rows_with_tie_substitutes, usize::from(other != 1));
        }
        // But the non-tied expert 2 is wrong, and dropping the required expert 0 is wrong.
        let err = compare_topk(&[0, 2], &[rw[0], rw[2]], &s, &rw, &spec(2, 5)).expect_err("wrong");
        assert!(matches!(err, TopkError::WrongExpert { expert: 2, .. }));
        let err =
            compare_topk(&[1, 3], &[rw[1], rw[3]], &s, &rw, &spec(2, 5)).expect_err("missing");
        assert!(matches!(err, TopkError::MissingExpert { expert: 0, .. }));
    }

    #[test]
    fn near_tie_within_band_is_accepted_outside_is_not() {
        let band_half = 1e-6; // well inside the f32 band (2^-18 * 2 + 2^-16 * 1 ≈ 2.3e-5)
        let s = [2.0, 1.0, 1.0 - band_half, 0.5];
        let (_, _, rw) = row(&s, 2);
        compare_topk(&[0, 2], &[rw[0], rw[2]], &s, &rw, &spec(2, 4)).expect("near tie");
        let s2 = [2.0, 1.0, 1.0 - 1e-3, 0.5];
        let (_, _, rw2) = row(&s2, 2);
        assert!(matches!(
            compare_topk(&[0, 2], &[rw2[0], rw2[2]], &s2, &rw2, &spec(2, 4)),
            Err(TopkError::WrongExpert { expert: 2, .. })
        ));
    }

    #[test]
    fn index_and_weight_validity() {
        let s = [3.0, 2.0, 1.0, 0.0];
        let (_, w, rw) = row(&s, 2);
        assert!(matches!(
            compare_topk(&[0, 4], &w, &s, &rw, &spec(2, 4)),
            Err(TopkError::IndexOutOfRange {
                index: 4,
                slot: 1,
                ..
            })
        ));
        assert!(matches!(
            compare_topk(&[-1, 0], &w, &s, &rw, &spec(2, 4)),
            Err(TopkError::IndexOutOfRange { index: -1, .. })
        ));
        assert!(matches!(
            compare_topk(&[0, 0], &w, &s, &rw, &spec(2, 4)),
            Err(TopkError::DuplicateIndex { index: 0, .. })
        ));
        assert!(matches!(
            compare_topk(&[0, 1], &[w[0], f64::NAN], &s, &rw, &spec(2, 4)),
            Err(TopkError::NonFiniteWeight { slot: 1, .. })
        ));
        let err =
            compare_topk(&[0, 1], &[w[0], w[1] * 1.01], &s, &rw, &spec(2, 4)).expect_err("weight");
        assert!(matches!(err, TopkError::WeightMismatch { expert: 1, .. }));
        // Weights swapped between slots: each expert's weight must follow it.
        assert!(compare_topk(&[0, 1], &[w[1], w[0]], &s, &rw, &spec(2, 4)).is_err());
    }

    #[test]
    fn multiple_rows_and_misconfiguration() {
        let s = [3.0, 2.0, 1.0, 0.0, 0.0, 1.0, 2.0, 3.0];
        let mut rw = softmax_weights(&s[..4], 2);
        rw.extend(softmax_weights(&s[4..], 2));
        let idx = [0, 1, 3, 2];
        let w = [rw[0], rw[1], rw[7], rw[6]];
        let st = compare_topk(&idx, &w, &s, &rw, &spec(2, 4)).expect("two rows");
        assert_eq!(st.rows, 2);
        let bad = [0, 1, 1, 3];
        assert!(matches!(
            compare_topk(&bad, &w, &s, &rw, &spec(2, 4)),
            Err(TopkError::WrongExpert { row: 1, .. })
        ));
        assert!(matches!(
            compare_topk(&idx, &w, &s, &rw, &spec(0, 4)),
            Err(TopkError::Shape(_))
        ));
        assert!(matches!(
            compare_topk(&idx, &w, &s, &rw, &spec(5, 4)),
            Err(TopkError::Shape(_))
        ));
        assert!(matches!(
            compare_topk(&idx[..3], &w[..3], &s, &rw, &spec(2, 4)),
            Err(TopkError::Shape(_))
        ));
        assert!(matches!(
            compare_topk(&idx, &w, &s[..4], &rw, &spec(2, 4)),
            Err(TopkError::Shape(_))
        ));
        let mut nan = s;
        nan[0] = f64::NAN;
        assert!(matches!(
            compare_topk(&idx, &w, &nan, &rw, &spec(2, 4)),
            Err(TopkError::ReferenceNotFinite { row: 0 })
        ));
    }
}
