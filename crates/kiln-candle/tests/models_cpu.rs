//! The models on candle's CPU backend, tiny configs, f32: kiln's
//! implementation on kiln's ops (the catalog references) must match kiln's
//! implementation on plain candle ops, and for Qwen3-MoE and GLM-4 candle's
//! own model.

use candle_core::{DType, Device, Tensor};
use kiln_candle::models::config::{preset, ModelConfig};
use kiln_candle::models::glm4::Glm4;
use kiln_candle::models::glm4_moe_lite::Glm4MoeLite;
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
    model.reset();
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
