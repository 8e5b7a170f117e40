//! Each catalog op family as an evaluator problem: buffers in signature order,
//! adversarial inputs, the float64 reference, and the bytes a launch moves.

use kiln_kernels::ops::moe_combine::MoeCombineConfig;
use kiln_kernels::ops::norm::{AddRmsNormConfig, RmsNormConfig};
use kiln_kernels::ops::rope::RopeConfig;
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
        }
    };
}

/// The reference's answer for one input set.
#[derive(Debug, Clone)]
pub struct Reference {
    /// One buffer per output, in signature order.
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
        use Role::{Input, Output};
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
        }
    }

    /// Bytes one launch must move at least: every buffer read or written once.
    pub fn bytes_moved(&self, t: usize) -> u64 {
        self.buffers(t)
            .iter()
            .map(|b| (b.len * b.kind.size()) as u64)
            .sum()
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
    fn row_layout(&self) -> Vec<Option<usize>> {
        self.buffers(1)
            .iter()
            .zip(self.buffers(2))
            .map(|(one, two)| (one.len > 0 && two.len == 2 * one.len).then_some(one.len))
            .collect()
    }

    /// Fresh inputs for `t` rows: one buffer per input in signature order.
    /// Large `t` is drawn in parallel, a seeded stream per chunk of rows.
    pub fn inputs(&self, t: usize, dist: Distribution, rng: &mut ChaCha8Rng) -> Vec<HostBuffer> {
        if t <= CHUNK_ROWS {
            return self.inputs_serial(t, dist, rng);
        }
        let chunks: Vec<(usize, u64)> = (0..t)
            .step_by(CHUNK_ROWS)
            .map(|start| (CHUNK_ROWS.min(t - start), rng.gen()))
            .collect();
        let parts: Vec<Vec<HostBuffer>> = chunks
            .par_iter()
            .map(|&(rows, seed)| {
                self.inputs_serial(rows, dist, &mut ChaCha8Rng::seed_from_u64(seed))
            })
            .collect();
        let layout: Vec<Option<usize>> = self
            .buffers(1)
            .iter()
            .zip(self.row_layout())
            .filter(|(b, _)| b.role == Role::Input)
            .map(|(_, l)| l)
            .collect();
        join_rows(parts, &layout)
    }

    fn inputs_serial(&self, t: usize, dist: Distribution, rng: &mut ChaCha8Rng) -> Vec<HostBuffer> {
        let specs = self.buffers(t);
        let mut out = Vec::new();
        for spec in specs.iter().filter(|b| b.role == Role::Input) {
            let values = match (self, spec.name.as_str()) {
                (OpProblem::Rope(_), "positions") => (0..spec.len)
                    .map(|_| rng.gen_range(0..32768) as f64)
                    .collect(),
                (OpProblem::RmsNorm(_) | OpProblem::AddRmsNorm(_), "w") => {
                    draw_scaled(spec.kind, spec.len, 0.5, rng)
                        .values
                        .iter()
                        .map(|v| spec.kind.round(1.0 + v))
                        .collect()
                }
                (OpProblem::MoeCombine(c), "weights") => {
                    let mut w = Vec::with_capacity(spec.len);
                    for _ in 0..spec.len / c.k.max(1) {
                        let raw: Vec<f64> = (0..c.k).map(|_| rng.gen_range(0.01..1.0)).collect();
                        let sum: f64 = raw.iter().sum();
                        w.extend(raw.iter().map(|v| spec.kind.round(v / sum)));
                    }
                    w
                }
                (OpProblem::SigmoidTopk(_), "bias") => match dist {
                    // Ties must survive the bias.
                    Distribution::Ties => vec![0.0; spec.len],
                    _ => draw_scaled(spec.kind, spec.len, 0.5, rng).values,
                },
                (OpProblem::Ttt(c), name) => ttt_input(c, name, spec, dist, rng),
                _ => draw(spec.kind, spec.len, dist, rng).values,
            };
            out.push(HostBuffer {
                kind: spec.kind,
                values,
            });
        }
        out
    }

    /// The float64 reference for one input set; large `t` runs in parallel
    /// over chunks of rows (rows are independent in every op).
    pub fn reference(&self, t: usize, inputs: &[HostBuffer]) -> Reference {
        if t <= CHUNK_ROWS {
            return self.reference_serial(t, inputs);
        }
        let specs = self.buffers(1);
        let layout = self.row_layout();
        let input_layout: Vec<Option<usize>> = specs
            .iter()
            .zip(&layout)
            .filter(|(b, _)| b.role == Role::Input)
            .map(|(_, l)| *l)
            .collect();
        let starts: Vec<usize> = (0..t).step_by(CHUNK_ROWS).collect();
        let parts: Vec<Reference> = starts
            .par_iter()
            .map(|&start| {
                let rows = CHUNK_ROWS.min(t - start);
                let chunk: Vec<HostBuffer> = inputs
                    .iter()
                    .zip(&input_layout)
                    .map(|(b, l)| match l {
                        Some(per_row) => HostBuffer {
                            kind: b.kind,
                            values: b.values[start * per_row..(start + rows) * per_row].to_vec(),
                        },
                        None => b.clone(),
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

    fn reference_serial(&self, t: usize, inputs: &[HostBuffer]) -> Reference {
        let v = |i: usize| inputs[i].values.as_slice();
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
        }
    }
}

/// Builds a router's reference, with the weight of every expert as a tied
/// substitute: expert `e` swapped for the chosen expert whose selection score
/// is closest to its own, weighed by the model's own formula (`weights_of`).
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

fn ttt_reference(c: &TttConfig, t: usize, inputs: &[HostBuffer]) -> Reference {
    let f = c.f;
    let v = |i: usize| inputs[i].values.as_slice();
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

    /// Chunked (parallel) references and inputs must equal the serial ones.
    #[test]
    fn parallel_reference_matches_serial_for_every_target() {
        for target in crate::targets::all() {
            let p = &target.problem;
            let t = 3 * CHUNK_ROWS + 5;
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            let inputs = p.inputs(t, Distribution::Normal, &mut rng);
            for (b, spec) in inputs
                .iter()
                .zip(p.buffers(t).iter().filter(|b| b.role == Role::Input))
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
            let ser = p.reference_serial(t, &inputs);
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
