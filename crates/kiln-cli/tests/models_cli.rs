//! `kiln models` and `kiln validate` in the default build (without candle):
//! a clear error that says how to build them, and a non-zero exit.

use std::process::Command;

#[test]
fn models_commands_say_how_to_build_them_when_absent() {
    if cfg!(feature = "models") {
        eprintln!("NOT RUN: this kiln has its models; kiln-candle's tests cover the real commands");
        return;
    }
    for args in [
        vec!["validate", "--synthetic", "qwen3-30b-a3b"],
        vec!["models", "list"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(&args)
            .output()
            .expect("run kiln");
        assert!(
            !out.status.success(),
            "{args:?} should fail without the models"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("scripts/build-models.sh"), "{args:?}: {err}");
    }
}
