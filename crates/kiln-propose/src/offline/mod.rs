//! The `offline` proposer: rewrites a parent kernel along a catalogue of
//! known optimisations of its family, with no network and no model.
//!
//! 1. [`space`]: per family, a small knob struct (threads per row, vector
//!    width, unroll, cache hints, persistent grid, …), the combinations valid
//!    for a target's static dims, and a renderer that turns knobs into a
//!    complete candidate (header comment with the knobs, `// kiln:` launch
//!    line, one `extern "C" __global__` entry) from the templates in
//!    `templates/`.
//! 2. [`generate`]: parses the parent's knobs (a seed or foreign source maps
//!    to the family's naive knobs), lists every valid rewrite (single knob
//!    changes, named recipes that jump to known-strong designs, then pairs),
//!    orders them by a seeded weighted shuffle (from the seed: the recipes
//!    first, the catalog's design leading) and drops sources the tree holds.
//! 3. [`history`]: learns from the tree which rewrites improved their parent
//!    and turns that into prior multipliers.
//! 4. [`seeds`]: the naive seed kernel of each family, the root of a search.
//!
//! ```
//! use kiln_kernels::seeds;
//! use kiln_propose::offline::{propose_offline, History};
//! let dims = [("D".to_string(), 2048)].into_iter().collect();
//! let seed = seeds::seed_source("rmsnorm").expect("seed");
//! let props = propose_offline("rmsnorm", &dims, seed, 4, 7, &History::new()).expect("proposals");
//! assert_eq!(props.len(), 4);
//! assert!(props[0].source.contains("// kiln: block="));
//! ```

pub mod generate;
pub mod history;
mod proposer;
pub mod space;

pub use generate::{propose_offline, OfflineProposal};
pub use history::History;
pub use space::{Dims, Family, Knobs, OfflineError};

use std::collections::BTreeMap;
use std::sync::RwLock;

use kiln_search::search::tree::Tree;

/// The offline proposer: a seed and what it has learned from the tree.
#[derive(Debug, Default)]
pub struct OfflineProposer {
    seed: u64,
    history: RwLock<History>,
}

impl OfflineProposer {
    /// A proposer with no history.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            history: RwLock::new(History::new()),
        }
    }

    /// A copy that knows every source of `tree` and which rewrites worked there.
    pub fn with_history(&self, tree: &Tree) -> OfflineProposer {
        Self {
            seed: self.seed,
            history: RwLock::new(History::from_tree(tree)),
        }
    }

    /// Replaces the history in place (for a proposer shared behind `dyn Proposer`).
    pub fn observe(&self, tree: &Tree) {
        let fresh = History::from_tree(tree);
        match self.history.write() {
            Ok(mut h) => *h = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }

    /// The proposer's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A snapshot of the history.
    pub fn history(&self) -> History {
        match self.history.read() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Up to `count` new variants of `parent_source`; `seed` is mixed with the proposer's own.
    pub fn propose_source(
        &self,
        family: &str,
        static_dims: &BTreeMap<String, i64>,
        parent_source: &str,
        count: usize,
        seed: u64,
    ) -> Result<Vec<OfflineProposal>, OfflineError> {
        let history = self.history();
        propose_offline(
            family,
            static_dims,
            parent_source,
            count,
            self.seed ^ seed.rotate_left(32),
            &history,
        )
    }
}

#[cfg(test)]
mod tests;
