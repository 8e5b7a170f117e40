//! `kiln discover check`: the judge's checks before the GPU, run as the
//! binary runs them (the compile in a bounded `kiln __compile` child). Needs
//! NVRTC, no GPU.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const TARGET: &str = "qwen3_rmsnorm";

/// A template tree whose instantiations are all distinct types: 2^24 of them,
/// which keeps NVRTC busy for hours (depth 16 already takes about 90 s).
const TEMPLATE_BOMB: &str = r#"// kiln: block=256 grid=T smem=0
#include <cuda_bf16.h>
typedef KILN_DTYPE scalar_t;
template <int N, unsigned long long P> struct B {
    static constexpr unsigned long long v = B<N - 1, P * 2ull>::v + B<N - 1, P * 2ull + 1ull>::v;
};
template <unsigned long long P> struct B<0, P> { static constexpr unsigned long long v = P; };
extern "C" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* out, int T) {
    const int row = blockIdx.x;
    if (row >= T) return;
    if (B<24, 1ull>::v == 3ull) return;
    for (int d = threadIdx.x; d < KILN_D; d += blockDim.x) {
        out[(long long)row * KILN_D + d] = x[(long long)row * KILN_D + d];
    }
}
"#;

fn honest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/red_team/honest_simple_rmsnorm.cu")
}

/// Runs `kiln discover check` with a private compile cache.
fn check(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["discover", "check"])
        .args(args)
        .env("KILN_CACHE_DIR", cache)
        .output()
        .expect("kiln runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write kernel");
    p
}

#[test]
fn an_honest_kernel_passes_every_offline_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = honest();
    let out = check(dir.path(), &[TARGET, file.to_str().expect("utf8 path")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout(&out),
        "ok: qwen3_rmsnorm: static checks, bounded compile and PTX checks passed\n"
    );

    let out = check(
        dir.path(),
        &[
            TARGET,
            file.to_str().expect("utf8 path"),
            "--json",
            "--arch",
            "sm_90a",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    assert_eq!(v["ok"], true);
    assert_eq!(v["target"], TARGET);
    assert_eq!(v["launch"], "block=256 grid=T smem=0");
    assert!(v["cubin_bytes"].as_u64().is_some_and(|n| n > 0), "{v}");
}

#[test]
fn a_compile_bomb_is_rejected_at_compile_within_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "bomb.cu", TEMPLATE_BOMB);
    let started = Instant::now();
    let out = check(
        dir.path(),
        &[
            TARGET,
            file.to_str().expect("utf8 path"),
            "--compile-timeout-s",
            "3",
        ],
    );
    let took = started.elapsed();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("rejected at compile: compilation exceeded the 3 s limit"),
        "{text}"
    );
    assert!(
        text.lines().nth(1).is_some_and(|l| l.starts_with("    ")),
        "the full reason follows, indented: {text}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn rejections_name_the_stage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let printf = std::fs::read_to_string(honest())
        .expect("honest kernel")
        .replace(
            "if (row >= T) return;",
            "if (row >= T) return; printf(\"hi\\n\");",
        );
    let file = write(dir.path(), "printf.cu", &printf);
    let out = check(dir.path(), &[TARGET, file.to_str().expect("utf8 path")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with("rejected at static_check: "),
        "{}",
        stdout(&out)
    );

    let broken = std::fs::read_to_string(honest())
        .expect("honest kernel")
        .replace("float acc = 0.f;", "float acc = ;");
    let file = write(dir.path(), "broken.cu", &broken);
    let out = check(
        dir.path(),
        &[TARGET, file.to_str().expect("utf8 path"), "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    assert_eq!(v["ok"], false);
    assert_eq!(v["stage"], "compile");
    assert!(
        v["reason"].as_str().is_some_and(|r| r.contains("error")),
        "{v}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = honest();
    let path = file.to_str().expect("utf8 path");
    let out = check(dir.path(), &["no_such_target", path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target"));
    let out = check(dir.path(), &[TARGET, "/nonexistent/kernel.cu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the kernel file"));
    let out = check(dir.path(), &[TARGET, path, "--arch", "hopper"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty());
}
