//! swiglu reference (separate and packed layouts share it).

use crate::DType;

/// `out = silu(g) * u` per element; `silu_in_dtype` rounds `silu(g)` to the
/// dtype first, as HF eager does (`act_fn(gate)` returns the model dtype).
pub fn swiglu(gate: &[f64], up: &[f64], silu_in_dtype: bool, dtype: DType) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| {
            let s = g / (1.0 + (-g).exp());
            let s = if silu_in_dtype { dtype.round(s) } else { s };
            dtype.round(s * u)
        })
        .collect()
}

/// Splits a packed `gate_up[T, 2I]` into `(gate[T,I], up[T,I])`.
pub fn unpack(gate_up: &[f64], i: usize) -> (Vec<f64>, Vec<f64>) {
    let mut g = Vec::with_capacity(gate_up.len() / 2);
    let mut u = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks(2 * i) {
        g.extend_from_slice(&row[..i]);
        u.extend_from_slice(&row[i..]);
    }
    (g, u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let out = swiglu(&[0.0, 1.0, -40.0], &[5.0, 2.0, 3.0], false, DType::F32);
        assert_eq!(out[0], 0.0);
        let s1 = 1.0 / (1.0 + (-1f64).exp());
        assert!((out[1] - 2.0 * s1).abs() < 1e-6);
        assert!(out[2].abs() < 1e-15);
    }

    #[test]
    fn unpack_splits_rows() {
        let (g, u) = unpack(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 2);
        assert_eq!(g, vec![1.0, 2.0, 5.0, 6.0]);
        assert_eq!(u, vec![3.0, 4.0, 7.0, 8.0]);
    }
}
