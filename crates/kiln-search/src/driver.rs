//! The search loop: select parents by PUCT, ask the proposer for children
//! (concurrently for LLM backends), evaluate them (compiling in parallel,
//! timing serially in the GPU worker), and save the session after every
//! evaluation so a kill loses at most the candidate being evaluated.

use std::path::Path;

use crate::propose::{
    propose_many, BestSource, FailureNote, HardwareBrief, ParentBrief, ProposalRequest, Proposer,
    TargetBrief,
};
use crate::search::{select_batch_with, NewNode, Node, NodeId, NodeStatus, Tree};
use crate::session::{Opened, SearchConfig, Session, SessionError, SessionFile, SessionMeta};
use kiln_eval::candidate::launch_line;
use kiln_eval::evaluator::{CandidateEvaluator, DeviceSummary, EvaluatorError};
use kiln_eval::record::{EvalOutcome, EvalRecord, EvalStatus};
use kiln_eval::targets::Target;

/// Machinery failures in a row after which the search stops (the GPU or
/// the worker is broken, not the candidates).
const MAX_MACHINERY_FAILURES_IN_A_ROW: u32 = 3;
/// Concurrent proposer requests per step.
const MAX_PROPOSALS_IN_FLIGHT: usize = 4;

/// Why a search stopped with an error (the session on disk stays valid).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The evaluator could not start.
    #[error(transparent)]
    Evaluator(#[from] EvaluatorError),
    /// The session could not be opened or saved.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The target has no seed kernel.
    #[error("target `{0}` has no naive seed kernel to start from")]
    NoSeed(String),
    /// The search configuration is invalid.
    #[error("invalid search settings: {0}")]
    Config(String),
    /// The evaluator kept failing for reasons that are not the candidates'.
    #[error(
        "stopped after {count} evaluator failures in a row (not the candidates' fault): {last}"
    )]
    Machinery {
        /// How many.
        count: u32,
        /// The last reason.
        last: String,
    },
    /// The session's folder could not be created.
    #[error("cannot create the session folder {path}: {source}")]
    SessionDir {
        /// The folder.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Every proposer request of a step failed.
    #[error("the proposer failed: {0}")]
    Proposer(String),
}

/// What the search reports while it runs (progress bars, logs).
pub trait SearchObserver {
    /// The session is open: how it was opened and the step it resumes at.
    fn opened(&mut self, _session: &Session, _how: &Opened) {}
    /// A step begins.
    fn step(&mut self, _step: u32, _of: u32) {}
    /// One candidate was judged.
    fn evaluated(&mut self, _node: &Node, _session: &Session) {}
    /// Something worth a line (proposer trouble, duplicates).
    fn note(&mut self, _text: &str) {}
}

/// An observer that reports nothing.
pub struct Quiet;
impl SearchObserver for Quiet {}

/// How a search ended.
#[derive(Debug, Clone)]
pub struct SearchSummary {
    /// Candidates evaluated over the session's life.
    pub evaluated: u64,
    /// Candidates evaluated in this run.
    pub evaluated_now: u64,
    /// Best reward and its node.
    pub best: Option<(NodeId, f64)>,
    /// Steps done over the session's life.
    pub steps_done: u32,
}

/// Runs (or resumes) a search of `target` with `proposer`, saving to `session_path`.
#[allow(clippy::too_many_arguments)]
pub fn run_search(
    target: &Target,
    proposer: &dyn Proposer,
    evaluator: &mut dyn CandidateEvaluator,
    session_path: &Path,
    config: SearchConfig,
    seed: u64,
    force: bool,
    observer: &mut dyn SearchObserver,
) -> Result<SearchSummary, DriverError> {
    config.validate().map_err(DriverError::Config)?;
    let device = evaluator.device()?;
    let seed_source = target
        .seed_source()
        .ok_or_else(|| DriverError::NoSeed(target.name.clone()))?;
    let root = NewNode {
        source: seed_source.to_string(),
        launch_line: launch_of(seed_source),
        reasoning: "naive seed kernel".into(),
        proposer: "seed".into(),
    };
    let mut meta = SessionMeta::new(&target.name, proposer.name(), seed, config.clone());
    meta.model = proposer.model().to_string();
    fill_device(&mut meta, &device);
    let fresh = Session::new(meta, Tree::new(root, seed));
    if let Some(dir) = session_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| DriverError::SessionDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let (mut file, how) = SessionFile::open_or_create(session_path, fresh, force)?;
    {
        // A resumed search may be asked for more steps than it was started with.
        let s = file.session_mut();
        if config.steps > s.meta.config.steps {
            s.meta.config.steps = config.steps;
            s.finished = false;
        }
        fill_device(&mut s.meta, &device);
    }
    observer.opened(file.session(), &how);

    let mut state = LoopState {
        machinery_in_a_row: 0,
        evaluated_now: 0,
    };
    // Candidates planned before a kill (the root too, on a fresh session).
    evaluate_pending(target, evaluator, &mut file, &mut state, observer)?;

    loop {
        let (steps_done, steps) = {
            let m = &file.session().meta;
            (m.counters.steps_done, m.config.steps)
        };
        if steps_done >= steps {
            break;
        }
        observer.step(steps_done + 1, steps);
        let planned = plan_step(target, proposer, &device, &mut file, observer)?;
        // A step counts once planned: a resumed search evaluates what was
        // planned before the kill, then plans the next step, never this one again.
        file.session_mut().meta.counters.steps_done += 1;
        file.save()?;
        if planned == 0 {
            observer.note("the proposer had nothing new for any selected parent; stopping early");
            break;
        }
        evaluate_pending(target, evaluator, &mut file, &mut state, observer)?;
    }
    let session = file.session_mut();
    session.finished = true;
    file.save()?;
    let s = file.session();
    Ok(SearchSummary {
        evaluated: s.meta.counters.candidates_evaluated,
        evaluated_now: state.evaluated_now,
        best: s.meta.best.as_ref().map(|b| (b.node, b.reward)),
        steps_done: s.meta.counters.steps_done,
    })
}

struct LoopState {
    machinery_in_a_row: u32,
    evaluated_now: u64,
}

fn fill_device(meta: &mut SessionMeta, d: &DeviceSummary) {
    meta.gpu_name = d.gpu_name.clone();
    meta.gpu_arch = d.gpu_arch.clone();
    meta.driver_version = d.driver_version.clone();
    meta.nvrtc_version = d.nvrtc_version.clone();
}

fn launch_of(source: &str) -> String {
    launch_line(source).map(|l| l.spec).unwrap_or_default()
}

/// Selects parents, asks for children, adds the new ones as pending nodes and
/// saves; returns how many were added.
fn plan_step(
    target: &Target,
    proposer: &dyn Proposer,
    device: &DeviceSummary,
    file: &mut SessionFile,
    observer: &mut dyn SearchObserver,
) -> Result<usize, DriverError> {
    let (parents, requests) = {
        let s = file.session();
        let cfg = &s.meta.config;
        let parents = select_batch_with(
            &s.tree,
            cfg.parents_per_step as usize,
            cfg.c_puct,
            &cfg.widening,
        );
        proposer.observe_tree(&s.tree);
        let step = s.meta.counters.steps_done;
        let requests: Vec<ProposalRequest> = parents
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                request_for(
                    target,
                    device,
                    &s.tree,
                    p,
                    cfg.candidates_for(parents.len(), i),
                    step,
                    s.meta.seed,
                )
            })
            .collect();
        (parents, requests)
    };
    let answers = propose_many(proposer, requests, MAX_PROPOSALS_IN_FLIGHT);
    let mut added = 0;
    let mut errors = Vec::new();
    let session = file.session_mut();
    let step = session.meta.counters.steps_done;
    for (parent, answer) in parents.iter().zip(answers) {
        match answer {
            Ok(batch) => {
                session
                    .meta
                    .counters
                    .add_tokens(batch.usage.input_tokens, batch.usage.output_tokens);
                for r in &batch.rejected {
                    observer.note(&format!("proposer: {r}"));
                }
                let children = batch
                    .proposals
                    .into_iter()
                    .map(|p| {
                        (
                            NewNode {
                                launch_line: launch_of(&p.source),
                                source: p.source,
                                reasoning: p.reasoning,
                                proposer: proposer.name().to_string(),
                            },
                            p.prior,
                        )
                    })
                    .collect();
                for r in session.tree.add_children(*parent, children, step) {
                    match r {
                        Ok(_) => added += 1,
                        Err(crate::search::TreeError::Duplicate { .. }) => {
                            session.meta.counters.duplicates_skipped += 1
                        }
                        Err(e) => observer.note(&format!("could not add a candidate: {e}")),
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    for e in &errors {
        observer.note(&format!("proposer error: {e}"));
    }
    if added == 0 && !errors.is_empty() && errors.len() == parents.len() {
        file.save()?;
        return Err(DriverError::Proposer(errors.join("; ")));
    }
    file.save()?;
    Ok(added)
}

/// Evaluates every pending node, saving after each.
fn evaluate_pending(
    target: &Target,
    evaluator: &mut dyn CandidateEvaluator,
    file: &mut SessionFile,
    state: &mut LoopState,
    observer: &mut dyn SearchObserver,
) -> Result<(), DriverError> {
    let pending = file.session().tree.pending();
    if pending.is_empty() {
        return Ok(());
    }
    let sources: Vec<String> = pending
        .iter()
        .filter_map(|id| file.session().tree.get(*id).map(|n| n.source.clone()))
        .collect();
    let mut result: Result<(), DriverError> = Ok(());
    evaluator.evaluate_each(target, &sources, &mut |i, outcome| {
        if result.is_err() {
            return;
        }
        result = record(file, pending[i], outcome, state, observer);
    });
    result
}

/// Records one outcome in the tree and saves.
fn record(
    file: &mut SessionFile,
    id: NodeId,
    outcome: EvalOutcome,
    state: &mut LoopState,
    observer: &mut dyn SearchObserver,
) -> Result<(), DriverError> {
    let session = file.session_mut();
    match outcome {
        EvalOutcome::MachineryFailure { reason } => {
            // Not the candidate's fault: it stays pending and is tried again.
            state.machinery_in_a_row += 1;
            observer.note(&format!(
                "evaluator failure on node {id} (will retry): {reason}"
            ));
            if state.machinery_in_a_row >= MAX_MACHINERY_FAILURES_IN_A_ROW {
                return Err(DriverError::Machinery {
                    count: state.machinery_in_a_row,
                    last: reason,
                });
            }
            return Ok(());
        }
        EvalOutcome::Scored(mut rec) => {
            state.machinery_in_a_row = 0;
            state.evaluated_now += 1;
            rec.speedup_vs_seed = speedup_vs_seed(&session.tree, &rec);
            let json = serde_json::to_value(&rec).unwrap_or(serde_json::Value::Null);
            let recorded = match &rec.status {
                EvalStatus::Passed => session.tree.record_result(id, rec.reward, json),
                EvalStatus::Failed { stage, reason } => {
                    let stage_name = serde_json::to_value(stage)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_else(|| stage.to_string());
                    session
                        .tree
                        .record_failure(id, stage_name, reason.clone(), json)
                }
            };
            if let Err(e) = recorded {
                observer.note(&format!("could not record node {id}: {e}"));
            }
            let failed_stage = match &rec.status {
                EvalStatus::Passed => None,
                EvalStatus::Failed { stage, .. } => serde_json::to_value(stage)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string)),
            };
            session
                .meta
                .counters
                .count_evaluation(failed_stage.as_deref());
            session.refresh_best(speedup_of_node);
        }
    }
    file.save()?;
    if let Some(node) = file.session().tree.get(id) {
        observer.evaluated(node, file.session());
    }
    Ok(())
}

/// Geometric-mean speedup over the catalog of a passed node.
fn speedup_of_node(node: &Node) -> Option<f64> {
    let rec = node.record()?;
    let ratios: Vec<f64> = rec.per_shape.iter().filter_map(|s| s.speedup).collect();
    geomean(&ratios)
}

fn geomean(v: &[f64]) -> Option<f64> {
    kiln_eval::reward::geometric_mean(v).ok()
}

/// Speedup over the naive seed (the root), shape by shape.
fn speedup_vs_seed(tree: &Tree, rec: &EvalRecord) -> Option<f64> {
    let root = tree.get(tree.root())?.record()?;
    let ratios: Vec<f64> = rec
        .per_shape
        .iter()
        .filter_map(|s| {
            let seed = root.per_shape.iter().find(|r| r.shape == s.shape)?;
            Some(seed.median_us? / s.median_us?)
        })
        .collect();
    geomean(&ratios)
}

/// One timed shape of a parent, as the proposer reads it: its time against the
/// catalog's, its bandwidth, and what the driver says limits it.
fn shape_brief(s: &kiln_eval::record::ShapeResult) -> String {
    let mut line = format!(
        "{}: {:.2} µs (catalog {:.2} µs, ×{:.2}), {:.0} GB/s, {:.2} of speed-of-light",
        s.shape.name,
        s.median_us.unwrap_or(f64::NAN),
        s.baseline_median_us.unwrap_or(f64::NAN),
        s.speedup.unwrap_or(f64::NAN),
        s.gbps.unwrap_or(f64::NAN),
        s.sol_fraction.unwrap_or(f64::NAN)
    );
    if let Some(r) = &s.resources {
        line.push_str(", ");
        line.push_str(&r.describe());
    }
    line
}

/// The proposer's view of one parent.
fn request_for(
    target: &Target,
    device: &DeviceSummary,
    tree: &Tree,
    parent: NodeId,
    count: usize,
    step: u32,
    seed: u64,
) -> ProposalRequest {
    let node = tree.get(parent);
    let rec = node.and_then(Node::record);
    let per_shape = rec
        .as_ref()
        .map(|r| r.per_shape.iter().map(shape_brief).collect())
        .unwrap_or_default();
    let sol = rec.as_ref().and_then(|r| {
        let v: Vec<f64> = r.per_shape.iter().filter_map(|s| s.sol_fraction).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    });
    let mut best: Vec<&Node> = tree
        .nodes()
        .iter()
        .filter(|n| n.is_evaluated() && n.id != parent)
        .collect();
    best.sort_by(|a, b| {
        b.reward
            .unwrap_or(0.0)
            .total_cmp(&a.reward.unwrap_or(0.0))
            .then(a.id.0.cmp(&b.id.0))
    });
    let signature = target.signature().map(|s| s.render()).unwrap_or_default();
    ProposalRequest {
        target: TargetBrief {
            name: target.name.clone(),
            family: target.problem.family().to_string(),
            math: target.math(),
            signature: format!("extern \"C\" __global__ void {signature}"),
            entry: target.baseline().map(|b| b.entry).unwrap_or_default(),
            static_dims: target.static_dims(),
            shape_vars: std::iter::once("T".to_string())
                .chain(target.static_dims().keys().cloned())
                .chain(std::iter::once("SMS".to_string()))
                .collect(),
            timed_shapes: target.timed_t.iter().map(|t| format!("T={t}")).collect(),
            constraints: constraints(target),
            dtype: target.dtype().c_type().to_string(),
            hardware: HardwareBrief {
                gpu_name: device.gpu_name.clone(),
                sm_count: device.sm_count,
                peak_bandwidth_gbps: device.peak_bytes_per_s / 1e9,
                launch_floor_us: device.launch_floor_us,
                l2_mib: device.l2_mib as u32,
            },
        },
        parent: ParentBrief {
            node_id: parent.0,
            source: node.map(|n| n.source.clone()).unwrap_or_default(),
            reward: node.and_then(|n| n.reward),
            per_shape,
            sol_fraction: sol,
        },
        best: best
            .iter()
            .take(2)
            .map(|n| BestSource {
                source: n.source.clone(),
                speedup: speedup_of_node(n),
            })
            .collect(),
        recent_failures: tree
            .recent_failures(4)
            .into_iter()
            .filter_map(|n| match &n.status {
                NodeStatus::Failed { stage, reason } => Some(FailureNote {
                    stage: stage.clone(),
                    reason: reason.chars().take(1500).collect(),
                    source_excerpt: n.source.chars().take(1200).collect(),
                }),
                _ => None,
            })
            .collect(),
        count,
        step,
        seed,
    }
}

/// The rules every candidate of this target is held to, in prose.
fn constraints(target: &Target) -> String {
    let defines: Vec<String> = target
        .defines()
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("-D{k}={v}"))
        .collect();
    format!(
        "Compiled with NVRTC for sm_90a with {}. Must be correct for every T >= 1; verified on several \
         shapes including hidden odd ones, with adversarial inputs (large magnitudes, negatives, exact ties), \
         output buffers pre-filled with NaN, inputs checked unchanged. No state may persist across launches \
         (no __device__ globals), no printf, no clocks. Timed against the catalog kernel with CUDA graphs; \
         large shapes rotate inputs beyond L2.",
        defines.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::shape_brief;
    use kiln_eval::record::{ShapeId, ShapeResult};

    #[test]
    fn a_shape_brief_carries_the_kernels_resources_when_known() {
        let mut s = ShapeResult {
            shape: ShapeId {
                name: "T=4".into(),
                vars: Default::default(),
            },
            median_us: Some(5.0),
            baseline_median_us: Some(6.0),
            speedup: Some(1.2),
            gbps: Some(1500.0),
            sol_fraction: Some(0.5),
            ..Default::default()
        };
        assert_eq!(
            shape_brief(&s),
            "T=4: 5.00 µs (catalog 6.00 µs, ×1.20), 1500 GB/s, 0.50 of speed-of-light"
        );
        s.resources = Some(kiln_cuda::KernelResources {
            registers: 64,
            local_bytes: 16,
            static_smem_bytes: 0,
            blocks_per_sm: 4,
            occupancy: 0.5,
        });
        assert!(shape_brief(&s).ends_with(", 64 regs, 16 B local, 4 blocks/SM (50 % occupancy)"));
    }
}
