//! Every catalog configuration kiln uses: the three target models (docs/MODELS.md)
//! plus generic shapes, as compile inputs for one dtype.

use crate::catalog::KernelBuild;
use crate::error::Result;
use crate::ops::attention::DecodeAttentionConfig;
use crate::ops::moe_combine::MoeCombineConfig;
use crate::ops::moe_expert::{MoeExpertDownConfig, MoeExpertSwigluConfig};
use crate::ops::norm::{AddRmsNormConfig, RmsNormConfig};
use crate::ops::qk_norm_rope::QkNormRopeConfig;
use crate::ops::rope::RopeConfig;
use crate::ops::rope_cache::RopeCacheConfig;
use crate::ops::short_conv::ShortConvConfig;
use crate::ops::swiglu::{SwigluConfig, SwigluPackedConfig};
use crate::ops::topk::{SigmoidTopkConfig, SoftmaxTopkConfig};
use crate::ops::ttt::TttConfig;
use crate::ops::OpConfig;
use crate::reference::topk::SigmoidRouting;
use crate::DType;

/// `(label, build)` of every preset configuration of every op in `dtype`.
pub fn all_builds(dtype: DType) -> Result<Vec<(String, KernelBuild)>> {
    let mut out = Vec::new();
    let mut push = |label: &str, b: Result<KernelBuild>| -> Result<()> {
        out.push((label.to_string(), b?));
        Ok(())
    };
    // Norms: hidden 2048 (all three), qk-norm 128 (Qwen3) and 64 (LFM2),
    // GLM's MLA latents 768 and 512, generic 4096.
    for (label, d, eps) in [
        ("glm47 hidden", 2048, 1e-5),
        ("glm47 q_a", 768, 1e-6),
        ("glm47 kv_a", 512, 1e-6),
        ("qwen3 hidden", 2048, 1e-6),
        ("qwen3 qk-norm", 128, 1e-6),
        ("lfm2 hidden", 2048, 1e-5),
        ("lfm2 qk-norm", 64, 1e-5),
        ("generic", 4096, 1e-6),
    ] {
        let c = RmsNormConfig::new(d, eps, dtype);
        push(&format!("rmsnorm {label}"), c.build())?;
        push(
            &format!("rmsnorm {label} one-rounding"),
            RmsNormConfig {
                cast_before_scale: false,
                ..c
            }
            .build(),
        )?;
        push(&format!("add_rmsnorm {label}"), AddRmsNormConfig(c).build())?;
    }
    // SwiGLU widths: experts and shared (1536, 768, 1792), dense layers (10240, 7168), generic.
    for (label, i) in [
        ("glm47 expert", 1536),
        ("glm47 dense", 10240),
        ("qwen3 expert", 768),
        ("lfm2 expert", 1792),
        ("lfm2 dense", 7168),
        ("generic", 4096),
    ] {
        let c = SwigluConfig::new(i, dtype);
        push(&format!("swiglu {label}"), c.build())?;
        push(
            &format!("swiglu {label} one-rounding"),
            SwigluConfig {
                silu_in_dtype: false,
                ..c
            }
            .build(),
        )?;
        push(
            &format!("swiglu_packed {label}"),
            SwigluPackedConfig(c).build(),
        )?;
    }
    for (label, e, k, renorm) in [
        ("qwen3", 128, 8, true),
        ("generic", 8, 2, true),
        ("generic no-renorm", 8, 2, false),
    ] {
        push(
            &format!("softmax_topk {label}"),
            SoftmaxTopkConfig {
                e,
                k,
                renorm,
                dtype,
            }
            .build(),
        )?;
    }
    let mut glm = SigmoidTopkConfig::glm47_flash();
    glm.routing.dtype = dtype;
    push("sigmoid_topk glm47", glm.build())?;
    push(
        "sigmoid_topk lfm2",
        SigmoidTopkConfig::lfm2_8b_a1b(dtype).build(),
    )?;
    let dsv3 = SigmoidTopkConfig {
        routing: SigmoidRouting {
            e: 256,
            k: 8,
            n_group: 8,
            topk_group: 4,
            norm_eps: 1e-20,
            scale: 2.5,
            sigmoid_in_dtype: false,
            dtype,
        },
    };
    push("sigmoid_topk deepseek-v3 grouped", dsv3.build())?;
    let small = SigmoidTopkConfig {
        routing: SigmoidRouting {
            e: 8,
            k: 2,
            n_group: 1,
            topk_group: 1,
            norm_eps: 1e-20,
            scale: 1.0,
            sigmoid_in_dtype: false,
            dtype,
        },
    };
    push("sigmoid_topk generic", small.build())?;
    for (label, d, k, has_shared) in [
        ("glm47", 2048, 4, true),
        ("qwen3", 2048, 8, false),
        ("lfm2", 2048, 4, false),
        ("generic", 4096, 2, false),
    ] {
        push(
            &format!("moe_combine {label}"),
            MoeCombineConfig {
                d,
                k,
                has_shared,
                dtype,
            }
            .build(),
        )?;
    }
    push("ttt_linear_decode F64", TttConfig::new(32, dtype).build())?;
    push(
        "ttt_linear_decode F128",
        TttConfig {
            f: 128,
            ..TttConfig::new(16, dtype)
        }
        .build(),
    )?;
    push("rope qwen3", RopeConfig::qwen3_30b_a3b(dtype).build())?;
    push("rope lfm2", RopeConfig::lfm2_8b_a1b(dtype).build())?;
    push("rope glm47", RopeConfig::glm47_flash(dtype).build())?;
    let mut glm_q = RopeConfig::glm47_flash(dtype);
    glm_q.shape.kh = 0;
    glm_q.shape.head_dim = 256;
    glm_q.shape.rot_offset = 192;
    push("rope glm47 q in place (offset 192 of 256)", glm_q.build())?;
    let mut f32_math = RopeConfig::qwen3_30b_a3b(dtype);
    f32_math.shape.hf_rounding = false;
    push("rope qwen3 f32 math", f32_math.build())?;
    // Gathered experts: the three models, Qwen3 with one rounding, a generic
    // DeepSeek-V2-Lite-like shape (H 4096, I 1408, 64 experts, top-6), and a tiny
    // odd I (the gate/up half supports any I >= 1).
    for (label, c) in [
        ("qwen3", MoeExpertSwigluConfig::qwen3_30b_a3b(dtype)),
        (
            "glm47 (+ shared as expert 64)",
            MoeExpertSwigluConfig::glm47_flash(dtype),
        ),
        ("lfm2", MoeExpertSwigluConfig::lfm2_8b_a1b(dtype)),
        (
            "generic",
            MoeExpertSwigluConfig::new(4096, 1408, 64, 6, dtype),
        ),
        (
            "generic odd I",
            MoeExpertSwigluConfig::new(256, 13, 4, 2, dtype),
        ),
    ] {
        push(&format!("moe_expert_swiglu {label}"), c.build())?;
    }
    push(
        "moe_expert_swiglu qwen3 one-rounding",
        MoeExpertSwigluConfig {
            silu_in_dtype: false,
            ..MoeExpertSwigluConfig::qwen3_30b_a3b(dtype)
        }
        .build(),
    )?;
    for (label, c) in [
        ("qwen3", MoeExpertDownConfig::qwen3_30b_a3b(dtype)),
        (
            "glm47 (+ shared as expert 64)",
            MoeExpertDownConfig::glm47_flash(dtype),
        ),
        (
            "glm47 (separate shared)",
            MoeExpertDownConfig {
                has_shared: true,
                ..MoeExpertDownConfig::new(2048, 1536, 64, 4, dtype)
            },
        ),
        ("lfm2", MoeExpertDownConfig::lfm2_8b_a1b(dtype)),
        (
            "generic",
            MoeExpertDownConfig::new(4096, 1408, 64, 6, dtype),
        ),
    ] {
        push(&format!("moe_expert_down {label}"), c.build())?;
    }
    // Attention: each model's heads at a 4096- and a 512-position cache, plus
    // GLM's absorbed MLA form (one latent kv head: 512 + 64 rope, v = latent).
    for s_max in [4096, 512] {
        for (label, c) in [
            ("qwen3", DecodeAttentionConfig::qwen3_30b_a3b(s_max, dtype)),
            (
                "glm47 (MLA decompressed)",
                DecodeAttentionConfig::glm47_flash(s_max, dtype),
            ),
            ("glm4-9b", DecodeAttentionConfig::glm4_9b(s_max, dtype)),
            ("lfm2", DecodeAttentionConfig::lfm2_8b_a1b(s_max, dtype)),
        ] {
            push(
                &format!("decode_attention {label} S_MAX={s_max}"),
                c.build(),
            )?;
        }
    }
    let mut absorbed = DecodeAttentionConfig::glm47_flash(4096, dtype);
    absorbed.shape.kvh = 1;
    absorbed.shape.dqk = 576;
    absorbed.shape.dv = 512;
    push("decode_attention glm47 (MLA absorbed)", absorbed.build())?;
    push(
        "short_conv lfm2",
        ShortConvConfig::lfm2_8b_a1b(dtype).build(),
    )?;
    // S_MAX is an argument, not a define: one build per model.
    let s_max = crate::ops::attention::KV_CACHE_STEP;
    push(
        "qk_norm_rope_cache qwen3",
        QkNormRopeConfig::qwen3_30b_a3b(s_max, dtype).build(),
    )?;
    push(
        "qk_norm_rope_cache lfm2",
        QkNormRopeConfig::lfm2_8b_a1b(s_max, dtype).build(),
    )?;
    // rope_cache: GLM-4-9B (partial interleaved), and the layouts and
    // roundings no model runs yet (rotate-half, an offset slice, f32 math).
    let glm4 = RopeCacheConfig::glm4_9b(s_max, dtype);
    push("rope_cache glm4-9b", glm4.build())?;
    let mut neox = RopeCacheConfig::new(RopeConfig::qwen3_30b_a3b(dtype).shape, s_max, dtype);
    push("rope_cache rotate-half 32/4 x 128", neox.build())?;
    neox.shape.rope.hf_rounding = false;
    push("rope_cache rotate-half f32 math", neox.build())?;
    let mut off = glm4;
    off.shape.rope.rot_offset = 32;
    push("rope_cache interleaved offset 32", off.build())?;
    off.shape.rope.interleaved = false;
    push("rope_cache rotate-half offset 32", off.build())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_validates_in_every_dtype() {
        for dt in DType::ALL {
            let builds = all_builds(dt).expect("presets validate");
            assert!(builds.len() > 40);
            for (_, b) in &builds {
                assert_eq!(b.defines[0].1, dt.c_type());
            }
        }
    }
}
