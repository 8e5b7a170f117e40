//! swiglu and swiglu_packed.
//!
//! Casting: HF eager computes `act_fn(gate) * up` with `act_fn` returning the
//! model dtype, so `silu_in_dtype = true` matches it (all three models).

use kiln_cuda::{CudaSlice, Gpu, PushKernelArg};

use super::{check_len, launched, unsupported, Loaded, OpConfig};
use crate::catalog::Op;
use crate::error::Result;
use crate::{DType, Element};

/// Configuration of swiglu (separate gate and up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwigluConfig {
    /// Intermediate width.
    pub i: usize,
    /// Round silu(gate) to the dtype before multiplying (HF eager).
    pub silu_in_dtype: bool,
    /// Storage dtype.
    pub dtype: DType,
}

/// Configuration of swiglu_packed (`gate_up[T, 2I]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwigluPackedConfig(pub SwigluConfig);

impl SwigluConfig {
    /// A config with the HF rounding.
    pub fn new(i: usize, dtype: DType) -> Self {
        Self {
            i,
            silu_in_dtype: true,
            dtype,
        }
    }

    fn check(&self, op: &'static str) -> Result<()> {
        if self.i == 0 || self.i % 8 != 0 {
            return Err(unsupported(
                op,
                format!("I={} is not a positive multiple of 8", self.i),
            ));
        }
        Ok(())
    }

    fn defines(&self) -> Vec<(String, String)> {
        vec![
            ("KILN_I".into(), self.i.to_string()),
            (
                "KILN_SILU_IN_DTYPE".into(),
                (self.silu_in_dtype as u8).to_string(),
            ),
        ]
    }
}

impl OpConfig for SwigluConfig {
    const OP: Op = Op::Swiglu;
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn validate(&self) -> Result<()> {
        self.check("swiglu")
    }
    fn op_defines(&self) -> Vec<(String, String)> {
        self.defines()
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        vec![("I", self.i as i64)]
    }
}

impl OpConfig for SwigluPackedConfig {
    const OP: Op = Op::SwigluPacked;
    fn dtype(&self) -> DType {
        self.0.dtype
    }
    fn validate(&self) -> Result<()> {
        self.0.check("swiglu_packed")
    }
    fn op_defines(&self) -> Vec<(String, String)> {
        self.0.defines()
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        vec![("I", self.0.i as i64)]
    }
}

impl Loaded<SwigluConfig> {
    /// `out[T,I] = silu(gate) * up`.
    pub fn launch<S: Element>(
        &self,
        gpu: &Gpu,
        gate: &CudaSlice<S>,
        up: &CudaSlice<S>,
        out: &mut CudaSlice<S>,
        t: usize,
    ) -> Result<()> {
        self.check_dtype::<S>()?;
        let n = t * self.config.i;
        check_len("swiglu", "gate", gate.len(), n)?;
        check_len("swiglu", "up", up.len(), n)?;
        check_len("swiglu", "out", out.len(), n)?;
        let (cfg, t) = self.prepare(gpu, t)?;
        let mut b = gpu.stream().launch_builder(self.kernel().function());
        b.arg(gate).arg(up).arg(out).arg(&t);
        // SAFETY: signature matches; buffer lengths checked above.
        launched(unsafe { b.launch(cfg) })
    }
}

impl Loaded<SwigluPackedConfig> {
    /// `out[T,I] = silu(gate_up[:, :I]) * gate_up[:, I:]`.
    pub fn launch<S: Element>(
        &self,
        gpu: &Gpu,
        gate_up: &CudaSlice<S>,
        out: &mut CudaSlice<S>,
        t: usize,
    ) -> Result<()> {
        self.check_dtype::<S>()?;
        let i = self.config.0.i;
        check_len("swiglu_packed", "gate_up", gate_up.len(), 2 * t * i)?;
        check_len("swiglu_packed", "out", out.len(), t * i)?;
        let (cfg, t) = self.prepare(gpu, t)?;
        let mut b = gpu.stream().launch_builder(self.kernel().function());
        b.arg(gate_up).arg(out).arg(&t);
        // SAFETY: signature matches; buffer lengths checked above.
        launched(unsafe { b.launch(cfg) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_dims() {
        assert_eq!(
            SwigluConfig::new(100, DType::BF16)
                .validate()
                .unwrap_err()
                .to_string(),
            "swiglu: I=100 is not a positive multiple of 8"
        );
        // One 8-element chunk per thread, a grid over every chunk.
        let c = SwigluPackedConfig(SwigluConfig::new(1536, DType::BF16));
        assert_eq!(c.launch_dims(1, 132).expect("dims").grid, (1, 1, 1));
        assert_eq!(c.launch_dims(16, 132).expect("dims").grid, (12, 1, 1));
        assert_eq!(c.launch_dims(4096, 132).expect("dims").grid, (3072, 1, 1));
        let s = SwigluConfig::new(1536, DType::BF16);
        assert_eq!(s.launch_dims(4096, 132).expect("dims").block, (256, 1, 1));
        assert_eq!(s.launch_dims(1000, 132).expect("dims").grid, (750, 1, 1));
    }
}
