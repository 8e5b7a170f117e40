//! moe_expert_swiglu and moe_expert_down references: the routed experts of a
//! decode MoE layer, gathered by index.
//!
//! Rounding follows HF eager: each linear's output is a model-dtype tensor
//! (`gate_proj(x)`, `up_proj(x)`, `down_proj(h)` are rounded), `act_fn`
//! returns the model dtype (`silu_in_dtype`), and Qwen3 casts its routing
//! weights to the model dtype (`weight_in_dtype`). The combine rounds once
//! (HF rounds every weighted expert output and accumulates in the dtype; kiln,
//! like moe_combine, sums in f32 and rounds at the end). An index `>= E` names
//! no expert: its `h` row is zeros and it adds nothing to `out`.

use crate::DType;

/// Static dims of the gathered expert ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertDims {
    /// Hidden size (the mat-vec input of gate/up, the output of down).
    pub h: usize,
    /// Expert intermediate width.
    pub i: usize,
    /// Experts stacked in the weights (indices `>= e` are empty slots).
    pub e: usize,
    /// Slots per token.
    pub k: usize,
}

/// The expert of slot `s`, or `None` for an out-of-range index.
fn expert(indices: &[u32], s: usize, e: usize) -> Option<usize> {
    let x = indices[s] as usize;
    (x < e).then_some(x)
}

/// Dot product of two equal-length rows in f64.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `h[t,k,i] = silu(dtype(w_gate[e,i]·x[t])) * dtype(w_up[e,i]·x[t])` with
/// `e = indices[t,k]`; `silu_in_dtype` rounds `silu(g)` first (HF eager).
///
/// Shapes: `x[T,H]`, `w_gate`/`w_up` `[E,I,H]`, `indices[T,K]`; returns `h[T,K,I]`.
pub fn moe_expert_swiglu(
    x: &[f64],
    w_gate: &[f64],
    w_up: &[f64],
    indices: &[u32],
    dims: ExpertDims,
    silu_in_dtype: bool,
    dtype: DType,
) -> Vec<f64> {
    let ExpertDims { h, i, e, k } = dims;
    let slots = indices.len();
    let mut out = Vec::with_capacity(slots * i);
    for s in 0..slots {
        let Some(ex) = expert(indices, s, e) else {
            out.resize(out.len() + i, 0.0);
            continue;
        };
        let xr = &x[(s / k) * h..(s / k + 1) * h];
        for r in 0..i {
            let row = (ex * i + r) * h..(ex * i + r + 1) * h;
            let g = dtype.round(dot(&w_gate[row.clone()], xr));
            let u = dtype.round(dot(&w_up[row], xr));
            let silu = g / (1.0 + (-g).exp());
            let silu = if silu_in_dtype {
                dtype.round(silu)
            } else {
                silu
            };
            out.push(dtype.round(silu * u));
        }
    }
    out
}

/// The inputs of [`moe_expert_down`].
#[derive(Debug, Clone, Copy)]
pub struct DownInputs<'a> {
    /// `h[T,K,I]`: the activated expert intermediates.
    pub h: &'a [f64],
    /// `w_down[E,H,I]`.
    pub w_down: &'a [f64],
    /// `indices[T,K]`.
    pub indices: &'a [u32],
    /// `weights[T,K]` (f32 values).
    pub weights: &'a [f64],
    /// `shared[T,H]`, added unweighted when present.
    pub shared: Option<&'a [f64]>,
}

/// `out[t] = dtype(Σ_k w'_k·dtype(w_down[e_k]·h[t,k]) (+ shared[t]))` with
/// `w'_k = dtype(weights[t,k])` when `weight_in_dtype`, else the f32 weight;
/// slots with an index `>= E` add nothing. Returns `out[T,H]`.
pub fn moe_expert_down(
    inputs: &DownInputs<'_>,
    dims: ExpertDims,
    weight_in_dtype: bool,
    dtype: DType,
) -> Vec<f64> {
    let ExpertDims { h, i, e, k } = dims;
    let t = inputs.indices.len() / k;
    let mut out = Vec::with_capacity(t * h);
    for ti in 0..t {
        // y[k][r] for this token, computed once per slot.
        let mut ys: Vec<Option<(f64, Vec<f64>)>> = Vec::with_capacity(k);
        for ki in 0..k {
            let s = ti * k + ki;
            ys.push(expert(inputs.indices, s, e).map(|ex| {
                let hr = &inputs.h[s * i..(s + 1) * i];
                let y = (0..h)
                    .map(|r| {
                        let row = (ex * h + r) * i..(ex * h + r + 1) * i;
                        dtype.round(dot(&inputs.w_down[row], hr))
                    })
                    .collect();
                let w = inputs.weights[s];
                (if weight_in_dtype { dtype.round(w) } else { w }, y)
            }));
        }
        for r in 0..h {
            let mut acc: f64 = ys.iter().flatten().map(|(w, y)| w * y[r]).sum();
            if let Some(sh) = inputs.shared {
                acc += sh[ti * h + r];
            }
            out.push(dtype.round(acc));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silu(g: f64) -> f64 {
        g / (1.0 + (-g).exp())
    }

    #[test]
    fn swiglu_by_hand() {
        // H=2, I=2, E=2, K=2; one token choosing experts 1 and 0.
        let dims = ExpertDims {
            h: 2,
            i: 2,
            e: 2,
            k: 2,
        };
        let x = [1.0, 2.0];
        // Expert 0: gate rows [1,0],[0,1]; expert 1: gate rows [1,1],[-1,0].
        let wg = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.0];
        // Expert 0: up rows [2,0],[0,0]; expert 1: up rows [0,1],[1,1].
        let wu = [2.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let out = moe_expert_swiglu(&x, &wg, &wu, &[1, 0], dims, false, DType::F32);
        let f = |v: f64| v as f32 as f64;
        // Slot 0 (expert 1): g = [3, -1], u = [2, 3].
        assert_eq!(out[0], f(silu(3.0) * 2.0));
        assert_eq!(out[1], f(silu(-1.0) * 3.0));
        // Slot 1 (expert 0): g = [1, 2], u = [2, 0].
        assert_eq!(out[2], f(silu(1.0) * 2.0));
        assert_eq!(out[3], 0.0);
    }

    #[test]
    fn swiglu_rounds_the_linear_outputs_and_silu() {
        let dims = ExpertDims {
            h: 1,
            i: 1,
            e: 1,
            k: 1,
        };
        // g = 1 + 2^-9 rounds to 1 in bf16 before the activation.
        let g = 1.0 + 2f64.powi(-9);
        let out = moe_expert_swiglu(&[1.0], &[g], &[3.0], &[0], dims, true, DType::BF16);
        let s = DType::BF16.round(silu(1.0));
        assert_eq!(out[0], DType::BF16.round(s * 3.0));
        let one = moe_expert_swiglu(&[1.0], &[g], &[3.0], &[0], dims, false, DType::BF16);
        assert_eq!(one[0], DType::BF16.round(silu(1.0) * 3.0));
    }

    #[test]
    fn out_of_range_slots_are_zero_and_add_nothing() {
        let dims = ExpertDims {
            h: 2,
            i: 2,
            e: 1,
            k: 2,
        };
        let x = [1.0, -1.0];
        let w = [1.0, 2.0, 3.0, 4.0];
        let h = moe_expert_swiglu(&x, &w, &w, &[0, 1], dims, true, DType::F32);
        assert_ne!(h[..2], [0.0, 0.0]);
        assert_eq!(h[2..], [0.0, 0.0]);
        let h = moe_expert_swiglu(&x, &w, &w, &[u32::MAX, 0], dims, true, DType::F32);
        assert_eq!(h[..2], [0.0, 0.0]);
        // Down: the invalid slot's weight (even NaN) is never used.
        let hin = [1.0, 1.0, 5.0, 5.0];
        let inputs = DownInputs {
            h: &hin,
            w_down: &w,
            indices: &[0, 7],
            weights: &[0.5, f64::NAN],
            shared: None,
        };
        let out = moe_expert_down(&inputs, dims, false, DType::F32);
        assert_eq!(out, vec![0.5 * 3.0, 0.5 * 7.0]);
    }

    #[test]
    fn down_is_linear_in_weights_and_adds_shared() {
        // H=2, I=2, E=3, K=2, T=1.
        let dims = ExpertDims {
            h: 2,
            i: 2,
            e: 3,
            k: 2,
        };
        let w_down: Vec<f64> = (0..12).map(|v| v as f64 - 5.0).collect();
        let hin = [1.0, 2.0, -1.0, 0.5];
        let run = |w: [f64; 2], shared: Option<&[f64]>| {
            let inputs = DownInputs {
                h: &hin,
                w_down: &w_down,
                indices: &[2, 0],
                weights: &w,
                shared,
            };
            moe_expert_down(&inputs, dims, false, DType::F32)
        };
        let a = run([1.0, 0.0], None);
        let b = run([0.0, 1.0], None);
        let ab = run([2.0, 0.5], None);
        for r in 0..2 {
            assert_eq!(ab[r], 2.0 * a[r] + 0.5 * b[r]);
        }
        // Expert 2 rows: [3,4] and [5,6]: y = [3+8, 5+12]; expert 0 rows [-5,-4], [-3,-2]:
        // y = [5-2, 3-1].
        assert_eq!(a, vec![11.0, 17.0]);
        assert_eq!(b, vec![3.0, 2.0]);
        assert_eq!(run([1.0, 0.0], Some(&[1.0, -1.0])), vec![12.0, 16.0]);
    }

    #[test]
    fn down_rounds_each_expert_output_and_optionally_the_weight() {
        let dims = ExpertDims {
            h: 1,
            i: 8,
            e: 1,
            k: 1,
        };
        // y = 1 + 2^-9 (exact in f64) rounds to 1 in bf16.
        let mut hin = vec![0.0; 8];
        hin[0] = 1.0;
        hin[1] = 2f64.powi(-9);
        let w_down = vec![1.0; 8];
        let weight = 1.0 + 2f64.powi(-10); // an f32 weight that bf16 rounds to 1
        let inputs = DownInputs {
            h: &hin,
            w_down: &w_down,
            indices: &[0],
            weights: &[weight],
            shared: None,
        };
        let f32w = moe_expert_down(&inputs, dims, false, DType::F32);
        assert_eq!(f32w[0], ((1.0 + 2f64.powi(-9)) * weight) as f32 as f64);
        assert_eq!(moe_expert_down(&inputs, dims, true, DType::BF16)[0], 1.0);
        let big = DownInputs {
            weights: &[1.0 + 2f64.powi(-6)],
            ..inputs
        };
        assert_eq!(
            moe_expert_down(&big, dims, false, DType::BF16)[0],
            DType::BF16.round(1.0 + 2f64.powi(-6))
        );
    }

    #[test]
    fn down_of_swiglu_matches_a_dense_two_layer_mlp() {
        // With K=1 and weight 1, the pair is the plain HF MLP of the chosen expert.
        let dims = ExpertDims {
            h: 3,
            i: 2,
            e: 2,
            k: 1,
        };
        let x = [0.5, -1.0, 2.0];
        let wg: Vec<f64> = (0..12).map(|v| (v as f64 - 6.0) / 8.0).collect();
        let wu: Vec<f64> = (0..12)
            .map(|v| (v as f64 * 3.0 % 7.0 - 3.0) / 4.0)
            .collect();
        let wd: Vec<f64> = (0..12)
            .map(|v| (v as f64 * 5.0 % 11.0 - 5.0) / 8.0)
            .collect();
        let h = moe_expert_swiglu(&x, &wg, &wu, &[1], dims, false, DType::F32);
        let inputs = DownInputs {
            h: &h,
            w_down: &wd,
            indices: &[1],
            weights: &[1.0],
            shared: None,
        };
        let out = moe_expert_down(&inputs, dims, false, DType::F32);
        for r in 0..3 {
            let mut want = 0.0;
            for c in 0..2 {
                let g = (0..3).map(|j| wg[(2 + c) * 3 + j] * x[j]).sum::<f64>() as f32 as f64;
                let u = (0..3).map(|j| wu[(2 + c) * 3 + j] * x[j]).sum::<f64>() as f32 as f64;
                want += wd[(3 + r) * 2 + c] * (silu(g) * u) as f32 as f64;
            }
            assert_eq!(out[r], want as f32 as f64);
        }
    }
}
