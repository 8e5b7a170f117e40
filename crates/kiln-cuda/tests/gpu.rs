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

/// Fills every word of a block's dynamic shared memory with `v`, and counts
/// the words that hold `v` (`counts[0]`) and those that do not (`counts[1]`).
const SHARED_PROBE: &str = r#"
extern "C" __global__ void write_shared(unsigned int words, unsigned int v) {
    extern __shared__ unsigned int s[];
    volatile unsigned int* p = s;
    for (unsigned int i = threadIdx.x; i < words; i += blockDim.x) p[i] = v;
}
extern "C" __global__ void count_shared(unsigned int words, unsigned int v, unsigned long long* counts) {
    extern __shared__ unsigned int s[];
    volatile unsigned int* p = s;
    unsigned long long same = 0, other = 0;
    for (unsigned int i = threadIdx.x; i < words; i += blockDim.x) {
        if (p[i] == v) same++; else other++;
    }
    atomicAdd(&counts[0], same);
    atomicAdd(&counts[1], other);
}
"#;

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn clear_shared_overwrites_what_an_earlier_kernel_left_in_shared_memory() {
    use kiln_cuda::{CompileRequest, DevicePtr, KernelArg};
    let (gpu, compiler) = open();
    let probes = Probes::load(&gpu, &compiler).expect("probe kernels load");
    let req = CompileRequest::new("shared_probe.cu", SHARED_PROBE).arch(gpu.facts().arch);
    let module = gpu
        .load_module(&compiler.compile(&req).expect("compile"))
        .expect("load");
    let write = module.kernel("write_shared").expect("write_shared");
    let count = module.kernel("count_shared").expect("count_shared");
    let f = gpu.facts();
    let bytes = f.max_smem_per_block_optin;
    let dims = LaunchDims::linear(2 * f.sm_count, 1024, bytes);
    let words = bytes / 4;
    const MARK: u32 = 0x6b69_6c6e;
    let counts = |cleared: bool| -> (u64, u64) {
        let c = gpu.alloc_zeros::<u64>(2).expect("alloc");
        let at = c.device_ptr(gpu.stream()).0;
        // SAFETY: both kernels touch only their own shared memory and the two counters.
        unsafe {
            write
                .launch(&gpu, &dims, &[KernelArg::U32(words), KernelArg::U32(MARK)])
                .expect("write");
        }
        let want = if cleared {
            probes
                .clear_shared(&gpu, 0x7fc0_7fc0)
                .expect("clear_shared");
            0x7fc0_7fc0
        } else {
            MARK
        };
        unsafe {
            count
                .launch(
                    &gpu,
                    &dims,
                    &[
                        KernelArg::U32(words),
                        KernelArg::U32(want),
                        KernelArg::Ptr(at),
                    ],
                )
                .expect("count");
        }
        let v = gpu.download(&c).expect("download");
        (v[0], v[1])
    };
    // Without the clear, what one kernel wrote is what the next one reads
    // (said, not asserted: the hardware promises nothing either way).
    let (kept, _) = counts(false);
    let total = u64::from(words) * u64::from(dims.grid.0);
    eprintln!(
        "without kiln_clear_shared: {kept} of {total} words of shared memory still held what the kernel before wrote"
    );
    let (filled, other) = counts(true);
    assert_eq!(
        (filled, other),
        (total, 0),
        "after kiln_clear_shared every word must hold its pattern"
    );
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn digests_tell_buffers_apart_by_every_byte_and_its_place() {
    use kiln_cuda::{DevicePtr, Digests};
    let (gpu, compiler) = open();
    let probes = Probes::load(&gpu, &compiler).expect("probe kernels load");
    // 1 MiB and 5 bytes: whole 8-byte words and a tail.
    let len = (1 << 20) + 5;
    let base: Vec<u8> = (0..len)
        .map(|i| ((i * 2_654_435_761usize) >> 13) as u8)
        .collect();
    let digest = |bytes: &[u8], key: u64| -> u64 {
        let buf = gpu.upload(bytes).expect("upload");
        let mut d = Digests::new(&gpu, 2, key).expect("digest slots");
        let at = buf.device_ptr(gpu.stream()).0;
        probes
            .digest(&gpu, at, bytes.len() as u64, &mut d, 1)
            .expect("digest");
        let v = d.read(&gpu).expect("read");
        assert_eq!(v[0], 0, "only the slot asked for is written");
        v[1]
    };
    let key = 0x1234_5678_9abc_def0;
    let d0 = digest(&base, key);
    assert_eq!(d0, digest(&base, key), "the same bytes digest alike");
    assert_ne!(d0, digest(&base, key ^ 1), "the key changes the digest");
    for at in [0, 7, 8, 4095, len / 2, len - 6, len - 5, len - 1] {
        let mut flipped = base.clone();
        flipped[at] ^= 0x01;
        assert_ne!(d0, digest(&flipped, key), "one bit flipped at byte {at}");
    }
    let mut swapped = base.clone();
    swapped.swap(0, 8);
    if swapped != base {
        assert_ne!(d0, digest(&swapped, key), "two words swapped");
    }
    // The sum is over all of the buffer, not one block's share of it.
    let mut zeros = vec![0u8; len];
    let z = digest(&zeros, key);
    zeros[len - 3] = 1;
    assert_ne!(z, digest(&zeros, key), "a change in the tail");
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn warm_l2_leaves_a_buffer_in_l2_after_another_kernel_evicted_it() {
    use kiln_cuda::DevicePtr;
    let (gpu, compiler) = open();
    let probes = Probes::load(&gpu, &compiler).expect("probe kernels load");
    // Inputs within L2 (the evaluator warms only those), and a read of
    // several L2s standing in for a kernel that evicted them.
    let l2 = gpu.facts().l2_bytes as usize;
    let len = (l2 / 2) & !0xFFF;
    let inputs = gpu.alloc_zeros::<u8>(len).expect("inputs");
    let other = gpu.alloc_zeros::<u8>(4 * l2).expect("other memory");
    let (at, evict) = (
        inputs.device_ptr(gpu.stream()).0,
        other.device_ptr(gpu.stream()).0,
    );
    let read = || probes.warm_l2(&gpu, at, len as u64);
    let (mut cold, mut warm) = (f64::MAX, f64::MAX);
    for _ in 0..7 {
        probes.warm_l2(&gpu, evict, 4 * l2 as u64).expect("evict");
        cold = cold.min(gpu.time_us(read).expect("cold read"));
        probes.warm_l2(&gpu, evict, 4 * l2 as u64).expect("evict");
        read().expect("warm-up");
        warm = warm.min(gpu.time_us(read).expect("warm read"));
    }
    println!("{len} bytes: {cold:.2} µs after an eviction, {warm:.2} µs after warm_l2");
    assert!(
        warm < 0.8 * cold,
        "a read after warm_l2 ({warm:.2} µs) should find the bytes in L2, \
         faster than after an eviction ({cold:.2} µs)"
    );
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn islands_hold_whole_pages_alone_and_round_trip_their_bytes() {
    use kiln_cuda::{Island, ISLAND_PAGE};
    let (gpu, compiler) = open();
    let probes = Probes::load(&gpu, &compiler).expect("probe kernels load");
    let mut a = Island::new(&gpu, 10_000, 3, 5).expect("island a");
    let b = Island::new(&gpu, ISLAND_PAGE + 1, 1, 1).expect("island b");
    assert_eq!(a.len(), ISLAND_PAGE);
    assert_eq!(b.len(), 2 * ISLAND_PAGE);
    assert_eq!(a.ptr() % ISLAND_PAGE as u64, 0);
    // Neither island's mapped pages come within a page of the other's.
    let (lo, hi) = if a.ptr() < b.ptr() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert!(
        lo.ptr() + lo.len() as u64 + ISLAND_PAGE as u64 <= hi.ptr(),
        "islands at {:#x}+{} and {:#x} have no unmapped page between them",
        lo.ptr(),
        lo.len(),
        hi.ptr()
    );
    let bytes: Vec<u8> = (0..4099u32).map(|i| (i * 7 + 1) as u8).collect();
    a.fill(&gpu, 0, ISLAND_PAGE, 1, 0xA5).expect("fill");
    a.upload(&gpu, 17, &bytes).expect("upload");
    assert_eq!(a.download(&gpu, 17, bytes.len()).expect("download"), bytes);
    assert_eq!(a.download(&gpu, 0, 17).expect("download"), vec![0xA5; 17]);
    let after = a.download(&gpu, 17 + bytes.len(), 64).expect("download");
    assert_eq!(after, vec![0xA5; 64]);
    // A device copy into the island, checked with the probe compare.
    let src = gpu.upload(&bytes).expect("upload");
    let src_ptr = {
        use kiln_cuda::DevicePtr;
        src.device_ptr(gpu.stream()).0
    };
    // SAFETY: `src` holds `bytes.len()` bytes and outlives the copy (the
    // compare below waits for it).
    unsafe { a.copy_from(&gpu, src_ptr, 4096, bytes.len()) }.expect("copy");
    let same = probes
        .first_difference(&gpu, a.ptr() + 4096, src_ptr, bytes.len() as u64)
        .expect("compare");
    assert_eq!(same, None);
    assert!(a.upload(&gpu, ISLAND_PAGE - 1, &[0, 0]).is_err());
    assert!(a.download(&gpu, ISLAND_PAGE, 1).is_err());
}
