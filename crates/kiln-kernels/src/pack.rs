//! The kernel-pack format, declared once: `kiln discover export` writes a
//! [`PackEntry`], kiln-candle reads it back ([`parse_pack`]) and replaces the
//! catalog build whose entry point and defines match.
//!
//! Defines are `NAME=VALUE` entries (`KILN_D=2048`): export writes them with
//! [`define_entry`], kiln-candle matches with [`same_defines`]. Packs exported
//! before this grammar was shared wrote the compiler flag (`-DKILN_D=2048`);
//! the parser reads both, so those packs load instead of silently replacing
//! nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The name `kiln validate` gives the configuration that runs the default
/// catalog, read back by `kiln discover promote`.
pub const VALIDATE_CATALOG: &str = "kiln (catalog)";
/// The name `kiln validate` gives the configuration that runs a pack.
pub const VALIDATE_PACK: &str = "kiln (pack)";

/// The format tag of every exported entry, bumped on incompatible changes.
pub const PACK_FORMAT: &str = "kiln-kernel-pack-entry/1";

/// One shape's speedup in a pack entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackShape {
    /// The shape's name.
    pub name: String,
    /// Catalog time / this kernel's time.
    pub speedup: Option<f64>,
    /// This kernel's median time in µs.
    pub median_us: Option<f64>,
    /// The catalog kernel's median time in µs.
    pub baseline_median_us: Option<f64>,
}

/// A kernel-pack entry: a kernel and everything needed to compile, launch and
/// trust it. `target`, `source` and (for a replacement of every configuration
/// of an op) `entry_point` are all a hand-written entry needs; the rest is the
/// provenance export records, empty when absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PackEntry {
    /// [`PACK_FORMAT`] (empty in a hand-written entry).
    #[serde(default)]
    pub format: String,
    /// The target the kernel implements.
    pub target: String,
    /// The `extern "C"` entry point, when known.
    #[serde(default)]
    pub entry_point: Option<String>,
    /// The full CUDA C++ source, as verified and timed, with its launch line.
    pub source: String,
    /// The `// kiln:` launch line, as the worker read it from `source`.
    #[serde(default)]
    pub launch_line: String,
    /// Static shape variables the kernel was specialised for (`D` → 2048), when known.
    #[serde(default)]
    pub static_dims: Option<BTreeMap<String, i64>>,
    /// The NVRTC defines it was verified with, as `NAME=VALUE` entries
    /// ([`define_entry`]); absent: it replaces every configuration of its entry point.
    #[serde(default)]
    pub defines: Option<Vec<String>>,
    /// The storage dtype (`bf16`, `f16`, `f32`), when known.
    #[serde(default)]
    pub dtype: Option<String>,
    /// The GPU it was measured on.
    #[serde(default)]
    pub gpu_name: String,
    /// That GPU's architecture (e.g. `sm_90`).
    #[serde(default)]
    pub gpu_arch: String,
    /// The CUDA driver version.
    #[serde(default)]
    pub driver_version: String,
    /// The NVRTC version it was compiled with.
    #[serde(default)]
    pub nvrtc_version: String,
    /// The kiln version that ran the search.
    #[serde(default)]
    pub kiln_version: String,
    /// When the session was last saved (RFC 3339, UTC).
    #[serde(default)]
    pub measured_at: String,
    /// Per-shape speedups over the catalog kernel.
    #[serde(default)]
    pub shapes: Vec<PackShape>,
    /// Geometric-mean speedup over the catalog kernel.
    #[serde(default)]
    pub speedup_vs_catalog: Option<f64>,
    /// Speedup over the naive seed kernel.
    #[serde(default)]
    pub speedup_vs_seed: Option<f64>,
    /// The search reward.
    #[serde(default)]
    pub reward: f64,
    /// The session file it came from, when exported from a file.
    #[serde(default)]
    pub session_path: Option<PathBuf>,
    /// The winning node of that session's tree.
    #[serde(default)]
    pub node: Option<u32>,
}

/// Why a pack text is not a pack.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Not JSON of one entry or an array of entries.
    #[error("not a kernel pack from `kiln discover export` ({0})")]
    Json(#[from] serde_json::Error),
    /// An entry of another format version.
    #[error("entry for {target} has format `{found}`; this kiln reads `{PACK_FORMAT}` (export it again with this kiln)")]
    Format {
        /// The entry's target.
        target: String,
        /// Its format tag.
        found: String,
    },
    /// The pack file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An entry's source has no launch line kiln can run.
    #[error("the kernel for {target}: {reason}")]
    LaunchLine {
        /// The entry's target.
        target: String,
        /// What is wrong with its launch line.
        reason: String,
    },
}

/// The entries of a pack text: one exported entry, or a JSON array of entries.
pub fn parse_pack(text: &str) -> Result<Vec<PackEntry>, PackError> {
    let entries = if text.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<PackEntry>>(text)?
    } else {
        vec![serde_json::from_str::<PackEntry>(text)?]
    };
    for e in &entries {
        if !e.format.is_empty() && e.format != PACK_FORMAT {
            return Err(PackError::Format {
                target: e.target.clone(),
                found: e.format.clone(),
            });
        }
    }
    Ok(entries)
}

/// Reads a pack file ([`parse_pack`]) and checks that every entry's source
/// has a launch line kiln can run: what `kiln validate --pack` and the models
/// load, so a broken pack is an error before any GPU work starts.
pub fn read_pack(path: &Path) -> Result<Vec<PackEntry>, PackError> {
    let text = std::fs::read_to_string(path).map_err(|source| PackError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let entries = parse_pack(&text)?;
    for e in &entries {
        crate::launch::LaunchLine::parse_source(&e.source).map_err(|err| {
            PackError::LaunchLine {
                target: e.target.clone(),
                reason: err.to_string(),
            }
        })?;
    }
    Ok(entries)
}

/// The pack entry of one define.
pub fn define_entry(name: &str, value: &str) -> String {
    format!("{name}={value}")
}

/// The pack entries of a build's defines.
pub fn define_entries(defines: &[(String, String)]) -> Vec<String> {
    defines.iter().map(|(k, v)| define_entry(k, v)).collect()
}

/// `(NAME, VALUE)` of a pack entry (`NAME=VALUE`, or the older `-DNAME=VALUE`);
/// None when it is neither.
pub fn parse_define(entry: &str) -> Option<(String, String)> {
    let e = entry.trim();
    let e = e.strip_prefix("-D").unwrap_or(e);
    let (name, value) = e.split_once('=')?;
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    ok.then(|| (name.to_string(), value.to_string()))
}

/// Whether a pack entry's defines are exactly a build's (order aside).
pub fn same_defines(entries: &[String], build: &[(String, String)]) -> bool {
    let mut a: Vec<Option<(String, String)>> = entries.iter().map(|e| parse_define(e)).collect();
    let mut b: Vec<Option<(String, String)>> = build.iter().cloned().map(Some).collect();
    a.sort();
    b.sort();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_round_trips_and_hand_written_or_foreign_entries_are_read_as_such() {
        let e = PackEntry {
            format: PACK_FORMAT.into(),
            target: "qwen3_rmsnorm".into(),
            entry_point: Some("rmsnorm".into()),
            source: "// kiln: block=32 grid=T\n".into(),
            defines: Some(vec![define_entry("KILN_D", "2048")]),
            node: Some(3),
            ..Default::default()
        };
        let text = serde_json::to_string_pretty(&e).expect("json");
        assert_eq!(parse_pack(&text).expect("one"), vec![e.clone()]);
        let arr = format!(
            "[{text}, {{\"target\": \"x\", \"source\": \"s\", \"entry_point\": \"rope\"}}]"
        );
        let both = parse_pack(&arr).expect("array");
        assert_eq!(both[0], e);
        assert_eq!(both[1].defines, None, "hand-written: every configuration");
        let foreign = text.replace(PACK_FORMAT, "kiln-kernel-pack-entry/9");
        assert!(matches!(
            parse_pack(&foreign),
            Err(PackError::Format { .. })
        ));
        assert!(matches!(
            parse_pack("{\"target\": 1}"),
            Err(PackError::Json(_))
        ));
    }

    #[test]
    fn entries_round_trip_and_the_older_flag_form_matches_too() {
        let build = vec![
            ("KILN_DTYPE".to_string(), "__nv_bfloat16".to_string()),
            ("KILN_D".to_string(), "2048".to_string()),
            ("KILN_EPS".to_string(), "1e-6f".to_string()),
        ];
        let entries = define_entries(&build);
        assert_eq!(entries[1], "KILN_D=2048");
        assert!(same_defines(&entries, &build));
        let flags: Vec<String> = entries.iter().map(|e| format!("-D{e}")).collect();
        assert!(same_defines(&flags, &build), "packs exported as -D flags");
        let mut reordered = entries.clone();
        reordered.reverse();
        assert!(same_defines(&reordered, &build));
    }

    #[test]
    fn a_different_value_a_missing_define_or_junk_does_not_match() {
        let build = vec![("KILN_D".to_string(), "2048".to_string())];
        assert!(!same_defines(&["KILN_D=4096".into()], &build));
        assert!(!same_defines(&[], &build));
        assert!(!same_defines(
            &["KILN_D=2048".into(), "KILN_X=1".into()],
            &build
        ));
        assert!(!same_defines(&["garbage".into()], &build));
        assert_eq!(parse_define("1X=2"), None);
        assert_eq!(parse_define("=2"), None);
    }

    #[test]
    fn a_pack_file_is_read_only_if_every_entry_can_launch() {
        let dir = std::env::temp_dir().join(format!("kiln-pack-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let write = |name: &str, source: &str| {
            let e = PackEntry {
                target: "qwen3_rmsnorm".into(),
                entry_point: Some("rmsnorm".into()),
                source: source.into(),
                ..Default::default()
            };
            let p = dir.join(name);
            std::fs::write(&p, serde_json::to_string(&e).expect("json")).expect("write");
            p
        };
        let good = write("good.json", "// kiln: block=32 grid=T smem=0\n");
        assert_eq!(read_pack(&good).expect("a good pack").len(), 1);
        let bad = write("bad.json", "// no launch line\n");
        let err = read_pack(&bad).expect_err("no launch line");
        assert!(
            matches!(err, PackError::LaunchLine { ref target, .. } if target == "qwen3_rmsnorm")
        );
        assert!(matches!(
            read_pack(&dir.join("missing.json")),
            Err(PackError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
