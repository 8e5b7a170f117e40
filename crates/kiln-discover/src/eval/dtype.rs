//! The element types kiln's targets compute in.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A target's element type (the type `scalar_t` stands for in a candidate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// bfloat16: 8 significand bits (7 stored), unit roundoff 2^-8.
    Bf16,
    /// IEEE half: 11 significand bits (10 stored), unit roundoff 2^-11.
    F16,
    /// IEEE single: 24 significand bits (23 stored), unit roundoff 2^-24.
    F32,
}

impl Dtype {
    /// The CUDA C++ spellings of this type that a candidate may use besides `scalar_t`.
    pub fn cuda_names(self) -> &'static [&'static str] {
        match self {
            Dtype::Bf16 => &["__nv_bfloat16", "nv_bfloat16"],
            Dtype::F16 => &["__half", "half"],
            Dtype::F32 => &["float"],
        }
    }

    /// The canonical CUDA C++ spelling (`__nv_bfloat16`, `__half`, `float`).
    pub fn cuda_name(self) -> &'static str {
        self.cuda_names()[0]
    }

    /// Size of one element in bytes.
    pub fn size_bytes(self) -> usize {
        match self {
            Dtype::Bf16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }
}

impl From<kiln_kernels::DType> for Dtype {
    fn from(d: kiln_kernels::DType) -> Self {
        match d {
            kiln_kernels::DType::BF16 => Dtype::Bf16,
            kiln_kernels::DType::F16 => Dtype::F16,
            kiln_kernels::DType::F32 => Dtype::F32,
        }
    }
}

impl From<Dtype> for kiln_kernels::DType {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::Bf16 => kiln_kernels::DType::BF16,
            Dtype::F16 => kiln_kernels::DType::F16,
            Dtype::F32 => kiln_kernels::DType::F32,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
            Dtype::F32 => "f32",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sizes_and_conversions() {
        assert_eq!(Dtype::Bf16.cuda_name(), "__nv_bfloat16");
        assert_eq!(Dtype::F16.size_bytes(), 2);
        assert_eq!(Dtype::F32.size_bytes(), 4);
        assert_eq!(Dtype::Bf16.to_string(), "bf16");
        assert_eq!(
            serde_json::to_string(&Dtype::F16).ok().as_deref(),
            Some("\"f16\"")
        );
        for d in [Dtype::Bf16, Dtype::F16, Dtype::F32] {
            let k: kiln_kernels::DType = d.into();
            assert_eq!(Dtype::from(k), d);
            assert_eq!(k.c_type(), d.cuda_name());
            assert_eq!(k.size(), d.size_bytes());
        }
    }
}
