//! The session file's schema (version 1).
//!
//! One JSON file per (target, backend) holds everything needed to report on
//! a search and to resume it exactly. Layout, field by field:
//!
//! ```text
//! {
//!   "schema_version": 1,                 // bumped on any incompatible change
//!   "meta": {
//!     "target": "swiglu_bf16",           // the target's name
//!     "backend": "offline",              // proposer backend
//!     "model": "offline",                // LLM model name, or "offline"
//!     "gpu_name": "NVIDIA H100 80GB HBM3",
//!     "gpu_arch": "sm_90",
//!     "driver_version": "580.xx", "nvrtc_version": "13.0", "kiln_version": "0.1.0",
//!     "created_at": "2026-01-02T03:04:05Z", "updated_at": "…",   // RFC 3339, UTC
//!     "seed": 42,                        // --seed: the RNG and the offline proposer
//!     "config": {
//!       "steps": 20,                     // search steps to run
//!       "candidates_per_step": 4,        // proposals per step, spread over the selected parents
//!       "parents_per_step": 2,           // B: the most parents one step expands
//!       "c_puct": 1.0,                   // exploration constant c
//!       "widening": {"k": 2.0, "alpha": 0.5},  // progressive widening
//!       "warmup": 10, "iters": 100,      // timing repetitions
//!       "timeout_s": 30                  // per-candidate evaluation timeout
//!     },
//!     "counters": {
//!       "steps_done": 3,                 // steps planned; pending nodes of the last one are evaluated first on resume
//!       "candidates_evaluated": 11,      // evaluations recorded, failures included
//!       "failures_by_stage": {"compile": 2, "verify": 1},
//!       "duplicates_skipped": 1,         // proposals refused as duplicates (never evaluated)
//!       "proposer_tokens_in": 0, "proposer_tokens_out": 0
//!     },
//!     "best": {"node": 7, "reward": 1.42, "speedup": 3.1}    // or null; speedup over the seed, or null
//!   },
//!   "tree": {
//!     "nodes": [ {                       // index == id; parents precede children
//!       "id": 0, "parent": null, "children": [1, 2], "depth": 0,
//!       "source": "// kiln: …\nextern \"C\" …", "launch_line": "// kiln: …",
//!       "reasoning": "…", "proposer": "seed",
//!       "prior": 1.0, "visits": 12, "best_reward_in_subtree": 1.42,
//!       "reward": 1.0,                   // null while pending; 0 for failures
//!       "status": {"state": "evaluated"},   // or {"state": "pending"},
//!                                           // or {"state": "failed", "stage": "compile", "reason": "…"}
//!       "created_step": 0,
//!       "eval": { … }                    // the evaluator's record, or null
//!     }, … ],
//!     "rng": {"seed": 42, "stream": 0, "word_pos": "128"}   // the search RNG's exact position
//!   },
//!   "finished": false
//! }
//! ```
//!
//! No number in the file is ever `NaN` or `Infinity`: values that may be
//! missing are `null`, and [`Session::validate`] refuses to save a session
//! holding a non-finite number.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::search::{Node, NodeId, Tree, Widening};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// A whole search: its metadata, its tree, and whether it has finished.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Always [`SCHEMA_VERSION`] for sessions this build writes.
    pub schema_version: u32,
    /// What was searched, where, how, and how far it got.
    pub meta: SessionMeta,
    /// The search tree, including the RNG position.
    pub tree: Tree,
    /// True once the search ran all its steps (or ran out of nodes to expand).
    pub finished: bool,
}

/// Identification, environment, configuration and progress of a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionMeta {
    /// The target's name.
    pub target: String,
    /// The proposer backend (`offline`, `claude-code`, `anthropic`, `openai`, `mock`).
    pub backend: String,
    /// The LLM model name, or `offline`.
    pub model: String,
    /// The GPU's marketing name, as the driver reports it.
    pub gpu_name: String,
    /// The GPU's architecture, e.g. `sm_90`.
    pub gpu_arch: String,
    /// The CUDA driver version.
    pub driver_version: String,
    /// The NVRTC version.
    pub nvrtc_version: String,
    /// The kiln version that created the session.
    pub kiln_version: String,
    /// When the session was created (RFC 3339, UTC).
    pub created_at: String,
    /// When the session was last saved (RFC 3339, UTC).
    pub updated_at: String,
    /// The `--seed` of the search.
    pub seed: u64,
    /// The search configuration.
    pub config: SearchConfig,
    /// Progress counters.
    pub counters: Counters,
    /// The best evaluated node so far, if any.
    pub best: Option<BestSummary>,
}

impl SessionMeta {
    /// Metadata for a new session created now; environment fields start empty for the caller to fill.
    pub fn new(
        target: impl Into<String>,
        backend: impl Into<String>,
        seed: u64,
        config: SearchConfig,
    ) -> Self {
        let now = now_rfc3339();
        let backend = backend.into();
        Self {
            target: target.into(),
            model: if backend == "offline" {
                "offline".into()
            } else {
                String::new()
            },
            backend,
            gpu_name: String::new(),
            gpu_arch: String::new(),
            driver_version: String::new(),
            nvrtc_version: String::new(),
            kiln_version: env!("CARGO_PKG_VERSION").into(),
            created_at: now.clone(),
            updated_at: now,
            seed,
            config,
            counters: Counters::default(),
            best: None,
        }
    }
}

/// The search's knobs, saved so a resumed search runs the same way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchConfig {
    /// Search steps to run.
    pub steps: u32,
    /// Candidates asked of the proposer per step, spread over the selected parents.
    pub candidates_per_step: u32,
    /// B: the most parents one step expands (fewer when fewer lineages are eligible).
    pub parents_per_step: u32,
    /// The PUCT exploration constant c.
    pub c_puct: f64,
    /// Progressive-widening constants.
    pub widening: Widening,
    /// Untimed warm-up launches per timing.
    pub warmup: u32,
    /// Timed repetitions per timing.
    pub iters: u32,
    /// Per-candidate evaluation timeout in seconds.
    pub timeout_s: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            steps: 20,
            candidates_per_step: 4,
            parents_per_step: 2,
            c_puct: 1.0,
            widening: Widening::DEFAULT,
            warmup: 10,
            iters: 100,
            timeout_s: 30,
        }
    }
}

impl SearchConfig {
    /// How many candidates the `index`-th of `parents` selected parents gets: an even split, remainder to the first.
    pub fn candidates_for(&self, parents: usize, index: usize) -> usize {
        if parents == 0 || index >= parents {
            return 0;
        }
        let total = self.candidates_per_step as usize;
        total / parents + usize::from(index < total % parents)
    }

    /// Checks the ranges the search relies on.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.c_puct.is_finite() && self.c_puct >= 0.0) {
            return Err(format!(
                "c_puct {} must be a finite number ≥ 0",
                self.c_puct
            ));
        }
        if !self.widening.is_valid() {
            return Err(format!(
                "widening k {} must be > 0 and alpha {} in (0, 1]",
                self.widening.k, self.widening.alpha
            ));
        }
        if self.parents_per_step == 0 || self.candidates_per_step == 0 {
            return Err("parents_per_step and candidates_per_step must be at least 1".into());
        }
        Ok(())
    }
}

/// Progress counters; they continue across resumes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Completed steps.
    pub steps_done: u32,
    /// Recorded evaluations, failures included.
    pub candidates_evaluated: u64,
    /// Failures by evaluator stage.
    pub failures_by_stage: BTreeMap<String, u32>,
    /// Proposals refused as duplicates of a node already in the tree.
    pub duplicates_skipped: u64,
    /// Prompt tokens sent to the proposer.
    pub proposer_tokens_in: u64,
    /// Completion tokens received from the proposer.
    pub proposer_tokens_out: u64,
}

impl Counters {
    /// Counts one recorded evaluation, a failure at `failed_stage` if given.
    pub fn count_evaluation(&mut self, failed_stage: Option<&str>) {
        self.candidates_evaluated += 1;
        if let Some(stage) = failed_stage {
            *self.failures_by_stage.entry(stage.to_string()).or_insert(0) += 1;
        }
    }

    /// Adds proposer token usage.
    pub fn add_tokens(&mut self, tokens_in: u64, tokens_out: u64) {
        self.proposer_tokens_in = self.proposer_tokens_in.saturating_add(tokens_in);
        self.proposer_tokens_out = self.proposer_tokens_out.saturating_add(tokens_out);
    }
}

/// The best node so far, for reports that do not read the tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestSummary {
    /// The best evaluated node.
    pub node: NodeId,
    /// Its reward.
    pub reward: f64,
    /// Its speedup over the naive seed kernel, when known.
    pub speedup: Option<f64>,
}

impl Session {
    /// A new, unfinished session at the current schema version.
    pub fn new(meta: SessionMeta, tree: Tree) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            meta,
            tree,
            finished: false,
        }
    }

    /// Updates `meta.best` from the tree; `speedup_of` reads the speedup from the best node's record.
    ///
    /// A non-finite speedup is stored as null.
    pub fn refresh_best(&mut self, speedup_of: impl FnOnce(&Node) -> Option<f64>) {
        self.meta.best = self
            .tree
            .best()
            .and_then(|id| self.tree.get(id))
            .map(|n| BestSummary {
                node: n.id,
                reward: n.reward.unwrap_or(0.0),
                speedup: speedup_of(n).filter(|s| s.is_finite()),
            });
    }

    /// Checks what serde cannot: the version, the config ranges, and that every number is finite.
    pub fn validate(&self) -> Result<(), String> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(format!(
                "schema_version is {}, expected {SCHEMA_VERSION}",
                self.schema_version
            ));
        }
        self.meta.config.validate()?;
        if let Some(best) = &self.meta.best {
            if !best.reward.is_finite() || best.speedup.is_some_and(|s| !s.is_finite()) {
                return Err(format!("best summary holds a non-finite number: {best:?}"));
            }
            if self.tree.get(best.node).is_none() {
                return Err(format!("best node {} is not in the tree", best.node));
            }
        }
        // Tree numbers are checked when they enter the tree; check again so
        // a bug elsewhere can never write NaN or Infinity.
        for n in self.tree.nodes() {
            let finite = n.prior.is_finite()
                && n.best_reward_in_subtree.is_finite()
                && n.reward.is_none_or(f64::is_finite);
            if !finite {
                return Err(format!("node {} holds a non-finite number", n.id));
            }
        }
        Ok(())
    }
}

/// The current time as RFC 3339 UTC with second precision, e.g. `2026-01-02T03:04:05Z`.
pub fn now_rfc3339() -> String {
    rfc3339_utc(SystemTime::now())
}

/// `t` as RFC 3339 UTC with second precision (times before 1970 print as the epoch).
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661); // 2000-02-29
        assert_eq!(rfc3339_utc(t), "2000-02-29T01:01:01Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_767_225_599); // last second of 2025
        assert_eq!(rfc3339_utc(t), "2025-12-31T23:59:59Z");
        assert_eq!(now_rfc3339().len(), 20);
    }

    #[test]
    fn candidates_split_evenly() {
        let c = SearchConfig {
            candidates_per_step: 5,
            ..SearchConfig::default()
        };
        assert_eq!(
            (0..2).map(|i| c.candidates_for(2, i)).collect::<Vec<_>>(),
            vec![3, 2]
        );
        assert_eq!(c.candidates_for(1, 0), 5);
        assert_eq!((0..7).map(|i| c.candidates_for(7, i)).sum::<usize>(), 5);
        assert_eq!(c.candidates_for(0, 0), 0);
    }

    #[test]
    fn config_validation() {
        assert!(SearchConfig::default().validate().is_ok());
        let bad = SearchConfig {
            c_puct: f64::INFINITY,
            ..SearchConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = SearchConfig {
            parents_per_step: 0,
            ..SearchConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
