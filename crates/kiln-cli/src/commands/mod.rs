//! One module per subcommand; each turns parsed flags into library calls.

mod doctor;

use std::process::ExitCode;

use anyhow::bail;

use crate::cli::{Cli, Command, DiscoverCommand, KernelsCommand, ModelsCommand};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Doctor(args) => doctor::run(&args),
        Command::Discover(cmd) => not_yet(match cmd {
            DiscoverCommand::List => "discover list",
            DiscoverCommand::Eval { .. } => "discover eval",
            DiscoverCommand::Search { .. } => "discover search",
            DiscoverCommand::Autorun => "discover autorun",
            DiscoverCommand::Compare { .. } => "discover compare",
            DiscoverCommand::Report { .. } => "discover report",
            DiscoverCommand::Export { .. } => "discover export",
        }),
        Command::Kernels(cmd) => not_yet(match cmd {
            KernelsCommand::List => "kernels list",
            KernelsCommand::Bench => "kernels bench",
        }),
        Command::Models(ModelsCommand::Synth { .. }) => not_yet("models synth"),
        Command::Validate(_) => not_yet("validate"),
    }
}

/// A subcommand whose implementation has not landed: say so and fail.
fn not_yet(what: &str) -> anyhow::Result<ExitCode> {
    bail!("`kiln {what}` is not implemented yet in this build; nothing was run")
}
