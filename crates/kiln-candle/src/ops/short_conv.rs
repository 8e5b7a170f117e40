//! LFM2's gated short convolution (`short_conv`), updating its state in place.

use candle_core::Tensor;
use kiln_kernels::ops::short_conv::ShortConvConfig;

use super::{host, kernel_dtype};
use crate::error::{op_error, Result};

/// `C ⊙ conv(B ⊙ x)` over `bcx[T, 3D]` (B | C | x per row) with the depthwise
/// causal kernel `w[D, L]`, after the `L-1` rows of `state[L-1, D]`, which it
/// then replaces with the last `L-1` rows of `B ⊙ x`, in place (its address
/// stays: a decode graph reads it there). Returns `[T, D]`.
pub fn short_conv(bcx: &Tensor, w: &Tensor, state: &Tensor) -> Result<Tensor> {
    let op = "short_conv";
    let (t, d3) = bcx.dims2()?;
    let (d, l) = w.dims2()?;
    if d3 != 3 * d || state.dims() != [l - 1, d] || !state.is_contiguous() {
        return Err(op_error(
            op,
            format!(
                "bcx {:?}, w {:?}, state {:?} (contiguous) do not fit",
                bcx.dims(),
                w.dims(),
                state.dims()
            ),
        ));
    }
    if bcx.dtype() != w.dtype() || state.dtype() != w.dtype() {
        return Err(op_error(op, "bcx, w and state must share one dtype"));
    }
    let c = ShortConvConfig::new(d, l, kernel_dtype(op, bcx.dtype())?);
    let (bcx, w) = (bcx.contiguous()?, w.contiguous()?);
    if bcx.device().is_cpu() {
        let (out, next) = kiln_kernels::reference::short_conv::short_conv(
            &host::values(&bcx)?,
            &host::values(&w)?,
            &host::values(state)?,
            c.shape,
            c.dtype,
        );
        let next = host::tensor(next, (l - 1, d), state.dtype(), state.device())?;
        state.slice_set(&next, 0, 0)?;
        return host::tensor(out, (t, d), bcx.dtype(), bcx.device());
    }
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, run, Param};
        let dev = cuda_device(op, &bcx)?;
        let mut o = run(
            &c,
            &dev,
            t,
            &[
                Param::In(&bcx),
                Param::In(&w),
                Param::InPlace(state),
                Param::Out,
                Param::I32(t as i32),
            ],
            &[(bcx.dtype(), candle_core::Shape::from((t, d)))],
        )?;
        o.pop().ok_or_else(|| op_error(op, "missing output"))
    }
    #[cfg(not(feature = "cuda"))]
    Err(super::no_cuda(op))
}
