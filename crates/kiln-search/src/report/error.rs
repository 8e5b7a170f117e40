//! Errors from building reports, plots and exports; each names the file involved.

use std::io;
use std::path::PathBuf;

use crate::session::SessionError;

/// Why a report, plot, comparison or export could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The file system refused an operation on `path`.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read folder", "write", "create folder", …).
        action: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A session file could not be loaded.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The session has no kernel that passed verification, so there is no winner.
    #[error("no candidate passed verification in {where_}; nothing to export")]
    NoWinner {
        /// The session file, or `session <target>/<backend>` for an in-memory session.
        where_: String,
    },
    /// The output path cannot hold a kernel-pack entry (it needs a file name such as `winner.json`).
    #[error("export path {} has no file name; give a path such as out/winner.json", path.display())]
    BadOutputPath {
        /// The path given.
        path: PathBuf,
    },
    /// plotters failed while drawing a plot.
    #[error("cannot draw plot {name}: {detail}")]
    Plot {
        /// Which plot (`progress`, `tree`).
        name: &'static str,
        /// plotters' message.
        detail: String,
    },
    /// A file kiln reads back (a validate report, the discovered set) is not what it should be.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// serde_json failed to serialise a report value.
    #[error("cannot serialise {what} as JSON: {source}")]
    Json {
        /// What was being serialised.
        what: &'static str,
        /// The underlying error.
        source: serde_json::Error,
    },
}

impl ReportError {
    /// An [`ReportError::Io`] for `action` on `path`.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ReportError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Writes `contents` to `path`, mapping the failure to a [`ReportError`] naming the file.
pub(crate) fn write_file(path: &std::path::Path, contents: &str) -> Result<(), ReportError> {
    std::fs::write(path, contents).map_err(|e| ReportError::io("write", path, e))
}
