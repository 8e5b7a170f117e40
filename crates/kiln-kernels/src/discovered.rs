//! The discovered set: kernels kiln's search found that `kiln discover
//! promote` admitted because a kiln model decoded faster with them (beyond
//! the run-to-run spread, fidelity within the noise floor). They are pack
//! entries (`discovered.json`, compiled in), and kiln's models use them in
//! place of the catalog build each one matches, unless a pack given at run
//! time replaces that build. Their provenance is in `discovered-log.jsonl`
//! and `CHANGELOG.md`.

use crate::pack::{parse_pack, PackEntry, PackError};

/// The discovered set as `kiln discover promote` wrote it.
pub const DISCOVERED_JSON: &str = include_str!("../discovered.json");

/// The discovered set's entries.
pub fn discovered() -> Result<Vec<PackEntry>, PackError> {
    parse_pack(DISCOVERED_JSON)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped set parses, holds one entry per target, and each entry has
    /// a launch line and the defines of the one build it replaces.
    #[test]
    fn the_shipped_set_is_well_formed() {
        let set = discovered().expect("discovered.json parses");
        let mut targets: Vec<&str> = set.iter().map(|e| e.target.as_str()).collect();
        targets.sort();
        targets.dedup();
        assert_eq!(targets.len(), set.len(), "one entry per target");
        for e in &set {
            crate::launch::LaunchLine::parse_source(&e.source)
                .unwrap_or_else(|err| panic!("{}: {err}", e.target));
            assert!(
                e.defines.is_some() && e.entry_point.is_some(),
                "{}: a discovered kernel replaces exactly one build",
                e.target
            );
        }
    }

    /// Every shipped kernel has its admission, with card and commit, in the
    /// decision log: a kernel in the set without provenance is a test failure.
    #[test]
    fn every_shipped_kernel_has_its_admission_logged() {
        let log = include_str!("../discovered-log.jsonl");
        for e in discovered().expect("discovered.json parses") {
            let admitted = log
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|d| {
                    d["target"] == e.target.as_str()
                        && d["decision"] == "admitted"
                        && d["commit"].as_str().is_some_and(|c| c.len() >= 7)
                        && d["trials"][0]["device"]
                            .as_str()
                            .is_some_and(|g| !g.is_empty())
                });
            assert!(
                admitted,
                "{}: no admitted decision in discovered-log.jsonl",
                e.target
            );
        }
    }
}
