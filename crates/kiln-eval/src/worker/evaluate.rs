//! One evaluation inside the GPU worker: load the candidate, verify it on
//! every shape (hidden ones included) with fresh adversarial inputs, time it
//! interleaved with the catalog baseline, check what every timed replay
//! wrote, and score it.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::protocol::EvalJob;
use crate::ptx_check::check_ptx;
use crate::record::{finite, EvalOutcome, EvalRecord, ShapeId, ShapeResult, Stage, StageTimings};
use crate::reward::{self, ShapeTiming};
use crate::targets::{self, Distribution, HostBuffer, OpProblem, Target};
use crate::timing_stats::Plausibility;

use super::device_set::DeviceSet;
use super::measure::{
    check_outputs, check_untouched, launch, launch_dims, load, load_image, take_statics,
    time_interleaved, timing_sets, with_statics, Device, Failure, Loaded, TimingSets,
};
use super::prefix_replay::check_prefix_replay;
use super::timed_outputs::TimedOutputCheck;

/// Runs one verification launch of `problem` (the target's, or a variant of
/// it for this trial) and checks outputs and inputs.
fn verify_once(
    dev: &Device,
    problem: &OpProblem,
    loaded: &Loaded,
    set: &mut DeviceSet,
    inputs: &[HostBuffer],
    dist: Distribution,
) -> Result<(), Failure> {
    let t = set.t;
    let dims = launch_dims(dev, problem, loaded, t)?;
    let gpu = &dev.gpu;
    set.set_scalars(problem.scalar_args());
    set.upload_inputs(gpu, inputs)
        .map_err(|e| Failure::machinery("uploading inputs", e))?;
    set.reset_outputs(gpu)
        .map_err(|e| Failure::machinery("resetting outputs", e))?;
    gpu.synchronize()
        .map_err(|e| Failure::machinery("before the launch", e))?;
    launch(dev, loaded, &dims, set, 0)
        .map_err(|e| Failure::cuda(Stage::Launch, &format!("launch at T={t}"), e))?;
    gpu.synchronize()
        .map_err(|e| Failure::cuda(Stage::Launch, &format!("kernel at T={t}"), e))?;
    let got = set
        .download_outputs(gpu, 0)
        .map_err(|e| Failure::cuda(Stage::Launch, "reading outputs", e))?;
    let reference = problem.reference(t, inputs);
    let scalars = problem
        .scalar_names()
        .iter()
        .zip(problem.scalar_args())
        .map(|(n, v)| format!(", {n}={v}"))
        .collect::<String>();
    check_outputs(problem, t, &got, &reference, None).map_err(|reason| {
        Failure::new(
            Stage::Verify,
            format!("{reason} (inputs: {dist:?}{scalars})"),
        )
    })?;
    check_untouched(dev, std::slice::from_mut(set), "the kernel")?;
    loaded.check_globals(dev)
}

/// Static inputs of at least this many bytes (the expert targets' stacked
/// weights, hundreds of MB) are drawn once per candidate, from its secret
/// seed, and shared by all its trials: they are drawn alike whatever the
/// trial's distribution, and drawing them every trial kept an expert
/// candidate's verification at 9.7 s (ten trials, H100). Smaller ones are
/// drawn fresh every trial.
pub const SHARED_STATICS_MIN_BYTES: u64 = 64 << 20;

/// Verifies on every shape: fresh inputs per trial (model-sized weights
/// fresh per candidate, see [`SHARED_STATICS_MIN_BYTES`]), distributions in
/// turn, the same device buffers reused across trials of a shape.
fn verify(dev: &Device, target: &Target, loaded: &Loaded, seed: u64) -> Result<(), Failure> {
    let router = target.problem.topk_layout().is_some();
    let share = target.problem.static_input_bytes() >= SHARED_STATICS_MIN_BYTES;
    let is_static = target.problem.static_inputs();
    let mut statics: Vec<HostBuffer> = Vec::new();
    let mut trial = 0u64;
    for (si, &t) in target.verify_t().iter().enumerate() {
        let mut set = DeviceSet::new(&dev.gpu, target.problem.buffers(t), t)
            .map_err(|e| Failure::machinery("allocating buffers", e))?
            .with_scalars(target.problem.scalar_args());
        for j in 0..targets::TRIALS_PER_SHAPE {
            let mut dist =
                Distribution::ALL[(si * targets::TRIALS_PER_SHAPE + j) % Distribution::ALL.len()];
            // Routers meet exact ties on every shape.
            if router && j == targets::TRIALS_PER_SHAPE - 1 {
                dist = Distribution::Ties;
            }
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed ^ trial.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut scalar_rng = ChaCha8Rng::seed_from_u64(seed ^ trial ^ 0xa77e_5ca1);
            let problem = target
                .problem
                .for_verification(t, trial as usize, &mut scalar_rng);
            trial += 1;
            if !share {
                let inputs = problem.inputs(t, dist, &mut rng);
                verify_once(dev, &problem, loaded, &mut set, &inputs, dist)?;
                continue;
            }
            let mut rows = if statics.is_empty() {
                let mut full = problem.inputs(t, dist, &mut rng);
                statics = take_statics(&mut full, &is_static);
                full
            } else {
                problem.input_rows(t, dist, &mut rng)
            };
            with_statics(&mut rows, &mut statics, |inputs| {
                verify_once(dev, &problem, loaded, &mut set, inputs, dist)
            })?;
        }
    }
    Ok(())
}

/// What a worker keeps between evaluations: the catalog kernels, and the
/// timing input sets of the current target (drawing and uploading hundreds of
/// MB per candidate would cap throughput; verification inputs stay fresh).
#[derive(Default)]
pub struct WorkerCache {
    loaded: BTreeMap<String, Rc<Loaded>>,
    timing_target: String,
    timing: BTreeMap<usize, TimingSets>,
}

impl WorkerCache {
    /// Drops the cached timing sets (after a failure that may have touched them).
    fn forget_timing(&mut self) {
        self.timing.clear();
        self.timing_target.clear();
    }

    /// The timing sets of `t` rows for `target`, made on first use.
    fn timing_sets(
        &mut self,
        dev: &Device,
        target: &Target,
        t: usize,
        seed: u64,
    ) -> Result<&mut TimingSets, Failure> {
        if self.timing_target != target.name {
            self.timing.clear();
            self.timing_target = target.name.clone();
        }
        match self.timing.entry(t) {
            std::collections::btree_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(v) => {
                Ok(v.insert(timing_sets(dev, &target.problem, t, seed)?))
            }
        }
    }

    /// The catalog kernel of `target`, loaded on first use.
    fn baseline(&mut self, dev: &Device, target: &Target) -> Result<Rc<Loaded>, Failure> {
        if let Some(b) = self.loaded.get(&target.name) {
            return Ok(b.clone());
        }
        let build = target
            .baseline()
            .map_err(|e| Failure::machinery("baseline", e))?;
        let loaded = load(dev, &target.problem, &build.name, &build.source)
            .map_err(|f| Failure::machinery("the catalog baseline failed to load", f.reason))?;
        let rc = Rc::new(loaded);
        self.loaded.insert(target.name.clone(), rc.clone());
        Ok(rc)
    }
}

/// Evaluates one job; the flag says the worker must exit after answering.
pub fn evaluate(dev: &Device, cache: &mut WorkerCache, job: &EvalJob) -> (EvalOutcome, bool) {
    match evaluate_inner(dev, cache, job) {
        Ok(record) => (EvalOutcome::Scored(record), false),
        Err(f) => (EvalOutcome::failure(f.stage, f.reason), f.sticky),
    }
}

fn evaluate_inner(
    dev: &Device,
    cache: &mut WorkerCache,
    job: &EvalJob,
) -> Result<EvalRecord, Failure> {
    let target = targets::find(&job.target)
        .ok_or_else(|| Failure::machinery("unknown target", &job.target))?;
    let problem = &target.problem;
    // The worker never compiles a candidate: the parent did, in its bounded
    // compile child, and checked the PTX; the globals to watch come from the
    // same PTX.
    let image = job.compiled.as_ref().ok_or_else(|| {
        Failure::machinery(
            "the job",
            "it carries no compiled image (the worker never compiles a candidate)",
        )
    })?;
    let facts = check_ptx(&image.ptx).map_err(|e| Failure::new(Stage::PtxCheck, e.reason))?;
    let t0 = Instant::now();
    let candidate = load_image(dev, problem, &job.source, &image.cubin, &facts)?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let baseline = cache.baseline(dev, &target)?;

    let t1 = Instant::now();
    verify(dev, &target, &candidate, job.seed)?;
    let verify_ms = t1.elapsed().as_secs_f64() * 1e3;

    let t2 = Instant::now();
    let plausible = Plausibility {
        peak_bandwidth_bytes_per_s: dev.peak_bytes_per_s,
        l2_bandwidth_bytes_per_s: dev.l2_bytes_per_s,
        launch_floor_us: dev.launch_floor_us,
    };
    let mut per_shape = Vec::new();
    let mut timings = Vec::new();
    for &t in &target.timed_t {
        let sets = cache.timing_sets(dev, &target, t, job.seed)?;
        let mut watch = TimedOutputCheck::new(problem, job.seed);
        let checked = time_interleaved(
            dev,
            problem,
            &[&candidate, &baseline],
            sets,
            job.warmup,
            job.iters,
            &mut watch,
        )
        .and_then(|s| {
            check_prefix_replay(dev, problem, &candidate, sets, job.seed)?;
            check_untouched(dev, &mut sets.sets, "a timed launch")?;
            candidate.check_globals(dev)?;
            Ok(s)
        });
        // A candidate that corrupted the cached timing inputs must not leave
        // them for the next one (the check restores them, but be certain).
        let summaries = match checked {
            Ok(s) => s,
            Err(f) => {
                cache.forget_timing();
                return Err(f);
            }
        };
        let (cand, base) = (&summaries[0], &summaries[1]);
        let resources = launch_dims(dev, problem, &candidate, t)
            .ok()
            .and_then(|dims| match candidate.resources(&dims) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!("T={t}: the driver did not report the kernel's resources: {e}");
                    None
                }
            });
        let bytes = sets.bytes_per_launch;
        plausible
            .check(cand.median_us, bytes, sets.rotated_beyond_l2)
            .map_err(|e| Failure::new(Stage::Plausibility, format!("T={t}: {e}")))?;
        let timing = ShapeTiming {
            baseline_us: base.median_us,
            candidate_us: cand.median_us,
        };
        timings.push(timing);
        per_shape.push(ShapeResult {
            shape: ShapeId {
                name: format!("T={t}"),
                vars: [("T".to_string(), t as i64)].into_iter().collect(),
            },
            median_us: finite(cand.median_us),
            p10_us: finite(cand.p10_us),
            p90_us: finite(cand.p90_us),
            baseline_median_us: finite(base.median_us),
            speedup: reward::speedup(timing.baseline_us, timing.candidate_us).ok(),
            gbps: reward::gbps(bytes, timing.candidate_us).ok(),
            sol_fraction: reward::sol_fraction(
                bytes,
                dev.peak_bytes_per_s,
                dev.launch_floor_us,
                timing.candidate_us,
            )
            .ok(),
            resources,
        });
    }
    let time_ms = t2.elapsed().as_secs_f64() * 1e3;
    let score = reward::reward(&timings).map_err(|e| Failure::machinery("reward", e))?;
    Ok(EvalRecord::passed(
        per_shape,
        score,
        None,
        candidate.compile_log.clone(),
        StageTimings {
            compile_ms: Some(compile_ms),
            verify_ms: Some(verify_ms),
            time_ms: Some(time_ms),
        },
    ))
}
