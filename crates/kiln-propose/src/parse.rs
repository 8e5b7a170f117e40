//! Turns a model's free-text answer into candidate sources.
//!
//! Models do not follow answer formats exactly, so [`parse_answer`] accepts what they
//! really produce:
//!
//! 1. Line endings are normalised (CRLF and lone CR become LF).
//! 2. An answer that is one JSON value (`{"variants": [{"source": …, "reasoning": …}]}`),
//!    or a ```` ```json ```` block holding one, is read field by field.
//! 3. Otherwise fenced blocks are found with CommonMark's rules: ```` ``` ```` or `~~~`
//!    fences of three or more characters, any or no language tag, indented fences, and a
//!    closing fence at least as long as the opening one. A backtick fence's tag may not
//!    contain a backtick, so prose such as "wrap it in ```cuda``` fences" is not a fence.
//!    A `markdown` (or untagged, longer-fenced) block that contains fences is opened and
//!    its inner blocks are read.
//! 4. With no fence at all, an answer that is plainly nothing but a kernel is taken whole.
//!
//! Each block (numbered from 1 in answer order) becomes a candidate only if it is closed
//! (an unclosed last block means the answer was cut off) and contains `extern "C"`,
//! `__global__` and exactly one `// kiln:` launch line by the rule every kiln tool shares
//! (`kiln_kernels::source::launch_line`). Identical blocks count once, and at most
//! `count` are kept. Every dropped block gets one line in [`ParsedAnswer::rejected`]
//! saying why, because those lines are shown to the user and fed back to the model.

use kiln_search::propose::Proposal;
use serde_json::Value;
use std::collections::HashMap;

/// The longest reasoning kept for one candidate, in characters.
const MAX_REASONING_CHARS: usize = 400;

/// What [`parse_answer`] found in an answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedAnswer {
    /// The usable candidates, in answer order, at most `count`.
    pub proposals: Vec<Proposal>,
    /// Why each dropped part was dropped.
    pub rejected: Vec<String>,
}

/// Extracts up to `count` candidates from a model's answer; never fails, only rejects.
pub fn parse_answer(answer: &str, count: usize) -> ParsedAnswer {
    let text = normalize_newlines(answer);
    let mut notes = Vec::new();
    let mut blocks = Vec::new();

    let trimmed = text.trim();
    let mut handled_as_json = false;
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        match serde_json::from_str::<Value>(trimmed) {
            Ok(value) => {
                handled_as_json = true;
                collect_json(&value, &mut blocks);
            }
            Err(e) => notes.push(format!(
                "the answer looks like JSON but does not parse: {e}"
            )),
        }
    }
    if !handled_as_json {
        collect_markdown(&text, &mut blocks);
    }
    if blocks.is_empty() {
        if let Some(code) = unfenced_kernel(&text) {
            blocks.push(RawBlock {
                lang: String::new(),
                body: code,
                closed: true,
                reasoning: String::new(),
                prior: None,
            });
        }
    }
    if blocks.is_empty() {
        notes.push(
            "the answer contains no code block (expected one ```cuda fenced block per variant)"
                .to_string(),
        );
        return ParsedAnswer {
            proposals: Vec::new(),
            rejected: notes,
        };
    }

    let mut out = ParsedAnswer {
        proposals: Vec::new(),
        rejected: notes,
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, block) in blocks.into_iter().enumerate() {
        let n = i + 1;
        if !block.closed {
            out.rejected.push(format!(
                "block {n} is not closed: the answer was cut off (probably at the max-tokens limit)"
            ));
            continue;
        }
        let missing = missing_markers(&block.body);
        if !missing.is_empty() {
            let lang = if is_kernel_lang(&block.lang) || block.lang.is_empty() {
                String::new()
            } else {
                format!(" (a `{}` block)", block.lang)
            };
            out.rejected
                .push(format!("block {n}{lang} has no {}", missing.join(", no ")));
            continue;
        }
        let source = tidy_source(&block.body);
        let key = dedup_key(&source);
        if let Some(first) = seen.get(&key) {
            out.rejected
                .push(format!("block {n} repeats block {first}"));
            continue;
        }
        seen.insert(key, n);
        if out.proposals.len() >= count {
            out.rejected.push(format!(
                "block {n} dropped: only {count} variant{} requested",
                if count == 1 { " was" } else { "s were" }
            ));
            continue;
        }
        out.proposals.push(Proposal {
            source,
            reasoning: one_line(&block.reasoning),
            prior: block.prior,
        });
    }
    out
}

/// A code block before it is judged.
#[derive(Debug)]
struct RawBlock {
    lang: String,
    body: String,
    closed: bool,
    reasoning: String,
    prior: Option<f64>,
}

/// A piece of a markdown answer: prose or a fenced block.
#[derive(Debug)]
enum Segment {
    Prose(String),
    Fenced {
        lang: String,
        body: String,
        closed: bool,
    },
}

fn normalize_newlines(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

/// An opening fence: its character, length and indentation, and the language tag.
struct Fence {
    ch: char,
    len: usize,
    indent: usize,
    lang: String,
}

fn opening_fence(line: &str) -> Option<Fence> {
    let rest = line.trim_start_matches([' ', '\t']);
    let indent = line.len() - rest.len();
    let ch = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = rest.chars().take_while(|c| *c == ch).count();
    if len < 3 {
        return None;
    }
    let info = rest[len..].trim();
    // CommonMark: a backtick fence's info string may not contain backticks (else it is inline code).
    if ch == '`' && info.contains('`') {
        return None;
    }
    let lang = info
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_start_matches('{')
        .trim_start_matches('.')
        .trim_end_matches('}')
        .to_ascii_lowercase();
    Some(Fence {
        ch,
        len,
        indent,
        lang,
    })
}

fn is_closing_fence(line: &str, open: &Fence) -> bool {
    let rest = line.trim_start_matches([' ', '\t']);
    let run = rest.chars().take_while(|c| *c == open.ch).count();
    run >= open.len && rest[run * open.ch.len_utf8()..].trim().is_empty()
}

/// Removes up to `indent` leading spaces, as CommonMark does for indented fences.
fn dedent(line: &str, indent: usize) -> &str {
    let strip = line
        .chars()
        .take(indent)
        .take_while(|c| *c == ' ' || *c == '\t')
        .count();
    &line[strip..]
}

fn segments(text: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut prose = String::new();
    let mut lines = text.split('\n');
    while let Some(line) = lines.next() {
        let Some(fence) = opening_fence(line) else {
            prose.push_str(line);
            prose.push('\n');
            continue;
        };
        out.push(Segment::Prose(std::mem::take(&mut prose)));
        let mut body = String::new();
        let mut closed = false;
        for inner in lines.by_ref() {
            if is_closing_fence(inner, &fence) {
                closed = true;
                break;
            }
            body.push_str(dedent(inner, fence.indent));
            body.push('\n');
        }
        out.push(Segment::Fenced {
            lang: fence.lang,
            body,
            closed,
        });
    }
    out.push(Segment::Prose(prose));
    out
}

fn collect_markdown(text: &str, blocks: &mut Vec<RawBlock>) {
    let segs = segments(text);
    for (i, seg) in segs.iter().enumerate() {
        let Segment::Fenced { lang, body, closed } = seg else {
            continue;
        };
        // A container (```markdown, or a longer untagged fence) holding fenced blocks: open it.
        if matches!(lang.as_str(), "markdown" | "md" | "text" | "") && *closed {
            let mut inner = Vec::new();
            collect_markdown(body, &mut inner);
            if !inner.is_empty() && segments(body).len() > 1 {
                blocks.extend(inner);
                continue;
            }
        }
        if lang == "json" && *closed {
            if let Ok(value) = serde_json::from_str::<Value>(body) {
                let before = blocks.len();
                collect_json(&value, blocks);
                if blocks.len() > before {
                    continue;
                }
            }
        }
        let before = match i.checked_sub(1).map(|j| &segs[j]) {
            Some(Segment::Prose(p)) => p.as_str(),
            _ => "",
        };
        let after = match segs.get(i + 1) {
            Some(Segment::Prose(p)) if i + 2 >= segs.len() => p.as_str(),
            _ => "",
        };
        let (reasoning, prior) = reasoning_for(before, after);
        blocks.push(RawBlock {
            lang: lang.clone(),
            body: body.clone(),
            closed: *closed,
            reasoning,
            prior,
        });
    }
}

/// Keys under which JSON answers carry the source and the reasoning.
const SOURCE_KEYS: &[&str] = &["source", "code", "kernel", "cuda", "cuda_source", "src"];
const REASON_KEYS: &[&str] = &[
    "reasoning",
    "rationale",
    "explanation",
    "description",
    "idea",
    "summary",
];
const PRIOR_KEYS: &[&str] = &["prior", "confidence"];

fn collect_json(value: &Value, blocks: &mut Vec<RawBlock>) {
    match value {
        Value::Object(map) => {
            let source = SOURCE_KEYS
                .iter()
                .find_map(|k| map.get(*k).and_then(Value::as_str));
            if let Some(source) = source {
                let reasoning = REASON_KEYS
                    .iter()
                    .find_map(|k| map.get(*k).and_then(Value::as_str))
                    .unwrap_or("")
                    .to_string();
                let prior = PRIOR_KEYS
                    .iter()
                    .find_map(|k| map.get(*k).and_then(Value::as_f64))
                    .and_then(valid_prior);
                let source = normalize_newlines(source);
                // Some models fence the code even inside a JSON string.
                let mut inner = Vec::new();
                collect_markdown(&source, &mut inner);
                if inner.is_empty() {
                    blocks.push(RawBlock {
                        lang: String::new(),
                        body: source,
                        closed: true,
                        reasoning,
                        prior,
                    });
                } else {
                    for mut b in inner {
                        if b.reasoning.is_empty() {
                            b.reasoning = reasoning.clone();
                        }
                        b.prior = b.prior.or(prior);
                        blocks.push(b);
                    }
                }
            } else {
                map.values().for_each(|v| collect_json(v, blocks));
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_json(v, blocks)),
        Value::String(s) => {
            let s = normalize_newlines(s);
            let mut inner = Vec::new();
            collect_markdown(&s, &mut inner);
            if inner.is_empty() {
                if let Some(code) = unfenced_kernel(&s) {
                    inner.push(RawBlock {
                        lang: String::new(),
                        body: code,
                        closed: true,
                        reasoning: String::new(),
                        prior: None,
                    });
                }
            }
            blocks.extend(inner);
        }
        _ => {}
    }
}

/// Labels that introduce a variant's reasoning line.
const REASON_LABELS: &[&str] = &[
    "reasoning",
    "rationale",
    "idea",
    "why",
    "change",
    "changes",
    "approach",
    "summary",
];

/// Finds the reasoning for a block: a labelled line before it, else the last paragraph
/// before it, else (for the last block) a labelled line after it.
fn reasoning_for(before: &str, after: &str) -> (String, Option<f64>) {
    let prior = before
        .lines()
        .find_map(|l| labelled(l, &["prior", "confidence"]))
        .and_then(parse_prior);
    if let Some(r) = before
        .lines()
        .rev()
        .find_map(|l| labelled(l, REASON_LABELS))
    {
        return (r.to_string(), prior);
    }
    let last_paragraph = before
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .last()
        .map(strip_markdown)
        .unwrap_or_default();
    if !last_paragraph.is_empty() {
        return (last_paragraph, prior);
    }
    let after_label = after
        .lines()
        .find_map(|l| labelled(l, REASON_LABELS))
        .unwrap_or("");
    (after_label.to_string(), prior)
}

/// `**Reasoning:** text`, `- Why: text`, `Variant 2 — Reasoning: text` → `text` when the word
/// just before the first colon is one of `labels`.
fn labelled<'a>(line: &'a str, labels: &[&str]) -> Option<&'a str> {
    let colon = line.find(':')?;
    let label = line[..colon]
        .trim_end_matches(['*', '_', ' '])
        .rsplit(|c: char| !c.is_alphanumeric())
        .next()?
        .to_ascii_lowercase();
    if !labels.contains(&label.as_str()) {
        return None;
    }
    let rest = line[colon + 1..]
        .trim()
        .trim_start_matches(['*', '_'])
        .trim();
    (!rest.is_empty()).then_some(rest)
}

fn parse_prior(text: &str) -> Option<f64> {
    let t = text.trim();
    let value = if let Some(p) = t.strip_suffix('%') {
        p.trim().parse::<f64>().ok()? / 100.0
    } else {
        t.split_whitespace().next()?.parse::<f64>().ok()?
    };
    valid_prior(value)
}

fn valid_prior(p: f64) -> Option<f64> {
    (p.is_finite() && (0.0..=1.0).contains(&p)).then_some(p)
}

/// Drops heading marks and emphasis from a prose paragraph.
fn strip_markdown(p: &str) -> String {
    p.lines()
        .map(|l| l.trim().trim_start_matches('#').trim().replace("**", ""))
        .collect::<Vec<_>>()
        .join(" ")
}

fn one_line(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match joined.char_indices().nth(MAX_REASONING_CHARS) {
        Some((cut, _)) => format!("{}…", &joined[..cut]),
        None => joined,
    }
}

/// What a candidate block lacks, phrased for the rejection line.
///
/// The launch line is judged by the one rule every tool shares
/// ([`kiln_kernels::source::launch_line`]), so the parser never accepts a
/// block whose launch line the checker or the worker would read differently.
fn missing_markers(src: &str) -> Vec<String> {
    let mut missing = Vec::new();
    if !src.contains("extern \"C\"") {
        missing.push("`extern \"C\"` entry point".to_string());
    }
    if !src.contains("__global__") {
        missing.push("`__global__` kernel".to_string());
    }
    match kiln_kernels::source::launch_line(src) {
        Ok(_) => {}
        Err(kiln_kernels::source::LaunchLineError::Missing) => {
            missing.push("`// kiln:` launch line".to_string())
        }
        Err(e) => missing.push(format!("usable `// kiln:` launch line ({e})")),
    }
    missing
}

fn is_kernel_lang(lang: &str) -> bool {
    matches!(
        lang,
        "cuda" | "cu" | "cpp" | "c++" | "cxx" | "cc" | "c" | "cuh" | "h" | "hpp"
    )
}

/// Trims blank lines around the code and trailing spaces, and ends it with one newline.
fn tidy_source(body: &str) -> String {
    let lines: Vec<&str> = body.lines().map(str::trim_end).collect();
    let start = lines
        .iter()
        .position(|l| !l.is_empty())
        .unwrap_or(lines.len());
    let end = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(start, |e| e + 1);
    let mut s = lines[start..end].join("\n");
    s.push('\n');
    s
}

/// Two blocks are the same candidate when they differ only in whitespace.
fn dedup_key(source: &str) -> String {
    source.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Line starts that only code has, used to find an unfenced kernel.
const CODE_STARTS: &[&str] = &[
    "//",
    "/*",
    "#",
    "extern",
    "typedef",
    "template",
    "__",
    "static",
    "constexpr",
    "namespace",
    "struct",
    "using",
];

/// An answer without fences that is plainly a kernel: from its first code line to its last
/// line ending in `}` (prose before or after is left out).
fn unfenced_kernel(text: &str) -> Option<String> {
    if !missing_markers(text).is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| {
        let t = l.trim_start();
        CODE_STARTS.iter().any(|s| t.starts_with(s))
    })?;
    let end = lines.iter().rposition(|l| l.trim_end().ends_with('}'))?;
    (end >= start).then(|| lines[start..=end].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL: &str =
        "// kiln: block=256 grid=T smem=0\nextern \"C\" __global__ void k(int T) {}\n";

    fn fenced(tag: &str, body: &str) -> String {
        format!("```{tag}\n{body}```\n")
    }

    #[test]
    fn single_block_with_and_without_tags() {
        for tag in ["", "cuda", "cpp", "c++", "c", "cu", "CUDA"] {
            let got = parse_answer(&fenced(tag, KERNEL), 4);
            assert_eq!(got.proposals.len(), 1, "tag {tag:?}: {got:?}");
            assert_eq!(got.proposals[0].source, KERNEL);
        }
    }

    #[test]
    fn reasoning_line_is_taken() {
        let answer = format!(
            "### Variant 1\nReasoning: use 16-byte loads.\n{}",
            fenced("cuda", KERNEL)
        );
        let got = parse_answer(&answer, 1);
        assert_eq!(got.proposals[0].reasoning, "use 16-byte loads.");
    }

    #[test]
    fn inline_triple_backticks_are_not_fences() {
        let answer = format!(
            "Wrap code in ```cuda``` fences.\n{}",
            fenced("cuda", KERNEL)
        );
        let got = parse_answer(&answer, 2);
        assert_eq!(got.proposals.len(), 1, "{got:?}");
        assert!(got.rejected.is_empty(), "{got:?}");
    }

    #[test]
    fn missing_launch_line_is_named() {
        let got = parse_answer(&fenced("cuda", "extern \"C\" __global__ void k() {}\n"), 2);
        assert!(got.proposals.is_empty());
        assert_eq!(
            got.rejected,
            vec!["block 1 has no `// kiln:` launch line".to_string()]
        );
    }

    #[test]
    fn count_zero_keeps_nothing() {
        let got = parse_answer(&fenced("cuda", KERNEL), 0);
        assert!(got.proposals.is_empty());
        assert_eq!(got.rejected.len(), 1);
    }

    #[test]
    fn prior_is_read_when_given() {
        let answer = format!("Confidence: 70%\nReasoning: x\n{}", fenced("cuda", KERNEL));
        assert_eq!(parse_answer(&answer, 1).proposals[0].prior, Some(0.7));
        let answer = format!("Confidence: 7\n{}", fenced("cuda", KERNEL));
        assert_eq!(parse_answer(&answer, 1).proposals[0].prior, None);
    }

    #[test]
    fn long_reasoning_is_cut_on_a_char_boundary() {
        let answer = format!(
            "Reasoning: {}\n{}",
            "é".repeat(1000),
            fenced("cuda", KERNEL)
        );
        let r = &parse_answer(&answer, 1).proposals[0].reasoning;
        assert_eq!(r.chars().count(), MAX_REASONING_CHARS + 1);
    }

    #[test]
    fn broken_json_is_reported() {
        let got = parse_answer("{\"variants\": [", 1);
        assert!(got.proposals.is_empty());
        assert!(got.rejected[0].contains("does not parse"), "{got:?}");
    }

    #[test]
    fn launch_line_follows_the_one_rule() {
        // The parser accepts a block exactly when the shared rule finds its launch line.
        for (src, want) in kiln_kernels::source::LAUNCH_LINE_CASES {
            // The parser normalises line endings before a block becomes a
            // source, so a lone CR is a newline by then.
            if src.contains('\r') {
                continue;
            }
            let block = format!("{src}\nextern \"C\" __global__ void k(int T) {{}}\n");
            let got = parse_answer(&fenced("cuda", &block), 2);
            assert_eq!(
                got.proposals.len(),
                usize::from(want.is_some()),
                "{src:?}: {got:?}"
            );
        }
        let got = parse_answer(
            &fenced(
                "cuda",
                "// KILN: block=1 grid=1 smem=0\nextern \"C\" __global__ void k() {}\n",
            ),
            2,
        );
        assert!(
            got.rejected[0].contains("not spelled `// kiln:`"),
            "{got:?}"
        );
    }
}
