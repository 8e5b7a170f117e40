//! The PUCT search tree: nodes and back-propagation ([`tree`]), scoring,
//! progressive widening and priors ([`puct`]), duplicate detection
//! ([`dedup`]), the per-step batch selection ([`step`]) and the seeded RNG
//! ([`rng`]). Pure and GPU-free: the driver asks this module what to
//! expand, and records what the evaluator found.

pub mod dedup;
pub mod puct;
pub mod rng;
pub mod step;
pub mod tree;

pub use dedup::{normalize_source, source_hash};
pub use puct::{priors, puct_score, rank_priors, Widening};
pub use rng::SearchRng;
pub use step::{select_batch, select_batch_with};
pub use tree::{NewNode, Node, NodeId, NodeStatus, Tree, TreeError};
