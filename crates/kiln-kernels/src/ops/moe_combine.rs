//! moe_combine: weighted sum of the top-k expert outputs (+ shared expert).

use kiln_cuda::{CudaSlice, Gpu, PushKernelArg};

use super::{check_len, launched, unsupported, Loaded, OpConfig};
use crate::catalog::Op;
use crate::error::Result;
use crate::{DType, Element};

/// Configuration of moe_combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeCombineConfig {
    /// Hidden size.
    pub d: usize,
    /// Experts per token.
    pub k: usize,
    /// Add an unweighted shared-expert output (GLM-4.7-Flash).
    pub has_shared: bool,
    /// Storage dtype.
    pub dtype: DType,
}

impl OpConfig for MoeCombineConfig {
    const OP: Op = Op::MoeCombine;
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn validate(&self) -> Result<()> {
        if self.d == 0 || self.d % 8 != 0 {
            return Err(unsupported(
                "moe_combine",
                format!("D={} is not a positive multiple of 8", self.d),
            ));
        }
        if !(1..=32).contains(&self.k) {
            return Err(unsupported(
                "moe_combine",
                format!("K={} is outside 1..=32", self.k),
            ));
        }
        Ok(())
    }
    fn op_defines(&self) -> Vec<(String, String)> {
        vec![
            ("KILN_D".into(), self.d.to_string()),
            ("KILN_K".into(), self.k.to_string()),
            (
                "KILN_HAS_SHARED".into(),
                (self.has_shared as u8).to_string(),
            ),
        ]
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        vec![("D", self.d as i64), ("K", self.k as i64)]
    }
}

impl Loaded<MoeCombineConfig> {
    /// `out[t] = Σ_k weights[t,k]·expert_out[t,k] (+ shared[t])`; `shared` must be
    /// given exactly when the config has a shared expert.
    pub fn launch<S: Element>(
        &self,
        gpu: &Gpu,
        expert_out: &CudaSlice<S>,
        weights: &CudaSlice<f32>,
        shared: Option<&CudaSlice<S>>,
        out: &mut CudaSlice<S>,
        t: usize,
    ) -> Result<()> {
        self.check_dtype::<S>()?;
        let c = self.config;
        check_len("moe_combine", "expert_out", expert_out.len(), t * c.k * c.d)?;
        check_len("moe_combine", "weights", weights.len(), t * c.k)?;
        check_len("moe_combine", "out", out.len(), t * c.d)?;
        match (c.has_shared, shared) {
            (true, Some(s)) => check_len("moe_combine", "shared", s.len(), t * c.d)?,
            (false, None) => {}
            (true, None) => {
                return Err(unsupported(
                    "moe_combine",
                    "configured with a shared expert but no `shared` buffer given",
                ))
            }
            (false, Some(_)) => {
                return Err(unsupported(
                    "moe_combine",
                    "a `shared` buffer was given but the config has no shared expert",
                ))
            }
        }
        let (cfg, t) = self.prepare(gpu, t)?;
        let null: u64 = 0;
        let mut b = gpu.stream().launch_builder(self.kernel().function());
        b.arg(expert_out).arg(weights);
        match shared {
            Some(s) => b.arg(s),
            // The kernel never reads `shared` when KILN_HAS_SHARED=0.
            None => b.arg(&null),
        };
        b.arg(out).arg(&t);
        // SAFETY: signature matches; buffer lengths checked above.
        launched(unsafe { b.launch(cfg) })
    }
}
