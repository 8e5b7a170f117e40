//! Each catalog op family as an evaluator problem: buffers in signature order,
//! adversarial inputs, the float64 reference, and the bytes a launch moves.

use kiln_kernels::ops::attention::DecodeAttentionConfig;
use kiln_kernels::ops::moe_combine::MoeCombineConfig;
use kiln_kernels::ops::moe_expert::{MoeExpertDownConfig, MoeExpertSwigluConfig};
use kiln_kernels::ops::norm::{AddRmsNormConfig, RmsNormConfig};
use kiln_kernels::ops::qk_norm_rope::QkNormRopeConfig;
use kiln_kernels::ops::rope::RopeConfig;
use kiln_kernels::ops::short_conv::ShortConvConfig;
use kiln_kernels::ops::swiglu::{SwigluConfig, SwigluPackedConfig};
use kiln_kernels::ops::topk::{SigmoidTopkConfig, SoftmaxTopkConfig};
use kiln_kernels::ops::ttt::TttConfig;
use kiln_kernels::ops::OpConfig;
use kiln_kernels::reference;
use kiln_kernels::{KernelBuild, KernelError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Rows per parallel chunk: a multiple of every head count (TTT's per-head
/// LayerNorm parameters line up with row % H).
const CHUNK_ROWS: usize = 64;

use super::problem::{draw, draw_scaled, BufferSpec, Distribution, ElemKind, HostBuffer, Role};

/// A configured op family.
#[derive(Debug, Clone)]
pub enum OpProblem {
    /// `out = silu(gate) * up`.
    Swiglu(SwigluConfig),
    /// Row RMSNorm.
    RmsNorm(RmsNormConfig),
    /// Weighted sum of expert outputs (+ shared expert).
    MoeCombine(MoeCombineConfig),
    /// Softmax router with top-k.
    SoftmaxTopk(SoftmaxTopkConfig),
    /// Sigmoid router with bias-corrected top-k.
    SigmoidTopk(SigmoidTopkConfig),
    /// One TTT-Linear decode step.
    Ttt(TttConfig),
    /// Residual add fused with RMSNorm.
    AddRmsNorm(AddRmsNormConfig),
    /// SwiGLU over a packed `[gate | up]` row.
    SwigluPacked(SwigluPackedConfig),
    /// Rotary embedding of q and k.
    Rope(RopeConfig),
    /// Gathered expert gate/up mat-vec with fused SwiGLU.
    MoeExpertSwiglu(MoeExpertSwigluConfig),
    /// Gathered expert down projection fused with the weighted combine.
    MoeExpertDown(MoeExpertDownConfig),
    /// Causal GQA attention of `T` new tokens after `past` cached positions.
    DecodeAttention {
        /// The static configuration.
        config: DecodeAttentionConfig,
        /// Cached positions before the first new token (`past + T <= S_MAX`).
        past: usize,
    },
    /// LFM2's gated short convolution over `T` consecutive tokens, updating
    /// its state in place.
    ShortConv(ShortConvConfig),
    /// Per-head RMSNorm of q and k, rotate-half RoPE, k and v written into
    /// the KV caches (in-out: only the tokens' positions may change).
    QkNormRopeCache(QkNormRopeConfig),
}

/// Calls `$body` with the op's configuration, whatever its type.
macro_rules! with_config {
    ($self:expr, $c:ident => $body:expr) => {
        match $self {
            OpProblem::Swiglu($c) => $body,
            OpProblem::RmsNorm($c) => $body,
            OpProblem::MoeCombine($c) => $body,
            OpProblem::SoftmaxTopk($c) => $body,
            OpProblem::SigmoidTopk($c) => $body,
            OpProblem::Ttt($c) => $body,
            OpProblem::AddRmsNorm($c) => $body,
            OpProblem::SwigluPacked($c) => $body,
            OpProblem::Rope($c) => $body,
            OpProblem::MoeExpertSwiglu($c) => $body,
            OpProblem::MoeExpertDown($c) => $body,
            OpProblem::DecodeAttention { config: $c, .. } => $body,
            OpProblem::ShortConv($c) => $body,
            OpProblem::QkNormRopeCache($c) => $body,
        }
    };
}

/// The reference's answer for one input set.
#[derive(Debug, Clone)]
pub struct Reference {
    /// One buffer per written buffer (outputs, and in-outs as they are after
    /// the launch), in signature order.
    pub outputs: Vec<HostBuffer>,
    /// For routers: the selection score of every expert of every row (`[T,E]`).
    pub selection_scores: Option<Vec<f64>>,
    /// For routers: the weight each expert would get if a candidate chose it
    /// in place of its tied neighbour in the reference set (`[T,E]`).
    pub expert_weights: Option<Vec<f64>>,
}

/// Which outputs of a router are its weights and indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopkLayout {
    /// Experts per row.
    pub e: usize,
    /// Chosen experts per row.
    pub k: usize,
    /// Output position (among outputs) of the f32 weights.
    pub weights_output: usize,
    /// Output position (among outputs) of the u32 indices.
    pub indices_output: usize,
}

fn buf(name: &str, kind: ElemKind, role: Role, len: usize) -> BufferSpec {
    BufferSpec {
        name: name.to_string(),
        kind,
        role,
        len,
    }
}

impl OpProblem {
    /// The family name (the catalog op's short name).
    pub fn family(&self) -> &'static str {
        with_config!(self, c => c.spec().name)
    }

    /// The catalog op.
    pub fn op(&self) -> kiln_kernels::Op {
        with_config!(self, c => c.spec().op)
    }

    /// The catalog kernel's compile inputs (its defines are the target's).
    pub fn build(&self) -> Result<KernelBuild, KernelError> {
        with_config!(self, c => c.build())
    }

    /// Static shape variables of launch lines (`D`, `I`, `E`, `K`, `F`, …).
    pub fn static_vars(&self) -> Vec<(&'static str, i64)> {
        with_config!(self, c => c.shape_vars())
    }

    fn dt(&self) -> ElemKind {
        ElemKind::Dtype(self.dtype())
    }

    /// The storage dtype of the op's main tensors.
    pub fn dtype(&self) -> kiln_kernels::DType {
        with_config!(self, c => c.dtype())
    }

    /// The kernel's pointer parameters for `t` rows, in signature order
    /// (the trailing `int T` is not a buffer).
    pub fn buffers(&self, t: usize) -> Vec<BufferSpec> {
        use ElemKind::{F32, I32, U32};
        use Role::{InOut, Input, Output};
        let dt = self.dt();
        match self {
            OpProblem::Swiglu(c) => vec![
                buf("gate", dt, Input, t * c.i),
                buf("up", dt, Input, t * c.i),
                buf("out", dt, Output, t * c.i),
            ],
            OpProblem::RmsNorm(c) => vec![
                buf("x", dt, Input, t * c.d),
                buf("w", dt, Input, c.d),
                buf("out", dt, Output, t * c.d),
            ],
            OpProblem::MoeCombine(c) => vec![
                buf("expert_out", dt, Input, t * c.k * c.d),
                buf("weights", F32, Input, t * c.k),
                buf("shared", dt, Input, if c.has_shared { t * c.d } else { 0 }),
                buf("out", dt, Output, t * c.d),
            ],
            OpProblem::SoftmaxTopk(c) => vec![
                buf("logits", dt, Input, t * c.e),
                buf("weights", F32, Output, t * c.k),
                buf("indices", U32, Output, t * c.k),
            ],
            OpProblem::SigmoidTopk(c) => vec![
                buf("logits", dt, Input, t * c.routing.e),
                buf("bias", F32, Input, c.routing.e),
                buf("weights", F32, Output, t * c.routing.k),
                buf("indices", U32, Output, t * c.routing.k),
            ],
            OpProblem::Ttt(c) => {
                let (f, h) = (c.f, c.h);
                vec![
                    buf("xq", dt, Input, t * f),
                    buf("xk", dt, Input, t * f),
                    buf("xv", dt, Input, t * f),
                    buf("W", F32, Input, t * f * f),
                    buf("b", F32, Input, t * f),
                    buf("W_grad", F32, Input, t * f * f),
                    buf("b_grad", F32, Input, t * f),
                    buf("ln_w", dt, Input, h * f),
                    buf("ln_b", dt, Input, h * f),
                    buf("lr", F32, Input, t),
                    buf("token_idx", F32, Input, t),
                    buf("last_in_mb", I32, Input, t),
                    buf("out", dt, Output, t * f),
                    buf("W_out", F32, Output, t * f * f),
                    buf("b_out", F32, Output, t * f),
                    buf("W_grad_out", F32, Output, t * f * f),
                    buf("b_grad_out", F32, Output, t * f),
                ]
            }
            OpProblem::AddRmsNorm(c) => vec![
                buf("x", dt, Input, t * c.0.d),
                buf("residual", dt, Input, t * c.0.d),
                buf("w", dt, Input, c.0.d),
                buf("normed", dt, Output, t * c.0.d),
                buf("new_residual", dt, Output, t * c.0.d),
            ],
            OpProblem::SwigluPacked(c) => vec![
                buf("gate_up", dt, Input, t * 2 * c.0.i),
                buf("out", dt, Output, t * c.0.i),
            ],
            OpProblem::Rope(c) => {
                let s = &c.shape;
                vec![
                    buf("q", dt, Input, t * s.qh * s.head_dim),
                    buf("k", dt, Input, t * s.kh * s.head_dim),
                    buf("positions", I32, Input, t),
                    buf("q_out", dt, Output, t * s.qh * s.head_dim),
                    buf("k_out", dt, Output, t * s.kh * s.head_dim),
                ]
            }
            OpProblem::MoeExpertSwiglu(c) => vec![
                buf("x", dt, Input, t * c.h),
                buf("w_gate", dt, Input, c.e * c.i * c.h),
                buf("w_up", dt, Input, c.e * c.i * c.h),
                buf("indices", U32, Input, t * c.k),
                buf("h", dt, Output, t * c.k * c.i),
            ],
            OpProblem::MoeExpertDown(c) => vec![
                buf("h", dt, Input, t * c.k * c.i),
                buf("w_down", dt, Input, c.e * c.h * c.i),
                buf("indices", U32, Input, t * c.k),
                buf("weights", F32, Input, t * c.k),
                buf("shared", dt, Input, if c.has_shared { t * c.h } else { 0 }),
                buf("out", dt, Output, t * c.h),
            ],
            OpProblem::DecodeAttention { config: c, .. } => {
                let s = &c.shape;
                vec![
                    buf("q", dt, Input, t * s.qh * s.dqk),
                    buf("k_cache", dt, Input, s.kvh * s.s_max * s.dqk),
                    buf("v_cache", dt, Input, s.kvh * s.s_max * s.dv),
                    buf("out", dt, Output, t * s.qh * s.dv),
                ]
            }
            OpProblem::ShortConv(c) => {
                let (d, l) = (c.shape.d, c.shape.l);
                vec![
                    buf("bcx", dt, Input, t * 3 * d),
                    buf("w", dt, Input, d * l),
                    buf("state", dt, InOut, (l - 1) * d),
                    buf("out", dt, Output, t * d),
                ]
            }
            OpProblem::QkNormRopeCache(c) => {
                let s = &c.shape;
                let cache = s.kvh * s.s_max * s.d;
                vec![
                    buf("qkv", dt, Input, t * (s.qh + 2 * s.kvh) * s.d),
                    buf("q_w", dt, Input, s.d),
                    buf("k_w", dt, Input, s.d),
                    buf("cos_table", dt, Input, s.s_max * s.d / 2),
                    buf("sin_table", dt, Input, s.s_max * s.d / 2),
                    buf("positions", I32, Input, t),
                    buf("q_out", dt, Output, t * s.qh * s.d),
                    buf("k_cache", dt, InOut, cache),
                    buf("v_cache", dt, InOut, cache),
                ]
            }
        }
    }

    /// Names of the `int` arguments after `T` (decode_attention's `past`).
    pub fn scalar_names(&self) -> &'static [&'static str] {
        match self {
            OpProblem::DecodeAttention { .. } => &["past"],
            OpProblem::QkNormRopeCache(_) => &["s_max"],
            _ => &[],
        }
    }

    /// The problem verification trial `trial` of `t` rows checks. Attention
    /// meets another cache fill on each trial (an empty cache, the timed
    /// `past`, a full cache, then fills drawn from `rng`, the secret seed's),
    /// so a kernel cannot specialise on the `past` it is timed at. Every
    /// other op is itself.
    pub fn for_verification(&self, t: usize, trial: usize, rng: &mut ChaCha8Rng) -> OpProblem {
        match self {
            OpProblem::DecodeAttention { config, past } => {
                let full = config.shape.s_max.saturating_sub(t);
                let past = match trial % 4 {
                    0 => 0,
                    1 => (*past).min(full),
                    2 => full,
                    _ => rng.gen_range(0..=full),
                };
                OpProblem::DecodeAttention {
                    config: *config,
                    past,
                }
            }
            other => other.clone(),
        }
    }

    /// Values of the `int` arguments after `T`, in [`Self::scalar_names`] order.
    pub fn scalar_args(&self) -> Vec<i32> {
        match self {
            // Configs cap S_MAX far below i32::MAX and past <= S_MAX.
            OpProblem::DecodeAttention { past, .. } => vec![*past as i32],
            OpProblem::QkNormRopeCache(c) => vec![c.shape.s_max as i32],
            _ => Vec::new(),
        }
    }

    /// The most distinct experts `t` rows of indices can name: min(E, T·K),
    /// what the Normal verification pattern touches.
    fn experts_read(t: usize, k: usize, e: usize) -> usize {
        (t * k).min(e)
    }

    /// Bytes one launch of `t` rows moves at most of what it must: every
    /// buffer read or written once; of expert-stacked weights the most
    /// experts `t` rows can name (see [`Self::experts_read`]), of a KV cache
    /// only positions `0..past+T`. Sizes the timing sets; what a timed launch
    /// must move is [`Self::bytes_moved_on`] of its own indices.
    pub fn bytes_moved(&self, t: usize) -> u64 {
        self.bytes_with_experts(t, None)
    }

    /// Bytes a launch of `t` rows over rows `window·t ..` of `inputs` (in
    /// [`Self::inputs`] order; one row window of a timing set) must move at
    /// least: as [`Self::bytes_moved`], but of expert-stacked weights only the
    /// distinct in-range experts its indices name. Router picks at T > 1 often
    /// repeat experts across tokens, so the bound of [`Self::bytes_moved`]
    /// would overstate a timed launch's traffic.
    pub fn bytes_moved_on(&self, t: usize, inputs: &[HostBuffer], window: usize) -> u64 {
        let experts = match self {
            OpProblem::MoeExpertSwiglu(c) => Some(c.e),
            OpProblem::MoeExpertDown(c) => Some(c.e),
            _ => None,
        };
        let named = experts.and_then(|e| {
            let slot = self
                .buffers(t)
                .iter()
                .filter(|b| b.role.is_read())
                .position(|b| b.name == "indices")?;
            let per_row = self.input_row_layout().get(slot).copied().flatten()?;
            let rows = window * t * per_row..(window + 1) * t * per_row;
            let distinct: std::collections::BTreeSet<u64> = inputs
                .get(slot)?
                .values
                .get(rows)?
                .iter()
                .map(|&v| v as u64)
                .filter(|&v| v < e as u64)
                .collect();
            Some(distinct.len())
        });
        self.bytes_with_experts(t, named)
    }

    /// [`Self::bytes_moved`] with `experts` distinct experts read (the most
    /// `t` rows can name when `None`).
    fn bytes_with_experts(&self, t: usize, experts: Option<usize>) -> u64 {
        let read = |k: usize, e: usize| {
            experts
                .unwrap_or_else(|| Self::experts_read(t, k, e))
                .min(e)
        };
        let all: u64 = self
            .buffers(t)
            .iter()
            .map(|b| (b.len * b.kind.size()) as u64)
            .sum();
        let sz = self.dtype().size() as u64;
        let unread = match self {
            OpProblem::MoeExpertSwiglu(c) => 2 * ((c.e - read(c.k, c.e)) * c.i * c.h) as u64 * sz,
            OpProblem::MoeExpertDown(c) => ((c.e - read(c.k, c.e)) * c.h * c.i) as u64 * sz,
            OpProblem::DecodeAttention { config, past } => {
                let s = &config.shape;
                let unused = s.s_max.saturating_sub(past + t);
                (s.kvh * unused * (s.dqk + s.dv)) as u64 * sz
            }
            // Only the tokens' rows of the tables and the caches are touched.
            OpProblem::QkNormRopeCache(c) => {
                let s = &c.shape;
                let untouched = s.s_max.saturating_sub(t);
                (untouched * s.d + 2 * s.kvh * untouched * s.d) as u64 * sz
            }
            _ => 0,
        };
        all - unread
    }

    /// Router outputs, for the order-insensitive top-k comparison.
    pub fn topk_layout(&self) -> Option<TopkLayout> {
        match self {
            OpProblem::SoftmaxTopk(c) => Some(TopkLayout {
                e: c.e,
                k: c.k,
                weights_output: 0,
                indices_output: 1,
            }),
            OpProblem::SigmoidTopk(c) => Some(TopkLayout {
                e: c.routing.e,
                k: c.routing.k,
                weights_output: 0,
                indices_output: 1,
            }),
            _ => None,
        }
    }

    /// Per buffer: `Some(elements per row)` when it grows with `T`, `None`
    /// when it is static (weights, biases, per-head parameters).
    pub(crate) fn row_layout(&self) -> Vec<Option<usize>> {
        self.buffers(1)
            .iter()
            .zip(self.buffers(2))
            .map(|(one, two)| (one.len > 0 && two.len == 2 * one.len).then_some(one.len))
            .collect()
    }

    /// [`OpProblem::row_layout`] of the buffers drawn as inputs (inputs and
    /// in-outs), in signature order.
    pub(crate) fn input_row_layout(&self) -> Vec<Option<usize>> {
        self.buffers(1)
            .iter()
            .zip(self.row_layout())
            .filter(|(b, _)| b.role.is_read())
            .map(|(_, l)| l)
            .collect()
    }

    /// Fresh inputs for `t` rows: one buffer per input and in-out, in
    /// signature order.
    /// Large `t` is drawn in parallel, a seeded stream per chunk of rows.
    pub fn inputs(&self, t: usize, dist: Distribution, rng: &mut ChaCha8Rng) -> Vec<HostBuffer> {
        self.inputs_as(t, dist, rng, false, false)
    }

    /// Inputs to time on: as [`OpProblem::inputs`], but expert indices are
    /// drawn as a router picks them (`k` distinct experts in range per token).
    /// The degenerate patterns verification needs (every token on the same
    /// experts, slots out of range) would time a kernel on less or other work
    /// than decode gives it, and reward shortcuts only those patterns allow.
    pub fn timing_inputs(
        &self,
        t: usize,
        dist: Distribution,
        rng: &mut ChaCha8Rng,
    ) -> Vec<HostBuffer> {
        self.inputs_as(t, dist, rng, true, false)
    }

    /// [`OpProblem::timing_inputs`] with the static buffers (weights: the
    /// ones whose length does not grow with the rows) left empty, for a
    /// timing set that shares another set's static values.
    pub fn timing_rows(
        &self,
        t: usize,
        dist: Distribution,
        rng: &mut ChaCha8Rng,
    ) -> Vec<HostBuffer> {
        self.inputs_as(t, dist, rng, true, true)
    }

    /// [`OpProblem::inputs`] with the static buffers left empty, for a
    /// verification trial that shares another trial's static values.
    pub fn input_rows(
        &self,
        t: usize,
        dist: Distribution,
        rng: &mut ChaCha8Rng,
    ) -> Vec<HostBuffer> {
        self.inputs_as(t, dist, rng, false, true)
    }

    /// Bytes of the static inputs (weights, expert-stacked ones included):
    /// what one draw of them costs, whatever the rows.
    pub fn static_input_bytes(&self) -> u64 {
        self.buffers(1)
            .iter()
            .filter(|b| b.role.is_read())
            .zip(self.static_inputs())
            .filter(|(_, st)| *st)
            .map(|(b, _)| (b.len * b.kind.size()) as u64)
            .sum()
    }

    /// Which inputs (in [`OpProblem::inputs`] order) are static: drawn once
    /// however many rows there are.
    pub fn static_inputs(&self) -> Vec<bool> {
        self.input_row_layout()
            .iter()
            .map(Option::is_none)
            .collect()
    }

    fn inputs_as(
        &self,
        t: usize,
        dist: Distribution,
        rng: &mut ChaCha8Rng,
        routed: bool,
        rows_only: bool,
    ) -> Vec<HostBuffer> {
        if t <= CHUNK_ROWS || self.has_in_out() {
            return self.draw_inputs(t, dist, rng, Draw { rows_only, routed });
        }
        let chunks: Vec<(usize, u64)> = (0..t)
            .step_by(CHUNK_ROWS)
            .map(|start| (CHUNK_ROWS.min(t - start), rng.gen()))
            .collect();
        // Static buffers (weights) are drawn once, with the first chunk.
        let parts: Vec<Vec<HostBuffer>> = chunks
            .par_iter()
            .enumerate()
            .map(|(i, &(rows, seed))| {
                let draw = Draw {
                    rows_only: rows_only || i > 0,
                    routed,
                };
                self.draw_inputs(rows, dist, &mut ChaCha8Rng::seed_from_u64(seed), draw)
            })
            .collect();
        join_rows(parts, &self.input_row_layout())
    }

    /// Draws every input of `t` rows as `how` says.
    fn draw_inputs(
        &self,
        t: usize,
        dist: Distribution,
        rng: &mut ChaCha8Rng,
        how: Draw,
    ) -> Vec<HostBuffer> {
        let Draw { rows_only, routed } = how;
        let specs = self.buffers(t);
        let layout = self.row_layout();
        let mut out = Vec::new();
        for (spec, per_row) in specs.iter().zip(layout).filter(|(b, _)| b.role.is_read()) {
            if rows_only && per_row.is_none() {
                out.push(HostBuffer {
                    kind: spec.kind,
                    values: Vec::new(),
                });
                continue;
            }
            let values = match (self, spec.name.as_str()) {
                // Distinct positions in the cache, scattered: two tokens
                // never write one row, and a kernel cannot assume they follow
                // one another. Rows past S_MAX (never at the targets' T) get
                // positions outside it, which write no cache row.
                (OpProblem::QkNormRopeCache(c), "positions") => {
                    let s_max = c.shape.s_max;
                    let mut free: Vec<usize> = (0..s_max).collect();
                    (0..spec.len)
                        .map(|r| {
                            if r < s_max {
                                let j = rng.gen_range(r..s_max);
                                free.swap(r, j);
                                free[r] as f64
                            } else {
                                (s_max + r) as f64
                            }
                        })
                        .collect()
                }
                (OpProblem::Rope(_), "positions") => (0..spec.len)
                    .map(|_| rng.gen_range(0..32768) as f64)
                    .collect(),
                // Norm weights near 1, as trained ones are.
                (OpProblem::RmsNorm(_) | OpProblem::AddRmsNorm(_), "w")
                | (OpProblem::QkNormRopeCache(_), "q_w" | "k_w") => {
                    draw_scaled(spec.kind, spec.len, 0.5, rng)
                        .values
                        .iter()
                        .map(|v| spec.kind.round(1.0 + v))
                        .collect()
                }
                (OpProblem::MoeCombine(c), "weights") => {
                    combine_weights(spec.len, c.k, spec.kind, rng)
                }
                (OpProblem::SigmoidTopk(_), "bias") => match dist {
                    // Ties must survive the bias.
                    Distribution::Ties => vec![0.0; spec.len],
                    _ => draw_scaled(spec.kind, spec.len, 0.5, rng).values,
                },
                (OpProblem::Ttt(c), name) => ttt_input(c, name, spec, dist, rng),
                (OpProblem::MoeExpertSwiglu(c), "indices") if routed => {
                    routed_indices(t, c.k, c.e, rng)
                }
                (OpProblem::MoeExpertDown(c), "indices") if routed => {
                    routed_indices(t, c.k, c.e, rng)
                }
                (OpProblem::MoeExpertSwiglu(c), "indices") => {
                    expert_indices(t, c.k, c.e, dist, rng)
                }
                (OpProblem::MoeExpertDown(c), "indices") => expert_indices(t, c.k, c.e, dist, rng),
                // Weights scaled by 1/sqrt(fan-in): activations of unit scale.
                (OpProblem::MoeExpertSwiglu(c), "w_gate" | "w_up") => {
                    draw_scaled_par(spec.kind, spec.len, (c.h as f64).powf(-0.5), rng)
                }
                (OpProblem::MoeExpertDown(c), "w_down") => {
                    draw_scaled_par(spec.kind, spec.len, (c.i as f64).powf(-0.5), rng)
                }
                (OpProblem::MoeExpertDown(c), "weights") => {
                    combine_weights(spec.len, c.k, spec.kind, rng)
                }
                _ => draw(spec.kind, spec.len, dist, rng).values,
            };
            out.push(HostBuffer {
                kind: spec.kind,
                values,
            });
        }
        out
    }

    /// Whether a row's result depends on the rows before it: attention's
    /// rows see `past + t` positions, and the short convolution carries its
    /// state from one token to the next. The reference then runs in one
    /// serial pass, and the rows cannot be windowed.
    /// Elements per tolerance group of written buffer `name`, each group
    /// scaled by its own largest reference magnitude (`None`: a row of a
    /// row-shaped buffer, a whole static one). Attention's heads are each an
    /// average over their own probabilities, whose scales differ, so the
    /// largest head's slack would hide a wrong flat head; a KV cache is
    /// mostly rows the kernel must leave alone, whose values would set the
    /// slack of the rows it writes.
    pub fn tolerance_group(&self, name: &str) -> Option<usize> {
        match (self, name) {
            (OpProblem::DecodeAttention { config, .. }, "out") => Some(config.shape.dv),
            (OpProblem::QkNormRopeCache(c), "q_out" | "k_cache" | "v_cache") => Some(c.shape.d),
            _ => None,
        }
    }

    /// Whether a buffer is read and written in place (one copy for all the
    /// rows: drawn and referenced in one pass, never in chunks).
    fn has_in_out(&self) -> bool {
        self.buffers(1).iter().any(|b| b.role == Role::InOut)
    }

    fn rows_are_serial(&self) -> bool {
        matches!(
            self,
            OpProblem::DecodeAttention { .. } | OpProblem::ShortConv(_)
        )
    }

    /// Whether `windows` launches of `t` rows can each be given their own
    /// rows of one draw of `t × windows` rows (static buffers shared): every
    /// row-shaped buffer grows by exactly `windows`, every other buffer is an
    /// input that keeps its length, and a row's result depends on its own
    /// rows only (not where rows are serial, see [`Self::rows_are_serial`];
    /// TTT's only when `t` is whole heads, as row `r` is head `r mod H`). The
    /// timing graph then never launches a kernel twice on the same inputs.
    pub fn rows_windowable(&self, t: usize, windows: usize) -> bool {
        let rows_stand_alone = match self {
            OpProblem::Ttt(c) => c.h > 0 && t.is_multiple_of(c.h),
            _ => !self.rows_are_serial(),
        };
        if !rows_stand_alone || t == 0 || windows == 0 {
            return false;
        }
        let (one, many) = (self.buffers(t), self.buffers(t * windows));
        one.len() == many.len()
            && one
                .iter()
                .zip(&many)
                .zip(self.row_layout())
                .all(|((a, b), per_row)| match per_row {
                    Some(n) => a.len == n * t && b.len == n * t * windows,
                    None => a.role == Role::Input && a.len == b.len,
                })
    }

    /// Rows per parallel chunk of the reference: a gathered expert row costs
    /// millions of multiply-adds, so each token is its own chunk.
    fn reference_chunk_rows(&self) -> usize {
        match self {
            OpProblem::MoeExpertSwiglu(_) | OpProblem::MoeExpertDown(_) => 1,
            _ => CHUNK_ROWS,
        }
    }

    /// The float64 reference for one input set; large `t` runs in parallel
    /// over chunks of rows where rows are independent.
    pub fn reference(&self, t: usize, inputs: &[HostBuffer]) -> Reference {
        let chunk_rows = self.reference_chunk_rows();
        if t <= chunk_rows || self.rows_are_serial() || self.has_in_out() {
            return self.reference_serial(t, &values_of(inputs));
        }
        let input_layout = self.input_row_layout();
        let starts: Vec<usize> = (0..t).step_by(chunk_rows).collect();
        let parts: Vec<Reference> = starts
            .par_iter()
            .map(|&start| {
                let rows = chunk_rows.min(t - start);
                // Borrowed: static buffers (expert weights: hundreds of MB) are never copied.
                let chunk: Vec<&[f64]> = inputs
                    .iter()
                    .zip(&input_layout)
                    .map(|(b, l)| match l {
                        Some(per_row) => &b.values[start * per_row..(start + rows) * per_row],
                        None => b.values.as_slice(),
                    })
                    .collect();
                self.reference_serial(rows, &chunk)
            })
            .collect();
        let concat = |get: &dyn Fn(&Reference) -> Option<&Vec<f64>>| -> Option<Vec<f64>> {
            let mut out = Vec::new();
            for p in &parts {
                out.extend_from_slice(get(p)?);
            }
            Some(out)
        };
        let selection_scores = concat(&|r: &Reference| r.selection_scores.as_ref());
        let expert_weights = concat(&|r: &Reference| r.expert_weights.as_ref());
        let n_out = parts.first().map_or(0, |p| p.outputs.len());
        let outputs = (0..n_out)
            .map(|i| HostBuffer {
                kind: parts[0].outputs[i].kind,
                values: parts
                    .iter()
                    .flat_map(|p| p.outputs[i].values.iter().copied())
                    .collect(),
            })
            .collect();
        Reference {
            outputs,
            selection_scores,
            expert_weights,
        }
    }

    fn reference_serial(&self, t: usize, inputs: &[&[f64]]) -> Reference {
        let v = |i: usize| inputs[i];
        let dt = self.dt();
        let dense = |kind: ElemKind, values: Vec<f64>| HostBuffer { kind, values };
        match self {
            OpProblem::Swiglu(c) => Reference {
                outputs: vec![dense(
                    dt,
                    reference::swiglu::swiglu(v(0), v(1), c.silu_in_dtype, c.dtype),
                )],
                selection_scores: None,
                expert_weights: None,
            },
            OpProblem::RmsNorm(c) => Reference {
                outputs: vec![dense(
                    dt,
                    reference::norm::rmsnorm(v(0), v(1), c.d, c.eps, c.cast_before_scale, c.dtype),
                )],
                selection_scores: None,
                expert_weights: None,
            },
            OpProblem::MoeCombine(c) => {
                let shared = c.has_shared.then(|| v(2));
                Reference {
                    outputs: vec![dense(
                        dt,
                        reference::moe_combine::moe_combine(v(0), v(1), shared, c.d, c.k, c.dtype),
                    )],
                    selection_scores: None,
                    expert_weights: None,
                }
            }
            OpProblem::SoftmaxTopk(c) => {
                let r = reference::topk::softmax_topk(v(0), c.e, c.k, c.renorm);
                let probs = r.scores.clone();
                topk_reference(r, c.e, |row, idx| {
                    reference::topk::softmax_weights(
                        &probs[row * c.e..(row + 1) * c.e],
                        idx,
                        c.renorm,
                    )
                })
            }
            OpProblem::SigmoidTopk(c) => {
                let r = reference::topk::sigmoid_topk(v(0), v(1), &c.routing);
                let e = c.routing.e;
                let logits = v(0);
                topk_reference(r, e, |row, idx| {
                    let s = reference::topk::sigmoid_scores(
                        &logits[row * e..(row + 1) * e],
                        &c.routing,
                    );
                    reference::topk::sigmoid_weights(&s, idx, &c.routing)
                })
            }
            OpProblem::Ttt(c) => ttt_reference(c, t, inputs),
            OpProblem::AddRmsNorm(c) => {
                let c = &c.0;
                let (normed, h) = reference::norm::add_rmsnorm(
                    v(0),
                    v(1),
                    v(2),
                    c.d,
                    c.eps,
                    c.cast_before_scale,
                    c.dtype,
                );
                Reference {
                    outputs: vec![dense(dt, normed), dense(dt, h)],
                    selection_scores: None,
                    expert_weights: None,
                }
            }
            OpProblem::SwigluPacked(c) => {
                let (g, u) = reference::swiglu::unpack(v(0), c.0.i);
                Reference {
                    outputs: vec![dense(
                        dt,
                        reference::swiglu::swiglu(&g, &u, c.0.silu_in_dtype, c.0.dtype),
                    )],
                    selection_scores: None,
                    expert_weights: None,
                }
            }
            OpProblem::Rope(c) => {
                let s = &c.shape;
                let pos: Vec<i64> = v(2).iter().map(|p| *p as i64).collect();
                Reference {
                    outputs: vec![
                        dense(dt, reference::rope::rope(v(0), s.qh, &pos, s, c.dtype)),
                        dense(dt, reference::rope::rope(v(1), s.kh, &pos, s, c.dtype)),
                    ],
                    selection_scores: None,
                    expert_weights: None,
                }
            }
            OpProblem::MoeExpertSwiglu(c) => {
                let idx = as_indices(v(3));
                Reference {
                    outputs: vec![dense(
                        dt,
                        reference::moe_expert::moe_expert_swiglu(
                            v(0),
                            v(1),
                            v(2),
                            &idx,
                            c.dims(),
                            c.silu_in_dtype,
                            c.dtype,
                        ),
                    )],
                    selection_scores: None,
                    expert_weights: None,
                }
            }
            OpProblem::MoeExpertDown(c) => {
                let idx = as_indices(v(2));
                let inputs = reference::moe_expert::DownInputs {
                    h: v(0),
                    w_down: v(1),
                    indices: &idx,
                    weights: v(3),
                    shared: c.has_shared.then(|| v(4)),
                };
                Reference {
                    outputs: vec![dense(
                        dt,
                        reference::moe_expert::moe_expert_down(
                            &inputs,
                            c.dims(),
                            c.weight_in_dtype,
                            c.dtype,
                        ),
                    )],
                    selection_scores: None,
                    expert_weights: None,
                }
            }
            OpProblem::DecodeAttention { config: c, past } => Reference {
                outputs: vec![dense(
                    dt,
                    reference::attention::decode_attention(
                        v(0),
                        v(1),
                        v(2),
                        *past,
                        &c.shape,
                        c.dtype,
                    ),
                )],
                selection_scores: None,
                expert_weights: None,
            },
            OpProblem::ShortConv(c) => {
                let (out, state) =
                    reference::short_conv::short_conv(v(0), v(1), v(2), c.shape, c.dtype);
                // Written buffers in signature order: the state, then out.
                Reference {
                    outputs: vec![dense(dt, state), dense(dt, out)],
                    selection_scores: None,
                    expert_weights: None,
                }
            }
            OpProblem::QkNormRopeCache(c) => {
                use reference::qk_norm_rope::{qk_norm_rope_cache, QkNormRopeInputs};
                let x = QkNormRopeInputs {
                    qkv: v(0),
                    q_w: v(1),
                    k_w: v(2),
                    cos: v(3),
                    sin: v(4),
                    positions: v(5),
                };
                let (q, k, vc) = qk_norm_rope_cache(x, v(6), v(7), c.shape, c.dtype);
                // Written buffers in signature order: q_out, then the caches.
                Reference {
                    outputs: vec![dense(dt, q), dense(dt, k), dense(dt, vc)],
                    selection_scores: None,
                    expert_weights: None,
                }
            }
        }
    }
}

/// `len / k` rows of `k` positive combine weights summing to 1, each
/// rounded to `kind` (what a router hands the expert combine).
fn combine_weights(len: usize, k: usize, kind: ElemKind, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut w = Vec::with_capacity(len);
    for _ in 0..len / k.max(1) {
        let raw: Vec<f64> = (0..k).map(|_| rng.gen_range(0.01..1.0)).collect();
        let sum: f64 = raw.iter().sum();
        w.extend(raw.iter().map(|v| kind.round(v / sum)));
    }
    w
}

/// The values of each buffer, borrowed.
fn values_of(inputs: &[HostBuffer]) -> Vec<&[f64]> {
    inputs.iter().map(|b| b.values.as_slice()).collect()
}

/// Host index values (exact u32s held as f64) as `u32`.
fn as_indices(v: &[f64]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

/// How [`OpProblem::draw_inputs`] draws.
#[derive(Debug, Clone, Copy)]
struct Draw {
    /// Leave static buffers (lengths that do not grow with the rows) empty,
    /// undrawn: the later chunks of a parallel draw.
    rows_only: bool,
    /// Expert indices as a router picks them (timing).
    routed: bool,
}

/// `k` distinct experts of `e` per token, uniformly, as a top-k router picks
/// them (`k` is at most `e`).
fn routed_indices(t: usize, k: usize, e: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let k = k.min(e);
    (0..t)
        .flat_map(|_| rand::seq::index::sample(&mut *rng, e, k).into_vec())
        .map(|x| x as f64)
        .collect()
}

/// Verification indices of `t` tokens × `k` slots over `e` experts. Normal:
/// slot s of the set takes expert (offset + s) mod E, K distinct experts per
/// token and min(E, T·K) in all (the most weight traffic, what
/// [`OpProblem::bytes_moved`] counts). Ties: every token picks the same K
/// experts. Otherwise random with repeats and about 1 slot in 8 out of range
/// (E, E+1 or u32::MAX), which must read nothing.
fn expert_indices(
    t: usize,
    k: usize,
    e: usize,
    dist: Distribution,
    rng: &mut ChaCha8Rng,
) -> Vec<f64> {
    let e32 = e as u32;
    match dist {
        Distribution::Normal => {
            let offset = rng.gen_range(0..e);
            (0..t * k).map(|s| ((offset + s) % e) as f64).collect()
        }
        Distribution::Ties => {
            let chosen: Vec<u32> = (0..k).map(|_| rng.gen_range(0..e32)).collect();
            (0..t * k).map(|s| chosen[s % k] as f64).collect()
        }
        _ => (0..t * k)
            .map(|_| match rng.gen_range(0..8) {
                0 => [e32, e32.saturating_add(1), u32::MAX][rng.gen_range(0..3)] as f64,
                _ => rng.gen_range(0..e32) as f64,
            })
            .collect(),
    }
}

/// `n` samples of `scale * N(0,1)` rounded to `kind`, drawn in parallel
/// (expert-stacked weights hold hundreds of millions of values), one seeded
/// stream per chunk so the result depends only on `rng`.
///
/// Each sample goes to `kind` through f32 ([`ElemKind::round_drawn`]).
fn draw_scaled_par(kind: ElemKind, n: usize, scale: f64, rng: &mut ChaCha8Rng) -> Vec<f64> {
    super::problem::par_samples(n, 1 << 20, rng, |rng| {
        kind.round_drawn(scale * super::problem::normal(rng))
    })
}

/// Concatenates chunked input sets: per-row buffers row by row, static ones
/// from the first chunk.
fn join_rows(parts: Vec<Vec<HostBuffer>>, layout: &[Option<usize>]) -> Vec<HostBuffer> {
    let mut iter = parts.into_iter();
    let Some(mut joined) = iter.next() else {
        return Vec::new();
    };
    for part in iter {
        for ((acc, p), l) in joined.iter_mut().zip(part).zip(layout) {
            if l.is_some() {
                acc.values.extend(p.values);
            }
        }
    }
    joined
}

/// Builds a router's reference, with the weight of every expert as a tied
/// substitute: expert `e` swapped for the chosen expert whose selection score
/// is closest to its own, weighed by the model's own formula (`weights_of`).
fn topk_reference(
    r: reference::topk::TopK,
    e: usize,
    weights_of: impl Fn(usize, &[u32]) -> Vec<f64>,
) -> Reference {
    let k = r.k;
    let rows = r.indices.len() / k.max(1);
    let mut expert_weights = vec![0.0; rows * e];
    for row in 0..rows {
        let chosen = &r.indices[row * k..(row + 1) * k];
        let scores = &r.scores[row * e..(row + 1) * e];
        for ex in 0..e {
            let slot = match chosen.iter().position(|&c| c as usize == ex) {
                Some(slot) => slot,
                None => (0..k)
                    .min_by(|&a, &b| {
                        let da = (scores[chosen[a] as usize] - scores[ex]).abs();
                        let db = (scores[chosen[b] as usize] - scores[ex]).abs();
                        da.total_cmp(&db)
                    })
                    .unwrap_or(0),
            };
            let mut idx = chosen.to_vec();
            idx[slot] = ex as u32;
            expert_weights[row * e + ex] = weights_of(row, &idx)[slot];
        }
    }
    Reference {
        outputs: vec![
            HostBuffer {
                kind: ElemKind::F32,
                values: r.weights,
            },
            HostBuffer {
                kind: ElemKind::U32,
                values: r.indices.iter().map(|&i| i as f64).collect(),
            },
        ],
        selection_scores: Some(r.scores),
        expert_weights: Some(expert_weights),
    }
}

fn ttt_input(
    c: &TttConfig,
    name: &str,
    spec: &BufferSpec,
    dist: Distribution,
    rng: &mut ChaCha8Rng,
) -> Vec<f64> {
    let k = spec.kind;
    let scaled = |s: f64, rng: &mut ChaCha8Rng| draw_scaled(k, spec.len, s, rng).values;
    match name {
        // Activations: any distribution but the extreme one (a LayerNorm
        // gradient over 1e3-scale inputs is dominated by rounding).
        "xq" | "xk" | "xv" => match dist {
            Distribution::Wide => scaled(3.0, rng),
            // LayerNorm over 1e-3-scale inputs is dominated by its epsilon
            // in both kernel and reference; unit scale tests the math.
            Distribution::Tiny => draw(k, spec.len, Distribution::Normal, rng).values,
            d => draw(k, spec.len, d, rng).values,
        },
        "W" | "b" => scaled(1.0 / (c.f as f64).sqrt(), rng),
        "W_grad" | "b_grad" => scaled(0.01, rng),
        "ln_w" => scaled(0.1, rng).iter().map(|v| k.round(1.0 + v)).collect(),
        "ln_b" => scaled(0.1, rng),
        "lr" => (0..spec.len)
            .map(|_| k.round(rng.gen_range(0.001..0.1)))
            .collect(),
        "token_idx" => (0..spec.len)
            .map(|_| k.round(1.0 / rng.gen_range(1..=16) as f64))
            .collect(),
        "last_in_mb" => (0..spec.len)
            .map(|_| if rng.gen_bool(0.5) { 1.0 } else { 0.0 })
            .collect(),
        _ => draw(k, spec.len, dist, rng).values,
    }
}

fn ttt_reference(c: &TttConfig, t: usize, inputs: &[&[f64]]) -> Reference {
    let f = c.f;
    let v = |i: usize| inputs[i];
    let mut out = Vec::with_capacity(t * f);
    let (mut w_out, mut b_out) = (Vec::with_capacity(t * f * f), Vec::with_capacity(t * f));
    let (mut wg_out, mut bg_out) = (Vec::with_capacity(t * f * f), Vec::with_capacity(t * f));
    for r in 0..t {
        let h = r % c.h;
        let row = reference::ttt::TttRow {
            xq: &v(0)[r * f..(r + 1) * f],
            xk: &v(1)[r * f..(r + 1) * f],
            xv: &v(2)[r * f..(r + 1) * f],
            w: &v(3)[r * f * f..(r + 1) * f * f],
            b: &v(4)[r * f..(r + 1) * f],
            w_grad: &v(5)[r * f * f..(r + 1) * f * f],
            b_grad: &v(6)[r * f..(r + 1) * f],
            ln_w: &v(7)[h * f..(h + 1) * f],
            ln_b: &v(8)[h * f..(h + 1) * f],
            lr: v(9)[r],
            token_idx: v(10)[r],
            last_in_mb: v(11)[r] != 0.0,
        };
        let o = reference::ttt::ttt_row(&row, c.ln_eps);
        out.extend(o.out.iter().map(|x| c.dtype.round(*x)));
        w_out.extend(o.w);
        b_out.extend(o.b);
        wg_out.extend(o.w_grad);
        bg_out.extend(o.b_grad);
    }
    let f32buf = |values: Vec<f64>| HostBuffer {
        kind: ElemKind::F32,
        values,
    };
    Reference {
        outputs: vec![
            HostBuffer {
                kind: ElemKind::Dtype(c.dtype),
                values: out,
            },
            f32buf(w_out),
            f32buf(b_out),
            f32buf(wg_out),
            f32buf(bg_out),
        ],
        selection_scores: None,
        expert_weights: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_kernels::reference::attention::AttentionShape;
    use kiln_kernels::DType;

    fn decode_problems() -> Vec<OpProblem> {
        let bf = DType::BF16;
        let config = DecodeAttentionConfig {
            shape: AttentionShape {
                qh: 4,
                kvh: 2,
                dqk: 16,
                dv: 24,
                s_max: 300,
                scale: 0.25,
            },
            dtype: bf,
        };
        vec![
            OpProblem::MoeExpertSwiglu(MoeExpertSwigluConfig::new(256, 12, 6, 2, bf)),
            OpProblem::MoeExpertDown(MoeExpertDownConfig {
                has_shared: true,
                ..MoeExpertDownConfig::new(64, 16, 6, 2, bf)
            }),
            OpProblem::DecodeAttention { config, past: 150 },
            OpProblem::ShortConv(ShortConvConfig::new(40, 3, bf)),
        ]
    }

    /// The decode ops: inputs fit their buffers, references fit the outputs,
    /// chunked references equal serial ones, empty slots produce zeros.
    #[test]
    fn decode_ops_inputs_and_references_are_consistent() {
        for p in decode_problems() {
            for dist in Distribution::ALL {
                for t in [1, 3, CHUNK_ROWS + 6] {
                    let mut rng = ChaCha8Rng::seed_from_u64(t as u64);
                    let inputs = p.inputs(t, dist, &mut rng);
                    let specs = p.buffers(t);
                    let ins: Vec<&BufferSpec> = specs.iter().filter(|b| b.role.is_read()).collect();
                    assert_eq!(inputs.len(), ins.len());
                    for (b, spec) in inputs.iter().zip(&ins) {
                        assert_eq!(b.values.len(), spec.len, "{} {}", p.family(), spec.name);
                    }
                    let r = p.reference(t, &inputs);
                    let outs: Vec<&BufferSpec> =
                        specs.iter().filter(|b| b.role.is_written()).collect();
                    for (o, spec) in r.outputs.iter().zip(&outs) {
                        assert_eq!(o.values.len(), spec.len, "{} {}", p.family(), spec.name);
                        assert!(o.values.iter().all(|v| v.is_finite()), "{}", p.family());
                    }
                    assert_eq!(
                        r.outputs,
                        p.reference_serial(t, &values_of(&inputs)).outputs
                    );
                }
            }
        }
    }

    /// The short convolution's state is drawn as an input and checked as an
    /// output, first among the written buffers; its reference over T tokens
    /// is T one-token steps with the state carried from each to the next.
    #[test]
    fn short_conv_state_is_read_then_written_and_carries_between_tokens() {
        let p = OpProblem::ShortConv(ShortConvConfig::new(40, 3, DType::BF16));
        let roles: Vec<Role> = p.buffers(5).iter().map(|b| b.role).collect();
        assert_eq!(roles, [Role::Input, Role::Input, Role::InOut, Role::Output]);
        assert!(!p.rows_windowable(5, 2));
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let inputs = p.inputs(5, Distribution::Normal, &mut rng);
        assert_eq!(inputs.len(), 3, "bcx, w and the state are drawn");
        let whole = p.reference(5, &inputs);
        let mut state = inputs[2].clone();
        let mut out = Vec::new();
        for row in inputs[0].values.chunks(3 * 40) {
            let one = [
                HostBuffer {
                    kind: inputs[0].kind,
                    values: row.to_vec(),
                },
                inputs[1].clone(),
                state.clone(),
            ];
            let step = p.reference(1, &one);
            state = step.outputs[0].clone();
            out.extend(step.outputs[1].values.iter().copied());
        }
        assert_eq!(whole.outputs[0], state, "the state after five tokens");
        assert_eq!(whole.outputs[1].values, out);
        assert_ne!(state, inputs[2], "the state moved");
    }

    /// Attention is verified at another cache fill each trial (empty, the
    /// timed one, full, then drawn), always within the cache; other ops are
    /// verified as they are timed.
    #[test]
    fn attention_verification_varies_the_cache_fill() {
        let [_, _, at, sc] = <[OpProblem; 4]>::try_from(decode_problems()).expect("four problems");
        let past_of = |p: &OpProblem| match p {
            OpProblem::DecodeAttention { past, .. } => *past,
            _ => panic!("not attention"),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let t = 5;
        let pasts: Vec<usize> = (0..12)
            .map(|trial| past_of(&at.for_verification(t, trial, &mut rng)))
            .collect();
        assert_eq!(&pasts[..3], &[0, 150, 300 - t]);
        assert!(pasts.iter().all(|&p| p + t <= 300), "{pasts:?}");
        let drawn: std::collections::BTreeSet<usize> =
            pasts.iter().skip(3).step_by(4).copied().collect();
        assert!(drawn.len() >= 2, "drawn fills repeat: {pasts:?}");
        let same = sc.for_verification(t, 3, &mut rng);
        assert!(matches!(same, OpProblem::ShortConv(c) if c.shape.d == 40));
    }

    /// Expert weights drawn through f32 are values of the dtype, at the asked scale.
    #[test]
    fn timing_rows_leave_exactly_the_static_buffers_empty() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for name in [
            "lfm2_moe_expert_down",
            "lfm2_short_conv",
            "qwen3_add_rmsnorm",
        ] {
            let p = &crate::targets::find(name).expect("target").problem;
            let full = p.timing_inputs(5, Distribution::Normal, &mut rng);
            let rows = p.timing_rows(5, Distribution::Normal, &mut rng);
            let is_static = p.static_inputs();
            assert!(
                is_static.iter().any(|&s| s) || name == "qwen3_add_rmsnorm",
                "{name}"
            );
            // (LFM2's down has no shared expert: an empty input either way.)
            for ((f, r), st) in full
                .iter()
                .zip(&rows)
                .zip(is_static)
                .filter(|((f, _), _)| !f.values.is_empty())
            {
                assert_eq!(r.values.is_empty(), st, "{name}");
                if !st {
                    assert_eq!(r.values.len(), f.values.len(), "{name}");
                }
            }
        }
    }

    #[test]
    fn parallel_weight_draws_hold_dtype_values_at_scale() {
        for dt in [DType::BF16, DType::F16, DType::F32] {
            let kind = ElemKind::Dtype(dt);
            let mut rng = ChaCha8Rng::seed_from_u64(4);
            let w = draw_scaled_par(kind, 3 << 20, 0.02, &mut rng);
            assert_eq!(w.len(), 3 << 20);
            assert!(w.iter().all(|&v| kind.round(v) == v), "{dt:?}");
            let var = w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64;
            assert!(
                (var.sqrt() - 0.02).abs() < 0.001,
                "{dt:?}: rms {}",
                var.sqrt()
            );
            let mut again = ChaCha8Rng::seed_from_u64(4);
            assert_eq!(w, draw_scaled_par(kind, 3 << 20, 0.02, &mut again));
        }
    }

    #[test]
    fn decode_ops_scalars_and_bytes() {
        let [sw, dn, at, _] = <[OpProblem; 4]>::try_from(decode_problems()).expect("four problems");
        assert!(sw.scalar_args().is_empty() && sw.scalar_names().is_empty());
        assert_eq!(at.scalar_names(), &["past"]);
        assert_eq!(at.scalar_args(), vec![150]);
        // T=1, K=2: two experts' gate and up rows (2·12·256 bf16 each), x, indices, h.
        assert_eq!(
            sw.bytes_moved(1),
            (2 * 2 * 12 * 256 * 2 + 256 * 2 + 2 * 4 + 2 * 12 * 2) as u64
        );
        // T=4 touches all 6 experts: every weight counts.
        let all: u64 = sw
            .buffers(4)
            .iter()
            .map(|b| (b.len * b.kind.size()) as u64)
            .sum();
        assert_eq!(sw.bytes_moved(4), all);
        // Down at T=1: two experts' [H,I] rows, h, indices, weights, shared, out.
        assert_eq!(
            dn.bytes_moved(1),
            (2 * 64 * 16 * 2 + 2 * 16 * 2 + 2 * 4 + 2 * 4 + 64 * 2 + 64 * 2) as u64
        );
        // Attention: only positions 0..past+T of both caches.
        assert_eq!(
            at.bytes_moved(2),
            (2 * 152 * (16 + 24) * 2 + 2 * 4 * 16 * 2 + 2 * 4 * 24 * 2) as u64
        );
        // The Normal index pattern touches exactly min(E, T·K) experts.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let normal = sw.inputs(2, Distribution::Normal, &mut rng);
        let idx = &normal[3].values;
        let distinct: std::collections::BTreeSet<u64> = idx.iter().map(|v| *v as u64).collect();
        assert_eq!(distinct.len(), 4);
        assert_eq!(sw.bytes_moved_on(2, &normal, 0), sw.bytes_moved(2));
    }

    /// A timed launch must move only the experts its own rows name: repeats
    /// across tokens and out-of-range slots read nothing more, and each row
    /// window counts its own indices.
    #[test]
    fn bytes_on_inputs_count_the_distinct_experts_named() {
        let [sw, dn, at, _] = <[OpProblem; 4]>::try_from(decode_problems()).expect("four problems");
        let expert_bytes = 2 * 12 * 256 * 2; // one expert's gate and up rows, bf16
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let mut inputs = sw.inputs(6, Distribution::Normal, &mut rng);
        // Two windows of 3 tokens × K=2: experts {1, 2} then {1, 5} with an
        // out-of-range slot.
        inputs[3].values = vec![1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 1.0, 6.0, 5.0, 1.0, 1.0, 5.0];
        let all_six = sw.bytes_moved(3);
        assert_eq!(
            sw.bytes_moved_on(3, &inputs, 0),
            all_six - 4 * expert_bytes as u64
        );
        assert_eq!(
            sw.bytes_moved_on(3, &inputs, 1),
            all_six - 4 * expert_bytes as u64
        );
        inputs[3].values[8] = 3.0;
        assert_eq!(
            sw.bytes_moved_on(3, &inputs, 1),
            all_six - 3 * expert_bytes as u64
        );
        // Ops without expert weights: what bytes_moved says.
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let att = at.inputs(2, Distribution::Normal, &mut rng);
        assert_eq!(at.bytes_moved_on(2, &att, 0), at.bytes_moved(2));
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let down = dn.inputs(1, Distribution::Ties, &mut rng);
        assert!(dn.bytes_moved_on(1, &down, 0) <= dn.bytes_moved(1));
    }

    /// Chunked (parallel) references and inputs must equal the serial ones.
    #[test]
    fn parallel_reference_matches_serial_for_every_target() {
        // Model-sized expert weights (hundreds of millions of values per draw)
        // take minutes in a debug build; their families are checked at small
        // dims, chunked against serial, by the decode-ops test above.
        let small_dims: std::collections::BTreeSet<&str> =
            decode_problems().iter().map(|p| p.family()).collect();
        for target in crate::targets::all() {
            let p = &target.problem;
            let elements: usize = p.buffers(1).iter().map(|b| b.len).sum();
            if elements > 1 << 24 {
                assert!(
                    small_dims.contains(p.family()),
                    "{}: {elements} elements per draw and no small-dims check",
                    target.name
                );
                continue;
            }
            // Serial ops never chunk (attention's reference over 200 rows of
            // a 1024-position cache would take minutes in a debug build).
            if p.rows_are_serial() {
                continue;
            }
            let t = 3 * CHUNK_ROWS + 5;
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            let inputs = p.inputs(t, Distribution::Normal, &mut rng);
            for (b, spec) in inputs
                .iter()
                .zip(p.buffers(t).iter().filter(|b| b.role.is_read()))
            {
                assert_eq!(
                    b.values.len(),
                    spec.len,
                    "{} input {}",
                    target.name,
                    spec.name
                );
            }
            let par = p.reference(t, &inputs);
            let ser = p.reference_serial(t, &values_of(&inputs));
            assert_eq!(par.outputs, ser.outputs, "{}", target.name);
            assert_eq!(
                par.selection_scores, ser.selection_scores,
                "{}",
                target.name
            );
            assert_eq!(par.expert_weights, ser.expert_weights, "{}", target.name);
        }
    }
}
