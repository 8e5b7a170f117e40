//! The worker's measuring primitives, shared by candidate evaluation and the
//! catalog benchmark: load a kernel for an op problem, launch it over a
//! type-erased buffer set, check its outputs against the reference, and time
//! several kernels interleaved with CUDA graphs over rotated input sets.

use std::collections::BTreeMap;

use kiln_cuda::{
    Arch, CompileRequest, Compiler, CudaError, Gpu, Graph, Kernel, LaunchDims, Module,
};
use kiln_kernels::{LaunchLine, Tolerance as CatalogTolerance};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::record::Stage;
use crate::targets::{Distribution, ElemKind, HostBuffer, OpProblem, Reference, Role};
use crate::timing_stats::{summarize, StopDecision, StoppingRule, TimingSummary};
use crate::tolerance::{compare, Tolerance};
use crate::topk_compare::{compare_topk, TopkSpec};

use super::device_set::DeviceSet;

/// Launches captured per graph for shapes that fit in L2.
const MIN_LAUNCHES_PER_GRAPH: usize = 20;
/// Rotated input sets must total this many L2 sizes to defeat the cache.
const L2_MULTIPLE: u64 = 3;

/// The worker's GPU and the measurements every evaluation is judged by.
pub struct Device {
    /// The GPU.
    pub gpu: Gpu,
    /// NVRTC with the on-disk cache.
    pub compiler: Compiler,
    /// Measured peak DRAM streaming bandwidth, bytes/s.
    pub peak_bytes_per_s: f64,
    /// Graph-batched empty-kernel launch time, µs.
    pub launch_floor_us: f64,
}

/// Why a measurement stopped early.
#[derive(Debug)]
pub struct Failure {
    /// The stage that failed.
    pub stage: Stage,
    /// What a proposer should read.
    pub reason: String,
    /// The CUDA context is unusable: the worker must exit after answering.
    pub sticky: bool,
}

impl Failure {
    /// A failure of the candidate at `stage`.
    pub fn new(stage: Stage, reason: impl Into<String>) -> Self {
        Self {
            stage,
            reason: reason.into(),
            sticky: false,
        }
    }

    /// A CUDA error while running a kernel: sticky errors end the worker.
    pub fn cuda(stage: Stage, what: &str, err: CudaError) -> Self {
        let sticky = err.is_sticky();
        Self {
            stage: if sticky { Stage::Crash } else { stage },
            reason: format!("{what}: {err}"),
            sticky,
        }
    }

    /// A failure of the evaluator itself: retried, never scored.
    pub fn machinery(what: &str, err: impl std::fmt::Display) -> Self {
        Self::new(Stage::Machinery, format!("{what}: {err}"))
    }
}

/// A kernel loaded for measurement, with its parsed launch line.
pub struct Loaded {
    kernel: Kernel,
    launch: LaunchLine,
    /// NVRTC's warnings.
    pub compile_log: String,
    _module: Module,
}

/// Candidates may use sm_90a features (wgmma, setmaxnreg) on Hopper.
pub fn arch_for(gpu: &Gpu) -> Arch {
    let arch = gpu.facts().arch;
    if arch.major == 9 && arch.minor == 0 {
        arch.specific()
    } else {
        arch
    }
}

/// Compiles and loads `source` with the problem's defines.
pub fn load(
    dev: &Device,
    problem: &OpProblem,
    name: &str,
    source: &str,
) -> Result<Loaded, Failure> {
    let launch =
        LaunchLine::parse_source(source).map_err(|e| Failure::new(Stage::Parse, e.to_string()))?;
    let build = problem
        .build()
        .map_err(|e| Failure::machinery("op configuration", e))?;
    let mut req = CompileRequest::new(name, source).arch(arch_for(&dev.gpu));
    req.defines = build.defines;
    let compiled = match dev.compiler.compile(&req) {
        Ok(c) => c,
        Err(CudaError::Compile { log, .. }) => return Err(Failure::new(Stage::Compile, log)),
        Err(e) => return Err(Failure::machinery("NVRTC", e)),
    };
    let module = dev
        .gpu
        .load_module(&compiled)
        .map_err(|e| Failure::cuda(Stage::Load, "loading the module", e))?;
    let kernel = module
        .kernel(&build.entry)
        .map_err(|e| Failure::new(Stage::Load, e.to_string()))?;
    Ok(Loaded {
        kernel,
        launch,
        compile_log: compiled.log,
        _module: module,
    })
}

/// Evaluates the kernel's launch line at `t` rows and checks it against the device.
pub fn launch_dims(
    dev: &Device,
    problem: &OpProblem,
    loaded: &Loaded,
    t: usize,
) -> Result<LaunchDims, Failure> {
    let mut vars: BTreeMap<String, i64> = problem
        .static_vars()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    vars.insert("T".into(), t as i64);
    vars.insert("SMS".into(), dev.gpu.facts().sm_count as i64);
    let dims = loaded
        .launch
        .evaluate(&vars)
        .map_err(|e| Failure::new(Stage::Parse, format!("launch line at T={t}: {e}")))?;
    loaded
        .kernel
        .prepare(&dims)
        .map_err(|e| Failure::new(Stage::Launch, format!("T={t}: {e}")))?;
    Ok(dims)
}

/// Enqueues one launch of `loaded` over `set`.
pub fn launch(
    dev: &Device,
    loaded: &Loaded,
    dims: &LaunchDims,
    set: &DeviceSet,
) -> Result<(), CudaError> {
    let args = set.args(&dev.gpu);
    // SAFETY: the arguments follow the op's signature (checked statically for
    // candidates), and every pointer addresses a buffer sized for `set.t` rows.
    unsafe { loaded.kernel.launch(&dev.gpu, dims, &args) }
}

/// The verification tolerance of an output of `problem` stored as `kind`.
fn tolerance(problem: &OpProblem, kind: ElemKind) -> Tolerance {
    let dtype = match kind {
        ElemKind::Dtype(d) => d,
        _ => kiln_kernels::DType::F32,
    };
    CatalogTolerance::for_op(problem.op(), dtype).into()
}

/// Checks every output of one launch against the reference; the error says
/// which output, where, and by how much.
pub fn check_outputs(
    problem: &OpProblem,
    t: usize,
    got: &[HostBuffer],
    reference: &Reference,
) -> Result<(), String> {
    if let Some(layout) = problem.topk_layout() {
        let (Some(scores), Some(weights)) =
            (&reference.selection_scores, &reference.expert_weights)
        else {
            return Err("evaluator bug: router reference without scores".into());
        };
        let spec = TopkSpec {
            k: layout.k,
            num_experts: layout.e,
            // Selection scores are f32 in every router: ties within f32 rounding.
            score_tol: Tolerance {
                atol_scale: 2f64.powi(-22),
                rtol: 2f64.powi(-22),
            },
            weight_tol: tolerance(problem, ElemKind::Dtype(problem.dtype())),
        };
        let idx: Vec<i64> = got[layout.indices_output]
            .values
            .iter()
            .map(|v| *v as i64)
            .collect();
        return compare_topk(
            &idx,
            &got[layout.weights_output].values,
            scores,
            weights,
            &spec,
        )
        .map(|_| ())
        .map_err(|e| format!("T={t}: {e}"));
    }
    let names: Vec<String> = problem
        .buffers(t)
        .into_iter()
        .filter(|b| b.role == Role::Output)
        .map(|b| b.name)
        .collect();
    for (i, (g, r)) in got.iter().zip(&reference.outputs).enumerate() {
        compare(&g.values, &r.values, &tolerance(problem, r.kind)).map_err(|e| {
            let name = names.get(i).map(String::as_str).unwrap_or("output");
            format!("T={t}, output `{name}`: {e}")
        })?;
    }
    Ok(())
}

/// Input sets for timing one shape: enough of them to exceed L2 when one set
/// is large, else a single set (small shapes live in L2 during decode too).
pub struct TimingSets {
    /// The sets, each with its own inputs and outputs.
    pub sets: Vec<DeviceSet>,
    /// The first set's inputs (for checking a timed launch's output).
    pub first_inputs: Vec<HostBuffer>,
    /// True when the sets together are at least twice the L2.
    pub rotated_beyond_l2: bool,
    /// The reference for `first_inputs`, computed on first use.
    first_reference: Option<Reference>,
}

/// Allocates and fills the timing sets of `t` rows.
pub fn timing_sets(
    dev: &Device,
    problem: &OpProblem,
    t: usize,
    seed: u64,
) -> Result<TimingSets, Failure> {
    let gpu = &dev.gpu;
    let per_set = problem.bytes_moved(t).max(1);
    let l2 = gpu.facts().l2_bytes;
    let (free, _) = gpu
        .memory_info()
        .map_err(|e| Failure::machinery("memory info", e))?;
    let mut n = if per_set * 2 >= l2 {
        (L2_MULTIPLE * l2).div_ceil(per_set).max(2)
    } else {
        1
    };
    n = n.min((free as u64 / 4 / per_set).max(1));
    let mut sets = Vec::new();
    let mut first_inputs = Vec::new();
    for i in 0..n {
        let mut set = DeviceSet::new(gpu, problem.buffers(t), t)
            .map_err(|e| Failure::machinery("allocating timing buffers", e))?
            .with_scalars(problem.scalar_args());
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(0x5151 + i));
        let inputs = problem.inputs(t, Distribution::Normal, &mut rng);
        set.upload_inputs(gpu, &inputs)
            .map_err(|e| Failure::machinery("uploading timing inputs", e))?;
        if i == 0 {
            first_inputs = inputs;
        }
        sets.push(set);
    }
    Ok(TimingSets {
        rotated_beyond_l2: n > 1 && n * per_set >= 2 * l2,
        sets,
        first_inputs,
        first_reference: None,
    })
}

/// Captures `rounds` passes over every set as one graph.
fn capture(
    dev: &Device,
    loaded: &Loaded,
    dims: &LaunchDims,
    sets: &[DeviceSet],
    rounds: usize,
) -> Result<Graph, CudaError> {
    dev.gpu.capture(|| {
        for _ in 0..rounds {
            for set in sets {
                launch(dev, loaded, dims, set)?;
            }
        }
        Ok(())
    })
}

/// Times `kernels` on `t` rows, interleaved replay by replay so drift of the
/// machine hits them alike; per-launch median, p10, p90 for each. The first
/// kernel's failures are the candidate's; the others' are the machinery's.
pub fn time_interleaved(
    dev: &Device,
    problem: &OpProblem,
    kernels: &[&Loaded],
    sets: &TimingSets,
    warmup: u32,
    max_reps: u32,
) -> Result<Vec<TimingSummary>, Failure> {
    let gpu = &dev.gpu;
    let t = sets.sets.first().map_or(0, |s| s.t);
    let blame = |i: usize, stage: Stage, what: String, e: CudaError| {
        if i == 0 {
            Failure::cuda(stage, &what, e)
        } else {
            Failure::machinery(&what, e)
        }
    };
    let rounds = MIN_LAUNCHES_PER_GRAPH.div_ceil(sets.sets.len()).max(1);
    let per_graph = (rounds * sets.sets.len()) as f64;
    let mut graphs = Vec::new();
    for (i, k) in kernels.iter().enumerate() {
        let dims = launch_dims(dev, problem, k, t)?;
        graphs.push(
            capture(dev, k, &dims, &sets.sets, rounds)
                .map_err(|e| blame(i, Stage::Timing, format!("capturing launches at T={t}"), e))?,
        );
    }
    for _ in 0..warmup.max(1) {
        for (i, g) in graphs.iter().enumerate() {
            g.replay()
                .map_err(|e| blame(i, Stage::Timing, "warm-up".into(), e))?;
        }
    }
    gpu.synchronize()
        .map_err(|e| Failure::cuda(Stage::Timing, &format!("warm-up at T={t}"), e))?;
    let rule = StoppingRule {
        max_reps: max_reps.max(10) as usize,
        ..StoppingRule::default()
    };
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); graphs.len()];
    loop {
        for (i, g) in graphs.iter().enumerate() {
            let us = gpu
                .time_us(|| g.replay())
                .map_err(|e| blame(i, Stage::Timing, format!("timed replay at T={t}"), e))?;
            samples[i].push(us / per_graph);
        }
        let mut all_done = true;
        for s in &samples {
            let d = rule
                .decide(s)
                .map_err(|e| Failure::new(Stage::Timing, e.to_string()))?;
            all_done &= d != StopDecision::Continue;
        }
        if all_done || samples[0].len() >= rule.max_reps {
            break;
        }
    }
    samples
        .iter()
        .map(|s| summarize(s).map_err(|e| Failure::new(Stage::Timing, e.to_string())))
        .collect()
}

/// Re-runs `kernel` once over every poisoned timing set and checks the first
/// set's output: the output of a timed launch is checked too.
pub fn check_timed_output(
    dev: &Device,
    problem: &OpProblem,
    kernel: &Loaded,
    sets: &mut TimingSets,
) -> Result<(), Failure> {
    let gpu = &dev.gpu;
    let t = sets.sets.first().map_or(0, |s| s.t);
    let dims = launch_dims(dev, problem, kernel, t)?;
    for set in sets.sets.iter_mut() {
        set.poison_outputs(gpu)
            .map_err(|e| Failure::machinery("poisoning timing outputs", e))?;
    }
    for set in &sets.sets {
        launch(dev, kernel, &dims, set)
            .map_err(|e| Failure::cuda(Stage::Timing, "checked launch", e))?;
    }
    gpu.synchronize()
        .map_err(|e| Failure::cuda(Stage::Timing, &format!("checked launch at T={t}"), e))?;
    let got = sets.sets[0]
        .download_outputs(gpu)
        .map_err(|e| Failure::cuda(Stage::Timing, "reading timed outputs", e))?;
    let inputs = &sets.first_inputs;
    let reference = sets
        .first_reference
        .get_or_insert_with(|| problem.reference(t, inputs));
    check_outputs(problem, t, &got, reference).map_err(|r| {
        Failure::new(
            Stage::Verify,
            format!("output of a timed launch is wrong: {r}"),
        )
    })
}
