//! The parent's side of the GPU worker: spawn it, talk [`protocol`](crate::protocol),
//! enforce timeouts, and replace it after any failure.
//!
//! A [`WorkerHandle`] owns one child process and a private channel to it: two
//! pipes passed as fds 3 (requests) and 4 (responses), announced in
//! [`REQUEST_FD_ENV`]/[`RESPONSE_FD_ENV`]. The worker's stdin is `/dev/null`;
//! its stdout and stderr (where a candidate's device printf lands) are drained
//! into one capped buffer ([`OUTPUT_TAIL_BYTES`]), never parsed. A reader
//! thread turns the response pipe into messages on a channel, so every request
//! waits with `recv_timeout`. Every response must carry the handle's random
//! [`Secret`] and the request's id; anything else on the channel (junk, a
//! wrong secret, a wrong id) means the channel is corrupted and the worker is
//! killed (its whole process group on Unix, so helpers it started die too).
//! A dead handle is never reused.
//!
//! [`WorkerPool`] is the supervisor: it starts a worker on demand, and after
//! any failure the next request goes to a fresh one. Its
//! [`evaluate`](WorkerPool::evaluate) applies the scoring policy. Anything
//! that happens while a candidate's request is in flight is that candidate's:
//!
//! * timeout: the candidate hangs → scored failure at [`Stage::Timeout`];
//! * the worker died: retried once on a fresh worker (the death may be the
//!   machinery's: OOM killer, a driver hiccup); a second death → scored failure
//!   at [`Stage::Crash`];
//! * the channel was corrupted (junk, a wrong or missing secret, a wrong id):
//!   scored failure at [`Stage::Crash`] at once, never retried (it is
//!   deterministic cheating, not bad luck);
//! * a sticky CUDA error: the worker reports it as the candidate's crash and exits.
//!
//! Only failures with no candidate involved are machinery: the worker cannot
//! start, the handshake fails (even by junk or a timeout), the versions
//! differ, or the worker answers `Error`. They are retried up to
//! `max_attempts`, then [`EvalOutcome::MachineryFailure`], never scored.
//!
//! Whatever the worker printed while a candidate ran is attached to that
//! candidate's record ([`EvalRecord::candidate_output`](crate::record::EvalRecord::candidate_output)).
//!
//! Unix only: elsewhere spawning a worker is a [`WorkerFailure::Spawn`] that says so.

use crate::child::{describe_status, kill_and_reap, kill_group};
use crate::protocol::{
    read_message, write_message, DeviceSummary, EvalJob, ProtocolError, Request, Response, Secret,
    PROTOCOL_VERSION, REQUEST_FD_ENV, RESPONSE_FD_ENV,
};
use crate::record::{EvalOutcome, EvalRecord, Stage, CANDIDATE_OUTPUT_BYTES};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How much of a worker's stdout and stderr (together) is kept, in bytes.
pub const OUTPUT_TAIL_BYTES: usize = 16 * 1024;

/// The fd the worker reads requests from.
pub const WORKER_REQUEST_FD: i32 = 3;

/// The fd the worker writes responses to.
pub const WORKER_RESPONSE_FD: i32 = 4;

/// How long a worker that closed its channel gets to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// How long the parent waits for a candidate's last printed bytes to arrive
/// after its answer (stdout and the channel are separate pipes).
const OUTPUT_SETTLE: Duration = Duration::from_millis(100);

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
    /// The worker exited or closed its channel.
    #[error("worker died ({}); output tail: {}", describe_status(.status), if output_tail.is_empty() { "(empty)" } else { output_tail.as_str() })]
    Crashed {
        /// Exit status, if it could be collected.
        status: Option<ExitStatus>,
        /// The end of its stdout and stderr.
        output_tail: String,
    },
    /// Something other than the expected message came over the protocol
    /// channel (junk, a wrong or missing secret, a wrong id); the worker was killed.
    #[error("the worker's protocol channel was corrupted: {0}")]
    Corrupted(String),
    /// This side could not use the channel (a dead handle, an unencodable request).
    #[error("worker protocol: {0}")]
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

/// The end of the worker's stdout and stderr, and how much it wrote in all.
#[derive(Default)]
struct OutputTail {
    bytes: VecDeque<u8>,
    /// Bytes ever written (both streams).
    total: u64,
    /// Streams that reached end of file.
    closed: u8,
}

/// The parent's half of a running worker: process, channel, output.
struct Channel {
    child: Child,
    requests: Option<File>,
    rx: Receiver<Result<Response, ProtocolError>>,
    output: Arc<Mutex<OutputTail>>,
    secret: Secret,
    next_id: u64,
    dead: bool,
}

/// One running worker process.
pub struct WorkerHandle {
    chan: Channel,
    device: DeviceSummary,
    last_output: String,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("pid", &self.chan.child.id())
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
        let mut chan = Channel::spawn(command)?;
        let startup = |f| WorkerFailure::Startup(Box::new(f));
        let secret = chan.secret;
        match chan
            .request(
                |id| Request::Hello {
                    id,
                    version: PROTOCOL_VERSION,
                    secret,
                },
                startup_timeout,
            )
            .map_err(startup)?
        {
            Response::Ready {
                version, device, ..
            } if version == PROTOCOL_VERSION => Ok(WorkerHandle {
                chan,
                device,
                last_output: String::new(),
            }),
            Response::Ready { version, .. } => {
                chan.kill();
                Err(startup(WorkerFailure::VersionMismatch {
                    worker: version,
                    parent: PROTOCOL_VERSION,
                }))
            }
            Response::Error { message, .. } => {
                chan.kill();
                Err(startup(WorkerFailure::WorkerError(message)))
            }
            other => {
                chan.kill();
                Err(startup(WorkerFailure::Corrupted(format!(
                    "expected `ready`, got {}",
                    kind_of(&other)
                ))))
            }
        }
    }

    /// The device the worker reported in `Ready`.
    pub fn device(&self) -> &DeviceSummary {
        &self.device
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.chan.child.id()
    }

    /// Whether the worker was killed or found dead; a dead handle refuses requests.
    pub fn is_dead(&self) -> bool {
        self.chan.dead
    }

    /// What the worker printed (stdout and stderr) during the last
    /// [`evaluate`](Self::evaluate), at most [`CANDIDATE_OUTPUT_BYTES`].
    pub fn last_output(&self) -> &str {
        &self.last_output
    }

    /// Runs one evaluation; a scored record gets the output printed meanwhile.
    pub fn evaluate(
        &mut self,
        job: &EvalJob,
        timeout: Duration,
    ) -> Result<EvalOutcome, WorkerFailure> {
        let before = self.chan.output_total();
        let result = self.chan.request(
            |id| Request::Evaluate {
                id,
                job: Box::new(job.clone()),
            },
            timeout,
        );
        self.last_output = self.chan.output_since(before);
        match result? {
            Response::Result { outcome, .. } => Ok(match outcome {
                EvalOutcome::Scored(mut record) => {
                    record.candidate_output = self.last_output.clone();
                    EvalOutcome::Scored(record)
                }
                machinery => machinery,
            }),
            Response::Error { message, .. } => Err(WorkerFailure::WorkerError(message)),
            other => {
                self.chan.kill();
                Err(WorkerFailure::Corrupted(format!(
                    "expected `result`, got {}",
                    kind_of(&other)
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
        self.chan.request(build, timeout)
    }

    /// Asks the worker to exit, waits up to `grace`, then kills it; returns its exit status.
    pub fn shutdown(mut self, grace: Duration) -> Option<ExitStatus> {
        self.chan.shutdown(grace)
    }

    /// Kills the worker (and its process group) and reaps it; returns its exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.chan.kill()
    }
}

/// A message's type, for reports (never its content: it may be forged).
fn kind_of(r: &Response) -> &'static str {
    match r {
        Response::Ready { .. } => "`ready`",
        Response::Result { .. } => "`result`",
        Response::Error { .. } => "`error`",
    }
}

impl Channel {
    #[cfg(unix)]
    fn spawn(command: &WorkerCommand) -> Result<Self, WorkerFailure> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;

        let spawn_err = |source| WorkerFailure::Spawn {
            program: command.program.to_string_lossy().into_owned(),
            source,
        };
        // Both ends are close-on-exec: only the child's fds 3 and 4 (made in
        // pre_exec) survive into it, and no other child inherits them.
        let (req_read, req_write) = cloexec_pipe().map_err(spawn_err)?;
        let (resp_read, resp_write) = cloexec_pipe().map_err(spawn_err)?;
        let (child_in, child_out) = (req_read.as_raw_fd(), resp_write.as_raw_fd());
        let mut cmd = Command::new(&command.program);
        cmd.args(&command.args)
            .envs(command.envs.iter().map(|(k, v)| (k, v)))
            .env(REQUEST_FD_ENV, WORKER_REQUEST_FD.to_string())
            .env(RESPONSE_FD_ENV, WORKER_RESPONSE_FD.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: runs in the forked child before exec; fcntl(2) and dup2(2)
        // are async-signal-safe and nothing here allocates.
        unsafe {
            cmd.pre_exec(move || install_channel_fds(child_in, child_out));
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        // The child has its copies; ours must close, or its death would never
        // read as end of stream.
        drop(req_read);
        drop(resp_write);
        let (stdout, stderr) = match (child.stdout.take(), child.stderr.take()) {
            (Some(o), Some(e)) => (o, e),
            _ => {
                kill_and_reap(&mut child);
                return Err(spawn_err(std::io::Error::other("child pipes missing")));
            }
        };
        let (tx, rx) = mpsc::channel();
        let responses = File::from(resp_read);
        let reader = thread::Builder::new()
            .name("kiln-worker-channel".into())
            .spawn(move || {
                let mut r = BufReader::new(responses);
                loop {
                    let msg = read_message::<_, Response>(&mut r);
                    let stop = msg.is_err();
                    if tx.send(msg).is_err() || stop {
                        break;
                    }
                }
            });
        let output = Arc::new(Mutex::new(OutputTail::default()));
        let (o1, o2) = (Arc::clone(&output), Arc::clone(&output));
        let drain_out = thread::Builder::new()
            .name("kiln-worker-stdout".into())
            .spawn(move || drain_output(stdout, &o1));
        let drain_err = thread::Builder::new()
            .name("kiln-worker-stderr".into())
            .spawn(move || drain_output(stderr, &o2));
        if let Err(e) = reader.and(drain_out).and(drain_err) {
            kill_and_reap(&mut child);
            return Err(spawn_err(e));
        }
        Ok(Channel {
            child,
            requests: Some(File::from(req_write)),
            rx,
            output,
            secret: Secret::random(),
            next_id: 1,
            dead: false,
        })
    }

    #[cfg(not(unix))]
    fn spawn(command: &WorkerCommand) -> Result<Self, WorkerFailure> {
        Err(WorkerFailure::Spawn {
            program: command.program.to_string_lossy().into_owned(),
            source: std::io::Error::other(
                "the GPU worker needs Unix: its protocol runs over inherited pipe fds",
            ),
        })
    }

    fn request(
        &mut self,
        build: impl FnOnce(u64) -> Request,
        timeout: Duration,
    ) -> Result<Response, WorkerFailure> {
        if self.dead {
            return Err(WorkerFailure::Protocol(
                "this worker is dead; start a new one".into(),
            ));
        }
        let id = self.next_id;
        self.next_id += 1;
        let request = build(id);
        let Some(requests) = self.requests.as_mut() else {
            return Err(self.crashed());
        };
        match write_message(requests, &request) {
            Ok(()) => {}
            Err(ProtocolError::Io(_)) => return Err(self.crashed()),
            Err(e) => return Err(WorkerFailure::Protocol(format!("cannot send request: {e}"))),
        }
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(response)) => {
                if response.secret() != self.secret {
                    self.kill();
                    return Err(WorkerFailure::Corrupted(format!(
                        "a {} message without this worker's secret",
                        kind_of(&response)
                    )));
                }
                match response.id() {
                    Some(got) if got == id => Ok(response),
                    None if matches!(response, Response::Error { .. }) => Ok(response),
                    got => {
                        self.kill();
                        Err(WorkerFailure::Corrupted(format!(
                            "answer carries id {got:?}, expected {id}"
                        )))
                    }
                }
            }
            Ok(Err(
                ProtocolError::Eof | ProtocolError::Truncated { .. } | ProtocolError::Io(_),
            ))
            | Err(RecvTimeoutError::Disconnected) => Err(self.crashed()),
            Ok(Err(e)) => {
                self.kill();
                Err(WorkerFailure::Corrupted(e.to_string()))
            }
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                Err(WorkerFailure::Timeout { after: timeout })
            }
        }
    }

    fn shutdown(&mut self, grace: Duration) -> Option<ExitStatus> {
        if !self.dead {
            let id = self.next_id;
            if let Some(requests) = self.requests.as_mut() {
                let _ = write_message(requests, &Request::Shutdown { id });
            }
            self.requests = None;
            if let Some(status) = wait_with_timeout(&mut self.child, grace) {
                self.dead = true;
                return Some(status);
            }
        }
        self.kill()
    }

    fn kill(&mut self) -> Option<ExitStatus> {
        self.dead = true;
        self.requests = None;
        kill_and_reap(&mut self.child)
    }

    /// The worker closed its channel: give it a moment to exit, kill it, and report its status and output.
    fn crashed(&mut self) -> WorkerFailure {
        self.requests = None;
        let status = match wait_with_timeout(&mut self.child, EXIT_GRACE) {
            Some(s) => {
                // Its helpers may still hold the pipes; make sure the group is gone.
                kill_group(&self.child);
                Some(s)
            }
            None => kill_and_reap(&mut self.child),
        };
        self.dead = true;
        self.settle_output(Duration::from_millis(500));
        WorkerFailure::Crashed {
            status,
            output_tail: self.tail_string(OUTPUT_TAIL_BYTES),
        }
    }

    fn output_total(&self) -> u64 {
        self.output.lock().map(|t| t.total).unwrap_or(0)
    }

    /// Waits until both output streams closed, or nothing new arrived for a
    /// few milliseconds, or `wait` passed: output travels on other pipes than
    /// the answer and may trail it slightly.
    fn settle_output(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        let mut last = self.output_total();
        let mut quiet_since = Instant::now();
        loop {
            let closed = self.output.lock().map(|t| t.closed >= 2).unwrap_or(true);
            let now = Instant::now();
            if closed || now >= deadline || now - quiet_since >= Duration::from_millis(10) {
                return;
            }
            thread::sleep(Duration::from_millis(2));
            let total = self.output_total();
            if total != last {
                last = total;
                quiet_since = Instant::now();
            }
        }
    }

    /// What the worker printed since the output total was `before`, capped at
    /// [`CANDIDATE_OUTPUT_BYTES`] (the end is kept).
    fn output_since(&self, before: u64) -> String {
        self.settle_output(OUTPUT_SETTLE);
        let Ok(tail) = self.output.lock() else {
            return String::new();
        };
        let new = usize::try_from(tail.total.saturating_sub(before)).unwrap_or(usize::MAX);
        if new == 0 {
            return String::new();
        }
        let keep = new.min(tail.bytes.len()).min(CANDIDATE_OUTPUT_BYTES);
        let bytes: Vec<u8> = tail
            .bytes
            .iter()
            .skip(tail.bytes.len() - keep)
            .copied()
            .collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if keep < new {
            format!("[{} earlier bytes not kept]\n{text}", new - keep)
        } else {
            text
        }
    }

    /// The last `max` bytes of the worker's output.
    fn tail_string(&self, max: usize) -> String {
        let bytes: Vec<u8> = match self.output.lock() {
            Ok(t) => t
                .bytes
                .iter()
                .skip(t.bytes.len().saturating_sub(max))
                .copied()
                .collect(),
            Err(_) => Vec::new(),
        };
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if !self.dead {
            self.kill();
        }
    }
}

/// A pipe whose both ends are close-on-exec, created atomically where the OS can.
#[cfg(unix)]
fn cloexec_pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0 as libc::c_int; 2];
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    ))]
    {
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    )))]
    {
        // SAFETY: `fds` is a valid array of two ints for pipe to fill; the
        // fcntl calls only touch the two fds just created. (A fork between
        // the calls could leak them into an unrelated child until it execs;
        // harmless, since its exec closes them.)
        unsafe {
            if libc::pipe(fds.as_mut_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in fds {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
    // SAFETY: both fds were just created by pipe and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// In the forked child: puts the request pipe on fd 3 and the response pipe
/// on fd 4, both inheritable.
#[cfg(unix)]
fn install_channel_fds(request: libc::c_int, response: libc::c_int) -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // First move both above the target numbers: dup2 onto an fd that is the
    // other pipe (or the same number, where it would keep close-on-exec)
    // would lose one of them. The copies are close-on-exec and vanish at exec.
    // SAFETY: fcntl and dup2 on fds this process owns; async-signal-safe.
    unsafe {
        let high_req = libc::fcntl(request, libc::F_DUPFD_CLOEXEC, 10);
        if high_req < 0 {
            return Err(err());
        }
        let high_resp = libc::fcntl(response, libc::F_DUPFD_CLOEXEC, 10);
        if high_resp < 0 {
            return Err(err());
        }
        // dup2's new fd never has close-on-exec: these two survive exec.
        if libc::dup2(high_req, WORKER_REQUEST_FD) < 0 {
            return Err(err());
        }
        if libc::dup2(high_resp, WORKER_RESPONSE_FD) < 0 {
            return Err(err());
        }
    }
    Ok(())
}

fn drain_output(mut pipe: impl Read, sink: &Mutex<OutputTail>) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if let Ok(mut tail) = sink.lock() {
            tail.bytes.extend(&buf[..n]);
            tail.total += n as u64;
            let excess = tail.bytes.len().saturating_sub(OUTPUT_TAIL_BYTES);
            tail.bytes.drain(..excess);
        }
    }
    if let Ok(mut tail) = sink.lock() {
        tail.closed += 1;
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
    last_output: String,
}

impl WorkerPool {
    /// A pool that starts its first worker on the first request.
    pub fn new(config: PoolConfig) -> Self {
        WorkerPool {
            config,
            worker: None,
            started: 0,
            last_output: String::new(),
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

    /// The current worker's device, if one is running.
    pub fn device(&self) -> Option<&DeviceSummary> {
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

    /// Sets the limit for each evaluation from now on.
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.config.request_timeout = timeout;
    }

    /// Starts a worker now (if none runs) and returns its device description.
    pub fn start(&mut self) -> Result<&DeviceSummary, WorkerFailure> {
        self.ensure_worker().map(|w| w.device())
    }

    /// One attempt: the current (or a fresh) worker runs `job`; after a failure the worker is discarded.
    pub fn try_evaluate(&mut self, job: &EvalJob) -> Result<EvalOutcome, WorkerFailure> {
        let timeout = self.config.request_timeout;
        self.last_output.clear();
        let result = self.ensure_worker().and_then(|w| w.evaluate(job, timeout));
        if let Some(w) = self.worker.as_mut() {
            self.last_output = w.last_output().to_string();
            if result.is_err() {
                w.kill();
                self.worker = None;
            }
        }
        result
    }

    /// Evaluates `job` under the module's policy: what happens while the
    /// candidate runs is scored (a death only after a retry), machinery
    /// failures are not.
    pub fn evaluate(&mut self, job: &EvalJob) -> EvalOutcome {
        let mut crashes = 0;
        let mut last = String::from("no attempt was made (max_attempts is 0)");
        for _ in 0..self.config.max_attempts.max(1) {
            match self.try_evaluate(job) {
                Ok(outcome) => return outcome,
                Err(WorkerFailure::Timeout { after }) => {
                    return self.scored(
                        Stage::Timeout,
                        format!(
                            "no result within {:.1} s: the kernel probably never finishes (infinite loop, deadlock, or far too slow); the worker was killed",
                            after.as_secs_f64()
                        ),
                    )
                }
                Err(WorkerFailure::Corrupted(detail)) => {
                    return self.scored(
                        Stage::Crash,
                        format!(
                            "the worker's protocol channel was corrupted while running this candidate ({detail}); the worker was killed"
                        ),
                    )
                }
                Err(e @ WorkerFailure::Crashed { .. }) => {
                    crashes += 1;
                    if crashes >= 2 {
                        return self.scored(
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

    /// A scored failure carrying what the worker printed during the last attempt.
    fn scored(&self, stage: Stage, reason: String) -> EvalOutcome {
        let mut record = EvalRecord::failed(stage, reason);
        record.candidate_output = self.last_output.clone();
        EvalOutcome::Scored(record)
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
    //! Fake worker: no GPU here. A POSIX shell script speaks the protocol on
    //! fds 3 and 4 and misbehaves on request, chosen by the job's `target`.

    use super::*;
    use crate::record::{EvalRecord, EvalStatus, StageTimings};

    const FAKE_WORKER: &str = r#"
secret=
while IFS= read -r line <&3; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"type":"[a-z]*","id":\([0-9]*\).*/\1/p')
  case "$line" in
    *'"type":"hello"'*)
      secret=$(printf '%s\n' "$line" | sed -n 's/.*"secret":"\([0-9a-f]*\)".*/\1/p')
      if [ -n "$FAKE_NO_HELLO" ]; then sleep 30; fi
      if [ -n "$FAKE_JUNK_HELLO" ]; then echo 'junk during the handshake' >&4; continue; fi
      printf '{"type":"ready","id":%s,"secret":"%s","version":%s,"device":%s}\n' "$id" "$secret" "${FAKE_VERSION:-2}" "$FAKE_DEVICE" >&4 ;;
    *'"type":"shutdown"'*) exit 0 ;;
    *'"target":"answer"'*) printf '{"type":"result","id":%s,"secret":"%s","outcome":%s}\n' "$id" "$secret" "$FAKE_OUTCOME" >&4 ;;
    *'"target":"forged"'*)
      # A candidate's device printf: a forged perfect result and junk, on stdout.
      printf '{"type":"result","id":%s,"secret":"%s","outcome":%s}\n' "$id" "$secret" "$FAKE_FORGED" ;
      echo 'this is not json'
      echo 'candidate stderr chatter' >&2
      printf '{"type":"result","id":%s,"secret":"%s","outcome":%s}\n' "$id" "$secret" "$FAKE_OUTCOME" >&4 ;;
    *'"target":"bad_secret"'*)
      echo 'printed before forging' ;
      printf '{"type":"result","id":%s,"secret":"%s","outcome":%s}\n' "$id" "0123456789abcdef0123456789abcdef" "$FAKE_FORGED" >&4 ;;
    *'"target":"no_secret"'*) printf '{"type":"result","id":%s,"outcome":%s}\n' "$id" "$FAKE_FORGED" >&4 ;;
    *'"target":"hang"'*) sleep 30 & echo $! > "$FAKE_PIDFILE"; wait ;;
    *'"target":"exit"'*) echo "fake worker: simulated illegal address" >&2; exit 3 ;;
    *'"target":"garbage"'*) echo 'this is not json' >&4 ;;
    *'"target":"half"'*) printf '{"type":"result","id":%s,"outc' "$id" >&4; exit 0 ;;
    *'"target":"wrong_id"'*) printf '{"type":"result","id":999,"secret":"%s","outcome":%s}\n' "$secret" "$FAKE_OUTCOME" >&4 ;;
    *'"target":"error"'*) printf '{"type":"error","id":%s,"secret":"%s","message":"unknown target"}\n' "$id" "$secret" >&4 ;;
    *'"target":"crash_once"'*)
      if [ -e "$FAKE_MARKER" ]; then printf '{"type":"result","id":%s,"secret":"%s","outcome":%s}\n' "$id" "$secret" "$FAKE_OUTCOME" >&4;
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

    fn forged() -> EvalOutcome {
        EvalOutcome::Scored(EvalRecord::passed(
            vec![],
            10.0,
            None,
            String::new(),
            StageTimings::default(),
        ))
    }

    fn fake_device() -> DeviceSummary {
        DeviceSummary {
            gpu_name: "fake worker: no GPU here".into(),
            gpu_arch: "sm_90".into(),
            driver_version: "13.0".into(),
            nvrtc_version: "13.0".into(),
            sm_count: 132,
            l2_mib: 50,
            peak_bytes_per_s: 3.0e12,
            launch_floor_us: 2.0,
        }
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
            let json = |v: &EvalOutcome| serde_json::to_string(v).expect("json");
            WorkerCommand::new("sh", ["-c", FAKE_WORKER])
                .env("FAKE_OUTCOME", json(&outcome()))
                .env("FAKE_FORGED", json(&forged()))
                .env(
                    "FAKE_DEVICE",
                    serde_json::to_string(&fake_device()).expect("json"),
                )
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
            compiled: None,
            seed: 7,
            warmup: 1,
            iters: 10,
        }
    }

    fn failure(out: &EvalOutcome) -> (Stage, &str, &EvalRecord) {
        match out {
            EvalOutcome::Scored(
                r @ EvalRecord {
                    status: EvalStatus::Failed { stage, reason },
                    ..
                },
            ) => (*stage, reason.as_str(), r),
            other => panic!("expected a scored failure, got {other:?}"),
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
        assert_eq!(pool.device(), Some(&fake_device()));
        assert_eq!(pool.evaluate(&job("answer")), outcome());
        assert_eq!(pool.worker_pid(), pid);
        assert_eq!(pool.workers_started(), 1);
        pool.shutdown();
        assert_eq!(pool.worker_pid(), None);
    }

    #[test]
    fn printed_results_and_junk_on_stdout_are_ignored_and_attached() {
        let fake = Fake::new();
        let mut pool = fake.pool(5000);
        let out = pool.evaluate(&job("forged"));
        let EvalOutcome::Scored(record) = &out else {
            panic!("{out:?}")
        };
        assert_eq!(record.reward, 1.5, "the result came from the protocol fds");
        assert!(
            record.candidate_output.contains("this is not json"),
            "{:?}",
            record.candidate_output
        );
        assert!(record.candidate_output.contains("candidate stderr chatter"));
        assert!(record.candidate_output.contains("\"reward\":10.0"));
        // The worker is healthy and reused; the next record has no output.
        assert_eq!(pool.evaluate(&job("answer")), outcome());
        assert_eq!(pool.workers_started(), 1);
    }

    #[test]
    fn a_wrong_or_missing_secret_is_the_candidate_s_scored_crash_without_retry() {
        for target in ["bad_secret", "no_secret", "garbage", "wrong_id"] {
            let fake = Fake::new();
            let mut pool = fake.pool(5000);
            let out = pool.evaluate(&job(target));
            let (stage, reason, record) = failure(&out);
            assert_eq!(stage, Stage::Crash, "{target}");
            assert!(
                reason.contains(
                    "the worker's protocol channel was corrupted while running this candidate"
                ),
                "{target}: {reason}"
            );
            assert_eq!(out.reward(), Some(0.0));
            assert_eq!(pool.workers_started(), 1, "{target}: never retried");
            assert_eq!(pool.worker_pid(), None, "{target}: the worker was killed");
            if target == "bad_secret" {
                assert!(record.candidate_output.contains("printed before forging"));
            }
        }
    }

    #[test]
    fn fake_worker_hang_is_killed_within_timeout_and_scored() {
        let fake = Fake::new();
        let mut pool = fake.pool(300);
        let started = Instant::now();
        let out = pool.evaluate(&job("hang"));
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        let (stage, reason, record) = failure(&out);
        assert_eq!(stage, Stage::Timeout);
        assert!(reason.contains("0.3 s"), "{reason}");
        assert_eq!(record.reward, 0.0);
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
    fn fake_worker_exit_mid_request_reports_status_and_output() {
        let fake = Fake::new();
        let mut handle =
            WorkerHandle::spawn(&fake.command(), Duration::from_secs(10)).expect("spawn");
        match handle.evaluate(&job("exit"), Duration::from_secs(10)) {
            Err(WorkerFailure::Crashed {
                status,
                output_tail,
            }) => {
                assert_eq!(status.and_then(|s| s.code()), Some(3));
                assert!(
                    output_tail.contains("simulated illegal address"),
                    "{output_tail}"
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
        let out = pool.evaluate(&job("exit"));
        let (stage, reason, record) = failure(&out);
        assert_eq!(stage, Stage::Crash);
        assert!(reason.contains("simulated illegal address"), "{reason}");
        assert!(record
            .candidate_output
            .contains("simulated illegal address"));
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
    fn fake_worker_truncated_answer_is_a_death() {
        let fake = Fake::new();
        let mut pool = fake.pool(5000);
        assert!(matches!(
            pool.try_evaluate(&job("half")),
            Err(WorkerFailure::Crashed { .. })
        ));
        assert!(
            matches!(pool.try_evaluate(&job("wrong_id")), Err(WorkerFailure::Corrupted(m)) if m.contains("999"))
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
                    parent: PROTOCOL_VERSION
                }
            )),
            other => panic!("{other:?}"),
        }
        // Junk during the handshake involves no candidate: machinery.
        let junk = fake.command().env("FAKE_JUNK_HELLO", "1");
        let mut pool = WorkerPool::new(PoolConfig {
            max_attempts: 2,
            ..PoolConfig::new(junk)
        });
        let out = pool.evaluate(&job("answer"));
        assert!(out.is_machinery_failure(), "{out:?}");
        assert_eq!(pool.workers_started(), 2);
        // A timeout during startup is never blamed on a candidate.
        let mut pool = WorkerPool::new(PoolConfig {
            startup_timeout: Duration::from_millis(200),
            max_attempts: 1,
            ..PoolConfig::new(silent)
        });
        assert!(pool.evaluate(&job("answer")).is_machinery_failure());
    }

    #[test]
    fn the_worker_sees_only_its_channel_on_fds_3_and_4() {
        // stdin is /dev/null and the fd numbers are announced in the environment.
        let script = r#"
read -r hello <&3
secret=$(printf '%s\n' "$hello" | sed -n 's/.*"secret":"\([0-9a-f]*\)".*/\1/p')
if read -r x; then stdin=data; else stdin=eof; fi
name="stdin=$stdin req=$KILN_WORKER_REQUEST_FD resp=$KILN_WORKER_RESPONSE_FD"
printf '{"type":"ready","id":1,"secret":"%s","version":2,"device":{"gpu_name":"%s","gpu_arch":"sm_90","driver_version":"x","nvrtc_version":"x","sm_count":1,"l2_mib":1,"peak_bytes_per_s":1.0,"launch_floor_us":1.0}}\n' "$secret" "$name" >&4
read -r rest <&3
"#;
        let handle = WorkerHandle::spawn(
            &WorkerCommand::new("sh", ["-c", script]),
            Duration::from_secs(10),
        )
        .expect("spawn");
        assert_eq!(handle.device().gpu_name, "stdin=eof req=3 resp=4");
        let status = handle.shutdown(Duration::from_secs(5)).expect("status");
        assert!(status.success(), "{status}");
    }

    #[test]
    fn graceful_shutdown() {
        let fake = Fake::new();
        let handle = WorkerHandle::spawn(&fake.command(), Duration::from_secs(10)).expect("spawn");
        assert_eq!(handle.device().gpu_name, "fake worker: no GPU here");
        let status = handle.shutdown(Duration::from_secs(5)).expect("status");
        assert!(status.success(), "{status}");
    }
}
