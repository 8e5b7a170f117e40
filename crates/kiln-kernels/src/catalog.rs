//! The registry of catalog kernels: one [`OpSpec`] per op, and the
//! [`KernelBuild`] (source + NVRTC defines) for a concrete configuration.
//!
//! The NVRTC call itself lives in `kiln-cuda`; this module only produces its inputs.

use crate::launch::LaunchLine;

/// The ops of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Row RMSNorm (also per-head qk-norm).
    RmsNorm,
    /// Residual add fused with RMSNorm.
    AddRmsNorm,
    /// SwiGLU over separate gate and up tensors.
    Swiglu,
    /// SwiGLU over a packed `[gate | up]` tensor.
    SwigluPacked,
    /// Softmax router with top-k (Qwen3).
    SoftmaxTopk,
    /// Sigmoid router with bias-corrected grouped top-k (GLM, LFM2, DeepSeek-V3).
    SigmoidTopk,
    /// Weighted sum of expert outputs (+ shared expert).
    MoeCombine,
    /// One TTT-Linear decode step.
    TttLinearDecode,
    /// Rotary position embedding on q and k.
    Rope,
    /// Gathered expert gate/up mat-vec with fused SwiGLU (decode MoE).
    MoeExpertSwiglu,
    /// Gathered expert down projection fused with the weighted combine (decode MoE).
    MoeExpertDown,
    /// Causal GQA attention of new query tokens over a KV cache.
    DecodeAttention,
    /// LFM2's gated short convolution with its rolling state.
    ShortConv,
    /// Per-head RMSNorm of q and k, rotate-half RoPE, k and v written into the KV cache.
    QkNormRopeCache,
    /// RoPE on q and k of a fused qkv row, k and v written into the KV cache (no qk-norm).
    RopeCache,
}

/// The fixed facts of one op: its name, entry point, source and signature.
#[derive(Debug, Clone, Copy)]
pub struct OpSpec {
    /// The op.
    pub op: Op,
    /// Short name (also the `.cu` file stem).
    pub name: &'static str,
    /// The `extern "C" __global__` entry point.
    pub entry: &'static str,
    /// The catalog source.
    pub source: &'static str,
    /// The kernel's parameter list, as a candidate must declare it.
    pub signature: &'static str,
    /// Static shape variables the launch line may use besides `T` and `SMS`.
    pub static_vars: &'static [&'static str],
}

impl OpSpec {
    /// The source's parsed launch line.
    pub fn launch_line(&self) -> Result<LaunchLine, crate::launch::LaunchError> {
        LaunchLine::parse_source(self.source)
    }
}

/// Every catalog op, in a fixed order.
pub const CATALOG: [OpSpec; 15] = [
    OpSpec {
        op: Op::RmsNorm,
        name: "rmsnorm",
        entry: "rmsnorm",
        source: include_str!("../kernels/rmsnorm.cu"),
        signature: "const scalar_t* x, const scalar_t* w, scalar_t* out, int T",
        static_vars: &["D"],
    },
    OpSpec {
        op: Op::AddRmsNorm,
        name: "add_rmsnorm",
        entry: "add_rmsnorm",
        source: include_str!("../kernels/add_rmsnorm.cu"),
        signature: "const scalar_t* x, const scalar_t* residual, const scalar_t* w, \
                    scalar_t* normed, scalar_t* new_residual, int T",
        static_vars: &["D"],
    },
    OpSpec {
        op: Op::Swiglu,
        name: "swiglu",
        entry: "swiglu",
        source: include_str!("../kernels/swiglu.cu"),
        signature: "const scalar_t* gate, const scalar_t* up, scalar_t* out, int T",
        static_vars: &["I"],
    },
    OpSpec {
        op: Op::SwigluPacked,
        name: "swiglu_packed",
        entry: "swiglu_packed",
        source: include_str!("../kernels/swiglu_packed.cu"),
        signature: "const scalar_t* gate_up, scalar_t* out, int T",
        static_vars: &["I"],
    },
    OpSpec {
        op: Op::SoftmaxTopk,
        name: "softmax_topk",
        entry: "softmax_topk",
        source: include_str!("../kernels/softmax_topk.cu"),
        signature: "const scalar_t* logits, float* weights, unsigned int* indices, int T",
        static_vars: &["E", "K"],
    },
    OpSpec {
        op: Op::SigmoidTopk,
        name: "sigmoid_topk",
        entry: "sigmoid_topk",
        source: include_str!("../kernels/sigmoid_topk.cu"),
        signature: "const scalar_t* logits, const float* bias, float* weights, \
                    unsigned int* indices, int T",
        static_vars: &["E", "K", "N_GROUP", "TOPK_GROUP"],
    },
    OpSpec {
        op: Op::MoeCombine,
        name: "moe_combine",
        entry: "moe_combine",
        source: include_str!("../kernels/moe_combine.cu"),
        signature: "const scalar_t* expert_out, const float* weights, const scalar_t* shared, \
                    scalar_t* out, int T",
        static_vars: &["D", "K"],
    },
    OpSpec {
        op: Op::TttLinearDecode,
        name: "ttt_linear_decode",
        entry: "ttt_linear_decode",
        source: include_str!("../kernels/ttt_linear_decode.cu"),
        signature: "const scalar_t* xq, const scalar_t* xk, const scalar_t* xv, const float* W, \
                    const float* b, const float* W_grad, const float* b_grad, \
                    const scalar_t* ln_w, const scalar_t* ln_b, const float* lr, \
                    const float* token_idx, const int* last_in_mb, scalar_t* out, float* W_out, \
                    float* b_out, float* W_grad_out, float* b_grad_out, int T",
        static_vars: &["F", "H"],
    },
    OpSpec {
        op: Op::Rope,
        name: "rope",
        entry: "rope",
        source: include_str!("../kernels/rope.cu"),
        signature: "const scalar_t* q, const scalar_t* k, const int* positions, \
                    scalar_t* q_out, scalar_t* k_out, int T",
        static_vars: &["QH", "KH", "HEAD_DIM", "ROT_DIM", "ROT_OFFSET"],
    },
    OpSpec {
        op: Op::MoeExpertSwiglu,
        name: "moe_expert_swiglu",
        entry: "moe_expert_swiglu",
        source: include_str!("../kernels/moe_expert_swiglu.cu"),
        signature: "const scalar_t* x, const scalar_t* w_gate, const scalar_t* w_up, \
                    const unsigned int* indices, scalar_t* h, int T",
        static_vars: &["H", "I", "E", "K"],
    },
    OpSpec {
        op: Op::MoeExpertDown,
        name: "moe_expert_down",
        entry: "moe_expert_down",
        source: include_str!("../kernels/moe_expert_down.cu"),
        signature: "const scalar_t* h, const scalar_t* w_down, const unsigned int* indices, \
                    const float* weights, const scalar_t* shared, scalar_t* out, int T",
        static_vars: &["H", "I", "E", "K"],
    },
    OpSpec {
        op: Op::DecodeAttention,
        name: "decode_attention",
        entry: "decode_attention",
        source: include_str!("../kernels/decode_attention.cu"),
        signature: "const scalar_t* q, const scalar_t* k_cache, const scalar_t* v_cache, \
                    scalar_t* out, int T, int past",
        static_vars: &["QH", "KVH", "DQK", "DV", "S_MAX"],
    },
    OpSpec {
        op: Op::ShortConv,
        name: "short_conv",
        entry: "short_conv",
        source: include_str!("../kernels/short_conv.cu"),
        signature: "const scalar_t* bcx, const scalar_t* w, scalar_t* state, scalar_t* out, int T",
        static_vars: &["D", "L"],
    },
    OpSpec {
        op: Op::QkNormRopeCache,
        name: "qk_norm_rope_cache",
        entry: "qk_norm_rope_cache",
        source: include_str!("../kernels/qk_norm_rope_cache.cu"),
        signature: "const scalar_t* qkv, const scalar_t* q_w, const scalar_t* k_w, \
                    const scalar_t* cos_table, const scalar_t* sin_table, const int* positions, \
                    scalar_t* q_out, scalar_t* k_cache, scalar_t* v_cache, int T, int s_max",
        static_vars: &["QH", "KVH", "D"],
    },
    OpSpec {
        op: Op::RopeCache,
        name: "rope_cache",
        entry: "rope_cache",
        source: include_str!("../kernels/rope_cache.cu"),
        signature: "const scalar_t* qkv, const int* positions, scalar_t* q_out, \
                    scalar_t* k_cache, scalar_t* v_cache, int T, int s_max",
        static_vars: &["QH", "KVH", "HEAD_DIM", "ROT_DIM", "ROT_OFFSET"],
    },
];

/// The spec of one op.
pub fn spec(op: Op) -> &'static OpSpec {
    // CATALOG is ordered like `Op`, so the discriminant is the index.
    &CATALOG[op as usize]
}

/// Looks an op up by its short name.
pub fn by_name(name: &str) -> Option<&'static OpSpec> {
    CATALOG.iter().find(|s| s.name == name)
}

/// Everything NVRTC needs to compile one configured kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBuild {
    /// A program name that identifies the configuration (`rmsnorm_bf16_D2048`).
    pub name: String,
    /// The entry point.
    pub entry: String,
    /// The CUDA source.
    pub source: String,
    /// `-D` defines, `KILN_DTYPE` first.
    pub defines: Vec<(String, String)>,
}

impl KernelBuild {
    /// The `kiln-cuda` compile request for this build (sm_90 default arch).
    pub fn to_request(&self) -> kiln_cuda::CompileRequest {
        let mut req = kiln_cuda::CompileRequest::new(self.name.clone(), self.source.clone());
        req.defines = self.defines.clone();
        req
    }
}

/// Formats a float define as a C `float` literal that parses back to the same f32.
pub fn float_literal(v: f64) -> String {
    let f = v as f32;
    if f.is_finite() {
        format!("{f:e}f")
    } else {
        // Never produced by validated configs; keeps the source compilable and obviously wrong.
        "__int_as_float(0x7fc00000)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn catalog_is_ordered_like_op() {
        for (i, s) in CATALOG.iter().enumerate() {
            assert_eq!(s.op as usize, i, "{}", s.name);
            assert_eq!(spec(s.op).name, s.name);
            assert_eq!(by_name(s.name).map(|x| x.op), Some(s.op));
        }
    }

    #[test]
    fn every_source_has_one_entry_and_a_valid_launch_line() {
        for s in &CATALOG {
            let line = s
                .launch_line()
                .unwrap_or_else(|e| panic!("{}: {e}", s.name));
            let decl = "extern \"C\" __global__ void";
            assert_eq!(s.source.matches(decl).count(), 1, "{}", s.name);
            assert!(
                s.source.contains(&format!(" {}(", s.entry)),
                "{}: entry point not found",
                s.name
            );
            let mut allowed: Vec<&str> = vec!["T", "SMS"];
            allowed.extend(s.static_vars);
            for v in line.variables() {
                assert!(
                    allowed.contains(&v.as_str()),
                    "{}: launch line uses {v}",
                    s.name
                );
            }
            // It evaluates at T=1 for plausible dims.
            // (Head counts 8: 64 query and 2 × 64 KV heads of 64 would be a
            // block past 1024 threads for qk_norm_rope_cache.)
            let mut vars: BTreeMap<String, i64> = allowed
                .iter()
                .map(|v| (v.to_string(), if v.ends_with('H') { 8 } else { 64 }))
                .collect();
            vars.insert("T".into(), 1);
            line.evaluate(&vars)
                .unwrap_or_else(|e| panic!("{}: {e}", s.name));
            // Only CUDA toolkit headers.
            for l in s
                .source
                .lines()
                .filter(|l| l.trim_start().starts_with("#include"))
            {
                assert!(
                    l.contains("<cuda_bf16.h>") || l.contains("<cuda_fp16.h>"),
                    "{}: {l}",
                    s.name
                );
            }
            assert!(
                s.source.starts_with("// "),
                "{}: starts with its header comment",
                s.name
            );
        }
    }

    #[test]
    fn float_literals_round_trip() {
        assert_eq!(float_literal(1e-6), "1e-6f");
        assert_eq!(float_literal(1.8), "1.8e0f");
        assert_eq!(float_literal(1e-20), "1e-20f");
        assert_eq!(float_literal(1e6), "1e6f");
    }
}
