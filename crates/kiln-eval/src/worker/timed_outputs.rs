//! Every timed replay of a candidate is checked, not a replay after them.
//!
//! A kernel that keeps state between launches (in memory no check reads)
//! could count its replays, compute honestly on the few it expects to be
//! checked and skip work on the ones that are timed. So after the warm-up
//! one replay is checked against the float64 reference and a device copy of
//! everything it wrote is kept; after every timed replay the outputs are
//! compared with that copy on the device (one word read back). A replay that
//! wrote anything else is checked against the reference there and then: an
//! honest kernel whose float reductions are not deterministic passes, at the
//! cost of a host check for that replay.
//!
//! The catalog's replays get the same device compare (its answer unused), so
//! both kernels are timed between the same extra work.

use kiln_cuda::{DifferenceMark, Graph};

use crate::record::Stage;
use crate::targets::OpProblem;

use super::measure::{check_written, replay_checked, Device, Failure, ReplayWatch, TimingSets};

/// The judge's [`ReplayWatch`]: the candidate (kernel 0) is checked on every
/// timed replay.
pub struct TimedOutputCheck<'a> {
    problem: &'a OpProblem,
    seed: u64,
    mark: Option<DifferenceMark>,
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
            mark: None,
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
        for set in sets.sets.iter_mut() {
            set.keep_outputs(gpu)
                .map_err(|e| Failure::machinery("keeping the checked outputs", e))?;
        }
        self.mark =
            Some(DifferenceMark::new(gpu).map_err(|e| Failure::machinery("a compare mark", e))?);
        Ok(())
    }

    fn replayed(
        &mut self,
        dev: &Device,
        sets: &mut TimingSets,
        kernel: usize,
        replay: usize,
    ) -> Result<(), Failure> {
        let gpu = &dev.gpu;
        let mark = self
            .mark
            .as_mut()
            .ok_or_else(|| Failure::machinery("the timed-output check", "no replay was checked"))?;
        let compare = |mark: &mut DifferenceMark| -> Result<bool, kiln_cuda::CudaError> {
            mark.reset(gpu)?;
            for set in &sets.sets {
                set.mark_changed_outputs(gpu, &dev.probes, mark)?;
            }
            Ok(mark.read(gpu)?.is_some())
        };
        let differs = compare(mark).map_err(|e| {
            if kernel == 0 {
                Failure::cuda(Stage::Timing, "comparing a timed replay's outputs", e)
            } else {
                Failure::machinery("comparing a timed replay's outputs", e)
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
