//! kiln on candle: the catalog's kernels as candle ops, kiln's MoE model
//! implementations (Qwen3-MoE, GLM-4.7-Flash, GLM-4), synthetic checkpoints,
//! and `kiln validate`, which proves kernels on a real model (decode tokens/s,
//! token identity, logit agreement) before they may enter the default catalog.
//!
//! - [`ops`]: catalog kernels as candle ops (CUDA) with the float64
//!   references as their CPU forward.
//! - [`models`]: the model implementations, each running on kiln's kernels or
//!   on plain candle ops, chosen per model instance.
//! - [`synth`]: seeded random weights for any supported config, in memory or
//!   written as a checkpoint directory.
//! - [`validate`]: the comparison runs and `benchmark_results.json`.
//! - [`check`]: one MoE block on the GPU against its CPU twin (where a
//!   model-level disagreement comes from).
//! - [`check_kernels`]: kiln-candle's own kernels on the GPU against their CPU paths.
//!
//! Built without the `cuda` feature this crate is CPU-only: ops run their
//! references and models run on candle's CPU backend.

pub mod check;
pub mod check_kernels;
pub mod error;
pub mod models;
pub mod ops;
pub mod synth;
pub mod text;
pub mod validate;

pub use candle_core;
pub use error::{Error, Result};
