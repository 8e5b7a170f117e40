//! `kiln models check-moe` on the CPU: kiln's block (the catalog's float64
//! references) and the plain-candle block compute the same MoE layer; with no
//! GPU the report says loudly that the GPU paths did not run.

use kiln_candle::check::{check_moe, MoeCheckOptions};

mod common;
use common::{tiny_glm, tiny_qwen3};

fn check(config: serde_json::Value) -> kiln_candle::check::MoeCheck {
    let opts = MoeCheckOptions {
        config,
        seed: 5,
        tokens: 12,
        layer: None,
    };
    check_moe(&opts, None, &mut |_: &str| {}).expect("check runs on the CPU")
}

#[test]
fn kiln_and_plain_blocks_agree_on_the_cpu() {
    for (cfg, layer) in [(tiny_qwen3(), 0), (tiny_glm(), 1)] {
        let r = check(cfg);
        assert_eq!(r.layer, layer, "the first MoE layer is checked");
        assert_eq!(r.comparisons.len(), 1, "{}", r.table());
        let c = &r.comparisons[0];
        assert_eq!(
            (c.path.as_str(), c.against.as_str()),
            ("kiln CPU", "plain CPU")
        );
        assert_eq!(c.same_routing, 12, "{}", r.table());
        // Both sides round to bf16 at slightly different points.
        assert!(c.rel_l2 < 2e-2 && c.rel_l2 > 0.0, "{}", r.table());
        assert_eq!(r.selection_margins.len(), 12);
        assert!(r.selection_margins.iter().flatten().all(|m| *m >= 0.0));
        assert!(
            r.table().contains("NOT RUN: the GPU paths"),
            "{}",
            r.table()
        );
    }
}

#[test]
fn a_dense_layer_or_model_is_refused() {
    let opts = MoeCheckOptions {
        config: tiny_glm(),
        seed: 5,
        tokens: 4,
        layer: Some(0),
    };
    let err = check_moe(&opts, None, &mut |_: &str| {}).expect_err("layer 0 is dense");
    assert!(err.to_string().contains("dense"), "{err}");
}

#[test]
fn check_kernels_needs_a_gpu_and_says_so() {
    let raw = kiln_candle::models::config::preset("qwen3-30b-a3b", Some(1)).expect("preset");
    let e = kiln_candle::check_kernels::check_kernels(&candle_core::Device::Cpu, &[raw])
        .expect_err("the CPU has no GPU kernels to check");
    assert!(e.to_string().contains("CUDA device"), "{e}");
}
