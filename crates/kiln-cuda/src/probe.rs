//! Measurements of the device that bound every kernel: the peak DRAM streaming
//! bandwidth (speed-of-light for memory-bound kernels) and the empty-kernel
//! launch time (the floor for tiny shapes), the time of a plain copy that moves
//! a given number of bytes (the ceiling for an op of that size), plus an
//! end-to-end self-check.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg};
use serde::{Deserialize, Serialize};

use crate::compiler::{CompileRequest, Compiler};
use crate::device::Gpu;
use crate::error::{CudaError, Result};
use crate::module::{Kernel, LaunchDims};
use crate::timing::Summary;

/// Source of the probe kernels.
pub const PROBE_SOURCE: &str = include_str!("../kernels/probe.cu");

/// Launches of the empty kernel per captured graph.
const FLOOR_LAUNCHES_PER_GRAPH: usize = 1000;

/// What the bandwidth probe measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bandwidth {
    /// Device-to-device copy, bytes read + written per second.
    pub copy_bytes_per_s: f64,
    /// Read-only streaming kernel, bytes read per second.
    pub read_bytes_per_s: f64,
    /// Bytes of the buffer streamed (well beyond L2).
    pub buffer_bytes: u64,
}

impl Bandwidth {
    /// The peak: the best of the copy and the read-only stream.
    pub fn peak_bytes_per_s(&self) -> f64 {
        self.copy_bytes_per_s.max(self.read_bytes_per_s)
    }
}

/// What the launch-floor probe measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LaunchFloor {
    /// Median time of one empty-kernel launch inside a CUDA graph, µs.
    pub graph_us: f64,
    /// Median time of one plain stream launch (event-timed), µs.
    pub stream_us: f64,
}

/// Launches of a copy per captured graph (as many as the evaluator's graphs hold).
const COPY_LAUNCHES_PER_GRAPH: usize = 20;
/// Rotated copy buffers must total this many L2 sizes (as the evaluator's sets).
const COPY_L2_MULTIPLE: usize = 3;

/// What a plain copy of a given size costs, timed the way kiln times ops.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CopyCeiling {
    /// Bytes moved per launch: half read, half written.
    pub bytes_moved: u64,
    /// Median µs of `kiln_copy` (one 16-byte word per thread).
    pub kernel_us: f64,
    /// Median µs of the driver's device-to-device copy.
    pub memcpy_us: f64,
    /// Median µs of `kiln_copy_pdl` chained with programmatic dependent
    /// launch (sm_90 and later; `None` before): not part of the ceiling,
    /// since kiln's ops launch without it, but what PDL would save them.
    pub pdl_kernel_us: Option<f64>,
    /// Buffers rotated beyond L2 (large sizes), as the op's inputs are.
    pub rotated: bool,
}

impl CopyCeiling {
    /// The faster of the two copies: what moving these bytes costs at best.
    pub fn best_us(&self) -> f64 {
        self.kernel_us.min(self.memcpy_us)
    }
}

/// One device word that a byte compare lowers to the first offset where
/// its buffers differ ([`Probes::first_difference`]); `u64::MAX` means
/// they were equal.
struct DifferenceMark(CudaSlice<u64>);

impl DifferenceMark {
    /// A mark that has seen no difference.
    fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Self(gpu.upload(&[u64::MAX])?))
    }

    /// The lowest differing offset the compare found (waits for it).
    fn read(&self, gpu: &Gpu) -> Result<Option<u64>> {
        let at = gpu.download(&self.0)?;
        Ok(at.first().copied().filter(|&v| v != u64::MAX))
    }
}

/// Keyed 64-bit digests of device buffers, one device word per slot
/// ([`Probes::digest`]): a buffer's bytes can be told from another's without
/// keeping a copy of them on the device.
pub struct Digests {
    slots: CudaSlice<u64>,
    key: u64,
}

impl Digests {
    /// `slots` zeroed digests under `key` (keep the key secret from the
    /// kernels whose outputs are digested: it is what makes a forged
    /// difference that cancels out unguessable).
    pub fn new(gpu: &Gpu, slots: usize, key: u64) -> Result<Self> {
        Ok(Self {
            slots: gpu.alloc_zeros::<u64>(slots.max(1))?,
            key,
        })
    }

    /// Zeroes every slot (enqueued on the stream).
    pub fn reset(&mut self, gpu: &Gpu) -> Result<()> {
        gpu.stream()
            .memset_zeros(&mut self.slots)
            .map_err(CudaError::driver("cuMemsetD8"))
    }

    /// Every slot's digest (waits for the digests enqueued since the reset).
    pub fn read(&self, gpu: &Gpu) -> Result<Vec<u64>> {
        gpu.download(&self.slots)
    }
}

/// The probe kernels, compiled and loaded once.
pub struct Probes {
    empty: Kernel,
    stream_read: Kernel,
    copy: Kernel,
    copy_pdl: Kernel,
    axpy: Kernel,
    first_difference: Kernel,
    digest: Kernel,
    clear_shared: Kernel,
    warm_l2: Kernel,
    /// The word `kiln_warm_l2` may write (scratch: nothing reads it).
    warm_sink: CudaSlice<u32>,
}

impl Probes {
    /// Compiles and loads the probe kernels for this GPU.
    pub fn load(gpu: &Gpu, compiler: &Compiler) -> Result<Self> {
        let req = CompileRequest::new("kiln_probe.cu", PROBE_SOURCE).arch(gpu.facts().arch);
        let module = gpu.load_module(&compiler.compile(&req)?)?;
        Ok(Self {
            empty: module.kernel("kiln_empty")?,
            stream_read: module.kernel("kiln_stream_read")?,
            copy: module.kernel("kiln_copy")?,
            copy_pdl: module.kernel("kiln_copy_pdl")?,
            axpy: module.kernel("kiln_axpy")?,
            first_difference: module.kernel("kiln_first_difference")?,
            digest: module.kernel("kiln_digest")?,
            clear_shared: module.kernel("kiln_clear_shared")?,
            warm_l2: module.kernel("kiln_warm_l2")?,
            warm_sink: gpu.alloc_zeros::<u32>(1)?,
        })
    }

    /// The empty kernel (the evaluator times it as the floor).
    pub fn empty_kernel(&self) -> &Kernel {
        &self.empty
    }

    /// The first byte offset (to 16-byte granularity) at which the `len`
    /// bytes at device addresses `a` and `b` differ, or `None` if they are
    /// equal; both must be 16-byte aligned allocations of this context.
    pub fn first_difference(&self, gpu: &Gpu, a: u64, b: u64, len: u64) -> Result<Option<u64>> {
        let mut mark = DifferenceMark::new(gpu)?;
        self.mark_difference(gpu, a, b, len, &mut mark)?;
        mark.read(gpu)
    }

    /// Enqueues a compare of the `len` bytes at `a` and `b` that lowers
    /// `mark` to the first differing offset; nothing waits for it.
    fn mark_difference(
        &self,
        gpu: &Gpu,
        a: u64,
        b: u64,
        len: u64,
        mark: &mut DifferenceMark,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if !a.is_multiple_of(16) || !b.is_multiple_of(16) {
            return Err(CudaError::SelfCheck(
                "a device byte compare needs 16-byte aligned buffers".into(),
            ));
        }
        let blocks = (4 * gpu.facts().sm_count).max(1);
        let cfg = self
            .first_difference
            .prepare(&LaunchDims::linear(blocks, 256, 0))?;
        let mut b_ = gpu
            .stream()
            .launch_builder(self.first_difference.function());
        b_.arg(&a).arg(&b).arg(&len).arg(&mut mark.0);
        // SAFETY: `a` and `b` address `len` readable bytes (the caller's
        // buffers), the mark one u64; the kernel only reads a and b.
        unsafe { b_.launch(cfg) }
            .map_err(CudaError::driver("cuLaunchKernel(kiln_first_difference)"))?;
        Ok(())
    }

    /// Enqueues adding the digest of the `len` bytes at device address `at`
    /// (16-byte aligned, of this context) into slot `slot` of `digests`;
    /// nothing waits for it. Digests of several buffers into one slot sum.
    pub fn digest(
        &self,
        gpu: &Gpu,
        at: u64,
        len: u64,
        digests: &mut Digests,
        slot: usize,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if !at.is_multiple_of(16) {
            return Err(CudaError::SelfCheck(
                "a device digest needs a 16-byte aligned buffer".into(),
            ));
        }
        if slot >= digests.slots.len() {
            return Err(CudaError::SelfCheck(format!(
                "digest slot {slot} of {}",
                digests.slots.len()
            )));
        }
        let blocks = (4 * gpu.facts().sm_count).max(1);
        let cfg = self.digest.prepare(&LaunchDims::linear(blocks, 256, 0))?;
        let key = digests.key;
        let mut into = digests.slots.slice_mut(slot..slot + 1);
        let mut b = gpu.stream().launch_builder(self.digest.function());
        b.arg(&at).arg(&len).arg(&key).arg(&mut into);
        // SAFETY: `at` addresses `len` readable bytes (the caller's buffer),
        // `into` one u64; the kernel only reads `at`.
        unsafe { b.launch(cfg) }.map_err(CudaError::driver("cuLaunchKernel(kiln_digest)"))?;
        Ok(())
    }

    /// Enqueues an overwrite of every SM's shared memory with `pattern`
    /// (`kiln_clear_shared`): whatever a kernel left there, the next kernel
    /// on this stream cannot read it. Nothing waits for it.
    pub fn clear_shared(&self, gpu: &Gpu, pattern: u32) -> Result<()> {
        let facts = gpu.facts();
        let bytes = facts.max_smem_per_block_optin;
        let blocks = (2 * facts.sm_count).max(1);
        let threads = facts.max_threads_per_block.clamp(32, 1024);
        let cfg = self
            .clear_shared
            .prepare(&LaunchDims::linear(blocks, threads, bytes))?;
        let words = bytes / 4;
        let mut b = gpu.stream().launch_builder(self.clear_shared.function());
        b.arg(&words).arg(&pattern);
        // SAFETY: the kernel writes only its own dynamic shared memory, of
        // the size it is launched with.
        unsafe { b.launch(cfg) }.map_err(CudaError::driver("cuLaunchKernel(kiln_clear_shared)"))?;
        Ok(())
    }

    /// Enqueues one read of the `len` bytes at device address `at` (16-byte
    /// aligned, of this context) through L2 at normal priority
    /// (`kiln_warm_l2`; a tail under 16 bytes is not read): afterwards they
    /// are in L2 as far as it holds them, whatever the kernel before left or
    /// evicted there. Nothing waits for it.
    pub fn warm_l2(&self, gpu: &Gpu, at: u64, len: u64) -> Result<()> {
        let n16 = len / 16;
        if n16 == 0 {
            return Ok(());
        }
        if !at.is_multiple_of(16) {
            return Err(CudaError::SelfCheck(
                "an L2 warm-up needs a 16-byte aligned buffer".into(),
            ));
        }
        // A small buffer needs no more blocks than it has words for.
        let words_per_block = 256u64;
        let blocks = n16
            .div_ceil(words_per_block)
            .min(4 * gpu.facts().sm_count as u64)
            .max(1) as u32;
        let cfg = self.warm_l2.prepare(&LaunchDims::linear(blocks, 256, 0))?;
        let sink = self.warm_sink.device_ptr(gpu.stream()).0;
        let mut b = gpu.stream().launch_builder(self.warm_l2.function());
        b.arg(&at).arg(&n16).arg(&sink);
        // SAFETY: `at` addresses `len` readable bytes (the caller's buffer);
        // the kernel reads them and may write the one u32 of `warm_sink`.
        unsafe { b.launch(cfg) }.map_err(CudaError::driver("cuLaunchKernel(kiln_warm_l2)"))?;
        Ok(())
    }

    /// Measures the launch floor: empty kernels batched in a CUDA graph.
    pub fn launch_floor(&self, gpu: &Gpu) -> Result<LaunchFloor> {
        self.launch_floor_per_graph(gpu, FLOOR_LAUNCHES_PER_GRAPH)
    }

    /// The launch floor with `per_graph` empty kernels per captured graph:
    /// the per-launch cost a graph of that size amortises (the evaluator
    /// measures it at its own graph size, since small graphs pay more).
    pub fn launch_floor_per_graph(&self, gpu: &Gpu, per_graph: usize) -> Result<LaunchFloor> {
        let per_graph = per_graph.max(1);
        let dims = LaunchDims::linear(1, 32, 0);
        let cfg = self.empty.prepare(&dims)?;
        let launch = || -> Result<()> {
            let mut b = gpu.stream().launch_builder(self.empty.function());
            // SAFETY: kiln_empty takes no arguments.
            unsafe { b.launch(cfg) }
                .map(|_| ())
                .map_err(CudaError::driver("cuLaunchKernel(kiln_empty)"))
        };
        let graph = gpu.capture(|| {
            for _ in 0..per_graph {
                launch()?;
            }
            Ok(())
        })?;
        graph.replay()?;
        gpu.synchronize()?;
        let mut per_launch = Vec::new();
        for _ in 0..15 {
            let us = gpu.time_us(|| graph.replay())?;
            per_launch.push(us / per_graph as f64);
        }
        let mut single = Vec::new();
        for _ in 0..50 {
            single.push(gpu.time_us(launch)?);
        }
        Ok(LaunchFloor {
            graph_us: median(&per_launch)?,
            stream_us: median(&single)?,
        })
    }

    /// Measures the peak DRAM streaming bandwidth over a buffer of at least
    /// 1 GiB and 16× L2 (capped at a quarter of free memory).
    pub fn bandwidth(&self, gpu: &Gpu) -> Result<Bandwidth> {
        let (free, _) = gpu.memory_info()?;
        let want = (1usize << 30).max(gpu.facts().l2_bytes as usize * 16);
        let bytes = want.min(free / 4) & !0xFFF;
        if bytes < 64 << 20 {
            return Err(CudaError::SelfCheck(format!(
                "only {} MiB free on the GPU: too little to measure bandwidth",
                free >> 20
            )));
        }
        let mut src = gpu.alloc_zeros::<u8>(bytes)?;
        let mut dst = gpu.alloc_zeros::<u8>(bytes)?;
        gpu.memset_bytes(&mut src, 0x5A)?;
        let mut sink = gpu.alloc_zeros::<u32>(1)?;

        let mut copy = || -> Result<()> {
            let (s, _g1) = src.device_ptr(gpu.stream());
            let (d, _g2) = dst.device_ptr_mut(gpu.stream());
            // SAFETY: both buffers hold `bytes` bytes on this context.
            unsafe {
                cudarc::driver::sys::cuMemcpyDtoDAsync_v2(d, s, bytes, gpu.stream().cu_stream())
            }
            .result()
            .map_err(CudaError::driver("cuMemcpyDtoDAsync"))
        };
        let sms = gpu.facts().sm_count;
        let dims = LaunchDims::linear(4 * sms, 512, 0);
        let cfg = self.stream_read.prepare(&dims)?;
        let n16 = (bytes / 16) as u64;
        let read = |sink: &mut cudarc::driver::CudaSlice<u32>| -> Result<()> {
            let mut b = gpu.stream().launch_builder(self.stream_read.function());
            b.arg(&src).arg(&n16).arg(sink);
            // SAFETY: src holds n16 16-byte words; sink holds one u32.
            unsafe { b.launch(cfg) }
                .map(|_| ())
                .map_err(CudaError::driver("cuLaunchKernel(kiln_stream_read)"))
        };
        // Warm up both paths, then alternate so drift hits both alike.
        copy()?;
        read(&mut sink)?;
        gpu.synchronize()?;
        let (mut copy_t, mut read_t) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            copy_t.push(gpu.time_us(&mut copy)?);
            read_t.push(gpu.time_us(|| read(&mut sink))?);
        }
        let b = bytes as f64;
        Ok(Bandwidth {
            copy_bytes_per_s: 2.0 * b / (median(&copy_t)? * 1e-6),
            read_bytes_per_s: b / (median(&read_t)? * 1e-6),
            buffer_bytes: bytes as u64,
        })
    }

    /// Times a plain copy that moves `bytes_moved` bytes (half read, half
    /// written) the way the evaluator times an op of that size: graphs of
    /// launches, buffers rotated beyond L2 once a pair stops fitting in it,
    /// per-launch medians. An op that moves as many bytes cannot beat it by much;
    /// the ratio says how much of a launch is data movement and how much the
    /// fixed cost every kernel of that size pays.
    pub fn copy_ceiling(&self, gpu: &Gpu, bytes_moved: u64) -> Result<CopyCeiling> {
        let half = ((bytes_moved / 2).max(16) as usize).div_ceil(16) * 16;
        let per_pair = 2 * half;
        let l2 = gpu.facts().l2_bytes as usize;
        let (free, _) = gpu.memory_info()?;
        let mut pairs = if per_pair * 2 >= l2 {
            (COPY_L2_MULTIPLE * l2).div_ceil(per_pair).max(2)
        } else {
            1
        };
        pairs = pairs.min((free / 4 / per_pair).max(1));
        let mut bufs = Vec::with_capacity(pairs);
        for _ in 0..pairs {
            let mut src = gpu.alloc_zeros::<u8>(half)?;
            gpu.memset_bytes(&mut src, 0x3C)?;
            bufs.push((src, gpu.alloc_zeros::<u8>(half)?));
        }
        let rounds = COPY_LAUNCHES_PER_GRAPH.div_ceil(pairs).max(1);
        let per_graph = (rounds * pairs) as f64;
        let n16 = (half / 16) as u64;
        let grid = u32::try_from(n16.div_ceil(256)).map_err(|_| {
            CudaError::SelfCheck(format!("copy of {bytes_moved} bytes needs too many blocks"))
        })?;
        let cfg = self.copy.prepare(&LaunchDims::linear(grid, 256, 0))?;
        let stream = gpu.stream();
        let kernel_graph = gpu.capture(|| {
            for _ in 0..rounds {
                for (src, dst) in bufs.iter_mut() {
                    let mut b = stream.launch_builder(self.copy.function());
                    b.arg(&*src).arg(dst).arg(&n16);
                    // SAFETY: src and dst hold n16 16-byte words each.
                    unsafe { b.launch(cfg) }
                        .map_err(CudaError::driver("cuLaunchKernel(kiln_copy)"))?;
                }
            }
            Ok(())
        })?;
        let memcpy_graph = gpu.capture(|| {
            for _ in 0..rounds {
                for (src, dst) in bufs.iter_mut() {
                    let (s, _g1) = src.device_ptr(stream);
                    let (d, _g2) = dst.device_ptr_mut(stream);
                    // SAFETY: both buffers hold `half` bytes on this context.
                    unsafe {
                        cudarc::driver::sys::cuMemcpyDtoDAsync_v2(d, s, half, stream.cu_stream())
                    }
                    .result()
                    .map_err(CudaError::driver("cuMemcpyDtoDAsync"))?;
                }
            }
            Ok(())
        })?;
        let pdl_graph = if gpu.facts().arch.major >= 9 {
            // Checks the launch against the kernel's limits; the launch itself
            // goes through cuLaunchKernelEx for its attribute.
            self.copy_pdl.prepare(&LaunchDims::linear(grid, 256, 0))?;
            Some(gpu.capture(|| {
                for _ in 0..rounds {
                    for (src, dst) in bufs.iter_mut() {
                        let (s, _g1) = src.device_ptr(stream);
                        let (d, _g2) = dst.device_ptr_mut(stream);
                        launch_programmatic(gpu, &self.copy_pdl, grid, 256, &[s, d, n16])?;
                    }
                }
                Ok(())
            })?)
        } else {
            None
        };
        // Warm up, then alternate so drift of the machine hits all alike.
        for _ in 0..2 {
            kernel_graph.replay()?;
            memcpy_graph.replay()?;
            if let Some(g) = &pdl_graph {
                g.replay()?;
            }
        }
        gpu.synchronize()?;
        let (mut k, mut m, mut p) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..15 {
            k.push(gpu.time_us(|| kernel_graph.replay())? / per_graph);
            m.push(gpu.time_us(|| memcpy_graph.replay())? / per_graph);
            if let Some(g) = &pdl_graph {
                p.push(gpu.time_us(|| g.replay())? / per_graph);
            }
        }
        Ok(CopyCeiling {
            bytes_moved: per_pair as u64,
            kernel_us: median(&k)?,
            memcpy_us: median(&m)?,
            pdl_kernel_us: if p.is_empty() {
                None
            } else {
                Some(median(&p)?)
            },
            rotated: pairs > 1 && pairs * per_pair >= 2 * l2,
        })
    }

    /// Compiles nothing new: runs `out = a*x + y` on 1M floats and checks every
    /// element on the host.
    pub fn self_check(&self, gpu: &Gpu) -> Result<()> {
        let n = 1 << 20;
        let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.5).collect();
        let y: Vec<f32> = (0..n).map(|i| -((i % 777) as f32)).collect();
        let a = 3.0f32;
        let dx = gpu.upload(&x)?;
        let dy = gpu.upload(&y)?;
        let mut out = gpu.alloc_zeros::<f32>(n)?;
        gpu.fill_sentinel(&mut out)?;
        let dims = LaunchDims::linear((n as u32).div_ceil(256), 256, 0);
        let cfg = self.axpy.prepare(&dims)?;
        let n_i32 = n as i32;
        let mut b = gpu.stream().launch_builder(self.axpy.function());
        b.arg(&dx).arg(&dy).arg(&mut out).arg(&a).arg(&n_i32);
        // SAFETY: three buffers of n floats, matching kiln_axpy's signature.
        unsafe { b.launch(cfg) }.map_err(CudaError::driver("cuLaunchKernel(kiln_axpy)"))?;
        let got = gpu.download(&out)?;
        for i in 0..n {
            let want = a * x[i] + y[i];
            if got[i] != want {
                return Err(CudaError::SelfCheck(format!(
                    "axpy element {i}: got {} expected {want}",
                    got[i]
                )));
            }
        }
        Ok(())
    }
}

/// Launches `kernel` (1-D, arguments all 64-bit) early
/// ([`crate::early_launch`]), so it may start while the previous grid on the
/// stream ends.
fn launch_programmatic(
    gpu: &Gpu,
    kernel: &Kernel,
    grid: u32,
    block: u32,
    args: &[u64],
) -> Result<()> {
    let mut params: Vec<*mut std::ffi::c_void> = args
        .iter()
        .map(|a| a as *const u64 as *mut std::ffi::c_void)
        .collect();
    // SAFETY: `params` points at one live 64-bit value per kernel parameter,
    // which the driver copies before returning; the copy kernel waits before
    // touching memory.
    unsafe {
        crate::early_launch::launch(
            gpu.stream(),
            kernel.function(),
            (grid, 1, 1),
            (block, 1, 1),
            0,
            &mut params,
            true,
        )
    }
}

fn median(samples: &[f64]) -> Result<f64> {
    Summary::of(samples)
        .map(|s| s.median)
        .ok_or_else(|| CudaError::SelfCheck("timing produced no finite samples".into()))
}
