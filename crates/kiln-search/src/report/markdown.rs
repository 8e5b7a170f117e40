//! `report.md` for one session, with its two SVG plots beside it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use super::compare::{cell, fmt_percent, fmt_speedup, pipe_table, Verdict};
use super::error::{write_file, ReportError};
use super::plots::{progress_svg, tree_svg};
use super::summary::{top_nodes, KernelSummary};
use crate::search::{Node, NodeStatus};
use crate::session::Session;

/// File name of the Markdown report.
pub const REPORT_FILE: &str = "report.md";
/// File name of the progress plot.
pub const PROGRESS_SVG: &str = "progress.svg";
/// File name of the search-tree plot.
pub const TREE_SVG: &str = "tree.svg";

/// The files [`render_report`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFiles {
    /// `report.md`.
    pub report: PathBuf,
    /// `progress.svg`: best reward so far against candidates evaluated.
    pub progress_svg: PathBuf,
    /// `tree.svg`: the search tree.
    pub tree_svg: PathBuf,
}

/// Writes `report.md`, `progress.svg` and `tree.svg` into `out_dir` (created if needed); `top` kernels are shown in full.
pub fn render_report(
    session: &Session,
    top: usize,
    out_dir: &Path,
) -> Result<ReportFiles, ReportError> {
    fs::create_dir_all(out_dir).map_err(|e| ReportError::io("create folder", out_dir, e))?;
    let files = ReportFiles {
        report: out_dir.join(REPORT_FILE),
        progress_svg: out_dir.join(PROGRESS_SVG),
        tree_svg: out_dir.join(TREE_SVG),
    };
    // Plots first: a report never links to a plot that failed to draw.
    write_file(&files.progress_svg, &progress_svg(session)?)?;
    write_file(&files.tree_svg, &tree_svg(session)?)?;
    write_file(&files.report, &report_markdown(session, top))?;
    Ok(files)
}

/// The Markdown text of the report (plots linked by their file names).
pub fn report_markdown(session: &Session, top: usize) -> String {
    let mut md = String::new();
    let m = &session.meta;
    let _ = writeln!(md, "# kiln discover: {} ({})\n", m.target, m.backend);
    metadata(&mut md, session);
    summary(&mut md, session);
    let _ = writeln!(md, "## Progress\n");
    let _ = writeln!(
        md,
        "![best reward so far against candidates evaluated]({PROGRESS_SVG})\n"
    );
    let _ = writeln!(
        md,
        "![search tree: nodes by depth, coloured by reward, best path highlighted]({TREE_SVG})\n"
    );
    top_kernels(&mut md, session, top);
    failures(&mut md, session);
    md
}

fn or_dash(s: &str) -> String {
    if s.trim().is_empty() {
        "—".to_string()
    } else {
        cell(s)
    }
}

fn metadata(md: &mut String, s: &Session) {
    let m = &s.meta;
    let c = &m.counters;
    let rows = vec![
        ("target", or_dash(&m.target)),
        ("backend", or_dash(&m.backend)),
        ("model", or_dash(&m.model)),
        (
            "GPU",
            format!("{} ({})", or_dash(&m.gpu_name), or_dash(&m.gpu_arch)),
        ),
        ("driver", or_dash(&m.driver_version)),
        ("NVRTC", or_dash(&m.nvrtc_version)),
        ("kiln", or_dash(&m.kiln_version)),
        ("seed", m.seed.to_string()),
        ("created", or_dash(&m.created_at)),
        ("updated", or_dash(&m.updated_at)),
        (
            "steps",
            format!(
                "{} of {}{}",
                c.steps_done,
                m.config.steps,
                if s.finished { " (finished)" } else { "" }
            ),
        ),
        ("candidates evaluated", c.candidates_evaluated.to_string()),
        (
            "failures",
            c.failures_by_stage
                .values()
                .map(|v| u64::from(*v))
                .sum::<u64>()
                .to_string(),
        ),
        ("duplicates skipped", c.duplicates_skipped.to_string()),
        (
            "proposer tokens (in / out)",
            format!("{} / {}", c.proposer_tokens_in, c.proposer_tokens_out),
        ),
        ("nodes in tree", s.tree.len().to_string()),
    ];
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(k, v)| vec![k.to_string(), v])
        .collect();
    md.push_str(&pipe_table(&["session", "value"], &[false, false], &rows));
    md.push('\n');
}

fn summary(md: &mut String, s: &Session) {
    let _ = writeln!(md, "## Result\n");
    match s.tree.best().and_then(|id| KernelSummary::of(s, id)) {
        Some(best) => {
            let verdict = Verdict::from_speedup(best.speedup_vs_catalog);
            let _ = writeln!(
                md,
                "Best kernel: node {} with reward {}, {} the catalog kernel and {} the naive seed; \
                 {} of the speed of light. Verdict: **{verdict}**.\n",
                best.node,
                fmt_num(best.reward),
                speedup_phrase(best.speedup_vs_catalog),
                speedup_phrase(best.speedup_vs_seed),
                fmt_percent(best.sol_fraction),
            );
        }
        None => {
            let _ = writeln!(
                md,
                "No candidate passed verification yet. Verdict: **{}**.\n",
                Verdict::Keep
            );
        }
    }
}

fn speedup_phrase(x: Option<f64>) -> String {
    match x {
        Some(_) => format!("{} over", fmt_speedup(x)),
        None => "unknown speedup over".to_string(),
    }
}

fn fmt_num(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite())
        .map_or_else(|| "—".to_string(), |v| format!("{v:.3}"))
}

fn fmt_us(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite())
        .map_or_else(|| "—".to_string(), |v| format!("{v:.2}"))
}

/// A code fence longer than any run of backticks in `text`, so the source cannot end it early.
fn fence_for(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

fn top_kernels(md: &mut String, s: &Session, top: usize) {
    let ids = top_nodes(&s.tree, top);
    let _ = writeln!(md, "## Top {} kernels\n", ids.len());
    if ids.is_empty() {
        let _ = writeln!(md, "No evaluated kernels.\n");
        return;
    }
    for (rank, id) in ids.iter().enumerate() {
        let (Some(node), Some(k)) = (s.tree.get(*id), KernelSummary::of(s, *id)) else {
            continue;
        };
        let _ = writeln!(md, "### {}. node {}\n", rank + 1, node.id);
        let parent = node
            .parent
            .map_or_else(|| "none (seed)".to_string(), |p| p.to_string());
        let _ = writeln!(
            md,
            "- reward: {}\n- speedup vs catalog: {}\n- speedup vs seed: {}\n- speed of light: {}\n\
             - parent: {parent}; depth {}; step {}; proposer {}\n- launch: `{}`\n",
            fmt_num(k.reward),
            fmt_speedup(k.speedup_vs_catalog),
            fmt_speedup(k.speedup_vs_seed),
            fmt_percent(k.sol_fraction),
            node.depth,
            node.created_step,
            or_dash(&node.proposer),
            node.launch_line.trim().replace('`', "'"),
        );
        if k.shapes.is_empty() {
            let _ = writeln!(md, "No per-shape results recorded.\n");
        } else {
            let header = [
                "shape",
                "median µs",
                "p10 µs",
                "p90 µs",
                "catalog µs",
                "speedup",
                "GB/s",
                "SoL",
            ];
            let right = [false, true, true, true, true, true, true, true];
            let rows: Vec<Vec<String>> = k
                .shapes
                .iter()
                .map(|sh| {
                    vec![
                        cell(&sh.name),
                        fmt_us(sh.median_us),
                        fmt_us(sh.p10_us),
                        fmt_us(sh.p90_us),
                        fmt_us(sh.baseline_median_us),
                        fmt_speedup(sh.speedup),
                        sh.gbps
                            .map_or_else(|| "—".to_string(), |g| format!("{g:.0}")),
                        fmt_percent(sh.sol_fraction),
                    ]
                })
                .collect();
            md.push_str(&pipe_table(&header, &right, &rows));
            md.push('\n');
        }
        if !node.reasoning.trim().is_empty() {
            let _ = writeln!(md, "**Reasoning.**\n");
            for line in node.reasoning.trim().lines() {
                let _ = writeln!(md, "> {line}");
            }
            md.push('\n');
        }
        let fence = fence_for(&node.source);
        let _ = writeln!(md, "{fence}cuda\n{}\n{fence}\n", node.source.trim_end());
    }
}

/// Failures by stage: the count (from the session's counters, which survive
/// resumes) and one example reason from the tree.
fn failures(md: &mut String, s: &Session) {
    let _ = writeln!(md, "## Failures by stage\n");
    let mut examples: BTreeMap<&str, (u32, &Node, &str)> = BTreeMap::new();
    for n in s.tree.nodes() {
        if let NodeStatus::Failed { stage, reason } = &n.status {
            examples
                .entry(stage.as_str())
                .and_modify(|e| e.0 += 1)
                .or_insert((1, n, reason.as_str()));
        }
    }
    let mut stages: BTreeMap<&str, u32> = examples.iter().map(|(k, v)| (*k, v.0)).collect();
    for (stage, count) in &s.meta.counters.failures_by_stage {
        stages.insert(stage.as_str(), *count);
    }
    stages.retain(|_, c| *c > 0);
    if stages.is_empty() {
        let _ = writeln!(md, "No failures.\n");
        return;
    }
    let rows: Vec<Vec<String>> = stages
        .iter()
        .map(|(stage, count)| {
            let example = examples.get(stage).map_or_else(
                || "—".to_string(),
                |(_, node, reason)| format!("node {}: {}", node.id, shorten(reason, 200)),
            );
            vec![cell(stage), count.to_string(), cell(&example)]
        })
        .collect();
    md.push_str(&pipe_table(
        &["stage", "count", "example"],
        &[false, true, false],
        &rows,
    ));
    md.push('\n');
}

/// The first `max` characters of `text`, with `…` if cut.
fn shorten(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    }
}
