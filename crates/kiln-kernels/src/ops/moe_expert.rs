//! moe_expert_swiglu and moe_expert_down: the routed experts of a decode MoE
//! layer, gathered by the router's indices straight from the expert-stacked
//! weights (no token permutation, no per-expert launches).
//!
//! `moe_expert_swiglu` writes `h[T,K,I]`; `moe_expert_down` reads it and writes
//! the combined layer output `out[T,H]` (the weighted sum, optionally plus a
//! shared expert's output). GLM-4.7-Flash may instead stack its shared expert as
//! expert 64 (E = 65, K = 4 + 1, weight 1 in the last slot).

use kiln_cuda::{CudaSlice, Gpu, PushKernelArg};

use super::{check_len, launched, unsupported, Loaded, OpConfig};
use crate::catalog::Op;
use crate::error::Result;
use crate::reference::moe_expert::ExpertDims;
use crate::{DType, Element};

/// Configuration of moe_expert_swiglu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeExpertSwigluConfig {
    /// Hidden size (a multiple of 256).
    pub h: usize,
    /// Expert intermediate width.
    pub i: usize,
    /// Experts stacked in the weights.
    pub e: usize,
    /// Slots per token.
    pub k: usize,
    /// Round silu(gate) to the dtype before multiplying (HF eager).
    pub silu_in_dtype: bool,
    /// Storage dtype.
    pub dtype: DType,
}

/// Configuration of moe_expert_down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeExpertDownConfig {
    /// Hidden size (the output width).
    pub h: usize,
    /// Expert intermediate width (a multiple of 8).
    pub i: usize,
    /// Experts stacked in the weights.
    pub e: usize,
    /// Slots per token.
    pub k: usize,
    /// Add an unweighted shared-expert output `shared[T,H]`.
    pub has_shared: bool,
    /// Round each routing weight to the dtype before use (Qwen3, LFM2).
    pub weight_in_dtype: bool,
    /// Storage dtype.
    pub dtype: DType,
}

impl MoeExpertSwigluConfig {
    /// A config with HF's rounding (silu in the dtype).
    pub fn new(h: usize, i: usize, e: usize, k: usize, dtype: DType) -> Self {
        Self {
            h,
            i,
            e,
            k,
            silu_in_dtype: true,
            dtype,
        }
    }

    /// Qwen3-30B-A3B: H 2048, I 768, 128 experts, top-8.
    pub fn qwen3_30b_a3b(dtype: DType) -> Self {
        Self::new(2048, 768, 128, 8, dtype)
    }

    /// GLM-4.7-Flash: H 2048, I 1536, 64 routed experts + the shared one stacked
    /// as expert 64, top-4 + 1.
    pub fn glm47_flash(dtype: DType) -> Self {
        Self::new(2048, 1536, 65, 5, dtype)
    }

    /// LFM2-8B-A1B: H 2048, I 1792, 32 experts, top-4.
    pub fn lfm2_8b_a1b(dtype: DType) -> Self {
        Self::new(2048, 1792, 32, 4, dtype)
    }

    /// The dims shared with the reference.
    pub fn dims(&self) -> ExpertDims {
        ExpertDims {
            h: self.h,
            i: self.i,
            e: self.e,
            k: self.k,
        }
    }
}

impl MoeExpertDownConfig {
    /// A config without a shared expert, with f32 routing weights.
    pub fn new(h: usize, i: usize, e: usize, k: usize, dtype: DType) -> Self {
        Self {
            h,
            i,
            e,
            k,
            has_shared: false,
            weight_in_dtype: false,
            dtype,
        }
    }

    /// Qwen3-30B-A3B: routing weights cast to the model dtype.
    pub fn qwen3_30b_a3b(dtype: DType) -> Self {
        Self {
            weight_in_dtype: true,
            ..Self::new(2048, 768, 128, 8, dtype)
        }
    }

    /// GLM-4.7-Flash with the shared expert stacked as expert 64 (its slot's
    /// weight is 1); f32 routing weights (DeepSeek-V3 combines in f32).
    pub fn glm47_flash(dtype: DType) -> Self {
        Self::new(2048, 1536, 65, 5, dtype)
    }

    /// LFM2-8B-A1B: the router's weights are model-dtype values.
    pub fn lfm2_8b_a1b(dtype: DType) -> Self {
        Self {
            weight_in_dtype: true,
            ..Self::new(2048, 1792, 32, 4, dtype)
        }
    }

    /// The dims shared with the reference.
    pub fn dims(&self) -> ExpertDims {
        ExpertDims {
            h: self.h,
            i: self.i,
            e: self.e,
            k: self.k,
        }
    }
}

/// The checks both ops share: E, K and the u32 index range.
fn check_e_k(op: &'static str, e: usize, k: usize) -> Result<()> {
    if e == 0 || e >= u32::MAX as usize {
        return Err(unsupported(op, format!("E={e} is outside 1..2^32-1")));
    }
    if !(1..=64).contains(&k) {
        return Err(unsupported(op, format!("K={k} is outside 1..=64")));
    }
    Ok(())
}

/// `KILN_H`, `KILN_I`, `KILN_E`, `KILN_K` of both expert kernels.
fn dim_defines(d: ExpertDims) -> Vec<(String, String)> {
    vec![
        ("KILN_H".into(), d.h.to_string()),
        ("KILN_I".into(), d.i.to_string()),
        ("KILN_E".into(), d.e.to_string()),
        ("KILN_K".into(), d.k.to_string()),
    ]
}

/// The launch-line variables of both expert kernels.
fn dim_vars(d: ExpertDims) -> Vec<(&'static str, i64)> {
    vec![
        ("H", d.h as i64),
        ("I", d.i as i64),
        ("E", d.e as i64),
        ("K", d.k as i64),
    ]
}

impl OpConfig for MoeExpertSwigluConfig {
    const OP: Op = Op::MoeExpertSwiglu;
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn validate(&self) -> Result<()> {
        let op = "moe_expert_swiglu";
        if self.h == 0 || self.h % 256 != 0 || self.h > 16384 {
            return Err(unsupported(
                op,
                format!("H={} is not a multiple of 256 in 256..=16384", self.h),
            ));
        }
        if self.i == 0 || self.i > 1 << 20 {
            return Err(unsupported(op, format!("I={} is outside 1..=2^20", self.i)));
        }
        check_e_k(op, self.e, self.k)
    }
    fn op_defines(&self) -> Vec<(String, String)> {
        let mut d = dim_defines(self.dims());
        d.extend([(
            "KILN_SILU_IN_DTYPE".into(),
            (self.silu_in_dtype as u8).to_string(),
        )]);
        d
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        dim_vars(self.dims())
    }
}

impl OpConfig for MoeExpertDownConfig {
    const OP: Op = Op::MoeExpertDown;
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn validate(&self) -> Result<()> {
        let op = "moe_expert_down";
        if self.h == 0 || self.h > 1 << 20 {
            return Err(unsupported(op, format!("H={} is outside 1..=2^20", self.h)));
        }
        if self.i == 0 || self.i % 8 != 0 {
            return Err(unsupported(
                op,
                format!("I={} is not a positive multiple of 8", self.i),
            ));
        }
        check_e_k(op, self.e, self.k)?;
        // h[t] (K×I values) is staged in static shared memory.
        let staged = self.k * self.i * self.dtype.size();
        if staged > 48 * 1024 {
            return Err(unsupported(
                op,
                format!(
                    "K*I = {}×{} {} values ({staged} bytes) exceed the 48 KiB staging buffer",
                    self.k, self.i, self.dtype
                ),
            ));
        }
        Ok(())
    }
    fn op_defines(&self) -> Vec<(String, String)> {
        let mut d = dim_defines(self.dims());
        d.extend([
            (
                "KILN_HAS_SHARED".into(),
                (self.has_shared as u8).to_string(),
            ),
            (
                "KILN_WEIGHT_IN_DTYPE".into(),
                (self.weight_in_dtype as u8).to_string(),
            ),
        ]);
        d
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        dim_vars(self.dims())
    }
}

impl Loaded<MoeExpertSwigluConfig> {
    /// `h[T,K,I] = silu(dtype(w_gate[e]·x)) * dtype(w_up[e]·x)` for every slot's
    /// expert `e = indices[t,k]` (`x[T,H]`, weights `[E,I,H]`); slots with an
    /// index `>= E` get zeros.
    #[allow(clippy::too_many_arguments)]
    pub fn launch<S: Element>(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<S>,
        w_gate: &CudaSlice<S>,
        w_up: &CudaSlice<S>,
        indices: &CudaSlice<u32>,
        h: &mut CudaSlice<S>,
        t: usize,
    ) -> Result<()> {
        self.check_dtype::<S>()?;
        let c = self.config;
        let op = "moe_expert_swiglu";
        check_len(op, "x", x.len(), t * c.h)?;
        check_len(op, "w_gate", w_gate.len(), c.e * c.i * c.h)?;
        check_len(op, "w_up", w_up.len(), c.e * c.i * c.h)?;
        check_len(op, "indices", indices.len(), t * c.k)?;
        check_len(op, "h", h.len(), t * c.k * c.i)?;
        let (cfg, t) = self.prepare(gpu, t)?;
        let mut b = gpu.stream().launch_builder(self.kernel().function());
        b.arg(x).arg(w_gate).arg(w_up).arg(indices).arg(h).arg(&t);
        // SAFETY: signature matches; buffer lengths checked above; the kernel
        // bounds-checks every index against E.
        launched(unsafe { b.launch(cfg) })
    }
}

impl Loaded<MoeExpertDownConfig> {
    /// `out[t] = Σ_k w'_k·dtype(w_down[e_k]·h[t,k]) (+ shared[t])` (`h[T,K,I]`,
    /// `w_down[E,H,I]`, f32 `weights[T,K]`); `shared` must be given exactly when
    /// the config has a shared expert; slots with an index `>= E` add nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn launch<S: Element>(
        &self,
        gpu: &Gpu,
        h: &CudaSlice<S>,
        w_down: &CudaSlice<S>,
        indices: &CudaSlice<u32>,
        weights: &CudaSlice<f32>,
        shared: Option<&CudaSlice<S>>,
        out: &mut CudaSlice<S>,
        t: usize,
    ) -> Result<()> {
        self.check_dtype::<S>()?;
        let c = self.config;
        let op = "moe_expert_down";
        check_len(op, "h", h.len(), t * c.k * c.i)?;
        check_len(op, "w_down", w_down.len(), c.e * c.h * c.i)?;
        check_len(op, "indices", indices.len(), t * c.k)?;
        check_len(op, "weights", weights.len(), t * c.k)?;
        check_len(op, "out", out.len(), t * c.h)?;
        match (c.has_shared, shared) {
            (true, Some(s)) => check_len(op, "shared", s.len(), t * c.h)?,
            (false, None) => {}
            (true, None) => {
                return Err(unsupported(
                    op,
                    "configured with a shared expert but no `shared` buffer given",
                ))
            }
            (false, Some(_)) => {
                return Err(unsupported(
                    op,
                    "a `shared` buffer was given but the config has no shared expert",
                ))
            }
        }
        let (cfg, t) = self.prepare(gpu, t)?;
        let null: u64 = 0;
        let mut b = gpu.stream().launch_builder(self.kernel().function());
        b.arg(h).arg(w_down).arg(indices).arg(weights);
        match shared {
            Some(s) => b.arg(s),
            // The kernel never reads `shared` when KILN_HAS_SHARED=0.
            None => b.arg(&null),
        };
        b.arg(out).arg(&t);
        // SAFETY: signature matches; buffer lengths checked above; the kernel
        // bounds-checks every index against E.
        launched(unsafe { b.launch(cfg) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_op_and_dimension() {
        let bad_h = MoeExpertSwigluConfig::new(1000, 768, 128, 8, DType::BF16);
        assert_eq!(
            bad_h.validate().unwrap_err().to_string(),
            "moe_expert_swiglu: H=1000 is not a multiple of 256 in 256..=16384"
        );
        let bad_k = MoeExpertSwigluConfig::new(2048, 768, 128, 0, DType::BF16);
        assert!(bad_k.validate().unwrap_err().to_string().contains("K=0"));
        let bad_i = MoeExpertDownConfig::new(2048, 100, 8, 2, DType::BF16);
        assert_eq!(
            bad_i.validate().unwrap_err().to_string(),
            "moe_expert_down: I=100 is not a positive multiple of 8"
        );
        let big = MoeExpertDownConfig::new(2048, 8192, 8, 8, DType::F32);
        assert!(big.validate().unwrap_err().to_string().contains("48 KiB"));
        let no_e = MoeExpertDownConfig::new(2048, 768, 0, 8, DType::F32);
        assert!(no_e.validate().unwrap_err().to_string().contains("E=0"));
        // I need not be a multiple of 8 for the gate/up half.
        assert!(MoeExpertSwigluConfig::new(256, 3, 2, 1, DType::F16)
            .validate()
            .is_ok());
    }

    #[test]
    fn presets_validate_in_every_dtype_and_grids_cover_the_rows() {
        for dt in DType::ALL {
            for c in [
                MoeExpertSwigluConfig::qwen3_30b_a3b(dt),
                MoeExpertSwigluConfig::glm47_flash(dt),
                MoeExpertSwigluConfig::lfm2_8b_a1b(dt),
            ] {
                c.validate().expect("valid");
                let dims = c.launch_dims(3, 132).expect("dims");
                assert_eq!(dims.grid.0 as usize, 3 * c.k * c.i.div_ceil(8));
                assert_eq!(dims.block.0, 256);
            }
            for c in [
                MoeExpertDownConfig::qwen3_30b_a3b(dt),
                MoeExpertDownConfig::glm47_flash(dt),
                MoeExpertDownConfig::lfm2_8b_a1b(dt),
            ] {
                c.validate().expect("valid");
                let dims = c.launch_dims(5, 132).expect("dims");
                assert_eq!(dims.grid.0 as usize, 5 * c.h.div_ceil(8));
            }
        }
        let q = MoeExpertDownConfig::qwen3_30b_a3b(DType::BF16);
        assert!(q.weight_in_dtype && !q.has_shared);
        assert_eq!(MoeExpertSwigluConfig::glm47_flash(DType::BF16).dims().e, 65);
    }
}
