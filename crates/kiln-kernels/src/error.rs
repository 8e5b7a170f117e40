//! Typed errors of the kernel catalog.

use crate::launch::LaunchError;

/// Everything a catalog op can report.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The static configuration is not one the kernel supports.
    #[error("{op}: {reason}")]
    Unsupported {
        /// The op name.
        op: &'static str,
        /// What is wrong, naming the dimension and its value.
        reason: String,
    },
    /// A buffer's length does not match the shape.
    #[error("{op}: buffer `{buffer}` holds {got} elements, the shape needs {expected}")]
    BufferLen {
        /// The op name.
        op: &'static str,
        /// The argument name.
        buffer: &'static str,
        /// Elements the shape needs.
        expected: usize,
        /// Elements the buffer has.
        got: usize,
    },
    /// The element type of the buffers differs from the compiled dtype.
    #[error("{op}: compiled for {compiled}, launched with {given} buffers")]
    DTypeMismatch {
        /// The op name.
        op: &'static str,
        /// The configured dtype.
        compiled: crate::DType,
        /// The buffers' dtype.
        given: crate::DType,
    },
    /// The row count is out of range (T must be 1..=i32::MAX).
    #[error("{op}: T = {t} is out of range (1..=2147483647)")]
    BadRows {
        /// The op name.
        op: &'static str,
        /// The requested rows.
        t: usize,
    },
    /// The kernel's launch line failed to parse or evaluate.
    #[error("{op}: {source}")]
    Launch {
        /// The op name.
        op: &'static str,
        /// The launch-line error.
        #[source]
        source: LaunchError,
    },
    /// The GPU layer failed (compile, load, launch).
    #[error(transparent)]
    Cuda(#[from] kiln_cuda::CudaError),
}

/// Shorthand for results of this crate.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;
