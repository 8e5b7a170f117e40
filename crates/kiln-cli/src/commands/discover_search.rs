//! `kiln discover search` and `kiln discover autorun`: run PUCT searches with
//! progress bars; autorun goes on past a failing target and writes a summary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_eval::evaluator::{CandidateEvaluator, EvaluatorConfig, GpuEvaluator};
use kiln_eval::targets::{self, Target};
use kiln_propose::{backend_from_name, BackendOptions};
use kiln_search::driver::{run_search, SearchObserver, SearchSummary};
use kiln_search::replay::ReplayEvaluator;
use kiln_search::search::{Node, NodeStatus, Widening};
use kiln_search::session::{Opened, SearchConfig, Session};
use serde_json::json;

use crate::cli::{AutorunArgs, SearchArgs, SearchFlags};

/// Shows one search as a progress bar: step, candidates, best so far.
struct Progress {
    bar: ProgressBar,
    target: String,
}

impl Progress {
    fn new(target: &str, total: u64) -> Self {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{prefix:<20} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(target.to_string());
        Self {
            bar,
            target: target.to_string(),
        }
    }
}

impl SearchObserver for Progress {
    fn opened(&mut self, session: &Session, how: &Opened) {
        let c = &session.meta.counters;
        match how {
            Opened::Resumed => self.bar.println(format!(
                "{}: resuming at step {} ({} candidates already evaluated)",
                self.target, c.steps_done, c.candidates_evaluated
            )),
            Opened::Replaced { moved_to } => self.bar.println(format!(
                "{}: the old session file was unusable and was moved to {}",
                self.target,
                moved_to.display()
            )),
            Opened::Created => {}
        }
        self.bar.set_position(c.candidates_evaluated);
    }

    fn step(&mut self, step: u32, of: u32) {
        self.bar.set_message(format!("step {step}/{of}"));
    }

    fn evaluated(&mut self, node: &Node, session: &Session) {
        self.bar.inc(1);
        let best = session
            .meta
            .best
            .as_ref()
            .map_or("–".to_string(), |b| format!("{:.3}", b.reward));
        let what = match &node.status {
            NodeStatus::Evaluated => {
                format!("node {} reward {:.3}", node.id, node.reward.unwrap_or(0.0))
            }
            NodeStatus::Failed { stage, .. } => format!("node {} failed at {stage}", node.id),
            NodeStatus::Pending => String::new(),
        };
        self.bar.set_message(format!(
            "step {}/{} best {best} | {what}",
            session.meta.counters.steps_done, session.meta.config.steps
        ));
    }

    fn note(&mut self, text: &str) {
        self.bar.println(format!("{}: {text}", self.target));
    }
}

fn session_path(dir: &Path, target: &str, backend: &str) -> PathBuf {
    dir.join(format!("{target}_{backend}")).join("session.json")
}

fn config(steps: u32, candidates_per_step: u32, flags: &SearchFlags) -> SearchConfig {
    SearchConfig {
        steps,
        candidates_per_step,
        parents_per_step: candidates_per_step.div_ceil(4).clamp(1, 4),
        c_puct: flags.c_puct,
        widening: Widening::DEFAULT,
        warmup: flags.warmup,
        iters: flags.iters,
        timeout_s: flags.timeout,
    }
}

/// The judge `--evaluator` names: the GPU worker, or a replay of recorded sessions.
fn evaluator(flags: &SearchFlags) -> anyhow::Result<Box<dyn CandidateEvaluator>> {
    match flags.evaluator.as_str() {
        "gpu" => Ok(Box::new(GpuEvaluator::new(
            super::worker_command(flags.device)?,
            EvaluatorConfig {
                secret_seed: super::discover_eval::clock_seed(),
                warmup: flags.warmup,
                iters: flags.iters,
                timeout: Duration::from_secs(flags.timeout),
            },
        )?)),
        other => match other.strip_prefix("replay:") {
            Some(dir) if !dir.is_empty() => {
                let r = ReplayEvaluator::from_dir(Path::new(dir))?;
                eprintln!(
                    "evaluator: replaying {} recorded evaluations from {dir} (no GPU)",
                    r.len()
                );
                Ok(Box::new(r))
            }
            _ => bail!("--evaluator `{other}`: use `gpu` or `replay:DIR`"),
        },
    }
}

/// One search with its progress bar.
fn search_one(
    target: &Target,
    backend: &str,
    steps: u32,
    candidates_per_step: u32,
    path: &Path,
    flags: &SearchFlags,
    evaluator: &mut dyn CandidateEvaluator,
) -> anyhow::Result<SearchSummary> {
    let proposer = backend_from_name(
        backend,
        &BackendOptions {
            model: flags.model.clone(),
            seed: flags.seed,
            ..BackendOptions::default()
        },
    )?;
    let mut progress = Progress::new(&target.name, u64::from(steps * candidates_per_step) + 1);
    let summary = run_search(
        target,
        proposer.as_ref(),
        evaluator,
        path,
        config(steps, candidates_per_step, flags),
        flags.seed,
        flags.force,
        &mut progress,
    );
    progress.bar.finish_and_clear();
    Ok(summary?)
}

fn describe(target: &str, summary: &SearchSummary, secs: f64) -> String {
    let best = summary
        .best
        .map_or("no passing kernel".to_string(), |(n, r)| {
            format!("best reward {r:.3} (node {n})")
        });
    format!(
        "{target}: {} steps, {} candidates ({} this run, {:.1}/min), {best}",
        summary.steps_done,
        summary.evaluated,
        summary.evaluated_now,
        summary.evaluated_now as f64 * 60.0 / secs.max(1e-9)
    )
}

fn find_target(name: &str) -> anyhow::Result<Target> {
    targets::find(name).with_context(|| {
        let names: Vec<String> = targets::all().into_iter().map(|t| t.name).collect();
        format!(
            "unknown target `{name}`; known targets: {}",
            names.join(", ")
        )
    })
}

/// `kiln discover search TARGET`.
pub fn search(args: &SearchArgs) -> anyhow::Result<ExitCode> {
    let target = find_target(&args.target)?;
    let path = session_path(&args.session_dir, &target.name, &args.backend);
    if path.exists() && !args.resume && !args.flags.force {
        bail!(
            "a session already exists at {}; pass --resume to continue it, or move it away to start over",
            path.display()
        );
    }
    let mut ev = evaluator(&args.flags)?;
    let started = Instant::now();
    let summary = search_one(
        &target,
        &args.backend,
        args.steps,
        args.candidates_per_step,
        &path,
        &args.flags,
        ev.as_mut(),
    )?;
    println!(
        "{}",
        describe(&target.name, &summary, started.elapsed().as_secs_f64())
    );
    println!("session: {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// `kiln discover autorun`.
pub fn autorun(args: &AutorunArgs) -> anyhow::Result<ExitCode> {
    let chosen: Vec<Target> = if args.targets.is_empty() {
        targets::all()
    } else {
        args.targets
            .iter()
            .map(|n| find_target(n))
            .collect::<anyhow::Result<_>>()?
    };
    std::fs::create_dir_all(&args.session_dir)
        .with_context(|| format!("cannot create {}", args.session_dir.display()))?;
    let mut ev = evaluator(&args.flags)?;
    let mut rows = Vec::new();
    let mut failures = 0;
    // Every (backend, target) session in a fixed order; a shard keeps every N-th.
    let all: Vec<(&String, &Target)> = args
        .backends
        .iter()
        .flat_map(|b| chosen.iter().map(move |t| (b, t)))
        .collect();
    let mine: Vec<(&String, &Target)> = match args.shard {
        Some((i, n)) => {
            let picked: Vec<_> = all
                .iter()
                .enumerate()
                .filter(|(k, _)| k % n == i)
                .map(|(_, p)| *p)
                .collect();
            println!("shard {i}/{n}: {} of {} sessions", picked.len(), all.len());
            picked
        }
        None => all,
    };
    for (backend, target) in mine {
        {
            let path = session_path(&args.session_dir, &target.name, backend);
            let started = Instant::now();
            if let Some(done) = finished(&path) {
                if !args.flags.force {
                    println!(
                        "{}: finished session with {done} candidates; skipped (--force reruns it)",
                        target.name
                    );
                    rows.push(json!({"target": target.name, "backend": backend, "status": "skipped (finished)", "session": path}));
                    continue;
                }
                let aside = path.with_extension(format!("json.replaced-{}", std::process::id()));
                std::fs::rename(&path, &aside)
                    .with_context(|| format!("cannot move {} aside", path.display()))?;
            }
            match search_one(
                target,
                backend,
                args.steps,
                args.candidates_per_step,
                &path,
                &args.flags,
                ev.as_mut(),
            ) {
                Ok(s) => {
                    println!(
                        "{}",
                        describe(&target.name, &s, started.elapsed().as_secs_f64())
                    );
                    rows.push(json!({
                        "target": target.name, "backend": backend, "status": "ok",
                        "candidates": s.evaluated, "best_reward": s.best.map(|b| b.1),
                        "seconds": started.elapsed().as_secs_f64(), "session": path,
                    }));
                }
                Err(e) => {
                    // One failing target never stops the others.
                    failures += 1;
                    eprintln!("{}: FAILED: {e:#}", target.name);
                    rows.push(json!({"target": target.name, "backend": backend, "status": "failed", "error": format!("{e:#}"), "session": path}));
                }
            }
        }
    }
    // Shards share the folder, so each keeps its own summary.
    let summary_path = args.session_dir.join(match args.shard {
        Some((i, n)) => format!("autorun_summary_shard{i}of{n}.json"),
        None => "autorun_summary.json".to_string(),
    });
    std::fs::write(&summary_path, serde_json::to_string_pretty(&rows)?)
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    match kiln_search::report::compare_dir(&args.session_dir) {
        Ok(c) => print!("{}", c.to_table()),
        Err(e) => eprintln!("could not compare the sessions: {e}"),
    }
    println!("summary: {}", summary_path.display());
    if failures > 0 {
        bail!(
            "{failures} of {} searches failed (see above and {})",
            rows.len(),
            summary_path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Candidates of a finished session at `path`, if it is one.
fn finished(path: &Path) -> Option<u64> {
    let s = kiln_search::session::load(path).ok()?;
    s.finished.then_some(s.meta.counters.candidates_evaluated)
}
