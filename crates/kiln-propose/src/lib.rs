//! kiln's proposers: whatever writes new candidate kernels for the search.
//! Everything here is untrusted from the judge's side: it implements
//! kiln-search's [`Proposer`](kiln_search::propose::Proposer) port and never
//! touches the GPU.
//!
//! 1. The search builds a `ProposalRequest` (target, parent and its results,
//!    best sources, recent failures, how many variants).
//! 2. [`backend_from_name`] gives a proposer for a command-line name
//!    (`offline`, `mock`, `claude-code`, `anthropic`, `openai`; [`KNOWN_BACKENDS`]).
//! 3. LLM backends render the request with [`prompt`] and read the answer
//!    with [`parse::parse_answer`]; only the transport differs ([`backends`]).
//!    The [`offline`] generator rewrites a parent along known optimisations.
//!
//! ```
//! use kiln_propose::{backend_from_name, BackendOptions};
//! let answer = "```cuda\n// kiln: block=256 grid=T smem=0\n\
//!               extern \"C\" __global__ void k(int T) {}\n```";
//! let opts = BackendOptions { mock_answers: vec![answer.into()], ..Default::default() };
//! let proposer = backend_from_name("mock", &opts).unwrap();
//! assert_eq!(proposer.name(), "mock");
//! ```
//!
//! API keys are read from the environment only, held in [`backends::ApiKey`]
//! (whose `Debug` hides them) and redacted from every error, so they never
//! reach a session file or a log.

pub mod backends;
pub mod factory;
pub mod offline;
pub mod parse;
pub mod prompt;

#[cfg(test)]
mod concurrency_tests;
#[cfg(test)]
mod corpus_tests;

pub use factory::{backend_from_name, backend_from_name_with_env, BackendOptions, KNOWN_BACKENDS};
