//! GLM-4.7-Flash (`glm4_moe_lite`): DeepSeek-V3 style multi-head latent
//! attention, a dense first layer, then sigmoid-routed MoE layers with a
//! shared expert.
//!
//! Attention runs in the decompressed form HF's eager path uses: queries and
//! keys of `qk_nope + qk_rope` values per head, values of `v_head_dim`; the
//! cache holds decompressed keys and values. RoPE rotates the last
//! `qk_rope_head_dim` values of every query and key head as adjacent pairs.
//! On kiln's CUDA kernels with `KILN_MLA_ROPE_CACHE_FUSION=1`, building the
//! keys, rope and the cache write are one `mla_rope_cache` launch.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use kiln_kernels::reference::rope::RopeShape;
use kiln_kernels::reference::topk::SigmoidRouting;

use super::config::Glm4MoeLiteConfig;
use super::decoder::{Decoder, DecoderStack};
use super::kv_cache::KvCache;
use super::layers::{attention, linear, linear_normed, Mlp, MlpNames, NormedInput, RopeTables};
use super::moe::{MoeBlock, MoeDims, Router};
use super::Kernels;
use crate::error::{Error, Result};

/// transformers builds the latent RMSNorms with eps 1e-6 (mlx-lm uses the
/// config's 1e-5); kiln follows transformers.
const LATENT_NORM_EPS: f64 = 1e-6;

#[derive(Debug, Clone)]
enum Ffn {
    Dense(Mlp),
    Moe(MoeBlock),
}

/// The two projections of the hidden state that start MLA: `q_a_proj`
/// `[q_lora, H]` and `kv_a_proj_with_mqa` `[kv_lora + rope, H]`.
#[derive(Debug, Clone)]
enum LatentProjections {
    /// Two matmuls, as transformers computes them (the plain-candle baseline).
    Split { q_a: Tensor, kv_a: Tensor },
    /// One `[q_lora + kv_lora + rope, H]` weight: one launch on kiln's kernels,
    /// each output row computed exactly as on its own.
    Stacked { w: Tensor, q_lora: usize },
}

impl LatentProjections {
    fn new(q_a: Tensor, kv_a: Tensor, kernels: Kernels) -> Result<Self> {
        Ok(match kernels {
            Kernels::Kiln => Self::Stacked {
                q_lora: q_a.dim(0)?,
                w: Tensor::cat(&[&q_a, &kv_a], 0)?,
            },
            Kernels::Candle => Self::Split { q_a, kv_a },
        })
    }

    /// `(x · q_aᵀ, x · kv_aᵀ)` for the normed `x[T, H]` (the stacked
    /// projection may compute the norm).
    fn forward(&self, x: &NormedInput, kernels: Kernels) -> Result<(Tensor, Tensor)> {
        match self {
            Self::Split { q_a, kv_a } => {
                let x = x.tensor()?;
                Ok((linear(&x, q_a, kernels)?, linear(&x, kv_a, kernels)?))
            }
            Self::Stacked { w, q_lora } => {
                let both = linear_normed(x, w, None, kernels)?;
                let width = both.dim(1)?;
                Ok((
                    both.narrow(1, 0, *q_lora)?,
                    both.narrow(1, *q_lora, width - q_lora)?,
                ))
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Layer {
    ln1: Tensor,
    ln2: Tensor,
    latent: LatentProjections,
    q_a_norm: Tensor,
    q_b: Tensor,
    kv_a_norm: Tensor,
    kv_b: Tensor,
    o: Tensor,
    ffn: Ffn,
}

/// GLM-4.7-Flash for causal LM at batch 1.
#[derive(Debug)]
pub struct Glm4MoeLite {
    cfg: Glm4MoeLiteConfig,
    layers: Vec<Layer>,
    dec: Decoder,
    /// Whether `mla_rope_cache` applies, with the pack generation it was
    /// decided for (a pack made active later may replace rope's build).
    mla_rope_cache: Option<(u64, bool)>,
}

impl Glm4MoeLite {
    /// Builds the model from HF weight names under `vb`, with a KV cache of `max_len`.
    pub fn load(
        cfg: &Glm4MoeLiteConfig,
        vb: VarBuilder,
        kernels: Kernels,
        max_len: usize,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let nh = cfg.num_attention_heads;
        let dqk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim;
        let dv = cfg.v_head_dim;
        if cfg.n_shared_experts > 1 {
            return Err(Error::Config(
                "glm4_moe_lite: kiln supports at most one shared expert".into(),
            ));
        }
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
        for l in 0..cfg.num_hidden_layers {
            let v = vb.pp(format!("model.layers.{l}"));
            let a = v.pp("self_attn");
            let ffn = match moe_block(cfg, &vb, l, kernels)? {
                Some(m) => Ffn::Moe(m),
                None => Ffn::Dense(Mlp::load(&v.pp("mlp"), h, cfg.intermediate_size)?),
            };
            layers.push(Layer {
                ln1: v.pp("input_layernorm").get(h, "weight")?,
                ln2: v.pp("post_attention_layernorm").get(h, "weight")?,
                latent: LatentProjections::new(
                    a.pp("q_a_proj").get((cfg.q_lora_rank, h), "weight")?,
                    a.pp("kv_a_proj_with_mqa")
                        .get((cfg.kv_lora_rank + cfg.qk_rope_head_dim, h), "weight")?,
                    kernels,
                )?,
                q_a_norm: a.pp("q_a_layernorm").get(cfg.q_lora_rank, "weight")?,
                q_b: a
                    .pp("q_b_proj")
                    .get((nh * dqk, cfg.q_lora_rank), "weight")?,
                kv_a_norm: a.pp("kv_a_layernorm").get(cfg.kv_lora_rank, "weight")?,
                kv_b: a.pp("kv_b_proj").get(
                    (nh * (cfg.qk_nope_head_dim + dv), cfg.kv_lora_rank),
                    "weight",
                )?,
                o: a.pp("o_proj").get((h, nh * dv), "weight")?,
                ffn,
            });
            caches.push(KvCache::new(nh, max_len, dqk, dv, dtype, &dev)?);
        }
        let rope = RopeTables::new(rope_shape(cfg), max_len, dtype, &dev)?;
        Ok(Self {
            cfg: cfg.clone(),
            layers,
            mla_rope_cache: None,
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

/// RoPE over the decompressed heads: the last `qk_rope_head_dim` values of
/// every query and key head (`qk_nope + qk_rope` values), as HF rotates them
/// in the model dtype.
pub fn rope_shape(cfg: &Glm4MoeLiteConfig) -> RopeShape {
    let nh = cfg.num_attention_heads;
    RopeShape {
        qh: nh,
        kh: nh,
        head_dim: cfg.qk_nope_head_dim + cfg.qk_rope_head_dim,
        rot_dim: cfg.qk_rope_head_dim,
        rot_offset: cfg.qk_nope_head_dim,
        interleaved: cfg.rope_interleave,
        theta: cfg.rope_theta,
        hf_rounding: true,
    }
}

/// The router's rule: f32 sigmoid scores of f32 logits, the selection bias,
/// grouping, renormalisation and scale, as transformers computes them.
pub fn routing(cfg: &Glm4MoeLiteConfig) -> SigmoidRouting {
    SigmoidRouting {
        e: cfg.n_routed_experts,
        k: cfg.num_experts_per_tok,
        n_group: cfg.n_group,
        topk_group: cfg.topk_group,
        norm_eps: 1e-20,
        scale: cfg.routed_scaling_factor,
        sigmoid_in_dtype: false,
        dtype: kiln_kernels::DType::F32,
    }
}

/// Layer `l`'s MoE block (`model.layers.{l}.mlp` under the root `vb`); None
/// for the dense first layers.
pub fn moe_block(
    cfg: &Glm4MoeLiteConfig,
    vb: &VarBuilder,
    l: usize,
    kernels: Kernels,
) -> Result<Option<MoeBlock>> {
    if l < cfg.first_k_dense_replace {
        return Ok(None);
    }
    let routing = routing(cfg);
    let dims = MoeDims {
        h: cfg.hidden_size,
        i: cfg.moe_intermediate_size,
        e: cfg.n_routed_experts,
        k: cfg.num_experts_per_tok,
        shared_i: (cfg.n_shared_experts == 1).then_some(cfg.moe_intermediate_size),
        names: MlpNames::HF,
    };
    let v = vb.pp(format!("model.layers.{l}.mlp"));
    let bias = v.pp("gate").get_with_hints_dtype(
        cfg.n_routed_experts,
        "e_score_correction_bias",
        Default::default(),
        DType::F32,
    )?;
    let router = Router::Sigmoid { bias, routing };
    Ok(Some(MoeBlock::load(&v, dims, router, kernels)?))
}

impl Glm4MoeLite {
    /// [`ops::attention::mla_rope_cache_applies`] for this model's heads,
    /// decided once per pack generation (not at every layer of every step).
    fn mla_rope_cache_applies(&mut self, dtype: candle_core::DType) -> Result<bool> {
        let generation = crate::ops::pack::generation();
        match self.mla_rope_cache {
            Some((g, applies)) if g == generation => Ok(applies),
            _ => {
                let applies =
                    crate::ops::attention::mla_rope_cache_applies(&self.dec.rope.shape, dtype)?;
                self.mla_rope_cache = Some((generation, applies));
                Ok(applies)
            }
        }
    }
}

impl DecoderStack for Glm4MoeLite {
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
        let k_ = self.dec.kernels;
        let (nh, nope, rope_d, dv) = (
            c.num_attention_heads,
            c.qk_nope_head_dim,
            c.qk_rope_head_dim,
            c.v_head_dim,
        );
        let dqk = nope + rope_d;
        let t = x.rows()?;
        let ly = &self.layers[l];
        let (q_a, ckv) = ly.latent.forward(x, k_)?; // [T, q_lora], [T, kv_lora + rope]

        // The latent norms may run in the q_b and kv_b projections' prologues.
        let q = linear_normed(
            &NormedInput::new(None, &q_a, &ly.q_a_norm, LATENT_NORM_EPS, k_),
            &ly.q_b,
            None,
            k_,
        )?;
        let q = q.reshape((t, nh, dqk))?;
        let latent = ckv.narrow(1, 0, c.kv_lora_rank)?.contiguous()?;
        let k_pe = ckv.narrow(1, c.kv_lora_rank, rope_d)?; // [T, rope], shared by the heads
        let kv = linear_normed(
            &NormedInput::new(None, &latent, &ly.kv_a_norm, LATENT_NORM_EPS, k_),
            &ly.kv_b,
            None,
            k_,
        )?;
        let kv = kv.reshape((t, nh, nope + dv))?;
        let k_nope = kv.narrow(2, 0, nope)?;
        let v = kv.narrow(2, nope, dv)?;
        let fused = match positions {
            Some(_) if k_ == Kernels::Kiln && q.device().is_cuda() => {
                self.mla_rope_cache_applies(q.dtype())?
            }
            _ => false,
        };
        let q = match positions {
            // On kiln's CUDA kernels: the key, rope and the cache write in one
            // launch (bit for bit the three), positions read from the device.
            Some(p) if fused => {
                let c = &mut self.dec.caches[l];
                c.check_room(pos, t)?;
                let q = crate::ops::attention::mla_rope_cache(
                    &q,
                    &k_nope,
                    &k_pe,
                    &v,
                    p,
                    c.buffers(),
                    &self.dec.rope.shape,
                )?;
                c.set_len(pos + t);
                q
            }
            _ => {
                let k = match k_ {
                    Kernels::Kiln => crate::ops::attention::mla_key(&k_nope, &k_pe)?,
                    Kernels::Candle => {
                        let pe = k_pe
                            .reshape((t, 1, rope_d))?
                            .broadcast_as((t, nh, rope_d))?;
                        Tensor::cat(&[&k_nope, &pe], 2)?
                    }
                };
                let (q, k) = self
                    .dec
                    .rope
                    .apply(&q.contiguous()?, &k, pos, positions, k_)?;
                self.dec.caches[l].append(&k, &v, pos, positions)?;
                q
            }
        };
        let o = attention(&q, &self.dec.caches[l], pos, 1.0 / (dqk as f64).sqrt(), k_)?;
        linear(&o, &self.layers[l].o, k_)
    }

    fn feed_forward(&self, l: usize, x: &NormedInput) -> Result<Tensor> {
        match &self.layers[l].ffn {
            Ffn::Dense(m) => m.forward_normed(x, self.dec.kernels),
            Ffn::Moe(m) => m.forward_normed(x),
        }
    }
}
