//! What reports read from a node: its reward, speedups and per-shape results.
//!
//! The evaluator's record is kept opaque in [`Node::eval`]; reports parse it
//! into [`EvalRecord`] with serde. A record that does not parse (missing,
//! older or newer layout) simply gives a kernel with no details: a report
//! never fails because of one odd record.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::search::{Node, NodeId, Tree};
use crate::session::Session;
use kiln_eval::record;

/// One timed shape of a kernel, as reports show it; missing or non-finite values are `None`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShapeResult {
    /// The shape's name and variables, e.g. `t37 (D=2048, T=37)`.
    pub name: String,
    /// The shape's variables (`T`, `D`, …).
    pub vars: BTreeMap<String, i64>,
    /// Median time in µs.
    pub median_us: Option<f64>,
    /// 10th percentile time in µs.
    pub p10_us: Option<f64>,
    /// 90th percentile time in µs.
    pub p90_us: Option<f64>,
    /// The catalog baseline's median time in µs.
    pub baseline_median_us: Option<f64>,
    /// Catalog time / this kernel's time, measured (unfloored); the record's
    /// floored value when either time is missing.
    pub speedup: Option<f64>,
    /// Achieved bandwidth in GB/s.
    pub gbps: Option<f64>,
    /// Fraction of the speed of light (0–1).
    pub sol_fraction: Option<f64>,
}

/// A kernel as reports show it: the node, its reward and speedups, and per-shape results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelSummary {
    /// The node.
    pub node: NodeId,
    /// The search reward (0 for failures, `None` while pending).
    pub reward: Option<f64>,
    /// Speedup over the catalog baseline: the geometric mean of the per-shape speedups,
    /// or the reward when the record has none (the reward floors and clamps them).
    pub speedup_vs_catalog: Option<f64>,
    /// Speedup over the naive seed kernel, when known.
    pub speedup_vs_seed: Option<f64>,
    /// Mean speed-of-light fraction over the shapes that report one.
    pub sol_fraction: Option<f64>,
    /// Per-shape results (empty when the record has none).
    pub shapes: Vec<ShapeResult>,
}

/// `Some(x)` only for finite `x`, so no report ever holds NaN or Infinity.
pub(crate) fn finite(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite())
}

/// Geometric mean of the positive finite values, `None` when there are none.
fn geomean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((0.0, 0u32), |(s, n), v| (s + v.ln(), n + 1));
    (n > 0)
        .then(|| (sum / f64::from(n)).exp())
        .filter(|g| g.is_finite())
}

impl KernelSummary {
    /// Summarises `id` in `session`; `None` if the node is not in the tree.
    pub fn of(session: &Session, id: NodeId) -> Option<KernelSummary> {
        let node = session.tree.get(id)?;
        let record = node.record();
        let shapes: Vec<ShapeResult> = record
            .as_ref()
            .map(|r| r.per_shape.iter().map(shape_result).collect())
            .unwrap_or_default();
        let reward = finite(node.reward);
        // Failed kernels have no speedup, whatever a partial record holds.
        let speedup_vs_catalog = if node.is_evaluated() {
            geomean(shapes.iter().filter_map(|s| s.speedup)).or(reward)
        } else {
            None
        };
        let sol: Vec<f64> = shapes.iter().filter_map(|s| s.sol_fraction).collect();
        let sol_fraction = (!sol.is_empty()).then(|| sol.iter().sum::<f64>() / sol.len() as f64);
        let speedup_vs_seed = if node.is_evaluated() {
            finite(record.as_ref().and_then(|r| r.speedup_vs_seed))
                .or_else(|| seed_speedup_from_times(&session.tree, &shapes))
                .or_else(|| {
                    // The session's own summary, written by the driver.
                    session
                        .meta
                        .best
                        .as_ref()
                        .filter(|b| b.node == id)
                        .and_then(|b| finite(b.speedup))
                })
                .or_else(|| (id == NodeId::ROOT).then_some(1.0))
        } else {
            None
        };
        Some(KernelSummary {
            node: id,
            reward,
            speedup_vs_catalog: finite(speedup_vs_catalog),
            speedup_vs_seed,
            sol_fraction: finite(sol_fraction),
            shapes,
        })
    }
}

fn shape_result(s: &record::ShapeResult) -> ShapeResult {
    let median_us = finite(s.median_us);
    let baseline_median_us = finite(s.baseline_median_us);
    // The measured ratio, not the reward's floored one, so a report never
    // overstates a slow shape.
    let measured = match (baseline_median_us, median_us) {
        (Some(b), Some(m)) if m > 0.0 => finite(Some(b / m)),
        _ => None,
    };
    ShapeResult {
        name: s.shape.to_string(),
        vars: s.shape.vars.clone(),
        median_us,
        p10_us: finite(s.p10_us),
        p90_us: finite(s.p90_us),
        baseline_median_us,
        speedup: measured.or_else(|| finite(s.speedup)),
        gbps: finite(s.gbps),
        sol_fraction: finite(s.sol_fraction),
    }
}

/// Speedup over the seed from the seed's (root's) timed shapes, matched by name.
fn seed_speedup_from_times(tree: &Tree, shapes: &[ShapeResult]) -> Option<f64> {
    let root = tree.get(NodeId::ROOT).filter(|n| n.is_evaluated())?;
    let seed = root.record()?;
    let seed_times: BTreeMap<String, f64> = seed
        .per_shape
        .iter()
        .filter_map(|s| finite(s.median_us).map(|m| (s.shape.to_string(), m)))
        .collect();
    geomean(shapes.iter().filter_map(|s| {
        let ours = s.median_us.filter(|m| *m > 0.0)?;
        seed_times.get(&s.name).map(|seed| seed / ours)
    }))
}

/// Evaluated nodes, best reward first (ties: lowest id), at most `top`.
pub(crate) fn top_nodes(tree: &Tree, top: usize) -> Vec<NodeId> {
    let mut evaluated: Vec<&Node> = tree.nodes().iter().filter(|n| n.is_evaluated()).collect();
    evaluated.sort_by(|a, b| {
        let (ra, rb) = (a.reward.unwrap_or(0.0), b.reward.unwrap_or(0.0));
        rb.total_cmp(&ra).then(a.id.cmp(&b.id))
    });
    evaluated.into_iter().take(top).map(|n| n.id).collect()
}
