//! `kiln discover slurm` on a real Slurm: a 4-task array of `autorun
//! --shard I/4` with the replay evaluator, submitted with `sbatch --wait`,
//! must write the same sessions, and the same `compare` table, as one
//! process. It needs a running cluster, so it is ignored in `cargo test`;
//! `scripts/slurm-test.sh` (part of the test command) installs and starts a
//! one-node Slurm, runs it, and stops the daemons again.

use std::path::Path;
use std::process::Command;

mod common;
mod replay;
use replay::autorun_flags;

/// Five sessions over four tasks: one task runs two.
const TARGETS: [&str; 5] = [
    "qwen3_rmsnorm",
    "glm_rmsnorm",
    "qwen3_topk_gating",
    "glm_topk_gating",
    "moe_combine",
];
const TASKS: usize = 4;

fn kiln(args: &[String], cwd: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run kiln");
    assert!(
        out.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs a running Slurm cluster: scripts/slurm-test.sh starts one and runs this"]
fn a_slurm_array_of_shards_equals_one_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let rec = root.join("recorded");
    replay::record(&rec, &TARGETS);

    let single = root.join("single");
    let mut args: Vec<String> = vec!["discover".into(), "autorun".into()];
    args.extend(autorun_flags(&rec, &TARGETS, &single));
    kiln(&args, root);

    let shared = root.join("shared");
    let script = root.join("kiln-autorun.sbatch");
    let mut args: Vec<String> = vec![
        "discover".into(),
        "slurm".into(),
        "--tasks".into(),
        TASKS.to_string(),
        "--time".into(),
        "00:10:00".into(),
        "--out".into(),
        script.display().to_string(),
        "--".into(),
    ];
    args.extend(autorun_flags(&rec, &TARGETS, &shared));
    kiln(&args, root);

    // `--wait`: sbatch returns when every task has ended, non-zero if any failed.
    let sbatch = Command::new("sbatch")
        .arg("--wait")
        .arg(&script)
        .current_dir(root)
        .output()
        .expect("sbatch is on PATH (scripts/slurm-test.sh installs it)");
    let logs: Vec<(String, String)> = std::fs::read_dir(root)
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "out"))
        .map(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read_to_string(&p).unwrap_or_default())
        })
        .collect();
    assert!(
        sbatch.status.success(),
        "sbatch: {}{}\n{logs:#?}",
        String::from_utf8_lossy(&sbatch.stdout),
        String::from_utf8_lossy(&sbatch.stderr)
    );
    // Every array task ran, each its own shard.
    assert_eq!(logs.len(), TASKS, "one log per array task: {logs:#?}");
    for i in 0..TASKS {
        let shard = format!("shard {i}/{TASKS}:");
        assert!(
            logs.iter().any(|(_, text)| text.contains(&shard)),
            "no task ran {shard}\n{logs:#?}"
        );
    }

    assert_eq!(
        replay::contents(&shared, &TARGETS),
        replay::contents(&single, &TARGETS),
        "the array's sessions"
    );
    assert_eq!(
        replay::contents(&shared, &TARGETS),
        replay::contents(&rec, &TARGETS),
        "the recorded sessions"
    );
    let compare = |d: &Path| {
        kiln(
            &["discover".into(), "compare".into(), d.display().to_string()],
            root,
        )
    };
    let table = compare(&single);
    assert!(table.contains("moe_combine"), "{table}");
    assert_eq!(compare(&shared), table, "compare over the four shards");
}
