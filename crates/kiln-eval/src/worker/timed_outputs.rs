//! Every timed replay of a candidate is checked, not a replay after them.
//!
//! A kernel that keeps state between launches (in memory no check reads)
//! could count its replays, compute honestly on the few it expects to be
//! checked and skip work on the ones that are timed. So after the warm-up
//! one replay is checked against the float64 reference and a keyed digest of
//! everything it wrote is kept; after every timed replay the outputs are
//! digested on the device and compared with it (a few words read back). A
//! replay that wrote anything else is checked against the reference there
//! and then: an honest kernel whose float reductions are not deterministic
//! passes, at the cost of a host check for that replay.
//!
//! A digest, not a copy: a device copy of the checked replay's outputs would
//! be the right answers to the very inputs every later replay reads, left in
//! memory for a kernel that goes looking. The key is drawn from the secret
//! seed, so no kernel can make a wrong answer digest like the right one.
//!
//! The catalog's replays get the same device digest (its answer unused), so
//! both kernels are timed between the same extra work.

use kiln_cuda::{Digests, Graph};

use crate::record::Stage;
use crate::targets::OpProblem;

use super::measure::{check_written, replay_checked, Device, Failure, ReplayWatch, TimingSets};

/// The judge's [`ReplayWatch`]: the candidate (kernel 0) is checked on every
/// timed replay.
pub struct TimedOutputCheck<'a> {
    problem: &'a OpProblem,
    seed: u64,
    /// The digests of the checked replay's written buffers, and the device
    /// slots later replays are digested into; `None` until it ran.
    checked: Option<(Vec<u64>, Digests)>,
    /// Timed replays of the candidate whose outputs differed from the checked
    /// replay's (each then checked against the reference).
    pub differing_replays: usize,
}

impl<'a> TimedOutputCheck<'a> {
    /// Checks with rows and groups drawn from `seed`.
    pub fn new(problem: &'a OpProblem, seed: u64) -> Self {
        Self {
            problem,
            seed,
            checked: None,
            differing_replays: 0,
        }
    }
}

impl ReplayWatch for TimedOutputCheck<'_> {
    fn warmed_up(
        &mut self,
        dev: &Device,
        sets: &mut TimingSets,
        graphs: &[Graph],
    ) -> Result<(), Failure> {
        let gpu = &dev.gpu;
        let graph = graphs
            .first()
            .ok_or_else(|| Failure::machinery("the timing loop", "it has no graphs"))?;
        replay_checked(
            dev,
            self.problem,
            graph,
            sets,
            self.seed,
            "the checked replay",
        )?;
        let slots = sets.sets.iter().map(|s| s.written_buffers()).sum();
        let key = digest_key(self.seed);
        let mut digests =
            Digests::new(gpu, slots, key).map_err(|e| Failure::machinery("digest slots", e))?;
        let kept = digest_all(dev, sets, &mut digests)
            .map_err(|e| Failure::machinery("digesting the checked outputs", e))?;
        self.checked = Some((kept, digests));
        Ok(())
    }

    fn replayed(
        &mut self,
        dev: &Device,
        sets: &mut TimingSets,
        kernel: usize,
        replay: usize,
    ) -> Result<(), Failure> {
        let (kept, digests) = self
            .checked
            .as_mut()
            .ok_or_else(|| Failure::machinery("the timed-output check", "no replay was checked"))?;
        let differs = digest_all(dev, sets, digests)
            .map(|now| now != *kept)
            .map_err(|e| {
                if kernel == 0 {
                    Failure::cuda(Stage::Timing, "digesting a timed replay's outputs", e)
                } else {
                    Failure::machinery("digesting a timed replay's outputs", e)
                }
            })?;
        if kernel != 0 || !differs {
            return Ok(());
        }
        self.differing_replays += 1;
        let seed = self.seed ^ (replay as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
        check_written(
            dev,
            self.problem,
            sets,
            seed,
            &format!("timed replay {replay}, whose outputs differ from the checked replay's"),
        )
    }
}

/// The digest key for a check drawn from `seed`: secret as the seed is.
pub(super) fn digest_key(seed: u64) -> u64 {
    (seed ^ 0x6a09_e667_f3bc_c908).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Every set's written buffers digested into `digests` (reset first), read
/// back: by set, then group, then parameter position.
pub(super) fn digest_all(
    dev: &Device,
    sets: &TimingSets,
    digests: &mut Digests,
) -> Result<Vec<u64>, kiln_cuda::CudaError> {
    digests.reset(&dev.gpu)?;
    let mut slot = 0;
    for set in &sets.sets {
        slot = set.digest_outputs(&dev.gpu, &dev.probes, digests, slot)?;
    }
    digests.read(&dev.gpu)
}
