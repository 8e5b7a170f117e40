//! The text sent to LLM proposers: a fixed system prompt and a user prompt rendered from
//! a [`ProposalRequest`].
//!
//! The system prompt holds what does not change between requests (Hopper facts, the
//! candidate contract, one worked example, the answer format), so backends that cache
//! prompts reuse it. The user prompt is deterministic for a given request: same request,
//! same bytes, which keeps sessions reproducible and tests exact.

use kiln_search::propose::ProposalRequest;
use std::fmt::Write as _;

/// The longest failure message quoted back to the model, in characters.
const MAX_FAILURE_CHARS: usize = 1500;
/// The longest source excerpt quoted with a failure, in characters.
const MAX_EXCERPT_CHARS: usize = 1200;
/// How many recent failures are shown.
const MAX_FAILURES: usize = 6;

/// A rendered prompt: the system part and the user part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Fixed instructions: hardware facts, contract, example, answer format.
    pub system: String,
    /// This request: target, parent, best sources, failures, how many variants.
    pub user: String,
}

impl Prompt {
    /// Renders both parts for `req`.
    pub fn for_request(req: &ProposalRequest) -> Self {
        Self {
            system: system_prompt().to_string(),
            user: user_prompt(req),
        }
    }

    /// Both parts as one text, for backends without a separate system prompt.
    pub fn combined(&self) -> String {
        format!("{}\n\n---\n\n{}", self.system, self.user)
    }
}

/// The fixed system prompt.
pub fn system_prompt() -> &'static str {
    SYSTEM_PROMPT
}

const SYSTEM_PROMPT: &str = r#"You are an expert CUDA engineer optimising memory-bound kernels for LLM inference (mixture-of-experts decode and prefill) on an NVIDIA H100 (Hopper, sm_90). Every kernel you write is compiled with NVRTC, checked against a float64 reference, and timed; only correct kernels count, and the fastest wins.

## Hopper facts that matter here
- 132 SMs, up to 2048 resident threads and 64 warps per SM, 228 KB shared memory + L1 per SM, 50 MB L2, ~3 TB/s HBM3 (the measured peak is given below). Most of these kernels are memory-bound: the goal is to move the minimum bytes at full bandwidth.
- Use 16-byte vector loads and stores (`uint4`/`float4`, 8 bf16 per access) on aligned addresses; a warp should touch contiguous 512-byte spans (coalescing). Scalar 2-byte accesses waste most of the bandwidth.
- Reductions: warp shuffles (`__shfl_xor_sync`) first, shared memory only across warps; avoid `__syncthreads()` in hot loops and atomics on contended addresses.
- Occupancy: enough warps in flight to hide DRAM latency (many independent loads per thread, unrolled); registers per thread and shared memory per block limit it.
- Launch overhead is about 2 µs (the measured launch floor is given below). At decode sizes (T = 1..64) the data is a few KB to a few MB, so the launch and the serial critical path dominate: use one wave of blocks, few synchronisations, no second kernel.
- Read-only inputs: `__ldg` or `const __restrict__` pointers; streaming data can use cache hints (`__ldcs`, `__stcs`, `__ldlu`); data reused across blocks stays in L2.
- bf16: include `<cuda_bf16.h>`; convert with `__bfloat162float`, `__bfloat1622float2`, `__floats2bfloat162_rn`, `__float2bfloat16`. Do the math in f32 and round once when storing. Fast intrinsics (`__expf`, `rsqrtf`, `__fdividef`) are fine within bf16 tolerance.

## The candidate contract (breaking any rule fails the candidate)
- Exactly one entry point, `extern "C" __global__ void <entry>(<the signature given>)`, with exactly the parameter types and order given. Any `__device__` helper functions you need are fine.
- Model dimensions are compile-time constants passed as `-D` defines named `KILN_<DIM>` (e.g. `KILN_D`, `KILN_I`, `KILN_E`, `KILN_K`); specialise on them freely (`static_assert` divisibility you rely on). The element type is `KILN_DTYPE`; write `typedef KILN_DTYPE scalar_t;`.
- The token count `T` (rows) is a run-time `int` argument: the kernel must be right for every T >= 1, including odd values such as 3, 37 and 1000. Guard every tail.
- One launch comment, exactly: `// kiln: block=<expr> grid=<expr>[,<expr>,<expr>] smem=<expr>`. `block` is threads per block (1 to 1024), `grid` the block count (x, or x,y,z), `smem` the bytes of dynamic shared memory. Expressions are integers over the shape variables (T and the dimension names without the `KILN_` prefix, e.g. D), and SMS (the SM count), with + - * / %, parentheses, ceil_div(a, b), min(a, b), max(a, b).
- Only CUDA toolkit headers (`<cuda_bf16.h>`, `<cuda_fp16.h>`, `<cuda/...>`, `<cub/...>`, `<cooperative_groups.h>`, `<mma.h>`); no host code, no printf, no malloc, no clocks or timers.
- No state kept across launches: no `__device__` or `static` mutable variables; `__shared__` and `__constant__` are fine.
- Inputs (`const` pointers) must not be modified. Every output element must be written on every launch. A non-`const` buffer the target's math reads (a recurrent state such as the short convolution's `state`) is updated in place: it is checked after the launch like an output. Outputs are checked against a float64 reference on hidden shapes with fresh random inputs (large magnitudes, negatives, ties).

## Example (a complete candidate: y[t, i] = x[t, i] * w[i] over T rows of D bf16 values)
```cuda
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;  // __nv_bfloat16 for bf16 targets
// kiln: block=256 grid=ceil_div(T*D, 256*8) smem=0
static_assert(KILN_D % 8 == 0, "16-byte vectors need D % 8 == 0");

extern "C" __global__ void scale_rows(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,
                                      scalar_t* __restrict__ y, int T) {
    const long long n_vec = (long long)T * KILN_D / 8;  // 8 bf16 per 16-byte vector
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_vec) return;  // guards the tail for every T
    uint4 xv = __ldg(reinterpret_cast<const uint4*>(x) + i);
    const uint4 wv = __ldg(reinterpret_cast<const uint4*>(w) + i % (KILN_D / 8));
    __nv_bfloat162* xh = reinterpret_cast<__nv_bfloat162*>(&xv);
    const __nv_bfloat162* wh = reinterpret_cast<const __nv_bfloat162*>(&wv);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float2 a = __bfloat1622float2(xh[k]), b = __bfloat1622float2(wh[k]);
        xh[k] = __floats2bfloat162_rn(a.x * b.x, a.y * b.y);  // f32 math, one rounding
    }
    reinterpret_cast<uint4*>(y)[i] = xv;
}
```

## Answer format
For each variant write, in this order:
### Variant N
Reasoning: <one line: what you changed and why it should be faster>
```cuda
<the complete kernel source, launch comment included>
```
Each variant must be complete and self-contained (no "same as above"), and different from the parent and from the other variants. Write nothing after the last code block."#;

/// Renders the user prompt for `req`.
pub fn user_prompt(req: &ProposalRequest) -> String {
    let t = &req.target;
    let hw = &t.hardware;
    let mut s = String::new();

    let _ = writeln!(s, "# Target: {} ({} kernel, {})", t.name, t.family, t.dtype);
    let _ = writeln!(s, "\n## What it computes\n{}", t.math.trim());
    let _ = writeln!(
        s,
        "\n## Required entry point (exactly this signature)\n{}",
        fenced("cuda", t.signature.trim())
    );
    let _ = writeln!(s, "Entry name: `{}`.", t.entry);

    let _ = writeln!(s, "\n## Dimensions");
    if t.static_dims.is_empty() {
        let _ = writeln!(s, "- Static dimensions: none.");
    } else {
        for (name, value) in &t.static_dims {
            let _ = writeln!(
                s,
                "- {name} = {value} (compile-time: `KILN_{name}`; `{name}` in the launch comment)"
            );
        }
    }
    let _ = writeln!(
        s,
        "- Run-time shape variables: {} (the kernel must be right for every value >= 1).",
        list_or_none(&t.shape_vars)
    );
    let _ = writeln!(
        s,
        "- Timed shapes: {}. Correctness is also checked on hidden shapes.",
        list_or_none(&t.timed_shapes)
    );
    let _ = writeln!(s, "- Element type: {} (`KILN_DTYPE`).", t.dtype);
    if !t.constraints.trim().is_empty() {
        let _ = writeln!(s, "\n## Constraints\n{}", t.constraints.trim());
    }

    let _ = writeln!(s, "\n## Hardware (measured)");
    let _ = writeln!(
        s,
        "- GPU: {}, {} SMs (`SMS`), {} MiB L2.",
        hw.gpu_name, hw.sm_count, hw.l2_mib
    );
    let _ = writeln!(
        s,
        "- Peak DRAM streaming bandwidth: {:.0} GB/s. Empty-kernel launch floor: {:.2} µs.",
        hw.peak_bandwidth_gbps, hw.launch_floor_us
    );

    let p = &req.parent;
    let _ = writeln!(s, "\n## Parent kernel to improve (node {})", p.node_id);
    match p.reward {
        Some(r) => {
            let _ = writeln!(
                s,
                "Reward (geometric-mean speedup over the baseline): {r:.3}."
            );
        }
        None => {
            let _ = writeln!(s, "Not yet measured.");
        }
    }
    if let Some(f) = p.sol_fraction {
        let _ = writeln!(s, "Speed-of-light fraction: {f:.2} (1.00 = moving its bytes at peak bandwidth, or the launch floor).");
    }
    if !p.per_shape.is_empty() {
        let _ = writeln!(s, "Per-shape results:");
        for line in &p.per_shape {
            let _ = writeln!(s, "- {line}");
        }
    }
    let _ = writeln!(s, "{}", fenced("cuda", &p.source));

    for (i, b) in req.best.iter().take(2).enumerate() {
        let speed = b.speedup.map_or_else(
            || "speedup unknown".to_string(),
            |x| format!("{x:.3}× the baseline"),
        );
        let _ = writeln!(
            s,
            "\n## Best kernel so far #{} ({speed})\n{}",
            i + 1,
            fenced("cuda", &b.source)
        );
    }

    if !req.recent_failures.is_empty() {
        let _ = writeln!(s, "\n## Recent failures (do not repeat these mistakes)");
        for (i, f) in req.recent_failures.iter().take(MAX_FAILURES).enumerate() {
            let _ = writeln!(
                s,
                "{}. {} failed:\n{}",
                i + 1,
                f.stage,
                fenced("text", &clip(f.reason.trim(), MAX_FAILURE_CHARS))
            );
            if !f.source_excerpt.trim().is_empty() {
                let _ = writeln!(
                    s,
                    "in this code:\n{}",
                    fenced(
                        "cuda",
                        &clip(f.source_excerpt.trim_end(), MAX_EXCERPT_CHARS)
                    )
                );
            }
        }
    }

    let n = req.count;
    let _ = writeln!(
        s,
        "\n## Task\nWrite {n} new variant{} of the parent that should run faster on every timed shape, \
         each a complete candidate in the answer format (### Variant N, Reasoning:, one ```cuda block).",
        if n == 1 { "" } else { "s" }
    );
    s
}

/// `body` in a code fence longer than any backtick run inside it, so quoted model output
/// that itself contains fences cannot end the block early.
fn fenced(lang: &str, body: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in body.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat((longest + 1).max(3));
    format!("{fence}{lang}\n{}\n{fence}", body.trim_end())
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// Cuts `s` to at most `max` characters, on a character boundary, marking the cut.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!(
            "{}\n… ({} more characters)",
            &s[..cut],
            s[cut..].chars().count()
        ),
        None => s.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kiln_search::propose::request::*;
    use std::collections::BTreeMap;

    /// A realistic request used across the proposer tests.
    pub(crate) fn sample_request() -> ProposalRequest {
        ProposalRequest {
            target: TargetBrief {
                name: "qwen3-30b-a3b/rmsnorm".into(),
                family: "rmsnorm".into(),
                math: "y[t, i] = x[t, i] * w[i] / sqrt(mean_i(x[t, i]^2) + 1e-6)".into(),
                signature: "extern \"C\" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* y, int T)".into(),
                entry: "rmsnorm".into(),
                static_dims: BTreeMap::from([("D".to_string(), 2048)]),
                shape_vars: vec!["T".into()],
                timed_shapes: vec!["T=1".into(), "T=4096".into()],
                constraints: "x, w and y are 16-byte aligned.".into(),
                dtype: "bf16".into(),
                hardware: HardwareBrief {
                    gpu_name: "NVIDIA H100 80GB HBM3".into(),
                    sm_count: 132,
                    peak_bandwidth_gbps: 3012.4,
                    launch_floor_us: 2.15,
                    l2_mib: 50,
                },
            },
            parent: ParentBrief {
                node_id: 7,
                source: "// kiln: block=1024 grid=T smem=0\nextern \"C\" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* y, int T) {}\n".into(),
                reward: Some(1.0234),
                per_shape: vec!["T=4096: 12.3 µs, 2.91 TB/s, 0.97 of speed-of-light, 1.02× baseline".into()],
                sol_fraction: Some(0.91),
            },
            best: vec![
                BestSource { source: "// BEST-ONE\n".into(), speedup: Some(1.5) },
                BestSource { source: "// BEST-TWO\n".into(), speedup: None },
                BestSource { source: "// BEST-THREE\n".into(), speedup: Some(1.1) },
            ],
            recent_failures: vec![FailureNote {
                stage: "compile".into(),
                reason: "error: identifier \"warp_sum\" is undefined".into(),
                source_excerpt: "float s = warp_sum(v);".into(),
            }],
            count: 3,
            step: 4,
            seed: 42,
        }
    }

    #[test]
    fn user_prompt_carries_the_request() {
        let req = sample_request();
        let u = user_prompt(&req);
        for needle in [
            req.target.signature.as_str(),
            req.target.math.as_str(),
            "D = 2048 (compile-time: `KILN_D`",
            "Timed shapes: T=1, T=4096",
            "3012 GB/s",
            "2.15 µs",
            "132 SMs",
            "Reward (geometric-mean speedup over the baseline): 1.023",
            "Speed-of-light fraction: 0.91",
            "T=4096: 12.3 µs, 2.91 TB/s",
            "block=1024 grid=T",
            "// BEST-ONE",
            "1.500× the baseline",
            "// BEST-TWO",
            "error: identifier \"warp_sum\" is undefined",
            "float s = warp_sum(v);",
            "Write 3 new variants",
            "x, w and y are 16-byte aligned.",
        ] {
            assert!(u.contains(needle), "missing {needle:?} in:\n{u}");
        }
        assert!(!u.contains("BEST-THREE"), "at most two best sources");
    }

    #[test]
    fn prompt_is_deterministic() {
        let req = sample_request();
        assert_eq!(Prompt::for_request(&req), Prompt::for_request(&req));
    }

    #[test]
    fn system_prompt_states_the_contract() {
        let s = system_prompt();
        for needle in [
            "extern \"C\" __global__",
            "// kiln: block=",
            "KILN_D",
            "typedef KILN_DTYPE scalar_t;",
            "T >= 1",
            "### Variant N",
            "Reasoning:",
            "```cuda",
            "sm_90",
            "132 SMs",
        ] {
            assert!(s.contains(needle), "missing {needle:?}");
        }
    }

    #[test]
    fn system_prompt_example_is_a_valid_candidate() {
        let parsed = crate::parse::parse_answer(system_prompt(), 5);
        assert_eq!(parsed.proposals.len(), 1, "{parsed:?}");
        assert!(parsed.proposals[0].source.contains("scale_rows"));
    }

    #[test]
    fn system_prompt_example_passes_the_evaluator_static_check() {
        use kiln_eval::candidate::{Candidate, Param, ParamKind, ScalarKind, TargetSignature};
        use kiln_kernels::DType;
        let parsed = crate::parse::parse_answer(system_prompt(), 5);
        let p = |name: &str, kind| Param {
            name: name.into(),
            kind,
        };
        let target = TargetSignature {
            entry: "scale_rows".into(),
            params: vec![
                p("x", ParamKind::ConstPtr(ScalarKind::Dtype)),
                p("w", ParamKind::ConstPtr(ScalarKind::Dtype)),
                p("y", ParamKind::MutPtr(ScalarKind::Dtype)),
                p("T", ParamKind::Int),
            ],
            dtype: DType::BF16,
        };
        if let Err(e) = Candidate::new(parsed.proposals[0].source.clone()).check(&target) {
            panic!("the prompt's example fails the static check: {e}");
        }
    }

    #[test]
    fn quoted_fences_get_a_longer_fence() {
        assert_eq!(fenced("cuda", "int x;\n"), "```cuda\nint x;\n```");
        assert_eq!(
            fenced("text", "see ```cuda\nx\n```"),
            "````text\nsee ```cuda\nx\n```\n````"
        );
    }

    #[test]
    fn long_failures_are_clipped() {
        let mut req = sample_request();
        req.recent_failures[0].reason = "x".repeat(5000);
        let u = user_prompt(&req);
        assert!(u.contains("more characters"));
        assert!(u.len() < 9000);
    }
}
