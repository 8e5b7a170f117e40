//! Building a proposer from its command-line name.
//!
//! To add a backend: add its name to [`KNOWN_BACKENDS`] and one
//! arm to the `match` in [`backend_from_name_with_env`].

use crate::backends::anthropic::{AnthropicConfig, AnthropicProposer};
use crate::backends::claude_code::{ClaudeCodeConfig, ClaudeCodeProposer};
use crate::backends::http::HttpPolicy;
use crate::backends::mock::MockProposer;
use crate::backends::openai::{OpenAiConfig, OpenAiProposer};
use crate::backends::{process_env, EnvLookup};
use kiln_search::propose::ProposeError;
use kiln_search::propose::Proposer;
use std::path::PathBuf;
use std::time::Duration;

/// The backend names [`backend_from_name`] accepts.
pub const KNOWN_BACKENDS: &[&str] = &["offline", "mock", "claude-code", "anthropic", "openai"];

/// User choices shared by the backends; `None` keeps each backend's default.
/// Holds no secrets: API keys are read from the environment only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendOptions {
    /// Model id (`anthropic`, `openai`, `claude-code`).
    pub model: Option<String>,
    /// Base URL, overriding `ANTHROPIC_BASE_URL` / `OPENAI_BASE_URL`.
    pub base_url: Option<String>,
    /// Answer length limit in tokens (HTTP backends; default 8192).
    pub max_tokens: Option<u32>,
    /// Sampling temperature (HTTP backends; default 0.7).
    pub temperature: Option<f64>,
    /// Limit for one request or CLI run (default 300 s).
    pub timeout: Option<Duration>,
    /// Retries on 429, 5xx and connection failures (default 4).
    pub retries: Option<u32>,
    /// First backoff delay (default 2 s); tests make it tiny.
    pub retry_base_delay: Option<Duration>,
    /// The `claude` program, a name on `PATH` or a path (default `claude`).
    pub claude_program: Option<PathBuf>,
    /// Let `claude-code` use Claude Code's tools (default off).
    pub allow_tools: bool,
    /// Canned answers for `mock`.
    pub mock_answers: Vec<String>,
    /// Seed of the `offline` generator.
    pub seed: u64,
}

impl BackendOptions {
    fn http_policy(&self) -> HttpPolicy {
        let d = HttpPolicy::default();
        HttpPolicy {
            timeout: self.timeout.unwrap_or(d.timeout),
            retries: self.retries.unwrap_or(d.retries),
            base_delay: self.retry_base_delay.unwrap_or(d.base_delay),
            max_delay: d.max_delay,
        }
    }
}

/// Builds the backend called `name`, reading keys and base URLs from the process environment.
pub fn backend_from_name(
    name: &str,
    opts: &BackendOptions,
) -> Result<Box<dyn Proposer>, ProposeError> {
    backend_from_name_with_env(name, opts, &process_env)
}

/// Like [`backend_from_name`], reading environment variables through `env`.
pub fn backend_from_name_with_env(
    name: &str,
    opts: &BackendOptions,
    env: EnvLookup<'_>,
) -> Result<Box<dyn Proposer>, ProposeError> {
    let base_override = |var: &str| opts.base_url.clone().or_else(|| env(var));
    match name.trim().to_ascii_lowercase().as_str() {
        "offline" => Ok(Box::new(crate::offline::OfflineProposer::new(opts.seed))),
        "mock" => Ok(Box::new(MockProposer::new(opts.mock_answers.clone()))),
        "claude-code" => {
            let d = ClaudeCodeConfig::default();
            Ok(Box::new(ClaudeCodeProposer::new(ClaudeCodeConfig {
                program: opts.claude_program.clone().unwrap_or(d.program),
                model: opts.model.clone(),
                timeout: opts.timeout.unwrap_or(d.timeout),
                allow_tools: opts.allow_tools,
                working_dir: None,
            })?))
        }
        "anthropic" => {
            let lookup = |var: &str| match var {
                crate::backends::anthropic::BASE_URL_VAR => base_override(var),
                _ => env(var),
            };
            let mut c = AnthropicConfig::from_env(&lookup)?;
            c.model = opts.model.clone().unwrap_or(c.model);
            c.max_tokens = opts.max_tokens.unwrap_or(c.max_tokens);
            c.temperature = opts.temperature.unwrap_or(c.temperature);
            c.http = opts.http_policy();
            Ok(Box::new(AnthropicProposer::new(c)?))
        }
        "openai" => {
            let lookup = |var: &str| match var {
                crate::backends::openai::BASE_URL_VAR => base_override(var),
                _ => env(var),
            };
            let mut c = OpenAiConfig::from_env(&lookup)?;
            c.model = opts.model.clone().unwrap_or(c.model);
            c.max_tokens = opts.max_tokens.unwrap_or(c.max_tokens);
            c.temperature = opts.temperature.unwrap_or(c.temperature);
            c.http = opts.http_policy();
            Ok(Box::new(OpenAiProposer::new(c)?))
        }
        _ => Err(ProposeError::UnknownBackend {
            name: name.to_string(),
            known: KNOWN_BACKENDS.iter().map(|s| s.to_string()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::tests::sample_request;

    const KEY: &str = "sk-FACTORY-SECRET-42";

    fn env(var: &str) -> Option<String> {
        match var {
            "ANTHROPIC_API_KEY" | "OPENAI_API_KEY" => Some(KEY.to_string()),
            _ => None,
        }
    }

    #[test]
    fn builds_each_known_backend() {
        let opts = BackendOptions {
            model: Some("m-1".into()),
            ..BackendOptions::default()
        };
        for name in ["mock", "anthropic", "openai"] {
            let p = backend_from_name_with_env(name, &opts, &env).expect(name);
            assert_eq!(p.name(), name);
        }
        assert_eq!(
            backend_from_name_with_env("anthropic", &opts, &env)
                .expect("a")
                .model(),
            "m-1"
        );
        assert_eq!(
            backend_from_name_with_env("Anthropic ", &opts, &env)
                .expect("a")
                .name(),
            "anthropic"
        );
    }

    #[test]
    fn claude_code_uses_the_given_program() {
        let dir = tempfile::tempdir().expect("tempdir");
        let program = dir.path().join("claude");
        std::fs::write(&program, "#!/bin/sh\n").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let opts = BackendOptions {
            claude_program: Some(program),
            ..BackendOptions::default()
        };
        let p = backend_from_name_with_env("claude-code", &opts, &env).expect("claude-code");
        assert_eq!(p.name(), "claude-code");
        let opts = BackendOptions {
            claude_program: Some("/nonexistent/claude".into()),
            ..BackendOptions::default()
        };
        assert!(matches!(
            backend_from_name_with_env("claude-code", &opts, &env),
            Err(ProposeError::CliMissing { .. })
        ));
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = backend_from_name_with_env("gpt", &BackendOptions::default(), &env)
            .err()
            .expect("error");
        let msg = err.to_string();
        assert!(msg.contains("unknown proposer `gpt`"), "{msg}");
        for name in KNOWN_BACKENDS {
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn missing_keys_are_reported_per_backend() {
        let none = |_: &str| None;
        let err = backend_from_name_with_env("anthropic", &BackendOptions::default(), &none)
            .err()
            .expect("error");
        assert!(matches!(&err, ProposeError::MissingApiKey { var } if var == "ANTHROPIC_API_KEY"));
        // A local OpenAI-compatible server needs no key.
        let opts = BackendOptions {
            base_url: Some("http://127.0.0.1:9/v1".into()),
            ..BackendOptions::default()
        };
        assert!(backend_from_name_with_env("openai", &opts, &none).is_ok());
    }

    #[test]
    fn the_mock_from_the_factory_answers() {
        let answer = "```cuda\n// kiln: block=32 grid=T smem=0\nextern \"C\" __global__ void k(int T) {}\n```\n";
        let opts = BackendOptions {
            mock_answers: vec![answer.into()],
            ..BackendOptions::default()
        };
        let p = backend_from_name_with_env("mock", &opts, &env).expect("mock");
        assert_eq!(
            p.propose(&sample_request()).expect("batch").proposals.len(),
            1
        );
    }

    #[test]
    fn keys_never_show_in_debug_or_errors() {
        let opts = BackendOptions::default();
        let shown = [
            format!(
                "{:?}",
                backend_from_name_with_env("anthropic", &opts, &env).map(|p| p.name().to_string())
            ),
            format!("{:?}", AnthropicConfig::from_env(&env).expect("config")),
            format!("{:?}", OpenAiConfig::from_env(&env).expect("config")),
            format!("{:?}", crate::backends::ApiKey::new(KEY)),
            format!(
                "{:?}",
                AnthropicProposer::new(AnthropicConfig::from_env(&env).expect("config"))
                    .expect("p")
            ),
            format!(
                "{:?}",
                OpenAiProposer::new(OpenAiConfig::from_env(&env).expect("config")).expect("p")
            ),
            ProposeError::MissingApiKey {
                var: "ANTHROPIC_API_KEY".into(),
            }
            .to_string(),
        ]
        .join("\n");
        assert!(!shown.contains(KEY), "key leaked:\n{shown}");
        assert!(shown.contains("[redacted]"));
    }
}
