//! The building blocks the models share, each run on kiln's kernels or on
//! plain candle ops ([`Kernels`]).

use candle_core::{DType, Device, Tensor, D};
use kiln_kernels::reference::rope::RopeShape;

use super::kv_cache::KvCache;
use super::Kernels;
use crate::error::Result;
use crate::ops;

/// `x · wᵀ` for `x[T, in]`, `w[out, in]`: on kiln's kernels at decode batch
/// sizes (T ≤ 8) kiln's `linear_gemv`, otherwise cuBLAS (the plain-candle
/// baseline always).
pub fn linear(x: &Tensor, w: &Tensor, k: Kernels) -> Result<Tensor> {
    if on_gemv(x, w, k) {
        return ops::linear::gemv(x, w);
    }
    Ok(x.matmul(&w.t()?)?)
}

/// Whether `x · wᵀ` runs on kiln's `linear_gemv`: kiln's kernels, a CUDA
/// device, a shape the kernel takes. Same dtypes only: a mixed pair would
/// come back in w's dtype and fail in the matmul fallback (the router widens
/// x on purpose, see moe.rs).
fn on_gemv(x: &Tensor, w: &Tensor, k: Kernels) -> bool {
    k == Kernels::Kiln
        && x.dtype() == w.dtype()
        && x.device().is_cuda()
        && ops::linear::gemv_applies(x, w)
}

/// `x · wᵀ + bias`: on kiln's kernels at decode batch sizes one
/// `linear_gemv` launch with the bias in its epilogue (bit-identical to the
/// separate add), otherwise the projection then a broadcast add.
pub fn linear_bias(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, k: Kernels) -> Result<Tensor> {
    let Some(b) = bias else {
        return linear(x, w, k);
    };
    if on_gemv(x, w, k) && ops::linear::fusion_enabled() && b.dtype() == w.dtype() {
        return ops::linear::gemv_bias(x, w, b);
    }
    Ok(linear(x, w, k)?.broadcast_add(b)?)
}

/// A decoder sub-layer's input: the RMSNorm of the residual stream, after
/// adding the previous sub-layer's output if there is one. It is computed
/// by the norm's own launch when a model asks for the tensor
/// ([`NormedInput::tensor`]), or inside the first projection that reads it
/// where that projection can take it in its prologue ([`linear_normed`],
/// [`Mlp::forward_normed`]; bit for bit the same, see
/// [`crate::ops::linear::norm_prologue_applies`]).
/// Either way the new residual stream is [`NormedInput::residual`].
pub struct NormedInput<'a> {
    delta: Option<&'a Tensor>,
    residual: &'a Tensor,
    w: &'a Tensor,
    eps: f64,
    kernels: Kernels,
    normed: std::cell::RefCell<Option<Tensor>>,
    new_residual: std::cell::RefCell<Option<Tensor>>,
}

impl<'a> NormedInput<'a> {
    /// `rmsnorm(delta + residual) * w` (`rmsnorm(residual) * w` without a delta).
    pub fn new(
        delta: Option<&'a Tensor>,
        residual: &'a Tensor,
        w: &'a Tensor,
        eps: f64,
        kernels: Kernels,
    ) -> Self {
        Self {
            delta,
            residual,
            w,
            eps,
            kernels,
            normed: Default::default(),
            new_residual: Default::default(),
        }
    }

    /// Rows (tokens) of the input.
    pub fn rows(&self) -> Result<usize> {
        Ok(self.residual.dim(0)?)
    }

    /// The device it lives on.
    pub fn device(&self) -> &Device {
        self.residual.device()
    }

    /// The normed tensor (the norm's own launch, the first time).
    pub fn tensor(&self) -> Result<Tensor> {
        if let Some(n) = self.normed.borrow().as_ref() {
            return Ok(n.clone());
        }
        let (n, h) = match self.delta {
            None => (
                rms_norm(self.residual, self.w, self.eps, self.kernels)?,
                self.residual.clone(),
            ),
            Some(d) => add_rms_norm(d, self.residual, self.w, self.eps, self.kernels)?,
        };
        *self.normed.borrow_mut() = Some(n.clone());
        *self.new_residual.borrow_mut() = Some(h);
        Ok(n)
    }

    /// The residual stream after this input's add (the residual itself
    /// without a delta).
    pub fn residual(&self) -> Result<Tensor> {
        if self.new_residual.borrow().is_none() {
            self.tensor()?;
        }
        self.new_residual
            .borrow()
            .clone()
            .ok_or_else(|| crate::Error::Config("a normed input without its residual".into()))
    }

    /// `x · wᵀ` of the normed rows for a [`NormedInput`] that other ops read
    /// too (a MoE layer's router projection, before the experts), if the
    /// norm can run in the projection's prologue: the projection then also
    /// writes the normed rows, and later [`Self::tensor`]s return them
    /// without a launch. `None` where it cannot: the caller projects as it
    /// would have.
    pub fn project_shared(&self, w: &Tensor) -> Result<Option<Tensor>> {
        self.fused(w, None, ops::linear::Epilogue::Plain, true)
    }

    /// A MoE layer's router in one launch: the norm in the router
    /// projection's prologue, the router (`router`, with a sigmoid router's
    /// `select_bias`) in its last block, the normed rows kept for the experts
    /// ([`ops::linear::gemv_normed_routed`]), if that applies
    /// ([`ops::linear::router_epilogue_applies`]): `(weights, indices)`,
    /// with the stacked shared expert's column where `append_shared`.
    /// `None` where it does not: the caller routes as it would have.
    pub fn project_routed(
        &self,
        w: &Tensor,
        router: &ops::linear::RouterEpilogue,
        select_bias: Option<&Tensor>,
        append_shared: bool,
        blocks_done: &ops::linear::BlocksDone,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let Some((x, norm)) = self.prologue() else {
            return Ok(None);
        };
        if !ops::linear::router_epilogue_applies(x, &norm, w, router, select_bias, append_shared) {
            return Ok(None);
        }
        let r = ops::linear::gemv_normed_routed(
            x,
            &norm,
            w,
            router,
            select_bias,
            append_shared,
            blocks_done,
        )?;
        self.keep(r.projection.residual, r.projection.normed);
        Ok(Some((r.weights, r.indices)))
    }

    /// The projection's input and the norm its prologue would compute, if a
    /// prologue may run at all (kiln's kernels on CUDA, the norm not yet
    /// computed).
    fn prologue(&self) -> Option<(&Tensor, ops::linear::NormPrologue<'_>)> {
        use ops::linear::NormPrologue;
        if self.kernels != Kernels::Kiln
            || !self.device().is_cuda()
            || self.new_residual.borrow().is_some()
        {
            return None;
        }
        Some(match self.delta {
            None => (
                self.residual,
                NormPrologue::RmsNorm {
                    w: self.w,
                    eps: self.eps,
                },
            ),
            Some(d) => (
                d,
                NormPrologue::AddRmsNorm {
                    residual: self.residual,
                    w: self.w,
                    eps: self.eps,
                },
            ),
        })
    }

    /// Records what a fused launch computed: the new residual (the residual
    /// itself without a delta) and the normed rows, if written.
    fn keep(&self, residual: Option<Tensor>, normed: Option<Tensor>) {
        *self.new_residual.borrow_mut() = Some(residual.unwrap_or_else(|| self.residual.clone()));
        *self.normed.borrow_mut() = normed;
    }

    /// The projection with `epilogue` of the normed input, its norm in the
    /// projection's prologue, if that applies (kiln's kernels on CUDA, the
    /// norm not yet computed, [`ops::linear::norm_prologue_applies`]). With
    /// `keep` the normed rows are written out too, for later [`Self::tensor`]s.
    fn fused(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        epilogue: ops::linear::Epilogue,
        keep: bool,
    ) -> Result<Option<Tensor>> {
        let Some((x, norm)) = self.prologue() else {
            return Ok(None);
        };
        if !ops::linear::norm_prologue_applies(x, &norm, w, epilogue) {
            return Ok(None);
        }
        let p = ops::linear::gemv_normed(x, &norm, w, bias, epilogue, keep)?;
        self.keep(p.residual, p.normed);
        Ok(Some(p.y))
    }
}

/// [`linear_bias`] of a [`NormedInput`]: the norm in the projection's
/// prologue where it applies (the bias then in its epilogue), else the
/// norm's launch and then the projection as [`linear_bias`] runs it.
pub fn linear_normed(
    x: &NormedInput,
    w: &Tensor,
    bias: Option<&Tensor>,
    k: Kernels,
) -> Result<Tensor> {
    use ops::linear::Epilogue;
    let fused = match bias {
        None => x.fused(w, None, Epilogue::Plain, false)?,
        Some(b) if ops::linear::fusion_enabled() && b.dtype() == w.dtype() => {
            x.fused(w, Some(b), Epilogue::Bias, false)?
        }
        Some(_) => None,
    };
    match fused {
        Some(y) => Ok(y),
        None => linear_bias(&x.tensor()?, w, bias, k),
    }
}

/// The q, k and v heads of a fused projection's output `qkv[T, (QH + 2 KVH)·HD]`
/// for `(QH, KVH, HD)`: views `[T, QH, HD]`, `[T, KVH, HD]`, `[T, KVH, HD]`.
pub fn split_qkv(
    qkv: &Tensor,
    (qh, kvh, hd): (usize, usize, usize),
) -> Result<(Tensor, Tensor, Tensor)> {
    let t = qkv.dim(0)?;
    let q = qkv.narrow(1, 0, qh * hd)?.reshape((t, qh, hd))?;
    let k = qkv.narrow(1, qh * hd, kvh * hd)?.reshape((t, kvh, hd))?;
    let v = qkv
        .narrow(1, (qh + kvh) * hd, kvh * hd)?
        .reshape((t, kvh, hd))?;
    Ok((q, k, v))
}

/// RMSNorm over the last dimension.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Kiln => ops::norm::rms_norm(x, w, eps),
        Kernels::Candle => Ok(candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?),
    }
}

/// `h = delta + residual`, `(rmsnorm(h) * w, h)`.
pub fn add_rms_norm(
    delta: &Tensor,
    residual: &Tensor,
    w: &Tensor,
    eps: f64,
    k: Kernels,
) -> Result<(Tensor, Tensor)> {
    match k {
        Kernels::Kiln => ops::norm::add_rms_norm(delta, residual, w, eps),
        Kernels::Candle => {
            let h = (delta + residual)?;
            Ok((rms_norm(&h, w, eps, k)?, h))
        }
    }
}

/// `silu(gate) * up` of a packed `[T, 2I]` (gate first).
pub fn swiglu_packed(gate_up: &Tensor, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::Kiln => ops::swiglu::swiglu_packed(gate_up),
        Kernels::Candle => {
            let i = gate_up.dim(D::Minus1)? / 2;
            let g = gate_up.narrow(D::Minus1, 0, i)?;
            let u = gate_up.narrow(D::Minus1, i, i)?;
            Ok((candle_nn::ops::silu(&g)? * u)?)
        }
    }
}

/// A dense SwiGLU MLP with its gate and up weights packed as `[2I, H]`.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `[gate; up]`, `[2I, H]`.
    pub gate_up: Tensor,
    /// `[H, I]`.
    pub down: Tensor,
}

/// The checkpoint names of a SwiGLU MLP's three projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpNames {
    /// The gated projection (silu side).
    pub gate: &'static str,
    /// The linear projection.
    pub up: &'static str,
    /// The output projection.
    pub down: &'static str,
}

impl MlpNames {
    /// Llama-style names (Qwen3, GLM-4.7-Flash).
    pub const HF: Self = Self {
        gate: "gate_proj",
        up: "up_proj",
        down: "down_proj",
    };
    /// LFM2's names: `w1` gate, `w3` up, `w2` down.
    pub const LFM2: Self = Self {
        gate: "w1",
        up: "w3",
        down: "w2",
    };
}

impl Mlp {
    /// Loads `gate_proj`, `up_proj`, `down_proj` under `vb`.
    pub fn load(vb: &candle_nn::VarBuilder, h: usize, i: usize) -> Result<Self> {
        Self::load_named(vb, h, i, MlpNames::HF)
    }

    /// Loads the three projections named `names` under `vb`.
    pub fn load_named(
        vb: &candle_nn::VarBuilder,
        h: usize,
        i: usize,
        names: MlpNames,
    ) -> Result<Self> {
        let g = vb.pp(names.gate).get((i, h), "weight")?;
        let u = vb.pp(names.up).get((i, h), "weight")?;
        Ok(Self {
            gate_up: Tensor::cat(&[&g, &u], 0)?,
            down: vb.pp(names.down).get((h, i), "weight")?,
        })
    }

    /// `down(silu(gate x) * up x)`; on kiln's kernels at decode batch sizes
    /// the SwiGLU is the gate/up projection's epilogue (one launch fewer,
    /// bit-identical), unless a pack replaces `swiglu_packed`.
    pub fn forward(&self, x: &Tensor, k: Kernels) -> Result<Tensor> {
        let i = self.down.dim(1)?;
        let h = if on_gemv(x, &self.gate_up, k)
            && ops::linear::fusion_enabled()
            && ops::swiglu::packed_fusable(i, x.dtype())?
        {
            ops::linear::gemv_swiglu(x, &self.gate_up)?
        } else {
            swiglu_packed(&linear(x, &self.gate_up, k)?, k)?
        };
        linear(&h, &self.down, k)
    }

    /// [`Mlp::forward`] of a [`NormedInput`]: the norm in the gate/up
    /// projection's prologue where it applies (the SwiGLU then in its
    /// epilogue), else the norm's launch and then [`Mlp::forward`].
    pub fn forward_normed(&self, x: &NormedInput, k: Kernels) -> Result<Tensor> {
        let i = self.down.dim(1)?;
        if ops::linear::fusion_enabled() && ops::swiglu::packed_fusable(i, self.gate_up.dtype())? {
            if let Some(h) = x.fused(&self.gate_up, None, ops::linear::Epilogue::SwiGlu, false)? {
                return linear(&h, &self.down, k);
            }
        }
        self.forward(&x.tensor()?, k)
    }
}

/// Rotary tables for candle's rope ops (`[max_len, rot_dim/2]`).
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
    /// Shape and math, shared with the kiln kernel.
    pub shape: RopeShape,
}

impl RopeTables {
    /// Tables for positions `0..max_len`, built like HF (f32 inv_freq, cast to the dtype).
    pub fn new(shape: RopeShape, max_len: usize, dtype: DType, dev: &Device) -> Result<Self> {
        let half = shape.rot_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1f32 / (shape.theta as f32).powf((2 * i) as f32 / shape.rot_dim as f32))
            .collect();
        let inv = Tensor::from_vec(inv, (1, half), dev)?;
        let t = Tensor::arange(0u32, max_len as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((max_len, 1))?;
        let f = t.matmul(&inv)?;
        Ok(Self {
            cos: f.cos()?.to_dtype(dtype)?,
            sin: f.sin()?.to_dtype(dtype)?,
            shape,
        })
    }

    /// The `[max_len, rot_dim/2]` cos and sin tables, in the model dtype.
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// The i32 positions `pos..pos+t` the kiln kernel reads; make them once per
    /// forward pass (one host-to-device copy), not once per layer.
    pub fn positions(&self, pos: usize, t: usize, dev: &Device) -> Result<Tensor> {
        Ok(Tensor::arange(pos as i32, (pos + t) as i32, dev)?)
    }

    /// Rotates `q[T,QH,HD]` and `k[T,KH,HD]` (the shape's slice) at `pos..pos+T`;
    /// `positions` are [`Self::positions`] (kiln's kernel only).
    pub fn apply(
        &self,
        q: &Tensor,
        k: &Tensor,
        pos: usize,
        positions: Option<&Tensor>,
        kern: Kernels,
    ) -> Result<(Tensor, Tensor)> {
        let t = q.dim(0)?;
        match kern {
            Kernels::Kiln => {
                let made;
                let positions = match positions {
                    Some(p) => p,
                    None => {
                        made = self.positions(pos, t, q.device())?;
                        &made
                    }
                };
                ops::rope::rope(q, k, positions, self.shape)
            }
            Kernels::Candle => {
                let cos = self.cos.narrow(0, pos, t)?;
                let sin = self.sin.narrow(0, pos, t)?;
                let (off, rot_dim, hd) = (
                    self.shape.rot_offset,
                    self.shape.rot_dim,
                    self.shape.head_dim,
                );
                let rot = |x: &Tensor| -> Result<Tensor> {
                    // candle's rope ops take [B, H, T, D] over the rotated slice only.
                    let r = x
                        .narrow(2, off, rot_dim)?
                        .transpose(0, 1)?
                        .unsqueeze(0)?
                        .contiguous()?;
                    let r = if self.shape.interleaved {
                        candle_nn::rotary_emb::rope_i(&r, &cos, &sin)?
                    } else {
                        candle_nn::rotary_emb::rope(&r, &cos, &sin)?
                    };
                    let r = r.squeeze(0)?.transpose(0, 1)?;
                    if rot_dim == hd {
                        return Ok(r);
                    }
                    let mut parts = Vec::new();
                    if off > 0 {
                        parts.push(x.narrow(2, 0, off)?);
                    }
                    parts.push(r);
                    if off + rot_dim < hd {
                        parts.push(x.narrow(2, off + rot_dim, hd - off - rot_dim)?);
                    }
                    Ok(Tensor::cat(&parts, 2)?)
                };
                Ok((rot(q)?, rot(k)?))
            }
        }
    }
}

/// Causal attention of `q[T, QH, DK]` at positions `pos..pos+T` over the
/// cache (already holding those positions): `[T, QH·DV]`.
pub fn attention(
    q: &Tensor,
    cache: &KvCache,
    pos: usize,
    scale: f64,
    kern: Kernels,
) -> Result<Tensor> {
    let (t, qh, dk) = q.dims3()?;
    if kern == Kernels::Kiln {
        let (k, v) = cache.buffers();
        let o = ops::attention::decode_attention(q, k, v, pos, scale)?;
        let dv = o.dim(2)?;
        return Ok(o.reshape((t, qh * dv))?);
    }
    let (k, v) = cache.history()?;
    let (kvh, len, _) = k.dims3()?;
    let dv = v.dim(2)?;
    let g = qh / kvh;
    // [T, QH, DK] -> [KVH, G*T, DK]: query head j reads kv head j / G.
    let q = (q.transpose(0, 1)?.contiguous()? * scale)?.reshape((kvh, g * t, dk))?;
    let mut scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
    if t > 1 {
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..len).map(move |j| if j <= pos + i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, len), q.device())?;
        scores = scores
            .reshape((kvh, g, t, len))?
            .broadcast_add(&mask)?
            .reshape((kvh, g * t, len))?;
    }
    let p = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
    let o = p.matmul(&v)?; // [KVH, G*T, DV]; v is a strided view of the cache
    Ok(o.reshape((qh, t, dv))?
        .transpose(0, 1)?
        .reshape((t, qh * dv))?)
}
