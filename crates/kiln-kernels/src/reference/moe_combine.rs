//! moe_combine reference.

use crate::DType;

/// `out[t,d] = Σ_k w[t,k]·e[t,k,d] (+ shared[t,d])`, one rounding to the dtype.
pub fn moe_combine(
    expert_out: &[f64],
    weights: &[f64],
    shared: Option<&[f64]>,
    d: usize,
    k: usize,
    dtype: DType,
) -> Vec<f64> {
    let t = weights.len() / k;
    let mut out = Vec::with_capacity(t * d);
    for ti in 0..t {
        for di in 0..d {
            let mut acc = 0.0;
            for ki in 0..k {
                acc += weights[ti * k + ki] * expert_out[(ti * k + ki) * d + di];
            }
            if let Some(s) = shared {
                acc += s[ti * d + di];
            }
            out.push(dtype.round(acc));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_in_weights_and_adds_shared() {
        let (d, k) = (3, 2);
        let e = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0];
        let a = moe_combine(&e, &[1.0, 0.0], None, d, k, DType::F32);
        let b = moe_combine(&e, &[0.0, 1.0], None, d, k, DType::F32);
        let ab = moe_combine(&e, &[2.0, 0.5], None, d, k, DType::F32);
        for i in 0..d {
            assert_eq!(ab[i], 2.0 * a[i] + 0.5 * b[i]);
        }
        let s = moe_combine(&e, &[1.0, 0.0], Some(&[1.0, 1.0, 1.0]), d, k, DType::F32);
        assert_eq!(s, vec![2.0, 3.0, 4.0]);
    }
}
