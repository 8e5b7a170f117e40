//! `kiln discover promote`: each USE winner of the given sessions is exported,
//! re-judged on this GPU with a fresh secret seed (the session's verdict may
//! come from another card, and its seed is written in the session), validated
//! in every kiln model that runs its build (the models build's `kiln validate
//! --synthetic … --pack …`), and admitted into the discovered set only when the
//! model gate says so (kiln_search::report::promote).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use kiln_eval::evaluator::{CandidateEvaluator, EvaluatorConfig, GpuEvaluator};
use kiln_eval::record::{EvalOutcome, EvalStatus};
use kiln_eval::targets::{self, Target};
use kiln_search::report::promote::{self, Decision, ModelTrial, Promotion};
use kiln_search::report::{compare_dirs, export_winner_from, Verdict};
use kiln_search::session::now_rfc3339;

use crate::cli::PromoteArgs;

/// Runs the gate over every USE winner of `a.dirs`.
pub fn run(a: &PromoteArgs) -> anyhow::Result<ExitCode> {
    if a.runs < 2 {
        bail!("--runs must be at least 2: a gain is judged against the run-to-run spread");
    }
    let cmp = compare_dirs(&a.dirs)?;
    let mut winners: Vec<_> = cmp
        .rows
        .iter()
        .filter(|r| r.verdict == Verdict::Use)
        .collect();
    // One kernel per target joins the set: where several backends won the
    // same target, the fastest is judged and the others are logged as such.
    winners.sort_by(|a, b| {
        a.target.cmp(&b.target).then(
            b.speedup_vs_catalog
                .unwrap_or(0.0)
                .total_cmp(&a.speedup_vs_catalog.unwrap_or(0.0)),
        )
    });
    if winners.is_empty() {
        println!(
            "no session in {} has a USE winner (≥ 1.05× the catalog); nothing to promote",
            list(&a.dirs)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let temp;
    let work = match &a.work_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().context("creating a work folder")?;
            temp.path().to_path_buf()
        }
    };
    let commit = commit();
    let mut decisions = Vec::new();
    let mut program: Option<PathBuf> = None;
    let mut judge_gpu: Option<GpuEvaluator> = None;
    let mut judged_for: Option<(&str, &Path, Option<f64>)> = None;
    for row in winners {
        let session = row.session_path.clone();
        let judged = match judged_for.filter(|(t, _, _)| *t == row.target) {
            Some((target, first, speedup)) => Judged::settled(
                Decision::Rejected,
                None,
                format!(
                    "a faster winner for {target} was judged instead ({}, {} vs {})",
                    first.display(),
                    times(speedup),
                    times(row.speedup_vs_catalog)
                ),
            ),
            None => {
                judged_for = Some((&row.target, &row.session_path, row.speedup_vs_catalog));
                judge(
                    a,
                    &work,
                    &row.target,
                    &session,
                    &mut program,
                    &mut judge_gpu,
                )?
            }
        };
        let (decision, reason) = match judged.settled {
            Some(settled) => settled,
            None => promote::decide(&judged.trials),
        };
        let entry = judged.entry;
        let p = Promotion {
            target: row.target.clone(),
            session,
            kernel_speedup: row.speedup_vs_catalog,
            trials: judged.trials,
            decision,
            reason,
            date: now_rfc3339(),
            commit: commit.clone(),
            rejudged: judged.rejudged,
        };
        if !a.dry_run {
            promote::log(&a.log, &p)?;
            if decision == Decision::Admitted {
                if let Some(entry) = &entry {
                    promote::admit(&a.discovered, entry)?;
                    promote::changelog(&a.changelog, &p)?;
                }
            }
        }
        println!("{:<24} {:<9} {}", p.target, label(decision), p.reason);
        if !p.rejudged.is_empty() && decision != Decision::Failed {
            println!("{:<34} {}", "", p.rejudged);
        }
        decisions.push(p);
    }
    let admitted = decisions
        .iter()
        .filter(|p| p.decision == Decision::Admitted)
        .count();
    let failed = decisions
        .iter()
        .filter(|p| p.decision == Decision::Failed)
        .count();
    if a.dry_run {
        println!("dry run: nothing written");
    } else {
        println!(
            "{admitted} admitted into {}; every decision logged in {}",
            a.discovered.display(),
            a.log.display()
        );
    }
    if failed > 0 {
        eprintln!("error: {failed} winner(s) could not be judged (FAILED above)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What validating one winner gave.
struct Judged {
    /// One per model that ran it.
    trials: Vec<ModelTrial>,
    /// The exported entry (None when it could not be exported).
    entry: Option<kiln_search::report::PackEntry>,
    /// The decision when it was reached before the model gate: FAILED (it
    /// could not be judged) or rejected (a faster winner for its target).
    settled: Option<(Decision, String)>,
    /// What re-judging it on this GPU said (empty when no model runs it).
    rejudged: String,
}

impl Judged {
    /// A decision reached before any model ran the winner.
    fn settled(
        decision: Decision,
        entry: Option<kiln_search::report::PackEntry>,
        why: String,
    ) -> Self {
        Self {
            trials: Vec::new(),
            entry,
            settled: Some((decision, why)),
            rejudged: String::new(),
        }
    }

    fn failed(entry: Option<kiln_search::report::PackEntry>, why: String) -> Self {
        Self::settled(Decision::Failed, entry, why)
    }
}

/// Exports the winner and validates it in every model that runs its build. A
/// winner that cannot be judged is a failure of that winner; only a missing
/// models build (or driver) stops the whole run.
fn judge(
    a: &PromoteArgs,
    work: &Path,
    target_name: &str,
    session: &Path,
    program: &mut Option<PathBuf>,
    judge_gpu: &mut Option<GpuEvaluator>,
) -> anyhow::Result<Judged> {
    let Some(target) = targets::find(target_name) else {
        return Ok(Judged::failed(
            None,
            format!("no target `{target_name}` in this kiln"),
        ));
    };
    let dir = work.join(target_name);
    let exported = match export_winner_from(session, &dir.join("winner.json")) {
        Ok(e) => e,
        Err(e) => return Ok(Judged::failed(None, format!("export: {e}"))),
    };
    let presets = target.model_presets();
    if presets.is_empty() {
        return Ok(Judged {
            trials: Vec::new(),
            entry: Some(exported.entry),
            settled: None,
            rejudged: String::new(),
        });
    }
    let rejudged = if a.no_rejudge {
        "not re-judged (--no-rejudge): the session's verdict stands alone".to_string()
    } else {
        match rejudge(a, judge_gpu, &target, &exported.entry.source)? {
            Ok(said) => said,
            Err(why) => {
                let mut j = Judged::failed(Some(exported.entry), why.clone());
                j.rejudged = why;
                return Ok(j);
            }
        }
    };
    let bin = match (program.as_ref(), &a.models_bin) {
        (Some(p), _) => p.clone(),
        (None, Some(given)) => program.insert(given.clone()).clone(),
        (None, None) => program.insert(super::models::models_program()?).clone(),
    };
    let mut trials = Vec::new();
    for preset in presets {
        match validate(a, &bin, &preset, &exported.json, &dir)? {
            Ok(trial) => trials.push(trial),
            Err(why) => return Ok(Judged::failed(Some(exported.entry), why)),
        }
    }
    Ok(Judged {
        trials,
        entry: Some(exported.entry),
        settled: None,
        rejudged,
    })
}

/// Judges `source` again on this GPU, exactly as the search did, but with a
/// fresh secret seed: a summary when it passes, or why it is not fit to
/// promote. Only a judge that cannot start (no GPU, no driver) is an error.
fn rejudge(
    a: &PromoteArgs,
    judge_gpu: &mut Option<GpuEvaluator>,
    target: &Target,
    source: &str,
) -> anyhow::Result<Result<String, String>> {
    let evaluator = match judge_gpu {
        Some(e) => e,
        None => {
            let e = GpuEvaluator::new(
                super::worker_command(a.device)?,
                EvaluatorConfig::standard(super::discover_eval::clock_seed()),
            )
            .context(
                "re-judging the winners needs the GPU worker (pass --no-rejudge to rely on the sessions' verdicts)",
            )?;
            judge_gpu.insert(e)
        }
    };
    let gpu = evaluator.device().map(|d| d.gpu_name).context(
        "re-judging the winners needs a GPU (pass --no-rejudge to rely on the sessions' verdicts)",
    )?;
    let outcome = evaluator
        .evaluate_batch(target, &[source.to_string()])
        .pop();
    Ok(match outcome {
        Some(EvalOutcome::Scored(r)) => match r.status {
            EvalStatus::Passed => {
                let speedups: Vec<f64> = r.per_shape.iter().filter_map(|s| s.speedup).collect();
                let kernel = times(kiln_eval::reward::geometric_mean(&speedups).ok());
                Ok(format!(
                    "passed again with a fresh seed on {gpu}: {kernel} the catalog"
                ))
            }
            EvalStatus::Failed { stage, reason } => Err(format!(
                "re-judged with a fresh seed on {gpu}, it fails at the {stage}: {reason}"
            )),
        },
        Some(EvalOutcome::MachineryFailure { reason }) => {
            Err(format!("could not be re-judged on {gpu}: {reason}"))
        }
        None => Err(format!("the judge on {gpu} returned no outcome")),
    })
}

/// Runs the models build's `validate --synthetic PRESET --pack PACK` and reads
/// its report: the trial, or why there is none (a failure of this winner).
fn validate(
    a: &PromoteArgs,
    bin: &Path,
    preset: &str,
    pack: &Path,
    dir: &Path,
) -> anyhow::Result<Result<ModelTrial, String>> {
    let out = dir.join(format!("validate-{preset}"));
    let status = std::process::Command::new(bin)
        .args(["validate", "--synthetic", preset, "--pack"])
        .arg(pack)
        .args(["--runs", &a.runs.to_string()])
        .args(["--max-tokens", &a.max_tokens.to_string()])
        .arg("--out")
        .arg(&out)
        .env(super::models::HANDOFF_MARK, "1")
        .status()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    // validate exits 1 when a configuration fails fidelity; its report still says which.
    let report = std::fs::read_dir(&out)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("validate_") && n.ends_with(".json"))
        });
    let Some(report) = report else {
        return Ok(Err(format!(
            "`kiln validate --synthetic {preset}` wrote no report ({status}); see its output above"
        )));
    };
    Ok(ModelTrial::from_validate_json(&report).map_err(|e| e.to_string()))
}

/// `1.12×`, or `—` when unknown.
fn times(x: Option<f64>) -> String {
    x.map_or("—".into(), |x| format!("{x:.2}×"))
}

fn label(d: Decision) -> &'static str {
    match d {
        Decision::Admitted => "ADMITTED",
        Decision::Rejected => "rejected",
        Decision::Failed => "FAILED",
    }
}

fn list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The commit of the kiln that judges (`KILN_COMMIT`, else git's HEAD, else `unknown`).
fn commit() -> String {
    if let Ok(c) = std::env::var("KILN_COMMIT") {
        return c;
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
