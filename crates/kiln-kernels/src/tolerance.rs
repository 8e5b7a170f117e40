//! Verification tolerances: the ONE place they are chosen.
//!
//! An element passes when `|got − ref| ≤ atol·max|ref| + rtol·|ref|` (scale-aware:
//! an all-zero output never passes a non-zero reference) and `got` is finite.
//!
//! Why these values: the references already round wherever the model rounds,
//! so a correct kernel differs only where its f32 arithmetic (sums in another
//! order, `rsqrtf`, `expf`, `sincosf`, ≤ 2 ulp each) lands on the other side of
//! a dtype rounding boundary, which costs one ulp of the output, or one ulp of
//! an intermediate that HF also rounds (cast-before-scale, silu in dtype, rope
//! products), which costs about one ulp of the row's largest value. Two ulps
//! cover both: bf16 ulp = 2⁻⁷ relative (8 bits), f16 2⁻¹⁰, f32 2⁻²³ but f32
//! outputs see the f32-vs-f64 accumulation error of long rows (D = 4096 sums:
//! ≈ √D·2⁻²⁴), so f32 uses 1e-5.
//! ttt_linear_decode chains two LayerNorms, a backward pass and two F×F products
//! whose cancellations amplify f32 error: it gets 8× the base.
//! moe_expert_swiglu rounds three intermediates HF also rounds (the gate and up
//! dot products, silu) before the output: a flip of the gate value moves the
//! output by up to |g·silu'(g)/silu(g)| ≈ 2 ulps for moderate negative g, plus
//! one ulp each for up, silu and the output: 4× the base.
//! moe_expert_down rounds each expert's dot product (y_k) and sums up to K of
//! them with weights up to ~2 (GLM scales by 1.8): one flipped y_k costs up to
//! 2·w_k ulps of an addend, which cancellation can make larger than the
//! output: 3× the base.
//! decode_attention rounds only its output, but f32 scores feed `exp`, so their
//! absolute error (long dot products, large logits) becomes relative error of
//! the probabilities, and the PV sum runs over up to S_MAX keys in f32: 2× the
//! base. (HF eager rounds scores and probabilities to the dtype and can differ
//! from the reference by more: that is a model-level comparison, not this one.)
//! qk_norm_rope_cache rounds where HF does (x·r, then w·that, each rotation
//! product, their sum): an f32 `rsqrtf` can flip x·r by one ulp, which w and
//! the rotation carry into the output next to the rounding of its own
//! products: 2× the base, each head (and each cache row) scaled by itself.
//! rope_cache is rope's arithmetic (plus copies): rope's 1× the base.

use crate::catalog::Op;
use crate::DType;

/// Absolute (relative to the reference's max magnitude) and relative tolerance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Allowed error as a fraction of `max|ref|` over the whole output.
    pub atol: f64,
    /// Allowed error as a fraction of `|ref|` per element.
    pub rtol: f64,
}

impl Tolerance {
    /// The base tolerance of a dtype.
    pub fn for_dtype(dtype: DType) -> Self {
        match dtype {
            DType::BF16 => Self {
                atol: 2.0 * 2f64.powi(-8),
                rtol: 2.0 * 2f64.powi(-8),
            },
            DType::F16 => Self {
                atol: 2.0 * 2f64.powi(-11),
                rtol: 2.0 * 2f64.powi(-11),
            },
            DType::F32 => Self {
                atol: 1e-5,
                rtol: 1e-5,
            },
        }
    }

    /// The tolerance for one output of an op in a dtype.
    pub fn for_op(op: Op, dtype: DType) -> Self {
        let base = Self::for_dtype(dtype);
        let factor = match op {
            Op::TttLinearDecode => 8.0,
            Op::MoeExpertSwiglu => 4.0,
            Op::MoeExpertDown => 3.0,
            Op::DecodeAttention => 2.0,
            Op::QkNormRopeCache => 2.0,
            _ => 1.0,
        };
        Self {
            atol: base.atol * factor,
            rtol: base.rtol * factor,
        }
    }

    /// Compares an output with its reference; the error names the first bad element.
    pub fn check(&self, what: &str, reference: &[f64], got: &[f64]) -> Result<(), String> {
        if reference.len() != got.len() {
            return Err(format!(
                "{what}: {} values, expected {}",
                got.len(),
                reference.len()
            ));
        }
        let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let mut worst: Option<(usize, f64)> = None;
        for (i, (r, g)) in reference.iter().zip(got).enumerate() {
            if !g.is_finite() {
                return Err(format!("{what}[{i}] = {g} (reference {r})"));
            }
            let err = (g - r).abs();
            let allowed = self.atol * scale + self.rtol * r.abs();
            let worse = match worst {
                Some((_, e)) => err > e,
                None => true,
            };
            if err > allowed && worse {
                worst = Some((i, err));
            }
        }
        match worst {
            None => Ok(()),
            Some((i, err)) => Err(format!(
                "{what}[{i}] = {} but reference {} (error {err:.3e}, allowed {:.3e} + {:.3e}·|ref|, max|ref| {scale:.3e})",
                got[i],
                reference[i],
                self.atol * scale,
                self.rtol
            )),
        }
    }
}

/// Compares router outputs with the documented tie rule.
///
/// Row by row: every index must be valid and distinct; at every slot the chosen
/// expert's reference score must equal the reference's score at that slot within
/// `tie_tol` (relative to the row's max score), so only near-ties may swap; the
/// weights are compared against `weights_for(row, chosen indices)`, the
/// reference weights of the set the kernel actually chose.
pub fn check_topk(
    reference: &crate::reference::topk::TopK,
    got_weights: &[f32],
    got_indices: &[u32],
    e: usize,
    tie_tol: f64,
    weight_tol: Tolerance,
    weights_for: &dyn Fn(usize, &[u32]) -> Vec<f64>,
) -> Result<(), String> {
    let k = reference.k;
    let rows = reference.indices.len() / k;
    if got_weights.len() != rows * k || got_indices.len() != rows * k {
        return Err(format!(
            "router output has {} / {} values, expected {}",
            got_weights.len(),
            got_indices.len(),
            rows * k
        ));
    }
    for t in 0..rows {
        let gi = &got_indices[t * k..(t + 1) * k];
        let ri = &reference.indices[t * k..(t + 1) * k];
        let scores = &reference.scores[t * e..(t + 1) * e];
        let scale = scores
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.0f64, |m, v| m.max(v.abs()))
            .max(1e-30);
        for (slot, &i) in gi.iter().enumerate() {
            if i as usize >= e {
                return Err(format!("row {t} slot {slot}: index {i} >= E={e}"));
            }
            if gi[..slot].contains(&i) {
                return Err(format!("row {t}: expert {i} chosen twice ({gi:?})"));
            }
            let (sg, sr) = (scores[i as usize], scores[ri[slot] as usize]);
            let same = i == ri[slot] || (sg.is_finite() && (sg - sr).abs() <= tie_tol * scale);
            if !same {
                return Err(format!(
                    "row {t} slot {slot}: expert {i} (score {sg}) but reference expert {} (score {sr}); got {gi:?}, reference {ri:?}",
                    ri[slot]
                ));
            }
        }
        let want = weights_for(t, gi);
        let got: Vec<f64> = got_weights[t * k..(t + 1) * k]
            .iter()
            .map(|&v| v as f64)
            .collect();
        weight_tol.check(&format!("row {t} weights"), &want, &got)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::topk::{softmax_topk, softmax_weights};

    #[test]
    fn zero_output_never_passes() {
        let t = Tolerance::for_dtype(DType::BF16);
        assert!(t.check("x", &[1.0, -2.0], &[0.0, 0.0]).is_err());
        assert!(t.check("x", &[1.0, -2.0], &[1.0, -2.0]).is_ok());
        assert!(t.check("x", &[1.0], &[f64::NAN]).is_err());
        assert!(t.check("x", &[1.0], &[1.0, 2.0]).is_err());
    }

    #[test]
    fn one_bf16_ulp_passes_and_ten_do_not() {
        let t = Tolerance::for_dtype(DType::BF16);
        let u = 2f64.powi(-7);
        assert!(t.check("x", &[1.0, 1.0], &[1.0 + u, 1.0]).is_ok());
        assert!(t.check("x", &[1.0, 1.0], &[1.0 + 10.0 * u, 1.0]).is_err());
    }

    #[test]
    fn topk_accepts_exact_answers_and_rejects_wrong_experts() {
        let logits = [0.1, 3.0, 2.0, 2.0, -1.0, 0.0, 0.5, 1.0];
        let r = softmax_topk(&logits, 8, 2, true);
        let w: Vec<f32> = r.weights.iter().map(|&v| v as f32).collect();
        let p = r.scores.clone();
        let wf = |_: usize, idx: &[u32]| softmax_weights(&p, idx, true);
        let tol = Tolerance::for_dtype(DType::F32);
        assert!(check_topk(&r, &w, &r.indices, 8, 1e-6, tol, &wf).is_ok());
        // Swapping the exact tie (experts 2 and 3) at slot 1 is allowed.
        assert!(check_topk(&r, &w, &[1, 3], 8, 1e-6, tol, &wf).is_ok());
        assert!(check_topk(&r, &w, &[1, 7], 8, 1e-6, tol, &wf).is_err());
        assert!(check_topk(&r, &w, &[1, 1], 8, 1e-6, tol, &wf).is_err());
        assert!(check_topk(&r, &w, &[1, 8], 8, 1e-6, tol, &wf).is_err());
    }
}
