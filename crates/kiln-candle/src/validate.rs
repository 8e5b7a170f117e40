//! `kiln validate`: the same weights and prompt through the baseline, kiln's
//! default kernels and (optionally) a pack of discovered kernels; decode and
//! prefill tokens/s, peak GPU memory, greedy token identity and
//! teacher-forced logit agreement.
//!
//! What greedy identity can show on random weights: the logits are nearly
//! flat, so the top two candidates often differ by less than bf16 rounding,
//! and two correct implementations may diverge after a few tokens. The
//! teacher-forced comparison is the sharper check: every configuration is fed
//! the baseline's own tokens, and its logits at each step are compared with
//! the baseline's (max |Δ| and top-1 agreement), so one early divergence does
//! not hide the rest of the sequence.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::config::ModelConfig;
use crate::models::glm4::Glm4;
use crate::models::glm4_moe_lite::Glm4MoeLite;
use crate::models::lfm2_moe::Lfm2Moe;
use crate::models::qwen3_moe::Qwen3Moe;
use crate::models::stock::{StockGlm4, StockQwen3Moe};
use crate::models::{DecodeModel, Kernels};
use crate::ops::argmax::{argmax, argmax_host, ArgmaxScratch};
use crate::ops::linear::RouterFusion;
use crate::ops::pack::{self, KernelPack};
use crate::synth::{Rounding, SyntheticBackend};

/// Where the weights come from.
#[derive(Debug, Clone)]
pub enum Weights {
    /// A Hugging Face style directory (`config.json` + `*.safetensors`).
    Checkpoint(PathBuf),
    /// A preset's config with seeded weights built in device memory.
    Synthetic {
        /// The preset's config (layers already overridden).
        config: serde_json::Value,
        /// The weight seed.
        seed: u64,
    },
}

/// `kiln validate` options.
#[derive(Debug, Clone)]
pub struct Options {
    /// The weights.
    pub weights: Weights,
    /// Greedy decode length.
    pub max_tokens: usize,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Timed runs per configuration (median reported).
    pub runs: usize,
    /// Only the baseline (no kiln kernels).
    pub no_patch: bool,
    /// Discovered kernels to try as a third configuration.
    pub pack: Option<PathBuf>,
    /// Keep every configuration's teacher-forced logits in the report.
    pub keep_logits: bool,
    /// Also measure the noise floor (synthetic weights only): the baseline on
    /// the same weights rounded toward zero, against the baseline.
    pub noise_floor: bool,
    /// Decode kiln's configurations op by op only (no CUDA graph, and so no
    /// graph-against-eager comparison).
    pub eager: bool,
    /// Skip the baseline: kiln's configurations only, the first of them the
    /// reference (for checks that need no baseline, such as graph against
    /// eager at a context the baseline cannot prefill).
    pub no_baseline: bool,
}

/// How far bf16 rounding alone moves the baseline: the baseline's own
/// implementation on the same synthetic weights rounded toward zero instead
/// of to nearest (every weight moved by under one bf16 ulp), compared with
/// the baseline exactly as the kiln configurations are. A kiln configuration
/// whose agreement with the baseline is no worse than this differs from it by
/// rounding, not by math.
#[derive(Debug, Clone, Serialize)]
pub struct NoiseFloor {
    /// What ran.
    pub name: String,
    /// Greedy tokens of one run.
    pub tokens: Vec<u32>,
    /// First position where they differ from the baseline's.
    pub first_divergence: Option<usize>,
    /// Max |Δ logit| against the baseline, teacher-forced.
    pub tf_max_abs_logit_diff: f64,
    /// Teacher-forced top-1 agreement with the baseline.
    pub tf_top1_agreement: f64,
}

/// One configuration's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigResult {
    /// `candle (stock)`, `kiln (plain candle ops)`, `kiln (catalog)` or `kiln (pack)`.
    pub name: String,
    /// How it decodes: `graph` (one CUDA graph replay per token) or `eager`.
    pub decode: String,
    /// Median decode tokens/s.
    pub decode_tps: f64,
    /// Every run's decode tokens/s, in run order (configurations of one
    /// model instance run interleaved: run 1 of each, then run 2 of each, …).
    pub decode_tps_runs: Vec<f64>,
    /// Run-to-run spread of decode tokens/s: p90 / p10 − 1.
    pub decode_tps_spread: f64,
    /// Median prefill tokens/s.
    pub prefill_tps: f64,
    /// Median milliseconds per decoded token.
    pub ms_per_token: f64,
    /// Median milliseconds per decoded token that the host spends inside the
    /// model's forward call (op dispatch, allocation, launches) before it waits
    /// for the logits: when this is close to `ms_per_token`, the GPU waits on
    /// the host, not the other way round.
    pub host_ms_per_token: f64,
    /// Peak device memory in use during the runs (bytes, whole device).
    pub peak_memory_bytes: u64,
    /// Greedy tokens of the untimed pass (every timed run must repeat them).
    pub tokens: Vec<u32>,
    /// The first timed run (0-based) whose tokens differ from the untimed
    /// pass's: decode that is not deterministic fails its verdict.
    pub timed_run_diverged: Option<usize>,
    /// First position where the greedy tokens differ from the baseline's (None: identical).
    pub first_divergence: Option<usize>,
    /// Max |Δ logit| against the baseline, teacher-forced on the baseline's tokens.
    pub tf_max_abs_logit_diff: f64,
    /// Fraction of teacher-forced steps whose argmax equals the baseline's.
    pub tf_top1_agreement: f64,
    /// For a graph configuration with an eager twin: whether both gave the
    /// same greedy tokens and bit-identical teacher-forced logits.
    pub identical_to_eager: Option<bool>,
    /// The fidelity verdict against the noise floor.
    pub verdict: Verdict,
    /// Why, in a line.
    pub verdict_reason: String,
    /// The greedy tokens as text, when the checkpoint has a tokenizer
    /// ([`Report::decode_texts`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A configuration's fidelity verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The baseline every other configuration is judged against.
    Reference,
    /// Within the noise floor (and, for a graph, identical to eager decode).
    Pass,
    /// Outside the noise floor, or a graph that differs from eager decode.
    Fail,
    /// No noise floor was measured, so fidelity was not judged.
    NotJudged,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Reference => "reference",
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::NotJudged => "not judged",
        })
    }
}

/// A configuration passes when its teacher-forced max |Δlogit| against the
/// baseline is at most this many times the noise floor's…
pub const NOISE_DIFF_FACTOR: f64 = 2.0;
/// …and its top-1 agreement at most this much below the noise floor's.
pub const NOISE_TOP1_SLACK: f64 = 0.05;
/// A noise floor whose own top-1 agreement is below this is wide: the model
/// on these weights flips its argmax under a one-ulp weight change (on
/// synthetic LFM2, most likely its bf16 sigmoid router: check-moe measures
/// top-4 margins down to 1e-3, under one bf16 step), so its fidelity verdict only
/// catches errors larger than that, and the report says so.
pub const WIDE_FLOOR_TOP1: f64 = 0.9;

/// The whole validation of one model.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The model (`model_type`, layers).
    pub model: String,
    /// The GPU.
    pub device: String,
    /// Measured peak DRAM bandwidth (bytes/s), if measured.
    pub peak_bandwidth: Option<f64>,
    /// Weight bytes one decoded token reads (active experts only).
    pub active_weight_bytes: u64,
    /// Prompt length and decode length.
    pub prompt_tokens: usize,
    /// Decoded tokens per run.
    pub max_tokens: usize,
    /// The configurations, baseline first.
    pub configs: Vec<ConfigResult>,
    /// The baseline against itself on re-rounded weights (None: not measured).
    pub noise_floor: Option<NoiseFloor>,
    /// Why the noise floor was not measured, when it was asked for.
    pub noise_floor_not_run: Option<String>,
    /// Which pack entry replaced which catalog build (`target → build`), when a pack ran.
    pub pack_replacements: Vec<String>,
    /// Early launch (programmatic dependent launch) on, and the kernels it
    /// applied to out of those kiln loaded: "on, 17 of 17 kernels".
    pub early_launch: String,
    /// Whether the projections' fused epilogues (bias, SwiGLU) were on:
    /// "on", or "off (KILN_GEMV_FUSION=0)" in an A/B.
    pub gemv_fusion: String,
    /// Whether GLM-4-9B's rope and cache write ran as one `rope_cache`
    /// launch where it applies: "on", or "off (KILN_ROPE_CACHE_FUSION=0)".
    pub rope_cache_fusion: String,
    /// Whether the RMSNorms before the projections ran in the projections'
    /// prologue where it applies: "on (projections of at most N MiB)", or
    /// "off (KILN_NORM_FUSION=0)".
    #[serde(default)]
    pub norm_fusion: String,
    /// Where the MoE routers ran in their projection's last block (with
    /// the norm prologue): everywhere, only where it also appends the shared
    /// expert (the default), or nowhere.
    #[serde(default)]
    pub router_fusion: String,
    /// The projections' K-loop unroll (`KILN_GEMV_UNROLL`; 0 in reports
    /// from before it was recorded).
    #[serde(default)]
    pub gemv_unroll: usize,
    /// Whether GLM-4.7-Flash's MLA key, rope and cache write ran as one
    /// `mla_rope_cache` launch: "on (KILN_MLA_ROPE_CACHE_FUSION=1)" or "off".
    #[serde(default)]
    pub mla_rope_cache_fusion: String,
    /// The prompt.
    pub prompt: Vec<u32>,
    /// Per configuration, its logits at each step on the baseline's tokens
    /// (`Options::keep_logits`).
    #[serde(skip)]
    pub logits: Vec<(String, Vec<Vec<f32>>)>,
}

/// One row of `benchmark_results.json` (schema in docs/MODELS.md).
#[derive(Debug, Clone, Serialize)]
pub struct BenchmarkRow {
    /// The model.
    pub model: String,
    /// Baseline decode tokens/s.
    pub baseline_tps: f64,
    /// kiln with its default kernels.
    pub current_kiln_tps: f64,
    /// kiln with the pack (or the default kernels when no pack was given).
    pub discovered_kiln_tps: f64,
    /// `discovered / current − 1`, in percent.
    pub discovered_delta_pct: f64,
    /// Whether every kiln configuration's greedy tokens equal the baseline's.
    pub token_identical: bool,
}

impl Report {
    /// The `benchmark_results.json` row.
    pub fn benchmark_row(&self) -> BenchmarkRow {
        let base = self.configs.first().map(|c| c.decode_tps).unwrap_or(0.0);
        let find = |n: &str| {
            self.configs
                .iter()
                .find(|c| c.name == n)
                .map(|c| c.decode_tps)
        };
        let current = find(CATALOG).unwrap_or(0.0);
        let discovered = find(PACK).unwrap_or(current);
        BenchmarkRow {
            model: self.model.clone(),
            baseline_tps: base,
            current_kiln_tps: current,
            discovered_kiln_tps: discovered,
            discovered_delta_pct: if current > 0.0 {
                (discovered / current - 1.0) * 100.0
            } else {
                0.0
            },
            token_identical: self
                .configs
                .iter()
                .skip(1)
                .all(|c| c.first_divergence.is_none()),
        }
    }

    /// Fraction of the speed-of-light decode rate a configuration reaches.
    pub fn speed_of_light_fraction(&self, c: &ConfigResult) -> Option<f64> {
        let bw = self.peak_bandwidth?;
        let sol_tps = bw / self.active_weight_bytes as f64;
        Some(c.decode_tps / sol_tps)
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} on {} — prompt {} tokens, {} decoded, active weights {:.1} MB/token\n",
            self.model,
            self.device,
            self.prompt_tokens,
            self.max_tokens,
            self.active_weight_bytes as f64 / 1e6
        );
        s += &format!(
            "{:<26} {:>6} {:>10} {:>7} {:>9} {:>9} {:>11} {:>7} {:>9} {:>12} {:>10} {:>11}\n",
            "configuration",
            "decode",
            "decode t/s",
            "spread",
            "ms/token",
            "host ms",
            "prefill t/s",
            "× base",
            "% SoL",
            "peak GiB",
            "same toks",
            "TF top-1"
        );
        let base = self.configs.first().map(|c| c.decode_tps).unwrap_or(0.0);
        for c in &self.configs {
            let sol = self
                .speed_of_light_fraction(c)
                .map(|f| format!("{:.1}", f * 100.0))
                .unwrap_or_else(|| "-".into());
            let same = match c.first_divergence {
                None => "all".to_string(),
                Some(i) => format!("{i}/{}", c.tokens.len()),
            };
            s += &format!(
                "{:<26} {:>6} {:>10.1} {:>6.1}% {:>9.2} {:>9.2} {:>11.1} {:>7.2} {:>9} {:>12.1} {:>10} {:>10.1}%  (max|Δlogit| {:.3})  {}: {}\n",
                c.name,
                c.decode,
                c.decode_tps,
                c.decode_tps_spread * 100.0,
                c.ms_per_token,
                c.host_ms_per_token,
                c.prefill_tps,
                if base > 0.0 { c.decode_tps / base } else { 0.0 },
                sol,
                c.peak_memory_bytes as f64 / (1u64 << 30) as f64,
                same,
                c.tf_top1_agreement * 100.0,
                c.tf_max_abs_logit_diff,
                c.verdict,
                c.verdict_reason
            );
        }
        if let Some(n) = &self.noise_floor {
            let same = match n.first_divergence {
                None => "all".to_string(),
                Some(i) => format!("{i}/{}", n.tokens.len()),
            };
            s += &format!(
                "{:<26} {:<89} {:>10} {:>10.1}%  (max|Δlogit| {:.3})\n",
                "noise floor",
                "(baseline on its weights rounded toward zero)",
                same,
                n.tf_top1_agreement * 100.0,
                n.tf_max_abs_logit_diff
            );
        }
        if let Some(n) = self
            .noise_floor
            .as_ref()
            .filter(|n| n.tf_top1_agreement < WIDE_FLOOR_TOP1)
        {
            s += &format!(
                "WARNING: the noise floor is wide (top-1 {:.0} % < {:.0} % under a one-ulp weight change): \
                 on these weights the fidelity verdict only catches errors larger than the model's own \
                 sensitivity; the kernel judge is what vouches for each kernel here\n",
                n.tf_top1_agreement * 100.0,
                WIDE_FLOOR_TOP1 * 100.0
            );
        }
        if let Some(why) = &self.noise_floor_not_run {
            s += &format!("noise floor NOT RUN: {why}\n");
        }
        for r in &self.pack_replacements {
            s += &format!("pack: {r}\n");
        }
        s += &format!("early launch: {}\n", self.early_launch);
        s += &format!("gemv epilogues: {}\n", self.gemv_fusion);
        s += &format!("rope + cache write fused: {}\n", self.rope_cache_fusion);
        s += &format!("norms in the projections: {}\n", self.norm_fusion);
        s += &format!("routers in the projections: {}\n", self.router_fusion);
        s += &format!("gemv K-loop unroll: {}\n", self.gemv_unroll);
        s += &format!(
            "MLA key + rope + cache write fused: {}\n",
            self.mla_rope_cache_fusion
        );
        for c in &self.configs {
            if let Some(text) = &c.text {
                s += &format!("{} said: {text:?}\n", c.name);
            }
        }
        s
    }

    /// Fills in each configuration's greedy tokens as text.
    pub fn decode_texts(&mut self, tokenizer: &crate::text::Tokenizer) -> Result<()> {
        for c in &mut self.configs {
            c.text = Some(tokenizer.decode(&c.tokens)?);
        }
        Ok(())
    }

    /// The configurations whose verdict is FAIL.
    pub fn failures(&self) -> Vec<&ConfigResult> {
        self.configs
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .collect()
    }
}

const STOCK: &str = "candle (stock)";
const PLAIN: &str = "kiln (plain candle ops)";
const CATALOG: &str = kiln_kernels::pack::VALIDATE_CATALOG;
const CATALOG_EAGER: &str = "kiln (catalog, eager)";
const PACK: &str = kiln_kernels::pack::VALIDATE_PACK;

/// Runs the validation on `dev`; `progress` gets one line per step.
pub fn run(opts: &Options, dev: &Device, progress: &mut dyn FnMut(&str)) -> Result<Report> {
    if opts.prompt.is_empty() || opts.max_tokens == 0 || opts.runs == 0 {
        return Err(Error::Config(
            "validate needs a prompt, --max-tokens ≥ 1 and --runs ≥ 1".into(),
        ));
    }
    let (cfg, raw) = match &opts.weights {
        Weights::Checkpoint(dir) => ModelConfig::load(dir)?,
        Weights::Synthetic { config, .. } => ModelConfig::parse(&config.to_string())?,
    };
    let pack = opts.pack.as_deref().map(KernelPack::load).transpose()?;
    if pack.is_some() && !dev.is_cuda() {
        return Err(Error::Config(
            "a kernel pack replaces GPU kernels; on the CPU the ops run the catalog's float64 \
             references, so a pack has nothing to replace"
                .into(),
        ));
    }
    let (device, peak_bandwidth) = device_facts(dev, progress);
    // Rounded up to the cache step: the attention build (S_MAX) is then the
    // same for every run of that many positions, and searchable.
    let max_len =
        kiln_kernels::ops::attention::cache_positions(opts.prompt.len() + opts.max_tokens + 8);
    let dtype = DType::BF16;
    let model_name = format!(
        "{} ({} layers)",
        raw.get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("?"),
        cfg.layers()
    );

    // Model instances, each with the configurations it runs. The baseline
    // has its own weights layout and runs alone; kiln's configurations share
    // one instance and run interleaved, so drift (clocks, heat) hits them alike.
    let baseline = match &cfg {
        ModelConfig::Qwen3Moe(_) | ModelConfig::Glm4(_) => STOCK,
        ModelConfig::Glm4MoeLite(_) | ModelConfig::Lfm2Moe(_) => PLAIN,
    };
    if opts.no_baseline && opts.no_patch {
        return Err(Error::Config(
            "--no-baseline with --no-patch leaves nothing to run".into(),
        ));
    }
    let mut instances: Vec<(Kernels, Vec<Variant>)> = Vec::new();
    if !opts.no_baseline {
        instances.push((
            Kernels::Candle,
            vec![Variant {
                name: baseline,
                graph: false,
                pack: false,
            }],
        ));
    }
    if !opts.no_patch {
        let graph = !opts.eager;
        let mut v = vec![Variant {
            name: CATALOG,
            graph,
            pack: false,
        }];
        if graph {
            v.push(Variant {
                name: CATALOG_EAGER,
                graph: false,
                pack: false,
            });
        }
        if pack.is_some() {
            v.push(Variant {
                name: PACK,
                graph,
                pack: true,
            });
        }
        instances.push((Kernels::Kiln, v));
    }

    let mut results: Vec<ConfigResult> = Vec::new();
    let mut logits = Vec::new();
    let mut reference: Option<(Vec<u32>, Vec<Vec<f32>>)> = None;
    let mut noise = None;
    let mut replacements: Vec<String> = Vec::new();
    for (kernels, variants) in instances {
        let name = variants[0].name;
        progress(&format!("building {name}"));
        if name != STOCK {
            crate::models::single_stream(dev);
        }
        let vb = var_builder(&opts.weights, dtype, dev)?;
        let mut model = load(&cfg, &raw, name, kernels, vb, max_len)?;
        let is_baseline = reference.is_none();
        let _ = pack::take_replacements();
        let measured = measure(
            &variants,
            model.as_mut(),
            pack.as_ref(),
            opts,
            reference.as_ref(),
            progress,
        );
        pack::set_active(None);
        let measured = measured?;
        if let (Some(p), true) = (&pack, variants.iter().any(|v| v.pack)) {
            let made = pack::take_replacements();
            for (i, k) in p.kernels.iter().enumerate() {
                if !made.iter().any(|r| r.entry == i) {
                    return Err(Error::Config(format!(
                        "pack entry {i} (target {}, entry point {}) replaced no kernel of {model_name}: \
                         its entry point and defines match no configuration this model runs, so the \
                         pack configuration would have measured the catalog",
                        k.target,
                        k.entry_point.as_deref().unwrap_or("any")
                    )));
                }
            }
            replacements = made
                .iter()
                .map(|r| format!("{} → {}", r.target, r.build))
                .collect();
        }
        for (r, step_logits) in measured {
            if opts.keep_logits {
                logits.push((r.name.clone(), step_logits.clone()));
            }
            if reference.is_none() {
                reference = Some((r.tokens.clone(), step_logits));
            }
            results.push(r);
        }
        drop(model);
        dev.synchronize()?;
        if is_baseline && opts.noise_floor && !opts.no_baseline {
            if let (Weights::Synthetic { seed, .. }, Some(r)) = (&opts.weights, &reference) {
                progress("noise floor: the baseline on weights rounded toward zero");
                let vb = SyntheticBackend::with_rounding(*seed, Rounding::TowardZero)
                    .into_var_builder(dtype, dev);
                let mut twin = load(&cfg, &raw, name, kernels, vb, max_len)?;
                noise = Some(noise_floor(name, twin.as_mut(), opts, r)?);
                drop(twin);
                dev.synchronize()?;
            }
        }
    }
    judge(&mut results, noise.as_ref());
    let noise_floor_not_run = match (&opts.weights, opts.noise_floor) {
        (_, true) if opts.no_baseline => Some("no baseline (--no-baseline)".to_string()),
        (Weights::Checkpoint(_), true) => Some(
            "needs synthetic weights (their f32 values are re-rounded; a checkpoint has only its bf16 values)"
                .to_string(),
        ),
        _ => None,
    };
    Ok(Report {
        model: model_name,
        device,
        peak_bandwidth,
        active_weight_bytes: active_weight_bytes(&cfg),
        prompt_tokens: opts.prompt.len(),
        max_tokens: opts.max_tokens,
        configs: results,
        noise_floor: noise,
        noise_floor_not_run,
        pack_replacements: replacements,
        early_launch: early_launch_summary(),
        gemv_fusion: if crate::ops::linear::fusion_enabled() {
            "on".into()
        } else {
            "off (KILN_GEMV_FUSION=0)".into()
        },
        rope_cache_fusion: if crate::ops::rope::rope_cache_enabled() {
            "on".into()
        } else {
            "off (KILN_ROPE_CACHE_FUSION=0)".into()
        },
        norm_fusion: if crate::ops::linear::norm_fusion_enabled() {
            format!(
                "on (projections of at most {} MiB)",
                crate::ops::linear::norm_prologue_max_weight_bytes() >> 20
            )
        } else {
            "off (KILN_NORM_FUSION=0)".into()
        },
        router_fusion: match crate::ops::linear::router_fusion() {
            RouterFusion::On => "on (KILN_ROUTER_FUSION=1: every router that fits)".into(),
            RouterFusion::WithSharedExpert => {
                "where it also appends the shared expert (KILN_ROUTER_FUSION=1: everywhere)".into()
            }
            RouterFusion::Off => "off (KILN_ROUTER_FUSION=0)".into(),
        },
        gemv_unroll: crate::ops::linear::gemv_unroll(),
        mla_rope_cache_fusion: if crate::ops::attention::mla_rope_cache_enabled() {
            "on (KILN_MLA_ROPE_CACHE_FUSION=1)".into()
        } else {
            "off (KILN_MLA_ROPE_CACHE_FUSION=1 turns it on)".into()
        },
        prompt: opts.prompt.clone(),
        logits,
    })
}

/// Early launch as the report states it. On with no kernel that allows it is
/// a loud warning: the setting took no effect.
fn early_launch_summary() -> String {
    let (on, early, loaded) = crate::ops::early_launch();
    if loaded == 0 {
        return "not used (no CUDA kernel loaded)".into();
    }
    if !on {
        return "off (KILN_EARLY_LAUNCH=1 turns it on)".into();
    }
    if early == 0 {
        tracing::warn!(
            "early launch is on but none of the {loaded} loaded kernels waits before its first memory access: it took no effect"
        );
    }
    format!("on, {early} of {loaded} loaded kernels")
}

/// Builds configuration `name`'s model.
fn load(
    cfg: &ModelConfig,
    raw: &serde_json::Value,
    name: &str,
    kernels: Kernels,
    vb: VarBuilder,
    max_len: usize,
) -> Result<Box<dyn DecodeModel>> {
    Ok(match (cfg, name) {
        (ModelConfig::Qwen3Moe(_), STOCK) => Box::new(StockQwen3Moe::load(raw, vb)?),
        (ModelConfig::Qwen3Moe(c), _) => Box::new(Qwen3Moe::load(c, vb, kernels, max_len)?),
        (ModelConfig::Glm4MoeLite(c), _) => Box::new(Glm4MoeLite::load(c, vb, kernels, max_len)?),
        (ModelConfig::Glm4(_), STOCK) => Box::new(StockGlm4::load(raw, vb)?),
        (ModelConfig::Glm4(c), _) => Box::new(Glm4::load(c, vb, kernels, max_len)?),
        (ModelConfig::Lfm2Moe(c), _) => Box::new(Lfm2Moe::load(c, vb, kernels, max_len)?),
    })
}

/// One greedy run and the teacher-forced pass of the baseline's twin.
fn noise_floor(
    name: &str,
    model: &mut dyn DecodeModel,
    opts: &Options,
    reference: &(Vec<u32>, Vec<Vec<f32>>),
) -> Result<NoiseFloor> {
    let tokens = greedy(model, &opts.prompt, opts.max_tokens, false)?.tokens;
    let (m, a, _) = teacher_forced(model, &opts.prompt, &reference.0, &reference.1)?;
    Ok(NoiseFloor {
        name: format!("{name}, weights rounded toward zero"),
        first_divergence: tokens.iter().zip(&reference.0).position(|(a, b)| a != b),
        tokens,
        tf_max_abs_logit_diff: m,
        tf_top1_agreement: a,
    })
}

fn var_builder<'a>(w: &Weights, dtype: DType, dev: &Device) -> Result<VarBuilder<'a>> {
    match w {
        Weights::Synthetic { seed, .. } => {
            Ok(SyntheticBackend::new(*seed).into_var_builder(dtype, dev))
        }
        Weights::Checkpoint(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|source| Error::Io {
                    path: dir.clone(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(Error::Config(format!(
                    "{}: no *.safetensors files",
                    dir.display()
                )));
            }
            // SAFETY: the files are memory-mapped read-only; kiln does not modify them while loaded.
            Ok(unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, dev)? })
        }
    }
}

/// One configuration of a model instance: how it decodes and with which kernels.
#[derive(Debug, Clone, Copy)]
struct Variant {
    name: &'static str,
    /// Decode single tokens by graph replay.
    graph: bool,
    /// With the pack's kernels active.
    pack: bool,
}

/// Sets `model` up as `v`.
fn apply(model: &mut dyn DecodeModel, v: &Variant, pack: Option<&KernelPack>) -> Result<()> {
    pack::set_active(if v.pack { pack.cloned() } else { None });
    model.set_graph_decode(v.graph)
}

/// Warms each configuration of `model` up, then times them interleaved run by
/// run, then runs each one's teacher-forced pass against `reference`. Returns
/// each result and its per-step logits on the reference tokens (its own greedy
/// tokens' when there is no reference yet: the baseline).
fn measure(
    variants: &[Variant],
    model: &mut dyn DecodeModel,
    pack: Option<&KernelPack>,
    opts: &Options,
    reference: Option<&(Vec<u32>, Vec<Vec<f32>>)>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<(ConfigResult, Vec<Vec<f32>>)>> {
    let dev = model.device().clone();
    let mut peak = used_memory(&dev);
    let n = variants.len();
    let mut tokens = vec![Vec::new(); n];
    let mut own_logits = vec![Vec::new(); n];
    for (i, v) in variants.iter().enumerate() {
        // One untimed pass of full length: it compiles kernels, captures the
        // graph and settles clocks, and it is the one that copies logits to
        // the host (timing a run that does cost every first run 6–12 %).
        progress(&format!("{}: untimed pass", v.name));
        apply(model, v, pack)?;
        let g = greedy(model, &opts.prompt, opts.max_tokens, reference.is_none())?;
        tokens[i] = g.tokens;
        own_logits[i] = g.logits;
    }
    let mut decode = vec![Vec::new(); n];
    let mut host = vec![Vec::new(); n];
    let mut prefill = vec![Vec::new(); n];
    let mut diverged = vec![None; n];
    for run in 0..opts.runs {
        for (i, v) in variants.iter().enumerate() {
            progress(&format!("{}: run {}/{}", v.name, run + 1, opts.runs));
            apply(model, v, pack)?;
            let g = greedy(model, &opts.prompt, opts.max_tokens, false)?;
            peak = peak.max(used_memory(&dev));
            prefill[i].push(opts.prompt.len() as f64 / g.prefill_s);
            // The first token comes from the prefill; the rest are decode steps.
            decode[i].push((opts.max_tokens - 1).max(1) as f64 / g.decode_s);
            host[i].push(1e3 * g.host_s / (opts.max_tokens - 1).max(1) as f64);
            if g.tokens != tokens[i] && diverged[i].is_none() {
                diverged[i] = Some(run);
            }
        }
    }
    // Without a baseline the first configuration is the reference: the
    // others are compared with its untimed pass, never left uncompared.
    let first = match reference {
        None if n > 1 => Some((tokens[0].clone(), own_logits[0].clone())),
        _ => None,
    };
    let reference = reference.or(first.as_ref());
    let mut out = Vec::with_capacity(n);
    for (i, v) in variants.iter().enumerate() {
        let (first_divergence, tf_max, tf_top1, step_logits) = match reference {
            None => (None, 0.0, 1.0, std::mem::take(&mut own_logits[i])),
            Some((ref_tokens, ref_logits)) => {
                progress(&format!("{}: teacher-forced pass", v.name));
                apply(model, v, pack)?;
                let div = tokens[i].iter().zip(ref_tokens).position(|(a, b)| a != b);
                let (m, a, l) = teacher_forced(model, &opts.prompt, ref_tokens, ref_logits)?;
                (div, m, a, l)
            }
        };
        let dmed = median(&decode[i]);
        out.push((
            ConfigResult {
                name: v.name.to_string(),
                decode: if v.graph { "graph" } else { "eager" }.to_string(),
                decode_tps: dmed,
                decode_tps_spread: spread(&decode[i]),
                decode_tps_runs: std::mem::take(&mut decode[i]),
                prefill_tps: median(&prefill[i]),
                ms_per_token: 1e3 / dmed,
                host_ms_per_token: median(&host[i]),
                peak_memory_bytes: peak,
                tokens: std::mem::take(&mut tokens[i]),
                timed_run_diverged: diverged[i],
                first_divergence,
                tf_max_abs_logit_diff: tf_max,
                tf_top1_agreement: tf_top1,
                identical_to_eager: None,
                verdict: Verdict::NotJudged,
                verdict_reason: String::new(),
                text: None,
            },
            step_logits,
        ));
    }
    // A graph configuration against its eager twin (same kernels): the same
    // launches with the same inputs, so nothing but bit-identical passes.
    for i in 0..n {
        let twin = (0..n).find(|&j| {
            !variants[j].graph && variants[i].graph && variants[j].pack == variants[i].pack
        });
        if let Some(j) = twin {
            let same = out[i].0.tokens == out[j].0.tokens && bit_identical(&out[i].1, &out[j].1);
            out[i].0.identical_to_eager = Some(same);
        }
    }
    Ok(out)
}

/// Whether two runs' per-step logits are equal bit for bit.
fn bit_identical(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        })
}

/// Sets every configuration's verdict: the first is the reference; a graph
/// that differs from its eager twin fails; the rest are judged against the
/// noise floor when there is one.
fn judge(results: &mut [ConfigResult], noise: Option<&NoiseFloor>) {
    for (i, c) in results.iter_mut().enumerate() {
        let (verdict, reason) = if let Some(run) = c.timed_run_diverged {
            (
                Verdict::Fail,
                format!(
                    "not deterministic: timed run {} decoded other tokens than the untimed pass",
                    run + 1
                ),
            )
        } else if c.identical_to_eager == Some(false) {
            (
                Verdict::Fail,
                "graph decode differs from eager decode of the same kernels".to_string(),
            )
        } else if i == 0 {
            (
                Verdict::Reference,
                "what the others are compared with".to_string(),
            )
        } else if let Some(n) = noise {
            let max_diff = NOISE_DIFF_FACTOR * n.tf_max_abs_logit_diff;
            let min_top1 = n.tf_top1_agreement - NOISE_TOP1_SLACK;
            if c.tf_max_abs_logit_diff > max_diff {
                (
                    Verdict::Fail,
                    format!(
                        "max |Δlogit| {:.4} > {NOISE_DIFF_FACTOR} × the noise floor's {:.4}",
                        c.tf_max_abs_logit_diff, n.tf_max_abs_logit_diff
                    ),
                )
            } else if c.tf_top1_agreement < min_top1 {
                (
                    Verdict::Fail,
                    format!(
                        "top-1 agreement {:.3} < the noise floor's {:.3} − {NOISE_TOP1_SLACK}",
                        c.tf_top1_agreement, n.tf_top1_agreement
                    ),
                )
            } else {
                (
                    Verdict::Pass,
                    format!(
                        "within the noise floor{}",
                        match c.identical_to_eager {
                            Some(true) => "; bit-identical to eager",
                            _ => "",
                        }
                    ),
                )
            }
        } else {
            (
                Verdict::NotJudged,
                "no noise floor measured (synthetic weights only)".to_string(),
            )
        };
        c.verdict = verdict;
        c.verdict_reason = reason;
    }
}

/// p90 / p10 − 1 of `v` (linear interpolation; 0 for fewer than two values).
fn spread(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        let x = p * (s.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        s[lo] + (s[hi] - s[lo]) * (x - lo as f64)
    };
    let p10 = q(0.1);
    if p10 > 0.0 {
        q(0.9) / p10 - 1.0
    } else {
        0.0
    }
}

/// One greedy run from an empty cache.
struct GreedyRun {
    tokens: Vec<u32>,
    /// Each step's logits (when kept).
    logits: Vec<Vec<f32>>,
    prefill_s: f64,
    decode_s: f64,
    /// Of `decode_s`, the time spent inside `forward` (host work before the
    /// argmax waits for the GPU).
    host_s: f64,
}

/// Prefills `prompt`, then decodes greedily to `max_tokens` tokens,
/// synchronising the device around each timed part.
fn greedy(
    model: &mut dyn DecodeModel,
    prompt: &[u32],
    max_tokens: usize,
    keep_logits: bool,
) -> Result<GreedyRun> {
    let dev = model.device().clone();
    let scratch = ArgmaxScratch::new(&dev)?;
    let argmax = |logits: &Tensor| argmax(logits, &scratch);
    model.reset()?;
    dev.synchronize()?;
    let t0 = Instant::now();
    let logits = model.forward(prompt, 0)?;
    let mut tok = argmax(&logits)?;
    let t1 = Instant::now();
    let mut tokens = vec![tok];
    let mut steps = Vec::new();
    if keep_logits {
        steps.push(logits.to_vec1::<f32>()?);
    }
    let mut host_s = 0.0;
    for i in 0..max_tokens - 1 {
        let before = Instant::now();
        let logits = model.forward(&[tok], prompt.len() + i)?;
        host_s += before.elapsed().as_secs_f64();
        tok = argmax(&logits)?;
        tokens.push(tok);
        if keep_logits {
            steps.push(logits.to_vec1::<f32>()?);
        }
    }
    dev.synchronize()?;
    let t2 = Instant::now();
    Ok(GreedyRun {
        tokens,
        logits: steps,
        prefill_s: (t1 - t0).as_secs_f64(),
        decode_s: (t2 - t1).as_secs_f64(),
        host_s,
    })
}

/// Feeds the reference tokens; compares each step's logits with the reference's.
fn teacher_forced(
    model: &mut dyn DecodeModel,
    prompt: &[u32],
    ref_tokens: &[u32],
    ref_logits: &[Vec<f32>],
) -> Result<(f64, f64, Vec<Vec<f32>>)> {
    model.reset()?;
    let mut max_diff = 0f64;
    let mut agree = 0usize;
    let mut n = 0usize;
    let mut logits = model.forward(prompt, 0)?.to_vec1::<f32>()?;
    let mut all = Vec::with_capacity(ref_logits.len());
    for (i, want) in ref_logits.iter().enumerate() {
        for (a, b) in logits.iter().zip(want) {
            max_diff = max_diff.max((a - b).abs() as f64);
        }
        agree += (argmax_host(&logits) == argmax_host(want)) as usize;
        n += 1;
        if i + 1 < ref_logits.len() {
            let next = model
                .forward(&[ref_tokens[i]], prompt.len() + i)?
                .to_vec1::<f32>()?;
            all.push(std::mem::replace(&mut logits, next));
        }
    }
    all.push(logits);
    Ok((max_diff, agree as f64 / n.max(1) as f64, all))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// Bytes of weights one decoded token reads at batch 1 (routed experts: K of E).
pub fn active_weight_bytes(cfg: &ModelConfig) -> u64 {
    let b = 2u64; // bf16
    let params: u64 = match cfg {
        ModelConfig::Qwen3Moe(c) => {
            let (h, hd) = (c.hidden_size as u64, c.head_dim as u64);
            let attn =
                h * hd * (2 * c.num_attention_heads as u64 + 2 * c.num_key_value_heads as u64);
            let moe = 3 * h * c.moe_intermediate_size as u64 * c.num_experts_per_tok as u64
                + h * c.num_experts as u64;
            c.num_hidden_layers as u64 * (attn + moe) + h * c.vocab_size as u64
        }
        ModelConfig::Glm4MoeLite(c) => {
            let h = c.hidden_size as u64;
            let nh = c.num_attention_heads as u64;
            let dqk = (c.qk_nope_head_dim + c.qk_rope_head_dim) as u64;
            let (ql, kl, dv) = (
                c.q_lora_rank as u64,
                c.kv_lora_rank as u64,
                c.v_head_dim as u64,
            );
            let attn = h * ql
                + ql * nh * dqk
                + h * (kl + c.qk_rope_head_dim as u64)
                + kl * nh * (c.qk_nope_head_dim as u64 + dv)
                + nh * dv * h;
            let i = c.moe_intermediate_size as u64;
            let experts = (c.num_experts_per_tok + c.n_shared_experts) as u64;
            let moe = 3 * h * i * experts + h * c.n_routed_experts as u64;
            let dense = 3 * h * c.intermediate_size as u64;
            let layers = c.num_hidden_layers as u64;
            let k = (c.first_k_dense_replace as u64).min(layers);
            layers * attn + k * dense + (layers - k) * moe + h * c.vocab_size as u64
        }
        ModelConfig::Lfm2Moe(c) => {
            let (h, hd) = (c.hidden_size as u64, c.head_dim() as u64);
            let (qh, kvh) = (c.num_attention_heads as u64, c.num_key_value_heads as u64);
            let attn = h * hd * (2 * qh + 2 * kvh);
            let conv = 4 * h * h + h * c.conv_l_cache as u64;
            let moe = 3 * h * c.moe_intermediate_size as u64 * c.num_experts_per_tok as u64
                + h * c.num_experts as u64;
            let dense = 3 * h * c.intermediate_size as u64;
            let n = c.num_hidden_layers;
            let attn_layers = (0..n).filter(|&l| c.is_attention(l)).count() as u64;
            let dense_layers = (c.num_dense_layers.min(n)) as u64;
            attn_layers * attn
                + (n as u64 - attn_layers) * conv
                + dense_layers * dense
                + (n as u64 - dense_layers) * moe
                + h * c.vocab_size as u64
        }
        ModelConfig::Glm4(c) => {
            // Dense: every weight but the embedding table (norms and the qkv bias included).
            let (h, hd) = (c.hidden_size as u64, c.kv_channels as u64);
            let qh = c.num_attention_heads as u64;
            let qkv_rows = (qh + 2 * c.multi_query_group_num as u64) * hd;
            let attn = h * qkv_rows + if c.add_qkv_bias { qkv_rows } else { 0 } + qh * hd * h;
            let mlp = 3 * h * c.ffn_hidden_size as u64;
            let final_norm = if c.post_layer_norm { h } else { 0 };
            c.num_layers as u64 * (attn + mlp + 2 * h) + final_norm + h * c.padded_vocab_size as u64
        }
    };
    params * b
}

#[cfg(feature = "cuda")]
fn used_memory(dev: &Device) -> u64 {
    if !dev.is_cuda() {
        return 0;
    }
    match cudarc::driver::result::mem_get_info() {
        Ok((free, total)) => (total - free) as u64,
        Err(_) => 0,
    }
}

#[cfg(not(feature = "cuda"))]
fn used_memory(_: &Device) -> u64 {
    0
}

/// The device's name and its measured peak DRAM bandwidth (bytes/s; None
/// when not measured), from one kiln-cuda context on GPU 0.
#[cfg(feature = "cuda")]
fn device_facts(dev: &Device, progress: &mut dyn FnMut(&str)) -> (String, Option<f64>) {
    if !dev.is_cuda() {
        return (format!("{dev:?}"), None);
    }
    let gpu = match kiln_cuda::Gpu::open(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            progress(&format!("peak bandwidth not measured: {e}"));
            return (format!("{dev:?}"), None);
        }
    };
    progress("measuring peak DRAM bandwidth");
    let bandwidth = kiln_cuda::Compiler::new()
        .and_then(|compiler| kiln_cuda::Probes::load(&gpu, &compiler))
        .and_then(|probes| probes.bandwidth(&gpu))
        .map(|b| b.peak_bytes_per_s());
    let bandwidth = match bandwidth {
        Ok(bw) => Some(bw),
        Err(e) => {
            progress(&format!("peak bandwidth not measured: {e}"));
            None
        }
    };
    (gpu.facts().name.clone(), bandwidth)
}

#[cfg(not(feature = "cuda"))]
fn device_facts(dev: &Device, _: &mut dyn FnMut(&str)) -> (String, Option<f64>) {
    (format!("{dev:?}"), None)
}

/// Saves the kept logits (`[steps, vocab]` f32 per configuration, named by a
/// slug of the configuration) and the token sequence they were fed
/// (`tokens`: prompt then the baseline's tokens, u32).
pub fn save_logits(report: &Report, path: &std::path::Path) -> Result<()> {
    let dev = Device::Cpu;
    let mut map = std::collections::HashMap::new();
    for (name, steps) in &report.logits {
        let v = steps.first().map(|s| s.len()).unwrap_or(0);
        let flat: Vec<f32> = steps.iter().flatten().copied().collect();
        let slug: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        map.insert(slug, Tensor::from_vec(flat, (steps.len(), v), &dev)?);
    }
    let mut tokens = report.prompt.clone();
    if let Some(base) = report.configs.first() {
        tokens.extend(&base.tokens);
    }
    let n = tokens.len();
    map.insert("tokens".to_string(), Tensor::from_vec(tokens, n, &dev)?);
    candle_core::safetensors::save(&map, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, diff: f64, top1: f64, identical: Option<bool>) -> ConfigResult {
        ConfigResult {
            name: name.into(),
            decode: "graph".into(),
            decode_tps: 100.0,
            decode_tps_runs: vec![100.0],
            decode_tps_spread: 0.0,
            prefill_tps: 1.0,
            ms_per_token: 10.0,
            host_ms_per_token: 0.1,
            peak_memory_bytes: 0,
            tokens: vec![],
            timed_run_diverged: None,
            first_divergence: None,
            tf_max_abs_logit_diff: diff,
            tf_top1_agreement: top1,
            identical_to_eager: identical,
            verdict: Verdict::NotJudged,
            verdict_reason: String::new(),
            text: None,
        }
    }

    #[test]
    fn verdicts_follow_the_noise_floor_and_graph_identity() {
        let floor = NoiseFloor {
            name: "floor".into(),
            tokens: vec![],
            first_divergence: None,
            tf_max_abs_logit_diff: 0.1,
            tf_top1_agreement: 0.98,
        };
        let mut r = vec![
            config("base", 0.0, 1.0, None),
            config("within", 0.19, 0.94, Some(true)),
            config("too far", 0.21, 1.0, None),
            config("argmax off", 0.05, 0.92, None),
            config("graph differs", 0.0, 1.0, Some(false)),
        ];
        judge(&mut r, Some(&floor));
        let v: Vec<Verdict> = r.iter().map(|c| c.verdict).collect();
        assert_eq!(
            v,
            [
                Verdict::Reference,
                Verdict::Pass,
                Verdict::Fail,
                Verdict::Fail,
                Verdict::Fail
            ]
        );
        assert!(r[1].verdict_reason.contains("bit-identical"));
        assert!(
            r[2].verdict_reason.contains("0.2100"),
            "{}",
            r[2].verdict_reason
        );
        // The reference itself fails when it is a graph that differs from eager.
        let mut r = vec![config("graph first", 0.0, 1.0, Some(false))];
        judge(&mut r, Some(&floor));
        assert_eq!(r[0].verdict, Verdict::Fail);
        // Without a floor nothing passes by default.
        let mut r = vec![config("base", 0.0, 1.0, None), config("k", 0.0, 1.0, None)];
        judge(&mut r, None);
        assert_eq!(r[1].verdict, Verdict::NotJudged);
        // A timed run that decoded other tokens fails, floor or not.
        let mut r = vec![config("base", 0.0, 1.0, None), config("k", 0.0, 1.0, None)];
        r[1].timed_run_diverged = Some(2);
        judge(&mut r, None);
        assert_eq!(r[1].verdict, Verdict::Fail);
        assert!(r[1].verdict_reason.contains("timed run 3"));
    }

    #[test]
    fn spread_is_p90_over_p10() {
        assert_eq!(spread(&[5.0]), 0.0);
        assert!((spread(&[100.0, 100.0, 100.0]) - 0.0).abs() < 1e-12);
        // 11 values 100..=110: p10 = 101, p90 = 109.
        let v: Vec<f64> = (100..=110).rev().map(f64::from).collect();
        assert!((spread(&v) - (109.0 / 101.0 - 1.0)).abs() < 1e-12);
    }

    #[test]
    fn bit_identity_is_exact() {
        let a = vec![vec![1.0f32, -0.0]];
        assert!(bit_identical(&a, &a.clone()));
        assert!(
            !bit_identical(&a, &[vec![1.0, 0.0]]),
            "-0 and +0 differ in bits"
        );
        assert!(!bit_identical(&a, &[vec![1.0]]));
    }
}
