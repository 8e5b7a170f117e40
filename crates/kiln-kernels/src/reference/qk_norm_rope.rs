//! qk_norm_rope_cache reference: per-head RMSNorm of q and k, rotate-half
//! RoPE from the cos/sin tables, k and v written into the KV cache at each
//! token's position (see `kernels/qk_norm_rope_cache.cu` for the math and
//! its rounding points, which are HF's in the model dtype).

use crate::DType;

/// The heads of one attention-input step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QkNormRopeShape {
    /// Query heads.
    pub qh: usize,
    /// Key/value heads.
    pub kvh: usize,
    /// Head dim (fully rotated, rotate-half).
    pub d: usize,
    /// The qk-norm eps.
    pub eps: f64,
    /// Cache positions (`[KVH, S_MAX, D]` caches, `[S_MAX, D/2]` tables).
    pub s_max: usize,
}

/// The inputs of one step, each as its buffer's values.
#[derive(Debug, Clone, Copy)]
pub struct QkNormRopeInputs<'a> {
    /// `[T, (QH + 2 KVH) · D]`: q heads, k heads, v heads.
    pub qkv: &'a [f64],
    /// `[D]` q-norm weight.
    pub q_w: &'a [f64],
    /// `[D]` k-norm weight.
    pub k_w: &'a [f64],
    /// `[S_MAX, D/2]`, in the dtype.
    pub cos: &'a [f64],
    /// `[S_MAX, D/2]`, in the dtype.
    pub sin: &'a [f64],
    /// `[T]` positions.
    pub positions: &'a [f64],
}

/// `(q_out[T,QH,D], k_cache, v_cache)`: the caches are `k_cache`, `v_cache`
/// as given with the rows at each in-range position overwritten.
pub fn qk_norm_rope_cache(
    x: QkNormRopeInputs<'_>,
    k_cache: &[f64],
    v_cache: &[f64],
    s: QkNormRopeShape,
    dtype: DType,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (d, half) = (s.d, s.d / 2);
    let heads = s.qh + 2 * s.kvh;
    let t = x.qkv.len() / (heads * d);
    let mut q_out = vec![0.0; t * s.qh * d];
    let (mut kc, mut vc) = (k_cache.to_vec(), v_cache.to_vec());
    // One normed and rotated head.
    let norm_rope = |head: &[f64], w: &[f64], p: usize| -> Vec<f64> {
        let ms = head.iter().map(|v| v * v).sum::<f64>() / d as f64;
        let r = 1.0 / (ms + s.eps).sqrt();
        let n: Vec<f64> = head
            .iter()
            .zip(w)
            .map(|(v, w)| dtype.round(w * dtype.round(v * r)))
            .collect();
        let mut y = vec![0.0; d];
        for i in 0..half {
            let (c, sn) = (x.cos[p * half + i], x.sin[p * half + i]);
            let (a, b) = (n[i], n[i + half]);
            y[i] = dtype.round(dtype.round(a * c) - dtype.round(b * sn));
            y[i + half] = dtype.round(dtype.round(b * c) + dtype.round(a * sn));
        }
        y
    };
    for row in 0..t {
        let pos = x.positions[row];
        let in_cache = pos >= 0.0 && (pos as usize) < s.s_max;
        let p = if in_cache { pos as usize } else { 0 };
        let base = row * heads * d;
        for h in 0..heads {
            let head = &x.qkv[base + h * d..base + (h + 1) * d];
            if h < s.qh {
                q_out[(row * s.qh + h) * d..][..d].copy_from_slice(&norm_rope(head, x.q_w, p));
            } else if !in_cache {
                continue;
            } else if h < s.qh + s.kvh {
                let g = h - s.qh;
                kc[(g * s.s_max + p) * d..][..d].copy_from_slice(&norm_rope(head, x.k_w, p));
            } else {
                let g = h - s.qh - s.kvh;
                vc[(g * s.s_max + p) * d..][..d].copy_from_slice(head);
            }
        }
    }
    (q_out, kc, vc)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: QkNormRopeShape = QkNormRopeShape {
        qh: 1,
        kvh: 1,
        d: 2,
        eps: 0.0,
        s_max: 3,
    };

    #[test]
    fn one_token_norms_rotates_and_writes_only_its_cache_row() {
        // q = (3, 4): rms = sqrt(12.5), n = (3, 4)/rms; k = (1, 0) → n = (√2, 0);
        // v = (7, 8). Position 2: c = 0, s = 1 → y = (−n₂, n₁).
        let qkv = [3.0, 4.0, 1.0, 0.0, 7.0, 8.0];
        let ones = [1.0, 1.0];
        let cos = [1.0, 1.0, 0.0];
        let sin = [0.0, 0.0, 1.0];
        let x = QkNormRopeInputs {
            qkv: &qkv,
            q_w: &ones,
            k_w: &ones,
            cos: &cos,
            sin: &sin,
            positions: &[2.0],
        };
        let old = [9.0; 6];
        let (q, k, v) = qk_norm_rope_cache(x, &old, &old, S, DType::F32);
        let rms = 12.5f64.sqrt();
        let f = |v: f64| DType::F32.round(v);
        assert_eq!(q, [f(-f(4.0 / rms)), f(f(3.0 / rms))]);
        assert_eq!(k[..4], [9.0; 4], "rows 0 and 1 untouched");
        assert_eq!(k[4..], [0.0, f(2f64.sqrt())]);
        assert_eq!(v, [9.0, 9.0, 9.0, 9.0, 7.0, 8.0]);
    }

    #[test]
    fn a_position_outside_the_cache_writes_no_row() {
        let qkv = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let ones = [1.0, 1.0];
        let tab = [1.0, 1.0, 1.0];
        let x = QkNormRopeInputs {
            qkv: &qkv,
            q_w: &ones,
            k_w: &ones,
            cos: &tab,
            sin: &tab,
            positions: &[3.0],
        };
        let old = [0.5; 6];
        let (_, k, v) = qk_norm_rope_cache(x, &old, &old, S, DType::BF16);
        assert_eq!((k, v), (old.to_vec(), old.to_vec()));
    }
}
