//! candle's own models behind [`DecodeModel`]: the stock baselines.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen3_moe;

use super::DecodeModel;
use crate::error::{Error, Result};

/// candle-transformers' `qwen3_moe` (its fused MoE path on CUDA).
pub struct StockQwen3Moe {
    model: qwen3_moe::ModelForCausalLM,
    device: Device,
}

impl StockQwen3Moe {
    /// Builds candle's model from the same `config.json` and weights.
    pub fn load(raw_config: &serde_json::Value, vb: VarBuilder) -> Result<Self> {
        let cfg: qwen3_moe::Config = serde_json::from_value(raw_config.clone())
            .map_err(|e| Error::Config(format!("candle qwen3_moe config: {e}")))?;
        let device = vb.device().clone();
        Ok(Self {
            model: qwen3_moe::ModelForCausalLM::new(&cfg, vb)?,
            device,
        })
    }
}

impl DecodeModel for StockQwen3Moe {
    fn forward(&mut self, ids: &[u32], pos: usize) -> Result<Tensor> {
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let logits = self.model.forward(&input, pos)?;
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?)
    }

    fn reset(&mut self) {
        self.model.clear_kv_cache();
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
