//! The naive seed kernel of each family: the root of every search tree.
//!
//! Simple, obviously correct and slow-ish (one thread per element or per row,
//! scalar loads), with the catalog's casting rules, so every speedup the
//! search finds is measured from a plain starting point.

/// `(family, source)` of every seed.
pub const SEEDS: [(&str, &str); 12] = [
    ("swiglu", include_str!("../seeds/swiglu.cu")),
    ("rmsnorm", include_str!("../seeds/rmsnorm.cu")),
    ("add_rmsnorm", include_str!("../seeds/add_rmsnorm.cu")),
    ("moe_combine", include_str!("../seeds/moe_combine.cu")),
    ("softmax_topk", include_str!("../seeds/softmax_topk.cu")),
    ("sigmoid_topk", include_str!("../seeds/sigmoid_topk.cu")),
    (
        "ttt_linear_decode",
        include_str!("../seeds/ttt_linear_decode.cu"),
    ),
    (
        "moe_expert_swiglu",
        include_str!("../seeds/moe_expert_swiglu.cu"),
    ),
    (
        "moe_expert_down",
        include_str!("../seeds/moe_expert_down.cu"),
    ),
    ("short_conv", include_str!("../seeds/short_conv.cu")),
    (
        "decode_attention",
        include_str!("../seeds/decode_attention.cu"),
    ),
    (
        "qk_norm_rope_cache",
        include_str!("../seeds/qk_norm_rope_cache.cu"),
    ),
];

/// The naive seed source of a family (`rmsnorm`, `swiglu`, …), if there is one.
pub fn seed_source(family: &str) -> Option<&'static str> {
    SEEDS.iter().find(|(f, _)| *f == family).map(|(_, s)| *s)
}
