//! Fixtures shared by kiln-candle's integration tests.
// Each test binary compiles this module and uses some of it.
#![allow(dead_code)]

/// Qwen3-MoE's settings at toy size.
pub fn tiny_qwen3() -> serde_json::Value {
    serde_json::json!({
        "model_type": "qwen3_moe", "vocab_size": 96, "hidden_size": 256, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
        "max_position_embeddings": 128, "max_window_layers": 2, "sliding_window": null,
        "use_sliding_window": false, "tie_word_embeddings": false, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6, "hidden_act": "silu", "attention_bias": false,
        "decoder_sparse_step": 1, "moe_intermediate_size": 32, "num_experts": 8,
        "num_experts_per_tok": 2, "norm_topk_prob": true
    })
}

/// GLM-4.7-Flash's settings at toy size (a dense first layer, then MoE).
pub fn tiny_glm() -> serde_json::Value {
    serde_json::json!({
        "model_type": "glm4_moe_lite", "vocab_size": 96, "hidden_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "q_lora_rank": 64, "kv_lora_rank": 64, "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16, "v_head_dim": 32, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
        "rope_interleave": true, "first_k_dense_replace": 1, "intermediate_size": 64,
        "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2,
        "moe_intermediate_size": 32, "routed_scaling_factor": 1.8, "n_group": 1, "topk_group": 1
    })
}
