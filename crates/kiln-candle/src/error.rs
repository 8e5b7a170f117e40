//! kiln-candle's error type.

use std::path::PathBuf;

/// What can go wrong building or running a kiln model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A candle operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// A catalog kernel rejected its configuration or failed to launch.
    #[error("kernel: {0}")]
    Kernel(#[from] kiln_kernels::KernelError),
    /// NVRTC or the CUDA driver failed.
    #[error("cuda: {0}")]
    Cuda(#[from] kiln_cuda::CudaError),
    /// A checkpoint file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `config.json` is missing a field or holds a value kiln does not support.
    #[error("config: {0}")]
    Config(String),
    /// A decode graph could not be captured (the message names the layer and op).
    #[error("decode graph capture failed: {0}; decode with --eager instead")]
    Capture(String),
    /// A step of a model failed: where, and why.
    #[error("{at}: {source}")]
    Step {
        /// The layer and part (`layer 3 attention`).
        at: String,
        /// The failure.
        source: Box<Error>,
    },
    /// An op got tensors it cannot handle (shape, dtype, device).
    #[error("{op}: {reason}")]
    Op {
        /// The op.
        op: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for an [`Error::Op`].
pub(crate) fn op_error(op: &'static str, reason: impl Into<String>) -> Error {
    Error::Op {
        op,
        reason: reason.into(),
    }
}

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}
