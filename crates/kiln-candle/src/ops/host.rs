//! The CPU side of every op: tensors to float64 for the catalog's references
//! and back.

use candle_core::backend::BackendStorage;
use candle_core::{DType, Device, Shape, Tensor};

use crate::error::Result;

/// The tensor's values as float64, row-major.
pub fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// A tensor of `dtype` from float64 values the reference already rounded.
pub fn tensor(v: Vec<f64>, shape: impl Into<Shape>, dtype: DType, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)?)
}

/// Integer positions or indices as i64.
pub fn integers(t: &Tensor) -> Result<Vec<i64>> {
    Ok(t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?)
}

/// The values of a contiguous CPU storage as float64 (custom-op CPU forwards).
pub fn storage_values(s: &candle_core::CpuStorage, l: &candle_core::Layout) -> Result<Vec<f64>> {
    use candle_core::CpuStorage as C;
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| crate::error::op_error("cpu forward", "inputs must be contiguous"))?;
    let v = match s {
        C::BF16(v) => v[a..b].iter().map(|x| x.to_f64()).collect(),
        C::F16(v) => v[a..b].iter().map(|x| x.to_f64()).collect(),
        C::F32(v) => v[a..b].iter().map(|&x| x as f64).collect(),
        C::F64(v) => v[a..b].to_vec(),
        C::U32(v) => v[a..b].iter().map(|&x| x as f64).collect(),
        C::I64(v) => v[a..b].iter().map(|&x| x as f64).collect(),
        other => {
            return Err(crate::error::op_error(
                "cpu forward",
                format!("unsupported dtype {:?}", other.dtype()),
            ))
        }
    };
    Ok(v)
}

/// A CPU storage of `dtype` from float64 values.
pub fn storage(v: &[f64], dtype: DType) -> Result<candle_core::CpuStorage> {
    use candle_core::CpuStorage as C;
    Ok(match dtype {
        DType::BF16 => C::BF16(v.iter().map(|&x| half::bf16::from_f64(x)).collect()),
        DType::F16 => C::F16(v.iter().map(|&x| half::f16::from_f64(x)).collect()),
        DType::F32 => C::F32(v.iter().map(|&x| x as f32).collect()),
        DType::F64 => C::F64(v.to_vec()),
        other => {
            return Err(crate::error::op_error(
                "cpu forward",
                format!("unsupported dtype {other:?}"),
            ))
        }
    })
}
