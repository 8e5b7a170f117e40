//! The red team: hostile and broken kernels the evaluator must reject, each
//! for the right reason, and honest kernels it must pass; run through the real
//! evaluator (static checks, NVRTC, the isolated GPU worker). GPU tests:
//! ignored in the ordinary run, executed by scripts/gpu-suite.sh.
//!
//! Each file in `tests/red_team/` states what must happen in its header:
//! `// expect: <stage>` (`pass`, or a stage name such as `verify`, `crash`,
//! `timeout`) and `// expect-reason: a|b` (the failure reason must contain one
//! of the `|`-separated texts). Add a file for every new trick.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_eval::evaluator::{CandidateEvaluator, EvaluatorConfig, GpuEvaluator};
use kiln_eval::record::{EvalOutcome, EvalStatus};
use kiln_eval::worker_client::WorkerCommand;

/// The red team's target: Qwen3's hidden RMSNorm (D=2048, bf16).
const TARGET: &str = "qwen3_rmsnorm";
/// Hangs are killed after this long.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The `kiln` binary that serves as the worker (`KILN_BIN` in a GPU bundle).
fn kiln_bin() -> PathBuf {
    std::env::var_os("KILN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kiln")))
}

fn red_team_dir() -> PathBuf {
    std::env::var_os("KILN_RED_TEAM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/red_team"))
}

fn evaluator() -> GpuEvaluator {
    let cmd = WorkerCommand::new(kiln_bin(), ["__worker"]);
    GpuEvaluator::new(
        cmd,
        EvaluatorConfig {
            secret_seed: 0x5eed_0f7e,
            warmup: 2,
            iters: 30,
            timeout: TIMEOUT,
        },
    )
    .unwrap_or_else(|e| panic!("evaluator: {e}"))
}

struct Case {
    name: String,
    source: String,
    expect: String,
    reasons: Vec<String>,
}

fn cases() -> Vec<Case> {
    let dir = red_team_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("red team folder {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let source = std::fs::read_to_string(&p).expect("readable red team file");
            let header = |key: &str| {
                source
                    .lines()
                    .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            };
            let expect = header("// expect:")
                .unwrap_or_else(|| panic!("{} has no `// expect:` line", p.display()));
            let reasons = header("// expect-reason:")
                .map(|r| {
                    r.split('|')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            Case {
                name: p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                source,
                expect,
                reasons,
            }
        })
        .collect()
}

/// "pass", or the failed stage's JSON name, plus the reason.
fn verdict(outcome: &EvalOutcome) -> (String, String) {
    match outcome {
        EvalOutcome::Scored(r) => match &r.status {
            EvalStatus::Passed => ("pass".into(), String::new()),
            EvalStatus::Failed { stage, reason } => (
                serde_json::to_value(stage)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                reason.clone(),
            ),
        },
        EvalOutcome::MachineryFailure { reason } => ("machinery".into(), reason.clone()),
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn red_team_is_rejected_for_the_right_reasons_and_honest_kernels_pass() {
    let target = kiln_eval::targets::find(TARGET).expect("target exists");
    let mut ev = evaluator();
    let device = ev.device().unwrap_or_else(|e| panic!("worker: {e}"));
    eprintln!("device: {device:?}");
    let cases = cases();
    assert!(cases.len() >= 15, "red team has {} files", cases.len());
    let honest = cases
        .iter()
        .find(|c| c.expect == "pass")
        .map(|c| c.source.clone())
        .expect("an honest kernel in the red team");
    let mut failures = Vec::new();
    for case in &cases {
        let started = Instant::now();
        let outcome = ev
            .evaluate_batch(&target, std::slice::from_ref(&case.source))
            .remove(0);
        let (stage, reason) = verdict(&outcome);
        let first_line = reason.lines().next().unwrap_or("");
        eprintln!(
            "{:<28} expected {:<12} got {:<12} {:>6.2} s  {}",
            case.name,
            case.expect,
            stage,
            started.elapsed().as_secs_f64(),
            first_line.chars().take(140).collect::<String>()
        );
        let reason_ok =
            case.reasons.is_empty() || case.reasons.iter().any(|r| reason.contains(r.as_str()));
        if stage != case.expect || !reason_ok {
            failures.push(format!(
                "{}: expected {} ({:?}), got {stage}: {reason}",
                case.name, case.expect, case.reasons
            ));
        }
        // After a hang or a dead context the very next candidate must be
        // evaluated normally, in a fresh worker.
        if case.expect == "timeout" || case.expect == "crash" {
            let before = ev.workers_started();
            let next = ev
                .evaluate_batch(&target, std::slice::from_ref(&honest))
                .remove(0);
            let (s, r) = verdict(&next);
            eprintln!(
                "  next candidate after {}: {s} (workers started {before} -> {})",
                case.name,
                ev.workers_started()
            );
            if s != "pass" {
                failures.push(format!("honest kernel after {}: {s}: {r}", case.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "red team failures:\n{}",
        failures.join("\n")
    );
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn catalog_and_seed_kernels_pass_on_every_target_and_time_repeatably() {
    let mut ev = evaluator();
    ev.device().unwrap_or_else(|e| panic!("worker: {e}"));
    let mut failures = Vec::new();
    let mut worst_ratio: f64 = 1.0;
    for target in kiln_eval::targets::all() {
        let catalog = target.baseline().expect("catalog build").source;
        let seed = target.seed_source().expect("seed kernel").to_string();
        let outcomes = ev.evaluate_batch(&target, &[catalog, seed]);
        for (what, outcome) in ["catalog", "seed"].iter().zip(&outcomes) {
            let (stage, reason) = verdict(outcome);
            if stage != "pass" {
                failures.push(format!("{} {what}: {stage}: {reason}", target.name));
                continue;
            }
            if let EvalOutcome::Scored(r) = outcome {
                let shapes: Vec<String> = r
                    .per_shape
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {:.2}µs ×{:.3}",
                            s.shape.name,
                            s.median_us.unwrap_or(f64::NAN),
                            s.speedup.unwrap_or(f64::NAN)
                        )
                    })
                    .collect();
                eprintln!(
                    "{:<20} {what:<8} reward {:.3}  {}",
                    target.name,
                    r.reward,
                    shapes.join("  ")
                );
                if *what == "catalog" {
                    // The catalog kernel timed against itself: the same kernel twice.
                    for s in &r.per_shape {
                        let ratio = s.speedup.unwrap_or(0.0);
                        worst_ratio = if (ratio - 1.0).abs() > (worst_ratio - 1.0).abs() {
                            ratio
                        } else {
                            worst_ratio
                        };
                    }
                }
            }
        }
    }
    eprintln!("same kernel timed twice: worst per-shape ratio {worst_ratio:.4}");
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    assert!(
        (0.9..1.1).contains(&worst_ratio),
        "the same kernel timed twice differs by {worst_ratio}"
    );
}
