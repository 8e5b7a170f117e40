//! Catalog kernels on candle's CUDA device: NVRTC compile through kiln-cuda
//! (disk-cached), one module load per configuration and CUDA context, and
//! launches on candle's stream.
//!
//! Arguments are raw device addresses: every op first makes its inputs
//! contiguous, so an address is the buffer's base plus the layout's offset.
//! The `SyncOnDrop` guards cudarc hands out are kept alive until after the
//! launch, so candle's cross-stream event tracking stays correct.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Shape, Storage, Tensor};
use cudarc::driver::{CudaFunction, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};
use half::{bf16, f16};
use kiln_kernels::{KernelBuild, LaunchDims};

use crate::error::{op_error, Result};

/// The process-wide NVRTC compiler (its disk cache makes reruns instant).
fn compiler() -> Result<&'static kiln_cuda::Compiler> {
    static COMPILER: OnceLock<std::result::Result<kiln_cuda::Compiler, String>> = OnceLock::new();
    COMPILER
        .get_or_init(|| kiln_cuda::Compiler::new().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| op_error("nvrtc", e.clone()))
}

/// A loaded entry point and whether it may be launched early.
#[derive(Clone)]
pub(crate) struct Kernel {
    /// The function.
    pub func: CudaFunction,
    /// Its PTX waits for the kernel before it before touching memory
    /// ([`kiln_cuda::early_launch::waits_before_memory`]) and early launch is
    /// on, so it is launched while that kernel still runs.
    pub early: bool,
}

/// Loaded kernels by (CUDA context, configuration).
type KernelCache = Mutex<HashMap<(usize, String), Kernel>>;

fn kernels() -> &'static KernelCache {
    static KERNELS: OnceLock<KernelCache> = OnceLock::new();
    KERNELS.get_or_init(Default::default)
}

/// Whether kernels whose PTX allows it are launched early (programmatic
/// dependent launch): only with `KILN_EARLY_LAUNCH=1`, read once per process.
/// Off by default: on the H100 graph decode stayed bit-identical with it but
/// gained nothing measurable (docs/BENCHMARKS.md); eager decode gains.
pub fn early_launch_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_EARLY_LAUNCH").is_ok_and(|v| v == "1"))
}

/// Loaded kernels so far: (launched early, all). What validate reports, so a
/// run where early launch did not take effect says so.
pub fn early_launch_counts() -> (usize, usize) {
    kernels().lock().map_or((0, 0), |c| {
        (c.values().filter(|k| k.early).count(), c.len())
    })
}

/// The compiled and loaded entry point of `build` on `dev`.
pub(crate) fn function(dev: &CudaDevice, build: &KernelBuild) -> Result<Kernel> {
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let key = (
        Arc::as_ptr(ctx) as usize,
        format!("{}{}{:?}", build.name, build.entry, build.defines),
    );
    let mut cache = kernels()
        .lock()
        .map_err(|_| op_error("kernel cache", "poisoned by an earlier panic"))?;
    if let Some(k) = cache.get(&key) {
        return Ok(k.clone());
    }
    let compiled = compiler()?.compile(&build.to_request())?;
    let early = early_launch_enabled()
        && compiled
            .ptx
            .as_deref()
            .is_some_and(|ptx| kiln_cuda::early_launch::waits_before_memory(ptx, &build.entry));
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_binary(compiled.image))
        .map_err(kiln_cuda::CudaError::driver("cuModuleLoadData"))?;
    let func = module
        .load_function(&build.entry)
        .map_err(kiln_cuda::CudaError::driver("cuModuleGetFunction"))?;
    let k = Kernel { func, early };
    cache.insert(key, k.clone());
    Ok(k)
}

/// Streaming multiprocessors of `dev` (launch lines may use `SMS`).
pub(crate) fn sm_count(dev: &CudaDevice) -> Result<u32> {
    let n = dev
        .cuda_stream()
        .context()
        .attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .map_err(kiln_cuda::CudaError::driver("cuDeviceGetAttribute"))?;
    Ok(n.max(1) as u32)
}

/// The CUDA device of a tensor, or an error naming the op.
pub(crate) fn cuda_device(op: &'static str, t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(d) => Ok(d.clone()),
        other => Err(op_error(
            op,
            format!("expected a CUDA tensor, got {other:?}"),
        )),
    }
}

/// One kernel argument.
pub(crate) enum Arg<'a> {
    /// A buffer read by the kernel, with the element offset its layout starts at.
    In(&'a CudaStorage, usize),
    /// An output buffer written by the kernel.
    Out(&'a mut CudaStorage),
    /// A buffer the kernel updates in place from its start (a KV cache):
    /// candle hands out no mutable storage of a shared tensor, and kiln's
    /// one stream orders every use.
    InPlace(&'a CudaStorage),
    /// A null pointer (an optional input that is absent).
    Null,
    /// An `int` scalar.
    I32(i32),
    /// A 64-bit scalar (`long long` or `unsigned long long`).
    U64(u64),
    /// A `float` scalar.
    F32(f32),
}

/// Read guards over input tensors' storage, so their buffers can be passed
/// as [`Arg::In`] while the guards live.
pub(crate) struct Inputs<'a> {
    op: &'static str,
    guards: Vec<(candle_core::StorageRef<'a>, usize)>,
}

impl<'a> Inputs<'a> {
    /// Locks the storage of each tensor (each must be contiguous and on CUDA).
    pub(crate) fn new(op: &'static str, tensors: &[&'a Tensor]) -> Result<Self> {
        if tensors.iter().any(|t| !t.is_contiguous()) {
            return Err(op_error(op, "inputs must be contiguous"));
        }
        Self::lock(op, tensors)
    }

    /// Locks the storage of each tensor, as it is (the caller has checked its layout).
    pub(crate) fn lock(op: &'static str, tensors: &[&'a Tensor]) -> Result<Self> {
        let mut guards = Vec::with_capacity(tensors.len());
        for t in tensors {
            let (st, layout) = t.storage_and_layout();
            if !matches!(&*st, Storage::Cuda(_)) {
                return Err(op_error(op, "an input is not on the CUDA device"));
            }
            guards.push((st, layout.start_offset()));
        }
        Ok(Self { op, guards })
    }

    /// The `i`-th input as a kernel argument.
    pub(crate) fn arg(&self, i: usize) -> Result<Arg<'_>> {
        match self.guards.get(i) {
            Some((st, offset)) => match &**st {
                Storage::Cuda(cs) => Ok(Arg::In(cs, *offset)),
                _ => Err(op_error(self.op, "an input is not on the CUDA device")),
            },
            None => Err(op_error(self.op, format!("no input {i}"))),
        }
    }

    /// The `i`-th tensor as a buffer the kernel updates in place (a KV cache:
    /// it must start at its storage's start).
    pub(crate) fn in_place(&self, i: usize) -> Result<Arg<'_>> {
        match self.guards.get(i) {
            Some((st, 0)) => match &**st {
                Storage::Cuda(cs) => Ok(Arg::InPlace(cs)),
                _ => Err(op_error(self.op, "a buffer is not on the CUDA device")),
            },
            Some(_) => Err(op_error(
                self.op,
                "an in-place buffer must start at its storage's start",
            )),
            None => Err(op_error(self.op, format!("no input {i}"))),
        }
    }
}

/// `t` itself when its last dimension is contiguous (a strided view a kernel
/// can read with its other strides), otherwise a contiguous copy.
pub(crate) fn last_dim_contiguous(t: &Tensor) -> Result<Tensor> {
    if t.stride().last() == Some(&1) {
        Ok(t.clone())
    } else {
        Ok(t.contiguous()?)
    }
}

/// Allocates an uninitialised output of `n` elements of `dtype` on `dev`.
pub(crate) fn alloc(dev: &CudaDevice, dtype: DType, n: usize) -> Result<CudaStorage> {
    // SAFETY: every output is fully written by its kernel before anyone reads it.
    let s = unsafe {
        match dtype {
            DType::BF16 => CudaStorage::wrap_cuda_slice(dev.alloc::<bf16>(n)?, dev.clone()),
            DType::F16 => CudaStorage::wrap_cuda_slice(dev.alloc::<f16>(n)?, dev.clone()),
            DType::F32 => CudaStorage::wrap_cuda_slice(dev.alloc::<f32>(n)?, dev.clone()),
            DType::U32 => CudaStorage::wrap_cuda_slice(dev.alloc::<u32>(n)?, dev.clone()),
            other => {
                return Err(op_error(
                    "alloc",
                    format!("dtype {other:?} not used by kiln ops"),
                ))
            }
        }
    };
    Ok(s)
}

/// Wraps a filled output buffer as a tensor.
pub(crate) fn into_tensor(s: CudaStorage, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(Storage::Cuda(s), shape, BackpropOp::none(), false)
}

macro_rules! slice_ptr {
    ($slice:expr, $stream:expr, $method:ident, $op:expr) => {
        match $slice {
            CudaStorageSlice::BF16(s) => s.$method($stream),
            CudaStorageSlice::F16(s) => s.$method($stream),
            CudaStorageSlice::F32(s) => s.$method($stream),
            CudaStorageSlice::U32(s) => s.$method($stream),
            CudaStorageSlice::I32(s) => s.$method($stream),
            _ => return Err(op_error($op, "unsupported storage dtype")),
        }
    };
}

/// Launches `kernel` with `args` in order, on the stream of `dev` (early
/// where the kernel allows it, see [`Kernel::early`]).
pub(crate) fn launch(
    op: &'static str,
    dev: &CudaDevice,
    kernel: &Kernel,
    dims: &LaunchDims,
    args: Vec<Arg<'_>>,
) -> Result<()> {
    let stream: Arc<CudaStream> = dev.cuda_stream();
    // Each address's guard must outlive the launch.
    let mut syncs: Vec<SyncOnDrop<'_>> = Vec::with_capacity(args.len());
    let mut addrs: Vec<u64> = Vec::with_capacity(args.len());
    let mut ints: Vec<i32> = Vec::new();
    let mut floats: Vec<f32> = Vec::new();
    // (kind, index): 0 address/u64, 1 i32, 2 f32.
    let mut order: Vec<(u8, usize)> = Vec::with_capacity(args.len());
    for a in args {
        match a {
            Arg::In(cs, offset) => {
                let (ptr, sync) = slice_ptr!(&cs.slice, &stream, device_ptr, op);
                addrs.push(ptr + (offset * cs.dtype().size_in_bytes()) as u64);
                syncs.push(sync);
                order.push((0, addrs.len() - 1));
            }
            Arg::InPlace(cs) => {
                let (ptr, sync) = slice_ptr!(&cs.slice, &stream, device_ptr, op);
                addrs.push(ptr);
                syncs.push(sync);
                order.push((0, addrs.len() - 1));
            }
            Arg::Out(cs) => {
                let (ptr, sync) = slice_ptr!(&mut cs.slice, &stream, device_ptr_mut, op);
                addrs.push(ptr);
                syncs.push(sync);
                order.push((0, addrs.len() - 1));
            }
            Arg::Null => {
                addrs.push(0);
                order.push((0, addrs.len() - 1));
            }
            Arg::I32(v) => {
                ints.push(v);
                order.push((1, ints.len() - 1));
            }
            Arg::U64(v) => {
                addrs.push(v);
                order.push((0, addrs.len() - 1));
            }
            Arg::F32(v) => {
                floats.push(v);
                order.push((2, floats.len() - 1));
            }
        }
    }
    if dims.smem > 48 * 1024 {
        return Err(op_error(
            op,
            format!("{} bytes of shared memory exceed 48 KiB", dims.smem),
        ));
    }
    let mut params: Vec<*mut std::ffi::c_void> = Vec::with_capacity(order.len());
    for (kind, i) in &order {
        params.push(match kind {
            0 => (&mut addrs[*i]) as *mut u64 as *mut std::ffi::c_void,
            1 => (&mut ints[*i]) as *mut i32 as *mut std::ffi::c_void,
            _ => (&mut floats[*i]) as *mut f32 as *mut std::ffi::c_void,
        });
    }
    // SAFETY: the caller passes arguments in the kernel's parameter order and
    // sizes every buffer from the op's validated configuration; the values
    // `params` points into live until the call returns; `early` is set only
    // for kernels whose PTX waits before any memory access.
    unsafe {
        kiln_cuda::early_launch::launch(
            &stream,
            &kernel.func,
            dims.grid,
            dims.block,
            dims.smem,
            &mut params,
            kernel.early,
        )
    }?;
    drop(syncs);
    Ok(())
}

/// A configuration's loaded function and parsed launch line.
struct Prepared {
    kernel: Kernel,
    line: kiln_kernels::LaunchLine,
    sms: u32,
}

/// Prepared kernels by (CUDA context, pack generation, configuration).
type PreparedCache = Mutex<HashMap<(usize, u64, String), Arc<Prepared>>>;

fn prepared() -> &'static PreparedCache {
    static CACHE: OnceLock<PreparedCache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The loaded function and launch dimensions of `c` for `t` rows, with the
/// active kernel pack's source where one applies. The first call per
/// configuration compiles, loads and parses; later calls only evaluate the
/// launch line (a decode step makes hundreds of launches).
pub(crate) fn prepare<C: kiln_kernels::OpConfig>(
    c: &C,
    dev: &CudaDevice,
    t: usize,
) -> Result<(Kernel, LaunchDims)> {
    let op = c.spec().name;
    let ctx = Arc::as_ptr(dev.cuda_stream().context()) as usize;
    let key = (ctx, super::pack::generation(), format!("{op}{c:?}"));
    let cached = prepared()
        .lock()
        .map_err(|_| op_error("kernel cache", "poisoned by an earlier panic"))?
        .get(&key)
        .cloned();
    let p = match cached {
        Some(p) => p,
        None => {
            let build = super::pack::resolve(c.build()?);
            let line = kiln_kernels::LaunchLine::parse_source(&build.source)
                .map_err(|source| kiln_kernels::KernelError::Launch { op, source })?;
            let p = Arc::new(Prepared {
                kernel: function(dev, &build)?,
                line,
                sms: sm_count(dev)?,
            });
            prepared()
                .lock()
                .map_err(|_| op_error("kernel cache", "poisoned by an earlier panic"))?
                .insert(key, p.clone());
            p
        }
    };
    let rows = i32::try_from(t)
        .ok()
        .filter(|&r| r >= 1)
        .ok_or_else(|| op_error(op, format!("{t} rows")))?;
    let dims = p
        .line
        .evaluate(&c.vars(rows, p.sms))
        .map_err(|source| kiln_kernels::KernelError::Launch { op, source })?;
    Ok((p.kernel.clone(), dims))
}

/// Whether candle's stream on `dev` is capturing a graph.
pub(crate) fn capturing(dev: &CudaDevice) -> bool {
    !matches!(
        dev.cuda_stream().capture_status(),
        Ok(cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    )
}

/// One parameter of a kernel run through [`run`], in the kernel's order.
pub(crate) enum Param<'a> {
    /// An input tensor (contiguous, on this device).
    In(&'a Tensor),
    /// An input whose last dimension only is contiguous (a slice of a fused
    /// projection, see [`last_dim_contiguous`]); the kernel takes its other
    /// strides as further parameters.
    Rows(&'a Tensor),
    /// A buffer the kernel updates in place (a KV cache; see [`Arg::InPlace`]).
    InPlace(&'a Tensor),
    /// An optional input: a null pointer when absent.
    Maybe(Option<&'a Tensor>),
    /// The next output of [`run`]'s `outs`.
    Out,
    /// An `int` scalar.
    I32(i32),
    /// A 64-bit scalar.
    U64(u64),
    /// A `float` scalar.
    F32(f32),
    /// The decode position, an `int` passed by value: while a decode graph is
    /// captured the launch is logged, so each replay can set it
    /// ([`take_position_args`]).
    Position(i32),
}

/// A launch parameter that holds the decode position, logged during capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PositionArg {
    /// The launched function (`CUfunction` address).
    pub func: usize,
    /// The parameter's index in the kernel's signature.
    pub index: usize,
    /// The kernel's parameter count.
    pub count: usize,
    /// The value it was captured with.
    pub value: i32,
}

thread_local! {
    /// Position parameters launched while this thread's stream was capturing.
    static POSITION_ARGS: std::cell::RefCell<Vec<PositionArg>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The position parameters logged since the last call (each capture takes its own).
pub(crate) fn take_position_args() -> Vec<PositionArg> {
    POSITION_ARGS.with(|log| std::mem::take(&mut *log.borrow_mut()))
}

/// Writes `values` into the start of `t`'s device buffer (asynchronously, on
/// candle's stream): the inputs of a replayed decode graph.
pub(crate) fn write_values<T: cudarc::driver::DeviceRepr>(t: &Tensor, values: &[T]) -> Result<()> {
    let op = "graph input";
    let dev = cuda_device(op, t)?;
    if t.elem_count() < values.len() || t.dtype().size_in_bytes() != std::mem::size_of::<T>() {
        return Err(op_error(op, "the values do not fit the buffer"));
    }
    let inputs = Inputs::new(op, &[t])?;
    let stream = dev.cuda_stream();
    let Arg::In(cs, offset) = inputs.arg(0)? else {
        return Err(op_error(op, "not a device buffer"));
    };
    let (ptr, sync) = slice_ptr!(&cs.slice, &stream, device_ptr, op);
    let dst = ptr + (offset * cs.dtype().size_in_bytes()) as u64;
    // SAFETY: `dst` holds at least `values.len()` elements of T (checked
    // above); a pageable source is staged before the call returns.
    unsafe { cudarc::driver::result::memcpy_htod_async(dst, values, stream.cu_stream()) }
        .map_err(kiln_cuda::CudaError::driver("cuMemcpyHtoDAsync"))?;
    drop(sync);
    Ok(())
}

/// Prepares `c` for `t` rows, allocates `outs` (dtype, shape), launches with
/// `params` and returns the outputs as tensors, in `outs` order.
pub(crate) fn run<C: kiln_kernels::OpConfig>(
    c: &C,
    dev: &CudaDevice,
    t: usize,
    params: &[Param<'_>],
    outs: &[(DType, Shape)],
) -> Result<Vec<Tensor>> {
    let (kernel, dims) = prepare(c, dev, t)?;
    run_kernel(c.spec().name, dev, &kernel, &dims, params, outs)
}

/// Allocates `outs` (dtype, shape), launches `kernel` with `params` in its
/// parameter order and returns the outputs as tensors, in `outs` order: the
/// launch of every kernel, the catalog's ([`run`]) and kiln-candle's own.
pub(crate) fn run_kernel(
    op: &'static str,
    dev: &CudaDevice,
    kernel: &Kernel,
    dims: &LaunchDims,
    params: &[Param<'_>],
    outs: &[(DType, Shape)],
) -> Result<Vec<Tensor>> {
    let mut bufs = outs
        .iter()
        .map(|(dtype, shape)| alloc(dev, *dtype, shape.elem_count().max(1)))
        .collect::<Result<Vec<_>>>()?;
    {
        let mut tensors: Vec<&Tensor> = Vec::new();
        for p in params {
            let (t, fits) = match p {
                Param::In(t) | Param::Maybe(Some(t)) | Param::InPlace(t) => (*t, t.is_contiguous()),
                Param::Rows(t) => (*t, t.stride().last() == Some(&1)),
                _ => continue,
            };
            if !fits {
                return Err(op_error(
                    op,
                    match p {
                        Param::Rows(_) => "inputs must have a contiguous last dimension",
                        _ => "inputs must be contiguous",
                    },
                ));
            }
            tensors.push(t);
        }
        let inputs = Inputs::lock(op, &tensors)?;
        let mut next_in = 0;
        let mut next_out = bufs.iter_mut();
        let mut args = Vec::with_capacity(params.len());
        for p in params {
            args.push(match p {
                Param::In(_) | Param::Rows(_) | Param::Maybe(Some(_)) => {
                    next_in += 1;
                    inputs.arg(next_in - 1)?
                }
                Param::InPlace(_) => {
                    next_in += 1;
                    inputs.in_place(next_in - 1)?
                }
                Param::Maybe(None) => Arg::Null,
                Param::Out => Arg::Out(
                    next_out
                        .next()
                        .ok_or_else(|| op_error(op, "more output parameters than outputs"))?,
                ),
                Param::I32(v) | Param::Position(v) => Arg::I32(*v),
                Param::U64(v) => Arg::U64(*v),
                Param::F32(v) => Arg::F32(*v),
            });
        }
        let has_position = params.iter().any(|p| matches!(p, Param::Position(_)));
        if has_position && capturing(dev) {
            for (index, p) in params.iter().enumerate() {
                if let Param::Position(value) = p {
                    let arg = PositionArg {
                        func: kernel.func.cu_function() as usize,
                        index,
                        count: params.len(),
                        value: *value,
                    };
                    POSITION_ARGS.with(|log| log.borrow_mut().push(arg));
                }
            }
        }
        launch(op, dev, kernel, dims, args)?;
    }
    Ok(bufs
        .into_iter()
        .zip(outs)
        .map(|(b, (_, shape))| into_tensor(b, shape.clone()))
        .collect())
}
