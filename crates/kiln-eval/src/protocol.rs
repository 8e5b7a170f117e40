//! The worker protocol: newline-delimited JSON between the parent and its GPU
//! worker process (the `kiln` binary in worker mode), over two pipes of its
//! own that are none of the worker's standard streams: the worker reads
//! requests on one fd and writes responses on another (see
//! [`REQUEST_FD_ENV`]/[`RESPONSE_FD_ENV`]). The worker's stdin is
//! `/dev/null`, and its stdout and stderr are drained by the parent into a
//! capped buffer: whatever a candidate prints there (device printf) can never
//! pose as a message.
//!
//! ```text
//! parent → {"type":"hello","id":1,"version":2,"secret":"<32 hex>"}
//! worker ← {"type":"ready","id":1,"secret":"<32 hex>","version":2,"device":{...}}
//! parent → {"type":"evaluate","id":2,"job":{...}}
//! worker ← {"type":"result","id":2,"secret":"<32 hex>","outcome":{...}}
//! parent → {"type":"shutdown","id":3}
//! ```
//!
//! Every request carries an `id`; the response repeats it. The parent draws a
//! random [`Secret`] per worker and sends it in `Hello`; every response must
//! carry it, and the parent kills a worker whose channel shows anything else.
//! One message per line, at most [`MAX_MESSAGE_BYTES`]. Binary images travel
//! as hex strings.

use crate::record::EvalOutcome;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io::{BufRead, Write};

/// Version of this protocol; `Hello` and `Ready` must agree.
///
/// 2: private channel, per-worker secret, typed device facts, the parent
/// sends the compiled image (cubin and PTX).
pub const PROTOCOL_VERSION: u32 = 2;

/// The longest message line accepted, in bytes (64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Environment variable naming the fd the worker reads requests from.
pub const REQUEST_FD_ENV: &str = "KILN_WORKER_REQUEST_FD";

/// Environment variable naming the fd the worker writes responses to.
pub const RESPONSE_FD_ENV: &str = "KILN_WORKER_RESPONSE_FD";

/// A per-worker random token: every response must repeat the one the parent
/// sent in `Hello`, so a message that does not come from the worker's own
/// protocol code is recognised as forged.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Secret([u8; 16]);

impl Secret {
    /// 128 fresh bits from the operating system's generator.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Secret(bytes)
    }

    /// A secret with these bytes (tests, and the worker echoing what it received).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Secret(bytes)
    }

    /// The secret as 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never in logs: a printed secret would be one a log reader could forge.
        f.write_str("Secret(..)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        let bytes: [u8; 16] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a secret is 16 bytes (32 hex digits)"))?;
        Ok(Secret(bytes))
    }
}

/// What the evaluator knows about its GPU, as the worker reports it in `Ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// GPU name.
    pub gpu_name: String,
    /// `sm_90` style arch.
    pub gpu_arch: String,
    /// Driver CUDA version.
    pub driver_version: String,
    /// NVRTC version.
    pub nvrtc_version: String,
    /// SM count.
    pub sm_count: u32,
    /// L2 size in MiB.
    pub l2_mib: u64,
    /// Measured peak DRAM streaming bandwidth, bytes/s.
    pub peak_bytes_per_s: f64,
    /// Graph-batched empty-kernel launch time, µs.
    pub launch_floor_us: f64,
}

/// A candidate compiled by the parent (in its bounded compile child): the
/// worker loads `cubin` and never compiles a candidate itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledImage {
    /// The cubin for the worker's GPU, hex-encoded on the wire.
    #[serde(with = "hex_bytes")]
    pub cubin: Vec<u8>,
    /// The PTX of the same compilation: the worker re-derives the module's
    /// globals from it (`ptx_check::check_ptx`).
    pub ptx: String,
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

/// One evaluation for the worker to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalJob {
    /// The target's name (the worker looks up its reference, inputs and baseline).
    pub target: String,
    /// The candidate source (already statically checked; the worker reads its launch line).
    pub source: String,
    /// The compiled candidate; a job without one is a machinery error.
    #[serde(default)]
    pub compiled: Option<CompiledImage>,
    /// Seed of the trial inputs (derived from the session's secret seed).
    pub seed: u64,
    /// Warm-up launches per shape.
    pub warmup: u32,
    /// Timed repetitions per shape (an upper bound when a stopping rule applies).
    pub iters: u32,
}

/// A message from the parent to the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// First message; the worker answers `Ready` once its GPU is up.
    Hello {
        /// Request id.
        id: u64,
        /// The parent's [`PROTOCOL_VERSION`].
        version: u32,
        /// The secret every response must carry.
        secret: Secret,
    },
    /// Run one evaluation.
    Evaluate {
        /// Request id.
        id: u64,
        /// The job.
        job: Box<EvalJob>,
    },
    /// Exit cleanly.
    Shutdown {
        /// Request id.
        id: u64,
    },
}

impl Request {
    /// The request's id.
    pub fn id(&self) -> u64 {
        match self {
            Request::Hello { id, .. } | Request::Evaluate { id, .. } | Request::Shutdown { id } => {
                *id
            }
        }
    }
}

/// A message from the worker to the parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answer to `Hello`.
    Ready {
        /// The `Hello`'s id.
        id: u64,
        /// The `Hello`'s secret.
        secret: Secret,
        /// The worker's [`PROTOCOL_VERSION`].
        version: u32,
        /// The device the candidates run on.
        device: DeviceSummary,
    },
    /// Answer to `Evaluate`.
    Result {
        /// The request's id.
        id: u64,
        /// The `Hello`'s secret.
        secret: Secret,
        /// The outcome.
        outcome: EvalOutcome,
    },
    /// The worker could not handle a request (machinery, not the candidate).
    Error {
        /// The request's id, if it could be read.
        id: Option<u64>,
        /// The `Hello`'s secret (all zeros before a `Hello` arrived).
        secret: Secret,
        /// What went wrong.
        message: String,
    },
}

impl Response {
    /// The id of the request this answers, if known.
    pub fn id(&self) -> Option<u64> {
        match self {
            Response::Ready { id, .. } | Response::Result { id, .. } => Some(*id),
            Response::Error { id, .. } => *id,
        }
    }

    /// The secret this message carries.
    pub fn secret(&self) -> Secret {
        match self {
            Response::Ready { secret, .. }
            | Response::Result { secret, .. }
            | Response::Error { secret, .. } => *secret,
        }
    }
}

/// A framing or encoding failure.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The stream ended between messages (the peer exited).
    #[error("end of stream: the peer closed its output (worker died?)")]
    Eof,
    /// The stream ended in the middle of a message.
    #[error("stream ended inside a message after {bytes} bytes (worker died while writing?)")]
    Truncated {
        /// Bytes of the partial line.
        bytes: usize,
    },
    /// A line longer than the limit.
    #[error("message longer than {limit} bytes")]
    TooLong {
        /// The limit.
        limit: usize,
    },
    /// A line that is not a valid message.
    #[error("malformed message ({source}); line starts with {prefix:?}")]
    Malformed {
        /// The JSON error.
        source: serde_json::Error,
        /// The first bytes of the line, lossily decoded.
        prefix: String,
    },
    /// Serialising a message failed.
    #[error("cannot encode message: {0}")]
    Encode(serde_json::Error),
    /// Reading or writing failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes `msg` as one JSON line and flushes.
pub fn write_message<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), ProtocolError> {
    let mut line = serde_json::to_vec(msg).map_err(ProtocolError::Encode)?;
    if line.len() > MAX_MESSAGE_BYTES {
        return Err(ProtocolError::TooLong {
            limit: MAX_MESSAGE_BYTES,
        });
    }
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()?;
    Ok(())
}

/// Reads the next JSON line (blank lines are skipped) and decodes it.
pub fn read_message<R: BufRead, T: DeserializeOwned>(r: &mut R) -> Result<T, ProtocolError> {
    read_message_limited(r, MAX_MESSAGE_BYTES)
}

/// [`read_message`] with a custom line limit.
pub fn read_message_limited<R: BufRead, T: DeserializeOwned>(
    r: &mut R,
    limit: usize,
) -> Result<T, ProtocolError> {
    loop {
        let line = read_line(r, limit)?;
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        return serde_json::from_slice(trimmed).map_err(|source| ProtocolError::Malformed {
            source,
            prefix: String::from_utf8_lossy(&trimmed[..trimmed.len().min(80)]).into_owned(),
        });
    }
}

/// Reads one `\n`-terminated line without the newline, refusing lines over `limit` bytes.
fn read_line<R: BufRead>(r: &mut R, limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut line = Vec::new();
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if buf.is_empty() {
            return Err(if line.is_empty() {
                ProtocolError::Eof
            } else {
                ProtocolError::Truncated { bytes: line.len() }
            });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(nl) => (&buf[..nl], Some(nl + 1)),
            None => (buf, None),
        };
        if line.len() + chunk.len() > limit {
            return Err(ProtocolError::TooLong { limit });
        }
        line.extend_from_slice(chunk);
        let used = done.unwrap_or(chunk.len());
        r.consume(used);
        if done.is_some() {
            return Ok(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{EvalRecord, Stage};
    use std::io::Cursor;

    fn job() -> EvalJob {
        EvalJob {
            target: "rmsnorm_bf16".into(),
            source: "// kiln: block=256 grid=T smem=0\nextern \"C\" __global__ void rmsnorm() {}\n\"quoted\"".into(),
            compiled: Some(CompiledImage {
                cubin: vec![0, 1, 0xff, b'\n'],
                ptx: ".version 8.0\n.target sm_90a\n".into(),
            }),
            seed: u64::MAX,
            warmup: 3,
            iters: 100,
        }
    }

    fn secret() -> Secret {
        Secret::from_bytes([0xab; 16])
    }

    fn device() -> DeviceSummary {
        DeviceSummary {
            gpu_name: "fake".into(),
            gpu_arch: "sm_90".into(),
            driver_version: "13.0".into(),
            nvrtc_version: "13.0".into(),
            sm_count: 132,
            l2_mib: 50,
            peak_bytes_per_s: 3.0e12,
            launch_floor_us: 2.5,
        }
    }

    #[test]
    fn requests_and_responses_round_trip_one_per_line() {
        let reqs = vec![
            Request::Hello {
                id: 1,
                version: PROTOCOL_VERSION,
                secret: secret(),
            },
            Request::Evaluate {
                id: 2,
                job: Box::new(job()),
            },
            Request::Shutdown { id: 3 },
        ];
        let mut buf = Vec::new();
        for r in &reqs {
            write_message(&mut buf, r).expect("write");
        }
        assert_eq!(
            buf.iter().filter(|&&b| b == b'\n').count(),
            3,
            "newlines inside strings are escaped"
        );
        let text = String::from_utf8(buf.clone()).expect("utf8");
        assert!(
            text.starts_with(&format!(
                "{{\"type\":\"hello\",\"id\":1,\"version\":{PROTOCOL_VERSION},\"secret\":\"{}\"}}\n",
                "ab".repeat(16)
            )),
            "{text}"
        );
        assert!(text.contains("\"cubin\":\"0001ff0a\""), "{text}");
        let mut cur = Cursor::new(buf);
        for r in &reqs {
            let back: Request = read_message(&mut cur).expect("read");
            assert_eq!(&back, r);
            assert_eq!(back.id(), r.id());
        }
        assert!(matches!(
            read_message::<_, Request>(&mut cur),
            Err(ProtocolError::Eof)
        ));

        let resps = vec![
            Response::Ready {
                id: 1,
                secret: secret(),
                version: PROTOCOL_VERSION,
                device: device(),
            },
            Response::Result {
                id: 2,
                secret: secret(),
                outcome: EvalOutcome::Scored(EvalRecord::failed(Stage::Verify, "NaN at 3")),
            },
            Response::Error {
                id: None,
                secret: Secret::default(),
                message: "bad request".into(),
            },
        ];
        let mut buf = Vec::new();
        for r in &resps {
            write_message(&mut buf, r).expect("write");
        }
        let mut cur = Cursor::new(buf);
        for r in &resps {
            let back: Response = read_message(&mut cur).expect("read");
            assert_eq!(&back, r);
            assert_eq!(back.secret(), r.secret());
        }
    }

    #[test]
    fn secrets_are_random_hex_and_never_printed() {
        let (a, b) = (Secret::random(), Secret::random());
        assert_ne!(a, b);
        assert_eq!(a.to_hex().len(), 32);
        assert_eq!(format!("{a:?}"), "Secret(..)");
        let json = serde_json::to_string(&a).expect("ser");
        assert_eq!(serde_json::from_str::<Secret>(&json).expect("de"), a);
        assert!(serde_json::from_str::<Secret>("\"abcd\"").is_err());
        assert!(serde_json::from_str::<Secret>("\"zz\"").is_err());
    }

    #[test]
    fn a_response_without_its_secret_is_malformed() {
        let mut cur = Cursor::new(
            b"{\"type\":\"result\",\"id\":2,\"outcome\":{\"outcome\":\"machinery_failure\",\"reason\":\"x\"}}\n"
                .to_vec(),
        );
        assert!(matches!(
            read_message::<_, Response>(&mut cur),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn blank_lines_are_skipped() {
        let mut cur = Cursor::new(b"\n  \r\n{\"type\":\"shutdown\",\"id\":9}\r\n".to_vec());
        assert_eq!(
            read_message::<_, Request>(&mut cur).expect("read"),
            Request::Shutdown { id: 9 }
        );
    }

    #[test]
    fn framing_errors_are_typed() {
        let mut cur = Cursor::new(b"{\"type\":\"shutdown\"".to_vec());
        assert!(matches!(
            read_message::<_, Request>(&mut cur),
            Err(ProtocolError::Truncated { bytes: 18 })
        ));
        let mut cur = Cursor::new(b"not json at all\n".to_vec());
        match read_message::<_, Request>(&mut cur) {
            Err(ProtocolError::Malformed { prefix, .. }) => assert_eq!(prefix, "not json at all"),
            other => panic!("{other:?}"),
        }
        let mut cur = Cursor::new(b"{\"type\":\"launch_missiles\",\"id\":1}\n".to_vec());
        assert!(matches!(
            read_message::<_, Request>(&mut cur),
            Err(ProtocolError::Malformed { .. })
        ));
        let mut cur = Cursor::new(b"\xff\xfe\n".to_vec());
        assert!(matches!(
            read_message::<_, Request>(&mut cur),
            Err(ProtocolError::Malformed { .. })
        ));
        let long = format!("{}\n", "x".repeat(100));
        let mut cur = Cursor::new(long.into_bytes());
        assert!(matches!(
            read_message_limited::<_, Request>(&mut cur, 64),
            Err(ProtocolError::TooLong { limit: 64 })
        ));
        let mut cur = Cursor::new(Vec::new());
        assert!(matches!(
            read_message::<_, Request>(&mut cur),
            Err(ProtocolError::Eof)
        ));
    }

    #[test]
    fn long_lines_across_small_buffers() {
        let msg = Request::Evaluate {
            id: 7,
            job: Box::new(EvalJob {
                source: "y".repeat(100_000),
                ..job()
            }),
        };
        let mut buf = Vec::new();
        write_message(&mut buf, &msg).expect("write");
        let mut r = std::io::BufReader::with_capacity(16, Cursor::new(buf));
        assert_eq!(read_message::<_, Request>(&mut r).expect("read"), msg);
    }

    #[test]
    fn bad_hex_is_malformed() {
        let line = b"{\"type\":\"evaluate\",\"id\":1,\"job\":{\"target\":\"t\",\"source\":\"s\",\"compiled\":{\"cubin\":\"zz\",\"ptx\":\"\"},\"seed\":1,\"warmup\":0,\"iters\":1}}\n";
        let mut cur = Cursor::new(line.to_vec());
        assert!(matches!(
            read_message::<_, Request>(&mut cur),
            Err(ProtocolError::Malformed { .. })
        ));
    }
}
