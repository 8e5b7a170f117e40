//! `kiln discover check TARGET FILE`: every check the judge runs before the
//! GPU (static checks, the launch line, NVRTC in a bounded child process, the
//! compiled-PTX checks), with no GPU.
//!
//! Output contract (scripts depend on it):
//! * passed: `ok: <target>: static checks, bounded compile and PTX checks passed`, exit 0;
//! * rejected: `rejected at <stage>: <first line of the reason>`, then the
//!   whole reason indented by four spaces, exit 1 (`<stage>` is the record's
//!   snake_case stage name: `static_check`, `parse`, `compile`, `ptx_check`);
//! * usage or setup errors (unknown target, unreadable file, NVRTC missing):
//!   `error: …` on stderr, exit 2.
//!
//! `--json` prints one object instead (`{"ok":true,…}` or
//! `{"ok":false,"stage":…,"reason":…}`) with the same exit codes.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use kiln_eval::compile_sandbox::{parse_arch, CompileSandbox};
use kiln_eval::evaluator::check_offline;
use kiln_eval::record::Stage;
use serde_json::json;

use crate::cli::CheckArgs;

/// Exit status of a rejected candidate.
const REJECTED: u8 = 1;
/// Exit status of a usage or setup error.
const USAGE: u8 = 2;

/// Runs the checks; usage and setup errors are printed here and exit 2.
pub fn run(args: &CheckArgs) -> ExitCode {
    match check(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", crate::user_message(&err));
            ExitCode::from(USAGE)
        }
    }
}

fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
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
    let Some(arch) = parse_arch(&args.arch) else {
        bail!(
            "--arch {:?} is not an architecture; write it like sm_90a, sm_90 or sm_100a",
            args.arch
        );
    };
    if args.compile_timeout_s == 0 || args.compile_memory_gib == 0 {
        bail!("--compile-timeout-s and --compile-memory-gib must be at least 1");
    }
    let sandbox = CompileSandbox::new(super::compile_command()?)
        .with_wall(Duration::from_secs(args.compile_timeout_s))
        .with_memory_bytes(args.compile_memory_gib.saturating_mul(1 << 30));
    match check_offline(&target, &source, &sandbox, arch) {
        Ok(report) => {
            if args.json {
                let globals: Vec<_> = report
                    .facts
                    .globals
                    .iter()
                    .map(|g| json!({"name": g.name, "bytes": g.bytes}))
                    .collect();
                println!(
                    "{}",
                    json!({
                        "ok": true,
                        "target": target.name,
                        "arch": arch.sm_name(),
                        "launch": report.launch,
                        "compile_ms": report.compiled.elapsed.as_secs_f64() * 1e3,
                        "cubin_bytes": report.compiled.image.len(),
                        "ptx_bytes": report.compiled.ptx.len(),
                        "globals": globals,
                        "compile_log": report.compiled.log,
                    })
                );
            } else {
                println!(
                    "ok: {}: static checks, bounded compile and PTX checks passed",
                    target.name
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        // Not the candidate's verdict: the checks could not run.
        Err((Stage::Machinery, reason)) => Err(anyhow::anyhow!(
            "the checks could not run: {reason}\n(is NVRTC installed? `kiln doctor` says what is missing; scripts/setup.sh installs it)"
        )),
        Err((stage, reason)) => {
            let name = stage_name(stage);
            if args.json {
                println!(
                    "{}",
                    json!({
                        "ok": false,
                        "target": target.name,
                        "stage": name,
                        "reason": reason,
                    })
                );
            } else {
                let first = reason.lines().next().unwrap_or("").trim();
                println!("rejected at {name}: {first}");
                for line in reason.lines() {
                    println!("    {line}");
                }
            }
            Ok(ExitCode::from(REJECTED))
        }
    }
}

/// The stage's serde name (`static_check`, `ptx_check`, …), as records store it.
fn stage_name(stage: Stage) -> String {
    match serde_json::to_value(stage) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{stage:?}"),
    }
}
