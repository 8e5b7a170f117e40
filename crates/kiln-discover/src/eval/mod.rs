//! The trusted evaluator's GPU-free core.
//!
//! Every candidate comes from an LLM and is treated as hostile. The evaluator
//! runs it through typed stages, each of which can fail with a reason the
//! proposer can act on:
//!
//! 1. [`candidate`]: static checks on the source (entry point and signature,
//!    launch line present, forbidden constructs such as persistent
//!    `__device__` state, timers, `printf`, foreign `#include`s).
//! 2. Compile and run in an isolated GPU worker process, spoken to through
//!    [`protocol`] by [`worker_client`] (timeouts, crashes and garbage kill
//!    only that worker; machinery failures are retried, never scored).
//! 3. Verify: [`tolerance`] (scale-aware, per dtype, NaN/Inf fail, inputs
//!    bit-identical) and [`topk_compare`] (index/weight sets with a tie rule).
//! 4. Time: [`timing_stats`] (median, p10/p90, stopping rule, physical
//!    plausibility).
//! 5. Score: [`reward`] (floored per-shape speedups, geometric mean, clamp),
//!    recorded as a JSON-safe [`record::EvalRecord`].

pub mod candidate;
pub mod protocol;
pub mod record;
pub mod reward;
pub mod timing_stats;
pub mod tolerance;
pub mod topk_compare;
pub mod worker_client;

pub use kiln_kernels::DType;
