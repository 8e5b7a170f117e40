//! NVRTC for hostile sources, in a bounded child process.
//!
//! Compiling is the first thing that runs a candidate's "code": templates,
//! `constexpr` evaluation and macros execute inside NVRTC. A compile bomb
//! (deep template recursion, a huge constexpr loop, macro explosion) can keep
//! NVRTC busy for hours or eat all memory, so a candidate is never compiled in
//! the judge's own process. [`CompileSandbox::compile`] starts a helper (the
//! `kiln __compile` subcommand, which calls [`serve_compile`]) in its own
//! process group with `RLIMIT_AS` (memory) and `RLIMIT_CPU` set before it
//! runs, sends it one [`CompileJob`] as JSON on stdin, reads one
//! [`CompileAnswer`] from its stdout, and kills the whole group once the
//! wall-clock limit passes.
//!
//! Outcomes:
//! * compiled: the cubin, its PTX and NVRTC's log ([`CompiledCandidate`]);
//! * NVRTC rejected the source, or the compile exceeded its time or memory
//!   limit, or the compiler was killed by a signal: the candidate's scored
//!   failure at `Stage::Compile` ([`CompileFailure::Rejected`]), with a reason
//!   that names the limit;
//! * the helper could not start, NVRTC is missing, or the helper answered
//!   nonsense: [`CompileFailure::Machinery`], never the candidate's fault.
//!
//! Unix only: elsewhere every compile is a machinery failure saying so.

use crate::child::{describe_status, kill_and_reap, kill_group};
use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kiln_cuda::{Arch, CompileRequest, Compiler, CudaError, OutputKind};
use serde::{Deserialize, Serialize};

use crate::worker_client::WorkerCommand;

/// Default wall-clock limit of one compilation.
pub const DEFAULT_COMPILE_WALL: Duration = Duration::from_secs(60);

/// Default address-space limit of the compile child (8 GiB).
pub const DEFAULT_COMPILE_MEMORY_BYTES: u64 = 8 << 30;

/// The most a compile child may write on stdout (the hex-encoded image and
/// PTX); more is treated as a runaway compile.
pub const MAX_ANSWER_BYTES: usize = 512 << 20;

/// How much of the compile child's stderr is kept for reports.
const STDERR_TAIL_BYTES: usize = 16 * 1024;

/// One compilation, as the parent sends it to the compile child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompileJob {
    /// Program name shown in NVRTC's log.
    pub name: String,
    /// CUDA C++ source.
    pub source: String,
    /// `-D NAME=VALUE` defines, in order.
    pub defines: Vec<(String, String)>,
    /// Target architecture.
    pub arch: Arch,
    /// Cubin (with its PTX) or PTX only.
    pub output: OutputKind,
}

impl CompileJob {
    /// A cubin job.
    pub fn cubin(
        name: impl Into<String>,
        source: impl Into<String>,
        defines: Vec<(String, String)>,
        arch: Arch,
    ) -> Self {
        CompileJob {
            name: name.into(),
            source: source.into(),
            defines,
            arch,
            output: OutputKind::Cubin,
        }
    }
}

/// The compile child's one answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CompileAnswer {
    /// NVRTC compiled the source.
    Compiled {
        /// Cubin bytes or PTX text, hex-encoded on the wire.
        #[serde(with = "hex_bytes")]
        image: Vec<u8>,
        /// Which of the two `image` holds.
        output: OutputKind,
        /// The PTX of the same compilation when `image` is a cubin.
        ptx: Option<String>,
        /// NVRTC's log (warnings).
        log: String,
    },
    /// NVRTC rejected the source.
    Rejected {
        /// NVRTC's log.
        log: String,
    },
    /// NVRTC itself failed or is missing (not the candidate's fault).
    Unavailable {
        /// What went wrong.
        message: String,
    },
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// Runs one job with NVRTC in this process (the compile child's side).
pub fn run_compile_job(job: &CompileJob) -> CompileAnswer {
    let compiler = match Compiler::new() {
        Ok(c) => c,
        Err(e) => {
            return CompileAnswer::Unavailable {
                message: e.to_string(),
            }
        }
    };
    let mut req = CompileRequest::new(job.name.clone(), job.source.clone())
        .arch(job.arch)
        .output(job.output);
    req.defines = job.defines.clone();
    match compiler.compile(&req) {
        Ok(c) => CompileAnswer::Compiled {
            image: c.image,
            output: c.output,
            ptx: c.ptx,
            log: c.log,
        },
        Err(CudaError::Compile { log, .. }) => CompileAnswer::Rejected { log },
        Err(e) => CompileAnswer::Unavailable {
            message: e.to_string(),
        },
    }
}

/// The compile child's loop body: reads one [`CompileJob`] (JSON) from
/// `input`, compiles it, writes one [`CompileAnswer`] (JSON line) to `output`.
pub fn serve_compile<R: Read, W: Write>(input: R, output: &mut W) -> Result<(), ServeCompileError> {
    let job: CompileJob = serde_json::from_reader(input).map_err(ServeCompileError::Job)?;
    let answer = run_compile_job(&job);
    serde_json::to_writer(&mut *output, &answer).map_err(ServeCompileError::Answer)?;
    output.write_all(b"\n").map_err(ServeCompileError::Io)?;
    output.flush().map_err(ServeCompileError::Io)
}

/// Why the compile child could not do its one job.
#[derive(Debug, thiserror::Error)]
pub enum ServeCompileError {
    /// stdin held no valid job.
    #[error("`kiln __compile` expects one JSON compile job on stdin (it is started by the evaluator): {0}")]
    Job(serde_json::Error),
    /// The answer could not be encoded.
    #[error("cannot encode the compile answer: {0}")]
    Answer(serde_json::Error),
    /// stdout failed.
    #[error("cannot write the compile answer: {0}")]
    Io(std::io::Error),
}

/// A successful compilation of a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledCandidate {
    /// Cubin bytes, or PTX text for a PTX job.
    pub image: Vec<u8>,
    /// Which of the two `image` holds.
    pub output: OutputKind,
    /// The module's PTX (for a PTX job, the same text as `image`).
    pub ptx: String,
    /// NVRTC's log (warnings).
    pub log: String,
    /// Wall time of the compile, child start-up included.
    pub elapsed: Duration,
}

/// Why a bounded compilation produced no image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileFailure {
    /// The candidate's fault (scored at `Stage::Compile`): NVRTC's log, or
    /// the limit it exceeded.
    #[error("{reason}")]
    Rejected {
        /// What the proposer should read.
        reason: String,
    },
    /// The machinery failed (helper missing, NVRTC missing, a garbled
    /// answer): retry, never score.
    #[error("{0}")]
    Machinery(String),
}

/// Runs compile jobs in a child process with a wall-clock, CPU and memory limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileSandbox {
    /// The helper (normally `kiln __compile`).
    pub command: WorkerCommand,
    /// Wall-clock limit; the child's process group is killed after it.
    pub wall: Duration,
    /// `RLIMIT_AS` of the child, bytes.
    pub memory_bytes: u64,
}

impl CompileSandbox {
    /// A sandbox with the default limits (60 s, 8 GiB).
    pub fn new(command: WorkerCommand) -> Self {
        CompileSandbox {
            command,
            wall: DEFAULT_COMPILE_WALL,
            memory_bytes: DEFAULT_COMPILE_MEMORY_BYTES,
        }
    }

    /// The same sandbox with another wall-clock limit.
    pub fn with_wall(mut self, wall: Duration) -> Self {
        self.wall = wall;
        self
    }

    /// The same sandbox with another memory limit.
    pub fn with_memory_bytes(mut self, memory_bytes: u64) -> Self {
        self.memory_bytes = memory_bytes;
        self
    }

    /// The CPU-time limit set on the child: a backstop should the parent die
    /// before it can enforce the wall clock; generous, since NVRTC may use
    /// more than one thread.
    pub fn cpu_limit_s(&self) -> u64 {
        self.wall.as_secs().saturating_mul(2).saturating_add(5)
    }

    /// Compiles `job` in a fresh child under the limits.
    pub fn compile(&self, job: &CompileJob) -> Result<CompiledCandidate, CompileFailure> {
        let input = serde_json::to_vec(job).map_err(|e| {
            CompileFailure::Machinery(format!("cannot encode the compile job: {e}"))
        })?;
        let started = Instant::now();
        let run = self.run(input)?;
        let elapsed = started.elapsed();
        self.judge(run, job.output, elapsed)
    }

    /// Starts the child, feeds it, collects its output, and enforces the wall clock.
    fn run(&self, input: Vec<u8>) -> Result<ChildRun, CompileFailure> {
        let program = self.command.program.to_string_lossy().into_owned();
        let mut cmd = Command::new(&self.command.program);
        cmd.args(&self.command.args)
            .envs(self.command.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        limit_child(&mut cmd, self.memory_bytes, self.cpu_limit_s())?;
        let mut child = cmd.spawn().map_err(|e| {
            CompileFailure::Machinery(format!("cannot start the compile helper `{program}`: {e}"))
        })?;
        let (stdin, stdout, stderr) =
            match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                (Some(i), Some(o), Some(e)) => (i, o, e),
                _ => {
                    kill_and_reap(&mut child);
                    return Err(CompileFailure::Machinery(
                        "the compile helper's pipes are missing".into(),
                    ));
                }
            };
        // A writer thread: a child that never reads its stdin must not block us.
        let feeder = thread::Builder::new()
            .name("kiln-compile-stdin".into())
            .spawn(move || {
                let mut stdin = stdin;
                // A child that exits early closes the pipe; its answer (or
                // lack of one) tells what happened.
                let _ = stdin.write_all(&input);
            });
        let answer = Arc::new(Mutex::new(Capture::default()));
        let err_tail = Arc::new(Mutex::new(Capture::default()));
        let (a, e) = (Arc::clone(&answer), Arc::clone(&err_tail));
        let out_reader = thread::Builder::new()
            .name("kiln-compile-stdout".into())
            .spawn(move || capture(stdout, &a, Keep::Head(MAX_ANSWER_BYTES)));
        let err_reader = thread::Builder::new()
            .name("kiln-compile-stderr".into())
            .spawn(move || capture(stderr, &e, Keep::Tail(STDERR_TAIL_BYTES)));
        match (feeder, out_reader, err_reader) {
            (Ok(_), Ok(_), Ok(_)) => {}
            _ => {
                kill_and_reap(&mut child);
                return Err(CompileFailure::Machinery(
                    "cannot start threads for the compile helper".into(),
                ));
            }
        };

        let deadline = Instant::now() + self.wall;
        let mut limit = None;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(_) => break kill_and_reap(&mut child),
            }
            if Instant::now() >= deadline {
                limit = Some(Limit::Wall);
                break kill_and_reap(&mut child);
            }
            if answer.lock().map(|c| c.overflow).unwrap_or(false) {
                limit = Some(Limit::Output);
                break kill_and_reap(&mut child);
            }
            thread::sleep(Duration::from_millis(5));
        };
        // Helpers the child may have started hold the pipes open; the group
        // goes with it, so the readers see end of stream. A helper that left
        // the group could keep them open forever: wait a little, never block.
        kill_group(&child);
        let settle = Instant::now() + Duration::from_secs(2);
        while Instant::now() < settle
            && ![&answer, &err_tail]
                .iter()
                .all(|c| c.lock().map(|c| c.done).unwrap_or(true))
        {
            thread::sleep(Duration::from_millis(2));
        }
        let take = |c: &Arc<Mutex<Capture>>| c.lock().map(|c| c.bytes.clone()).unwrap_or_default();
        Ok(ChildRun {
            status,
            limit,
            stdout: take(&answer),
            stderr: String::from_utf8_lossy(&take(&err_tail)).trim().to_string(),
        })
    }

    /// Turns what the child did into an image or a failure.
    fn judge(
        &self,
        run: ChildRun,
        output: OutputKind,
        elapsed: Duration,
    ) -> Result<CompiledCandidate, CompileFailure> {
        let rejected = |reason: String| Err(CompileFailure::Rejected { reason });
        match run.limit {
            Some(Limit::Wall) => {
                return rejected(format!(
                    "compilation exceeded the {} limit and was killed; keep templates, constexpr evaluation and macros small",
                    describe_duration(self.wall)
                ))
            }
            Some(Limit::Output) => {
                return rejected(format!(
                    "compilation produced more than {} of output and was killed",
                    describe_bytes(MAX_ANSWER_BYTES as u64)
                ))
            }
            None => {}
        }
        let out_of_memory = || {
            format!(
                "compilation ran out of its {} memory limit; keep templates, constexpr evaluation and macros small",
                describe_bytes(self.memory_bytes)
            )
        };
        if mentions_out_of_memory(&run.stderr) {
            return rejected(out_of_memory());
        }
        if let Some(signal) = run.status.as_ref().and_then(exit_signal) {
            return rejected(match signal {
                SIGXCPU => format!(
                    "compilation exceeded its {} s CPU-time limit and was killed",
                    self.cpu_limit_s()
                ),
                // C++ `bad_alloc` and Rust's allocation failure abort.
                SIGABRT => out_of_memory(),
                SIGKILL => format!(
                    "the compiler was killed (SIGKILL): it exceeded its {} s CPU-time limit or the machine ran out of memory",
                    self.cpu_limit_s()
                ),
                other => format!("the compiler crashed on this source (signal {other})"),
            });
        }
        let text = String::from_utf8_lossy(&run.stdout);
        let answer = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str::<CompileAnswer>(l.trim()));
        match answer {
            Some(Ok(CompileAnswer::Compiled {
                image,
                output: got,
                ptx,
                log,
            })) => {
                if got != output {
                    return Err(CompileFailure::Machinery(format!(
                        "the compile helper returned {got:?} output, {output:?} was asked for"
                    )));
                }
                let ptx = match (got, ptx) {
                    (OutputKind::Cubin, Some(p)) => p,
                    (OutputKind::Cubin, None) => {
                        return Err(CompileFailure::Machinery(
                            "the compile helper returned a cubin without its PTX".into(),
                        ))
                    }
                    (OutputKind::Ptx, _) => String::from_utf8_lossy(&image).into_owned(),
                };
                Ok(CompiledCandidate {
                    image,
                    output: got,
                    ptx,
                    log,
                    elapsed,
                })
            }
            // NVRTC reports an allocation failure under RLIMIT_AS as a
            // compile error; name the limit first.
            Some(Ok(CompileAnswer::Rejected { log })) if mentions_out_of_memory(&log) => {
                rejected(format!("{}\n{log}", out_of_memory()))
            }
            Some(Ok(CompileAnswer::Rejected { log })) => rejected(log),
            Some(Ok(CompileAnswer::Unavailable { message })) => Err(CompileFailure::Machinery(
                format!("NVRTC is unavailable in the compile helper: {message}"),
            )),
            Some(Err(e)) => Err(CompileFailure::Machinery(format!(
                "the compile helper's answer is malformed ({e}); exit {}; stderr: {}",
                describe_status(&run.status),
                or_empty(&run.stderr)
            ))),
            None => Err(CompileFailure::Machinery(format!(
                "the compile helper exited ({}) without an answer; stderr: {}",
                describe_status(&run.status),
                or_empty(&run.stderr)
            ))),
        }
    }
}

/// What one child run left behind.
struct ChildRun {
    status: Option<ExitStatus>,
    limit: Option<Limit>,
    stdout: Vec<u8>,
    stderr: String,
}

/// A limit the parent enforced itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Wall,
    Output,
}

#[derive(Default)]
struct Capture {
    bytes: Vec<u8>,
    overflow: bool,
    /// The pipe reached end of stream.
    done: bool,
}

enum Keep {
    /// Keep the first n bytes; more sets `overflow`.
    Head(usize),
    /// Keep the last n bytes.
    Tail(usize),
}

fn capture(mut pipe: impl Read, sink: &Mutex<Capture>, keep: Keep) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let Ok(mut c) = sink.lock() else { return };
        match keep {
            Keep::Head(limit) => {
                let room = limit.saturating_sub(c.bytes.len());
                if n > room {
                    c.overflow = true;
                }
                c.bytes.extend_from_slice(&buf[..n.min(room)]);
            }
            Keep::Tail(limit) => {
                c.bytes.extend_from_slice(&buf[..n]);
                let excess = c.bytes.len().saturating_sub(limit);
                c.bytes.drain(..excess);
            }
        }
    }
    if let Ok(mut c) = sink.lock() {
        c.done = true;
    }
}

fn or_empty(s: &str) -> &str {
    if s.is_empty() {
        "(empty)"
    } else {
        s
    }
}

/// Whether a compiler's stderr says an allocation failed.
fn mentions_out_of_memory(stderr: &str) -> bool {
    let lower = stderr.to_ascii_lowercase();
    [
        "out of memory",
        "memory allocation of",
        "bad_alloc",
        "memoryerror",
        "cannot allocate memory",
    ]
    .iter()
    .any(|m| lower.contains(m))
}

/// `60 s`, `0.3 s`.
pub fn describe_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// `8 GiB`, `512 MiB`.
pub fn describe_bytes(b: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if b >= GIB && b & (GIB - 1) == 0 {
        format!("{} GiB", b / GIB)
    } else if b >= MIB {
        format!("{} MiB", b / MIB)
    } else {
        format!("{b} bytes")
    }
}

/// Parses `sm_90a`, `sm_90`, `sm_100a`: the last digit is the minor version.
pub fn parse_arch(name: &str) -> Option<Arch> {
    let rest = name.trim().strip_prefix("sm_")?;
    let (digits, specific) = match rest.strip_suffix('a') {
        Some(d) => (d, true),
        None => (rest, false),
    };
    if digits.len() < 2 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (major, minor) = digits.split_at(digits.len() - 1);
    Some(Arch {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        specific,
    })
}

#[cfg(unix)]
const SIGXCPU: i32 = libc::SIGXCPU;
#[cfg(unix)]
const SIGABRT: i32 = libc::SIGABRT;
#[cfg(unix)]
const SIGKILL: i32 = libc::SIGKILL;
#[cfg(not(unix))]
const SIGXCPU: i32 = -1;
#[cfg(not(unix))]
const SIGABRT: i32 = -2;
#[cfg(not(unix))]
const SIGKILL: i32 = -3;

#[cfg(unix)]
fn exit_signal(status: &ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

#[cfg(not(unix))]
fn exit_signal(_status: &ExitStatus) -> Option<i32> {
    None
}

/// Puts the child in its own process group with memory, CPU and core limits.
#[cfg(unix)]
fn limit_child(cmd: &mut Command, memory_bytes: u64, cpu_s: u64) -> Result<(), CompileFailure> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let mem = memory_bytes as libc::rlim_t;
    let cpu = cpu_s as libc::rlim_t;
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setrlimit(2), which is async-signal-safe; it allocates nothing (an OS
    // error is built from errno without allocating).
    unsafe {
        cmd.pre_exec(move || {
            let set = |resource, soft: libc::rlim_t, hard: libc::rlim_t| {
                let lim = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(resource, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            set(libc::RLIMIT_AS, mem, mem)?;
            // SIGXCPU at the soft limit, SIGKILL a second later.
            set(libc::RLIMIT_CPU, cpu, cpu.saturating_add(1))?;
            // A crashing compiler must not write gigabytes of core dump.
            set(libc::RLIMIT_CORE, 0, 0)?;
            Ok(())
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn limit_child(_cmd: &mut Command, _memory_bytes: u64, _cpu_s: u64) -> Result<(), CompileFailure> {
    Err(CompileFailure::Machinery(
        "bounded compilation needs Unix (process groups and resource limits)".into(),
    ))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sandbox(script: &str) -> CompileSandbox {
        CompileSandbox::new(WorkerCommand::new("sh", ["-c", script]))
    }

    fn job() -> CompileJob {
        CompileJob::cubin("t.cu", "// kiln: block=1 grid=1 smem=0", vec![], Arch::SM90)
    }

    #[test]
    fn a_child_that_sleeps_past_the_wall_limit_is_killed_and_scored() {
        let started = Instant::now();
        let sb = sandbox("sleep 30").with_wall(Duration::from_millis(300));
        match sb.compile(&job()) {
            Err(CompileFailure::Rejected { reason }) => {
                assert!(
                    reason.starts_with("compilation exceeded the 0.3 s limit"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_busy_loop_and_its_helpers_are_killed_as_a_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        let script = format!(
            "sleep 30 & echo $! > '{}'; while :; do :; done",
            pidfile.display()
        );
        let started = Instant::now();
        let sb = sandbox(&script).with_wall(Duration::from_secs(1));
        assert!(matches!(
            sb.compile(&job()),
            Err(CompileFailure::Rejected { reason }) if reason.contains("exceeded the 1 s limit")
        ));
        assert!(started.elapsed() < Duration::from_secs(6));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pid")
            .trim()
            .parse()
            .expect("pid number");
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let gone = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => true,
                Ok(stat) => stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')),
            };
            if gone {
                break;
            }
            assert!(Instant::now() < deadline, "helper {pid} survived");
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn allocating_past_the_memory_limit_is_scored_as_out_of_memory() {
        // awk doubles a string until an allocation fails under RLIMIT_AS.
        let sb = sandbox("cat >/dev/null; exec awk 'BEGIN { s = \"x\"; while (1) s = s s }'")
            .with_memory_bytes(512 << 20)
            .with_wall(Duration::from_secs(30));
        match sb.compile(&job()) {
            Err(CompileFailure::Rejected { reason }) => assert!(
                reason.starts_with("compilation ran out of its 512 MiB memory limit"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_are_read_from_stdout() {
        let answer = CompileAnswer::Compiled {
            image: vec![0x7f, b'E', b'L', b'F'],
            output: OutputKind::Cubin,
            ptx: Some(".version 8.0".into()),
            log: "warning".into(),
        };
        let line = serde_json::to_string(&answer).expect("json");
        let sb = sandbox(&format!("cat >/dev/null; printf '%s\\n' '{line}'"));
        let got = sb.compile(&job()).expect("compiled");
        assert_eq!(got.image, b"\x7fELF");
        assert_eq!(got.ptx, ".version 8.0");
        assert_eq!(got.log, "warning");

        let rejected = serde_json::to_string(&CompileAnswer::Rejected {
            log: "error: expected a ;".into(),
        })
        .expect("json");
        let sb = sandbox(&format!("cat >/dev/null; printf '%s\\n' '{rejected}'"));
        assert_eq!(
            sb.compile(&job()),
            Err(CompileFailure::Rejected {
                reason: "error: expected a ;".into()
            })
        );
    }

    #[test]
    fn machinery_problems_are_never_scored() {
        let missing = CompileSandbox::new(WorkerCommand::new("/nonexistent/kiln", ["__compile"]));
        assert!(matches!(
            missing.compile(&job()),
            Err(CompileFailure::Machinery(m)) if m.contains("cannot start")
        ));
        let unavailable = serde_json::to_string(&CompileAnswer::Unavailable {
            message: "libnvrtc not found".into(),
        })
        .expect("json");
        let sb = sandbox(&format!("cat >/dev/null; printf '%s\\n' '{unavailable}'"));
        assert!(matches!(
            sb.compile(&job()),
            Err(CompileFailure::Machinery(m)) if m.contains("libnvrtc not found")
        ));
        assert!(matches!(
            sandbox("exit 1").compile(&job()),
            Err(CompileFailure::Machinery(m)) if m.contains("without an answer")
        ));
        assert!(matches!(
            sandbox("echo 'not json'").compile(&job()),
            Err(CompileFailure::Machinery(m)) if m.contains("malformed")
        ));
    }

    #[test]
    fn a_crashing_compiler_is_the_candidate_s_failure() {
        assert!(matches!(
            sandbox("kill -SEGV $$").compile(&job()),
            Err(CompileFailure::Rejected { reason }) if reason.contains("crashed")
        ));
    }

    #[test]
    fn arch_names_and_limits_read_well() {
        assert_eq!(parse_arch("sm_90a"), Some(Arch::SM90.specific()));
        assert_eq!(parse_arch("sm_90"), Some(Arch::SM90));
        assert_eq!(
            parse_arch("sm_100a"),
            Some(Arch {
                major: 10,
                minor: 0,
                specific: true
            })
        );
        assert_eq!(parse_arch("compute_90"), None);
        assert_eq!(parse_arch("sm_9"), None);
        assert_eq!(describe_bytes(8 << 30), "8 GiB");
        assert_eq!(describe_duration(Duration::from_secs(60)), "60 s");
    }

    #[test]
    fn serve_compile_reads_one_job_and_answers_one_line() {
        let mut out = Vec::new();
        assert!(matches!(
            serve_compile(&b"not a job"[..], &mut out),
            Err(ServeCompileError::Job(_))
        ));
    }
}
