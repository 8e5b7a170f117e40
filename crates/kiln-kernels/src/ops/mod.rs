//! Typed ops over device buffers: one configuration struct per op (validated,
//! turned into a [`KernelBuild`]) and, once loaded, a typed `launch`.

pub mod attention;
pub mod moe_combine;
pub mod moe_expert;
pub mod norm;
pub mod qk_norm_rope;
pub mod rope;
pub mod rope_cache;
pub mod short_conv;
pub mod swiglu;
pub mod topk;
pub mod ttt;

use std::collections::BTreeMap;

use cudarc::driver::{DriverError, LaunchConfig};
use kiln_cuda::{CompileRequest, Compiler, Gpu, Kernel, LaunchDims};

use crate::catalog::{spec, KernelBuild, Op, OpSpec};
use crate::error::{KernelError, Result};
use crate::launch::LaunchLine;
use crate::{DType, Element};

/// A static configuration of one catalog op.
pub trait OpConfig: Clone + std::fmt::Debug {
    /// The op.
    const OP: Op;

    /// The storage dtype the kernel is compiled for.
    fn dtype(&self) -> DType;

    /// Rejects shapes the kernel does not support, naming the op and the dimension.
    fn validate(&self) -> Result<()>;

    /// The op's `KILN_*` defines (without `KILN_DTYPE`).
    fn op_defines(&self) -> Vec<(String, String)>;

    /// The static shape variables of the launch line (`D`, `E`, …).
    fn shape_vars(&self) -> Vec<(&'static str, i64)>;

    /// The op's spec.
    fn spec(&self) -> &'static OpSpec {
        spec(Self::OP)
    }

    /// The compile inputs for this configuration.
    fn build(&self) -> Result<KernelBuild> {
        self.validate()?;
        let s = self.spec();
        let mut defines = vec![self.dtype().define()];
        defines.extend(self.op_defines());
        let tag: String = self
            .shape_vars()
            .iter()
            .map(|(k, v)| format!("_{k}{v}"))
            .collect();
        Ok(KernelBuild {
            name: format!("{}_{}{tag}.cu", s.name, self.dtype()),
            entry: s.entry.to_string(),
            source: s.source.to_string(),
            defines,
        })
    }

    /// The compile request for `kiln-cuda`.
    fn request(&self) -> Result<CompileRequest> {
        Ok(self.build()?.to_request())
    }

    /// Launch dimensions for `t` rows on a device with `sms` SMs, from the source's own launch line.
    fn launch_dims(&self, t: usize, sms: u32) -> Result<LaunchDims> {
        self.validate()?;
        let op = self.spec().name;
        let t = check_rows(op, t)?;
        let line = self
            .spec()
            .launch_line()
            .map_err(|source| KernelError::Launch { op, source })?;
        evaluate(op, &line, &self.vars(t, sms))
    }

    /// The launch-line variables for `t` rows.
    fn vars(&self, t: i32, sms: u32) -> BTreeMap<String, i64> {
        let mut vars: BTreeMap<String, i64> = self
            .shape_vars()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        vars.insert("T".into(), t as i64);
        vars.insert("SMS".into(), sms as i64);
        vars
    }

    /// Compiles and loads the kernel.
    fn load(&self, gpu: &Gpu, compiler: &Compiler) -> Result<Loaded<Self>> {
        let build = self.build()?;
        let op = self.spec().name;
        let line = LaunchLine::parse_source(&build.source)
            .map_err(|source| KernelError::Launch { op, source })?;
        let compiled = compiler.compile(&build.to_request())?;
        let kernel = gpu.load_module(&compiled)?.kernel(&build.entry)?;
        Ok(Loaded {
            config: self.clone(),
            kernel,
            line,
        })
    }
}

/// A configured op whose kernel is loaded on a GPU.
#[derive(Debug, Clone)]
pub struct Loaded<C> {
    /// The configuration it was built from.
    pub config: C,
    kernel: Kernel,
    line: LaunchLine,
}

impl<C: OpConfig> Loaded<C> {
    /// The loaded kernel.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Checked launch configuration and the `T` argument for `t` rows.
    pub(crate) fn prepare(&self, gpu: &Gpu, t: usize) -> Result<(LaunchConfig, i32)> {
        let op = self.config.spec().name;
        let t = check_rows(op, t)?;
        let dims = evaluate(op, &self.line, &self.config.vars(t, gpu.facts().sm_count))?;
        Ok((self.kernel.prepare(&dims)?, t))
    }

    /// Fails unless the buffers' element type is the compiled dtype.
    pub(crate) fn check_dtype<S: Element>(&self) -> Result<()> {
        if S::DTYPE != self.config.dtype() {
            return Err(KernelError::DTypeMismatch {
                op: self.config.spec().name,
                compiled: self.config.dtype(),
                given: S::DTYPE,
            });
        }
        Ok(())
    }
}

fn evaluate(
    op: &'static str,
    line: &LaunchLine,
    vars: &BTreeMap<String, i64>,
) -> Result<LaunchDims> {
    line.evaluate(vars)
        .map_err(|source| KernelError::Launch { op, source })
}

fn check_rows(op: &'static str, t: usize) -> Result<i32> {
    match i32::try_from(t) {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(KernelError::BadRows { op, t }),
    }
}

/// Fails unless a buffer holds exactly `expected` elements.
pub(crate) fn check_len(
    op: &'static str,
    buffer: &'static str,
    got: usize,
    expected: usize,
) -> Result<()> {
    if got != expected {
        return Err(KernelError::BufferLen {
            op,
            buffer,
            expected,
            got,
        });
    }
    Ok(())
}

/// Shorthand for a shape rejection.
pub(crate) fn unsupported(op: &'static str, reason: impl Into<String>) -> KernelError {
    KernelError::Unsupported {
        op,
        reason: reason.into(),
    }
}

/// Maps a cudarc launch result into this crate's error.
pub(crate) fn launched<T>(r: std::result::Result<T, DriverError>) -> Result<()> {
    r.map(|_| ())
        .map_err(|e| KernelError::Cuda(kiln_cuda::CudaError::driver("cuLaunchKernel")(e)))
}
