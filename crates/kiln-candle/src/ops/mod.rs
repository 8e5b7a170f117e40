//! The catalog's kernels as candle ops.
//!
//! Each op runs the catalog kernel on a CUDA tensor (compiled by NVRTC for the
//! op's configuration, launched on candle's stream) and the catalog's float64
//! reference on a CPU tensor, so CPU users and tests get the same math.
//! Single-output ops are candle [`CustomOp1`](candle_core::CustomOp1) /
//! [`CustomOp2`](candle_core::CustomOp2) types; ops with several outputs
//! (add_rmsnorm, rope, the routers, the MoE expert pair, the TTT-Linear step)
//! are functions over the same launch path, since a candle custom op returns
//! one tensor.
//!
//! Inputs must be contiguous and in the op's storage dtype (bf16, f16 or f32).

pub mod argmax;
pub mod attention;
#[cfg(feature = "cuda")]
pub(crate) mod device;
pub mod host;
pub mod linear;
pub mod moe;
pub mod norm;
pub mod pack;
pub mod rope;
pub mod router;
pub mod short_conv;
pub mod swiglu;
pub mod ttt;

use candle_core::DType;

use crate::error::{op_error, Result};

/// Whether the environment turns a fusion off (`VAR=0`), said once on
/// stderr with `what` runs instead, so an A/B in one binary is never silent.
pub(crate) fn fusion_switched_off(var: &str, what: &str) -> bool {
    let off = std::env::var(var).is_ok_and(|v| v == "0");
    if off {
        eprintln!("kiln: {var}=0: {what}");
    }
    off
}

/// The error for a CUDA tensor in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub(crate) fn no_cuda(op: &'static str) -> crate::Error {
    op_error(op, "this build has no CUDA support (feature `cuda`)")
}

/// Whether early launch is on and, of the kernels loaded so far in this
/// process, how many it applies to: `(on, early, loaded)`.
pub fn early_launch() -> (bool, usize, usize) {
    #[cfg(feature = "cuda")]
    {
        let (early, all) = device::early_launch_counts();
        (device::early_launch_enabled(), early, all)
    }
    #[cfg(not(feature = "cuda"))]
    (false, 0, 0)
}

/// The catalog dtype for a candle dtype, or an error naming the op.
pub fn kernel_dtype(op: &'static str, dtype: DType) -> Result<kiln_kernels::DType> {
    match dtype {
        DType::BF16 => Ok(kiln_kernels::DType::BF16),
        DType::F16 => Ok(kiln_kernels::DType::F16),
        DType::F32 => Ok(kiln_kernels::DType::F32),
        other => Err(op_error(
            op,
            format!("dtype {other:?}: kiln kernels take bf16, f16 or f32"),
        )),
    }
}

/// Rows of a `[.., d]` tensor, checking the last dimension.
pub(crate) fn rows(op: &'static str, shape: &candle_core::Shape, d: usize) -> Result<usize> {
    let dims = shape.dims();
    match dims.last() {
        Some(&last) if last == d => Ok(shape.elem_count() / d),
        _ => Err(op_error(
            op,
            format!("expected a last dimension of {d}, got shape {dims:?}"),
        )),
    }
}
