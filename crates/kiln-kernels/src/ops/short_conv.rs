//! short_conv: LFM2's gated short convolution with its state update
//! (`kernels/short_conv.cu`).

use kiln_cuda::{CudaSlice, Gpu, PushKernelArg};

use super::{check_len, launched, unsupported, Loaded, OpConfig};
use crate::catalog::Op;
use crate::error::Result;
use crate::reference::short_conv::ShortConvShape;
use crate::{DType, Element};

/// Configuration of short_conv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortConvConfig {
    /// Channels and kernel length (shared with the reference).
    pub shape: ShortConvShape,
    /// Storage dtype.
    pub dtype: DType,
}

impl ShortConvConfig {
    /// `d` channels, kernel length `l`.
    pub fn new(d: usize, l: usize, dtype: DType) -> Self {
        Self {
            shape: ShortConvShape { d, l },
            dtype,
        }
    }

    /// LFM2-8B-A1B: D 2048, L 3 (`conv_L_cache`).
    pub fn lfm2_8b_a1b(dtype: DType) -> Self {
        Self::new(2048, 3, dtype)
    }
}

impl OpConfig for ShortConvConfig {
    const OP: Op = Op::ShortConv;
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn validate(&self) -> Result<()> {
        let ShortConvShape { d, l } = self.shape;
        if d == 0 || d > 65536 {
            return Err(unsupported(
                "short_conv",
                format!("D={d} is not in 1..=65536"),
            ));
        }
        if !(2..=8).contains(&l) {
            return Err(unsupported("short_conv", format!("L={l} is not in 2..=8")));
        }
        Ok(())
    }
    fn op_defines(&self) -> Vec<(String, String)> {
        vec![
            ("KILN_D".into(), self.shape.d.to_string()),
            ("KILN_L".into(), self.shape.l.to_string()),
        ]
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        vec![("D", self.shape.d as i64), ("L", self.shape.l as i64)]
    }
}

impl Loaded<ShortConvConfig> {
    /// `out[T,D] = C ⊙ conv(B ⊙ x)` over `bcx[T,3D]`, updating `state[L-1,D]` in place.
    pub fn launch<S: Element>(
        &self,
        gpu: &Gpu,
        bcx: &CudaSlice<S>,
        w: &CudaSlice<S>,
        state: &mut CudaSlice<S>,
        out: &mut CudaSlice<S>,
        t: usize,
    ) -> Result<()> {
        self.check_dtype::<S>()?;
        let ShortConvShape { d, l } = self.config.shape;
        check_len("short_conv", "bcx", bcx.len(), t * 3 * d)?;
        check_len("short_conv", "w", w.len(), d * l)?;
        check_len("short_conv", "state", state.len(), (l - 1) * d)?;
        check_len("short_conv", "out", out.len(), t * d)?;
        let (cfg, t) = self.prepare(gpu, t)?;
        let mut b = gpu.stream().launch_builder(self.kernel().function());
        b.arg(bcx).arg(w).arg(state).arg(out).arg(&t);
        // SAFETY: signature matches; buffer lengths checked above.
        launched(unsafe { b.launch(cfg) })
    }
}
