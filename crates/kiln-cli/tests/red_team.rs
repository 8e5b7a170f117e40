//! The red team: hostile and broken kernels the evaluator must reject, each
//! for the right reason, and honest kernels it must pass; run through the real
//! evaluator (static checks, NVRTC, the PTX checks, the isolated GPU worker).
//!
//! Each file in `tests/red_team/` states what must happen in its header:
//! `// expect: <stage>` (`pass`, or a stage's JSON name such as `static_check`,
//! `ptx_check`, `verify`, `crash`, `timeout`), optionally
//! `// expect-reason: a|b` (the failure reason must contain one of the
//! `|`-separated texts) and `// target: <name>` (default: `qwen3_rmsnorm`).
//! The expected stage is the FIRST wall that must stop the trick. Add a file
//! for every new trick.
//!
//! Two tests read the folder:
//! - `cpu_walls_…` (runs everywhere, no GPU): `kiln discover check` on every
//!   file. A file expecting a CPU stage (`parse`, `static_check`, `compile`,
//!   `ptx_check`) must be rejected there; every other file (honest kernels and
//!   tricks meant for a GPU wall) must pass the CPU walls, which proves that the
//!   GPU wall is what stops it.
//! - `red_team_is_rejected_…` (GPU, ignored in the ordinary run, executed by
//!   scripts/gpu-suite.sh): the whole evaluator on every file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_eval::evaluator::{CandidateEvaluator, EvaluatorConfig, GpuEvaluator};
use kiln_eval::record::{EvalOutcome, EvalStatus};
use kiln_eval::worker_client::WorkerCommand;

/// The red team's default target: Qwen3's hidden RMSNorm (D=2048, bf16).
const DEFAULT_TARGET: &str = "qwen3_rmsnorm";
/// Hangs are killed after this long.
const TIMEOUT: Duration = Duration::from_secs(20);
/// `--compile-timeout-s` for `kiln discover check`: compile bombs must stop within it.
const COMPILE_TIMEOUT_S: u64 = 20;
/// Stages `kiln discover check` runs (on the CPU, before any GPU).
const CPU_STAGES: [&str; 4] = ["parse", "static_check", "compile", "ptx_check"];
/// Every stage a red-team file may expect.
const STAGES: [&str; 12] = [
    "pass",
    "parse",
    "static_check",
    "compile",
    "ptx_check",
    "load",
    "launch",
    "verify",
    "timing",
    "plausibility",
    "timeout",
    "crash",
];

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
    path: PathBuf,
    source: String,
    target: String,
    expect: String,
    reasons: Vec<String>,
}

impl Case {
    fn reason_ok(&self, reason: &str) -> bool {
        self.reasons.is_empty() || self.reasons.iter().any(|r| reason.contains(r.as_str()))
    }
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
            assert!(
                STAGES.contains(&expect.as_str()),
                "{}: unknown expected stage `{expect}` (one of {STAGES:?})",
                p.display()
            );
            let reasons = header("// expect-reason:")
                .map(|r| {
                    r.split('|')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            let target = header("// target:")
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| DEFAULT_TARGET.to_string());
            Case {
                name: p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                path: p,
                source,
                target,
                expect,
                reasons,
            }
        })
        .collect()
}

#[test]
fn red_team_headers_are_well_formed() {
    let cases = cases();
    assert!(cases.len() >= 40, "red team has {} files", cases.len());
    let hostile = cases.iter().filter(|c| c.expect != "pass").count();
    assert!(hostile >= 40, "red team has {hostile} hostile files");
    for c in &cases {
        assert!(
            kiln_eval::targets::find(&c.target).is_some(),
            "{}: unknown target `{}`",
            c.name,
            c.target
        );
    }
    for target in ["qwen3_rmsnorm", "qwen3_topk_gating"] {
        assert!(
            cases
                .iter()
                .any(|c| c.expect == "pass" && c.target == target),
            "no honest control on {target}"
        );
    }
}

// ---------------------------------------------------------------- CPU walls

/// What `kiln discover check` said about one file.
struct CheckVerdict {
    /// `pass`, a stage name, or `error` (exit 2, a crash, an unreadable answer).
    stage: String,
    /// The first line of stdout, or the error.
    line: String,
    /// All of stdout and stderr.
    output: String,
    elapsed: Duration,
}

/// Runs `kiln discover check <target> <file> --compile-timeout-s N`, killing it
/// if it outlives any reasonable bound.
fn discover_check(case: &Case) -> CheckVerdict {
    let started = Instant::now();
    let mut child = match Command::new(kiln_bin())
        .args(["discover", "check", &case.target])
        .arg(&case.path)
        .args(["--compile-timeout-s", &COMPILE_TIMEOUT_S.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return CheckVerdict {
                stage: "error".into(),
                line: format!("cannot start kiln: {e}"),
                output: String::new(),
                elapsed: started.elapsed(),
            }
        }
    };
    // Read the pipes on their own threads so a chatty child cannot block.
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out_pipe, &mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err_pipe, &mut s);
        s
    });
    let deadline = Duration::from_secs(COMPILE_TIMEOUT_S * 4 + 60);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break None,
        }
    };
    let elapsed = started.elapsed();
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let output = format!(
        "{stdout}{}{stderr}",
        if stderr.is_empty() {
            ""
        } else {
            "\n[stderr]\n"
        }
    );
    let first = stdout.lines().next().unwrap_or("").trim().to_string();
    let Some(status) = status else {
        return CheckVerdict {
            stage: "error".into(),
            line: format!("`kiln discover check` did not finish within {deadline:?}"),
            output,
            elapsed,
        };
    };
    let stage = match status.code() {
        Some(0) if stdout.lines().any(|l| l.trim_start().starts_with("ok:")) => "pass".to_string(),
        Some(1) => match first
            .strip_prefix("rejected at ")
            .and_then(|rest| rest.split_once(':'))
        {
            Some((stage, _)) => stage.trim().to_string(),
            None => "error".to_string(),
        },
        _ => "error".to_string(),
    };
    let line = if stage == "error" {
        format!(
            "exit {:?}: {}",
            status.code(),
            output.lines().take(6).collect::<Vec<_>>().join(" / ")
        )
    } else {
        first
    };
    CheckVerdict {
        stage,
        line,
        output,
        elapsed,
    }
}

#[test]
fn cpu_walls_reject_what_they_must_and_pass_the_rest() {
    let cases = cases();
    assert!(cases.len() >= 40, "red team has {} files", cases.len());
    let next = AtomicUsize::new(0);
    let verdicts: Mutex<Vec<Option<CheckVerdict>>> =
        Mutex::new((0..cases.len()).map(|_| None).collect());
    // Two at a time: compile bombs each hold a core until their timeout.
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(case) = cases.get(i) else { break };
                let v = discover_check(case);
                verdicts.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(v);
            });
        }
    });
    let verdicts = verdicts.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut mismatches = Vec::new();
    eprintln!(
        "{:<40} {:<18} {:<12} {:<13} {:>7}  first line",
        "file", "target", "expected", "cpu wants/got", "secs"
    );
    for (case, v) in cases.iter().zip(verdicts) {
        let v = v.expect("every case ran");
        let cpu_stage = CPU_STAGES.contains(&case.expect.as_str());
        // What the CPU walls must say: the stage for a CPU-stage file, "pass" otherwise.
        let want = if cpu_stage {
            case.expect.as_str()
        } else {
            "pass"
        };
        let mut problems = Vec::new();
        if v.stage == "error" {
            problems.push(format!("`kiln discover check` failed: {}", v.line));
            if !v.output.is_empty() {
                eprintln!("--- output of {}:\n{}", case.name, v.output);
            }
        } else if v.stage != want {
            problems.push(format!("wanted {want}, got {}: {}", v.stage, v.line));
        } else if cpu_stage && !case.reason_ok(&v.output) {
            problems.push(format!(
                "rejected at {} but the reason has none of {:?}: {}",
                v.stage, case.reasons, v.line
            ));
        }
        // A compile bomb must be stopped by the compile time limit, not run on.
        let bound = Duration::from_secs(COMPILE_TIMEOUT_S + 25);
        if v.elapsed > bound {
            problems.push(format!(
                "took {:.1} s, more than the compile timeout allows ({bound:?})",
                v.elapsed.as_secs_f64()
            ));
        }
        eprintln!(
            "{:<40} {:<18} {:<12} {:<13} {:>7.2}  {}{}",
            case.name,
            case.target,
            case.expect,
            format!("{want}/{}", v.stage),
            v.elapsed.as_secs_f64(),
            v.line.chars().take(120).collect::<String>(),
            if problems.is_empty() {
                ""
            } else {
                "   <-- MISMATCH"
            }
        );
        for p in problems {
            mismatches.push(format!(
                "{} ({}, expect {}): {p}",
                case.name, case.target, case.expect
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} red-team files got the wrong CPU verdict:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

// ---------------------------------------------------------------- GPU: the whole evaluator

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
    let mut ev = evaluator();
    let device = ev.device().unwrap_or_else(|e| panic!("worker: {e}"));
    eprintln!("device: {device:?}");
    let cases = cases();
    assert!(cases.len() >= 40, "red team has {} files", cases.len());
    let default_target = kiln_eval::targets::find(DEFAULT_TARGET).expect("target exists");
    let honest = cases
        .iter()
        .find(|c| c.expect == "pass" && c.target == DEFAULT_TARGET)
        .map(|c| c.source.clone())
        .expect("an honest kernel for the default target in the red team");
    let mut failures = Vec::new();
    // KILN_RED_TEAM_GPU_STAGES_ONLY=1 (a short device call) skips the files the
    // CPU walls must stop; the CPU test covers those with the same code.
    let gpu_only = std::env::var_os("KILN_RED_TEAM_GPU_STAGES_ONLY").is_some_and(|v| v == "1");
    let mut skipped = 0;
    for case in &cases {
        if gpu_only && CPU_STAGES.contains(&case.expect.as_str()) {
            skipped += 1;
            continue;
        }
        let target = kiln_eval::targets::find(&case.target)
            .unwrap_or_else(|| panic!("{}: unknown target {}", case.name, case.target));
        let started = Instant::now();
        let outcome = ev
            .evaluate_batch(&target, std::slice::from_ref(&case.source))
            .remove(0);
        let (stage, reason) = verdict(&outcome);
        let first_line = reason.lines().next().unwrap_or("");
        eprintln!(
            "{:<40} {:<18} expected {:<12} got {:<12} {:>6.2} s  {}",
            case.name,
            case.target,
            case.expect,
            stage,
            started.elapsed().as_secs_f64(),
            first_line.chars().take(140).collect::<String>()
        );
        if stage != case.expect || !case.reason_ok(&reason) {
            failures.push(format!(
                "{} ({}): expected {} ({:?}), got {stage}: {reason}",
                case.name, case.target, case.expect, case.reasons
            ));
        }
        // After a hang or a dead context the very next candidate must be
        // evaluated normally, in a fresh worker.
        if case.expect == "timeout" || case.expect == "crash" {
            let before = ev.workers_started();
            let next = ev
                .evaluate_batch(&default_target, std::slice::from_ref(&honest))
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
    if skipped > 0 {
        eprintln!(
            "NOTE: {skipped} red-team files that the CPU walls must stop were NOT run through the GPU evaluator (KILN_RED_TEAM_GPU_STAGES_ONLY=1)"
        );
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
    // KILN_TARGETS (comma separated) narrows the run, said loudly: the expert
    // targets alone take minutes (their inputs are hundreds of MB per trial).
    let only: Option<Vec<String>> = std::env::var("KILN_TARGETS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let all = kiln_eval::targets::all();
    let chosen: Vec<_> = all
        .iter()
        .filter(|t| only.as_ref().is_none_or(|o| o.contains(&t.name)))
        .cloned()
        .collect();
    assert!(!chosen.is_empty(), "KILN_TARGETS names no target");
    if chosen.len() < all.len() {
        eprintln!(
            "NOTE: KILN_TARGETS: {} of {} targets run; NOT RUN: {}",
            chosen.len(),
            all.len(),
            all.iter()
                .filter(|t| !chosen.iter().any(|c| c.name == t.name))
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for target in chosen {
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
