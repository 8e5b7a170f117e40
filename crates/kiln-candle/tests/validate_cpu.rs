//! `kiln validate`'s pipeline on the CPU with a tiny synthetic Qwen3-MoE:
//! the configurations, the benchmark row and the saved logits.

use candle_core::Device;
use kiln_candle::validate::{run, save_logits, Options, Weights};

mod common;
use common::tiny_qwen3;

fn options(no_patch: bool) -> Options {
    Options {
        weights: Weights::Synthetic {
            config: tiny_qwen3(),
            seed: 3,
        },
        max_tokens: 6,
        prompt: vec![5, 9, 40, 2],
        runs: 2,
        no_patch,
        pack: None,
        keep_logits: true,
        noise_floor: true,
        eager: true,
        no_baseline: false,
    }
}

#[test]
fn validate_compares_stock_candle_with_kiln_and_writes_what_it_measured() {
    let mut steps = Vec::new();
    let report = run(&options(false), &Device::Cpu, &mut |m: &str| {
        steps.push(m.to_string())
    })
    .expect("validate");
    let names: Vec<&str> = report.configs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["candle (stock)", "kiln (catalog)"]);
    for c in &report.configs {
        assert_eq!(c.tokens.len(), 6, "{}", c.name);
        assert_eq!(c.decode_tps_runs.len(), 2);
        assert!(c.decode_tps > 0.0 && c.prefill_tps > 0.0);
    }
    // bf16 on the CPU: kiln's references round where HF does, candle's ops
    // elsewhere, so agreement is high but not assumed exact.
    let kiln = &report.configs[1];
    assert!(kiln.tf_top1_agreement >= 0.5, "{}", kiln.tf_top1_agreement);
    assert!(
        kiln.tf_max_abs_logit_diff < 0.5,
        "{}",
        kiln.tf_max_abs_logit_diff
    );
    let row = report.benchmark_row();
    assert_eq!(row.model, "qwen3_moe (2 layers)");
    assert_eq!(row.current_kiln_tps, kiln.decode_tps);
    assert_eq!(
        row.discovered_kiln_tps, kiln.decode_tps,
        "no pack: discovered = current"
    );
    assert!(report.table().contains("kiln (catalog)"));
    // Verdicts: the baseline is the reference, kiln is judged against the floor.
    use kiln_candle::validate::Verdict;
    assert_eq!(report.configs[0].verdict, Verdict::Reference);
    assert!(
        matches!(kiln.verdict, Verdict::Pass | Verdict::Fail),
        "{:?}",
        kiln.verdict
    );
    assert_eq!(kiln.decode, "eager");
    assert_eq!(kiln.identical_to_eager, None, "no graph twin on the CPU");
    assert!(kiln.decode_tps_spread >= 0.0);
    // The noise floor: the baseline on its weights rounded toward zero is a
    // different model by under one bf16 ulp per weight, so its logits move, a little.
    let floor = report.noise_floor.as_ref().expect("noise floor measured");
    assert_eq!(floor.tokens.len(), 6);
    assert!(floor.tf_max_abs_logit_diff > 0.0 && floor.tf_max_abs_logit_diff < 0.5);
    assert!(report.table().contains("noise floor"));
    assert!(report.noise_floor_not_run.is_none());
    assert!(steps.iter().any(|s| s.contains("teacher-forced")));

    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("logits.safetensors");
    save_logits(&report, &path).expect("save");
    let saved = candle_core::safetensors::load(&path, &Device::Cpu).expect("load");
    assert_eq!(saved["tokens"].dims(), [4 + 6]);
    assert_eq!(saved["kiln__catalog_"].dims(), [6, 96]);
}

#[test]
fn no_patch_runs_only_the_baseline_and_bad_options_are_refused() {
    let mut only_base = options(true);
    only_base.noise_floor = false;
    let report = run(&only_base, &Device::Cpu, &mut |_: &str| {}).expect("validate");
    assert_eq!(report.configs.len(), 1);
    assert!(report.noise_floor.is_none());
    let mut nothing = options(true);
    nothing.no_baseline = true;
    let e = run(&nothing, &Device::Cpu, &mut |_: &str| {}).unwrap_err();
    assert!(e.to_string().contains("nothing to run"), "{e}");
    let mut bad = options(true);
    bad.prompt.clear();
    let e = run(&bad, &Device::Cpu, &mut |_: &str| {}).unwrap_err();
    assert!(e.to_string().contains("prompt"), "{e}");
}

#[test]
fn graph_decode_on_the_cpu_is_refused_not_silently_eager() {
    let mut o = options(false);
    o.eager = false;
    o.noise_floor = false;
    let e = run(&o, &Device::Cpu, &mut |_: &str| {}).unwrap_err();
    assert!(e.to_string().contains("--eager"), "{e}");
}

#[test]
fn no_baseline_runs_kiln_alone_with_its_first_configuration_as_the_reference() {
    let mut o = options(false);
    o.no_baseline = true;
    let report = run(&o, &Device::Cpu, &mut |_: &str| {}).expect("validate");
    let names: Vec<&str> = report.configs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["kiln (catalog)"]);
    assert_eq!(
        report.configs[0].verdict,
        kiln_candle::validate::Verdict::Reference
    );
    assert!(report.noise_floor.is_none());
    assert!(report
        .noise_floor_not_run
        .as_deref()
        .is_some_and(|w| w.contains("no baseline")));
}
