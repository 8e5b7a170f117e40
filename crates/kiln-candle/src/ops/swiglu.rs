//! SwiGLU, over separate gate/up tensors and over a packed `[gate | up]` one.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use kiln_kernels::ops::swiglu::SwigluConfig;

use super::{host, kernel_dtype, rows};
use crate::error::{op_error, Result};

/// `silu(gate) * up` with HF's rounding (silu output in the dtype): a custom op.
#[derive(Debug, Clone, Copy)]
pub struct Swiglu {
    /// Row length I.
    pub i: usize,
}

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "kiln-swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let c = SwigluConfig::new(self.i, kernel_dtype("swiglu", gs.dtype())?);
        if gl.shape() != ul.shape() {
            return Err(op_error("swiglu", "gate and up shapes differ").into());
        }
        let out = kiln_kernels::reference::swiglu::swiglu(
            &host::storage_values(gs, gl)?,
            &host::storage_values(us, ul)?,
            c.silu_in_dtype,
            c.dtype,
        );
        Ok((host::storage(&out, gs.dtype())?, gl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        us: &candle_core::CudaStorage,
        ul: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::device::{alloc, launch, prepare, Arg};
        let c = SwigluConfig::new(self.i, kernel_dtype("swiglu", gs.dtype())?);
        let t = rows("swiglu", gl.shape(), self.i)?;
        if gl.shape() != ul.shape() || !gl.is_contiguous() || !ul.is_contiguous() {
            return Err(op_error("swiglu", "gate and up must be contiguous and alike").into());
        }
        let dev = gs.device().clone();
        let (func, dims) = prepare(&c, &dev, t)?;
        let mut out = alloc(&dev, gs.dtype(), t * self.i)?;
        launch(
            "swiglu",
            &dev,
            &func,
            &dims,
            vec![
                Arg::In(gs, gl.start_offset()),
                Arg::In(us, ul.start_offset()),
                Arg::Out(&mut out),
                Arg::I32(t as i32),
            ],
        )?;
        Ok((out, gl.shape().clone()))
    }
}

/// SwiGLU over a packed `gate_up[.., 2I]` (gate first): a custom op.
#[derive(Debug, Clone, Copy)]
pub struct SwigluPacked {
    /// Output row length I (input rows are 2I).
    pub i: usize,
}

impl SwigluPacked {
    fn out_shape(&self, shape: &Shape) -> Shape {
        let mut dims = shape.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.i;
        }
        Shape::from(dims)
    }
}

impl CustomOp1 for SwigluPacked {
    fn name(&self) -> &'static str {
        "kiln-swiglu-packed"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let c = SwigluConfig::new(self.i, kernel_dtype("swiglu_packed", s.dtype())?);
        rows("swiglu_packed", l.shape(), 2 * self.i)?;
        let (g, u) = kiln_kernels::reference::swiglu::unpack(&host::storage_values(s, l)?, self.i);
        let out = kiln_kernels::reference::swiglu::swiglu(&g, &u, c.silu_in_dtype, c.dtype);
        Ok((host::storage(&out, s.dtype())?, self.out_shape(l.shape())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::device::{alloc, launch, prepare, Arg};
        use kiln_kernels::ops::swiglu::SwigluPackedConfig;
        let c = SwigluPackedConfig(SwigluConfig::new(
            self.i,
            kernel_dtype("swiglu_packed", s.dtype())?,
        ));
        let t = rows("swiglu_packed", l.shape(), 2 * self.i)?;
        if !l.is_contiguous() {
            return Err(op_error("swiglu_packed", "input must be contiguous").into());
        }
        let dev = s.device().clone();
        let (func, dims) = prepare(&c, &dev, t)?;
        let mut out = alloc(&dev, s.dtype(), t * self.i)?;
        launch(
            "swiglu_packed",
            &dev,
            &func,
            &dims,
            vec![
                Arg::In(s, l.start_offset()),
                Arg::Out(&mut out),
                Arg::I32(t as i32),
            ],
        )?;
        Ok((out, self.out_shape(l.shape())))
    }
}

/// `silu(gate) * up` over the last dimension.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let i = gate.dim(candle_core::D::Minus1)?;
    Ok(gate
        .contiguous()?
        .apply_op2_no_bwd(&up.contiguous()?, &Swiglu { i })?)
}

/// SwiGLU of a packed `[gate | up]` last dimension (2I → I).
pub fn swiglu_packed(gate_up: &Tensor) -> Result<Tensor> {
    let two_i = gate_up.dim(candle_core::D::Minus1)?;
    if two_i % 2 != 0 {
        return Err(op_error(
            "swiglu_packed",
            format!("last dimension {two_i} is odd"),
        ));
    }
    Ok(gate_up
        .contiguous()?
        .apply_op1_no_bwd(&SwigluPacked { i: two_i / 2 })?)
}

/// Whether `swiglu_packed` of row length `i` in `dtype` may be fused into the
/// projection before it ([`super::linear::gemv_swiglu`]): its catalog kernel
/// rounds silu in the dtype (the fused epilogue's arithmetic) and no pack or
/// discovered kernel replaces it.
pub fn packed_fusable(i: usize, dtype: candle_core::DType) -> Result<bool> {
    use kiln_kernels::ops::swiglu::SwigluPackedConfig;
    use kiln_kernels::OpConfig;
    let c = SwigluPackedConfig(SwigluConfig::new(i, kernel_dtype("swiglu_packed", dtype)?));
    Ok(c.0.silu_in_dtype && !super::pack::replaced(&c.build()?))
}
