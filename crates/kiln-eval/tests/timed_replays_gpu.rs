//! GPU tests of the judge's check of every timed replay
//! (`kiln_eval::worker::timed_outputs`): a kernel that keeps a launch count
//! where no check looks, computes honestly on the replays it expects to be
//! checked and skips rows on the timed ones, passes a check of one replay
//! after timing, and fails the check of every timed replay.
//!
//! Candidates' module globals are watched by the judge, so the count here
//! lives in a global of a kernel loaded as trusted (`measure::load` watches
//! none): it stands for memory no check reads.

use kiln_eval::targets::{self, Target};
use kiln_eval::timing_stats::TimingSummary;
use kiln_eval::worker::measure::{
    check_timed_output, load, time_interleaved, timing_sets, Device, Failure, Loaded, ReplayWatch,
    TimeOnly, TimingSets,
};
use kiln_eval::worker::start_device;
use kiln_eval::worker::timed_outputs::TimedOutputCheck;

const HONEST: &str = include_str!("../../kiln-cli/tests/red_team/honest_simple_rmsnorm.cu");

/// The honest kernel, made to count its launches (from the module's load)
/// and leave odd rows unwritten on launches `[from, to)`.
fn counting(from: usize, to: usize) -> String {
    let mark = "    const int row = blockIdx.x;\n    if (row >= T) return;\n";
    let typedef = "typedef KILN_DTYPE scalar_t;\n";
    assert!(
        HONEST.contains(mark) && HONEST.contains(typedef),
        "the honest kernel changed shape; update this test's edit of it"
    );
    let counted = format!(
        "    __shared__ unsigned long long launch_no;\n    \
         if (threadIdx.x == 0) launch_no = atomicAdd(&blocks_seen, 1ULL) / gridDim.x;\n    \
         __syncthreads();\n{mark}    \
         if (launch_no >= {from}ULL && launch_no < {to}ULL && (row & 1)) return;\n"
    );
    HONEST
        .replacen(
            typedef,
            &format!("{typedef}__device__ unsigned long long blocks_seen;\n"),
            1,
        )
        .replacen(mark, &counted, 1)
}

const T: usize = 16;
const WARMUP: u32 = 3;
/// Exactly this many timed replays (the stopping rule's minimum).
const REPS: u32 = 10;

/// `qwen3_rmsnorm`'s timing sets at `T` rows, with the honest kernel as the
/// catalog stand-in.
struct Bench {
    dev: Device,
    target: Target,
    baseline: Loaded,
    sets: TimingSets,
}

impl Bench {
    fn new() -> Self {
        let dev = start_device(0).expect("a CUDA GPU with NVRTC (this test needs one)");
        let target = targets::find("qwen3_rmsnorm").expect("target");
        let baseline = load(&dev, &target.problem, "honest.cu", HONEST).expect("honest loads");
        let sets = timing_sets(&dev, &target.problem, T, 7).expect("timing sets");
        Self {
            dev,
            target,
            baseline,
            sets,
        }
    }

    /// The counting kernel, cheating on the `REPS` replays after the first
    /// `honest_replays`.
    fn counting(&self, honest_replays: usize) -> Loaded {
        let per_replay = self.sets.launches_per_graph();
        let from = honest_replays * per_replay;
        let src = counting(from, from + REPS as usize * per_replay);
        load(&self.dev, &self.target.problem, "counting.cu", &src).expect("counting loads")
    }

    /// Times `kernel` against the stand-in, interleaved, with `watch`.
    fn time(
        &mut self,
        kernel: &Loaded,
        watch: &mut dyn ReplayWatch,
    ) -> Result<Vec<TimingSummary>, Failure> {
        time_interleaved(
            &self.dev,
            &self.target.problem,
            &[kernel, &self.baseline],
            &mut self.sets,
            WARMUP,
            REPS,
            watch,
        )
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn a_kernel_honest_only_where_it_expects_a_check_fails_on_a_timed_replay() {
    let mut bench = Bench::new();
    // The judge: the warm-up, one checked replay, then the timed ones.
    let cheat = bench.counting(WARMUP as usize + 1);
    let problem = bench.target.problem.clone();
    let mut watch = TimedOutputCheck::new(&problem, 11);
    let Err(err) = bench.time(&cheat, &mut watch) else {
        panic!("a kernel that skips rows on timed replays must fail");
    };
    assert!(
        err.reason.contains("timed replay 0"),
        "caught on its first timed replay: {}",
        err.reason
    );
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn the_same_kernel_passes_a_check_of_one_replay_after_timing() {
    // How the judge checked before every timed replay was: the hole the test
    // above closes. The trick must work here, or that test proves nothing.
    let mut bench = Bench::new();
    let cheat = bench.counting(WARMUP as usize);
    let times = bench
        .time(&cheat, &mut TimeOnly)
        .expect("timing alone sees nothing");
    assert_eq!(times[0].reps, REPS as usize);
    check_timed_output(
        &bench.dev,
        &bench.target.problem,
        &cheat,
        &mut bench.sets,
        11,
    )
    .expect("the replay after timing is honest, so checking it alone passes");
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn an_honest_kernel_passes_every_timed_replay() {
    let mut bench = Bench::new();
    let honest = load(
        &bench.dev,
        &bench.target.problem,
        "counting.cu",
        &counting(0, 0),
    )
    .expect("loads");
    let problem = bench.target.problem.clone();
    let mut watch = TimedOutputCheck::new(&problem, 11);
    bench
        .time(&honest, &mut watch)
        .expect("an honest kernel passes");
    assert_eq!(
        watch.differing_replays, 0,
        "a deterministic kernel writes the same bytes on every replay"
    );
}
