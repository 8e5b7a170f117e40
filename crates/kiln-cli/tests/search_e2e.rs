//! The search end to end with no GPU: the real driver, sessions, offline and
//! mock proposers, and compare/report/export, over a GPU-free evaluator double
//! that scores candidates from a hash of their source.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_eval::evaluator::{CandidateEvaluator, DeviceSummary, EvaluatorError};
use kiln_eval::record::{EvalOutcome, EvalRecord, ShapeId, ShapeResult, Stage, StageTimings};
use kiln_eval::targets::{self, Target};
use kiln_propose::backends::mock::MockProposer;
use kiln_propose::offline::OfflineProposer;
use kiln_search::driver::{run_search, Quiet};
use kiln_search::search::{source_hash, Widening};
use kiln_search::session::{load, SearchConfig};

/// GPU-free evaluator double: deterministic scores, counts every evaluation,
/// and can be told to break (as a dead GPU would) after some evaluations.
struct DoubleEvaluator {
    evaluated: BTreeMap<String, u32>,
    break_after: Option<usize>,
}

impl DoubleEvaluator {
    fn new() -> Self {
        Self {
            evaluated: BTreeMap::new(),
            break_after: None,
        }
    }

    fn outcome(source: &str) -> EvalOutcome {
        let h = source_hash(source);
        let x = u64::from_str_radix(&h[..8], 16).unwrap_or(0) as f64 / u32::MAX as f64;
        if x < 0.15 {
            return EvalOutcome::Scored(EvalRecord::failed(
                Stage::Verify,
                "double: wrong output at T=37",
            ));
        }
        let speedup = 0.5 + x;
        let per_shape = [1usize, 16, 4096]
            .iter()
            .map(|&t| ShapeResult {
                shape: ShapeId {
                    name: format!("T={t}"),
                    vars: [("T".to_string(), t as i64)].into_iter().collect(),
                },
                median_us: Some(10.0 / speedup),
                p10_us: Some(9.5 / speedup),
                p90_us: Some(10.5 / speedup),
                baseline_median_us: Some(10.0),
                speedup: Some(speedup),
                gbps: Some(1000.0 * speedup),
                sol_fraction: Some(0.3 * speedup),
            })
            .collect();
        EvalOutcome::Scored(EvalRecord::passed(
            per_shape,
            speedup,
            None,
            String::new(),
            StageTimings::default(),
        ))
    }
}

impl CandidateEvaluator for DoubleEvaluator {
    fn device(&mut self) -> Result<DeviceSummary, EvaluatorError> {
        Ok(DeviceSummary {
            gpu_name: "GPU-free double".into(),
            gpu_arch: "sm_90".into(),
            driver_version: "13.0".into(),
            nvrtc_version: "13.0".into(),
            sm_count: 132,
            l2_mib: 50,
            peak_bytes_per_s: 3e12,
            launch_floor_us: 0.8,
        })
    }

    fn evaluate_each(
        &mut self,
        _target: &Target,
        sources: &[String],
        done: &mut dyn FnMut(usize, EvalOutcome),
    ) {
        for (i, s) in sources.iter().enumerate() {
            let total: u32 = self.evaluated.values().sum();
            if self.break_after.is_some_and(|n| total as usize >= n) {
                done(
                    i,
                    EvalOutcome::MachineryFailure {
                        reason: "double: GPU gone".into(),
                    },
                );
                continue;
            }
            *self.evaluated.entry(s.clone()).or_default() += 1;
            done(i, Self::outcome(s));
        }
    }
}

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
