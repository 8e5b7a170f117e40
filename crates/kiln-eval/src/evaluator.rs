//! The parent side of evaluation: everything before the GPU
//! ([`check_offline`]: static checks, the launch line, NVRTC in a bounded
//! child process, the compiled-PTX check), run in parallel on CPU threads,
//! then the GPU worker, one candidate at a time, fed the compiled image.
//! Nothing here launches a kernel, and no candidate is compiled in this
//! process.

use std::time::Duration;

use kiln_cuda::{Arch, CudaError, OutputKind};
use kiln_kernels::LaunchLine;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::candidate::Candidate;
use crate::compile_sandbox::{CompileFailure, CompileJob, CompileSandbox, CompiledCandidate};
use crate::protocol::{CompiledImage, EvalJob};
use crate::ptx_check::{check_ptx, PtxFacts};
use crate::record::{EvalOutcome, EvalRecord, Stage};
use crate::targets::Target;
use crate::worker_client::{PoolConfig, WorkerCommand, WorkerFailure, WorkerPool};

pub use crate::protocol::DeviceSummary;

/// What a candidate that passed every check before the GPU carries on.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The launch line's spec (text after `kiln:`).
    pub launch: String,
    /// The compiled module: cubin, PTX and NVRTC's log.
    pub compiled: CompiledCandidate,
    /// What the PTX check found (the module's globals).
    pub facts: PtxFacts,
}

/// SM count the launch line's `SMS` takes without a GPU: the usual part of
/// each architecture (the worker re-evaluates the line with the real count).
fn nominal_sm_count(arch: Arch) -> i64 {
    match (arch.major, arch.minor) {
        (8, 0) => 108,
        (8, 6) => 84,
        (8, 9) => 128,
        (10, _) => 148,
        (12, _) => 170,
        _ => 132,
    }
}

/// Evaluates the launch line at every verified and timed shape, as the
/// worker will, with the device-independent limits (block 1..=1024, grid
/// and shared memory in range, no overflow or division by zero).
fn check_launch_line(
    target: &Target,
    line: &LaunchLine,
    arch: Arch,
) -> Result<(), (Stage, String)> {
    let mut vars: std::collections::BTreeMap<String, i64> = target
        .problem
        .static_vars()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    vars.insert("SMS".into(), nominal_sm_count(arch));
    let mut shapes = target.verify_t();
    shapes.extend(&target.timed_t);
    shapes.sort_unstable();
    shapes.dedup();
    for t in shapes {
        vars.insert("T".into(), t as i64);
        line.evaluate(&vars)
            .map_err(|e| (Stage::Parse, format!("launch line at T={t}: {e}")))?;
    }
    Ok(())
}

/// What [`check_offline`] decided: a report, or the stage and reason of a rejection.
pub type OfflineVerdict = Result<CheckReport, (Stage, String)>;

/// Runs every check that needs no GPU: static checks, the launch line, the
/// bounded compile for `arch` (a cubin with its PTX), and the compiled-PTX
/// check. A rejection is `(stage, reason)`; [`Stage::Machinery`] means the
/// checks could not run (NVRTC missing, the compile helper broken), which is
/// never the candidate's fault.
pub fn check_offline(
    target: &Target,
    source: &str,
    sandbox: &CompileSandbox,
    arch: Arch,
) -> OfflineVerdict {
    let machinery = |e: &dyn std::fmt::Display| (Stage::Machinery, e.to_string());
    let signature = target.signature().map_err(|e| machinery(&e))?;
    let checked = Candidate::new(source)
        .check(&signature)
        .map_err(|e| (Stage::StaticCheck, e.to_string()))?;
    // The worker parses the line again to launch; a line it cannot parse, or
    // that evaluates to an impossible launch at any shape, is rejected here,
    // before any compile.
    let line = LaunchLine::parse_source(source).map_err(|e| (Stage::Parse, e.to_string()))?;
    check_launch_line(target, &line, arch)?;
    let defines = target.defines().map_err(|e| machinery(&e))?;
    let job = CompileJob::cubin(
        format!("{}_candidate.cu", target.name),
        source,
        defines,
        arch,
    );
    let compiled = match sandbox.compile(&job) {
        Ok(c) if c.output == OutputKind::Cubin => c,
        Ok(_) => {
            return Err((
                Stage::Machinery,
                "the compile helper returned PTX where a cubin was asked for".into(),
            ))
        }
        Err(CompileFailure::Rejected { reason }) => return Err((Stage::Compile, reason)),
        Err(CompileFailure::Machinery(m)) => return Err((Stage::Machinery, m)),
    };
    let facts = check_ptx(&compiled.ptx).map_err(|e| (Stage::PtxCheck, e.reason))?;
    Ok(CheckReport {
        launch: checked.launch.spec,
        compiled,
        facts,
    })
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

/// Knobs of the real evaluator. The compile limits live in the
/// [`CompileSandbox`] (see [`GpuEvaluator::with_compile_sandbox`]).
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

impl EvaluatorConfig {
    /// The search's default knobs (3 warm-up replays, at most 100 timed
    /// repetitions, 60 s a candidate) with this secret seed.
    pub fn standard(secret_seed: u64) -> Self {
        Self {
            secret_seed,
            warmup: 3,
            iters: 100,
            timeout: Duration::from_secs(60),
        }
    }
}

/// The real evaluator: the checks before the GPU here (compiling in a bounded
/// child), the rest in the worker.
pub struct GpuEvaluator {
    pool: WorkerPool,
    sandbox: CompileSandbox,
    config: EvaluatorConfig,
    device: Option<DeviceSummary>,
}

impl GpuEvaluator {
    /// An evaluator whose worker is `command` (normally `kiln __worker`).
    /// Candidates compile in `program __compile` (the same program, the
    /// compile subcommand) under the default limits (60 s, 8 GiB); see
    /// [`with_compile_sandbox`](Self::with_compile_sandbox).
    pub fn new(command: WorkerCommand, config: EvaluatorConfig) -> Result<Self, EvaluatorError> {
        // Fail early, with NVRTC's own message, rather than on every candidate.
        kiln_cuda::nvrtc_version()?;
        let mut compile = WorkerCommand::new(command.program.clone(), ["__compile"]);
        compile.envs = command.envs.clone();
        let mut pool_config = PoolConfig::new(command);
        pool_config.request_timeout = config.timeout;
        pool_config.startup_timeout = Duration::from_secs(120);
        Ok(Self {
            pool: WorkerPool::new(pool_config),
            sandbox: CompileSandbox::new(compile),
            config,
            device: None,
        })
    }

    /// The same evaluator compiling candidates in `sandbox` (its command and limits).
    pub fn with_compile_sandbox(mut self, sandbox: CompileSandbox) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// The compile sandbox candidates go through.
    pub fn compile_sandbox(&self) -> &CompileSandbox {
        &self.sandbox
    }

    /// Workers started so far (a fresh one follows every hang or crash).
    pub fn workers_started(&self) -> u64 {
        self.pool.workers_started()
    }

    fn job(&self, target: &Target, source: &str, compiled: &CompiledCandidate) -> EvalJob {
        EvalJob {
            target: target.name.clone(),
            source: source.to_string(),
            compiled: Some(CompiledImage {
                cubin: compiled.image.clone(),
                ptx: compiled.ptx.clone(),
            }),
            seed: trial_seed(self.config.secret_seed, source),
            warmup: self.config.warmup,
            iters: self.config.iters,
        }
    }
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
        // handshake, which brings its description.
        let summary = self.pool.start()?.clone();
        self.device = Some(summary.clone());
        Ok(summary)
    }

    fn evaluate_each(
        &mut self,
        target: &Target,
        sources: &[String],
        done: &mut dyn FnMut(usize, EvalOutcome),
    ) {
        let signature = match target.signature() {
            Ok(s) => s,
            Err(e) => {
                for i in 0..sources.len() {
                    done(i, EvalOutcome::failure(Stage::Machinery, e.to_string()));
                }
                return;
            }
        };
        // The cheap static checks first, so their verdicts need no GPU worker.
        let mut passed = Vec::new();
        for (i, src) in sources.iter().enumerate() {
            match Candidate::new(src.as_str()).check(&signature) {
                Ok(_) => passed.push((i, src)),
                Err(e) => done(
                    i,
                    EvalOutcome::Scored(EvalRecord::failed(Stage::StaticCheck, e.to_string())),
                ),
            }
        }
        if passed.is_empty() {
            return;
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
        // Every compile runs in its own bounded child; they run in parallel.
        let sandbox = &self.sandbox;
        let checked: Vec<(usize, &String, OfflineVerdict)> = passed
            .par_iter()
            .map(|&(i, src)| (i, src, check_offline(target, src, sandbox, arch)))
            .collect();
        let mut ready = Vec::new();
        for (i, src, result) in checked {
            match result {
                Ok(report) => ready.push((i, src, report)),
                Err((stage, reason)) => done(i, EvalOutcome::failure(stage, reason)),
            }
        }
        // Model-sized inputs take the worker seconds per trial to draw and check.
        self.pool
            .set_request_timeout(self.config.timeout * target.timeout_scale());
        for (i, src, report) in ready {
            let job = self.job(target, src, &report.compiled);
            let mut outcome = self.pool.evaluate(&job);
            if let EvalOutcome::Scored(record) = &mut outcome {
                // The worker only loaded the image; the compile happened here.
                if record.compile_log.is_empty() {
                    record.compile_log = report.compiled.log.clone();
                }
                if record.timings.compile_ms.is_some() || record.is_passed() {
                    record.timings.compile_ms = Some(report.compiled.elapsed.as_secs_f64() * 1e3);
                }
            }
            done(i, outcome);
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

#[cfg(all(test, unix))]
mod tests {
    //! `check_offline` with a stand-in compile child (a shell script that
    //! prints a canned answer): no NVRTC needed.

    use super::*;
    use crate::compile_sandbox::CompileAnswer;

    const HONEST: &str = include_str!("../../kiln-cli/tests/red_team/honest_simple_rmsnorm.cu");

    fn target() -> Target {
        crate::targets::find("qwen3_rmsnorm").expect("target")
    }

    fn sandbox_answering(ptx: &str) -> CompileSandbox {
        let answer = serde_json::to_string(&CompileAnswer::Compiled {
            image: b"\x7fELF".to_vec(),
            output: OutputKind::Cubin,
            ptx: Some(ptx.to_string()),
            log: String::new(),
        })
        .expect("json");
        CompileSandbox::new(
            WorkerCommand::new("sh", ["-c", "cat >/dev/null; printf '%s\\n' \"$ANSWER\""])
                .env("ANSWER", answer),
        )
    }

    const CLEAN_PTX: &str =
        ".version 8.0\n.target sm_90a\n.address_size 64\n.visible .entry rmsnorm()\n{\n\tret;\n}\n";

    #[test]
    fn every_offline_check_runs_in_order() {
        let arch = Arch::SM90.specific();
        let ok =
            check_offline(&target(), HONEST, &sandbox_answering(CLEAN_PTX), arch).expect("passes");
        assert_eq!(ok.launch, "block=256 grid=T smem=0");
        assert_eq!(ok.compiled.image, b"\x7fELF");

        // Static checks come before any compile: a missing helper is never reached.
        let missing = CompileSandbox::new(WorkerCommand::new("/nonexistent/kiln", ["__compile"]));
        let (stage, _) = check_offline(&target(), "int x;", &missing, arch).expect_err("rejected");
        assert_eq!(stage, Stage::StaticCheck);
        // A helper that cannot start is machinery, not the candidate's fault.
        let (stage, reason) =
            check_offline(&target(), HONEST, &missing, arch).expect_err("no helper");
        assert_eq!(stage, Stage::Machinery, "{reason}");

        // What the compiled PTX does is checked, whatever the source looked like.
        let printf =
            CLEAN_PTX.replace("\tret;", "\tcall.uni (retval0), vprintf, (param0);\n\tret;");
        let (stage, reason) = check_offline(&target(), HONEST, &sandbox_answering(&printf), arch)
            .expect_err("vprintf");
        assert_eq!(stage, Stage::PtxCheck);
        assert!(reason.contains("vprintf"), "{reason}");
    }
}
