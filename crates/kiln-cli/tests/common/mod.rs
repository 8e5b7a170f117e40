//! Shared by the GPU-free end-to-end tests: an evaluator double.

use std::collections::BTreeMap;

use kiln_eval::evaluator::{CandidateEvaluator, DeviceSummary, EvaluatorError};
use kiln_eval::record::{EvalOutcome, EvalRecord, ShapeId, ShapeResult, Stage, StageTimings};
use kiln_eval::targets::Target;
use kiln_search::search::source_hash;

/// GPU-free evaluator double: deterministic scores, counts every evaluation,
/// and can be told to break (as a dead GPU would) after some evaluations.
pub struct DoubleEvaluator {
    /// Evaluations per source.
    pub evaluated: BTreeMap<String, u32>,
    /// Machinery failures from this many evaluations on.
    pub break_after: Option<usize>,
}

impl DoubleEvaluator {
    /// A double that never breaks.
    pub fn new() -> Self {
        Self {
            evaluated: BTreeMap::new(),
            break_after: None,
        }
    }

    fn outcome(source: &str) -> EvalOutcome {
        let h = source_hash(source);
        let x = u64::from_str_radix(&h[..8], 16).unwrap_or(0) as f64 / u32::MAX as f64;
        if x < 0.15 {
            return EvalOutcome::Scored(EvalRecord::failed(
                Stage::Verify,
                "double: wrong output at T=37",
            ));
        }
        let speedup = 0.5 + x;
        let per_shape = [1usize, 16, 4096]
            .iter()
            .map(|&t| ShapeResult {
                shape: ShapeId {
                    name: format!("T={t}"),
                    vars: [("T".to_string(), t as i64)].into_iter().collect(),
                },
                median_us: Some(10.0 / speedup),
                p10_us: Some(9.5 / speedup),
                p90_us: Some(10.5 / speedup),
                baseline_median_us: Some(10.0),
                speedup: Some(speedup),
                gbps: Some(1000.0 * speedup),
                sol_fraction: Some(0.3 * speedup),
                resources: None,
            })
            .collect();
        EvalOutcome::Scored(EvalRecord::passed(
            per_shape,
            speedup,
            None,
            String::new(),
            StageTimings::default(),
        ))
    }
}

impl CandidateEvaluator for DoubleEvaluator {
    fn device(&mut self) -> Result<DeviceSummary, EvaluatorError> {
        Ok(DeviceSummary {
            gpu_name: "GPU-free double".into(),
            gpu_arch: "sm_90".into(),
            driver_version: "13.0".into(),
            nvrtc_version: "13.0".into(),
            sm_count: 132,
            l2_mib: 50,
            peak_bytes_per_s: 3e12,
            launch_floor_us: 0.8,
        })
    }

    fn evaluate_each(
        &mut self,
        _target: &Target,
        sources: &[String],
        done: &mut dyn FnMut(usize, EvalOutcome),
    ) {
        for (i, s) in sources.iter().enumerate() {
            let total: u32 = self.evaluated.values().sum();
            if self.break_after.is_some_and(|n| total as usize >= n) {
                done(
                    i,
                    EvalOutcome::MachineryFailure {
                        reason: "double: GPU gone".into(),
                    },
                );
                continue;
            }
            *self.evaluated.entry(s.clone()).or_default() += 1;
            done(i, Self::outcome(s));
        }
    }
}
