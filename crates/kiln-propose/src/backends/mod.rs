//! The proposer backends: `mock` (canned answers), `anthropic` (Messages API), `openai`
//! (Chat Completions, also vLLM, llama.cpp and ollama) and `claude-code` (the local CLI).
//!
//! Every backend renders the same [`Prompt`](crate::prompt::Prompt), sends it its own way, and
//! hands the answer text to the same parser ([`crate::parse::parse_answer`]) through
//! [`batch_from_answer`], so they differ only in transport.

pub mod anthropic;
pub mod claude_code;
pub mod http;
pub mod mock;
pub mod openai;

use crate::parse::parse_answer;
use kiln_search::propose::ProposeError;
use kiln_search::propose::{ProposalBatch, TokenUsage};
use std::fmt;

/// An API key. Its `Debug` never shows it and it has no `Display`, so it cannot reach a log
/// or an error by accident; only [`ApiKey::expose`] gives the text, for the request header.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself; use only to build the request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

/// Reads an environment variable; tests pass their own instead of touching the process's.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The real environment, with unset and empty treated alike.
pub fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// Parses a model's answer into a batch, or explains why nothing in it was usable.
/// `notes` (e.g. "stopped at max_tokens") are added to the rejection lines.
pub fn batch_from_answer(
    answer: &str,
    count: usize,
    usage: TokenUsage,
    notes: Vec<String>,
) -> Result<ProposalBatch, ProposeError> {
    let parsed = parse_answer(answer, count);
    let mut rejected = parsed.rejected;
    rejected.extend(notes);
    if parsed.proposals.is_empty() && count > 0 {
        return Err(ProposeError::NoUsableAnswer { reasons: rejected });
    }
    Ok(ProposalBatch {
        proposals: parsed.proposals,
        rejected,
        usage,
    })
}

/// Checks a base URL is http(s) and drops a trailing slash.
pub(crate) fn clean_base_url(url: &str) -> Result<String, ProposeError> {
    let url = url.trim().trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ProposeError::InvalidOption(format!(
            "base URL `{url}` must start with http:// or https://"
        )));
    }
    Ok(url.to_string())
}

/// Reads a `u64` field that may be absent.
pub(crate) fn u64_at(v: &serde_json::Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod testserver;
