//! kiln's GPU layer: thin, owning, typed wrappers over [cudarc] (loaded
//! dynamically, so kiln builds with no CUDA toolkit).
//!
//! 1. [`Compiler`] finds NVRTC and the CUDA headers and compiles CUDA C++ to a
//!    cubin, through an on-disk cache ([`CompileCache`]); it needs no GPU.
//! 2. [`Gpu::open`] opens a device: context, stream and [`DeviceFacts`].
//! 3. [`Gpu::load_module`] loads the image; [`Module::kernel`] finds an entry point.
//! 4. Launch through cudarc's builder on [`Gpu::stream`], or type-erased with
//!    [`Kernel::launch`].
//!    [`early_launch`] launches a kernel whose PTX waits for the kernel
//!    before it (programmatic dependent launch) while that kernel still runs.
//! 5. Time with [`Gpu::time_us`] (CUDA events) and [`Gpu::capture`] (CUDA graphs).
//! 6. [`Island`] maps device memory alone, with unmapped pages around it: what
//!    the judge hands an untrusted kernel.
//!
//! ```no_run
//! use kiln_cuda::{CompileRequest, Compiler, Gpu, LaunchDims, PushKernelArg};
//! # fn main() -> Result<(), kiln_cuda::CudaError> {
//! let src = r#"extern "C" __global__ void twice(float* x, int n) {
//!     int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] *= 2.0f; }"#;
//! let gpu = Gpu::open(0)?;
//! let compiled = Compiler::new()?.compile(&CompileRequest::new("twice.cu", src))?;
//! let kernel = gpu.load_module(&compiled)?.kernel("twice")?;
//! let mut x = gpu.upload(&[1.0f32, 2.0, 3.0])?;
//! let cfg = kernel.prepare(&LaunchDims::linear(1, 32, 0))?;
//! let n = 3i32;
//! let us = gpu.time_us(|| {
//!     let mut launch = gpu.stream().launch_builder(kernel.function());
//!     launch.arg(&mut x).arg(&n);
//!     unsafe { launch.launch(cfg) }.map(|_| ()).map_err(kiln_cuda::CudaError::driver("launch"))
//! })?;
//! assert_eq!(gpu.download(&x)?, vec![2.0, 4.0, 6.0]);
//! println!("{us:.1} µs");
//! # Ok(()) }
//! ```
//!
//! Missing pieces (no driver, no GPU, no NVRTC, no headers) are typed errors
//! that name what was searched; nothing here panics on an absent library.

pub mod compile_cache;
pub mod compiler;
pub mod device;
pub mod early_launch;
pub mod error;
pub mod island;
pub mod module;
pub mod probe;
pub mod timing;
pub mod toolkit;

pub use compile_cache::CompileCache;
pub use compiler::{nvrtc_version, Arch, CompileRequest, Compiled, Compiler, OutputKind};
pub use device::{device_count, driver_version, DeviceFacts, Gpu, Sentinel};
pub use error::{CudaError, Result};
pub use island::{Island, ISLAND_PAGE};
pub use module::{Kernel, KernelArg, KernelResources, LaunchDims, Module};
pub use probe::{Bandwidth, CopyCeiling, Digests, LaunchFloor, Probes};
pub use timing::{Graph, L2Flush, Summary};

pub use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, PushKernelArg,
    ValidAsZeroBits,
};
pub use half::{bf16, f16};
