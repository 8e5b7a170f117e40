//! Report tests over sessions built in memory with the session and search API.

use std::fs;
use std::path::Path;

use serde_json::json;

use super::compare::{MARGINAL_THRESHOLD, USE_THRESHOLD};
use super::*;
use crate::search::{NewNode, NodeId, Tree};
use crate::session::{save_atomic, SearchConfig, Session, SessionMeta};
use kiln_eval::record::{self, EvalRecord, ShapeId, Stage, StageTimings};

const LAUNCH: &str = "// kiln: block=256 grid=ceil_div(T*KILN_D, 256*8) smem=0";

fn kernel(tag: &str, reasoning: &str) -> NewNode {
    NewNode {
        source: format!(
            "{LAUNCH}\n// variant {tag}\nextern \"C\" __global__ void swiglu(const float* x, float* y, int T) {{ int v = {tag}; }}\n"
        ),
        launch_line: LAUNCH.into(),
        reasoning: reasoning.into(),
        proposer: "mock".into(),
    }
}

fn shape(t: i64) -> ShapeId {
    ShapeId {
        name: format!("t{t}"),
        vars: [("T".to_string(), t), ("D".to_string(), 2048)]
            .into_iter()
            .collect(),
    }
}

/// A passed record: per-shape times whose speedups have geometric mean `speedup`.
fn passed(speedup: f64, vs_seed: f64) -> serde_json::Value {
    let result = |t: i64, base: f64, sol: f64| record::ShapeResult {
        shape: shape(t),
        median_us: Some(base / speedup),
        p10_us: Some(base / speedup * 0.98),
        p90_us: Some(base / speedup * 1.03),
        baseline_median_us: Some(base),
        speedup: Some(speedup.max(0.5)),
        gbps: Some(1500.0 * speedup),
        sol_fraction: Some(sol),
        resources: None,
    };
    let rec = EvalRecord::passed(
        vec![result(1, 4.0, 0.2), result(37, 10.0, 0.4)],
        speedup,
        Some(vs_seed),
        String::new(),
        StageTimings::default(),
    );
    serde_json::to_value(rec).expect("record")
}

fn failed(stage: Stage, reason: &str) -> serde_json::Value {
    serde_json::to_value(EvalRecord::failed(stage, reason)).expect("record")
}

/// Seed (1.0) → a: passed at `best`, b: compile failure, c: verify failure; a → d: passed at 0.9.
fn session(target: &str, backend: &str, best: f64) -> Session {
    let mut meta = SessionMeta::new(target, backend, 7, SearchConfig::default());
    meta.model = "mock-model".into();
    meta.gpu_name = "NVIDIA H100 80GB HBM3".into();
    meta.gpu_arch = "sm_90".into();
    meta.driver_version = "580.65".into();
    meta.nvrtc_version = "13.0".into();
    let mut tree = Tree::new(kernel("0", "naive seed"), 7);
    tree.record_result(NodeId::ROOT, 1.0, passed(1.0, 1.0))
        .expect("seed");
    let a = tree
        .add_child(
            NodeId::ROOT,
            kernel("1", "16-byte loads | vectorised"),
            0.5,
            1,
        )
        .expect("a");
    let b = tree
        .add_child(NodeId::ROOT, kernel("2", "broken"), 0.3, 1)
        .expect("b");
    let c = tree
        .add_child(NodeId::ROOT, kernel("3", "wrong"), 0.2, 1)
        .expect("c");
    tree.record_result(a, best, passed(best, 2.5)).expect("a");
    let why = "error: expected ';' at line 3";
    tree.record_failure(b, "compile", why, failed(Stage::Compile, why))
        .expect("b");
    let why = "max rel error 0.5 at T=37";
    tree.record_failure(c, "verify", why, failed(Stage::Verify, why))
        .expect("c");
    let d = tree
        .add_child(a, kernel("4", "unrolled"), 1.0, 2)
        .expect("d");
    tree.record_result(d, 0.9, passed(0.9, 2.0)).expect("d");
    let mut s = Session::new(meta, tree);
    for stage in [None, None, Some("compile"), Some("verify"), None] {
        s.meta.counters.count_evaluation(stage);
    }
    s.meta.counters.steps_done = 2;
    s.refresh_best(|_| Some(2.5));
    s
}

fn no_nan(text: &str) {
    for bad in ["NaN", "Infinity", "inf"] {
        assert!(!text.contains(bad), "{bad} in {text}");
    }
}

#[test]
fn verdict_boundaries_are_exclusive() {
    assert_eq!(
        Verdict::from_speedup(Some(USE_THRESHOLD)),
        Verdict::Marginal
    );
    assert_eq!(Verdict::from_speedup(Some(1.0500001)), Verdict::Use);
    assert_eq!(
        Verdict::from_speedup(Some(MARGINAL_THRESHOLD)),
        Verdict::Keep
    );
    assert_eq!(Verdict::from_speedup(Some(1.0000001)), Verdict::Marginal);
    assert_eq!(Verdict::from_speedup(Some(0.8)), Verdict::Keep);
    assert_eq!(Verdict::from_speedup(None), Verdict::Keep);
    assert_eq!(Verdict::from_speedup(Some(f64::NAN)), Verdict::Keep);
}

#[test]
fn compare_folder_with_corrupt_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for (t, b, best) in [
        ("swiglu_bf16", "offline", 1.05),
        ("rmsnorm_bf16", "mock", 1.3),
    ] {
        let sub = root.join(format!("{t}_{b}"));
        fs::create_dir_all(&sub).expect("mkdir");
        save_atomic(sub.join("session.json"), &session(t, b, best)).expect("save");
    }
    // A session at exactly 1.0 directly in the folder.
    save_atomic(root.join("rope_mock.json"), &session("rope", "mock", 1.0)).expect("save");
    let corrupt = root.join("softmax_topk_anthropic");
    fs::create_dir_all(&corrupt).expect("mkdir");
    fs::write(
        corrupt.join("session.json"),
        "{\"schema_version\": 1, \"meta\": {",
    )
    .expect("write");
    // Valid JSON that is not a session is skipped, not reported.
    fs::write(root.join("benchmark_results.json"), "[]").expect("write");

    let cmp = compare_dir(root).expect("compare");
    let rows: Vec<(&str, &str, Verdict)> = cmp
        .rows
        .iter()
        .map(|r| (r.target.as_str(), r.backend.as_str(), r.verdict))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("rmsnorm_bf16", "mock", Verdict::Use),
            ("rope", "mock", Verdict::Keep),
            ("softmax_topk", "anthropic", Verdict::Keep),
            ("swiglu_bf16", "offline", Verdict::Marginal),
        ]
    );
    let rms = &cmp.rows[0];
    assert!((rms.speedup_vs_catalog.expect("speedup") - 1.3).abs() < 1e-9);
    assert_eq!(rms.speedup_vs_seed, Some(2.5));
    assert!((rms.sol_fraction.expect("sol") - 0.3).abs() < 1e-9);
    assert_eq!(rms.candidates_evaluated, 5);
    assert_eq!(rms.failures_by_stage.get("compile"), Some(&1));
    assert_eq!(rms.best_node, Some(NodeId(1)));
    let bad = &cmp.rows[2];
    let err = bad.error.as_deref().expect("error row");
    assert!(err.contains("softmax_topk_anthropic"), "{err}");

    let table = cmp.to_table();
    assert!(table.starts_with("| target"), "{table}");
    assert!(table.contains("1.30×") && table.contains("USE") && table.contains("MARGINAL"));
    assert!(table.contains("compile 1, verify 1"), "{table}");
    let widths: Vec<usize> = table
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| l.chars().count())
        .collect();
    assert_eq!(widths.len(), 6, "{table}");
    assert!(widths.iter().all(|w| *w == widths[0]), "aligned: {table}");
    assert!(table.contains("unreadable, see [1]"), "{table}");
    assert!(table.contains("\n[1] session file "), "{table}");
    assert!(cmp.to_markdown().contains("boundaries exclusive"));

    let text = cmp.to_json().expect("json");
    no_nan(&text);
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid json");
    assert_eq!(v["rows"][0]["verdict"], "USE");
    assert!(v["rows"][2]["speedup_vs_catalog"].is_null());
}

#[test]
fn compare_missing_folder_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let err = compare_dir(&missing).expect_err("missing");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn non_finite_record_values_become_null() {
    let mut s = session("swiglu_bf16", "mock", 1.2);
    let id = s
        .tree
        .add_child(NodeId::ROOT, kernel("9", "odd"), 0.1, 3)
        .expect("add");
    // serde_json cannot hold NaN, but a record may hold absurd values or a wrong layout.
    s.tree
        .record_result(id, 0.5, json!({"per_shape": "not a list"}))
        .expect("rec");
    let k = KernelSummary::of(&s, id).expect("summary");
    assert!(k.shapes.is_empty());
    assert_eq!(k.speedup_vs_catalog, Some(0.5));
    let text = serde_json::to_string(&k).expect("json");
    no_nan(&text);
}

#[test]
fn markdown_report_and_plots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report");
    let s = session("swiglu_bf16", "mock", 1.3);
    let files = render_report(&s, 2, &out).expect("report");
    let md = fs::read_to_string(&files.report).expect("read");
    assert!(md.contains("# kiln discover: swiglu_bf16 (mock)"));
    assert!(md.contains("NVIDIA H100 80GB HBM3 (sm_90)") && md.contains("580.65"));
    assert!(md.contains("## Top 2 kernels"));
    assert!(md.contains("### 1. node #1") && md.contains("### 2. node #0"));
    assert!(!md.contains("### 3."), "only the top 2");
    assert!(md.contains("| t37 (D=2048, T=37)"), "per-shape table: {md}");
    assert!(md.contains("> 16-byte loads | vectorised"));
    assert!(md.contains("```cuda\n// kiln: block=256"));
    assert!(md.contains("int v = 1;"));
    assert!(md.contains("## Failures by stage"));
    assert!(md.contains("| compile") && md.contains("error: expected ';' at line 3"));
    assert!(md.contains("max rel error 0.5 at T=37"));
    assert!(md.contains("(progress.svg)") && md.contains("(tree.svg)"));
    assert!(md.contains("**USE**"));
    no_nan(&md);
    for svg in [&files.progress_svg, &files.tree_svg] {
        let text = fs::read_to_string(svg).expect("svg");
        assert!(text.trim_start().starts_with("<svg"), "{text}");
        assert!(text.trim_end().ends_with("</svg>"), "{text}");
        assert!(text.contains("<text"), "text drawn without fonts");
        no_nan(&text);
    }
}

#[test]
fn progress_is_a_running_best_over_recorded_nodes() {
    let mut s = session("swiglu_bf16", "mock", 1.3);
    // A pending node is not on the plot.
    s.tree
        .add_child(NodeId(1), kernel("7", "pending"), 1.0, 3)
        .expect("pending");
    let p = plots::progress_points(&s.tree);
    let best: Vec<f64> = p.iter().map(|x| x.best_so_far).collect();
    assert_eq!(best, vec![1.0, 1.3, 1.3, 1.3, 1.3]);
    assert_eq!(p.iter().filter(|x| x.failed).count(), 2);
    assert_eq!(p.last().map(|x| x.evaluated), Some(5));
}

#[test]
fn plots_handle_a_fresh_and_a_large_tree() {
    let meta = SessionMeta::new("rope", "offline", 1, SearchConfig::default());
    let fresh = Session::new(meta.clone(), Tree::new(kernel("0", "seed"), 1));
    for svg in [progress_svg(&fresh), tree_svg(&fresh)] {
        let svg = svg.expect("svg");
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"));
    }
    // ~200 nodes: a bushy tree with failures.
    let mut tree = Tree::new(kernel("0", "seed"), 1);
    tree.record_result(NodeId::ROOT, 1.0, json!(null))
        .expect("root");
    let mut open = vec![NodeId::ROOT];
    let mut k = 1u32;
    while k < 200 {
        let parent = open[(k as usize * 7) % open.len()];
        let id = tree
            .add_child(parent, kernel(&k.to_string(), "x"), 1.0, k / 4)
            .expect("add");
        if k.is_multiple_of(5) {
            tree.record_failure(id, "verify", "mismatch", json!(null))
                .expect("fail");
        } else {
            tree.record_result(id, 0.5 + f64::from(k % 17) / 10.0, json!(null))
                .expect("rec");
            open.push(id);
        }
        k += 1;
    }
    let big = Session::new(meta, tree);
    let svg = tree_svg(&big).expect("tree");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.matches("<circle").count() >= 200);
    progress_svg(&big).expect("progress");
}

#[test]
fn export_writes_json_and_cu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = kiln_eval::targets::find("qwen3_rmsnorm").expect("registry target");
    let s = session(&target.name, "mock", 1.3);
    let path = dir.path().join("s.json");
    save_atomic(&path, &s).expect("save");
    let out = dir.path().join("pack").join("qwen3_rmsnorm.json");
    let pack = export_winner_from(&path, &out).expect("export");
    assert_eq!(pack.cu, dir.path().join("pack").join("qwen3_rmsnorm.cu"));
    let v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&pack.json).expect("read")).expect("json");
    let entry = target.signature().expect("signature").entry;
    assert_eq!(v["target"], "qwen3_rmsnorm");
    assert_eq!(v["entry_point"], entry.as_str());
    assert_eq!(v["node"], 1);
    assert_eq!(v["launch_line"], LAUNCH);
    assert_eq!(v["dtype"], "bf16");
    assert_eq!(v["static_dims"]["D"], 2048);
    assert_eq!(v["gpu_arch"], "sm_90");
    assert_eq!(v["shapes"][1]["name"], "t37 (D=2048, T=37)");
    assert!((v["speedup_vs_catalog"].as_f64().expect("speedup") - 1.3).abs() < 1e-9);
    assert_eq!(v["session_path"], path.display().to_string());
    let build_defines = target.defines().expect("defines");
    let flags = kiln_kernels::pack::define_entries(&build_defines);
    assert_eq!(v["defines"], json!(flags));
    // The models match a pack entry to a catalog build with the same grammar.
    assert!(kiln_kernels::pack::same_defines(
        pack.entry.defines.as_deref().expect("defines"),
        &build_defines
    ));
    // The file reads back as the entry that was written (the format models read).
    let read = kiln_kernels::pack::parse_pack(&fs::read_to_string(&pack.json).expect("read"))
        .expect("a pack");
    assert_eq!(read, vec![pack.entry.clone()]);
    let cu = fs::read_to_string(&pack.cu).expect("cu");
    assert!(cu.contains(&s.tree.nodes()[1].source), "verbatim source");
    assert!(cu.contains(LAUNCH));
    assert!(cu.contains(&flags.join(" ")), "{cu}");
    assert!(cu.contains("KILN_DTYPE=__nv_bfloat16"), "{cu}");
    assert!(cu.contains(&format!("void {entry}(")), "{cu}");
    assert!(cu.contains("NVIDIA H100 80GB HBM3 (sm_90), driver 580.65, NVRTC 13.0"));
    assert!(cu.contains("// target:   qwen3_rmsnorm"));
    no_nan(&cu);
}

#[test]
fn export_of_unknown_target_uses_source_and_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = session("not_in_registry", "mock", 1.3);
    let pack = export_winner(&s, &dir.path().join("w.json")).expect("export");
    assert_eq!(pack.entry.entry_point.as_deref(), Some("swiglu"));
    assert_eq!(pack.entry.dtype, None);
    assert_eq!(pack.entry.session_path, None);
    assert_eq!(
        pack.entry.static_dims,
        Some([("D".to_string(), 2048)].into_iter().collect())
    );
    assert_eq!(pack.entry.defines, Some(vec!["KILN_D=2048".to_string()]));
    let v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&pack.json).expect("read")).expect("json");
    assert!(v["dtype"].is_null());
    // A winner whose record is missing still exports, with no dims.
    let mut s = s;
    let id = s
        .tree
        .add_child(NodeId(1), kernel("8", "best, no record"), 1.0, 3)
        .expect("add");
    s.tree.record_result(id, 4.0, json!(null)).expect("rec");
    let pack = export_winner(&s, &dir.path().join("w2.json")).expect("export");
    assert_eq!(pack.entry.node, Some(id.0));
    assert_eq!(pack.entry.static_dims, None);
    assert_eq!(pack.entry.defines, None);
    let v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&pack.json).expect("read")).expect("json");
    assert!(v["static_dims"].is_null() && v["defines"].is_null());
}

#[test]
fn export_with_no_passing_kernel_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = SessionMeta::new("rope", "offline", 1, SearchConfig::default());
    let mut tree = Tree::new(kernel("0", "seed"), 1);
    tree.record_failure(NodeId::ROOT, "compile", "nope", json!(null))
        .expect("fail");
    let s = Session::new(meta, tree);
    let path = dir.path().join("rope_offline.json");
    save_atomic(&path, &s).expect("save");
    let out = dir.path().join("w.json");
    let err = export_winner_from(&path, &out).expect_err("no winner");
    let msg = err.to_string();
    assert!(msg.contains("no candidate passed verification in"), "{msg}");
    assert!(
        msg.contains("rope_offline.json") && msg.contains("nothing to export"),
        "{msg}"
    );
    assert!(!out.exists() && !Path::new(&out.with_extension("cu")).exists());
    let err = export_winner(&s, &out).expect_err("no winner");
    assert!(err.to_string().contains("session rope/offline"), "{err}");
}
