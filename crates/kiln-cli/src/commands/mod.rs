//! One module per subcommand; each turns parsed flags into library calls.

mod discover_check;
mod discover_eval;
mod discover_list;
mod discover_promote;
mod discover_report;
mod discover_search;
mod discover_slurm;
mod doctor;
mod kernels;
mod models;
mod worker;

use std::process::ExitCode;

use crate::cli::{Cli, Command, DiscoverCommand, KernelsCommand};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Doctor(args) => doctor::run(&args),
        Command::Worker { device } => worker::run(device),
        Command::Compile => worker::compile(),
        Command::Discover(cmd) => match cmd {
            DiscoverCommand::List => discover_list::run(),
            DiscoverCommand::Eval(args) => discover_eval::run(&args),
            DiscoverCommand::Check(args) => Ok(discover_check::run(&args)),
            DiscoverCommand::Search(args) => discover_search::search(&args),
            DiscoverCommand::Autorun(args) => discover_search::autorun(&args),
            DiscoverCommand::Compare { dirs, json } => discover_report::compare(&dirs, json),
            DiscoverCommand::Report { session, top, out } => {
                discover_report::report(&session, top, out.as_deref())
            }
            DiscoverCommand::Slurm(args) => discover_slurm::run(&args),
            DiscoverCommand::Export { session, out } => discover_report::export(&session, &out),
            DiscoverCommand::Promote(args) => discover_promote::run(&args),
        },
        Command::Kernels(KernelsCommand::List) => kernels::list(),
        Command::Kernels(KernelsCommand::Bench(args)) => kernels::bench(&args),
        Command::Models(cmd) => models::models(cmd),
        Command::Validate(args) => models::validate(&args),
    }
}

/// The command that starts this binary as a GPU worker.
pub fn worker_command(device: usize) -> anyhow::Result<kiln_eval::worker_client::WorkerCommand> {
    let exe = std::env::current_exe().map_err(|e| {
        anyhow::anyhow!("cannot find the kiln executable to start a GPU worker: {e}")
    })?;
    Ok(kiln_eval::worker_client::WorkerCommand::new(
        exe,
        [
            "__worker".to_string(),
            "--device".to_string(),
            device.to_string(),
        ],
    ))
}

/// The command that starts this binary as a bounded NVRTC child.
pub fn compile_command() -> anyhow::Result<kiln_eval::worker_client::WorkerCommand> {
    let exe = std::env::current_exe().map_err(|e| {
        anyhow::anyhow!("cannot find the kiln executable to start a compile child: {e}")
    })?;
    Ok(kiln_eval::worker_client::WorkerCommand::new(
        exe,
        ["__compile"],
    ))
}
