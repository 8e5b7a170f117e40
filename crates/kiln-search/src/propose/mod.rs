//! The port every proposer implements: whatever writes new candidate kernels.
//!
//! 1. The search builds a [`ProposalRequest`] (target, parent and its results, best sources,
//!    recent failures, how many variants).
//! 2. [`Proposer::propose`] answers with a [`ProposalBatch`]: candidate sources with their
//!    reasoning, the reasons any part of the answer was dropped, and tokens spent.
//!    [`propose_many`] runs one step's requests concurrently.
//!
//! The implementations (the offline generator, the LLM backends, a mock) live in the
//! `kiln-propose` crate, which the judge never links.

pub mod concurrency;
pub mod error;
pub mod request;

pub use concurrency::propose_many;
pub use error::ProposeError;
pub use request::{
    BestSource, FailureNote, HardwareBrief, ParentBrief, Proposal, ProposalBatch, ProposalRequest,
    TargetBrief, TokenUsage,
};

/// Something that writes candidate kernels: an LLM backend, the offline generator, a mock.
pub trait Proposer: Send + Sync {
    /// Backend name as used on the command line and in session files ("offline", "mock", "claude-code", "anthropic", "openai").
    fn name(&self) -> &str;
    /// Model identifier recorded in the session ("offline" for the generator).
    fn model(&self) -> &str;
    /// Propose up to `req.count` new candidates for `req.parent`.
    fn propose(&self, req: &ProposalRequest) -> Result<ProposalBatch, ProposeError>;
    /// Learns from the whole tree before a step (which rewrites paid off,
    /// which sources exist); LLM backends see history through the prompt instead.
    fn observe_tree(&self, _tree: &crate::search::Tree) {}
}
