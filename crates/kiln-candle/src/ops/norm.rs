//! RMSNorm (also per-head qk-norm) and the residual add fused with it.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use kiln_kernels::ops::norm::{AddRmsNormConfig, RmsNormConfig};

use super::{host, kernel_dtype, rows};
use crate::error::{op_error, Result};

/// `rmsnorm(x[.., D]) * w[D]` with the catalog kernel: a candle custom op.
#[derive(Debug, Clone, Copy)]
pub struct RmsNorm {
    /// Row length, eps and casting rule (the dtype is taken from `x`).
    pub d: usize,
    /// Added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    fn config(&self, dtype: candle_core::DType) -> Result<RmsNormConfig> {
        Ok(RmsNormConfig::new(
            self.d,
            self.eps,
            kernel_dtype("rmsnorm", dtype)?,
        ))
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "kiln-rmsnorm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let c = self.config(xs.dtype())?;
        rows("rmsnorm", xl.shape(), self.d)?;
        let x = host::storage_values(xs, xl)?;
        let w = host::storage_values(ws, wl)?;
        let out = kiln_kernels::reference::norm::rmsnorm(
            &x,
            &w,
            c.d,
            c.eps,
            c.cast_before_scale,
            c.dtype,
        );
        Ok((host::storage(&out, xs.dtype())?, xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::device::{alloc, launch, prepare, Arg};
        use candle_core::backend::BackendStorage;
        let c = self.config(xs.dtype())?;
        let t = rows("rmsnorm", xl.shape(), self.d)?;
        if wl.shape().elem_count() != self.d || !xl.is_contiguous() || !wl.is_contiguous() {
            return Err(op_error("rmsnorm", "x must be contiguous and w hold D values").into());
        }
        let dev = xs.device().clone();
        let (func, dims) = prepare(&c, &dev, t)?;
        let mut out = alloc(&dev, xs.dtype(), t * self.d)?;
        launch(
            "rmsnorm",
            &dev,
            &func,
            &dims,
            vec![
                Arg::In(xs, xl.start_offset()),
                Arg::In(ws, wl.start_offset()),
                Arg::Out(&mut out),
                Arg::I32(t as i32),
            ],
        )?;
        Ok((out, xl.shape().clone()))
    }
}

/// `rmsnorm(x) * w` over the last dimension of `x`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    Ok(x.contiguous()?.apply_op2_no_bwd(w, &RmsNorm { d, eps })?)
}

/// `h = x + residual` (rounded to the dtype) and `rmsnorm(h) * w`: returns
/// `(normed, h)`, one kernel for both.
pub fn add_rms_norm(
    x: &Tensor,
    residual: &Tensor,
    w: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let op = "add_rmsnorm";
    let d = x.dim(candle_core::D::Minus1)?;
    let c = AddRmsNormConfig(RmsNormConfig::new(d, eps, kernel_dtype(op, x.dtype())?));
    if residual.shape() != x.shape() || w.elem_count() != d {
        return Err(op_error(
            op,
            format!(
                "x {:?}, residual {:?} and w {:?} do not match",
                x.dims(),
                residual.dims(),
                w.dims()
            ),
        ));
    }
    let t = rows(op, x.shape(), d)?;
    let (x, residual, w) = (x.contiguous()?, residual.contiguous()?, w.contiguous()?);
    if x.device().is_cpu() {
        let (n, h) = kiln_kernels::reference::norm::add_rmsnorm(
            &host::values(&x)?,
            &host::values(&residual)?,
            &host::values(&w)?,
            d,
            eps,
            c.0.cast_before_scale,
            c.0.dtype,
        );
        let dev = x.device();
        return Ok((
            host::tensor(n, x.shape(), x.dtype(), dev)?,
            host::tensor(h, x.shape(), x.dtype(), dev)?,
        ));
    }
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, run, Param};
        let dev = cuda_device(op, &x)?;
        let shape = x.shape().clone();
        let mut o = run(
            &c,
            &dev,
            t,
            &[
                Param::In(&x),
                Param::In(&residual),
                Param::In(&w),
                Param::Out,
                Param::Out,
                Param::I32(t as i32),
            ],
            &[(x.dtype(), shape.clone()), (x.dtype(), shape)],
        )?;
        let h = o.pop();
        let normed = o.pop();
        normed.zip(h).ok_or_else(|| op_error(op, "missing outputs"))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = t;
        Err(super::no_cuda(op))
    }
}
