//! Proposers: whatever writes new candidate kernels for the search.
//!
//! 1. The search builds a [`ProposalRequest`] (target, parent and its results, best sources,
//!    recent failures, how many variants).
//! 2. [`backend_from_name`] gives a [`Proposer`] for a command-line name (`mock`,
//!    `claude-code`, `anthropic`, `openai`; [`KNOWN_BACKENDS`]).
//! 3. [`Proposer::propose`] answers with a [`ProposalBatch`]: candidate sources with their
//!    reasoning, the reasons any part of the answer was dropped, and tokens spent.
//!    [`propose_many`] runs one step's requests concurrently.
//!
//! LLM backends render the request with [`prompt`] and read the answer with
//! [`parse::parse_answer`]; only the transport differs ([`backends`]).
//!
//! ```
//! use kiln_discover::propose::{backend_from_name, BackendOptions};
//! let answer = "```cuda\n// kiln: block=256 grid=T smem=0\n\
//!               extern \"C\" __global__ void k(int T) {}\n```";
//! let opts = BackendOptions { mock_answers: vec![answer.into()], ..Default::default() };
//! let proposer = backend_from_name("mock", &opts).unwrap();
//! assert_eq!(proposer.name(), "mock");
//! ```
//!
//! API keys are read from the environment only, held in [`backends::ApiKey`] (whose `Debug`
//! hides them) and redacted from every error, so they never reach a session file or a log.

pub mod backends;
pub mod concurrency;
pub mod error;
pub mod factory;
pub mod parse;
pub mod prompt;
pub mod request;

#[cfg(test)]
mod corpus_tests;

pub use concurrency::propose_many;
pub use error::ProposeError;
pub use factory::{backend_from_name, backend_from_name_with_env, BackendOptions, KNOWN_BACKENDS};
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
