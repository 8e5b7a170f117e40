//! `config.json` of the supported models, and the presets `kiln models synth`
//! and `--synthetic` build (the models' own published configs).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Qwen3-MoE (`qwen3_moe`); candle's own `Config` reads the same file for the stock baseline.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen3MoeConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size H.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// KV heads.
    pub num_key_value_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// RMSNorm eps.
    pub rms_norm_eps: f64,
    /// RoPE theta.
    pub rope_theta: f64,
    /// Expert width I.
    pub moe_intermediate_size: usize,
    /// Routed experts E.
    pub num_experts: usize,
    /// Experts per token K.
    pub num_experts_per_tok: usize,
    /// Renormalise the top-k weights.
    pub norm_topk_prob: bool,
    /// Tied input and output embeddings.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Every `decoder_sparse_step`-th layer is MoE (kiln supports 1).
    #[serde(default = "one")]
    pub decoder_sparse_step: usize,
    /// Layers with a dense MLP instead (kiln supports none).
    #[serde(default)]
    pub mlp_only_layers: Vec<usize>,
    /// Attention projections with bias (kiln supports none).
    #[serde(default)]
    pub attention_bias: bool,
}

/// GLM-4.7-Flash (`glm4_moe_lite`, DeepSeek-V3 style MLA + MoE).
#[derive(Debug, Clone, Deserialize)]
pub struct Glm4MoeLiteConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size H.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Rank of the query compression.
    pub q_lora_rank: usize,
    /// Rank of the KV compression.
    pub kv_lora_rank: usize,
    /// Per-head query/key width without rotary.
    pub qk_nope_head_dim: usize,
    /// Per-head rotary width.
    pub qk_rope_head_dim: usize,
    /// Per-head value width.
    pub v_head_dim: usize,
    /// RMSNorm eps.
    pub rms_norm_eps: f64,
    /// RoPE theta.
    pub rope_theta: f64,
    /// Rotary on adjacent pairs (GLM-4.7-Flash: true).
    #[serde(default = "yes")]
    pub rope_interleave: bool,
    /// Leading dense layers.
    pub first_k_dense_replace: usize,
    /// Dense MLP width.
    pub intermediate_size: usize,
    /// Routed experts E.
    pub n_routed_experts: usize,
    /// Shared experts (summed into one MLP of n × I).
    #[serde(default)]
    pub n_shared_experts: usize,
    /// Experts per token K.
    pub num_experts_per_tok: usize,
    /// Expert width I.
    pub moe_intermediate_size: usize,
    /// Routed weights' scale.
    pub routed_scaling_factor: f64,
    /// Expert groups.
    #[serde(default = "one")]
    pub n_group: usize,
    /// Groups kept.
    #[serde(default = "one")]
    pub topk_group: usize,
    /// Tied input and output embeddings.
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

/// GLM-4-9B (THUDM's ChatGLM format, `model_type` `chatglm`): the fields and
/// serde names candle-transformers' `glm4::Config` reads, required where it
/// requires them, so the stock baseline parses the same file.
#[derive(Debug, Clone, Deserialize)]
pub struct Glm4Config {
    /// Decoder layers.
    pub num_layers: usize,
    /// Vocabulary size (embedding and output rows).
    pub padded_vocab_size: usize,
    /// Hidden size H.
    pub hidden_size: usize,
    /// MLP width I (`dense_h_to_4h` packs gate and up: 2I rows).
    pub ffn_hidden_size: usize,
    /// Head dimension.
    pub kv_channels: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Longest sequence (candle's rotary table length).
    pub seq_length: usize,
    /// RMSNorm eps.
    pub layernorm_epsilon: f64,
    /// RMSNorm instead of LayerNorm (kiln supports true).
    pub rmsnorm: bool,
    /// Residual taken after the layernorm (kiln supports false).
    pub apply_residual_connection_post_layernorm: bool,
    /// A final norm before the output layer.
    pub post_layer_norm: bool,
    /// Bias on every linear layer (kiln supports false).
    pub add_bias_linear: bool,
    /// Bias on `query_key_value`.
    pub add_qkv_bias: bool,
    /// Training-only (read for candle's sake).
    pub bias_dropout_fusion: bool,
    /// Grouped KV heads (kiln, like candle, supports true).
    pub multi_query_attention: bool,
    /// KV heads.
    pub multi_query_group_num: usize,
    /// Megatron's score scaling by the layer number, undone after the
    /// division: the same scores, so it is ignored.
    pub apply_query_key_layer_scaling: bool,
    /// Softmax in f32 (kiln always does).
    pub attention_softmax_in_fp32: bool,
    /// An f32 residual stream (kiln supports false).
    pub fp32_residual_connection: bool,
    /// RoPE base = 10000 · rope_ratio.
    #[serde(default = "one")]
    pub rope_ratio: usize,
}

/// LFM2-MoE (`lfm2_moe`, LFM2-8B-A1B): short-convolution and GQA layers,
/// dense then sigmoid-routed MoE feed-forwards.
#[derive(Debug, Clone, Deserialize)]
pub struct Lfm2MoeConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size H.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// `"conv"` or `"full_attention"` per layer.
    pub layer_types: Vec<String>,
    /// Query heads.
    pub num_attention_heads: usize,
    /// KV heads.
    pub num_key_value_heads: usize,
    /// RMSNorm eps (every norm).
    pub norm_eps: f64,
    /// RoPE theta (older files; newer ones nest it in `rope_parameters`).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE parameters (`rope_theta` inside).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    /// Short-convolution kernel length.
    #[serde(rename = "conv_L_cache")]
    pub conv_l_cache: usize,
    /// Bias on the convolution and its projections (kiln supports none).
    #[serde(default)]
    pub conv_bias: bool,
    /// Leading layers with a dense SwiGLU instead of MoE.
    pub num_dense_layers: usize,
    /// Dense SwiGLU width.
    pub intermediate_size: usize,
    /// Expert width I.
    pub moe_intermediate_size: usize,
    /// Routed experts E.
    pub num_experts: usize,
    /// Experts per token K.
    pub num_experts_per_tok: usize,
    /// Renormalise the top-k weights (kiln supports true).
    #[serde(default = "yes")]
    pub norm_topk_prob: bool,
    /// Routed weights' scale.
    #[serde(default = "unit")]
    pub routed_scaling_factor: f64,
    /// A selection bias (`feed_forward.expert_bias`) on the router scores.
    #[serde(default = "yes")]
    pub use_expert_bias: bool,
    /// Tied input and output embeddings (the original files say `tie_embedding`).
    #[serde(default = "yes", alias = "tie_embedding")]
    pub tie_word_embeddings: bool,
}

impl Lfm2MoeConfig {
    /// The RoPE base: `rope_theta`, or `rope_parameters.rope_theta`, or 1e6.
    pub fn rope_theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| {
                self.rope_parameters
                    .as_ref()
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(serde_json::Value::as_f64)
            })
            .unwrap_or(1e6)
    }

    /// Head dimension (H / query heads).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Whether layer `l` is an attention layer (otherwise a short convolution).
    pub fn is_attention(&self, l: usize) -> bool {
        self.layer_types
            .get(l)
            .is_some_and(|t| t == "full_attention")
    }
}

impl Glm4Config {
    /// The RoPE base.
    pub fn rope_theta(&self) -> f64 {
        10_000.0 * self.rope_ratio as f64
    }
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

fn unit() -> f64 {
    1.0
}

/// A supported model's config.
#[derive(Debug, Clone)]
pub enum ModelConfig {
    /// Qwen3-MoE.
    Qwen3Moe(Qwen3MoeConfig),
    /// GLM-4.7-Flash.
    Glm4MoeLite(Glm4MoeLiteConfig),
    /// GLM-4-9B (dense).
    Glm4(Glm4Config),
    /// LFM2-8B-A1B.
    Lfm2Moe(Lfm2MoeConfig),
}

impl ModelConfig {
    /// Parses a `config.json` text, dispatching on `model_type`.
    pub fn parse(text: &str) -> Result<(Self, serde_json::Value)> {
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("not JSON: {e}")))?;
        let kind = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        let bad = |e: serde_json::Error| Error::Config(format!("{kind}: {e}"));
        let cfg = match kind {
            "qwen3_moe" => Self::Qwen3Moe(serde_json::from_value(raw.clone()).map_err(bad)?),
            "glm4_moe_lite" => Self::Glm4MoeLite(serde_json::from_value(raw.clone()).map_err(bad)?),
            // THUDM's GLM-4-9B checkpoints say `chatglm` (candle's glm4 config has
            // no model_type). transformers' own `glm4` (GLM-4-0414) and `glm`
            // (the `-hf` repos) are other formats (llama-style names, extra
            // norms), so only `chatglm` is taken.
            "chatglm" => Self::Glm4(serde_json::from_value(raw.clone()).map_err(bad)?),
            "lfm2_moe" => Self::Lfm2Moe(serde_json::from_value(raw.clone()).map_err(bad)?),
            other => {
                return Err(Error::Config(format!(
                    "model_type {other:?} is not supported (kiln runs qwen3_moe, glm4_moe_lite, \
                     chatglm and lfm2_moe)"
                )))
            }
        };
        Ok((cfg, raw))
    }

    /// Reads `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<(Self, serde_json::Value)> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io { path, source })?;
        Self::parse(&text)
    }

    /// The number of decoder layers.
    pub fn layers(&self) -> usize {
        match self {
            Self::Qwen3Moe(c) => c.num_hidden_layers,
            Self::Glm4MoeLite(c) => c.num_hidden_layers,
            Self::Glm4(c) => c.num_layers,
            Self::Lfm2Moe(c) => c.num_hidden_layers,
        }
    }
}

/// The presets: the published configs of the target models.
pub const PRESETS: [(&str, &str); 4] = [
    ("qwen3-30b-a3b", QWEN3_30B_A3B),
    ("glm-4.7-flash", GLM_47_FLASH),
    ("glm-4-9b", GLM_4_9B),
    ("lfm2-8b-a1b", LFM2_8B_A1B),
];

/// A preset's `config.json` with its layer count (`num_hidden_layers` and/or
/// `num_layers`, whichever it has) optionally overridden; a per-layer
/// `layer_types` list is cut to the first `layers` entries.
pub fn preset(name: &str, layers: Option<usize>) -> Result<serde_json::Value> {
    let text = PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            Error::Config(format!(
                "unknown preset {name:?}; presets: {}",
                names.join(", ")
            ))
        })?;
    let mut v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::Config(format!("preset {name}: {e}")))?;
    if let Some(n) = layers {
        for key in ["num_hidden_layers", "num_layers", "max_window_layers"] {
            if v.get(key).is_some() {
                v[key] = n.into();
            }
        }
        if let Some(types) = v.get_mut("layer_types").and_then(|t| t.as_array_mut()) {
            if n > types.len() {
                return Err(Error::Config(format!(
                    "preset {name} has {} layers; {n} were asked for",
                    types.len()
                )));
            }
            types.truncate(n);
        }
    }
    Ok(v)
}

const QWEN3_30B_A3B: &str = r#"{
  "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
  "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
  "decoder_sparse_step": 1, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
  "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 40960,
  "max_window_layers": 48, "mlp_only_layers": [], "moe_intermediate_size": 768,
  "norm_topk_prob": true, "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
  "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": false,
  "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000.0,
  "router_aux_loss_coef": 0.001, "sliding_window": null, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936
}"#;

const GLM_47_FLASH: &str = r#"{
  "architectures": ["Glm4MoeLiteForCausalLM"], "model_type": "glm4_moe_lite",
  "attention_bias": false, "attention_dropout": 0.0, "eos_token_id": [154820, 154827, 154829],
  "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048,
  "initializer_range": 0.02, "intermediate_size": 10240, "kv_lora_rank": 512,
  "max_position_embeddings": 202752, "moe_intermediate_size": 1536, "n_group": 1,
  "n_routed_experts": 64, "n_shared_experts": 1, "norm_topk_prob": true,
  "num_attention_heads": 20, "num_experts_per_tok": 4, "num_hidden_layers": 47,
  "num_key_value_heads": 20, "q_lora_rank": 768, "qk_nope_head_dim": 192, "qk_rope_head_dim": 64,
  "rms_norm_eps": 1e-05, "rope_interleave": true, "rope_scaling": null, "rope_theta": 1000000.0,
  "routed_scaling_factor": 1.8, "tie_word_embeddings": false, "topk_group": 1,
  "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "use_cache": true, "v_head_dim": 256,
  "vocab_size": 154880
}"#;

/// THUDM/glm-4-9b-chat's `config.json` (it carries both `num_layers`, which
/// the model code reads, and `num_hidden_layers`).
const GLM_4_9B: &str = r#"{
  "architectures": ["ChatGLMModel"], "model_type": "chatglm",
  "add_bias_linear": false, "add_qkv_bias": true, "apply_query_key_layer_scaling": true,
  "apply_residual_connection_post_layernorm": false, "attention_dropout": 0.0,
  "attention_softmax_in_fp32": true, "bias_dropout_fusion": true,
  "eos_token_id": [151329, 151336, 151338], "ffn_hidden_size": 13696,
  "fp32_residual_connection": false, "hidden_dropout": 0.0, "hidden_size": 4096,
  "kv_channels": 128, "layernorm_epsilon": 1.5625e-07, "multi_query_attention": true,
  "multi_query_group_num": 2, "num_attention_heads": 32, "num_hidden_layers": 40,
  "num_layers": 40, "original_rope": true, "pad_token_id": 151329,
  "padded_vocab_size": 151552, "post_layer_norm": true, "rmsnorm": true, "rope_ratio": 500,
  "seq_length": 131072, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "use_cache": true
}"#;

/// LiquidAI/LFM2-8B-A1B's `config.json`: 24 layers, attention at 2, 6, 10,
/// 14, 18 and 21, the others short convolutions.
const LFM2_8B_A1B: &str = r#"{
  "architectures": ["Lfm2MoeForCausalLM"], "model_type": "lfm2_moe",
  "bos_token_id": 1, "eos_token_id": 7, "pad_token_id": 0,
  "conv_L_cache": 3, "conv_bias": false, "hidden_size": 2048, "intermediate_size": 7168,
  "layer_types": ["conv", "conv", "full_attention", "conv", "conv", "conv", "full_attention",
    "conv", "conv", "conv", "full_attention", "conv", "conv", "conv", "full_attention", "conv",
    "conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv"],
  "max_position_embeddings": 128000, "moe_intermediate_size": 1792, "norm_eps": 1e-05,
  "norm_topk_prob": true, "num_attention_heads": 32, "num_dense_layers": 2,
  "num_experts": 32, "num_experts_per_tok": 4, "num_hidden_layers": 24,
  "num_key_value_heads": 8, "rope_theta": 1000000.0, "routed_scaling_factor": 1.0,
  "tie_embedding": true, "torch_dtype": "bfloat16", "use_cache": true,
  "use_expert_bias": true, "vocab_size": 65536
}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_layers_override() {
        for (name, _) in PRESETS {
            let v = preset(name, Some(2)).expect("preset");
            let (cfg, _) = ModelConfig::parse(&v.to_string()).expect("parse");
            assert_eq!(cfg.layers(), 2, "{name}");
        }
        let v = preset("glm-4-9b", Some(3)).expect("glm-4-9b");
        assert_eq!(
            (v["num_layers"].as_u64(), v["num_hidden_layers"].as_u64()),
            (Some(3), Some(3))
        );
        let ModelConfig::Glm4(c) = ModelConfig::parse(&v.to_string()).expect("parse").0 else {
            panic!("glm-4-9b is not chatglm")
        };
        assert_eq!((c.rope_theta(), c.multi_query_group_num), (5e6, 2));
        assert!(preset("nope", None).is_err());
        let v = preset("lfm2-8b-a1b", Some(3)).expect("lfm2");
        let ModelConfig::Lfm2Moe(c) = ModelConfig::parse(&v.to_string()).expect("parse").0 else {
            panic!("lfm2-8b-a1b is not lfm2_moe")
        };
        assert_eq!(c.layer_types.len(), 3);
        assert!(c.is_attention(2) && !c.is_attention(1) && !c.is_attention(3));
        assert!(c.tie_word_embeddings, "tie_embedding is read");
        assert_eq!((c.rope_theta(), c.head_dim()), (1e6, 64));
        assert!(preset("lfm2-8b-a1b", Some(25)).is_err());
        let e = ModelConfig::parse(r#"{"model_type": "llama"}"#).unwrap_err();
        assert!(e.to_string().contains("not supported"));
    }
}
