//! Session tests, including exact resume of a search killed mid-way.
//!
//! The search loop here is a miniature of the real driver, run against a
//! GPU-free double of the proposer and of the evaluator.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::*;
use crate::search::{select_batch_with, NewNode, NodeId, Tree, TreeError};

const GPU: &str = "NVIDIA H100 80GB HBM3";

fn seed_kernel() -> NewNode {
    NewNode {
        source: "// kiln: block=256 grid=ceil_div(T*D, 256) smem=0\n\
                 extern \"C\" __global__ void swiglu(float* y, const float* x, int T) { /* naive */ }"
            .into(),
        launch_line: "// kiln: block=256 grid=ceil_div(T*D, 256) smem=0".into(),
        reasoning: "naive seed".into(),
        proposer: "seed".into(),
    }
}

fn fresh_session(seed: u64) -> Session {
    let config = SearchConfig {
        steps: 7,
        candidates_per_step: 5,
        parents_per_step: 3,
        ..SearchConfig::default()
    };
    let mut meta = SessionMeta::new("swiglu_bf16", "mock", seed, config);
    meta.model = "mock".into();
    meta.gpu_name = GPU.into();
    meta.gpu_arch = "sm_90".into();
    // Fixed times: two sessions built a second apart must still compare equal.
    meta.created_at = "2026-01-01T00:00:00Z".into();
    meta.updated_at = meta.created_at.clone();
    Session::new(meta, Tree::new(seed_kernel(), seed))
}

/// GPU-free double of the evaluator: rewards from a hash of the source,
/// some candidates fail; it remembers every source to catch double evaluation.
#[derive(Default)]
struct FakeEvaluator {
    calls: usize,
    seen: HashSet<String>,
}

impl FakeEvaluator {
    fn evaluate(&mut self, source: &str) -> Result<f64, (&'static str, String)> {
        self.calls += 1;
        assert!(
            self.seen.insert(source.to_string()),
            "a candidate was evaluated twice"
        );
        let h = Sha256::digest(source.as_bytes());
        let x = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
        match x % 6 {
            0 => Err(("compile", format!("fake compile error {}", x % 97))),
            1 => Err(("verify", "fake mismatch at T=37".into())),
            _ => Ok((x % 1000) as f64 / 400.0),
        }
    }
}

/// GPU-free double of the proposer: distinct sources from (parent, step, k)
/// and a salt from the tree's RNG; the last candidate of even steps depends
/// on the step only, so later steps repeat it and dedup has work to do.
fn fake_propose(
    tree: &mut Tree,
    parent: NodeId,
    step: u32,
    n: usize,
) -> Vec<(NewNode, Option<f64>)> {
    (0..n)
        .map(|k| {
            let salt = tree.rng().next_u32() % 1000;
            let block = 32u32 << (k % 4);
            let launch = format!("// kiln: block={block} grid=ceil_div(T, {block})");
            let body = if k + 1 == n && step.is_multiple_of(2) {
                format!("int v = {};", step / 4)
            } else {
                format!(
                    "int p = {}; int s = {step}; int k = {k}; int salt = {salt};",
                    parent.0
                )
            };
            let node = NewNode {
                source: format!(
                    "{launch}\nextern \"C\" __global__ void swiglu(float* y, int T) {{ {body} }}"
                ),
                launch_line: launch,
                reasoning: format!("fake rewrite {k} of {parent}"),
                proposer: "mock".into(),
            };
            // Weights for even parents, ranks for odd ones.
            let prior = parent.0.is_multiple_of(2).then_some((n - k) as f64);
            (node, prior)
        })
        .collect()
}

/// Runs (or resumes) the miniature driver; saves after every evaluation and
/// after planning each step. Returns `false` if "killed" right after save
/// number `kill_after_save` of this run.
fn run_search(
    path: &Path,
    seed: u64,
    eval: &mut FakeEvaluator,
    kill_after_save: Option<usize>,
) -> Result<bool, SessionError> {
    let (mut file, _) = SessionFile::open_or_create(path, fresh_session(seed), false)?;
    let mut saves = 0usize;
    let mut save = |file: &mut SessionFile| -> Result<bool, SessionError> {
        file.save()?;
        saves += 1;
        Ok(kill_after_save == Some(saves))
    };
    if file.session().finished {
        return Ok(true);
    }
    loop {
        // Outstanding evaluations first: a resumed session picks up here.
        for id in file.session().tree.pending() {
            let s = file.session_mut();
            let source = s.tree.node(id).expect("pending node").source.clone();
            match eval.evaluate(&source) {
                Ok(r) => {
                    s.tree
                        .record_result(id, r, json!({"speedup": r * 2.0}))
                        .expect("record");
                    s.meta.counters.count_evaluation(None);
                }
                Err((stage, reason)) => {
                    s.tree
                        .record_failure(id, stage, reason, json!(null))
                        .expect("record");
                    s.meta.counters.count_evaluation(Some(stage));
                }
            }
            s.refresh_best(|n| n.eval.as_ref().and_then(|e| e["speedup"].as_f64()));
            if save(&mut file)? {
                return Ok(false);
            }
        }
        let s = file.session_mut();
        let last_step = s
            .tree
            .nodes()
            .iter()
            .map(|n| n.created_step)
            .max()
            .unwrap_or(0);
        s.meta.counters.steps_done = s.meta.counters.steps_done.max(last_step);
        let step = s.meta.counters.steps_done + 1;
        let cfg = s.meta.config.clone();
        let parents = select_batch_with(
            &s.tree,
            cfg.parents_per_step as usize,
            cfg.c_puct,
            &cfg.widening,
        );
        if step > cfg.steps || parents.is_empty() {
            s.finished = true;
            save(&mut file)?;
            return Ok(true);
        }
        let mut added = 0;
        for (i, &p) in parents.iter().enumerate() {
            let cands = fake_propose(&mut s.tree, p, step, cfg.candidates_for(parents.len(), i));
            s.meta.counters.add_tokens(100, 40);
            for r in s.tree.add_children(p, cands, step) {
                match r {
                    Ok(_) => added += 1,
                    Err(TreeError::Duplicate { .. }) => s.meta.counters.duplicates_skipped += 1,
                    Err(e) => panic!("unexpected {e}"),
                }
            }
        }
        if added == 0 {
            s.meta.counters.steps_done = step;
        }
        // The plan is saved, so a kill before its evaluations loses nothing.
        if save(&mut file)? {
            return Ok(false);
        }
    }
}

fn uninterrupted(dir: &Path, seed: u64) -> (Session, usize) {
    let path = dir.join(format!("plain-{seed}.json"));
    let mut eval = FakeEvaluator::default();
    assert!(run_search(&path, seed, &mut eval, None).expect("run"));
    (load(&path).expect("load"), eval.calls)
}

fn assert_same_search(a: &Session, b: &Session) {
    assert_eq!(a.tree, b.tree);
    assert_eq!(
        serde_json::to_string(&a.tree).expect("a"),
        serde_json::to_string(&b.tree).expect("b")
    );
    assert_eq!(a.meta.counters, b.meta.counters);
    assert_eq!(a.meta.best, b.meta.best);
    assert_eq!(a.finished, b.finished);
}

#[test]
fn search_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, calls) = uninterrupted(dir.path(), 11);
    let sub = dir.path().join("again");
    fs::create_dir(&sub).expect("mkdir");
    let (b, calls_b) = uninterrupted(&sub, 11);
    assert_same_search(&a, &b);
    assert_eq!(calls, calls_b);
    // The double is rich enough to exercise the paths that matter.
    let c = &a.meta.counters;
    assert_eq!(c.steps_done, 7);
    assert!(a.finished);
    assert!(c.duplicates_skipped > 0, "{c:?}");
    assert!(!c.failures_by_stage.is_empty(), "{c:?}");
    assert_eq!(c.candidates_evaluated as usize, calls);
    assert_eq!(calls, a.tree.len());
    assert!(
        a.tree.nodes().iter().any(|n| n.depth >= 3),
        "the search deepens"
    );
    // Another seed searches differently.
    let (other, _) = uninterrupted(dir.path(), 12);
    assert_ne!(a.tree, other.tree);
}

#[test]
fn resume_after_a_kill_is_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (reference, ref_calls) = uninterrupted(dir.path(), 5);
    let total_saves = ref_calls + reference.meta.counters.steps_done as usize + 1;
    // Kill points spread over the run: the first saves, the plan saves, the last.
    let mut kills: Vec<usize> = (1..=total_saves).step_by(4).collect();
    kills.extend([2, 3, total_saves - 1]);
    for kill in kills {
        let path = dir.path().join(format!("killed-{kill}.json"));
        let mut eval = FakeEvaluator::default();
        let finished = run_search(&path, 5, &mut eval, Some(kill)).expect("first run");
        if !finished {
            let mid = load(&path).expect("a killed session still loads");
            assert!(!mid.finished);
            assert!(run_search(&path, 5, &mut eval, None).expect("resume"));
        }
        let resumed = load(&path).expect("load");
        assert_same_search(&reference, &resumed);
        assert_eq!(
            eval.calls, ref_calls,
            "kill after save {kill}: no candidate evaluated twice"
        );
    }
}

#[test]
fn repeated_kills_still_resume_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (reference, ref_calls) = uninterrupted(dir.path(), 77);
    let path = dir.path().join("many.json");
    let mut eval = FakeEvaluator::default();
    let mut runs = 0;
    while !run_search(&path, 77, &mut eval, Some(7)).expect("run") {
        runs += 1;
        assert!(runs < 1000, "the search must make progress");
    }
    assert!(runs > 3);
    assert_same_search(&reference, &load(&path).expect("load"));
    assert_eq!(eval.calls, ref_calls);
}

fn small_session() -> Session {
    let mut s = fresh_session(3);
    let t = &mut s.tree;
    t.record_result(
        NodeId::ROOT,
        1.0,
        json!({"speedup": 1.0, "median_us": 12.5}),
    )
    .expect("root");
    let a = t
        .add_child(NodeId::ROOT, seed_kernel_variant(1), 0.6, 1)
        .expect("a");
    let b = t
        .add_child(NodeId::ROOT, seed_kernel_variant(2), 0.4, 1)
        .expect("b");
    let _pending = t
        .add_child(a, seed_kernel_variant(3), 1.0, 2)
        .expect("pending");
    t.record_result(a, 1.7, json!({"speedup": 2.1})).expect("a");
    t.record_failure(
        b,
        "compile",
        "error: identifier \"x\" is undefined",
        json!(null),
    )
    .expect("b");
    s.meta.counters.count_evaluation(None);
    s.meta.counters.count_evaluation(None);
    s.meta.counters.count_evaluation(Some("compile"));
    s.refresh_best(|_| Some(f64::INFINITY));
    s
}

fn seed_kernel_variant(k: u32) -> NewNode {
    let mut n = seed_kernel();
    n.source = n.source.replace("/* naive */", &format!("int v = {k};"));
    n
}

#[test]
fn json_never_holds_nan_or_infinity() {
    let s = small_session();
    let text = serde_json::to_string_pretty(&s).expect("serialise");
    for bad in ["NaN", "Infinity", "inf"] {
        assert!(!text.contains(bad), "{bad} in {text}");
    }
    // The pending node's reward is null; the non-finite speedup became null.
    assert!(text.contains("\"reward\": null"), "{text}");
    assert!(text.contains("\"speedup\": null"), "{text}");
    assert!(text.contains("\"state\": \"failed\""));
    assert!(text.contains("\"state\": \"pending\""));
    assert!(text.contains("identifier \\\"x\\\" is undefined"));
    // And it is strict JSON a strict parser accepts.
    let v: serde_json::Value = serde_json::from_str(&text).expect("strict parse");
    assert_eq!(v["schema_version"], 1);
}

#[test]
fn a_non_finite_number_is_never_saved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    let mut s = small_session();
    s.meta.config.c_puct = f64::NAN;
    let err = save_atomic(&path, &s).expect_err("refused");
    assert!(matches!(err, SessionError::Unsavable { .. }), "{err}");
    assert!(!path.exists());
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    let s = small_session();
    save_atomic(&path, &s).expect("save");
    let back = load(&path).expect("load");
    assert_eq!(back, s);
    assert!(back.tree.contains_source(&seed_kernel_variant(3).source));
    // Saving again replaces it and leaves no temporary files behind.
    save_atomic(&path, &back).expect("save again");
    let names: Vec<String> = fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["s.json".to_string()]);
}

#[test]
fn missing_file_is_its_own_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load(dir.path().join("none.json")).expect_err("missing");
    assert!(matches!(err, SessionError::Missing { .. }), "{err}");
}

#[test]
fn corrupt_file_is_reported_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    let good = serde_json::to_string_pretty(&small_session()).expect("json");
    // Truncated mid-file, as by a crash of some other writer.
    let truncated = &good[..good.len() / 2];
    fs::write(&path, truncated).expect("write");

    let err = load(&path).expect_err("corrupt");
    let SessionError::Corrupt { line, column, .. } = &err else {
        panic!("expected Corrupt, got {err}");
    };
    assert!(*line > 1 && *column > 0);
    let msg = err.to_string();
    assert!(msg.contains("is corrupt at line"), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    assert!(
        msg.contains("left untouched") && msg.contains("--force"),
        "{msg}"
    );

    // Neither a resume nor a plain save touches it.
    let err = SessionFile::open_or_create(&path, fresh_session(1), false).expect_err("refused");
    assert!(matches!(err, SessionError::Corrupt { .. }), "{err}");
    let err = save_atomic(&path, &fresh_session(1)).expect_err("refused");
    assert!(matches!(err, SessionError::Corrupt { .. }), "{err}");
    assert_eq!(fs::read_to_string(&path).expect("read"), truncated);

    // Garbage is corrupt too.
    fs::write(&path, "{\"schema_version\": 1, \"meta\": nope}").expect("write");
    assert!(matches!(
        load(&path),
        Err(SessionError::Corrupt { line: 1, .. })
    ));
    fs::write(&path, truncated).expect("write");

    // Forcing moves it aside and starts fresh.
    let (file, opened) =
        SessionFile::open_or_create(&path, fresh_session(1), true).expect("forced");
    let Opened::Replaced { moved_to } = opened else {
        panic!("expected Replaced, got {opened:?}");
    };
    assert_eq!(fs::read_to_string(&moved_to).expect("kept"), truncated);
    assert_eq!(load(&path).expect("fresh"), *file.session());
}

#[test]
fn invalid_tree_links_are_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    let mut v = serde_json::to_value(small_session()).expect("value");
    v["tree"]["nodes"][2]["parent"] = json!(3);
    fs::write(&path, serde_json::to_string_pretty(&v).expect("json")).expect("write");
    let err = load(&path).expect_err("invalid");
    assert!(matches!(err, SessionError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("#2 as a child, but it is not"),
        "{err}"
    );
}

#[test]
fn schema_version_mismatch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    for (found, hint) in [(2u32, "upgrade kiln"), (0, "--force")] {
        let mut v = serde_json::to_value(small_session()).expect("value");
        v["schema_version"] = json!(found);
        // A newer schema may have fields this build does not know.
        v["meta"]["added_in_v2"] = json!({"x": 1});
        let text = serde_json::to_string(&v).expect("json");
        fs::write(&path, &text).expect("write");
        let err = load(&path).expect_err("version");
        assert!(
            matches!(err, SessionError::SchemaVersion { found: f, supported: 1, .. } if f == found),
            "{err}"
        );
        assert!(err.to_string().contains(hint), "{err}");
        let err = SessionFile::open_or_create(&path, fresh_session(1), false).expect_err("refused");
        assert!(matches!(err, SessionError::SchemaVersion { .. }));
        assert_eq!(fs::read_to_string(&path).expect("read"), text);
    }
}

#[test]
fn different_gpu_is_refused_unless_forced() {
    let meta = fresh_session(1).meta;
    assert!(check_resume_compatible(&meta, GPU, false).is_ok());
    assert!(check_resume_compatible(&meta, " nvidia h100 80gb hbm3 ", false).is_ok());
    let err = check_resume_compatible(&meta, "NVIDIA H200", false).expect_err("refused");
    assert!(matches!(err, SessionError::GpuMismatch { .. }));
    assert!(err.to_string().contains("--force"), "{err}");
    assert!(check_resume_compatible(&meta, "NVIDIA H200", true).is_ok());

    // Through open_or_create: refused, then resumed (not replaced) with force.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    save_atomic(&path, &small_session()).expect("save");
    let mut elsewhere = fresh_session(1);
    elsewhere.meta.gpu_name = "NVIDIA H200".into();
    let err = SessionFile::open_or_create(&path, elsewhere.clone(), false).expect_err("refused");
    assert!(matches!(err, SessionError::GpuMismatch { .. }), "{err}");
    let (file, opened) = SessionFile::open_or_create(&path, elsewhere, true).expect("forced");
    assert_eq!(opened, Opened::Resumed);
    assert_eq!(*file.session(), small_session());
}

#[test]
fn other_target_is_refused_unless_forced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    save_atomic(&path, &small_session()).expect("save");
    let mut other = fresh_session(1);
    other.meta.target = "topk_softmax".into();
    let err = SessionFile::open_or_create(&path, other.clone(), false).expect_err("refused");
    assert!(matches!(err, SessionError::OtherSession { .. }), "{err}");
    assert_eq!(load(&path).expect("intact"), small_session());
    let (file, opened) = SessionFile::open_or_create(&path, other, true).expect("forced");
    assert!(matches!(opened, Opened::Replaced { .. }));
    assert_eq!(file.session().meta.target, "topk_softmax");
}

#[test]
fn open_or_create_creates_then_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.json");
    let (mut file, opened) =
        SessionFile::open_or_create(&path, fresh_session(9), false).expect("create");
    assert_eq!(opened, Opened::Created);
    file.session_mut().meta.counters.steps_done = 4;
    file.save().expect("save");
    let (again, opened) =
        SessionFile::open_or_create(&path, fresh_session(9), false).expect("resume");
    assert_eq!(opened, Opened::Resumed);
    assert_eq!(again.session().meta.counters.steps_done, 4);
    // create_new is the explicit start-over: the old file is kept aside.
    let (fresh, moved) = SessionFile::create_new(&path, fresh_session(9)).expect("new");
    assert_eq!(fresh.session().meta.counters.steps_done, 0);
    let moved = moved.expect("moved aside");
    assert_eq!(load(&moved).expect("old").meta.counters.steps_done, 4);
}
