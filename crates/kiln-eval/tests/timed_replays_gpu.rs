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
use kiln_eval::worker::measure::{
    check_timed_output, load, time_interleaved, timing_sets, Device, TimeOnly,
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

fn setup() -> (Device, Target) {
    let dev = start_device(0).expect("a CUDA GPU with NVRTC (this test needs one)");
    let target = targets::find("qwen3_rmsnorm").expect("target");
    (dev, target)
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn a_kernel_honest_only_where_it_expects_a_check_fails_on_a_timed_replay() {
    let (dev, target) = setup();
    let problem = &target.problem;
    let baseline = load(&dev, problem, "honest.cu", HONEST).expect("honest kernel loads");
    let mut sets = timing_sets(&dev, problem, T, 7).expect("timing sets");
    let per_replay = sets.launches_per_graph();
    // The judge: the warm-up, one checked replay, then the timed ones.
    let timed = (WARMUP as usize + 1) * per_replay;
    let cheat = load(
        &dev,
        problem,
        "counting.cu",
        &counting(timed, timed + REPS as usize * per_replay),
    )
    .expect("counting kernel loads");
    let mut watch = TimedOutputCheck::new(problem, 11);
    let Err(err) = time_interleaved(
        &dev,
        problem,
        &[&cheat, &baseline],
        &mut sets,
        WARMUP,
        REPS,
        &mut watch,
    ) else {
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
    let (dev, target) = setup();
    let problem = &target.problem;
    let baseline = load(&dev, problem, "honest.cu", HONEST).expect("honest kernel loads");
    let mut sets = timing_sets(&dev, problem, T, 7).expect("timing sets");
    let per_replay = sets.launches_per_graph();
    let timed = WARMUP as usize * per_replay;
    let cheat = load(
        &dev,
        problem,
        "counting.cu",
        &counting(timed, timed + REPS as usize * per_replay),
    )
    .expect("counting kernel loads");
    let times = time_interleaved(
        &dev,
        problem,
        &[&cheat, &baseline],
        &mut sets,
        WARMUP,
        REPS,
        &mut TimeOnly,
    )
    .expect("timing alone sees nothing");
    assert_eq!(times[0].reps, REPS as usize);
    check_timed_output(&dev, problem, &cheat, &mut sets, 11)
        .expect("the replay after timing is honest, so checking it alone passes");
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn an_honest_kernel_passes_every_timed_replay() {
    let (dev, target) = setup();
    let problem = &target.problem;
    let baseline = load(&dev, problem, "honest.cu", HONEST).expect("honest kernel loads");
    let honest = load(&dev, problem, "counting.cu", &counting(0, 0)).expect("loads");
    let mut sets = timing_sets(&dev, problem, T, 7).expect("timing sets");
    let mut watch = TimedOutputCheck::new(problem, 11);
    time_interleaved(
        &dev,
        problem,
        &[&honest, &baseline],
        &mut sets,
        WARMUP,
        REPS,
        &mut watch,
    )
    .expect("an honest kernel passes");
    assert_eq!(
        watch.differing_replays, 0,
        "a deterministic kernel writes the same bytes on every replay"
    );
}
