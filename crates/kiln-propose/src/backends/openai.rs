//! The `openai` backend: the Chat Completions API, which vLLM, llama.cpp's server and
//! ollama also speak.
//!
//! `POST {base}/chat/completions` with `Authorization: Bearer <key>`, body `{model,
//! messages: [system, user], temperature, max_tokens}`. The answer is
//! `choices[0].message.content`; tokens come from `usage.prompt_tokens` and
//! `usage.completion_tokens` (zero where a local server omits them).
//!
//! Configuration: `OPENAI_BASE_URL` (default `https://api.openai.com/v1`) and `OPENAI_API_KEY`.
//! The key is required only for api.openai.com: local servers usually need none, so with no
//! key set no `Authorization` header is sent at all.

use super::http::{HttpPolicy, JsonClient};
use super::{batch_from_answer, clean_base_url, u64_at, ApiKey, EnvLookup};
use crate::prompt::Prompt;
use kiln_search::propose::error::ProposeError;
use kiln_search::propose::request::{ProposalBatch, ProposalRequest, TokenUsage};
use kiln_search::propose::Proposer;
use serde_json::{json, Value};
use std::fmt;

/// The environment variable holding the key.
pub const API_KEY_VAR: &str = "OPENAI_API_KEY";
/// The environment variable overriding the base URL.
pub const BASE_URL_VAR: &str = "OPENAI_BASE_URL";
/// The public API.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// The model used when none is given (local servers need `--model` with their model's name).
pub const DEFAULT_MODEL: &str = "gpt-4.1";

/// Settings for [`OpenAiProposer`]. `Debug` is written by hand so the key never shows.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// The API key; `None` sends no `Authorization` header (local servers).
    pub api_key: Option<ApiKey>,
    /// Base URL including the version path, e.g. `http://localhost:8000/v1`.
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

impl OpenAiConfig {
    /// Defaults, with the key and base URL read through `env`; the key is required only
    /// when the base URL is OpenAI's own.
    pub fn from_env(env: EnvLookup<'_>) -> Result<Self, ProposeError> {
        let base_url = env(BASE_URL_VAR).unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        let api_key = env(API_KEY_VAR)
            .filter(|k| !k.trim().is_empty())
            .map(|k| ApiKey::new(k.trim()));
        let config = Self {
            api_key,
            base_url,
            model: DEFAULT_MODEL.to_string(),
            max_tokens: 8192,
            temperature: 0.7,
            http: HttpPolicy::default(),
        };
        config.check_key()?;
        Ok(config)
    }

    /// Fails when the base URL is OpenAI's and there is no key.
    fn check_key(&self) -> Result<(), ProposeError> {
        if self.api_key.is_none() && needs_key(&self.base_url) {
            return Err(ProposeError::MissingApiKey {
                var: API_KEY_VAR.to_string(),
            });
        }
        Ok(())
    }
}

/// True for api.openai.com, which always needs a key (local servers usually do not).
fn needs_key(base_url: &str) -> bool {
    let rest = base_url.split_once("://").map_or(base_url, |(_, r)| r);
    let host = rest
        .split(['/', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    host == "api.openai.com"
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.temperature)
            .field("http", &self.http)
            .finish()
    }
}

/// Proposes through Chat Completions.
pub struct OpenAiProposer {
    config: OpenAiConfig,
    url: String,
    client: JsonClient,
}

impl OpenAiProposer {
    /// Checks the configuration and builds the HTTP client.
    pub fn new(config: OpenAiConfig) -> Result<Self, ProposeError> {
        config.check_key()?;
        let url = format!("{}/chat/completions", clean_base_url(&config.base_url)?);
        let client = JsonClient::new(config.http.clone());
        Ok(Self {
            config,
            url,
            client,
        })
    }

    fn body(&self, prompt: &Prompt) -> Value {
        json!({
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        })
    }
}

impl fmt::Debug for OpenAiProposer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProposer")
            .field("config", &self.config)
            .field("url", &self.url)
            .finish()
    }
}

impl Proposer for OpenAiProposer {
    fn name(&self) -> &str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    fn propose(&self, req: &ProposalRequest) -> Result<ProposalBatch, ProposeError> {
        let prompt = Prompt::for_request(req);
        let key = self.config.api_key.as_ref().map(ApiKey::expose);
        let bearer = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        let answer =
            self.client
                .post_json(&self.url, &headers, &self.body(&prompt), key, API_KEY_VAR)?;
        let (text, usage, notes) = read_answer(&answer, self.config.max_tokens)?;
        batch_from_answer(&text, req.count, usage, notes)
    }
}

/// Extracts the text, usage and notes from a Chat Completions answer.
fn read_answer(
    answer: &Value,
    max_tokens: u32,
) -> Result<(String, TokenUsage, Vec<String>), ProposeError> {
    let choice = answer
        .pointer("/choices/0")
        .ok_or_else(|| ProposeError::Malformed {
            detail: format!(
                "no `choices[0]` in the Chat Completions answer: {}",
                super::http::excerpt(&answer.to_string(), None)
            ),
        })?;
    let mut notes = Vec::new();
    let text = match choice.pointer("/message/content") {
        Some(Value::String(s)) => s.clone(),
        // Some servers return content as a list of parts.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Some(Value::Null) | None => {
            if let Some(refusal) = choice.pointer("/message/refusal").and_then(Value::as_str) {
                notes.push(format!("the model refused: {refusal}"));
            }
            String::new()
        }
        Some(other) => {
            return Err(ProposeError::Malformed {
                detail: format!("`message.content` is not text: {other}"),
            });
        }
    };
    if choice.get("finish_reason").and_then(Value::as_str) == Some("length") {
        notes.push(format!(
            "the answer stopped at max_tokens ({max_tokens}); raise it or ask for fewer variants"
        ));
    }
    let usage = TokenUsage {
        input_tokens: u64_at(answer, "/usage/prompt_tokens"),
        output_tokens: u64_at(answer, "/usage/completion_tokens"),
    };
    Ok((text, usage, notes))
}

#[cfg(test)]
mod tests {
    use super::super::testserver::{Reply, TestServer};
    use super::*;
    use crate::prompt::tests::sample_request;
    use std::time::{Duration, Instant};

    const KEY: &str = "sk-proj-TEST-KEY-abcdef";

    fn answer_json(text: &str) -> String {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 900, "completion_tokens": 450, "total_tokens": 1350}
        })
        .to_string()
    }

    fn good_text() -> String {
        "### Variant 1\nReasoning: block per row.\n```cuda\n// kiln: block=256 grid=T smem=0\nextern \"C\" __global__ void rmsnorm(int T) {}\n```\n".to_string()
    }

    fn proposer(url: &str, key: Option<&str>, timeout: Duration, retries: u32) -> OpenAiProposer {
        let key = key.map(str::to_string);
        let url = url.to_string();
        let env = move |var: &str| match var {
            API_KEY_VAR => key.clone(),
            BASE_URL_VAR => Some(format!("{url}/v1")),
            _ => None,
        };
        let mut config = OpenAiConfig::from_env(&env).expect("config");
        config.model = "qwen3-coder".into();
        config.http = HttpPolicy {
            timeout,
            retries,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(2),
        };
        OpenAiProposer::new(config).expect("proposer")
    }

    #[test]
    fn success_sends_the_protocol_and_parses_the_answer() {
        let server = TestServer::start(vec![Reply::json(200, &answer_json(&good_text()))]);
        let req = sample_request();
        let batch = proposer(&server.url, Some(KEY), Duration::from_secs(5), 1)
            .propose(&req)
            .expect("batch");
        assert_eq!(batch.proposals.len(), 1);
        assert_eq!(
            batch.usage,
            TokenUsage {
                input_tokens: 900,
                output_tokens: 450
            }
        );
        let r = &server.requests()[0];
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        let body = r.json();
        assert_eq!(body["model"], "qwen3-coder");
        assert_eq!(body["max_tokens"], 8192);
        assert_eq!(body["messages"][0]["role"], "system");
        assert!(body["messages"][0]["content"]
            .as_str()
            .is_some_and(|s| s.contains("extern \"C\" __global__")));
        assert_eq!(body["messages"][1]["role"], "user");
        assert!(body["messages"][1]["content"]
            .as_str()
            .is_some_and(|s| s.contains(&req.target.signature)));
    }

    #[test]
    fn local_server_without_key_gets_no_authorization_header() {
        let server = TestServer::start(vec![Reply::json(200, &answer_json(&good_text()))]);
        proposer(&server.url, None, Duration::from_secs(5), 0)
            .propose(&sample_request())
            .expect("batch");
        assert_eq!(server.requests()[0].header("authorization"), None);
    }

    #[test]
    fn official_api_without_key_is_refused() {
        let err = OpenAiConfig::from_env(&|_| None).unwrap_err();
        assert!(
            matches!(&err, ProposeError::MissingApiKey { var } if var == API_KEY_VAR),
            "{err:?}"
        );
        assert!(needs_key("https://API.openai.com/v1"));
        assert!(!needs_key("http://localhost:11434/v1"));
        assert!(!needs_key("http://api.openai.com.example.internal/v1"));
    }

    #[test]
    fn rate_limit_is_retried_honouring_retry_after_ms() {
        let server = TestServer::start(vec![
            Reply::with_header(429, "retry-after-ms", "300", "{}"),
            Reply::with_header(503, "retry-after", "0.1", "{}"),
            Reply::json(200, &answer_json(&good_text())),
        ]);
        let start = Instant::now();
        proposer(&server.url, Some(KEY), Duration::from_secs(5), 3)
            .propose(&sample_request())
            .expect("batch");
        assert!(
            start.elapsed() >= Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(server.requests().len(), 3);
    }

    #[test]
    fn server_errors_exhaust_the_retries() {
        let server = TestServer::start((0..4).map(|_| Reply::json(502, "bad gateway")).collect());
        let err = proposer(&server.url, Some(KEY), Duration::from_secs(5), 3)
            .propose(&sample_request())
            .unwrap_err();
        assert!(
            matches!(
                err,
                ProposeError::Server {
                    status: 502,
                    attempts: 4,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(server.requests().len(), 4);
    }

    #[test]
    fn auth_failure_is_immediate_and_never_shows_the_key() {
        let body = format!("{{\"error\":{{\"message\":\"Incorrect API key provided: {KEY}\"}}}}");
        let server = TestServer::start(vec![
            Reply::json(403, &body),
            Reply::json(200, &answer_json(&good_text())),
        ]);
        let p = proposer(&server.url, Some(KEY), Duration::from_secs(5), 3);
        let err = p.propose(&sample_request()).unwrap_err();
        assert!(
            matches!(err, ProposeError::Auth { status: 403, .. }),
            "{err:?}"
        );
        assert_eq!(server.requests().len(), 1);
        let shown = format!("{err} {err:?} {p:?}");
        assert!(!shown.contains(KEY), "key leaked: {shown}");
        assert!(shown.contains("OPENAI_API_KEY"));
    }

    #[test]
    fn malformed_body_is_reported() {
        let server = TestServer::start(vec![Reply::json(200, "{\"choices\": [")]);
        let err = proposer(&server.url, None, Duration::from_secs(5), 0)
            .propose(&sample_request())
            .unwrap_err();
        assert!(matches!(err, ProposeError::Malformed { .. }), "{err:?}");
    }

    #[test]
    fn silent_server_times_out_within_the_limit() {
        let server = TestServer::start(vec![Reply::Hang(Duration::from_secs(8))]);
        let start = Instant::now();
        let err = proposer(&server.url, None, Duration::from_secs(1), 2)
            .propose(&sample_request())
            .unwrap_err();
        assert!(matches!(err, ProposeError::Timeout { .. }), "{err:?}");
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn refused_connections_are_retried_then_reported() {
        // A server with no script closes its socket at once: every connect is refused.
        let server = TestServer::start(Vec::new());
        std::thread::sleep(Duration::from_millis(50));
        let err = proposer(&server.url, None, Duration::from_secs(2), 2)
            .propose(&sample_request())
            .unwrap_err();
        assert!(
            matches!(&err, ProposeError::Transport(m) if m.contains("3 attempts")),
            "{err:?}"
        );
    }

    #[test]
    fn null_content_with_refusal_is_no_usable_answer() {
        let body = json!({"choices": [{"message": {"content": null, "refusal": "no"}, "finish_reason": "stop"}]});
        let server = TestServer::start(vec![Reply::json(200, &body.to_string())]);
        let err = proposer(&server.url, None, Duration::from_secs(5), 0)
            .propose(&sample_request())
            .unwrap_err();
        assert!(
            matches!(&err, ProposeError::NoUsableAnswer { reasons } if reasons.iter().any(|r| r.contains("refused"))),
            "{err:?}"
        );
    }
}
