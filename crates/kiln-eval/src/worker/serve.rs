//! The worker process's main loop: newline-delimited JSON requests on stdin,
//! responses on stdout. It owns the CUDA context; after a sticky CUDA error it
//! answers and exits, so the parent starts a fresh one.

use std::io::{BufRead, Write};

use kiln_cuda::{Compiler, Gpu, Probes};
use serde_json::json;

use crate::protocol::{read_message, write_message, Request, Response, PROTOCOL_VERSION};

use super::evaluate::{evaluate, WorkerCache};
use super::measure::Device;

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The GPU, NVRTC or the probes could not be brought up.
    #[error("worker start-up failed: {0}")]
    Startup(String),
    /// The pipe to the parent broke.
    #[error("worker protocol: {0}")]
    Protocol(#[from] crate::protocol::ProtocolError),
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
    let floor = probes
        .launch_floor(&gpu)
        .map_err(|e| ServeError::Startup(e.to_string()))?;
    Ok(Device {
        gpu,
        compiler,
        peak_bytes_per_s: bw.peak_bytes_per_s(),
        launch_floor_us: floor.graph_us,
    })
}

/// The device facts sent with `Ready`.
pub fn describe(dev: &Device) -> serde_json::Value {
    json!({
        "facts": dev.gpu.facts(),
        "nvrtc_version": dev.compiler.version(),
        "peak_bytes_per_s": dev.peak_bytes_per_s,
        "launch_floor_us": dev.launch_floor_us,
    })
}

/// Serves requests until `Shutdown`, end of input, or a lost context.
pub fn serve<R: BufRead, W: Write>(
    ordinal: usize,
    input: &mut R,
    output: &mut W,
) -> Result<Exit, ServeError> {
    let mut device: Option<Device> = None;
    let mut cache = WorkerCache::default();
    loop {
        let request: Request = match read_message(input) {
            Ok(r) => r,
            Err(crate::protocol::ProtocolError::Eof) => return Ok(Exit::Clean),
            Err(e) => return Err(e.into()),
        };
        match request {
            Request::Hello { id, .. } => {
                if device.is_none() {
                    match start_device(ordinal) {
                        Ok(d) => device = Some(d),
                        Err(e) => {
                            write_message(
                                output,
                                &Response::Error {
                                    id: Some(id),
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
                            message: "evaluate before hello".into(),
                        },
                    )?;
                    continue;
                };
                let (outcome, context_lost) = evaluate(dev, &mut cache, &job);
                write_message(output, &Response::Result { id, outcome })?;
                if context_lost {
                    return Ok(Exit::ContextLost);
                }
            }
            Request::Shutdown { .. } => return Ok(Exit::Clean),
        }
    }
}
