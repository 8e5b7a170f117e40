//! What a proposer is asked ([`ProposalRequest`]) and what it answers ([`ProposalBatch`]).
//!
//! These are plain data: the search fills a request from the target and the tree, the
//! prompt module renders it as text, and every backend answers with the same batch type.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything a proposer needs to write new variants of one parent kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposalRequest {
    /// The kernel being optimised and the machine it runs on.
    pub target: TargetBrief,
    /// The node to refine.
    pub parent: ParentBrief,
    /// Up to two of the best sources found so far (the search trims to two).
    pub best: Vec<BestSource>,
    /// Recent failures, with the exact compiler or checker message, so the model can avoid them.
    pub recent_failures: Vec<FailureNote>,
    /// How many variants to write.
    pub count: usize,
    /// The search step this request belongs to.
    pub step: u32,
    /// A seed for deterministic proposers (the offline generator, the mock).
    pub seed: u64,
}

/// The target kernel: its math, the exact entry point, dimensions and machine facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetBrief {
    /// Target name, e.g. `qwen3-30b-a3b/rmsnorm`.
    pub name: String,
    /// Kernel family, e.g. `rmsnorm`.
    pub family: String,
    /// The math the kernel computes, in words and formulas.
    pub math: String,
    /// The exact C signature line required, e.g. `extern "C" __global__ void rmsnorm(...)`.
    pub signature: String,
    /// The entry-point name.
    pub entry: String,
    /// Model dimensions fixed for this target, passed as `-D KILN_<NAME>=<value>`.
    pub static_dims: BTreeMap<String, i64>,
    /// Run-time shape variables (e.g. `T`).
    pub shape_vars: Vec<String>,
    /// The shapes that are timed, as human text (`T=1`, `T=4096`).
    pub timed_shapes: Vec<String>,
    /// Extra constraints in words (alignment, tie rules, …).
    pub constraints: String,
    /// Element type, e.g. `bf16`.
    pub dtype: String,
    /// The GPU the candidates are timed on.
    pub hardware: HardwareBrief,
}

/// Measured facts about the GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HardwareBrief {
    /// e.g. `NVIDIA H100 80GB HBM3`.
    pub gpu_name: String,
    /// Number of streaming multiprocessors (`SMS` in launch lines).
    pub sm_count: u32,
    /// Measured peak DRAM streaming bandwidth in GB/s.
    pub peak_bandwidth_gbps: f64,
    /// Measured time of an empty kernel launch in µs.
    pub launch_floor_us: f64,
    /// L2 cache size in MiB.
    pub l2_mib: u32,
}

/// The node being refined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentBrief {
    /// The tree node id.
    pub node_id: u32,
    /// The parent's CUDA source.
    pub source: String,
    /// Its reward (geometric-mean speedup over the baseline), if evaluated.
    pub reward: Option<f64>,
    /// One line per timed shape, e.g. `T=4096: 12.3 µs, 2.91 TB/s, 0.97 of speed-of-light, 1.02× baseline`.
    pub per_shape: Vec<String>,
    /// Fraction of the speed-of-light reached (geometric mean over shapes), if known.
    pub sol_fraction: Option<f64>,
}

/// One of the best sources found so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestSource {
    /// The CUDA source.
    pub source: String,
    /// Its speedup over the baseline, if known.
    pub speedup: Option<f64>,
}

/// A recent failed candidate and why it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureNote {
    /// The stage that failed: `parse`, `compile`, `verify`, `timing`, …
    pub stage: String,
    /// The exact message (compiler error, mismatch report).
    pub reason: String,
    /// The part of the source the message refers to, or its beginning.
    pub source_excerpt: String,
}

/// One proposed candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// The complete CUDA source, launch line included.
    pub source: String,
    /// The proposer's one-line reason for this variant.
    pub reasoning: String,
    /// The proposer's prior for PUCT in [0, 1], when it gave one.
    pub prior: Option<f64>,
}

/// Tokens spent on one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens (including cached prompt tokens where the backend reports them).
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

impl TokenUsage {
    /// Adds another request's usage to this one.
    pub fn add(&mut self, other: TokenUsage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
    }
}

/// A proposer's answer to one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProposalBatch {
    /// The usable candidates, at most `count`, without duplicates.
    pub proposals: Vec<Proposal>,
    /// Why parts of the answer were dropped (one line each).
    pub rejected: Vec<String>,
    /// Tokens spent.
    pub usage: TokenUsage,
}
