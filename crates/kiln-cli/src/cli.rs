//! The command line: every subcommand and flag, with defaults shown in `--help`.

use clap::{Args, Parser, Subcommand};

/// kiln: LLM-guided search for fast CUDA kernels for MoE inference.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug); KILN_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// The top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the GPU, driver, NVRTC and headers; measure bandwidth and launch floor.
    Doctor(DoctorArgs),
    /// Search for faster kernels (list, eval, search, autorun, compare, report, export).
    #[command(subcommand)]
    Discover(DiscoverCommand),
    /// The kernel catalog (list, bench).
    #[command(subcommand)]
    Kernels(KernelsCommand),
    /// Model checkpoints (synth).
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Prove kernels on a real MoE model: tokens/s and token identity.
    Validate(ValidateArgs),
}

/// `kiln doctor` flags.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `kiln discover …`
#[derive(Debug, Subcommand)]
pub enum DiscoverCommand {
    /// List the search targets.
    List,
    /// Evaluate one kernel file against a target and print the whole record.
    Eval {
        /// Target name (see `kiln discover list`).
        target: String,
        /// The candidate CUDA source.
        file: std::path::PathBuf,
    },
    /// Run a PUCT search on one target.
    Search {
        /// Target name.
        target: String,
    },
    /// Search every target with every backend.
    Autorun,
    /// Compare sessions in a folder.
    Compare {
        /// Folder of sessions.
        dir: std::path::PathBuf,
    },
    /// Render a session as markdown with plots.
    Report {
        /// Session file.
        session: std::path::PathBuf,
    },
    /// Export a session's winner as a kernel pack entry.
    Export {
        /// Session file.
        session: std::path::PathBuf,
    },
}

/// `kiln kernels …`
#[derive(Debug, Subcommand)]
pub enum KernelsCommand {
    /// List the catalog's ops.
    List,
    /// Time every op at the models' shapes.
    Bench,
}

/// `kiln models …`
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Write a checkpoint with seeded random weights.
    Synth {
        /// Preset (qwen3-30b-a3b, glm-4.7-flash, lfm2-8b-a1b).
        preset: String,
    },
}

/// `kiln validate` flags.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Model checkpoint directory or preset.
    pub model: String,
}
