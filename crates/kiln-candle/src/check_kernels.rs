//! `kiln models check-kernels`: kiln-candle's own kernels (the decode
//! projections with their norm prologues and router epilogues, the KV cache
//! write, Qwen3's, GLM-4-9B's and GLM-4.7-Flash's fused attention inputs, the
//! MLA keys, the shared expert's routing column, LFM2's short convolution,
//! greedy decoding's argmax) on the GPU against their CPU paths and the
//! launches they replace, at the presets' shapes, with seeded random inputs.
//!
//! The copies must match exactly. The arithmetic kernels must match to
//! [`KERNEL_REL_L2`]: their CPU paths compute in float64 (or compose the
//! catalog's references), so the gap is bf16 rounding and summation order.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::config::ModelConfig;
use crate::models::kv_cache::KvCache;
use crate::models::layers::{split_qkv, RopeTables};
use crate::models::{glm4, lfm2_moe, qwen3_moe, Kernels};
use crate::ops;
use crate::ops::linear::Epilogue;

/// Largest relative L2 error of an arithmetic kernel against its CPU path.
pub const KERNEL_REL_L2: f64 = 1e-2;

/// One kernel at one shape against its CPU path.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCheck {
    /// The kernel.
    pub kernel: String,
    /// The shape, in words.
    pub shape: String,
    /// ‖gpu − cpu‖ / ‖cpu‖.
    pub rel_l2: f64,
    /// Whether it must be bit-exact (a copy).
    pub exact: bool,
    /// Whether it passed.
    pub passed: bool,
}

/// Every check.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCheckReport {
    /// The checks, in order.
    pub checks: Vec<KernelCheck>,
}

impl KernelCheckReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<22} {:<44} {:>12}  verdict\n",
            "kernel", "shape", "rel L2"
        );
        for c in &self.checks {
            s += &format!(
                "{:<22} {:<44} {:>12.3e}  {}\n",
                c.kernel,
                c.shape,
                c.rel_l2,
                match (c.passed, c.exact) {
                    (true, true) => "PASS (exact)",
                    (true, false) => "PASS",
                    (false, _) => "FAIL",
                }
            );
        }
        s
    }
}

/// Runs every check on `gpu` for the `presets` (configs as from
/// [`crate::models::config::preset`]).
pub fn check_kernels(gpu: &Device, presets: &[serde_json::Value]) -> Result<KernelCheckReport> {
    if !gpu.is_cuda() {
        return Err(Error::Config(
            "check-kernels compares the GPU kernels with their CPU paths: it needs a CUDA device"
                .into(),
        ));
    }
    let mut checks = Vec::new();
    let mut seed = 1u64;
    checks.extend(argmax(gpu, presets)?);
    for raw in presets {
        let (cfg, _) = ModelConfig::parse(&raw.to_string())?;
        for Projection {
            n,
            k,
            w_dtype,
            epilogue,
        } in projections(&cfg)
        {
            // The float64 reference of a vocabulary projection takes seconds: one T there.
            let ts: &[usize] = if n * k > 100_000_000 {
                &[1]
            } else {
                &[1, 3, 8]
            };
            for &t in ts {
                seed += 1;
                let x = random((t, k), seed)?;
                let w = random((n, k), seed + 1000)?.to_dtype(candle_dtype(w_dtype))?;
                let b = random(n, seed + 2000)?.to_dtype(candle_dtype(w_dtype))?;
                let run = |x: &Tensor, w: &Tensor, b: &Tensor| -> Result<Tensor> {
                    match epilogue {
                        Epilogue::Plain => ops::linear::gemv(x, w),
                        Epilogue::Bias => ops::linear::gemv_bias(x, w, b),
                        Epilogue::SwiGlu => ops::linear::gemv_swiglu(x, w),
                    }
                };
                let cpu = run(&x, &w, &b)?;
                let (xg, wg, bg) = (x.to_device(gpu)?, w.to_device(gpu)?, b.to_device(gpu)?);
                let got = run(&xg, &wg, &bg)?;
                let shape = format!("N={n} K={k} T={t} w {w_dtype}");
                let name = match epilogue {
                    Epilogue::Plain => "linear_gemv",
                    Epilogue::Bias => "linear_gemv+bias",
                    Epilogue::SwiGlu => "linear_gemv+swiglu",
                };
                checks.push(judge(name, shape.clone(), &got, &cpu, false)?);
                // The fused epilogue against the two launches it replaces: bit for bit.
                let unfused = match epilogue {
                    Epilogue::Plain => None,
                    Epilogue::Bias => Some(ops::linear::gemv(&xg, &wg)?.broadcast_add(&bg)?),
                    Epilogue::SwiGlu => {
                        Some(ops::swiglu::swiglu_packed(&ops::linear::gemv(&xg, &wg)?)?)
                    }
                };
                if let Some(unfused) = unfused {
                    checks.push(judge(
                        name,
                        format!("{shape} = unfused"),
                        &got,
                        &unfused,
                        true,
                    )?);
                }
                // Norm prologues at the shapes a norm feeds (not the vocabulary projection:
                // its CPU path alone takes seconds).
                // x is bf16; an f32 weight (GLM-4.7-Flash's router) only in a plain projection.
                if (w_dtype == kiln_kernels::DType::BF16 || epilogue == Epilogue::Plain)
                    && (256..=4096).contains(&k)
                    && t <= 3
                    && n * k <= 100_000_000
                {
                    seed += 1;
                    checks.extend(norm_prologue(gpu, (t, k), (&w, &b), epilogue, name, seed)?);
                }
            }
        }
        if let Some((p, router, shared)) = router_epilogue(&cfg)? {
            for t in [1, 3, 8] {
                seed += 10;
                checks.extend(router_in_projection(gpu, t, p, &router, shared, seed)?);
            }
        }
        match &cfg {
            ModelConfig::Qwen3Moe(c) => {
                let heads = qwen3_moe::attention_heads(c);
                checks.push(qk_norm_rope(gpu, heads, c.rope_theta, &mut seed)?);
            }
            ModelConfig::Glm4MoeLite(c) => {
                let (t, nh) = (3, c.num_attention_heads);
                let (nope, rope, dv) = (c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim);
                seed += 1;
                let kv = random((t, nh, nope + dv), seed)?;
                let ckv = random((t, c.kv_lora_rank + rope), seed + 1)?;
                let key = |d: &Device| -> Result<Tensor> {
                    let kv = kv.to_device(d)?;
                    let ckv = ckv.to_device(d)?;
                    ops::attention::mla_key(
                        &kv.narrow(2, 0, nope)?,
                        &ckv.narrow(1, c.kv_lora_rank, rope)?,
                    )
                };
                for (t, pos) in [(3, 37), (1, 4000)] {
                    checks.extend(mla_rope_cache(gpu, c, t, pos, &mut seed)?);
                }
                let shape = format!("T={t} NH={nh} NOPE={nope} ROPE={rope}");
                checks.push(judge(
                    "mla_key",
                    shape,
                    &key(gpu)?,
                    &key(&Device::Cpu)?,
                    true,
                )?);
                let (kk, e) = (c.num_experts_per_tok, c.n_routed_experts);
                let w = random((t, kk), seed + 2)?.to_dtype(DType::F32)?;
                let idx = Tensor::arange(0u32, (t * kk) as u32, &Device::Cpu)?.reshape((t, kk))?;
                let (wg, ig) =
                    ops::moe::append_shared_expert(&w.to_device(gpu)?, &idx.to_device(gpu)?, e)?;
                let (wc, ic) = ops::moe::append_shared_expert(&w, &idx, e)?;
                let shape = format!("T={t} K={kk} E={e}");
                checks.push(judge(
                    "append_shared_expert",
                    shape.clone(),
                    &wg,
                    &wc,
                    true,
                )?);
                checks.push(judge(
                    "append_shared_expert",
                    format!("{shape} (indices)"),
                    &ig.to_dtype(DType::F32)?,
                    &ic.to_dtype(DType::F32)?,
                    true,
                )?);
            }
            ModelConfig::Glm4(c) => {
                // A prefill-sized step early in the cache and a decode step far into it.
                let shape = glm4::rope_shape(c);
                for (t, pos) in [(3, 37), (1, 4000)] {
                    checks.extend(rope_cache(gpu, shape, t, pos, &mut seed)?);
                }
            }
            ModelConfig::Lfm2Moe(c) => {
                let heads = lfm2_moe::attention_heads(c);
                checks.push(qk_norm_rope(gpu, heads, c.rope_theta(), &mut seed)?);
                checks.extend(short_conv(gpu, c.hidden_size, c.conv_l_cache, &mut seed)?);
            }
        }
    }
    Ok(KernelCheckReport { checks })
}

/// Qwen3's and LFM2's fused attention inputs against rmsnorm, rope and the cache write
/// on the CPU (the catalog's references), at a position past 0.
fn qk_norm_rope(
    gpu: &Device,
    heads: ops::rope::QkNormRopeShape,
    theta: f64,
    seed: &mut u64,
) -> Result<KernelCheck> {
    let ops::rope::QkNormRopeShape {
        qh,
        kvh,
        d: hd,
        eps,
    } = heads;
    let (t, pos, max_len) = (3usize, 37usize, 64usize);
    *seed += 1;
    let qkv = random((t, (qh + 2 * kvh) * hd), *seed)?;
    let qn = random(hd, *seed + 1)?;
    let kn = random(hd, *seed + 2)?;
    let shape = heads.rope_shape(theta);
    let run = |d: &Device| -> Result<(Tensor, Tensor, Tensor)> {
        let rope = RopeTables::new(shape, max_len, DType::BF16, d)?;
        let mut cache = KvCache::new(kvh, max_len, hd, hd, DType::BF16, d)?;
        let positions = rope.positions(pos, t, d)?;
        let (qkv, qn, kn) = (qkv.to_device(d)?, qn.to_device(d)?, kn.to_device(d)?);
        let q = if d.is_cuda() {
            let q = ops::rope::qk_norm_rope_cache(
                &qkv,
                (&qn, &kn),
                rope.tables(),
                &positions,
                cache.buffers(),
                &heads,
            )?;
            cache.set_len(pos + t);
            q
        } else {
            let (q, k, v) = split_qkv(&qkv, (qh, kvh, hd))?;
            let q = ops::norm::rms_norm(&q.contiguous()?, &qn, eps)?;
            let k = ops::norm::rms_norm(&k.contiguous()?, &kn, eps)?;
            let (q, k) = rope.apply(&q, &k, pos, Some(&positions), Kernels::Kiln)?;
            cache.append(&k, &v, pos, None)?;
            q
        };
        let (kc, vc) = cache.history()?;
        Ok((q, kc, vc))
    };
    let (qg, kg, vg) = run(gpu)?;
    let (qc, kc, vc) = run(&Device::Cpu)?;
    let rel = [rel_l2(&qg, &qc)?, rel_l2(&kg, &kc)?, rel_l2(&vg, &vc)?];
    let worst = rel.iter().cloned().fold(0.0, f64::max);
    Ok(KernelCheck {
        kernel: "qk_norm_rope_cache".into(),
        shape: format!("QH={qh} KVH={kvh} D={hd} T={t} at {pos}"),
        rel_l2: worst,
        exact: false,
        // v is a copy: it must be exact.
        passed: worst <= KERNEL_REL_L2 && rel[2] == 0.0,
    })
}

/// GLM-4-9B's fused rope + cache write (`rope_cache`) at `t` tokens from
/// `pos`: against the two launches it replaces on the GPU (rope, then the
/// cache write reading the device positions), bit for bit over q and both
/// whole cache buffers; and against the catalog's reference composed on the
/// CPU (rope, then the cache write), q and k within [`KERNEL_REL_L2`], v exact.
fn rope_cache(
    gpu: &Device,
    shape: kiln_kernels::reference::rope::RopeShape,
    t: usize,
    pos: usize,
    seed: &mut u64,
) -> Result<Vec<KernelCheck>> {
    let (qh, kvh, hd) = (shape.qh, shape.kh, shape.head_dim);
    let max_len = kiln_kernels::ops::attention::cache_positions(pos + t);
    *seed += 1;
    let qkv = random((t, (qh + 2 * kvh) * hd), *seed)?;
    let run = |d: &Device, fused: bool| -> Result<[Tensor; 3]> {
        let rope = RopeTables::new(shape, max_len, DType::BF16, d)?;
        let mut cache = KvCache::new(kvh, max_len, hd, hd, DType::BF16, d)?;
        let positions = rope.positions(pos, t, d)?;
        let qkv = qkv.to_device(d)?;
        let q = if fused {
            cache.check_room(pos, t)?;
            let q = ops::rope::rope_cache(&qkv, &positions, cache.buffers(), &shape)?;
            cache.set_len(pos + t);
            q
        } else {
            // The model's unfused path (glm4.rs): views of the projection.
            let (q, k, v) = split_qkv(&qkv, (qh, kvh, hd))?;
            let (q, k) = rope.apply(&q, &k, pos, Some(&positions), Kernels::Kiln)?;
            let on_gpu = d.is_cuda().then_some(&positions);
            cache.append(&k, &v, pos, on_gpu)?;
            q
        };
        let (kc, vc) = cache.buffers();
        Ok([q, kc.copy()?, vc.copy()?])
    };
    let fused = run(gpu, true)?;
    let split = run(gpu, false)?;
    let cpu = run(&Device::Cpu, false)?;
    let all = |x: &[Tensor; 3]| -> Result<Tensor> {
        let flat = x
            .iter()
            .map(|t| t.flatten_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&flat, 0)?)
    };
    let what = format!(
        "QH={qh} KVH={kvh} HD={hd} ROT={} T={t} at {pos}",
        shape.rot_dim
    );
    let exact = judge(
        "rope_cache",
        format!("{what} = rope+write"),
        &all(&fused)?,
        &all(&split)?,
        true,
    )?;
    Ok(vec![exact, against_cpu("rope_cache", what, &fused, &cpu)?])
}

/// An attention-input launch's `[q, k cache, v cache]` against the CPU path's:
/// q and k to [`KERNEL_REL_L2`], v (a copy) exactly.
fn against_cpu(
    kernel: &str,
    shape: String,
    got: &[Tensor; 3],
    cpu: &[Tensor; 3],
) -> Result<KernelCheck> {
    let rel = [
        rel_l2(&got[0], &cpu[0])?,
        rel_l2(&got[1], &cpu[1])?,
        rel_l2(&got[2], &cpu[2])?,
    ];
    let worst = rel.iter().cloned().fold(0.0, f64::max);
    Ok(KernelCheck {
        kernel: kernel.into(),
        shape,
        rel_l2: worst,
        exact: false,
        passed: worst <= KERNEL_REL_L2 && rel[2] == 0.0,
    })
}

/// GLM-4.7-Flash's attention inputs in one launch ([`ops::attention::mla_rope_cache`])
/// against `mla_key`, rope and the cache write, bit for bit (q and both caches), at
/// `t` tokens from `pos`, the key's no-rope part and the value strided views of one
/// projection as in the model; and against the CPU path.
fn mla_rope_cache(
    gpu: &Device,
    c: &crate::models::config::Glm4MoeLiteConfig,
    t: usize,
    pos: usize,
    seed: &mut u64,
) -> Result<Vec<KernelCheck>> {
    let (nh, nope, rope_d, dv) = (
        c.num_attention_heads,
        c.qk_nope_head_dim,
        c.qk_rope_head_dim,
        c.v_head_dim,
    );
    let dqk = nope + rope_d;
    let shape = crate::models::glm4_moe_lite::rope_shape(c);
    let max_len = kiln_kernels::ops::attention::cache_positions(pos + t);
    *seed += 1;
    let q = random((t, nh, dqk), *seed)?;
    let kv = random((t, nh, nope + dv), *seed + 1)?;
    let ckv = random((t, c.kv_lora_rank + rope_d), *seed + 2)?;
    let run = |d: &Device, fused: bool| -> Result<[Tensor; 3]> {
        let rope = RopeTables::new(shape, max_len, DType::BF16, d)?;
        let mut cache = KvCache::new(nh, max_len, dqk, dv, DType::BF16, d)?;
        let positions = rope.positions(pos, t, d)?;
        let (q, kv, ckv) = (q.to_device(d)?, kv.to_device(d)?, ckv.to_device(d)?);
        let k_nope = kv.narrow(2, 0, nope)?;
        let v = kv.narrow(2, nope, dv)?;
        let k_pe = ckv.narrow(1, c.kv_lora_rank, rope_d)?;
        let q = if fused {
            cache.check_room(pos, t)?;
            let q = ops::attention::mla_rope_cache(
                &q,
                &k_nope,
                &k_pe,
                &v,
                &positions,
                cache.buffers(),
                &shape,
            )?;
            cache.set_len(pos + t);
            q
        } else {
            // The model's unfused path (glm4_moe_lite.rs).
            let k = ops::attention::mla_key(&k_nope, &k_pe)?;
            let (q, k) = rope.apply(&q, &k, pos, Some(&positions), Kernels::Kiln)?;
            let on_gpu = d.is_cuda().then_some(&positions);
            cache.append(&k, &v, pos, on_gpu)?;
            q
        };
        let (kc, vc) = cache.buffers();
        Ok([q, kc.copy()?, vc.copy()?])
    };
    let fused = run(gpu, true)?;
    let split = run(gpu, false)?;
    let cpu = run(&Device::Cpu, false)?;
    let what = format!("NH={nh} NOPE={nope} ROPE={rope_d} DV={dv} T={t} at {pos}");
    let mut checks = Vec::new();
    for (i, part) in ["q", "k cache", "v cache"].iter().enumerate() {
        checks.push(judge(
            "mla_rope_cache",
            format!("{what} {part} = mla_key+rope+write"),
            &fused[i],
            &split[i],
            true,
        )?);
    }
    checks.push(against_cpu("mla_rope_cache", what, &fused, &cpu)?);
    Ok(checks)
}

/// The short convolution (a prefill of 5 rows, then one decode row) on the
/// GPU against the catalog's reference on the CPU: outputs and the state
/// the kernel leaves in place.
fn short_conv(gpu: &Device, h: usize, l: usize, seed: &mut u64) -> Result<Vec<KernelCheck>> {
    *seed += 1;
    let w = random((h, l), *seed)?;
    let state0 = random((l - 1, h), *seed + 1)?;
    let steps = [
        random((5, 3 * h), *seed + 2)?,
        random((1, 3 * h), *seed + 3)?,
    ];
    let run = |d: &Device| -> Result<(Vec<Tensor>, Tensor)> {
        let (w, state) = (w.to_device(d)?, state0.to_device(d)?.copy()?);
        let outs = steps
            .iter()
            .map(|x| ops::short_conv::short_conv(&x.to_device(d)?, &w, &state))
            .collect::<Result<Vec<_>>>()?;
        Ok((outs, state))
    };
    let (go, gs) = run(gpu)?;
    let (co, cs) = run(&Device::Cpu)?;
    let mut checks = Vec::new();
    for ((g, c), t) in go.iter().zip(&co).zip([5, 1]) {
        checks.push(judge(
            "short_conv",
            format!("D={h} L={l} T={t}"),
            g,
            c,
            false,
        )?);
    }
    // The state holds B ⊙ x rows, one rounding each: exact.
    checks.push(judge(
        "short_conv",
        format!("D={h} L={l} state"),
        &gs,
        &cs,
        true,
    )?);
    Ok(checks)
}

/// One projection a model makes at decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projection {
    /// Weight rows.
    pub n: usize,
    /// Weight columns (x's row length).
    pub k: usize,
    /// The weight's dtype (x is the model's bf16 hidden state).
    pub w_dtype: kiln_kernels::DType,
    /// What the model fuses after it.
    pub epilogue: Epilogue,
}

/// Every projection a model makes at decode (GLM-4.7-Flash's router weight
/// is f32; the gate/up projections end in their SwiGLU, GLM-4-9B's qkv in
/// its bias).
pub fn projections(cfg: &ModelConfig) -> Vec<Projection> {
    use kiln_kernels::DType::{BF16, F32};
    let plain = |n, k, w_dtype| Projection {
        n,
        k,
        w_dtype,
        epilogue: Epilogue::Plain,
    };
    let fused = |n, k, epilogue| Projection {
        n,
        k,
        w_dtype: BF16,
        epilogue,
    };
    match cfg {
        ModelConfig::Qwen3Moe(c) => {
            let (h, hd) = (c.hidden_size, c.head_dim);
            let (qh, kvh) = (c.num_attention_heads, c.num_key_value_heads);
            vec![
                plain((qh + 2 * kvh) * hd, h, BF16),
                plain(h, qh * hd, BF16),
                plain(c.num_experts, h, BF16),
                plain(c.vocab_size, h, BF16),
            ]
        }
        ModelConfig::Glm4MoeLite(c) => {
            let dqk = c.qk_nope_head_dim + c.qk_rope_head_dim;
            let nh = c.num_attention_heads;
            vec![
                // q_a_proj and kv_a_proj_with_mqa stacked (one launch).
                plain(
                    c.q_lora_rank + c.kv_lora_rank + c.qk_rope_head_dim,
                    c.hidden_size,
                    BF16,
                ),
                plain(nh * dqk, c.q_lora_rank, BF16),
                plain(
                    nh * (c.qk_nope_head_dim + c.v_head_dim),
                    c.kv_lora_rank,
                    BF16,
                ),
                plain(c.hidden_size, nh * c.v_head_dim, BF16),
                // The dense layers' MLP.
                fused(2 * c.intermediate_size, c.hidden_size, Epilogue::SwiGlu),
                plain(c.hidden_size, c.intermediate_size, BF16),
                plain(c.n_routed_experts, c.hidden_size, F32),
                plain(c.vocab_size, c.hidden_size, BF16),
            ]
        }
        ModelConfig::Lfm2Moe(c) => {
            let (h, hd) = (c.hidden_size, c.head_dim());
            let (qh, kvh) = (c.num_attention_heads, c.num_key_value_heads);
            vec![
                plain(3 * h, h, BF16),
                plain(h, h, BF16),
                plain((qh + 2 * kvh) * hd, h, BF16),
                plain(h, qh * hd, BF16),
                fused(2 * c.intermediate_size, h, Epilogue::SwiGlu),
                plain(h, c.intermediate_size, BF16),
                plain(c.num_experts, h, BF16),
                plain(c.vocab_size, h, BF16),
            ]
        }
        ModelConfig::Glm4(c) => {
            let (h, hd) = (c.hidden_size, c.kv_channels);
            let (qh, kvh) = (c.num_attention_heads, c.multi_query_group_num);
            vec![
                if c.add_qkv_bias {
                    fused((qh + 2 * kvh) * hd, h, Epilogue::Bias)
                } else {
                    plain((qh + 2 * kvh) * hd, h, BF16)
                },
                plain(h, qh * hd, BF16),
                fused(2 * c.ffn_hidden_size, h, Epilogue::SwiGlu),
                plain(h, c.ffn_hidden_size, BF16),
                plain(c.padded_vocab_size, h, BF16),
            ]
        }
    }
}

/// Greedy decoding's argmax over each preset's vocabulary of random f32
/// logits, twice in a row on one scratch (the second launch finds it set
/// back to zero), with a planted tie for the largest value (the lower index
/// wins) and then a NaN (it wins), against the host rule.
fn argmax(gpu: &Device, presets: &[serde_json::Value]) -> Result<Vec<KernelCheck>> {
    let mut checks = Vec::new();
    let scratch = ops::argmax::ArgmaxScratch::new(gpu)?;
    for (n, raw) in presets.iter().enumerate() {
        let vocab = raw["vocab_size"]
            .as_u64()
            .or_else(|| raw["padded_vocab_size"].as_u64())
            .unwrap_or(151_936) as usize;
        let mut v: Vec<f32> = random(vocab, 7000 + n as u64)?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        let top = ops::argmax::argmax_host(&v) as usize;
        // A tie with the largest value, at a lower index and at a higher one.
        let (low, high) = (top / 3, top + (vocab - top) / 2);
        let mut cases = vec![("random", v.clone())];
        if high > top && low < top {
            v[high] = v[top];
            cases.push(("tie above", v.clone()));
            v[low] = v[top];
            cases.push(("tie below", v.clone()));
        }
        v[vocab - 1] = f32::NAN;
        cases.push(("nan", v));
        for (what, values) in cases {
            let want = ops::argmax::argmax_host(&values);
            let x = Tensor::from_vec(values, vocab, gpu)?;
            for launch in 1..=2 {
                let got = ops::argmax::argmax(&x, &scratch)?;
                checks.push(KernelCheck {
                    kernel: "argmax".into(),
                    shape: format!("V={vocab} {what} (launch {launch}): got {got}, want {want}"),
                    rel_l2: if got == want { 0.0 } else { 1.0 },
                    exact: true,
                    passed: got == want,
                });
            }
        }
    }
    Ok(checks)
}

/// A MoE model's router projection, the router its last block can run
/// ([`ops::linear::RouterEpilogue`]) and whether the shared expert's column
/// goes with it (a shared expert as wide as the routed ones is stacked), as
/// the model's MoE blocks build them; `None` for a dense model or a grouped
/// router.
pub fn router_epilogue(
    cfg: &ModelConfig,
) -> Result<Option<(Projection, ops::linear::RouterEpilogue, bool)>> {
    use kiln_kernels::DType::{BF16, F32};
    use ops::linear::RouterEpilogue;
    let router = |n, k, w_dtype, r| {
        let p = Projection {
            n,
            k,
            w_dtype,
            epilogue: Epilogue::Plain,
        };
        Some((p, r, false))
    };
    Ok(match cfg {
        ModelConfig::Qwen3Moe(c) => router(
            c.num_experts,
            c.hidden_size,
            BF16,
            RouterEpilogue::Softmax {
                k: c.num_experts_per_tok,
                renorm: c.norm_topk_prob,
            },
        ),
        ModelConfig::Glm4MoeLite(c) => {
            let routing = crate::models::glm4_moe_lite::routing(c);
            // The model stacks a single shared expert (as wide as the routed
            // ones), so its router also writes the shared column.
            let stacked = c.n_shared_experts == 1;
            match router(
                c.n_routed_experts,
                c.hidden_size,
                F32,
                RouterEpilogue::Sigmoid(routing),
            ) {
                Some((p, r, _)) if routing.n_group == 1 => Some((p, r, stacked)),
                _ => None,
            }
        }
        ModelConfig::Lfm2Moe(c) => router(
            c.num_experts,
            c.hidden_size,
            BF16,
            RouterEpilogue::Sigmoid(lfm2_moe::routing(c, DType::BF16)?),
        ),
        ModelConfig::Glm4(_) => None,
    })
}

/// The router projection `p` of `t` rows with each norm prologue and
/// `router` in its last block ([`ops::linear::gemv_normed_routed`]),
/// launched twice (the second launch finds the count the first set back to
/// zero), against the norm's launch, the projection and the router's own
/// launch, bit for bit, and the routing against the CPU path.
fn router_in_projection(
    gpu: &Device,
    t: usize,
    p: Projection,
    router: &ops::linear::RouterEpilogue,
    shared: bool,
    seed: u64,
) -> Result<Vec<KernelCheck>> {
    use ops::linear::{NormPrologue, RouterEpilogue};
    let (n, k) = (p.n, p.k);
    let x = random((t, k), seed)?;
    let residual = random((t, k), seed + 1)?;
    let nw = random(k, seed + 2)?;
    let w = random((n, k), seed + 3)?.to_dtype(candle_dtype(p.w_dtype))?;
    // A selection bias of a few hundredths, as trained routers carry.
    let bias = (random(n, seed + 4)?.to_dtype(DType::F32)? * 0.02)?;
    let sigmoid = matches!(router, RouterEpilogue::Sigmoid(_));
    let blocks_done = ops::linear::BlocksDone::new(gpu)?;
    fn norm_of<'a>(add: bool, residual: &'a Tensor, w: &'a Tensor) -> NormPrologue<'a> {
        if add {
            NormPrologue::AddRmsNorm {
                residual,
                w,
                eps: 1e-5,
            }
        } else {
            NormPrologue::RmsNorm { w, eps: 1e-6 }
        }
    }
    let mut checks = Vec::new();
    for add in [false, true] {
        let on = |d: &Device| -> Result<(Tensor, Tensor, Tensor, Tensor, Tensor)> {
            Ok((
                x.to_device(d)?,
                residual.to_device(d)?,
                nw.to_device(d)?,
                w.to_device(d)?,
                bias.to_device(d)?,
            ))
        };
        let (xg, rg, nwg, wg, bg) = on(gpu)?;
        let norm = norm_of(add, &rg, &nwg);
        let sb = sigmoid.then_some(&bg);
        let fused = [0, 1]
            .iter()
            .map(|_| {
                ops::linear::gemv_normed_routed(&xg, &norm, &wg, router, sb, shared, &blocks_done)
            })
            .collect::<Result<Vec<_>>>()?;
        // The three launches it replaces.
        let (normed, h) = if add {
            let (n, h) = ops::norm::add_rms_norm(&xg, &rg, &nwg, 1e-5)?;
            (n, Some(h))
        } else {
            (ops::norm::rms_norm(&xg, &nwg, 1e-6)?, None)
        };
        let logits = ops::linear::gemv(&normed, &wg)?;
        let (uw, ui) = match router {
            RouterEpilogue::Softmax { k, renorm } => {
                ops::router::softmax_topk(&logits, *k, *renorm)?
            }
            RouterEpilogue::Sigmoid(routing) => ops::router::sigmoid_topk(&logits, &bg, *routing)?,
        };
        let (uw, ui) = if shared {
            ops::moe::append_shared_expert(&uw, &ui, n)?
        } else {
            (uw, ui)
        };
        let (xc, rc, nwc, wc, bc) = on(&Device::Cpu)?;
        let cpu = ops::linear::gemv_normed_routed(
            &xc,
            &norm_of(add, &rc, &nwc),
            &wc,
            router,
            sigmoid.then_some(&bc),
            shared,
            &ops::linear::BlocksDone::new(&Device::Cpu)?,
        )?;
        let kernel = format!(
            "linear_gemv+{}+{}",
            if add { "add_rmsnorm" } else { "rmsnorm" },
            if sigmoid {
                "sigmoid_topk"
            } else {
                "softmax_topk"
            }
        );
        let shape = format!("N={n} K={k} T={t} w {}", p.w_dtype);
        let indices = |i: &Tensor| i.to_dtype(DType::F32);
        for (launch, f) in fused.iter().enumerate() {
            let exact = |what: &str, got: &Tensor, want: &Tensor| {
                judge(
                    &kernel,
                    format!("{shape}{what} (launch {}) = unfused", launch + 1),
                    got,
                    want,
                    true,
                )
            };
            checks.push(exact(" logits", &f.projection.y, &logits)?);
            checks.push(exact(" weights", &f.weights, &uw)?);
            checks.push(exact(" indices", &indices(&f.indices)?, &indices(&ui)?)?);
            if let (Some(got), Some(want)) = (&f.projection.residual, &h) {
                checks.push(exact(" residual", got, want)?);
            }
            if let Some(got) = &f.projection.normed {
                checks.push(exact(" normed", got, &normed)?);
            }
        }
        // The routing against the CPU path: the same experts in the same order
        // (random logits leave no near-ties), weights to rounding.
        checks.push(judge(
            &kernel,
            format!("{shape} indices = cpu"),
            &indices(&fused[0].indices)?,
            &indices(&cpu.indices)?,
            true,
        )?);
        checks.push(judge(
            &kernel,
            format!("{shape} weights"),
            &fused[0].weights,
            &cpu.weights,
            false,
        )?);
    }
    Ok(checks)
}

/// candle's dtype for a kernel dtype.
fn candle_dtype(d: kiln_kernels::DType) -> candle_core::DType {
    match d {
        kiln_kernels::DType::BF16 => candle_core::DType::BF16,
        kiln_kernels::DType::F16 => candle_core::DType::F16,
        kiln_kernels::DType::F32 => candle_core::DType::F32,
    }
}

/// Seeded unit-normal values in bf16 on the CPU (ChaCha8, f32 samples).
pub(crate) fn random(shape: impl Into<candle_core::Shape>, seed: u64) -> Result<Tensor> {
    let shape = shape.into();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0f32, 1.0).map_err(|e| Error::Config(e.to_string()))?;
    let v: Vec<f32> = (0..shape.elem_count())
        .map(|_| normal.sample(&mut rng))
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(DType::BF16)?)
}

fn rel_l2(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a: Vec<f32> = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let b: Vec<f32> = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    if a.len() != b.len() {
        return Ok(f64::NAN);
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        num += ((x - y) as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    Ok(if den > 0.0 {
        (num / den).sqrt()
    } else {
        num.sqrt()
    })
}

/// The projection `name` with each norm prologue ([`ops::linear::gemv_normed`])
/// against the norm's own launch followed by the projection, bit for bit (the
/// new residual too), and against the CPU path.
fn norm_prologue(
    gpu: &Device,
    (t, k): (usize, usize),
    (w, b): (&Tensor, &Tensor),
    epilogue: Epilogue,
    name: &str,
    seed: u64,
) -> Result<Vec<KernelCheck>> {
    use ops::linear::NormPrologue;
    let x = random((t, k), seed)?;
    let residual = random((t, k), seed + 1)?;
    let nw = random(k, seed + 2)?;
    let n = w.dim(0)?;
    let bias = (epilogue == Epilogue::Bias).then_some(b);
    let mut checks = Vec::new();
    for add in [false, true] {
        // The fused launch (keeping the normed rows) on `d`.
        let run_fused = |d: &Device| -> Result<ops::linear::NormedProjection> {
            let (x, r, nw, w) = (
                x.to_device(d)?,
                residual.to_device(d)?,
                nw.to_device(d)?,
                w.to_device(d)?,
            );
            let b = bias.map(|b| b.to_device(d)).transpose()?;
            let norm = if add {
                NormPrologue::AddRmsNorm {
                    residual: &r,
                    w: &nw,
                    eps: 1e-5,
                }
            } else {
                NormPrologue::RmsNorm { w: &nw, eps: 1e-6 }
            };
            ops::linear::gemv_normed(&x, &norm, &w, b.as_ref(), epilogue, true)
        };
        // The norm's own launch and the projection after it, on the GPU: what
        // the prologue replaces.
        let (xg, rg, nwg, wg) = (
            x.to_device(gpu)?,
            residual.to_device(gpu)?,
            nw.to_device(gpu)?,
            w.to_device(gpu)?,
        );
        let (normed, h) = if add {
            let (n, h) = ops::norm::add_rms_norm(&xg, &rg, &nwg, 1e-5)?;
            (n, Some(h))
        } else {
            (ops::norm::rms_norm(&xg, &nwg, 1e-6)?, None)
        };
        let unfused = match (epilogue, bias) {
            (Epilogue::Bias, Some(b)) => ops::linear::gemv_bias(&normed, &wg, &b.to_device(gpu)?)?,
            (Epilogue::SwiGlu, _) => ops::linear::gemv_swiglu(&normed, &wg)?,
            _ => ops::linear::gemv(&normed, &wg)?,
        };
        let (fused, cpu) = (run_fused(gpu)?, run_fused(&Device::Cpu)?);
        let kernel = format!("{name}+{}", if add { "add_rmsnorm" } else { "rmsnorm" });
        let shape = format!("N={n} K={k} T={t}");
        checks.push(judge(&kernel, shape.clone(), &fused.y, &cpu.y, false)?);
        let exact = |what: &str, got: &Tensor, want: &Tensor| {
            judge(&kernel, format!("{shape}{what} = unfused"), got, want, true)
        };
        checks.push(exact("", &fused.y, &unfused)?);
        if let (Some(got), Some(want)) = (&fused.residual, &h) {
            checks.push(exact(" residual", got, want)?);
        }
        if let Some(got) = &fused.normed {
            checks.push(exact(" normed", got, &normed)?);
        }
    }
    Ok(checks)
}

fn judge(
    kernel: &str,
    shape: String,
    got: &Tensor,
    want: &Tensor,
    exact: bool,
) -> Result<KernelCheck> {
    let rel = rel_l2(got, want)?;
    Ok(KernelCheck {
        kernel: kernel.into(),
        shape,
        rel_l2: rel,
        exact,
        passed: if exact {
            rel == 0.0
        } else {
            rel <= KERNEL_REL_L2
        },
    })
}
