//! The worker's measuring primitives, shared by candidate evaluation and the
//! catalog benchmark: load a kernel for an op problem, launch it over a
//! type-erased buffer set, check its outputs against the reference, and time
//! several kernels interleaved with CUDA graphs over rotated input sets.

use std::collections::BTreeMap;

use kiln_cuda::{
    Arch, CompileRequest, Compiler, CudaError, Gpu, Graph, Kernel, LaunchDims, Module, Probes,
};
use kiln_kernels::{LaunchLine, Tolerance as CatalogTolerance};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ptx_check::PtxFacts;
use crate::record::Stage;
use crate::targets::{Distribution, ElemKind, HostBuffer, OpProblem, Reference, Role};
use crate::timing_stats::{summarize, StopDecision, StoppingRule, TimingSummary};
use crate::tolerance::{compare_rows, Tolerance};
use crate::topk_compare::{compare_topk, TopkSpec};

use super::device_set::{row_len, DeviceSet};

/// What shared memory holds when a replay starts: a NaN in f32 and in each
/// 16-bit half, so a kernel that reads shared memory it never wrote computes
/// NaN instead of a stale value.
pub const SHARED_MEMORY_FILL: u32 = 0x7fc0_7fc0;
/// Launches captured per timing graph (at least; rounded up to whole passes).
pub const LAUNCHES_PER_GRAPH: usize = 20;
/// Rotated input sets must total this many L2 sizes to defeat the cache.
const L2_MULTIPLE: u64 = 3;
/// Device bytes of distinct input sets a large shape may use, so that as many
/// launches of a graph as possible read inputs no other launch reads.
const DISTINCT_INPUT_BUDGET: u64 = 256 << 20;
/// Rows of every timed output group checked against the reference (all rows
/// when `T` is at most this); one group per shape is checked in full.
const SAMPLED_ROWS: usize = 16;

/// The worker's GPU and the measurements every evaluation is judged by.
pub struct Device {
    /// The GPU.
    pub gpu: Gpu,
    /// NVRTC with the on-disk cache.
    pub compiler: Compiler,
    /// Measured peak DRAM streaming bandwidth, bytes/s.
    pub peak_bytes_per_s: f64,
    /// Measured rate of a copy that fits in L2, bytes/s.
    pub l2_bytes_per_s: f64,
    /// Empty-kernel launch time in graphs of [`LAUNCHES_PER_GRAPH`], µs.
    pub launch_floor_us: f64,
    /// The probe kernels (the device-side byte compare of the input check).
    pub probes: Probes,
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

/// A kernel loaded for measurement, with its parsed launch line and the
/// pristine bytes of every module-scope global (a launch may change none).
pub struct Loaded {
    kernel: Kernel,
    launch: LaunchLine,
    /// NVRTC's warnings.
    pub compile_log: String,
    module: Module,
    globals: Vec<(String, Vec<u8>)>,
}

impl Loaded {
    /// The driver's account of this kernel at `dims` (registers, spills,
    /// occupancy): feedback for the proposer, never part of the verdict.
    pub fn resources(&self, dims: &LaunchDims) -> Result<kiln_cuda::KernelResources, CudaError> {
        self.kernel.resources(dims)
    }

    /// Checks that every module-scope global still holds its load-time bytes;
    /// a changed one is restored and reported (a kernel may keep no state
    /// between launches, whatever the source checks missed).
    pub fn check_globals(&self, dev: &Device) -> Result<(), Failure> {
        for (name, pristine) in &self.globals {
            let now = self.module.read_global(&dev.gpu, name).map_err(|e| {
                Failure::cuda(Stage::Verify, &format!("reading global `{name}`"), e)
            })?;
            if &now != pristine {
                let at = now
                    .iter()
                    .zip(pristine)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                self.module
                    .write_global(&dev.gpu, name, pristine)
                    .map_err(|e| Failure::machinery("restoring a global", e))?;
                return Err(Failure::new(
                    Stage::Verify,
                    format!(
                        "module-scope global `{name}` changed during a launch (byte {at}): a kernel may not keep state between launches; use registers or shared memory"
                    ),
                ));
            }
        }
        Ok(())
    }
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

/// Compiles and loads a trusted `source` (a catalog kernel) with the problem's defines.
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
    finish_load(dev, module, &build.entry, launch, compiled.log, &[])
}

/// Loads a candidate's cubin, compiled by the parent's bounded compile child;
/// `facts` come from the PTX check of the same compilation and list the
/// module's globals, whose bytes are snapshotted here.
pub fn load_image(
    dev: &Device,
    problem: &OpProblem,
    source: &str,
    cubin: &[u8],
    facts: &PtxFacts,
) -> Result<Loaded, Failure> {
    let launch =
        LaunchLine::parse_source(source).map_err(|e| Failure::new(Stage::Parse, e.to_string()))?;
    let build = problem
        .build()
        .map_err(|e| Failure::machinery("op configuration", e))?;
    let module = dev
        .gpu
        .load_cubin("candidate.cu", cubin)
        .map_err(|e| Failure::cuda(Stage::Load, "loading the module", e))?;
    let names: Vec<String> = facts.globals.iter().map(|g| g.name.clone()).collect();
    finish_load(dev, module, &build.entry, launch, String::new(), &names)
}

fn finish_load(
    dev: &Device,
    module: Module,
    entry: &str,
    launch: LaunchLine,
    compile_log: String,
    globals: &[String],
) -> Result<Loaded, Failure> {
    let kernel = module
        .kernel(entry)
        .map_err(|e| Failure::new(Stage::Load, e.to_string()))?;
    let mut snapshot = Vec::with_capacity(globals.len());
    for name in globals {
        let bytes = module
            .read_global(&dev.gpu, name)
            .map_err(|e| Failure::new(Stage::Load, format!("global `{name}`: {e}")))?;
        snapshot.push((name.clone(), bytes));
    }
    Ok(Loaded {
        kernel,
        launch,
        compile_log,
        module,
        globals: snapshot,
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

/// Enqueues one launch of `loaded` over `set`, writing output group `group`.
pub fn launch(
    dev: &Device,
    loaded: &Loaded,
    dims: &LaunchDims,
    set: &DeviceSet,
    group: usize,
) -> Result<(), CudaError> {
    let args = set.args(group);
    // SAFETY: the arguments follow the op's signature (checked statically for
    // candidates), and every pointer addresses a buffer sized for `set.t` rows
    // (between guard zones).
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

/// Checks every output of one launch against the reference, each row scaled
/// by its own magnitude; `rows` limits the check to those rows. The error says
/// which output, where, and by how much.
pub fn check_outputs(
    problem: &OpProblem,
    t: usize,
    got: &[HostBuffer],
    reference: &Reference,
    rows: Option<&[usize]>,
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
    // Name and row length of each written buffer; one that does not grow
    // with T (an in-out state) is compared as one row.
    let written: Vec<(String, Option<usize>)> = problem
        .buffers(t)
        .into_iter()
        .zip(problem.row_layout())
        .filter(|(b, _)| b.role.is_written())
        .map(|(b, per_row)| (b.name, per_row))
        .collect();
    for (i, (g, r)) in got.iter().zip(&reference.outputs).enumerate() {
        let name = written.get(i).map_or("output", |(n, _)| n.as_str());
        let (per_row, row_shaped) = match written.get(i) {
            Some((_, None)) => (r.values.len().max(1), false),
            _ => (row_len(r.values.len(), t), true),
        };
        // Each row splits into groups scaled by themselves (attention: one
        // per head; a cache: one per position row); the rows to check are
        // then every group of those rows.
        let group = problem
            .tolerance_group(name)
            .filter(|&n| n > 0 && per_row % n == 0)
            .unwrap_or(per_row);
        let groups = per_row / group;
        let group_rows = match rows {
            Some(rows) if row_shaped => Some(
                rows.iter()
                    .flat_map(|&row| row * groups..(row + 1) * groups)
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        };
        compare_rows(
            &g.values,
            &r.values,
            group,
            group_rows.as_deref(),
            &tolerance(problem, r.kind),
        )
        .map_err(|e| {
            let how = match (group < per_row, row_shaped) {
                (true, true) => format!(
                    " (row r is row r / {groups} of the output, group r % {groups} of {group} elements, each scaled by itself)"
                ),
                (true, false) => format!(" (row r is its r-th run of {group} elements)"),
                _ => String::new(),
            };
            format!("T={t}, output `{name}`{how}, {e}")
        })?;
    }
    Ok(())
}

/// The input sets timed at one shape. Each set has as many output groups as
/// the graph makes passes over the sets, so every launch in a graph writes
/// its own outputs; the sets' rows cycle through every input distribution,
/// so the timed outputs of the largest shape are checked with all of them
/// (their static inputs, drawn once, follow the first set's).
pub struct TimingSets {
    /// The sets, each with its own inputs and `rounds` output groups.
    pub sets: Vec<DeviceSet>,
    /// The host inputs of each set, static buffers (weights) left empty:
    /// their values are in `statics`.
    inputs: Vec<Vec<HostBuffer>>,
    /// The static inputs every set holds a copy of on the device (empty for
    /// row-shaped ones). One host copy: model-sized expert weights times the
    /// sets of every timed shape would be tens of GB.
    statics: Vec<HostBuffer>,
    /// Passes of a graph over the sets.
    pub rounds: usize,
    /// Row windows per set: pass `r` over a set reads its own rows when this
    /// equals `rounds` (1 where an op's rows cannot be windowed).
    pub windows: usize,
    /// True when the sets together are at least twice the L2.
    pub rotated_beyond_l2: bool,
    /// True when every set's inputs fit in L2 together ([`warms_l2`]): then
    /// every replay starts with them read into L2 by the judge.
    pub warms_l2: bool,
    /// The bytes a launch of the graph must move, on average over its
    /// launches ([`OpProblem::bytes_moved_on`] of each launch's own rows):
    /// what the plausibility bound and the reported bandwidth use.
    pub bytes_per_launch: u64,
    /// The reference of each set, computed on first use.
    references: Vec<Option<Reference>>,
}

/// Moves the static buffers (weights) out of `full`, leaving them empty
/// there: the one host copy that sets or trials sharing them lend each other
/// through [`with_statics`]. Row-shaped buffers stay, and are empty in the
/// result.
pub(super) fn take_statics(full: &mut [HostBuffer], is_static: &[bool]) -> Vec<HostBuffer> {
    full.iter_mut()
        .zip(is_static)
        .map(|(b, &st)| HostBuffer {
            kind: b.kind,
            values: if st {
                std::mem::take(&mut b.values)
            } else {
                Vec::new()
            },
        })
        .collect()
}

/// Runs `f` on `rows` with the static buffers of `statics` moved in (and
/// moved back after): the full inputs, without copying the weights.
pub(super) fn with_statics<R>(
    rows: &mut [HostBuffer],
    statics: &mut [HostBuffer],
    f: impl FnOnce(&[HostBuffer]) -> R,
) -> R {
    let shared: Vec<bool> = statics.iter().map(|s| !s.values.is_empty()).collect();
    let swap = |rows: &mut [HostBuffer], statics: &mut [HostBuffer]| {
        for ((r, s), _) in rows
            .iter_mut()
            .zip(statics.iter_mut())
            .zip(&shared)
            .filter(|(_, &sh)| sh)
        {
            std::mem::swap(&mut r.values, &mut s.values);
        }
    };
    swap(rows, statics);
    let out = f(rows);
    swap(rows, statics);
    out
}

impl TimingSets {
    /// Launches in one graph.
    pub fn launches_per_graph(&self) -> usize {
        self.rounds * self.sets.len()
    }

    /// Poisons every output, resets every in-out buffer of every set, reads
    /// every input into L2 where they all fit in it ([`warms_l2`]) and
    /// overwrites every SM's shared memory (before every replay, timed or
    /// not). Shared memory: a replay reads the same inputs as the one before
    /// it, and on the H100 a block found in its uninitialised shared memory
    /// what the same block wrote there one replay earlier, where a kernel
    /// could keep its answers and copy them back instead of computing them.
    /// L2: candidate and catalog replays alternate, so without the warm-up a
    /// kernel could end its replay by evicting the inputs (prefetching other
    /// memory costs it little) and send the catalog's next replay to DRAM.
    pub fn reset_outputs(&mut self, dev: &Device) -> Result<(), Failure> {
        for set in self.sets.iter_mut() {
            set.reset_outputs(&dev.gpu)
                .map_err(|e| Failure::machinery("resetting timing outputs", e))?;
        }
        if self.warms_l2 {
            for set in &self.sets {
                for (at, len) in set.input_ranges() {
                    dev.probes
                        .warm_l2(&dev.gpu, at, len)
                        .map_err(|e| Failure::machinery("warming L2 with the inputs", e))?;
                }
            }
        }
        dev.probes
            .clear_shared(&dev.gpu, SHARED_MEMORY_FILL)
            .map_err(|e| Failure::machinery("clearing shared memory between replays", e))
    }
}

/// How many distinct input sets to time `t` rows with, and how many passes a
/// graph of at least [`LAUNCHES_PER_GRAPH`] launches makes over them.
pub fn set_counts(per_set: u64, l2: u64, free: u64) -> (usize, usize, bool) {
    let per_set = per_set.max(1);
    let launches = LAUNCHES_PER_GRAPH as u64;
    let n = if per_set * 2 >= l2 {
        // Beyond L2: rotate enough to defeat the cache, and more while the
        // budget allows, so consecutive launches never share inputs; at
        // least one set per input distribution, so the largest shapes are
        // checked with every one of them.
        (L2_MULTIPLE * l2)
            .div_ceil(per_set)
            .max(DISTINCT_INPUT_BUDGET / per_set)
            .clamp(Distribution::ALL.len() as u64, launches)
    } else {
        // Fits in L2 (as during decode): as many as stay within half of it,
        // at least two so no launch reads the inputs the previous one read.
        ((l2 / 2) / per_set).clamp(2, launches)
    };
    let n = n.min((free / 4 / per_set).max(1));
    let rounds = launches.div_ceil(n).max(1);
    (n as usize, rounds as usize, n > 1 && n * per_set >= 2 * l2)
}

/// Whether the judge reads a graph's inputs (`input_bytes` over all its
/// sets, every row window) into an L2 of `l2` bytes before every replay:
/// when they fit, a replay is meant to find them there whatever ran before.
/// Past that, a replay streams them from DRAM anyway.
pub fn warms_l2(input_bytes: u64, l2: u64) -> bool {
    input_bytes <= l2
}

/// The set counts for a shape whose rows cannot be split into one block per
/// pass ([`OpProblem::rows_windowable`]): one set per launch, as memory
/// allows (past that, passes repeat their sets).
pub fn sets_without_repeats(per_set: u64, l2: u64, free: u64) -> (usize, usize, bool) {
    let per_set = per_set.max(1);
    let launches = LAUNCHES_PER_GRAPH as u64;
    let n = launches.min((free / 4 / per_set).max(1));
    let rounds = launches.div_ceil(n).max(1);
    (n as usize, rounds as usize, n > 1 && n * per_set >= 2 * l2)
}

/// Allocates and fills the timing sets of `t` rows.
pub fn timing_sets(
    dev: &Device,
    problem: &OpProblem,
    t: usize,
    seed: u64,
) -> Result<TimingSets, Failure> {
    let gpu = &dev.gpu;
    let (free, _) = gpu
        .memory_info()
        .map_err(|e| Failure::machinery("memory info", e))?;
    let (per_set, l2) = (problem.bytes_moved(t), gpu.facts().l2_bytes);
    let (mut n, mut rounds, mut rotated) = set_counts(per_set, l2, free as u64);
    if rounds > 1 && !problem.rows_windowable(t, rounds) {
        // A second pass over a set would repeat its rows (attention, the short
        // convolution): one set per launch instead, so no launch of a graph finds
        // what another launch left on chip for the same inputs.
        (n, rounds, rotated) = sets_without_repeats(per_set, l2, free as u64);
    }
    // Each pass over a set reads its own rows (the weights shared): a launch
    // never finds an earlier launch's answer to its very inputs in another
    // output group, whatever it reads.
    let windows = if rounds > 1 && problem.rows_windowable(t, rounds) {
        rounds
    } else {
        1
    };
    let row_shaped: Vec<bool> = problem
        .buffers(t)
        .iter()
        .zip(problem.row_layout())
        .map(|(b, per_row)| b.role == Role::Input && per_row.is_some())
        .collect();
    let mut sets = Vec::with_capacity(n);
    let mut inputs = Vec::with_capacity(n);
    // The static buffers are drawn once and uploaded into every set's own
    // allocation: distinct addresses keep the rotation cold in L2, and the
    // rows (and so every launch's answer) still differ per set.
    let is_static = problem.static_inputs();
    let mut statics: Vec<HostBuffer> = Vec::new();
    for i in 0..n {
        let mut set = DeviceSet::windowed(gpu, problem.buffers(t), t, &row_shaped, windows)
            .map_err(|e| Failure::machinery("allocating timing buffers", e))?
            .with_scalars(problem.scalar_args());
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(0x5151 + i as u64));
        let dist = Distribution::ALL[i % Distribution::ALL.len()];
        let mut host = if i == 0 {
            let mut full = problem.timing_inputs(t * windows, dist, &mut rng);
            statics = take_statics(&mut full, &is_static);
            full
        } else {
            problem.timing_rows(t * windows, dist, &mut rng)
        };
        with_statics(&mut host, &mut statics, |full| set.upload_inputs(gpu, full))
            .map_err(|e| Failure::machinery("uploading timing inputs", e))?;
        sets.push(set);
        inputs.push(host);
    }
    // Allocation order says nothing about launch order: a kernel cannot find
    // the buffer a later launch over the same inputs will write (to fill it
    // in advance) by address arithmetic. The extra output groups are
    // allocated interleaved across sets in a secret order, each set's groups
    // are then shuffled, and so are the sets.
    let mut order = ChaCha8Rng::seed_from_u64(seed ^ 0x0bad_5eed);
    let mut extra: Vec<usize> = (0..n).flat_map(|i| vec![i; rounds - 1]).collect();
    extra.shuffle(&mut order);
    for i in extra {
        sets[i]
            .add_output_group(gpu)
            .map_err(|e| Failure::machinery("allocating timing outputs", e))?;
    }
    for set in sets.iter_mut() {
        set.shuffle_groups(&mut order);
    }
    let launches: Vec<u64> = inputs
        .iter()
        .flat_map(|host| (0..windows).map(move |w| problem.bytes_moved_on(t, host, w)))
        .collect();
    let bytes_per_launch = launches.iter().sum::<u64>() / launches.len().max(1) as u64;
    let mut paired: Vec<(DeviceSet, Vec<HostBuffer>)> = sets.into_iter().zip(inputs).collect();
    paired.shuffle(&mut order);
    let (sets, inputs): (Vec<_>, Vec<_>) = paired.into_iter().unzip();
    let input_bytes = sets
        .iter()
        .flat_map(|s| s.input_ranges())
        .map(|(_, len)| len)
        .sum();
    Ok(TimingSets {
        sets,
        inputs,
        rounds,
        windows,
        rotated_beyond_l2: rotated,
        warms_l2: warms_l2(input_bytes, l2),
        bytes_per_launch,
        statics,
        references: vec![None; n],
    })
}
/// Captures `rounds` passes over every set as one graph; pass `r` writes
/// output group `r`, so no two launches share an output.
fn capture(
    dev: &Device,
    loaded: &Loaded,
    dims: &LaunchDims,
    sets: &TimingSets,
) -> Result<Graph, CudaError> {
    capture_first(dev, loaded, dims, sets, usize::MAX)
}

/// The order a timing graph's launches run in, as `(pass, set)`: pass by
/// pass, every set in each (pass `r` over a set writes its output group `r`).
pub(super) fn launch_order(rounds: usize, sets: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..rounds).flat_map(move |round| (0..sets).map(move |s| (round, s)))
}

/// Captures the first `launches` launches of [`capture`]'s graph, in
/// [`launch_order`].
pub(super) fn capture_first(
    dev: &Device,
    loaded: &Loaded,
    dims: &LaunchDims,
    sets: &TimingSets,
    launches: usize,
) -> Result<Graph, CudaError> {
    dev.gpu.capture(|| {
        for (round, s) in launch_order(sets.rounds, sets.sets.len()).take(launches) {
            launch(dev, loaded, dims, &sets.sets[s], round)?;
        }
        Ok(())
    })
}

/// What a timing loop lets look at its sets between replays, outside the
/// timed region; by default, nothing.
pub trait ReplayWatch {
    /// After the warm-up replays, before the first timed one; `graphs` are
    /// the kernels' timing graphs, in the order they are timed.
    fn warmed_up(
        &mut self,
        _dev: &Device,
        _sets: &mut TimingSets,
        _graphs: &[Graph],
    ) -> Result<(), Failure> {
        Ok(())
    }

    /// After timed replay `replay` of kernel `kernel`, its outputs still in
    /// the sets.
    fn replayed(
        &mut self,
        _dev: &Device,
        _sets: &mut TimingSets,
        _kernel: usize,
        _replay: usize,
    ) -> Result<(), Failure> {
        Ok(())
    }
}

/// A timing loop that only times (the catalog benchmark).
pub struct TimeOnly;

impl ReplayWatch for TimeOnly {}

/// Times `kernels` on `t` rows, interleaved replay by replay so drift of the
/// machine hits them alike; per-launch median, p10, p90 for each. Every
/// replay, timed or not, starts from poisoned outputs, exactly like a
/// verification launch, and `watch` sees the sets after the warm-up and after
/// every timed replay (outside the timed region). The first kernel's failures
/// are the candidate's; the others' are the machinery's.
pub fn time_interleaved(
    dev: &Device,
    problem: &OpProblem,
    kernels: &[&Loaded],
    sets: &mut TimingSets,
    warmup: u32,
    max_reps: u32,
    watch: &mut dyn ReplayWatch,
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
    let per_graph = sets.launches_per_graph() as f64;
    let mut graphs = Vec::new();
    for (i, k) in kernels.iter().enumerate() {
        let dims = launch_dims(dev, problem, k, t)?;
        graphs.push(
            capture(dev, k, &dims, sets)
                .map_err(|e| blame(i, Stage::Timing, format!("capturing launches at T={t}"), e))?,
        );
    }
    for _ in 0..warmup.max(1) {
        for (i, g) in graphs.iter().enumerate() {
            sets.reset_outputs(dev)?;
            g.replay()
                .map_err(|e| blame(i, Stage::Timing, "warm-up".into(), e))?;
        }
    }
    gpu.synchronize()
        .map_err(|e| Failure::cuda(Stage::Timing, &format!("warm-up at T={t}"), e))?;
    kernels[0].check_globals(dev)?;
    watch.warmed_up(dev, sets, &graphs)?;
    let rule = StoppingRule {
        max_reps: max_reps.max(10) as usize,
        ..StoppingRule::default()
    };
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); graphs.len()];
    loop {
        for (i, g) in graphs.iter().enumerate() {
            sets.reset_outputs(dev)?;
            let us = gpu
                .time_us(|| g.replay())
                .map_err(|e| blame(i, Stage::Timing, format!("timed replay at T={t}"), e))?;
            samples[i].push(us / per_graph);
            watch.replayed(dev, sets, i, samples[i].len() - 1)?;
        }
        kernels[0].check_globals(dev)?;
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

/// Replays `kernel`'s timing graph once more, from poisoned outputs exactly
/// as a timed replay, checks what every launch wrote ([`check_written`]),
/// then that no input changed, no guard zone was written and no module
/// global changed.
pub fn check_timed_output(
    dev: &Device,
    problem: &OpProblem,
    kernel: &Loaded,
    sets: &mut TimingSets,
    seed: u64,
) -> Result<(), Failure> {
    let t = sets.sets.first().map_or(0, |s| s.t);
    let dims = launch_dims(dev, problem, kernel, t)?;
    let graph = capture(dev, kernel, &dims, sets)
        .map_err(|e| Failure::cuda(Stage::Timing, "capturing the checked replay", e))?;
    replay_checked(dev, problem, &graph, sets, seed, "a checked replay")?;
    check_untouched(dev, &mut sets.sets, "a timed launch")?;
    kernel.check_globals(dev)
}

/// Replays a timing graph from poisoned outputs, exactly as a timed replay,
/// and checks what it wrote ([`check_written`]; `what` names the replay).
pub fn replay_checked(
    dev: &Device,
    problem: &OpProblem,
    graph: &Graph,
    sets: &mut TimingSets,
    seed: u64,
    what: &str,
) -> Result<(), Failure> {
    let t = sets.sets.first().map_or(0, |s| s.t);
    sets.reset_outputs(dev)?;
    graph
        .replay()
        .map_err(|e| Failure::cuda(Stage::Timing, what, e))?;
    dev.gpu
        .synchronize()
        .map_err(|e| Failure::cuda(Stage::Timing, &format!("{what} at T={t}"), e))?;
    check_written(dev, problem, sets, seed, what)
}

/// Checks what the last replay of a timing graph wrote (`what` names that
/// replay in a failure): a random sample of rows of every output group
/// (every input set, every distribution) and one group in full. Rows and the
/// full group are drawn from `seed` after the kernel ran, so a kernel cannot
/// know which of its outputs count.
pub fn check_written(
    dev: &Device,
    problem: &OpProblem,
    sets: &mut TimingSets,
    seed: u64,
    what: &str,
) -> Result<(), Failure> {
    let gpu = &dev.gpu;
    let t = sets.sets.first().map_or(0, |s| s.t);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7173_ed0c);
    let full = (
        rng.gen_range(0..sets.sets.len()),
        rng.gen_range(0..sets.rounds),
    );
    // Rows can be sampled only when every written buffer grows with T (an
    // in-out state does not).
    let row_shaped = problem
        .buffers(t)
        .iter()
        .zip(problem.row_layout())
        .all(|(b, per_row)| !b.role.is_written() || (t > 0 && per_row.is_some()));
    let all_rows = t * sets.windows;
    for si in 0..sets.sets.len() {
        if sets.references[si].is_none() {
            let reference = with_statics(&mut sets.inputs[si], &mut sets.statics, |full| {
                problem.reference(all_rows, full)
            });
            sets.references[si] = Some(reference);
        }
        for group in 0..sets.rounds {
            let whole = (si, group) == full || t <= SAMPLED_ROWS || !row_shaped;
            let reference = sets.references[si]
                .as_ref()
                .ok_or_else(|| Failure::machinery("reference", "missing"))?;
            // The group's rows of the set's reference (all of it when the set
            // has one window).
            let first = sets.sets[si].window_of(group) * t;
            let windowed;
            let reference = if sets.windows > 1 {
                windowed =
                    pick_reference(reference, all_rows, &(first..first + t).collect::<Vec<_>>());
                &windowed
            } else {
                reference
            };
            let wrong = |r: String| {
                Failure::new(
                    Stage::Verify,
                    format!(
                        "output of a timed launch at T={t} is wrong ({what}, input set {si}, pass {group}): {r}"
                    ),
                )
            };
            if whole {
                let got = sets.sets[si]
                    .download_outputs(gpu, group)
                    .map_err(|e| Failure::cuda(Stage::Timing, "reading timed outputs", e))?;
                check_outputs(problem, t, &got, reference, None).map_err(wrong)?;
            } else {
                let mut rows = rand::seq::index::sample(&mut rng, t, SAMPLED_ROWS).into_vec();
                rows.sort_unstable();
                let got = sets.sets[si]
                    .download_output_rows(gpu, group, &rows)
                    .map_err(|e| Failure::cuda(Stage::Timing, "reading timed outputs", e))?;
                let picked = pick_reference(reference, t, &rows);
                check_outputs(problem, rows.len(), &got, &picked, None)
                    .map_err(|r| {
                        wrong(format!(
                            "checking the sampled rows {rows:?} (row i below is the i-th of them, T counts them): {r}"
                        ))
                    })?;
            }
        }
    }
    Ok(())
}

/// The listed rows of a reference of `t` rows, in the order listed.
fn pick_reference(reference: &Reference, t: usize, rows: &[usize]) -> Reference {
    Reference {
        outputs: reference
            .outputs
            .iter()
            .map(|r| pick_rows(r, t, rows))
            .collect(),
        selection_scores: reference
            .selection_scores
            .as_ref()
            .map(|v| pick_row_values(v, t, rows)),
        expert_weights: reference
            .expert_weights
            .as_ref()
            .map(|v| pick_row_values(v, t, rows)),
    }
}

/// The listed rows of a reference buffer of `t` rows, concatenated.
fn pick_rows(buf: &HostBuffer, t: usize, rows: &[usize]) -> HostBuffer {
    HostBuffer {
        kind: buf.kind,
        values: pick_row_values(&buf.values, t, rows),
    }
}

/// The listed rows of `values` (`t` rows), concatenated.
fn pick_row_values(values: &[f64], t: usize, rows: &[usize]) -> Vec<f64> {
    let n = row_len(values.len(), t);
    rows.iter()
        .filter(|&&r| (r + 1) * n <= values.len())
        .flat_map(|&r| values[r * n..(r + 1) * n].iter().copied())
        .collect()
}

/// Checks that no input of `sets` changed and no guard zone was written;
/// restores them for the next kernel before reporting.
pub fn check_untouched(dev: &Device, sets: &mut [DeviceSet], when: &str) -> Result<(), Failure> {
    let gpu = &dev.gpu;
    for set in sets.iter_mut() {
        let t = set.t;
        let mutated = set
            .mutated_input(gpu, &dev.probes)
            .map_err(|e| Failure::cuda(Stage::Verify, "comparing inputs", e))?;
        let guard = set
            .damaged_guard(gpu, &dev.probes)
            .map_err(|e| Failure::cuda(Stage::Verify, "reading guard zones", e))?;
        if mutated.is_some() || guard.is_some() {
            set.restore_inputs(gpu)
                .map_err(|e| Failure::machinery("restoring inputs", e))?;
        }
        if let Some((name, byte)) = mutated {
            return Err(Failure::new(
                Stage::Verify,
                format!("T={t}: {when} modified its input `{name}` (first changed byte {byte}); inputs must be read-only"),
            ));
        }
        if let Some(what) = guard {
            return Err(Failure::new(
                Stage::Verify,
                format!("T={t}: {when}: {what}; a kernel may write only inside its outputs"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// A flat head 6 % off hides under the slack of a peaked head in the same
    /// token row; scaled per head, it fails and the error names it.
    #[test]
    fn attention_heads_are_each_scaled_by_their_own_magnitude() {
        use crate::targets::{ElemKind, HostBuffer, Reference};
        let target = crate::targets::find("lfm2_decode_attention").expect("target");
        let problem = &target.problem;
        let t = 1;
        let len = problem
            .buffers(t)
            .into_iter()
            .find(|b| b.name == "out")
            .expect("out")
            .len;
        let kind = ElemKind::Dtype(problem.dtype());
        let dv = problem.tolerance_group("out").expect("per head");
        assert_eq!(len / dv, 32);
        // Head 0 peaked (values near 2), every other head flat (near 0.05).
        let reference: Vec<f64> = (0..len)
            .map(|i| {
                kind.round(if i < dv {
                    2.0
                } else {
                    0.05 + 1e-4 * (i % 7) as f64
                })
            })
            .collect();
        let mut got = reference.clone();
        for v in &mut got[5 * dv..6 * dv] {
            *v = kind.round(*v * 1.06);
        }
        let r = Reference {
            outputs: vec![HostBuffer {
                kind,
                values: reference.clone(),
            }],
            selection_scores: None,
            expert_weights: None,
        };
        let out = |values: Vec<f64>| vec![HostBuffer { kind, values }];
        super::check_outputs(problem, t, &out(reference.clone()), &r, None).expect("exact passes");
        let err = super::check_outputs(problem, t, &out(got.clone()), &r, None)
            .expect_err("a flat head 6 % off fails");
        assert!(err.contains("row 5"), "{err}");
        // The same error against the whole row's scale would have passed.
        crate::tolerance::compare_rows(
            &got,
            &reference,
            len,
            None,
            &super::tolerance(problem, kind),
        )
        .expect("hidden by the peaked head at row scale");
    }

    /// What an honest kernel computes, as the offline family and the catalog
    /// do: f32 dot products in 8-wide chunks summed lane by lane, an f32
    /// softmax, the PV sum split over 32 row groups, one rounding at the end.
    fn attention_in_f32(
        problem: &crate::targets::OpProblem,
        t: usize,
        inputs: &[crate::targets::HostBuffer],
    ) -> Vec<f64> {
        let crate::targets::OpProblem::DecodeAttention { config, past } = problem else {
            panic!("not attention");
        };
        let s = config.shape;
        let (q, k, v) = (&inputs[0].values, &inputs[1].values, &inputs[2].values);
        let kind = crate::targets::ElemKind::Dtype(config.dtype);
        let mut out = vec![0f64; t * s.qh * s.dv];
        for row in 0..t {
            let n = (past + row + 1).min(s.s_max);
            for j in 0..s.qh {
                let g = j / (s.qh / s.kvh);
                let qr = &q[(row * s.qh + j) * s.dqk..][..s.dqk];
                let scores: Vec<f32> = (0..n)
                    .map(|p| {
                        let kr = &k[(g * s.s_max + p) * s.dqk..][..s.dqk];
                        let mut lanes = [0f32; 8];
                        for (c, (qc, kc)) in qr.chunks(8).zip(kr.chunks(8)).enumerate() {
                            for (a, b) in qc.iter().zip(kc) {
                                lanes[c % 8] = (*a as f32).mul_add(*b as f32, lanes[c % 8]);
                            }
                        }
                        lanes.iter().sum::<f32>() * s.scale as f32
                    })
                    .collect();
                let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|x| (x - m).exp()).collect();
                let l: f32 = e.iter().sum();
                for d in 0..s.dv {
                    let mut parts = [0f32; 32];
                    for (p, w) in e.iter().enumerate() {
                        let val = v[(g * s.s_max + p) * s.dv + d] as f32;
                        parts[p % 32] = w.mul_add(val, parts[p % 32]);
                    }
                    let sum: f32 = parts.iter().sum();
                    out[(row * s.qh + j) * s.dv + d] = kind.round((sum / l) as f64);
                }
            }
        }
        out
    }

    /// Scaling each head by itself must not fail an honest kernel: the f32
    /// emulation passes on every distribution and on the cache fills
    /// verification draws, for every head shape a decode-attention target
    /// has (a `_long` target is its short twin's build at another fill).
    #[test]
    fn honest_f32_attention_passes_the_per_head_tolerance() {
        use crate::targets::{Distribution, HostBuffer};
        use rand::SeedableRng;
        use rand_chacha::ChaCha8Rng;
        use rayon::prelude::*;
        let targets: Vec<_> = crate::targets::all()
            .into_iter()
            .filter(|t| t.name.ends_with("_decode_attention"))
            .collect();
        assert_eq!(targets.len(), 4);
        let cases: Vec<(usize, usize, usize)> = (0..targets.len())
            .flat_map(|ti| {
                [1usize, 3]
                    .into_iter()
                    .enumerate()
                    .flat_map(move |(trial, t)| {
                        (0..Distribution::ALL.len()).map(move |di| (ti, trial * 5 + di, t))
                    })
            })
            .collect();
        cases.par_iter().for_each(|&(ti, trial, t)| {
            let target = &targets[ti];
            let dist = Distribution::ALL[trial % Distribution::ALL.len()];
            let mut rng = ChaCha8Rng::seed_from_u64(trial as u64 * 7 + ti as u64);
            // Trials 0..4 meet an empty, the timed, a full and a drawn fill.
            let problem = target.problem.for_verification(t, trial, &mut rng);
            let inputs = problem.inputs(t, dist, &mut rng);
            let reference = problem.reference(t, &inputs);
            let got = vec![HostBuffer {
                kind: reference.outputs[0].kind,
                values: attention_in_f32(&problem, t, &inputs),
            }];
            super::check_outputs(&problem, t, &got, &reference, None).unwrap_or_else(|e| {
                panic!(
                    "{} {dist:?} T={t} {:?}: {e}",
                    target.name,
                    problem.scalar_args()
                )
            });
        });
        assert_eq!(cases.len(), 4 * 2 * 5);
    }

    /// The catalog kernel's math in f32 (`rsqrtf` as an f32 reciprocal
    /// square root, HF's roundings), with `tamper` applied to its outputs
    /// `(q_out, k_cache, v_cache)` before they are returned.
    fn qk_norm_rope_in_f32(
        problem: &crate::targets::OpProblem,
        t: usize,
        inputs: &[crate::targets::HostBuffer],
        tamper: impl Fn(&mut [Vec<f64>; 3]),
    ) -> Vec<crate::targets::HostBuffer> {
        let crate::targets::OpProblem::QkNormRopeCache(c) = problem else {
            panic!("not qk_norm_rope_cache");
        };
        let s = c.shape;
        let kind = crate::targets::ElemKind::Dtype(c.dtype);
        let rd = |v: f32| kind.round(v as f64) as f32;
        let v = |i: usize| &inputs[i].values;
        let (qkv, qw, kw, cos, sin, pos) = (v(0), v(1), v(2), v(3), v(4), v(5));
        let (d, half, nh) = (s.d, s.d / 2, s.qh + 2 * s.kvh);
        let mut out = [vec![0.0; t * s.qh * d], v(6).clone(), v(7).clone()];
        for row in 0..t {
            let p = pos[row] as usize;
            for h in 0..nh {
                let x: Vec<f32> = qkv[(row * nh + h) * d..][..d]
                    .iter()
                    .map(|&a| a as f32)
                    .collect();
                if h >= s.qh + s.kvh {
                    let g = h - s.qh - s.kvh;
                    for (i, xi) in x.iter().enumerate() {
                        out[2][(g * s.s_max + p) * d + i] = *xi as f64;
                    }
                    continue;
                }
                let w = if h < s.qh { qw } else { kw };
                let ss: f32 = x.iter().map(|a| a * a).sum();
                let r = 1.0 / (ss / d as f32 + s.eps as f32).sqrt();
                let n: Vec<f32> = (0..d).map(|i| rd(rd(x[i] * r) * w[i] as f32)).collect();
                let (dst, base) = if h < s.qh {
                    (0, (row * s.qh + h) * d)
                } else {
                    (1, ((h - s.qh) * s.s_max + p) * d)
                };
                for i in 0..half {
                    let (cc, sn) = (cos[p * half + i] as f32, sin[p * half + i] as f32);
                    out[dst][base + i] = rd(rd(n[i] * cc) - rd(n[i + half] * sn)) as f64;
                    out[dst][base + i + half] = rd(rd(n[i + half] * cc) + rd(n[i] * sn)) as f64;
                }
            }
        }
        tamper(&mut out);
        out.into_iter()
            .map(|values| crate::targets::HostBuffer { kind, values })
            .collect()
    }

    /// The KV-cache writer's checks: an honest f32 kernel passes on every
    /// distribution; one that also touches a row no token owns, or writes
    /// k at the wrong position, or rotates q by the wrong pair, fails.
    #[test]
    fn the_cache_writer_is_held_to_the_rows_it_owns() {
        use crate::targets::Distribution;
        use rand::SeedableRng;
        use rand_chacha::ChaCha8Rng;
        for name in ["qwen3_qk_norm_rope_cache", "lfm2_qk_norm_rope_cache"] {
            let problem = &crate::targets::find(name).expect("target").problem;
            let crate::targets::OpProblem::QkNormRopeCache(c) = problem else {
                panic!("{name}");
            };
            let d = c.shape.d;
            for (di, &dist) in Distribution::ALL.iter().enumerate() {
                for t in [1usize, 4, 5] {
                    let mut rng = ChaCha8Rng::seed_from_u64(di as u64 * 31 + t as u64);
                    let inputs = problem.inputs(t, dist, &mut rng);
                    let reference = problem.reference(t, &inputs);
                    let check = |got: &[crate::targets::HostBuffer]| {
                        super::check_outputs(problem, t, got, &reference, None)
                    };
                    let honest = qk_norm_rope_in_f32(problem, t, &inputs, |_| {});
                    check(&honest).unwrap_or_else(|e| panic!("{name} {dist:?} T={t}: {e}"));
                    // Skip the tiny draws for the tampering cases: every value is
                    // near zero there, and zeroes compare equal to zeroes.
                    if dist == Distribution::Tiny {
                        continue;
                    }
                    let p0 = inputs[5].values[0] as usize;
                    let free = (0..c.shape.s_max)
                        .find(|p| !inputs[5].values.contains(&(*p as f64)))
                        .expect("a free row");
                    let scribble = qk_norm_rope_in_f32(problem, t, &inputs, |o| {
                        for x in &mut o[1][free * d..(free + 1) * d] {
                            *x = 0.0;
                        }
                    });
                    assert!(
                        check(&scribble).is_err(),
                        "{name} {dist:?} T={t}: a foreign row"
                    );
                    let shifted = qk_norm_rope_in_f32(problem, t, &inputs, |o| {
                        let row: Vec<f64> = o[1][p0 * d..(p0 + 1) * d].to_vec();
                        o[1][free * d..(free + 1) * d].copy_from_slice(&row);
                        o[1][p0 * d..(p0 + 1) * d]
                            .copy_from_slice(&inputs[6].values[p0 * d..(p0 + 1) * d]);
                    });
                    assert!(
                        check(&shifted).is_err(),
                        "{name} {dist:?} T={t}: k at the wrong row"
                    );
                    let swapped = qk_norm_rope_in_f32(problem, t, &inputs, |o| {
                        o[0][..d].rotate_left(d / 2);
                    });
                    assert!(
                        check(&swapped).is_err(),
                        "{name} {dist:?} T={t}: halves swapped"
                    );
                }
            }
        }
    }

    #[test]
    fn statics_are_lent_to_a_set_and_taken_back() {
        use crate::targets::{ElemKind, HostBuffer};
        let b = |v: &[f64]| HostBuffer {
            kind: ElemKind::F32,
            values: v.to_vec(),
        };
        let mut rows = vec![b(&[1.0, 2.0]), b(&[]), b(&[3.0])];
        let mut statics = vec![b(&[]), b(&[7.0, 8.0, 9.0]), b(&[])];
        let seen = super::with_statics(&mut rows, &mut statics, |full| {
            full.iter().map(|h| h.values.clone()).collect::<Vec<_>>()
        });
        assert_eq!(seen, [vec![1.0, 2.0], vec![7.0, 8.0, 9.0], vec![3.0]]);
        assert!(rows[1].values.is_empty(), "the set keeps no copy");
        assert_eq!(statics[1].values, [7.0, 8.0, 9.0], "the statics came back");
        // Twice in a row: nothing is lost on the way back.
        super::with_statics(&mut rows, &mut statics, |_| ());
        assert_eq!(statics[1].values, [7.0, 8.0, 9.0]);
    }

    /// Only model-sized weights are shared between a candidate's
    /// verification trials: exactly the expert targets'. A trial that shares
    /// them sees full inputs of the shape's sizes, the weights of the first
    /// trial and rows of its own.
    #[test]
    fn only_expert_weights_are_shared_between_verification_trials() {
        use crate::targets::{self, Distribution};
        use crate::worker::evaluate::SHARED_STATICS_MIN_BYTES;
        use rand::SeedableRng;
        use rand_chacha::ChaCha8Rng;
        let sharing: Vec<String> = targets::all()
            .into_iter()
            .filter(|t| t.problem.static_input_bytes() >= SHARED_STATICS_MIN_BYTES)
            .map(|t| t.name)
            .collect();
        let experts: Vec<String> = targets::all()
            .into_iter()
            .map(|t| t.name)
            .filter(|n| n.contains("_moe_expert_"))
            .collect();
        assert_eq!(sharing, experts);
        // A shared trial draws only rows, at the shape's sizes, fresh per trial; the weights
        // (drawn once, lent by `with_statics`, tested above) fill the empty buffers.
        let target = targets::find("lfm2_moe_expert_swiglu").expect("target");
        let p = &target.problem;
        let t = 5;
        let is_static = p.static_inputs();
        assert!(is_static.iter().any(|s| *s) && is_static.iter().any(|s| !*s));
        let specs: Vec<_> = p
            .buffers(t)
            .into_iter()
            .filter(|b| b.role.is_read())
            .collect();
        let draw = |seed| {
            p.input_rows(
                t,
                Distribution::ALL[1],
                &mut ChaCha8Rng::seed_from_u64(seed),
            )
        };
        let (one, two) = (draw(1), draw(2));
        assert_eq!(one.len(), specs.len());
        for (((a, b), spec), st) in one.iter().zip(&two).zip(&specs).zip(&is_static) {
            if *st {
                assert!(
                    a.values.is_empty(),
                    "{}: a shared trial draws no weights",
                    spec.name
                );
            } else {
                assert_eq!(a.values.len(), spec.len, "{}", spec.name);
                assert_ne!(
                    a.values, b.values,
                    "{}: rows are fresh every trial",
                    spec.name
                );
            }
        }
    }

    use super::*;

    const L2: u64 = 50 << 20;

    #[test]
    fn small_shapes_get_distinct_sets_that_stay_in_l2() {
        // A decode-sized shape: every launch of the graph reads its own inputs.
        let (n, rounds, rotated) = set_counts(8 << 10, L2, 80 << 30);
        assert_eq!((n, rounds, rotated), (LAUNCHES_PER_GRAPH, 1, false));
        // A mid-sized shape: as many as fit in half of L2, never fewer than two.
        let (n, rounds, rotated) = set_counts(10 << 20, L2, 80 << 30);
        assert_eq!((n, rounds, rotated), (2, 10, false));
        assert!(n as u64 * (10 << 20) <= L2);
    }

    #[test]
    fn shapes_whose_rows_cannot_be_windowed_get_a_set_per_launch() {
        // A long-context attention shape (2 MiB a set): half of L2 holds a few
        // sets, so a graph would pass over each more than once.
        let (_, rounds, _) = set_counts(2 << 20, L2, 80 << 30);
        assert!(rounds > 1);
        let (n, rounds, _) = sets_without_repeats(2 << 20, L2, 80 << 30);
        assert_eq!((n, rounds), (LAUNCHES_PER_GRAPH, 1));
        // Memory still bounds it.
        let (n, rounds, _) = sets_without_repeats(1 << 30, L2, 8 << 30);
        assert_eq!((n, rounds), (2, LAUNCHES_PER_GRAPH / 2));
    }

    #[test]
    fn large_shapes_rotate_beyond_l2_with_every_distribution() {
        // rmsnorm at T=4096 (32 MiB): the distinct-input budget covers 8 sets.
        let (n, rounds, rotated) = set_counts(32 << 20, L2, 80 << 30);
        assert_eq!((n, rounds, rotated), (8, 3, true));
        assert!(n * rounds >= LAUNCHES_PER_GRAPH);
        // A 150 MiB shape still gets one set per distribution.
        let (n, _, rotated) = set_counts(150 << 20, L2, 80 << 30);
        assert_eq!((n, rotated), (Distribution::ALL.len(), true));
        // Memory bounds the count before anything else.
        let (n, _, _) = set_counts(1 << 30, L2, 4 << 30);
        assert_eq!(n, 1);
    }

    #[test]
    fn inputs_are_read_into_l2_before_a_replay_only_where_they_fit() {
        // Decode-sized sets (20 of 8 KiB): read into L2 before every replay.
        assert!(warms_l2(20 * (8 << 10), L2));
        assert!(warms_l2(L2, L2));
        // Sets rotated beyond L2 stream from DRAM whatever ran before.
        assert!(!warms_l2(3 * L2, L2));
        assert!(!warms_l2(L2 + 1, L2));
    }

    #[test]
    fn a_graph_launches_pass_by_pass_over_every_set() {
        let order: Vec<_> = launch_order(2, 3).collect();
        assert_eq!(order, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
    }

    #[test]
    fn rows_are_the_leading_dimension() {
        assert_eq!(row_len(16 * 2048, 16), 2048);
        assert_eq!(row_len(7, 2), 7);
        assert_eq!(row_len(0, 3), 1);
    }
}
