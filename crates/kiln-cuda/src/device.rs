//! The GPU: one CUDA context and one stream, with the device's facts.

use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DevicePtrMut, DeviceRepr, ValidAsZeroBits,
};
use serde::{Deserialize, Serialize};

use crate::compiler::{Arch, Compiled, OutputKind};
use crate::error::{CudaError, Result};
use crate::module::Module;
use crate::toolkit;

/// What kiln needs to know about a GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceFacts {
    /// Marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Device ordinal.
    pub ordinal: usize,
    /// Architecture (`sm_90` for Hopper).
    pub arch: Arch,
    /// Number of streaming multiprocessors (`SMS` in launch lines).
    pub sm_count: u32,
    /// L2 cache size in bytes.
    pub l2_bytes: u64,
    /// Total device memory in bytes.
    pub total_mem_bytes: u64,
    /// Most dynamic shared memory one block may opt into, in bytes.
    pub max_smem_per_block_optin: u32,
    /// Most threads per block.
    pub max_threads_per_block: u32,
    /// Most resident threads per multiprocessor (occupancy's denominator; 0
    /// in facts recorded before kiln read it).
    #[serde(default)]
    pub max_threads_per_sm: u32,
    /// The driver's CUDA version, e.g. `13.0`.
    pub driver_version: String,
}

/// An open GPU: a context, the stream kiln launches on, and the device facts.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    facts: DeviceFacts,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("facts", &self.facts).finish()
    }
}

/// Number of GPUs the driver sees; a missing driver is an error, not a panic.
pub fn device_count() -> Result<usize> {
    toolkit::require_driver()?;
    cudarc::driver::result::init().map_err(|e| CudaError::NoDevice {
        detail: format!("cuInit: {e}"),
    })?;
    let n = CudaContext::device_count().map_err(CudaError::driver("cuDeviceGetCount"))?;
    Ok(n.max(0) as usize)
}

/// The driver's CUDA version as `major.minor`.
pub fn driver_version() -> Result<String> {
    toolkit::require_driver()?;
    let mut v = 0i32;
    // SAFETY: the driver library is present; `v` is a valid out-pointer.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    status
        .result()
        .map_err(CudaError::driver("cuDriverGetVersion"))?;
    Ok(format!("{}.{}", v / 1000, (v % 1000) / 10))
}

impl Gpu {
    /// Opens GPU `ordinal` on a fresh non-blocking stream.
    pub fn open(ordinal: usize) -> Result<Self> {
        let count = device_count()?;
        if count == 0 {
            return Err(CudaError::NoDevice {
                detail: "cuDeviceGetCount returned 0".into(),
            });
        }
        if ordinal >= count {
            return Err(CudaError::BadOrdinal { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(CudaError::driver("cuCtx (primary)"))?;
        // kiln uses one stream per context, so cudarc's per-buffer event
        // tracking only costs time and gets in the way of graph capture.
        // SAFETY: no other stream exists yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(CudaError::driver("cuStreamCreate"))?;
        let facts = read_facts(&ctx, ordinal)?;
        Ok(Self { ctx, stream, facts })
    }

    /// The device's facts.
    pub fn facts(&self) -> &DeviceFacts {
        &self.facts
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every kiln launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits for all work on kiln's stream; surfaces asynchronous kernel errors.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(CudaError::driver("cuStreamSynchronize"))
    }

    /// Loads a compiled image into this context.
    pub fn load_module(&self, compiled: &Compiled) -> Result<Module> {
        let ptx = match compiled.output {
            OutputKind::Cubin => cudarc::nvrtc::Ptx::from_binary(compiled.image.clone()),
            OutputKind::Ptx => {
                cudarc::nvrtc::Ptx::from_src(String::from_utf8_lossy(&compiled.image).into_owned())
            }
        };
        let module = self
            .ctx
            .load_module(ptx)
            .map_err(CudaError::driver("cuModuleLoadData"))?;
        Ok(Module::new(
            compiled.name.clone(),
            module,
            self.facts.clone(),
        ))
    }

    /// Loads a cubin that was compiled elsewhere (the evaluator's bounded
    /// compile child) into this context.
    pub fn load_cubin(&self, name: &str, cubin: &[u8]) -> Result<Module> {
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin.to_vec()))
            .map_err(CudaError::driver("cuModuleLoadData"))?;
        Ok(Module::new(name.to_string(), module, self.facts.clone()))
    }

    /// Copies a host slice to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(host)
            .map_err(CudaError::driver("cuMemcpyHtoD"))
    }

    /// Copies a device buffer back to the host (synchronising the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(dev)
            .map_err(CudaError::driver("cuMemcpyDtoH"))
    }

    /// A zero-filled device buffer of `len` elements.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros(len)
            .map_err(CudaError::driver("cuMemAlloc"))
    }

    /// Fills a buffer with its type's sentinel (a NaN for floats, all ones for
    /// integers), so an output a kernel never wrote cannot pass a check.
    pub fn fill_sentinel<T: Sentinel>(&self, buf: &mut CudaSlice<T>) -> Result<()> {
        self.fill_words(buf, T::WORD_BYTES, T::PATTERN)
    }

    /// Fills a buffer with a repeated 1-, 2- or 4-byte word (the low bytes of
    /// `pattern`); for buffers whose element type is known only at run time.
    pub fn fill_words<T>(
        &self,
        buf: &mut CudaSlice<T>,
        word_bytes: usize,
        pattern: u32,
    ) -> Result<()> {
        let bytes = buf.num_bytes();
        let (ptr, _sync) = buf.device_ptr_mut(&self.stream);
        // SAFETY: `ptr` addresses `bytes` bytes on this context.
        unsafe { memset_words(ptr, bytes, word_bytes, pattern, self.stream.cu_stream()) }
    }

    /// Sets every byte of a buffer to `value` (used to evict L2 and to poison).
    pub fn memset_bytes<T>(&self, buf: &mut CudaSlice<T>, value: u8) -> Result<()> {
        self.fill_words(buf, 1, value as u32)
    }

    /// Free and total device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(CudaError::driver("cuMemGetInfo"))
    }
}

/// Fills `len` bytes at `ptr` with a repeated 1-, 2- or 4-byte word (the low
/// bytes of `pattern`; any other size fills bytes), enqueued on `stream`.
///
/// # Safety
/// `ptr..ptr + len` must be device memory of the stream's context, and
/// `len` a multiple of `word_bytes`.
pub(crate) unsafe fn memset_words(
    ptr: cudarc::driver::sys::CUdeviceptr,
    len: usize,
    word_bytes: usize,
    pattern: u32,
    stream: cudarc::driver::sys::CUstream,
) -> Result<()> {
    use cudarc::driver::sys;
    // SAFETY: the caller's contract; each call writes whole words.
    let status = unsafe {
        match word_bytes {
            2 => sys::cuMemsetD16Async(ptr, pattern as u16, len / 2, stream),
            4 => sys::cuMemsetD32Async(ptr, pattern, len / 4, stream),
            _ => sys::cuMemsetD8Async(ptr, pattern as u8, len, stream),
        }
    };
    status.result().map_err(CudaError::driver("cuMemsetAsync"))
}

/// An element type with a bit pattern that no honest kernel output equals.
pub trait Sentinel: DeviceRepr {
    /// Bytes per memset word (1, 2 or 4).
    const WORD_BYTES: usize;
    /// The pattern (low bits used for narrower words).
    const PATTERN: u32;
}

impl Sentinel for f32 {
    const WORD_BYTES: usize = 4;
    const PATTERN: u32 = 0x7FC0_0000; // quiet NaN
}
impl Sentinel for half::f16 {
    const WORD_BYTES: usize = 2;
    const PATTERN: u32 = 0x7E00; // quiet NaN
}
impl Sentinel for half::bf16 {
    const WORD_BYTES: usize = 2;
    const PATTERN: u32 = 0x7FC0; // quiet NaN
}
impl Sentinel for u32 {
    const WORD_BYTES: usize = 4;
    const PATTERN: u32 = u32::MAX; // an index no expert has
}
impl Sentinel for i32 {
    const WORD_BYTES: usize = 4;
    const PATTERN: u32 = u32::MAX;
}
impl Sentinel for u8 {
    const WORD_BYTES: usize = 1;
    const PATTERN: u32 = 0xFF;
}

fn read_facts(ctx: &Arc<CudaContext>, ordinal: usize) -> Result<DeviceFacts> {
    let attr = |a: Attr, what: &'static str| -> Result<i32> {
        ctx.attribute(a).map_err(CudaError::driver(what))
    };
    let (major, minor) = ctx.compute_capability().map_err(CudaError::driver(
        "cuDeviceGetAttribute(compute capability)",
    ))?;
    Ok(DeviceFacts {
        name: ctx.name().map_err(CudaError::driver("cuDeviceGetName"))?,
        ordinal,
        arch: Arch {
            major: major as u32,
            minor: minor as u32,
            specific: false,
        },
        sm_count: attr(
            Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            "cuDeviceGetAttribute(SM count)",
        )? as u32,
        l2_bytes: attr(
            Attr::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE,
            "cuDeviceGetAttribute(L2 size)",
        )? as u64,
        total_mem_bytes: ctx
            .total_mem()
            .map_err(CudaError::driver("cuDeviceTotalMem"))? as u64,
        max_smem_per_block_optin: attr(
            Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            "cuDeviceGetAttribute(smem opt-in)",
        )? as u32,
        max_threads_per_block: attr(
            Attr::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK,
            "cuDeviceGetAttribute(max threads)",
        )? as u32,
        max_threads_per_sm: attr(
            Attr::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR,
            "cuDeviceGetAttribute(max threads per SM)",
        )? as u32,
        driver_version: driver_version()?,
    })
}
