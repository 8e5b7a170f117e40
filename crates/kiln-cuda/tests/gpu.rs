//! GPU suite for kiln-cuda. Ignored in the ordinary test run (CI has no GPU):
//! `scripts/gpu-suite.sh` runs them with `--ignored` on a machine with one.

use kiln_cuda::{Compiler, Gpu, LaunchDims, Probes};

fn open() -> (Gpu, Compiler) {
    let gpu = Gpu::open(0).unwrap_or_else(|e| panic!("GPU test without a GPU: {e}"));
    let compiler = Compiler::new().unwrap_or_else(|e| panic!("NVRTC: {e}"));
    (gpu, compiler)
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn facts_are_plausible() {
    let (gpu, _) = open();
    let f = gpu.facts();
    assert!(
        f.sm_count > 0 && f.l2_bytes > 0 && f.total_mem_bytes > 1 << 30,
        "{f:?}"
    );
    assert!(f.max_smem_per_block_optin >= 48 * 1024, "{f:?}");
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn self_check_runs_a_kernel_and_verifies_it() {
    let (gpu, compiler) = open();
    let probes = Probes::load(&gpu, &compiler).expect("probe kernels load");
    probes.self_check(&gpu).expect("axpy verified");
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn sentinel_fill_is_nan_for_every_float_type() {
    let (gpu, _) = open();
    let mut a = gpu.alloc_zeros::<f32>(1001).expect("alloc");
    let mut b = gpu.alloc_zeros::<kiln_cuda::bf16>(1001).expect("alloc");
    let mut c = gpu.alloc_zeros::<kiln_cuda::f16>(1001).expect("alloc");
    let mut d = gpu.alloc_zeros::<u32>(7).expect("alloc");
    gpu.fill_sentinel(&mut a).expect("fill");
    gpu.fill_sentinel(&mut b).expect("fill");
    gpu.fill_sentinel(&mut c).expect("fill");
    gpu.fill_sentinel(&mut d).expect("fill");
    assert!(gpu.download(&a).expect("dl").iter().all(|v| v.is_nan()));
    assert!(gpu.download(&b).expect("dl").iter().all(|v| v.is_nan()));
    assert!(gpu.download(&c).expect("dl").iter().all(|v| v.is_nan()));
    assert!(gpu.download(&d).expect("dl").iter().all(|v| *v == u32::MAX));
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn bandwidth_and_launch_floor_are_physical() {
    let (gpu, compiler) = open();
    let probes = Probes::load(&gpu, &compiler).expect("probe kernels load");
    let bw = probes.bandwidth(&gpu).expect("bandwidth");
    let floor = probes.launch_floor(&gpu).expect("floor");
    eprintln!("bandwidth {bw:?}, floor {floor:?}");
    let peak = bw.peak_bytes_per_s();
    // Any datacenter GPU from the last decade streams 0.3–10 TB/s.
    assert!((3e11..1e13).contains(&peak), "peak {peak:e} B/s");
    assert!(floor.graph_us > 0.05 && floor.graph_us < 50.0, "{floor:?}");

    // A copy of 256 MiB runs near the peak; a copy of 16 bytes costs about
    // one launch; a larger copy never takes less time than a smaller one.
    let big = probes.copy_ceiling(&gpu, 256 << 20).expect("copy 256 MiB");
    let tiny = probes.copy_ceiling(&gpu, 32).expect("copy 32 B");
    eprintln!("copy ceilings: {big:?}, {tiny:?}");
    assert!(big.rotated && !tiny.rotated);
    let big_rate = big.bytes_moved as f64 / (big.best_us() * 1e-6);
    assert!(
        big_rate > 0.5 * peak && big_rate < 1.1 * peak,
        "256 MiB copy at {big_rate:e} B/s against peak {peak:e}"
    );
    assert!(
        tiny.best_us() > 0.5 * floor.graph_us && tiny.best_us() < 20.0 * floor.graph_us,
        "{tiny:?} against floor {floor:?}"
    );
    assert!(big.best_us() > tiny.best_us());
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn oversized_launches_are_rejected_before_the_driver() {
    let (gpu, compiler) = open();
    let probes = Probes::load(&gpu, &compiler).expect("probe kernels load");
    let k = probes.empty_kernel();
    assert!(k.prepare(&LaunchDims::linear(1, 2048, 0)).is_err());
    assert!(k.prepare(&LaunchDims::linear(0, 32, 0)).is_err());
    let too_much = gpu.facts().max_smem_per_block_optin + 1;
    assert!(k.prepare(&LaunchDims::linear(1, 32, too_much)).is_err());
    // Opting in to the maximum works.
    let max = gpu.facts().max_smem_per_block_optin;
    k.prepare(&LaunchDims::linear(1, 32, max))
        .expect("max smem opt-in");
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn graph_replay_matches_stream_launches() {
    let (gpu, compiler) = open();
    let probes = Probes::load(&gpu, &compiler).expect("probe kernels load");
    let dims = LaunchDims::linear(1, 32, 0);
    let k = probes.empty_kernel();
    let graph = gpu
        .capture(|| unsafe { k.launch(&gpu, &dims, &[]) })
        .expect("capture");
    for _ in 0..3 {
        graph.replay().expect("replay");
    }
    gpu.synchronize().expect("sync");
}
