//! One TTT-Linear decode step per (batch, head) row.

use candle_core::{DType, Tensor};
use kiln_kernels::ops::ttt::TttConfig;
use kiln_kernels::reference::ttt::{ttt_row, TttRow};

use super::{host, kernel_dtype};
use crate::error::{op_error, Result};

/// The inputs of a step over T = batch·heads rows of head dimension F.
#[derive(Debug, Clone, Copy)]
pub struct TttInputs<'a> {
    /// `xq[T,F]`, the model dtype.
    pub xq: &'a Tensor,
    /// `xk[T,F]`.
    pub xk: &'a Tensor,
    /// `xv[T,F]`.
    pub xv: &'a Tensor,
    /// `W[T,F,F]`, f32.
    pub w: &'a Tensor,
    /// `b[T,F]`, f32.
    pub b: &'a Tensor,
    /// `W_grad[T,F,F]`, f32.
    pub w_grad: &'a Tensor,
    /// `b_grad[T,F]`, f32.
    pub b_grad: &'a Tensor,
    /// LayerNorm weight `[H,F]`, the model dtype.
    pub ln_w: &'a Tensor,
    /// LayerNorm bias `[H,F]`.
    pub ln_b: &'a Tensor,
    /// Per-row learning rate `[T]`, f32.
    pub lr: &'a Tensor,
    /// Per-row token index within the mini-batch `[T]`, f32.
    pub token_idx: &'a Tensor,
    /// `[T]` i32, non-zero on the last token of a mini-batch.
    pub last_in_mb: &'a Tensor,
}

/// The outputs: `out[T,F]` and the state after the step.
#[derive(Debug, Clone)]
pub struct TttStep {
    /// `out[T,F]`.
    pub out: Tensor,
    /// `W[T,F,F]`.
    pub w: Tensor,
    /// `b[T,F]`.
    pub b: Tensor,
    /// `W_grad[T,F,F]`.
    pub w_grad: Tensor,
    /// `b_grad[T,F]`.
    pub b_grad: Tensor,
}

/// One decode step (see `kernels/ttt_linear_decode.cu` for the math) with
/// `h` heads and LayerNorm eps `ln_eps`.
pub fn ttt_linear_decode(i: &TttInputs<'_>, h: usize, ln_eps: f64) -> Result<TttStep> {
    let op = "ttt_linear_decode";
    let (t, f) = i.xq.dims2()?;
    let c = TttConfig {
        f,
        h,
        ln_eps,
        dtype: kernel_dtype(op, i.xq.dtype())?,
    };
    let expect: [(&str, &Tensor, Vec<usize>, Option<DType>); 12] = [
        ("xq", i.xq, vec![t, f], None),
        ("xk", i.xk, vec![t, f], None),
        ("xv", i.xv, vec![t, f], None),
        ("W", i.w, vec![t, f, f], Some(DType::F32)),
        ("b", i.b, vec![t, f], Some(DType::F32)),
        ("W_grad", i.w_grad, vec![t, f, f], Some(DType::F32)),
        ("b_grad", i.b_grad, vec![t, f], Some(DType::F32)),
        ("ln_w", i.ln_w, vec![h, f], None),
        ("ln_b", i.ln_b, vec![h, f], None),
        ("lr", i.lr, vec![t], Some(DType::F32)),
        ("token_idx", i.token_idx, vec![t], Some(DType::F32)),
        ("last_in_mb", i.last_in_mb, vec![t], Some(DType::I32)),
    ];
    for (name, x, dims, dtype) in &expect {
        let want = dtype.unwrap_or(i.xq.dtype());
        if x.dims() != dims.as_slice() || x.dtype() != want {
            return Err(op_error(
                op,
                format!(
                    "{name} must be {want:?} {dims:?}, got {:?} {:?}",
                    x.dtype(),
                    x.dims()
                ),
            ));
        }
    }
    let xs: Vec<Tensor> = expect
        .iter()
        .map(|(_, x, _, _)| x.contiguous())
        .collect::<candle_core::Result<_>>()?;
    if i.xq.device().is_cpu() {
        let v: Vec<Vec<f64>> = xs.iter().map(host::values).collect::<Result<_>>()?;
        let (mut out, mut w, mut b, mut wg, mut bg) = (vec![], vec![], vec![], vec![], vec![]);
        for r in 0..t {
            let head = r % h;
            let row = |k: usize, n: usize| &v[k][r * n..(r + 1) * n];
            let o = ttt_row(
                &TttRow {
                    xq: row(0, f),
                    xk: row(1, f),
                    xv: row(2, f),
                    w: row(3, f * f),
                    b: row(4, f),
                    w_grad: row(5, f * f),
                    b_grad: row(6, f),
                    ln_w: &v[7][head * f..(head + 1) * f],
                    ln_b: &v[8][head * f..(head + 1) * f],
                    lr: v[9][r],
                    token_idx: v[10][r],
                    last_in_mb: v[11][r] != 0.0,
                },
                c.ln_eps,
            );
            out.extend(o.out);
            w.extend(o.w);
            b.extend(o.b);
            wg.extend(o.w_grad);
            bg.extend(o.b_grad);
        }
        let dev = i.xq.device();
        return Ok(TttStep {
            out: host::tensor(out, (t, f), i.xq.dtype(), dev)?,
            w: host::tensor(w, (t, f, f), DType::F32, dev)?,
            b: host::tensor(b, (t, f), DType::F32, dev)?,
            w_grad: host::tensor(wg, (t, f, f), DType::F32, dev)?,
            b_grad: host::tensor(bg, (t, f), DType::F32, dev)?,
        });
    }
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, run, Param};
        let dev = cuda_device(op, i.xq)?;
        let mut params: Vec<Param<'_>> = xs.iter().map(Param::In).collect();
        params.extend([Param::Out, Param::Out, Param::Out, Param::Out, Param::Out]);
        params.push(Param::I32(t as i32));
        let tf = candle_core::Shape::from((t, f));
        let tff = candle_core::Shape::from((t, f, f));
        let mut o = run(
            &c,
            &dev,
            t,
            &params,
            &[
                (i.xq.dtype(), tf.clone()),
                (DType::F32, tff.clone()),
                (DType::F32, tf.clone()),
                (DType::F32, tff),
                (DType::F32, tf),
            ],
        )?
        .into_iter();
        let mut next = || o.next().ok_or_else(|| op_error(op, "missing output"));
        Ok(TttStep {
            out: next()?,
            w: next()?,
            b: next()?,
            w_grad: next()?,
            b_grad: next()?,
        })
    }
    #[cfg(not(feature = "cuda"))]
    Err(super::no_cuda(op))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Shape};

    #[test]
    fn the_last_token_of_a_mini_batch_applies_and_clears_the_gradients() {
        let (t, f, h) = (2, 32, 2);
        let dev = Device::Cpu;
        let r = |s: u64, shape: &[usize]| {
            crate::synth::make_tensor(s, "x", &Shape::from(shape.to_vec()), DType::F32, &dev)
                .expect("tensor")
        };
        let (xq, xk, xv) = (r(1, &[t, f]), r(2, &[t, f]), r(3, &[t, f]));
        let (w, b) = (r(4, &[t, f, f]), r(5, &[t, f]));
        let zeros_w = Tensor::zeros((t, f, f), DType::F32, &dev).expect("zeros");
        let zeros_b = Tensor::zeros((t, f), DType::F32, &dev).expect("zeros");
        let ln_w = Tensor::ones((h, f), DType::F32, &dev).expect("ones");
        let ln_b = Tensor::zeros((h, f), DType::F32, &dev).expect("zeros");
        let lr = Tensor::new(&[0.5f32, 0.5], &dev).expect("lr");
        let idx = Tensor::new(&[1f32, 1.0], &dev).expect("idx");
        let last = Tensor::new(&[0i32, 1], &dev).expect("last");
        let s = ttt_linear_decode(
            &TttInputs {
                xq: &xq,
                xk: &xk,
                xv: &xv,
                w: &w,
                b: &b,
                w_grad: &zeros_w,
                b_grad: &zeros_b,
                ln_w: &ln_w,
                ln_b: &ln_b,
                lr: &lr,
                token_idx: &idx,
                last_in_mb: &last,
            },
            h,
            1e-6,
        )
        .expect("step");
        let sum = |x: &Tensor| -> f32 {
            x.abs()
                .and_then(|a| a.sum_all())
                .and_then(|a| a.to_scalar())
                .expect("sum")
        };
        // Row 0 accumulates gradients and keeps W; row 1 applies them and clears them.
        assert!(sum(&s.w_grad.get(0).expect("row")) > 0.0);
        assert_eq!(sum(&s.w_grad.get(1).expect("row")), 0.0);
        let dw0 = (s.w.get(0).expect("row") - w.get(0).expect("row")).expect("sub");
        assert_eq!(sum(&dw0), 0.0);
        let dw1 = (s.w.get(1).expect("row") - w.get(1).expect("row")).expect("sub");
        assert!(sum(&dw1) > 0.0);
        assert_eq!(s.out.dims(), [t, f]);
        // A bad shape is a typed error naming the buffer.
        let e = ttt_linear_decode(
            &TttInputs {
                ln_w: &lr,
                ..TttInputs {
                    xq: &xq,
                    xk: &xk,
                    xv: &xv,
                    w: &w,
                    b: &b,
                    w_grad: &zeros_w,
                    b_grad: &zeros_b,
                    ln_w: &ln_w,
                    ln_b: &ln_b,
                    lr: &lr,
                    token_idx: &idx,
                    last_in_mb: &last,
                }
            },
            h,
            1e-6,
        )
        .unwrap_err();
        assert!(e.to_string().contains("ln_w"), "{e}");
    }
}
