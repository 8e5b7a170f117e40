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

/// The compile inputs of `mla_rope_cache` for rope `shape` in `dtype`: rope's
/// own defines (its catalog config's), so the rotation is built as rope's is.
pub fn mla_rope_cache_build(
    shape: &kiln_kernels::reference::rope::RopeShape,
    dtype: kiln_kernels::DType,
) -> kiln_kernels::KernelBuild {
    use kiln_kernels::ops::OpConfig;
    let rope = kiln_kernels::ops::rope::RopeConfig {
        shape: *shape,
        dtype,
    };
    let mut defines = vec![dtype.define()];
    let mut tag = String::new();
    for (name, value) in rope.op_defines() {
        tag += &format!("_{value}");
        defines.push((name, value));
    }
    kiln_kernels::KernelBuild {
        name: format!("mla_rope_cache_{dtype}{tag}.cu"),
        entry: "mla_rope_cache".into(),
        source: include_str!("../../kernels/mla_rope_cache.cu").into(),
        defines,
    }
}

/// Whether [`mla_rope_cache`] may replace `mla_key`, rope and the KV cache
/// write for heads of `shape` in `dtype`: `KILN_MLA_ROPE_CACHE_FUSION=1`
/// (it stays opt-in until it is measured in the model), q and key heads
/// alike with the rotary slice at the key's end, and no pack or discovered
/// kernel replaces the rope build the fused launch would bypass.
pub fn mla_rope_cache_applies(
    shape: &kiln_kernels::reference::rope::RopeShape,
    dtype: candle_core::DType,
) -> Result<bool> {
    use kiln_kernels::ops::OpConfig;
    if !mla_rope_cache_enabled() || mla_rope_cache_mismatch(shape).is_some() {
        return Ok(false);
    }
    let rope = kiln_kernels::ops::rope::RopeConfig {
        shape: *shape,
        dtype: kernel_dtype("mla_rope_cache", dtype)?,
    }
    .build()
    .map_err(|e| op_error("rope", e.to_string()))?;
    Ok(!super::pack::replaced(&rope))
}

/// Whether `KILN_MLA_ROPE_CACHE_FUSION=1` turns the fused MLA attention
/// inputs on (read once per process, said when on).
pub fn mla_rope_cache_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let on = std::env::var("KILN_MLA_ROPE_CACHE_FUSION").is_ok_and(|v| v == "1");
        if on {
            eprintln!(
                "kiln: KILN_MLA_ROPE_CACHE_FUSION=1: the MLA key, rope and the cache write run as one launch"
            );
        }
        on
    })
}

/// Why the kernel cannot take rope `shape`, or `None`: as many key heads as
/// query heads, the rotary slice the head's last `rot_dim` values (the MLA
/// key's shared rope part), an even `rot_dim`.
fn mla_rope_cache_mismatch(shape: &kiln_kernels::reference::rope::RopeShape) -> Option<String> {
    let fits = shape.qh == shape.kh
        && shape.qh >= 1
        && shape.rot_dim >= 2
        && shape.rot_dim.is_multiple_of(2)
        && shape.rot_offset + shape.rot_dim == shape.head_dim;
    (!fits).then(|| {
        format!(
            "{shape:?}: mla_rope_cache needs QH = KH and the rotary slice at the end of the head"
        )
    })
}

/// GLM-4.7-Flash's attention inputs in one launch: the MLA key (each head's
/// `k_nope[T, NH, NOPE]` next to the shared `k_pe[T, ROPE]`), rope on `q[T,
/// NH, HD]` and on that key at `positions` (i32 `[T]`, on the device), and
/// the key and `v[T, NH, DV]` written into `caches` (`[NH, S_MAX, HD]` and
/// `[NH, S_MAX, DV]`, in place) at those positions; returns the rotated q.
/// Bit for bit [`mla_key`], rope and the cache write. `k_nope`, `k_pe` and
/// `v` may be strided views with a contiguous last dimension. CUDA only.
pub fn mla_rope_cache(
    q: &Tensor,
    k_nope: &Tensor,
    k_pe: &Tensor,
    v: &Tensor,
    positions: &Tensor,
    caches: (&Tensor, &Tensor),
    shape: &kiln_kernels::reference::rope::RopeShape,
) -> Result<Tensor> {
    let op = "mla_rope_cache";
    if let Some(why) = mla_rope_cache_mismatch(shape) {
        return Err(op_error(op, why));
    }
    let (nh, hd, nope) = (shape.qh, shape.head_dim, shape.rot_offset);
    let t = q.dim(0)?;
    let s_max = caches.0.dim(1)?;
    let dv = v.dims().last().copied().unwrap_or(0);
    let dtype = q.dtype();
    let fits = q.dims() == [t, nh, hd]
        && k_nope.dims() == [t, nh, nope]
        && k_pe.dims() == [t, shape.rot_dim]
        && v.dims() == [t, nh, dv]
        && positions.dims() == [t]
        && positions.dtype() == candle_core::DType::I32
        && caches.0.dims() == [nh, s_max, hd]
        && caches.1.dims() == [nh, s_max, dv]
        && [k_nope, k_pe, v, caches.0, caches.1]
            .iter()
            .all(|x| x.dtype() == dtype);
    if !fits {
        return Err(op_error(
            op,
            format!(
                "q {:?}, k_nope {:?}, k_pe {:?}, v {:?} ({dtype:?}), caches {:?} / {:?}, \
                 positions {:?} do not fit {shape:?}",
                q.dims(),
                k_nope.dims(),
                k_pe.dims(),
                v.dims(),
                caches.0.dims(),
                caches.1.dims(),
                positions.dims()
            ),
        ));
    }
    if !q.device().is_cuda() {
        return Err(op_error(
            op,
            "CUDA only (the CPU path runs mla_key, rope and the cache write)",
        ));
    }
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, function, last_dim_contiguous, run_kernel, Param};
        let dev = cuda_device(op, q)?;
        let q = q.contiguous()?;
        let (k_nope, k_pe, v) = (
            last_dim_contiguous(k_nope)?,
            last_dim_contiguous(k_pe)?,
            last_dim_contiguous(v)?,
        );
        let func = function(&dev, &mla_rope_cache_build(shape, kernel_dtype(op, dtype)?))?;
        let dims = kiln_kernels::LaunchDims {
            grid: ((t * nh) as u32, 1, 1),
            block: (128, 1, 1),
            smem: 0,
        };
        let stride = |x: &Tensor, i: usize| x.stride()[i] as u64;
        let out = run_kernel(
            op,
            &dev,
            &func,
            &dims,
            &[
                Param::In(&q),
                Param::Rows(&k_nope),
                Param::Rows(&k_pe),
                Param::Rows(&v),
                Param::In(positions),
                Param::Out,
                Param::InPlace(caches.0),
                Param::InPlace(caches.1),
                Param::I32(t as i32),
                Param::I32(nh as i32),
                Param::I32(dv as i32),
                Param::I32(s_max as i32),
                Param::U64(stride(&k_nope, 0)),
                Param::U64(stride(&k_nope, 1)),
                Param::U64(stride(&k_pe, 0)),
                Param::U64(stride(&v, 0)),
                Param::U64(stride(&v, 1)),
            ],
            &[(dtype, (t, nh, hd).into())],
        )?;
        out.into_iter()
            .next()
            .ok_or_else(|| op_error(op, "no output"))
    }
    #[cfg(not(feature = "cuda"))]
    Err(super::no_cuda(op))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_kernels::reference::rope::RopeShape;

    fn glm47_flash_rope() -> RopeShape {
        RopeShape {
            qh: 20,
            kh: 20,
            head_dim: 256,
            rot_dim: 64,
            rot_offset: 192,
            interleaved: true,
            theta: 1e6,
            hf_rounding: true,
        }
    }

    #[test]
    fn mla_rope_cache_builds_with_ropes_own_defines() {
        use kiln_kernels::ops::OpConfig;
        let shape = glm47_flash_rope();
        let b = mla_rope_cache_build(&shape, kiln_kernels::DType::BF16);
        let rope = kiln_kernels::ops::rope::RopeConfig {
            shape,
            dtype: kiln_kernels::DType::BF16,
        };
        for (name, value) in rope.op_defines() {
            assert!(
                b.defines.iter().any(|(n, v)| *n == name && *v == value),
                "{name}={value} missing from {:?}",
                b.defines
            );
        }
        // Another theta is another kernel.
        let other = mla_rope_cache_build(
            &RopeShape {
                theta: 1e4,
                ..shape
            },
            kiln_kernels::DType::BF16,
        );
        assert_ne!(b.name, other.name);
    }

    #[test]
    fn mla_rope_cache_refuses_what_it_does_not_take() {
        let cpu = candle_core::Device::Cpu;
        let shape = glm47_flash_rope();
        assert!(mla_rope_cache_mismatch(&shape).is_none());
        // The rotary slice not at the head's end, or fewer key heads than query heads.
        for bad in [
            RopeShape {
                rot_offset: 0,
                ..shape
            },
            RopeShape { kh: 4, ..shape },
        ] {
            assert!(mla_rope_cache_mismatch(&bad).is_some(), "{bad:?}");
        }
        let z =
            |dims: &[usize]| Tensor::zeros(dims, candle_core::DType::BF16, &cpu).expect("zeros");
        let positions = Tensor::zeros(1, candle_core::DType::I32, &cpu).expect("positions");
        let (kc, vc) = (z(&[20, 16, 256]), z(&[20, 16, 256]));
        // On the CPU it is an error that names the path to take instead; a
        // k_pe of the wrong width is refused before that.
        for (pe_width, says) in [(64, "CUDA only"), (32, "do not fit")] {
            let err = mla_rope_cache(
                &z(&[1, 20, 256]),
                &z(&[1, 20, 192]),
                &z(&[1, pe_width]),
                &z(&[1, 20, 256]),
                &positions,
                (&kc, &vc),
                &shape,
            )
            .expect_err("refused");
            assert!(err.to_string().contains(says), "{err}");
        }
    }
}
