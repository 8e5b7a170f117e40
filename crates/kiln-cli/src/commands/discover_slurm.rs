//! `kiln discover slurm`: an sbatch script that runs `autorun` as a Slurm
//! array job, task I of N running `autorun --shard I/N` into one shared
//! session folder. A task that is started again resumes its own sessions;
//! `compare` over the folder sees them all.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;

use crate::cli::{Cli, Command, DiscoverCommand, SlurmArgs};

/// `s` quoted for a POSIX shell.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The autorun flags, checked the way `kiln discover autorun` will read them.
fn checked_autorun_args(a: &SlurmArgs) -> anyhow::Result<Vec<String>> {
    if a.autorun
        .iter()
        .any(|x| x == "--shard" || x.starts_with("--shard="))
    {
        bail!("the script sets --shard for each array task; leave it out of the autorun flags");
    }
    if a.gpus_per_task > 1
        && a.autorun
            .iter()
            .any(|x| x == "--devices" || x.starts_with("--devices="))
    {
        bail!("--gpus-per-task above 1 runs `--devices all`; leave --devices out of the autorun flags");
    }
    let argv = ["kiln", "discover", "autorun"]
        .into_iter()
        .map(String::from)
        .chain(a.autorun.iter().cloned());
    let parsed = Cli::try_parse_from(argv).context("the autorun flags after `--`")?;
    let Command::Discover(DiscoverCommand::Autorun(run)) = parsed.command else {
        bail!("the flags after `--` are not autorun flags");
    };
    if run.session_dir.is_relative() {
        bail!(
            "--session-dir {}: give an absolute folder every node sees (the tasks share it)",
            run.session_dir.display()
        );
    }
    Ok(a.autorun.clone())
}

/// The script's text.
pub fn script(a: &SlurmArgs, kiln: &str) -> anyhow::Result<String> {
    if a.tasks == 0 {
        bail!("--tasks must be at least 1");
    }
    if a.gpus_per_task == 0 {
        bail!("--gpus-per-task must be at least 1");
    }
    let args = checked_autorun_args(a)?;
    let mut s = String::from("#!/bin/bash\n");
    s +=
        "# Written by `kiln discover slurm`: kiln's autorun as an array job, one shard per task.\n";
    s += "#SBATCH --job-name=kiln-autorun\n";
    s += &format!("#SBATCH --array=0-{}\n", a.tasks - 1);
    s += &format!("#SBATCH --gres=gpu:{}\n", a.gpus_per_task);
    s += "#SBATCH --ntasks=1\n";
    s += &format!("#SBATCH --time={}\n", a.time);
    if let Some(p) = &a.partition {
        s += &format!("#SBATCH --partition={p}\n");
    }
    if let Some(acc) = &a.account {
        s += &format!("#SBATCH --account={acc}\n");
    }
    s += "#SBATCH --output=kiln-autorun-%A_%a.out\n";
    s += "set -euo pipefail\n";
    s += &format!("KILN=${{KILN:-{}}}\n", quote(kiln));
    s += "task=${SLURM_ARRAY_TASK_ID:?run this script with sbatch (or set SLURM_ARRAY_TASK_ID)}\n";
    let devices = if a.gpus_per_task > 1 {
        " --devices all"
    } else {
        ""
    };
    let quoted: Vec<String> = args.iter().map(|x| quote(x)).collect();
    s += &format!(
        "exec \"$KILN\" discover autorun {} --shard \"$task/{}\"{devices}\n",
        quoted.join(" "),
        a.tasks
    );
    Ok(s)
}

/// `kiln discover slurm`.
pub fn run(a: &SlurmArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the kiln executable")?;
    let text = script(a, &exe.display().to_string())?;
    std::fs::write(&a.out, &text).with_context(|| format!("cannot write {}", a.out.display()))?;
    println!(
        "wrote {} ({} array tasks); submit it with `sbatch {}`",
        a.out.display(),
        a.tasks,
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
