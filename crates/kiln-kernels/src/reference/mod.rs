//! CPU float64 references, one file per op.
//!
//! Inputs are f64 values already representable in the op's dtype. Each
//! reference computes in f64 and rounds exactly where the model rounds (to the
//! dtype, or to f32 where the model computes in f32), so a correct kernel
//! differs from it only by f32-versus-f64 arithmetic.

pub mod attention;
pub mod moe_combine;
pub mod moe_expert;
pub mod norm;
pub mod qk_norm_rope;
pub mod rope;
pub mod rope_cache;
pub mod short_conv;
pub mod swiglu;
pub mod topk;
pub mod ttt;

/// Rounds to f32 (where the model computes in f32).
pub(crate) fn f32r(v: f64) -> f64 {
    v as f32 as f64
}
