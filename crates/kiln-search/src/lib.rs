//! kiln's kernel search: the PUCT tree ([`search`]), resumable sessions
//! ([`session`]), the driver that asks proposers and the judge in turn
//! ([`driver`]), reports and export ([`report`]), a GPU-free evaluator that
//! replays recorded sessions ([`replay`]), and the port every proposer
//! implements ([`propose::Proposer`]).
//!
//! The search trusts the judge (`kiln-eval`) and nothing a proposer writes;
//! it never talks to a network or an LLM itself: implementations of
//! [`propose::Proposer`] live in `kiln-propose`.

pub mod driver;
pub mod propose;
pub mod replay;
pub mod report;
pub mod search;
pub mod session;
