//! A kernel must do its own launch's work, not a later launch's.
//!
//! The launches of a timing graph write separate output groups, each
//! poisoned before the replay. A kernel that finds the buffers of the
//! launches after it (by scanning device memory, or from a map it learned on
//! earlier replays and left in memory no check reads) could compute their
//! answers in one wide launch, write them where those launches will write,
//! and have them find an answer and exit at once: 20 launches' latency for
//! the price of one, and every replay's outputs right.
//!
//! So after timing, the first `m` launches of the graph are replayed alone
//! (`m` drawn from the secret seed, fewer than all) from poisoned outputs,
//! and every group no launch of that prefix writes must still hold its
//! poison. A launch cannot tell a prefix from a whole replay, so work done
//! ahead for any launch past the prefix shows.

use kiln_cuda::Digests;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::record::Stage;
use crate::targets::OpProblem;

use super::measure::{
    capture_first, launch_dims, launch_order, Device, Failure, Loaded, TimingSets,
};
use super::timed_outputs::{digest_all, digest_key};

/// Replays a secret prefix of `kernel`'s timing graph over `sets` and fails
/// if any output group past the prefix changed.
pub fn check_prefix_replay(
    dev: &Device,
    problem: &OpProblem,
    kernel: &Loaded,
    sets: &mut TimingSets,
    seed: u64,
) -> Result<(), Failure> {
    let n = sets.sets.len();
    let total = n * sets.rounds;
    if total < 2 {
        return Ok(());
    }
    let t = sets.sets.first().map_or(0, |s| s.t);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7072_6566_6978);
    let m = rng.gen_range(1..total);
    let dims = launch_dims(dev, problem, kernel, t)?;
    let graph = capture_first(dev, kernel, &dims, sets, m)
        .map_err(|e| Failure::cuda(Stage::Timing, "capturing a prefix of the launches", e))?;
    let slots = sets.sets.iter().map(|s| s.written_buffers()).sum();
    let mut digests = Digests::new(&dev.gpu, slots, digest_key(seed ^ 0x7072))
        .map_err(|e| Failure::machinery("digest slots", e))?;
    sets.reset_outputs(dev)?;
    let before = digest_all(dev, sets, &mut digests)
        .map_err(|e| Failure::machinery("digesting poisoned outputs", e))?;
    graph
        .replay()
        .map_err(|e| Failure::cuda(Stage::Timing, "a prefix of the launches", e))?;
    let after = digest_all(dev, sets, &mut digests)
        .map_err(|e| Failure::cuda(Stage::Timing, "digesting a prefix's outputs", e))?;
    let launched: std::collections::HashSet<(usize, usize)> =
        launch_order(sets.rounds, n).take(m).collect();
    let mut slot = 0;
    for (s, set) in sets.sets.iter().enumerate() {
        let per_group = set.written_per_group();
        for group in 0..set.groups() {
            let launched = launched.contains(&(group, s));
            let range = slot..slot + per_group;
            slot += per_group;
            if !launched && before.get(range.clone()) != after.get(range) {
                return Err(Failure::new(
                    Stage::Verify,
                    format!(
                        "at T={t}, after only the first {m} of the timing graph's {total} \
                         launches ran, the outputs of a launch that had not run (pass {group} \
                         over input set {s}) had changed: a kernel writes its own outputs only, \
                         never a later launch's"
                    ),
                ));
            }
        }
    }
    Ok(())
}
