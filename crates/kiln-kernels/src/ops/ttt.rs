//! ttt_linear_decode: one TTT-Linear decode step per (batch, head) row.

use kiln_cuda::{CudaSlice, Gpu, PushKernelArg};

use super::{check_len, launched, unsupported, Loaded, OpConfig};
use crate::catalog::{float_literal, Op};
use crate::error::Result;
use crate::{DType, Element};

/// Configuration of ttt_linear_decode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TttConfig {
    /// Head dimension F.
    pub f: usize,
    /// Heads H (rows are `batch * H + head`; LayerNorm parameters are per head).
    pub h: usize,
    /// LayerNorm epsilon.
    pub ln_eps: f64,
    /// Storage dtype of xq, xk, xv, ln_w, ln_b and out (state is f32).
    pub dtype: DType,
}

impl TttConfig {
    /// F = 64, LayerNorm eps 1e-6.
    pub fn new(h: usize, dtype: DType) -> Self {
        Self {
            f: 64,
            h,
            ln_eps: 1e-6,
            dtype,
        }
    }
}

impl OpConfig for TttConfig {
    const OP: Op = Op::TttLinearDecode;
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn validate(&self) -> Result<()> {
        let op = "ttt_linear_decode";
        if self.f == 0 || self.f % 32 != 0 || self.f > 128 {
            return Err(unsupported(
                op,
                format!("F={} must be a multiple of 32 in 32..=128", self.f),
            ));
        }
        if self.h == 0 {
            return Err(unsupported(op, "H=0: need at least one head"));
        }
        if !(self.ln_eps.is_finite() && self.ln_eps > 0.0) {
            return Err(unsupported(
                op,
                format!("LN_EPS={} must be finite and > 0", self.ln_eps),
            ));
        }
        Ok(())
    }
    fn op_defines(&self) -> Vec<(String, String)> {
        vec![
            ("KILN_F".into(), self.f.to_string()),
            ("KILN_H".into(), self.h.to_string()),
            ("KILN_LN_EPS".into(), float_literal(self.ln_eps)),
        ]
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        vec![("F", self.f as i64), ("H", self.h as i64)]
    }
}

/// The inputs of one ttt_linear_decode launch.
#[derive(Debug)]
pub struct TttInputs<'a, S> {
    /// `xq[T,F]`.
    pub xq: &'a CudaSlice<S>,
    /// `xk[T,F]`.
    pub xk: &'a CudaSlice<S>,
    /// `xv[T,F]`.
    pub xv: &'a CudaSlice<S>,
    /// `W[T,F,F]`.
    pub w: &'a CudaSlice<f32>,
    /// `b[T,F]`.
    pub b: &'a CudaSlice<f32>,
    /// `W_grad[T,F,F]`.
    pub w_grad: &'a CudaSlice<f32>,
    /// `b_grad[T,F]`.
    pub b_grad: &'a CudaSlice<f32>,
    /// `ln_w[H,F]`.
    pub ln_w: &'a CudaSlice<S>,
    /// `ln_b[H,F]`.
    pub ln_b: &'a CudaSlice<S>,
    /// `lr[T]`.
    pub lr: &'a CudaSlice<f32>,
    /// `token_idx[T]`.
    pub token_idx: &'a CudaSlice<f32>,
    /// `last_in_mb[T]` (non-zero: last token of the mini-batch).
    pub last_in_mb: &'a CudaSlice<i32>,
}

/// The outputs of one ttt_linear_decode launch.
#[derive(Debug)]
pub struct TttOutputs<'a, S> {
    /// `out[T,F]`.
    pub out: &'a mut CudaSlice<S>,
    /// `W_out[T,F,F]`.
    pub w: &'a mut CudaSlice<f32>,
    /// `b_out[T,F]`.
    pub b: &'a mut CudaSlice<f32>,
    /// `W_grad_out[T,F,F]`.
    pub w_grad: &'a mut CudaSlice<f32>,
    /// `b_grad_out[T,F]`.
    pub b_grad: &'a mut CudaSlice<f32>,
}

impl Loaded<TttConfig> {
    /// One decode step over `t` rows.
    pub fn launch<S: Element>(
        &self,
        gpu: &Gpu,
        i: &TttInputs<'_, S>,
        o: &mut TttOutputs<'_, S>,
        t: usize,
    ) -> Result<()> {
        self.check_dtype::<S>()?;
        let (f, h) = (self.config.f, self.config.h);
        let op = "ttt_linear_decode";
        for (name, len) in [
            ("xq", i.xq.len()),
            ("xk", i.xk.len()),
            ("xv", i.xv.len()),
            ("out", o.out.len()),
        ] {
            check_len(op, name, len, t * f)?;
        }
        for (name, len) in [
            ("b", i.b.len()),
            ("b_grad", i.b_grad.len()),
            ("b_out", o.b.len()),
            ("b_grad_out", o.b_grad.len()),
        ] {
            check_len(op, name, len, t * f)?;
        }
        for (name, len) in [
            ("W", i.w.len()),
            ("W_grad", i.w_grad.len()),
            ("W_out", o.w.len()),
            ("W_grad_out", o.w_grad.len()),
        ] {
            check_len(op, name, len, t * f * f)?;
        }
        check_len(op, "ln_w", i.ln_w.len(), h * f)?;
        check_len(op, "ln_b", i.ln_b.len(), h * f)?;
        for (name, len) in [
            ("lr", i.lr.len()),
            ("token_idx", i.token_idx.len()),
            ("last_in_mb", i.last_in_mb.len()),
        ] {
            check_len(op, name, len, t)?;
        }
        let (cfg, t) = self.prepare(gpu, t)?;
        let mut b = gpu.stream().launch_builder(self.kernel().function());
        b.arg(i.xq)
            .arg(i.xk)
            .arg(i.xv)
            .arg(i.w)
            .arg(i.b)
            .arg(i.w_grad)
            .arg(i.b_grad);
        b.arg(i.ln_w)
            .arg(i.ln_b)
            .arg(i.lr)
            .arg(i.token_idx)
            .arg(i.last_in_mb);
        b.arg(&mut *o.out)
            .arg(&mut *o.w)
            .arg(&mut *o.b)
            .arg(&mut *o.w_grad)
            .arg(&mut *o.b_grad);
        b.arg(&t);
        // SAFETY: signature matches; buffer lengths checked above.
        launched(unsafe { b.launch(cfg) })
    }
}
