//! Measurements of the device that bound every kernel: the peak DRAM streaming
//! bandwidth (speed-of-light for memory-bound kernels) and the empty-kernel
//! launch time (the floor for tiny shapes), plus an end-to-end self-check.

use cudarc::driver::{DevicePtr, DevicePtrMut, PushKernelArg};
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

/// The probe kernels, compiled and loaded once.
pub struct Probes {
    empty: Kernel,
    stream_read: Kernel,
    axpy: Kernel,
}

impl Probes {
    /// Compiles and loads the probe kernels for this GPU.
    pub fn load(gpu: &Gpu, compiler: &Compiler) -> Result<Self> {
        let req = CompileRequest::new("kiln_probe.cu", PROBE_SOURCE).arch(gpu.facts().arch);
        let module = gpu.load_module(&compiler.compile(&req)?)?;
        Ok(Self {
            empty: module.kernel("kiln_empty")?,
            stream_read: module.kernel("kiln_stream_read")?,
            axpy: module.kernel("kiln_axpy")?,
        })
    }

    /// The empty kernel (the evaluator times it as the floor).
    pub fn empty_kernel(&self) -> &Kernel {
        &self.empty
    }

    /// Measures the launch floor: empty kernels batched in a CUDA graph.
    pub fn launch_floor(&self, gpu: &Gpu) -> Result<LaunchFloor> {
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
            for _ in 0..FLOOR_LAUNCHES_PER_GRAPH {
                launch()?;
            }
            Ok(())
        })?;
        graph.replay()?;
        gpu.synchronize()?;
        let mut per_launch = Vec::new();
        for _ in 0..15 {
            let us = gpu.time_us(|| graph.replay())?;
            per_launch.push(us / FLOOR_LAUNCHES_PER_GRAPH as f64);
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

fn median(samples: &[f64]) -> Result<f64> {
    Summary::of(samples)
        .map(|s| s.median)
        .ok_or_else(|| CudaError::SelfCheck("timing produced no finite samples".into()))
}
