//! `kiln models check-moe`: one MoE block of a model at its real dims, run on
//! the GPU on kiln's kernels and on plain candle ops, each against the same
//! block on the CPU with the same bf16 weights and inputs.
//!
//! On the CPU, kiln's ops run the catalog's float64 references and plain
//! candle ops run candle's CPU kernels, so each GPU path has a twin that
//! computes its math without its GPU code. A GPU path that departs from its
//! twin by more than bf16 rounding is a bug in that path; two paths that each
//! match their twin but differ from each other compute different math.
//! Routing is compared as expert sets per token: a flip on a near-tie (see
//! the selection margins) is rounding, a flip with a wide margin is not.

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::config::ModelConfig;
use crate::models::moe::MoeBlock;
use crate::models::{glm4_moe_lite, lfm2_moe, qwen3_moe, Kernels};
use crate::synth::SyntheticBackend;

/// Largest relative L2 error (over the tokens both sides route alike) at
/// which a GPU path still matches its CPU twin: a few bf16 roundings
/// (2⁻⁸ each) of the intermediate tensors, with room for different
/// summation orders.
pub const MATCH_REL_L2: f64 = 2e-2;

/// What to check.
#[derive(Debug, Clone)]
pub struct MoeCheckOptions {
    /// The model's `config.json` (a preset or a checkpoint's).
    pub config: serde_json::Value,
    /// Synthetic weight seed.
    pub seed: u64,
    /// Tokens (rows) of random input.
    pub tokens: usize,
    /// The layer (default: the first MoE layer).
    pub layer: Option<usize>,
}

/// One side of a comparison: a block's output and its chosen experts.
#[derive(Debug, Clone)]
struct Side {
    out: Vec<Vec<f32>>,
    experts: Vec<Vec<u32>>,
}

/// Two sides compared.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The side under test.
    pub path: String,
    /// What it is compared with.
    pub against: String,
    /// Tokens whose chosen expert sets are equal.
    pub same_routing: usize,
    /// Tokens compared.
    pub tokens: usize,
    /// ‖a − b‖ / ‖b‖ over the tokens routed alike.
    pub rel_l2: f64,
    /// max |a − b| / max |b| over the tokens routed alike.
    pub max_abs_rel: f64,
    /// Whether the two must agree to [`MATCH_REL_L2`] (a GPU path against its twin).
    pub must_match: bool,
}

impl Comparison {
    /// A must-match comparison that failed: too far apart on the tokens
    /// routed alike, or more than a tenth of the tokens routed differently
    /// (identical inputs flip only on near-ties).
    pub fn failed(&self) -> bool {
        self.must_match
            && (self.rel_l2.is_nan()
                || self.rel_l2 > MATCH_REL_L2
                || self.same_routing * 10 < self.tokens * 9)
    }
}

/// The whole check.
#[derive(Debug, Clone, Serialize)]
pub struct MoeCheck {
    /// `model_type`.
    pub model: String,
    /// The layer checked.
    pub layer: usize,
    /// The block's dims, in words.
    pub dims: String,
    /// Tokens of input.
    pub tokens: usize,
    /// Per token, the K-th chosen selection score minus the best unchosen one
    /// (CPU, kiln's block); None where every expert is chosen.
    pub selection_margins: Vec<Option<f32>>,
    /// The comparisons.
    pub comparisons: Vec<Comparison>,
    /// What did not run, and why (say it, never skip silently).
    pub not_run: Vec<String>,
}

impl MoeCheck {
    /// Whether every GPU path matches its CPU twin.
    pub fn passed(&self) -> bool {
        !self.comparisons.iter().any(Comparison::failed)
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut margins: Vec<f32> = self.selection_margins.iter().flatten().copied().collect();
        margins.sort_by(f32::total_cmp);
        let mut s = format!(
            "{} layer {}: {}, {} tokens of random input, bf16 weights\n",
            self.model, self.layer, self.dims, self.tokens
        );
        if let (Some(lo), Some(mid)) = (margins.first(), margins.get(margins.len() / 2)) {
            let close = margins.iter().filter(|&&m| m < 1e-3).count();
            s += &format!(
                "routing margins (K-th chosen − best unchosen score): min {lo:.2e}, median {mid:.2e}; {close} tokens under 1e-3\n"
            );
        }
        s += &format!(
            "{:<30} {:<28} {:>11} {:>10} {:>14}  verdict\n",
            "path", "against", "same experts", "rel L2", "max|Δ|/max|ref|"
        );
        for c in &self.comparisons {
            let verdict = match (c.must_match, c.failed()) {
                (false, _) => "info",
                (true, false) => "match",
                (true, true) => "DIFFERS",
            };
            s += &format!(
                "{:<30} {:<28} {:>7}/{:<4} {:>10.2e} {:>14.2e}  {verdict}\n",
                c.path, c.against, c.same_routing, c.tokens, c.rel_l2, c.max_abs_rel
            );
        }
        for n in &self.not_run {
            s += &format!("NOT RUN: {n}\n");
        }
        s += &format!(
            "{}\n",
            if self.passed() {
                format!("every GPU path matches its CPU twin (rel L2 ≤ {MATCH_REL_L2:.0e} on tokens routed alike)")
            } else {
                format!(
                    "FAIL: a GPU path departs from its CPU twin by more than {MATCH_REL_L2:.0e}"
                )
            }
        );
        s
    }
}

/// Runs the check; GPU sides run on `gpu` (None: the CPU comparison only,
/// reported as such).
pub fn check_moe(
    opts: &MoeCheckOptions,
    gpu: Option<&Device>,
    progress: &mut dyn FnMut(&str),
) -> Result<MoeCheck> {
    if opts.tokens == 0 {
        return Err(Error::Config("check-moe needs at least one token".into()));
    }
    let (cfg, raw) = ModelConfig::parse(&opts.config.to_string())?;
    let layer = match (opts.layer, &cfg) {
        (Some(l), _) => l,
        (None, ModelConfig::Qwen3Moe(_)) => 0,
        (None, ModelConfig::Glm4MoeLite(c)) => c.first_k_dense_replace,
        (None, ModelConfig::Lfm2Moe(c)) => c.num_dense_layers,
        (None, ModelConfig::Glm4(_)) => {
            return Err(Error::Config(
                "check-moe: chatglm (GLM-4-9B) is dense and has no MoE block".into(),
            ))
        }
    };
    if layer >= cfg.layers() {
        return Err(Error::Config(format!(
            "check-moe: layer {layer} is past the model's {} layers",
            cfg.layers()
        )));
    }
    let cpu = Device::Cpu;
    let build = |kernels: Kernels, dev: &Device| -> Result<MoeBlock> {
        let vb = SyntheticBackend::new(opts.seed).into_var_builder(DType::BF16, dev);
        let block = match &cfg {
            ModelConfig::Qwen3Moe(c) => Some(qwen3_moe::moe_block(c, &vb, layer, kernels)?),
            ModelConfig::Glm4MoeLite(c) => glm4_moe_lite::moe_block(c, &vb, layer, kernels)?,
            ModelConfig::Lfm2Moe(c) => lfm2_moe::moe_block(c, &vb, layer, kernels)?,
            ModelConfig::Glm4(_) => None,
        };
        block.ok_or_else(|| Error::Config(format!("check-moe: layer {layer} is dense")))
    };
    let (h, dims) = block_dims(&cfg);
    let x = random_input(opts.tokens, h, opts.seed)?;

    let mut sides: Vec<(String, Side)> = Vec::new();
    let mut margins = Vec::new();
    for (kernels, label) in [(Kernels::Kiln, "kiln"), (Kernels::Candle, "plain")] {
        progress(&format!("{label} ops on the CPU: building the block"));
        let block = build(kernels, &cpu)?;
        if kernels == Kernels::Kiln {
            margins = block
                .selection_margins(&x)?
                .into_iter()
                .map(|m| m.is_finite().then_some(m))
                .collect();
        }
        progress(&format!("{label} ops on the CPU: forward"));
        sides.push((format!("{label} CPU"), side(&block, &x)?));
        drop(block);
        if let Some(dev) = gpu {
            progress(&format!("{label} ops on the GPU"));
            let block = build(kernels, dev)?;
            let xg = x.to_device(dev)?;
            sides.push((
                format!("{label} GPU, T={}", opts.tokens),
                side(&block, &xg)?,
            ));
            sides.push((
                format!("{label} GPU, T=1 per row"),
                side_by_rows(&block, &xg)?,
            ));
        }
    }

    let find = |name: &str| sides.iter().find(|(n, _)| n == name).map(|(_, s)| s);
    let mut comparisons = Vec::new();
    let mut add = |path: &str, against: &str, must_match: bool| {
        if let (Some(a), Some(b)) = (find(path), find(against)) {
            comparisons.push(compare(path, a, against, b, must_match));
        }
    };
    let t = opts.tokens;
    for label in ["kiln", "plain"] {
        add(
            &format!("{label} GPU, T={t}"),
            &format!("{label} CPU"),
            true,
        );
        add(
            &format!("{label} GPU, T=1 per row"),
            &format!("{label} CPU"),
            true,
        );
    }
    add("kiln CPU", "plain CPU", false);
    add(
        &format!("kiln GPU, T={t}"),
        &format!("plain GPU, T={t}"),
        false,
    );
    let not_run = match gpu {
        Some(_) => Vec::new(),
        None => vec!["the GPU paths (no CUDA device): only kiln CPU against plain CPU".into()],
    };
    Ok(MoeCheck {
        model: raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string(),
        layer,
        dims,
        tokens: opts.tokens,
        selection_margins: margins,
        comparisons,
        not_run,
    })
}

/// Hidden size and the block's dims in words.
fn block_dims(cfg: &ModelConfig) -> (usize, String) {
    match cfg {
        ModelConfig::Qwen3Moe(c) => (
            c.hidden_size,
            format!(
                "H={} I={} E={} K={}, softmax router",
                c.hidden_size, c.moe_intermediate_size, c.num_experts, c.num_experts_per_tok
            ),
        ),
        ModelConfig::Glm4MoeLite(c) => (
            c.hidden_size,
            format!(
                "H={} I={} E={} K={} + {} shared, sigmoid router",
                c.hidden_size,
                c.moe_intermediate_size,
                c.n_routed_experts,
                c.num_experts_per_tok,
                c.n_shared_experts
            ),
        ),
        ModelConfig::Glm4(c) => (c.hidden_size, "dense".into()),
        ModelConfig::Lfm2Moe(c) => (
            c.hidden_size,
            format!(
                "H={} I={} E={} K={}, sigmoid router in the model dtype",
                c.hidden_size, c.moe_intermediate_size, c.num_experts, c.num_experts_per_tok
            ),
        ),
    }
}

/// `[T, H]` bf16 with unit variance: what a normed hidden state looks like.
fn random_input(t: usize, h: usize, seed: u64) -> Result<Tensor> {
    crate::check_kernels::random((t, h), seed ^ 0x6d6f_6563)
}

fn side(block: &MoeBlock, x: &Tensor) -> Result<Side> {
    let out = block.forward(x)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let (_, idx) = block.route(x)?;
    let mut experts: Vec<Vec<u32>> = idx.to_vec2::<u32>()?;
    for e in &mut experts {
        e.sort_unstable();
    }
    Ok(Side { out, experts })
}

/// The decode form: each row on its own (T = 1), as a decode step runs it.
/// Rows are views into `x` (a start offset, no copy), so a path that ignores
/// the offset reads the wrong row and fails here.
fn side_by_rows(block: &MoeBlock, x: &Tensor) -> Result<Side> {
    let mut all = Side {
        out: Vec::new(),
        experts: Vec::new(),
    };
    for r in 0..x.dim(0)? {
        let s = side(block, &x.narrow(0, r, 1)?)?;
        all.out.extend(s.out);
        all.experts.extend(s.experts);
    }
    Ok(all)
}

fn compare(path: &str, a: &Side, against: &str, b: &Side, must_match: bool) -> Comparison {
    let (mut num, mut den, mut max_d, mut max_b) = (0f64, 0f64, 0f64, 0f64);
    let mut same = 0;
    for ((ra, rb), (ea, eb)) in a
        .out
        .iter()
        .zip(&b.out)
        .zip(a.experts.iter().zip(&b.experts))
    {
        if ea != eb {
            continue;
        }
        same += 1;
        for (&u, &v) in ra.iter().zip(rb) {
            let d = (u as f64 - v as f64).abs();
            // NaN must fail: max() would drop it, so it poisons the sum instead.
            num += d * d;
            den += (v as f64) * (v as f64);
            max_d = if d.is_nan() { f64::NAN } else { max_d.max(d) };
            max_b = max_b.max((v as f64).abs());
        }
    }
    let ratio = |n: f64, d: f64| if d > 0.0 { n / d } else { n };
    Comparison {
        path: path.to_string(),
        against: against.to_string(),
        same_routing: same,
        tokens: b.out.len(),
        rel_l2: ratio(num.sqrt(), den.sqrt()),
        max_abs_rel: ratio(max_d, max_b),
        must_match,
    }
}
