//! The worker protocol: newline-delimited JSON between the parent and its GPU
//! worker process (the `kiln` binary in worker mode), over the child's
//! stdin (requests) and stdout (responses).
//!
//! ```text
//! parent → {"type":"hello","id":1,"version":1}
//! worker ← {"type":"ready","id":1,"version":1,"device":{...}}
//! parent → {"type":"evaluate","id":2,"job":{...}}
//! worker ← {"type":"result","id":2,"outcome":{...}}
//! parent → {"type":"shutdown","id":3}
//! ```
//!
//! Every request carries an `id`; the response repeats it. One message per
//! line, at most [`MAX_MESSAGE_BYTES`]. The worker must write nothing else to
//! stdout (logs go to stderr). Binary images travel as hex strings.

use crate::record::{EvalOutcome, ShapeId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

/// Version of this protocol; `Hello` and `Ready` must agree.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest message line accepted, in bytes (64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The format of a precompiled image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    /// PTX text.
    Ptx,
    /// A cubin for the worker's GPU.
    Cubin,
}

/// A module compiled by the parent (compilation runs on CPU threads there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompiledImage {
    /// PTX or cubin.
    pub format: ImageFormat,
    /// The image, hex-encoded on the wire.
    #[serde(with = "hex_bytes")]
    pub bytes: Vec<u8>,
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
    /// The candidate source (already statically checked).
    pub source: String,
    /// The launch line's spec (text after `kiln:`).
    #[serde(default)]
    pub launch: String,
    /// A precompiled image, if the parent compiled it.
    #[serde(default)]
    pub compiled: Option<CompiledImage>,
    /// Shapes to verify and time.
    pub shapes: Vec<ShapeId>,
    /// Seed of the trial inputs (derived from the session's secret seed).
    pub seed: u64,
    /// Warm-up launches per shape.
    pub warmup: u32,
    /// Timed repetitions per shape (an upper bound when a stopping rule applies).
    pub iters: u32,
    /// Anything else the worker needs; `null` if nothing.
    #[serde(default)]
    pub extra: serde_json::Value,
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
        /// The worker's [`PROTOCOL_VERSION`].
        version: u32,
        /// Device facts (name, SMs, peak bandwidth, launch floor, …).
        device: serde_json::Value,
    },
    /// Answer to `Evaluate`.
    Result {
        /// The request's id.
        id: u64,
        /// The outcome.
        outcome: EvalOutcome,
    },
    /// The worker could not handle a request (machinery, not the candidate).
    Error {
        /// The request's id, if it could be read.
        id: Option<u64>,
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
            launch: "block=256 grid=T smem=0".into(),
            compiled: Some(CompiledImage { format: ImageFormat::Cubin, bytes: vec![0, 1, 0xff, b'\n'] }),
            shapes: vec![ShapeId { name: "t37".into(), vars: [("T".to_string(), 37)].into_iter().collect() }],
            seed: u64::MAX,
            warmup: 3,
            iters: 100,
            extra: serde_json::json!({"flush_l2": true}),
        }
    }

    #[test]
    fn requests_and_responses_round_trip_one_per_line() {
        let reqs = vec![
            Request::Hello {
                id: 1,
                version: PROTOCOL_VERSION,
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
            text.starts_with("{\"type\":\"hello\",\"id\":1,\"version\":1}\n"),
            "{text}"
        );
        assert!(text.contains("\"bytes\":\"0001ff0a\""), "{text}");
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
                version: 1,
                device: serde_json::json!({"name": "fake"}),
            },
            Response::Result {
                id: 2,
                outcome: EvalOutcome::Scored(EvalRecord::failed(Stage::Verify, "NaN at 3")),
            },
            Response::Error {
                id: None,
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
        }
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
        let line = b"{\"type\":\"evaluate\",\"id\":1,\"job\":{\"target\":\"t\",\"source\":\"s\",\"compiled\":{\"format\":\"ptx\",\"bytes\":\"zz\"},\"shapes\":[],\"seed\":1,\"warmup\":0,\"iters\":1}}\n";
        let mut cur = Cursor::new(line.to_vec());
        assert!(matches!(
            read_message::<_, Request>(&mut cur),
            Err(ProtocolError::Malformed { .. })
        ));
    }
}
