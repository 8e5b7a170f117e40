//! `kiln doctor`: is this machine ready to search kernels? Every check runs
//! (a failure does not hide the others); exit 0 only when all pass.

use std::process::ExitCode;

use kiln_cuda::{Compiler, CopyCeiling, DeviceFacts, Gpu, Island, Probes, ISLAND_PAGE};
use serde_json::json;

use crate::cli::DoctorArgs;

/// One line of the report.
struct Check {
    name: &'static str,
    outcome: Result<String, String>,
}

/// Maps one island (what the judge hands a candidate every buffer in),
/// writes a pattern into it and reads it back.
fn island_check(gpu: &Gpu) -> Result<String, String> {
    let mut island = Island::new(gpu, 1, 1, 1).map_err(|e| e.to_string())?;
    let len = island.len();
    island
        .fill(gpu, 0, len, 4, 0x5A5A_A5A5)
        .map_err(|e| e.to_string())?;
    let back = island.download(gpu, 0, len).map_err(|e| e.to_string())?;
    let want = 0x5A5A_A5A5u32.to_le_bytes();
    if back.chunks(4).any(|w| w != want) {
        return Err("an island read back other bytes than were written into it".into());
    }
    Ok(format!(
        "every judged buffer is mapped alone in {} MiB pages with unmapped pages around it",
        ISLAND_PAGE >> 20
    ))
}

/// Runs every check and prints the report.
pub fn run(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut checks: Vec<Check> = Vec::new();
    let mut report = serde_json::Map::new();

    let compiler = Compiler::new();
    checks.push(Check {
        name: "NVRTC",
        outcome: match &compiler {
            Ok(c) => Ok(format!(
                "version {}; headers {}; cache {}",
                c.version(),
                join_paths(c.include_dirs()),
                c.cache()
                    .map_or("off".into(), |k| k.dir().display().to_string())
            )),
            Err(e) => Err(e.to_string()),
        },
    });
    if let Ok(c) = &compiler {
        report.insert("nvrtc_version".into(), json!(c.version()));
        report.insert("include_dirs".into(), json!(c.include_dirs()));
    }

    let gpu = Gpu::open(args.device);
    checks.push(Check {
        name: "GPU",
        outcome: match &gpu {
            Ok(g) => Ok(describe(g.facts())),
            Err(e) => Err(e.to_string()),
        },
    });

    if let (Ok(gpu), Ok(compiler)) = (&gpu, &compiler) {
        report.insert("device".into(), json!(gpu.facts()));
        match Probes::load(gpu, compiler) {
            Err(e) => checks.push(Check {
                name: "probe kernels",
                outcome: Err(e.to_string()),
            }),
            Ok(probes) => {
                checks.push(Check {
                    name: "compile + run + verify",
                    outcome: probes
                        .self_check(gpu)
                        .map(|()| "axpy on 1M floats: every element matches".to_string())
                        .map_err(|e| e.to_string()),
                });
                checks.push(Check {
                    name: "isolated buffers",
                    outcome: island_check(gpu),
                });
                let bw = probes.bandwidth(gpu);
                let bw_copy = bw.as_ref().ok().copied();
                if let Ok(b) = &bw {
                    report.insert("bandwidth".into(), json!(b));
                    report.insert("peak_bytes_per_s".into(), json!(b.peak_bytes_per_s()));
                }
                checks.push(Check {
                    name: "peak DRAM bandwidth",
                    outcome: bw
                        .map(|b| {
                            format!(
                                "{:.2} TB/s (copy {:.2} TB/s read+write, read-only stream {:.2} TB/s, {} MiB buffer)",
                                b.peak_bytes_per_s() / 1e12,
                                b.copy_bytes_per_s / 1e12,
                                b.read_bytes_per_s / 1e12,
                                b.buffer_bytes >> 20
                            )
                        })
                        .map_err(|e| e.to_string()),
                });
                let peak = bw_copy.map(|b| b.peak_bytes_per_s());
                let floor = probes.launch_floor(gpu);
                if let Ok(f) = &floor {
                    report.insert("launch_floor".into(), json!(f));
                }
                checks.push(Check {
                    name: "launch floor",
                    outcome: floor
                        .map(|f| {
                            format!(
                                "{:.2} µs per empty kernel in a CUDA graph ({:.2} µs as a single stream launch)",
                                f.graph_us, f.stream_us
                            )
                        })
                        .map_err(|e| e.to_string()),
                });
                let curve: Result<Vec<_>, _> = COPY_CURVE_BYTES
                    .iter()
                    .map(|&b| probes.copy_ceiling(gpu, b))
                    .collect();
                if let Ok(c) = &curve {
                    report.insert("copy_ceilings".into(), json!(c));
                }
                checks.push(Check {
                    name: "copy ceiling by size",
                    outcome: curve
                        .map(|c| copy_curve_lines(&c, peak))
                        .map_err(|e| e.to_string()),
                });
            }
        }
    }

    let ok = checks.iter().all(|c| c.outcome.is_ok());
    if args.json {
        report.insert(
            "checks".into(),
            json!(checks
                .iter()
                .map(|c| json!({
                    "name": c.name,
                    "ok": c.outcome.is_ok(),
                    "detail": match &c.outcome { Ok(s) | Err(s) => s },
                }))
                .collect::<Vec<_>>()),
        );
        report.insert("ok".into(), json!(ok));
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("kiln {} doctor", env!("CARGO_PKG_VERSION"));
        for c in &checks {
            match &c.outcome {
                Ok(detail) => println!("  ok    {:<24} {detail}", c.name),
                Err(err) => println!("  FAIL  {:<24} {err}", c.name),
            }
        }
        let failed = checks.iter().filter(|c| c.outcome.is_err()).count();
        if ok {
            println!("all {} checks passed", checks.len());
        } else {
            println!("{failed} of {} checks failed", checks.len());
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Bytes moved (read + written) at which the doctor times a plain copy: from a
/// decode-sized op to the peak probe's size.
const COPY_CURVE_BYTES: [u64; 6] = [64 << 10, 1 << 20, 8 << 20, 32 << 20, 128 << 20, 1 << 30];

/// One line per size: what a kernel that only moves those bytes reaches.
fn copy_curve_lines(curve: &[CopyCeiling], peak: Option<f64>) -> String {
    let mut out = String::from(
        "what a plain copy reaches by size (graph-batched, rotated beyond L2 like `kernels bench`)",
    );
    for c in curve {
        let pct = |us: f64| {
            peak.map_or(String::new(), |p| {
                format!(
                    " ({:.0} % of peak)",
                    100.0 * c.bytes_moved as f64 / (us * 1e-6) / p
                )
            })
        };
        out.push_str(&format!(
            "\n{:>30}{:>9} KiB moved{}: copy kernel {:.2} µs{}, driver memcpy {:.2} µs{}",
            "",
            c.bytes_moved >> 10,
            if c.rotated { "" } else { " (in L2)" },
            c.kernel_us,
            pct(c.kernel_us),
            c.memcpy_us,
            pct(c.memcpy_us)
        ));
        if let Some(p) = c.pdl_kernel_us {
            out.push_str(&format!(
                ", copy kernel chained with PDL {p:.2} µs{}",
                pct(p)
            ));
        }
    }
    out
}

fn describe(f: &DeviceFacts) -> String {
    format!(
        "{} ({}), {} SMs, L2 {} MiB, {:.1} GiB, smem opt-in {} KiB, driver CUDA {}",
        f.name,
        f.arch.sm_name(),
        f.sm_count,
        f.l2_bytes >> 20,
        f.total_mem_bytes as f64 / (1u64 << 30) as f64,
        f.max_smem_per_block_optin / 1024,
        f.driver_version
    )
}

fn join_paths(paths: &[std::path::PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_curve_lines_mark_sizes_served_from_l2() {
        let point = |bytes_moved, rotated| CopyCeiling {
            bytes_moved,
            kernel_us: 2.0,
            memcpy_us: 4.0,
            pdl_kernel_us: None,
            rotated,
        };
        let text = copy_curve_lines(&[point(8 << 20, false), point(64 << 20, true)], Some(4e12));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].contains("8192 KiB moved (in L2)"), "{}", lines[1]);
        assert!(!lines[2].contains("in L2"), "{}", lines[2]);
        // 64 MiB in 2 µs is 33.6 TB/s: 839 % of a 4 TB/s peak.
        assert!(lines[2].contains("(839 % of peak)"), "{}", lines[2]);
    }
}
