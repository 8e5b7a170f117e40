//! ttt_linear_decode reference.

/// One row's inputs of a TTT-Linear decode step (f64 values of the dtype / f32 inputs).
#[derive(Debug, Clone, PartialEq)]
pub struct TttRow<'a> {
    /// Query `[F]`.
    pub xq: &'a [f64],
    /// Key `[F]`.
    pub xk: &'a [f64],
    /// Value `[F]`.
    pub xv: &'a [f64],
    /// Weight `[F,F]`, row k multiplies `xk[k]`.
    pub w: &'a [f64],
    /// Bias `[F]`.
    pub b: &'a [f64],
    /// Accumulated weight gradient `[F,F]`.
    pub w_grad: &'a [f64],
    /// Accumulated bias gradient `[F]`.
    pub b_grad: &'a [f64],
    /// LayerNorm weight `[F]` of this row's head.
    pub ln_w: &'a [f64],
    /// LayerNorm bias `[F]` of this row's head.
    pub ln_b: &'a [f64],
    /// Learning rate of this row.
    pub lr: f64,
    /// Step scale of this row.
    pub token_idx: f64,
    /// Whether this token closes the mini-batch.
    pub last_in_mb: bool,
}

/// One row's outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct TttOut {
    /// `xq + LN(xq·W̄ + b̄)`, before rounding to the dtype.
    pub out: Vec<f64>,
    /// New weight.
    pub w: Vec<f64>,
    /// New bias.
    pub b: Vec<f64>,
    /// New weight gradient.
    pub w_grad: Vec<f64>,
    /// New bias gradient.
    pub b_grad: Vec<f64>,
}

/// `(LN(z), x̂, std)` with population variance.
pub fn layer_norm(z: &[f64], ln_w: &[f64], ln_b: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>, f64) {
    let f = z.len() as f64;
    let mean = z.iter().sum::<f64>() / f;
    let var = z.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / f;
    let std = (var + eps).sqrt();
    let xh: Vec<f64> = z.iter().map(|v| (v - mean) / std).collect();
    let y = xh
        .iter()
        .zip(ln_w)
        .zip(ln_b)
        .map(|((x, w), b)| w * x + b)
        .collect();
    (y, xh, std)
}

/// Gradient of `½‖LN(z) − target‖²` with respect to `z`.
pub fn ln_l2_grad(z: &[f64], target: &[f64], ln_w: &[f64], ln_b: &[f64], eps: f64) -> Vec<f64> {
    let f = z.len() as f64;
    let (y, xh, std) = layer_norm(z, ln_w, ln_b, eps);
    let g: Vec<f64> = (0..z.len()).map(|j| (y[j] - target[j]) * ln_w[j]).collect();
    let sg: f64 = g.iter().sum();
    let sgx: f64 = g.iter().zip(&xh).map(|(a, b)| a * b).sum();
    (0..z.len())
        .map(|j| (f * g[j] - sg - xh[j] * sgx) / (f * std))
        .collect()
}

fn affine(x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let f = b.len();
    (0..f)
        .map(|j| b[j] + (0..f).map(|k| x[k] * w[k * f + j]).sum::<f64>())
        .collect()
}

/// One decode step for one row (see the kernel header for the math).
pub fn ttt_row(r: &TttRow<'_>, ln_eps: f64) -> TttOut {
    let f = r.b.len();
    let z = affine(r.xk, r.w, r.b);
    let target: Vec<f64> = r.xv.iter().zip(r.xk).map(|(v, k)| v - k).collect();
    let gz = ln_l2_grad(&z, &target, r.ln_w, r.ln_b, ln_eps);
    let mut wg = r.w_grad.to_vec();
    for k in 0..f {
        for j in 0..f {
            wg[k * f + j] += r.lr * r.xk[k] * gz[j];
        }
    }
    let bg: Vec<f64> = (0..f).map(|j| r.b_grad[j] + r.lr * gz[j]).collect();
    let w_bar: Vec<f64> =
        r.w.iter()
            .zip(&wg)
            .map(|(w, g)| w - r.token_idx * g)
            .collect();
    let b_bar: Vec<f64> =
        r.b.iter()
            .zip(&bg)
            .map(|(b, g)| b - r.token_idx * g)
            .collect();
    let zq = affine(r.xq, &w_bar, &b_bar);
    let (y, _, _) = layer_norm(&zq, r.ln_w, r.ln_b, ln_eps);
    let out = r.xq.iter().zip(&y).map(|(a, b)| a + b).collect();
    if r.last_in_mb {
        TttOut {
            out,
            w: w_bar,
            b: b_bar,
            w_grad: vec![0.0; f * f],
            b_grad: vec![0.0; f],
        }
    } else {
        TttOut {
            out,
            w: r.w.to_vec(),
            b: r.b.to_vec(),
            w_grad: wg,
            b_grad: bg,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(z: &[f64], t: &[f64], w: &[f64], b: &[f64]) -> f64 {
        let (y, _, _) = layer_norm(z, w, b, 1e-6);
        0.5 * y.iter().zip(t).map(|(a, c)| (a - c) * (a - c)).sum::<f64>()
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let z = [0.3, -1.2, 2.0, 0.7, -0.1, 0.9];
        let t = [1.0, 0.5, -0.3, 0.2, 0.0, -1.0];
        let w = [1.0, 0.8, 1.2, 0.9, 1.1, 0.7];
        let b = [0.1, -0.2, 0.0, 0.3, 0.05, -0.1];
        let g = ln_l2_grad(&z, &t, &w, &b, 1e-6);
        let h = 1e-6;
        for j in 0..z.len() {
            let mut zp = z;
            let mut zm = z;
            zp[j] += h;
            zm[j] -= h;
            let fd = (loss(&zp, &t, &w, &b) - loss(&zm, &t, &w, &b)) / (2.0 * h);
            assert!((fd - g[j]).abs() < 1e-6, "dim {j}: fd {fd} vs {}", g[j]);
        }
        // The LayerNorm gradient is orthogonal to the constant direction.
        assert!(g.iter().sum::<f64>().abs() < 1e-9);
    }

    #[test]
    fn zero_learning_rate_leaves_the_state_and_is_plain_ln() {
        let f = 4;
        let eye: Vec<f64> = (0..f * f)
            .map(|i| if i % (f + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        let x = [1.0, 2.0, 3.0, 4.0];
        let zeros = vec![0.0; f];
        let ones = vec![1.0; f];
        let row = TttRow {
            xq: &x,
            xk: &x,
            xv: &x,
            w: &eye,
            b: &zeros,
            w_grad: &vec![0.0; f * f],
            b_grad: &zeros,
            ln_w: &ones,
            ln_b: &zeros,
            lr: 0.0,
            token_idx: 1.0,
            last_in_mb: true,
        };
        let o = ttt_row(&row, 1e-6);
        assert_eq!(o.w, eye);
        // LN([1,2,3,4]) = (x - 2.5)/sqrt(1.25)
        for (got, xj) in o.out.iter().zip(x) {
            let want = xj + (xj - 2.5) / (1.25f64 + 1e-6).sqrt();
            assert!((got - want).abs() < 1e-12);
        }
    }

    #[test]
    fn hand_derived_update() {
        // F = 2, W = 0, b = 0: Z = 0, so x̂ = 0 and y = ln_b; the gradient is
        // (F·g − Σg)/(F·std) with g = (ln_b − target)·ln_w and std = sqrt(eps).
        let eps = 1e-6;
        let xk = [1.0, 2.0];
        let xv = [2.0, 2.0]; // target = [1, 0]
        let lnw = [1.0, 1.0];
        let lnb = [0.0, 0.0];
        let z = [0.0, 0.0];
        let gz = ln_l2_grad(&z, &[1.0, 0.0], &lnw, &lnb, eps);
        let std = eps.sqrt();
        // g = [-1, 0], Σg = -1: gz = [(-2+1)/(2 std), (0+1)/(2 std)]
        assert!((gz[0] + 0.5 / std).abs() < 1e-6);
        assert!((gz[1] - 0.5 / std).abs() < 1e-6);
        let row = TttRow {
            xq: &[0.0, 0.0],
            xk: &xk,
            xv: &xv,
            w: &[0.0; 4],
            b: &[0.0; 2],
            w_grad: &[0.0; 4],
            b_grad: &[0.0; 2],
            ln_w: &lnw,
            ln_b: &lnb,
            lr: 0.5,
            token_idx: 1.0,
            last_in_mb: false,
        };
        let o = ttt_row(&row, eps);
        // W_grad[k,j] = lr * xk[k] * gz[j]; state untouched because not last.
        assert!((o.w_grad[2] - 0.5 * 2.0 * gz[0]).abs() < 1e-6);
        assert_eq!(o.w, vec![0.0; 4]);
        assert!((o.b_grad[1] - 0.5 * gz[1]).abs() < 1e-6);
    }
}
