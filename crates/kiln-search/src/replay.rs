//! The replay evaluator: answers candidates from recorded sessions instead of
//! a GPU, so autorun, sharding and resume can run end to end with no GPU.
//!
//! A candidate is looked up by its target and the hash of its normalised
//! source ([`crate::search::source_hash`], the identity dedupe uses); the
//! recorded evaluation comes back exactly as it was recorded. A source that no
//! recorded session evaluated is a machinery failure that says so ("not
//! recorded"), never a score: the search stops on it rather than inventing a
//! verdict.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_eval::evaluator::{CandidateEvaluator, EvaluatorError};
use kiln_eval::protocol::DeviceSummary;
use kiln_eval::record::{EvalOutcome, EvalRecord};
use kiln_eval::targets::Target;

use crate::search::source_hash;
use crate::session::{self, Session, SessionError};

/// Why a folder of sessions cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The folder could not be listed.
    #[error("cannot read the replay folder {path}: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A session file in it does not load.
    #[error("replay session {path}: {source}")]
    Session {
        /// The file.
        path: PathBuf,
        /// Why (boxed: a session error is large).
        source: Box<SessionError>,
    },
    /// A node's recorded evaluation is not an evaluation record.
    #[error(
        "replay session {path}, node {node}: the recorded evaluation does not read back ({reason})"
    )]
    Record {
        /// The file.
        path: PathBuf,
        /// The node.
        node: u32,
        /// Why.
        reason: String,
    },
    /// Nothing to replay.
    #[error("no session.json under {0}: record sessions there first (kiln discover autorun --session-dir)")]
    Empty(PathBuf),
    /// Sessions from different GPUs: one replay must stand for one device.
    #[error("the sessions under {dir} come from different GPUs ({a} and {b}); replay one device's sessions")]
    MixedDevices {
        /// The folder.
        dir: PathBuf,
        /// One GPU.
        a: String,
        /// Another.
        b: String,
    },
}

/// Recorded evaluations by (target, source hash).
pub struct ReplayEvaluator {
    dir: PathBuf,
    records: HashMap<(String, String), EvalRecord>,
    device: DeviceSummary,
}

impl ReplayEvaluator {
    /// Reads every `session.json` under `dir` (recursively).
    pub fn from_dir(dir: &Path) -> Result<Self, ReplayError> {
        let mut files = Vec::new();
        collect_sessions(dir, &mut files)?;
        files.sort();
        let mut records = HashMap::new();
        let mut device: Option<DeviceSummary> = None;
        for path in files {
            let s = session::load(&path).map_err(|source| ReplayError::Session {
                path: path.clone(),
                source: Box::new(source),
            })?;
            let d = device_of(&s);
            match &device {
                Some(first) if first.gpu_name != d.gpu_name => {
                    return Err(ReplayError::MixedDevices {
                        dir: dir.to_path_buf(),
                        a: first.gpu_name.clone(),
                        b: d.gpu_name,
                    })
                }
                Some(_) => {}
                None => device = Some(d),
            }
            for node in s.tree.nodes() {
                let Some(eval) = &node.eval else { continue };
                let record: EvalRecord =
                    serde_json::from_value(eval.clone()).map_err(|e| ReplayError::Record {
                        path: path.clone(),
                        node: node.id.0,
                        reason: e.to_string(),
                    })?;
                records.insert((s.meta.target.clone(), source_hash(&node.source)), record);
            }
        }
        let device = device.ok_or_else(|| ReplayError::Empty(dir.to_path_buf()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            records,
            device,
        })
    }

    /// Recorded evaluations available.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no evaluation was recorded.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// The device a session was recorded on, as far as a session keeps it: the
/// names; the measured figures (SMs, L2, bandwidth, launch floor) are not
/// kept in sessions and read 0.
fn device_of(s: &Session) -> DeviceSummary {
    DeviceSummary {
        gpu_name: s.meta.gpu_name.clone(),
        gpu_arch: s.meta.gpu_arch.clone(),
        driver_version: s.meta.driver_version.clone(),
        nvrtc_version: s.meta.nvrtc_version.clone(),
        sm_count: 0,
        l2_mib: 0,
        peak_bytes_per_s: 0.0,
        launch_floor_us: 0.0,
    }
}

fn collect_sessions(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ReplayError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ReplayError::Folder {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| ReplayError::Folder {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_dir() {
            collect_sessions(&path, out)?;
        } else if path.file_name().is_some_and(|n| n == "session.json") {
            out.push(path);
        }
    }
    Ok(())
}

impl CandidateEvaluator for ReplayEvaluator {
    fn device(&mut self) -> Result<DeviceSummary, EvaluatorError> {
        Ok(self.device.clone())
    }

    fn evaluate_each(
        &mut self,
        target: &Target,
        sources: &[String],
        done: &mut dyn FnMut(usize, EvalOutcome),
    ) {
        for (i, src) in sources.iter().enumerate() {
            let key = (target.name.clone(), source_hash(src));
            done(
                i,
                match self.records.get(&key) {
                    Some(r) => EvalOutcome::Scored(r.clone()),
                    None => EvalOutcome::MachineryFailure {
                        reason: format!(
                            "not recorded: no session under {} evaluated this {} source (hash {})",
                            self.dir.display(),
                            target.name,
                            &key.1[..12]
                        ),
                    },
                },
            );
        }
    }
}
