//! `kiln models` and `kiln validate` in the default build (without candle):
//! their help prints anywhere; run, they hand over to the models build when
//! there is one and the NVIDIA driver is there, and otherwise fail with an
//! error that says what is missing.

use std::path::Path;
use std::process::{Command, Output};

fn kiln(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args)
        .env_remove("KILN_MODELS_BIN")
        .env_remove("KILN_MODELS_HANDOFF");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run kiln")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn models_commands_print_help_and_say_what_is_missing() {
    if cfg!(feature = "models") {
        eprintln!("NOT RUN: this kiln has its models; kiln-candle's tests cover the real commands");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Help needs neither the models build nor a GPU.
    for args in [["validate", "--help"], ["models", "--help"]] {
        let out = kiln(&args, &[]);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
    // No models build (an empty target folder): how to build one.
    let empty = dir.path().join("no-target");
    for args in [
        vec!["validate", "--synthetic", "qwen3-30b-a3b"],
        vec!["models", "list"],
    ] {
        let out = kiln(&args, &[("KILN_MODELS_TARGET", &empty)]);
        assert!(
            !out.status.success(),
            "{args:?} should fail without the models"
        );
        assert!(
            stderr(&out).contains("scripts/build-models.sh"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let missing = dir.path().join("nothing-here");
    let out = kiln(&["models", "list"], &[("KILN_MODELS_BIN", &missing)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));

    // A models build (a stand-in that prints its arguments): handed the
    // command line where the driver is, refused with the driver named where not.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let fake = dir.path().join("kiln-models");
        std::fs::write(&fake, "#!/bin/sh\necho \"models build: $*\"\n").expect("write");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let out = kiln(&["models", "list"], &[("KILN_MODELS_BIN", &fake)]);
        if kiln_cuda::toolkit::require_driver().is_ok() {
            assert!(out.status.success(), "{}", stderr(&out));
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "models build: models list\n"
            );
        } else {
            assert!(!out.status.success());
            let err = stderr(&out);
            assert!(err.contains("libcuda"), "{err}");
            assert!(err.contains("NVIDIA driver"), "{err}");
        }
    }
    // A hand-over that lands in a kiln without models again stops at once.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["models", "list"])
        .env("KILN_MODELS_HANDOFF", "1")
        .output()
        .expect("run kiln");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("without its candle models"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_broken_pack_is_an_error_before_the_models_build_or_a_gpu_is_needed() {
    if cfg!(feature = "models") {
        eprintln!("NOT RUN: this kiln has its models; kiln-candle's tests cover the real commands");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // No models build and no GPU: the pack is still read first, and its fault named.
    let empty = dir.path().join("no-target");
    let cases = [
        ("junk.json", "{\"x\": 1}", "not a kernel pack"),
        (
            "no_launch.json",
            "{\"target\": \"qwen3_rmsnorm\", \"entry_point\": \"rmsnorm\", \"source\": \"// none\\n\"}",
            "no launch line",
        ),
    ];
    for (name, text, want) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        let path = p.to_str().expect("utf-8 path");
        let out = kiln(
            &["validate", "--synthetic", "qwen3-30b-a3b", "--pack", path],
            &[("KILN_MODELS_TARGET", &empty)],
        );
        let err = stderr(&out);
        assert!(!out.status.success(), "{name}: {err}");
        assert!(
            err.contains("--pack") && err.contains(want),
            "{name}: {err}"
        );
    }
}
