//! `kiln discover search` and `kiln discover autorun`: run PUCT searches with
//! progress bars; autorun goes on past a failing target and writes a summary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
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
fn evaluator(flags: &SearchFlags, device: usize) -> anyhow::Result<Box<dyn CandidateEvaluator>> {
    match flags.evaluator.as_str() {
        "gpu" => Ok(Box::new(GpuEvaluator::new(
            super::worker_command(device)?,
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
    search: SearchConfig,
    path: &Path,
    flags: &SearchFlags,
    evaluator: &mut dyn CandidateEvaluator,
    bars: Option<&MultiProgress>,
) -> anyhow::Result<SearchSummary> {
    let proposer = backend_from_name(
        backend,
        &BackendOptions {
            model: flags.model.clone(),
            seed: flags.seed,
            ..BackendOptions::default()
        },
    )?;
    let mut progress = Progress::new(
        &target.name,
        u64::from(search.steps * search.candidates_per_step) + 1,
    );
    if let Some(m) = bars {
        progress.bar = m.add(progress.bar.clone());
    }
    let summary = run_search(
        target,
        proposer.as_ref(),
        evaluator,
        path,
        search,
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
    let mut ev = evaluator(&args.flags, args.flags.device)?;
    let started = Instant::now();
    let summary = search_one(
        &target,
        &args.backend,
        config(args.steps, args.candidates_per_step, &args.flags),
        &path,
        &args.flags,
        ev.as_mut(),
        None,
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
    let mut chosen: Vec<Target> = if args.targets.is_empty() {
        targets::all()
    } else {
        args.targets
            .iter()
            .map(|n| find_target(n))
            .collect::<anyhow::Result<_>>()?
    };
    if args.cheap_first {
        cheap_first(&mut chosen);
    }
    std::fs::create_dir_all(&args.session_dir)
        .with_context(|| format!("cannot create {}", args.session_dir.display()))?;
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
    let rows: Vec<serde_json::Value> = match &args.devices {
        None => {
            let mut ev = evaluator(&args.flags, args.flags.device)?;
            let mut rows = Vec::new();
            for (backend, target) in mine {
                rows.push(run_session(args, backend, target, ev.as_mut(), None)?);
            }
            rows
        }
        Some(devices) => run_on_devices(args, &devices_of(devices)?, mine)?,
    };
    let failures = rows.iter().filter(|r| r["status"] == "failed").count();
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

/// Orders targets by the bytes of static inputs (weights, KV caches) a
/// candidate's verification draws, smallest first; ties keep their order.
fn cheap_first(chosen: &mut [Target]) {
    chosen.sort_by_key(|t| t.problem.static_input_bytes());
}

/// One autorun session: skipped when finished (unless `--rerun-finished`), otherwise
/// searched; returns its summary row. A failing search is a `failed` row,
/// never an error, so one target never stops the others.
fn run_session(
    args: &AutorunArgs,
    backend: &str,
    target: &Target,
    ev: &mut dyn CandidateEvaluator,
    device: Option<(usize, &MultiProgress)>,
) -> anyhow::Result<serde_json::Value> {
    let path = session_path(&args.session_dir, &target.name, backend);
    let started = Instant::now();
    let on = device.map_or(String::new(), |(d, _)| format!(" on GPU {d}"));
    let say = |line: String| match device {
        Some((_, m)) => {
            let _ = m.println(line);
        }
        None => println!("{line}"),
    };
    if let Some(done) = finished(&path) {
        if !args.rerun_finished {
            say(format!(
                "{}: finished session with {done} candidates; skipped (--rerun-finished reruns it)",
                target.name
            ));
            return Ok(
                json!({"target": target.name, "backend": backend, "status": "skipped (finished)", "session": path}),
            );
        }
        let aside = path.with_extension(format!("json.replaced-{}", std::process::id()));
        std::fs::rename(&path, &aside)
            .with_context(|| format!("cannot move {} aside", path.display()))?;
    }
    let device_no = device.map(|(d, _)| d);
    Ok(
        match search_one(
            target,
            backend,
            config(args.steps, args.candidates_per_step, &args.flags),
            &path,
            &args.flags,
            ev,
            device.map(|(_, m)| m),
        ) {
            Ok(s) => {
                say(format!(
                    "{}{on}",
                    describe(&target.name, &s, started.elapsed().as_secs_f64())
                ));
                json!({
                    "target": target.name, "backend": backend, "status": "ok", "device": device_no,
                    "candidates": s.evaluated, "best_reward": s.best.map(|b| b.1),
                    "seconds": started.elapsed().as_secs_f64(), "session": path,
                })
            }
            Err(e) => {
                eprintln!("{}{on}: FAILED: {}", target.name, crate::user_message(&e));
                json!({"target": target.name, "backend": backend, "status": "failed", "device": device_no, "error": crate::user_message(&e), "session": path})
            }
        },
    )
}

/// The GPU ordinals of `--devices` (`0,1,…` or `all`).
fn devices_of(spec: &str) -> anyhow::Result<Vec<usize>> {
    if spec == "all" {
        let n = kiln_cuda::device_count()
            .context("--devices all: counting the GPUs (name them, e.g. --devices 0,1)")?;
        return Ok((0..n).collect());
    }
    let mut out: Vec<usize> = Vec::new();
    for part in spec.split(',') {
        let d: usize = part.trim().parse().with_context(|| {
            format!("--devices `{spec}`: expected GPU ordinals like 0,1 or `all`")
        })?;
        if out.contains(&d) {
            bail!("--devices `{spec}`: GPU {d} is named twice");
        }
        out.push(d);
    }
    Ok(out)
}

/// The sessions over one worker per device: each device's thread takes the
/// next session from a shared queue and runs it whole (its baseline and its
/// candidates on that device). A device whose evaluator does not start, or
/// whose searches fail, takes no other device down; sessions left when every
/// device has stopped are reported as failed rows.
fn run_on_devices(
    args: &AutorunArgs,
    devices: &[usize],
    sessions: Vec<(&String, &Target)>,
) -> anyhow::Result<Vec<serde_json::Value>> {
    // Each session keeps its place in the list, so the rows come back in order.
    let queue = std::sync::Mutex::new(
        sessions
            .into_iter()
            .enumerate()
            .collect::<std::collections::VecDeque<_>>(),
    );
    let rows = std::sync::Mutex::new(Vec::<(usize, serde_json::Value)>::new());
    let bars = MultiProgress::new();
    std::thread::scope(|scope| {
        for &d in devices {
            let (queue, rows, bars) = (&queue, &rows, &bars);
            scope.spawn(move || {
                let mut ev = match evaluator(&args.flags, d) {
                    Ok(ev) => ev,
                    Err(e) => {
                        eprintln!("GPU {d}: its evaluator did not start, the other devices go on: {}", crate::user_message(&e));
                        return;
                    }
                };
                loop {
                    let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
                    let Some((place, (backend, target))) = next else {
                        break;
                    };
                    let row = run_session(args, backend, target, ev.as_mut(), Some((d, bars)))
                        .unwrap_or_else(|e| {
                            json!({"target": target.name, "backend": backend, "status": "failed", "device": d, "error": crate::user_message(&e)})
                        });
                    if let Ok(mut r) = rows.lock() {
                        r.push((place, row));
                    }
                }
            });
        }
    });
    let mut rows = rows
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a device thread panicked"))?;
    // Sessions no device could take (every evaluator failed to start).
    if let Ok(left) = queue.into_inner() {
        for (place, (backend, target)) in left {
            rows.push((
                place,
                json!({"target": target.name, "backend": backend, "status": "failed", "error": "no device could run it (see above)"}),
            ));
        }
    }
    rows.sort_by_key(|(k, _)| *k);
    Ok(rows.into_iter().map(|(_, r)| r).collect())
}

/// Candidates of a finished session at `path`, if it is one.
fn finished(path: &Path) -> Option<u64> {
    let s = kiln_search::session::load(path).ok()?;
    s.finished.then_some(s.meta.counters.candidates_evaluated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_first_puts_the_expert_targets_last_and_keeps_the_rest_in_order() {
        let all = targets::all();
        let mut ordered = all.clone();
        cheap_first(&mut ordered);
        let names: Vec<&str> = ordered.iter().map(|t| t.name.as_str()).collect();
        let experts = names.iter().filter(|n| n.contains("moe_expert")).count();
        assert_eq!(experts, 6);
        assert!(
            names[names.len() - experts..]
                .iter()
                .all(|n| n.contains("moe_expert")),
            "{names:?}"
        );
        // A stable sort: targets with the same weights keep the list's order.
        let norms: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| n.ends_with("_rmsnorm") && !n.contains("add"))
            .collect();
        let listed: Vec<&str> = all
            .iter()
            .map(|t| t.name.as_str())
            .filter(|n| n.ends_with("_rmsnorm") && !n.contains("add"))
            .collect();
        assert_eq!(norms, listed);
    }
}
