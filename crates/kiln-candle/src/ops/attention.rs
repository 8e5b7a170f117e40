//! Causal decode attention over a KV cache in one kernel.

use candle_core::Tensor;
use kiln_kernels::ops::attention::DecodeAttentionConfig;
use kiln_kernels::reference::attention::AttentionShape;

use super::{host, kernel_dtype};
use crate::error::{op_error, Result};

/// Attention of `q[T,QH,DQK]` at positions `past..past+T` over caches
/// `k[KVH,S_MAX,DQK]`, `v[KVH,S_MAX,DV]` that already hold those positions:
/// `[T,QH,DV]`.
pub fn decode_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    past: usize,
    scale: f64,
) -> Result<Tensor> {
    let op = "decode_attention";
    let (t, qh, dqk) = q.dims3()?;
    let (kvh, s_max, dqk2) = k_cache.dims3()?;
    let (kvh2, s_max2, dv) = v_cache.dims3()?;
    if dqk2 != dqk || kvh2 != kvh || s_max2 != s_max || kvh == 0 || qh % kvh != 0 {
        return Err(op_error(
            op,
            format!(
                "q {:?}, k {:?}, v {:?} do not fit",
                q.dims(),
                k_cache.dims(),
                v_cache.dims()
            ),
        ));
    }
    if past + t > s_max {
        return Err(op_error(
            op,
            format!("positions up to {} exceed the cache ({s_max})", past + t),
        ));
    }
    let c = DecodeAttentionConfig {
        shape: AttentionShape {
            qh,
            kvh,
            dqk,
            dv,
            s_max,
            scale,
        },
        dtype: kernel_dtype(op, q.dtype())?,
    };
    let (q, k_cache, v_cache) = (
        q.contiguous()?,
        k_cache.contiguous()?,
        v_cache.contiguous()?,
    );
    if q.device().is_cpu() {
        let out = kiln_kernels::reference::attention::decode_attention(
            &host::values(&q)?,
            &host::values(&k_cache)?,
            &host::values(&v_cache)?,
            past,
            &c.shape,
            c.dtype,
        );
        return host::tensor(out, (t, qh, dv), q.dtype(), q.device());
    }
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, run, Param};
        let dev = cuda_device(op, &q)?;
        let mut o = run(
            &c,
            &dev,
            t,
            &[
                Param::In(&q),
                Param::In(&k_cache),
                Param::In(&v_cache),
                Param::Out,
                Param::I32(t as i32),
                Param::Position(past as i32),
            ],
            &[(q.dtype(), candle_core::Shape::from((t, qh, dv)))],
        )?;
        o.pop().ok_or_else(|| op_error(op, "missing output"))
    }
    #[cfg(not(feature = "cuda"))]
    Err(super::no_cuda(op))
}
