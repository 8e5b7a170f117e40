//! The MoE combine, and the decode path's gathered expert pair: gate/up
//! mat-vec with fused SwiGLU, then down projection fused with the weighted
//! combine (and the shared expert).

use candle_core::{DType, Tensor};
use kiln_kernels::ops::moe_combine::MoeCombineConfig;

use super::{host, kernel_dtype};
use crate::error::{op_error, Result};

/// `out[T,D] = Σ_k weights[t,k] · expert_out[t,k,:] (+ shared[t,:])`, f32 inside.
pub fn moe_combine(
    expert_out: &Tensor,
    weights: &Tensor,
    shared: Option<&Tensor>,
) -> Result<Tensor> {
    let op = "moe_combine";
    let (t, k, d) = expert_out.dims3()?;
    if weights.dims() != [t, k] || weights.dtype() != DType::F32 {
        return Err(op_error(op, format!("weights must be f32 [{t}, {k}]")));
    }
    if let Some(s) = shared {
        if s.dims() != [t, d] || s.dtype() != expert_out.dtype() {
            return Err(op_error(
                op,
                format!("shared must be [{t}, {d}] like expert_out"),
            ));
        }
    }
    let c = MoeCombineConfig {
        d,
        k,
        has_shared: shared.is_some(),
        dtype: kernel_dtype(op, expert_out.dtype())?,
    };
    let expert_out = expert_out.contiguous()?;
    let weights = weights.contiguous()?;
    let shared = shared.map(|s| s.contiguous()).transpose()?;
    if expert_out.device().is_cpu() {
        let s = shared.as_ref().map(host::values).transpose()?;
        let out = kiln_kernels::reference::moe_combine::moe_combine(
            &host::values(&expert_out)?,
            &host::values(&weights)?,
            s.as_deref(),
            d,
            k,
            c.dtype,
        );
        return host::tensor(out, (t, d), expert_out.dtype(), expert_out.device());
    }
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, run, Param};
        let dev = cuda_device(op, &expert_out)?;
        let mut o = run(
            &c,
            &dev,
            t,
            &[
                Param::In(&expert_out),
                Param::In(&weights),
                Param::Maybe(shared.as_ref()),
                Param::Out,
                Param::I32(t as i32),
            ],
            &[(expert_out.dtype(), candle_core::Shape::from((t, d)))],
        )?;
        o.pop().ok_or_else(|| op_error(op, "missing output"))
    }
    #[cfg(not(feature = "cuda"))]
    Err(super::no_cuda(op))
}

/// Gathered gate/up mat-vec with fused SwiGLU:
/// `h[t,k,:] = silu(w_gate[e]·x[t]) ⊙ (w_up[e]·x[t])`, `e = indices[t,k]`.
/// `x[T,H]`, `w_gate`/`w_up` `[E,I,H]`, `indices[T,K]` u32 → `h[T,K,I]`.
pub fn expert_swiglu(
    x: &Tensor,
    w_gate: &Tensor,
    w_up: &Tensor,
    indices: &Tensor,
) -> Result<Tensor> {
    use kiln_kernels::ops::moe_expert::MoeExpertSwigluConfig;
    let op = "moe_expert_swiglu";
    let (t, h) = x.dims2()?;
    let (e, i, h2) = w_gate.dims3()?;
    let (t2, k) = indices.dims2()?;
    if h2 != h || w_up.dims() != w_gate.dims() || t2 != t || indices.dtype() != DType::U32 {
        return Err(op_error(
            op,
            format!(
                "x {:?}, w_gate {:?}, w_up {:?}, indices {:?} ({:?}) do not fit",
                x.dims(),
                w_gate.dims(),
                w_up.dims(),
                indices.dims(),
                indices.dtype()
            ),
        ));
    }
    let c = MoeExpertSwigluConfig::new(h, i, e, k, kernel_dtype(op, x.dtype())?);
    let (x, w_gate, w_up, indices) = (
        x.contiguous()?,
        w_gate.contiguous()?,
        w_up.contiguous()?,
        indices.contiguous()?,
    );
    if x.device().is_cpu() {
        let idx: Vec<u32> = indices.flatten_all()?.to_vec1()?;
        let out = kiln_kernels::reference::moe_expert::moe_expert_swiglu(
            &host::values(&x)?,
            &host::values(&w_gate)?,
            &host::values(&w_up)?,
            &idx,
            c.dims(),
            c.silu_in_dtype,
            c.dtype,
        );
        return host::tensor(out, (t, k, i), x.dtype(), x.device());
    }
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, run, Param};
        let dev = cuda_device(op, &x)?;
        let mut o = run(
            &c,
            &dev,
            t,
            &[
                Param::In(&x),
                Param::In(&w_gate),
                Param::In(&w_up),
                Param::In(&indices),
                Param::Out,
                Param::I32(t as i32),
            ],
            &[(x.dtype(), candle_core::Shape::from((t, k, i)))],
        )?;
        o.pop().ok_or_else(|| op_error(op, "missing output"))
    }
    #[cfg(not(feature = "cuda"))]
    Err(super::no_cuda(op))
}

/// Gathered down projection fused with the weighted combine:
/// `out[t] = Σ_k w'[t,k]·(w_down[e]·h[t,k]) (+ shared[t])`, f32 inside;
/// `w'` is the weight rounded to the dtype when `round_weights` (Qwen3).
/// `h[T,K,I]`, `w_down[E,H,I]`, `indices`/`weights` `[T,K]` → `[T,H]`.
pub fn expert_down(
    h: &Tensor,
    w_down: &Tensor,
    indices: &Tensor,
    weights: &Tensor,
    shared: Option<&Tensor>,
    round_weights: bool,
) -> Result<Tensor> {
    use kiln_kernels::ops::moe_expert::MoeExpertDownConfig;
    use kiln_kernels::reference::moe_expert::DownInputs;
    let op = "moe_expert_down";
    let (t, k, i) = h.dims3()?;
    let (e, hd, i2) = w_down.dims3()?;
    if i2 != i
        || indices.dims() != [t, k]
        || weights.dims() != [t, k]
        || weights.dtype() != DType::F32
    {
        return Err(op_error(
            op,
            format!(
                "h {:?}, w_down {:?}, indices {:?}, weights {:?} do not fit",
                h.dims(),
                w_down.dims(),
                indices.dims(),
                weights.dims()
            ),
        ));
    }
    if let Some(s) = shared {
        if s.dims() != [t, hd] {
            return Err(op_error(op, format!("shared must be [{t}, {hd}]")));
        }
    }
    let c = MoeExpertDownConfig {
        has_shared: shared.is_some(),
        weight_in_dtype: round_weights,
        ..MoeExpertDownConfig::new(hd, i, e, k, kernel_dtype(op, h.dtype())?)
    };
    let (h, w_down, indices, weights) = (
        h.contiguous()?,
        w_down.contiguous()?,
        indices.contiguous()?,
        weights.contiguous()?,
    );
    let shared = shared.map(|s| s.contiguous()).transpose()?;
    if h.device().is_cpu() {
        let idx: Vec<u32> = indices.flatten_all()?.to_vec1()?;
        let s = shared.as_ref().map(host::values).transpose()?;
        let (hv, wv, ww) = (
            host::values(&h)?,
            host::values(&w_down)?,
            host::values(&weights)?,
        );
        let out = kiln_kernels::reference::moe_expert::moe_expert_down(
            &DownInputs {
                h: &hv,
                w_down: &wv,
                indices: &idx,
                weights: &ww,
                shared: s.as_deref(),
            },
            c.dims(),
            c.weight_in_dtype,
            c.dtype,
        );
        return host::tensor(out, (t, hd), h.dtype(), h.device());
    }
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, run, Param};
        let dev = cuda_device(op, &h)?;
        let mut o = run(
            &c,
            &dev,
            t,
            &[
                Param::In(&h),
                Param::In(&w_down),
                Param::In(&indices),
                Param::In(&weights),
                Param::Maybe(shared.as_ref()),
                Param::Out,
                Param::I32(t as i32),
            ],
            &[(h.dtype(), candle_core::Shape::from((t, hd)))],
        )?;
        o.pop().ok_or_else(|| op_error(op, "missing output"))
    }
    #[cfg(not(feature = "cuda"))]
    Err(super::no_cuda(op))
}

/// The compile inputs of `append_shared_expert` (no dtype: f32 weights, u32 indices).
pub fn append_shared_expert_build() -> kiln_kernels::KernelBuild {
    kiln_kernels::KernelBuild {
        name: "append_shared_expert.cu".into(),
        entry: "append_shared_expert".into(),
        source: include_str!("../../kernels/append_shared_expert.cu").into(),
        defines: vec![],
    }
}

/// The router's `weights[T,K]` (f32) and `indices[T,K]` (u32) with the
/// stacked shared expert appended as column K: weight exactly 1, index `e`.
pub fn append_shared_expert(
    weights: &Tensor,
    indices: &Tensor,
    e: usize,
) -> Result<(Tensor, Tensor)> {
    let op = "append_shared_expert";
    let (t, k) = weights.dims2()?;
    if indices.dims() != [t, k] || weights.dtype() != DType::F32 || indices.dtype() != DType::U32 {
        return Err(op_error(
            op,
            format!(
                "weights {:?} ({:?}) and indices {:?} ({:?}) must be f32 and u32 [T, K]",
                weights.dims(),
                weights.dtype(),
                indices.dims(),
                indices.dtype()
            ),
        ));
    }
    if weights.device().is_cpu() {
        let ones = Tensor::ones((t, 1), DType::F32, weights.device())?;
        let shared = Tensor::full(e as u32, (t, 1), weights.device())?;
        return Ok((
            Tensor::cat(&[weights, &ones], 1)?,
            Tensor::cat(&[indices, &shared], 1)?,
        ));
    }
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, function, run_kernel, Param};
        let dev = cuda_device(op, weights)?;
        let (weights, indices) = (weights.contiguous()?, indices.contiguous()?);
        let func = function(&dev, &append_shared_expert_build())?;
        let n = t * (k + 1);
        let dims = kiln_kernels::LaunchDims {
            grid: (n.div_ceil(128) as u32, 1, 1),
            block: (128, 1, 1),
            smem: 0,
        };
        let mut outs = run_kernel(
            op,
            &dev,
            &func,
            &dims,
            &[
                Param::In(&weights),
                Param::In(&indices),
                Param::Out,
                Param::Out,
                Param::I32(t as i32),
                Param::I32(k as i32),
                Param::I32(e as i32),
            ],
            &[
                (DType::F32, (t, k + 1).into()),
                (DType::U32, (t, k + 1).into()),
            ],
        )?
        .into_iter();
        match (outs.next(), outs.next()) {
            (Some(w), Some(i)) => Ok((w, i)),
            _ => Err(op_error(op, "missing outputs")),
        }
    }
    #[cfg(not(feature = "cuda"))]
    Err(super::no_cuda(op))
}
