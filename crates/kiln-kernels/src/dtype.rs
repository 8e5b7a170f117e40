//! Element types of the catalog kernels and their exact rounding on the host.

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// A storage dtype a catalog kernel is compiled for (math is always f32 inside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Every dtype, for tests that sweep them.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// The CUDA C++ type name (the value of `KILN_DTYPE`).
    pub fn c_type(self) -> &'static str {
        match self {
            DType::F32 => "float",
            DType::F16 => "__half",
            DType::BF16 => "__nv_bfloat16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Short lower-case name (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// The `KILN_DTYPE` define.
    pub fn define(self) -> (String, String) {
        ("KILN_DTYPE".to_string(), self.c_type().to_string())
    }

    /// Rounds a value to the nearest representable value of this dtype (ties to
    /// even, overflow to ±inf), directly from f64: `half`'s `bf16::from_f64` goes
    /// through f32 and can round twice.
    pub fn round(self, v: f64) -> f64 {
        match self {
            DType::F32 => v as f32 as f64,
            DType::F16 => round_to_format(v, 11, -14, 65504.0),
            DType::BF16 => round_to_format(v, 8, -126, BF16_MAX),
        }
    }
}

/// Largest finite bfloat16, (2 − 2⁻⁷)·2¹²⁷.
const BF16_MAX: f64 = 3.3895313892515355e38;

/// Rounds to a binary format with `p` significand bits, minimum normal exponent
/// `emin` (subnormals below it) and largest finite value `max`.
fn round_to_format(v: f64, p: i32, emin: i32, max: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let biased = ((v.to_bits() >> 52) & 0x7ff) as i32;
    // f64 subnormals are far below every target's subnormal range: treat as emin.
    let e = if biased == 0 {
        emin
    } else {
        (biased - 1023).max(emin)
    };
    // The quantum is a power of two, so the scaling is exact.
    let q = 2f64.powi(e - (p - 1));
    let r = (v / q).round_ties_even() * q;
    if r.abs() > max {
        f64::INFINITY.copysign(v)
    } else {
        r
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A host element type matching a [`DType`].
pub trait Element:
    Copy + Default + Send + Sync + std::fmt::Debug + kiln_cuda::DeviceRepr + 'static
{
    /// The dtype this type stores.
    const DTYPE: DType;
    /// Exact widening to f64.
    fn to_f64(self) -> f64;
    /// Rounds to nearest, ties to even (no double rounding through f32).
    fn from_f64(v: f64) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        // Exact after the correct rounding.
        f16::from_f64(DType::F16.round(v))
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        // Exact after the correct rounding.
        bf16::from_f64(DType::BF16.round(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_nearest_even_without_double_rounding() {
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even gives 1.
        assert_eq!(DType::BF16.round(1.0 + 2f64.powi(-8)), 1.0);
        // Just above the halfway point must round up, even though f32 would not keep it.
        assert_eq!(
            DType::BF16.round(1.0 + 2f64.powi(-8) + 2f64.powi(-40)),
            1.0 + 2f64.powi(-7)
        );
        assert_eq!(DType::F16.round(1.0 + 2f64.powi(-11)), 1.0);
        assert_eq!(
            DType::F16.round(1.0 + 2f64.powi(-11) + 2f64.powi(-40)),
            1.0 + 2f64.powi(-10)
        );
        // Subnormals, overflow and signs.
        assert_eq!(DType::F16.round(2f64.powi(-25)), 0.0); // half of the smallest subnormal: ties to even
        assert_eq!(DType::F16.round(1.5 * 2f64.powi(-24)), 2f64.powi(-23));
        assert_eq!(DType::F16.round(65520.0), f64::INFINITY);
        assert_eq!(DType::F16.round(65519.0), 65504.0);
        assert_eq!(DType::BF16.round(-3.0e38), -DType::BF16.round(3.0e38));
        assert_eq!(DType::BF16.round(1e39), f64::INFINITY);
        // Agrees with half wherever half's conversion is exact (f32 inputs).
        for bits in (0u32..0x7f80_0000).step_by(0x3_f1d7) {
            let x = f32::from_bits(bits) as f64;
            assert_eq!(
                DType::BF16.round(x),
                bf16::from_f32(x as f32).to_f64(),
                "{x:e}"
            );
            assert_eq!(
                DType::F16.round(x),
                f16::from_f32(x as f32).to_f64(),
                "{x:e}"
            );
        }
        assert_eq!(DType::F32.round(0.1), 0.1f32 as f64);
        assert_eq!(<bf16 as Element>::from_f64(3.0).to_f64(), 3.0);
    }

    #[test]
    fn names() {
        assert_eq!(
            DType::BF16.define(),
            ("KILN_DTYPE".into(), "__nv_bfloat16".into())
        );
        assert_eq!(DType::F16.size(), 2);
        assert_eq!(DType::F32.to_string(), "f32");
    }
}
