//! Saving and loading session files, safely.
//!
//! - [`save_atomic`] writes a temporary file in the same directory, fsyncs
//!   it, and renames it over the target, so a kill at any moment leaves
//!   either the old file or the new one, never a torn one. It refuses to
//!   replace a file that is not a readable session of this schema version.
//! - [`load`] reports a missing file, corrupt or truncated JSON (with line
//!   and column), or a schema version it does not read, each as its own
//!   [`SessionError`], and never modifies the file.
//! - [`SessionFile`] is what the search driver holds: it opens or creates
//!   the file for one (target, backend), refuses corrupt files, other
//!   targets' files and other GPUs unless forced, and saves after every
//!   evaluation. Starting over is always explicit ([`SessionFile::create_new`],
//!   or `force`), and even then the old file is moved aside, not deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

use super::schema::{now_rfc3339, Session, SessionMeta, SCHEMA_VERSION};

/// Errors from reading, writing or resuming a session file; each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No file at the path.
    #[error("session file {} does not exist", path.display())]
    Missing {
        /// The session file.
        path: PathBuf,
    },
    /// The file system refused an operation.
    #[error("cannot {action} session file {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "write", "rename", …).
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not valid session JSON (truncated, damaged or hand-edited).
    #[error(
        "session file {} is corrupt at line {line} column {column}: {detail}; it was left untouched; \
         move it away or pass --force to start a new session",
        path.display()
    )]
    Corrupt {
        /// The session file.
        path: PathBuf,
        /// 1-based line of the error (0 when unknown).
        line: usize,
        /// 1-based column of the error (0 when unknown).
        column: usize,
        /// What is wrong.
        detail: String,
    },
    /// The file's schema version is not the one this build reads.
    #[error(
        "session file {} has schema version {found}, but this kiln reads version {supported}; {}",
        path.display(),
        version_hint(*found, *supported)
    )]
    SchemaVersion {
        /// The session file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// [`SCHEMA_VERSION`].
        supported: u32,
    },
    /// The file holds another (target, backend)'s session.
    #[error(
        "session file {} belongs to target {found_target:?} with backend {found_backend:?}, \
         not {target:?} with {backend:?}; choose another session path or pass --force to start a new session",
        path.display()
    )]
    OtherSession {
        /// The session file.
        path: PathBuf,
        /// The target recorded in the file.
        found_target: String,
        /// The backend recorded in the file.
        found_backend: String,
        /// The target asked for.
        target: String,
        /// The backend asked for.
        backend: String,
    },
    /// The session was recorded on another GPU model, so its timings do not compare.
    #[error(
        "session was recorded on GPU {recorded:?} but this GPU is {current:?}; its rewards were timed \
         there and do not compare; pass --force to resume anyway"
    )]
    GpuMismatch {
        /// The GPU in the session file.
        recorded: String,
        /// This machine's GPU.
        current: String,
    },
    /// The in-memory session breaks an invariant, so it was not written.
    #[error("refusing to save session file {}: {reason}; the file on disk was not changed", path.display())]
    Unsavable {
        /// The session file.
        path: PathBuf,
        /// The broken invariant.
        reason: String,
    },
}

fn version_hint(found: u32, supported: u32) -> &'static str {
    if found > supported {
        "upgrade kiln to resume it, or pass --force to start a new session (the old file is kept aside)"
    } else {
        "pass --force to start a new session (the old file is kept aside)"
    }
}

/// Just enough of a session to read its version before parsing the rest.
#[derive(Deserialize)]
struct VersionProbe {
    schema_version: u32,
}

/// Loads and checks the session at `path`; the file is never modified.
pub fn load(path: impl AsRef<Path>) -> Result<Session, SessionError> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            SessionError::Missing { path: path.into() }
        } else {
            io_error("read", path, e)
        }
    })?;
    parse(path, &bytes)
}

/// Parses session bytes read from `path` (used for messages only).
fn parse(path: &Path, bytes: &[u8]) -> Result<Session, SessionError> {
    // The version first, so a newer file is reported as such rather than as
    // "corrupt" because of fields this build does not know.
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(|e| corrupt(path, &e))?;
    if probe.schema_version != SCHEMA_VERSION {
        return Err(SessionError::SchemaVersion {
            path: path.into(),
            found: probe.schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    let session: Session = serde_json::from_slice(bytes).map_err(|e| corrupt(path, &e))?;
    session.validate().map_err(|detail| SessionError::Corrupt {
        path: path.into(),
        line: 0,
        column: 0,
        detail,
    })?;
    Ok(session)
}

fn corrupt(path: &Path, e: &serde_json::Error) -> SessionError {
    let full = e.to_string();
    // serde_json appends the position; it goes in its own fields.
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let mut detail = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
    if e.classify() == serde_json::error::Category::Eof {
        detail.push_str(" (the file is truncated)");
    }
    SessionError::Corrupt {
        path: path.into(),
        line: e.line(),
        column: e.column(),
        detail,
    }
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> SessionError {
    SessionError::Io {
        action,
        path: path.into(),
        source,
    }
}

/// Writes `session` to `path` atomically: temp file in the same directory, fsync, rename.
///
/// Refuses (and leaves the disk unchanged) when the session breaks an
/// invariant or holds a non-finite number, or when `path` holds something
/// other than a readable session of this schema version: such a file is
/// only ever replaced through [`SessionFile::create_new`] or `force`.
pub fn save_atomic(path: impl AsRef<Path>, session: &Session) -> Result<(), SessionError> {
    let path = path.as_ref();
    session
        .validate()
        .map_err(|reason| SessionError::Unsavable {
            path: path.into(),
            reason,
        })?;
    match fs::read(path) {
        Ok(existing) => {
            parse(path, &existing)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("read", path, e)),
    }
    let mut text = serde_json::to_vec_pretty(session).map_err(|e| SessionError::Unsavable {
        path: path.into(),
        reason: e.to_string(),
    })?;
    text.push(b'\n');
    write_atomic(path, &text)
}

/// Distinguishes temp files of concurrent saves within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SessionError> {
    let name = path.file_name().ok_or_else(|| SessionError::Unsavable {
        path: path.into(),
        reason: "the path has no file name".into(),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| io_error("create a temporary file for", path, e))?;
        f.write_all(bytes).map_err(|e| io_error("write", path, e))?;
        // The data must be on disk before the rename makes it the session.
        f.sync_all().map_err(|e| io_error("fsync", path, e))?;
        fs::rename(&temp, path).map_err(|e| io_error("rename the temporary file onto", path, e))
    })();
    if result.is_err() {
        // Best effort: the temp file is ours and useless now.
        let _ = fs::remove_file(&temp);
    }
    result?;
    // Persist the rename itself. Not every platform can open a directory,
    // and the new file is complete either way, so failure here is not fatal.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Refuses to resume a session recorded on a different GPU model unless `force`.
///
/// Names are compared ignoring case and surrounding whitespace.
pub fn check_resume_compatible(
    meta: &SessionMeta,
    current_gpu_name: &str,
    force: bool,
) -> Result<(), SessionError> {
    let recorded = meta.gpu_name.trim();
    let current = current_gpu_name.trim();
    if recorded.eq_ignore_ascii_case(current) {
        return Ok(());
    }
    if force {
        tracing::warn!(
            recorded,
            current,
            "resuming a session recorded on another GPU (forced); old and new rewards do not compare"
        );
        return Ok(());
    }
    Err(SessionError::GpuMismatch {
        recorded: recorded.into(),
        current: current.into(),
    })
}

/// How [`SessionFile::open_or_create`] got its session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// No file existed; the fresh session was written.
    Created,
    /// The existing session was loaded and will continue.
    Resumed,
    /// The existing file was unusable and `force` was given: it was moved to `moved_to` and the fresh session written.
    Replaced {
        /// Where the old file now is.
        moved_to: PathBuf,
    },
}

/// An open session file: the session in memory and where it is saved.
#[derive(Debug)]
pub struct SessionFile {
    path: PathBuf,
    session: Session,
}

impl SessionFile {
    /// Resumes the session at `path`, or creates it from `fresh` when there is none.
    ///
    /// Without `force`, refuses a corrupt file, a file of another schema
    /// version, another (target, backend)'s file, and a session recorded on
    /// another GPU (`fresh.meta.gpu_name` names this one). With `force`, an
    /// unusable or foreign file is moved aside and `fresh` starts, and a
    /// session from another GPU is resumed anyway. On resume the saved
    /// seed, config and counters win over `fresh`'s; the driver may then
    /// raise `config.steps` to extend a finished search.
    pub fn open_or_create(
        path: impl AsRef<Path>,
        fresh: Session,
        force: bool,
    ) -> Result<(Self, Opened), SessionError> {
        let path = path.as_ref().to_path_buf();
        match load(&path) {
            Ok(existing) => {
                let (m, f) = (&existing.meta, &fresh.meta);
                if m.target != f.target || m.backend != f.backend {
                    if !force {
                        return Err(SessionError::OtherSession {
                            path,
                            found_target: m.target.clone(),
                            found_backend: m.backend.clone(),
                            target: f.target.clone(),
                            backend: f.backend.clone(),
                        });
                    }
                    return Self::replace(path, fresh);
                }
                check_resume_compatible(m, &f.gpu_name, force)?;
                Ok((
                    Self {
                        path,
                        session: existing,
                    },
                    Opened::Resumed,
                ))
            }
            Err(SessionError::Missing { .. }) => {
                let file = Self::write_new(path, fresh)?;
                Ok((file, Opened::Created))
            }
            Err(e @ (SessionError::Corrupt { .. } | SessionError::SchemaVersion { .. })) => {
                if force {
                    Self::replace(path, fresh)
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Starts `fresh` at `path` whatever is there; an existing file is moved aside (returned), never deleted.
    pub fn create_new(
        path: impl AsRef<Path>,
        fresh: Session,
    ) -> Result<(Self, Option<PathBuf>), SessionError> {
        let path = path.as_ref().to_path_buf();
        let moved = move_aside(&path)?;
        Ok((Self::write_new(path, fresh)?, moved))
    }

    fn replace(path: PathBuf, fresh: Session) -> Result<(Self, Opened), SessionError> {
        let (file, moved) = Self::create_new(path, fresh)?;
        let opened = match moved {
            Some(moved_to) => Opened::Replaced { moved_to },
            None => Opened::Created,
        };
        Ok((file, opened))
    }

    fn write_new(path: PathBuf, session: Session) -> Result<Self, SessionError> {
        save_atomic(&path, &session)?;
        Ok(Self { path, session })
    }

    /// Stamps `updated_at` and saves atomically.
    pub fn save(&mut self) -> Result<(), SessionError> {
        self.session.meta.updated_at = now_rfc3339();
        save_atomic(&self.path, &self.session)
    }

    /// The session in memory.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session in memory, for the driver to update before [`SessionFile::save`].
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Where the session is saved.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The session, giving up the file.
    pub fn into_session(self) -> Session {
        self.session
    }
}

/// Renames an existing file at `path` to `<name>.replaced-<UTC time>[-n]`; `None` if there was none.
fn move_aside(path: &Path) -> Result<Option<PathBuf>, SessionError> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    let stamp: String = now_rfc3339()
        .chars()
        .filter(|c| *c != ':' && *c != '-')
        .collect();
    let base = format!("{}.replaced-{stamp}", path.display());
    let mut target = PathBuf::from(&base);
    let mut n = 1;
    while fs::symlink_metadata(&target).is_ok() {
        target = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    fs::rename(path, &target).map_err(|e| io_error("move aside", path, e))?;
    Ok(Some(target))
}
