//! The skeleton every kiln decoder shares: embeddings, KV caches, rotary
//! tables, the layer loop with each residual add fused into the next RMSNorm,
//! the final norm and the output projection. A model supplies its layers
//! through [`DecoderStack`] and gets [`DecodeModel`] from it, with
//! single-token steps replayed from a CUDA graph when graph decode is on
//! ([`super::graph`]).

use candle_core::{DType, Device, Tensor};

use super::graph::DecodeGraph;
use super::kv_cache::KvCache;
use super::layers::{add_rms_norm, linear, rms_norm, NormedInput, RopeTables};
use super::{DecodeModel, Kernels};
use crate::error::{Error, Result};

/// What every decoder holds besides its layers.
#[derive(Debug)]
pub struct Decoder {
    /// Token embeddings `[vocab, H]`.
    pub embed: Tensor,
    /// The final RMSNorm weight (None: no final norm).
    pub norm: Option<Tensor>,
    /// The output projection `[vocab, H]`.
    pub lm_head: Tensor,
    /// The RMSNorm eps of the hidden-size norms.
    pub eps: f64,
    /// Rotary tables (and the shape kiln's rope kernel takes).
    pub rope: RopeTables,
    /// One KV cache per layer.
    pub caches: Vec<KvCache>,
    /// Which ops the model runs on.
    pub kernels: Kernels,
    /// The device of every tensor above.
    pub device: Device,
    /// The decode graph, when single-token steps replay one.
    pub graph: Option<DecodeGraph>,
}

/// What differs between the pre-norm decoders kiln implements.
pub trait DecoderStack {
    /// The shared parts.
    fn decoder(&self) -> &Decoder;
    /// The shared parts, mutably (the caches).
    fn decoder_mut(&mut self) -> &mut Decoder;
    /// Number of decoder layers.
    fn layer_count(&self) -> usize;
    /// Layer `l`'s input and post-attention RMSNorm weights.
    fn norms(&self, l: usize) -> (Tensor, Tensor);
    /// Layer `l`'s attention on the normed `x` at positions `pos..` (writes its
    /// cache); `positions` are the rope kernel's i32 positions (kiln only).
    /// Its first projection may compute the norm ([`NormedInput`]).
    fn attention(
        &mut self,
        l: usize,
        x: &NormedInput,
        pos: usize,
        positions: Option<&Tensor>,
    ) -> Result<Tensor>;
    /// Layer `l`'s MLP or MoE on the normed `x` (its first projection may
    /// compute the norm).
    fn feed_forward(&self, l: usize, x: &NormedInput) -> Result<Tensor>;
    /// Clears state a step leaves besides the KV caches (in place: a decode
    /// graph reads it at its address). None by default.
    fn reset_state(&mut self) -> Result<()> {
        Ok(())
    }
}

/// One forward pass of `m` over the token ids in `ids` (u32 `[T]`, on the
/// device) at positions `pos..pos+T`; `positions` holds them as i32 (kiln's
/// kernels read them there). Errors name the layer and part that failed.
pub(crate) fn run_step<M: DecoderStack + ?Sized>(
    m: &mut M,
    ids: &Tensor,
    positions: Option<&Tensor>,
    pos: usize,
) -> Result<Tensor> {
    // The context is formatted only on failure: a step runs these per layer.
    let at = |l: Option<usize>, part: &'static str| {
        move |e: Error| Error::Step {
            at: match l {
                Some(l) => format!("layer {l} {part}"),
                None => part.to_string(),
            },
            source: Box::new(e),
        }
    };
    let d = m.decoder();
    let (eps, k) = (d.eps, d.kernels);
    let mut residual = d
        .embed
        .index_select(ids, 0)
        .map_err(|e| at(None, "embedding")(e.into()))?;
    let mut delta: Option<Tensor> = None;
    for l in 0..m.layer_count() {
        let (ln1, ln2) = m.norms(l);
        let (a, h) = {
            let input = NormedInput::new(delta.as_ref(), &residual, &ln1, eps, k);
            let a = m
                .attention(l, &input, pos, positions)
                .map_err(at(Some(l), "attention"))?;
            (a, input.residual().map_err(at(Some(l), "input norm"))?)
        };
        let post = NormedInput::new(Some(&a), &h, &ln2, eps, k);
        let d = m
            .feed_forward(l, &post)
            .map_err(at(Some(l), "feed-forward"))?;
        residual = post
            .residual()
            .map_err(at(Some(l), "post-attention norm"))?;
        delta = Some(d);
    }
    let d = m.decoder();
    let head = || -> Result<Tensor> {
        let n = match (delta, d.norm.as_ref()) {
            (Some(x), Some(w)) => add_rms_norm(&x, &residual, w, eps, k)?.0,
            (None, Some(w)) => rms_norm(&residual, w, eps, k)?,
            (Some(x), None) => (x + residual)?,
            (None, None) => residual,
        };
        let last = n.narrow(0, n.dim(0)? - 1, 1)?;
        Ok(linear(&last, &d.lm_head, k)?
            .to_dtype(DType::F32)?
            .squeeze(0)?)
    };
    head().map_err(at(None, "final norm and output projection"))
}

impl<M: DecoderStack> DecodeModel for M {
    fn forward(&mut self, ids: &[u32], pos: usize) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(Error::Config("forward needs at least one token".into()));
        }
        if let ([id], Some(g)) = (ids, &self.decoder().graph) {
            if g.on {
                return super::graph::step(self, *id, pos);
            }
        }
        let d = self.decoder();
        // The rope kernel's positions: one upload per step, not per layer.
        let positions = match d.kernels {
            Kernels::Kiln => Some(d.rope.positions(pos, ids.len(), &d.device)?),
            Kernels::Candle => None,
        };
        let ids = Tensor::new(ids, &d.device)?;
        run_step(self, &ids, positions.as_ref(), pos)
    }

    fn set_graph_decode(&mut self, on: bool) -> Result<()> {
        let d = self.decoder_mut();
        if !on {
            // Off keeps the captures: switching back replays them.
            if let Some(g) = &mut d.graph {
                g.on = false;
            }
            return Ok(());
        }
        if d.kernels != Kernels::Kiln {
            return Err(Error::Config(
                "graph decode runs on kiln's kernels; the plain-candle configuration decodes eagerly"
                    .into(),
            ));
        }
        match &mut d.graph {
            Some(g) => g.on = true,
            None => d.graph = Some(DecodeGraph::new(&d.device)?),
        }
        Ok(())
    }

    fn graph_decode(&self) -> bool {
        self.decoder().graph.as_ref().is_some_and(|g| g.on)
    }

    fn reset(&mut self) -> Result<()> {
        for c in &mut self.decoder_mut().caches {
            c.reset();
        }
        self.reset_state()
    }

    fn device(&self) -> &Device {
        &self.decoder().device
    }
}
