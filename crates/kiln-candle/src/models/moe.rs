//! The sparse MoE block: router, routed experts and the optional shared expert.
//!
//! On kiln's kernels a decode step is one router kernel (or none, where the
//! router runs in its projection's last block) and two expert kernels
//! (gathered gate/up with SwiGLU, gathered down with the weighted combine).
//! The shared expert rides along as one more stacked expert with weight 1,
//! so it costs no extra launch. On plain candle ops the block runs
//! like candle's own fused MoE (`moe_gemm`, CUDA) or a gather + batched
//! matmul (CPU).

use candle_core::{DType, Tensor, D};
use kiln_kernels::reference::topk::SigmoidRouting;

use super::layers::{linear, Mlp, MlpNames, NormedInput};
use super::Kernels;
use crate::error::{op_error, Result};
use crate::ops;

/// How the router picks and weighs experts.
#[derive(Debug, Clone)]
pub enum Router {
    /// Qwen3: softmax over all experts in f32, top-k, optional renormalisation;
    /// weights rounded to the model dtype before the combine.
    Softmax {
        /// Renormalise the top-k probabilities.
        renorm: bool,
    },
    /// GLM-4.7-Flash / DeepSeek-V3: f32 sigmoid scores, `bias` only chooses.
    Sigmoid {
        /// Selection bias, f32 `[E]`.
        bias: Tensor,
        /// Grouping, eps and scale.
        routing: SigmoidRouting,
    },
}

/// Expert weights stacked over experts.
#[derive(Debug, Clone)]
enum ExpertWeights {
    /// `[E', I, H]`, `[E', I, H]`, `[E', H, I]` (E' = E + shared expert).
    Kiln {
        gate: Tensor,
        up: Tensor,
        down: Tensor,
    },
    /// `[E, 2I, H]` and `[E, H, I]`, candle's fused-MoE layout.
    Candle { gate_up: Tensor, down: Tensor },
}

/// One MoE block.
#[derive(Debug, Clone)]
pub struct MoeBlock {
    /// Router weight `[E, H]` (f32 for a sigmoid router, as HF computes it).
    gate: Tensor,
    router: Router,
    experts: ExpertWeights,
    shared: Option<Mlp>,
    e: usize,
    k: usize,
    i: usize,
    kernels: Kernels,
    /// The router epilogue's count of finished blocks (kiln's kernels on
    /// CUDA): one per MoE block, allocated at load, outside any graph capture.
    blocks_done: Option<ops::linear::BlocksDone>,
}

/// What a MoE block needs from the config.
#[derive(Debug, Clone, Copy)]
pub struct MoeDims {
    /// Hidden size H.
    pub h: usize,
    /// Expert width I.
    pub i: usize,
    /// Routed experts E.
    pub e: usize,
    /// Experts per token K.
    pub k: usize,
    /// Shared-expert width (the shared expert is stacked only when it equals I).
    pub shared_i: Option<usize>,
    /// The experts' projection names.
    pub names: MlpNames,
}

impl MoeBlock {
    /// Loads `gate`, `experts.{e}.*` and `shared_experts.*` (if any) under `vb`.
    pub fn load(
        vb: &candle_nn::VarBuilder,
        dims: MoeDims,
        router: Router,
        kernels: Kernels,
    ) -> Result<Self> {
        let MoeDims {
            h,
            i,
            e,
            k,
            shared_i,
            names,
        } = dims;
        let mut gate = vb.pp("gate").get((e, h), "weight")?;
        if let Router::Sigmoid { routing, .. } = &router {
            if !routing.sigmoid_in_dtype {
                gate = gate.to_dtype(DType::F32)?;
            }
        }
        let shared = match shared_i {
            Some(si) => Some(Mlp::load(&vb.pp("shared_experts"), h, si)?),
            None => None,
        };
        let ex = vb.pp("experts");
        let mut gates = Vec::with_capacity(e + 1);
        let mut ups = Vec::with_capacity(e + 1);
        let mut downs = Vec::with_capacity(e + 1);
        for j in 0..e {
            let v = ex.pp(j);
            gates.push(v.pp(names.gate).get((i, h), "weight")?);
            ups.push(v.pp(names.up).get((i, h), "weight")?);
            downs.push(v.pp(names.down).get((h, i), "weight")?);
        }
        let stack_shared = kernels == Kernels::Kiln && shared_i == Some(i);
        let experts = match kernels {
            Kernels::Kiln => {
                if stack_shared {
                    let s = vb.pp("shared_experts");
                    gates.push(s.pp("gate_proj").get((i, h), "weight")?);
                    ups.push(s.pp("up_proj").get((i, h), "weight")?);
                    downs.push(s.pp("down_proj").get((h, i), "weight")?);
                }
                ExpertWeights::Kiln {
                    gate: Tensor::stack(&gates, 0)?,
                    up: Tensor::stack(&ups, 0)?,
                    down: Tensor::stack(&downs, 0)?,
                }
            }
            Kernels::Candle => {
                let gu: Vec<Tensor> = gates
                    .iter()
                    .zip(&ups)
                    .map(|(g, u)| Tensor::cat(&[g, u], 0))
                    .collect::<candle_core::Result<_>>()?;
                ExpertWeights::Candle {
                    gate_up: Tensor::stack(&gu, 0)?,
                    down: Tensor::stack(&downs, 0)?,
                }
            }
        };
        let blocks_done = match kernels {
            Kernels::Kiln if gate.device().is_cuda() => {
                Some(ops::linear::BlocksDone::new(gate.device())?)
            }
            _ => None,
        };
        Ok(Self {
            blocks_done,
            gate,
            router,
            experts,
            shared: if stack_shared { None } else { shared },
            e,
            k,
            i,
            kernels,
        })
    }

    /// `x[T, H]` → `[T, H]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_routed(x, None)
    }

    /// [`MoeBlock::forward`] of a [`NormedInput`]: the router's projection
    /// may compute the norm and hand the normed row on to the experts
    /// ([`NormedInput::project_shared`]; GLM-4.7-Flash's f32 router widens
    /// the bf16 row as its own gemv does).
    /// Where the router can run in the projection's last block too
    /// ([`NormedInput::project_routed`]), the whole routing is one launch.
    pub fn forward_normed(&self, x: &NormedInput) -> Result<Tensor> {
        if let (Some(blocks_done), Some((router, bias))) = (&self.blocks_done, self.epilogue()) {
            let shared = self.stacks_shared()?;
            if let Some((weights, indices)) =
                x.project_routed(&self.gate, &router, bias, shared, blocks_done)?
            {
                return self.experts(&x.tensor()?, weights, indices, shared);
            }
        }
        let logits = match self.kernels {
            Kernels::Kiln => x.project_shared(&self.gate)?,
            Kernels::Candle => None,
        };
        self.forward_routed(&x.tensor()?, logits)
    }

    /// The router as a projection's epilogue, and a sigmoid router's
    /// selection bias; `None` for routers the epilogue does not run
    /// (grouped selection).
    fn epilogue(&self) -> Option<(ops::linear::RouterEpilogue, Option<&Tensor>)> {
        use ops::linear::RouterEpilogue;
        match &self.router {
            Router::Softmax { renorm } => Some((
                RouterEpilogue::Softmax {
                    k: self.k,
                    renorm: *renorm,
                },
                None,
            )),
            Router::Sigmoid { bias, routing } if routing.n_group == 1 => {
                Some((RouterEpilogue::Sigmoid(*routing), Some(bias)))
            }
            Router::Sigmoid { .. } => None,
        }
    }

    /// The layer on `x` with the router's logits already made, if they were.
    fn forward_routed(&self, x: &Tensor, logits: Option<Tensor>) -> Result<Tensor> {
        let (weights, indices) = self.route_with(x, logits)?;
        self.experts(x, weights, indices, false)
    }

    /// Whether the shared expert is stacked after the routed ones (kiln's
    /// experts): its column is appended to every token's routing.
    fn stacks_shared(&self) -> Result<bool> {
        Ok(match &self.experts {
            ExpertWeights::Kiln { gate, .. } => gate.dim(0)? > self.e,
            ExpertWeights::Candle { .. } => false,
        })
    }

    /// The routed experts (and the shared one) on `x` with the router's
    /// choice; `appended`: the stacked shared expert's column is in it already.
    fn experts(
        &self,
        x: &Tensor,
        weights: Tensor,
        indices: Tensor,
        appended: bool,
    ) -> Result<Tensor> {
        let routed = match &self.experts {
            ExpertWeights::Kiln { gate, up, down } => {
                let (w, idx) = if self.stacks_shared()? && !appended {
                    // The stacked shared expert: index E, weight exactly 1.
                    ops::moe::append_shared_expert(&weights, &indices, self.e)?
                } else {
                    (weights, indices)
                };
                // Qwen3 and LFM2 hand the combine model-dtype weights; GLM f32 ones.
                let round_weights = match &self.router {
                    Router::Softmax { .. } => true,
                    Router::Sigmoid { routing, .. } => routing.sigmoid_in_dtype,
                };
                let h = ops::moe::expert_swiglu(x, gate, up, &idx)?;
                ops::moe::expert_down(&h, down, &idx, &w, None, round_weights)?
            }
            ExpertWeights::Candle { gate_up, down } => {
                self.candle_experts(x, gate_up, down, &weights, &indices)?
            }
        };
        match &self.shared {
            Some(mlp) => Ok((routed + mlp.forward(x, self.kernels)?)?),
            None => Ok(routed),
        }
    }

    /// The router's choice for `x[T, H]`: `(weights[T,K] f32, indices[T,K] u32)`.
    pub fn route(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        self.route_with(x, None)
    }

    /// [`MoeBlock::route`], the router's logits taken as `given` where they were made.
    fn route_with(&self, x: &Tensor, given: Option<Tensor>) -> Result<(Tensor, Tensor)> {
        let logits = |x: &Tensor| match &given {
            Some(l) => Ok(l.clone()),
            None => linear(x, &self.gate, self.kernels),
        };
        match (&self.router, self.kernels) {
            (Router::Softmax { renorm }, Kernels::Kiln) => {
                ops::router::softmax_topk(&logits(x)?, self.k, *renorm)
            }
            (Router::Sigmoid { bias, routing }, Kernels::Kiln) if routing.sigmoid_in_dtype => {
                // LFM2: logits, sigmoid and weights in the model dtype.
                ops::router::sigmoid_topk(&logits(x)?, bias, *routing)
            }
            (Router::Sigmoid { bias, routing }, Kernels::Kiln) => {
                // f32 logits of the bf16 hidden state widened to f32, as HF computes
                // them; at decode the projection widens x itself (one launch, the
                // same values), elsewhere x is cast first.
                let logits = match (
                    given,
                    x.device().is_cuda() && ops::linear::gemv_applies(x, &self.gate),
                ) {
                    (Some(l), _) => l,
                    (None, true) => ops::linear::gemv(x, &self.gate)?,
                    (None, false) => linear(&x.to_dtype(DType::F32)?, &self.gate, self.kernels)?,
                };
                ops::router::sigmoid_topk(&logits, bias, *routing)
            }
            (Router::Softmax { renorm }, Kernels::Candle) => {
                let p = self.router_scores(x)?;
                let idx = p
                    .arg_sort_last_dim(false)?
                    .narrow(D::Minus1, 0, self.k)?
                    .contiguous()?;
                let mut w = p.gather(&idx, D::Minus1)?;
                if *renorm {
                    w = w.broadcast_div(&w.sum_keepdim(D::Minus1)?)?;
                }
                // Qwen3 casts the routing weights to the model dtype.
                Ok((w.to_dtype(x.dtype())?.to_dtype(DType::F32)?, idx))
            }
            (Router::Sigmoid { bias, routing }, Kernels::Candle) => {
                if routing.n_group != 1 || routing.topk_group != 1 {
                    return Err(op_error(
                        "moe",
                        "grouped routing runs on kiln's kernels only",
                    ));
                }
                let s = self.router_scores(x)?;
                let idx = s
                    .broadcast_add(bias)?
                    .arg_sort_last_dim(false)?
                    .narrow(D::Minus1, 0, self.k)?
                    .contiguous()?;
                let w = s.gather(&idx, D::Minus1)?;
                // LFM2 does the weight arithmetic in the model dtype, GLM in f32.
                let w = if routing.sigmoid_in_dtype {
                    w.to_dtype(x.dtype())?
                } else {
                    w
                };
                let w = (w.broadcast_div(&(w.sum_keepdim(D::Minus1)? + routing.norm_eps)?)?
                    * routing.scale)?;
                Ok((w.to_dtype(DType::F32)?, idx))
            }
        }
    }

    /// Per row of `x[T, H]`, how far the K-th chosen expert's selection score
    /// lies above the best unchosen one (softmax probability for Qwen3,
    /// biased sigmoid score for GLM): how close the row is to a routing tie.
    pub fn selection_margins(&self, x: &Tensor) -> Result<Vec<f32>> {
        let scores = match &self.router {
            Router::Softmax { .. } => self.router_scores(x)?,
            Router::Sigmoid { bias, .. } => self.router_scores(x)?.broadcast_add(bias)?,
        };
        let rows: Vec<Vec<f32>> = scores.to_vec2()?;
        Ok(rows
            .into_iter()
            .map(|mut r| {
                r.sort_by(|a, b| b.total_cmp(a));
                match (r.get(self.k - 1), r.get(self.k)) {
                    (Some(a), Some(b)) => a - b,
                    _ => f32::INFINITY,
                }
            })
            .collect())
    }

    /// The router's unbiased f32 scores `[T, E]` on plain candle ops: softmax
    /// probabilities (logits in the model dtype, as Qwen3) or sigmoid scores
    /// (f32 logits, as GLM).
    fn router_scores(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.router {
            Router::Softmax { .. } => candle_nn::ops::softmax_last_dim(
                &linear(x, &self.gate, self.kernels)?.to_dtype(DType::F32)?,
            )?,
            // LFM2: sigmoid of model-dtype logits, in the model dtype.
            Router::Sigmoid { routing, .. } if routing.sigmoid_in_dtype => {
                candle_nn::ops::sigmoid(&linear(x, &self.gate, self.kernels)?)?
                    .to_dtype(DType::F32)?
            }
            Router::Sigmoid { .. } => candle_nn::ops::sigmoid(&linear(
                &x.to_dtype(DType::F32)?,
                &self.gate,
                self.kernels,
            )?)?,
        })
    }

    fn candle_experts(
        &self,
        x: &Tensor,
        gate_up: &Tensor,
        down: &Tensor,
        w: &Tensor,
        idx: &Tensor,
    ) -> Result<Tensor> {
        let (t, hdim) = x.dims2()?;
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            // candle 0.11's moe_gemm reads its input from the start of the
            // storage, whatever the layout's offset: a row view (`narrow`)
            // would silently read row 0. Hand it a tensor of its own.
            let owned;
            let x = if x.layout().start_offset() != 0 || !x.is_contiguous() {
                owned = x.force_contiguous()?;
                &owned
            } else {
                x
            };
            let (expert_ids, sorted_token_ids) = idx.flatten_all()?.sort_last_dim(true)?;
            let prefill = t > 1;
            let gu = candle_nn::moe::moe_gemm(
                x,
                gate_up,
                &None,
                &sorted_token_ids,
                &expert_ids,
                self.k,
                prefill,
            )?;
            let g = gu.narrow(D::Minus1, 0, self.i)?.contiguous()?;
            let u = gu.narrow(D::Minus1, self.i, self.i)?.contiguous()?;
            let act = (u * candle_nn::ops::silu(&g)?)?.reshape(((), self.i))?;
            let w = w.to_dtype(DType::F32)?;
            let ys = candle_nn::moe::moe_gemm(
                &act,
                down,
                &Some(w),
                &sorted_token_ids,
                &expert_ids,
                self.k,
                prefill,
            )?;
            return Ok(ys.reshape((t, self.k, hdim))?.sum(1)?.to_dtype(x.dtype())?);
        }
        // Gather the chosen experts' weights and run batched mat-vecs.
        let flat = idx.flatten_all()?;
        let gu = gate_up.index_select(&flat, 0)?; // [T*K, 2I, H]
        let xs = x
            .unsqueeze(1)?
            .repeat((1, self.k, 1))?
            .reshape((t * self.k, 1, hdim))?;
        let h = xs.matmul(&gu.transpose(1, 2)?)?; // [T*K, 1, 2I]
        let g = h.narrow(D::Minus1, 0, self.i)?;
        let u = h.narrow(D::Minus1, self.i, self.i)?;
        let act = (candle_nn::ops::silu(&g)? * u)?;
        let y = act.matmul(&down.index_select(&flat, 0)?.transpose(1, 2)?)?; // [T*K, 1, H]
        let y = y.reshape((t, self.k, hdim))?.to_dtype(DType::F32)?;
        let y = y.broadcast_mul(&w.unsqueeze(2)?)?.sum(1)?;
        Ok(y.to_dtype(x.dtype())?)
    }
}
