//! Greedy decoding's pick: the index of the largest logit, in one launch
//! (`kernels/argmax.cu`), for the decode loops that time a model.
//!
//! candle's own argmax runs one block over the whole row; over a
//! vocabulary of 150k logits that took longer than a decoder layer. This
//! one spreads the row over the GPU and folds the blocks' results with one
//! atomic each. It breaks ties towards the lower index, and on the CPU does
//! the same.

use candle_core::{DType, Tensor};

use super::kernel_dtype;
use crate::error::{op_error, Result};

/// The kernel's source (its header states the math and the launch rule).
pub const SOURCE: &str = include_str!("../../kernels/argmax.cu");

/// The compile inputs for logits of `dtype`.
pub fn build(dtype: kiln_kernels::DType) -> kiln_kernels::KernelBuild {
    kiln_kernels::KernelBuild {
        name: format!("argmax_{dtype}.cu"),
        entry: "argmax".into(),
        source: SOURCE.into(),
        defines: vec![dtype.define()],
    }
}

/// The kernel's working words for one call site: four u32 on the device,
/// zero between launches (the last block sets them back), so it is made
/// once and kept.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct ArgmaxScratch(Tensor);

impl ArgmaxScratch {
    /// Zeroed words on `dev`.
    pub fn new(dev: &candle_core::Device) -> Result<Self> {
        Ok(Self(Tensor::zeros(4, DType::U32, dev)?))
    }
}

/// The index of the largest of the logits `x[V]`: the lowest index among
/// equal largest values, a NaN above every number (floats in their IEEE
/// total order).
pub fn argmax(x: &Tensor, scratch: &ArgmaxScratch) -> Result<u32> {
    let op = "argmax";
    let v = x.dims1()?;
    if v == 0 || v > i32::MAX as usize {
        return Err(op_error(op, format!("{v} logits: 1 ..= 2^31 - 1 expected")));
    }
    let dtype = kernel_dtype(op, x.dtype())?;
    if x.device().is_cpu() {
        let values = x.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        return Ok(argmax_host(&values));
    }
    launch(&x.contiguous()?, dtype, scratch)
}

/// [`argmax`]'s rule on host values.
pub fn argmax_host(values: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, v) in values.iter().enumerate() {
        if v.total_cmp(&values[best]) == std::cmp::Ordering::Greater {
            best = i;
        }
    }
    best as u32
}

fn launch(x: &Tensor, dtype: kiln_kernels::DType, scratch: &ArgmaxScratch) -> Result<u32> {
    let op = "argmax";
    #[cfg(feature = "cuda")]
    {
        use super::device::{cuda_device, function, run_kernel, sm_count, Param};
        let dev = cuda_device(op, x)?;
        let func = function(&dev, &build(dtype))?;
        let line = launch_line()?;
        let vars: std::collections::BTreeMap<String, i64> = [
            ("V".to_string(), x.elem_count() as i64),
            ("SMS".to_string(), sm_count(&dev)? as i64),
        ]
        .into_iter()
        .collect();
        let dims = line
            .evaluate(&vars)
            .map_err(|e| op_error(op, format!("launch line: {e}")))?;
        let out = run_kernel(
            op,
            &dev,
            &func,
            &dims,
            &[
                Param::In(x),
                Param::Out,
                Param::InPlace(&scratch.0),
                Param::I32(x.elem_count() as i32),
            ],
            &[(DType::U32, 1.into())],
        )?;
        let idx = out.first().ok_or_else(|| op_error(op, "no output"))?;
        Ok(idx.to_vec1::<u32>()?[0])
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, dtype, scratch);
        Err(super::no_cuda(op))
    }
}

/// The kernel's launch line, parsed once (greedy decoding launches it every token).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn launch_line() -> Result<&'static kiln_kernels::LaunchLine> {
    static LINE: std::sync::OnceLock<std::result::Result<kiln_kernels::LaunchLine, String>> =
        std::sync::OnceLock::new();
    LINE.get_or_init(|| kiln_kernels::LaunchLine::parse_source(SOURCE).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| op_error("argmax", format!("launch line: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_lower_index_and_nan_wins() {
        assert_eq!(argmax_host(&[1.0, 3.0, 2.0, 3.0]), 1);
        assert_eq!(argmax_host(&[-0.0, 0.0]), 1);
        assert_eq!(argmax_host(&[5.0, f32::NAN, 7.0]), 1);
        assert_eq!(argmax_host(&[f32::NEG_INFINITY; 3]), 0);
        let dev = candle_core::Device::Cpu;
        let x = Tensor::new(&[0.5f32, 2.0, 2.0, -1.0], &dev).expect("tensor");
        let s = ArgmaxScratch::new(&dev).expect("scratch");
        assert_eq!(argmax(&x, &s).expect("argmax"), 1);
        let empty = Tensor::zeros(0, DType::F32, &dev).expect("tensor");
        assert!(argmax(&empty, &s).is_err());
    }
}
