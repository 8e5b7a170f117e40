//! The parent side of evaluation: static checks, parallel NVRTC compilation on
//! CPU threads (warming the on-disk cache the worker reads), then the GPU
//! worker, one candidate at a time. Nothing here launches a kernel.

use std::time::Duration;

use kiln_cuda::{Arch, CompileRequest, Compiler, CudaError};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::candidate::Candidate;
use crate::protocol::EvalJob;
use crate::record::{EvalOutcome, EvalRecord, Stage};
use crate::targets::Target;
use crate::worker_client::{PoolConfig, WorkerCommand, WorkerFailure, WorkerPool};

/// What the evaluator measured about its GPU, as the worker reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// GPU name.
    pub gpu_name: String,
    /// `sm_90` style arch.
    pub gpu_arch: String,
    /// Driver CUDA version.
    pub driver_version: String,
    /// NVRTC version.
    pub nvrtc_version: String,
    /// SM count.
    pub sm_count: u32,
    /// L2 size in MiB.
    pub l2_mib: u64,
    /// Measured peak DRAM streaming bandwidth, bytes/s.
    pub peak_bytes_per_s: f64,
    /// Graph-batched empty-kernel launch time, µs.
    pub launch_floor_us: f64,
}

impl DeviceSummary {
    /// Reads the worker's `Ready` device description.
    pub fn from_ready(v: &serde_json::Value) -> Option<Self> {
        let facts = &v["facts"];
        let arch = &facts["arch"];
        Some(Self {
            gpu_name: facts["name"].as_str()?.to_string(),
            gpu_arch: format!("sm_{}{}", arch["major"].as_u64()?, arch["minor"].as_u64()?),
            driver_version: facts["driver_version"].as_str()?.to_string(),
            nvrtc_version: v["nvrtc_version"].as_str()?.to_string(),
            sm_count: facts["sm_count"].as_u64()? as u32,
            l2_mib: facts["l2_bytes"].as_u64()? >> 20,
            peak_bytes_per_s: v["peak_bytes_per_s"].as_f64()?,
            launch_floor_us: v["launch_floor_us"].as_f64()?,
        })
    }
}

/// Anything that can judge candidates for a target: the real GPU evaluator, or
/// a GPU-free double in tests.
pub trait CandidateEvaluator {
    /// The device the candidates are measured on (starts the worker if needed).
    fn device(&mut self) -> Result<DeviceSummary, EvaluatorError>;
    /// Judges each source, calling `done(index, outcome)` as soon as each is
    /// known (so the caller can save after every evaluation); machinery
    /// failures come back as such, never scored.
    fn evaluate_each(
        &mut self,
        target: &Target,
        sources: &[String],
        done: &mut dyn FnMut(usize, EvalOutcome),
    );

    /// Judges each source and returns the outcomes in order.
    fn evaluate_batch(&mut self, target: &Target, sources: &[String]) -> Vec<EvalOutcome> {
        let mut out: Vec<Option<EvalOutcome>> = vec![None; sources.len()];
        self.evaluate_each(target, sources, &mut |i, o| out[i] = Some(o));
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| EvalOutcome::MachineryFailure {
                    reason: "the evaluator returned no outcome".into(),
                })
            })
            .collect()
    }
}

/// The evaluator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EvaluatorError {
    /// The GPU worker did not come up.
    #[error("the GPU worker did not start: {0}")]
    Worker(#[from] WorkerFailure),
    /// The worker's device description was incomplete.
    #[error("the GPU worker described its device incompletely: {0}")]
    Device(String),
    /// NVRTC is missing.
    #[error(transparent)]
    Nvrtc(#[from] CudaError),
}

/// Knobs of the real evaluator.
#[derive(Debug, Clone)]
pub struct EvaluatorConfig {
    /// Per-session secret: every trial's inputs derive from it.
    pub secret_seed: u64,
    /// Warm-up graph replays per shape.
    pub warmup: u32,
    /// Most timed repetitions per shape.
    pub iters: u32,
    /// Limit for one candidate in the worker.
    pub timeout: Duration,
}

/// The real evaluator: static checks and compilation here, the rest in the worker.
pub struct GpuEvaluator {
    pool: WorkerPool,
    compiler: Compiler,
    config: EvaluatorConfig,
    device: Option<DeviceSummary>,
}

impl GpuEvaluator {
    /// An evaluator whose worker is `command` (normally `kiln __worker`).
    pub fn new(command: WorkerCommand, config: EvaluatorConfig) -> Result<Self, EvaluatorError> {
        let mut pool_config = PoolConfig::new(command);
        pool_config.request_timeout = config.timeout;
        pool_config.startup_timeout = Duration::from_secs(120);
        Ok(Self {
            pool: WorkerPool::new(pool_config),
            compiler: Compiler::new()?,
            config,
            device: None,
        })
    }

    /// Workers started so far (a fresh one follows every hang or crash).
    pub fn workers_started(&self) -> u64 {
        self.pool.workers_started()
    }

    fn job(&self, target: &Target, source: &str) -> EvalJob {
        EvalJob {
            target: target.name.clone(),
            source: source.to_string(),
            launch: String::new(),
            compiled: None,
            shapes: Vec::new(),
            seed: trial_seed(self.config.secret_seed, source),
            warmup: self.config.warmup,
            iters: self.config.iters,
            extra: serde_json::Value::Null,
        }
    }
}

/// Compiles in parallel what passed the static checks; returns the compile
/// failures by index (the successes are now in the cache the worker reads).
fn precompile(
    compiler: &Compiler,
    target: &Target,
    sources: &[(usize, &String)],
    arch: Arch,
) -> Vec<(usize, EvalOutcome)> {
    let defines = match target.defines() {
        Ok(d) => d,
        Err(e) => {
            return sources
                .iter()
                .map(|(i, _)| (*i, EvalOutcome::failure(Stage::Machinery, e.to_string())))
                .collect()
        }
    };
    sources
        .par_iter()
        .filter_map(|(i, src)| {
            let mut req =
                CompileRequest::new(format!("{}_candidate.cu", target.name), src.as_str())
                    .arch(arch);
            req.defines = defines.clone();
            match compiler.compile(&req) {
                Ok(_) => None,
                Err(CudaError::Compile { log, .. }) => {
                    Some((*i, EvalOutcome::failure(Stage::Compile, log)))
                }
                // NVRTC itself failing is the machinery's problem; the worker retries.
                Err(_) => None,
            }
        })
        .collect()
}

/// Inputs differ for every candidate and session, and no proposer sees the seed.
pub fn trial_seed(secret: u64, source: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(secret.to_le_bytes())
        .chain_update(source.as_bytes())
        .finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(b)
}

impl CandidateEvaluator for GpuEvaluator {
    fn device(&mut self) -> Result<DeviceSummary, EvaluatorError> {
        if let Some(d) = &self.device {
            return Ok(d.clone());
        }
        // A throwaway job would waste time: start the worker through the pool's
        // handshake by asking for its description.
        let value = self.pool.start()?.clone();
        let summary = DeviceSummary::from_ready(&value)
            .ok_or_else(|| EvaluatorError::Device(value.to_string()))?;
        self.device = Some(summary.clone());
        Ok(summary)
    }

    fn evaluate_each(
        &mut self,
        target: &Target,
        sources: &[String],
        done: &mut dyn FnMut(usize, EvalOutcome),
    ) {
        let mut settled = vec![false; sources.len()];
        let signature = match target.signature() {
            Ok(s) => s,
            Err(e) => {
                for i in 0..sources.len() {
                    done(i, EvalOutcome::failure(Stage::Machinery, e.to_string()));
                }
                return;
            }
        };
        let mut passed = Vec::new();
        for (i, src) in sources.iter().enumerate() {
            match Candidate::new(src.as_str()).check(&signature) {
                Ok(_) => passed.push((i, src)),
                Err(e) => {
                    settled[i] = true;
                    done(
                        i,
                        EvalOutcome::Scored(EvalRecord::failed(Stage::StaticCheck, e.to_string())),
                    );
                }
            }
        }
        let arch = match self.device() {
            Ok(d) => arch_of(&d.gpu_arch),
            Err(e) => {
                for (i, _) in passed {
                    done(
                        i,
                        EvalOutcome::MachineryFailure {
                            reason: e.to_string(),
                        },
                    );
                }
                return;
            }
        };
        for (i, failure) in precompile(&self.compiler, target, &passed, arch) {
            settled[i] = true;
            done(i, failure);
        }
        for (i, src) in passed {
            if !settled[i] {
                let job = self.job(target, src);
                done(i, self.pool.evaluate(&job));
            }
        }
    }
}

/// The NVRTC target for a device arch name: Hopper candidates may use sm_90a.
fn arch_of(name: &str) -> Arch {
    let digits: Vec<u32> = name
        .trim_start_matches("sm_")
        .chars()
        .filter_map(|c| c.to_digit(10))
        .collect();
    let arch = Arch {
        major: digits.first().copied().unwrap_or(9),
        minor: digits.get(1).copied().unwrap_or(0),
        specific: false,
    };
    if arch == Arch::SM90 {
        arch.specific()
    } else {
        arch
    }
}

impl Drop for GpuEvaluator {
    fn drop(&mut self) {
        self.pool.shutdown();
    }
}
