//! kiln's kernel search: targets, the evaluator and its GPU worker, the PUCT
//! tree, proposers, sessions and reports.

pub mod catalog_bench;
pub mod driver;
pub mod eval;
pub mod evaluator;
pub mod offline;
pub mod propose;
pub mod report;
pub mod search;
pub mod session;
pub mod targets;
pub mod worker;
