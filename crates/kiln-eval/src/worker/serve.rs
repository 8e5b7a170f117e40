//! The worker process's main loop: newline-delimited JSON requests and
//! responses on the private channel the parent passed (two inherited pipe
//! fds, named in [`REQUEST_FD_ENV`]/[`RESPONSE_FD_ENV`]), never on stdin or
//! stdout: a candidate's device printf goes to stdout, which the parent only
//! captures. Every response repeats the secret of the `Hello`. It owns the
//! CUDA context; after a sticky CUDA error it answers and exits, so the
//! parent starts a fresh one.

use std::fs::File;
use std::io::{BufRead, Write};

use kiln_cuda::{Compiler, Gpu, Probes};

use crate::protocol::{
    read_message, write_message, DeviceSummary, ProtocolError, Request, Response, Secret,
    PROTOCOL_VERSION, REQUEST_FD_ENV, RESPONSE_FD_ENV,
};

use super::evaluate::{evaluate, WorkerCache};
use super::measure::Device;

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The GPU, NVRTC or the probes could not be brought up.
    #[error("worker start-up failed: {0}")]
    Startup(String),
    /// The protocol channel is missing or unusable.
    #[error("worker channel: {0}")]
    Channel(String),
    /// The pipe to the parent broke.
    #[error("worker protocol: {0}")]
    Protocol(#[from] ProtocolError),
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The parent asked to stop, or closed the pipe.
    Clean,
    /// A candidate left the CUDA context unusable.
    ContextLost,
}

/// Opens the GPU and measures what every evaluation is judged by.
pub fn start_device(ordinal: usize) -> Result<Device, ServeError> {
    let gpu = Gpu::open(ordinal).map_err(|e| ServeError::Startup(e.to_string()))?;
    let compiler = Compiler::new().map_err(|e| ServeError::Startup(e.to_string()))?;
    let probes = Probes::load(&gpu, &compiler).map_err(|e| ServeError::Startup(e.to_string()))?;
    let bw = probes
        .bandwidth(&gpu)
        .map_err(|e| ServeError::Startup(e.to_string()))?;
    // The floor at the graph size candidates are timed in: small graphs pay
    // more per launch than the 1000-launch graphs `doctor` reports.
    let floor = probes
        .launch_floor_per_graph(&gpu, super::measure::LAUNCHES_PER_GRAPH)
        .map_err(|e| ServeError::Startup(e.to_string()))?;
    // The L2 ceiling of the plausibility check: a copy a quarter of L2 in
    // size, timed as ops are (it pays the same fixed launch cost they do).
    let l2 = probes
        .copy_ceiling(&gpu, (gpu.facts().l2_bytes / 4).max(1 << 20))
        .map_err(|e| ServeError::Startup(e.to_string()))?;
    let l2_bytes_per_s = l2.bytes_moved as f64 / (l2.best_us().max(1e-3) * 1e-6);
    Ok(Device {
        gpu,
        compiler,
        peak_bytes_per_s: bw.peak_bytes_per_s(),
        l2_bytes_per_s,
        launch_floor_us: floor.graph_us,
        probes,
    })
}

/// The device facts sent with `Ready`.
pub fn describe(dev: &Device) -> DeviceSummary {
    let facts = dev.gpu.facts();
    DeviceSummary {
        gpu_name: facts.name.clone(),
        gpu_arch: format!("sm_{}{}", facts.arch.major, facts.arch.minor),
        driver_version: facts.driver_version.clone(),
        nvrtc_version: dev.compiler.version().to_string(),
        sm_count: facts.sm_count,
        l2_mib: facts.l2_bytes >> 20,
        peak_bytes_per_s: dev.peak_bytes_per_s,
        launch_floor_us: dev.launch_floor_us,
    }
}

/// The worker's channel: the request and response fds the parent passed and
/// named in the environment. They are made close-on-exec here, so nothing the
/// worker starts inherits them.
#[cfg(unix)]
pub fn channel_from_env() -> Result<(File, File), ServeError> {
    use std::os::fd::FromRawFd;
    let fd = |var: &str| -> Result<libc::c_int, ServeError> {
        let text = std::env::var(var).map_err(|_| {
            ServeError::Channel(format!(
                "{var} is not set: `kiln __worker` is started by the evaluator, which passes its protocol pipes"
            ))
        })?;
        let fd: libc::c_int = text
            .trim()
            .parse()
            .map_err(|_| ServeError::Channel(format!("{var}={text:?} is not an fd number")))?;
        if fd <= 2 {
            return Err(ServeError::Channel(format!(
                "{var}={fd}: the protocol may not use stdin, stdout or stderr"
            )));
        }
        // SAFETY: F_GETFD/F_SETFD only read and set the flags of the fd number.
        let ok = unsafe {
            libc::fcntl(fd, libc::F_GETFD) >= 0
                && libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) >= 0
        };
        if !ok {
            return Err(ServeError::Channel(format!("{var}={fd} is not an open fd")));
        }
        Ok(fd)
    };
    let (requests, responses) = (fd(REQUEST_FD_ENV)?, fd(RESPONSE_FD_ENV)?);
    if requests == responses {
        return Err(ServeError::Channel(
            "the request and response fds must differ".into(),
        ));
    }
    // SAFETY: both fds are open (checked above), distinct, and were passed to
    // this process for exactly this use; nothing else in it owns them.
    Ok(unsafe { (File::from_raw_fd(requests), File::from_raw_fd(responses)) })
}

/// The worker's channel needs inherited fds, which only Unix offers here.
#[cfg(not(unix))]
pub fn channel_from_env() -> Result<(File, File), ServeError> {
    Err(ServeError::Channel(
        "the GPU worker needs Unix: its protocol runs over inherited pipe fds".into(),
    ))
}

/// Serves requests until `Shutdown`, end of input, or a lost context.
pub fn serve<R: BufRead, W: Write>(
    ordinal: usize,
    input: &mut R,
    output: &mut W,
) -> Result<Exit, ServeError> {
    let mut device: Option<Device> = None;
    let mut cache = WorkerCache::default();
    // Unknown until `Hello`: an answer before it carries zeros, which the
    // parent rejects.
    let mut secret = Secret::default();
    loop {
        let request: Request = match read_message(input) {
            Ok(r) => r,
            Err(ProtocolError::Eof) => return Ok(Exit::Clean),
            Err(e) => return Err(e.into()),
        };
        match request {
            Request::Hello {
                id, secret: theirs, ..
            } => {
                secret = theirs;
                if device.is_none() {
                    match start_device(ordinal) {
                        Ok(d) => device = Some(d),
                        Err(e) => {
                            write_message(
                                output,
                                &Response::Error {
                                    id: Some(id),
                                    secret,
                                    message: e.to_string(),
                                },
                            )?;
                            return Err(e);
                        }
                    }
                }
                let dev = device
                    .as_ref()
                    .ok_or_else(|| ServeError::Startup("no device".into()))?;
                write_message(
                    output,
                    &Response::Ready {
                        id,
                        secret,
                        version: PROTOCOL_VERSION,
                        device: describe(dev),
                    },
                )?;
            }
            Request::Evaluate { id, job } => {
                let Some(dev) = device.as_ref() else {
                    write_message(
                        output,
                        &Response::Error {
                            id: Some(id),
                            secret,
                            message: "evaluate before hello".into(),
                        },
                    )?;
                    continue;
                };
                let (outcome, context_lost) = evaluate(dev, &mut cache, &job);
                write_message(
                    output,
                    &Response::Result {
                        id,
                        secret,
                        outcome,
                    },
                )?;
                if context_lost {
                    return Ok(Exit::ContextLost);
                }
            }
            Request::Shutdown { .. } => return Ok(Exit::Clean),
        }
    }
}
