//! The parent's side of the GPU worker: spawn it, talk [`protocol`](crate::protocol),
//! enforce timeouts, and replace it after any failure.
//!
//! A [`WorkerHandle`] owns one child process. A reader thread turns the child's
//! stdout into messages on a channel, so every request waits with
//! `recv_timeout`; a second thread keeps the last [`STDERR_TAIL_BYTES`] of its
//! stderr. On a timeout, end of stream or garbage, the handle kills the child
//! (its whole process group on Unix, so helpers it started die too), reaps it,
//! and reports a [`WorkerFailure`]. A dead handle is never reused.
//!
//! [`WorkerPool`] is the supervisor: it starts a worker on demand, and after
//! any failure the next request goes to a fresh one. Its
//! [`evaluate`](WorkerPool::evaluate) applies the scoring policy:
//!
//! * timeout: the candidate hangs → scored failure at [`Stage::Timeout`];
//! * the worker died: retried once on a fresh worker (the death may be the
//!   machinery's: OOM killer, a driver hiccup); a second death → scored failure
//!   at [`Stage::Crash`];
//! * anything else (cannot start, protocol garbage, the worker reports an
//!   error): retried up to `max_attempts`, then
//!   [`EvalOutcome::MachineryFailure`], never scored.

use crate::protocol::{
    read_message, write_message, EvalJob, ProtocolError, Request, Response, PROTOCOL_VERSION,
};
use crate::record::{EvalOutcome, Stage};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufReader, Read};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How much of a worker's stderr is kept for crash reports, in bytes.
pub const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// How long a worker that closed its stdout gets to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// The command that starts a worker (the `kiln` binary in worker mode, or a fake in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    /// Program to run.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables.
    pub envs: Vec<(OsString, OsString)>,
}

impl WorkerCommand {
    /// A command with arguments and no extra environment.
    pub fn new(
        program: impl Into<OsString>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        WorkerCommand {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            envs: Vec::new(),
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }
}

/// Why a request to a worker did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum WorkerFailure {
    /// The process could not be started.
    #[error("cannot start worker `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The worker started but did not complete the `Hello` handshake.
    #[error("worker failed to start: {0}")]
    Startup(Box<WorkerFailure>),
    /// No answer in time; the worker was killed.
    #[error("no answer within {:.1} s; the worker was killed", after.as_secs_f64())]
    Timeout {
        /// The timeout.
        after: Duration,
    },
    /// The worker exited or closed its output.
    #[error("worker died ({}); stderr tail: {}", describe_status(.status), if stderr_tail.is_empty() { "(empty)" } else { stderr_tail.as_str() })]
    Crashed {
        /// Exit status, if it could be collected.
        status: Option<ExitStatus>,
        /// The end of its stderr.
        stderr_tail: String,
    },
    /// The worker wrote something that is not the expected message; it was killed.
    #[error("worker broke the protocol: {0}")]
    Protocol(String),
    /// The worker speaks another protocol version.
    #[error("worker speaks protocol version {worker}, this parent speaks {parent}")]
    VersionMismatch {
        /// Worker's version.
        worker: u32,
        /// Ours.
        parent: u32,
    },
    /// The worker answered with an error message instead of a result.
    #[error("worker reported an error: {0}")]
    WorkerError(String),
}

fn describe_status(status: &Option<ExitStatus>) -> String {
    match status {
        Some(s) => s.to_string(),
        None => "exit status unknown".to_string(),
    }
}

#[derive(Default)]
struct StderrTail {
    bytes: VecDeque<u8>,
    done: bool,
}

/// One running worker process.
pub struct WorkerHandle {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Result<Response, ProtocolError>>,
    stderr: Arc<Mutex<StderrTail>>,
    next_id: u64,
    device: serde_json::Value,
    dead: Arc<AtomicBool>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("pid", &self.child.id())
            .field("device", &self.device)
            .finish()
    }
}

impl WorkerHandle {
    /// Starts the worker and completes the `Hello`/`Ready` handshake within `startup_timeout`.
    pub fn spawn(
        command: &WorkerCommand,
        startup_timeout: Duration,
    ) -> Result<Self, WorkerFailure> {
        let spawn_err = |source| WorkerFailure::Spawn {
            program: command.program.to_string_lossy().into_owned(),
            source,
        };
        let mut cmd = Command::new(&command.program);
        cmd.args(&command.args)
            .envs(command.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let stdin = child.stdin.take();
        let (stdout, stderr_pipe) = match (child.stdout.take(), child.stderr.take()) {
            (Some(o), Some(e)) => (o, e),
            _ => {
                kill_child(&mut child);
                return Err(spawn_err(std::io::Error::other("child pipes missing")));
            }
        };
        let (tx, rx) = mpsc::channel();
        let reader = thread::Builder::new()
            .name("kiln-worker-stdout".into())
            .spawn(move || {
                let mut r = BufReader::new(stdout);
                loop {
                    let msg = read_message::<_, Response>(&mut r);
                    let stop = msg.is_err();
                    if tx.send(msg).is_err() || stop {
                        break;
                    }
                }
            });
        let stderr = Arc::new(Mutex::new(StderrTail::default()));
        let sink = Arc::clone(&stderr);
        let drain = thread::Builder::new()
            .name("kiln-worker-stderr".into())
            .spawn(move || drain_stderr(stderr_pipe, &sink));
        if let Err(e) = reader.and(drain) {
            kill_child(&mut child);
            return Err(spawn_err(e));
        }
        let mut handle = WorkerHandle {
            child,
            stdin,
            rx,
            stderr,
            next_id: 1,
            device: serde_json::Value::Null,
            dead: Arc::new(AtomicBool::new(false)),
        };
        let startup = |f| WorkerFailure::Startup(Box::new(f));
        match handle
            .request(
                |id| Request::Hello {
                    id,
                    version: PROTOCOL_VERSION,
                },
                startup_timeout,
            )
            .map_err(startup)?
        {
            Response::Ready {
                version, device, ..
            } if version == PROTOCOL_VERSION => {
                handle.device = device;
                Ok(handle)
            }
            Response::Ready { version, .. } => {
                handle.kill();
                Err(startup(WorkerFailure::VersionMismatch {
                    worker: version,
                    parent: PROTOCOL_VERSION,
                }))
            }
            Response::Error { message, .. } => {
                handle.kill();
                Err(startup(WorkerFailure::WorkerError(message)))
            }
            other => {
                handle.kill();
                Err(startup(WorkerFailure::Protocol(format!(
                    "expected `ready`, got {other:?}"
                ))))
            }
        }
    }

    /// The device facts the worker reported in `Ready`.
    pub fn device(&self) -> &serde_json::Value {
        &self.device
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the worker was killed or found dead; a dead handle refuses requests.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Runs one evaluation.
    pub fn evaluate(
        &mut self,
        job: &EvalJob,
        timeout: Duration,
    ) -> Result<EvalOutcome, WorkerFailure> {
        match self.request(
            |id| Request::Evaluate {
                id,
                job: Box::new(job.clone()),
            },
            timeout,
        )? {
            Response::Result { outcome, .. } => Ok(outcome),
            Response::Error { message, .. } => Err(WorkerFailure::WorkerError(message)),
            other => {
                self.kill();
                Err(WorkerFailure::Protocol(format!(
                    "expected `result`, got {other:?}"
                )))
            }
        }
    }

    /// Sends the request `build(id)` and waits up to `timeout` for the answer carrying that id.
    pub fn request(
        &mut self,
        build: impl FnOnce(u64) -> Request,
        timeout: Duration,
    ) -> Result<Response, WorkerFailure> {
        if self.is_dead() {
            return Err(WorkerFailure::Protocol(
                "this worker is dead; start a new one".into(),
            ));
        }
        let id = self.next_id;
        self.next_id += 1;
        let request = build(id);
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(self.crashed());
        };
        match write_message(stdin, &request) {
            Ok(()) => {}
            Err(ProtocolError::Io(_)) => return Err(self.crashed()),
            Err(e) => return Err(WorkerFailure::Protocol(format!("cannot send request: {e}"))),
        }
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(response)) => match response.id() {
                Some(got) if got == id => Ok(response),
                None if matches!(response, Response::Error { .. }) => Ok(response),
                got => {
                    self.kill();
                    Err(WorkerFailure::Protocol(format!(
                        "answer carries id {got:?}, expected {id}"
                    )))
                }
            },
            Ok(Err(
                ProtocolError::Eof | ProtocolError::Truncated { .. } | ProtocolError::Io(_),
            ))
            | Err(RecvTimeoutError::Disconnected) => Err(self.crashed()),
            Ok(Err(e)) => {
                self.kill();
                Err(WorkerFailure::Protocol(e.to_string()))
            }
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                Err(WorkerFailure::Timeout { after: timeout })
            }
        }
    }

    /// Asks the worker to exit, waits up to `grace`, then kills it; returns its exit status.
    pub fn shutdown(mut self, grace: Duration) -> Option<ExitStatus> {
        if !self.is_dead() {
            let id = self.next_id;
            if let Some(stdin) = self.stdin.as_mut() {
                let _ = write_message(stdin, &Request::Shutdown { id });
            }
            self.stdin = None;
            if let Some(status) = wait_with_timeout(&mut self.child, grace) {
                self.dead.store(true, Ordering::SeqCst);
                return Some(status);
            }
        }
        self.kill()
    }

    /// Kills the worker (and its process group) and reaps it; returns its exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.dead.store(true, Ordering::SeqCst);
        self.stdin = None;
        kill_child(&mut self.child)
    }

    /// The worker closed its output: give it a moment to exit, kill it, and report its status and stderr.
    fn crashed(&mut self) -> WorkerFailure {
        self.stdin = None;
        let status = match wait_with_timeout(&mut self.child, EXIT_GRACE) {
            Some(s) => {
                // Its helpers may still hold the pipes; make sure the group is gone.
                self.dead.store(true, Ordering::SeqCst);
                kill_group(&self.child);
                Some(s)
            }
            None => self.kill(),
        };
        self.dead.store(true, Ordering::SeqCst);
        WorkerFailure::Crashed {
            status,
            stderr_tail: self.stderr_tail(Duration::from_millis(500)),
        }
    }

    /// The end of the worker's stderr, waiting up to `wait` for the pipe to close.
    fn stderr_tail(&self, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let done = self.stderr.lock().map(|t| t.done).unwrap_or(true);
            if done || Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let bytes: Vec<u8> = match self.stderr.lock() {
            Ok(t) => t.bytes.iter().copied().collect(),
            Err(_) => Vec::new(),
        };
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        if !self.is_dead() {
            self.kill();
        }
    }
}

fn drain_stderr(mut pipe: impl Read, sink: &Mutex<StderrTail>) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Ok(mut tail) = sink.lock() {
            tail.bytes.extend(&buf[..n]);
            let excess = tail.bytes.len().saturating_sub(STDERR_TAIL_BYTES);
            tail.bytes.drain(..excess);
        }
    }
    if let Ok(mut tail) = sink.lock() {
        tail.done = true;
    }
}

/// Polls for the child's exit for up to `timeout`.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// Sends SIGKILL to the child's process group (it leads its own group; see `spawn`).
fn kill_group(child: &Child) {
    #[cfg(unix)]
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions. The child leads its own
        // process group (process_group(0) at spawn) and is not yet reaped, or was
        // reaped just now by us, so the group id still names only its processes.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    #[cfg(not(unix))]
    let _ = child;
}

/// Kills the child and its group, then reaps it.
fn kill_child(child: &mut Child) -> Option<ExitStatus> {
    kill_group(child);
    let _ = child.kill();
    child.wait().ok()
}

/// How a [`WorkerPool`] starts workers and how long it waits.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The worker command.
    pub command: WorkerCommand,
    /// Limit for the `Hello`/`Ready` handshake (CUDA context creation, bandwidth measurement).
    pub startup_timeout: Duration,
    /// Limit for one evaluation.
    pub request_timeout: Duration,
    /// Attempts per evaluation before giving up as a machinery failure (at least 1).
    pub max_attempts: u32,
}

impl PoolConfig {
    /// A config with 60 s startup, 120 s per evaluation, 3 attempts.
    pub fn new(command: WorkerCommand) -> Self {
        PoolConfig {
            command,
            startup_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(120),
            max_attempts: 3,
        }
    }
}

/// Supervises one worker at a time, replacing it after every failure.
#[derive(Debug)]
pub struct WorkerPool {
    config: PoolConfig,
    worker: Option<WorkerHandle>,
    started: u64,
}

impl WorkerPool {
    /// A pool that starts its first worker on the first request.
    pub fn new(config: PoolConfig) -> Self {
        WorkerPool {
            config,
            worker: None,
            started: 0,
        }
    }

    /// How many workers this pool has started.
    pub fn workers_started(&self) -> u64 {
        self.started
    }

    /// The current worker's pid, if one is running.
    pub fn worker_pid(&self) -> Option<u32> {
        self.worker.as_ref().map(WorkerHandle::pid)
    }

    /// The current worker's device facts, if one is running.
    pub fn device(&self) -> Option<&serde_json::Value> {
        self.worker.as_ref().map(WorkerHandle::device)
    }

    fn ensure_worker(&mut self) -> Result<&mut WorkerHandle, WorkerFailure> {
        if self.worker.as_ref().is_some_and(WorkerHandle::is_dead) {
            self.worker = None;
        }
        if self.worker.is_none() {
            self.started += 1;
            self.worker = Some(WorkerHandle::spawn(
                &self.config.command,
                self.config.startup_timeout,
            )?);
        }
        self.worker
            .as_mut()
            .ok_or_else(|| WorkerFailure::Protocol("no worker".into()))
    }

    /// Starts a worker now (if none runs) and returns its device description.
    pub fn start(&mut self) -> Result<&serde_json::Value, WorkerFailure> {
        self.ensure_worker().map(|w| w.device())
    }

    /// One attempt: the current (or a fresh) worker runs `job`; after a failure the worker is discarded.
    pub fn try_evaluate(&mut self, job: &EvalJob) -> Result<EvalOutcome, WorkerFailure> {
        let timeout = self.config.request_timeout;
        let result = self.ensure_worker().and_then(|w| w.evaluate(job, timeout));
        if result.is_err() {
            if let Some(mut w) = self.worker.take() {
                w.kill();
            }
        }
        result
    }

    /// Evaluates `job` under the module's policy: hangs and repeated crashes are scored, machinery failures are not.
    pub fn evaluate(&mut self, job: &EvalJob) -> EvalOutcome {
        let mut crashes = 0;
        let mut last = String::from("no attempt was made (max_attempts is 0)");
        for _ in 0..self.config.max_attempts.max(1) {
            match self.try_evaluate(job) {
                Ok(outcome) => return outcome,
                Err(WorkerFailure::Timeout { after }) => {
                    return EvalOutcome::failure(
                        Stage::Timeout,
                        format!(
                            "no result within {:.1} s: the kernel probably never finishes (infinite loop, deadlock, or far too slow); the worker was killed",
                            after.as_secs_f64()
                        ),
                    )
                }
                Err(e @ WorkerFailure::Crashed { .. }) => {
                    crashes += 1;
                    if crashes >= 2 {
                        return EvalOutcome::failure(
                            Stage::Crash,
                            format!("the worker died twice while running this candidate (likely an illegal memory access, misaligned access or trap): {e}"),
                        );
                    }
                    last = e.to_string();
                }
                Err(e) => last = e.to_string(),
            }
        }
        EvalOutcome::MachineryFailure { reason: last }
    }

    /// Shuts the current worker down gracefully (1 s grace).
    pub fn shutdown(&mut self) {
        if let Some(w) = self.worker.take() {
            w.shutdown(Duration::from_secs(1));
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    //! Fake worker: no GPU here. A POSIX shell script speaks the protocol and
    //! misbehaves on request, chosen by the job's `target`.

    use super::*;
    use crate::record::{EvalRecord, EvalStatus, ShapeId, StageTimings};

    const FAKE_WORKER: &str = r#"
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"type":"[a-z]*","id":\([0-9]*\).*/\1/p')
  case "$line" in
    *'"type":"hello"'*)
      if [ -n "$FAKE_NO_HELLO" ]; then sleep 30; fi
      printf '{"type":"ready","id":%s,"version":%s,"device":{"name":"fake worker: no GPU here"}}\n' "$id" "${FAKE_VERSION:-1}" ;;
    *'"type":"shutdown"'*) exit 0 ;;
    *'"target":"answer"'*) printf '{"type":"result","id":%s,"outcome":%s}\n' "$id" "$FAKE_OUTCOME" ;;
    *'"target":"hang"'*) sleep 30 & echo $! > "$FAKE_PIDFILE"; wait ;;
    *'"target":"exit"'*) echo "fake worker: simulated illegal address" >&2; exit 3 ;;
    *'"target":"garbage"'*) echo 'this is not json' ;;
    *'"target":"half"'*) printf '{"type":"result","id":%s,"outc' "$id"; exit 0 ;;
    *'"target":"wrong_id"'*) printf '{"type":"result","id":999,"outcome":%s}\n' "$FAKE_OUTCOME" ;;
    *'"target":"error"'*) printf '{"type":"error","id":%s,"message":"unknown target"}\n' "$id" ;;
    *'"target":"crash_once"'*)
      if [ -e "$FAKE_MARKER" ]; then printf '{"type":"result","id":%s,"outcome":%s}\n' "$id" "$FAKE_OUTCOME";
      else : > "$FAKE_MARKER"; exit 1; fi ;;
  esac
done
"#;

    fn outcome() -> EvalOutcome {
        EvalOutcome::Scored(EvalRecord::passed(
            vec![],
            1.5,
            Some(3.0),
            String::new(),
            StageTimings::default(),
        ))
    }

    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Self {
            Fake {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }

        fn command(&self) -> WorkerCommand {
            let outcome = serde_json::to_string(&outcome()).expect("json");
            WorkerCommand::new("sh", ["-c", FAKE_WORKER])
                .env("FAKE_OUTCOME", outcome)
                .env("FAKE_PIDFILE", self.dir.path().join("pid"))
                .env("FAKE_MARKER", self.dir.path().join("marker"))
        }

        fn pool(&self, timeout_ms: u64) -> WorkerPool {
            WorkerPool::new(PoolConfig {
                command: self.command(),
                startup_timeout: Duration::from_secs(10),
                request_timeout: Duration::from_millis(timeout_ms),
                max_attempts: 3,
            })
        }

        fn grandchild_pid(&self) -> Option<i32> {
            std::fs::read_to_string(self.dir.path().join("pid"))
                .ok()?
                .trim()
                .parse()
                .ok()
        }
    }

    fn job(target: &str) -> EvalJob {
        EvalJob {
            target: target.into(),
            source: "// kiln: block=32 grid=1 smem=0".into(),
            launch: "block=32 grid=1 smem=0".into(),
            compiled: None,
            shapes: vec![ShapeId {
                name: "t1".into(),
                vars: [("T".to_string(), 1)].into_iter().collect(),
            }],
            seed: 7,
            warmup: 1,
            iters: 10,
            extra: serde_json::Value::Null,
        }
    }

    /// Whether a pid is gone (or a zombie awaiting its new parent's reaping).
    fn process_gone(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let gone = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => true,
                Ok(stat) => stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z')),
            };
            if gone || Instant::now() >= deadline {
                return gone;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn fake_worker_answers_and_is_reused() {
        let fake = Fake::new();
        let mut pool = fake.pool(5000);
        assert_eq!(pool.evaluate(&job("answer")), outcome());
        let pid = pool.worker_pid();
        assert_eq!(
            pool.device(),
            Some(&serde_json::json!({"name": "fake worker: no GPU here"}))
        );
        assert_eq!(pool.evaluate(&job("answer")), outcome());
        assert_eq!(pool.worker_pid(), pid);
        assert_eq!(pool.workers_started(), 1);
        pool.shutdown();
        assert_eq!(pool.worker_pid(), None);
    }

    #[test]
    fn fake_worker_hang_is_killed_within_timeout_and_scored() {
        let fake = Fake::new();
        let mut pool = fake.pool(300);
        let started = Instant::now();
        let out = pool.evaluate(&job("hang"));
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        match &out {
            EvalOutcome::Scored(EvalRecord {
                status:
                    EvalStatus::Failed {
                        stage: Stage::Timeout,
                        reason,
                    },
                reward,
                ..
            }) => {
                assert!(reason.contains("0.3 s"), "{reason}");
                assert_eq!(*reward, 0.0);
            }
            other => panic!("{other:?}"),
        }
        // The worker's own child (the sleep) died with it: the whole group was killed.
        let sleeper = fake
            .grandchild_pid()
            .expect("fake worker wrote its sleeper's pid");
        assert!(process_gone(sleeper), "sleeper {sleeper} still running");
        // The next request goes to a fresh worker.
        assert_eq!(pool.evaluate(&job("answer")), outcome());
        assert_eq!(pool.workers_started(), 2);
    }

    #[test]
    fn fake_worker_exit_mid_request_reports_status_and_stderr() {
        let fake = Fake::new();
        let mut handle =
            WorkerHandle::spawn(&fake.command(), Duration::from_secs(10)).expect("spawn");
        match handle.evaluate(&job("exit"), Duration::from_secs(10)) {
            Err(WorkerFailure::Crashed {
                status,
                stderr_tail,
            }) => {
                assert_eq!(status.and_then(|s| s.code()), Some(3));
                assert!(
                    stderr_tail.contains("simulated illegal address"),
                    "{stderr_tail}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(handle.is_dead());
        assert!(matches!(
            handle.evaluate(&job("answer"), Duration::from_secs(1)),
            Err(WorkerFailure::Protocol(_))
        ));
    }

    #[test]
    fn fake_worker_crashing_twice_is_scored_as_crash() {
        let fake = Fake::new();
        let mut pool = fake.pool(5000);
        match pool.evaluate(&job("exit")) {
            EvalOutcome::Scored(EvalRecord {
                status:
                    EvalStatus::Failed {
                        stage: Stage::Crash,
                        reason,
                    },
                ..
            }) => {
                assert!(reason.contains("simulated illegal address"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(pool.workers_started(), 2);
    }

    #[test]
    fn fake_worker_crashing_once_is_retried_on_a_fresh_worker() {
        let fake = Fake::new();
        let mut pool = fake.pool(5000);
        assert_eq!(pool.evaluate(&job("crash_once")), outcome());
        assert_eq!(pool.workers_started(), 2);
    }

    #[test]
    fn fake_worker_garbage_is_a_machinery_failure_after_retries() {
        let fake = Fake::new();
        let mut pool = fake.pool(5000);
        match pool.try_evaluate(&job("garbage")) {
            Err(WorkerFailure::Protocol(m)) => assert!(m.contains("this is not json"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            pool.worker_pid(),
            None,
            "a worker that spoke garbage is discarded"
        );
        let out = pool.evaluate(&job("garbage"));
        assert!(out.is_machinery_failure(), "{out:?}");
        assert_eq!(out.reward(), None);
        assert_eq!(pool.workers_started(), 1 + 3);
    }

    #[test]
    fn fake_worker_truncated_or_mislabelled_answers() {
        let fake = Fake::new();
        let mut pool = fake.pool(5000);
        assert!(matches!(
            pool.try_evaluate(&job("half")),
            Err(WorkerFailure::Crashed { .. })
        ));
        assert!(
            matches!(pool.try_evaluate(&job("wrong_id")), Err(WorkerFailure::Protocol(m)) if m.contains("999"))
        );
        assert_eq!(pool.evaluate(&job("answer")), outcome());
        assert_eq!(pool.workers_started(), 3);
    }

    #[test]
    fn fake_worker_error_reply_is_machinery() {
        let fake = Fake::new();
        let mut pool = fake.pool(5000);
        assert_eq!(pool.evaluate(&job("answer")), outcome());
        // A reported error discards the worker (it may be in a bad state) and is machinery after retries.
        assert!(
            matches!(pool.try_evaluate(&job("error")), Err(WorkerFailure::WorkerError(m)) if m == "unknown target")
        );
        assert_eq!(pool.worker_pid(), None);
        assert!(pool.evaluate(&job("error")).is_machinery_failure());
    }

    #[test]
    fn startup_failures_are_machinery() {
        let fake = Fake::new();
        let missing = WorkerCommand::new("/nonexistent/kiln-worker", Vec::<String>::new());
        assert!(matches!(
            WorkerHandle::spawn(&missing, Duration::from_secs(1)),
            Err(WorkerFailure::Spawn { .. })
        ));
        let mut pool = WorkerPool::new(PoolConfig {
            max_attempts: 2,
            ..PoolConfig::new(missing)
        });
        assert!(pool.evaluate(&job("answer")).is_machinery_failure());

        let silent = fake.command().env("FAKE_NO_HELLO", "1");
        let started = Instant::now();
        match WorkerHandle::spawn(&silent, Duration::from_millis(300)) {
            Err(WorkerFailure::Startup(inner)) => {
                assert!(matches!(*inner, WorkerFailure::Timeout { .. }))
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));

        let old = fake.command().env("FAKE_VERSION", "99");
        match WorkerHandle::spawn(&old, Duration::from_secs(10)) {
            Err(WorkerFailure::Startup(inner)) => assert!(matches!(
                *inner,
                WorkerFailure::VersionMismatch {
                    worker: 99,
                    parent: 1
                }
            )),
            other => panic!("{other:?}"),
        }
        // A timeout during startup is never blamed on a candidate.
        let mut pool = WorkerPool::new(PoolConfig {
            startup_timeout: Duration::from_millis(200),
            max_attempts: 1,
            ..PoolConfig::new(silent)
        });
        assert!(pool.evaluate(&job("answer")).is_machinery_failure());
    }

    #[test]
    fn graceful_shutdown() {
        let fake = Fake::new();
        let handle = WorkerHandle::spawn(&fake.command(), Duration::from_secs(10)).expect("spawn");
        assert_eq!(handle.device()["name"], "fake worker: no GPU here");
        let status = handle.shutdown(Duration::from_secs(5)).expect("status");
        assert!(status.success(), "{status}");
    }
}
