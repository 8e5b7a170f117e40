//! Every catalog kernel compiles with NVRTC for sm_90 in every dtype at every
//! preset configuration (the three models of docs/MODELS.md plus generic shapes),
//! with no local-memory spills, and waits for the kernel before it before any
//! memory access (so the models may launch it early: kiln_cuda::early_launch). Needs NVRTC and the CUDA headers, not a GPU:
//! `scripts/setup.sh` installs them into `.cache/cuda-wheels`.

use std::sync::Mutex;

use kiln_cuda::Compiler;
use kiln_kernels::presets::all_builds;
use kiln_kernels::{DType, KernelBuild};

fn compiler() -> Compiler {
    // No disk cache: this test is about what NVRTC says now.
    Compiler::with_cache(None).unwrap_or_else(|e| panic!("{e}"))
}

/// `(spill stores, spill loads)` summed over ptxas's `-v` report.
fn spills(log: &str) -> (u64, u64) {
    let grab = |line: &str, key: &str| -> u64 {
        line.split(',')
            .find(|p| p.contains(key))
            .and_then(|p| p.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    };
    log.lines()
        .filter(|l| l.contains("spill stores"))
        .fold((0, 0), |(s, l), line| {
            (
                s + grab(line, "spill stores"),
                l + grab(line, "spill loads"),
            )
        })
}

#[test]
fn every_kernel_compiles_in_every_dtype_without_spills() {
    let compiler = compiler();
    let mut jobs: Vec<(DType, String, KernelBuild)> = Vec::new();
    for dt in DType::ALL {
        for (label, build) in all_builds(dt).unwrap_or_else(|e| panic!("{e}")) {
            jobs.push((dt, label, build));
        }
    }
    let failures = Mutex::new(Vec::<String>::new());
    let next = Mutex::new(0usize);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap_or_else(|p| p.into_inner());
                    *n += 1;
                    *n - 1
                };
                let Some((dt, label, build)) = jobs.get(i) else { break };
                let mut req = build.to_request();
                req.extra_options.push("-Xptxas=-v".to_string());
                let msg = match compiler.compile(&req) {
                    Err(e) => Some(format!("{label} [{dt}]: {e}")),
                    Ok(c) => {
                        let (st, ld) = spills(&c.log);
                        let early = c.ptx.as_deref().is_some_and(|p| {
                            kiln_cuda::early_launch::waits_before_memory(p, &build.entry)
                        });
                        if st + ld > 0 {
                            Some(format!("{label} [{dt}]: {st} bytes spill stores, {ld} bytes spill loads\n{}", c.log))
                        } else if !early {
                            Some(format!("{label} [{dt}]: its PTX does not wait (griddepcontrol.wait) before its first memory access, so the models cannot launch it early"))
                        } else {
                            None
                        }
                    }
                };
                if let Some(m) = msg {
                    failures.lock().unwrap_or_else(|p| p.into_inner()).push(m);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    assert!(
        failures.is_empty(),
        "{} of {} builds failed:\n{}",
        failures.len(),
        jobs.len(),
        failures.join("\n")
    );
}

#[test]
fn a_broken_shape_is_a_compile_error_not_a_silent_success() {
    // The static_asserts guard shapes that bypass validation (candidates reuse the defines).
    let compiler = compiler();
    let spec = kiln_kernels::catalog::spec(kiln_kernels::Op::RmsNorm);
    let req = kiln_cuda::CompileRequest::new("rmsnorm_bad.cu", spec.source)
        .define("KILN_DTYPE", "__nv_bfloat16")
        .define("KILN_D", 100)
        .define("KILN_EPS", "1e-6f")
        .define("KILN_CAST_BEFORE_SCALE", 1);
    let err = compiler.compile(&req).expect_err("D=100 must not compile");
    assert!(
        err.to_string().contains("multiple of 8") || format!("{err:?}").contains("multiple of 8"),
        "{err:?}"
    );
}

/// The discovered set the models run by default compiles with the defines
/// of the build it replaces, without spills, and waits before its first
/// memory access like the catalog kernel it stands in for.
#[test]
fn every_discovered_kernel_compiles_and_can_launch_early() {
    let compiler = compiler();
    let set = kiln_kernels::discovered::discovered().unwrap_or_else(|e| panic!("{e}"));
    for e in &set {
        let entry = e
            .entry_point
            .as_deref()
            .unwrap_or_else(|| panic!("{}: no entry point", e.target));
        let mut req = kiln_cuda::CompileRequest::new(
            format!("discovered_{}.cu", e.target),
            e.source.as_str(),
        );
        for d in e.defines.iter().flatten() {
            let (name, value) = d.split_once('=').unwrap_or((d.as_str(), "1"));
            req = req.define(name, value);
        }
        req.extra_options.push("-Xptxas=-v".to_string());
        let c = compiler
            .compile(&req)
            .unwrap_or_else(|err| panic!("discovered {}: {err}", e.target));
        let (st, ld) = spills(&c.log);
        assert_eq!(
            (st, ld),
            (0, 0),
            "discovered {}: spills\n{}",
            e.target,
            c.log
        );
        let ptx = c
            .ptx
            .as_deref()
            .unwrap_or_else(|| panic!("discovered {}: no PTX", e.target));
        assert!(
            kiln_cuda::early_launch::waits_before_memory(ptx, entry),
            "discovered {}: its PTX does not wait before its first memory access",
            e.target
        );
    }
}
