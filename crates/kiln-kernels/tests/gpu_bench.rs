//! Rough speed check of the bandwidth-bound catalog ops (bf16): achieved
//! bandwidth at T=4096 with L2 flushed before each launch, and the T=1 launch
//! time against an empty kernel; the decode ops (gathered experts, attention)
//! at T = 1, 4, 16, 64 with L2 flushed, counting the weights and KV rows they
//! must read. Prints a table; asserts nothing (timings are noisy on shared
//! machines). Run with `scripts/gpu-suite.sh`.

use kiln_cuda::{bf16, CompileRequest, Compiler, CudaSlice, Gpu, L2Flush, PushKernelArg};
use kiln_kernels::ops::attention::DecodeAttentionConfig;
use kiln_kernels::ops::moe_combine::MoeCombineConfig;
use kiln_kernels::ops::moe_expert::{MoeExpertDownConfig, MoeExpertSwigluConfig};
use kiln_kernels::ops::norm::{AddRmsNormConfig, RmsNormConfig};
use kiln_kernels::ops::rope::RopeConfig;
use kiln_kernels::ops::swiglu::{SwigluConfig, SwigluPackedConfig};
use kiln_kernels::ops::topk::{SigmoidTopkConfig, SoftmaxTopkConfig};
use kiln_kernels::{DType, OpConfig};

type R = kiln_kernels::Result<()>;

fn buf(gpu: &Gpu, n: usize) -> CudaSlice<bf16> {
    let host: Vec<bf16> = (0..n)
        .map(|i| bf16::from_f32(((i % 97) as f32 - 48.0) / 17.0))
        .collect();
    gpu.upload(&host).unwrap_or_else(|e| panic!("{e}"))
}

/// Median µs of one launch with a cold L2.
fn cold(gpu: &Gpu, flush: &mut L2Flush, mut f: impl FnMut() -> R) -> f64 {
    let mut v: Vec<f64> = (0..25)
        .map(|_| {
            flush.flush(gpu).unwrap_or_else(|e| panic!("{e}"));
            gpu.time_us(|| {
                f().map_err(|e| match e {
                    kiln_kernels::KernelError::Cuda(c) => c,
                    other => panic!("{other}"),
                })
            })
            .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Mean µs per launch over 200 back-to-back launches (launch-bound regime).
fn hot(gpu: &Gpu, mut f: impl FnMut() -> R) -> f64 {
    for _ in 0..20 {
        f().unwrap_or_else(|e| panic!("{e}"));
    }
    let us = gpu
        .time_us(|| {
            for _ in 0..200 {
                f().unwrap_or_else(|e| panic!("{e}"));
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    us / 200.0
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn bandwidth_and_launch_time() {
    let gpu = Gpu::open(0).unwrap_or_else(|e| panic!("{e}"));
    let cc = Compiler::new().unwrap_or_else(|e| panic!("{e}"));
    let mut flush = L2Flush::new(&gpu).unwrap_or_else(|e| panic!("{e}"));
    let sms = gpu.facts().sm_count;
    let _ = sms;

    // Copy baseline (16-byte vectors) and an empty kernel.
    let src = r#"extern "C" __global__ void copy16(const uint4* a, uint4* b, long long n) {
        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) b[i] = a[i]; }
        extern "C" __global__ void empty() {}"#;
    let m = gpu
        .load_module(
            &cc.compile(&CompileRequest::new("base.cu", src))
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let (copy, empty) = (
        m.kernel("copy16").unwrap_or_else(|e| panic!("{e}")),
        m.kernel("empty").unwrap_or_else(|e| panic!("{e}")),
    );
    let n_bytes: usize = 256 << 20;
    let a = buf(&gpu, n_bytes / 2);
    let mut b = buf(&gpu, n_bytes / 2);
    let n16 = (n_bytes / 16) as i64;
    let cfg = kiln_cuda::LaunchDims::linear(gpu.facts().sm_count * 8, 512, 0).to_config();
    let copy_us = cold(&gpu, &mut flush, || {
        let mut l = gpu.stream().launch_builder(copy.function());
        l.arg(&a).arg(&mut b).arg(&n16);
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(|e| kiln_kernels::KernelError::Cuda(kiln_cuda::CudaError::driver("copy")(e)))
    });
    let copy_gbs = 2.0 * n_bytes as f64 / copy_us / 1e3;
    let ecfg = kiln_cuda::LaunchDims::linear(1, 32, 0).to_config();
    let empty_us = hot(&gpu, || {
        let mut l = gpu.stream().launch_builder(empty.function());
        unsafe { l.launch(ecfg) }
            .map(|_| ())
            .map_err(|e| kiln_kernels::KernelError::Cuda(kiln_cuda::CudaError::driver("empty")(e)))
    });
    println!("copy: {copy_gbs:.0} GB/s; empty kernel: {empty_us:.2} µs/launch");

    let t = 4096;
    let dt = DType::BF16;
    let report = |name: &str, bytes: usize, big_us: f64, small_us: f64| {
        let gbs = bytes as f64 / big_us / 1e3;
        println!(
            "{name:<28} T=4096: {big_us:8.1} µs {gbs:6.0} GB/s ({:5.1}% of copy)   T=1: {small_us:5.2} µs ({:.2}× empty)",
            100.0 * gbs / copy_gbs,
            small_us / empty_us
        );
    };

    let d = 2048;
    let rms = RmsNormConfig::new(d, 1e-6, dt)
        .load(&gpu, &cc)
        .unwrap_or_else(|e| panic!("{e}"));
    let (x, w, r) = (buf(&gpu, t * d), buf(&gpu, d), buf(&gpu, t * d));
    let (mut o1, mut o2) = (buf(&gpu, t * d), buf(&gpu, t * d));
    let big = cold(&gpu, &mut flush, || rms.launch(&gpu, &x, &w, &mut o1, t));
    let (x1, mut y1) = (buf(&gpu, d), buf(&gpu, d));
    let small = hot(&gpu, || rms.launch(&gpu, &x1, &w, &mut y1, 1));
    report("rmsnorm D=2048", 2 * t * d * 2, big, small);

    let add = AddRmsNormConfig(RmsNormConfig::new(d, 1e-6, dt))
        .load(&gpu, &cc)
        .unwrap_or_else(|e| panic!("{e}"));
    let big = cold(&gpu, &mut flush, || {
        add.launch(&gpu, &x, &r, &w, &mut o1, &mut o2, t)
    });
    let (r1, mut z1) = (buf(&gpu, d), buf(&gpu, d));
    let small = hot(&gpu, || add.launch(&gpu, &x1, &r1, &w, &mut y1, &mut z1, 1));
    report("add_rmsnorm D=2048", 4 * t * d * 2, big, small);

    let q = RmsNormConfig::new(128, 1e-6, dt)
        .load(&gpu, &cc)
        .unwrap_or_else(|e| panic!("{e}"));
    let (wq, mut oq) = (buf(&gpu, 128), buf(&gpu, t * 32 * 128));
    let xq = buf(&gpu, t * 32 * 128);
    let big = cold(&gpu, &mut flush, || {
        q.launch(&gpu, &xq, &wq, &mut oq, t * 32)
    });
    let (xq1, mut yq1) = (buf(&gpu, 32 * 128), buf(&gpu, 32 * 128));
    let small = hot(&gpu, || q.launch(&gpu, &xq1, &wq, &mut yq1, 32));
    report(
        "qk-norm D=128 (T*32 rows)",
        2 * t * 32 * 128 * 2,
        big,
        small,
    );

    for i in [1536, 10240] {
        let sw = SwigluConfig::new(i, dt)
            .load(&gpu, &cc)
            .unwrap_or_else(|e| panic!("{e}"));
        let (g, u, mut o) = (buf(&gpu, t * i), buf(&gpu, t * i), buf(&gpu, t * i));
        let big = cold(&gpu, &mut flush, || sw.launch(&gpu, &g, &u, &mut o, t));
        let (g1, u1, mut o1s) = (buf(&gpu, i), buf(&gpu, i), buf(&gpu, i));
        let small = hot(&gpu, || sw.launch(&gpu, &g1, &u1, &mut o1s, 1));
        report(&format!("swiglu I={i}"), 3 * t * i * 2, big, small);
        let sp = SwigluPackedConfig(SwigluConfig::new(i, dt))
            .load(&gpu, &cc)
            .unwrap_or_else(|e| panic!("{e}"));
        let gu = buf(&gpu, 2 * t * i);
        let big = cold(&gpu, &mut flush, || sp.launch(&gpu, &gu, &mut o, t));
        let gu1 = buf(&gpu, 2 * i);
        let small = hot(&gpu, || sp.launch(&gpu, &gu1, &mut o1s, 1));
        report(&format!("swiglu_packed I={i}"), 3 * t * i * 2, big, small);
    }

    for (k, shared) in [(8, false), (4, true)] {
        let mc = MoeCombineConfig {
            d,
            k,
            has_shared: shared,
            dtype: dt,
        }
        .load(&gpu, &cc)
        .unwrap_or_else(|e| panic!("{e}"));
        let e = buf(&gpu, t * k * d);
        let wts = gpu
            .upload(&vec![0.25f32; t * k])
            .unwrap_or_else(|e| panic!("{e}"));
        let s = buf(&gpu, t * d);
        let big = cold(&gpu, &mut flush, || {
            mc.launch(&gpu, &e, &wts, shared.then_some(&s), &mut o1, t)
        });
        let e1 = buf(&gpu, k * d);
        let w1 = gpu
            .upload(&vec![0.25f32; k])
            .unwrap_or_else(|e| panic!("{e}"));
        let s1 = buf(&gpu, d);
        let small = hot(&gpu, || {
            mc.launch(&gpu, &e1, &w1, shared.then_some(&s1), &mut y1, 1)
        });
        report(
            &format!("moe_combine K={k} shared={shared}"),
            (k + 1 + shared as usize) * t * d * 2 + t * k * 4,
            big,
            small,
        );
    }

    let sm = SoftmaxTopkConfig {
        e: 128,
        k: 8,
        renorm: true,
        dtype: dt,
    }
    .load(&gpu, &cc)
    .unwrap_or_else(|e| panic!("{e}"));
    let lg = buf(&gpu, t * 128);
    let mut wt = gpu
        .alloc_zeros::<f32>(t * 8)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut ix = gpu
        .alloc_zeros::<u32>(t * 8)
        .unwrap_or_else(|e| panic!("{e}"));
    let big = cold(&gpu, &mut flush, || {
        sm.launch(&gpu, &lg, &mut wt, &mut ix, t)
    });
    let mut wt1 = gpu.alloc_zeros::<f32>(8).unwrap_or_else(|e| panic!("{e}"));
    let mut ix1 = gpu.alloc_zeros::<u32>(8).unwrap_or_else(|e| panic!("{e}"));
    let lg1 = buf(&gpu, 128);
    let small = hot(&gpu, || sm.launch(&gpu, &lg1, &mut wt1, &mut ix1, 1));
    report(
        "softmax_topk E=128 K=8",
        t * 128 * 2 + t * 8 * 8,
        big,
        small,
    );

    let sg = SigmoidTopkConfig::lfm2_8b_a1b(dt)
        .load(&gpu, &cc)
        .unwrap_or_else(|e| panic!("{e}"));
    let bias = gpu.upload(&[0.0f32; 32]).unwrap_or_else(|e| panic!("{e}"));
    let lg32 = buf(&gpu, t * 32);
    let mut wt4 = gpu
        .alloc_zeros::<f32>(t * 4)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut ix4 = gpu
        .alloc_zeros::<u32>(t * 4)
        .unwrap_or_else(|e| panic!("{e}"));
    let big = cold(&gpu, &mut flush, || {
        sg.launch(&gpu, &lg32, &bias, &mut wt4, &mut ix4, t)
    });
    let lg321 = buf(&gpu, 32);
    let mut wt41 = gpu.alloc_zeros::<f32>(4).unwrap_or_else(|e| panic!("{e}"));
    let mut ix41 = gpu.alloc_zeros::<u32>(4).unwrap_or_else(|e| panic!("{e}"));
    let small = hot(&gpu, || {
        sg.launch(&gpu, &lg321, &bias, &mut wt41, &mut ix41, 1)
    });
    report("sigmoid_topk E=32 K=4", t * 32 * 2 + t * 4 * 8, big, small);

    let rc = RopeConfig::qwen3_30b_a3b(dt);
    let rp = rc.load(&gpu, &cc).unwrap_or_else(|e| panic!("{e}"));
    let (qb, kb) = (buf(&gpu, t * 32 * 128), buf(&gpu, t * 4 * 128));
    let (mut qo, mut ko) = (buf(&gpu, t * 32 * 128), buf(&gpu, t * 4 * 128));
    let pos = gpu
        .upload(&(0..t as i32).collect::<Vec<_>>())
        .unwrap_or_else(|e| panic!("{e}"));
    let big = cold(&gpu, &mut flush, || {
        rp.launch(&gpu, &qb, &kb, &pos, &mut qo, &mut ko, t)
    });
    let (q1, k1) = (buf(&gpu, 32 * 128), buf(&gpu, 4 * 128));
    let (mut qo1, mut ko1) = (buf(&gpu, 32 * 128), buf(&gpu, 4 * 128));
    let pos1 = gpu.upload(&[7i32]).unwrap_or_else(|e| panic!("{e}"));
    let small = hot(&gpu, || {
        rp.launch(&gpu, &q1, &k1, &pos1, &mut qo1, &mut ko1, 1)
    });
    report(
        "rope qwen3 (36 heads x 128)",
        2 * t * 36 * 128 * 2,
        big,
        small,
    );

    decode_ops(&gpu, &cc, &mut flush, copy_gbs);
}

/// Decode batch sizes the decode ops are timed at.
const DECODE_T: [usize; 4] = [1, 4, 16, 64];

/// Router-like indices: token t, slot k → expert (t·K + k) mod E (K distinct
/// experts per token, min(E, T·K) distinct in all: the most weight traffic);
/// with `shared_last`, the last slot is the stacked shared expert E−1.
fn spread_indices(t: usize, k: usize, e: usize, shared_last: bool) -> Vec<u32> {
    let routed = if shared_last { e - 1 } else { e };
    (0..t * k)
        .map(|s| {
            if shared_last && s % k == k - 1 {
                (e - 1) as u32
            } else {
                let (ti, ki) = (s / k, s % k);
                ((ti * (k - shared_last as usize) + ki) % routed) as u32
            }
        })
        .collect()
}

fn distinct(idx: &[u32]) -> usize {
    idx.iter().collect::<std::collections::BTreeSet<_>>().len()
}

/// The gathered-expert and attention kernels at the models' shapes.
fn decode_ops(gpu: &Gpu, cc: &Compiler, flush: &mut L2Flush, copy_gbs: f64) {
    let dt = DType::BF16;
    let line = |name: &str, t: usize, bytes: usize, us: f64| {
        let gbs = bytes as f64 / us / 1e3;
        println!(
            "{name:<40} T={t:>2}: {us:8.2} µs {gbs:6.0} GB/s ({:5.1}% of copy)",
            100.0 * gbs / copy_gbs
        );
    };
    for (model, sc, dc, shared_last) in [
        (
            "qwen3",
            MoeExpertSwigluConfig::qwen3_30b_a3b(dt),
            MoeExpertDownConfig::qwen3_30b_a3b(dt),
            false,
        ),
        (
            "glm47",
            MoeExpertSwigluConfig::glm47_flash(dt),
            MoeExpertDownConfig::glm47_flash(dt),
            true,
        ),
        (
            "lfm2",
            MoeExpertSwigluConfig::lfm2_8b_a1b(dt),
            MoeExpertDownConfig::lfm2_8b_a1b(dt),
            false,
        ),
    ] {
        let sw = sc.load(gpu, cc).unwrap_or_else(|e| panic!("{e}"));
        let dn = dc.load(gpu, cc).unwrap_or_else(|e| panic!("{e}"));
        let (h, i, e, k) = (sc.h, sc.i, sc.e, sc.k);
        let (wg, wu, wd) = (
            buf(gpu, e * i * h),
            buf(gpu, e * i * h),
            buf(gpu, e * h * i),
        );
        for t in DECODE_T {
            let idx = spread_indices(t, k, e, shared_last);
            let n_exp = distinct(&idx);
            let idxd = gpu.upload(&idx).unwrap_or_else(|e| panic!("{e}"));
            let x = buf(gpu, t * h);
            let mut hm = buf(gpu, t * k * i);
            let us = cold(gpu, flush, || {
                sw.launch(gpu, &x, &wg, &wu, &idxd, &mut hm, t)
            });
            let bytes = n_exp * 2 * i * h * 2 + t * h * 2 + t * k * 4 + t * k * i * 2;
            line(
                &format!("moe_expert_swiglu {model} ({n_exp} experts)"),
                t,
                bytes,
                us,
            );
            let wts = gpu
                .upload(&vec![0.25f32; t * k])
                .unwrap_or_else(|e| panic!("{e}"));
            let mut out = buf(gpu, t * h);
            let us = cold(gpu, flush, || {
                dn.launch(gpu, &hm, &wd, &idxd, &wts, None, &mut out, t)
            });
            let bytes = n_exp * h * i * 2 + t * k * i * 2 + t * k * 8 + t * h * 2;
            line(
                &format!("moe_expert_down {model} ({n_exp} experts)"),
                t,
                bytes,
                us,
            );
        }
    }
    let s_max = 4096;
    for (model, cfg) in [
        ("qwen3", DecodeAttentionConfig::qwen3_30b_a3b(s_max, dt)),
        ("glm47 MLA", DecodeAttentionConfig::glm47_flash(s_max, dt)),
        ("glm4-9b", DecodeAttentionConfig::glm4_9b(s_max, dt)),
        ("lfm2", DecodeAttentionConfig::lfm2_8b_a1b(s_max, dt)),
    ] {
        let op = cfg.load(gpu, cc).unwrap_or_else(|e| panic!("{e}"));
        let s = cfg.shape;
        let kc = buf(gpu, s.kvh * s_max * s.dqk);
        let vc = buf(gpu, s.kvh * s_max * s.dv);
        for t in DECODE_T {
            // A long context: the last T positions of the cache are the new tokens.
            let past = s_max - 64;
            let q = buf(gpu, t * s.qh * s.dqk);
            let mut out = buf(gpu, t * s.qh * s.dv);
            let us = cold(gpu, flush, || {
                op.launch(gpu, &q, &kc, &vc, &mut out, t, past)
            });
            let bytes = s.kvh * (past + t) * (s.dqk + s.dv) * 2 + t * s.qh * (s.dqk + s.dv) * 2;
            line(
                &format!("decode_attention {model} past={past}"),
                t,
                bytes,
                us,
            );
        }
    }
}
