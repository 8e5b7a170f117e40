//! rmsnorm and add_rmsnorm.
//!
//! Casting rule (`cast_before_scale`), from Hugging Face transformers:
//! `Qwen3MoeRMSNorm`, `Lfm2MoeRMSNorm` and `Glm4MoeLiteRMSNorm` all compute
//! `self.weight * hidden_states.to(input_dtype)` after normalising in f32
//! (modeling_qwen3_moe.py, modeling_lfm2_moe.py, modeling_glm4_moe_lite.py), so
//! all three models use `cast_before_scale = true`.

use kiln_cuda::{CudaSlice, Gpu, PushKernelArg};

use super::{check_len, launched, unsupported, Loaded, OpConfig};
use crate::catalog::{float_literal, Op};
use crate::error::Result;
use crate::{DType, Element};

/// Configuration of rmsnorm (and, with the same fields, add_rmsnorm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmsNormConfig {
    /// Row length.
    pub d: usize,
    /// Added to the mean square.
    pub eps: f64,
    /// HF Llama rule: round the normalised value to the dtype before the weight.
    pub cast_before_scale: bool,
    /// Storage dtype.
    pub dtype: DType,
}

impl RmsNormConfig {
    /// A config with the HF rule (`cast_before_scale = true`).
    pub fn new(d: usize, eps: f64, dtype: DType) -> Self {
        Self {
            d,
            eps,
            cast_before_scale: true,
            dtype,
        }
    }

    fn check(&self, op: &'static str) -> Result<()> {
        let d = self.d;
        if d == 0 || d % 8 != 0 {
            return Err(unsupported(
                op,
                format!("D={d} is not a positive multiple of 8"),
            ));
        }
        if d < 256 && 256 % d != 0 {
            return Err(unsupported(
                op,
                format!("D={d}: rows shorter than 256 must divide 256 (8, 16, 32, 64, 128)"),
            ));
        }
        if d > 16384 {
            return Err(unsupported(
                op,
                format!("D={d} exceeds 16384 (rows live in registers)"),
            ));
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(unsupported(
                op,
                format!("eps={} must be finite and >= 0", self.eps),
            ));
        }
        Ok(())
    }

    fn defines(&self) -> Vec<(String, String)> {
        vec![
            ("KILN_D".into(), self.d.to_string()),
            ("KILN_EPS".into(), float_literal(self.eps)),
            (
                "KILN_CAST_BEFORE_SCALE".into(),
                (self.cast_before_scale as u8).to_string(),
            ),
        ]
    }
}

impl OpConfig for RmsNormConfig {
    const OP: Op = Op::RmsNorm;
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn validate(&self) -> Result<()> {
        self.check("rmsnorm")
    }
    fn op_defines(&self) -> Vec<(String, String)> {
        self.defines()
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        vec![("D", self.d as i64)]
    }
}

/// Configuration of add_rmsnorm (same fields as rmsnorm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AddRmsNormConfig(pub RmsNormConfig);

impl OpConfig for AddRmsNormConfig {
    const OP: Op = Op::AddRmsNorm;
    fn dtype(&self) -> DType {
        self.0.dtype
    }
    fn validate(&self) -> Result<()> {
        self.0.check("add_rmsnorm")
    }
    fn op_defines(&self) -> Vec<(String, String)> {
        self.0.defines()
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        vec![("D", self.0.d as i64)]
    }
}

impl Loaded<RmsNormConfig> {
    /// `out[T,D] = rmsnorm(x[T,D]) * w[D]`.
    pub fn launch<S: Element>(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<S>,
        w: &CudaSlice<S>,
        out: &mut CudaSlice<S>,
        t: usize,
    ) -> Result<()> {
        self.check_dtype::<S>()?;
        let d = self.config.d;
        check_len("rmsnorm", "x", x.len(), t * d)?;
        check_len("rmsnorm", "w", w.len(), d)?;
        check_len("rmsnorm", "out", out.len(), t * d)?;
        let (cfg, t) = self.prepare(gpu, t)?;
        let mut b = gpu.stream().launch_builder(self.kernel().function());
        b.arg(x).arg(w).arg(out).arg(&t);
        // SAFETY: the argument list matches the kernel signature and every buffer was
        // checked to hold the elements this launch touches.
        launched(unsafe { b.launch(cfg) })
    }
}

impl Loaded<AddRmsNormConfig> {
    /// `new_residual = x + residual`, `normed = rmsnorm(new_residual) * w`.
    #[allow(clippy::too_many_arguments)]
    pub fn launch<S: Element>(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<S>,
        residual: &CudaSlice<S>,
        w: &CudaSlice<S>,
        normed: &mut CudaSlice<S>,
        new_residual: &mut CudaSlice<S>,
        t: usize,
    ) -> Result<()> {
        self.check_dtype::<S>()?;
        let d = self.config.0.d;
        for (name, len) in [
            ("x", x.len()),
            ("residual", residual.len()),
            ("normed", normed.len()),
            ("new_residual", new_residual.len()),
        ] {
            check_len("add_rmsnorm", name, len, t * d)?;
        }
        check_len("add_rmsnorm", "w", w.len(), d)?;
        let (cfg, t) = self.prepare(gpu, t)?;
        let mut b = gpu.stream().launch_builder(self.kernel().function());
        b.arg(x)
            .arg(residual)
            .arg(w)
            .arg(normed)
            .arg(new_residual)
            .arg(&t);
        // SAFETY: signature matches; buffer lengths checked above.
        launched(unsafe { b.launch(cfg) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_op_and_the_shape() {
        let e = RmsNormConfig::new(100, 1e-6, DType::BF16)
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "rmsnorm: D=100 is not a positive multiple of 8"
        );
        let e = AddRmsNormConfig(RmsNormConfig::new(192, 1e-6, DType::BF16))
            .validate()
            .unwrap_err();
        assert!(e.to_string().starts_with("add_rmsnorm: D=192"));
        assert!(RmsNormConfig::new(64, 1e-6, DType::F32).validate().is_ok());
        assert!(RmsNormConfig::new(576, 1e-6, DType::F32).validate().is_ok());
    }

    #[test]
    fn launch_dims_follow_the_source() {
        // D = 2048: one row per block of 128 threads (two chunks each).
        let c = RmsNormConfig::new(2048, 1e-6, DType::BF16);
        let d = c.launch_dims(4096, 132).expect("dims");
        assert_eq!(d.block, (128, 1, 1));
        assert_eq!(d.grid, (4096, 1, 1));
        assert_eq!(c.launch_dims(1, 132).expect("dims").grid, (1, 1, 1));
        // D = 4096: 256 threads per row.
        let g = RmsNormConfig::new(4096, 1e-6, DType::BF16);
        assert_eq!(g.launch_dims(3, 132).expect("dims").block, (256, 1, 1));
        assert_eq!(g.launch_dims(3, 132).expect("dims").grid, (3, 1, 1));
        // D = 768: rows of 64 threads, two per block.
        let m = AddRmsNormConfig(RmsNormConfig::new(768, 1e-6, DType::BF16));
        assert_eq!(m.launch_dims(37, 132).expect("dims").block, (128, 1, 1));
        assert_eq!(m.launch_dims(37, 132).expect("dims").grid, (19, 1, 1));
        // head_dim 64: 8 lanes per row, 16 rows per block.
        let q = RmsNormConfig::new(64, 1e-6, DType::BF16);
        assert_eq!(q.launch_dims(37, 132).expect("dims").block, (128, 1, 1));
        assert_eq!(q.launch_dims(37, 132).expect("dims").grid, (3, 1, 1));
        assert!(c.launch_dims(0, 132).is_err());
    }

    #[test]
    fn build_carries_the_defines() {
        let b = RmsNormConfig::new(2048, 1e-6, DType::BF16)
            .build()
            .expect("build");
        assert_eq!(b.entry, "rmsnorm");
        assert_eq!(b.defines[0], ("KILN_DTYPE".into(), "__nv_bfloat16".into()));
        assert!(b.defines.contains(&("KILN_EPS".into(), "1e-6f".into())));
        assert!(b
            .defines
            .contains(&("KILN_CAST_BEFORE_SCALE".into(), "1".into())));
        assert_eq!(b.name, "rmsnorm_bf16_D2048.cu");
    }
}
