//! Typed errors of the GPU layer. Each message says what happened and what to do.

use std::path::PathBuf;

use cudarc::driver::DriverError;

/// Everything that can go wrong in `kiln-cuda`.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// The CUDA driver library (`libcuda.so.1`) could not be loaded.
    #[error(
        "no CUDA driver: could not load libcuda (tried {tried}). Install the NVIDIA driver, or add \
         the folder that holds libcuda.so.1 to LD_LIBRARY_PATH"
    )]
    DriverMissing {
        /// The library names that were tried.
        tried: String,
    },

    /// The driver loaded but reports no GPU.
    #[error("the CUDA driver loaded but sees no GPU ({detail}); check nvidia-smi and CUDA_VISIBLE_DEVICES")]
    NoDevice {
        /// What the driver said.
        detail: String,
    },

    /// The requested device ordinal does not exist.
    #[error("GPU {ordinal} does not exist: the driver sees {count} GPU(s)")]
    BadOrdinal {
        /// Requested ordinal.
        ordinal: usize,
        /// Number of visible devices.
        count: usize,
    },

    /// No NVRTC library was found anywhere kiln looks.
    #[error(
        "NVRTC (libnvrtc.so.13) not found; searched: {}. Run `scripts/setup.sh` to install the pinned \
         NVRTC wheels into .cache/cuda-wheels, install the CUDA 13 toolkit, or set KILN_NVRTC_LIB to the \
         library file",
        display_paths(searched)
    )]
    NvrtcMissing {
        /// Every place that was searched, in order.
        searched: Vec<PathBuf>,
    },

    /// CUDA headers (`cuda_bf16.h`) were not found.
    #[error(
        "CUDA headers (cuda_bf16.h) not found; searched: {}. Run `scripts/setup.sh`, install the CUDA \
         toolkit, or set KILN_CUDA_INCLUDE to the folder holding cuda_bf16.h",
        display_paths(searched)
    )]
    HeadersMissing {
        /// Every folder that was searched, in order.
        searched: Vec<PathBuf>,
    },

    /// A CUDA driver call failed.
    #[error("CUDA driver call {call} failed: {source}")]
    Driver {
        /// What kiln was doing.
        call: &'static str,
        /// The driver's error.
        #[source]
        source: DriverError,
    },

    /// NVRTC rejected the source; the log says why.
    #[error("NVRTC could not compile `{name}`:\n{log}")]
    Compile {
        /// The program name (usually the kernel family or candidate id).
        name: String,
        /// NVRTC's program log.
        log: String,
    },

    /// An NVRTC API call failed outside compilation proper.
    #[error("NVRTC call {call} failed with status {status}")]
    Nvrtc {
        /// Which call.
        call: &'static str,
        /// NVRTC's status code.
        status: String,
    },

    /// The source or an option contains a NUL byte.
    #[error("`{what}` contains a NUL byte, which NVRTC cannot take")]
    InteriorNul {
        /// Which input.
        what: String,
    },

    /// The on-disk compile cache could not be read or written.
    #[error("compile cache at {path}: {source}")]
    Cache {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A compiled module does not define the requested entry point.
    #[error(
        "module `{module}` has no kernel named `{entry}` (is it declared extern \"C\" __global__?)"
    )]
    MissingKernel {
        /// Module name.
        module: String,
        /// Requested entry point.
        entry: String,
    },

    /// A launch asked for more than the device allows.
    #[error("launch of `{kernel}` rejected: {reason}")]
    BadLaunch {
        /// Kernel name.
        kernel: String,
        /// Why.
        reason: String,
    },

    /// A probe kernel gave a wrong answer: the GPU or the toolchain is broken.
    #[error("self-check failed: {0}")]
    SelfCheck(String),
}

impl CudaError {
    /// Wraps a driver error with the name of the call that failed.
    pub fn driver(call: &'static str) -> impl FnOnce(DriverError) -> CudaError {
        move |source| CudaError::Driver { call, source }
    }

    /// True for errors that leave the CUDA context unusable (illegal address,
    /// launch failure, …): the process must be restarted.
    pub fn is_sticky(&self) -> bool {
        use cudarc::driver::sys::CUresult::*;
        match self {
            CudaError::Driver { source, .. } => matches!(
                source.0,
                CUDA_ERROR_ILLEGAL_ADDRESS
                    | CUDA_ERROR_LAUNCH_FAILED
                    | CUDA_ERROR_MISALIGNED_ADDRESS
                    | CUDA_ERROR_ILLEGAL_INSTRUCTION
                    | CUDA_ERROR_INVALID_PC
                    | CUDA_ERROR_HARDWARE_STACK_ERROR
                    | CUDA_ERROR_ASSERT
                    | CUDA_ERROR_LAUNCH_TIMEOUT
                    | CUDA_ERROR_ECC_UNCORRECTABLE
                    | CUDA_ERROR_CONTEXT_IS_DESTROYED
            ),
            _ => false,
        }
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "(nothing)".to_string();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Result alias for this crate.
pub type Result<T, E = CudaError> = std::result::Result<T, E>;
