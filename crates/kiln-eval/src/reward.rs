//! The reward of a verified, timed candidate, and the report figures beside it.
//!
//! * Per shape: `speedup = baseline_us / candidate_us`, floored at
//!   [`SPEEDUP_FLOOR`] (0.01). A candidate 100× slower than the baseline on one
//!   shape is as bad as it gets there; without a floor one pathological shape
//!   would send the geometric mean to 0 and hide the other shapes' signal, and
//!   with a higher floor a slow shape would cost too little.
//! * Reward: geometric mean of the floored speedups over the timed shapes,
//!   clamped to `[0, REWARD_MAX]` (10). [`FAILURE_REWARD`] (0) for any failure.
//! * Reports: speedup over the naive seed kernel (same formula, not clamped),
//!   and the speed-of-light fraction `ideal_us / measured_us`, with
//!   `ideal_us = max(bytes / peak bandwidth, launch floor)`: bandwidth-bound
//!   shapes compare with streaming their bytes at the measured peak, tiny
//!   shapes with an empty launch.

use serde::{Deserialize, Serialize};

/// Lowest per-shape speedup counted in the geometric mean.
pub const SPEEDUP_FLOOR: f64 = 0.01;

/// Highest reward.
pub const REWARD_MAX: f64 = 10.0;

/// Reward of any failed candidate.
pub const FAILURE_REWARD: f64 = 0.0;

/// Baseline and candidate median times of one shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShapeTiming {
    /// Reference kernel's median, µs.
    pub baseline_us: f64,
    /// Candidate's median, µs.
    pub candidate_us: f64,
}

/// Invalid reward input (a measurement bug, never the candidate's score).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RewardError {
    /// No timed shapes.
    #[error("no timed shapes to score")]
    NoShapes,
    /// A time that is not finite and positive.
    #[error("shape {index}: time {value} µs is not a positive number")]
    InvalidTime {
        /// Shape index.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A value for the geometric mean that is not finite and positive.
    #[error("value {index} ({value}) is not a positive number")]
    InvalidValue {
        /// Index.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A device fact (bandwidth, floor) that is not finite and positive.
    #[error("device fact `{name}` = {value} is not a positive number")]
    InvalidDeviceFact {
        /// Which fact.
        name: &'static str,
        /// The value.
        value: f64,
    },
}

fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// `baseline_us / candidate_us`, floored at [`SPEEDUP_FLOOR`].
pub fn speedup(baseline_us: f64, candidate_us: f64) -> Result<f64, RewardError> {
    for (index, value) in [(0, baseline_us), (1, candidate_us)] {
        if !positive(value) {
            return Err(RewardError::InvalidTime { index, value });
        }
    }
    Ok((baseline_us / candidate_us).max(SPEEDUP_FLOOR))
}

/// Geometric mean of positive values (computed in log space).
pub fn geometric_mean(values: &[f64]) -> Result<f64, RewardError> {
    if values.is_empty() {
        return Err(RewardError::NoShapes);
    }
    let mut log_sum = 0.0;
    for (index, &value) in values.iter().enumerate() {
        if !positive(value) {
            return Err(RewardError::InvalidValue { index, value });
        }
        log_sum += value.ln();
    }
    Ok((log_sum / values.len() as f64).exp())
}

/// The floored per-shape speedups of `shapes`.
pub fn speedups(shapes: &[ShapeTiming]) -> Result<Vec<f64>, RewardError> {
    shapes
        .iter()
        .enumerate()
        .map(|(index, s)| {
            speedup(s.baseline_us, s.candidate_us).map_err(|e| match e {
                RewardError::InvalidTime { value, .. } => RewardError::InvalidTime { index, value },
                other => other,
            })
        })
        .collect()
}

/// The reward: geometric mean of floored speedups, clamped to `[0, REWARD_MAX]`.
pub fn reward(shapes: &[ShapeTiming]) -> Result<f64, RewardError> {
    Ok(geometric_mean(&speedups(shapes)?)?.clamp(0.0, REWARD_MAX))
}

/// Speedup over the naive seed kernel: geometric mean of floored per-shape speedups, not clamped.
pub fn speedup_vs_seed(shapes: &[ShapeTiming]) -> Result<f64, RewardError> {
    geometric_mean(&speedups(shapes)?)
}

/// Fraction of the speed of light: `max(bytes / peak, launch floor) / time`.
pub fn sol_fraction(
    bytes_moved: u64,
    peak_bandwidth_bytes_per_s: f64,
    launch_floor_us: f64,
    time_us: f64,
) -> Result<f64, RewardError> {
    if !positive(peak_bandwidth_bytes_per_s) {
        return Err(RewardError::InvalidDeviceFact {
            name: "peak_bandwidth_bytes_per_s",
            value: peak_bandwidth_bytes_per_s,
        });
    }
    if !(launch_floor_us.is_finite() && launch_floor_us >= 0.0) {
        return Err(RewardError::InvalidDeviceFact {
            name: "launch_floor_us",
            value: launch_floor_us,
        });
    }
    if !positive(time_us) {
        return Err(RewardError::InvalidTime {
            index: 0,
            value: time_us,
        });
    }
    let stream_us = bytes_moved as f64 / peak_bandwidth_bytes_per_s * 1e6;
    Ok(stream_us.max(launch_floor_us) / time_us)
}

/// Achieved bandwidth in GB/s (10^9 bytes per second).
pub fn gbps(bytes_moved: u64, time_us: f64) -> Result<f64, RewardError> {
    if !positive(time_us) {
        return Err(RewardError::InvalidTime {
            index: 0,
            value: time_us,
        });
    }
    Ok(bytes_moved as f64 / (time_us * 1e3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(baseline_us: f64, candidate_us: f64) -> ShapeTiming {
        ShapeTiming {
            baseline_us,
            candidate_us,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn geomean_of_equal_ratios_is_the_ratio() {
        let r = reward(&[st(10.0, 5.0), st(4.0, 2.0), st(1.0, 0.5)]).expect("ok");
        assert!(close(r, 2.0), "{r}");
        assert!(close(geometric_mean(&[2.0, 8.0]).expect("ok"), 4.0));
    }

    #[test]
    fn one_terrible_shape_is_floored_not_zero() {
        let r = reward(&[st(10.0, 5.0), st(1.0, 1e9)]).expect("ok");
        assert!(close(r, (2.0f64 * SPEEDUP_FLOOR).sqrt()), "{r}");
        assert!(r > 0.0);
        assert_eq!(speedup(1.0, 1000.0), Ok(SPEEDUP_FLOOR));
    }

    #[test]
    fn clamped_to_max() {
        assert_eq!(reward(&[st(1000.0, 1.0)]), Ok(REWARD_MAX));
        assert!(close(
            speedup_vs_seed(&[st(1000.0, 1.0)]).expect("ok"),
            1000.0
        ));
    }

    #[test]
    fn empty_and_invalid_inputs_are_errors() {
        assert_eq!(reward(&[]), Err(RewardError::NoShapes));
        assert_eq!(geometric_mean(&[]), Err(RewardError::NoShapes));
        assert!(matches!(
            reward(&[st(1.0, 1.0), st(1.0, 0.0)]),
            Err(RewardError::InvalidTime { index: 1, .. })
        ));
        assert!(matches!(
            reward(&[st(f64::NAN, 1.0)]),
            Err(RewardError::InvalidTime { index: 0, .. })
        ));
        assert!(matches!(
            geometric_mean(&[1.0, 0.0]),
            Err(RewardError::InvalidValue { index: 1, .. })
        ));
        assert!(matches!(
            geometric_mean(&[1.0, f64::INFINITY]),
            Err(RewardError::InvalidValue { .. })
        ));
        assert_eq!(FAILURE_REWARD, 0.0);
    }

    #[test]
    fn speed_of_light() {
        // 3 GB at 3 TB/s is 1000 µs; measured 2000 µs → 0.5.
        assert!(close(
            sol_fraction(3_000_000_000, 3e12, 2.0, 2000.0).expect("ok"),
            0.5
        ));
        // Tiny shape: the launch floor dominates. 2 µs floor, 4 µs measured → 0.5.
        assert!(close(sol_fraction(1024, 3e12, 2.0, 4.0).expect("ok"), 0.5));
        assert!(sol_fraction(1, 0.0, 2.0, 4.0).is_err());
        assert!(sol_fraction(1, 3e12, f64::NAN, 4.0).is_err());
        assert!(sol_fraction(1, 3e12, 2.0, 0.0).is_err());
        assert!(close(gbps(3_000_000, 1000.0).expect("ok"), 3.0));
        assert!(gbps(1, -1.0).is_err());
    }
}
