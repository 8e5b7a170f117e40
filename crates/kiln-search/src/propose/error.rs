//! [`ProposeError`]: every way asking a proposer can fail, each with what to do next.
//!
//! No variant ever carries an API key: HTTP bodies are excerpted with the key redacted,
//! and configurations hold keys in [`ApiKey`](super::backends::ApiKey), whose `Debug` hides them.

use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// Why a proposer produced no batch.
#[derive(Debug, Error)]
pub enum ProposeError {
    /// The backend needs an API key and its variable is unset or empty.
    #[error("no API key: set {var} (or choose another proposer, e.g. `offline`)")]
    MissingApiKey {
        /// The environment variable to set.
        var: String,
    },
    /// The server refused the credentials (HTTP 401 or 403); not retried.
    #[error("authentication failed (HTTP {status}): {body_excerpt}; check {var}")]
    Auth {
        /// 401 or 403.
        status: u16,
        /// The start of the error body, key redacted.
        body_excerpt: String,
        /// The environment variable holding the key.
        var: String,
    },
    /// The server kept answering 429.
    #[error("rate limited (HTTP 429) on all {attempts} attempts; wait, lower the number of concurrent requests, or raise the retry count")]
    RateLimited {
        /// Requests made, first try included.
        attempts: u32,
    },
    /// The server kept failing (5xx).
    #[error("server error (HTTP {status}) on all {attempts} attempts: {body_excerpt}; the service may be down, try again later")]
    Server {
        /// The last status seen.
        status: u16,
        /// Requests made, first try included.
        attempts: u32,
        /// The start of the last error body, key redacted.
        body_excerpt: String,
    },
    /// The server rejected the request itself (4xx other than 401, 403, 429); not retried.
    #[error(
        "request rejected (HTTP {status}): {body_excerpt}; check the model name and the options"
    )]
    Rejected {
        /// The status.
        status: u16,
        /// The start of the error body, key redacted.
        body_excerpt: String,
    },
    /// No answer within the time limit.
    #[error("{what} gave no answer within {:.1} s; raise the timeout or ask for fewer variants", .after.as_secs_f64())]
    Timeout {
        /// What was waited on (the URL or the program).
        what: String,
        /// The limit that ran out.
        after: Duration,
    },
    /// The connection failed (refused, reset, DNS, TLS) on every attempt.
    #[error("could not reach the server: {0}; check the base URL and the network")]
    Transport(String),
    /// The body was not the protocol's JSON.
    #[error("the answer was not the expected JSON: {detail}; check the base URL points at the right API")]
    Malformed {
        /// What was wrong, with an excerpt of the body.
        detail: String,
    },
    /// The model answered, but no part of the answer was a usable candidate.
    #[error("the model answered but no candidate could be used: {}", .reasons.join("; "))]
    NoUsableAnswer {
        /// Why each part was dropped.
        reasons: Vec<String>,
    },
    /// The CLI program was not found.
    #[error("`{program}` was not found (searched PATH: {}); install Claude Code or pass the program's path", display_dirs(.searched))]
    CliMissing {
        /// The program name or path.
        program: String,
        /// The folders searched.
        searched: Vec<PathBuf>,
    },
    /// The CLI ran but failed.
    #[error("`{program}` failed ({status}): {stderr_excerpt}; run `{program} -p hello` by hand to see why")]
    CliFailed {
        /// The program run.
        program: String,
        /// Exit status or why it did not start.
        status: String,
        /// The start of its error output (or its error result).
        stderr_excerpt: String,
    },
    /// The backend name is not one kiln knows.
    #[error("unknown proposer `{name}`; known: {}", .known.join(", "))]
    UnknownBackend {
        /// The name given.
        name: String,
        /// The names that work.
        known: Vec<String>,
    },
    /// An option is invalid (e.g. a base URL that is not http or https).
    #[error("invalid proposer option: {0}")]
    InvalidOption(String),
}

impl ProposeError {
    /// True for failures of the machinery (network, server, rate limit) rather than of the answer,
    /// so the search can retry the step later instead of scoring it.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Timeout { .. }
                | Self::Transport(_)
        )
    }
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "(PATH is empty)".to_string();
    }
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}
