//! A checkpoint's tokenizer.json: a prompt as text goes in as its ids, and
//! each configuration's tokens come out as text. The test writes its own
//! word-level tokenizer (one word per id of the tiny model's vocabulary).

use std::path::Path;

use candle_core::Device;
use kiln_candle::text::Tokenizer;
use kiln_candle::validate::{run, Options, Weights};

mod common;
use common::tiny_qwen3;

const VOCAB: u32 = 96;

/// `w0 … w95` as a word-level tokenizer split on whitespace.
fn write_tokenizer(dir: &Path) {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..VOCAB)
        .map(|i| (format!("w{i}"), serde_json::json!(i)))
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    });
    std::fs::write(dir.join(Tokenizer::FILE), json.to_string()).expect("write tokenizer");
}

#[test]
fn text_round_trips_through_the_checkpoints_tokenizer() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tokenizer(dir.path());
    let t = Tokenizer::from_checkpoint(dir.path()).expect("tokenizer");
    let ids = t.encode("w5 w9 w40  w2").expect("encode");
    assert_eq!(ids, [5, 9, 40, 2]);
    assert_eq!(t.decode(&ids).expect("decode"), "w5 w9 w40 w2");
}

#[test]
fn a_missing_or_broken_tokenizer_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Tokenizer::from_checkpoint(dir.path())
        .expect_err("none")
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("--prompt"),
        "{err}"
    );
    std::fs::write(dir.path().join(Tokenizer::FILE), "{not json").expect("write");
    let err = Tokenizer::from_checkpoint(dir.path())
        .expect_err("junk")
        .to_string();
    assert!(err.contains("not a tokenizer"), "{err}");
    write_tokenizer(dir.path());
    let t = Tokenizer::from_checkpoint(dir.path()).expect("tokenizer");
    assert!(t.encode("   ").is_err(), "an empty prompt is refused");
}

#[test]
fn validate_shows_each_configuration_as_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tokenizer(dir.path());
    let t = Tokenizer::from_checkpoint(dir.path()).expect("tokenizer");
    let opts = Options {
        weights: Weights::Synthetic {
            config: tiny_qwen3(),
            seed: 3,
        },
        max_tokens: 4,
        prompt: t.encode("w5 w9 w40 w2").expect("encode"),
        runs: 1,
        no_patch: false,
        pack: None,
        keep_logits: false,
        noise_floor: false,
        eager: true,
        no_baseline: false,
    };
    let mut report = run(&opts, &Device::Cpu, &mut |_: &str| {}).expect("validate");
    report.decode_texts(&t).expect("decode");
    for c in &report.configs {
        let text = c.text.as_deref().expect("text");
        let words: Vec<String> = c.tokens.iter().map(|i| format!("w{i}")).collect();
        assert_eq!(text, words.join(" "), "{}", c.name);
        assert!(report.table().contains(&format!("{} said: ", c.name)));
    }
}
