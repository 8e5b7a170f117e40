//! The search targets: generic shapes plus each model's real semantics and dims
//! (docs/MODELS.md). A target is data: an op configuration from the
//! catalog, its shapes, and prose for the prompt. Adding one is a few lines in
//! [`all`] (see docs/DISCOVER.md).

use kiln_kernels::ops::attention::{DecodeAttentionConfig, KV_CACHE_STEP};
use kiln_kernels::ops::moe_combine::MoeCombineConfig;
use kiln_kernels::ops::moe_expert::{MoeExpertDownConfig, MoeExpertSwigluConfig};
use kiln_kernels::ops::norm::{AddRmsNormConfig, RmsNormConfig};
use kiln_kernels::ops::qk_norm_rope::QkNormRopeConfig;
use kiln_kernels::ops::short_conv::ShortConvConfig;
use kiln_kernels::ops::swiglu::SwigluConfig;
use kiln_kernels::ops::topk::{SigmoidTopkConfig, SoftmaxTopkConfig};
use kiln_kernels::ops::ttt::TttConfig;
use kiln_kernels::DType;

use super::op_problem::OpProblem;
use super::{ModelUse, Target};

/// Token counts timed for row ops: decode (1), small batch (16), prefill (4096).
const TIMED_T: [usize; 3] = [1, 16, 4096];
/// Rows timed for TTT (batch·heads).
const TIMED_TTT: [usize; 3] = [16, 64, 512];
/// Tokens timed for the decode hot path: batch-1 decode, small batches, one larger.
const TIMED_DECODE: [usize; 5] = [1, 2, 4, 8, 32];

/// Cached positions before the new tokens of the short-context attention
/// targets: about where a `kiln validate` run of 100 tokens decodes.
const SHORT_PAST: usize = 100;
/// Cached positions of the long-context attention targets: the cache step
/// (the attention build every run of up to that many positions uses) full
/// but for the largest timed T.
const LONG_PAST: usize = KV_CACHE_STEP - 32;

fn target(
    name: &str,
    model: Option<&'static str>,
    description: &str,
    problem: OpProblem,
    timed: &[usize],
) -> Target {
    Target {
        name: name.to_string(),
        model,
        description: description.to_string(),
        problem,
        timed_t: timed.to_vec(),
        visible_verify_t: vec![1, 16],
        // The proposer never sees these: odd sizes catch hard-coded shapes and
        // missing tails.
        hidden_verify_t: vec![3, 37, 1000],
        model_use: match model {
            None => ModelUse::Generic,
            Some(_) => ModelUse::Runs,
        },
    }
}

/// Why kiln's models do not run a model-shaped target.
const FUSED_EXPERTS: &str = "kiln's model runs the fused expert kernels instead";

impl Target {
    fn not_run(mut self, why: &'static str) -> Self {
        self.model_use = ModelUse::NotRun(why);
        self
    }

    /// A decode hot-path kernel: verified at few tokens (the expert weights
    /// alone are hundreds of MB per trial), with odd hidden counts.
    fn decode_rows(mut self) -> Self {
        self.visible_verify_t = vec![1, 4];
        self.hidden_verify_t = vec![3, 5, 37];
        self
    }
}

/// The short- and long-context decode-attention targets of one model, named
/// `<prefix>_decode_attention` and `…_long`.
fn attention_pair(
    prefix: &str,
    model: &'static str,
    heads: &str,
    config: DecodeAttentionConfig,
) -> [Target; 2] {
    let one = |suffix: &str, past: usize, context: &str| {
        target(
            &format!("{prefix}_decode_attention{suffix}"),
            Some(model),
            &format!(
                "causal attention of the new tokens over the KV cache, {heads}, cache of {KV_CACHE_STEP} positions, {context} ({past} cached)"
            ),
            OpProblem::DecodeAttention { config, past },
            &TIMED_DECODE,
        )
        .decode_rows()
    };
    [
        one("", SHORT_PAST, "short context"),
        one("_long", LONG_PAST, "long context"),
    ]
}

/// Every target, in the order `kiln discover list` shows them.
pub fn all() -> Vec<Target> {
    let bf16 = DType::BF16;
    let softmax = |e, k| {
        OpProblem::SoftmaxTopk(SoftmaxTopkConfig {
            e,
            k,
            renorm: true,
            dtype: bf16,
        })
    };
    let combine = |d, k, has_shared| {
        OpProblem::MoeCombine(MoeCombineConfig {
            d,
            k,
            has_shared,
            dtype: bf16,
        })
    };
    let swiglu = |i| OpProblem::Swiglu(SwigluConfig::new(i, bf16));
    let rmsnorm = |d, eps| OpProblem::RmsNorm(RmsNormConfig::new(d, eps, bf16));
    let add_rmsnorm =
        |d, eps| OpProblem::AddRmsNorm(AddRmsNormConfig(RmsNormConfig::new(d, eps, bf16)));
    let glm = Some("GLM-4.7-Flash");
    let qwen = Some("Qwen3-30B-A3B");
    let lfm = Some("LFM2-8B-A1B");
    let attention = [
        attention_pair(
            "glm",
            "GLM-4.7-Flash",
            "MLA decompressed: 20 heads, q/k 256 (192 + 64 rope), v 256",
            DecodeAttentionConfig::glm47_flash(KV_CACHE_STEP, bf16),
        ),
        attention_pair(
            "qwen3",
            "Qwen3-30B-A3B",
            "GQA 32 q / 4 kv heads of 128",
            DecodeAttentionConfig::qwen3_30b_a3b(KV_CACHE_STEP, bf16),
        ),
        attention_pair(
            "glm4_9b",
            "GLM-4-9B",
            "GQA 32 q / 2 kv heads of 128",
            DecodeAttentionConfig::glm4_9b(KV_CACHE_STEP, bf16),
        ),
        attention_pair(
            "lfm2",
            "LFM2-8B-A1B",
            "GQA 32 q / 8 kv heads of 64 (its 6 attention layers)",
            DecodeAttentionConfig::lfm2_8b_a1b(KV_CACHE_STEP, bf16),
        ),
    ];
    let mut targets = vec![
        // Generic shapes.
        target(
            "fused_swiglu",
            None,
            "silu(gate)*up, I=4096, bf16",
            swiglu(4096),
            &TIMED_T,
        ),
        target(
            "rmsnorm",
            None,
            "RMSNorm over D=4096, eps 1e-6, bf16",
            rmsnorm(4096, 1e-6),
            &TIMED_T,
        ),
        target(
            "moe_combine",
            None,
            "weighted sum of K=2 expert outputs, D=4096, bf16",
            combine(4096, 2, false),
            &TIMED_T,
        ),
        target(
            "topk_gating",
            None,
            "softmax over E=8 experts, top-2, renormalised",
            softmax(8, 2),
            &TIMED_T,
        ),
        target(
            "ttt_linear_decode",
            None,
            "one TTT-Linear decode step per (batch·head), F=64, 16 heads",
            OpProblem::Ttt(TttConfig::new(16, bf16)),
            &TIMED_TTT,
        ),
        // GLM-4.7-Flash.
        target(
            "glm_fused_swiglu",
            glm,
            "expert SwiGLU, I=1536",
            swiglu(1536),
            &TIMED_T,
        )
        .not_run(FUSED_EXPERTS),
        target(
            "glm_rmsnorm",
            glm,
            "hidden RMSNorm, D=2048, eps 1e-5",
            rmsnorm(2048, 1e-5),
            &TIMED_T,
        ),
        target(
            "glm_add_rmsnorm",
            glm,
            "residual add + RMSNorm of every decoder layer, D=2048, eps 1e-5",
            add_rmsnorm(2048, 1e-5),
            &TIMED_DECODE,
        ),
        target(
            "glm_moe_combine",
            glm,
            "combine of K=4 experts plus the shared expert, D=2048",
            combine(2048, 4, true),
            &TIMED_T,
        )
        .not_run(FUSED_EXPERTS),
        target(
            "glm_moe_expert_swiglu",
            glm,
            "gathered expert gate/up + SwiGLU, H=2048, I=1536, 64 experts + the shared one stacked, top-4+1",
            OpProblem::MoeExpertSwiglu(MoeExpertSwigluConfig::glm47_flash(bf16)),
            &TIMED_DECODE,
        )
        .decode_rows(),
        target(
            "glm_moe_expert_down",
            glm,
            "gathered expert down + weighted combine, H=2048, I=1536, 64+1 experts, top-4+1, f32 weights",
            OpProblem::MoeExpertDown(MoeExpertDownConfig::glm47_flash(bf16)),
            &TIMED_DECODE,
        )
        .decode_rows(),
        target(
            "glm_topk_gating",
            glm,
            "sigmoid router, E=64, top-4, bias selects, ×1.8 (f32 logits)",
            OpProblem::SigmoidTopk(SigmoidTopkConfig::glm47_flash()),
            &TIMED_T,
        ),
        // Qwen3-30B-A3B.
        target(
            "qwen3_fused_swiglu",
            qwen,
            "expert SwiGLU, I=768",
            swiglu(768),
            &TIMED_T,
        )
        .not_run(FUSED_EXPERTS),
        target(
            "qwen3_rmsnorm",
            qwen,
            "hidden RMSNorm, D=2048, eps 1e-6",
            rmsnorm(2048, 1e-6),
            &TIMED_T,
        ),
        target(
            "qwen3_add_rmsnorm",
            qwen,
            "residual add + RMSNorm of every decoder layer, D=2048, eps 1e-6",
            add_rmsnorm(2048, 1e-6),
            &TIMED_DECODE,
        ),
        target(
            "qwen3_moe_combine",
            qwen,
            "combine of K=8 experts, D=2048",
            combine(2048, 8, false),
            &TIMED_T,
        )
        .not_run(FUSED_EXPERTS),
        target(
            "qwen3_moe_expert_swiglu",
            qwen,
            "gathered expert gate/up + SwiGLU, H=2048, I=768, 128 experts, top-8",
            OpProblem::MoeExpertSwiglu(MoeExpertSwigluConfig::qwen3_30b_a3b(bf16)),
            &TIMED_DECODE,
        )
        .decode_rows(),
        target(
            "qwen3_moe_expert_down",
            qwen,
            "gathered expert down + weighted combine, H=2048, I=768, 128 experts, top-8, bf16 weights",
            OpProblem::MoeExpertDown(MoeExpertDownConfig::qwen3_30b_a3b(bf16)),
            &TIMED_DECODE,
        )
        .decode_rows(),
        target(
            "qwen3_topk_gating",
            qwen,
            "softmax router, E=128, top-8, renormalised",
            softmax(128, 8),
            &TIMED_T,
        ),
        // LFM2-8B-A1B.
        target(
            "lfm2_fused_swiglu",
            lfm,
            "expert SwiGLU, I=1792",
            swiglu(1792),
            &TIMED_T,
        )
        .not_run(FUSED_EXPERTS),
        target(
            "lfm2_rmsnorm",
            lfm,
            "hidden RMSNorm, D=2048, eps 1e-5",
            rmsnorm(2048, 1e-5),
            &TIMED_T,
        ),
        target(
            "lfm2_add_rmsnorm",
            lfm,
            "residual add + RMSNorm of every decoder layer, D=2048, eps 1e-5",
            add_rmsnorm(2048, 1e-5),
            &TIMED_DECODE,
        ),
        target(
            "lfm2_moe_combine",
            lfm,
            "combine of K=4 experts, D=2048",
            combine(2048, 4, false),
            &TIMED_T,
        )
        .not_run(FUSED_EXPERTS),
        target(
            "lfm2_moe_expert_swiglu",
            lfm,
            "gathered expert gate/up + SwiGLU, H=2048, I=1792, 32 experts, top-4",
            OpProblem::MoeExpertSwiglu(MoeExpertSwigluConfig::lfm2_8b_a1b(bf16)),
            &TIMED_DECODE,
        )
        .decode_rows(),
        target(
            "lfm2_moe_expert_down",
            lfm,
            "gathered expert down + weighted combine, H=2048, I=1792, 32 experts, top-4, bf16 weights",
            OpProblem::MoeExpertDown(MoeExpertDownConfig::lfm2_8b_a1b(bf16)),
            &TIMED_DECODE,
        )
        .decode_rows(),
        target(
            "lfm2_topk_gating",
            lfm,
            "sigmoid router in bf16, E=32, top-4, bias selects",
            OpProblem::SigmoidTopk(SigmoidTopkConfig::lfm2_8b_a1b(bf16)),
            &TIMED_T,
        ),
        target(
            "lfm2_short_conv",
            lfm,
            "gated short convolution of the 18 conv layers, kernel 3 over B ⊙ x, D=2048; the two-row state is read and updated in place",
            OpProblem::ShortConv(ShortConvConfig::lfm2_8b_a1b(bf16)),
            &TIMED_DECODE,
        )
        .decode_rows(),
        target(
            "qwen3_qk_norm_rope_cache",
            qwen,
            "attention inputs: per-head RMSNorm of q and k, rotate-half RoPE, k and v written into the KV cache (32/4 heads × 128, S_MAX 1024); only the tokens' cache rows may change",
            OpProblem::QkNormRopeCache(QkNormRopeConfig::qwen3_30b_a3b(KV_CACHE_STEP, bf16)),
            &TIMED_DECODE,
        )
        .decode_rows(),
        target(
            "lfm2_qk_norm_rope_cache",
            lfm,
            "attention inputs of the 6 attention layers: per-head RMSNorm of q and k, rotate-half RoPE, k and v written into the KV cache (32/8 heads × 64, S_MAX 1024)",
            OpProblem::QkNormRopeCache(QkNormRopeConfig::lfm2_8b_a1b(KV_CACHE_STEP, bf16)),
            &TIMED_DECODE,
        )
        .decode_rows(),
    ];
    targets.extend(attention.into_iter().flatten());
    targets
}

/// The target called `name`.
pub fn find(name: &str) -> Option<Target> {
    all().into_iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_model_sized_weights_and_large_timed_draws_stretch_the_timeout() {
        for t in all() {
            let scale = t.timeout_scale();
            let experts = t.name.contains("_moe_expert_");
            // K=8 expert outputs of 2048 at T=4096, four windows: 600 MB.
            let large_draw = t.name == "qwen3_moe_combine";
            assert!(
                if experts {
                    (2..=8).contains(&scale)
                } else if large_draw {
                    scale == 2
                } else {
                    scale == 1
                },
                "{}: timeout scale {scale}",
                t.name
            );
        }
        // Qwen3's gate+up weights: 2 × 128·768·2048 bf16 = 805 MB, drawn
        // again for each of ten verification trials: the cap.
        let q = find("qwen3_moe_expert_swiglu").expect("target");
        assert_eq!(q.timeout_scale(), 8);
        // LFM2's down weights, 32·2048·1792 bf16 = 235 MB: at ×2 its catalog
        // kernel ran out of time on an H100; ten trials draw 2.2 GB.
        let l = find("lfm2_moe_expert_down").expect("target");
        assert_eq!(l.timeout_scale(), 4);
    }

    #[test]
    fn names_are_unique_and_every_target_has_a_seed() {
        let names: std::collections::BTreeSet<String> = all().into_iter().map(|t| t.name).collect();
        assert_eq!(names.len(), all().len());
        for t in all() {
            assert!(t.seed_source().is_some(), "{}: no seed", t.name);
        }
    }

    /// A winner is validated in every model that runs its build: exactly the
    /// two shared GLM-4.7-Flash / LFM2 norms name two presets.
    #[test]
    fn a_build_two_models_run_names_both_presets() {
        let two = ["glm-4.7-flash", "lfm2-8b-a1b"];
        for t in all() {
            let presets = t.model_presets();
            match t.name.as_str() {
                "glm_rmsnorm" | "lfm2_rmsnorm" | "glm_add_rmsnorm" | "lfm2_add_rmsnorm" => {
                    assert_eq!(presets, two, "{}", t.name)
                }
                _ => assert_eq!(
                    presets,
                    t.model_preset().into_iter().collect::<Vec<_>>(),
                    "{}",
                    t.name
                ),
            }
        }
    }

    /// `p` with model-sized expert weights (hundreds of MB) shrunk to a few
    /// experts of small widths, every other field kept: for tests of what an
    /// op does, not of its size.
    fn shrunk(p: &crate::targets::OpProblem) -> crate::targets::OpProblem {
        use crate::targets::OpProblem;
        use kiln_kernels::ops::moe_expert::{MoeExpertDownConfig, MoeExpertSwigluConfig};
        match p {
            OpProblem::MoeExpertSwiglu(c) => OpProblem::MoeExpertSwiglu(MoeExpertSwigluConfig {
                h: 256,
                i: 64,
                e: c.e.min(16),
                ..*c
            }),
            OpProblem::MoeExpertDown(c) => OpProblem::MoeExpertDown(MoeExpertDownConfig {
                h: 256,
                i: 64,
                e: c.e.min(16),
                ..*c
            }),
            other => other.clone(),
        }
    }

    /// The timing graph gives each pass over a set its own rows of one draw
    /// of `T × windows` rows (measure::timing_sets). That is sound only if a
    /// window's rows of the whole reference are the reference of that window
    /// alone, with the static buffers shared: pinned here for every op that
    /// says it can be windowed, and every op whose rows are not serial says so.
    #[test]
    fn each_row_window_has_the_reference_of_its_rows_alone() {
        use crate::targets::{Distribution, HostBuffer, OpProblem};
        use rand::SeedableRng;
        let windows = 2;
        for target in all() {
            // The property is the op's, not the size's.
            let p = &shrunk(&target.problem);
            // Whole heads for TTT (row r is head r mod 16); three rows elsewhere.
            let t = match p {
                OpProblem::Ttt(_) => {
                    assert!(!p.rows_windowable(3, windows), "{}", target.name);
                    16
                }
                _ => 3,
            };
            // Attention's rows see `past + T`; the short convolution's carry its
            // state; the KV-cache writer's rows share one in-out cache.
            let serial = matches!(
                p,
                OpProblem::DecodeAttention { .. }
                    | OpProblem::ShortConv(_)
                    | OpProblem::QkNormRopeCache(_)
            );
            assert_eq!(p.rows_windowable(t, windows), !serial, "{}", target.name);
            if serial {
                continue;
            }
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            let all_rows = p.inputs(t * windows, Distribution::ALL[0], &mut rng);
            let whole = p.reference(t * windows, &all_rows);
            let layout = p.input_row_layout();
            for w in 0..windows {
                let own: Vec<HostBuffer> = all_rows
                    .iter()
                    .zip(&layout)
                    .map(|(b, per_row)| HostBuffer {
                        kind: b.kind,
                        values: match per_row {
                            Some(n) => b.values[w * t * n..(w + 1) * t * n].to_vec(),
                            None => b.values.clone(),
                        },
                    })
                    .collect();
                let alone = p.reference(t, &own);
                for (i, (a, b)) in whole.outputs.iter().zip(&alone.outputs).enumerate() {
                    let n = a.values.len() / (t * windows);
                    assert_eq!(
                        &a.values[w * t * n..(w + 1) * t * n],
                        &b.values[..],
                        "{}: output {i}, window {w}",
                        target.name
                    );
                }
            }
        }
    }

    /// Expert targets are timed on indices as a router picks them: `k`
    /// distinct experts in range per token, whatever the values'
    /// distribution; verification keeps the degenerate patterns.
    #[test]
    fn expert_targets_time_on_routed_indices() {
        use crate::targets::{Distribution, OpProblem};
        use rand::SeedableRng;
        let mut seen = 0;
        for target in all() {
            let problem = shrunk(&target.problem);
            let (k, e) = match &problem {
                OpProblem::MoeExpertSwiglu(c) => (c.k, c.e),
                OpProblem::MoeExpertDown(c) => (c.k, c.e),
                _ => continue,
            };
            seen += 1;
            let slot = problem
                .buffers(1)
                .iter()
                .filter(|b| b.role.is_read())
                .position(|b| b.name == "indices")
                .expect("an indices input");
            for dist in Distribution::ALL {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
                let timed = problem.timing_inputs(5, dist, &mut rng);
                for token in timed[slot].values.chunks(k) {
                    let mut ids: Vec<u64> = token.iter().map(|&v| v as u64).collect();
                    assert!(
                        ids.iter().all(|&i| i < e as u64),
                        "{}: {token:?}",
                        target.name
                    );
                    ids.sort_unstable();
                    ids.dedup();
                    assert_eq!(ids.len(), k, "{}: {token:?} repeats an expert", target.name);
                }
            }
            // Verification still draws the degenerate patterns (the same
            // experts for every token under ties).
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            let checked = problem.inputs(5, Distribution::Ties, &mut rng);
            let rows: Vec<&[f64]> = checked[slot].values.chunks(k).collect();
            assert!(rows.windows(2).all(|w| w[0] == w[1]), "{}", target.name);
        }
        assert_eq!(seen, 6);
    }
}
