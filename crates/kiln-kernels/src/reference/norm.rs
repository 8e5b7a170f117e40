//! rmsnorm and add_rmsnorm references.

use crate::DType;

/// The RMSNorm of each row of `x[T,D]`, rounded as the configured model does.
///
/// `cast_before_scale`: HF Llama rule (`weight * x_normed.to(dtype)`), used by
/// Qwen3, LFM2 and GLM-4.7-Flash; otherwise one rounding after the weight.
pub fn rmsnorm(
    x: &[f64],
    w: &[f64],
    d: usize,
    eps: f64,
    cast_before_scale: bool,
    dtype: DType,
) -> Vec<f64> {
    let eps = super::f32r(eps);
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
        let r = 1.0 / (ms + eps).sqrt();
        for (v, wv) in row.iter().zip(w) {
            let n = v * r;
            let o = if cast_before_scale {
                dtype.round(n) * wv
            } else {
                n * wv
            };
            out.push(dtype.round(o));
        }
    }
    out
}

/// `(normed, new_residual)` of add_rmsnorm: `h = dtype(x + residual)`, `normed = rmsnorm(h)`.
pub fn add_rmsnorm(
    x: &[f64],
    residual: &[f64],
    w: &[f64],
    d: usize,
    eps: f64,
    cast_before_scale: bool,
    dtype: DType,
) -> (Vec<f64>, Vec<f64>) {
    let h: Vec<f64> = x
        .iter()
        .zip(residual)
        .map(|(a, b)| dtype.round(a + b))
        .collect();
    (rmsnorm(&h, w, d, eps, cast_before_scale, dtype), h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_row_normalises_to_the_weight() {
        // A constant row c has rms |c|, so the output is sign(c) * w (eps tiny).
        let d = 8;
        let x = vec![-3.0; d];
        let w: Vec<f64> = (0..d).map(|i| i as f64 * 0.25).collect();
        let out = rmsnorm(&x, &w, d, 1e-12, true, DType::F32);
        for (o, wv) in out.iter().zip(&w) {
            assert!((o + wv).abs() < 1e-6, "{o} vs {}", -wv);
        }
    }

    #[test]
    fn hand_computed_row() {
        // x = [3, 4]: mean square 12.5, r = 1/sqrt(12.5).
        let out = rmsnorm(&[3.0, 4.0], &[1.0, 2.0], 2, 0.0, false, DType::F32);
        let r = 1.0 / 12.5f64.sqrt();
        assert!((out[0] - 3.0 * r).abs() < 1e-6);
        assert!((out[1] - 8.0 * r).abs() < 1e-6);
    }

    #[test]
    fn cast_before_scale_rounds_twice_in_bf16() {
        // Choose values where the intermediate rounding matters.
        let x = [1.0, 1.0, 1.0, 1.0];
        let w = [1.0 + 2f64.powi(-7); 4];
        let eps = 0.1; // n = 1/sqrt(1.1) ≈ 0.9535
        let a = rmsnorm(&x, &w, 4, eps, true, DType::BF16);
        let b = rmsnorm(&x, &w, 4, eps, false, DType::BF16);
        let n = 1.0 / (1.0 + (eps as f32) as f64).sqrt();
        assert_eq!(a[0], DType::BF16.round(DType::BF16.round(n) * w[0]));
        assert_eq!(b[0], DType::BF16.round(n * w[0]));
    }

    #[test]
    fn add_rmsnorm_rounds_the_residual() {
        let x = [1.0, 2f64.powi(-9)];
        let r = [1.0, 1.0];
        let (_, h) = add_rmsnorm(&x, &r, &[1.0, 1.0], 2, 1e-6, true, DType::BF16);
        assert_eq!(h, vec![2.0, 1.0]); // 1 + 2^-9 rounds to 1 in bf16
    }
}
