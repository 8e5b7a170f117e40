//! rope: rotary position embedding on q and k in one launch.
//!
//! Casting: HF casts cos/sin to the model dtype and evaluates
//! `q*cos + rotate_half(q)*sin` in that dtype (`hf_rounding = true`); its
//! interleaved path (GLM, `apply_rotary_pos_emb_interleave`) writes the rotated
//! slice as `[all y1 | all y2]`, kiln keeps the pairs adjacent (same attention
//! scores, since q and k get the same layout).

use kiln_cuda::{CudaSlice, Gpu, PushKernelArg};

use super::{check_len, launched, unsupported, Loaded, OpConfig};
use crate::catalog::{float_literal, Op};
use crate::error::Result;
use crate::reference::rope::RopeShape;
use crate::{DType, Element};

/// Configuration of rope.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    /// Shape and math (shared with the reference).
    pub shape: RopeShape,
    /// Storage dtype.
    pub dtype: DType,
}

impl RopeConfig {
    /// Qwen3-30B-A3B: 32 q heads, 4 kv heads, head_dim 128, NeoX, theta 1e6.
    pub fn qwen3_30b_a3b(dtype: DType) -> Self {
        Self::neox(32, 4, 128, dtype)
    }

    /// LFM2-8B-A1B: 32 q heads, 8 kv heads, head_dim 64, NeoX, theta 1e6.
    pub fn lfm2_8b_a1b(dtype: DType) -> Self {
        Self::neox(32, 8, 64, dtype)
    }

    /// GLM-4.7-Flash on its contiguous rope slices: 20 q heads and the one shared
    /// k head of 64 values, interleaved, theta 1e6.
    pub fn glm47_flash(dtype: DType) -> Self {
        Self {
            shape: RopeShape {
                qh: 20,
                kh: 1,
                head_dim: 64,
                rot_dim: 64,
                rot_offset: 0,
                interleaved: true,
                theta: 1e6,
                hf_rounding: true,
            },
            dtype,
        }
    }

    fn neox(qh: usize, kh: usize, hd: usize, dtype: DType) -> Self {
        Self {
            shape: RopeShape {
                qh,
                kh,
                head_dim: hd,
                rot_dim: hd,
                rot_offset: 0,
                interleaved: false,
                theta: 1e6,
                hf_rounding: true,
            },
            dtype,
        }
    }
}

/// Rejects rope shapes the rope kernels do not support (rope and
/// rope_cache share the unit layout), naming `op` and the dimension.
pub(crate) fn validate_shape(op: &'static str, s: &RopeShape) -> Result<()> {
    for (name, v) in [
        ("HEAD_DIM", s.head_dim),
        ("ROT_DIM", s.rot_dim),
        ("ROT_OFFSET", s.rot_offset),
    ] {
        if v % 8 != 0 {
            return Err(unsupported(
                op,
                format!("{name}={v} is not a multiple of 8"),
            ));
        }
    }
    if s.rot_dim == 0 || s.rot_offset + s.rot_dim > s.head_dim {
        return Err(unsupported(
            op,
            format!(
                "rotary slice [{}, {}) does not fit a head of {}",
                s.rot_offset,
                s.rot_offset + s.rot_dim,
                s.head_dim
            ),
        ));
    }
    if s.qh == 0 || s.qh + s.kh > 4096 {
        return Err(unsupported(
            op,
            format!("QH={} KH={}: need 1 <= QH and QH+KH <= 4096", s.qh, s.kh),
        ));
    }
    if !(s.theta.is_finite() && s.theta > 1.0) {
        return Err(unsupported(
            op,
            format!("THETA={} must be finite and > 1", s.theta),
        ));
    }
    Ok(())
}

/// The rope defines of `s` other than the head counts (shared with rope_cache).
pub(crate) fn rope_defines(s: &RopeShape) -> Vec<(String, String)> {
    vec![
        ("KILN_HEAD_DIM".into(), s.head_dim.to_string()),
        ("KILN_ROT_DIM".into(), s.rot_dim.to_string()),
        ("KILN_ROT_OFFSET".into(), s.rot_offset.to_string()),
        ("KILN_INTERLEAVED".into(), (s.interleaved as u8).to_string()),
        ("KILN_THETA".into(), float_literal(s.theta)),
        ("KILN_HF_ROUNDING".into(), (s.hf_rounding as u8).to_string()),
    ]
}

impl OpConfig for RopeConfig {
    const OP: Op = Op::Rope;
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn validate(&self) -> Result<()> {
        validate_shape("rope", &self.shape)
    }
    fn op_defines(&self) -> Vec<(String, String)> {
        let s = &self.shape;
        let mut d = vec![
            ("KILN_QH".into(), s.qh.to_string()),
            ("KILN_KH".into(), s.kh.to_string()),
        ];
        d.extend(rope_defines(s));
        d
    }
    fn shape_vars(&self) -> Vec<(&'static str, i64)> {
        let s = &self.shape;
        vec![
            ("QH", s.qh as i64),
            ("KH", s.kh as i64),
            ("HEAD_DIM", s.head_dim as i64),
            ("ROT_DIM", s.rot_dim as i64),
            ("ROT_OFFSET", s.rot_offset as i64),
        ]
    }
}

impl Loaded<RopeConfig> {
    /// Rotates `q[T,QH,HEAD_DIM]` and `k[T,KH,HEAD_DIM]` at `positions[T]`.
    /// With KH = 0, pass empty `k`/`k_out` buffers.
    #[allow(clippy::too_many_arguments)]
    pub fn launch<S: Element>(
        &self,
        gpu: &Gpu,
        q: &CudaSlice<S>,
        k: &CudaSlice<S>,
        positions: &CudaSlice<i32>,
        q_out: &mut CudaSlice<S>,
        k_out: &mut CudaSlice<S>,
        t: usize,
    ) -> Result<()> {
        self.check_dtype::<S>()?;
        let s = self.config.shape;
        check_len("rope", "q", q.len(), t * s.qh * s.head_dim)?;
        check_len("rope", "q_out", q_out.len(), t * s.qh * s.head_dim)?;
        check_len("rope", "k", k.len(), t * s.kh * s.head_dim)?;
        check_len("rope", "k_out", k_out.len(), t * s.kh * s.head_dim)?;
        check_len("rope", "positions", positions.len(), t)?;
        let (cfg, t) = self.prepare(gpu, t)?;
        let mut b = gpu.stream().launch_builder(self.kernel().function());
        b.arg(q).arg(k).arg(positions).arg(q_out).arg(k_out).arg(&t);
        // SAFETY: signature matches; buffer lengths checked above.
        launched(unsafe { b.launch(cfg) })
    }
}
