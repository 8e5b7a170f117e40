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
//! A decode step per layer: add_rmsnorm, the qkv matmul with its bias, rope
//! and the cache write (one `rope_cache` launch on kiln's CUDA kernels unless
//! `KILN_ROPE_CACHE_FUSION=0`), attention, the dense matmul, add_rmsnorm, the
//! gate-up matmul with its swiglu, the down matmul.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use kiln_kernels::reference::rope::RopeShape;

use super::config::Glm4Config;
use super::decoder::{Decoder, DecoderStack};
use super::kv_cache::KvCache;
use super::layers::{attention, linear, linear_normed, split_qkv, Mlp, NormedInput, RopeTables};
use super::Kernels;
use crate::error::{Error, Result};
use crate::ops;

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

/// GLM-4-9B's rotary (ChatGLM's partial interleaved RoPE) over its q and KV
/// heads: the first `kv_channels / 2` values of each head, adjacent pairs,
/// HF's rounding in the model dtype, base `10000 · rope_ratio`.
pub fn rope_shape(cfg: &Glm4Config) -> RopeShape {
    RopeShape {
        qh: cfg.num_attention_heads,
        kh: cfg.multi_query_group_num,
        head_dim: cfg.kv_channels,
        rot_dim: cfg.kv_channels / 2,
        rot_offset: 0,
        interleaved: true,
        theta: cfg.rope_theta(),
        hf_rounding: true,
    }
}

/// GLM-4-9B for causal LM at batch 1.
#[derive(Debug)]
pub struct Glm4 {
    cfg: Glm4Config,
    layers: Vec<Layer>,
    dec: Decoder,
    /// Whether `rope_cache` applies, with the pack generation it was decided
    /// for (a pack made active later may replace rope's build).
    rope_cache: Option<(u64, bool)>,
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
        let rope = RopeTables::new(rope_shape(cfg), max_len, dtype, &dev)?;
        Ok(Self {
            cfg: cfg.clone(),
            layers,
            rope_cache: None,
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

impl Glm4 {
    /// [`ops::rope::rope_cache_applies`] for this model's heads, decided once
    /// per pack generation (not at every layer of every step).
    fn rope_cache_applies(&mut self, dtype: candle_core::DType) -> Result<bool> {
        let generation = ops::pack::generation();
        match self.rope_cache {
            Some((g, applies)) if g == generation => Ok(applies),
            _ => {
                let applies = ops::rope::rope_cache_applies(&self.dec.rope.shape, dtype)?;
                self.rope_cache = Some((generation, applies));
                Ok(applies)
            }
        }
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
        x: &NormedInput,
        pos: usize,
        positions: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (qh, kvh, hd) = (
            c.num_attention_heads,
            c.multi_query_group_num,
            c.kv_channels,
        );
        let t = x.rows()?;
        let layer = &self.layers[l];
        let qkv = linear_normed(x, &layer.qkv, layer.qkv_bias.as_ref(), self.dec.kernels)?;
        let fused = match positions {
            Some(_) if self.dec.kernels == Kernels::Kiln && x.device().is_cuda() => {
                self.rope_cache_applies(qkv.dtype())?
            }
            _ => false,
        };
        let q = match positions {
            // On kiln's CUDA kernels: rope and the cache write in one launch
            // (bit for bit the two), positions read from the device (a
            // replayed decode graph rewrites them).
            Some(p) if fused => {
                let c = &mut self.dec.caches[l];
                c.check_room(pos, t)?;
                let q = ops::rope::rope_cache(&qkv, p, c.buffers(), &self.dec.rope.shape)?;
                c.set_len(pos + t);
                q
            }
            _ => {
                let (q, k, v) = split_qkv(&qkv, (qh, kvh, hd))?;
                let (q, k) = self
                    .dec
                    .rope
                    .apply(&q, &k, pos, positions, self.dec.kernels)?;
                self.dec.caches[l].append(&k, &v, pos, positions)?;
                q
            }
        };
        let o = attention(
            &q,
            &self.dec.caches[l],
            pos,
            1.0 / (hd as f64).sqrt(),
            self.dec.kernels,
        )?;
        linear(&o, &self.layers[l].dense, self.dec.kernels)
    }

    fn feed_forward(&self, l: usize, x: &NormedInput) -> Result<Tensor> {
        self.layers[l].mlp.forward_normed(x, self.dec.kernels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::config::{preset, ModelConfig};
    use kiln_kernels::ops::rope_cache::RopeCacheConfig;

    fn glm4_9b() -> Glm4Config {
        let raw = preset("glm-4-9b", Some(1)).expect("preset");
        match ModelConfig::parse(&raw.to_string()) {
            Ok((ModelConfig::Glm4(c), _)) => c,
            other => panic!("glm-4-9b is not chatglm: {other:?}"),
        }
    }

    /// The catalog's GLM-4-9B rope_cache preset (what NVRTC compiles in
    /// kiln-kernels' tests) is the model's own rotary, and the fused path
    /// applies to it in every kernel dtype unless switched off.
    #[test]
    fn the_fused_rope_cache_takes_the_models_heads() {
        let shape = rope_shape(&glm4_9b());
        assert_eq!(
            shape,
            RopeCacheConfig::glm4_9b(1024, kiln_kernels::DType::BF16)
                .shape
                .rope
        );
        for dt in [
            candle_core::DType::BF16,
            candle_core::DType::F16,
            candle_core::DType::F32,
        ] {
            assert_eq!(
                ops::rope::rope_cache_applies(&shape, dt).expect("applies"),
                ops::rope::rope_cache_enabled(),
                "{dt:?}"
            );
        }
        assert!(ops::rope::rope_cache_build(&shape, kiln_kernels::DType::BF16).is_ok());
        // A shape the kernel cannot hold falls back to rope + the cache write.
        let wide = RopeShape { qh: 96, ..shape };
        assert!(!ops::rope::rope_cache_applies(&wide, candle_core::DType::BF16).expect("applies"));
    }

    /// The fused op is CUDA only and checks its shapes before anything else.
    #[test]
    fn rope_cache_refuses_cpu_tensors_and_wrong_shapes() {
        let mut shape = rope_shape(&glm4_9b());
        shape.qh = 2;
        shape.kh = 1;
        let dev = candle_core::Device::Cpu;
        let bf = candle_core::DType::BF16;
        let qkv = Tensor::zeros((1, 4 * 128), bf, &dev).expect("qkv");
        let pos = Tensor::zeros(1, candle_core::DType::I32, &dev).expect("positions");
        let cache = KvCache::new(1, 16, 128, 128, bf, &dev).expect("cache");
        let err = ops::rope::rope_cache(&qkv, &pos, cache.buffers(), &shape)
            .expect_err("CPU")
            .to_string();
        assert!(err.contains("CUDA only"), "{err}");
        let short = Tensor::zeros((1, 3 * 128), bf, &dev).expect("qkv");
        let err = ops::rope::rope_cache(&short, &pos, cache.buffers(), &shape)
            .expect_err("shape")
            .to_string();
        assert!(err.contains("do not fit"), "{err}");
        assert!(cache.check_room(15, 1).is_ok());
        assert!(cache.check_room(15, 2).is_err());
    }
}
