//! `kiln kernels bench`: every catalog op at the three models' shapes, timed
//! with the evaluator's own method (CUDA graphs of launches, inputs rotated
//! beyond L2 for large shapes, medians), reported against the device's
//! measured peak bandwidth, launch floor, and a plain copy of the same bytes
//! timed the same way (the ceiling at that size). The decode ops (gathered experts,
//! attention over a KV cache) run at decode batch sizes only (T <= 64); their
//! bytes count the expert weights and cache rows actually read.

use kiln_cuda::{CopyCeiling, Probes};
use kiln_kernels::ops::attention::DecodeAttentionConfig;
use kiln_kernels::ops::moe_combine::MoeCombineConfig;
use kiln_kernels::ops::moe_expert::{MoeExpertDownConfig, MoeExpertSwigluConfig};
use kiln_kernels::ops::norm::{AddRmsNormConfig, RmsNormConfig};
use kiln_kernels::ops::rope::RopeConfig;
use kiln_kernels::ops::swiglu::{SwigluConfig, SwigluPackedConfig};
use kiln_kernels::ops::topk::{SigmoidTopkConfig, SoftmaxTopkConfig};
use kiln_kernels::ops::ttt::TttConfig;
use kiln_kernels::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::targets::OpProblem;
use crate::worker::measure::{
    check_timed_output, load, time_interleaved, timing_sets, Device, Failure, TimeOnly,
};

/// Token counts the benchmark sweeps.
pub const BENCH_T: [usize; 6] = [1, 4, 16, 64, 512, 4096];

/// Largest T the decode ops are timed at (decode batches; their float64
/// references and full expert-stacked weights make larger T slow to check).
pub const DECODE_MAX_T: usize = 64;

/// KV-cache capacity of the attention cases.
const ATTN_S_MAX: usize = 4096;

/// One op configuration to benchmark.
#[derive(Debug, Clone)]
pub struct BenchCase {
    /// Model (or `generic`).
    pub model: &'static str,
    /// What the rows are (`tokens`, `tokens×heads`).
    pub rows: &'static str,
    /// The op.
    pub problem: OpProblem,
    /// Largest T this case runs at (`None`: any).
    pub max_t: Option<usize>,
}

impl BenchCase {
    /// Whether the case runs at `t` rows.
    pub fn supports(&self, t: usize) -> bool {
        !matches!(self.max_t, Some(m) if t > m)
    }
}

/// One measured point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    /// Op name.
    pub op: String,
    /// Model.
    pub model: String,
    /// Static dims, e.g. `D=2048`.
    pub dims: String,
    /// Rows (T).
    pub t: usize,
    /// Median µs per launch.
    pub median_us: f64,
    /// 10th percentile.
    pub p10_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// Bytes one launch moves at least.
    pub bytes: u64,
    /// Achieved GB/s.
    pub gbps: f64,
    /// Percent of the measured peak bandwidth.
    pub pct_peak: f64,
    /// Multiple of the empty-kernel launch floor.
    pub x_floor: f64,
    /// Inputs rotated beyond L2.
    pub rotated: bool,
    /// Median µs of a plain copy of `bytes` in the same harness.
    #[serde(default)]
    pub copy_us: f64,
    /// The copy's time as a percentage of the op's: 100 is as fast as a
    /// kernel that only moves the op's bytes can be.
    #[serde(default)]
    pub pct_copy: f64,
    /// Median µs of the same copy chained with programmatic dependent launch
    /// (sm_90+): what the copy would cost if launches overlapped.
    #[serde(default)]
    pub copy_pdl_us: Option<f64>,
    /// Median µs of the `--candidate` kernel, timed interleaved with this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_us: Option<f64>,
}

/// Copy ceilings, measured once per byte count.
pub struct CopyCeilings {
    probes: Probes,
    by_bytes: BTreeMap<u64, CopyCeiling>,
}

impl CopyCeilings {
    /// Loads the probe kernels on the bench's device.
    pub fn load(dev: &Device) -> Result<Self, Failure> {
        Ok(Self {
            probes: Probes::load(&dev.gpu, &dev.compiler)
                .map_err(|e| Failure::machinery("loading the copy probe", e))?,
            by_bytes: BTreeMap::new(),
        })
    }

    /// The ceiling for an op that moves `bytes`.
    pub fn get(&mut self, dev: &Device, bytes: u64) -> Result<CopyCeiling, Failure> {
        if let Some(c) = self.by_bytes.get(&bytes) {
            return Ok(*c);
        }
        let c = self
            .probes
            .copy_ceiling(&dev.gpu, bytes)
            .map_err(|e| Failure::machinery("timing the copy ceiling", e))?;
        self.by_bytes.insert(bytes, c);
        Ok(c)
    }
}

/// The benchmark's cases: every op at every model's dims (bf16).
pub fn cases() -> Vec<BenchCase> {
    let bf = DType::BF16;
    let case = |model, rows, problem| BenchCase {
        model,
        rows,
        problem,
        max_t: None,
    };
    let decode = |model, problem| BenchCase {
        model,
        rows: "tokens",
        problem,
        max_t: Some(DECODE_MAX_T),
    };
    let mut out = Vec::new();
    for (model, eps, i, rope) in [
        ("Qwen3-30B-A3B", 1e-6, 768, RopeConfig::qwen3_30b_a3b(bf)),
        ("GLM-4.7-Flash", 1e-5, 1536, RopeConfig::glm47_flash(bf)),
        ("LFM2-8B-A1B", 1e-5, 1792, RopeConfig::lfm2_8b_a1b(bf)),
    ] {
        let norm = RmsNormConfig::new(2048, eps, bf);
        out.push(case(model, "tokens", OpProblem::RmsNorm(norm)));
        out.push(case(
            model,
            "tokens",
            OpProblem::AddRmsNorm(AddRmsNormConfig(norm)),
        ));
        out.push(case(
            model,
            "tokens",
            OpProblem::Swiglu(SwigluConfig::new(i, bf)),
        ));
        out.push(case(
            model,
            "tokens",
            OpProblem::SwigluPacked(SwigluPackedConfig(SwigluConfig::new(i, bf))),
        ));
        out.push(case(model, "tokens", OpProblem::Rope(rope)));
    }
    out.push(case(
        "Qwen3-30B-A3B qk",
        "tokens×heads",
        OpProblem::RmsNorm(RmsNormConfig::new(128, 1e-6, bf)),
    ));
    out.push(case(
        "Qwen3-30B-A3B",
        "tokens",
        OpProblem::SoftmaxTopk(SoftmaxTopkConfig {
            e: 128,
            k: 8,
            renorm: true,
            dtype: bf,
        }),
    ));
    out.push(case(
        "GLM-4.7-Flash",
        "tokens",
        OpProblem::SigmoidTopk(SigmoidTopkConfig::glm47_flash()),
    ));
    out.push(case(
        "LFM2-8B-A1B",
        "tokens",
        OpProblem::SigmoidTopk(SigmoidTopkConfig::lfm2_8b_a1b(bf)),
    ));
    for (model, k, shared) in [
        ("Qwen3-30B-A3B", 8, false),
        ("GLM-4.7-Flash", 4, true),
        ("LFM2-8B-A1B", 4, false),
    ] {
        out.push(case(
            model,
            "tokens",
            OpProblem::MoeCombine(MoeCombineConfig {
                d: 2048,
                k,
                has_shared: shared,
                dtype: bf,
            }),
        ));
    }
    out.push(case(
        "generic",
        "batch×heads",
        OpProblem::Ttt(TttConfig::new(16, bf)),
    ));
    for (model, sw, dn) in [
        (
            "Qwen3-30B-A3B",
            MoeExpertSwigluConfig::qwen3_30b_a3b(bf),
            MoeExpertDownConfig::qwen3_30b_a3b(bf),
        ),
        (
            "GLM-4.7-Flash",
            MoeExpertSwigluConfig::glm47_flash(bf),
            MoeExpertDownConfig::glm47_flash(bf),
        ),
        (
            "LFM2-8B-A1B",
            MoeExpertSwigluConfig::lfm2_8b_a1b(bf),
            MoeExpertDownConfig::lfm2_8b_a1b(bf),
        ),
    ] {
        out.push(decode(model, OpProblem::MoeExpertSwiglu(sw)));
        out.push(decode(model, OpProblem::MoeExpertDown(dn)));
    }
    // A long context: the new tokens follow ATTN_S_MAX - DECODE_MAX_T cached positions.
    let past = ATTN_S_MAX - DECODE_MAX_T;
    for (model, config) in [
        (
            "Qwen3-30B-A3B",
            DecodeAttentionConfig::qwen3_30b_a3b(ATTN_S_MAX, bf),
        ),
        (
            "GLM-4.7-Flash",
            DecodeAttentionConfig::glm47_flash(ATTN_S_MAX, bf),
        ),
        ("GLM-4-9B", DecodeAttentionConfig::glm4_9b(ATTN_S_MAX, bf)),
        (
            "LFM2-8B-A1B",
            DecodeAttentionConfig::lfm2_8b_a1b(ATTN_S_MAX, bf),
        ),
    ] {
        out.push(decode(model, OpProblem::DecodeAttention { config, past }));
    }
    out
}

/// Times one case at `t` rows (and checks the timed launch's output), with
/// the copy ceiling for its bytes; with a `candidate` source, times it
/// interleaved with the catalog kernel and checks its timed output too.
pub fn run_case(
    dev: &Device,
    ceilings: &mut CopyCeilings,
    case: &BenchCase,
    t: usize,
    candidate: Option<&str>,
    warmup: u32,
    iters: u32,
) -> Result<BenchRow, Failure> {
    if !case.supports(t) {
        return Err(Failure::new(
            crate::record::Stage::Launch,
            format!(
                "T={t} is beyond this case's range (T <= {})",
                case.max_t.unwrap_or(usize::MAX)
            ),
        ));
    }
    let build = case
        .problem
        .build()
        .map_err(|e| Failure::machinery("catalog build", e))?;
    let kernel = load(dev, &case.problem, &build.name, &build.source)?;
    let mut sets = timing_sets(dev, &case.problem, t, 0xbe9c4)?;
    let (s, candidate_us) = match candidate {
        None => (
            time_interleaved(
                dev,
                &case.problem,
                &[&kernel],
                &mut sets,
                warmup,
                iters,
                &mut TimeOnly,
            )?
            .remove(0),
            None,
        ),
        Some(src) => {
            let cand = load(dev, &case.problem, "candidate.cu", src)?;
            // The candidate goes first: its failures are reported as its own.
            let mut both = time_interleaved(
                dev,
                &case.problem,
                &[&cand, &kernel],
                &mut sets,
                warmup,
                iters,
                &mut TimeOnly,
            )?;
            check_timed_output(dev, &case.problem, &cand, &mut sets, 0x5eed)?;
            let catalog = both.remove(1);
            (catalog, Some(both.remove(0).median_us))
        }
    };
    check_timed_output(dev, &case.problem, &kernel, &mut sets, 0x5eed)?;
    let bytes = sets.bytes_per_launch;
    let ceiling = ceilings.get(dev, bytes)?;
    let copy_us = ceiling.best_us();
    let gbps = bytes as f64 / (s.median_us * 1e3);
    Ok(BenchRow {
        op: case.problem.family().to_string(),
        model: case.model.to_string(),
        dims: case
            .problem
            .static_vars()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(
                case.problem
                    .scalar_names()
                    .iter()
                    .zip(case.problem.scalar_args())
                    .map(|(k, v)| format!("{k}={v}")),
            )
            .collect::<Vec<_>>()
            .join(" "),
        t,
        median_us: s.median_us,
        p10_us: s.p10_us,
        p90_us: s.p90_us,
        bytes,
        gbps,
        pct_peak: 100.0 * gbps * 1e9 / dev.peak_bytes_per_s,
        x_floor: s.median_us / dev.launch_floor_us,
        rotated: sets.rotated_beyond_l2,
        copy_us,
        pct_copy: 100.0 * copy_us / s.median_us,
        copy_pdl_us: ceiling.pdl_kernel_us,
        candidate_us,
    })
}

/// Renders rows as an aligned Markdown table (with the candidate's µs and its
/// time over the catalog kernel's when a candidate was timed).
pub fn table(rows: &[BenchRow]) -> String {
    let with_candidate = rows.iter().any(|r| r.candidate_us.is_some());
    let mut out = String::from(
        "| op | model | dims | T | µs | GB/s | % peak | × floor | copy µs | % copy | copy+PDL µs |",
    );
    out.push_str(if with_candidate {
        " candidate µs | candidate/catalog |\n"
    } else {
        "\n"
    });
    out.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    out.push_str(if with_candidate { "---:|---:|\n" } else { "\n" });
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.0} | {:.1} | {:.2} | {:.2} | {:.1} | {} |",
            r.op,
            r.model,
            r.dims,
            r.t,
            r.median_us,
            r.gbps,
            r.pct_peak,
            r.x_floor,
            r.copy_us,
            r.pct_copy,
            r.copy_pdl_us.map_or("–".into(), |p| format!("{p:.2}"))
        ));
        if with_candidate {
            match r.candidate_us {
                Some(c) => out.push_str(&format!(" {c:.2} | {:.3} |", c / r.median_us)),
                None => out.push_str(" – | – |"),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_builds_and_decode_cases_stay_at_decode_sizes() {
        let all = cases();
        for c in &all {
            c.problem
                .build()
                .unwrap_or_else(|e| panic!("{} {}: {e}", c.problem.family(), c.model));
        }
        for family in ["moe_expert_swiglu", "moe_expert_down", "decode_attention"] {
            let decode: Vec<_> = all
                .iter()
                .filter(|c| c.problem.family() == family)
                .collect();
            assert!(decode.len() >= 3, "{family}");
            for c in decode {
                assert!([1, 4, 16, 64].iter().all(|&t| c.supports(t)));
                assert!(!c.supports(512));
            }
        }
        assert!(all
            .iter()
            .filter(|c| c.problem.family() == "rmsnorm")
            .all(|c| c.supports(4096)));
    }
}
