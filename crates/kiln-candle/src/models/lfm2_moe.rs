//! LFM2-MoE (LFM2-8B-A1B) on kiln's ops: most layers mix tokens with a gated
//! short convolution, a few with GQA attention (qk-norm, NeoX RoPE); the
//! first layers have a dense SwiGLU, the rest sigmoid-routed experts with a
//! selection bias, in the model dtype.
//!
//! Weight names are the checkpoint's: `model.embed_tokens`,
//! `model.layers.N.{operator_norm, ffn_norm}`, `…conv.{in_proj, conv,
//! out_proj}` or `…self_attn.{q_proj, k_proj, v_proj, out_proj, q_layernorm,
//! k_layernorm}`, `…feed_forward.{w1, w3, w2}` (dense) or
//! `…feed_forward.{gate, expert_bias, experts.J.{w1, w3, w2}}`,
//! `model.embedding_norm`; the output projection is the embedding (tied).
//!
//! A convolution layer's step: the `in_proj` matmul (B | C | x), the
//! `short_conv` kernel (C ⊙ conv(B ⊙ x), its two-row state updated in place,
//! so a decode graph replays it), the `out_proj` matmul.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use kiln_kernels::reference::topk::SigmoidRouting;

use super::config::Lfm2MoeConfig;
use super::decoder::{Decoder, DecoderStack};
use super::kv_cache::KvCache;
use super::layers::{linear, Mlp, MlpNames, NormedInput, RopeTables};
use super::moe::{MoeBlock, MoeDims, Router};
use super::qk_norm_gqa::{QkNormGqa, QkNormGqaNames};
use super::Kernels;
use crate::error::{Error, Result};
use crate::ops;
use crate::ops::rope::QkNormRopeShape;

/// LFM2's attention weight names.
const ATTENTION_NAMES: QkNormGqaNames = QkNormGqaNames {
    o: "out_proj",
    q_norm: "q_layernorm",
    k_norm: "k_layernorm",
};

/// How a layer mixes tokens.
#[derive(Debug, Clone)]
enum Mixer {
    /// GQA attention over KV cache `cache` (caches exist for attention layers only).
    Attention { attn: QkNormGqa, cache: usize },
    /// The gated short convolution.
    Conv(ShortConv),
}

/// One short-convolution layer's weights and state.
#[derive(Debug, Clone)]
struct ShortConv {
    /// `in_proj`: `[3H, H]` (B, C, x).
    in_proj: Tensor,
    /// The depthwise kernel `[H, L]` (the checkpoint's `[H, 1, L]`).
    w: Tensor,
    /// Its columns in f32, `L` × `[H]`: the plain-candle path's taps, made
    /// once at load (empty on kiln's kernels).
    taps: Vec<Tensor>,
    /// `out_proj`: `[H, H]`.
    out_proj: Tensor,
    /// The last `L-1` rows of `B ⊙ x`, `[L-1, H]`, updated in place.
    state: Tensor,
}

#[derive(Debug, Clone)]
enum FeedForward {
    Dense(Mlp),
    Moe(MoeBlock),
}

#[derive(Debug, Clone)]
struct Layer {
    operator_norm: Tensor,
    ffn_norm: Tensor,
    mixer: Mixer,
    ffn: FeedForward,
}

/// LFM2-MoE for causal LM at batch 1.
#[derive(Debug)]
pub struct Lfm2Moe {
    layers: Vec<Layer>,
    dec: Decoder,
}

impl Lfm2Moe {
    /// Builds the model from the checkpoint's weight names under `vb`, with KV caches of `max_len`.
    pub fn load(
        cfg: &Lfm2MoeConfig,
        vb: VarBuilder,
        kernels: Kernels,
        max_len: usize,
    ) -> Result<Self> {
        check(cfg)?;
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let kvh = cfg.num_key_value_heads;
        let l_conv = cfg.conv_l_cache;
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
        let shape = attention_heads(cfg);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let mut caches = Vec::new();
        for l in 0..cfg.num_hidden_layers {
            let v = vb.pp(format!("model.layers.{l}"));
            let mixer = if cfg.is_attention(l) {
                caches.push(KvCache::new(kvh, max_len, hd, hd, dtype, &dev)?);
                Mixer::Attention {
                    attn: QkNormGqa::load(&v.pp("self_attn"), h, shape, ATTENTION_NAMES)?,
                    cache: caches.len() - 1,
                }
            } else {
                let c = v.pp("conv");
                let w = c
                    .pp("conv")
                    .get((h, 1, l_conv), "weight")?
                    .reshape((h, l_conv))?;
                let taps = match kernels {
                    Kernels::Kiln => Vec::new(),
                    Kernels::Candle => {
                        let wf = w.to_dtype(DType::F32)?;
                        (0..l_conv)
                            .map(|j| Ok(wf.narrow(1, j, 1)?.squeeze(1)?.contiguous()?))
                            .collect::<Result<_>>()?
                    }
                };
                Mixer::Conv(ShortConv {
                    in_proj: c.pp("in_proj").get((3 * h, h), "weight")?,
                    w,
                    taps,
                    out_proj: c.pp("out_proj").get((h, h), "weight")?,
                    state: Tensor::zeros((l_conv - 1, h), dtype, &dev)?,
                })
            };
            let ffn = match moe_block(cfg, &vb, l, kernels)? {
                Some(moe) => FeedForward::Moe(moe),
                None => FeedForward::Dense(Mlp::load_named(
                    &v.pp("feed_forward"),
                    h,
                    cfg.intermediate_size,
                    MlpNames::LFM2,
                )?),
            };
            layers.push(Layer {
                operator_norm: v.pp("operator_norm").get(h, "weight")?,
                ffn_norm: v.pp("ffn_norm").get(h, "weight")?,
                mixer,
                ffn,
            });
        }
        let rope = RopeTables::new(shape.rope_shape(cfg.rope_theta()), max_len, dtype, &dev)?;
        Ok(Self {
            layers,
            dec: Decoder {
                embed,
                norm: Some(vb.pp("model.embedding_norm").get(h, "weight")?),
                lm_head,
                eps: cfg.norm_eps,
                rope,
                caches,
                kernels,
                device: dev,
                graph: None,
            },
        })
    }
}

/// Refuses what kiln's LFM2 does not implement, naming the setting.
fn check(cfg: &Lfm2MoeConfig) -> Result<()> {
    let bad = |why: String| Err(Error::Config(format!("lfm2_moe: {why}")));
    if cfg.layer_types.len() != cfg.num_hidden_layers {
        return bad(format!(
            "layer_types has {} entries for {} layers",
            cfg.layer_types.len(),
            cfg.num_hidden_layers
        ));
    }
    if let Some(t) = cfg
        .layer_types
        .iter()
        .find(|t| *t != "conv" && *t != "full_attention")
    {
        return bad(format!(
            "layer type {t:?} is neither \"conv\" nor \"full_attention\""
        ));
    }
    if !cfg.layer_types.iter().any(|t| t == "full_attention") {
        return bad(
            "kiln needs at least one attention layer (its KV cache sets the context length)".into(),
        );
    }
    if cfg.conv_bias {
        return bad("conv_bias is not supported".into());
    }
    if !(2..=8).contains(&cfg.conv_l_cache) {
        return bad(format!("conv_L_cache {} is not in 2..=8", cfg.conv_l_cache));
    }
    if !cfg.norm_topk_prob {
        return bad("norm_topk_prob false is not supported".into());
    }
    let (qh, kvh) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    if qh == 0 || kvh == 0 || !qh.is_multiple_of(kvh) || !cfg.hidden_size.is_multiple_of(qh) {
        return bad(format!(
            "{qh} query heads, {kvh} kv heads and hidden size {} do not fit",
            cfg.hidden_size
        ));
    }
    Ok(())
}

/// The attention layers' heads and their qk-norm eps.
pub fn attention_heads(cfg: &Lfm2MoeConfig) -> QkNormRopeShape {
    QkNormRopeShape {
        qh: cfg.num_attention_heads,
        kvh: cfg.num_key_value_heads,
        d: cfg.head_dim(),
        eps: cfg.norm_eps,
    }
}

/// The router's math: sigmoid and weights in the model dtype, renormalised
/// with eps 1e-6, scaled by `routed_scaling_factor`.
pub fn routing(cfg: &Lfm2MoeConfig, dtype: DType) -> Result<SigmoidRouting> {
    Ok(SigmoidRouting {
        e: cfg.num_experts,
        k: cfg.num_experts_per_tok,
        n_group: 1,
        topk_group: 1,
        norm_eps: 1e-6,
        scale: cfg.routed_scaling_factor,
        sigmoid_in_dtype: true,
        dtype: ops::kernel_dtype("lfm2 router", dtype)?,
    })
}

/// Layer `l`'s MoE block (`model.layers.{l}.feed_forward` under the root
/// `vb`), or None for the dense first layers.
pub fn moe_block(
    cfg: &Lfm2MoeConfig,
    vb: &VarBuilder,
    l: usize,
    kernels: Kernels,
) -> Result<Option<MoeBlock>> {
    if l < cfg.num_dense_layers {
        return Ok(None);
    }
    let vb = &vb.pp(format!("model.layers.{l}.feed_forward"));
    let dims = MoeDims {
        h: cfg.hidden_size,
        i: cfg.moe_intermediate_size,
        e: cfg.num_experts,
        k: cfg.num_experts_per_tok,
        shared_i: None,
        names: MlpNames::LFM2,
    };
    let bias = if cfg.use_expert_bias {
        vb.get_with_hints_dtype(
            cfg.num_experts,
            "expert_bias",
            Default::default(),
            DType::F32,
        )?
    } else {
        Tensor::zeros(cfg.num_experts, DType::F32, vb.device())?
    };
    let router = Router::Sigmoid {
        bias,
        routing: routing(cfg, vb.dtype())?,
    };
    Ok(Some(MoeBlock::load(vb, dims, router, kernels)?))
}

impl ShortConv {
    /// `out_proj(C ⊙ conv(B ⊙ x))` for the normed `x[T, H]`, advancing the state.
    fn forward(&self, x: &Tensor, k: Kernels) -> Result<Tensor> {
        let bcx = linear(x, &self.in_proj, k)?;
        let y = match k {
            Kernels::Kiln => ops::short_conv::short_conv(&bcx, &self.w, &self.state)?,
            Kernels::Candle => self.plain(&bcx)?,
        };
        linear(&y, &self.out_proj, k)
    }

    /// The same on plain candle ops (the baseline): the state rows and the
    /// new `B ⊙ x` rows in one sequence, a weighted sum of `L` shifted views.
    fn plain(&self, bcx: &Tensor) -> Result<Tensor> {
        let (t, h3) = bcx.dims2()?;
        let h = h3 / 3;
        let (b, c, x) = (
            bcx.narrow(1, 0, h)?,
            bcx.narrow(1, h, h)?,
            bcx.narrow(1, 2 * h, h)?,
        );
        let bx = (b * x)?;
        let l = self.taps.len();
        let seq = Tensor::cat(&[&self.state, &bx], 0)?; // [L-1+T, H]
        let mut acc = Tensor::zeros((t, h), DType::F32, bcx.device())?;
        for (j, wj) in self.taps.iter().enumerate() {
            let rows = seq.narrow(0, j, t)?.to_dtype(DType::F32)?;
            acc = (acc + rows.broadcast_mul(wj)?)?;
        }
        let conv = acc.to_dtype(bcx.dtype())?;
        let next = seq.narrow(0, t, l - 1)?.contiguous()?;
        self.state.slice_set(&next, 0, 0)?;
        Ok((c * conv)?)
    }
}

impl DecoderStack for Lfm2Moe {
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
        (
            self.layers[l].operator_norm.clone(),
            self.layers[l].ffn_norm.clone(),
        )
    }

    fn attention(
        &mut self,
        l: usize,
        x: &NormedInput,
        pos: usize,
        positions: Option<&Tensor>,
    ) -> Result<Tensor> {
        match &self.layers[l].mixer {
            Mixer::Attention { attn, cache } => {
                attn.forward(&mut self.dec, *cache, x, pos, positions)
            }
            Mixer::Conv(conv) => conv.forward(&x.tensor()?, self.dec.kernels),
        }
    }

    fn feed_forward(&self, l: usize, x: &NormedInput) -> Result<Tensor> {
        match &self.layers[l].ffn {
            FeedForward::Dense(mlp) => mlp.forward_normed(x, self.dec.kernels),
            FeedForward::Moe(moe) => moe.forward_normed(x),
        }
    }

    fn reset_state(&mut self) -> Result<()> {
        for layer in &self.layers {
            if let Mixer::Conv(c) = &layer.mixer {
                c.state.zero_set()?;
            }
        }
        Ok(())
    }
}
