//! kiln's kernel search: targets, the evaluator and its GPU worker, the PUCT
//! tree, proposers, sessions and reports.
