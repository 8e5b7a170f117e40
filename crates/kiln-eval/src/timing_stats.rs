//! Robust statistics of repeated timings, a stopping rule, and the physical
//! plausibility check that rejects impossible results.
//!
//! Percentiles use linear interpolation between order statistics (the
//! "type 7" definition of R and NumPy's default): `p10`, `median`, `p90`.
//! `spread = (p90 - p10) / median` is the run's relative noise.
//!
//! Plausibility (docs/ARCHITECTURE.md, "Timing"), on every timed shape: a
//! kernel may not move its bytes faster than the ceiling of the memory they
//! live in — [`BANDWIDTH_SLACK`] × the measured DRAM peak when the shape's
//! input sets are rotated beyond L2, [`L2_SLACK`] × the measured L2 copy rate
//! when they fit in it — and may not take less than [`LAUNCH_FLOOR_SLACK`] ×
//! an empty kernel launch measured in graphs of the evaluator's own size.

use serde::{Deserialize, Serialize};

/// How much faster than the measured peak streaming rate a result may appear (measurement noise).
pub const BANDWIDTH_SLACK: f64 = 1.1;

/// How much faster than the measured L2 copy rate a shape that fits in L2 may
/// appear. Wider than the DRAM slack: the L2 rate comes from a copy of a
/// fixed size that still pays part of a launch, and a read-mostly kernel
/// (a router reads logits and writes a few indices) streams L2 faster than a copy.
pub const L2_SLACK: f64 = 2.0;

/// The fraction of the empty-kernel launch time a kernel must take: the floor
/// is a median, and graph replays of tiny kernels jitter by a few percent.
pub const LAUNCH_FLOOR_SLACK: f64 = 0.9;

/// Summary of one shape's repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimingSummary {
    /// Number of repetitions.
    pub reps: usize,
    /// Median, µs.
    pub median_us: f64,
    /// 10th percentile, µs.
    pub p10_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// Fastest repetition, µs.
    pub min_us: f64,
    /// `(p90 - p10) / median`.
    pub spread: f64,
}

/// Invalid timing input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimingError {
    /// No repetitions.
    #[error("no timing repetitions")]
    Empty,
    /// A repetition that is NaN, infinite, zero or negative (a measurement bug).
    #[error("repetition {index} measured {value} µs; times must be finite and positive")]
    InvalidTime {
        /// Which repetition.
        index: usize,
        /// Its value.
        value: f64,
    },
}

/// The GPU layer's percentile: one definition for the probes and the evaluator.
pub use kiln_cuda::timing::percentile;

/// Median, p10, p90 and spread of per-repetition times in µs.
pub fn summarize(times_us: &[f64]) -> Result<TimingSummary, TimingError> {
    if let Some((index, &value)) = times_us
        .iter()
        .enumerate()
        .find(|(_, t)| !(t.is_finite() && **t > 0.0))
    {
        return Err(TimingError::InvalidTime { index, value });
    }
    let mut sorted = times_us.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q = |p| percentile(&sorted, p).ok_or(TimingError::Empty);
    let (median_us, p10_us, p90_us) = (q(0.5)?, q(0.1)?, q(0.9)?);
    Ok(TimingSummary {
        reps: sorted.len(),
        median_us,
        p10_us,
        p90_us,
        min_us: sorted[0],
        spread: (p90_us - p10_us) / median_us,
    })
}

/// When to stop repeating: once `spread ≤ target_spread` (after `min_reps`), or when the budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StoppingRule {
    /// The spread to reach.
    pub target_spread: f64,
    /// Never stop before this many repetitions.
    pub min_reps: usize,
    /// Never exceed this many repetitions.
    pub max_reps: usize,
    /// Stop once the repetitions' summed time reaches this many µs.
    pub max_total_us: f64,
}

impl Default for StoppingRule {
    /// 2 % spread, 10 to 1000 repetitions, at most 200 ms of measured time.
    fn default() -> Self {
        StoppingRule {
            target_spread: 0.02,
            min_reps: 10,
            max_reps: 1000,
            max_total_us: 200_000.0,
        }
    }
}

/// What the stopping rule says about the repetitions so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopDecision {
    /// Take more repetitions.
    Continue,
    /// The spread reached the target.
    Converged,
    /// The repetition or time budget ran out first (the result is still usable, just noisier).
    BudgetExhausted,
}

impl StoppingRule {
    /// Decides whether to continue after `times_us`; invalid times are an error.
    pub fn decide(&self, times_us: &[f64]) -> Result<StopDecision, TimingError> {
        if times_us.is_empty() {
            return Ok(StopDecision::Continue);
        }
        let s = summarize(times_us)?;
        if s.reps >= self.min_reps && s.spread <= self.target_spread {
            return Ok(StopDecision::Converged);
        }
        let total: f64 = times_us.iter().sum();
        if s.reps >= self.max_reps || total >= self.max_total_us {
            return Ok(StopDecision::BudgetExhausted);
        }
        Ok(StopDecision::Continue)
    }
}

/// The device limits a measured time must respect.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Plausibility {
    /// Measured peak DRAM streaming rate (best of copy and read-only streaming), bytes/s.
    pub peak_bandwidth_bytes_per_s: f64,
    /// Measured rate of a copy that fits in L2 (bytes read + written per second).
    pub l2_bandwidth_bytes_per_s: f64,
    /// Time of an empty kernel launch in a graph of the evaluator's size, µs.
    pub launch_floor_us: f64,
}

/// A physically impossible result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlausibilityError {
    /// Faster than the memory holding the bytes can move them.
    #[error("implausible: moving {bytes} bytes in {time_us:.3} µs is {achieved_gbps:.0} GB/s, above {slack} × the measured {memory} ceiling {peak_gbps:.0} GB/s; the kernel probably skips work")]
    AboveBandwidth {
        /// "DRAM" (inputs rotated beyond L2) or "L2".
        memory: &'static str,
        /// Bytes moved.
        bytes: u64,
        /// Measured time.
        time_us: f64,
        /// Achieved GB/s.
        achieved_gbps: f64,
        /// The ceiling in GB/s.
        peak_gbps: f64,
        /// [`BANDWIDTH_SLACK`] or [`L2_SLACK`].
        slack: f64,
    },
    /// Faster than an empty launch.
    #[error("implausible: {time_us:.3} µs is less than {slack} × an empty kernel launch ({floor_us:.3} µs); the kernel probably did not run")]
    BelowLaunchFloor {
        /// Measured time.
        time_us: f64,
        /// The floor.
        floor_us: f64,
        /// [`LAUNCH_FLOOR_SLACK`].
        slack: f64,
    },
    /// A non-finite or non-positive time.
    #[error("implausible: measured time {time_us} µs is not a positive number")]
    InvalidTime {
        /// Measured time.
        time_us: f64,
    },
}

impl Plausibility {
    /// Checks a measured per-launch `time_us` for a kernel that moves
    /// `bytes_moved`: against the DRAM ceiling when the shape's inputs were
    /// rotated beyond L2, else against the L2 ceiling; always against the floor.
    pub fn check(
        &self,
        time_us: f64,
        bytes_moved: u64,
        rotated_beyond_l2: bool,
    ) -> Result<(), PlausibilityError> {
        if !(time_us.is_finite() && time_us > 0.0) {
            return Err(PlausibilityError::InvalidTime { time_us });
        }
        if time_us < LAUNCH_FLOOR_SLACK * self.launch_floor_us {
            return Err(PlausibilityError::BelowLaunchFloor {
                time_us,
                floor_us: self.launch_floor_us,
                slack: LAUNCH_FLOOR_SLACK,
            });
        }
        let (memory, ceiling, slack) = if rotated_beyond_l2 {
            ("DRAM", self.peak_bandwidth_bytes_per_s, BANDWIDTH_SLACK)
        } else {
            ("L2", self.l2_bandwidth_bytes_per_s, L2_SLACK)
        };
        let achieved = bytes_moved as f64 / (time_us * 1e-6);
        if ceiling > 0.0 && achieved > slack * ceiling {
            return Err(PlausibilityError::AboveBandwidth {
                memory,
                bytes: bytes_moved,
                time_us,
                achieved_gbps: achieved / 1e9,
                peak_gbps: ceiling / 1e9,
                slack,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let v: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(6.0));
        assert_eq!(percentile(&v, 0.1), Some(2.0));
        assert_eq!(percentile(&v, 0.9), Some(10.0));
        assert_eq!(percentile(&[1.0, 2.0], 0.5), Some(1.5));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[4.0], 0.9), Some(4.0));
    }

    #[test]
    fn summary_is_order_independent() {
        let s = summarize(&[5.0, 1.0, 3.0, 2.0, 4.0]).expect("ok");
        assert_eq!((s.reps, s.median_us, s.min_us), (5, 3.0, 1.0));
        assert!((s.p10_us - 1.4).abs() < 1e-12 && (s.p90_us - 4.6).abs() < 1e-12);
        assert!((s.spread - 3.2 / 3.0).abs() < 1e-12);
        let one = summarize(&[7.0]).expect("one");
        assert_eq!((one.median_us, one.spread), (7.0, 0.0));
    }

    #[test]
    fn invalid_times_are_errors() {
        assert_eq!(summarize(&[]), Err(TimingError::Empty));
        assert!(matches!(
            summarize(&[1.0, f64::NAN]),
            Err(TimingError::InvalidTime { index: 1, .. })
        ));
        assert!(matches!(
            summarize(&[0.0]),
            Err(TimingError::InvalidTime { .. })
        ));
        assert!(matches!(
            summarize(&[-1.0]),
            Err(TimingError::InvalidTime { .. })
        ));
        assert!(matches!(
            summarize(&[f64::INFINITY]),
            Err(TimingError::InvalidTime { .. })
        ));
    }

    #[test]
    fn stopping_rule() {
        let rule = StoppingRule {
            target_spread: 0.05,
            min_reps: 5,
            max_reps: 8,
            max_total_us: 1e9,
        };
        assert_eq!(rule.decide(&[]), Ok(StopDecision::Continue));
        assert_eq!(
            rule.decide(&[10.0; 4]),
            Ok(StopDecision::Continue),
            "below min_reps"
        );
        assert_eq!(rule.decide(&[10.0; 5]), Ok(StopDecision::Converged));
        let noisy = [10.0, 20.0, 10.0, 20.0, 10.0, 20.0];
        assert_eq!(rule.decide(&noisy), Ok(StopDecision::Continue));
        let noisy8 = [10.0, 20.0, 10.0, 20.0, 10.0, 20.0, 10.0, 20.0];
        assert_eq!(rule.decide(&noisy8), Ok(StopDecision::BudgetExhausted));
        let timed = StoppingRule {
            max_total_us: 50.0,
            ..rule
        };
        assert_eq!(
            timed.decide(&[10.0, 20.0, 10.0, 20.0]),
            Ok(StopDecision::BudgetExhausted)
        );
        assert!(rule.decide(&[f64::NAN]).is_err());
    }

    #[test]
    fn plausibility() {
        let p = Plausibility {
            peak_bandwidth_bytes_per_s: 3.0e12,
            l2_bandwidth_bytes_per_s: 6.0e12,
            launch_floor_us: 2.0,
        };
        // 3 MB in 1 µs would be 3 TB/s... but 1 µs is below 0.9 × the floor.
        assert!(matches!(
            p.check(1.0, 3_000_000, true),
            Err(PlausibilityError::BelowLaunchFloor { .. })
        ));
        p.check(1.85, 0, false).expect("within the floor's slack");
        // 300 MB in 100 µs = 3 TB/s: at peak, fine. 3.5 TB/s is above 1.1x (3.3 TB/s).
        p.check(100.0, 300_000_000, true).expect("at peak");
        p.check(100.0, 329_000_000, true).expect("within slack");
        let err = p.check(100.0, 350_000_000, true).expect_err("too fast");
        assert!(matches!(
            err,
            PlausibilityError::AboveBandwidth { memory: "DRAM", .. }
        ));
        assert!(err.to_string().contains("3500 GB/s"), "{err}");
        // Fits in L2: bounded by 2 × the L2 rate (12 TB/s), not by DRAM.
        p.check(100.0, 350_000_000, false)
            .expect("L2-resident shape");
        p.check(100.0, 1_190_000_000, false)
            .expect("within the L2 slack");
        let err = p.check(100.0, 1_300_000_000, false).expect_err("beyond L2");
        assert!(
            matches!(err, PlausibilityError::AboveBandwidth { memory: "L2", .. }),
            "{err}"
        );
        // The launch floor applies to every shape.
        assert!(p.check(1.5, 0, false).is_err());
        assert!(matches!(
            p.check(f64::NAN, 0, false),
            Err(PlausibilityError::InvalidTime { .. })
        ));
        assert!(matches!(
            p.check(0.0, 0, false),
            Err(PlausibilityError::InvalidTime { .. })
        ));
    }
}
