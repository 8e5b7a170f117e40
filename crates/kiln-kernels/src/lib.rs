//! kiln's kernel catalog: one CUDA source per kernel family, its launch rule,
//! a typed Rust op over device buffers, and a CPU float64 reference of the
//! same math.
//!
//! - [`catalog`]: the sources (`kernels/<op>.cu`) and their [`catalog::OpSpec`]s.
//! - [`launch`]: the `// kiln:` launch-line parser and checked evaluator, shared
//!   with the evaluator for untrusted candidates.
//! - [`source`]: the one C/C++ lexer and the one launch-line rule every tool uses.
//! - [`ops`]: per-op configuration (validated, turned into NVRTC inputs) and
//!   typed launches over `kiln-cuda` buffers.
//! - [`reference`]: float64 references that round where the models round.
//! - [`tolerance`]: the verification tolerances, chosen in one place.
//! - [`pack`]: how a kernel pack names a kernel's defines (export and the models share it).
//! - [`presets`]: every configuration the three target models need.

// The workspace MSRV (1.80) predates `usize::is_multiple_of`.
#![allow(clippy::manual_is_multiple_of)]

pub mod catalog;
pub mod discovered;
pub mod dtype;
pub mod error;
pub mod launch;
pub mod ops;
pub mod pack;
pub mod presets;
pub mod reference;
pub mod seeds;
pub mod source;
pub mod tolerance;

pub use catalog::{KernelBuild, Op, OpSpec, CATALOG};
pub use dtype::{DType, Element};
pub use error::{KernelError, Result};
pub use launch::{LaunchDims, LaunchError, LaunchLine};
pub use ops::{Loaded, OpConfig};
pub use tolerance::Tolerance;
