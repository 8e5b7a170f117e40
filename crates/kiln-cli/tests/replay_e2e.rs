//! `kiln discover autorun --evaluator replay:DIR` and `--shard I/N`, end to
//! end with no GPU: sessions are recorded once through the real driver over an
//! evaluator double, then the CLI replays them whole, and in two shards into
//! one folder, over two workers, and as the Slurm array script
//! `kiln discover slurm` writes (its tasks run by hand, as Slurm would), and
//! must produce the same sessions.

use std::path::Path;
use std::process::Command;

mod common;
mod replay;
use replay::{autorun_flags, PER_STEP, SEED, STEPS};

const TARGETS: [&str; 3] = ["qwen3_rmsnorm", "glm_rmsnorm", "qwen3_topk_gating"];

fn record(dir: &Path) {
    replay::record(dir, &TARGETS)
}

fn contents(dir: &Path) -> Vec<Vec<(String, String, Option<f64>)>> {
    replay::contents(dir, &TARGETS)
}

fn kiln(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn autorun(replay: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = vec!["discover".into(), "autorun".into()];
    args.extend(autorun_flags(replay, &TARGETS, out));
    args.extend(extra.iter().map(|s| s.to_string()));
    kiln(&args)
}

/// `kiln discover compare DIRS…`'s table.
fn compare(dirs: &[&Path]) -> String {
    let mut args: Vec<String> = vec!["discover".into(), "compare".into()];
    args.extend(dirs.iter().map(|d| d.display().to_string()));
    let out = kiln(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_replayed_autorun_and_its_shards_reproduce_the_recorded_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = dir.path().join("recorded");
    record(&rec);
    let want = contents(&rec);
    assert!(want.iter().all(|s| s.len() > 4), "the recording searched");

    let whole = dir.path().join("whole");
    let out = autorun(&rec, &whole, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(contents(&whole), want, "one process");

    let sharded = dir.path().join("sharded");
    for shard in ["0/2", "1/2"] {
        let out = autorun(&rec, &sharded, &["--shard", shard]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("shard {shard}:")), "{text}");
    }
    assert_eq!(contents(&sharded), want, "two shards in one folder");

    // Shards in folders of their own, merged by compare, read as one run.
    let (a, b) = (dir.path().join("shard-a"), dir.path().join("shard-b"));
    for (shard, out_dir) in [("0/2", &a), ("1/2", &b)] {
        let out = autorun(&rec, out_dir, &["--shard", shard]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let whole_table = compare(&[&whole]);
    assert!(whole_table.contains("qwen3_topk_gating"), "{whole_table}");
    assert_ne!(
        compare(&[&a]),
        whole_table,
        "one shard alone is not the run"
    );
    assert_eq!(compare(&[&a, &b]), whole_table, "two shard folders merged");
    assert_eq!(
        compare(&[&a, &b, &a]),
        whole_table,
        "a folder given twice counts once"
    );

    // Two workers (one per "device"; the replay stands in for each GPU) share
    // the sessions; each session runs whole on one of them.
    let parallel = dir.path().join("parallel");
    let out = autorun(&rec, &parallel, &["--devices", "0,1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(contents(&parallel), want, "two workers");
    let rows: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(parallel.join("autorun_summary.json")).expect("summary"),
    )
    .expect("json");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["target"].as_str()).collect();
    assert_eq!(names, TARGETS, "rows in the list's order");
    assert!(rows.iter().all(|r| r["device"] == 0 || r["device"] == 1));
    for f in [
        "autorun_summary_shard0of2.json",
        "autorun_summary_shard1of2.json",
    ] {
        assert!(sharded.join(f).is_file(), "{f}");
    }
}

/// The `status` of every row of `dir`'s autorun summary.
fn statuses(dir: &Path) -> Vec<String> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(dir.join("autorun_summary.json")).expect("summary"),
    )
    .expect("json");
    rows.iter()
        .map(|r| r["status"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn finished_sessions_are_rerun_only_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = dir.path().join("recorded");
    record(&rec);
    let want = contents(&rec);
    let out_dir = dir.path().join("out");
    let ok = |extra: &[&str]| {
        let out = autorun(&rec, &out_dir, extra);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&[]);
    assert!(statuses(&out_dir).iter().all(|s| s == "ok"));
    // A resumed run (`--force`, as for a session from another GPU) skips
    // what is finished: a cut-off autorun picks up where it stopped.
    ok(&["--force"]);
    assert!(
        statuses(&out_dir).iter().all(|s| s == "skipped (finished)"),
        "{:?}",
        statuses(&out_dir)
    );
    assert_eq!(contents(&out_dir), want);
    ok(&["--rerun-finished"]);
    assert!(statuses(&out_dir).iter().all(|s| s == "ok"));
    assert_eq!(contents(&out_dir), want, "a rerun searches the same way");
}

#[test]
fn what_was_never_recorded_is_a_clear_failure_not_a_score() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = dir.path().join("recorded");
    record(&rec);
    // Another seed proposes other candidates: the replay cannot judge them.
    let out_dir = dir.path().join("other-seed");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "discover",
            "autorun",
            "--evaluator",
            &format!("replay:{}", rec.display()),
            "--targets",
            "qwen3_rmsnorm",
            "--steps",
            "2",
            "--seed",
            "99",
            "--session-dir",
        ])
        .arg(&out_dir)
        .output()
        .expect("run kiln");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not recorded"), "{err}");

    // An empty folder, and a bad flag, say what to do.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let out = autorun(&empty, &dir.path().join("x"), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no session.json"));
    for bad in [["--shard", "2/2"], ["--shard", "1"]] {
        let out = autorun(&rec, &dir.path().join("y"), &bad);
        assert!(!out.status.success(), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("I/N"),
            "{bad:?}"
        );
    }
}

#[test]
fn the_slurm_array_script_runs_every_session_once_across_its_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = dir.path().join("recorded");
    record(&rec);
    let shared = dir.path().join("shared");
    let script = dir.path().join("job.sbatch");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "discover",
            "slurm",
            "--tasks",
            "2",
            "--partition",
            "gpu",
            "--out",
        ])
        .arg(&script)
        .arg("--")
        .args([
            "--evaluator",
            &format!("replay:{}", rec.display()),
            "--targets",
            &TARGETS.join(","),
            "--steps",
            &STEPS.to_string(),
            "--candidates-per-step",
            &PER_STEP.to_string(),
            "--seed",
            &SEED.to_string(),
            "--session-dir",
        ])
        .arg(&shared)
        .output()
        .expect("run kiln");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&script).expect("script");
    for line in [
        "#SBATCH --array=0-1",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --partition=gpu",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("bash");
    assert!(syntax.success(), "{text}");
    // Outside Slurm the script refuses to guess its task.
    let out = Command::new("bash").arg(&script).output().expect("bash");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sbatch"));
    for task in ["0", "1"] {
        let out = Command::new("bash")
            .arg(&script)
            .env("SLURM_ARRAY_TASK_ID", task)
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "task {task}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(contents(&shared), contents(&rec), "two array tasks");

    // Flags the script cannot honour are refused before anything is written.
    for bad in [
        vec!["--session-dir", "relative/dir"],
        vec!["--shard", "0/2", "--session-dir", "/abs"],
        vec!["--no-such-flag"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["discover", "slurm", "--tasks", "2", "--out"])
            .arg(dir.path().join("bad.sbatch"))
            .arg("--")
            .args(&bad)
            .output()
            .expect("run kiln");
        assert!(!out.status.success(), "{bad:?}");
        assert!(!dir.path().join("bad.sbatch").exists(), "{bad:?}");
    }
}
