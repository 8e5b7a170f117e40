//! How a kernel pack names the NVRTC defines a kernel was verified with,
//! declared once: `kiln discover export` writes with [`define_entry`],
//! kiln-candle matches with [`same_defines`].
//!
//! An entry is `NAME=VALUE` (`KILN_D=2048`). Packs exported before this
//! grammar was shared wrote the compiler flag (`-DKILN_D=2048`); the parser
//! reads both, so those packs load instead of silently replacing nothing.

/// The pack entry of one define.
pub fn define_entry(name: &str, value: &str) -> String {
    format!("{name}={value}")
}

/// The pack entries of a build's defines.
pub fn define_entries(defines: &[(String, String)]) -> Vec<String> {
    defines.iter().map(|(k, v)| define_entry(k, v)).collect()
}

/// `(NAME, VALUE)` of a pack entry (`NAME=VALUE`, or the older `-DNAME=VALUE`);
/// None when it is neither.
pub fn parse_define(entry: &str) -> Option<(String, String)> {
    let e = entry.trim();
    let e = e.strip_prefix("-D").unwrap_or(e);
    let (name, value) = e.split_once('=')?;
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    ok.then(|| (name.to_string(), value.to_string()))
}

/// Whether a pack entry's defines are exactly a build's (order aside).
pub fn same_defines(entries: &[String], build: &[(String, String)]) -> bool {
    let mut a: Vec<Option<(String, String)>> = entries.iter().map(|e| parse_define(e)).collect();
    let mut b: Vec<Option<(String, String)>> = build.iter().cloned().map(Some).collect();
    a.sort();
    b.sort();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_the_older_flag_form_matches_too() {
        let build = vec![
            ("KILN_DTYPE".to_string(), "__nv_bfloat16".to_string()),
            ("KILN_D".to_string(), "2048".to_string()),
            ("KILN_EPS".to_string(), "1e-6f".to_string()),
        ];
        let entries = define_entries(&build);
        assert_eq!(entries[1], "KILN_D=2048");
        assert!(same_defines(&entries, &build));
        let flags: Vec<String> = entries.iter().map(|e| format!("-D{e}")).collect();
        assert!(same_defines(&flags, &build), "packs exported as -D flags");
        let mut reordered = entries.clone();
        reordered.reverse();
        assert!(same_defines(&reordered, &build));
    }

    #[test]
    fn a_different_value_a_missing_define_or_junk_does_not_match() {
        let build = vec![("KILN_D".to_string(), "2048".to_string())];
        assert!(!same_defines(&["KILN_D=4096".into()], &build));
        assert!(!same_defines(&[], &build));
        assert!(!same_defines(
            &["KILN_D=2048".into(), "KILN_X=1".into()],
            &build
        ));
        assert!(!same_defines(&["garbage".into()], &build));
        assert_eq!(parse_define("1X=2"), None);
        assert_eq!(parse_define("=2"), None);
    }
}
