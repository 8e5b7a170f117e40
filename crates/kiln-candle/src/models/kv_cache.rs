//! A preallocated KV cache: `[heads, max_len, head_dim]` per layer, written in
//! place, so a decode step never reallocates or copies the history.
//!
//! On kiln's kernels the new rows are written by `kv_cache_write`, which reads
//! their positions from device memory: a captured decode graph replays the
//! same launch at every step.

use candle_core::{DType, Device, Tensor};

use crate::error::{op_error, Result};

/// Keys and values of one attention layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    /// An empty cache for `heads` heads of `dk`/`dv` values and `max_len` positions.
    pub fn new(
        heads: usize,
        max_len: usize,
        dk: usize,
        dv: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        Ok(Self {
            k: Tensor::zeros((heads, max_len, dk), dtype, dev)?,
            v: Tensor::zeros((heads, max_len, dv), dtype, dev)?,
            len: 0,
        })
    }

    /// Positions written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Positions the cache holds.
    pub fn max_len(&self) -> usize {
        self.k.dims().get(1).copied().unwrap_or(0)
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole buffers (`[heads, max_len, d]`), for kernels that take `past`.
    pub fn buffers(&self) -> (&Tensor, &Tensor) {
        (&self.k, &self.v)
    }

    /// Writes `k[T, heads, dk]`, `v[T, heads, dv]` at positions `pos..pos+T`;
    /// on CUDA with `positions` (i32 `[T]`, holding `pos..pos+T`) the kernel
    /// reads the positions from there instead.
    pub fn append(
        &mut self,
        k: &Tensor,
        v: &Tensor,
        pos: usize,
        positions: Option<&Tensor>,
    ) -> Result<()> {
        let t = k.dim(0)?;
        self.check_room(pos, t)?;
        match positions {
            #[cfg(feature = "cuda")]
            Some(p) if k.device().is_cuda() => write_at_positions(k, v, p, &self.k, &self.v)?,
            _ => {
                let _ = positions;
                self.k
                    .slice_set(&k.transpose(0, 1)?.contiguous()?, 1, pos)?;
                self.v
                    .slice_set(&v.transpose(0, 1)?.contiguous()?, 1, pos)?;
            }
        }
        self.len = pos + t;
        Ok(())
    }

    /// Fails unless positions `pos..pos+t` fit the cache (a kernel that
    /// writes it in place skips rows past the end instead of failing).
    pub fn check_room(&self, pos: usize, t: usize) -> Result<()> {
        let max = self.max_len();
        if pos + t > max {
            return Err(op_error(
                "kv cache",
                format!(
                    "positions {pos}..{} exceed the cache length {max}; pass a larger --max-len",
                    pos + t
                ),
            ));
        }
        Ok(())
    }

    /// Sets the written length (a replayed decode graph writes the cache
    /// without running [`Self::append`]).
    pub fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// The written history: `([heads, len, dk], [heads, len, dv])` views.
    pub fn history(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.k.narrow(1, 0, self.len)?,
            self.v.narrow(1, 0, self.len)?,
        ))
    }

    /// Forgets the history (the buffers stay allocated).
    pub fn reset(&mut self) {
        self.len = 0;
    }
}

/// The compile inputs of the `kv_cache_write` kernel for `dtype`.
pub fn write_build(dtype: kiln_kernels::DType) -> kiln_kernels::KernelBuild {
    kiln_kernels::KernelBuild {
        name: format!("kv_cache_write_{dtype}.cu"),
        entry: "kv_cache_write".into(),
        source: include_str!("../../kernels/kv_cache_write.cu").into(),
        defines: vec![dtype.define()],
    }
}

/// `kv_cache_write`: `k`, `v` (`[T, heads, d]`, last dimension contiguous)
/// into the caches at `positions` (i32 `[T]`, on the device).
#[cfg(feature = "cuda")]
fn write_at_positions(
    k: &Tensor,
    v: &Tensor,
    positions: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
) -> Result<()> {
    use crate::ops::device::{cuda_device, function, last_dim_contiguous, run_kernel, Param};
    let op = "kv_cache_write";
    let (t, kvh, dk) = k.dims3()?;
    let dv = v.dim(2)?;
    let s_max = k_cache.dim(1)?;
    if v.dims()[..2] != [t, kvh]
        || k_cache.dims() != [kvh, s_max, dk]
        || v_cache.dims() != [kvh, s_max, dv]
        || positions.dims() != [t]
        || positions.dtype() != DType::I32
    {
        return Err(op_error(
            op,
            format!(
                "k {:?}, v {:?}, positions {:?}, caches {:?} / {:?} do not fit",
                k.dims(),
                v.dims(),
                positions.dims(),
                k_cache.dims(),
                v_cache.dims()
            ),
        ));
    }
    let dev = cuda_device(op, k)?;
    // The new rows may be strided views (a slice of a fused projection); only
    // their last dimension must be contiguous.
    let (k, v) = (last_dim_contiguous(k)?, last_dim_contiguous(v)?);
    let (k_st, k_sh) = (k.stride()[0] as u64, k.stride()[1] as u64);
    let (v_st, v_sh) = (v.stride()[0] as u64, v.stride()[1] as u64);
    let func = function(&dev, &write_build(crate::ops::kernel_dtype(op, k.dtype())?))?;
    let dims = kiln_kernels::LaunchDims {
        grid: ((t * kvh) as u32, 1, 1),
        block: (128, 1, 1),
        smem: 0,
    };
    run_kernel(
        op,
        &dev,
        &func,
        &dims,
        &[
            Param::Rows(&k),
            Param::Rows(&v),
            Param::In(positions),
            Param::InPlace(k_cache),
            Param::InPlace(v_cache),
            Param::I32(t as i32),
            Param::I32(kvh as i32),
            Param::I32(dk as i32),
            Param::I32(dv as i32),
            Param::I32(s_max as i32),
            Param::U64(k_st),
            Param::U64(k_sh),
            Param::U64(v_st),
            Param::U64(v_sh),
        ],
        &[],
    )?;
    Ok(())
}
