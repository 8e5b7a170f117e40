//! Exports a session's winner as a kernel-pack entry: a JSON description plus a standalone `.cu`.
//!
//! The `.cu` carries everything a framework needs in its header comment
//! (target, entry point, launch rule, `-D` defines, where and when it was
//! measured), followed by the source exactly as it was verified and timed,
//! its `// kiln:` launch line included.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use super::error::{write_file, ReportError};
use super::summary::{KernelSummary, ShapeResult};
use crate::session::{self, Session};
use kiln_eval::candidate::strip_comments;
use kiln_eval::targets;

pub use kiln_kernels::pack::{PackEntry, PackShape, PACK_FORMAT};

/// What [`export_winner`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportedPack {
    /// The JSON entry.
    pub json: PathBuf,
    /// The standalone `.cu` beside it (same stem).
    pub cu: PathBuf,
    /// The entry as written.
    pub entry: PackEntry,
}

/// Writes the best evaluated kernel of `session` to `out` (JSON) and to `out` with extension `.cu`.
pub fn export_winner(session: &Session, out: &Path) -> Result<ExportedPack, ReportError> {
    export(session, None, out)
}

/// Loads the session at `session_path` and exports its winner, recording the path in the entry.
pub fn export_winner_from(session_path: &Path, out: &Path) -> Result<ExportedPack, ReportError> {
    let session = session::load(session_path)?;
    export(&session, Some(session_path), out)
}

fn export(
    session: &Session,
    session_path: Option<&Path>,
    out: &Path,
) -> Result<ExportedPack, ReportError> {
    if out.file_name().is_none() {
        return Err(ReportError::BadOutputPath { path: out.into() });
    }
    let entry = pack_entry(session, session_path)?;
    let cu = out.with_extension("cu");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| ReportError::io("create folder", dir, e))?;
    }
    let json = serde_json::to_string_pretty(&entry).map_err(|source| ReportError::Json {
        what: "kernel-pack entry",
        source,
    })?;
    write_file(out, &(json + "\n"))?;
    write_file(&cu, &cu_text(&entry))?;
    Ok(ExportedPack {
        json: out.to_path_buf(),
        cu,
        entry,
    })
}

/// Builds the pack entry for the session's winner, or [`ReportError::NoWinner`].
pub fn pack_entry(
    session: &Session,
    session_path: Option<&Path>,
) -> Result<PackEntry, ReportError> {
    let no_winner = || ReportError::NoWinner {
        where_: session_path.map_or_else(
            || format!("session {}/{}", session.meta.target, session.meta.backend),
            |p| p.display().to_string(),
        ),
    };
    let id = session.tree.best().ok_or_else(no_winner)?;
    let node = session.tree.get(id).ok_or_else(no_winner)?;
    let summary = KernelSummary::of(session, id).ok_or_else(no_winner)?;
    let m = &session.meta;
    // The session stores only the target's name; the registry knows its entry
    // point, dtype and defines. For a target this build does not know, fall
    // back to what the source and the record show.
    let target = targets::find(&m.target);
    let entry_point = target
        .as_ref()
        .and_then(|t| t.signature().ok())
        .map(|sig| sig.entry)
        .or_else(|| entry_point(&node.source));
    let static_dims = target
        .as_ref()
        .map(|t| t.static_dims())
        .or_else(|| dims_from_shapes(&summary.shapes))
        .filter(|d| !d.is_empty());
    let defines = match target.as_ref().and_then(|t| t.defines().ok()) {
        Some(d) => Some(kiln_kernels::pack::define_entries(&d)),
        None => static_dims.as_ref().map(define_flags),
    };
    Ok(PackEntry {
        format: PACK_FORMAT.to_string(),
        target: m.target.clone(),
        entry_point,
        source: node.source.clone(),
        launch_line: recorded_launch_line(&node.source, &node.launch_line),
        static_dims,
        defines,
        dtype: target.as_ref().map(|t| t.dtype().name().to_string()),
        gpu_name: m.gpu_name.clone(),
        gpu_arch: m.gpu_arch.clone(),
        driver_version: m.driver_version.clone(),
        nvrtc_version: m.nvrtc_version.clone(),
        kiln_version: m.kiln_version.clone(),
        measured_at: m.updated_at.clone(),
        shapes: summary
            .shapes
            .iter()
            .map(|s| PackShape {
                name: s.name.clone(),
                speedup: s.speedup,
                median_us: s.median_us,
                baseline_median_us: s.baseline_median_us,
            })
            .collect(),
        speedup_vs_catalog: summary.speedup_vs_catalog,
        speedup_vs_seed: summary.speedup_vs_seed,
        reward: summary.reward.unwrap_or(0.0),
        session_path: session_path.map(Path::to_path_buf),
        node: Some(id.0),
    })
}

/// The launch line that ran: the one the shared rule
/// ([`kiln_kernels::source::launch_line`], which the worker also uses) finds in
/// the exact source that was timed, in canonical `// kiln: <spec>` form. The
/// node's stored copy is used only for a source with no usable launch line
/// (such a source never ran, so it cannot be a measured winner).
fn recorded_launch_line(source: &str, stored: &str) -> String {
    kiln_kernels::source::launch_line(source)
        .map(|l| l.canonical())
        .unwrap_or_else(|_| stored.trim().to_string())
}

/// The name of the `__global__` function in `source` (comments ignored), if one is found.
fn entry_point(source: &str) -> Option<String> {
    let code = strip_comments(source).ok()?;
    let after = &code[code.find("__global__")? + "__global__".len()..];
    let open = after.find('(')?;
    // `void <name>` possibly with attributes between; the name is the last word before `(`.
    let name = after[..open]
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .rfind(|w| !w.is_empty())?;
    (name != "void").then(|| name.to_string())
}

/// Shape variables other than `T` that hold one value across every timed shape: the static dims.
///
/// `T` is always a run-time argument, so it is never a static dim.
fn dims_from_shapes(shapes: &[ShapeResult]) -> Option<BTreeMap<String, i64>> {
    let first = shapes.first()?;
    let dims: BTreeMap<String, i64> = first
        .vars
        .iter()
        .filter(|(k, v)| {
            k.as_str() != "T" && shapes.iter().all(|s| s.vars.get(k.as_str()) == Some(v))
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    Some(dims)
}

/// `KILN_<NAME>=<value>` entries for static dims (the catalog's naming), for targets outside the registry.
fn define_flags(dims: &BTreeMap<String, i64>) -> Vec<String> {
    dims.iter()
        .map(|(k, v)| kiln_kernels::pack::define_entry(&format!("KILN_{k}"), &v.to_string()))
        .collect()
}

fn or_unknown(s: &str) -> &str {
    if s.trim().is_empty() {
        "unknown"
    } else {
        s
    }
}

/// The standalone `.cu`: a header comment describing the kernel, then the source verbatim.
fn cu_text(e: &PackEntry) -> String {
    let mut h = String::new();
    let speed = |x: Option<f64>| x.map_or_else(|| "unknown".to_string(), |v| format!("{v:.3}x"));
    let _ = writeln!(h, "// kiln kernel pack entry ({PACK_FORMAT})");
    let _ = writeln!(h, "// target:   {}", e.target);
    let _ = writeln!(
        h,
        "// entry:    extern \"C\" __global__ void {}(...)",
        e.entry_point.as_deref().unwrap_or("<see source>")
    );
    let _ = writeln!(
        h,
        "// dtype:    {}",
        e.dtype.as_deref().unwrap_or("see source")
    );
    let _ = writeln!(
        h,
        "// launch:   {}",
        e.launch_line.trim_start_matches("//").trim()
    );
    let _ = writeln!(
        h,
        "//           block/grid/smem are expressions over the shape variables (T = tokens, a run-time"
    );
    let _ = writeln!(
        h,
        "//           argument; model dims) and SMS (the device's SM count); smem is dynamic shared bytes"
    );
    match &e.defines {
        Some(d) => {
            let _ = writeln!(h, "// defines:  {}", d.join(" "));
        }
        None => {
            let _ = writeln!(
                h,
                "// defines:  not recorded; pass the target's model dims as -DKILN_<NAME>=<value>"
            );
        }
    }
    let _ = writeln!(
        h,
        "// measured: {} ({}), driver {}, NVRTC {}, kiln {}, session saved {}",
        or_unknown(&e.gpu_name),
        or_unknown(&e.gpu_arch),
        or_unknown(&e.driver_version),
        or_unknown(&e.nvrtc_version),
        or_unknown(&e.kiln_version),
        or_unknown(&e.measured_at)
    );
    let from = e.session_path.as_ref().map_or_else(
        || "an in-memory session".to_string(),
        |p| p.display().to_string(),
    );
    let node = e
        .node
        .map_or_else(|| "unknown".to_string(), |n| n.to_string());
    let _ = writeln!(h, "// from:     {from}, node {node}");
    let _ = writeln!(
        h,
        "// speedup:  {} vs the catalog kernel, {} vs the naive seed; reward {:.4}",
        speed(e.speedup_vs_catalog),
        speed(e.speedup_vs_seed),
        e.reward
    );
    for s in &e.shapes {
        let _ = writeln!(
            h,
            "//           {}: {}",
            s.name.replace('\n', " "),
            speed(s.speedup)
        );
    }
    let _ = writeln!(
        h,
        "// The source below is verbatim, as verified and timed.\n"
    );
    h.push_str(&e.source);
    if !e.source.ends_with('\n') {
        h.push('\n');
    }
    h
}

#[cfg(test)]
mod launch_tests {
    use super::recorded_launch_line;

    #[test]
    fn export_records_the_launch_line_the_one_rule_finds() {
        for (src, want) in kiln_kernels::source::LAUNCH_LINE_CASES {
            let got = recorded_launch_line(src, "stored");
            match want {
                Some(spec) => assert_eq!(got, format!("// kiln: {spec}"), "{src:?}"),
                None => assert_eq!(got, "stored", "{src:?}"),
            }
        }
        // A stale stored copy never wins over what the source says.
        let src =
            "const char* s = \"// kiln: block=1 grid=1 smem=0\";\n// kiln: block=2 grid=1 smem=0\n";
        assert_eq!(
            recorded_launch_line(src, "// kiln: block=1 grid=1 smem=0"),
            "// kiln: block=2 grid=1 smem=0"
        );
    }
}
