//! What the search tree says about the rewrites: which ones improved their
//! parent's reward, which failed, and every source already proposed.
//!
//! Each offline proposal's reasoning starts with its rewrite name (`vec=8:`,
//! `recipe-warp-per-row:`, `vec=8+upt=2:` for a pair). For every evaluated or
//! failed child whose parent has a reward, the improvement is
//! `child.reward − parent.reward` (a failure has reward 0, so it counts as
//! bad automatically); a pair credits both of its parts. A rewrite's prior
//! multiplier is `exp(BETA · Σ improvement / (n + 1))` clamped to
//! `[FLOOR, CAP]`: the `+1` is a pseudo-observation of "no change" that
//! keeps one lucky result from dominating, and the floor keeps every rewrite
//! a chance.

use std::collections::{BTreeMap, BTreeSet};

use kiln_search::search::dedup::source_hash;
use kiln_search::search::tree::Tree;

/// Sharpness: an average improvement of +0.25 reward multiplies the prior by e.
pub const BETA: f64 = 4.0;
/// Smallest multiplier: no rewrite is ever ruled out.
pub const FLOOR: f64 = 0.1;
/// Largest multiplier.
pub const CAP: f64 = 8.0;

/// Per-rewrite statistics and the set of known sources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Rewrite name → (sum of improvements, number of results).
    stats: BTreeMap<String, (f64, u32)>,
    /// Hashes (see [`source_hash`]) of every source in the tree.
    seen: BTreeSet<String>,
}

impl History {
    /// An empty history: base priors, nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Learns from every node of `tree`.
    pub fn from_tree(tree: &Tree) -> Self {
        let mut h = History::new();
        for node in tree.nodes() {
            h.seen.insert(source_hash(&node.source));
            let Some(parent) = node.parent.and_then(|p| tree.get(p)) else {
                continue;
            };
            let Some(reward) = node.reward else { continue };
            let improvement = match parent.reward {
                Some(p) => reward - p,
                // The parent is unscored: only a failure says something (it is bad).
                None if node.is_failed() => -1.0,
                None => continue,
            };
            h.record(rewrite_name(&node.reasoning), improvement);
        }
        h
    }

    /// Records one result of a rewrite (pairs `a+b` credit both parts).
    pub fn record(&mut self, name: &str, improvement: f64) {
        if !improvement.is_finite() {
            return;
        }
        for part in name.split('+').map(str::trim).filter(|p| !p.is_empty()) {
            let e = self.stats.entry(part.to_string()).or_insert((0.0, 0));
            e.0 += improvement;
            e.1 += 1;
        }
    }

    /// Marks a source as known.
    pub fn mark_seen(&mut self, source: &str) {
        self.seen.insert(source_hash(source));
    }

    /// True if the tree already holds this source (after normalisation).
    pub fn has_seen_hash(&self, hash: &str) -> bool {
        self.seen.contains(hash)
    }

    /// The prior multiplier of a rewrite (a pair multiplies its parts').
    pub fn multiplier(&self, name: &str) -> f64 {
        name.split('+')
            .map(|part| match self.stats.get(part.trim()) {
                Some(&(sum, n)) => (BETA * sum / (f64::from(n) + 1.0)).exp().clamp(FLOOR, CAP),
                None => 1.0,
            })
            .product()
    }

    /// Number of recorded results of a rewrite.
    pub fn count(&self, name: &str) -> u32 {
        self.stats.get(name).map_or(0, |s| s.1)
    }
}

/// The rewrite name of a reasoning line: the text before the first `:`.
pub fn rewrite_name(reasoning: &str) -> &str {
    reasoning.split(':').next().unwrap_or("").trim()
}
