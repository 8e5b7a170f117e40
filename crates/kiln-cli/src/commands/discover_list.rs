//! `kiln discover list`: the search targets, one line each.

use std::process::ExitCode;

/// Prints every target with its model, description and whether kiln's model
/// runs it (a winner of a target no model runs is kernel-level only).
pub fn run() -> anyhow::Result<ExitCode> {
    let targets = kiln_eval::targets::all();
    let width = targets.iter().map(|t| t.name.len()).max().unwrap_or(0);
    println!(
        "{:<width$}  {:<14}  {:<10}  {:<62}  kiln's model runs it",
        "target", "model", "timed T", "what"
    );
    for t in &targets {
        let timed: Vec<String> = t.timed_t.iter().map(|n| n.to_string()).collect();
        println!(
            "{:<width$}  {:<14}  {:<10}  {:<62}  {}",
            t.name,
            t.model.unwrap_or("generic"),
            timed.join(","),
            t.description,
            t.model_use.describe()
        );
    }
    println!(
        "{} targets; `kiln discover search TARGET` searches one, `kiln discover autorun` all.",
        targets.len()
    );
    Ok(ExitCode::SUCCESS)
}
