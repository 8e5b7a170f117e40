//! Qwen3-MoE (Qwen3-30B-A3B) on kiln's ops: GQA attention with per-head
//! qk-norm and NeoX RoPE, softmax-routed experts, no shared expert.
//!
//! A decode step per layer: add_rmsnorm, fused qkv matmul, two qk-norms,
//! rope, the cache write, attention, o_proj, add_rmsnorm, router matmul, then
//! the router and the two expert kernels.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::config::Qwen3MoeConfig;
use super::decoder::{Decoder, DecoderStack};
use super::kv_cache::KvCache;
use super::layers::{MlpNames, NormedInput, RopeTables};
use super::moe::{MoeBlock, MoeDims, Router};
use super::qk_norm_gqa::{QkNormGqa, QkNormGqaNames};
use super::Kernels;
use crate::error::{Error, Result};
use crate::ops::rope::QkNormRopeShape;

#[derive(Debug, Clone)]
struct Layer {
    ln1: Tensor,
    ln2: Tensor,
    attn: QkNormGqa,
    moe: MoeBlock,
}

/// Qwen3's attention weight names.
const ATTENTION_NAMES: QkNormGqaNames = QkNormGqaNames {
    o: "o_proj",
    q_norm: "q_norm",
    k_norm: "k_norm",
};

/// Qwen3-MoE for causal LM at batch 1.
#[derive(Debug)]
pub struct Qwen3Moe {
    layers: Vec<Layer>,
    dec: Decoder,
}

impl Qwen3Moe {
    /// Builds the model from HF weight names under `vb`, with a KV cache of `max_len`.
    pub fn load(
        cfg: &Qwen3MoeConfig,
        vb: VarBuilder,
        kernels: Kernels,
        max_len: usize,
    ) -> Result<Self> {
        if cfg.decoder_sparse_step != 1 || !cfg.mlp_only_layers.is_empty() || cfg.attention_bias {
            return Err(Error::Config(
                "qwen3_moe: kiln supports MoE in every layer and no attention bias".into(),
            ));
        }
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let kvh = cfg.num_key_value_heads;
        let dev = vb.device().clone();
        let dtype = vb.dtype();
        let embed = vb
            .pp("model.embed_tokens")
            .get((cfg.vocab_size, h), "weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            vb.pp("lm_head").get((cfg.vocab_size, h), "weight")?
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let mut caches = Vec::with_capacity(cfg.num_hidden_layers);
        let shape = attention_heads(cfg);
        for l in 0..cfg.num_hidden_layers {
            let v = vb.pp(format!("model.layers.{l}"));
            layers.push(Layer {
                ln1: v.pp("input_layernorm").get(h, "weight")?,
                ln2: v.pp("post_attention_layernorm").get(h, "weight")?,
                attn: QkNormGqa::load(&v.pp("self_attn"), h, shape, ATTENTION_NAMES)?,
                moe: moe_block(cfg, &vb, l, kernels)?,
            });
            caches.push(KvCache::new(kvh, max_len, hd, hd, dtype, &dev)?);
        }
        let rope = RopeTables::new(shape.rope_shape(cfg.rope_theta), max_len, dtype, &dev)?;
        Ok(Self {
            layers,
            dec: Decoder {
                embed,
                norm: Some(vb.pp("model.norm").get(h, "weight")?),
                lm_head,
                eps: cfg.rms_norm_eps,
                rope,
                caches,
                kernels,
                device: dev,
                graph: None,
            },
        })
    }
}

/// The attention heads and their qk-norm eps.
pub fn attention_heads(cfg: &Qwen3MoeConfig) -> QkNormRopeShape {
    QkNormRopeShape {
        qh: cfg.num_attention_heads,
        kvh: cfg.num_key_value_heads,
        d: cfg.head_dim,
        eps: cfg.rms_norm_eps,
    }
}

/// Layer `l`'s MoE block (`model.layers.{l}.mlp` under the root `vb`).
pub fn moe_block(
    cfg: &Qwen3MoeConfig,
    vb: &VarBuilder,
    l: usize,
    kernels: Kernels,
) -> Result<MoeBlock> {
    let dims = MoeDims {
        h: cfg.hidden_size,
        i: cfg.moe_intermediate_size,
        e: cfg.num_experts,
        k: cfg.num_experts_per_tok,
        shared_i: None,
        names: MlpNames::HF,
    };
    let router = Router::Softmax {
        renorm: cfg.norm_topk_prob,
    };
    MoeBlock::load(
        &vb.pp(format!("model.layers.{l}.mlp")),
        dims,
        router,
        kernels,
    )
}

impl DecoderStack for Qwen3Moe {
    fn decoder(&self) -> &Decoder {
        &self.dec
    }

    fn decoder_mut(&mut self) -> &mut Decoder {
        &mut self.dec
    }

    fn layer_count(&self) -> usize {
        self.layers.len()
    }

    fn norms(&self, l: usize) -> (Tensor, Tensor) {
        (self.layers[l].ln1.clone(), self.layers[l].ln2.clone())
    }

    fn attention(
        &mut self,
        l: usize,
        x: &NormedInput,
        pos: usize,
        positions: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.layers[l]
            .attn
            .forward(&mut self.dec, l, x, pos, positions)
    }

    fn feed_forward(&self, l: usize, x: &NormedInput) -> Result<Tensor> {
        self.layers[l].moe.forward_normed(x)
    }
}
