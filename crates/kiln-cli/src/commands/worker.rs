//! `kiln __worker`: the GPU worker process the evaluator spawns, and
//! `kiln __compile`: the bounded NVRTC child it starts for every candidate.

use std::io::{BufReader, Read};
use std::process::ExitCode;

use anyhow::Context;
use kiln_eval::compile_sandbox::serve_compile;
use kiln_eval::worker::serve::channel_from_env;
use kiln_eval::worker::{serve, Exit};

/// Serves evaluation requests on the protocol fds the parent passed until
/// told to stop. stdout and stderr are only captured by the parent: whatever
/// a kernel prints there can never reach the protocol.
pub fn run(device: usize) -> anyhow::Result<ExitCode> {
    let (requests, mut responses) = channel_from_env()?;
    let mut input = BufReader::new(requests);
    match serve(device, &mut input, &mut responses)? {
        Exit::Clean => Ok(ExitCode::SUCCESS),
        // The parent sees the exit and starts a fresh worker.
        Exit::ContextLost => Ok(ExitCode::from(3)),
    }
}

/// Compiles the one job on stdin and writes the answer on stdout. The parent
/// set this process's memory and CPU limits and kills it after its wall-clock
/// limit.
pub fn compile() -> anyhow::Result<ExitCode> {
    let mut job = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut job)
        .context("cannot read the compile job from stdin")?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    serve_compile(job.as_slice(), &mut out)?;
    Ok(ExitCode::SUCCESS)
}
