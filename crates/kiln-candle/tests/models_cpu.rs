//! The models on candle's CPU backend, tiny configs, f32: kiln's
//! implementation on kiln's ops (the catalog references) must match kiln's
//! implementation on plain candle ops, and for Qwen3-MoE and GLM-4 candle's
//! own model.

use candle_core::{DType, Device, Tensor};
use kiln_candle::models::config::{preset, ModelConfig};
use kiln_candle::models::glm4::Glm4;
use kiln_candle::models::glm4_moe_lite::Glm4MoeLite;
use kiln_candle::models::lfm2_moe::Lfm2Moe;
use kiln_candle::models::qwen3_moe::Qwen3Moe;
use kiln_candle::models::stock::{StockGlm4, StockQwen3Moe};
use kiln_candle::models::{DecodeModel, Kernels};
use kiln_candle::synth::SyntheticBackend;

mod common;
use common::{tiny_glm, tiny_qwen3};

/// GLM-4-9B's settings at toy size (H = QH·HD, as candle's model needs).
fn tiny_glm4() -> serde_json::Value {
    serde_json::json!({
        "model_type": "chatglm", "num_layers": 2, "padded_vocab_size": 96, "hidden_size": 256,
        "ffn_hidden_size": 128, "kv_channels": 64, "num_attention_heads": 4,
        "multi_query_attention": true, "multi_query_group_num": 2, "seq_length": 64,
        "layernorm_epsilon": 1.5625e-07, "rmsnorm": true,
        "apply_residual_connection_post_layernorm": false, "post_layer_norm": true,
        "add_bias_linear": false, "add_qkv_bias": true, "bias_dropout_fusion": true,
        "apply_query_key_layer_scaling": true, "attention_softmax_in_fp32": true,
        "fp32_residual_connection": false, "rope_ratio": 500, "tie_word_embeddings": false
    })
}

fn vb(seed: u64) -> candle_nn::VarBuilder<'static> {
    SyntheticBackend::new(seed).into_var_builder(DType::F32, &Device::Cpu)
}

/// Prefill 5 tokens, then decode 4 more, feeding `ids`; logits of each step.
fn run(model: &mut dyn DecodeModel, ids: &[u32]) -> Vec<Vec<f32>> {
    model.reset().expect("reset");
    let mut out = vec![model
        .forward(&ids[..5], 0)
        .expect("prefill")
        .to_vec1()
        .expect("vec")];
    for (i, &t) in ids[5..].iter().enumerate() {
        out.push(
            model
                .forward(&[t], 5 + i)
                .expect("decode")
                .to_vec1()
                .expect("vec"),
        );
    }
    out
}

fn max_rel_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let scale = a.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale.max(1e-30)
}

const IDS: [u32; 9] = [3, 17, 42, 5, 88, 11, 60, 2, 91];

/// Runs candle's own model, kiln's on candle ops and kiln's on kiln ops over
/// the same ids, checks the two kiln runs match the stock one to 1e-4
/// (relative), and returns the kiln logits.
fn assert_matches_stock(
    stock: &mut dyn DecodeModel,
    plain: &mut dyn DecodeModel,
    kiln: &mut dyn DecodeModel,
) -> Vec<Vec<f32>> {
    let s = run(stock, &IDS);
    let p = run(plain, &IDS);
    let k = run(kiln, &IDS);
    assert_eq!(s.len(), 5);
    assert!(s[0].iter().any(|x| x.abs() > 0.0), "logits are all zero");
    let d_plain = max_rel_diff(&s, &p);
    let d_kiln = max_rel_diff(&s, &k);
    assert!(
        d_plain < 1e-4,
        "plain candle ops vs candle's model: {d_plain}"
    );
    assert!(d_kiln < 1e-4, "kiln ops vs candle's model: {d_kiln}");
    k
}

#[test]
fn qwen3_moe_on_kiln_ops_matches_candle_ops_and_candles_own_model() {
    let raw = tiny_qwen3();
    let ModelConfig::Qwen3Moe(cfg) = ModelConfig::parse(&raw.to_string()).expect("config").0 else {
        panic!("not qwen3")
    };
    let mut stock = StockQwen3Moe::load(&raw, vb(1)).expect("stock");
    let mut plain = Qwen3Moe::load(&cfg, vb(1), Kernels::Candle, 32).expect("plain");
    let mut kiln = Qwen3Moe::load(&cfg, vb(1), Kernels::Kiln, 32).expect("kiln");
    assert_matches_stock(&mut stock, &mut plain, &mut kiln);
}

#[test]
fn glm4_moe_lite_on_kiln_ops_matches_candle_ops() {
    let raw = tiny_glm();
    let ModelConfig::Glm4MoeLite(cfg) = ModelConfig::parse(&raw.to_string()).expect("config").0
    else {
        panic!("not glm")
    };
    let mut plain = Glm4MoeLite::load(&cfg, vb(2), Kernels::Candle, 32).expect("plain");
    let mut kiln = Glm4MoeLite::load(&cfg, vb(2), Kernels::Kiln, 32).expect("kiln");
    let p = run(&mut plain, &IDS);
    let k = run(&mut kiln, &IDS);
    assert!(p[0].iter().any(|x| x.abs() > 0.0), "logits are all zero");
    let d = max_rel_diff(&p, &k);
    assert!(d < 1e-4, "kiln ops vs plain candle ops: {d}");
    // A different seed must change the logits (the test can fail).
    let mut other = Glm4MoeLite::load(&cfg, vb(3), Kernels::Kiln, 32).expect("other");
    assert!(max_rel_diff(&k, &run(&mut other, &IDS)) > 1e-2);
}

#[test]
fn glm4_on_kiln_ops_and_candle_ops_matches_candles_own_model() {
    let raw = tiny_glm4();
    let ModelConfig::Glm4(cfg) = ModelConfig::parse(&raw.to_string()).expect("config").0 else {
        panic!("not chatglm")
    };
    let mut stock = StockGlm4::load(&raw, vb(4)).expect("stock");
    let mut plain = Glm4::load(&cfg, vb(4), Kernels::Candle, 32).expect("plain");
    let mut kiln = Glm4::load(&cfg, vb(4), Kernels::Kiln, 32).expect("kiln");
    let k = assert_matches_stock(&mut stock, &mut plain, &mut kiln);
    // A different seed must change the logits (the test can fail).
    let mut other = Glm4::load(&cfg, vb(5), Kernels::Kiln, 32).expect("other");
    assert!(max_rel_diff(&k, &run(&mut other, &IDS)) > 1e-2);
    // candle's model continues from its own cache: a skipped position is an error.
    assert!(stock.forward(&[1], 3).is_err());
}

#[test]
fn a_written_glm4_checkpoint_loads_in_candles_model_and_kilns() {
    let dir = tempfile::tempdir().expect("tmp");
    let raw = tiny_glm4();
    // embedding, output layer, final norm; per layer two norms, qkv weight and bias, dense, two MLP weights.
    let n = kiln_candle::synth::write_checkpoint(&raw, 6, dir.path()).expect("write");
    assert_eq!(n, 3 + 2 * 7);
    let (cfg, raw) = ModelConfig::load(dir.path()).expect("config back");
    let ModelConfig::Glm4(cfg) = cfg else {
        panic!("not chatglm")
    };
    let file = [dir.path().join("model.safetensors")];
    // SAFETY: the test's own file, not modified while mapped.
    let vb = || unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&file, DType::F32, &Device::Cpu)
            .expect("mmap")
    };
    let mut stock = StockGlm4::load(&raw, vb()).expect("stock from the checkpoint");
    let mut kiln = Glm4::load(&cfg, vb(), Kernels::Kiln, 32).expect("kiln from the checkpoint");
    let d = max_rel_diff(&run(&mut stock, &IDS), &run(&mut kiln, &IDS));
    assert!(d < 1e-4, "kiln vs candle's model on the checkpoint: {d}");
}

#[test]
fn the_glm4_preset_parses_with_a_layer_override() {
    let v = preset("glm-4-9b", Some(2)).expect("preset");
    let (cfg, raw) = ModelConfig::parse(&v.to_string()).expect("parse");
    assert_eq!(cfg.layers(), 2);
    assert_eq!(raw["num_layers"], 2);
    let ModelConfig::Glm4(c) = cfg else {
        panic!("not chatglm")
    };
    assert_eq!(
        (
            c.hidden_size,
            c.num_attention_heads,
            c.multi_query_group_num
        ),
        (4096, 32, 2)
    );
    assert_eq!(
        (c.kv_channels, c.ffn_hidden_size, c.padded_vocab_size),
        (128, 13696, 151552)
    );
    assert_eq!(c.rope_theta(), 5e6);
    // candle's own config reads the same file.
    let stock: candle_transformers::models::glm4::Config =
        serde_json::from_value(raw).expect("candle's glm4 config");
    assert_eq!(stock.num_layers, 2);
}

#[test]
fn a_written_checkpoint_holds_the_same_weights_as_the_generator() {
    let dir = tempfile::tempdir().expect("tmp");
    let raw = tiny_qwen3();
    let n = kiln_candle::synth::write_checkpoint(&raw, 5, dir.path()).expect("write");
    assert!(n > 10);
    let loaded = candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu)
        .expect("load");
    let name = "model.layers.1.mlp.experts.3.down_proj.weight";
    let on_disk = loaded[name].to_dtype(DType::F32).expect("f32");
    let made = kiln_candle::synth::make_tensor(5, name, on_disk.shape(), DType::BF16, &Device::Cpu)
        .expect("make")
        .to_dtype(DType::F32)
        .expect("f32");
    let diff = (on_disk - made)
        .expect("sub")
        .abs()
        .expect("abs")
        .max_all()
        .expect("max");
    assert_eq!(diff.to_scalar::<f32>().expect("scalar"), 0.0);
    let (cfg, _) = ModelConfig::load(dir.path()).expect("config back");
    assert_eq!(cfg.layers(), 2);
    let _ = Tensor::zeros(1, DType::F32, &Device::Cpu);
}

/// LFM2-MoE's settings at toy size: conv, attention, conv, conv; one dense layer.
fn tiny_lfm2() -> serde_json::Value {
    serde_json::json!({
        "model_type": "lfm2_moe", "vocab_size": 96, "hidden_size": 64, "num_hidden_layers": 4,
        "layer_types": ["conv", "full_attention", "conv", "conv"],
        "num_attention_heads": 4, "num_key_value_heads": 2, "norm_eps": 1e-5,
        "rope_theta": 1000000.0, "conv_L_cache": 3, "conv_bias": false, "num_dense_layers": 1,
        "intermediate_size": 48, "moe_intermediate_size": 32, "num_experts": 8,
        "num_experts_per_tok": 2, "norm_topk_prob": true, "routed_scaling_factor": 1.0,
        "use_expert_bias": true, "tie_embedding": true
    })
}

fn lfm2(seed: u64, kernels: Kernels) -> Lfm2Moe {
    let ModelConfig::Lfm2Moe(cfg) = ModelConfig::parse(&tiny_lfm2().to_string())
        .expect("config")
        .0
    else {
        panic!("not lfm2_moe")
    };
    Lfm2Moe::load(&cfg, vb(seed), kernels, 32).expect("lfm2")
}

#[test]
fn lfm2_moe_on_kiln_ops_matches_candle_ops_and_carries_its_conv_state() {
    let mut plain = lfm2(7, Kernels::Candle);
    let mut kiln = lfm2(7, Kernels::Kiln);
    let p = run(&mut plain, &IDS);
    let k = run(&mut kiln, &IDS);
    assert!(p[0].iter().any(|x| x.abs() > 0.0), "logits are all zero");
    let d = max_rel_diff(&p, &k);
    assert!(d < 1e-4, "kiln ops vs plain candle ops: {d}");
    // Steps carry the convolution state: the last step's logits equal those
    // of one pass over all nine tokens, on both op sets.
    for model in [&mut plain, &mut kiln] {
        model.reset().expect("reset");
        let whole: Vec<f32> = model
            .forward(&IDS, 0)
            .expect("whole")
            .to_vec1()
            .expect("vec");
        let d = max_rel_diff(&[whole], &k[4..]);
        assert!(d < 1e-4, "stepwise vs one pass: {d}");
    }
    // reset clears the state: a second run repeats the first exactly.
    assert_eq!(run(&mut kiln, &IDS), k);
    // A different seed must change the logits (the test can fail).
    let mut other = lfm2(8, Kernels::Kiln);
    assert!(max_rel_diff(&k, &run(&mut other, &IDS)) > 1e-2);
}

#[test]
fn a_written_lfm2_checkpoint_has_the_checkpoint_names() {
    let dir = tempfile::tempdir().expect("tmp");
    let n = kiln_candle::synth::write_checkpoint(&tiny_lfm2(), 9, dir.path()).expect("write");
    let loaded = candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu)
        .expect("load");
    assert_eq!(loaded.len(), n);
    for name in [
        "model.embed_tokens.weight",
        "model.embedding_norm.weight",
        "model.layers.0.conv.in_proj.weight",
        "model.layers.0.conv.conv.weight",
        "model.layers.0.conv.out_proj.weight",
        "model.layers.0.feed_forward.w1.weight",
        "model.layers.1.self_attn.q_layernorm.weight",
        "model.layers.1.self_attn.out_proj.weight",
        "model.layers.1.feed_forward.expert_bias",
        "model.layers.1.feed_forward.experts.7.w2.weight",
        "model.layers.3.operator_norm.weight",
    ] {
        assert!(loaded.contains_key(name), "{name} missing");
    }
    // Tied embeddings: no separate output projection.
    assert!(!loaded.contains_key("lm_head.weight"));
    assert_eq!(loaded["model.layers.0.conv.conv.weight"].dims(), [64, 1, 3]);
}
