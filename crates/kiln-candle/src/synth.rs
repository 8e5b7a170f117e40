//! Synthetic checkpoints: seeded random weights for any supported config.
//!
//! Every tensor is a pure function of (seed, tensor name, element index), so
//! the same weights come out whether they are written to disk
//! (`kiln models synth`), built on the CPU, or built straight in GPU memory
//! (`kiln validate --synthetic`, with the `synth_fill` kernel): a full-size
//! model then needs no disk, and no weight is generated before it is asked for.
//!
//! Scales: linear and embedding weights are uniform with standard deviation
//! 0.02 (the models' `initializer_range`); RMSNorm weights are 1 ± 0.1, so the
//! multiply by the weight is exercised; the router's selection bias is ±0.01.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::models::config::ModelConfig;
use crate::models::glm4::Glm4;
use crate::models::glm4_moe_lite::Glm4MoeLite;
use crate::models::lfm2_moe::Lfm2Moe;
use crate::models::qwen3_moe::Qwen3Moe;
use crate::models::Kernels;

/// `offset ± half_width` uniform values of one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fill {
    /// Centre.
    pub offset: f32,
    /// Half-width of the uniform range.
    pub half_width: f32,
}

/// The fill of a tensor by its HF name.
pub fn fill_for(name: &str) -> Fill {
    if name.ends_with("e_score_correction_bias") || name.ends_with("expert_bias") {
        Fill {
            offset: 0.0,
            half_width: 0.01,
        }
    } else if name.ends_with("norm.weight") {
        Fill {
            offset: 1.0,
            half_width: 0.1,
        }
    } else {
        // Uniform with std 0.02: half-width 0.02·√3.
        Fill {
            offset: 0.0,
            half_width: 0.02 * 3f32.sqrt(),
        }
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of one tensor: FNV-1a of its name, mixed with the model seed.
pub fn tensor_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h ^ mix(seed))
}

/// Element `i` of a tensor with seed `s` (f32, before rounding to the dtype).
pub fn value(s: u64, i: u64, fill: Fill) -> f32 {
    let z = mix(s.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let u = (z >> 40) as f32 * (1.0 / 16_777_216.0);
    let x = 2.0 * u - 1.0;
    fill.offset + fill.half_width * x
}

/// How the f32 values become the storage dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rounding {
    /// Round to nearest, ties to even: the weights.
    #[default]
    Nearest,
    /// Round toward zero (bf16 only): the same model with every weight moved
    /// by under one bf16 ulp, so the divergence between the two measures how
    /// far bf16 rounding alone moves the model (`kiln validate`'s noise floor).
    TowardZero,
}

/// Builds one tensor on `dev` (the GPU fills it in place; the CPU computes it).
pub fn make_tensor(
    seed: u64,
    name: &str,
    shape: &Shape,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    make_tensor_rounded(seed, name, shape, dtype, dev, Rounding::Nearest)
}

/// [`make_tensor`] with a choice of rounding.
pub fn make_tensor_rounded(
    seed: u64,
    name: &str,
    shape: &Shape,
    dtype: DType,
    dev: &Device,
    rounding: Rounding,
) -> Result<Tensor> {
    let s = tensor_seed(seed, name);
    let fill = fill_for(name);
    let n = shape.elem_count();
    let toward_zero = rounding == Rounding::TowardZero;
    if toward_zero && dtype != DType::BF16 {
        return Err(Error::Config(format!(
            "synthetic weights rounded toward zero exist in bf16 only, not {dtype:?}"
        )));
    }
    match dev {
        Device::Cpu if toward_zero => {
            // Dropping the low 16 bits of an f32 rounds it toward zero in bf16.
            let v: Vec<half::bf16> = (0..n as u64)
                .map(|i| half::bf16::from_bits((value(s, i, fill).to_bits() >> 16) as u16))
                .collect();
            Ok(Tensor::from_vec(v, shape, dev)?)
        }
        Device::Cpu => {
            let v: Vec<f32> = (0..n as u64).map(|i| value(s, i, fill)).collect();
            Ok(Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)?)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => gpu_fill(d, s, fill, shape, dtype, toward_zero),
        other => Err(Error::Config(format!(
            "synthetic weights on {other:?} are not supported"
        ))),
    }
}

/// The compile inputs of the `synth_fill` kernel for `dtype`.
pub fn fill_build(dtype: kiln_kernels::DType) -> kiln_kernels::KernelBuild {
    kiln_kernels::KernelBuild {
        name: format!("synth_fill_{dtype}.cu"),
        entry: "synth_fill".into(),
        source: include_str!("../kernels/synth_fill.cu").into(),
        defines: vec![dtype.define()],
    }
}

#[cfg(feature = "cuda")]
fn gpu_fill(
    dev: &candle_core::CudaDevice,
    s: u64,
    fill: Fill,
    shape: &Shape,
    dtype: DType,
    toward_zero: bool,
) -> Result<Tensor> {
    use crate::ops::device::{function, run_kernel, Param};
    let op = "synth_fill";
    let n = shape.elem_count();
    let func = function(dev, &fill_build(crate::ops::kernel_dtype(op, dtype)?))?;
    let blocks = n.div_ceil(256).clamp(1, 65535) as u32;
    let dims = kiln_kernels::LaunchDims {
        grid: (blocks, 1, 1),
        block: (256, 1, 1),
        smem: 0,
    };
    run_kernel(
        op,
        dev,
        &func,
        &dims,
        &[
            Param::Out,
            Param::U64(n as u64),
            Param::U64(s),
            Param::F32(fill.offset),
            Param::F32(fill.half_width),
            Param::I32(toward_zero as i32),
        ],
        &[(dtype, shape.clone())],
    )?
    .into_iter()
    .next()
    .ok_or_else(|| crate::error::op_error(op, "no output"))
}

/// A candle weight source that makes each tensor when a model asks for it.
pub struct SyntheticBackend {
    seed: u64,
    rounding: Rounding,
    /// Every tensor handed out, when recording for a checkpoint.
    record: Option<Mutex<HashMap<String, Tensor>>>,
}

impl SyntheticBackend {
    /// A source with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rounding: Rounding::Nearest,
            record: None,
        }
    }

    /// The same weights rounded to the storage dtype with `rounding`.
    pub fn with_rounding(seed: u64, rounding: Rounding) -> Self {
        Self {
            rounding,
            ..Self::new(seed)
        }
    }

    /// A source that also keeps what it hands out (for [`write_checkpoint`]).
    pub fn recording(seed: u64) -> Self {
        Self {
            record: Some(Mutex::new(HashMap::new())),
            ..Self::new(seed)
        }
    }

    /// A `VarBuilder` over this source.
    pub fn into_var_builder<'a>(self, dtype: DType, dev: &Device) -> VarBuilder<'a> {
        VarBuilder::from_backend(Box::new(self), dtype, dev.clone())
    }
}

impl SimpleBackend for SyntheticBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(rec) = &self.record {
            if let Ok(map) = rec.lock() {
                if let Some(t) = map.get(name) {
                    return Ok(t.clone());
                }
            }
        }
        // Selection biases stay f32 (and exact) whatever the rounding.
        let rounding = if dtype == DType::BF16 {
            self.rounding
        } else {
            Rounding::Nearest
        };
        let t = make_tensor_rounded(self.seed, name, &s, dtype, dev, rounding)?;
        if let Some(rec) = &self.record {
            if let Ok(mut map) = rec.lock() {
                map.insert(name.to_string(), t.clone());
            }
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!(
            "synthetic weights need a shape; {name} was asked for without one"
        )))
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Writes `config.json` and `model.safetensors` for `config` with `seed` into
/// `dir` (CPU, bf16): the tensors are exactly those kiln's model loads.
pub fn write_checkpoint(config: &serde_json::Value, seed: u64, dir: &Path) -> Result<usize> {
    let (cfg, _) = ModelConfig::parse(&config.to_string())?;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let backend = std::sync::Arc::new(SyntheticBackend::recording(seed));
    let vb = VarBuilder::from_backend(Box::new(Shared(backend.clone())), DType::BF16, Device::Cpu);
    // Loading the model asks for every tensor by its HF name and shape.
    match &cfg {
        ModelConfig::Qwen3Moe(c) => drop(Qwen3Moe::load(c, vb, Kernels::Candle, 1)?),
        ModelConfig::Glm4MoeLite(c) => drop(Glm4MoeLite::load(c, vb, Kernels::Candle, 1)?),
        ModelConfig::Glm4(c) => drop(Glm4::load(c, vb, Kernels::Candle, 1)?),
        ModelConfig::Lfm2Moe(c) => drop(Lfm2Moe::load(c, vb, Kernels::Candle, 1)?),
    }
    let tensors = backend
        .record
        .as_ref()
        .and_then(|m| m.lock().ok().map(|m| m.clone()))
        .unwrap_or_default();
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path)?;
    let cfg_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(config).map_err(|e| Error::Config(e.to_string()))?;
    std::fs::write(&cfg_path, text).map_err(|source| Error::Io {
        path: cfg_path,
        source,
    })?;
    Ok(tensors.len())
}

/// Lets a recording backend be shared with the caller.
struct Shared(std::sync::Arc<SyntheticBackend>);

impl SimpleBackend for Shared {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, dtype, dev)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_reproducible_and_scaled() {
        let f = fill_for("model.layers.0.mlp.experts.3.up_proj.weight");
        let s = tensor_seed(7, "x");
        assert_eq!(value(s, 5, f), value(s, 5, f));
        assert_ne!(tensor_seed(7, "x"), tensor_seed(7, "y"));
        let n = 20_000u64;
        let v: Vec<f32> = (0..n).map(|i| value(s, i, f)).collect();
        let mean = v.iter().sum::<f32>() / n as f32;
        let std = (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n as f32).sqrt();
        assert!(mean.abs() < 1e-3, "mean {mean}");
        assert!((std - 0.02).abs() < 1e-3, "std {std}");
        assert!(v.iter().all(|x| x.abs() <= f.half_width));
        let norm = fill_for("model.norm.weight");
        assert!((0..100).all(|i| (value(s, i, norm) - 1.0).abs() <= 0.1));
    }

    #[test]
    fn toward_zero_twin_moves_each_weight_by_under_one_ulp() {
        let name = "model.layers.0.mlp.gate_proj.weight";
        let shape = Shape::from((64, 32));
        let host = |rounding| -> Vec<f32> {
            make_tensor_rounded(3, name, &shape, DType::BF16, &Device::Cpu, rounding)
                .and_then(|t| Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?))
                .expect("synthetic tensor")
        };
        let (near, rz) = (host(Rounding::Nearest), host(Rounding::TowardZero));
        let exact: Vec<f32> = (0..shape.elem_count() as u64)
            .map(|i| value(tensor_seed(3, name), i, fill_for(name)))
            .collect();
        let mut moved = 0;
        for ((x, n), z) in exact.iter().zip(&near).zip(&rz) {
            assert!(
                z.abs() <= x.abs() && x.signum() == z.signum() || *z == 0.0,
                "{x} -> {z}"
            );
            // Within one bf16 ulp (2^-7 relative) of the exact value, as nearest is within half.
            assert!((z - x).abs() <= x.abs() * 2f32.powi(-7), "{x} -> {z}");
            moved += (n != z) as usize;
        }
        assert!(
            moved > exact.len() / 4,
            "about half the weights differ from nearest: {moved}"
        );
        let f16 = make_tensor_rounded(
            3,
            name,
            &shape,
            DType::F16,
            &Device::Cpu,
            Rounding::TowardZero,
        );
        assert!(f16.is_err(), "toward zero is bf16 only");
    }
}
