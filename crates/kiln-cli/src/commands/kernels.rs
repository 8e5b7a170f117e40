//! `kiln kernels list` and `kiln kernels bench`.

use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_eval::catalog_bench::{cases, run_case, table, BenchRow, CopyCeilings};
use kiln_eval::worker::start_device;

use crate::cli::BenchArgs;

/// Lists the catalog's ops with their entry points and launch lines.
pub fn list() -> anyhow::Result<ExitCode> {
    for spec in kiln_kernels::CATALOG.iter() {
        let launch = spec
            .source
            .lines()
            .find_map(|l| l.trim().strip_prefix("// kiln:"))
            .unwrap_or("(no launch line)")
            .trim();
        println!("{:<18} entry {:<18} launch {launch}", spec.name, spec.entry);
    }
    Ok(ExitCode::SUCCESS)
}

/// Times every case at every requested T and prints a table (and JSON).
pub fn bench(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let all = cases();
    // Each --op item with whether some op carries exactly that name.
    let items: Vec<(&str, bool)> = args
        .op
        .iter()
        .map(|o| (o.as_str(), all.iter().any(|c| c.problem.family() == o)))
        .collect();
    let wanted = |family: &str| {
        items.is_empty()
            || items
                .iter()
                .any(|&(o, exact)| family == o || (!exact && family.contains(o)))
    };
    let selected: Vec<_> = all.iter().filter(|c| wanted(c.problem.family())).collect();
    let candidate = match &args.candidate {
        None => None,
        Some(path) => {
            let mut families: Vec<&str> = selected.iter().map(|c| c.problem.family()).collect();
            families.sort_unstable();
            families.dedup();
            if families.len() != 1 {
                anyhow::bail!(
                    "--candidate times a variant of one op, but --op selects {}: name exactly one op",
                    if families.is_empty() { "none".to_string() } else { families.join(", ") }
                );
            }
            Some(
                std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read the candidate kernel {}", path.display())
                })?,
            )
        }
    };
    let dev = start_device(args.device)
        .context("kernels bench needs a working GPU (see `kiln doctor`)")?;
    let facts = dev.gpu.facts().clone();
    println!(
        "{} ({}), measured peak {:.2} TB/s, launch floor {:.2} µs",
        facts.name,
        facts.arch.sm_name(),
        dev.peak_bytes_per_s / 1e12,
        dev.launch_floor_us
    );
    let mut ceilings = CopyCeilings::load(&dev)
        .map_err(|f| anyhow::anyhow!("{}", f.reason))
        .context("kernels bench needs the copy probe to rate each op")?;
    // Decode-only cases (gathered experts, attention) skip the prefill sizes.
    let points: Vec<(&_, usize)> = selected
        .iter()
        .flat_map(|c| {
            args.t
                .iter()
                .filter(|&&t| c.supports(t))
                .map(move |&t| (c, t))
        })
        .collect();
    let bar = ProgressBar::new(points.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows: Vec<BenchRow> = Vec::new();
    let mut failed = 0;
    for (case, t) in points {
        bar.set_message(format!("{} {} T={t}", case.problem.family(), case.model));
        match run_case(
            &dev,
            &mut ceilings,
            case,
            t,
            candidate.as_deref(),
            args.warmup,
            args.iters,
        ) {
            Ok(row) => rows.push(row),
            Err(f) => {
                failed += 1;
                bar.println(format!(
                    "FAILED {} {} T={t}: {:?}: {}",
                    case.problem.family(),
                    case.model,
                    f.stage,
                    f.reason
                ));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    print!("{}", table(&rows));
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "device": facts,
            "peak_bytes_per_s": dev.peak_bytes_per_s,
            "launch_floor_us": dev.launch_floor_us,
            "rows": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if failed > 0 {
        anyhow::bail!("{failed} benchmark points failed (see above)");
    }
    Ok(ExitCode::SUCCESS)
}
