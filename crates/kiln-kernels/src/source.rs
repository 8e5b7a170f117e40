//! The one C/C++ source lexer kiln uses, and the one launch-line rule.
//!
//! Every tool that reads a kernel source (the static checker, the worker that
//! launches it, dedupe, the LLM answer parser, export) must agree on what the
//! source says. Before this module each had its own idea of where comments and
//! strings are, and an adversary could show the checker one launch line and the
//! worker another. Now all of them call [`lex`] and [`launch_line`].
//!
//! # Lexing
//!
//! 1. Backslash-newline splices are joined first, as the preprocessor does
//!    (translation phase 2), so a splice can neither hide nor split anything.
//!    A backslash followed by spaces and then a newline is an error: compilers
//!    disagree on whether it splices, so kiln refuses to guess. A carriage
//!    return not followed by a line feed is an error for the same reason
//!    (some tools end a line there, others do not).
//! 2. `//` line comments and `/* */` block comments are recognised; inside a
//!    string, character or raw-string literal they are content, not comments.
//! 3. Lines starting with `#` (or the digraph `%:`) are preprocessor
//!    directives; their tokens are kept apart from the code's.
//!
//! # The launch line
//!
//! The launch line is the one `//` line comment whose text after the `//`,
//! with leading whitespace trimmed, starts with `kiln:` (lower case). The launch
//! specification is the rest of that comment, trimmed. So `// kiln: …`,
//! `//kiln: …` and `//\tkiln: …` are all launch lines.
//!
//! Near misses are errors, never silently ignored, so no tool can read one as
//! a launch line while another skips it. A comment is a *launch-line
//! candidate* when its text, after stripping leading `/`, `!` and whitespace,
//! starts with `kiln` in any case followed by optional whitespace and a `:`.
//! Every candidate must be an exact launch line, which makes these errors:
//! `// KILN: …`, `///kiln: …`, `//! kiln: …`, `// kiln : …`
//! ([`LaunchLineError::Misspelled`]); a candidate inside a `/* */` comment
//! ([`LaunchLineError::InBlockComment`]); a launch line continued onto the next
//! line by a backslash splice ([`LaunchLineError::Spliced`]); and more than one
//! launch line ([`LaunchLineError::Multiple`]). Comments such as
//! `// kiln-offline: …` or `// kiln rounds once` are not candidates. A
//! `// kiln:` inside a string literal is not a comment at all. Preprocessor
//! conditionals do not matter: a comment is a comment in every branch.

use std::fmt;

/// The text that starts a launch line's comment body (after `//` and whitespace).
pub const LAUNCH_PREFIX: &str = "kiln:";

/// A source that could not be lexed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LexError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong, phrased so the author can fix it.
    pub message: String,
}

/// Why a source has no usable launch line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchLineError {
    /// The source could not be lexed, so comments cannot be told from code.
    #[error("{0}")]
    Lex(#[from] LexError),
    /// No launch line at all.
    #[error("no launch line: add one comment `// kiln: block=<expr> grid=<expr>[,<expr>,<expr>] smem=<expr>`")]
    Missing,
    /// More than one launch line.
    #[error("{} launch lines (lines {lines:?}); keep exactly one `// kiln:` comment", .lines.len())]
    Multiple {
        /// 1-based lines of each.
        lines: Vec<usize>,
    },
    /// A comment that looks like a launch line but is not spelled `// kiln:`.
    #[error("line {line}: `{found}` looks like a launch line but is not spelled `// kiln:`; write the launch line exactly as `// kiln: block=… grid=… smem=…` and reword any other comment that starts with `kiln:`")]
    Misspelled {
        /// 1-based line.
        line: usize,
        /// The comment as written (shortened).
        found: String,
    },
    /// A launch-line candidate inside a `/* */` comment.
    #[error("line {line}: a `kiln:` launch line inside a /* */ comment does not count and is not allowed; write it as its own `// kiln:` line comment")]
    InBlockComment {
        /// 1-based line.
        line: usize,
    },
    /// A launch line continued by a backslash-newline splice.
    #[error("line {line}: the `// kiln:` launch line ends with a backslash, which joins the next line into it; keep the launch line on one line")]
    Spliced {
        /// 1-based line.
        line: usize,
    },
}

/// The launch line a source declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchText {
    /// 1-based line of the `// kiln:` comment.
    pub line: usize,
    /// The text after `kiln:`, trimmed (e.g. `block=256 grid=ceil_div(T, 8) smem=0`).
    pub spec: String,
}

impl LaunchText {
    /// The launch line in its canonical spelling, `// kiln: <spec>`.
    pub fn canonical(&self) -> String {
        format!("// {LAUNCH_PREFIX} {}", self.spec)
    }
}

/// Finds the launch line of `source` by the one rule (see the module docs).
pub fn launch_line(source: &str) -> Result<LaunchText, LaunchLineError> {
    lex(source)?.launch_line()
}

/// Returns the source with comments replaced by spaces and backslash-newline
/// splices joined; newlines are kept, so line numbers survive.
pub fn strip_comments(source: &str) -> Result<String, LexError> {
    Ok(lex(source)?.stripped)
}

/// The kind of one token.
#[derive(Debug, Clone, PartialEq)]
pub enum Tk {
    /// An identifier or keyword.
    Ident(String),
    /// A string literal, escapes decoded (raw strings verbatim).
    Str(String),
    /// A character literal.
    Char,
    /// A number (pp-number).
    Num,
    /// Punctuation kiln's checks care about.
    Punct(&'static str),
    /// Any other character.
    Other(char),
}

/// One token of code or of a directive.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// What it is.
    pub tk: Tk,
    /// 1-based original line of its first character.
    pub line: usize,
    /// Its spelling after splicing (literals verbatim, with quotes).
    pub text: String,
    /// Whether whitespace or a comment separated it from the previous token.
    pub space_before: bool,
}

impl Token {
    /// Whether this is the identifier `s`.
    pub fn is_ident(&self, s: &str) -> bool {
        matches!(&self.tk, Tk::Ident(x) if x == s)
    }

    /// Whether this is the punctuation `s`.
    pub fn is_punct(&self, s: &str) -> bool {
        matches!(&self.tk, Tk::Punct(x) if *x == s)
    }

    /// The identifier, if this is one.
    pub fn ident(&self) -> Option<&str> {
        match &self.tk {
            Tk::Ident(x) => Some(x),
            _ => None,
        }
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tk {
            Tk::Ident(s) => f.write_str(s),
            Tk::Str(s) => write!(f, "{s:?}"),
            Tk::Char => f.write_str("'?'"),
            Tk::Num => f.write_str("0"),
            Tk::Punct(p) => f.write_str(p),
            Tk::Other(c) => write!(f, "{c}"),
        }
    }
}

/// One preprocessor directive.
#[derive(Debug, Clone, PartialEq)]
pub struct Directive {
    /// 1-based line of its `#`.
    pub line: usize,
    /// The directive's text after `#`, comments replaced by spaces.
    pub text: String,
    /// Its tokens (the directive name first).
    pub tokens: Vec<Token>,
    /// How many code tokens precede it: it sits just before `tokens[at]` of [`Lexed::tokens`].
    pub at: usize,
}

/// One comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    /// 1-based line where it starts.
    pub line: usize,
    /// Its text without the `//` or `/*` `*/` delimiters, after splicing.
    pub text: String,
    /// `true` for `/* */`, `false` for `//`.
    pub block: bool,
    /// Whether a backslash-newline splice continued it onto another line.
    pub spliced: bool,
}

/// A lexed source.
#[derive(Debug, Clone, PartialEq)]
pub struct Lexed {
    /// Code tokens outside directives, in order.
    pub tokens: Vec<Token>,
    /// Preprocessor directives, in order.
    pub directives: Vec<Directive>,
    /// Every comment, in order.
    pub comments: Vec<Comment>,
    /// The source with comments replaced by spaces and splices joined (lines kept).
    pub stripped: String,
}

impl Lexed {
    /// Finds the launch line by the one rule (see the module docs).
    pub fn launch_line(&self) -> Result<LaunchText, LaunchLineError> {
        let mut found = Vec::new();
        for c in &self.comments {
            if c.block {
                // Any line of a block comment that reads like a launch line.
                for (line, l) in (c.line..).zip(c.text.split('\n')) {
                    if is_candidate(l.trim_start().trim_start_matches(['*', '/', '!'])) {
                        return Err(LaunchLineError::InBlockComment { line });
                    }
                }
                continue;
            }
            if !is_candidate(&c.text) {
                continue;
            }
            let Some(rest) = c.text.trim_start().strip_prefix(LAUNCH_PREFIX) else {
                return Err(LaunchLineError::Misspelled {
                    line: c.line,
                    found: format!("//{}", c.text.chars().take(40).collect::<String>()),
                });
            };
            if c.spliced {
                return Err(LaunchLineError::Spliced { line: c.line });
            }
            found.push(LaunchText {
                line: c.line,
                spec: rest.trim().to_string(),
            });
        }
        match found.len() {
            0 => Err(LaunchLineError::Missing),
            1 => found.pop().ok_or(LaunchLineError::Missing),
            _ => Err(LaunchLineError::Multiple {
                lines: found.iter().map(|l| l.line).collect(),
            }),
        }
    }
}

/// Whether a comment body is a launch-line candidate: after leading `/`, `!`
/// and whitespace, `kiln` in any case, optional whitespace, then `:`.
fn is_candidate(body: &str) -> bool {
    let t = body.trim_start_matches(|c: char| c == '/' || c == '!' || c.is_whitespace());
    let Some(head) = t.get(..4) else {
        return false;
    };
    head.eq_ignore_ascii_case("kiln") && t.get(4..).is_some_and(|r| r.trim_start().starts_with(':'))
}

// ---------------------------------------------------------------- lexer

const PUNCTS: &[&str] = &[
    "##", "::", "(", ")", "[", "]", "{", "}", "<", ">", ";", ",", "=", "*", "&", "^", "#", ":",
    "-", "+", "!", "~", "/", "%", ".", "?", "|", "\\",
];

fn punct(c: char) -> Option<&'static str> {
    let mut buf = [0u8; 4];
    let s: &str = c.encode_utf8(&mut buf);
    PUNCTS.iter().copied().find(|p| *p == s)
}

struct Out {
    text: String,
    line: usize,
}

impl Out {
    /// Emits `c`, which sits on original line `line`; after a newline, catches up
    /// on newlines removed by splices so line numbers stay aligned.
    fn emit(&mut self, c: char, line: usize) {
        self.text.push(c);
        if c == '\n' {
            self.line += 1;
            while self.line < line + 1 {
                self.text.push('\n');
                self.line += 1;
            }
        }
    }
}

/// Joins splices (phase 2), returning the characters and each one's original line.
fn splice(source: &str) -> Result<(Vec<char>, Vec<usize>), LexError> {
    let raw: Vec<char> = source.chars().collect();
    let mut cs = Vec::with_capacity(raw.len());
    let mut ln = Vec::with_capacity(raw.len());
    let mut line = 1;
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c == '\r' && raw.get(i + 1) != Some(&'\n') {
            return Err(LexError {
                line,
                message: "a carriage return that does not end a line (CR without LF); use \\n line endings".into(),
            });
        }
        if c == '\\' {
            let mut j = i + 1;
            while raw.get(j).is_some_and(|&w| w == ' ' || w == '\t') {
                j += 1;
            }
            let crlf = raw.get(j) == Some(&'\r') && raw.get(j + 1) == Some(&'\n');
            if raw.get(j) == Some(&'\n') || crlf {
                if j > i + 1 {
                    return Err(LexError {
                        line,
                        message: "a backslash followed by spaces at the end of a line (compilers disagree on whether it continues the line); remove the spaces or the backslash".into(),
                    });
                }
                line += 1;
                i = j + if crlf { 2 } else { 1 };
                continue;
            }
        }
        cs.push(c);
        ln.push(line);
        if c == '\n' {
            line += 1;
        }
        i += 1;
    }
    Ok((cs, ln))
}

/// Lexes a C/C++ source (see the module docs).
pub fn lex(source: &str) -> Result<Lexed, LexError> {
    let (cs, ln) = splice(source)?;
    let n = cs.len();
    let mut out = Out {
        text: String::with_capacity(n),
        line: 1,
    };
    let mut tokens = Vec::new();
    let mut directives: Vec<Directive> = Vec::new();
    let mut comments = Vec::new();
    let mut current: Option<(Directive, usize)> = None;
    let mut bol = true;
    let mut gap = true;
    let mut i = 0;
    let finish = |cur: &mut Option<(Directive, usize)>, out: &Out, dirs: &mut Vec<Directive>| {
        if let Some((mut d, start)) = cur.take() {
            d.text = out.text[start..].to_string();
            dirs.push(d);
        }
    };
    while i < n {
        let c = cs[i];
        let next = cs.get(i + 1).copied();
        if c == '\n' {
            finish(&mut current, &out, &mut directives);
            bol = true;
            gap = true;
            out.emit(c, ln[i]);
            i += 1;
            continue;
        }
        if c.is_whitespace() {
            gap = true;
            out.emit(c, ln[i]);
            i += 1;
            continue;
        }
        if c == '/' && next == Some('/') {
            let mut j = i + 2;
            while j < n && cs[j] != '\n' {
                j += 1;
            }
            comments.push(Comment {
                line: ln[i],
                text: cs[i + 2..j].iter().collect(),
                block: false,
                spliced: ln[j.saturating_sub(1).max(i)] != ln[i],
            });
            gap = true;
            out.emit(' ', ln[i]);
            i = j;
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut j = i + 2;
            loop {
                if j + 1 >= n {
                    return Err(LexError {
                        line: ln[i],
                        message: "unterminated /* comment; close it with */".into(),
                    });
                }
                if cs[j] == '*' && cs[j + 1] == '/' {
                    break;
                }
                if cs[j] == '\n' {
                    out.emit('\n', ln[j]);
                }
                j += 1;
            }
            comments.push(Comment {
                line: ln[i],
                text: cs[i + 2..j].iter().collect(),
                block: true,
                spliced: false,
            });
            gap = true;
            out.emit(' ', ln[i]);
            i = j + 2;
            continue;
        }
        let was_bol = bol;
        bol = false;
        if was_bol && current.is_none() && (c == '#' || (c == '%' && next == Some(':'))) {
            let width = if c == '#' { 1 } else { 2 };
            for k in 0..width {
                out.emit(cs[i + k], ln[i + k]);
            }
            current = Some((
                Directive {
                    line: ln[i],
                    text: String::new(),
                    tokens: Vec::new(),
                    at: tokens.len(),
                },
                out.text.len(),
            ));
            gap = false;
            i += width;
            continue;
        }
        let (tk, j) = lex_token(&cs, i, ln[i])?;
        for k in i..j {
            out.emit(cs[k], ln[k]);
        }
        let tok = Token {
            tk,
            line: ln[i],
            text: cs[i..j].iter().collect(),
            space_before: gap,
        };
        gap = false;
        match &mut current {
            Some((d, _)) => d.tokens.push(tok),
            None => tokens.push(tok),
        }
        i = j;
    }
    finish(&mut current, &out, &mut directives);
    Ok(Lexed {
        tokens,
        directives,
        comments,
        stripped: out.text,
    })
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '$'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$'
}

fn lex_token(cs: &[char], i: usize, line: usize) -> Result<(Tk, usize), LexError> {
    let n = cs.len();
    let c = cs[i];
    let next = cs.get(i + 1).copied();
    if is_ident_start(c) {
        let mut j = i;
        while j < n && is_ident_char(cs[j]) {
            j += 1;
        }
        let word: String = cs[i..j].iter().collect();
        match (word.as_str(), cs.get(j)) {
            ("R" | "u8R" | "uR" | "UR" | "LR", Some('"')) => return lex_raw_string(cs, j, line),
            ("u8" | "u" | "U" | "L", Some('"')) => return lex_quoted(cs, j, '"', line),
            ("u8" | "u" | "U" | "L", Some('\'')) => return lex_quoted(cs, j, '\'', line),
            _ => {}
        }
        return Ok((Tk::Ident(word), j));
    }
    if c.is_ascii_digit() || (c == '.' && next.is_some_and(|d| d.is_ascii_digit())) {
        let mut j = i + 1;
        while j < n {
            let d = cs[j];
            let prev = cs[j - 1];
            let sep = d == '\'' && cs.get(j + 1).is_some_and(|x| x.is_ascii_alphanumeric());
            let sign = (d == '+' || d == '-') && matches!(prev, 'e' | 'E' | 'p' | 'P');
            if d.is_ascii_alphanumeric() || d == '_' || d == '.' || sep || sign {
                j += 1;
            } else {
                break;
            }
        }
        return Ok((Tk::Num, j));
    }
    if c == '"' || c == '\'' {
        return lex_quoted(cs, i, c, line);
    }
    if c == '#' && next == Some('#') {
        return Ok((Tk::Punct("##"), i + 2));
    }
    if c == ':' && next == Some(':') {
        return Ok((Tk::Punct("::"), i + 2));
    }
    if c == '%' && next == Some(':') {
        if cs.get(i + 2) == Some(&'%') && cs.get(i + 3) == Some(&':') {
            return Ok((Tk::Punct("##"), i + 4));
        }
        return Ok((Tk::Punct("#"), i + 2));
    }
    Ok((punct(c).map_or(Tk::Other(c), Tk::Punct), i + 1))
}

/// Lexes a quoted literal starting at the quote `cs[i]`; strings are decoded.
fn lex_quoted(cs: &[char], i: usize, quote: char, line: usize) -> Result<(Tk, usize), LexError> {
    let mut s = String::new();
    let mut j = i + 1;
    let what = if quote == '"' { "string" } else { "character" };
    let unterminated = || LexError {
        line,
        message: format!("unterminated {what} literal; close it on the same line"),
    };
    loop {
        let Some(&c) = cs.get(j) else {
            return Err(unterminated());
        };
        if c == '\n' {
            return Err(unterminated());
        }
        if c == quote {
            j += 1;
            break;
        }
        if c == '\\' {
            let (decoded, k) = decode_escape(cs, j + 1);
            s.push(decoded);
            j = k;
            continue;
        }
        s.push(c);
        j += 1;
    }
    Ok((if quote == '"' { Tk::Str(s) } else { Tk::Char }, j))
}

/// Decodes the escape whose first character (after `\`) is at `j`.
fn decode_escape(cs: &[char], j: usize) -> (char, usize) {
    let Some(&c) = cs.get(j) else {
        return ('\\', j);
    };
    let simple = match c {
        'n' => Some('\n'),
        't' => Some('\t'),
        'r' => Some('\r'),
        'a' => Some('\u{7}'),
        'b' => Some('\u{8}'),
        'f' => Some('\u{c}'),
        'v' => Some('\u{b}'),
        '\\' | '"' | '\'' | '?' => Some(c),
        _ => None,
    };
    if let Some(s) = simple {
        return (s, j + 1);
    }
    let radix_digits = |start: usize, radix: u32, max: usize| {
        let mut k = start;
        let mut v: u32 = 0;
        while k < cs.len() && k - start < max {
            match cs[k].to_digit(radix) {
                Some(d) => v = v.saturating_mul(radix).saturating_add(d),
                None => break,
            }
            k += 1;
        }
        (char::from_u32(v).unwrap_or('\u{fffd}'), k)
    };
    match c {
        'x' => radix_digits(j + 1, 16, usize::MAX),
        'u' => radix_digits(j + 1, 16, 4),
        'U' => radix_digits(j + 1, 16, 8),
        '0'..='7' => radix_digits(j, 8, 3),
        // A newline after a backslash in a literal is never a splice here
        // (splices are gone), so it ends the literal as unterminated.
        '\n' => ('\\', j),
        _ => (c, j + 1),
    }
}

/// Lexes a raw string whose opening quote is at `cs[q]`.
fn lex_raw_string(cs: &[char], q: usize, line: usize) -> Result<(Tk, usize), LexError> {
    let bad = || LexError {
        line,
        message: "malformed or unterminated raw string literal".into(),
    };
    let mut k = q + 1;
    let mut delim = String::new();
    loop {
        let &c = cs.get(k).ok_or_else(bad)?;
        if c == '(' {
            break;
        }
        if c.is_whitespace() || c == '\\' || c == ')' || delim.len() >= 16 {
            return Err(bad());
        }
        delim.push(c);
        k += 1;
    }
    let close: Vec<char> = std::iter::once(')')
        .chain(delim.chars())
        .chain(std::iter::once('"'))
        .collect();
    let body_start = k + 1;
    let mut j = body_start;
    while j + close.len() <= cs.len() {
        if cs[j..j + close.len()] == close[..] {
            let body: String = cs[body_start..j].iter().collect();
            return Ok((Tk::Str(body), j + close.len()));
        }
        j += 1;
    }
    Err(bad())
}

/// Tricky sources and the launch specification the one rule finds in each
/// (`None`: the source has no usable launch line). Every consumer of launch
/// lines (checker, worker, dedupe, answer parser, export) tests itself against
/// this table, so they cannot drift apart again.
pub const LAUNCH_LINE_CASES: &[(&str, Option<&str>)] = &[
    ("// kiln: block=256 grid=T smem=0\nint a;\n", Some("block=256 grid=T smem=0")),
    ("//kiln:block=32 grid=1 smem=0\n", Some("block=32 grid=1 smem=0")),
    ("//\tkiln:   block=64  grid=T smem=0  \n", Some("block=64  grid=T smem=0")),
    ("int a; // kiln: block=32 grid=1 smem=0\r\nint b;\r\n", Some("block=32 grid=1 smem=0")),
    // In a string literal: not a comment, so the real one is the only one.
    (
        "const char* s = \"// kiln: block=1 grid=1 smem=0\";\n// kiln: block=2 grid=2 smem=0\n",
        Some("block=2 grid=2 smem=0"),
    ),
    (
        "const char* r = R\"x(\n// kiln: block=1 grid=1 smem=0\n)x\";\n// kiln: block=3 grid=3 smem=0\n",
        Some("block=3 grid=3 smem=0"),
    ),
    // A comment opener inside a character literal is content.
    ("char c = '/'; // kiln: block=8 grid=1 smem=0\n", Some("block=8 grid=1 smem=0")),
    // In a #if 0 branch: still the one comment.
    ("#if 0\n// kiln: block=4 grid=4 smem=0\n#endif\n", Some("block=4 grid=4 smem=0")),
    // Not candidates at all.
    (
        "// kiln-offline: tile=4\n// kiln rounds once\n// kiln: block=16 grid=1 smem=0\n",
        Some("block=16 grid=1 smem=0"),
    ),
    ("int a;\n", None),
    ("// KILN: block=1 grid=1 smem=0\n", None),
    ("// kiln: block=1 grid=1 smem=0\n///kiln: block=2 grid=1 smem=0\n", None),
    ("// kiln: block=1 grid=1 smem=0\n// Kiln: block=2 grid=1 smem=0\n", None),
    ("// kiln : block=1 grid=1 smem=0\n", None),
    ("// kiln: block=1 grid=1 smem=0\n// kiln: block=2 grid=1 smem=0\n", None),
    ("/* // kiln: block=1 grid=1 smem=0 */\n", None),
    ("// kiln: block=1 grid=1 smem=0\n/*\n kiln: block=2 grid=1 smem=0\n*/\n", None),
    ("// kiln: block=1 grid=1 smem=0 \\\n grid=2\n", None),
    ("// x \\\n// kiln: block=1 grid=1 smem=0\n", None),
    ("/* open\n// kiln: block=1 grid=1 smem=0\n", None),
    ("// kiln: block=1 grid=1 smem=0\n\"open\n", None),
    ("// kiln: block=1 grid=1 smem=0\rint counter;\n", None),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_line_table() {
        for (src, want) in LAUNCH_LINE_CASES {
            let got = launch_line(src).ok().map(|l| l.spec);
            assert_eq!(got.as_deref(), *want, "{src:?}");
        }
    }

    #[test]
    fn launch_line_errors_are_specific() {
        assert_eq!(launch_line("int a;"), Err(LaunchLineError::Missing));
        assert!(matches!(
            launch_line("// KILN: block=1 grid=1 smem=0\n"),
            Err(LaunchLineError::Misspelled { line: 1, .. })
        ));
        assert!(matches!(
            launch_line("\n/* kiln: x */"),
            Err(LaunchLineError::InBlockComment { line: 2 })
        ));
        assert!(matches!(
            launch_line("// kiln: block=1 \\\ngrid=1 smem=0"),
            Err(LaunchLineError::Spliced { line: 1 })
        ));
        assert_eq!(
            launch_line("// kiln: a\nint x;\n// kiln: b\n"),
            Err(LaunchLineError::Multiple { lines: vec![1, 3] })
        );
        let l = launch_line("int a; //   kiln:  block=32 grid=ceil_div(T,4),1,1 smem=0  \n")
            .expect("found");
        assert_eq!(l.line, 1);
        assert_eq!(l.spec, "block=32 grid=ceil_div(T,4),1,1 smem=0");
        assert_eq!(
            l.canonical(),
            "// kiln: block=32 grid=ceil_div(T,4),1,1 smem=0"
        );
        let msg = LaunchLineError::Misspelled {
            line: 3,
            found: "// KILN:".into(),
        }
        .to_string();
        assert!(msg.contains("// kiln: block="), "{msg}");
    }

    #[test]
    fn strip_comments_keeps_lines() {
        let src = "a /* one\ntwo */ b // c\n\"//x\" d";
        let stripped = strip_comments(src).expect("strip");
        assert_eq!(stripped.lines().count(), 3);
        assert!(!stripped.contains("one") && !stripped.contains("// c"));
        assert!(stripped.contains("\"//x\""));
        let spliced = strip_comments("#define X a \\\n b\nY").expect("strip");
        assert_eq!(spliced, "#define X a  b\n\nY");
    }

    #[test]
    fn tokens_keep_spelling_spacing_and_directive_positions() {
        let lexed = lex("int a&&b;\n#define N 4\nx = \"s  t\";").expect("lex");
        let texts: Vec<&str> = lexed.tokens.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(
            texts,
            ["int", "a", "&", "&", "b", ";", "x", "=", "\"s  t\"", ";"]
        );
        assert!(!lexed.tokens[3].space_before && lexed.tokens[1].space_before);
        assert_eq!(lexed.directives.len(), 1);
        assert_eq!(lexed.directives[0].at, 6);
        assert_eq!(lexed.directives[0].line, 2);
    }

    #[test]
    fn ambiguous_line_ends_are_errors() {
        assert!(lex("int a; \\ \nint b;").is_err());
        assert!(lex("int a;\rint b;").is_err());
        assert!(lex("int a;\r\nint b;\r\n").is_ok());
        assert!(lex("#define A 1 \\\r\n + 2\r\n").is_ok());
    }

    #[test]
    fn hostile_bytes_do_not_panic() {
        for src in [
            "\u{0}\u{0}",
            "\"\\",
            "R\"",
            "R\"abc",
            "'",
            "#",
            "%:",
            "\\",
            "/*",
            "//",
            "\\\n",
            "é€𝄞 // kiln",
            "/* kiln",
            "//kil",
            "// kiln",
            "// kiln:",
        ] {
            let _ = lex(src);
            let _ = launch_line(src);
        }
    }
}
