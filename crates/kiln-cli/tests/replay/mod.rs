//! Shared by the replay and Slurm end-to-end tests: sessions recorded once
//! through the real search driver over the evaluator double, laid out as
//! autorun lays them out, and the autorun flags that replay them.

use std::path::Path;

use kiln_eval::targets;
use kiln_propose::offline::OfflineProposer;
use kiln_search::driver::{run_search, Quiet};
use kiln_search::search::{NodeStatus, Widening};
use kiln_search::session::{load, SearchConfig};

use crate::common::DoubleEvaluator;

/// Search steps of every recorded session.
pub const STEPS: u32 = 2;
/// Candidates per step.
pub const PER_STEP: u32 = 4;
/// The proposer's and the search's seed.
pub const SEED: u64 = 5;

/// The configuration autorun builds from [`autorun_flags`] (`--steps 2
/// --candidates-per-step 4` and the defaults), so the replay asks for the
/// same candidates.
fn autorun_config() -> SearchConfig {
    SearchConfig {
        steps: STEPS,
        candidates_per_step: PER_STEP,
        parents_per_step: 1,
        c_puct: 1.0,
        widening: Widening::DEFAULT,
        warmup: 3,
        iters: 100,
        timeout_s: 60,
    }
}

/// Records each target's offline session under `dir` as autorun lays them out.
pub fn record(dir: &Path, targets: &[&str]) {
    let mut ev = DoubleEvaluator::new();
    for t in targets {
        let target = targets::find(t).expect("target");
        let path = dir.join(format!("{t}_offline")).join("session.json");
        run_search(
            &target,
            &OfflineProposer::new(SEED),
            &mut ev,
            &path,
            autorun_config(),
            SEED,
            false,
            &mut Quiet,
        )
        .expect("record");
    }
}

/// `(source, status, reward)` of every node of each target's session.
pub fn contents(dir: &Path, targets: &[&str]) -> Vec<Vec<(String, String, Option<f64>)>> {
    targets
        .iter()
        .map(|t| {
            let s = load(dir.join(format!("{t}_offline")).join("session.json")).expect("session");
            assert!(s.finished, "{t}: unfinished");
            s.tree
                .nodes()
                .iter()
                .map(|n| {
                    let status = match &n.status {
                        NodeStatus::Failed { stage, .. } => format!("failed at {stage}"),
                        other => format!("{other:?}"),
                    };
                    (n.source.clone(), status, n.reward)
                })
                .collect()
        })
        .collect()
}

/// The flags after `kiln discover autorun` that replay `recorded` for
/// `targets` into `out`.
pub fn autorun_flags(recorded: &Path, targets: &[&str], out: &Path) -> Vec<String> {
    vec![
        "--evaluator".into(),
        format!("replay:{}", recorded.display()),
        "--targets".into(),
        targets.join(","),
        "--steps".into(),
        STEPS.to_string(),
        "--candidates-per-step".into(),
        PER_STEP.to_string(),
        "--seed".into(),
        SEED.to_string(),
        "--session-dir".into(),
        out.display().to_string(),
    ]
}
