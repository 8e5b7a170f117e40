//! `kiln discover compare`, `report` and `export`: turn sessions into decisions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kiln_search::report::{compare_dirs, export_winner_from, render_report};

/// A table (or JSON) of every session in `dirs`, merged.
pub fn compare(dirs: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let c = compare_dirs(dirs)?;
    if json {
        println!("{}", c.to_json()?);
    } else {
        print!("{}", c.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

/// Markdown and SVG plots of one session.
pub fn report(session: &Path, top: usize, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let s = kiln_search::session::load(session)?;
    let dir = match out {
        Some(d) => d.to_path_buf(),
        None => session.parent().unwrap_or(Path::new(".")).to_path_buf(),
    };
    let files = render_report(&s, top, &dir)?;
    println!("wrote {}", files.report.display());
    println!("wrote {}", files.progress_svg.display());
    println!("wrote {}", files.tree_svg.display());
    Ok(ExitCode::SUCCESS)
}

/// The winner as a kernel-pack entry and a standalone `.cu`.
pub fn export(session: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    let pack = export_winner_from(session, out)?;
    println!("wrote {}", pack.json.display());
    println!("wrote {}", pack.cu.display());
    Ok(ExitCode::SUCCESS)
}
