//! The model gate between a search's winner and kiln's discovered kernel set.
//!
//! A kernel that is faster alone can still be off a model's critical path, so
//! a winner is admitted only when a kiln model that runs its exact build
//! decodes faster with it by more than the run-to-run spread, with fidelity
//! inside the noise floor (`kiln validate --pack`, configurations interleaved
//! run by run). Every decision, admitted or not, is logged with its reason;
//! admitted entries join the discovered set (one JSON array of pack entries
//! that `kiln validate --pack` loads) and get a changelog line.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::ReportError;
use super::export::PackEntry;

use kiln_kernels::pack::{VALIDATE_CATALOG as CATALOG, VALIDATE_PACK as PACK};

/// What `kiln validate --pack` measured for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelTrial {
    /// The model, as validate names it.
    pub model: String,
    /// The GPU.
    pub device: String,
    /// Median decode tokens/s with the default catalog.
    pub catalog_tps: f64,
    /// Median decode tokens/s with the pack.
    pub pack_tps: f64,
    /// Run-to-run spread (p90/p10 − 1) of each.
    pub catalog_spread: f64,
    /// Spread of the pack configuration.
    pub pack_spread: f64,
    /// The pack configuration's fidelity verdict (`pass`, `fail`, `not_judged`).
    pub pack_verdict: String,
    /// Why, in validate's words.
    pub pack_verdict_reason: String,
    /// Which pack entry replaced which catalog build in this model.
    pub pack_replacements: Vec<String>,
}

#[derive(Deserialize)]
struct ValidateConfig {
    name: String,
    decode_tps: f64,
    #[serde(default)]
    decode_tps_spread: f64,
    verdict: String,
    #[serde(default)]
    verdict_reason: String,
}

#[derive(Deserialize)]
struct ValidateReport {
    model: String,
    #[serde(default)]
    device: String,
    configs: Vec<ValidateConfig>,
    #[serde(default)]
    pack_replacements: Vec<String>,
}

impl ModelTrial {
    /// Reads the detailed report `kiln validate` writes (`validate_<model>.json`).
    pub fn from_validate_json(path: &Path) -> Result<Self, ReportError> {
        let text = fs::read_to_string(path).map_err(|e| ReportError::io("read", path, e))?;
        let r: ValidateReport = serde_json::from_str(&text).map_err(|e| ReportError::Invalid {
            path: path.into(),
            reason: format!("not a kiln validate report: {e}"),
        })?;
        let find = |name: &str| {
            r.configs
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| ReportError::Invalid {
                    path: path.into(),
                    reason: format!("the report has no `{name}` configuration"),
                })
        };
        let (catalog, pack) = (find(CATALOG)?, find(PACK)?);
        Ok(Self {
            model: r.model,
            device: r.device,
            catalog_tps: catalog.decode_tps,
            pack_tps: pack.decode_tps,
            catalog_spread: catalog.decode_tps_spread,
            pack_spread: pack.decode_tps_spread,
            pack_verdict: pack.verdict.clone(),
            pack_verdict_reason: pack.verdict_reason.clone(),
            pack_replacements: r.pack_replacements,
        })
    }

    /// `pack / catalog − 1`.
    pub fn delta(&self) -> f64 {
        if self.catalog_tps > 0.0 {
            self.pack_tps / self.catalog_tps - 1.0
        } else {
            0.0
        }
    }

    /// The larger of the two configurations' spreads: what a gain must exceed.
    pub fn spread(&self) -> f64 {
        self.catalog_spread.max(self.pack_spread)
    }
}

/// Whether a winner joins the discovered set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// A model decodes faster beyond the spread, fidelity passes.
    Admitted,
    /// Not faster in a model, or not trusted there (see the reason).
    Rejected,
    /// The gate itself could not judge it: the pack replaced nothing, or a
    /// model failed its fidelity check. Loud: something is wrong.
    Failed,
}

/// The gate's verdict on one model trial set: the decision and its reason.
pub fn decide(trials: &[ModelTrial]) -> (Decision, String) {
    if trials.is_empty() {
        return (
            Decision::Rejected,
            "kernel-level only: no kiln model runs this target's build".into(),
        );
    }
    for t in trials {
        if t.pack_replacements.is_empty() {
            return (
                Decision::Failed,
                format!(
                    "the pack replaced no kernel in {}: its entry matches no build the model runs",
                    t.model
                ),
            );
        }
        match t.pack_verdict.as_str() {
            "pass" => {}
            "not_judged" => {
                return (
                    Decision::Rejected,
                    format!("{}: fidelity not judged (no noise floor measured)", t.model),
                )
            }
            other => {
                return (
                    Decision::Failed,
                    format!(
                        "{}: fidelity {other}: {}",
                        t.model,
                        t.pack_verdict_reason.trim()
                    ),
                )
            }
        }
    }
    let pct = |x: f64| x * 100.0;
    if let Some(t) = trials.iter().find(|t| t.delta() < -t.spread()) {
        return (
            Decision::Rejected,
            format!(
                "{} decodes {:.1} % slower (spread {:.1} %)",
                t.model,
                -pct(t.delta()),
                pct(t.spread())
            ),
        );
    }
    match trials.iter().find(|t| t.delta() > t.spread()) {
        Some(t) => (
            Decision::Admitted,
            format!(
                "{} decodes {:+.1} % ({:.1} → {:.1} tok/s), beyond its spread of {:.1} %",
                t.model,
                pct(t.delta()),
                t.catalog_tps,
                t.pack_tps,
                pct(t.spread())
            ),
        ),
        None => (
            Decision::Rejected,
            format!(
                "no model gain beyond the spread ({})",
                trials
                    .iter()
                    .map(|t| format!(
                        "{} {:+.1} % vs {:.1} %",
                        t.model,
                        pct(t.delta()),
                        pct(t.spread())
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
    }
}

/// One decision with its provenance, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    /// The target.
    pub target: String,
    /// The session the winner came from.
    pub session: PathBuf,
    /// Its kernel-level speedup over the catalog (geometric mean of the timed shapes).
    pub kernel_speedup: Option<f64>,
    /// What each model measured.
    pub trials: Vec<ModelTrial>,
    /// The verdict.
    pub decision: Decision,
    /// Why.
    pub reason: String,
    /// When (RFC 3339, UTC).
    pub date: String,
    /// The kiln commit that judged it.
    pub commit: String,
    /// What re-judging the kernel on the validating GPU with a fresh secret
    /// seed said, before any model ran it (empty in older logs).
    #[serde(default)]
    pub rejudged: String,
}

impl Promotion {
    /// The changelog line of an admitted kernel.
    pub fn changelog_line(&self) -> String {
        let card = self.trials.first().map(|t| t.device.as_str()).unwrap_or("");
        format!(
            "- {}: discovered kernel admitted ({}). Kernel speedup {}; card {card}; session {}; commit {}.\n",
            self.target,
            self.reason,
            self.kernel_speedup
                .map_or("—".to_string(), |s| format!("{s:.2}×")),
            self.session.display(),
            self.commit
        )
    }
}

/// Adds (or replaces, by target) `entry` in the discovered set at `path`, a
/// JSON array of pack entries (created when missing).
pub fn admit(path: &Path, entry: &PackEntry) -> Result<(), ReportError> {
    let mut entries: Vec<PackEntry> = match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| ReportError::Invalid {
            path: path.into(),
            reason: format!("the discovered set is not a JSON array of pack entries: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(ReportError::io("read", path, e)),
    };
    entries.retain(|e| e.target != entry.target);
    entries.push(entry.clone());
    entries.sort_by(|a, b| a.target.cmp(&b.target));
    write(path, &(to_json(&entries)? + "\n"))
}

/// Appends `p` to the decision log at `path` (one JSON object per line).
pub fn log(path: &Path, p: &Promotion) -> Result<(), ReportError> {
    let line = serde_json::to_string(p).map_err(|source| ReportError::Json {
        what: "promotion record",
        source,
    })?;
    append(path, &(line + "\n"))
}

/// Appends the changelog line of an admitted kernel to `path`.
pub fn changelog(path: &Path, p: &Promotion) -> Result<(), ReportError> {
    append(path, &p.changelog_line())
}

fn to_json(entries: &[PackEntry]) -> Result<String, ReportError> {
    serde_json::to_string_pretty(entries).map_err(|source| ReportError::Json {
        what: "discovered set",
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| ReportError::io("create folder", dir, e))?;
    }
    fs::write(path, text).map_err(|e| ReportError::io("write", path, e))
}

fn append(path: &Path, text: &str) -> Result<(), ReportError> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| ReportError::io("create folder", dir, e))?;
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ReportError::io("open", path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| ReportError::io("append to", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(model: &str, catalog: f64, pack: f64, spread: f64, verdict: &str) -> ModelTrial {
        ModelTrial {
            model: model.into(),
            device: "NVIDIA H100 80GB HBM3".into(),
            catalog_tps: catalog,
            pack_tps: pack,
            catalog_spread: spread,
            pack_spread: spread / 2.0,
            pack_verdict: verdict.into(),
            pack_verdict_reason: "max |Δlogit| 0.5 (floor 0.1)".into(),
            pack_replacements: vec!["qwen3_rmsnorm → rmsnorm".into()],
        }
    }

    #[test]
    fn a_gain_beyond_the_spread_with_passing_fidelity_is_admitted() {
        let (d, why) = decide(&[trial("qwen3_moe", 250.0, 260.0, 0.02, "pass")]);
        assert_eq!(d, Decision::Admitted, "{why}");
        assert!(why.contains("+4.0 %"), "{why}");
    }

    #[test]
    fn a_gain_inside_the_spread_is_rejected() {
        let (d, why) = decide(&[trial("qwen3_moe", 250.0, 253.0, 0.02, "pass")]);
        assert_eq!(d, Decision::Rejected);
        assert!(why.contains("no model gain beyond the spread"), "{why}");
    }

    #[test]
    fn a_slower_model_rejects_even_when_another_gains() {
        let (d, why) = decide(&[
            trial("a", 100.0, 110.0, 0.01, "pass"),
            trial("b", 100.0, 90.0, 0.01, "pass"),
        ]);
        assert_eq!(d, Decision::Rejected);
        assert!(why.contains("b decodes 10.0 % slower"), "{why}");
    }

    #[test]
    fn wrong_kernels_and_empty_replacements_fail_loudly() {
        let (d, why) = decide(&[trial("m", 100.0, 150.0, 0.01, "fail")]);
        assert_eq!(d, Decision::Failed);
        assert!(why.contains("fidelity fail"), "{why}");
        let mut t = trial("m", 100.0, 150.0, 0.01, "pass");
        t.pack_replacements.clear();
        let (d, why) = decide(&[t]);
        assert_eq!(d, Decision::Failed);
        assert!(why.contains("replaced no kernel"), "{why}");
        let (d, why) = decide(&[trial("m", 100.0, 150.0, 0.01, "not_judged")]);
        assert_eq!(d, Decision::Rejected);
        assert!(why.contains("not judged"), "{why}");
        let (d, why) = decide(&[]);
        assert_eq!(d, Decision::Rejected);
        assert!(why.starts_with("kernel-level only"), "{why}");
    }

    #[test]
    fn validate_reports_are_read_and_junk_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("validate_qwen3_moe.json");
        let report = serde_json::json!({
            "model": "qwen3_moe (48 layers)",
            "device": "NVIDIA H100 80GB HBM3",
            "configs": [
                {"name": "candle", "decode_tps": 50.0, "decode_tps_spread": 0.03, "verdict": "reference"},
                {"name": CATALOG, "decode_tps": 250.0, "decode_tps_spread": 0.01, "verdict": "pass"},
                {"name": PACK, "decode_tps": 260.0, "decode_tps_spread": 0.02, "verdict": "pass", "verdict_reason": "ok"}
            ],
            "pack_replacements": ["qwen3_rmsnorm → rmsnorm"]
        });
        fs::write(&path, report.to_string()).expect("write");
        let t = ModelTrial::from_validate_json(&path).expect("report");
        assert_eq!(
            (t.catalog_tps, t.pack_tps, t.spread()),
            (250.0, 260.0, 0.02)
        );
        assert_eq!(t.pack_verdict, "pass");
        fs::write(&path, "{").expect("write");
        let err = ModelTrial::from_validate_json(&path)
            .expect_err("junk")
            .to_string();
        assert!(err.contains("validate_qwen3_moe.json"), "{err}");
        fs::write(&path, r#"{"model": "m", "configs": []}"#).expect("write");
        let err = ModelTrial::from_validate_json(&path)
            .expect_err("no pack")
            .to_string();
        assert!(err.contains(CATALOG), "{err}");
    }

    #[test]
    fn the_discovered_set_keeps_one_entry_per_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/discovered.json");
        let entry = |target: &str, source: &str| PackEntry {
            target: target.into(),
            source: source.into(),
            ..Default::default()
        };
        admit(&path, &entry("qwen3_rmsnorm", "// v1")).expect("admit");
        admit(&path, &entry("glm_rmsnorm", "// g")).expect("admit");
        admit(&path, &entry("qwen3_rmsnorm", "// v2")).expect("admit");
        let set: Vec<PackEntry> =
            serde_json::from_str(&fs::read_to_string(&path).expect("read")).expect("json");
        let got: Vec<(&str, &str)> = set
            .iter()
            .map(|e| (e.target.as_str(), e.source.as_str()))
            .collect();
        assert_eq!(got, [("glm_rmsnorm", "// g"), ("qwen3_rmsnorm", "// v2")]);
        fs::write(&path, "junk").expect("write");
        let err = admit(&path, &entry("x", ""))
            .expect_err("junk set")
            .to_string();
        assert!(err.contains("discovered.json"), "{err}");
    }
}
