//! The structured, JSON-safe record of one evaluation.
//!
//! JSON has no NaN or Infinity, and strict parsers reject them, so every
//! measured float is an `Option<f64>` serialised through [`finite_or_null`]: a
//! non-finite value becomes `null`. The reward is always a finite number.
//!
//! Candidate failures (a hang, a crash, a wrong output) are scored 0 inside an
//! [`EvalRecord`]. Failures of the machinery (the worker died for another
//! reason, another process took the GPU memory) are not the candidate's fault:
//! they are [`EvalOutcome::MachineryFailure`], which the caller retries and
//! never scores.

use crate::reward::FAILURE_REWARD;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// The stage an evaluation reached or failed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Parsing the launch line.
    Parse,
    /// Static checks of the source.
    StaticCheck,
    /// NVRTC compilation (in a child process with time and memory limits).
    Compile,
    /// Checks on the compiled PTX: what actually runs.
    PtxCheck,
    /// Loading the module and finding the entry point.
    Load,
    /// Launching (bad launch configuration, launch error).
    Launch,
    /// Comparing outputs with the reference.
    Verify,
    /// Timing.
    Timing,
    /// Physically impossible timing.
    Plausibility,
    /// No result within the time limit (the kernel hangs).
    Timeout,
    /// The worker died or hit a sticky CUDA error while running the candidate.
    Crash,
    /// The evaluator itself failed; never the candidate's fault.
    Machinery,
}

impl Stage {
    /// Whether a failure at this stage is the machinery's, not the candidate's.
    pub fn is_machinery(self) -> bool {
        self == Stage::Machinery
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Parse => "launch-line parse",
            Stage::StaticCheck => "static check",
            Stage::Compile => "compile",
            Stage::PtxCheck => "compiled-PTX check",
            Stage::Load => "load",
            Stage::Launch => "launch",
            Stage::Verify => "verification",
            Stage::Timing => "timing",
            Stage::Plausibility => "plausibility check",
            Stage::Timeout => "timeout",
            Stage::Crash => "crash",
            Stage::Machinery => "evaluator machinery",
        })
    }
}

/// Passed, or failed at a stage with a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EvalStatus {
    /// Verified and timed on every shape.
    Passed,
    /// Rejected.
    Failed {
        /// Where.
        stage: Stage,
        /// Why, in words the proposer can act on.
        reason: String,
    },
}

/// A shape: its name and the values of its variables (e.g. `T = 37`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShapeId {
    /// Name, e.g. `decode_t1`.
    pub name: String,
    /// Variable values.
    pub vars: BTreeMap<String, i64>,
}

impl fmt::Display for ShapeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        let vars: Vec<String> = self.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !vars.is_empty() {
            write!(f, " ({})", vars.join(", "))?;
        }
        Ok(())
    }
}

/// Serialises `Some(non-finite)` as `null`, so no `NaN`/`Infinity` reaches JSON.
pub fn finite_or_null<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) if v.is_finite() => s.serialize_some(v),
        _ => s.serialize_none(),
    }
}

/// `Some(x)` if `x` is finite, else `None`.
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// One shape's timing and figures; `None` where not measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShapeResult {
    /// The shape.
    pub shape: ShapeId,
    /// Candidate median, µs.
    #[serde(serialize_with = "finite_or_null", default)]
    pub median_us: Option<f64>,
    /// Candidate p10, µs.
    #[serde(serialize_with = "finite_or_null", default)]
    pub p10_us: Option<f64>,
    /// Candidate p90, µs.
    #[serde(serialize_with = "finite_or_null", default)]
    pub p90_us: Option<f64>,
    /// Baseline median, µs.
    #[serde(serialize_with = "finite_or_null", default)]
    pub baseline_median_us: Option<f64>,
    /// Floored speedup over the baseline.
    #[serde(serialize_with = "finite_or_null", default)]
    pub speedup: Option<f64>,
    /// Achieved GB/s.
    #[serde(serialize_with = "finite_or_null", default)]
    pub gbps: Option<f64>,
    /// Fraction of the speed of light.
    #[serde(serialize_with = "finite_or_null", default)]
    pub sol_fraction: Option<f64>,
    /// Registers, local memory and occupancy of the candidate at this shape's
    /// launch, as the driver reports them (absent in older sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<kiln_cuda::KernelResources>,
}

/// Wall time of each stage, ms; `None` for stages not reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimings {
    /// Compilation.
    #[serde(serialize_with = "finite_or_null", default)]
    pub compile_ms: Option<f64>,
    /// Verification.
    #[serde(serialize_with = "finite_or_null", default)]
    pub verify_ms: Option<f64>,
    /// Timing.
    #[serde(serialize_with = "finite_or_null", default)]
    pub time_ms: Option<f64>,
}

/// The record of one candidate's evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Passed or where it failed.
    pub status: EvalStatus,
    /// Per-shape results (may be partial for a failure).
    #[serde(default)]
    pub per_shape: Vec<ShapeResult>,
    /// The reward in `[0, 10]`; 0 for any failure.
    pub reward: f64,
    /// Speedup over the naive seed kernel.
    #[serde(serialize_with = "finite_or_null", default)]
    pub speedup_vs_seed: Option<f64>,
    /// NVRTC's log (warnings too), possibly empty.
    #[serde(default)]
    pub compile_log: String,
    /// Stage wall times.
    #[serde(default)]
    pub timings: StageTimings,
    /// What the worker printed on its stdout/stderr while this candidate ran
    /// (device printf and the like), at most [`CANDIDATE_OUTPUT_BYTES`]; the
    /// protocol never reads it. Absent in older session files.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub candidate_output: String,
}

/// The most of a candidate's captured output an [`EvalRecord`] keeps, in bytes.
pub const CANDIDATE_OUTPUT_BYTES: usize = 4096;

/// The most of the compile log [`EvalRecord::feedback_for_proposer`] quotes, in bytes.
pub const FEEDBACK_LOG_BYTES: usize = 2000;

impl EvalRecord {
    /// A passing record; a non-finite reward is recorded as 0.
    pub fn passed(
        per_shape: Vec<ShapeResult>,
        reward: f64,
        speedup_vs_seed: Option<f64>,
        compile_log: String,
        timings: StageTimings,
    ) -> Self {
        let reward = if reward.is_finite() {
            reward.max(0.0)
        } else {
            FAILURE_REWARD
        };
        EvalRecord {
            status: EvalStatus::Passed,
            per_shape,
            reward,
            speedup_vs_seed: speedup_vs_seed.and_then(finite),
            compile_log,
            timings,
            candidate_output: String::new(),
        }
    }

    /// A record stored as JSON (search nodes keep records opaque), if it parses
    /// as one.
    pub fn from_value(v: &serde_json::Value) -> Option<Self> {
        serde_json::from_value(v.clone()).ok()
    }

    /// A failed record, reward 0.
    pub fn failed(stage: Stage, reason: impl Into<String>) -> Self {
        EvalRecord {
            status: EvalStatus::Failed {
                stage,
                reason: reason.into(),
            },
            per_shape: Vec::new(),
            reward: FAILURE_REWARD,
            speedup_vs_seed: None,
            compile_log: String::new(),
            timings: StageTimings::default(),
            candidate_output: String::new(),
        }
    }

    /// Whether the candidate passed every stage.
    pub fn is_passed(&self) -> bool {
        self.status == EvalStatus::Passed
    }

    /// A short account for the proposer: the reward and per-shape results, or which stage failed and why.
    pub fn feedback_for_proposer(&self) -> String {
        match &self.status {
            EvalStatus::Passed => {
                let mut s = format!(
                    "passed: reward {:.3} (geometric-mean speedup over the current kernel)",
                    self.reward
                );
                if let Some(seed) = self.speedup_vs_seed {
                    s.push_str(&format!(", {seed:.2}x over the naive seed"));
                }
                for r in &self.per_shape {
                    s.push_str(&format!("\n  {}: {}", r.shape, shape_line(r)));
                }
                s
            }
            EvalStatus::Failed { stage, reason } => {
                let mut s = format!("failed at {stage}: {reason}");
                if *stage == Stage::Compile && !self.compile_log.trim().is_empty() {
                    s.push_str("\ncompiler log:\n");
                    s.push_str(truncate_utf8(self.compile_log.trim(), FEEDBACK_LOG_BYTES));
                    if self.compile_log.trim().len() > FEEDBACK_LOG_BYTES {
                        s.push_str("\n[log truncated]");
                    }
                }
                s
            }
        }
    }
}

fn opt(x: Option<f64>, digits: usize, unit: &str) -> String {
    x.and_then(finite)
        .map_or_else(|| "n/a".to_string(), |v| format!("{v:.digits$}{unit}"))
}

fn shape_line(r: &ShapeResult) -> String {
    let mut line = format!(
        "{} (p10 {}, p90 {}) vs baseline {}, speedup {}, {} GB/s, {} of speed of light",
        opt(r.median_us, 2, " µs"),
        opt(r.p10_us, 2, ""),
        opt(r.p90_us, 2, ""),
        opt(r.baseline_median_us, 2, " µs"),
        opt(r.speedup, 3, "x"),
        opt(r.gbps, 0, ""),
        opt(r.sol_fraction.map(|f| f * 100.0), 0, "%"),
    );
    if let Some(res) = &r.resources {
        line.push_str("; ");
        line.push_str(&res.describe());
    }
    line
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The result of asking for an evaluation: a scored record, or a machinery failure to retry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum EvalOutcome {
    /// The candidate was judged (passed or failed); the record carries the reward.
    Scored(EvalRecord),
    /// The evaluator failed; retry, never score.
    MachineryFailure {
        /// What went wrong.
        reason: String,
    },
}

impl EvalOutcome {
    /// A failure at `stage`: [`Stage::Machinery`] becomes a machinery failure, anything else a record scored 0.
    pub fn failure(stage: Stage, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        if stage.is_machinery() {
            EvalOutcome::MachineryFailure { reason }
        } else {
            EvalOutcome::Scored(EvalRecord::failed(stage, reason))
        }
    }

    /// The reward to back-propagate, or `None` for a machinery failure (which must not be scored).
    pub fn reward(&self) -> Option<f64> {
        match self {
            EvalOutcome::Scored(r)
                if !matches!(
                    r.status,
                    EvalStatus::Failed {
                        stage: Stage::Machinery,
                        ..
                    }
                ) =>
            {
                Some(r.reward)
            }
            _ => None,
        }
    }

    /// Whether the caller should retry this evaluation.
    pub fn is_machinery_failure(&self) -> bool {
        self.reward().is_none()
    }

    /// The proposer's feedback (machinery failures say the candidate was not judged).
    pub fn feedback_for_proposer(&self) -> String {
        match self {
            EvalOutcome::Scored(r) => r.feedback_for_proposer(),
            EvalOutcome::MachineryFailure { reason } => {
                format!("not evaluated (evaluator problem, not the candidate's fault): {reason}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(t: i64) -> ShapeId {
        ShapeId {
            name: format!("t{t}"),
            vars: [("T".to_string(), t), ("D".to_string(), 4096)]
                .into_iter()
                .collect(),
        }
    }

    fn passed() -> EvalRecord {
        let per_shape = vec![
            ShapeResult {
                shape: shape(1),
                median_us: Some(5.0),
                p10_us: Some(4.9),
                p90_us: Some(5.2),
                baseline_median_us: Some(6.0),
                speedup: Some(1.2),
                gbps: Some(12.0),
                sol_fraction: Some(0.4),
                resources: Some(kiln_cuda::KernelResources {
                    registers: 40,
                    local_bytes: 0,
                    static_smem_bytes: 128,
                    blocks_per_sm: 8,
                    occupancy: 1.0,
                }),
            },
            ShapeResult {
                shape: shape(37),
                median_us: Some(f64::NAN),
                p10_us: Some(f64::INFINITY),
                p90_us: Some(f64::NEG_INFINITY),
                baseline_median_us: None,
                speedup: Some(1.0),
                gbps: None,
                sol_fraction: None,
                resources: None,
            },
        ];
        let timings = StageTimings {
            compile_ms: Some(120.0),
            verify_ms: Some(f64::NAN),
            time_ms: None,
        };
        EvalRecord::passed(
            per_shape,
            1.1,
            Some(f64::INFINITY),
            "warning: x".into(),
            timings,
        )
    }

    #[test]
    fn json_never_contains_nan_or_infinity_and_round_trips() {
        let rec = passed();
        let json =
            serde_json::to_string_pretty(&EvalOutcome::Scored(rec.clone())).expect("serialise");
        for bad in ["NaN", "nan", "Infinity", "inf"] {
            assert!(!json.contains(bad), "{bad} in {json}");
        }
        let back: EvalOutcome = serde_json::from_str(&json).expect("deserialise");
        let EvalOutcome::Scored(back) = back else {
            panic!("scored")
        };
        assert_eq!(back.per_shape[0], rec.per_shape[0]);
        assert_eq!(back.per_shape[1].median_us, None);
        assert_eq!(back.per_shape[1].p10_us, None);
        assert_eq!(back.speedup_vs_seed, None);
        assert_eq!(back.timings.verify_ms, None);
        assert_eq!(back.timings.compile_ms, Some(120.0));
        assert_eq!(back.reward, 1.1);
        // A second round trip is a fixed point.
        let again =
            serde_json::to_string_pretty(&EvalOutcome::Scored(back.clone())).expect("serialise");
        assert_eq!(again, json);
    }

    #[test]
    fn failures_and_machinery_are_distinct() {
        let f = EvalOutcome::failure(Stage::Verify, "output element 3 is NaN");
        assert_eq!(f.reward(), Some(0.0));
        assert!(!f.is_machinery_failure());
        let m = EvalOutcome::failure(Stage::Machinery, "worker OOM from another process");
        assert_eq!(m.reward(), None);
        assert!(m.is_machinery_failure());
        assert!(m
            .feedback_for_proposer()
            .contains("not the candidate's fault"));
        // A record that claims a machinery stage is not scored either.
        let odd = EvalOutcome::Scored(EvalRecord::failed(Stage::Machinery, "x"));
        assert_eq!(odd.reward(), None);
        let json = serde_json::to_string(&m).expect("ser");
        assert_eq!(serde_json::from_str::<EvalOutcome>(&json).expect("de"), m);
        let json = serde_json::to_string(&f).expect("ser");
        assert!(json.contains("\"stage\":\"verify\""), "{json}");
        assert_eq!(serde_json::from_str::<EvalOutcome>(&json).expect("de"), f);
    }

    #[test]
    fn passed_sanitises_reward() {
        let r = EvalRecord::passed(
            vec![],
            f64::NAN,
            None,
            String::new(),
            StageTimings::default(),
        );
        assert_eq!(r.reward, 0.0);
        assert!(r.is_passed());
    }

    #[test]
    fn feedback_names_stage_and_reason() {
        let r = EvalRecord::failed(
            Stage::StaticCheck,
            "entry point `rmsnorm` takes 4 parameters, the target needs 5",
        );
        assert_eq!(
            r.feedback_for_proposer(),
            "failed at static check: entry point `rmsnorm` takes 4 parameters, the target needs 5"
        );
        let mut c = EvalRecord::failed(Stage::Compile, "NVRTC failed");
        c.compile_log = format!(
            "error: identifier \"foo\" is undefined\n{}",
            "é".repeat(FEEDBACK_LOG_BYTES)
        );
        let fb = c.feedback_for_proposer();
        assert!(fb.starts_with("failed at compile: NVRTC failed\ncompiler log:\nerror: identifier"));
        assert!(fb.ends_with("[log truncated]"));
        assert!(fb.len() < FEEDBACK_LOG_BYTES + 200);
        let p = passed().feedback_for_proposer();
        assert!(p.starts_with("passed: reward 1.100"), "{p}");
        assert!(p.contains("t1 (D=4096, T=1): 5.00 µs (p10 4.90, p90 5.20) vs baseline 6.00 µs, speedup 1.200x, 12 GB/s, 40% of speed of light; 40 regs, 0 B local, 8 blocks/SM (100 % occupancy)"), "{p}");
        assert!(p.contains("t37 (D=4096, T=37): n/a"), "{p}");
    }
}
