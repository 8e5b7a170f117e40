//! The `claude-code` backend: the local `claude` CLI (Claude Code) in print mode.
//!
//! The command is
//!
//! ```text
//! claude -p --output-format json --system-prompt <system> [--model M] [--tools "" --strict-mcp-config]
//! ```
//!
//! with the user prompt on stdin. Choices, and why:
//!
//! - `--system-prompt` *replaces* Claude Code's own agent prompt (about files, shells and
//!   tools, all irrelevant here) with kiln's, so the model sees the same instructions as
//!   through the APIs and no tokens are spent on the agent prompt.
//! - Unless [`ClaudeCodeConfig::allow_tools`] is set, `--tools ""` removes every built-in
//!   tool (no shell, no file access, no web) and `--strict-mcp-config` (with no
//!   `--mcp-config`) keeps the user's configured MCP servers out. `--disallowedTools` was not
//!   used: it is a deny list of named tools, so any tool not named stays available. The
//!   kernel source is untrusted model output and the prompt quotes earlier model output, so
//!   the model gets no way to act on this machine. CLI versions older than `--tools` fail
//!   with "unknown option", reported as [`ProposeError::CliFailed`].
//! - The child runs in the system temp folder, not the project, so the project's
//!   `CLAUDE.md` and `.claude/` settings do not leak into the prompt.
//! - `--output-format json` prints one object with `result` (the answer text), `is_error`
//!   and `usage`; an older CLI that prints plain text is accepted as the answer itself.
//! - On timeout the child's whole process group is killed (on Unix), so helpers it started
//!   do not linger holding the pipes open.

use super::{batch_from_answer, u64_at};
use crate::prompt::Prompt;
use kiln_search::propose::error::ProposeError;
use kiln_search::propose::request::{ProposalBatch, ProposalRequest, TokenUsage};
use kiln_search::propose::Proposer;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The program run when none is configured.
pub const DEFAULT_PROGRAM: &str = "claude";
/// The model recorded when the CLI picks its own default.
pub const CLI_DEFAULT_MODEL: &str = "claude-code-default";
/// The longest piece of error output quoted, in characters.
const EXCERPT_CHARS: usize = 600;

/// Settings for [`ClaudeCodeProposer`] (no secrets: the CLI holds its own login).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaudeCodeConfig {
    /// The program: a name looked up on `PATH`, or a path.
    pub program: PathBuf,
    /// `--model` to pass; `None` lets the CLI choose.
    pub model: Option<String>,
    /// Limit for one run; the child is killed after it.
    pub timeout: Duration,
    /// Let the model use Claude Code's tools (off by default: see the module docs).
    pub allow_tools: bool,
    /// The folder the CLI runs in; `None` is the system temp folder.
    pub working_dir: Option<PathBuf>,
}

impl Default for ClaudeCodeConfig {
    fn default() -> Self {
        Self {
            program: PathBuf::from(DEFAULT_PROGRAM),
            model: None,
            timeout: Duration::from_secs(300),
            allow_tools: false,
            working_dir: None,
        }
    }
}

/// Proposes by running the `claude` CLI.
#[derive(Debug)]
pub struct ClaudeCodeProposer {
    config: ClaudeCodeConfig,
    program: PathBuf,
    model_label: String,
}

impl ClaudeCodeProposer {
    /// Finds the program (on `PATH` for a bare name) or fails with [`ProposeError::CliMissing`].
    pub fn new(config: ClaudeCodeConfig) -> Result<Self, ProposeError> {
        let program = resolve_program(&config.program, std::env::var_os("PATH").as_deref())?;
        let model_label = config
            .model
            .clone()
            .unwrap_or_else(|| CLI_DEFAULT_MODEL.to_string());
        Ok(Self {
            config,
            program,
            model_label,
        })
    }

    /// The arguments passed to the CLI (the prompt goes on stdin).
    pub fn args(&self, system_prompt: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "-p",
            "--output-format",
            "json",
            "--system-prompt",
            system_prompt,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(model) = &self.config.model {
            args.extend(["--model".to_string(), model.clone()]);
        }
        if !self.config.allow_tools {
            args.extend([
                "--tools".to_string(),
                String::new(),
                "--strict-mcp-config".to_string(),
            ]);
        }
        args
    }

    fn program_name(&self) -> String {
        self.config.program.display().to_string()
    }
}

impl Proposer for ClaudeCodeProposer {
    fn name(&self) -> &str {
        "claude-code"
    }

    fn model(&self) -> &str {
        &self.model_label
    }

    fn propose(&self, req: &ProposalRequest) -> Result<ProposalBatch, ProposeError> {
        let prompt = Prompt::for_request(req);
        let dir = self
            .config
            .working_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let mut cmd = Command::new(&self.program);
        cmd.args(self.args(&prompt.system))
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        {
            // Its own process group, so a timeout can kill everything it started.
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let run =
            run_with_timeout(cmd, prompt.user.into_bytes(), self.config.timeout).map_err(|e| {
                match e {
                    RunError::Spawn(err) => ProposeError::CliFailed {
                        program: self.program_name(),
                        status: format!("could not start: {err}"),
                        stderr_excerpt: String::new(),
                    },
                    RunError::Timeout => ProposeError::Timeout {
                        what: format!("`{}`", self.program_name()),
                        after: self.config.timeout,
                    },
                }
            })?;
        let stdout = String::from_utf8_lossy(&run.stdout);
        let stderr = String::from_utf8_lossy(&run.stderr);
        if !run.status.success() {
            // In JSON mode the CLI reports its own errors on stdout.
            let detail = if stderr.trim().is_empty() {
                &stdout
            } else {
                &stderr
            };
            return Err(ProposeError::CliFailed {
                program: self.program_name(),
                status: describe_status(run.status),
                stderr_excerpt: excerpt(detail),
            });
        }
        let (text, usage) = read_output(&stdout).map_err(|reported| ProposeError::CliFailed {
            program: self.program_name(),
            status: "it reported an error".to_string(),
            stderr_excerpt: excerpt(&reported),
        })?;
        batch_from_answer(&text, req.count, usage, Vec::new())
    }
}

/// The answer text and usage from the CLI's stdout; `Err` carries an error the CLI reported.
fn read_output(stdout: &str) -> Result<(String, TokenUsage), String> {
    let value: Value = match serde_json::from_str(stdout.trim()) {
        Ok(v) => v,
        // Not JSON: an older CLI, or a wrapper script printing the text.
        Err(_) => return Ok((stdout.to_string(), TokenUsage::default())),
    };
    // Some versions print the whole event list; the last `result` event is the answer.
    let result = match &value {
        Value::Array(events) => events
            .iter()
            .rev()
            .find(|e| e.get("type").and_then(Value::as_str) == Some("result"))
            .cloned()
            .unwrap_or(Value::Null),
        other => other.clone(),
    };
    let Some(text) = result.get("result").and_then(Value::as_str) else {
        if result.get("is_error").and_then(Value::as_bool) == Some(true) {
            let subtype = result
                .get("subtype")
                .and_then(Value::as_str)
                .unwrap_or("error");
            return Err(format!("{subtype}: {stdout}"));
        }
        return Ok((stdout.to_string(), TokenUsage::default()));
    };
    if result.get("is_error").and_then(Value::as_bool) == Some(true) {
        return Err(text.to_string());
    }
    let usage = TokenUsage {
        input_tokens: u64_at(&result, "/usage/input_tokens")
            + u64_at(&result, "/usage/cache_creation_input_tokens")
            + u64_at(&result, "/usage/cache_read_input_tokens"),
        output_tokens: u64_at(&result, "/usage/output_tokens"),
    };
    Ok((text.to_string(), usage))
}

/// Finds `program`: a path is checked as is; a bare name is searched in `path_var`.
fn resolve_program(
    program: &Path,
    path_var: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, ProposeError> {
    let name = program.display().to_string();
    if program.components().count() > 1 || program.is_absolute() {
        if is_executable(program) {
            return Ok(program.to_path_buf());
        }
        let searched = program
            .parent()
            .map(Path::to_path_buf)
            .into_iter()
            .collect();
        return Err(ProposeError::CliMissing {
            program: name,
            searched,
        });
    }
    let dirs: Vec<PathBuf> = path_var
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    dirs.iter()
        .map(|d| d.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or(ProposeError::CliMissing {
            program: name,
            searched: dirs,
        })
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    "no exit status".to_string()
}

fn excerpt(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &t[..cut]),
        None if t.is_empty() => "(no output)".to_string(),
        None => t.to_string(),
    }
}

/// What a finished child produced.
struct RunOutput {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

enum RunError {
    Spawn(std::io::Error),
    Timeout,
}

/// Runs `cmd` with `input` on stdin; kills it (and its process group) after `timeout`.
fn run_with_timeout(
    mut cmd: Command,
    input: Vec<u8>,
    timeout: Duration,
) -> Result<RunOutput, RunError> {
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    // Stdin, stdout and stderr each get a thread: a child that does not read its input, or
    // writes more than a pipe holds, must not block us before the deadline.
    let stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            // A child that exits without reading gives a broken pipe; its status tells why.
            let _ = stdin.write_all(&input);
        }
    });
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill(&mut child);
                // The readers end once every holder of the pipes is gone; do not wait on them.
                return Err(RunError::Timeout);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                kill(&mut child);
                return Err(RunError::Spawn(e));
            }
        }
    };
    let _ = writer.join();
    Ok(RunOutput {
        status,
        stdout: join_reader(out),
        stderr: join_reader(err),
    })
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

fn join_reader(handle: JoinHandle<Vec<u8>>) -> Vec<u8> {
    handle.join().unwrap_or_default()
}

fn kill(child: &mut Child) {
    #[cfg(unix)]
    {
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) with a negative pid signals the process group we created for
            // this child (process_group(0) made its pid the group id); it touches no memory.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::tests::sample_request;

    /// Writes an executable shell script standing in for `claude`.
    fn fake_claude(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("claude");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        path
    }

    fn proposer(program: PathBuf, timeout: Duration) -> ClaudeCodeProposer {
        ClaudeCodeProposer::new(ClaudeCodeConfig {
            program,
            model: Some("claude-opus-4-1".into()),
            timeout,
            ..ClaudeCodeConfig::default()
        })
        .expect("proposer")
    }

    const ANSWER: &str = "### Variant 1\nReasoning: warp per row.\n```cuda\n// kiln: block=256 grid=T smem=0\nextern \"C\" __global__ void rmsnorm(int T) {}\n```\n";

    #[test]
    fn json_output_is_parsed_and_arguments_and_stdin_are_right() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = serde_json::json!({
            "type": "result", "subtype": "success", "is_error": false, "result": ANSWER,
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 70},
            "total_cost_usd": 0.01
        });
        std::fs::write(dir.path().join("out.json"), out.to_string()).expect("write");
        let d = dir.path().display();
        // Record argv one per line and stdin, then print the canned JSON.
        let script = format!(
            "for a in \"$@\"; do printf '%s\\n' \"[$a]\"; done > '{d}/args.txt'\ncat > '{d}/stdin.txt'\ncat '{d}/out.json'"
        );
        let p = proposer(fake_claude(dir.path(), &script), Duration::from_secs(10));
        let req = sample_request();
        let batch = p.propose(&req).expect("batch");
        assert_eq!(batch.proposals.len(), 1);
        assert_eq!(
            batch.usage,
            TokenUsage {
                input_tokens: 15,
                output_tokens: 70
            }
        );
        assert_eq!(p.model(), "claude-opus-4-1");

        let args = std::fs::read_to_string(dir.path().join("args.txt")).expect("args");
        for needle in [
            "[-p]",
            "[--output-format]\n[json]",
            "[--model]\n[claude-opus-4-1]",
            "[--tools]\n[]\n[--strict-mcp-config]",
            "[--system-prompt]",
        ] {
            assert!(args.contains(needle), "missing {needle:?} in {args}");
        }
        assert!(
            args.contains("// kiln: block="),
            "system prompt passed as an argument"
        );
        let stdin = std::fs::read_to_string(dir.path().join("stdin.txt")).expect("stdin");
        assert_eq!(stdin, Prompt::for_request(&req).user);
    }

    #[test]
    fn allow_tools_drops_the_tool_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = ClaudeCodeProposer::new(ClaudeCodeConfig {
            program: fake_claude(dir.path(), "true"),
            allow_tools: true,
            ..ClaudeCodeConfig::default()
        })
        .expect("proposer");
        let args = p.args("SYS");
        assert!(
            !args
                .iter()
                .any(|a| a == "--tools" || a == "--strict-mcp-config"),
            "{args:?}"
        );
        assert!(!args.iter().any(|a| a == "--model"));
        assert_eq!(p.model(), CLI_DEFAULT_MODEL);
    }

    #[test]
    fn plain_text_output_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("answer.md"), ANSWER).expect("write");
        let script = format!("cat > /dev/null\ncat '{}/answer.md'", dir.path().display());
        let batch = proposer(fake_claude(dir.path(), &script), Duration::from_secs(10))
            .propose(&sample_request())
            .expect("batch");
        assert_eq!(batch.proposals.len(), 1);
        assert_eq!(batch.usage, TokenUsage::default());
    }

    #[test]
    fn non_zero_exit_reports_stderr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = "cat > /dev/null\necho 'Invalid API key · Please run /login' >&2\nexit 3";
        let err = proposer(fake_claude(dir.path(), script), Duration::from_secs(10))
            .propose(&sample_request())
            .unwrap_err();
        match err {
            ProposeError::CliFailed {
                status,
                stderr_excerpt,
                ..
            } => {
                assert_eq!(status, "exit status 3");
                assert!(
                    stderr_excerpt.contains("Please run /login"),
                    "{stderr_excerpt}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reported_error_result_is_cli_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = "cat > /dev/null\necho '{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":true,\"result\":\"Credit balance is too low\"}'";
        let err = proposer(fake_claude(dir.path(), script), Duration::from_secs(10))
            .propose(&sample_request())
            .unwrap_err();
        assert!(
            matches!(&err, ProposeError::CliFailed { stderr_excerpt, .. } if stderr_excerpt.contains("Credit balance")),
            "{err:?}"
        );
    }

    #[test]
    fn hanging_cli_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A child of the script keeps the pipes open: the group kill must reach it too.
        let script = format!(
            "sleep 30 &\necho $! > '{}/child.pid'\nwait",
            dir.path().display()
        );
        let p = proposer(fake_claude(dir.path(), &script), Duration::from_secs(1));
        let start = Instant::now();
        let err = p.propose(&sample_request()).unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, ProposeError::Timeout { .. }), "{err:?}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{took:?}"
        );
        #[cfg(target_os = "linux")]
        {
            let pid = std::fs::read_to_string(dir.path().join("child.pid")).expect("pid");
            std::thread::sleep(Duration::from_millis(200));
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
            // Gone, or a zombie awaiting its reaper: either way no longer running.
            assert!(
                stat.is_empty() || stat.contains(") Z "),
                "grandchild still running: {stat}"
            );
        }
    }

    #[test]
    fn missing_program_lists_the_searched_path() {
        let err = resolve_program(
            Path::new("kiln-no-such-claude"),
            Some(std::ffi::OsStr::new("/nonexistent/a:/nonexistent/b")),
        )
        .unwrap_err();
        match &err {
            ProposeError::CliMissing { program, searched } => {
                assert_eq!(program, "kiln-no-such-claude");
                assert_eq!(
                    searched,
                    &[
                        PathBuf::from("/nonexistent/a"),
                        PathBuf::from("/nonexistent/b")
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string().contains("/nonexistent/a:/nonexistent/b"),
            "{err}"
        );

        let err = ClaudeCodeProposer::new(ClaudeCodeConfig {
            program: PathBuf::from("/nonexistent/dir/claude"),
            ..ClaudeCodeConfig::default()
        })
        .unwrap_err();
        assert!(matches!(err, ProposeError::CliMissing { .. }), "{err:?}");
    }

    #[test]
    fn bare_name_is_found_on_the_given_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = fake_claude(dir.path(), "true");
        let path = std::env::join_paths([PathBuf::from("/nonexistent"), dir.path().to_path_buf()])
            .expect("join");
        assert_eq!(
            resolve_program(Path::new("claude"), Some(&path)).expect("found"),
            script
        );
    }
}
