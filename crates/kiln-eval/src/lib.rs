//! kiln's judge. Every candidate is written by an adversary who has read this
//! crate; nothing here trusts a candidate, and nothing here depends on the
//! search or on a proposer (the trust line is this crate's `Cargo.toml`).
//!
//! A candidate's path:
//!
//! 1. [`candidate`]: static checks on the source (entry point and signature,
//!    the launch line, forbidden constructs, persistent state) — the first,
//!    cheap wall.
//! 2. Compile in a bounded child process and check the compiled PTX
//!    ([`evaluator`]) — what actually runs: no timers, no printf, no heap, no
//!    dynamic parallelism, no mutable module state.
//! 3. Load and run in an isolated GPU [`worker`], spoken to through
//!    [`protocol`] by [`worker_client`] (timeouts, crashes and garbage kill
//!    only that worker and are the candidate's scored failure).
//! 4. Verify: [`tolerance`] (per dtype, scaled per row, NaN/Inf fail, inputs
//!    bit-identical, guard zones intact) and [`topk_compare`] (index/weight
//!    sets with a tie rule).
//! 5. Time: [`timing_stats`] (median, p10/p90, stopping rule, plausibility
//!    against the launch floor and the L2 and DRAM ceilings).
//! 6. Score: [`reward`] (floored per-shape speedups, geometric mean, clamp),
//!    recorded as a JSON-safe [`record::EvalRecord`].
//!
//! [`targets`] say what a candidate must compute, at which shapes, against
//! which baseline; [`catalog_bench`] times the catalog with the same harness.

pub mod candidate;
pub mod catalog_bench;
mod child;
pub mod compile_sandbox;
pub mod evaluator;
pub mod protocol;
pub mod ptx_check;
pub mod record;
pub mod reward;
pub mod targets;
pub mod timing_stats;
pub mod tolerance;
pub mod topk_compare;
pub mod worker;
pub mod worker_client;

pub use kiln_kernels::DType;
