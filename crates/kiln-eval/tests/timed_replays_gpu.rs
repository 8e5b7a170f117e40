//! GPU tests of the judge's check of every timed replay
//! (`kiln_eval::worker::timed_outputs`): a kernel that keeps a launch count
//! where no check looks, computes honestly on the replays it expects to be
//! checked and skips rows on the timed ones, passes a check of one replay
//! after timing, and fails the check of every timed replay.
//!
//! And a kernel that does later launches' work ahead (`worker::prefix_replay`):
//! the first launch of a replay computes every launch's rows and the others
//! exit at once. Every replay's outputs are right, so the timed checks pass;
//! a replay of a prefix of the launches shows the groups it wrote ahead.
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
use kiln_eval::worker::prefix_replay::check_prefix_replay;
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

/// A kernel that records every launch's buffers on the first replay (honest
/// there) and from the second on has the first launch of each replay
/// compute all `launches` launches' rows, the others returning at once.
fn working_ahead(launches: usize) -> String {
    format!(
        r#"// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
#define LAUNCHES {launches}ULL
__device__ unsigned long long blocks_seen;
__device__ const scalar_t* seen_x[LAUNCHES];
__device__ const scalar_t* seen_w[LAUNCHES];
__device__ scalar_t* seen_out[LAUNCHES];
__device__ void norm_row(const scalar_t* x, const scalar_t* w, scalar_t* out, int row, float* part) {{
    const scalar_t* xr = x + (long long)row * KILN_D;
    float acc = 0.f;
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {{ float v = __bfloat162float(xr[d]); acc += v * v; }}
    part[threadIdx.x] = acc;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {{
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }}
    const float r = rsqrtf(part[0] / KILN_D + KILN_EPS);
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {{
        float n = __bfloat162float(__float2bfloat16_rn(__bfloat162float(xr[d]) * r));
        out[(long long)row * KILN_D + d] = __float2bfloat16_rn(n * __bfloat162float(w[d]));
    }}
    __syncthreads();
}}
extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {{
    __shared__ float part[256];
    __shared__ unsigned long long launch_no;
    if (threadIdx.x == 0) launch_no = atomicAdd(&blocks_seen, 1ULL) / gridDim.x;
    __syncthreads();
    const int row = blockIdx.x;
    if (row >= T) return;
    const unsigned long long at = launch_no % LAUNCHES;
    if (row == 0 && threadIdx.x == 0) {{ seen_x[at] = x; seen_w[at] = w; seen_out[at] = out; }}
    if (launch_no < LAUNCHES) {{ norm_row(x, w, out, row, part); return; }}
    if (at != 0) return;
    for (unsigned long long l = 0; l < LAUNCHES; ++l) norm_row(seen_x[l], seen_w[l], seen_out[l], row, part);
}}
"#
    )
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

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn a_kernel_that_works_ahead_for_later_launches_fails_the_prefix_replay() {
    let mut bench = Bench::new();
    let launches = bench.sets.launches_per_graph();
    let cheat = load(
        &bench.dev,
        &bench.target.problem,
        "working_ahead.cu",
        &working_ahead(launches),
    )
    .expect("the working-ahead kernel loads");
    let problem = bench.target.problem.clone();
    let mut watch = TimedOutputCheck::new(&problem, 11);
    // The trick must hold up to every timed check, or this proves nothing.
    bench
        .time(&cheat, &mut watch)
        .expect("every replay's outputs are right, so timing passes");
    assert_eq!(watch.differing_replays, 0);
    let err = check_prefix_replay(&bench.dev, &problem, &cheat, &mut bench.sets, 11)
        .expect_err("writing later launches' outputs ahead must fail");
    assert!(err.reason.contains("had not run"), "{}", err.reason);
    let honest = load(&bench.dev, &problem, "honest.cu", HONEST).expect("honest loads");
    check_prefix_replay(&bench.dev, &problem, &honest, &mut bench.sets, 11)
        .expect("an honest kernel writes only its own outputs");
}

/// CPU (CI runs it): the stand-in kernels above have a launch line and
/// compile for the target, so a GPU run, scarce, never finds a typo first.
#[test]
fn the_stand_in_kernels_parse_and_compile() {
    let target = targets::find("qwen3_rmsnorm").expect("target");
    let build = target.problem.build().expect("the target builds");
    let compiler = kiln_cuda::Compiler::new()
        .unwrap_or_else(|e| panic!("NVRTC is required for this test: {e}"));
    for (name, src) in [
        ("counting.cu", counting(3, 5)),
        ("working_ahead.cu", working_ahead(24)),
    ] {
        kiln_kernels::LaunchLine::parse_source(&src)
            .unwrap_or_else(|e| panic!("{name}: launch line: {e}"));
        let mut req = kiln_cuda::CompileRequest::new(name, &src);
        req.defines = build.defines.clone();
        compiler
            .compile(&req)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
