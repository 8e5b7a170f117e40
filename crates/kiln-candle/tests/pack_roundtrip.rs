//! A pack entry made for a model's search target, written to a file as
//! `kiln discover export` writes it and read back by kiln-candle, replaces
//! exactly the catalog build that model runs, and nothing of another model.
//!
//! The two sides are declared apart: the target's defines come from the
//! judge's registry (kiln-eval), the build from the model's preset config
//! through the same op configs the model's layers use. This is where they meet.

use kiln_candle::models::config::{preset, ModelConfig};
use kiln_candle::models::{glm4_moe_lite, lfm2_moe, qwen3_moe};
use kiln_candle::ops::pack::KernelPack;
use kiln_candle::ops::rope::qk_norm_rope_cache_build;
use kiln_kernels::ops::attention::{cache_positions, DecodeAttentionConfig};
use kiln_kernels::ops::moe_expert::{MoeExpertDownConfig, MoeExpertSwigluConfig};
use kiln_kernels::ops::norm::{AddRmsNormConfig, RmsNormConfig};
use kiln_kernels::ops::short_conv::ShortConvConfig;
use kiln_kernels::ops::topk::{SigmoidTopkConfig, SoftmaxTopkConfig};
use kiln_kernels::pack::{define_entries, PackEntry, PACK_FORMAT};
use kiln_kernels::reference::attention::AttentionShape;
use kiln_kernels::{DType, KernelBuild, OpConfig};

fn config(name: &str) -> ModelConfig {
    let raw = preset(name, Some(1)).expect("preset");
    ModelConfig::parse(&raw.to_string()).expect("config").0
}

/// `(target, the build the model runs for it)` for every searchable kernel a
/// kiln model runs at decode.
fn model_builds() -> Vec<(&'static str, KernelBuild)> {
    let ModelConfig::Qwen3Moe(q) = config("qwen3-30b-a3b") else {
        panic!("qwen3 preset");
    };
    let ModelConfig::Glm4MoeLite(g) = config("glm-4.7-flash") else {
        panic!("glm preset");
    };
    let ModelConfig::Lfm2Moe(l) = config("lfm2-8b-a1b") else {
        panic!("lfm2 preset");
    };
    let ModelConfig::Glm4(g9) = config("glm-4-9b") else {
        panic!("glm-4-9b preset");
    };
    let bf16 = DType::BF16;
    let build = |c: &dyn Fn() -> kiln_kernels::Result<KernelBuild>| c().expect("build");
    // The gathered experts as `models::moe` runs them: GLM-4.7-Flash stacks its one
    // shared expert (of the routed width) as expert E with weight 1 in slot K; Qwen3
    // rounds its softmax weights to the dtype, LFM2 computes its router in the dtype.
    let experts = |h, i, e, k, round_weights| {
        let swiglu = MoeExpertSwigluConfig::new(h, i, e, k, bf16)
            .build()
            .expect("swiglu build");
        let down = MoeExpertDownConfig {
            weight_in_dtype: round_weights,
            ..MoeExpertDownConfig::new(h, i, e, k, bf16)
        }
        .build()
        .expect("down build");
        (swiglu, down)
    };
    assert_eq!(
        g.n_shared_experts, 1,
        "the GLM preset stacks one shared expert"
    );
    let lfm_round = lfm2_moe::routing(&l, candle_core::DType::BF16)
        .expect("routing")
        .sigmoid_in_dtype;
    let (q_sw, q_dn) = experts(
        q.hidden_size,
        q.moe_intermediate_size,
        q.num_experts,
        q.num_experts_per_tok,
        true,
    );
    let (g_sw, g_dn) = experts(
        g.hidden_size,
        g.moe_intermediate_size,
        g.n_routed_experts + 1,
        g.num_experts_per_tok + 1,
        false,
    );
    let (l_sw, l_dn) = experts(
        l.hidden_size,
        l.moe_intermediate_size,
        l.num_experts,
        l.num_experts_per_tok,
        lfm_round,
    );
    let add_norm = |d, eps| {
        AddRmsNormConfig(RmsNormConfig::new(d, eps, bf16))
            .build()
            .expect("add_rmsnorm build")
    };
    let mut builds = vec![
        ("qwen3_add_rmsnorm", add_norm(q.hidden_size, q.rms_norm_eps)),
        ("glm_add_rmsnorm", add_norm(g.hidden_size, g.rms_norm_eps)),
        ("lfm2_add_rmsnorm", add_norm(l.hidden_size, l.norm_eps)),
        ("qwen3_moe_expert_swiglu", q_sw),
        ("qwen3_moe_expert_down", q_dn),
        ("glm_moe_expert_swiglu", g_sw),
        ("glm_moe_expert_down", g_dn),
        ("lfm2_moe_expert_swiglu", l_sw),
        ("lfm2_moe_expert_down", l_dn),
        (
            "qwen3_rmsnorm",
            build(&|| RmsNormConfig::new(q.hidden_size, q.rms_norm_eps, bf16).build()),
        ),
        (
            "qwen3_topk_gating",
            build(&|| {
                SoftmaxTopkConfig {
                    e: q.num_experts,
                    k: q.num_experts_per_tok,
                    renorm: q.norm_topk_prob,
                    dtype: bf16,
                }
                .build()
            }),
        ),
        (
            "glm_rmsnorm",
            build(&|| RmsNormConfig::new(g.hidden_size, g.rms_norm_eps, bf16).build()),
        ),
        (
            "glm_topk_gating",
            build(&|| {
                SigmoidTopkConfig {
                    routing: glm4_moe_lite::routing(&g),
                }
                .build()
            }),
        ),
        (
            "lfm2_rmsnorm",
            build(&|| RmsNormConfig::new(l.hidden_size, l.norm_eps, bf16).build()),
        ),
        (
            "lfm2_topk_gating",
            build(&|| {
                SigmoidTopkConfig {
                    routing: lfm2_moe::routing(&l, candle_core::DType::BF16).expect("routing"),
                }
                .build()
            }),
        ),
        (
            "lfm2_short_conv",
            build(&|| ShortConvConfig::new(l.hidden_size, l.conv_l_cache, bf16).build()),
        ),
        // The attention inputs as `models::qk_norm_gqa` runs them, from each
        // model's own head shape.
        (
            "qwen3_qk_norm_rope_cache",
            qk_norm_rope_cache_build(&qwen3_moe::attention_heads(&q), bf16).expect("build"),
        ),
        (
            "lfm2_qk_norm_rope_cache",
            qk_norm_rope_cache_build(&lfm2_moe::attention_heads(&l), bf16).expect("build"),
        ),
    ];
    // Decode attention as `models::layers::attention` runs it: the cache of a
    // `kiln validate` run (up to one cache step of positions), scale 1/sqrt(dqk).
    let attention = |qh, kvh, dqk, dv| {
        DecodeAttentionConfig {
            shape: AttentionShape {
                qh,
                kvh,
                dqk,
                dv,
                s_max: cache_positions(100 + 16 + 8),
                scale: 1.0 / (dqk as f64).sqrt(),
            },
            dtype: bf16,
        }
        .build()
        .expect("attention build")
    };
    let glm_dqk = g.qk_nope_head_dim + g.qk_rope_head_dim;
    for (prefix, build) in [
        (
            "qwen3",
            attention(
                q.num_attention_heads,
                q.num_key_value_heads,
                q.head_dim,
                q.head_dim,
            ),
        ),
        (
            "glm",
            attention(
                g.num_attention_heads,
                g.num_attention_heads,
                glm_dqk,
                g.v_head_dim,
            ),
        ),
        (
            "glm4_9b",
            attention(
                g9.num_attention_heads,
                g9.multi_query_group_num,
                g9.kv_channels,
                g9.kv_channels,
            ),
        ),
        (
            "lfm2",
            attention(
                l.num_attention_heads,
                l.num_key_value_heads,
                l.head_dim(),
                l.head_dim(),
            ),
        ),
    ] {
        // The short- and long-context targets name one build.
        builds.push((leak(format!("{prefix}_decode_attention")), build.clone()));
        builds.push((leak(format!("{prefix}_decode_attention_long")), build));
    }
    builds
}

/// A target name built at run time, as the table's `&'static str`.
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

/// What export writes for `target` (its provenance aside), through a file.
fn exported(target: &str, dir: &std::path::Path) -> KernelPack {
    let t = kiln_eval::targets::find(target).expect("registry target");
    let entry = PackEntry {
        format: PACK_FORMAT.into(),
        target: target.into(),
        entry_point: Some(t.signature().expect("signature").entry),
        source: t.baseline().expect("baseline").source,
        defines: Some(define_entries(&t.defines().expect("defines"))),
        ..Default::default()
    };
    let path = dir.join(format!("{target}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&entry).expect("json")).expect("write");
    KernelPack::load(&path).expect("load")
}

#[test]
fn an_exported_entry_replaces_the_build_its_model_runs_and_no_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let builds = model_builds();
    for (target, build) in &builds {
        let pack = exported(target, dir.path());
        assert!(
            pack.replacement(build).is_some(),
            "{target}: the exported entry does not match the model's build {:?}",
            build.defines
        );
        for (other, other_build) in &builds {
            // Two models may run the very same build (GLM-4.7-Flash's and
            // LFM2's hidden RMSNorm: D 2048, eps 1e-5); then one kernel serves both.
            if other != target && other_build != build {
                assert!(
                    pack.replacement(other_build).is_none(),
                    "{target} would also replace {other}'s build"
                );
            }
        }
    }
    // The coincidences, pinned: should the configs part, this test sees it.
    let find = |t: &str| builds.iter().find(|(n, _)| *n == t).map(|(_, b)| b.clone());
    assert_eq!(find("glm_rmsnorm"), find("lfm2_rmsnorm"));
    assert_eq!(find("glm_add_rmsnorm"), find("lfm2_add_rmsnorm"));
    let distinct: std::collections::BTreeSet<_> = builds
        .iter()
        .map(|(_, b)| format!("{} {:?}", b.name, b.defines))
        .collect();
    // And each model's short- and long-context attention targets: one build.
    for prefix in ["qwen3", "glm", "glm4_9b", "lfm2"] {
        assert_eq!(
            find(&format!("{prefix}_decode_attention")),
            find(&format!("{prefix}_decode_attention_long"))
        );
    }
    assert_eq!(
        distinct.len(),
        builds.len() - 2 - 4,
        "only those pairs coincide"
    );
}

#[test]
fn the_registry_says_run_by_a_model_for_exactly_these_targets() {
    let mut runs: Vec<String> = kiln_eval::targets::all()
        .into_iter()
        .filter(|t| t.model_use == kiln_eval::targets::ModelUse::Runs)
        .map(|t| t.name)
        .collect();
    let mut built: Vec<String> = model_builds()
        .into_iter()
        .map(|(t, _)| t.to_string())
        .collect();
    runs.sort();
    built.sort();
    assert_eq!(
        runs, built,
        "`kiln discover list` must say which targets kiln's models run"
    );
}

#[test]
fn a_broken_or_foreign_pack_file_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in [
        ("junk.json", "not json"),
        ("no_source.json", r#"{"target": "qwen3_rmsnorm"}"#),
        (
            "future.json",
            r#"{"format": "kiln-kernel-pack-entry/9", "target": "t", "source": "// kiln: block=32 grid=T\n"}"#,
        ),
        (
            "no_launch_line.json",
            r#"{"target": "t", "source": "__global__ void f() {}"}"#,
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let err = KernelPack::load(&path).expect_err(name).to_string();
        assert!(err.contains(name), "{name}: {err}");
    }
}

/// `kiln discover promote` validates a winner in the preset its target names.
#[test]
fn every_target_a_model_runs_names_that_models_preset() {
    for t in kiln_eval::targets::all() {
        let Some(p) = t.model_preset() else {
            assert_ne!(
                t.model_use,
                kiln_eval::targets::ModelUse::Runs,
                "{}",
                t.name
            );
            continue;
        };
        preset(&p, Some(1)).unwrap_or_else(|e| panic!("{}: preset {p}: {e}", t.name));
    }
}

#[test]
fn every_discovered_kernel_replaces_a_build_a_model_runs() {
    let builds = model_builds();
    let set = kiln_kernels::discovered::discovered().expect("discovered.json parses");
    for k in set {
        let target = k.target.clone();
        let one = KernelPack { kernels: vec![k] };
        assert!(
            builds.iter().any(|(_, b)| one.replacement(b).is_some()),
            "discovered kernel for {target} replaces no build a kiln model runs"
        );
    }
}

/// `promote` validates a winner in `Target::model_presets()`: exactly the
/// models whose builds its exported entry replaces.
#[test]
fn a_winner_is_validated_in_every_model_its_entry_replaces_a_build_of() {
    let dir = tempfile::tempdir().expect("tempdir");
    let builds = model_builds();
    for (target, _) in &builds {
        let pack = exported(target, dir.path());
        let mut replaced: Vec<String> = builds
            .iter()
            .filter(|(_, b)| pack.replacement(b).is_some())
            .filter_map(|(other, _)| kiln_eval::targets::find(other)?.model_preset())
            .collect();
        replaced.sort();
        replaced.dedup();
        let t = kiln_eval::targets::find(target).expect("target");
        assert_eq!(t.model_presets(), replaced, "{target}");
    }
}
