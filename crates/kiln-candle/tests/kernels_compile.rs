//! kiln-candle's own kernels (the synthetic-weight fill, the KV cache write,
//! the decode projections, the shared expert's routing column, MLA keys, greedy decoding's argmax,
//! Qwen3's fused qk-norm + rope + cache write, GLM-4-9B's rope + cache write, GLM-4.7-Flash's
//! MLA key + rope + cache write) compile with NVRTC, as the models build them, in
//! every dtype; `linear_gemv` at the projection shapes of every preset. Each
//! one's PTX waits for the kernel before it before any memory access, so the
//! models launch it early (`kiln_cuda::early_launch`).
//!
//! Needs NVRTC (`scripts/setup.sh` installs it); it fails, never skips,
//! when NVRTC is missing.

use std::collections::BTreeMap;

use kiln_candle::models::config::{preset, ModelConfig};
use kiln_candle::models::kv_cache::write_build;
use kiln_candle::ops::linear;
use kiln_candle::synth::fill_build;
use kiln_cuda::Compiler;
use kiln_kernels::{DType, KernelBuild};

const DTYPES: [DType; 3] = [DType::BF16, DType::F16, DType::F32];

/// Compiles `b` and checks that the models may launch it early: its PTX
/// waits for the kernel before it before touching memory.
fn compile(c: &Compiler, b: &KernelBuild) {
    let compiled = c
        .compile(&b.to_request())
        .unwrap_or_else(|e| panic!("{} {:?}: {e}", b.name, b.defines));
    let ptx = compiled
        .ptx
        .as_deref()
        .expect("a cubin compile carries its PTX");
    assert!(
        kiln_cuda::early_launch::waits_before_memory(ptx, &b.entry),
        "{} {:?}: the PTX touches memory before griddepcontrol.wait",
        b.name,
        b.defines
    );
}

/// A row length's norm weight and residual (bf16 zeros: a build reads only
/// their shapes), and the two prologues over them: RMSNorm and add-RMSNorm.
struct NormInputs {
    w: candle_core::Tensor,
    residual: candle_core::Tensor,
}

impl NormInputs {
    fn new(k: usize) -> Self {
        let zeros = |shape: &[usize]| {
            candle_core::Tensor::zeros(shape, candle_core::DType::BF16, &candle_core::Device::Cpu)
                .expect("zeros")
        };
        Self {
            w: zeros(&[k]),
            residual: zeros(&[1, k]),
        }
    }

    fn prologues(&self) -> [linear::NormPrologue<'_>; 2] {
        [
            linear::NormPrologue::RmsNorm {
                w: &self.w,
                eps: 1e-6,
            },
            linear::NormPrologue::AddRmsNorm {
                residual: &self.residual,
                w: &self.w,
                eps: 1e-5,
            },
        ]
    }
}

/// Every projection a preset's kiln model makes at decode.
fn projections(name: &str) -> Vec<kiln_candle::check_kernels::Projection> {
    let raw = preset(name, Some(1)).expect("preset");
    let (cfg, _) = ModelConfig::parse(&raw.to_string()).expect("config");
    kiln_candle::check_kernels::projections(&cfg)
}

#[test]
fn model_side_kernels_compile_in_every_dtype() {
    let c = Compiler::new().expect("NVRTC (run scripts/setup.sh)");
    for d in DTYPES {
        compile(&c, &fill_build(d));
        compile(&c, &write_build(d));
        compile(&c, &linear::build(128, 2048, d));
        compile(&c, &kiln_candle::ops::attention::mla_key_build(d));
        compile(&c, &kiln_candle::ops::argmax::build(d));
    }
    // Qwen3-30B-A3B's attention inputs (and the other head dims the kernel takes).
    let raw = preset("qwen3-30b-a3b", Some(1)).expect("preset");
    let Ok((ModelConfig::Qwen3Moe(q), _)) = ModelConfig::parse(&raw.to_string()) else {
        panic!("qwen3 preset");
    };
    let qwen3 = (q.num_attention_heads, q.num_key_value_heads, q.head_dim);
    for (qh, kvh, d) in [qwen3, (16, 4, 64), (8, 2, 256)] {
        let shape = kiln_candle::ops::rope::QkNormRopeShape {
            qh,
            kvh,
            d,
            eps: q.rms_norm_eps,
        };
        compile(
            &c,
            &kiln_candle::ops::rope::qk_norm_rope_cache_build(&shape, DType::BF16).expect("build"),
        );
    }
    // GLM-4-9B's attention inputs (rope + the cache write in one launch), from its config.
    let raw = preset("glm-4-9b", Some(1)).expect("preset");
    let Ok((ModelConfig::Glm4(g), _)) = ModelConfig::parse(&raw.to_string()) else {
        panic!("glm-4-9b preset");
    };
    let glm4 = kiln_candle::models::glm4::rope_shape(&g);
    for d in DTYPES {
        compile(
            &c,
            &kiln_candle::ops::rope::rope_cache_build(&glm4, d).expect("build"),
        );
    }
    compile(&c, &kiln_candle::ops::moe::append_shared_expert_build());
    // GLM-4.7-Flash's attention inputs in one launch, from its config.
    let raw = preset("glm-4.7-flash", Some(1)).expect("preset");
    let Ok((ModelConfig::Glm4MoeLite(g), _)) = ModelConfig::parse(&raw.to_string()) else {
        panic!("glm-4.7-flash preset");
    };
    let mla = kiln_candle::models::glm4_moe_lite::rope_shape(&g);
    for d in DTYPES {
        compile(
            &c,
            &kiln_candle::ops::attention::mla_rope_cache_build(&mla, d),
        );
    }
}

#[test]
fn router_epilogues_compile_at_every_moe_preset() {
    let c = Compiler::new().expect("NVRTC (run scripts/setup.sh)");
    let mut routers = 0;
    let mut with_shared = Vec::new();
    for name in ["qwen3-30b-a3b", "glm-4.7-flash", "glm-4-9b", "lfm2-8b-a1b"] {
        let raw = preset(name, Some(1)).expect("preset");
        let (cfg, _) = ModelConfig::parse(&raw.to_string()).expect("config");
        let Some((p, router, shared)) =
            kiln_candle::check_kernels::router_epilogue(&cfg).expect("router")
        else {
            continue;
        };
        routers += 1;
        if shared {
            with_shared.push(name);
        }
        let inputs = NormInputs::new(p.k);
        for norm in inputs.prologues() {
            compile(
                &c,
                &linear::build_normed_routed(
                    p.n,
                    p.k,
                    p.w_dtype,
                    DType::BF16,
                    &norm,
                    &router,
                    shared,
                ),
            );
        }
    }
    // Qwen3's softmax router, GLM-4.7-Flash's and LFM2's sigmoid ones; only
    // GLM-4.7-Flash stacks a shared expert, so only its router writes that column.
    assert_eq!(routers, 3);
    assert_eq!(with_shared, ["glm-4.7-flash"]);
}

#[test]
fn linear_gemv_compiles_and_launches_at_every_preset_projection() {
    let c = Compiler::new().expect("NVRTC (run scripts/setup.sh)");
    let line = linear::launch_line().expect("launch line");
    for name in ["qwen3-30b-a3b", "glm-4.7-flash", "glm-4-9b", "lfm2-8b-a1b"] {
        let shapes = projections(name);
        assert!(shapes.len() >= 4, "{name}");
        for p in shapes {
            let (n, k) = (p.n, p.k);
            let plain = linear::build_with(n, k, p.w_dtype, DType::BF16, p.epilogue);
            compile(&c, &plain);
            // The other K-loop unrolls `KILN_GEMV_UNROLL` may ask for.
            for unroll in ["1", "8", "16"] {
                let mut b = plain.clone();
                b.defines.push(("KILN_UNROLL".into(), unroll.into()));
                compile(&c, &b);
            }
            let rpw = linear::rows_per_warp(n, p.epilogue);
            // With a norm prologue (x in bf16, w too unless the projection is plain: the
            // f32 router; 256 <= K <= 4096): both kinds compile, and the normed rows take
            // T * K * 2 bytes of shared memory.
            let normed = (p.w_dtype == DType::BF16 || p.epilogue == linear::Epilogue::Plain)
                && (256..=4096).contains(&k);
            if normed {
                let inputs = NormInputs::new(k);
                for norm in inputs.prologues() {
                    compile(
                        &c,
                        &linear::build_normed(n, k, p.w_dtype, DType::BF16, p.epilogue, &norm),
                    );
                }
            }
            for t in [1i64, 8] {
                let xs = if normed { 2 * k as i64 } else { 0 };
                let vars: BTreeMap<String, i64> = [
                    ("N", n as i64),
                    ("RPW", rpw as i64),
                    ("T", t),
                    ("SMS", 132),
                    ("XS", xs),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                let dims = line.evaluate(&vars).expect("launch");
                assert_eq!(dims.smem as i64, t * xs, "{name} N={n} K={k}");
                // Every weight row has a warp: 8 warps per block, RPW rows each (the
                // gated form's RPW rows are RPW/2 (gate, up) pairs: the same count).
                assert_eq!(dims.block, (256, 1, 1));
                assert_eq!(dims.grid.0 as usize, n.div_ceil(8 * rpw), "{name} N={n}");
                if p.epilogue == linear::Epilogue::SwiGlu {
                    assert_eq!(rpw % 2, 0, "{name} N={n}: the gated form takes row pairs");
                    assert_eq!(
                        dims.grid.0 as usize,
                        (n / 2).div_ceil(8 * rpw / 2),
                        "{name} N={n}"
                    );
                }
            }
        }
    }
}
