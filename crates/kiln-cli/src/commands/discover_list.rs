//! `kiln discover list`: the search targets, one line each.

use std::process::ExitCode;

/// Prints every target with its model and description.
pub fn run() -> anyhow::Result<ExitCode> {
    let targets = kiln_eval::targets::all();
    let width = targets.iter().map(|t| t.name.len()).max().unwrap_or(0);
    println!(
        "{:<width$}  {:<14}  {:<8}  what",
        "target", "model", "timed T"
    );
    for t in &targets {
        let timed: Vec<String> = t.timed_t.iter().map(|n| n.to_string()).collect();
        println!(
            "{:<width$}  {:<14}  {:<8}  {}",
            t.name,
            t.model.unwrap_or("generic"),
            timed.join(","),
            t.description
        );
    }
    println!(
        "{} targets; `kiln discover search TARGET` searches one, `kiln discover autorun` all.",
        targets.len()
    );
    Ok(ExitCode::SUCCESS)
}
