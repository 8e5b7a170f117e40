//! `kiln discover eval TARGET FILE`: evaluate one kernel by hand, exactly as
//! the search would, and print the whole record.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use kiln_eval::evaluator::{CandidateEvaluator, EvaluatorConfig, GpuEvaluator};
use kiln_eval::record::{EvalOutcome, EvalStatus};

use crate::cli::EvalArgs;

/// Evaluates the file; exits non-zero unless the kernel passed.
pub fn run(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let target = kiln_eval::targets::find(&args.target).with_context(|| {
        let names: Vec<String> = kiln_eval::targets::all()
            .into_iter()
            .map(|t| t.name)
            .collect();
        format!(
            "unknown target `{}`; known targets: {}",
            args.target,
            names.join(", ")
        )
    })?;
    let source = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read the kernel file {}", args.file.display()))?;
    let seed = args.seed.unwrap_or_else(clock_seed);
    let evaluator = GpuEvaluator::new(
        super::worker_command(args.device)?,
        EvaluatorConfig {
            secret_seed: seed,
            warmup: args.warmup,
            iters: args.iters,
            timeout: Duration::from_secs(args.timeout),
        },
    )?;
    let sandbox = evaluator
        .compile_sandbox()
        .clone()
        .with_wall(Duration::from_secs(args.compile_timeout_s.max(1)));
    let mut evaluator = evaluator.with_compile_sandbox(sandbox);
    let device = evaluator.device()?;
    let outcome = evaluator
        .evaluate_batch(&target, &[source])
        .pop()
        .context("the evaluator returned no outcome")?;
    let json = serde_json::to_string_pretty(&outcome)?;
    if args.json {
        println!("{json}");
    } else {
        println!(
            "target {} on {} ({}), peak {:.2} TB/s, launch floor {:.2} µs",
            target.name,
            device.gpu_name,
            device.gpu_arch,
            device.peak_bytes_per_s / 1e12,
            device.launch_floor_us
        );
        println!("{json}");
        println!("{}", outcome.feedback_for_proposer());
    }
    Ok(match outcome {
        EvalOutcome::Scored(r) if r.status == EvalStatus::Passed => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// A seed no proposer can know in advance.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 ^ (std::process::id() as u64).rotate_left(32))
        .unwrap_or(0x6b69_6c6e)
}
