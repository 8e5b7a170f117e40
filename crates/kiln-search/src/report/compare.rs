//! One table comparing every session in one or more folders: is the
//! discovered kernel worth using?
//!
//! `kiln discover autorun` lays sessions out as `<dir>/<target>_<backend>/session.json`;
//! session files directly in `<dir>` are read too. Folders are merged (the
//! shards of a Slurm run, or runs on several machines): each (target,
//! backend) gets one row with the best kernel's speedups over all of them
//! and a verdict:
//!
//! | verdict    | rule (speedup over the catalog kernel) |
//! |------------|----------------------------------------|
//! | `USE`      | strictly above [`USE_THRESHOLD`] (1.05×) |
//! | `MARGINAL` | strictly above [`MARGINAL_THRESHOLD`] (1.0×), up to 1.05× inclusive |
//! | `KEEP`     | 1.0× or below, no passing kernel, or an unreadable session |
//!
//! Both boundaries are exclusive: exactly 1.05× is `MARGINAL` and exactly
//! 1.0× is `KEEP`, since a tie does not justify replacing a trusted kernel.
//! An unreadable session never aborts the table: it becomes a `KEEP` row
//! carrying the error.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::ReportError;
use super::summary::KernelSummary;
use crate::search::NodeId;
use crate::session::{self, Session};

/// A speedup strictly above this is `USE`.
pub const USE_THRESHOLD: f64 = 1.05;
/// A speedup strictly above this (and not above [`USE_THRESHOLD`]) is `MARGINAL`.
pub const MARGINAL_THRESHOLD: f64 = 1.0;

/// Whether to use the discovered kernel instead of the catalog's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Clearly faster (> 1.05×): use it.
    Use,
    /// Slightly faster (> 1.0×, ≤ 1.05×): within noise of a re-timing; use only with a model-level check.
    Marginal,
    /// Not faster, nothing passed, or the session is unreadable: keep the catalog kernel.
    Keep,
}

impl Verdict {
    /// The verdict for a speedup over the catalog kernel (`None`: no passing kernel → `KEEP`).
    pub fn from_speedup(speedup: Option<f64>) -> Verdict {
        match speedup.filter(|s| s.is_finite()) {
            Some(s) if s > USE_THRESHOLD => Verdict::Use,
            Some(s) if s > MARGINAL_THRESHOLD => Verdict::Marginal,
            _ => Verdict::Keep,
        }
    }

    /// `USE`, `MARGINAL` or `KEEP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Use => "USE",
            Verdict::Marginal => "MARGINAL",
            Verdict::Keep => "KEEP",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One (target, backend): the best kernel of its session and the verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComparisonRow {
    /// The target (from the session, or guessed from the path when it is unreadable).
    pub target: String,
    /// The proposer backend (likewise; `?` when it cannot be guessed).
    pub backend: String,
    /// The session file the row comes from.
    pub session_path: PathBuf,
    /// The best evaluated node, if any passed.
    pub best_node: Option<NodeId>,
    /// The best kernel's speedup over the catalog baseline.
    pub speedup_vs_catalog: Option<f64>,
    /// The best kernel's speedup over the naive seed kernel.
    pub speedup_vs_seed: Option<f64>,
    /// The best kernel's mean fraction of the speed of light (0–1).
    pub sol_fraction: Option<f64>,
    /// Candidates evaluated, failures included.
    pub candidates_evaluated: u64,
    /// Failures by evaluator stage.
    pub failures_by_stage: BTreeMap<String, u32>,
    /// Use the discovered kernel or keep the catalog's.
    pub verdict: Verdict,
    /// Why the session could not be read, if it could not.
    pub error: Option<String>,
    /// Other session files for the same (target, backend), not shown in the row.
    pub other_sessions: Vec<PathBuf>,
}

/// The rows for one or more folders, sorted by target then backend.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// The folders that were searched, as given.
    pub dirs: Vec<PathBuf>,
    /// One row per (target, backend).
    pub rows: Vec<ComparisonRow>,
}

/// Reads every session under `dir` and builds one row per (target, backend).
///
/// Only failing to list `dir` itself is an error; an unreadable session is a row.
pub fn compare_dir(dir: &Path) -> Result<Comparison, ReportError> {
    compare_dirs(&[dir.to_path_buf()])
}

/// Reads every session under each of `dirs` and builds one row per (target,
/// backend) over all of them; the other sessions of a pair are listed in its
/// row. A folder given twice (or a session reached twice) counts once.
///
/// Only failing to list a folder itself is an error; an unreadable session is a row.
pub fn compare_dirs(dirs: &[PathBuf]) -> Result<Comparison, ReportError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut rows: Vec<ComparisonRow> = Vec::new();
    for dir in dirs {
        for path in session_files(dir)? {
            let key = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if !seen.insert(key) {
                continue;
            }
            rows.push(match session::load(&path) {
                Ok(s) => row_for(&s, &path),
                Err(e) => error_row(&path, dir, e.to_string()),
            });
        }
    }
    rows.sort_by(|a, b| {
        (&a.target, &a.backend, rank(a), &a.session_path).cmp(&(
            &b.target,
            &b.backend,
            rank(b),
            &b.session_path,
        ))
    });
    // One row per (target, backend): the first after sorting is the best.
    let mut kept: Vec<ComparisonRow> = Vec::with_capacity(rows.len());
    for row in rows {
        match kept.last_mut() {
            Some(prev) if prev.target == row.target && prev.backend == row.backend => {
                prev.other_sessions.push(row.session_path)
            }
            _ => kept.push(row),
        }
    }
    Ok(Comparison {
        dirs: dirs.to_vec(),
        rows: kept,
    })
}

/// Sort key putting the row to show first: readable, fastest, most evaluated.
fn rank(row: &ComparisonRow) -> (bool, std::cmp::Reverse<OrdF64>, std::cmp::Reverse<u64>) {
    (
        row.error.is_some(),
        std::cmp::Reverse(OrdF64(row.speedup_vs_catalog.unwrap_or(f64::NEG_INFINITY))),
        std::cmp::Reverse(row.candidates_evaluated),
    )
}

/// Total order on f64 for sorting.
#[derive(PartialEq)]
struct OrdF64(f64);
impl Eq for OrdF64 {}
impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// `<dir>/*/session.json`, plus `<dir>/*.json` files that look like sessions, in path order.
fn session_files(dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let entries = fs::read_dir(dir).map_err(|e| ReportError::io("read folder", dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ReportError::io("read folder", dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            let inner = path.join("session.json");
            if inner.is_file() {
                files.push(inner);
            }
        } else if path.extension().is_some_and(|e| e == "json") && looks_like_session(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// False only for valid JSON that is clearly something else (a comparison or
/// benchmark written beside the sessions); damaged JSON counts, so a corrupt
/// session is reported rather than skipped.
fn looks_like_session(path: &Path) -> bool {
    let Ok(bytes) = fs::read(path) else {
        return true; // unreadable: let load() report why
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(v) => v.get("schema_version").is_some() || v.get("meta").is_some(),
        Err(_) => true,
    }
}

fn row_for(s: &Session, path: &Path) -> ComparisonRow {
    let best = s.tree.best().and_then(|id| KernelSummary::of(s, id));
    let speedup = best.as_ref().and_then(|b| b.speedup_vs_catalog);
    ComparisonRow {
        target: s.meta.target.clone(),
        backend: s.meta.backend.clone(),
        session_path: path.to_path_buf(),
        best_node: best.as_ref().map(|b| b.node),
        speedup_vs_catalog: speedup,
        speedup_vs_seed: best.as_ref().and_then(|b| b.speedup_vs_seed),
        sol_fraction: best.as_ref().and_then(|b| b.sol_fraction),
        candidates_evaluated: s.meta.counters.candidates_evaluated,
        failures_by_stage: s.meta.counters.failures_by_stage.clone(),
        verdict: Verdict::from_speedup(speedup),
        error: None,
        other_sessions: Vec::new(),
    }
}

fn error_row(path: &Path, dir: &Path, error: String) -> ComparisonRow {
    let (target, backend) = guess_target_backend(path, dir);
    ComparisonRow {
        target,
        backend,
        session_path: path.to_path_buf(),
        best_node: None,
        speedup_vs_catalog: None,
        speedup_vs_seed: None,
        sol_fraction: None,
        candidates_evaluated: 0,
        failures_by_stage: BTreeMap::new(),
        verdict: Verdict::Keep,
        error: Some(error),
        other_sessions: Vec::new(),
    }
}

/// `(target, backend)` from `<target>_<backend>/session.json` or `<target>_<backend>.json`.
///
/// Backend names hold no `_`, so the last `_` splits the two.
fn guess_target_backend(path: &Path, dir: &Path) -> (String, String) {
    let name = if path.parent() == Some(dir) {
        path.file_stem()
    } else {
        path.parent().and_then(Path::file_name)
    };
    let name = name
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rsplit_once('_') {
        Some((t, b)) if !t.is_empty() && !b.is_empty() => (t.to_string(), b.to_string()),
        _ => (name, "?".to_string()),
    }
}

/// `1.23×`, or `—` when unknown.
pub(crate) fn fmt_speedup(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite())
        .map_or_else(|| "—".to_string(), |v| format!("{v:.2}×"))
}

/// `45.1%` from a fraction, or `—` when unknown.
pub(crate) fn fmt_percent(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite())
        .map_or_else(|| "—".to_string(), |v| format!("{:.1}%", v * 100.0))
}

/// `compile 2, verify 1`, or `—` when there were none.
pub(crate) fn fmt_failures(f: &BTreeMap<String, u32>) -> String {
    let parts: Vec<String> = f
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(stage, n)| format!("{stage} {n}"))
        .collect();
    if parts.is_empty() {
        "—".to_string()
    } else {
        parts.join(", ")
    }
}

/// Makes a cell safe inside a Markdown table: one line, `|` escaped.
pub(crate) fn cell(text: &str) -> String {
    text.replace('|', "\\|")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Renders an aligned Markdown pipe table; `right[i]` right-aligns column `i`.
pub(crate) fn pipe_table(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h).max(3)).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(c));
        }
    }
    let line = |cells: &mut dyn Iterator<Item = String>| -> String {
        let body: Vec<String> = cells.collect();
        format!("| {} |\n", body.join(" | "))
    };
    let pad = |text: &str, i: usize| -> String {
        let fill = " ".repeat(widths[i].saturating_sub(width(text)));
        if right.get(i).copied().unwrap_or(false) {
            format!("{fill}{text}")
        } else {
            format!("{text}{fill}")
        }
    };
    let mut out = line(&mut header.iter().enumerate().map(|(i, h)| pad(h, i)));
    out += &line(&mut widths.iter().enumerate().map(|(i, w)| {
        if right.get(i).copied().unwrap_or(false) {
            format!("{}:", "-".repeat(w - 1))
        } else {
            "-".repeat(*w)
        }
    }));
    for row in rows {
        out += &line(&mut row.iter().enumerate().map(|(i, c)| pad(c, i)));
    }
    out
}

impl Comparison {
    /// An aligned table that reads well in a terminal and is also a valid Markdown table.
    ///
    /// Errors of unreadable sessions follow the table as numbered notes, so
    /// one long message does not widen every row.
    pub fn to_table(&self) -> String {
        let header = [
            "target",
            "backend",
            "vs catalog",
            "vs seed",
            "SoL",
            "evaluated",
            "failures",
            "verdict",
            "note",
        ];
        let right = [false, false, true, true, true, true, false, false, false];
        let mut notes: Vec<String> = Vec::new();
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                let mut note = match (&r.error, r.best_node) {
                    (Some(e), _) => {
                        notes.push(e.clone());
                        format!("unreadable, see [{}]", notes.len())
                    }
                    (None, None) => "no candidate passed verification".to_string(),
                    (None, Some(id)) => format!("best node {id}"),
                };
                if !r.other_sessions.is_empty() {
                    note.push_str(&format!(
                        "; {} more session file(s) for this pair",
                        r.other_sessions.len()
                    ));
                }
                vec![
                    cell(&r.target),
                    cell(&r.backend),
                    fmt_speedup(r.speedup_vs_catalog),
                    fmt_speedup(r.speedup_vs_seed),
                    fmt_percent(r.sol_fraction),
                    r.candidates_evaluated.to_string(),
                    cell(&fmt_failures(&r.failures_by_stage)),
                    r.verdict.to_string(),
                    cell(&note),
                ]
            })
            .collect();
        let mut out = pipe_table(&header, &right, &rows);
        if !notes.is_empty() {
            out.push('\n');
            for (i, n) in notes.iter().enumerate() {
                out.push_str(&format!("[{}] {}\n", i + 1, cell(n)));
            }
        }
        out
    }

    /// The table plus a line stating the verdict rule, for docs such as DISCOVER.md.
    pub fn to_markdown(&self) -> String {
        format!(
            "{}\nVerdict on the speedup over the catalog kernel: USE above {USE_THRESHOLD:.2}×, \
             MARGINAL above {MARGINAL_THRESHOLD:.2}× up to {USE_THRESHOLD:.2}×, otherwise KEEP \
             (boundaries exclusive). SoL is the mean fraction of the speed of light over the timed shapes.\n",
            self.to_table()
        )
    }

    /// The comparison as pretty JSON; unknown numbers are `null`, never NaN or Infinity.
    pub fn to_json(&self) -> Result<String, ReportError> {
        serde_json::to_string_pretty(self).map_err(|source| ReportError::Json {
            what: "comparison",
            source,
        })
    }
}
