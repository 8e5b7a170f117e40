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

/// The compile inputs of `mla_key` for `dtype`.
pub fn mla_key_build(dtype: kiln_kernels::DType) -> kiln_kernels::KernelBuild {
    kiln_kernels::KernelBuild {
        name: format!("mla_key_{dtype}.cu"),
        entry: "mla_key".into(),
        source: include_str!("../../kernels/mla_key.cu").into(),
        defines: vec![dtype.define()],
    }
}

/// MLA keys `[T, NH, NOPE + ROPE]`: each head's `k_nope[T, NH, NOPE]` (a
/// strided view, last dimension contiguous) next to the shared `k_pe[T, ROPE]`.
pub fn mla_key(k_nope: &Tensor, k_pe: &Tensor) -> Result<Tensor> {
    let op = "mla_key";
    let (t, nh, nope) = k_nope.dims3()?;
    let (t2, rope) = k_pe.dims2()?;
    if t2 != t || k_pe.dtype() != k_nope.dtype() || nope == 0 || rope == 0 {
        return Err(op_error(
            op,
            format!(
                "k_nope {:?} and k_pe {:?} do not fit",
                k_nope.dims(),
                k_pe.dims()
            ),
        ));
    }
    if k_nope.device().is_cpu() {
        let pe = k_pe.reshape((t, 1, rope))?.broadcast_as((t, nh, rope))?;
        return Ok(Tensor::cat(&[k_nope, &pe], 2)?);
    }
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, function, last_dim_contiguous, run_kernel, Param};
        let dev = cuda_device(op, k_nope)?;
        let (k_nope, k_pe) = (last_dim_contiguous(k_nope)?, last_dim_contiguous(k_pe)?);
        let func = function(&dev, &mla_key_build(kernel_dtype(op, k_nope.dtype())?))?;
        let dims = kiln_kernels::LaunchDims {
            grid: ((t * nh) as u32, 1, 1),
            block: (128, 1, 1),
            smem: 0,
        };
        let (n_st, n_sh, p_st) = (k_nope.stride()[0], k_nope.stride()[1], k_pe.stride()[0]);
        let out = run_kernel(
            op,
            &dev,
            &func,
            &dims,
            &[
                Param::Rows(&k_nope),
                Param::Rows(&k_pe),
                Param::Out,
                Param::I32(t as i32),
                Param::I32(nh as i32),
                Param::I32(nope as i32),
                Param::I32(rope as i32),
                Param::U64(n_st as u64),
                Param::U64(n_sh as u64),
                Param::U64(p_st as u64),
            ],
            &[(k_nope.dtype(), (t, nh, nope + rope).into())],
        )?;
        out.into_iter()
            .next()
            .ok_or_else(|| op_error(op, "no output"))
    }
    #[cfg(not(feature = "cuda"))]
    Err(super::no_cuda(op))
}
