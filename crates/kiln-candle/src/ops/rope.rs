//! Rotary position embedding on q and k in one kernel.

use candle_core::{DType, Tensor};
use kiln_kernels::ops::rope::RopeConfig;
use kiln_kernels::reference::rope::RopeShape;

use super::{host, kernel_dtype};
use crate::error::{op_error, Result};

/// Rotates `q[T,QH,HD]` and `k[T,KH,HD]` at `positions[T]` (i32): `(q, k)`.
pub fn rope(
    q: &Tensor,
    k: &Tensor,
    positions: &Tensor,
    shape: RopeShape,
) -> Result<(Tensor, Tensor)> {
    let op = "rope";
    let (t, qh, hd) = q.dims3()?;
    let (tk, kh, hdk) = k.dims3()?;
    if (tk, kh, hdk) != (t, shape.kh, shape.head_dim) || (qh, hd) != (shape.qh, shape.head_dim) {
        return Err(op_error(
            op,
            format!(
                "q {:?} / k {:?} do not match the rope shape {shape:?}",
                q.dims(),
                k.dims()
            ),
        ));
    }
    if positions.dtype() != DType::I32 || positions.elem_count() != t {
        return Err(op_error(op, format!("positions must be {t} i32 values")));
    }
    let c = RopeConfig {
        shape,
        dtype: kernel_dtype(op, q.dtype())?,
    };
    let (q, k, positions) = (q.contiguous()?, k.contiguous()?, positions.contiguous()?);
    if q.device().is_cpu() {
        let pos = host::integers(&positions)?;
        let qo = kiln_kernels::reference::rope::rope(&host::values(&q)?, qh, &pos, &shape, c.dtype);
        let ko = kiln_kernels::reference::rope::rope(&host::values(&k)?, kh, &pos, &shape, c.dtype);
        return Ok((
            host::tensor(qo, q.shape(), q.dtype(), q.device())?,
            host::tensor(ko, k.shape(), k.dtype(), k.device())?,
        ));
    }
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, run, Param};
        let dev = cuda_device(op, &q)?;
        let mut o = run(
            &c,
            &dev,
            t,
            &[
                Param::In(&q),
                Param::In(&k),
                Param::In(&positions),
                Param::Out,
                Param::Out,
                Param::I32(t as i32),
            ],
            &[
                (q.dtype(), q.shape().clone()),
                (k.dtype(), k.shape().clone()),
            ],
        )?;
        let ko = o.pop();
        let qo = o.pop();
        qo.zip(ko).ok_or_else(|| op_error(op, "missing outputs"))
    }
    #[cfg(not(feature = "cuda"))]
    Err(super::no_cuda(op))
}
