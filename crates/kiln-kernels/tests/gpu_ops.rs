//! Every catalog op against its float64 reference on a real GPU.
//!
//! Fresh seeded random inputs per case (ChaCha8), several shapes per op
//! including T = 1, 3, 16, 37, 512, 4096 (the decode ops: 1, 3, 16, 37, 128),
//! adversarial inputs (large
//! magnitudes, negatives, exact ties for the routers), outputs pre-filled with
//! NaN, inputs checked bit-identical after the launch, tolerances from
//! `kiln_kernels::tolerance`. Run with `scripts/gpu-suite.sh`.

use kiln_cuda::{bf16, f16, Compiler, CudaSlice, Gpu, Sentinel};
use kiln_kernels::ops::attention::DecodeAttentionConfig;
use kiln_kernels::ops::moe_combine::MoeCombineConfig;
use kiln_kernels::ops::moe_expert::{MoeExpertDownConfig, MoeExpertSwigluConfig};
use kiln_kernels::ops::norm::{AddRmsNormConfig, RmsNormConfig};
use kiln_kernels::ops::rope::RopeConfig;
use kiln_kernels::ops::short_conv::ShortConvConfig;
use kiln_kernels::ops::swiglu::{SwigluConfig, SwigluPackedConfig};
use kiln_kernels::ops::topk::{SigmoidTopkConfig, SoftmaxTopkConfig};
use kiln_kernels::ops::ttt::{TttConfig, TttInputs, TttOutputs};
use kiln_kernels::reference::attention::AttentionShape;
use kiln_kernels::reference::moe_expert::DownInputs;
use kiln_kernels::reference::topk::{
    sigmoid_scores, sigmoid_weights, softmax_weights, SigmoidRouting,
};
use kiln_kernels::reference::{
    attention, moe_combine, moe_expert, norm, rope, short_conv, swiglu, topk, ttt,
};
use kiln_kernels::tolerance::{check_topk, Tolerance};
use kiln_kernels::{DType, Element, Op, OpConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const IGNORE: &str = "needs a CUDA GPU: run scripts/gpu-suite.sh";
const ROWS: [usize; 6] = [1, 3, 16, 37, 512, 4096];

/// The row counts to test: `ROWS`, or `KILN_GPU_ROWS=1,3,37` (compute-sanitizer
/// runs use a few small odd sizes: it slows kernels a hundredfold).
fn rows() -> Vec<usize> {
    match std::env::var("KILN_GPU_ROWS") {
        Ok(list) => list
            .split(',')
            .map(|v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("KILN_GPU_ROWS: bad number `{v}`"))
            })
            .collect(),
        Err(_) => ROWS.to_vec(),
    }
}

/// Row counts for the decode ops (gathered experts, attention), whose float64
/// references cost T·K·I·H or T·QH·S·D: `KILN_GPU_ROWS` or 1, 3, 16, 37, 128.
fn decode_rows() -> Vec<usize> {
    if std::env::var("KILN_GPU_ROWS").is_ok() {
        rows()
    } else {
        vec![1, 3, 16, 37, 128]
    }
}

/// Runs a row-independent reference over `t` rows in parallel chunks and
/// concatenates the results (`f(start, end)` computes rows `start..end`).
fn par_rows(t: usize, f: impl Fn(usize, usize) -> Vec<f64> + Sync) -> Vec<f64> {
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let chunk = t.div_ceil(threads).max(1);
    let parts: Vec<Vec<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..t)
            .step_by(chunk)
            .map(|start| {
                let f = &f;
                s.spawn(move || f(start, (start + chunk).min(t)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("reference thread panicked"))
            })
            .collect()
    });
    parts.concat()
}

struct Ctx {
    gpu: Gpu,
    compiler: Compiler,
}

fn ctx() -> Ctx {
    let gpu = Gpu::open(0).unwrap_or_else(|e| panic!("{e}"));
    let compiler = Compiler::new().unwrap_or_else(|e| panic!("{e}"));
    Ctx { gpu, compiler }
}

/// Input value distributions.
#[derive(Debug, Clone, Copy)]
enum Dist {
    /// Normal with this standard deviation.
    Normal(f64),
    /// Mostly normal, with 1 in 16 values scaled by ±`big` (outliers).
    Outliers(f64),
    /// Values drawn from a small set, so exact ties are frequent.
    Ties,
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller; rand_distr is not a dependency.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// `n` values representable in `dtype`.
fn values(rng: &mut ChaCha8Rng, n: usize, dist: Dist, dtype: DType) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let v = match dist {
                Dist::Normal(s) => s * normal(rng),
                Dist::Outliers(big) => {
                    let v = normal(rng);
                    if rng.gen_range(0..16) == 0 {
                        v * big
                    } else {
                        v
                    }
                }
                Dist::Ties => [-1.5, -0.25, 0.0, 0.5, 1.0, 2.0][rng.gen_range(0..6)],
            };
            dtype.round(v)
        })
        .collect()
}

fn up<S: Element>(c: &Ctx, v: &[f64]) -> CudaSlice<S> {
    let host: Vec<S> = v.iter().map(|&x| S::from_f64(x)).collect();
    c.gpu.upload(&host).unwrap_or_else(|e| panic!("{e}"))
}

fn up_f32(c: &Ctx, v: &[f64]) -> CudaSlice<f32> {
    up::<f32>(c, v)
}

fn down<S: Element + Default + Clone>(c: &Ctx, d: &CudaSlice<S>) -> Vec<f64> {
    c.gpu
        .download(d)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|x| x.to_f64())
        .collect()
}

/// An output buffer pre-filled with the NaN (or all-ones) sentinel.
fn poisoned<S: Sentinel + kiln_cuda::ValidAsZeroBits>(c: &Ctx, n: usize) -> CudaSlice<S> {
    let mut b = c.gpu.alloc_zeros::<S>(n).unwrap_or_else(|e| panic!("{e}"));
    c.gpu
        .fill_sentinel(&mut b)
        .unwrap_or_else(|e| panic!("{e}"));
    b
}

/// Inputs must be bit-identical after a launch (values compare exactly, NaN-free).
fn unchanged<S: Element + Default + Clone>(c: &Ctx, what: &str, d: &CudaSlice<S>, host: &[f64]) {
    assert_eq!(down(c, d), host, "{what} was modified by the kernel");
}

fn check(op: Op, dtype: DType, what: &str, reference: &[f64], got: &[f64]) {
    if let Err(e) = Tolerance::for_op(op, dtype).check(what, reference, got) {
        panic!("{e}");
    }
}

fn seed(tag: &str, t: usize) -> ChaCha8Rng {
    let h = tag.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    ChaCha8Rng::seed_from_u64(h ^ t as u64)
}

trait Elem: Element + Sentinel + kiln_cuda::ValidAsZeroBits + Default + Clone {}
impl Elem for f32 {}
impl Elem for f16 {}
impl Elem for bf16 {}

macro_rules! all_dtypes {
    ($name:ident, $body:ident) => {
        #[test]
        #[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
        fn $name() {
            let c = ctx();
            $body::<f32>(&c);
            $body::<f16>(&c);
            $body::<bf16>(&c);
        }
    };
}

// ---------------------------------------------------------------- rmsnorm

fn rmsnorm_cases<S: Elem>(c: &Ctx) {
    let dt = S::DTYPE;
    for (d, cast) in [
        (2048, true),
        (2048, false),
        (128, true),
        (64, true),
        (576, true),
        (4096, true),
    ] {
        let cfg = RmsNormConfig {
            d,
            eps: 1e-6,
            cast_before_scale: cast,
            dtype: dt,
        };
        let op = cfg
            .load(&c.gpu, &c.compiler)
            .unwrap_or_else(|e| panic!("{e}"));
        for &t in &rows() {
            if d == 4096 && t > 512 {
                continue;
            }
            let mut rng = seed("rmsnorm", t * 7919 + d);
            let dist = if t % 2 == 1 {
                Dist::Outliers(if dt == DType::F16 { 20.0 } else { 300.0 })
            } else {
                Dist::Normal(1.0)
            };
            let x = values(&mut rng, t * d, dist, dt);
            let w = values(&mut rng, d, Dist::Normal(1.0), dt);
            let (xd, wd) = (up::<S>(c, &x), up::<S>(c, &w));
            let mut out = poisoned::<S>(c, t * d);
            op.launch(&c.gpu, &xd, &wd, &mut out, t)
                .unwrap_or_else(|e| panic!("{e}"));
            let want = norm::rmsnorm(&x, &w, d, 1e-6, cast, dt);
            check(
                Op::RmsNorm,
                dt,
                &format!("rmsnorm D={d} T={t} {dt} out"),
                &want,
                &down(c, &out),
            );
            unchanged(c, "x", &xd, &x);
        }
    }
}
all_dtypes!(rmsnorm_matches_reference, rmsnorm_cases);

fn add_rmsnorm_cases<S: Elem>(c: &Ctx) {
    let dt = S::DTYPE;
    for d in [2048, 128, 4096] {
        let cfg = AddRmsNormConfig(RmsNormConfig::new(d, 1e-5, dt));
        let op = cfg
            .load(&c.gpu, &c.compiler)
            .unwrap_or_else(|e| panic!("{e}"));
        for &t in &rows() {
            if d == 4096 && t > 512 {
                continue;
            }
            let mut rng = seed("add_rmsnorm", t * 7919 + d);
            let x = values(&mut rng, t * d, Dist::Outliers(50.0), dt);
            let r = values(&mut rng, t * d, Dist::Normal(4.0), dt);
            let w = values(&mut rng, d, Dist::Normal(1.0), dt);
            let (xd, rd, wd) = (up::<S>(c, &x), up::<S>(c, &r), up::<S>(c, &w));
            let mut normed = poisoned::<S>(c, t * d);
            let mut new_res = poisoned::<S>(c, t * d);
            op.launch(&c.gpu, &xd, &rd, &wd, &mut normed, &mut new_res, t)
                .unwrap_or_else(|e| panic!("{e}"));
            let (want_n, want_r) = norm::add_rmsnorm(&x, &r, &w, d, 1e-5, true, dt);
            // The residual sum has one rounding in both: it must match exactly.
            assert_eq!(
                down(c, &new_res),
                want_r,
                "add_rmsnorm D={d} T={t} {dt} new_residual"
            );
            check(
                Op::AddRmsNorm,
                dt,
                &format!("add_rmsnorm D={d} T={t} {dt} normed"),
                &want_n,
                &down(c, &normed),
            );
            unchanged(c, "x", &xd, &x);
            unchanged(c, "residual", &rd, &r);
        }
    }
}
all_dtypes!(add_rmsnorm_matches_reference, add_rmsnorm_cases);

// ---------------------------------------------------------------- swiglu

fn swiglu_cases<S: Elem>(c: &Ctx) {
    let dt = S::DTYPE;
    for (i, in_dtype) in [(1536, true), (768, false), (1792, true), (8, true)] {
        let cfg = SwigluConfig {
            i,
            silu_in_dtype: in_dtype,
            dtype: dt,
        };
        let op = cfg
            .load(&c.gpu, &c.compiler)
            .unwrap_or_else(|e| panic!("{e}"));
        let packed = SwigluPackedConfig(cfg)
            .load(&c.gpu, &c.compiler)
            .unwrap_or_else(|e| panic!("{e}"));
        for &t in &rows() {
            let mut rng = seed("swiglu", t * 7919 + i);
            let g = values(&mut rng, t * i, Dist::Outliers(30.0), dt);
            let u = values(&mut rng, t * i, Dist::Normal(2.0), dt);
            let want = swiglu::swiglu(&g, &u, in_dtype, dt);
            let (gd, ud) = (up::<S>(c, &g), up::<S>(c, &u));
            let mut out = poisoned::<S>(c, t * i);
            op.launch(&c.gpu, &gd, &ud, &mut out, t)
                .unwrap_or_else(|e| panic!("{e}"));
            check(
                Op::Swiglu,
                dt,
                &format!("swiglu I={i} T={t} {dt}"),
                &want,
                &down(c, &out),
            );
            unchanged(c, "gate", &gd, &g);
            // Packed layout: the same values interleaved per row.
            let gu: Vec<f64> = (0..t)
                .flat_map(|r| {
                    g[r * i..(r + 1) * i]
                        .iter()
                        .chain(&u[r * i..(r + 1) * i])
                        .copied()
                        .collect::<Vec<_>>()
                })
                .collect();
            let gud = up::<S>(c, &gu);
            let mut out2 = poisoned::<S>(c, t * i);
            packed
                .launch(&c.gpu, &gud, &mut out2, t)
                .unwrap_or_else(|e| panic!("{e}"));
            check(
                Op::SwigluPacked,
                dt,
                &format!("swiglu_packed I={i} T={t} {dt}"),
                &want,
                &down(c, &out2),
            );
            unchanged(c, "gate_up", &gud, &gu);
        }
    }
}
all_dtypes!(swiglu_matches_reference, swiglu_cases);

// ---------------------------------------------------------------- moe_combine

fn moe_combine_cases<S: Elem>(c: &Ctx) {
    let dt = S::DTYPE;
    for (d, k, shared) in [
        (2048, 4, true),
        (2048, 8, false),
        (4096, 2, false),
        (8, 1, true),
    ] {
        let cfg = MoeCombineConfig {
            d,
            k,
            has_shared: shared,
            dtype: dt,
        };
        let op = cfg
            .load(&c.gpu, &c.compiler)
            .unwrap_or_else(|e| panic!("{e}"));
        for &t in &rows() {
            let mut rng = seed("moe_combine", t * 7919 + d + k);
            let e = values(&mut rng, t * k * d, Dist::Outliers(40.0), dt);
            let w: Vec<f64> = (0..t * k)
                .map(|_| rng.gen_range(-0.5f32..1.8f32) as f64)
                .collect();
            let s = values(&mut rng, t * d, Dist::Normal(1.0), dt);
            let (ed, wd, sd) = (up::<S>(c, &e), up_f32(c, &w), up::<S>(c, &s));
            let mut out = poisoned::<S>(c, t * d);
            op.launch(&c.gpu, &ed, &wd, shared.then_some(&sd), &mut out, t)
                .unwrap_or_else(|e| panic!("{e}"));
            let want = moe_combine::moe_combine(&e, &w, shared.then_some(&s[..]), d, k, dt);
            check(
                Op::MoeCombine,
                dt,
                &format!("moe_combine D={d} K={k} T={t} {dt}"),
                &want,
                &down(c, &out),
            );
            unchanged(c, "expert_out", &ed, &e);
        }
    }
}
all_dtypes!(moe_combine_matches_reference, moe_combine_cases);

// ---------------------------------------------------------------- routers

fn softmax_topk_cases<S: Elem>(c: &Ctx) {
    let dt = S::DTYPE;
    for (e, k, renorm) in [
        (128, 8, true),
        (8, 2, true),
        (8, 2, false),
        (64, 4, true),
        (200, 32, true),
    ] {
        let cfg = SoftmaxTopkConfig {
            e,
            k,
            renorm,
            dtype: dt,
        };
        let op = cfg
            .load(&c.gpu, &c.compiler)
            .unwrap_or_else(|e| panic!("{e}"));
        for &t in &rows() {
            for dist in [Dist::Normal(3.0), Dist::Ties, Dist::Outliers(30.0)] {
                let mut rng = seed("softmax_topk", t * 7919 + e + k);
                let logits = values(&mut rng, t * e, dist, dt);
                let ld = up::<S>(c, &logits);
                let mut w = poisoned::<f32>(c, t * k);
                let mut idx = poisoned::<u32>(c, t * k);
                op.launch(&c.gpu, &ld, &mut w, &mut idx, t)
                    .unwrap_or_else(|e| panic!("{e}"));
                let r = topk::softmax_topk(&logits, e, k, renorm);
                let gw: Vec<f32> = c.gpu.download(&w).unwrap_or_else(|e| panic!("{e}"));
                let gi: Vec<u32> = c.gpu.download(&idx).unwrap_or_else(|e| panic!("{e}"));
                let scores = r.scores.clone();
                let wf = |row: usize, chosen: &[u32]| {
                    softmax_weights(&scores[row * e..(row + 1) * e], chosen, renorm)
                };
                let tie = 4.0 * f32::EPSILON as f64;
                if let Err(msg) =
                    check_topk(&r, &gw, &gi, e, tie, Tolerance::for_dtype(DType::F32), &wf)
                {
                    panic!("softmax_topk E={e} K={k} T={t} {dt} {dist:?}: {msg}");
                }
                unchanged(c, "logits", &ld, &logits);
            }
        }
    }
}
all_dtypes!(softmax_topk_matches_reference, softmax_topk_cases);

fn sigmoid_topk_cases<S: Elem>(c: &Ctx) {
    let dt = S::DTYPE;
    let configs = [
        // GLM-4.7-Flash math (in every logits dtype), LFM2, DeepSeek-V3 grouped, small.
        SigmoidRouting {
            e: 64,
            k: 4,
            n_group: 1,
            topk_group: 1,
            norm_eps: 1e-20,
            scale: 1.8,
            sigmoid_in_dtype: false,
            dtype: dt,
        },
        SigmoidRouting {
            e: 32,
            k: 4,
            n_group: 1,
            topk_group: 1,
            norm_eps: 1e-6,
            scale: 1.0,
            sigmoid_in_dtype: true,
            dtype: dt,
        },
        SigmoidRouting {
            e: 256,
            k: 8,
            n_group: 8,
            topk_group: 4,
            norm_eps: 1e-20,
            scale: 2.5,
            sigmoid_in_dtype: false,
            dtype: dt,
        },
        SigmoidRouting {
            e: 8,
            k: 2,
            n_group: 4,
            topk_group: 2,
            norm_eps: 1e-20,
            scale: 1.0,
            sigmoid_in_dtype: false,
            dtype: dt,
        },
    ];
    for routing in configs {
        let cfg = SigmoidTopkConfig { routing };
        let op = cfg
            .load(&c.gpu, &c.compiler)
            .unwrap_or_else(|e| panic!("{e}"));
        let e = routing.e;
        let k = routing.k;
        for &t in &rows() {
            for dist in [Dist::Normal(2.0), Dist::Ties, Dist::Outliers(20.0)] {
                let mut rng = seed("sigmoid_topk", t * 7919 + e + k);
                let logits = values(&mut rng, t * e, dist, dt);
                // Ties: zero bias keeps exact ties exact; otherwise a random f32 bias.
                let bias: Vec<f64> = match dist {
                    Dist::Ties => vec![0.0; e],
                    _ => (0..e)
                        .map(|_| rng.gen_range(-0.3f32..0.3f32) as f64)
                        .collect(),
                };
                let (ld, bd) = (up::<S>(c, &logits), up_f32(c, &bias));
                let mut w = poisoned::<f32>(c, t * k);
                let mut idx = poisoned::<u32>(c, t * k);
                op.launch(&c.gpu, &ld, &bd, &mut w, &mut idx, t)
                    .unwrap_or_else(|e| panic!("{e}"));
                let r = topk::sigmoid_topk(&logits, &bias, &routing);
                let gw: Vec<f32> = c.gpu.download(&w).unwrap_or_else(|e| panic!("{e}"));
                let gi: Vec<u32> = c.gpu.download(&idx).unwrap_or_else(|e| panic!("{e}"));
                let wf = |row: usize, chosen: &[u32]| {
                    let s = sigmoid_scores(&logits[row * e..(row + 1) * e], &routing);
                    sigmoid_weights(&s, chosen, &routing)
                };
                let (tie, wtol) = if routing.sigmoid_in_dtype {
                    (Tolerance::for_dtype(dt).rtol, Tolerance::for_dtype(dt))
                } else {
                    (4.0 * f32::EPSILON as f64, Tolerance::for_dtype(DType::F32))
                };
                if let Err(msg) = check_topk(&r, &gw, &gi, e, tie, wtol, &wf) {
                    panic!("sigmoid_topk {routing:?} T={t} {dist:?}: {msg}");
                }
                unchanged(c, "logits", &ld, &logits);
                unchanged(c, "bias", &bd, &bias);
            }
        }
    }
}
all_dtypes!(sigmoid_topk_matches_reference, sigmoid_topk_cases);

// ---------------------------------------------------------------- rope

fn rope_cases<S: Elem>(c: &Ctx) {
    let dt = S::DTYPE;
    let mut glm_q = RopeConfig::glm47_flash(dt);
    glm_q.shape.kh = 0;
    glm_q.shape.head_dim = 256;
    glm_q.shape.rot_offset = 192;
    let mut partial = RopeConfig::lfm2_8b_a1b(dt);
    partial.shape.rot_dim = 32;
    partial.shape.rot_offset = 16;
    partial.shape.hf_rounding = false;
    for cfg in [
        RopeConfig::qwen3_30b_a3b(dt),
        RopeConfig::lfm2_8b_a1b(dt),
        RopeConfig::glm47_flash(dt),
        glm_q,
        partial,
    ] {
        let op = cfg
            .load(&c.gpu, &c.compiler)
            .unwrap_or_else(|e| panic!("{e}"));
        let s = cfg.shape;
        for &t in &rows() {
            let mut rng = seed("rope", t * 7919 + s.head_dim + s.rot_offset);
            let q = values(&mut rng, t * s.qh * s.head_dim, Dist::Outliers(10.0), dt);
            let k = values(&mut rng, t * s.kh * s.head_dim, Dist::Normal(3.0), dt);
            // Positions from 0 up to long contexts.
            let pos: Vec<i64> = (0..t)
                .map(|i| if i == 0 { 0 } else { rng.gen_range(0..131_072) })
                .collect();
            let pos32: Vec<i32> = pos.iter().map(|&p| p as i32).collect();
            let (qd, kd) = (up::<S>(c, &q), up::<S>(c, &k));
            let pd = c.gpu.upload(&pos32).unwrap_or_else(|e| panic!("{e}"));
            let mut qo = poisoned::<S>(c, q.len());
            let mut ko = poisoned::<S>(c, k.len());
            op.launch(&c.gpu, &qd, &kd, &pd, &mut qo, &mut ko, t)
                .unwrap_or_else(|e| panic!("{e}"));
            let wq = rope::rope(&q, s.qh, &pos, &s, dt);
            let wk = rope::rope(&k, s.kh, &pos, &s, dt);
            check(
                Op::Rope,
                dt,
                &format!("rope {s:?} T={t} {dt} q"),
                &wq,
                &down(c, &qo),
            );
            if s.kh > 0 {
                check(
                    Op::Rope,
                    dt,
                    &format!("rope {s:?} T={t} {dt} k"),
                    &wk,
                    &down(c, &ko),
                );
            }
            unchanged(c, "q", &qd, &q);
        }
    }
}
all_dtypes!(rope_matches_reference, rope_cases);

// ---------------------------------------------------------------- ttt

fn ttt_cases<S: Elem>(c: &Ctx) {
    let dt = S::DTYPE;
    for (f, h) in [(64, 4), (32, 3), (128, 2)] {
        let cfg = TttConfig {
            f,
            h,
            ln_eps: 1e-6,
            dtype: dt,
        };
        let op = cfg
            .load(&c.gpu, &c.compiler)
            .unwrap_or_else(|e| panic!("{e}"));
        for &t in &[1usize, 3, 16, 37, 512] {
            let mut rng = seed("ttt", t * 7919 + f);
            let xq = values(&mut rng, t * f, Dist::Normal(1.0), dt);
            let xk = values(&mut rng, t * f, Dist::Normal(1.0), dt);
            let xv = values(&mut rng, t * f, Dist::Normal(1.0), dt);
            let f32v = |rng: &mut ChaCha8Rng, n: usize, s: f64| {
                values(rng, n, Dist::Normal(s), DType::F32)
            };
            let w = f32v(&mut rng, t * f * f, 1.0 / (f as f64).sqrt());
            let b = f32v(&mut rng, t * f, 0.1);
            let wg = f32v(&mut rng, t * f * f, 0.01);
            let bg = f32v(&mut rng, t * f, 0.01);
            let lnw = values(&mut rng, h * f, Dist::Normal(1.0), dt)
                .iter()
                .map(|v| dt.round(1.0 + 0.1 * v))
                .collect::<Vec<_>>();
            let lnb = values(&mut rng, h * f, Dist::Normal(0.1), dt);
            let lr: Vec<f64> = (0..t)
                .map(|_| rng.gen_range(0.001f32..0.1f32) as f64)
                .collect();
            let ti: Vec<f64> = (0..t)
                .map(|_| 1.0 / rng.gen_range(1..=16) as f32 as f64)
                .collect();
            let last: Vec<i32> = (0..t).map(|i| (i % 3 == 0) as i32).collect();
            let d = (
                up::<S>(c, &xq),
                up::<S>(c, &xk),
                up::<S>(c, &xv),
                up_f32(c, &w),
                up_f32(c, &b),
                up_f32(c, &wg),
                up_f32(c, &bg),
                up::<S>(c, &lnw),
                up::<S>(c, &lnb),
                up_f32(c, &lr),
                up_f32(c, &ti),
            );
            let lastd = c.gpu.upload(&last).unwrap_or_else(|e| panic!("{e}"));
            let inputs = TttInputs {
                xq: &d.0,
                xk: &d.1,
                xv: &d.2,
                w: &d.3,
                b: &d.4,
                w_grad: &d.5,
                b_grad: &d.6,
                ln_w: &d.7,
                ln_b: &d.8,
                lr: &d.9,
                token_idx: &d.10,
                last_in_mb: &lastd,
            };
            let (mut out, mut wo, mut bo, mut wgo, mut bgo) = (
                poisoned::<S>(c, t * f),
                poisoned::<f32>(c, t * f * f),
                poisoned::<f32>(c, t * f),
                poisoned::<f32>(c, t * f * f),
                poisoned::<f32>(c, t * f),
            );
            let mut outputs = TttOutputs {
                out: &mut out,
                w: &mut wo,
                b: &mut bo,
                w_grad: &mut wgo,
                b_grad: &mut bgo,
            };
            op.launch(&c.gpu, &inputs, &mut outputs, t)
                .unwrap_or_else(|e| panic!("{e}"));
            let (mut ro, mut rw, mut rb, mut rwg, mut rbg) =
                (vec![], vec![], vec![], vec![], vec![]);
            for r in 0..t {
                let hh = r % h;
                let row = ttt::TttRow {
                    xq: &xq[r * f..(r + 1) * f],
                    xk: &xk[r * f..(r + 1) * f],
                    xv: &xv[r * f..(r + 1) * f],
                    w: &w[r * f * f..(r + 1) * f * f],
                    b: &b[r * f..(r + 1) * f],
                    w_grad: &wg[r * f * f..(r + 1) * f * f],
                    b_grad: &bg[r * f..(r + 1) * f],
                    ln_w: &lnw[hh * f..(hh + 1) * f],
                    ln_b: &lnb[hh * f..(hh + 1) * f],
                    lr: lr[r],
                    token_idx: ti[r],
                    last_in_mb: last[r] != 0,
                };
                let o = ttt::ttt_row(&row, 1e-6);
                ro.extend(o.out.iter().map(|v| dt.round(*v)));
                rw.extend(o.w);
                rb.extend(o.b);
                rwg.extend(o.w_grad);
                rbg.extend(o.b_grad);
            }
            let tag = format!("ttt F={f} H={h} T={t} {dt}");
            check(
                Op::TttLinearDecode,
                dt,
                &format!("{tag} out"),
                &ro,
                &down(c, &out),
            );
            let f32tol = |what: &str, r: &[f64], g: &[f64]| {
                check(
                    Op::TttLinearDecode,
                    DType::F32,
                    &format!("{tag} {what}"),
                    r,
                    g,
                )
            };
            f32tol("W_out", &rw, &down(c, &wo));
            f32tol("b_out", &rb, &down(c, &bo));
            f32tol("W_grad_out", &rwg, &down(c, &wgo));
            f32tol("b_grad_out", &rbg, &down(c, &bgo));
            unchanged(c, "W", &d.3, &w);
            unchanged(c, "W_grad", &d.5, &wg);
        }
    }
}
all_dtypes!(ttt_linear_decode_matches_reference, ttt_cases);

// ---------------------------------------------------------------- gathered experts

/// Indices for `t` tokens of `k` slots over `e` experts: random with repeats,
/// about 1 slot in 8 out of range (E, E+1 or u32::MAX; the last slot of token 0
/// always on odd T), and, with `shared_last`, the last slot always the stacked
/// shared expert E-1 (GLM-4.7-Flash).
fn expert_indices(
    rng: &mut ChaCha8Rng,
    t: usize,
    k: usize,
    e: usize,
    shared_last: bool,
) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..t * k)
        .map(|_| match rng.gen_range(0..8) {
            0 => [e as u32, e as u32 + 1, u32::MAX][rng.gen_range(0..3)],
            _ => rng.gen_range(0..e as u32),
        })
        .collect();
    if shared_last {
        for ti in 0..t {
            idx[ti * k + k - 1] = e as u32 - 1;
        }
    }
    if t % 2 == 1 {
        idx[k - 1 - shared_last as usize] = u32::MAX;
    }
    idx
}

/// The expert cases: the models' H, I and K with E cut to a few experts (the
/// kernels only bound-check indices against E; full-E weights would take GBs of
/// host memory), and a small shape with all 128 of Qwen3's experts.
/// `(label, swiglu, down, shared expert stacked last)`.
fn expert_cases(
    dt: DType,
) -> Vec<(
    &'static str,
    MoeExpertSwigluConfig,
    MoeExpertDownConfig,
    bool,
)> {
    let cut = |mut s: MoeExpertSwigluConfig, mut d: MoeExpertDownConfig, e: usize| {
        s.e = e;
        d.e = e;
        (s, d)
    };
    let (qs, qd) = cut(
        MoeExpertSwigluConfig::qwen3_30b_a3b(dt),
        MoeExpertDownConfig::qwen3_30b_a3b(dt),
        12,
    );
    let (gs, gd) = cut(
        MoeExpertSwigluConfig::glm47_flash(dt),
        MoeExpertDownConfig::glm47_flash(dt),
        9,
    );
    let (ls, ld) = cut(
        MoeExpertSwigluConfig::lfm2_8b_a1b(dt),
        MoeExpertDownConfig::lfm2_8b_a1b(dt),
        6,
    );
    let sep_shared = MoeExpertDownConfig {
        has_shared: true,
        ..MoeExpertDownConfig::new(2048, 1536, 8, 4, dt)
    };
    let small_s = MoeExpertSwigluConfig {
        silu_in_dtype: false,
        ..MoeExpertSwigluConfig::new(256, 24, 128, 8, dt)
    };
    let small_d = MoeExpertDownConfig::new(256, 24, 128, 8, dt);
    let odd_i = MoeExpertSwigluConfig::new(512, 13, 5, 3, dt);
    vec![
        ("qwen3 (E cut to 12)", qs, qd, false),
        ("glm47 stacked shared (E cut to 8+1)", gs, gd, true),
        ("lfm2 (E cut to 6)", ls, ld, false),
        (
            "glm47 separate shared",
            MoeExpertSwigluConfig::new(2048, 1536, 8, 4, dt),
            sep_shared,
            false,
        ),
        ("small, all 128 experts", small_s, small_d, false),
        (
            "odd I=13 (down at I=16)",
            odd_i,
            MoeExpertDownConfig::new(512, 16, 5, 3, dt),
            false,
        ),
    ]
}

fn moe_expert_cases<S: Elem>(c: &Ctx) {
    let dt = S::DTYPE;
    // f16 keeps dot products well inside its range with smaller outliers.
    let big = if dt == DType::F16 { 8.0 } else { 30.0 };
    for (label, sc, dc, shared_last) in expert_cases(dt) {
        let sw = sc
            .load(&c.gpu, &c.compiler)
            .unwrap_or_else(|e| panic!("{e}"));
        let dn = dc
            .load(&c.gpu, &c.compiler)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut rng = seed("moe_expert weights", sc.h + sc.i + sc.e);
        let (h, i, e) = (sc.h, sc.i, sc.e);
        let wg = values(&mut rng, e * i * h, Dist::Normal((h as f64).powf(-0.5)), dt);
        let wu = values(&mut rng, e * i * h, Dist::Normal((h as f64).powf(-0.5)), dt);
        let (dh, di) = (dc.h, dc.i);
        let wd = values(
            &mut rng,
            e * dh * di,
            Dist::Normal((di as f64).powf(-0.5)),
            dt,
        );
        let (wgd, wud, wdd) = (up::<S>(c, &wg), up::<S>(c, &wu), up::<S>(c, &wd));
        for &t in &decode_rows() {
            let tag = format!("{label} T={t} {dt}");
            let mut rng = seed("moe_expert", t * 7919 + h + i);
            // gate/up: x with outliers on odd T (saturated and strongly negative gates).
            let dist = if t % 2 == 1 {
                Dist::Outliers(big)
            } else {
                Dist::Normal(1.0)
            };
            let x = values(&mut rng, t * h, dist, dt);
            let idx = expert_indices(&mut rng, t, sc.k, e, shared_last);
            let (xd, idxd) = (
                up::<S>(c, &x),
                c.gpu.upload(&idx).unwrap_or_else(|e| panic!("{e}")),
            );
            let mut hout = poisoned::<S>(c, t * sc.k * i);
            sw.launch(&c.gpu, &xd, &wgd, &wud, &idxd, &mut hout, t)
                .unwrap_or_else(|e| panic!("{e}"));
            let dims = sc.dims();
            let want = par_rows(t, |a, b| {
                moe_expert::moe_expert_swiglu(
                    &x[a * h..b * h],
                    &wg,
                    &wu,
                    &idx[a * sc.k..b * sc.k],
                    dims,
                    sc.silu_in_dtype,
                    dt,
                )
            });
            let got = down(c, &hout);
            check(
                Op::MoeExpertSwiglu,
                dt,
                &format!("moe_expert_swiglu {tag}"),
                &want,
                &got,
            );
            // Empty slots are exact zeros, not merely small.
            for (s, &ix) in idx.iter().enumerate() {
                if ix as usize >= e {
                    assert!(
                        got[s * i..(s + 1) * i].iter().all(|v| *v == 0.0),
                        "{tag}: slot {s} not zero"
                    );
                }
            }
            unchanged(c, "x", &xd, &x);
            assert_eq!(
                c.gpu.download(&idxd).unwrap_or_else(|e| panic!("{e}")),
                idx,
                "indices modified"
            );

            // down + combine: its own activations, weights in [-0.5, 1.8) (GLM scales by 1.8), the
            // stacked shared slot weighted 1.
            assert_eq!((dc.k, dc.e), (sc.k, e), "cases pair the ops at one K and E");
            let hin = values(&mut rng, t * dc.k * di, dist, dt);
            let w: Vec<f64> = (0..t * dc.k)
                .map(|s| {
                    if shared_last && s % dc.k == dc.k - 1 {
                        1.0
                    } else {
                        rng.gen_range(-0.5f32..1.8f32) as f64
                    }
                })
                .collect();
            let sh = values(&mut rng, t * dh, Dist::Normal(1.0), dt);
            let (hd, wtd, shd) = (up::<S>(c, &hin), up_f32(c, &w), up::<S>(c, &sh));
            let mut out = poisoned::<S>(c, t * dh);
            dn.launch(
                &c.gpu,
                &hd,
                &wdd,
                &idxd,
                &wtd,
                dc.has_shared.then_some(&shd),
                &mut out,
                t,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let ddims = dc.dims();
            let want = par_rows(t, |a, b| {
                let inputs = DownInputs {
                    h: &hin[a * dc.k * di..b * dc.k * di],
                    w_down: &wd,
                    indices: &idx[a * dc.k..b * dc.k],
                    weights: &w[a * dc.k..b * dc.k],
                    shared: dc.has_shared.then(|| &sh[a * dh..b * dh]),
                };
                moe_expert::moe_expert_down(&inputs, ddims, dc.weight_in_dtype, dt)
            });
            check(
                Op::MoeExpertDown,
                dt,
                &format!("moe_expert_down {tag}"),
                &want,
                &down(c, &out),
            );
            unchanged(c, "h", &hd, &hin);
            unchanged(c, "w_down", &wdd, &wd);
        }
        unchanged(c, "w_gate", &wgd, &wg);
    }
}
all_dtypes!(moe_expert_ops_match_reference, moe_expert_cases);

/// The two halves chained on the GPU equal the HF-style MLP of each slot's
/// expert, weighted and summed (the reference chain), at Qwen3's dims.
fn moe_expert_chain_cases<S: Elem>(c: &Ctx) {
    let dt = S::DTYPE;
    let mut sc = MoeExpertSwigluConfig::qwen3_30b_a3b(dt);
    let mut dc = MoeExpertDownConfig::qwen3_30b_a3b(dt);
    sc.e = 10;
    dc.e = 10;
    let sw = sc
        .load(&c.gpu, &c.compiler)
        .unwrap_or_else(|e| panic!("{e}"));
    let dn = dc
        .load(&c.gpu, &c.compiler)
        .unwrap_or_else(|e| panic!("{e}"));
    let (h, i, e, k) = (sc.h, sc.i, sc.e, sc.k);
    let mut rng = seed("moe_expert chain", h);
    let wg = values(&mut rng, e * i * h, Dist::Normal((h as f64).powf(-0.5)), dt);
    let wu = values(&mut rng, e * i * h, Dist::Normal((h as f64).powf(-0.5)), dt);
    let wd = values(&mut rng, e * h * i, Dist::Normal((i as f64).powf(-0.5)), dt);
    let (wgd, wud, wdd) = (up::<S>(c, &wg), up::<S>(c, &wu), up::<S>(c, &wd));
    for t in [1usize, 4, 16] {
        let x = values(&mut rng, t * h, Dist::Normal(1.0), dt);
        let idx = expert_indices(&mut rng, t, k, e, false);
        let w: Vec<f64> = (0..t * k)
            .map(|_| rng.gen_range(0.0f32..0.3f32) as f64)
            .collect();
        let (xd, idxd, wtd) = (
            up::<S>(c, &x),
            c.gpu.upload(&idx).unwrap_or_else(|e| panic!("{e}")),
            up_f32(c, &w),
        );
        let mut hmid = poisoned::<S>(c, t * k * i);
        let mut out = poisoned::<S>(c, t * h);
        sw.launch(&c.gpu, &xd, &wgd, &wud, &idxd, &mut hmid, t)
            .unwrap_or_else(|e| panic!("{e}"));
        dn.launch(&c.gpu, &hmid, &wdd, &idxd, &wtd, None, &mut out, t)
            .unwrap_or_else(|e| panic!("{e}"));
        // The reference chain from the GPU's own intermediate isolates the down half;
        // the intermediate itself is checked against the reference above.
        let hm = down(c, &hmid);
        let want = moe_expert::moe_expert_down(
            &DownInputs {
                h: &hm,
                w_down: &wd,
                indices: &idx,
                weights: &w,
                shared: None,
            },
            dc.dims(),
            dc.weight_in_dtype,
            dt,
        );
        let href =
            moe_expert::moe_expert_swiglu(&x, &wg, &wu, &idx, sc.dims(), sc.silu_in_dtype, dt);
        check(
            Op::MoeExpertSwiglu,
            dt,
            &format!("chain T={t} {dt} h"),
            &href,
            &hm,
        );
        check(
            Op::MoeExpertDown,
            dt,
            &format!("chain T={t} {dt} out"),
            &want,
            &down(c, &out),
        );
    }
}
all_dtypes!(moe_expert_chain_matches_reference, moe_expert_chain_cases);

// ---------------------------------------------------------------- decode attention

fn decode_attention_cases<S: Elem>(c: &Ctx) {
    let dt = S::DTYPE;
    let mut absorbed = DecodeAttentionConfig::glm47_flash(512, dt);
    absorbed.shape.kvh = 1;
    absorbed.shape.dqk = 576;
    absorbed.shape.dv = 512;
    let odd = DecodeAttentionConfig {
        shape: AttentionShape {
            qh: 6,
            kvh: 2,
            dqk: 24,
            dv: 40,
            s_max: 200,
            scale: 0.3,
        },
        dtype: dt,
    };
    let big = if dt == DType::F16 { 4.0 } else { 12.0 };
    for cfg in [
        DecodeAttentionConfig::qwen3_30b_a3b(4096, dt),
        DecodeAttentionConfig::qwen3_30b_a3b(512, dt),
        DecodeAttentionConfig::glm47_flash(512, dt),
        DecodeAttentionConfig::glm4_9b(512, dt),
        DecodeAttentionConfig::lfm2_8b_a1b(512, dt),
        absorbed,
        odd,
    ] {
        let op = cfg
            .load(&c.gpu, &c.compiler)
            .unwrap_or_else(|e| panic!("{e}"));
        let s = cfg.shape;
        for &t in &decode_rows() {
            if t > s.s_max {
                continue;
            }
            let mut rng = seed("decode_attention", t * 7919 + s.dqk + s.s_max);
            // Contexts: empty, random, and a full cache.
            for past in [0, rng.gen_range(0..=s.s_max - t), s.s_max - t] {
                let tag = format!("decode_attention {s:?} T={t} past={past} {dt}");
                // Odd T: outliers make the softmax peaked; else ties in k make exact score ties.
                let (qdist, kdist) = if t % 2 == 1 {
                    (Dist::Outliers(big), Dist::Normal(1.0))
                } else {
                    (Dist::Normal(1.0), Dist::Ties)
                };
                let q = values(&mut rng, t * s.qh * s.dqk, qdist, dt);
                let mut kc = values(&mut rng, s.kvh * s.s_max * s.dqk, kdist, dt);
                let mut vc = values(&mut rng, s.kvh * s.s_max * s.dv, Dist::Outliers(big), dt);
                // Positions past the last token hold NaN: reading them poisons the output.
                for g in 0..s.kvh {
                    for p in past + t..s.s_max {
                        kc[(g * s.s_max + p) * s.dqk..(g * s.s_max + p + 1) * s.dqk].fill(f64::NAN);
                        vc[(g * s.s_max + p) * s.dv..(g * s.s_max + p + 1) * s.dv].fill(f64::NAN);
                    }
                }
                let (qd, kd, vd) = (up::<S>(c, &q), up::<S>(c, &kc), up::<S>(c, &vc));
                let k_before = c.gpu.download(&kd).unwrap_or_else(|e| panic!("{e}"));
                let mut out = poisoned::<S>(c, t * s.qh * s.dv);
                op.launch(&c.gpu, &qd, &kd, &vd, &mut out, t, past)
                    .unwrap_or_else(|e| panic!("{e}"));
                let per_row = s.qh * s.dqk;
                let want = par_rows(t, |a, b| {
                    attention::decode_attention(
                        &q[a * per_row..b * per_row],
                        &kc,
                        &vc,
                        past + a,
                        &s,
                        dt,
                    )
                });
                check(Op::DecodeAttention, dt, &tag, &want, &down(c, &out));
                unchanged(c, "q", &qd, &q);
                let k_after = c.gpu.download(&kd).unwrap_or_else(|e| panic!("{e}"));
                assert!(
                    k_before
                        .iter()
                        .zip(&k_after)
                        .all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits()),
                    "{tag}: k_cache was modified"
                );
            }
        }
    }
}
all_dtypes!(decode_attention_matches_reference, decode_attention_cases);

// ---------------------------------------------------------------- short_conv

/// LFM2's convolution at its shape and two odd ones, every row count; then a
/// decode chain (one launch per token) against one call over all the rows,
/// which checks the in-place state carries exactly what the reference keeps.
fn short_conv_cases<S: Elem>(c: &Ctx) {
    let dt = S::DTYPE;
    for (d, l) in [(2048, 3), (200, 2), (72, 5)] {
        let cfg = ShortConvConfig::new(d, l, dt);
        let op = cfg
            .load(&c.gpu, &c.compiler)
            .unwrap_or_else(|e| panic!("{e}"));
        for &t in &rows() {
            let tag = format!("short_conv D={d} L={l} T={t} {dt}");
            let mut rng = seed("short_conv", t * 7919 + d + l);
            // Outliers of 4σ keep C·conv(B·x) inside f16's range.
            let bcx = values(&mut rng, t * 3 * d, Dist::Outliers(4.0), dt);
            let w = values(&mut rng, d * l, Dist::Normal(0.5), dt);
            let state0 = values(&mut rng, (l - 1) * d, Dist::Normal(1.0), dt);
            let (want, want_state) = short_conv::short_conv(&bcx, &w, &state0, cfg.shape, dt);
            let (bd, wd) = (up::<S>(c, &bcx), up::<S>(c, &w));
            let mut state = up::<S>(c, &state0);
            let mut out = poisoned::<S>(c, t * d);
            op.launch(&c.gpu, &bd, &wd, &mut state, &mut out, t)
                .unwrap_or_else(|e| panic!("{e}"));
            check(Op::ShortConv, dt, &tag, &want, &down(c, &out));
            // The state is B ⊙ x rounded once: exact.
            assert_eq!(down(c, &state), want_state, "{tag}: state");
            unchanged(c, "bcx", &bd, &bcx);
            unchanged(c, "w", &wd, &w);
        }
        // Decode: 7 launches of one row continue from each other's state.
        let t = 7;
        let mut rng = seed("short_conv chain", d + l);
        let bcx = values(&mut rng, t * 3 * d, Dist::Normal(1.0), dt);
        let w = values(&mut rng, d * l, Dist::Normal(0.5), dt);
        let state0 = values(&mut rng, (l - 1) * d, Dist::Normal(1.0), dt);
        let (want, want_state) = short_conv::short_conv(&bcx, &w, &state0, cfg.shape, dt);
        let wd = up::<S>(c, &w);
        let mut state = up::<S>(c, &state0);
        let mut got = Vec::new();
        for r in 0..t {
            let row = up::<S>(c, &bcx[r * 3 * d..(r + 1) * 3 * d]);
            let mut out = poisoned::<S>(c, d);
            op.launch(&c.gpu, &row, &wd, &mut state, &mut out, 1)
                .unwrap_or_else(|e| panic!("{e}"));
            got.extend(down(c, &out));
        }
        let tag = format!("short_conv D={d} L={l} decode chain {dt}");
        check(Op::ShortConv, dt, &tag, &want, &got);
        assert_eq!(down(c, &state), want_state, "{tag}: state");
    }
}
all_dtypes!(short_conv_matches_reference, short_conv_cases);

/// Typed errors of the decode ops: lengths, the shared-buffer rule, past + T.
#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn decode_ops_reject_bad_arguments() {
    let c = ctx();
    let dt = DType::BF16;
    let sc = MoeExpertSwigluConfig::new(256, 8, 2, 2, dt);
    let sw = sc
        .load(&c.gpu, &c.compiler)
        .unwrap_or_else(|e| panic!("{e}"));
    let x = up::<bf16>(&c, &[0.0; 256]);
    let w = up::<bf16>(&c, &[0.0; 2 * 8 * 256]);
    let idx = c.gpu.upload(&[0u32, 1]).unwrap_or_else(|e| panic!("{e}"));
    let idx3 = c
        .gpu
        .upload(&[0u32, 1, 1])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut h = poisoned::<bf16>(&c, 16);
    sw.launch(&c.gpu, &x, &w, &w, &idx, &mut h, 1)
        .unwrap_or_else(|e| panic!("{e}"));
    let err = sw
        .launch(&c.gpu, &x, &w, &w, &idx3, &mut h, 1)
        .expect_err("long indices");
    assert!(err.to_string().contains("`indices`"), "{err}");
    let dc = MoeExpertDownConfig::new(256, 8, 2, 2, dt);
    let dn = dc
        .load(&c.gpu, &c.compiler)
        .unwrap_or_else(|e| panic!("{e}"));
    let wd = up::<bf16>(&c, &[0.0; 2 * 256 * 8]);
    let wts = up_f32(&c, &[0.5, 0.5]);
    let mut out = poisoned::<bf16>(&c, 256);
    let err = dn
        .launch(&c.gpu, &h, &wd, &idx, &wts, Some(&x), &mut out, 1)
        .expect_err("shared without a shared expert");
    assert!(err.to_string().contains("shared"), "{err}");
    dn.launch(&c.gpu, &h, &wd, &idx, &wts, None, &mut out, 1)
        .unwrap_or_else(|e| panic!("{e}"));
    let at = DecodeAttentionConfig::new(2, 1, 64, 8, dt)
        .load(&c.gpu, &c.compiler)
        .unwrap_or_else(|e| panic!("{e}"));
    let q = up::<bf16>(&c, &[0.0; 2 * 2 * 64]);
    let kv = up::<bf16>(&c, &[0.0; 8 * 64]);
    let mut o = poisoned::<bf16>(&c, 2 * 2 * 64);
    at.launch(&c.gpu, &q, &kv, &kv, &mut o, 2, 6)
        .unwrap_or_else(|e| panic!("{e}"));
    let err = at
        .launch(&c.gpu, &q, &kv, &kv, &mut o, 2, 7)
        .expect_err("past + T > S_MAX");
    assert!(err.to_string().contains("S_MAX"), "{err}");
}

/// Typed errors instead of launches for mismatched buffers or dtypes.
#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-suite.sh"]
fn launch_rejects_bad_buffers() {
    let c = ctx();
    let op = RmsNormConfig::new(64, 1e-6, DType::BF16)
        .load(&c.gpu, &c.compiler)
        .unwrap_or_else(|e| panic!("{e}"));
    let x = up::<bf16>(&c, &[0.0; 128]);
    let w = up::<bf16>(&c, &[0.0; 64]);
    let mut out = poisoned::<bf16>(&c, 64);
    let err = op
        .launch(&c.gpu, &x, &w, &mut out, 2)
        .expect_err("short out");
    assert!(err.to_string().contains("`out`"), "{err}");
    let xf = up::<f32>(&c, &[0.0; 128]);
    let wf = up::<f32>(&c, &[0.0; 64]);
    let mut of = poisoned::<f32>(&c, 128);
    assert!(op.launch(&c.gpu, &xf, &wf, &mut of, 2).is_err());
    assert!(op.launch(&c.gpu, &x, &w, &mut out, 0).is_err());
    let _ = IGNORE;
}
