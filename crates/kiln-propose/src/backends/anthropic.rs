//! The `anthropic` backend: Anthropic's Messages API.
//!
//! `POST {base}/v1/messages` with headers `x-api-key`, `anthropic-version: 2023-06-01` and
//! `content-type: application/json`, body `{model, max_tokens, temperature, system,
//! messages: [{role: "user", content}]}`. The answer is the concatenated `text` parts of
//! `content`; tokens come from `usage` (cache reads and writes count as input).
//!
//! Configuration: `ANTHROPIC_API_KEY` (required), `ANTHROPIC_BASE_URL` (default
//! `https://api.anthropic.com`; tests point it at a loopback server).

use super::http::{HttpPolicy, JsonClient};
use super::{batch_from_answer, clean_base_url, u64_at, ApiKey, EnvLookup};
use crate::prompt::Prompt;
use kiln_search::propose::error::ProposeError;
use kiln_search::propose::request::{ProposalBatch, ProposalRequest, TokenUsage};
use kiln_search::propose::Proposer;
use serde_json::{json, Value};
use std::fmt;

/// The environment variable holding the key.
pub const API_KEY_VAR: &str = "ANTHROPIC_API_KEY";
/// The environment variable overriding the base URL.
pub const BASE_URL_VAR: &str = "ANTHROPIC_BASE_URL";
/// The public API.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The model used when none is given.
pub const DEFAULT_MODEL: &str = "claude-sonnet-4-5";
/// The API version header value.
pub const API_VERSION: &str = "2023-06-01";

/// Settings for [`AnthropicProposer`]. `Debug` is written by hand so the key never shows.
#[derive(Clone)]
pub struct AnthropicConfig {
    /// The API key.
    pub api_key: ApiKey,
    /// Base URL without `/v1`.
    pub base_url: String,
    /// Model id.
    pub model: String,
    /// Answer length limit in tokens.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f64,
    /// Time limit and retries.
    pub http: HttpPolicy,
}

impl AnthropicConfig {
    /// Defaults, with the key and base URL read through `env`.
    pub fn from_env(env: EnvLookup<'_>) -> Result<Self, ProposeError> {
        let key = env(API_KEY_VAR).filter(|k| !k.trim().is_empty());
        let api_key = key.ok_or_else(|| ProposeError::MissingApiKey {
            var: API_KEY_VAR.to_string(),
        })?;
        Ok(Self {
            api_key: ApiKey::new(api_key.trim()),
            base_url: env(BASE_URL_VAR).unwrap_or_else(|| DEFAULT_BASE_URL.to_string()),
            model: DEFAULT_MODEL.to_string(),
            max_tokens: 8192,
            temperature: 0.7,
            http: HttpPolicy::default(),
        })
    }
}

impl fmt::Debug for AnthropicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicConfig")
            .field("api_key", &"[redacted]")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.temperature)
            .field("http", &self.http)
            .finish()
    }
}

/// Proposes through the Messages API.
pub struct AnthropicProposer {
    config: AnthropicConfig,
    url: String,
    client: JsonClient,
}

impl AnthropicProposer {
    /// Checks the configuration and builds the HTTP client.
    pub fn new(config: AnthropicConfig) -> Result<Self, ProposeError> {
        let url = format!("{}/v1/messages", clean_base_url(&config.base_url)?);
        let client = JsonClient::new(config.http.clone());
        Ok(Self {
            config,
            url,
            client,
        })
    }

    /// The request body for `prompt`.
    fn body(&self, prompt: &Prompt) -> Value {
        json!({
            "model": self.config.model,
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
            "system": prompt.system,
            "messages": [{"role": "user", "content": prompt.user}],
        })
    }
}

impl fmt::Debug for AnthropicProposer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicProposer")
            .field("config", &self.config)
            .field("url", &self.url)
            .finish()
    }
}

impl Proposer for AnthropicProposer {
    fn name(&self) -> &str {
        "anthropic"
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    fn propose(&self, req: &ProposalRequest) -> Result<ProposalBatch, ProposeError> {
        let prompt = Prompt::for_request(req);
        let key = self.config.api_key.expose();
        let headers = [("x-api-key", key), ("anthropic-version", API_VERSION)];
        let answer = self.client.post_json(
            &self.url,
            &headers,
            &self.body(&prompt),
            Some(key),
            API_KEY_VAR,
        )?;
        let (text, usage, notes) = read_answer(&answer, self.config.max_tokens)?;
        batch_from_answer(&text, req.count, usage, notes)
    }
}

/// Extracts the text, the usage and notes (e.g. a max-tokens stop) from a Messages answer.
fn read_answer(
    answer: &Value,
    max_tokens: u32,
) -> Result<(String, TokenUsage, Vec<String>), ProposeError> {
    let parts = answer
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| ProposeError::Malformed {
            detail: format!(
                "no `content` array in the Messages answer: {}",
                super::http::excerpt(&answer.to_string(), None)
            ),
        })?;
    let text: String = parts
        .iter()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n");
    let usage = TokenUsage {
        input_tokens: u64_at(answer, "/usage/input_tokens")
            + u64_at(answer, "/usage/cache_creation_input_tokens")
            + u64_at(answer, "/usage/cache_read_input_tokens"),
        output_tokens: u64_at(answer, "/usage/output_tokens"),
    };
    let mut notes = Vec::new();
    if answer.get("stop_reason").and_then(Value::as_str) == Some("max_tokens") {
        notes.push(format!(
            "the answer stopped at max_tokens ({max_tokens}); raise it or ask for fewer variants"
        ));
    }
    Ok((text, usage, notes))
}

#[cfg(test)]
mod tests {
    use super::super::testserver::{Reply, TestServer};
    use super::*;
    use crate::prompt::tests::sample_request;
    use std::time::{Duration, Instant};

    const KEY: &str = "sk-ant-TEST-KEY-0123456789";

    fn answer_json(text: &str) -> String {
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": DEFAULT_MODEL,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 1200, "output_tokens": 800, "cache_read_input_tokens": 100}
        })
        .to_string()
    }

    fn good_text() -> String {
        "### Variant 1\nReasoning: warp per row.\n```cuda\n// kiln: block=256 grid=ceil_div(T, 8) smem=0\nextern \"C\" __global__ void rmsnorm(int T) {}\n```\n".to_string()
    }

    fn proposer(url: &str, timeout: Duration, retries: u32) -> AnthropicProposer {
        let env = |var: &str| match var {
            API_KEY_VAR => Some(KEY.to_string()),
            BASE_URL_VAR => Some(url.to_string()),
            _ => None,
        };
        let mut config = AnthropicConfig::from_env(&env).expect("config");
        config.http = HttpPolicy {
            timeout,
            retries,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(2),
        };
        AnthropicProposer::new(config).expect("proposer")
    }

    #[test]
    fn success_sends_the_protocol_and_parses_the_answer() {
        let server = TestServer::start(vec![Reply::json(200, &answer_json(&good_text()))]);
        let p = proposer(&server.url, Duration::from_secs(5), 2);
        let req = sample_request();
        let batch = p.propose(&req).expect("batch");
        assert_eq!(batch.proposals.len(), 1);
        assert_eq!(batch.proposals[0].reasoning, "warp per row.");
        assert_eq!(
            batch.usage,
            TokenUsage {
                input_tokens: 1300,
                output_tokens: 800
            }
        );

        let reqs = server.requests();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(r.header("x-api-key"), Some(KEY));
        assert_eq!(r.header("anthropic-version"), Some(API_VERSION));
        assert!(r
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")));
        let body = r.json();
        assert_eq!(body["model"], DEFAULT_MODEL);
        assert_eq!(body["max_tokens"], 8192);
        assert_eq!(body["temperature"], 0.7);
        assert!(body["system"]
            .as_str()
            .is_some_and(|s| s.contains("// kiln: block=")));
        assert_eq!(body["messages"][0]["role"], "user");
        let user = body["messages"][0]["content"].as_str().expect("user text");
        assert!(user.contains(&req.target.signature));
        assert!(user.contains("identifier \"warp_sum\" is undefined"));
    }

    #[test]
    fn rate_limit_is_retried_honouring_retry_after() {
        let server = TestServer::start(vec![
            Reply::with_header(429, "retry-after", "0.4", "{\"type\":\"error\"}"),
            Reply::json(200, &answer_json(&good_text())),
        ]);
        let p = proposer(&server.url, Duration::from_secs(5), 3);
        let start = Instant::now();
        let batch = p.propose(&sample_request()).expect("batch after retry");
        assert!(
            start.elapsed() >= Duration::from_millis(400),
            "retry-after ignored: {:?}",
            start.elapsed()
        );
        assert_eq!(batch.proposals.len(), 1);
        assert_eq!(server.requests().len(), 2);
    }

    #[test]
    fn rate_limit_on_every_attempt_is_reported() {
        let server = TestServer::start((0..3).map(|_| Reply::json(429, "{}")).collect());
        let err = proposer(&server.url, Duration::from_secs(5), 2)
            .propose(&sample_request())
            .unwrap_err();
        assert!(
            matches!(err, ProposeError::RateLimited { attempts: 3 }),
            "{err:?}"
        );
        assert_eq!(server.requests().len(), 3);
    }

    #[test]
    fn server_errors_exhaust_the_retries() {
        let server = TestServer::start(
            (0..3)
                .map(|_| Reply::json(500, "{\"error\":\"boom\"}"))
                .collect(),
        );
        let err = proposer(&server.url, Duration::from_secs(5), 2)
            .propose(&sample_request())
            .unwrap_err();
        match &err {
            ProposeError::Server {
                status: 500,
                attempts: 3,
                body_excerpt,
            } => assert!(body_excerpt.contains("boom")),
            other => panic!("{other:?}"),
        }
        assert_eq!(server.requests().len(), 3);
        assert!(err.is_transient());
    }

    #[test]
    fn auth_failure_is_immediate_and_never_shows_the_key() {
        // The body echoes the key, as a misbehaving proxy might.
        let body = format!("{{\"error\":{{\"type\":\"authentication_error\",\"message\":\"invalid x-api-key {KEY}\"}}}}");
        let server = TestServer::start(vec![
            Reply::json(401, &body),
            Reply::json(200, &answer_json(&good_text())),
        ]);
        let p = proposer(&server.url, Duration::from_secs(5), 3);
        let err = p.propose(&sample_request()).unwrap_err();
        assert!(
            matches!(err, ProposeError::Auth { status: 401, .. }),
            "{err:?}"
        );
        assert_eq!(server.requests().len(), 1, "401 must not be retried");
        let shown = format!("{err} {err:?} {p:?} {:?}", p.config);
        assert!(!shown.contains(KEY), "key leaked: {shown}");
        assert!(shown.contains("ANTHROPIC_API_KEY"));
        assert!(shown.contains("authentication_error"));
    }

    #[test]
    fn other_client_errors_are_not_retried() {
        let server = TestServer::start(vec![Reply::json(400, "{\"error\":\"model: not found\"}")]);
        let err = proposer(&server.url, Duration::from_secs(5), 3)
            .propose(&sample_request())
            .unwrap_err();
        match err {
            ProposeError::Rejected {
                status: 400,
                body_excerpt,
            } => assert!(body_excerpt.contains("model: not found")),
            other => panic!("{other:?}"),
        }
        assert_eq!(server.requests().len(), 1);
    }

    #[test]
    fn malformed_bodies_are_reported() {
        let server = TestServer::start(vec![
            Reply::json(200, "<html>gateway</html>"),
            Reply::json(200, "{\"id\":1}"),
        ]);
        let p = proposer(&server.url, Duration::from_secs(5), 0);
        let err = p.propose(&sample_request()).unwrap_err();
        assert!(
            matches!(&err, ProposeError::Malformed { detail } if detail.contains("<html>gateway")),
            "{err:?}"
        );
        let err = p.propose(&sample_request()).unwrap_err();
        assert!(
            matches!(&err, ProposeError::Malformed { detail } if detail.contains("content")),
            "{err:?}"
        );
    }

    #[test]
    fn silent_server_times_out_within_the_limit() {
        let server = TestServer::start(vec![Reply::Hang(Duration::from_secs(8))]);
        let p = proposer(&server.url, Duration::from_secs(1), 3);
        let start = Instant::now();
        let err = p.propose(&sample_request()).unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, ProposeError::Timeout { .. }), "{err:?}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{took:?}"
        );
        assert_eq!(server.requests().len(), 1, "timeouts are not retried");
    }

    #[test]
    fn answer_without_candidates_is_no_usable_answer() {
        let server = TestServer::start(vec![Reply::json(
            200,
            &answer_json("I cannot improve this kernel."),
        )]);
        let err = proposer(&server.url, Duration::from_secs(5), 0)
            .propose(&sample_request())
            .unwrap_err();
        assert!(
            matches!(&err, ProposeError::NoUsableAnswer { reasons } if reasons[0].contains("no code block")),
            "{err:?}"
        );
    }

    #[test]
    fn truncated_answer_says_max_tokens() {
        let text = format!("{}\n### Variant 2\n```cuda\n// kiln: block=1", good_text());
        let mut body: Value = serde_json::from_str(&answer_json(&text)).expect("json");
        body["stop_reason"] = json!("max_tokens");
        let server = TestServer::start(vec![Reply::json(200, &body.to_string())]);
        let batch = proposer(&server.url, Duration::from_secs(5), 0)
            .propose(&sample_request())
            .expect("batch");
        assert_eq!(batch.proposals.len(), 1);
        assert!(
            batch
                .rejected
                .iter()
                .any(|r| r.contains("block 2 is not closed")),
            "{:?}",
            batch.rejected
        );
        assert!(
            batch
                .rejected
                .iter()
                .any(|r| r.contains("max_tokens (8192)")),
            "{:?}",
            batch.rejected
        );
    }

    #[test]
    fn missing_key_names_the_variable() {
        let err = AnthropicConfig::from_env(&|_| None).unwrap_err();
        assert!(err.to_string().contains("ANTHROPIC_API_KEY"), "{err}");
        let err = AnthropicConfig::from_env(&|v| (v == API_KEY_VAR).then(|| "  ".to_string()))
            .unwrap_err();
        assert!(matches!(err, ProposeError::MissingApiKey { .. }));
    }

    #[test]
    fn bad_base_url_is_an_option_error() {
        let env = |var: &str| (var == API_KEY_VAR).then(|| KEY.to_string());
        let mut config = AnthropicConfig::from_env(&env).expect("config");
        config.base_url = "api.anthropic.com".into();
        let err = AnthropicProposer::new(config).unwrap_err();
        assert!(matches!(err, ProposeError::InvalidOption(_)), "{err:?}");
    }
}
