//! candle's own models behind [`DecodeModel`]: the stock baselines.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{glm4, qwen3_moe};

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

    fn reset(&mut self) -> Result<()> {
        self.model.clear_kv_cache();
        Ok(())
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

/// candle-transformers' `glm4` (THUDM's GLM-4-9B, ChatGLM format). It keeps
/// its own position (the cache length), so `forward` must continue from it,
/// and it prefills only from position 0 (its causal mask is `[T, T]`).
pub struct StockGlm4 {
    model: glm4::Model,
    device: Device,
    len: usize,
}

impl StockGlm4 {
    /// Builds candle's model from the same `config.json` and weights.
    pub fn load(raw_config: &serde_json::Value, vb: VarBuilder) -> Result<Self> {
        let cfg: glm4::Config = serde_json::from_value(raw_config.clone())
            .map_err(|e| Error::Config(format!("candle glm4 config: {e}")))?;
        let device = vb.device().clone();
        Ok(Self {
            model: glm4::Model::new(&cfg, vb)?,
            device,
            len: 0,
        })
    }
}

impl DecodeModel for StockGlm4 {
    fn forward(&mut self, ids: &[u32], pos: usize) -> Result<Tensor> {
        if ids.is_empty() || pos != self.len || (ids.len() > 1 && pos > 0) {
            return Err(Error::Config(format!(
                "candle glm4 runs {} token(s) at position {pos} only as a prefill at 0 or \
                 single tokens after its cache ({} positions)",
                ids.len(),
                self.len
            )));
        }
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        // [1, vocab]: the last position's logits.
        let logits = self.model.forward(&input)?;
        self.len += ids.len();
        Ok(logits.flatten_all()?.to_dtype(DType::F32)?)
    }

    fn reset(&mut self) -> Result<()> {
        self.model.reset_kv_cache();
        self.len = 0;
        Ok(())
    }

    fn device(&self) -> &Device {
        &self.device
    }
}
