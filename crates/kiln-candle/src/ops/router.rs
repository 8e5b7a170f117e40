//! MoE routers: softmax top-k (Qwen3) and sigmoid top-k with a selection bias
//! (GLM-4.7-Flash, DeepSeek-V3, LFM2). Each returns `(weights[T,K] f32,
//! indices[T,K] u32)`, sorted by descending weight.

use candle_core::{DType, Tensor};
use kiln_kernels::ops::topk::{SigmoidTopkConfig, SoftmaxTopkConfig};
use kiln_kernels::reference::topk::{SigmoidRouting, TopK};

use super::{host, kernel_dtype, rows};
use crate::error::{op_error, Result};

/// Softmax over all E logits in f32, top-k, optional renormalisation.
pub fn softmax_topk(logits: &Tensor, k: usize, renorm: bool) -> Result<(Tensor, Tensor)> {
    let e = logits.dim(candle_core::D::Minus1)?;
    let c = SoftmaxTopkConfig {
        e,
        k,
        renorm,
        dtype: kernel_dtype("softmax_topk", logits.dtype())?,
    };
    let t = rows("softmax_topk", logits.shape(), e)?;
    let logits = logits.contiguous()?;
    if logits.device().is_cpu() {
        let v = host::values(&logits)?;
        let picks: Vec<TopK> = v
            .chunks(e)
            .map(|row| kiln_kernels::reference::topk::softmax_topk(row, e, k, renorm))
            .collect();
        return to_tensors(&picks, t, k, logits.device());
    }
    launch_router(&c, &logits, None, t, k)
}

/// Sigmoid scores; `bias` (f32, E) only chooses; renormalise with eps; scale.
pub fn sigmoid_topk(
    logits: &Tensor,
    bias: &Tensor,
    routing: SigmoidRouting,
) -> Result<(Tensor, Tensor)> {
    let e = routing.e;
    let k = routing.k;
    let t = rows("sigmoid_topk", logits.shape(), e)?;
    if kernel_dtype("sigmoid_topk", logits.dtype())? != routing.dtype {
        return Err(op_error(
            "sigmoid_topk",
            format!(
                "logits are {:?}, the routing says {}",
                logits.dtype(),
                routing.dtype
            ),
        ));
    }
    if bias.dtype() != DType::F32 || bias.elem_count() != e {
        return Err(op_error(
            "sigmoid_topk",
            format!("bias must be {e} f32 values"),
        ));
    }
    let c = SigmoidTopkConfig { routing };
    let (logits, bias) = (logits.contiguous()?, bias.contiguous()?);
    if logits.device().is_cpu() {
        let v = host::values(&logits)?;
        let b = host::values(&bias)?;
        let picks: Vec<TopK> = v
            .chunks(e)
            .map(|row| kiln_kernels::reference::topk::sigmoid_topk(row, &b, &routing))
            .collect();
        return to_tensors(&picks, t, k, logits.device());
    }
    launch_router(&c, &logits, Some(&bias), t, k)
}

fn to_tensors(
    picks: &[TopK],
    t: usize,
    k: usize,
    dev: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    let w: Vec<f32> = picks
        .iter()
        .flat_map(|p| p.weights.iter().map(|&x| x as f32))
        .collect();
    let i: Vec<u32> = picks
        .iter()
        .flat_map(|p| p.indices.iter().copied())
        .collect();
    Ok((
        Tensor::from_vec(w, (t, k), dev)?,
        Tensor::from_vec(i, (t, k), dev)?,
    ))
}

fn launch_router<C: kiln_kernels::OpConfig>(
    c: &C,
    logits: &Tensor,
    bias: Option<&Tensor>,
    t: usize,
    k: usize,
) -> Result<(Tensor, Tensor)> {
    let op = c.spec().name;
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, run, Param};
        let dev = cuda_device(op, logits)?;
        let mut params = vec![Param::In(logits)];
        if let Some(b) = bias {
            params.push(Param::In(b));
        }
        params.extend([Param::Out, Param::Out, Param::I32(t as i32)]);
        let mut o = run(
            c,
            &dev,
            t,
            &params,
            &[
                (DType::F32, candle_core::Shape::from((t, k))),
                (DType::U32, candle_core::Shape::from((t, k))),
            ],
        )?;
        let idx = o.pop();
        let w = o.pop();
        w.zip(idx).ok_or_else(|| op_error(op, "missing outputs"))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (logits, bias, t, k);
        Err(super::no_cuda(op))
    }
}
