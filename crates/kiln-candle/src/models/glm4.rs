//! GLM-4-9B (THUDM's ChatGLM format, `model_type` `chatglm`) on kiln's ops:
//! dense, GQA attention with a biased fused qkv projection, partial
//! interleaved RoPE, a packed SwiGLU MLP.
//!
//! The weight names are those of the checkpoint and of candle-transformers'
//! `glm4` model (`transformer.embedding.word_embeddings`,
//! `transformer.encoder.layers.N.{input_layernorm, self_attention.{query_key_value, dense},
//! post_attention_layernorm, mlp.{dense_h_to_4h, dense_4h_to_h}}`,
//! `transformer.encoder.final_layernorm`, `transformer.output_layer`).
//!
//! RoPE as ChatGLM's `apply_rotary_pos_emb`: only the first half of each
//! head (`kv_channels / 2` values) rotates, on adjacent pairs `(x[2i],
//! x[2i+1])` with `inv_freq[i] = base^(-2i / (kv_channels / 2))`, base
//! `10000 · rope_ratio`; the second half passes through. kiln's rope kernel
//! expresses that exactly (`rot_dim = kv_channels / 2`, `rot_offset = 0`,
//! `interleaved`). The tables are built in f32 and rounded to the dtype, as
//! HF does (candle's stock model builds its angles in the model dtype).
//!
//! A decode step per layer: add_rmsnorm, the qkv matmul with its bias, rope,
//! the cache write, attention, the dense matmul, add_rmsnorm, the gate-up
//! matmul with its swiglu, the down matmul.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use kiln_kernels::reference::rope::RopeShape;

use super::config::Glm4Config;
use super::decoder::{Decoder, DecoderStack};
use super::kv_cache::KvCache;
use super::layers::{attention, linear, linear_bias, Mlp, RopeTables};
use super::Kernels;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
struct Layer {
    ln1: Tensor,
    ln2: Tensor,
    /// `query_key_value`: `[(QH + 2·KVH)·HD, H]`, q then k then v.
    qkv: Tensor,
    /// Its bias (`add_qkv_bias`), `[(QH + 2·KVH)·HD]`.
    qkv_bias: Option<Tensor>,
    /// `dense`: `[H, QH·HD]`.
    dense: Tensor,
    /// `dense_h_to_4h` is already `[gate; up]`.
    mlp: Mlp,
}

/// GLM-4-9B for causal LM at batch 1.
#[derive(Debug)]
pub struct Glm4 {
    cfg: Glm4Config,
    layers: Vec<Layer>,
    dec: Decoder,
}

impl Glm4 {
    /// Builds the model from the checkpoint's weight names under `vb`, with a KV cache of `max_len`.
    pub fn load(
        cfg: &Glm4Config,
        vb: VarBuilder,
        kernels: Kernels,
        max_len: usize,
    ) -> Result<Self> {
        if !cfg.rmsnorm
            || cfg.apply_residual_connection_post_layernorm
            || cfg.add_bias_linear
            || !cfg.multi_query_attention
            || cfg.fp32_residual_connection
        {
            return Err(Error::Config(
                "chatglm: kiln supports rmsnorm, multi_query_attention, and no \
                 apply_residual_connection_post_layernorm, add_bias_linear or \
                 fp32_residual_connection (GLM-4-9B's settings)"
                    .into(),
            ));
        }
        let (h, hd, f) = (cfg.hidden_size, cfg.kv_channels, cfg.ffn_hidden_size);
        let (qh, kvh) = (cfg.num_attention_heads, cfg.multi_query_group_num);
        if kvh == 0 || qh % kvh != 0 || hd % 4 != 0 {
            return Err(Error::Config(format!(
                "chatglm: {qh} heads over {kvh} kv groups of {hd} values: need groups \
                 dividing the heads and kv_channels a multiple of 4"
            )));
        }
        let dev = vb.device().clone();
        let dtype = vb.dtype();
        let vb = vb.pp("transformer");
        let vocab = cfg.padded_vocab_size;
        let embed = vb
            .pp("embedding.word_embeddings")
            .get((vocab, h), "weight")?;
        let output = vb.pp("output_layer").get((vocab, h), "weight")?;
        let qkv_rows = (qh + 2 * kvh) * hd;
        let enc = vb.pp("encoder");
        let mut layers = Vec::with_capacity(cfg.num_layers);
        let mut caches = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let v = enc.pp(format!("layers.{l}"));
            let a = v.pp("self_attention");
            let m = v.pp("mlp");
            layers.push(Layer {
                ln1: v.pp("input_layernorm").get(h, "weight")?,
                ln2: v.pp("post_attention_layernorm").get(h, "weight")?,
                qkv: a.pp("query_key_value").get((qkv_rows, h), "weight")?,
                qkv_bias: if cfg.add_qkv_bias {
                    Some(a.pp("query_key_value").get(qkv_rows, "bias")?)
                } else {
                    None
                },
                dense: a.pp("dense").get((h, qh * hd), "weight")?,
                mlp: Mlp {
                    gate_up: m.pp("dense_h_to_4h").get((2 * f, h), "weight")?,
                    down: m.pp("dense_4h_to_h").get((h, f), "weight")?,
                },
            });
            caches.push(KvCache::new(kvh, max_len, hd, hd, dtype, &dev)?);
        }
        let norm = if cfg.post_layer_norm {
            Some(enc.pp("final_layernorm").get(h, "weight")?)
        } else {
            None
        };
        let rope = RopeTables::new(
            RopeShape {
                qh,
                kh: kvh,
                head_dim: hd,
                rot_dim: hd / 2,
                rot_offset: 0,
                interleaved: true,
                theta: cfg.rope_theta(),
                hf_rounding: true,
            },
            max_len,
            dtype,
            &dev,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            layers,
            dec: Decoder {
                embed,
                norm,
                lm_head: output,
                eps: cfg.layernorm_epsilon,
                rope,
                caches,
                kernels,
                device: dev,
                graph: None,
            },
        })
    }
}

impl DecoderStack for Glm4 {
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
        x: &Tensor,
        pos: usize,
        positions: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (qh, kvh, hd) = (
            c.num_attention_heads,
            c.multi_query_group_num,
            c.kv_channels,
        );
        let t = x.dim(0)?;
        let layer = &self.layers[l];
        let qkv = linear_bias(x, &layer.qkv, layer.qkv_bias.as_ref(), self.dec.kernels)?;
        let q = qkv.narrow(1, 0, qh * hd)?.reshape((t, qh, hd))?;
        let k = qkv.narrow(1, qh * hd, kvh * hd)?.reshape((t, kvh, hd))?;
        let v = qkv
            .narrow(1, (qh + kvh) * hd, kvh * hd)?
            .reshape((t, kvh, hd))?;
        let (q, k) = self
            .dec
            .rope
            .apply(&q, &k, pos, positions, self.dec.kernels)?;
        self.dec.caches[l].append(&k, &v, pos, positions)?;
        let o = attention(
            &q,
            &self.dec.caches[l],
            pos,
            1.0 / (hd as f64).sqrt(),
            self.dec.kernels,
        )?;
        linear(&o, &self.layers[l].dense, self.dec.kernels)
    }

    fn feed_forward(&self, l: usize, x: &Tensor) -> Result<Tensor> {
        self.layers[l].mlp.forward(x, self.dec.kernels)
    }
}
