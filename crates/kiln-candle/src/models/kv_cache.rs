//! A preallocated KV cache: `[heads, max_len, head_dim]` per layer, written in
//! place, so a decode step never reallocates or copies the history.

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

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole buffers (`[heads, max_len, d]`), for kernels that take `past`.
    pub fn buffers(&self) -> (&Tensor, &Tensor) {
        (&self.k, &self.v)
    }

    /// Writes `k[T, heads, dk]`, `v[T, heads, dv]` at positions `pos..pos+T`.
    pub fn append(&mut self, k: &Tensor, v: &Tensor, pos: usize) -> Result<()> {
        let t = k.dim(0)?;
        let max = self.k.dim(1)?;
        if pos + t > max {
            return Err(op_error(
                "kv cache",
                format!(
                    "positions {pos}..{} exceed the cache length {max}; pass a larger --max-len",
                    pos + t
                ),
            ));
        }
        self.k
            .slice_set(&k.transpose(0, 1)?.contiguous()?, 1, pos)?;
        self.v
            .slice_set(&v.transpose(0, 1)?.contiguous()?, 1, pos)?;
        self.len = pos + t;
        Ok(())
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
