//! `kiln __worker`: the GPU worker process the evaluator spawns.

use std::process::ExitCode;

use kiln_eval::worker::{serve, Exit};

/// Serves evaluation requests on stdin/stdout until told to stop.
pub fn run(device: usize) -> anyhow::Result<ExitCode> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut input = stdin.lock();
    let mut output = stdout.lock();
    match serve(device, &mut input, &mut output)? {
        Exit::Clean => Ok(ExitCode::SUCCESS),
        // The parent sees the exit and starts a fresh worker.
        Exit::ContextLost => Ok(ExitCode::from(3)),
    }
}
