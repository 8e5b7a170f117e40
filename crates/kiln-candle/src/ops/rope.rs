//! Rotary position embedding on q and k in one kernel.

use candle_core::{DType, Tensor};
use kiln_kernels::ops::rope::RopeConfig;
use kiln_kernels::reference::rope::RopeShape;

use super::{host, kernel_dtype};
use crate::error::{op_error, Result};

/// Rotates `q[T,QH,HD]` and `k[T,KH,HD]` at `positions[T]` (i32): `(q, k)`.
pub fn rope(
    q: &Tensor,
    k: &Tensor,
    positions: &Tensor,
    shape: RopeShape,
) -> Result<(Tensor, Tensor)> {
    let op = "rope";
    let (t, qh, hd) = q.dims3()?;
    let (tk, kh, hdk) = k.dims3()?;
    if (tk, kh, hdk) != (t, shape.kh, shape.head_dim) || (qh, hd) != (shape.qh, shape.head_dim) {
        return Err(op_error(
            op,
            format!(
                "q {:?} / k {:?} do not match the rope shape {shape:?}",
                q.dims(),
                k.dims()
            ),
        ));
    }
    if positions.dtype() != DType::I32 || positions.elem_count() != t {
        return Err(op_error(op, format!("positions must be {t} i32 values")));
    }
    let c = RopeConfig {
        shape,
        dtype: kernel_dtype(op, q.dtype())?,
    };
    let (q, k, positions) = (q.contiguous()?, k.contiguous()?, positions.contiguous()?);
    if q.device().is_cpu() {
        let pos = host::integers(&positions)?;
        let qo = kiln_kernels::reference::rope::rope(&host::values(&q)?, qh, &pos, &shape, c.dtype);
        let ko = kiln_kernels::reference::rope::rope(&host::values(&k)?, kh, &pos, &shape, c.dtype);
        return Ok((
            host::tensor(qo, q.shape(), q.dtype(), q.device())?,
            host::tensor(ko, k.shape(), k.dtype(), k.device())?,
        ));
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
                Param::In(&k),
                Param::In(&positions),
                Param::Out,
                Param::Out,
                Param::I32(t as i32),
            ],
            &[
                (q.dtype(), q.shape().clone()),
                (k.dtype(), k.shape().clone()),
            ],
        )?;
        let ko = o.pop();
        let qo = o.pop();
        qo.zip(ko).ok_or_else(|| op_error(op, "missing outputs"))
    }
    #[cfg(not(feature = "cuda"))]
    Err(super::no_cuda(op))
}

/// The shape of a [`qk_norm_rope_cache`] launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QkNormRopeShape {
    /// Query heads.
    pub qh: usize,
    /// Key/value heads.
    pub kvh: usize,
    /// Head dim (64, 128 or 256; fully rotated, rotate-half).
    pub d: usize,
    /// The qk-norm eps.
    pub eps: f64,
}

impl QkNormRopeShape {
    /// The rotary these heads take: the whole head, rotate-half, HF's table
    /// rounding, base `theta` (what the fused kernel and its CPU path apply).
    pub fn rope_shape(&self, theta: f64) -> kiln_kernels::reference::rope::RopeShape {
        kiln_kernels::reference::rope::RopeShape {
            qh: self.qh,
            kh: self.kvh,
            head_dim: self.d,
            rot_dim: self.d,
            rot_offset: 0,
            interleaved: false,
            theta,
            hf_rounding: true,
        }
    }
}

/// The compile inputs of `qk_norm_rope_cache`: the catalog build (S_MAX is
/// a launch argument, so the cache length does not enter it).
pub fn qk_norm_rope_cache_build(
    s: &QkNormRopeShape,
    dtype: kiln_kernels::DType,
) -> Result<kiln_kernels::KernelBuild> {
    use kiln_kernels::ops::OpConfig;
    qk_norm_rope_config(s, kiln_kernels::ops::attention::KV_CACHE_STEP, dtype)
        .build()
        .map_err(|e| op_error("qk_norm_rope_cache", e.to_string()))
}

/// The catalog configuration of these heads with caches of `s_max` positions.
fn qk_norm_rope_config(
    s: &QkNormRopeShape,
    s_max: usize,
    dtype: kiln_kernels::DType,
) -> kiln_kernels::ops::qk_norm_rope::QkNormRopeConfig {
    kiln_kernels::ops::qk_norm_rope::QkNormRopeConfig::new(s.qh, s.kvh, s.d, s.eps, s_max, dtype)
}

/// Qwen3's attention inputs in one launch: per-head RMSNorm of q and k,
/// rotate-half RoPE at `positions` (from the `cos`/`sin` tables), k and v
/// written into the caches at those positions; returns q `[T, QH, D]`.
/// `qkv[T, (QH + 2 KVH) · D]` is the fused projection's output. CUDA only.
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope_cache(
    qkv: &Tensor,
    weights: (&Tensor, &Tensor),
    tables: (&Tensor, &Tensor),
    positions: &Tensor,
    caches: (&Tensor, &Tensor),
    s: &QkNormRopeShape,
) -> Result<Tensor> {
    let op = "qk_norm_rope_cache";
    let t = qkv.dim(0)?;
    let nh = s.qh + 2 * s.kvh;
    let s_max = caches.0.dim(1)?;
    let fits = qkv.dims() == [t, nh * s.d]
        && weights.0.dims() == [s.d]
        && weights.1.dims() == [s.d]
        && tables.0.dims() == [s_max, s.d / 2]
        && tables.1.dims() == [s_max, s.d / 2]
        && positions.dims() == [t]
        && positions.dtype() == DType::I32
        && caches.0.dims() == [s.kvh, s_max, s.d]
        && caches.1.dims() == [s.kvh, s_max, s.d]
        && matches!(s.d, 64 | 128 | 256)
        && nh * s.d / 8 <= 1024;
    if !fits {
        return Err(op_error(
            op,
            format!(
                "qkv {:?}, tables {:?}, caches {:?}, positions {:?} do not fit {s:?}",
                qkv.dims(),
                tables.0.dims(),
                caches.0.dims(),
                positions.dims()
            ),
        ));
    }
    if !qkv.device().is_cuda() {
        return Err(op_error(
            op,
            "CUDA only (the CPU path runs rmsnorm, rope and the cache write)",
        ));
    }
    let dtype = kernel_dtype(op, qkv.dtype())?;
    into_caches(
        &qk_norm_rope_config(s, s_max, dtype),
        &[qkv, weights.0, weights.1, tables.0, tables.1],
        positions,
        caches,
        (t, s.qh, s.d),
    )
}

/// Whether the rope + cache-write fusion ([`rope_cache`]) is on:
/// `KILN_ROPE_CACHE_FUSION=0` turns it off (rope and the cache write then
/// run as their own launches, for an A/B in one binary); read once per
/// process, said loudly when off.
pub fn rope_cache_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !super::fusion_switched_off(
            "KILN_ROPE_CACHE_FUSION",
            "rope and the KV cache write run as their own launches",
        )
    })
}

/// The catalog configuration of rope_cache for `shape` (its `kh` the KV
/// heads) with caches of `s_max` positions.
fn rope_cache_config(
    shape: &RopeShape,
    s_max: usize,
    dtype: kiln_kernels::DType,
) -> kiln_kernels::ops::rope_cache::RopeCacheConfig {
    kiln_kernels::ops::rope_cache::RopeCacheConfig::new(*shape, s_max, dtype)
}

/// The compile inputs of `rope_cache` for `shape` (its `kh` the KV heads):
/// the catalog build (S_MAX is a launch argument, so the cache length does
/// not enter it).
pub fn rope_cache_build(
    shape: &RopeShape,
    dtype: kiln_kernels::DType,
) -> Result<kiln_kernels::KernelBuild> {
    use kiln_kernels::ops::OpConfig;
    rope_cache_config(shape, kiln_kernels::ops::attention::KV_CACHE_STEP, dtype)
        .build()
        .map_err(|e| op_error("rope_cache", e.to_string()))
}

/// Whether [`rope_cache`] may replace [`rope`] + the KV cache write for
/// heads of `shape` in `dtype`: the fusion is on ([`rope_cache_enabled`]),
/// the kernel takes the shape, and no pack or discovered kernel replaces the
/// rope build the fused launch would bypass (it would silently not apply).
pub fn rope_cache_applies(shape: &RopeShape, dtype: DType) -> Result<bool> {
    use kiln_kernels::ops::OpConfig;
    if !rope_cache_enabled() {
        return Ok(false);
    }
    let kd = kernel_dtype("rope_cache", dtype)?;
    let fused = rope_cache_config(shape, kiln_kernels::ops::attention::KV_CACHE_STEP, kd);
    if fused.validate().is_err() {
        return Ok(false);
    }
    let rope = RopeConfig {
        shape: *shape,
        dtype: kd,
    }
    .build()
    .map_err(|e| op_error("rope", e.to_string()))?;
    Ok(!super::pack::replaced(&rope))
}

/// The attention inputs of a model without qk-norm in one launch: rope on
/// the q and k heads of `qkv[T, (QH + 2 KVH) · HD]` (the fused projection's
/// output) at `positions` (i32 `[T]`, on the device), rotated k and raw v
/// written into `caches` (`[KVH, S_MAX, HD]`, in place) at those positions;
/// returns q `[T, QH, HD]`. Bit for bit [`rope`] followed by the cache
/// write. `shape.kh` is the KV heads. CUDA only.
pub fn rope_cache(
    qkv: &Tensor,
    positions: &Tensor,
    caches: (&Tensor, &Tensor),
    shape: &RopeShape,
) -> Result<Tensor> {
    let op = "rope_cache";
    let t = qkv.dim(0)?;
    let (qh, kvh, hd) = (shape.qh, shape.kh, shape.head_dim);
    let s_max = caches.0.dim(1)?;
    let fits = qkv.dims() == [t, (qh + 2 * kvh) * hd]
        && positions.dims() == [t]
        && positions.dtype() == DType::I32
        && caches.0.dims() == [kvh, s_max, hd]
        && caches.1.dims() == [kvh, s_max, hd]
        && caches.0.dtype() == qkv.dtype()
        && caches.1.dtype() == qkv.dtype();
    if !fits {
        return Err(op_error(
            op,
            format!(
                "qkv {:?} {:?}, caches {:?} / {:?}, positions {:?} {:?} do not fit {shape:?}",
                qkv.dims(),
                qkv.dtype(),
                caches.0.dims(),
                caches.1.dims(),
                positions.dims(),
                positions.dtype()
            ),
        ));
    }
    if !qkv.device().is_cuda() {
        return Err(op_error(
            op,
            "CUDA only (the CPU path runs rope and the cache write)",
        ));
    }
    let dtype = kernel_dtype(op, qkv.dtype())?;
    into_caches(
        &rope_cache_config(shape, s_max, dtype),
        &[&qkv.contiguous()?],
        positions,
        caches,
        (t, qh, hd),
    )
}

/// Launches an attention-input op of the catalog (`config`) that reads
/// `inputs` (qkv first) and the tokens' `positions`, returns q of `q_shape`
/// and writes k and v into `caches` in place: what `qk_norm_rope_cache` and
/// `rope_cache` share. Through the catalog's launch path, so a pack or the
/// discovered set may replace the kernel, and its launch line sizes the launch.
fn into_caches<C: kiln_kernels::OpConfig>(
    config: &C,
    inputs: &[&Tensor],
    positions: &Tensor,
    caches: (&Tensor, &Tensor),
    q_shape: (usize, usize, usize),
) -> Result<Tensor> {
    let op = config.spec().name;
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, run, Param};
        let qkv = inputs.first().ok_or_else(|| op_error(op, "no qkv input"))?;
        let dev = cuda_device(op, qkv)?;
        let (t, s_max) = (q_shape.0, caches.0.dim(1)?);
        let mut params: Vec<Param> = inputs.iter().map(|x| Param::In(x)).collect();
        params.extend([
            Param::In(positions),
            Param::Out,
            Param::InPlace(caches.0),
            Param::InPlace(caches.1),
            Param::I32(t as i32),
            Param::I32(s_max as i32),
        ]);
        let q = run(config, &dev, t, &params, &[(qkv.dtype(), q_shape.into())])?;
        q.into_iter()
            .next()
            .ok_or_else(|| op_error(op, "no output"))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (inputs, positions, caches, q_shape);
        Err(super::no_cuda(op))
    }
}
