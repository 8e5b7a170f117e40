//! The parser against a corpus of realistic model answers (`testdata/answers/*.md`).

use crate::parse::parse_answer;
use std::path::PathBuf;

/// (file, variants requested, candidates expected, one substring per expected rejection).
const EXPECTED: &[(&str, usize, usize, &[&str])] = &[
    ("well_formed_three.md", 4, 3, &[]),
    ("single_no_lang.md", 4, 1, &[]),
    ("crlf.md", 4, 2, &[]),
    ("prose_heavy.md", 4, 2, &[]),
    ("truncated_last.md", 4, 2, &["block 3 is not closed"]),
    ("no_code.md", 4, 0, &["contains no code block"]),
    ("missing_launch_line.md", 4, 1, &["block 2 has no `// kiln:` launch line"]),
    ("json_wrapped.md", 4, 2, &[]),
    ("nested_fences.md", 4, 2, &[]),
    ("tilde_fences.md", 4, 2, &[]),
    ("numbered_headings.md", 4, 2, &[]),
    ("duplicates.md", 4, 2, &["block 2 repeats block 1"]),
    ("too_many.md", 3, 3, &["block 4 dropped: only 3 variants", "block 5 dropped: only 3 variants"]),
    (
        "helper_blocks.md",
        4,
        1,
        &[
            "block 1 has no `extern \"C\"` entry point, no `__global__` kernel, no `// kiln:` launch line",
            "block 3 (a `bash` block) has no",
        ],
    ),
    ("json_fenced.md", 4, 1, &["block 2 has no `// kiln:` launch line"]),
    ("unfenced_raw.md", 4, 1, &[]),
];

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/testdata/answers")
}

fn read(name: &str) -> String {
    let path = corpus_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_corpus_answer_parses_as_expected() {
    for (file, count, accepted, reasons) in EXPECTED {
        let got = parse_answer(&read(file), *count);
        assert_eq!(got.proposals.len(), *accepted, "{file}: {got:#?}");
        assert_eq!(
            got.rejected.len(),
            reasons.len(),
            "{file}: {:#?}",
            got.rejected
        );
        for (want, have) in reasons.iter().zip(&got.rejected) {
            assert!(have.contains(want), "{file}: wanted {want:?} in {have:?}");
        }
        for p in &got.proposals {
            assert!(p.source.contains("extern \"C\""), "{file}");
            assert!(p.source.ends_with("}\n"), "{file}: {:?}", p.source);
            assert!(!p.source.contains('\r'), "{file}");
            assert!(
                !p.source.contains("```") && !p.source.contains("~~~"),
                "{file}"
            );
        }
    }
}

#[test]
fn every_corpus_file_has_an_expectation() {
    let mut files: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("corpus folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .collect();
    files.sort();
    assert!(files.len() >= 12, "{files:?}");
    for f in &files {
        assert!(
            EXPECTED.iter().any(|(name, ..)| name == f),
            "no expectation for {f}"
        );
    }
}

#[test]
fn crlf_file_really_has_crlf_and_matches_lf() {
    let raw = read("crlf.md");
    assert!(
        raw.contains("\r\n"),
        "crlf.md lost its CRLF line endings (see testdata/.gitattributes)"
    );
    let crlf = parse_answer(&raw, 4);
    let lf = parse_answer(&raw.replace("\r\n", "\n"), 4);
    assert_eq!(crlf, lf);
    // The whole well-formed answer converted to CRLF parses identically too.
    let wf = read("well_formed_three.md");
    assert_eq!(
        parse_answer(&wf.replace('\n', "\r\n"), 4),
        parse_answer(&wf, 4)
    );
}

#[test]
fn reasoning_and_priors_come_through() {
    let wf = parse_answer(&read("well_formed_three.md"), 4);
    assert!(
        wf.proposals[0]
            .reasoning
            .starts_with("One warp per row with 16-byte loads"),
        "{:?}",
        wf.proposals[0]
    );
    assert!(wf.proposals[2].reasoning.starts_with("Block per row"));

    let js = parse_answer(&read("json_wrapped.md"), 4);
    assert_eq!(
        js.proposals[0].reasoning,
        "Warp per row with 16-byte loads."
    );
    assert_eq!(js.proposals[0].prior, Some(0.8));
    assert_eq!(
        js.proposals[1].reasoning,
        "Block per row, code fenced inside the JSON string."
    );

    let tilde = parse_answer(&read("tilde_fences.md"), 4);
    assert!(
        tilde.proposals[0]
            .reasoning
            .starts_with("top-k with one warp"),
        "{:?}",
        tilde.proposals[0]
    );

    let prose = parse_answer(&read("prose_heavy.md"), 4);
    assert!(
        prose.proposals[0]
            .reasoning
            .starts_with("Option A — warp per row."),
        "{:?}",
        prose.proposals[0]
    );
    assert!(!prose.proposals[0].reasoning.contains('\n'));

    let raw = parse_answer(&read("unfenced_raw.md"), 4);
    assert!(raw.proposals[0]
        .source
        .starts_with("#include <cuda_bf16.h>"));
    assert!(!raw.proposals[0].source.contains("Here is"));
}

#[test]
fn indented_fence_is_dedented() {
    let got = parse_answer(&read("numbered_headings.md"), 4);
    assert!(
        got.proposals[1]
            .source
            .starts_with("typedef KILN_DTYPE scalar_t;\n// kiln: block=512"),
        "{:?}",
        got.proposals[1].source
    );
}
