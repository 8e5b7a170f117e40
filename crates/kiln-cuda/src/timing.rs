//! Device-side timing: CUDA events around a region, CUDA-graph capture and
//! replay for batches of small launches, an L2 flush, and sample statistics.

use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice};

use crate::device::Gpu;
use crate::error::{CudaError, Result};

impl Gpu {
    /// Runs `work` between two events on kiln's stream and returns the GPU time
    /// in microseconds. `work` must only enqueue; the wait happens here.
    pub fn time_us(&self, work: impl FnOnce() -> Result<()>) -> Result<f64> {
        let ctx = self.context();
        let start = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(CudaError::driver("cuEventCreate"))?;
        let end = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(CudaError::driver("cuEventCreate"))?;
        start
            .record(self.stream())
            .map_err(CudaError::driver("cuEventRecord"))?;
        work()?;
        end.record(self.stream())
            .map_err(CudaError::driver("cuEventRecord"))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(CudaError::driver("cuEventElapsedTime"))?;
        Ok(ms as f64 * 1e3)
    }

    /// Records the launches `work` enqueues into a CUDA graph instead of
    /// running them; replay with [`Graph::replay`].
    pub fn capture(&self, work: impl FnOnce() -> Result<()>) -> Result<Graph> {
        let stream = self.stream();
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(CudaError::driver("cuStreamBeginCapture"))?;
        let recorded = work();
        // Always end the capture, so a failed closure leaves the stream usable.
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        recorded?;
        let graph = ended
            .map_err(CudaError::driver("cuStreamEndCapture"))?
            .ok_or_else(|| CudaError::SelfCheck("graph capture recorded nothing".into()))?;
        // Upload now so the first replay is not slower than the rest.
        graph.upload().map_err(CudaError::driver("cuGraphUpload"))?;
        Ok(Graph { inner: graph })
    }
}

/// An instantiated CUDA graph bound to kiln's stream.
pub struct Graph {
    inner: CudaGraph,
}

impl Graph {
    /// Enqueues one replay of the whole graph.
    pub fn replay(&self) -> Result<()> {
        self.inner
            .launch()
            .map_err(CudaError::driver("cuGraphLaunch"))
    }
}

/// Evicts the L2 cache by writing a buffer twice its size.
pub struct L2Flush {
    scratch: CudaSlice<u8>,
    flips: u8,
}

impl L2Flush {
    /// Allocates the scratch buffer (2× the device's L2).
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let bytes = (gpu.facts().l2_bytes as usize).max(1 << 20) * 2;
        Ok(Self {
            scratch: gpu.alloc_zeros(bytes)?,
            flips: 0,
        })
    }

    /// Enqueues the flush on kiln's stream.
    pub fn flush(&mut self, gpu: &Gpu) -> Result<()> {
        self.flips = self.flips.wrapping_add(1);
        gpu.memset_bytes(&mut self.scratch, self.flips)
    }
}

/// Median and spread of repeated measurements.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Median.
    pub median: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Number of samples.
    pub n: usize,
}

impl Summary {
    /// Summarises samples; `None` when empty or any sample is not finite.
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            median: percentile(&sorted, 0.5)?,
            p10: percentile(&sorted, 0.1)?,
            p90: percentile(&sorted, 0.9)?,
            n: sorted.len(),
        })
    }
}

/// The `p`-quantile (`0 ≤ p ≤ 1`) of ascending `sorted`, linearly
/// interpolated between order statistics; `None` if empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let pos = p.clamp(0.0, 1.0) * last as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_samples() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).expect("summary");
        assert_eq!(s.median, 3.0);
        assert!((s.p10 - 1.4).abs() < 1e-12);
        assert!((s.p90 - 4.6).abs() < 1e-12);
        assert_eq!(s.n, 5);
    }

    #[test]
    fn summary_rejects_empty_and_nan() {
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
    }
}
