//! The knob space of each kernel family: which knobs exist, which values they
//! take, which combinations are valid for a target's static dims, the launch
//! line of a configuration, and the rendering of a complete CUDA source.
//!
//! A rendered source carries its knobs in one header comment,
//!
//! ```text
//! // kiln-offline: family=rmsnorm tpr=32 rpb=4 vec=8 keep=1 pers=0 ldh=ldg sth=plain rs=1 minb=0
//! ```
//!
//! so a child can be derived from any rendered parent. The knobs become
//! `#define KO_<NAME> <value>` lines in front of the family's CUDA template
//! (`templates/*.cu`); the template's `static_assert`s restate every
//! assumption the generator's [`Family::check`] enforces, so a knob
//! combination that slipped through fails to compile instead of computing
//! garbage.

use std::collections::BTreeMap;
use std::fmt;

/// The header marker of a rendered source (a plain comment: the dedup normaliser drops it).
pub const KNOB_MARKER: &str = "// kiln-offline:";

const PRELUDE: &str = include_str!("templates/prelude.cu");
const T_SWIGLU: &str = include_str!("templates/swiglu.cu");
const T_MOE: &str = include_str!("templates/moe_combine.cu");
const T_RMSNORM: &str = include_str!("templates/rmsnorm.cu");
const T_TOPK: &str = include_str!("templates/topk.cu");
const T_TTT: &str = include_str!("templates/ttt.cu");
const T_EXPERT_SWIGLU: &str = include_str!("templates/moe_expert_swiglu.cu");
const T_EXPERT_DOWN: &str = include_str!("templates/moe_expert_down.cu");
const T_SHORT_CONV: &str = include_str!("templates/short_conv.cu");
const T_DECODE_ATTENTION: &str = include_str!("templates/decode_attention.cu");
const T_QK_NORM_ROPE_CACHE: &str = include_str!("templates/qk_norm_rope_cache.cu");

/// Why the generator cannot work on a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfflineError {
    /// The family has no offline templates.
    #[error("the offline generator has no templates for family `{0}` (known: swiglu, rmsnorm, add_rmsnorm, moe_combine, softmax_topk, sigmoid_topk, ttt_linear_decode, moe_expert_swiglu, moe_expert_down, short_conv, decode_attention, qk_norm_rope_cache)")]
    UnknownFamily(String),
    /// A static dim the family's templates need is missing or out of range.
    #[error("offline {family}: static dim `{dim}` is {problem}")]
    BadDim {
        /// The family.
        family: &'static str,
        /// The dim (`D`, `I`, …).
        dim: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The target is outside what the templates cover.
    #[error("offline {family}: {reason}")]
    Unsupported {
        /// The family.
        family: &'static str,
        /// Why.
        reason: String,
    },
}

/// A kernel family the offline generator can rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `swiglu(gate, up, out, T)` over `[T, I]`.
    Swiglu,
    /// `rmsnorm(x, w, out, T)` over `[T, D]`.
    RmsNorm,
    /// `add_rmsnorm(x, residual, w, normed, new_residual, T)`: the residual add, then rmsnorm.
    AddRmsNorm,
    /// `moe_combine(expert_out, weights, shared, out, T)`.
    MoeCombine,
    /// `softmax_topk(logits, weights, indices, T)`.
    SoftmaxTopk,
    /// `sigmoid_topk(logits, bias, weights, indices, T)`.
    SigmoidTopk,
    /// `ttt_linear_decode(…)`: one TTT-Linear decode step per row.
    TttLinearDecode,
    /// `moe_expert_swiglu(x, w_gate, w_up, indices, h, T)`: gathered gate/up mat-vec + SwiGLU.
    MoeExpertSwiglu,
    /// `moe_expert_down(h, w_down, indices, weights, shared, out, T)`: gathered down + combine.
    MoeExpertDown,
    /// `short_conv(bcx, w, state, out, T)`: LFM2's gated short convolution, state updated in place.
    ShortConv,
    /// `decode_attention(q, k_cache, v_cache, out, T, past)`: causal GQA attention of T new tokens over a KV cache.
    DecodeAttention,
    /// `qk_norm_rope_cache(qkv, q_w, k_w, cos, sin, positions, q_out, k_cache, v_cache, T, S_MAX)`:
    /// per-head RMSNorm of q and k, rotate-half RoPE, k and v written into the KV caches.
    QkNormRopeCache,
}

impl Family {
    /// Every family, in a fixed order.
    pub const ALL: [Family; 12] = [
        Family::Swiglu,
        Family::RmsNorm,
        Family::AddRmsNorm,
        Family::MoeCombine,
        Family::SoftmaxTopk,
        Family::SigmoidTopk,
        Family::TttLinearDecode,
        Family::MoeExpertSwiglu,
        Family::MoeExpertDown,
        Family::ShortConv,
        Family::DecodeAttention,
        Family::QkNormRopeCache,
    ];

    /// The family's name (the catalog op's short name).
    pub fn name(self) -> &'static str {
        match self {
            Family::Swiglu => "swiglu",
            Family::RmsNorm => "rmsnorm",
            Family::AddRmsNorm => "add_rmsnorm",
            Family::MoeCombine => "moe_combine",
            Family::SoftmaxTopk => "softmax_topk",
            Family::SigmoidTopk => "sigmoid_topk",
            Family::TttLinearDecode => "ttt_linear_decode",
            Family::MoeExpertSwiglu => "moe_expert_swiglu",
            Family::MoeExpertDown => "moe_expert_down",
            Family::ShortConv => "short_conv",
            Family::DecodeAttention => "decode_attention",
            Family::QkNormRopeCache => "qk_norm_rope_cache",
        }
    }

    /// Looks a family up by name.
    pub fn from_name(name: &str) -> Result<Family, OfflineError> {
        Family::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| OfflineError::UnknownFamily(name.to_string()))
    }

    /// The knobs of this family, in header order.
    pub fn specs(self) -> &'static [KnobSpec] {
        match self {
            Family::Swiglu => SWIGLU,
            Family::RmsNorm | Family::AddRmsNorm => RMSNORM,
            Family::MoeCombine => MOE,
            Family::SoftmaxTopk => SOFTMAX,
            Family::SigmoidTopk => SIGMOID,
            Family::TttLinearDecode => TTT,
            Family::MoeExpertSwiglu => EXPERT_SWIGLU,
            Family::MoeExpertDown => EXPERT_DOWN,
            Family::ShortConv => SHORT_CONV,
            Family::DecodeAttention => DECODE_ATTENTION,
            Family::QkNormRopeCache => QK_NORM_ROPE_CACHE,
        }
    }

    /// The naive configuration (what a seed or a foreign source maps to).
    pub fn base(self) -> Knobs {
        Knobs(self.specs().iter().map(|s| (s.name, s.base)).collect())
    }

    /// The naive configuration for these dims: [`Family::base`], repaired where the dims need it
    /// (e.g. more lanes per row when E > 32 experts do not fit one thread's registers).
    pub fn naive(self, d: &Dims) -> Knobs {
        let base = self.base();
        if self.check(&base, d).is_ok() {
            return base;
        }
        self.apply(&base, &[], d).unwrap_or(base)
    }

    fn spec(self, name: &str) -> Option<&'static KnobSpec> {
        self.specs().iter().find(|s| s.name == name)
    }

    /// Knobs whose values are changed to repair an invalid rewrite, in order of preference.
    fn repair_order(self) -> &'static [&'static str] {
        match self {
            Family::Swiglu => &["upt", "minb", "vec"],
            Family::MoeCombine => &["upt", "map", "minb", "vec", "block"],
            // w in registers needs the row there too and fits fewer elements: it goes first.
            Family::RmsNorm | Family::AddRmsNorm => &["rpb", "wpre", "keep", "minb", "vec", "tpr"],
            Family::SoftmaxTopk | Family::SigmoidTopk => &["rpb", "lay", "minb", "tpr"],
            Family::TttLinearDecode => &["pre", "cpt", "ks", "minb"],
            Family::MoeExpertSwiglu => &["unr", "rpw", "xs", "minb", "vec", "wpb"],
            Family::MoeExpertDown => &["unr", "rpw", "hs", "flat", "minb", "vec", "wpb"],
            Family::ShortConv => &["pf", "minb", "block", "vec"],
            // The row split and q's home follow the vector width and lanes; those two come last.
            Family::DecodeAttention => &["vsplit", "kif", "qs", "minb", "lpk", "vec", "block"],
            // Heads per block follow the lanes per head (the vector width), so they come first.
            Family::QkNormRopeCache => &["hpb", "minb", "vec"],
        }
    }

    /// Checks a configuration against the template's assumptions for these dims.
    pub fn check(self, k: &Knobs, d: &Dims) -> Result<(), String> {
        for s in self.specs() {
            let v = k.get(s.name);
            if !s.values.contains(&v) {
                return Err(format!("{}={v} is not one of {:?}", s.name, s.values));
            }
        }
        let block = self.block(k, d);
        if !(32..=1024).contains(&block) || block % 32 != 0 {
            return Err(format!(
                "block {block} is not a multiple of 32 in 32..=1024"
            ));
        }
        let minb = k.get("minb");
        if minb * block > 2048 {
            return Err(format!(
                "{minb} blocks of {block} exceed 2048 threads per SM"
            ));
        }
        let ensure = |ok: bool, why: &str| if ok { Ok(()) } else { Err(why.to_string()) };
        match self {
            Family::Swiglu => {
                ensure(d.i % k.get("vec") == 0, "I must be a multiple of vec")?;
                ensure(
                    k.get("vec") * k.get("upt") <= 32,
                    "at most 32 elements per thread",
                )
            }
            Family::MoeCombine => {
                let (vec, upt) = (k.get("vec"), k.get("upt"));
                ensure(d.d % vec == 0, "D must be a multiple of vec")?;
                ensure(
                    upt * d.k * vec <= 128,
                    "at most 128 loaded elements per thread",
                )?;
                ensure(
                    k.get("map") == 0 || block * upt * vec <= d.d,
                    "a row-blocked block must not exceed a row",
                )
            }
            Family::RmsNorm | Family::AddRmsNorm => {
                let (tpr, vec) = (k.get("tpr"), k.get("vec"));
                ensure(d.d % (tpr * vec) == 0, "D must be a multiple of tpr*vec")?;
                ensure(
                    if tpr <= 32 {
                        32 % tpr == 0
                    } else {
                        tpr % 32 == 0
                    },
                    "a row is a lane segment or whole warps",
                )?;
                let nv = d.d / (tpr * vec);
                ensure(
                    k.get("keep") == 0 || (nv <= 32 && d.d / tpr <= 128),
                    "keeping the row in registers needs <= 128 elements and <= 32 vectors per thread",
                )?;
                ensure(
                    k.get("wpre") == 0 || (k.get("keep") == 1 && d.d / tpr <= 64),
                    "w loaded before the reduction sits beside the kept row: <= 64 elements of each per thread",
                )
            }
            Family::SoftmaxTopk | Family::SigmoidTopk => {
                let tpr = k.get("tpr");
                let epl = (d.e + tpr - 1) / tpr;
                ensure(tpr <= d.e.max(1), "more lanes than experts")?;
                ensure(epl <= 32, "at most 32 experts per lane")?;
                ensure(
                    k.get("lay") == 0 || d.e % tpr == 0,
                    "the blocked layout needs E % tpr == 0",
                )
            }
            Family::TttLinearDecode => {
                let (ks, cpt) = (k.get("ks"), k.get("cpt"));
                ensure(d.f % ks == 0 && d.f % cpt == 0, "ks and cpt must divide F")?;
                ensure(
                    (d.f / ks) * cpt * (1 + k.get("pre")) <= 128,
                    "at most 128 state registers per thread",
                )
            }
            Family::MoeExpertSwiglu | Family::MoeExpertDown => {
                let (vec, unr, rpw) = (k.get("vec"), k.get("unr"), k.get("rpw"));
                // The dot products run along H (gate/up rows) or I (down rows).
                let (len, staged, what) = if self == Family::MoeExpertSwiglu {
                    (d.h, k.get("xs") * d.h, "x[t]")
                } else {
                    (d.i, k.get("hs") * d.k * d.i, "h[t]")
                };
                ensure(len % vec == 0, "the row length must be a multiple of vec")?;
                // Gate and up double the swiglu family's loads; both stay within 128 elements.
                let per = if self == Family::MoeExpertSwiglu {
                    2
                } else {
                    1
                };
                ensure(
                    per * unr * rpw * vec <= 128,
                    "at most 128 weight elements in flight per lane",
                )?;
                ensure(
                    staged * 4 <= 48 * 1024,
                    &format!("the staged {what} must fit 48 KiB in f32"),
                )?;
                ensure(
                    self != Family::MoeExpertDown || k.get("flat") == 0 || d.k * rpw <= 32,
                    "a flat stream keeps K * rpw partial sums per lane: at most 32",
                )
            }
            Family::ShortConv => {
                let vec = k.get("vec");
                // Channel d0 of a vector is a multiple of vec, so every access (rows of bcx,
                // state and out, the vec*L weights) is aligned to the vector width.
                ensure(
                    d.d % vec == 0,
                    "D must be a multiple of vec (aligned vector accesses)",
                )?;
                ensure(
                    k.get("pf") * vec <= 32,
                    "at most 32 prefetched channel-rows per thread",
                )?;
                // A warp with no channel at all only costs a launch slot.
                ensure(
                    (block - 32) * vec < d.d,
                    "every warp of a block must own a channel",
                )
            }
            Family::DecodeAttention => {
                let (lpk, vec, vsplit) = (k.get("lpk"), k.get("vec"), k.get("vsplit"));
                // Chunks start at multiples of vec inside a row: aligned vector loads.
                ensure(
                    d.dqk % vec == 0 && d.dv % vec == 0,
                    "DQK and DV must be multiples of vec",
                )?;
                // A group stays inside a warp (full-mask shuffles) and no lane is idle all pass.
                ensure(
                    32 % lpk == 0 && lpk * vec <= d.dqk,
                    "lanes per key must divide 32 and lpk*vec must not exceed DQK",
                )?;
                ensure(
                    k.get("qs") != 2 || attn_qpl(k, d) * vec <= 64,
                    "q in registers holds at most 64 elements per lane",
                )?;
                // A split beyond one item per thread would only serialise the row groups.
                ensure(
                    vsplit == 1 || vsplit * (d.dv / vec) <= block,
                    "vsplit*DV/vec must not exceed the block",
                )?;
                let smem = attn_smem_bytes(k, d);
                ensure(
                    smem <= ATTN_SMEM_LIMIT,
                    &format!(
                        "{smem} bytes of shared memory exceed {ATTN_SMEM_LIMIT} at S_MAX = {}",
                        d.s_max
                    ),
                )
            }
            Family::QkNormRopeCache => {
                let lph = qk_lanes_per_head(k, d);
                // A head's lanes are one shuffle group inside a warp; two lanes at least, so the
                // rotate-half partner is always another lane.
                ensure(
                    d.d % k.get("vec") == 0 && (2..=32).contains(&lph) && lph.count_ones() == 1,
                    "D/vec lanes per head must be a power of two in 2..=32",
                )?;
                ensure(
                    k.get("hpb") == 0 || k.get("hpb") <= d.qh + 2 * d.kvh,
                    "at most every head of a token per block",
                )
            }
        }
    }

    /// Threads per block of a configuration.
    pub fn block(self, k: &Knobs, d: &Dims) -> i64 {
        match self {
            Family::Swiglu | Family::MoeCombine | Family::ShortConv | Family::DecodeAttention => {
                k.get("block")
            }
            Family::RmsNorm | Family::AddRmsNorm | Family::SoftmaxTopk | Family::SigmoidTopk => {
                k.get("tpr") * k.get("rpb")
            }
            Family::TttLinearDecode => k.get("ks") * d.f / k.get("cpt").max(1),
            Family::MoeExpertSwiglu | Family::MoeExpertDown => 32 * k.get("wpb"),
            // The block's heads, rounded up to whole warps.
            Family::QkNormRopeCache => {
                (qk_heads_per_block(k, d) * qk_lanes_per_head(k, d) + 31) / 32 * 32
            }
        }
    }

    /// The text after `// kiln:`.
    pub fn launch(self, k: &Knobs, d: &Dims) -> String {
        let block = self.block(k, d);
        let cap = |g: String| match k.get("pers") {
            0 => g,
            p => format!("min({g}, SMS*{p})"),
        };
        let grid = match self {
            Family::Swiglu => cap(format!(
                "ceil_div(T*I, {})",
                block * k.get("upt") * k.get("vec")
            )),
            Family::MoeCombine => {
                let per = block * k.get("upt") * k.get("vec");
                if k.get("map") == 0 {
                    cap(format!("ceil_div(T*D, {per})"))
                } else {
                    cap(format!("T*ceil_div(D, {per})"))
                }
            }
            Family::RmsNorm | Family::AddRmsNorm | Family::SoftmaxTopk | Family::SigmoidTopk => {
                cap(format!("ceil_div(T, {})", k.get("rpb")))
            }
            Family::TttLinearDecode => "T".to_string(),
            // A block per (slot, wpb·rpw rows of h) or (token, wpb·rpw output rows).
            Family::MoeExpertSwiglu => {
                format!("T*K*ceil_div(I, {})", k.get("wpb") * k.get("rpw"))
            }
            Family::MoeExpertDown => format!("T*ceil_div(H, {})", k.get("wpb") * k.get("rpw")),
            // Parallel over channels only: a channel's rows are serial through the state.
            Family::ShortConv => format!("ceil_div(D, {})", block * k.get("vec")),
            // One block per (token, query head), as the seed.
            Family::DecodeAttention => "T*QH".to_string(),
            // One block per (token, group of heads).
            Family::QkNormRopeCache => match qk_blocks_per_token(k, d) {
                1 => "T".to_string(),
                g => format!("T*{g}"),
            },
        };
        let block_expr = match self {
            Family::TttLinearDecode => format!("{}*F/{}", k.get("ks"), k.get("cpt")),
            _ => block.to_string(),
        };
        let smem = match self {
            // The S_MAX f32 scores, then the row groups' partial sums (the template's dynamic part).
            Family::DecodeAttention => match k.get("vsplit") {
                1 => "S_MAX*4".to_string(),
                v => format!("(S_MAX+{v}*DV)*4"),
            },
            _ => "0".to_string(),
        };
        format!("block={block_expr} grid={grid} smem={smem}")
    }

    /// Renders the complete candidate source of a configuration.
    pub fn render(self, k: &Knobs, d: &Dims) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "// {} — offline-generated variant.\n",
            self.name()
        ));
        s.push_str(&format!("{KNOB_MARKER} {}\n", k.header(self)));
        for line in self.describe(k, d) {
            s.push_str(&format!("// {line}\n"));
        }
        s.push_str(&format!("// kiln: {}\n", self.launch(k, d)));
        for spec in self.specs() {
            s.push_str(&format!(
                "#define KO_{} {}\n",
                spec.name.to_uppercase(),
                k.get(spec.name)
            ));
        }
        s.push_str(&format!("#define KO_BLOCK {}\n", self.block(k, d)));
        let body = match self {
            Family::Swiglu => T_SWIGLU.to_string(),
            Family::MoeCombine => T_MOE.to_string(),
            Family::RmsNorm | Family::AddRmsNorm => {
                let nv = d.d / (k.get("tpr") * k.get("vec")).max(1);
                let unroll = if nv <= 32 {
                    "#pragma unroll"
                } else {
                    "#pragma unroll 4"
                };
                let add = self == Family::AddRmsNorm;
                s.push_str(&format!("#define KO_ADD {}\n", i64::from(add)));
                // The entry is spelled out (not chosen by #if) so static checks see exactly one.
                let entry = if add {
                    "extern \"C\" __global__ void KO_BOUNDS add_rmsnorm(const scalar_t* __restrict__ x,\n\
                     \x20                                                const scalar_t* __restrict__ residual,\n\
                     \x20                                                const scalar_t* __restrict__ w,\n\
                     \x20                                                scalar_t* __restrict__ out,\n\
                     \x20                                                scalar_t* __restrict__ new_residual, int T)"
                } else {
                    "extern \"C\" __global__ void KO_BOUNDS rmsnorm(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w,\n\
                     \x20                                            scalar_t* __restrict__ out, int T)"
                };
                T_RMSNORM
                    .replace("@UNROLL_NV@", unroll)
                    .replace("@ENTRY@", entry)
            }
            Family::SoftmaxTopk | Family::SigmoidTopk => {
                s.push_str(&format!(
                    "#define KO_SIGMOID {}\n",
                    i64::from(self == Family::SigmoidTopk)
                ));
                if self == Family::SigmoidTopk {
                    s.push_str("#define KO_ALGO 0\n");
                }
                if k.get("lay") == 1 {
                    s.push_str(&format!("#define KO_VEC {}\n", topk_vec(k, d)));
                }
                // The entry is spelled out (not chosen by #if) so static checks see exactly one.
                let entry = if self == Family::SigmoidTopk {
                    "extern \"C\" __global__ void KO_BOUNDS sigmoid_topk(const scalar_t* __restrict__ logits,\n\
                     \x20                                                 const float* __restrict__ bias,\n\
                     \x20                                                 float* __restrict__ weights,\n\
                     \x20                                                 unsigned int* __restrict__ indices, int T)"
                } else {
                    "extern \"C\" __global__ void KO_BOUNDS softmax_topk(const scalar_t* __restrict__ logits,\n\
                     \x20                                                 float* __restrict__ weights,\n\
                     \x20                                                 unsigned int* __restrict__ indices, int T)"
                };
                T_TOPK.replace("@ENTRY@", entry)
            }
            Family::TttLinearDecode => T_TTT.to_string(),
            Family::MoeExpertSwiglu => T_EXPERT_SWIGLU.to_string(),
            Family::MoeExpertDown => T_EXPERT_DOWN.to_string(),
            Family::ShortConv => {
                let unroll = if k.get("unr") == 1 {
                    "#pragma unroll\n"
                } else {
                    ""
                };
                // The entry is spelled out (not chosen by #if) so static checks see exactly one.
                let entry = if k.get("res") == 1 {
                    "extern \"C\" __global__ void KO_BOUNDS short_conv(const scalar_t* __restrict__ bcx,\n\
                     \x20                                               const scalar_t* __restrict__ w,\n\
                     \x20                                               scalar_t* __restrict__ state,\n\
                     \x20                                               scalar_t* __restrict__ out, int T)"
                } else {
                    "extern \"C\" __global__ void KO_BOUNDS short_conv(const scalar_t* bcx, const scalar_t* w,\n\
                     \x20                                               scalar_t* state, scalar_t* out, int T)"
                };
                T_SHORT_CONV
                    .replace("@UNROLL_L@\n", unroll)
                    .replace("@ENTRY@", entry)
            }
            Family::DecodeAttention => {
                T_DECODE_ATTENTION.replace("@UNROLL_QK@", attn_qk_unroll(k, d))
            }
            Family::QkNormRopeCache => T_QK_NORM_ROPE_CACHE.to_string(),
        };
        s.push_str(PRELUDE);
        s.push('\n');
        s.push_str(&body);
        s
    }

    /// A few lines on the design, for the header comment.
    fn describe(self, k: &Knobs, d: &Dims) -> Vec<String> {
        let hint = |n: &str| k.label(self, n);
        let grid = if k.get("pers") > 0 {
            format!(
                "persistent grid of at most {}·SMS blocks (grid-stride loop)",
                k.get("pers")
            )
        } else {
            "one-shot grid".to_string()
        };
        match self {
            Family::Swiglu | Family::MoeCombine => vec![
                format!(
                    "Each thread moves {} vector(s) of {} elements ({} layout), {} threads per block, {grid}.",
                    k.get("upt"),
                    k.get("vec"),
                    hint("lay"),
                    k.get("block")
                ),
                format!("Loads: {}; stores: {}.", hint("ldh"), hint("sth")),
            ],
            Family::RmsNorm | Family::AddRmsNorm => vec![
                format!(
                    "{} thread(s) per row, {} rows per block, {}-element vectors, row {} between the passes, w loaded {}, {grid}.",
                    k.get("tpr"),
                    k.get("rpb"),
                    k.get("vec"),
                    if k.get("keep") == 1 { "kept in registers" } else { "re-read" },
                    if k.get("wpre") == 1 { "with x before the reduction" } else { "after the reduction" }
                ),
                format!("x loads: {}; stores: {}; D = {}.", hint("ldh"), hint("sth"), d.d),
            ],
            Family::SoftmaxTopk | Family::SigmoidTopk => vec![format!(
                "{} lane(s) per row, {} rows per block, {} expert layout, top-k by {}, {grid}.",
                k.get("tpr"),
                k.get("rpb"),
                hint("lay"),
                hint("sel")
            )],
            Family::TttLinearDecode => vec![format!(
                "One block of {} threads per row: k-split {}, {} column(s) per thread; W loads {}, W stores {}.",
                self.block(k, d),
                k.get("ks"),
                k.get("cpt"),
                hint("wh"),
                hint("sh")
            )],
            Family::MoeExpertSwiglu | Family::MoeExpertDown => {
                let (rows, staged, staged_what) = if self == Family::MoeExpertSwiglu {
                    ("gate/up rows", k.get("xs"), "x[t]")
                } else {
                    ("down rows", k.get("hs"), "h[t]")
                };
                vec![
                    format!(
                        "{} {rows} per warp, {} warps per block, {}-element vectors, {} vector(s) {} in flight per lane.",
                        k.get("rpw"),
                        k.get("wpb"),
                        k.get("vec"),
                        k.get("unr"),
                        if self == Family::MoeExpertDown && k.get("flat") == 1 {
                            "of every row, across the K slots,"
                        } else {
                            "per row"
                        }
                    ),
                    format!(
                        "Weight loads: {}; {staged_what} {}; H = {}, I = {}, K = {}.",
                        hint("ldh"),
                        if staged == 1 { "staged in shared memory" } else { "read through L1" },
                        d.h,
                        d.i,
                        d.k
                    ),
                ]
            }
            Family::ShortConv => vec![
                format!(
                    "Each thread owns {} adjacent channel(s) moved as one vector, {} threads per block, {} row(s) of B, C, x loaded ahead.",
                    k.get("vec"),
                    k.get("block"),
                    k.get("pf")
                ),
                format!(
                    "Weights and the L-1 window {}; tap loops {}; pointers {}.",
                    if k.get("keep") == 1 {
                        "kept in registers, state written once at the end"
                    } else {
                        "re-read every row, state shifted in memory every row"
                    },
                    if k.get("unr") == 1 { "fully unrolled" } else { "unrolled as the compiler sees fit" },
                    if k.get("res") == 1 { "__restrict__" } else { "plain" }
                ),
                format!(
                    "bcx and w loads: {}; out stores: {}; D = {}, L = {}.",
                    hint("ldh"),
                    hint("sth"),
                    d.d,
                    d.l
                ),
            ],
            Family::DecodeAttention => vec![
                format!(
                    "One block of {} threads per (token, query head); scores of the S_MAX = {} keys in shared memory.",
                    k.get("block"),
                    d.s_max
                ),
                format!(
                    "QK: {} lane(s) per key, {}-element chunks, {} key(s) per lane group in flight, q {}.",
                    k.get("lpk"),
                    k.get("vec"),
                    k.get("kif"),
                    match k.get("qs") {
                        2 => "in registers",
                        1 => "staged in shared memory",
                        _ => "re-read from global memory",
                    }
                ),
                format!(
                    "PV: {}-element chunks of V, rows split over {} group(s){}, {} row(s) in flight.",
                    k.get("vec"),
                    k.get("vsplit"),
                    if k.get("vsplit") > 1 {
                        " meeting in shared memory"
                    } else {
                        ""
                    },
                    k.get("kif")
                ),
                format!(
                    "K/V loads: {}; QH = {}, KVH = {}, DQK = {}, DV = {}.",
                    hint("ldh"),
                    d.qh,
                    d.kvh,
                    d.dqk,
                    d.dv
                ),
            ],
            Family::QkNormRopeCache => {
                vec![
                    format!(
                        "{} lanes per head of {}-element vectors, {} head(s) per block ({} threads), {} block(s) per token.",
                        qk_lanes_per_head(k, d),
                        k.get("vec"),
                        qk_heads_per_block(k, d),
                        self.block(k, d),
                        qk_blocks_per_token(k, d)
                    ),
                    format!(
                        "{} loads; qkv loads: {}; stores: {}; QH = {}, KVH = {}, D = {}.",
                        if k.get("vld") == 1 { "Vector" } else { "Element" },
                        hint("ldh"),
                        hint("sth"),
                        d.qh,
                        d.kvh,
                        d.d
                    ),
                ]
            }
        }
    }

    /// Named multi-knob jumps to designs known to be strong (the catalog's and others).
    pub fn recipes(self, d: &Dims) -> Vec<Recipe> {
        let r = |name: &'static str, why: &'static str, set: Vec<(&'static str, i64)>| Recipe {
            name,
            why,
            set,
        };
        let vec8 = |n: i64| [8, 4, 2, 1].into_iter().find(|v| n % v == 0).unwrap_or(1);
        match self {
            Family::Swiglu => {
                let v = vec8(d.i);
                vec![
                    r("recipe-vec-unroll2", "16-byte loads, 2 vectors per thread a block apart, fast sigmoid (the catalog design)",
                      vec![("vec", v), ("upt", 2), ("block", 256), ("lay", 0), ("ldh", 1), ("act", 1), ("pers", 0)]),
                    r("recipe-persistent-stream", "16-byte streaming loads and stores, 4 vectors per thread, grid of 4·SMS",
                      vec![("vec", v), ("upt", 4), ("block", 256), ("lay", 0), ("ldh", 2), ("sth", 1), ("act", 1), ("pers", 4)]),
                    r("recipe-vec-small-blocks", "16-byte no-allocate loads, one vector per thread, 128-thread blocks (many blocks at small T)",
                      vec![("vec", v), ("upt", 1), ("block", 128), ("ldh", 4), ("act", 1), ("pers", 0)]),
                ]
            }
            Family::MoeCombine => {
                let v = vec8(d.d);
                let blk = (d.d / v).clamp(64, 256);
                vec![
                    r("recipe-vec-flat", "16-byte loads, one output vector per thread (the catalog design)",
                      vec![("vec", v), ("upt", 1), ("block", 256), ("map", 0), ("ldh", 1), ("pers", 0)]),
                    r("recipe-row-blocks", "16-byte streaming loads, blocks own row slices so the K weights load once",
                      vec![("vec", v), ("upt", 1), ("block", blk), ("map", 1), ("ldh", 2), ("sth", 1), ("pers", 0)]),
                    r("recipe-persistent", "16-byte no-allocate loads, grid of 4·SMS with a grid-stride loop",
                      vec![("vec", v), ("upt", 1), ("block", 256), ("map", 0), ("ldh", 4), ("sth", 1), ("pers", 4)]),
                ]
            }
            Family::RmsNorm | Family::AddRmsNorm => {
                let v = vec8(d.d);
                let add = self == Family::AddRmsNorm;
                // The catalog's threads per row: two 8-element vectors each, whole warps, at most
                // 512 (D = 2048: 128, D = 4096: 256); short rows one lane per vector.
                let cat_tpr = pow2_floor((d.d / 8).min(32 * ((d.d + 511) / 512)).clamp(1, 512));
                let one_tpr = pow2_floor((d.d / v).clamp(1, 1024));
                let rpb = |tpr: i64| (128 / tpr).max(1);
                // The catalog's register cap as resident threads per SM, by 16-bit elements per
                // thread (x and w in rmsnorm; x, residual and w in flight in add_rmsnorm), turned
                // into the largest minimum-blocks value that fits.
                let minb = |tpr: i64| {
                    let epr = d.d / tpr;
                    let threads = match (add, epr) {
                        (false, 0..=16) | (true, 0..=8) => 2048,
                        (true, 9..=16) => 1536,
                        (_, 17..=32) => 1024,
                        _ => 512,
                    };
                    let block = tpr * rpb(tpr);
                    RMS_MINB.iter().copied().filter(|m| m * block <= threads).max().unwrap_or(0)
                };
                // x (and residual) read once: the catalog's rmsnorm keeps normal caching through the
                // read-only path, its add_rmsnorm loads them evict-first.
                let ldh = if add { 2 } else { 1 };
                vec![
                    r("recipe-block-row-regs", "the catalog design: whole warps per row holding two 16-byte vectors of x and w each, every load issued before the reduction, registers capped for 2048 resident threads",
                      vec![("tpr", cat_tpr), ("rpb", rpb(cat_tpr)), ("vec", v), ("keep", 1), ("wpre", 1), ("ldh", ldh), ("sth", 0), ("rs", 1), ("pers", 0), ("minb", minb(cat_tpr))]),
                    r("recipe-block-row-stream", "the catalog design with streaming (evict-first) stores: the output is not re-read",
                      vec![("tpr", cat_tpr), ("rpb", rpb(cat_tpr)), ("vec", v), ("keep", 1), ("wpre", 1), ("ldh", ldh), ("sth", 1), ("rs", 1), ("pers", 0), ("minb", minb(cat_tpr))]),
                    r("recipe-vector-per-thread", "one 16-byte vector of x and w per thread (twice the threads per row), loads before the reduction, streaming stores",
                      vec![("tpr", one_tpr), ("rpb", rpb(one_tpr)), ("vec", v), ("keep", 1), ("wpre", 1), ("ldh", ldh), ("sth", 1), ("rs", 1), ("pers", 0), ("minb", minb(one_tpr))]),
                ]
            }
            Family::SoftmaxTopk | Family::SigmoidTopk => {
                let warp = 32.min(pow2_floor(d.e.max(1)));
                let half = 16.min(pow2_floor(d.e.max(1)));
                // Vector loads need E % tpr == 0; otherwise the strided layout.
                let lay = |tpr: i64| i64::from(d.e % tpr == 0);
                let mut out = vec![
                    r("recipe-warp-per-row", "the catalog design: one warp per row, 4 rows per block, K rounds on integer keys made once, each round's arg-max two warp reductions (redux.sync), only the picks divided",
                      vec![("tpr", warp), ("rpb", 4), ("lay", 0), ("sel", 2), ("algo", 0), ("fast", 0), ("ldh", 0), ("pers", 0)]),
                ];
                if self == Family::SoftmaxTopk {
                    out.push(r("recipe-warp-per-row-logits", "the catalog's key rounds selecting on the logits (no row max or exp before the rounds, only the K picks exponentiated), a lane's experts one vector load",
                               vec![("tpr", warp), ("rpb", 4), ("lay", lay(warp)), ("sel", 2), ("algo", 1), ("fast", 0), ("ldh", 0), ("pers", 0)]));
                } else {
                    out.push(r("recipe-warp-per-row-fast", "the catalog design with the sigmoid as __frcp_rn(1 + __expf(-x))",
                               vec![("tpr", warp), ("rpb", 4), ("lay", 0), ("sel", 2), ("fast", 1), ("ldh", 0), ("pers", 0)]));
                }
                out.push(r("recipe-half-warp-rows", "two rows per warp (16 lanes each, 8 rows per block), the key rounds' arg-max as shuffle butterflies: half the instructions per row at large T",
                           vec![("tpr", half), ("rpb", (128 / half).max(1)), ("lay", lay(half)), ("sel", 2), ("algo", 1), ("fast", 0), ("ldh", 0), ("pers", 0)]));
                if self == Family::SigmoidTopk {
                    for rec in &mut out {
                        rec.set.retain(|(n, _)| *n != "algo");
                    }
                }
                out
            }
            Family::TttLinearDecode => vec![
                r("recipe-kslice4", "4-way k-split, one column per thread (the catalog design)",
                  vec![("ks", 4), ("cpt", 1), ("wh", 1), ("pre", 0), ("fuse", 0)]),
                r("recipe-float4-prefetch", "float4 columns, 4-way k-split, W_grad prefetched, fused sums, streaming W",
                  vec![("ks", 4), ("cpt", 4), ("wh", 2), ("sh", 1), ("pre", 1), ("fuse", 1)]),
                r("recipe-kslice8-prefetch", "8-way k-split, float2 columns, W_grad prefetched, fused sums, no-allocate loads",
                  vec![("ks", 8), ("cpt", 2), ("wh", 4), ("pre", 1), ("fuse", 1)]),
            ],
            Family::MoeExpertSwiglu | Family::MoeExpertDown => {
                let staged = if self == Family::MoeExpertSwiglu { "xs" } else { "hs" };
                let deep = if self == Family::MoeExpertSwiglu { 8 } else { 16 };
                vec![
                    if self == Family::MoeExpertSwiglu {
                        r("recipe-warp-per-row-stream", "a warp per row, 8 warps per block, 16-byte no-allocate loads, 8 vectors each of the gate and up rows in flight per lane, x[t] through L1, silu by __frcp_rn (the catalog design)",
                          vec![("rpw", 1), ("wpb", 8), ("vec", 8), ("unr", deep), ("ldh", 4), (staged, 0), ("act", 1)])
                    } else {
                        r("recipe-warp-per-row-stream", "a warp per row, 8 warps per block, h[t] staged, 16-byte no-allocate loads of every slot's row, 16 in flight per lane across the slots, the first 16 issued before h is staged (the catalog design)",
                          vec![("rpw", 1), ("wpb", 8), ("vec", 8), ("unr", deep), ("ldh", 4), (staged, 1), ("flat", 1)])
                    },
                    r("recipe-two-rows-per-warp", "two rows per warp sharing each activation load, 4 warps per block, streaming loads",
                      vec![("rpw", 2), ("wpb", 4), ("vec", 8), ("unr", deep / 2), ("ldh", 2), (staged, 1)]),
                    r("recipe-small-blocks", "a warp per row in 2-warp blocks (more blocks in flight at T = 1), 16-byte no-allocate loads",
                      vec![("rpw", 1), ("wpb", 2), ("vec", 8), ("unr", deep), ("ldh", 4), (staged, 0)]),
                ]
            }
            Family::ShortConv => {
                // The widest vector of at most `max` channels that divides D.
                let vec_upto = |max: i64| [8, 4, 2, 1].into_iter().find(|v| *v <= max && d.d % v == 0).unwrap_or(1);
                vec![
                    r("recipe-register-window", "one channel per thread in 64-thread blocks, weights and window in registers, restrict, unrolled taps (the catalog design)",
                      vec![("vec", 1), ("block", 64), ("keep", 1), ("pf", 1), ("unr", 1), ("res", 1), ("ldh", 0)]),
                    r("recipe-pairs-prefetch", "two channels per 32-bit bf16 load in 32-thread blocks (many blocks at D = 2048), 4 rows loaded ahead, read-only loads",
                      vec![("vec", vec_upto(2)), ("block", 32), ("keep", 1), ("pf", 4), ("unr", 1), ("res", 1), ("ldh", 1)]),
                    r("recipe-wide-stream", "8-byte vectors of 4 channels, 4 rows loaded ahead, no-allocate loads and streaming stores",
                      vec![("vec", vec_upto(4)), ("block", 32), ("keep", 1), ("pf", 4), ("unr", 1), ("res", 1), ("ldh", 4), ("sth", 1)]),
                ]
            }
            Family::DecodeAttention => {
                // The widest chunk of at most 8 elements that gives every one of `lanes` lanes one.
                let vec_for = |lanes: i64| [8, 4, 2, 1].into_iter().find(|v| lanes * v <= d.dqk).unwrap_or(1);
                // At most `max` lanes per key such that each lane gets one 8-element chunk.
                let lanes_for = |max: i64| [32, 16, 8, 4, 1].into_iter().find(|l| *l <= max && l * 8 <= d.dqk).unwrap_or(1);
                // Row groups of the PV pass: as many as give each thread of the block one item.
                let split_for = |block: i64, vec: i64| pow2_floor((block / (d.dv / vec).max(1)).max(1)).min(32);
                // q in registers where it fits 64 elements per lane, else staged in shared memory.
                let qs_for = |lanes: i64, vec: i64| if (d.dqk / vec + lanes - 1) / lanes * vec <= 64 { 2 } else { 1 };
                let (l8, l4) = (lanes_for(8), lanes_for(4));
                let (v8, v32, v4) = (vec_for(l8), vec_for(32), vec_for(l4));
                vec![
                    r("recipe-group8-regs", "8 lanes per key with 16-byte chunks, 2 keys in flight, q in registers, 256 threads, V rows split over the block",
                      vec![("block", 256), ("lpk", l8), ("vec", v8), ("kif", 2), ("vsplit", split_for(256, v8)), ("qs", qs_for(l8, v8)), ("ldh", 1)]),
                    r("recipe-warp-per-key", "a warp per key (16-byte chunks when DQK >= 256), q in registers, 256 threads, V rows split over the block (the catalog's pass design)",
                      vec![("block", 256), ("lpk", 32), ("vec", v32), ("kif", 2), ("vsplit", split_for(256, v32)), ("qs", qs_for(32, v32)), ("ldh", 1)]),
                    r("recipe-quad-stream", "4 lanes per key with 16-byte chunks, 4 keys in flight, q staged in shared memory, 128 threads, no-allocate loads",
                      vec![("block", 128), ("lpk", l4), ("vec", v4), ("kif", 4), ("vsplit", split_for(128, v4)), ("qs", 1), ("ldh", 4)]),
                ]
            }
            Family::QkNormRopeCache => {
                // The widest vector of at most 8 elements that leaves a head at least 2 lanes,
                // and the lanes per head it gives (at most 32: one warp).
                let v8 = [8, 4, 2].into_iter().find(|v| d.d % v == 0 && d.d / v >= 2).unwrap_or(2);
                let v16 = [16, 8, 4, 2].into_iter().find(|v| d.d % v == 0 && d.d / v >= 2).unwrap_or(2);
                let per_warp = (32 / (d.d / v8).clamp(1, 32)).max(1);
                vec![
                    r("recipe-token-block", "a block per token holding every head, 16-byte vectors (the catalog design)",
                      vec![("vec", v8), ("hpb", 0), ("vld", 1), ("ldh", 0), ("sth", 0)]),
                    r("recipe-warp-heads", "one warp per block holding as many heads as fit it, 16-byte read-only loads: the token's heads spread over many SMs",
                      vec![("vec", v8), ("hpb", per_warp), ("vld", 1), ("ldh", 1), ("sth", 0)]),
                    r("recipe-wide-lanes", "32-byte vectors (half the lanes, twice the loads in flight each), 4 heads per block, no-allocate qkv loads",
                      vec![("vec", v16), ("hpb", 4), ("vld", 1), ("ldh", 4), ("sth", 0)]),
                ]
            }
        }
    }

    /// Sets `name=value` on `k`, repairing one other knob if needed; `None` when no valid result exists.
    pub fn apply(self, k: &Knobs, set: &[(&'static str, i64)], d: &Dims) -> Option<Knobs> {
        let mut out = k.clone();
        for (n, v) in set {
            self.spec(n)?;
            out.0.insert(n, *v);
        }
        if self.check(&out, d).is_ok() {
            return Some(out);
        }
        let fixed: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
        // Row families: keep the parent's block size when lanes per row change.
        if self.spec("rpb").is_some() && !fixed.contains(&"rpb") {
            let want = self.block(k, d) / out.get("tpr").max(1);
            let mut t = out.clone();
            t.0.insert("rpb", want.max(1));
            if self.check(&t, d).is_ok() {
                return Some(t);
            }
        }
        for name in self.repair_order().iter().filter(|n| !fixed.contains(n)) {
            let Some(spec) = self.spec(name) else {
                continue;
            };
            let cur = spec
                .values
                .iter()
                .position(|v| *v == out.get(name))
                .unwrap_or(0);
            let mut order: Vec<usize> = (0..spec.values.len()).filter(|i| *i != cur).collect();
            order.sort_by_key(|i| (i.abs_diff(cur), *i));
            for i in order {
                let mut t = out.clone();
                t.0.insert(spec.name, spec.values[i]);
                if self.check(&t, d).is_ok() {
                    return Some(t);
                }
            }
        }
        None
    }
}

/// Most shared memory (static and dynamic) a decode_attention configuration may use: the
/// H100's 227 KiB opt-in less headroom.
const ATTN_SMEM_LIMIT: i64 = 200 * 1024;

/// Chunk rounds per lane of decode_attention's QK pass: ceil((DQK/vec) / lpk).
fn attn_qpl(k: &Knobs, d: &Dims) -> i64 {
    let cpk = d.dqk / k.get("vec").max(1);
    (cpk + k.get("lpk").max(1) - 1) / k.get("lpk").max(1)
}

/// Shared memory of a decode_attention configuration: the S_MAX scores and the row groups'
/// partial sums (dynamic), q staged in its dtype (counted as f32: the dtype is not known here)
/// and the two reduction arrays (static).
fn attn_smem_bytes(k: &Knobs, d: &Dims) -> i64 {
    let vsplit = k.get("vsplit");
    let part = if vsplit > 1 { vsplit * d.dv } else { 0 };
    let qsh = if k.get("qs") == 1 { d.dqk } else { 0 };
    4 * (d.s_max + part + qsh + 2 * (k.get("block") / 32))
}

/// The `#pragma` of decode_attention's loop over chunk rounds: q in registers needs it fully
/// unrolled (registers are indexed by round); otherwise full unrolling only while the round
/// count times the keys in flight stays small, so the loads the compiler hoists fit registers.
fn attn_qk_unroll(k: &Knobs, d: &Dims) -> &'static str {
    if k.get("qs") == 2 || attn_qpl(k, d) * k.get("kif") <= 16 {
        "#pragma unroll"
    } else {
        "#pragma unroll 4"
    }
}

/// Lanes per head of a qk_norm_rope_cache configuration: D / vec.
fn qk_lanes_per_head(k: &Knobs, d: &Dims) -> i64 {
    d.d / k.get("vec").max(1)
}

/// Heads per block of a qk_norm_rope_cache configuration (`hpb` 0: every head of the token).
fn qk_heads_per_block(k: &Knobs, d: &Dims) -> i64 {
    let heads = (d.qh + 2 * d.kvh).max(1);
    match k.get("hpb") {
        0 => heads,
        h => h.min(heads),
    }
}

/// Blocks per token of a qk_norm_rope_cache configuration: its heads over heads per block.
fn qk_blocks_per_token(k: &Knobs, d: &Dims) -> i64 {
    let hpb = qk_heads_per_block(k, d);
    (d.qh + 2 * d.kvh + hpb - 1) / hpb
}

fn pow2_floor(n: i64) -> i64 {
    let mut p = 1;
    while p * 2 <= n {
        p *= 2;
    }
    p
}

/// Vector width (elements) of the blocked top-k layout: the largest of 8, 4, 2, 1 dividing both EPL and E.
fn topk_vec(k: &Knobs, d: &Dims) -> i64 {
    let epl = (d.e + k.get("tpr") - 1) / k.get("tpr").max(1);
    [8, 4, 2, 1]
        .into_iter()
        .find(|v| epl % v == 0 && d.e % v == 0)
        .unwrap_or(1)
}

/// A named multi-knob rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The rewrite name (the reasoning prefix).
    pub name: &'static str,
    /// Why, in a phrase.
    pub why: &'static str,
    /// The knob values it sets.
    pub set: Vec<(&'static str, i64)>,
}

/// One knob: its values (with optional labels), the naive value and what it means.
#[derive(Debug)]
pub struct KnobSpec {
    /// Header name (`vec`).
    pub name: &'static str,
    /// Allowed values, in increasing order.
    pub values: &'static [i64],
    /// Labels of the values for the header (empty: the number itself).
    pub labels: &'static [&'static str],
    /// The naive value.
    pub base: i64,
    /// What the knob controls.
    pub doc: &'static str,
}

impl KnobSpec {
    /// The header text of `value`.
    pub fn label(&self, value: i64) -> String {
        match self.values.iter().position(|v| *v == value) {
            Some(i) if !self.labels.is_empty() => self.labels[i].to_string(),
            _ => value.to_string(),
        }
    }

    /// The value of a header text (a label or a number).
    pub fn parse(&self, text: &str) -> Option<i64> {
        if let Some(i) = self.labels.iter().position(|l| *l == text) {
            return Some(self.values[i]);
        }
        text.parse::<i64>().ok().filter(|v| self.values.contains(v))
    }
}

const LD_LABELS: &[&str] = &["plain", "ldg", "cs", "cg", "na"];
const LD_VALUES: &[i64] = &[0, 1, 2, 3, 4];
const ST_LABELS: &[&str] = &["plain", "cs"];
const BOOL: &[i64] = &[0, 1];
const PERS: &[i64] = &[0, 1, 2, 4, 8];
const MINB: &[i64] = &[0, 2, 4];
const VEC: &[i64] = &[1, 2, 4, 8];
const UPT: &[i64] = &[1, 2, 4, 8];
const BLOCK: &[i64] = &[64, 128, 256, 512, 1024];
const LAY: &[&str] = &["strided", "adjacent"];

macro_rules! knob {
    ($name:literal, $values:expr, $labels:expr, $base:literal, $doc:literal) => {
        KnobSpec {
            name: $name,
            values: $values,
            labels: $labels,
            base: $base,
            doc: $doc,
        }
    };
}

const PERS_K: KnobSpec = knob!(
    "pers",
    PERS,
    &[],
    0,
    "grid capped at pers·SMS blocks with a grid-stride loop (0: one-shot grid)"
);
const MINB_K: KnobSpec = knob!(
    "minb",
    MINB,
    &[],
    0,
    "__launch_bounds__ minimum blocks per SM (0: none)"
);
const LDH_K: KnobSpec = knob!(
    "ldh",
    LD_VALUES,
    LD_LABELS,
    0,
    "cache hint of the streamed loads"
);
const STH_K: KnobSpec = knob!("sth", BOOL, ST_LABELS, 0, "cache hint of the stores");
const ACT_K: KnobSpec = knob!(
    "act",
    &[0, 1, 2],
    &["div", "rcp", "fdiv"],
    0,
    "sigmoid: IEEE division, __frcp_rn with __expf, or __fdividef with __expf"
);

const SWIGLU: &[KnobSpec] = &[
    knob!(
        "vec",
        VEC,
        &[],
        1,
        "elements per vector load (8 = 16 bytes of bf16)"
    ),
    knob!(
        "upt",
        UPT,
        &[],
        1,
        "vectors per thread (independent loads in flight)"
    ),
    knob!("block", BLOCK, &[], 256, "threads per block"),
    knob!(
        "lay",
        BOOL,
        LAY,
        0,
        "a thread's vectors a block-width apart or adjacent"
    ),
    PERS_K,
    LDH_K,
    STH_K,
    ACT_K,
    MINB_K,
];

const MOE: &[KnobSpec] = &[
    knob!("vec", VEC, &[], 1, "elements per vector load"),
    knob!("upt", UPT, &[], 1, "output vectors per thread"),
    knob!("block", BLOCK, &[], 256, "threads per block"),
    knob!(
        "lay",
        BOOL,
        LAY,
        0,
        "a thread's vectors a block-width apart or adjacent"
    ),
    knob!(
        "map",
        BOOL,
        &["flat", "row"],
        0,
        "flat index over T·D, or blocks owning slices of one row"
    ),
    PERS_K,
    LDH_K,
    STH_K,
    MINB_K,
];

const RMSNORM: &[KnobSpec] = &[
    knob!(
        "tpr",
        &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
        &[],
        1,
        "threads per row (32 = warp per row, more = shared-memory reduction across warps)"
    ),
    knob!(
        "rpb",
        &[1, 2, 4, 8, 16, 32, 64, 128],
        &[],
        128,
        "rows per block"
    ),
    knob!("vec", VEC, &[], 1, "elements per vector load"),
    knob!(
        "keep",
        BOOL,
        &[],
        0,
        "keep the row in registers between the sum of squares and the write"
    ),
    knob!(
        "wpre",
        BOOL,
        &[],
        0,
        "load w with x, before the reduction (in registers beside the kept row), or after it"
    ),
    PERS_K,
    LDH_K,
    STH_K,
    knob!("rs", BOOL, &["div", "rsqrt"], 0, "1/sqrtf or rsqrtf"),
    // Up to 2048 resident threads of 128-thread blocks: a register cap of 32 (16 blocks) or 40 (12).
    knob!(
        "minb",
        RMS_MINB,
        &[],
        0,
        "__launch_bounds__ minimum blocks per SM (0: none): caps registers so more rows are resident"
    ),
];

const RMS_MINB: &[i64] = &[0, 2, 4, 8, 12, 16];

const TOPK_TPR: &[i64] = &[1, 2, 4, 8, 16, 32];
const TOPK_RPB: &[i64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256];

const SOFTMAX: &[KnobSpec] = &[
    knob!("tpr", TOPK_TPR, &[], 1, "lanes per row"),
    knob!("rpb", TOPK_RPB, &[], 128, "rows per block"),
    knob!(
        "lay",
        BOOL,
        &["strided", "blocked"],
        0,
        "lane l holds experts l + tpr·j, or a contiguous run loaded with vector loads"
    ),
    knob!(
        "sel",
        &[0, 1, 2],
        &["rounds", "heads", "redux"],
        0,
        "top-k by K arg-max rounds over all slots (shuffles), over per-lane sorted heads, or rounds whose arg-max is two warp reductions (redux.sync) on order-preserving keys"
    ),
    knob!(
        "algo",
        BOOL,
        &["softmax", "logits"],
        0,
        "softmax then select, or select on the logits and exponentiate only the picks"
    ),
    knob!("fast", BOOL, &[], 0, "__expf instead of expf"),
    PERS_K,
    LDH_K,
    STH_K,
    MINB_K,
];

const SIGMOID: &[KnobSpec] = &[
    knob!("tpr", TOPK_TPR, &[], 1, "lanes per row"),
    knob!("rpb", TOPK_RPB, &[], 128, "rows per block"),
    knob!(
        "lay",
        BOOL,
        &["strided", "blocked"],
        0,
        "lane l holds experts l + tpr·j, or a contiguous run loaded with vector loads"
    ),
    knob!(
        "sel",
        &[0, 1, 2],
        &["rounds", "heads", "redux"],
        0,
        "top-k by K arg-max rounds over all slots (shuffles), over per-lane sorted heads, or rounds whose arg-max is two warp reductions (redux.sync) on order-preserving keys"
    ),
    knob!(
        "fast",
        BOOL,
        &[],
        0,
        "__frcp_rn(1 + __expf(-x)) instead of 1/(1 + expf(-x))"
    ),
    PERS_K,
    LDH_K,
    STH_K,
    MINB_K,
];

const TTT: &[KnobSpec] = &[
    knob!(
        "ks",
        &[1, 2, 4, 8, 16],
        &[],
        1,
        "k-split of the F×F products (threads per column)"
    ),
    knob!(
        "cpt",
        &[1, 2, 4],
        &[],
        1,
        "columns per thread (float, float2, float4 accesses)"
    ),
    knob!(
        "wh",
        LD_VALUES,
        LD_LABELS,
        1,
        "cache hint of the W and W_grad loads"
    ),
    knob!(
        "sh",
        BOOL,
        ST_LABELS,
        0,
        "cache hint of the W_out and W_grad_out stores"
    ),
    knob!("pre", BOOL, &[], 0, "prefetch W_grad together with W"),
    knob!("fuse", BOOL, &[], 0, "one block reduction for Σg and Σg·x̂"),
    MINB_K,
];

const WPB_K: KnobSpec = knob!("wpb", &[1, 2, 4, 8, 16], &[], 8, "warps per block");
const RPW_K: KnobSpec = knob!(
    "rpw",
    &[1, 2, 4],
    &[],
    1,
    "weight rows per warp (sharing each activation load)"
);
const UNR_K: KnobSpec = knob!(
    "unr",
    &[1, 2, 4, 8, 16],
    &[],
    1,
    "vectors of each row in flight per lane"
);
const EXPERT_VEC_K: KnobSpec = knob!(
    "vec",
    VEC,
    &[],
    1,
    "elements per weight load (8 = 16 bytes of bf16)"
);

const EXPERT_SWIGLU: &[KnobSpec] = &[
    RPW_K,
    WPB_K,
    EXPERT_VEC_K,
    UNR_K,
    LDH_K,
    knob!("xs", BOOL, &[], 0, "stage x[t] in shared memory"),
    ACT_K,
    MINB_K,
];

const EXPERT_DOWN: &[KnobSpec] = &[
    RPW_K,
    WPB_K,
    EXPERT_VEC_K,
    UNR_K,
    LDH_K,
    knob!(
        "hs",
        BOOL,
        &[],
        0,
        "stage h[t] (K·I values) in shared memory"
    ),
    knob!(
        "flat",
        BOOL,
        &[],
        0,
        "every slot's rows as one stream of (slot, vector) pairs, unr loads in flight across slots and the first batch issued before h is staged (else slot by slot)"
    ),
    MINB_K,
];

const SHORT_CONV: &[KnobSpec] = &[
    knob!(
        "vec",
        VEC,
        &[],
        1,
        "adjacent channels per thread, moved as one vector (8 = 16 bytes of bf16)"
    ),
    knob!("block", &[32, 64, 128, 256], &[], 128, "threads per block"),
    knob!(
        "keep",
        BOOL,
        &[],
        0,
        "weights and the L-1 window in registers across rows (state written once) instead of re-read every row"
    ),
    knob!(
        "pf",
        &[1, 2, 4, 8],
        &[],
        1,
        "rows of B, C, x loaded ahead of the serial convolution"
    ),
    knob!(
        "unr",
        BOOL,
        &["auto", "full"],
        0,
        "#pragma unroll on the loops over the L taps"
    ),
    knob!(
        "res",
        BOOL,
        &["plain", "restrict"],
        0,
        "__restrict__ on the pointer parameters"
    ),
    LDH_K,
    STH_K,
    MINB_K,
];

const QK_NORM_ROPE_CACHE: &[KnobSpec] = &[
    knob!(
        "vec",
        &[2, 4, 8, 16],
        &[],
        4,
        "consecutive elements per lane (D/vec lanes per head; 8 = 16 bytes of bf16)"
    ),
    knob!(
        "hpb",
        &[0, 1, 2, 4, 8, 16],
        &[],
        1,
        "heads per block (0: every head of the token in one block)"
    ),
    knob!(
        "vld",
        BOOL,
        &["elem", "vector"],
        0,
        "a lane's elements moved as element loads or as one vector"
    ),
    LDH_K,
    STH_K,
    MINB_K,
];

const DECODE_ATTENTION: &[KnobSpec] = &[
    knob!("block", &[64, 128, 256, 512], &[], 128, "threads per block"),
    knob!(
        "lpk",
        &[1, 4, 8, 16, 32],
        &[],
        1,
        "lanes per key in the QK pass (summed by shuffles within the group)"
    ),
    knob!(
        "vec",
        VEC,
        &[],
        1,
        "elements per K/V/q load and V output chunk (8 = 16 bytes of bf16)"
    ),
    knob!(
        "kif",
        &[1, 2, 4],
        &[],
        1,
        "keys per lane group (QK) and V rows per thread (PV) in flight"
    ),
    knob!(
        "vsplit",
        &[1, 2, 4, 8, 16, 32],
        &[],
        1,
        "row groups of the PV pass, whose partial sums meet in shared memory"
    ),
    knob!(
        "qs",
        &[0, 1, 2],
        &["global", "smem", "regs"],
        0,
        "where q lives in the QK pass: re-read from global, staged in shared memory, or in registers"
    ),
    LDH_K,
    MINB_K,
];

/// A configuration: knob name → value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Knobs(BTreeMap<&'static str, i64>);

impl Knobs {
    /// The value of a knob (0 when absent).
    pub fn get(&self, name: &str) -> i64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// The header label of a knob's value.
    pub fn label(&self, family: Family, name: &str) -> String {
        family
            .spec(name)
            .map_or_else(|| self.get(name).to_string(), |s| s.label(self.get(name)))
    }

    /// The header text after the marker: `family=… name=value …`.
    pub fn header(&self, family: Family) -> String {
        let mut parts = vec![format!("family={}", family.name())];
        parts.extend(
            family
                .specs()
                .iter()
                .map(|s| format!("{}={}", s.name, s.label(self.get(s.name)))),
        );
        parts.join(" ")
    }

    /// Parses the knob header of `source` for `family`; `None` when absent, foreign or malformed.
    ///
    /// Missing knobs take their naive value, so headers from older templates still parse.
    pub fn parse(source: &str, family: Family) -> Option<Knobs> {
        let line = source
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(KNOB_MARKER))?;
        let mut out = family.base();
        let mut fam_ok = false;
        for pair in line.split_whitespace() {
            let (key, value) = pair.split_once('=')?;
            if key == "family" {
                fam_ok = value == family.name();
                continue;
            }
            let spec = family.spec(key)?;
            out.0.insert(spec.name, spec.parse(value)?);
        }
        fam_ok.then_some(out)
    }
}

impl fmt::Display for Knobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, "{}", parts.join(" "))
    }
}

/// The static dims a family's templates read (0 where the family does not use one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dims {
    /// Row width (rmsnorm, moe_combine), channels (short_conv) or head dim (qk_norm_rope_cache).
    pub d: i64,
    /// Intermediate width (swiglu).
    pub i: i64,
    /// Experts (top-k).
    pub e: i64,
    /// Picks per row (top-k, moe_combine).
    pub k: i64,
    /// Head dim (ttt).
    pub f: i64,
    /// Hidden size (expert kernels).
    pub h: i64,
    /// Convolution length (short_conv).
    pub l: i64,
    /// Query heads (decode_attention, qk_norm_rope_cache).
    pub qh: i64,
    /// KV heads (decode_attention, qk_norm_rope_cache).
    pub kvh: i64,
    /// q/k head dim (decode_attention).
    pub dqk: i64,
    /// v head dim (decode_attention).
    pub dv: i64,
    /// KV cache capacity in positions (decode_attention).
    pub s_max: i64,
}

impl Dims {
    /// Reads and validates the dims `family` needs from a target's static dims.
    pub fn from_static(family: Family, dims: &BTreeMap<String, i64>) -> Result<Dims, OfflineError> {
        let fam = family.name();
        let get = |dim: &'static str, min: i64, max: i64| -> Result<i64, OfflineError> {
            let v = *dims.get(dim).ok_or_else(|| OfflineError::BadDim {
                family: fam,
                dim,
                problem: "missing".into(),
            })?;
            if (min..=max).contains(&v) {
                Ok(v)
            } else {
                Err(OfflineError::BadDim {
                    family: fam,
                    dim,
                    problem: format!("{v}, outside {min}..={max}"),
                })
            }
        };
        let mut d = Dims::default();
        match family {
            Family::Swiglu => d.i = get("I", 1, 1 << 20)?,
            Family::RmsNorm | Family::AddRmsNorm => d.d = get("D", 1, 1 << 16)?,
            Family::MoeCombine => {
                d.d = get("D", 1, 1 << 16)?;
                d.k = get("K", 1, 32)?;
            }
            Family::SoftmaxTopk | Family::SigmoidTopk => {
                d.e = get("E", 1, 256)?;
                d.k = get("K", 1, 32.min(d.e))?;
                if family == Family::SigmoidTopk && dims.get("N_GROUP").copied().unwrap_or(1) != 1 {
                    return Err(OfflineError::Unsupported {
                        family: fam,
                        reason: "grouped routing (N_GROUP > 1) has no offline templates; the seed handles it".into(),
                    });
                }
            }
            Family::TttLinearDecode => d.f = get("F", 32, 128)?,
            Family::ShortConv => {
                // Any D: the vector width is checked against it per configuration.
                d.d = get("D", 1, 1 << 16)?;
                d.l = get("L", 2, 8)?;
            }
            Family::DecodeAttention => {
                d.qh = get("QH", 1, 4096)?;
                d.kvh = get("KVH", 1, d.qh)?;
                d.dqk = get("DQK", 8, 1024)?;
                d.dv = get("DV", 8, 2048)?;
                // The catalog's limit: S_MAX f32 scores must fit shared memory.
                d.s_max = get("S_MAX", 1, 49_152)?;
                if d.qh % d.kvh != 0 {
                    return Err(OfflineError::BadDim {
                        family: fam,
                        dim: "KVH",
                        problem: format!("{}, does not divide QH = {}", d.kvh, d.qh),
                    });
                }
                for (name, v) in [("DQK", d.dqk), ("DV", d.dv)] {
                    if v % 8 != 0 {
                        return Err(OfflineError::BadDim {
                            family: fam,
                            dim: name,
                            problem: format!("{v}, not a multiple of 8"),
                        });
                    }
                }
            }
            Family::QkNormRopeCache => {
                d.qh = get("QH", 1, 1024)?;
                d.kvh = get("KVH", 1, d.qh)?;
                // The catalog op's head dims; the generator's lanes per head rely on a power of two.
                d.d = get("D", 64, 256)?;
                if d.d.count_ones() != 1 {
                    return Err(OfflineError::BadDim {
                        family: fam,
                        dim: "D",
                        problem: format!("{}, not a power of two", d.d),
                    });
                }
            }
            Family::MoeExpertSwiglu | Family::MoeExpertDown => {
                d.h = get("H", 1, 1 << 16)?;
                d.i = get("I", 1, 1 << 20)?;
                d.e = get("E", 1, 1 << 20)?;
                d.k = get("K", 1, 64)?;
                let (name, v) = if family == Family::MoeExpertSwiglu {
                    ("H", d.h)
                } else {
                    ("I", d.i)
                };
                if v % 8 != 0 {
                    return Err(OfflineError::BadDim {
                        family: fam,
                        dim: name,
                        problem: format!("{v}, not a multiple of 8"),
                    });
                }
            }
        }
        if matches!(
            family,
            Family::Swiglu | Family::RmsNorm | Family::AddRmsNorm | Family::MoeCombine
        ) {
            let (name, v) = if family == Family::Swiglu {
                ("I", d.i)
            } else {
                ("D", d.d)
            };
            if v % 8 != 0 {
                return Err(OfflineError::BadDim {
                    family: fam,
                    dim: name,
                    problem: format!("{v}, not a multiple of 8"),
                });
            }
        }
        Ok(d)
    }
}
