//! The HTTP layer shared by the API backends: one JSON POST with a time limit, retried
//! with exponential backoff on the failures that pass (429, 5xx, dropped connections).
//!
//! - 429 and 5xx: retried up to [`HttpPolicy::retries`] times. A `retry-after` header
//!   (seconds, or `retry-after-ms`) is honoured up to [`HttpPolicy::max_delay`]; otherwise the
//!   delay doubles from [`HttpPolicy::base_delay`] with up to 25 % random jitter, so many
//!   concurrent requests do not retry in lockstep.
//! - Connection failures (refused, reset) are retried the same way.
//! - A timeout is not retried: a model that took the whole limit once will likely do it
//!   again, and retrying would multiply the wait the user configured.
//! - 401/403 fail at once ([`ProposeError::Auth`]); other 4xx fail at once with the body.
//! - A 2xx body that is not JSON is [`ProposeError::Malformed`].
//!
//! Every body excerpt put into an error has the API key replaced by `[redacted]`, in case a
//! server or proxy echoes it.

use kiln_search::propose::ProposeError;
use serde_json::Value;
use std::io::Read;
use std::time::Duration;

/// The longest piece of a response body quoted in an error, in characters.
const EXCERPT_CHARS: usize = 400;
/// The largest response body read, in bytes (an LLM answer is far smaller).
const MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;

/// Time limits and retry schedule for one backend.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpPolicy {
    /// Limit for one whole request (connect, send, model thinking, read).
    pub timeout: Duration,
    /// Retries after the first attempt on 429, 5xx and connection failures.
    pub retries: u32,
    /// First backoff delay; doubles on each retry.
    pub base_delay: Duration,
    /// Longest single wait, for backoff and for `retry-after` alike.
    pub max_delay: Duration,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            retries: 4,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(120),
        }
    }
}

/// A JSON-over-HTTP client with the policy applied.
pub(crate) struct JsonClient {
    agent: ureq::Agent,
    policy: HttpPolicy,
}

/// What the server said, before it is judged.
enum Attempt {
    Ok(String),
    Status {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    Timeout,
    Transport(String),
}

impl JsonClient {
    /// A client whose requests each end after `policy.timeout`.
    pub(crate) fn new(policy: HttpPolicy) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout(policy.timeout)
            .timeout_connect(policy.timeout.min(Duration::from_secs(30)))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build();
        Self { agent, policy }
    }

    /// POSTs `body` as JSON to `url` with `headers` and returns the parsed JSON answer.
    /// `secret` is redacted from every excerpt; `key_var` names it in auth errors.
    pub(crate) fn post_json(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &Value,
        secret: Option<&str>,
        key_var: &str,
    ) -> Result<Value, ProposeError> {
        let payload = body.to_string();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            tracing::debug!(url, attempt, bytes = payload.len(), "proposer request");
            let retry_after = match self.send(url, headers, &payload) {
                Attempt::Ok(text) => {
                    return serde_json::from_str(&text).map_err(|e| ProposeError::Malformed {
                        detail: format!("{e}; body starts: {}", excerpt(&text, secret)),
                    });
                }
                Attempt::Status { status, body, .. } if status == 401 || status == 403 => {
                    return Err(ProposeError::Auth {
                        status,
                        body_excerpt: excerpt(&body, secret),
                        var: key_var.to_string(),
                    });
                }
                Attempt::Status {
                    status,
                    body,
                    retry_after,
                } if status == 429 || status >= 500 => {
                    if attempt > self.policy.retries {
                        return Err(if status == 429 {
                            ProposeError::RateLimited { attempts: attempt }
                        } else {
                            ProposeError::Server {
                                status,
                                attempts: attempt,
                                body_excerpt: excerpt(&body, secret),
                            }
                        });
                    }
                    tracing::warn!(url, status, attempt, "proposer request failed; retrying");
                    retry_after
                }
                Attempt::Status { status, body, .. } => {
                    return Err(ProposeError::Rejected {
                        status,
                        body_excerpt: excerpt(&body, secret),
                    });
                }
                Attempt::Timeout => {
                    return Err(ProposeError::Timeout {
                        what: url.to_string(),
                        after: self.policy.timeout,
                    });
                }
                Attempt::Transport(msg) => {
                    if attempt > self.policy.retries {
                        return Err(ProposeError::Transport(format!(
                            "{} (after {attempt} attempts)",
                            redact(&msg, secret)
                        )));
                    }
                    tracing::warn!(url, attempt, error = %redact(&msg, secret), "proposer connection failed; retrying");
                    None
                }
            };
            std::thread::sleep(self.delay(attempt, retry_after));
        }
    }

    /// The wait before retry number `attempt` (1-based).
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.policy.max_delay);
        }
        let exp = self
            .policy
            .base_delay
            .saturating_mul(1u32 << (attempt - 1).min(16));
        let jitter = exp.mul_f64(rand::random::<f64>() * 0.25);
        (exp + jitter).min(self.policy.max_delay)
    }

    fn send(&self, url: &str, headers: &[(&str, &str)], payload: &str) -> Attempt {
        let mut req = self.agent.post(url).set("content-type", "application/json");
        for (name, value) in headers {
            req = req.set(name, value);
        }
        match req.send_string(payload) {
            Ok(resp) => match read_body(resp) {
                Ok(text) => Attempt::Ok(text),
                Err(e) if is_timeout_io(&e) => Attempt::Timeout,
                Err(e) => Attempt::Transport(format!("reading the answer: {e}")),
            },
            Err(ureq::Error::Status(status, resp)) => {
                let retry_after = retry_after(&resp);
                let body = read_body(resp).unwrap_or_default();
                Attempt::Status {
                    status,
                    body,
                    retry_after,
                }
            }
            Err(ureq::Error::Transport(t)) => {
                if is_timeout_transport(&t) {
                    Attempt::Timeout
                } else {
                    Attempt::Transport(t.to_string())
                }
            }
        }
    }
}

fn read_body(resp: ureq::Response) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(MAX_BODY_BYTES)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `retry-after-ms` (OpenAI) or `retry-after` in seconds; HTTP dates are ignored (backoff applies).
fn retry_after(resp: &ureq::Response) -> Option<Duration> {
    if let Some(ms) = resp
        .header("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        return duration_from_secs(ms / 1000.0);
    }
    resp.header("retry-after").and_then(parse_retry_after)
}

/// Parses a `retry-after` value in seconds (fractions accepted).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    duration_from_secs(value.trim().parse::<f64>().ok()?)
}

fn duration_from_secs(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

fn is_timeout_io(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

fn is_timeout_transport(t: &ureq::Transport) -> bool {
    let mut source = std::error::Error::source(t);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if is_timeout_io(io) {
                return true;
            }
        }
        source = err.source();
    }
    t.to_string().contains("timed out")
}

/// Replaces every occurrence of `secret` in `text`.
pub(crate) fn redact(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(key) if !key.is_empty() => text.replace(key, "[redacted]"),
        _ => text.to_string(),
    }
}

/// The start of `text`, redacted, on one line.
pub(crate) fn excerpt(text: &str, secret: Option<&str>) -> String {
    let clean = redact(text, secret);
    let one_line = clean.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None if one_line.is_empty() => "(empty body)".to_string(),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_parses_seconds() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 0.25 "),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn excerpt_redacts_and_clips() {
        let e = excerpt(
            &format!("bad key sk-SECRET {}", "x ".repeat(1000)),
            Some("sk-SECRET"),
        );
        assert!(e.starts_with("bad key [redacted] x"));
        assert!(!e.contains("sk-SECRET"));
        assert!(e.chars().count() <= EXCERPT_CHARS + 1);
        assert_eq!(excerpt("", None), "(empty body)");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let c = JsonClient::new(HttpPolicy {
            timeout: Duration::from_secs(1),
            retries: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
        });
        let d1 = c.delay(1, None);
        let d2 = c.delay(2, None);
        assert!(
            d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(125),
            "{d1:?}"
        );
        assert!(
            d2 >= Duration::from_millis(200) && d2 <= Duration::from_millis(250),
            "{d2:?}"
        );
        assert_eq!(c.delay(5, None), Duration::from_millis(300));
        assert_eq!(
            c.delay(1, Some(Duration::from_millis(50))),
            Duration::from_millis(50)
        );
        assert_eq!(
            c.delay(1, Some(Duration::from_secs(50))),
            Duration::from_millis(300)
        );
    }
}
