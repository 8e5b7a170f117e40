//! Routers: softmax_topk (Qwen3) and sigmoid_topk (GLM-4.7-Flash, LFM2, DeepSeek-V3).
//!
//! Both write `weights[T,K]` (f32) and `indices[T,K]` (u32) sorted by
//! descending selection score, equal scores lower expert index first.
//!
//! Casting, from HF transformers: Qwen3MoE computes `softmax(logits, dtype=float32)`
//! and renormalises in f32 (norm_topk_prob), then casts the weights to the model
//! dtype before the expert combine. GLM-4.7-Flash (`Glm4MoeLiteTopkRouter`) computes
//! the router logits, sigmoid and weights all in f32 (logits dtype f32,
//! `sigmoid_in_dtype = false`, eps 1e-20, scale 1.8). LFM2-MoE
//! (`Lfm2MoeSparseMoeBlock.route_tokens_to_experts`) runs the sigmoid on the
//! model-dtype logits and gathers, sums, divides (eps 1e-6) and scales in the
//! model dtype; the bias add promotes to f32 (`sigmoid_in_dtype = true`).

use kiln_cuda::{CudaSlice, Gpu, PushKernelArg};

use super::{check_len, launched, unsupported, Loaded, OpConfig};
use crate::catalog::{float_literal, Op};
use crate::error::Result;
use crate::reference::topk::SigmoidRouting;
use crate::{DType, Element};

/// Configuration of softmax_topk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftmaxTopkConfig {
    /// Experts.
    pub e: usize,
    /// Experts per token.
    pub k: usize,
    /// Renormalise the chosen probabilities to sum to 1.
    pub renorm: bool,
    /// Logits dtype.
    pub dtype: DType,
}

impl OpConfig for SoftmaxTopkConfig {
    const OP: Op = Op::SoftmaxTopk;
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn validate(&self) -> Result<()> {
        check_ek("softmax_topk", self.e, self.k)
    }
    fn op_defines(&self) -> Vec<(String, String)> {
        vec![
            ("KILN_E".into(), self.e.to_string()),
            ("KILN_K".into(), self.k.to_string()),
            ("KILN_RENORM".into(), (self.renorm as u8).to_string()),
        ]
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        vec![("E", self.e as i64), ("K", self.k as i64)]
    }
}

fn check_ek(op: &'static str, e: usize, k: usize) -> Result<()> {
    if !(1..=256).contains(&e) {
        return Err(unsupported(op, format!("E={e} is outside 1..=256")));
    }
    if k == 0 || k > e || k > 32 {
        return Err(unsupported(
            op,
            format!("K={k} is outside 1..=min(E={e}, 32)"),
        ));
    }
    Ok(())
}

/// Configuration of sigmoid_topk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SigmoidTopkConfig {
    /// The routing math (shared with the reference).
    pub routing: SigmoidRouting,
}

impl SigmoidTopkConfig {
    /// GLM-4.7-Flash: E=64, K=4, f32 logits and math, eps 1e-20, scale 1.8.
    pub fn glm47_flash() -> Self {
        Self {
            routing: SigmoidRouting {
                e: 64,
                k: 4,
                n_group: 1,
                topk_group: 1,
                norm_eps: 1e-20,
                scale: 1.8,
                sigmoid_in_dtype: false,
                dtype: DType::F32,
            },
        }
    }

    /// LFM2-8B-A1B: E=32, K=4, sigmoid in the model dtype, eps 1e-6, scale 1.
    pub fn lfm2_8b_a1b(dtype: DType) -> Self {
        Self {
            routing: SigmoidRouting {
                e: 32,
                k: 4,
                n_group: 1,
                topk_group: 1,
                norm_eps: 1e-6,
                scale: 1.0,
                sigmoid_in_dtype: true,
                dtype,
            },
        }
    }
}

impl OpConfig for SigmoidTopkConfig {
    const OP: Op = Op::SigmoidTopk;
    fn dtype(&self) -> DType {
        self.routing.dtype
    }
    fn validate(&self) -> Result<()> {
        let r = &self.routing;
        let op = "sigmoid_topk";
        check_ek(op, r.e, r.k)?;
        if r.n_group == 0 || r.n_group > 32 || r.e % r.n_group != 0 {
            return Err(unsupported(
                op,
                format!(
                    "N_GROUP={} must divide E={} and be in 1..=32",
                    r.n_group, r.e
                ),
            ));
        }
        if r.n_group > 1 && r.e / r.n_group < 2 {
            return Err(unsupported(
                op,
                format!("E/N_GROUP={} < 2: groups need two experts", r.e / r.n_group),
            ));
        }
        if r.topk_group == 0 || r.topk_group > r.n_group {
            return Err(unsupported(
                op,
                format!(
                    "TOPK_GROUP={} is outside 1..=N_GROUP={}",
                    r.topk_group, r.n_group
                ),
            ));
        }
        if r.k > r.topk_group * (r.e / r.n_group) {
            return Err(unsupported(
                op,
                format!(
                    "K={} exceeds the {} experts of the kept groups",
                    r.k,
                    r.topk_group * (r.e / r.n_group)
                ),
            ));
        }
        for (name, v) in [("NORM_EPS", r.norm_eps), ("SCALE", r.scale)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(unsupported(
                    op,
                    format!("{name}={v} must be finite and >= 0"),
                ));
            }
        }
        Ok(())
    }
    fn op_defines(&self) -> Vec<(String, String)> {
        let r = &self.routing;
        vec![
            ("KILN_E".into(), r.e.to_string()),
            ("KILN_K".into(), r.k.to_string()),
            ("KILN_N_GROUP".into(), r.n_group.to_string()),
            ("KILN_TOPK_GROUP".into(), r.topk_group.to_string()),
            ("KILN_NORM_EPS".into(), float_literal(r.norm_eps)),
            ("KILN_SCALE".into(), float_literal(r.scale)),
            (
                "KILN_SIGMOID_IN_DTYPE".into(),
                (r.sigmoid_in_dtype as u8).to_string(),
            ),
        ]
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        let r = &self.routing;
        vec![
            ("E", r.e as i64),
            ("K", r.k as i64),
            ("N_GROUP", r.n_group as i64),
            ("TOPK_GROUP", r.topk_group as i64),
        ]
    }
}

impl Loaded<SoftmaxTopkConfig> {
    /// Routes `logits[T,E]` into `weights[T,K]`, `indices[T,K]`.
    pub fn launch<S: Element>(
        &self,
        gpu: &Gpu,
        logits: &CudaSlice<S>,
        weights: &mut CudaSlice<f32>,
        indices: &mut CudaSlice<u32>,
        t: usize,
    ) -> Result<()> {
        self.check_dtype::<S>()?;
        let c = self.config;
        check_len("softmax_topk", "logits", logits.len(), t * c.e)?;
        check_len("softmax_topk", "weights", weights.len(), t * c.k)?;
        check_len("softmax_topk", "indices", indices.len(), t * c.k)?;
        let (cfg, t) = self.prepare(gpu, t)?;
        let mut b = gpu.stream().launch_builder(self.kernel().function());
        b.arg(logits).arg(weights).arg(indices).arg(&t);
        // SAFETY: signature matches; buffer lengths checked above.
        launched(unsafe { b.launch(cfg) })
    }
}

impl Loaded<SigmoidTopkConfig> {
    /// Routes `logits[T,E]` with `bias[E]` into `weights[T,K]`, `indices[T,K]`.
    pub fn launch<S: Element>(
        &self,
        gpu: &Gpu,
        logits: &CudaSlice<S>,
        bias: &CudaSlice<f32>,
        weights: &mut CudaSlice<f32>,
        indices: &mut CudaSlice<u32>,
        t: usize,
    ) -> Result<()> {
        self.check_dtype::<S>()?;
        let r = self.config.routing;
        check_len("sigmoid_topk", "logits", logits.len(), t * r.e)?;
        check_len("sigmoid_topk", "bias", bias.len(), r.e)?;
        check_len("sigmoid_topk", "weights", weights.len(), t * r.k)?;
        check_len("sigmoid_topk", "indices", indices.len(), t * r.k)?;
        let (cfg, t) = self.prepare(gpu, t)?;
        let mut b = gpu.stream().launch_builder(self.kernel().function());
        b.arg(logits).arg(bias).arg(weights).arg(indices).arg(&t);
        // SAFETY: signature matches; buffer lengths checked above.
        launched(unsafe { b.launch(cfg) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let bad = SoftmaxTopkConfig {
            e: 8,
            k: 9,
            renorm: true,
            dtype: DType::BF16,
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "softmax_topk: K=9 is outside 1..=min(E=8, 32)"
        );
        let mut g = SigmoidTopkConfig::glm47_flash();
        g.routing.n_group = 3;
        assert!(g.validate().unwrap_err().to_string().contains("N_GROUP=3"));
        assert!(SigmoidTopkConfig::glm47_flash().validate().is_ok());
        assert!(SigmoidTopkConfig::lfm2_8b_a1b(DType::BF16)
            .validate()
            .is_ok());
    }
}
