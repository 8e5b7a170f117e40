//! The search end to end with no GPU: the real driver, sessions, offline and
//! mock proposers, and compare/report/export, over a GPU-free evaluator double
//! that scores candidates from a hash of their source.

use std::path::Path;

use kiln_eval::targets::{self, Target};
use kiln_propose::backends::mock::MockProposer;
use kiln_propose::offline::OfflineProposer;
use kiln_search::driver::{run_search, Quiet};
use kiln_search::search::Widening;
use kiln_search::session::{load, SearchConfig};

mod common;
use common::DoubleEvaluator;

fn config(steps: u32) -> SearchConfig {
    SearchConfig {
        steps,
        candidates_per_step: 4,
        parents_per_step: 2,
        c_puct: 1.0,
        widening: Widening::DEFAULT,
        warmup: 1,
        iters: 10,
        timeout_s: 10,
    }
}

fn target() -> Target {
    targets::find("qwen3_rmsnorm").expect("target")
}

fn search(path: &Path, steps: u32, ev: &mut DoubleEvaluator) -> Result<(), String> {
    let proposer = OfflineProposer::new(7);
    run_search(
        &target(),
        &proposer,
        ev,
        path,
        config(steps),
        7,
        false,
        &mut Quiet,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn sources(path: &Path) -> Vec<(String, Option<f64>)> {
    let s = load(path).expect("session loads");
    s.tree
        .nodes()
        .iter()
        .map(|n| (n.source.clone(), n.reward))
        .collect()
}

#[test]
fn offline_search_runs_and_saves_a_finished_session() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("qwen3_rmsnorm_offline/session.json");
    let mut ev = DoubleEvaluator::new();
    search(&path, 4, &mut ev).expect("search runs");
    let s = load(&path).expect("session");
    assert!(s.finished);
    assert_eq!(s.meta.counters.steps_done, 4);
    assert_eq!(s.meta.gpu_name, "GPU-free double");
    assert!(s.tree.len() > 8, "tree has {} nodes", s.tree.len());
    assert!(s.meta.best.is_some());
    assert!(
        ev.evaluated.values().all(|&n| n == 1),
        "a candidate was evaluated twice"
    );
    assert_eq!(
        s.meta.counters.candidates_evaluated,
        ev.evaluated.len() as u64
    );
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(!text.contains("NaN") && !text.contains("Infinity"));
}

#[test]
fn a_killed_search_resumes_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let straight = dir.path().join("a/session.json");
    let mut ev = DoubleEvaluator::new();
    search(&straight, 5, &mut ev).expect("straight run");

    // The "kill": the evaluator breaks after 9 evaluations; the driver stops
    // with an error and the session on disk stays valid.
    let killed = dir.path().join("b/session.json");
    let mut broken = DoubleEvaluator::new();
    broken.break_after = Some(9);
    let err = search(&killed, 5, &mut broken).expect_err("the broken evaluator stops the search");
    assert!(err.contains("evaluator failures"), "{err}");
    assert!(!load(&killed).expect("valid after the kill").finished);

    let mut resumed = DoubleEvaluator::new();
    search(&killed, 5, &mut resumed).expect("resume");
    assert_eq!(
        sources(&straight),
        sources(&killed),
        "resumed tree differs from the uninterrupted one"
    );
    for (src, n) in &resumed.evaluated {
        assert!(
            !broken.evaluated.contains_key(src),
            "candidate evaluated before the kill was evaluated again ({n}×)"
        );
    }
    let (a, b) = (load(&straight).expect("a"), load(&killed).expect("b"));
    assert_eq!(
        a.meta.counters.candidates_evaluated,
        b.meta.counters.candidates_evaluated
    );
    assert_eq!(a.meta.counters.steps_done, b.meta.counters.steps_done);
}

#[test]
fn resuming_with_more_steps_extends_the_search() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("s/session.json");
    let mut ev = DoubleEvaluator::new();
    search(&path, 2, &mut ev).expect("first");
    let first = load(&path).expect("s").tree.len();
    search(&path, 4, &mut ev).expect("extend");
    let s = load(&path).expect("s");
    assert_eq!(s.meta.counters.steps_done, 4);
    assert!(s.tree.len() > first);
    assert!(ev.evaluated.values().all(|&n| n == 1));
}

#[test]
fn corrupt_session_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("c/session.json");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, "{\"schema_version\": 1, \"meta\": {").expect("write");
    let err = search(&path, 2, &mut DoubleEvaluator::new()).expect_err("corrupt file refused");
    assert!(
        err.contains("corrupt") || err.contains("truncated"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "{\"schema_version\": 1, \"meta\": {"
    );
}

#[test]
fn mock_proposer_search_then_compare_report_export() {
    let dir = tempfile::tempdir().expect("tmp");
    let seed = target().seed_source().expect("seed").to_string();
    // Canned answers: variants of the seed with a different block size.
    let answers: Vec<String> = (0..12)
        .map(|i| {
            let variant = seed.replacen("// kiln:", &format!("// variant {i}\n// kiln:"), 1);
            format!(
                "### Variant 1\nReasoning: variant {i}\n```cuda\n{}\n```\n",
                variant.replace("variant", &format!("v{i}"))
            )
        })
        .collect();
    let mock = MockProposer::new(answers);
    let path = dir.path().join("qwen3_rmsnorm_mock/session.json");
    let mut ev = DoubleEvaluator::new();
    run_search(
        &target(),
        &mock,
        &mut ev,
        &path,
        config(3),
        1,
        false,
        &mut Quiet,
    )
    .expect("mock search");
    let s = load(&path).expect("session");
    assert_eq!(s.meta.backend, "mock");

    let offline = dir.path().join("qwen3_rmsnorm_offline/session.json");
    search(&offline, 3, &mut ev).expect("offline search");

    let cmp = kiln_search::report::compare_dir(dir.path()).expect("compare");
    assert_eq!(cmp.rows.len(), 2);
    let table = cmp.to_table();
    assert!(table.contains("qwen3_rmsnorm"), "{table}");
    let out = dir.path().join("report");
    let files = kiln_search::report::render_report(&s, 3, &out).expect("report");
    assert!(files.report.exists() && files.tree_svg.exists() && files.progress_svg.exists());
    let pack = kiln_search::report::export_winner_from(&offline, &dir.path().join("winner.json"))
        .expect("export");
    let cu = std::fs::read_to_string(pack.cu).expect("cu");
    assert!(cu.contains("// kiln:") && cu.contains("rmsnorm"));
}
