//! Reports on finished (or running) searches, all GPU-free:
//!
//! 1. [`compare`]: one table over a folder of sessions: best speedups and a
//!    USE / MARGINAL / KEEP verdict per (target, backend).
//! 2. [`markdown`]: `report.md` for one session (metadata, top kernels with
//!    per-shape times and full source, failures by stage) with two plots.
//! 3. [`plots`]: SVG plots of search progress and of the search tree.
//! 4. [`export`]: the winner as a kernel-pack entry (JSON + standalone `.cu`).
//! 5. [`promote`]: the model gate a winner passes to join the discovered set.
//!
//! Reports read the evaluator's record of each node through [`summary`]; a
//! record that does not parse shows as a kernel without details, never as an
//! error. No report ever writes NaN or Infinity: unknown numbers are `null`
//! in JSON and `—` in text.

pub mod compare;
pub mod error;
pub mod export;
pub mod markdown;
pub mod plots;
pub mod promote;
pub mod summary;

#[cfg(test)]
mod tests;

pub use compare::{compare_dir, compare_dirs, Comparison, ComparisonRow, Verdict};
pub use error::ReportError;
pub use export::{export_winner, export_winner_from, ExportedPack, PackEntry};
pub use markdown::{render_report, ReportFiles};
pub use plots::{progress_svg, tree_svg};
pub use summary::{KernelSummary, ShapeResult};
