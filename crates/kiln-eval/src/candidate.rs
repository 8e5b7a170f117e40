//! Static checks on an untrusted candidate source, before anything compiles.
//!
//! A candidate is one CUDA C++ text from a proposer (usually an LLM). Before it
//! reaches NVRTC, [`Candidate::check`] proves the cheap things and rejects with
//! a reason the proposer can act on ([`StaticCheckError`]):
//!
//! 1. Size: not empty, at most [`MAX_SOURCE_BYTES`].
//! 2. Lexing: backslash-newline splices are joined first (as the preprocessor
//!    does), then comments are stripped; string, character and raw string
//!    literals are understood, so a `//` inside a string is not a comment.
//! 3. Launch line: exactly one `// kiln: block=… grid=… smem=…` comment. Its
//!    text is returned in [`CheckedCandidate::launch`]; kiln-kernels' launch
//!    module parses the expressions.
//! 4. Directives: `#include` only of `<cuda_*.h>`, `<cuda/…>`, `<cub/…>`,
//!    `<cooperative_groups.h>`, `<cooperative_groups/…>`, `<mma.h>` (no quoted
//!    or computed includes, no `..`); no `#include_next`/`#import`; no `##`
//!    token pasting (it can assemble a forbidden keyword the scan cannot see);
//!    function-like macros may not expand to `__device__`, `__managed__` or
//!    `static`. Object-like macros are expanded before the scans below.
//! 5. Forbidden constructs (see [`FORBIDDEN_IDENTIFIERS`]): managed memory,
//!    device `printf`, device-heap `malloc`/`free`, clocks and timers (in code
//!    and in `asm` strings: `%clock`, `%globaltimer`).
//! 6. **No state that persists across launches.** Caching results between
//!    calls is a known cheat: a kernel that remembers its inputs or outputs can
//!    skip work during timing repetitions. So a candidate may not declare
//!    `__device__`/`__managed__` variables, mutable namespace-scope variables,
//!    or `static` variables in device code, unless they are read-only
//!    (`__constant__`, `constexpr`, or `const` objects) or per-launch
//!    (`__shared__`, including `extern __shared__`). `__device__` functions
//!    are of course fine.
//! 7. Entry point: exactly one definition of `__global__ void <entry>(…)`,
//!    declared `extern "C"`, whose parameters match the target's
//!    [`TargetSignature`] by count, type and constness. Names may differ;
//!    whitespace, `__restrict__`, and `const T*` vs `T const*` are tolerated.
//!
//! Inline PTX (`asm`) is allowed (`cp.async`, `ldmatrix`, `mma` need it) but
//! may not read `%clock`, `%clock64` or `%globaltimer`: no correct kernel needs
//! a timer, and one that reads it can behave differently while being timed.
//! Preprocessor conditionals are not evaluated: every branch of an `#if` is
//! scanned (so two `#if`/`#else` definitions of the entry are a duplicate).
//! The scan is a first line of defence, not a proof: the worker also uses
//! fresh random inputs per trial and fills outputs with a NaN sentinel.

use kiln_kernels::DType;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// The largest candidate source accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 200 * 1024;

/// Upper bound on tokens after object-like macro expansion (stops macro bombs).
pub const MAX_EXPANDED_TOKENS: usize = 1 << 20;

/// Header prefixes a candidate may `#include` (inside `<…>`).
pub const ALLOWED_INCLUDE_PREFIXES: &[&str] = &["cuda_", "cuda/", "cub/", "cooperative_groups/"];

/// Headers a candidate may `#include` exactly (inside `<…>`).
pub const ALLOWED_INCLUDES: &[&str] = &["cooperative_groups.h", "mma.h", "cuda_pipeline.h"];

/// Identifiers a candidate may not use anywhere, each with the reason given to the proposer.
pub const FORBIDDEN_IDENTIFIERS: &[(&str, &str)] = &[
    ("__managed__", "managed memory persists across launches; a kernel may not keep state between calls"),
    ("__location__", "spell memory spaces as __shared__ or __constant__; a kernel may not keep state between calls"),
    ("__declspec", "spell memory spaces as __shared__ or __constant__"),
    ("printf", "device printf writes into the evaluator's worker channel and distorts timing; remove it"),
    ("malloc", "device-heap allocation persists across launches and is slow; use registers or shared memory"),
    ("calloc", "device-heap allocation persists across launches and is slow; use registers or shared memory"),
    ("realloc", "device-heap allocation persists across launches and is slow; use registers or shared memory"),
    ("free", "device-heap allocation persists across launches and is slow; use registers or shared memory"),
    ("clock", "kernels may not read clocks or timers"),
    ("clock64", "kernels may not read clocks or timers"),
    ("globaltimer", "kernels may not read clocks or timers"),
    ("__globaltimer", "kernels may not read clocks or timers"),
    ("chrono", "kernels may not read clocks or timers"),
];

/// Substrings forbidden inside string literals (inline PTX), with the reason.
const FORBIDDEN_ASM: &[(&str, &str)] = &[
    (
        "%globaltimer",
        "inline PTX may not read %globaltimer: kernels may not read clocks or timers",
    ),
    (
        "%clock",
        "inline PTX may not read %clock/%clock64: kernels may not read clocks or timers",
    ),
];

/// Identifiers that take a parenthesised argument and are not function names.
const ATTRIBUTE_LIKE: &[&str] = &[
    "__launch_bounds__",
    "__align__",
    "alignas",
    "__attribute__",
    "__maxnreg__",
    "__cluster_dims__",
    "decltype",
    "sizeof",
    "alignof",
    "__builtin_align__",
    "noexcept",
];

/// The element type of a pointer parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScalarKind {
    /// The target's element type: `scalar_t` or its concrete spelling (e.g. `__nv_bfloat16`).
    Dtype,
    /// `float`.
    F32,
    /// `unsigned int` / `uint32_t`.
    U32,
    /// `int` / `int32_t`.
    I32,
}

/// The kind of one kernel parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ParamKind {
    /// A read-only input buffer: `const T*`.
    ConstPtr(ScalarKind),
    /// A written output buffer: `T*`.
    MutPtr(ScalarKind),
    /// A 32-bit signed scalar passed by value: `int` (e.g. the token count `T`).
    Int,
}

/// One parameter of a target's entry point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    /// The name used in messages; a candidate may name it differently.
    pub name: String,
    /// Type and constness.
    pub kind: ParamKind,
}

/// The entry point a target expects every candidate to define.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSignature {
    /// The `extern "C"` kernel name.
    pub entry: String,
    /// The parameters in order.
    pub params: Vec<Param>,
    /// The type `scalar_t` stands for.
    pub dtype: DType,
}

impl TargetSignature {
    /// Renders the signature as C, e.g. `rmsnorm(const scalar_t* x, scalar_t* y, int T)`.
    pub fn render(&self) -> String {
        let params: Vec<String> = self.params.iter().map(render_param).collect();
        format!("{}({})", self.entry, params.join(", "))
    }

    fn render_with_note(&self) -> String {
        format!("{} with scalar_t = {}", self.render(), self.dtype.c_type())
    }
}

/// The CUDA C++ spellings of a dtype a candidate may use besides `scalar_t`.
fn scalar_spellings(dtype: DType) -> &'static [&'static str] {
    match dtype {
        DType::BF16 => &["__nv_bfloat16", "nv_bfloat16"],
        DType::F16 => &["__half", "half"],
        DType::F32 => &["float"],
    }
}

fn scalar_name(kind: ScalarKind) -> &'static str {
    match kind {
        ScalarKind::Dtype => "scalar_t",
        ScalarKind::F32 => "float",
        ScalarKind::U32 => "unsigned int",
        ScalarKind::I32 => "int",
    }
}

fn render_kind(kind: ParamKind) -> String {
    match kind {
        ParamKind::ConstPtr(s) => format!("const {}*", scalar_name(s)),
        ParamKind::MutPtr(s) => format!("{}*", scalar_name(s)),
        ParamKind::Int => "int".to_string(),
    }
}

fn render_param(p: &Param) -> String {
    format!("{} {}", render_kind(p.kind), p.name)
}

/// An untrusted candidate source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The CUDA C++ text as the proposer wrote it.
    pub source: String,
}

/// The `// kiln:` launch comment found in a candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchComment {
    /// 1-based line number in the source.
    pub line: usize,
    /// The text after `kiln:`, trimmed (e.g. `block=256 grid=ceil_div(T, 8) smem=0`).
    pub spec: String,
}

/// What a successful static check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCandidate {
    /// The launch line, for kiln-kernels' launch parser.
    pub launch: LaunchComment,
    /// 1-based line of the entry point's definition.
    pub entry_line: usize,
}

/// Why a candidate was rejected before compiling; every message tells the proposer what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StaticCheckError {
    /// The source is empty or only whitespace.
    #[error("the candidate source is empty")]
    Empty,
    /// The source exceeds [`MAX_SOURCE_BYTES`].
    #[error(
        "the candidate source is {bytes} bytes, more than the limit of {limit} bytes; shorten it"
    )]
    TooLarge {
        /// Size of the source.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// An unterminated comment or literal.
    #[error("line {line}: {message}")]
    Lex {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No `// kiln:` comment.
    #[error("no launch line: add one comment `// kiln: block=<expr> grid=<expr>[,<expr>,<expr>] smem=<expr>`")]
    MissingLaunchComment,
    /// More than one `// kiln:` comment.
    #[error("{} launch lines (lines {lines:?}); keep exactly one `// kiln:` comment", .lines.len())]
    MultipleLaunchComments {
        /// 1-based lines of each.
        lines: Vec<usize>,
    },
    /// A disallowed `#include`.
    #[error("line {line}: `#include {header}` is not allowed ({reason}); only <cuda_*.h>, <cuda/...>, <cub/...>, <cooperative_groups.h>, <cooperative_groups/...> and <mma.h> are")]
    ForbiddenInclude {
        /// 1-based line.
        line: usize,
        /// The header as written.
        header: String,
        /// Why.
        reason: String,
    },
    /// A disallowed preprocessor directive.
    #[error("line {line}: directive `#{directive}` is not allowed")]
    ForbiddenDirective {
        /// 1-based line.
        line: usize,
        /// The directive name.
        directive: String,
    },
    /// `##` token pasting.
    #[error("line {line}: `##` token pasting is not allowed (it can assemble names the checker cannot see); write the names out")]
    TokenPasting {
        /// 1-based line.
        line: usize,
    },
    /// A function-like macro expands to a storage keyword.
    #[error("line {line}: function-like macro `{name}` expands to `{keyword}`; write declarations out so they can be checked")]
    MacroHidesDeclaration {
        /// 1-based line.
        line: usize,
        /// The macro.
        name: String,
        /// The keyword it contains.
        keyword: String,
    },
    /// Object-like macro expansion exceeded [`MAX_EXPANDED_TOKENS`].
    #[error("macro expansion exceeds {limit} tokens; simplify the macros")]
    MacroExpansionTooLarge {
        /// The limit.
        limit: usize,
    },
    /// A forbidden identifier or inline-PTX operand.
    #[error("line {line}: `{construct}` is not allowed: {reason}")]
    ForbiddenConstruct {
        /// 1-based line.
        line: usize,
        /// What was found.
        construct: String,
        /// Why it is forbidden.
        reason: String,
    },
    /// A variable that would keep state across launches.
    #[error("line {line}: `{name}` is {what}, which keeps state across launches (caching results between calls is not allowed); use __shared__ for per-block scratch, __constant__ or constexpr for read-only tables, or registers")]
    PersistentState {
        /// 1-based line.
        line: usize,
        /// The variable's name as far as it could be told.
        name: String,
        /// What kind of declaration it is.
        what: String,
    },
    /// A closing bracket without its opening one.
    #[error("line {line}: unbalanced `{token}`")]
    Unbalanced {
        /// 1-based line.
        line: usize,
        /// The closing bracket.
        token: String,
    },
    /// The entry point is not defined.
    #[error("no definition of `extern \"C\" __global__ void {entry}(...)`{}; the target needs {signature} (spell the name literally, not through a function-like macro)", found_note(.found))]
    MissingEntry {
        /// The expected entry name.
        entry: String,
        /// Names of the `__global__` functions that were found.
        found: Vec<String>,
        /// The expected signature.
        signature: String,
    },
    /// The entry point is defined more than once.
    #[error("entry point `{entry}` is defined {} times (lines {lines:?}); define it exactly once", .lines.len())]
    DuplicateEntry {
        /// The entry name.
        entry: String,
        /// 1-based lines of each definition.
        lines: Vec<usize>,
    },
    /// The entry point is not `extern "C"` (so its name would be mangled).
    #[error("line {line}: entry point `{entry}` must be declared `extern \"C\" __global__ void {entry}(...)` (not a template, not C++-mangled)")]
    EntryNotExternC {
        /// The entry name.
        entry: String,
        /// 1-based line.
        line: usize,
    },
    /// Wrong number of parameters.
    #[error(
        "entry point `{entry}` takes {found} parameters, the target needs {expected}: {signature}"
    )]
    ParamCount {
        /// The entry name.
        entry: String,
        /// Parameters found.
        found: usize,
        /// Parameters expected.
        expected: usize,
        /// The expected signature.
        signature: String,
    },
    /// One parameter does not match.
    #[error(
        "entry point parameter {index} is `{found}`{}, the target needs `{expected}`: {signature}",
        why_note(.why)
    )]
    ParamMismatch {
        /// 1-based parameter index.
        index: usize,
        /// The parameter as written.
        found: String,
        /// The expected type.
        expected: String,
        /// Extra explanation, possibly empty.
        why: String,
        /// The expected signature (it names the entry point).
        signature: String,
    },
}

fn found_note(found: &[String]) -> String {
    if found.is_empty() {
        " (no __global__ functions found)".to_string()
    } else {
        format!(" (found __global__ functions: {})", found.join(", "))
    }
}

fn why_note(why: &str) -> String {
    if why.is_empty() {
        String::new()
    } else {
        format!(" ({why})")
    }
}

impl Candidate {
    /// Wraps a source text.
    pub fn new(source: impl Into<String>) -> Self {
        Candidate {
            source: source.into(),
        }
    }

    /// Runs every static check against `target`; the first failure is returned.
    pub fn check(&self, target: &TargetSignature) -> Result<CheckedCandidate, StaticCheckError> {
        check_size(&self.source)?;
        let lexed = lex(&self.source)?;
        let launch = find_launch_line(&lexed.comments)?;
        let macros = check_directives(&lexed.directives)?;
        let tokens = expand_object_macros(&lexed.tokens, &macros)?;
        scan_forbidden(&tokens)?;
        for d in &lexed.directives {
            scan_forbidden(&d.tokens)?;
        }
        let functions = scan_structure(&tokens)?;
        let entry_line = check_entry(&functions, target)?;
        Ok(CheckedCandidate { launch, entry_line })
    }
}

fn check_size(source: &str) -> Result<(), StaticCheckError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(StaticCheckError::TooLarge {
            bytes: source.len(),
            limit: MAX_SOURCE_BYTES,
        });
    }
    if source.trim().is_empty() {
        return Err(StaticCheckError::Empty);
    }
    Ok(())
}

/// Returns the source with comments replaced by spaces and backslash-newline
/// splices joined (newlines are kept, so most line numbers survive).
pub fn strip_comments(source: &str) -> Result<String, StaticCheckError> {
    check_size(source)?;
    Ok(lex(source)?.stripped)
}

/// Finds the single `// kiln:` launch comment.
pub fn launch_line(source: &str) -> Result<LaunchComment, StaticCheckError> {
    check_size(source)?;
    find_launch_line(&lex(source)?.comments)
}

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
enum Tk {
    Ident(String),
    /// A string literal, escapes decoded.
    Str(String),
    Char,
    Num,
    Punct(&'static str),
    Other(char),
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    tk: Tk,
    line: usize,
}

impl Token {
    fn is_ident(&self, s: &str) -> bool {
        matches!(&self.tk, Tk::Ident(x) if x == s)
    }
    fn is_punct(&self, s: &str) -> bool {
        matches!(&self.tk, Tk::Punct(x) if *x == s)
    }
    fn ident(&self) -> Option<&str> {
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

struct Directive {
    line: usize,
    /// The directive's text after `#`, comments replaced by spaces.
    text: String,
    tokens: Vec<Token>,
}

struct LineComment {
    line: usize,
    text: String,
}

struct Lexed {
    tokens: Vec<Token>,
    directives: Vec<Directive>,
    comments: Vec<LineComment>,
    stripped: String,
}

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

fn lex(source: &str) -> Result<Lexed, StaticCheckError> {
    // Phase 2: join backslash-newline splices, remembering original lines.
    let mut cs: Vec<char> = Vec::with_capacity(source.len());
    let mut ln: Vec<usize> = Vec::with_capacity(source.len());
    let raw: Vec<char> = source.chars().collect();
    let mut line = 1;
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c == '\\' && raw.get(i + 1) == Some(&'\n') {
            line += 1;
            i += 2;
            continue;
        }
        if c == '\\' && raw.get(i + 1) == Some(&'\r') && raw.get(i + 2) == Some(&'\n') {
            line += 1;
            i += 3;
            continue;
        }
        cs.push(c);
        ln.push(line);
        if c == '\n' {
            line += 1;
        }
        i += 1;
    }

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
            out.emit(c, ln[i]);
            i += 1;
            continue;
        }
        if c.is_whitespace() {
            out.emit(c, ln[i]);
            i += 1;
            continue;
        }
        if c == '/' && next == Some('/') {
            let mut j = i + 2;
            while j < n && cs[j] != '\n' {
                j += 1;
            }
            comments.push(LineComment {
                line: ln[i],
                text: cs[i + 2..j].iter().collect(),
            });
            out.emit(' ', ln[i]);
            i = j;
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut j = i + 2;
            loop {
                if j + 1 >= n {
                    return Err(StaticCheckError::Lex {
                        line: ln[i],
                        message: "unterminated /* comment".into(),
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
                },
                out.text.len(),
            ));
            i += width;
            continue;
        }
        let (tk, j) = lex_token(&cs, i, ln[i])?;
        for k in i..j {
            out.emit(cs[k], ln[k]);
        }
        let tok = Token { tk, line: ln[i] };
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

fn lex_token(cs: &[char], i: usize, line: usize) -> Result<(Tk, usize), StaticCheckError> {
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
fn lex_quoted(
    cs: &[char],
    i: usize,
    quote: char,
    line: usize,
) -> Result<(Tk, usize), StaticCheckError> {
    let mut s = String::new();
    let mut j = i + 1;
    let what = if quote == '"' { "string" } else { "character" };
    loop {
        let Some(&c) = cs.get(j) else {
            return Err(StaticCheckError::Lex {
                line,
                message: format!("unterminated {what} literal"),
            });
        };
        if c == '\n' {
            return Err(StaticCheckError::Lex {
                line,
                message: format!("unterminated {what} literal"),
            });
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
        _ => (c, j + 1),
    }
}

/// Lexes a raw string whose opening quote is at `cs[q]`.
fn lex_raw_string(cs: &[char], q: usize, line: usize) -> Result<(Tk, usize), StaticCheckError> {
    let bad = || StaticCheckError::Lex {
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

// ---------------------------------------------------------------- launch line

fn find_launch_line(comments: &[LineComment]) -> Result<LaunchComment, StaticCheckError> {
    let found: Vec<LaunchComment> = comments
        .iter()
        .filter_map(|c| {
            let t = c.text.trim_start();
            t.strip_prefix("kiln:").map(|rest| LaunchComment {
                line: c.line,
                spec: rest.trim().to_string(),
            })
        })
        .collect();
    match found.len() {
        0 => Err(StaticCheckError::MissingLaunchComment),
        1 => Ok(found
            .into_iter()
            .next()
            .ok_or(StaticCheckError::MissingLaunchComment)?),
        _ => Err(StaticCheckError::MultipleLaunchComments {
            lines: found.iter().map(|l| l.line).collect(),
        }),
    }
}

// ---------------------------------------------------------------- directives and macros

fn include_allowed(header: &str) -> bool {
    ALLOWED_INCLUDES.contains(&header)
        || ALLOWED_INCLUDE_PREFIXES
            .iter()
            .any(|p| header.starts_with(p))
}

fn check_include(d: &Directive) -> Result<(), StaticCheckError> {
    let rest = d.text.trim_start().trim_start_matches("include").trim();
    let reject = |reason: &str| StaticCheckError::ForbiddenInclude {
        line: d.line,
        header: rest.to_string(),
        reason: reason.to_string(),
    };
    if rest.starts_with('"') {
        return Err(reject("quoted includes are not allowed"));
    }
    let Some(inner) = rest
        .strip_prefix('<')
        .and_then(|r| r.split_once('>'))
        .map(|(h, _)| h.trim())
    else {
        return Err(reject("computed includes are not allowed; write <header>"));
    };
    if inner.contains("..") || inner.starts_with('/') || inner.contains('\\') {
        return Err(reject("paths may not leave the include directories"));
    }
    if !include_allowed(inner) {
        return Err(reject("not in the allowed list"));
    }
    Ok(())
}

type Macros = HashMap<String, Vec<Token>>;

fn check_directives(directives: &[Directive]) -> Result<Macros, StaticCheckError> {
    let mut object_macros = Macros::new();
    for d in directives {
        if let Some(t) = d.tokens.iter().find(|t| t.is_punct("##")) {
            return Err(StaticCheckError::TokenPasting { line: t.line });
        }
        let Some(name) = d.tokens.first().and_then(Token::ident) else {
            continue;
        };
        match name {
            "include" => check_include(d)?,
            "include_next" | "import" => {
                return Err(StaticCheckError::ForbiddenDirective {
                    line: d.line,
                    directive: name.to_string(),
                })
            }
            "define" => {
                let Some(mname) = d.tokens.get(1).and_then(Token::ident) else {
                    continue;
                };
                // Function-like iff `(` follows the name with no space between.
                let after_define = d
                    .text
                    .trim_start()
                    .strip_prefix("define")
                    .unwrap_or("")
                    .trim_start();
                let function_like = after_define
                    .strip_prefix(mname)
                    .is_some_and(|r| r.starts_with('('));
                if function_like {
                    let close = d
                        .tokens
                        .iter()
                        .position(|t| t.is_punct(")"))
                        .unwrap_or(d.tokens.len());
                    let body = d.tokens.get(close + 1..).unwrap_or(&[]);
                    for kw in ["__device__", "__managed__", "static"] {
                        if let Some(t) = body.iter().find(|t| t.is_ident(kw)) {
                            return Err(StaticCheckError::MacroHidesDeclaration {
                                line: t.line,
                                name: mname.to_string(),
                                keyword: kw.to_string(),
                            });
                        }
                    }
                } else {
                    object_macros.insert(mname.to_string(), d.tokens[2..].to_vec());
                }
            }
            _ => {}
        }
    }
    Ok(object_macros)
}

fn expand_object_macros(tokens: &[Token], macros: &Macros) -> Result<Vec<Token>, StaticCheckError> {
    let mut out = Vec::with_capacity(tokens.len());
    let mut active: Vec<&str> = Vec::new();
    for t in tokens {
        expand_into(t, t.line, macros, &mut active, &mut out)?;
    }
    Ok(out)
}

fn expand_into<'m>(
    t: &Token,
    line: usize,
    macros: &'m Macros,
    active: &mut Vec<&'m str>,
    out: &mut Vec<Token>,
) -> Result<(), StaticCheckError> {
    if out.len() >= MAX_EXPANDED_TOKENS {
        return Err(StaticCheckError::MacroExpansionTooLarge {
            limit: MAX_EXPANDED_TOKENS,
        });
    }
    if let Tk::Ident(name) = &t.tk {
        if let Some((key, body)) = macros.get_key_value(name.as_str()) {
            if !active.contains(&key.as_str()) && active.len() < 64 {
                active.push(key.as_str());
                for b in body {
                    expand_into(b, line, macros, active, out)?;
                }
                active.pop();
                return Ok(());
            }
        }
    }
    out.push(Token {
        tk: t.tk.clone(),
        line,
    });
    Ok(())
}

fn scan_forbidden(tokens: &[Token]) -> Result<(), StaticCheckError> {
    let mut joined = String::new();
    let mut joined_line = 0;
    let check_joined = |s: &str, line: usize| -> Result<(), StaticCheckError> {
        for (needle, reason) in FORBIDDEN_ASM {
            if s.contains(needle) {
                return Err(StaticCheckError::ForbiddenConstruct {
                    line,
                    construct: needle.to_string(),
                    reason: reason.to_string(),
                });
            }
        }
        Ok(())
    };
    for (i, t) in tokens.iter().enumerate() {
        match &t.tk {
            Tk::Ident(name) => {
                if let Some((_, reason)) = FORBIDDEN_IDENTIFIERS.iter().find(|(f, _)| f == name) {
                    return Err(StaticCheckError::ForbiddenConstruct {
                        line: t.line,
                        construct: name.clone(),
                        reason: reason.to_string(),
                    });
                }
                if name == "__attribute__" {
                    attribute_check(&tokens[i + 1..], t.line)?;
                }
            }
            Tk::Str(s) => {
                if joined.is_empty() {
                    joined_line = t.line;
                }
                joined.push_str(s);
                let continues = matches!(tokens.get(i + 1).map(|t| &t.tk), Some(Tk::Str(_)));
                if !continues {
                    check_joined(&joined, joined_line)?;
                    joined.clear();
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Rejects `__attribute__((device))` and friends, which spell `__device__` another way.
fn attribute_check(after: &[Token], line: usize) -> Result<(), StaticCheckError> {
    let Some(group) = balanced_group(after, 0) else {
        return Ok(());
    };
    for t in &after[..group] {
        if let Some(name) = t.ident() {
            let bare = name.trim_matches('_');
            if matches!(bare, "device" | "managed" | "location") {
                return Err(StaticCheckError::ForbiddenConstruct {
                    line,
                    construct: format!("__attribute__(({name}))"),
                    reason: "spell memory spaces as __shared__ or __constant__; a kernel may not keep state between calls".into(),
                });
            }
        }
    }
    Ok(())
}

/// If `toks[at]` is `(`, returns the index just past its matching `)`.
fn balanced_group(toks: &[Token], at: usize) -> Option<usize> {
    if !toks.get(at)?.is_punct("(") {
        return None;
    }
    let mut depth = 0usize;
    for (k, t) in toks.iter().enumerate().skip(at) {
        if t.is_punct("(") {
            depth += 1;
        } else if t.is_punct(")") {
            depth -= 1;
            if depth == 0 {
                return Some(k + 1);
            }
        }
    }
    None
}

// ---------------------------------------------------------------- structure

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Namespace { extern_c: bool },
    Class,
    Code,
    Init,
}

struct Frame {
    scope: Scope,
    head_start: usize,
    analyzed: bool,
    paren: usize,
    /// Template-argument depth; tracked only in namespace and class scope.
    angle: usize,
}

impl Frame {
    fn new(scope: Scope, head_start: usize) -> Self {
        Frame {
            scope,
            head_start,
            analyzed: false,
            paren: 0,
            angle: 0,
        }
    }

    fn reset_head(&mut self, at: usize) {
        self.head_start = at;
        self.analyzed = false;
        self.angle = 0;
    }

    fn tracks_angles(&self) -> bool {
        self.paren == 0 && matches!(self.scope, Scope::Namespace { .. } | Scope::Class)
    }
}

struct GlobalFn {
    name: String,
    line: usize,
    extern_c: bool,
    params: Vec<Vec<Token>>,
}

fn has_ident(head: &[Token], s: &str) -> bool {
    head.iter().any(|t| t.is_ident(s))
}

/// Index of the first `(` at depth 0 that is not an attribute's argument list.
fn call_paren(head: &[Token]) -> Option<usize> {
    let mut depth = 0usize;
    let mut k = 0;
    while k < head.len() {
        let t = &head[k];
        if depth == 0 && t.ident().is_some_and(|n| ATTRIBUTE_LIKE.contains(&n)) {
            if let Some(end) = balanced_group(head, k + 1) {
                k = end;
                continue;
            }
        }
        if t.is_punct("(") {
            if depth == 0 {
                return Some(k);
            }
            depth += 1;
        } else if t.is_punct("[") {
            depth += 1;
        } else if (t.is_punct(")") || t.is_punct("]")) && depth > 0 {
            depth -= 1;
        }
        k += 1;
    }
    None
}

/// Whether a declaration head declares a function (not a variable).
fn is_function_head(head: &[Token]) -> bool {
    let Some(p) = call_paren(head) else {
        return false;
    };
    match head.get(p + 1).map(|t| &t.tk) {
        Some(Tk::Punct("*" | "&" | "^" | "-" | "+" | "!" | "~" | "{")) => false,
        Some(Tk::Num | Tk::Str(_) | Tk::Char) => false,
        Some(Tk::Ident(w)) if matches!(w.as_str(), "nullptr" | "true" | "false" | "NULL") => false,
        _ => true,
    }
}

fn decl_name(head: &[Token]) -> String {
    let end = head
        .iter()
        .position(|t| t.is_punct("[") || t.is_punct("("))
        .unwrap_or(head.len());
    head[..end]
        .iter()
        .rev()
        .find_map(Token::ident)
        .or_else(|| head.iter().rev().find_map(Token::ident))
        .unwrap_or("?")
        .to_string()
}

/// Whether a variable declaration is read-only or per-launch.
fn variable_is_harmless(head: &[Token]) -> bool {
    if ["__constant__", "__shared__", "constexpr"]
        .iter()
        .any(|k| has_ident(head, k))
    {
        return true;
    }
    if !has_ident(head, "const") {
        return false;
    }
    match head.iter().rposition(|t| t.is_punct("*")) {
        None => true,
        Some(star) => head[star..].iter().any(|t| t.is_ident("const")),
    }
}

/// Checks one declaration head for state that persists across launches.
fn analyze_decl(head: &[Token], scope: Scope) -> Result<(), StaticCheckError> {
    let Some(first) = head.first() else {
        return Ok(());
    };
    if is_function_head(head) {
        return Ok(());
    }
    let storage = ["__device__", "__managed__", "static"]
        .iter()
        .any(|k| has_ident(head, k));
    let type_or_alias = [
        "typedef",
        "using",
        "static_assert",
        "friend",
        "namespace",
        "struct",
        "class",
        "union",
        "enum",
        "return",
        "goto",
        "case",
        "default",
    ]
    .iter()
    .any(|k| first.is_ident(k));
    let suspicious = match scope {
        Scope::Namespace { .. } => {
            storage
                || (!type_or_alias && head.len() >= 2 && head.iter().any(|t| t.ident().is_some()))
        }
        Scope::Class | Scope::Code | Scope::Init => storage,
    };
    if !suspicious || (type_or_alias && !storage) || variable_is_harmless(head) {
        return Ok(());
    }
    // Heads in namespace scope that are not declarations (stray tokens) carry no identifiers beyond one word.
    let what = if has_ident(head, "__device__") {
        "a __device__ variable"
    } else if has_ident(head, "__managed__") {
        "a __managed__ variable"
    } else if has_ident(head, "static") {
        "a static variable"
    } else {
        "a mutable namespace-scope variable"
    };
    Err(StaticCheckError::PersistentState {
        line: first.line,
        name: decl_name(head),
        what: what.to_string(),
    })
}

fn classify_brace(head: &[Token]) -> Scope {
    if head.len() == 2
        && head[0].is_ident("extern")
        && matches!(&head[1].tk, Tk::Str(s) if s == "C")
    {
        return Scope::Namespace { extern_c: true };
    }
    if has_ident(head, "namespace") {
        return Scope::Namespace { extern_c: false };
    }
    let (mut paren, mut angle) = (0usize, 0usize);
    for t in head {
        match &t.tk {
            Tk::Punct("(" | "[") => paren += 1,
            Tk::Punct(")" | "]") => paren = paren.saturating_sub(1),
            Tk::Punct("<") => angle += 1,
            Tk::Punct(">") => angle = angle.saturating_sub(1),
            Tk::Punct("=") if paren == 0 && angle == 0 => return Scope::Init,
            _ => {}
        }
    }
    if call_paren(head).is_some() {
        return Scope::Code;
    }
    if ["struct", "class", "union", "enum"]
        .iter()
        .any(|k| has_ident(head, k))
    {
        return Scope::Class;
    }
    Scope::Init
}

fn global_fn(head: &[Token], enclosing_extern_c: bool) -> Option<GlobalFn> {
    if !has_ident(head, "__global__") {
        return None;
    }
    let p = call_paren(head)?;
    let name = head.get(p.checked_sub(1)?)?.ident()?.to_string();
    let end = balanced_group(head, p)?;
    let inner = &head[p + 1..end - 1];
    let mut params: Vec<Vec<Token>> = Vec::new();
    let mut cur = Vec::new();
    let (mut paren, mut angle) = (0usize, 0usize);
    for t in inner {
        match &t.tk {
            Tk::Punct("(" | "[") => paren += 1,
            Tk::Punct(")" | "]") => paren = paren.saturating_sub(1),
            Tk::Punct("<") => angle += 1,
            Tk::Punct(">") => angle = angle.saturating_sub(1),
            Tk::Punct(",") if paren == 0 && angle == 0 => {
                params.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(t.clone());
    }
    if !cur.is_empty() || !params.is_empty() {
        params.push(cur);
    }
    if params.len() == 1 && params[0].len() == 1 && params[0][0].is_ident("void") {
        params.clear();
    }
    let extern_c = enclosing_extern_c
        || head
            .windows(2)
            .any(|w| w[0].is_ident("extern") && matches!(&w[1].tk, Tk::Str(s) if s == "C"));
    Some(GlobalFn {
        name,
        line: head[0].line,
        extern_c,
        params,
    })
}

fn scan_structure(toks: &[Token]) -> Result<Vec<GlobalFn>, StaticCheckError> {
    let mut frames = vec![Frame::new(Scope::Namespace { extern_c: false }, 0)];
    let mut functions = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        let Tk::Punct(p) = t.tk else { continue };
        let in_extern_c = frames
            .iter()
            .any(|f| f.scope == Scope::Namespace { extern_c: true });
        let unbalanced = || StaticCheckError::Unbalanced {
            line: t.line,
            token: p.to_string(),
        };
        let top = frames.last_mut().ok_or_else(unbalanced)?;
        match p {
            "(" | "[" => top.paren += 1,
            ")" | "]" => top.paren = top.paren.checked_sub(1).ok_or_else(unbalanced)?,
            "<" if top.tracks_angles() => top.angle += 1,
            ">" if top.tracks_angles() => top.angle = top.angle.saturating_sub(1),
            ";" if top.paren == 0 => {
                if !top.analyzed {
                    analyze_decl(&toks[top.head_start..i], top.scope)?;
                }
                top.reset_head(i + 1);
            }
            "=" if top.paren == 0 && top.angle == 0 && !top.analyzed => {
                analyze_decl(&toks[top.head_start..i], top.scope)?;
                top.analyzed = true;
            }
            "{" => {
                let scope = if top.paren > 0 || matches!(top.scope, Scope::Code | Scope::Init) {
                    if top.paren == 0 && top.scope == Scope::Code {
                        if !top.analyzed {
                            analyze_decl(&toks[top.head_start..i], top.scope)?;
                        }
                        top.reset_head(i + 1);
                    }
                    if top.scope == Scope::Init {
                        Scope::Init
                    } else {
                        Scope::Code
                    }
                } else {
                    let head = &toks[top.head_start..i];
                    let scope = classify_brace(head);
                    match scope {
                        Scope::Code => functions.extend(global_fn(head, in_extern_c)),
                        Scope::Init if !top.analyzed => {
                            analyze_decl(head, top.scope)?;
                            top.analyzed = true;
                        }
                        _ => {}
                    }
                    scope
                };
                frames.push(Frame::new(scope, i + 1));
            }
            "}" => {
                let popped = frames.pop();
                let parent = frames.last_mut().ok_or_else(unbalanced)?;
                if parent.paren == 0 && popped.is_some_and(|f| f.scope != Scope::Init) {
                    parent.reset_head(i + 1);
                }
            }
            _ => {}
        }
    }
    Ok(functions)
}

// ---------------------------------------------------------------- entry point

fn check_entry(
    functions: &[GlobalFn],
    target: &TargetSignature,
) -> Result<usize, StaticCheckError> {
    let defs: Vec<&GlobalFn> = functions
        .iter()
        .filter(|f| f.name == target.entry)
        .collect();
    let def = match defs.as_slice() {
        [] => {
            return Err(StaticCheckError::MissingEntry {
                entry: target.entry.clone(),
                found: functions.iter().map(|f| f.name.clone()).collect(),
                signature: target.render_with_note(),
            })
        }
        [one] => *one,
        many => {
            return Err(StaticCheckError::DuplicateEntry {
                entry: target.entry.clone(),
                lines: many.iter().map(|f| f.line).collect(),
            })
        }
    };
    if !def.extern_c {
        return Err(StaticCheckError::EntryNotExternC {
            entry: target.entry.clone(),
            line: def.line,
        });
    }
    if def.params.len() != target.params.len() {
        return Err(StaticCheckError::ParamCount {
            entry: target.entry.clone(),
            found: def.params.len(),
            expected: target.params.len(),
            signature: target.render_with_note(),
        });
    }
    for (k, (got, want)) in def.params.iter().zip(&target.params).enumerate() {
        let why = match parse_param(got) {
            Err(why) => Some(why),
            Ok(parsed) if parsed.matches(want.kind, target.dtype) => None,
            Ok(_) => Some(String::new()),
        };
        if let Some(why) = why {
            return Err(StaticCheckError::ParamMismatch {
                index: k + 1,
                found: render_tokens(got),
                expected: render_kind(want.kind),
                why,
                signature: target.render_with_note(),
            });
        }
    }
    Ok(def.line)
}

fn render_tokens(toks: &[Token]) -> String {
    let mut s = String::new();
    for (k, t) in toks.iter().enumerate() {
        let text = t.to_string();
        let glue = k == 0
            || matches!(t.tk, Tk::Punct("*" | "&" | "::" | "," | ")" | "]"))
            || toks[k - 1].is_punct("::");
        if !glue {
            s.push(' ');
        }
        s.push_str(&text);
    }
    s
}

#[derive(Debug, PartialEq)]
struct ParsedParam {
    pointer: bool,
    pointee_const: bool,
    base: String,
}

const IGNORED_QUALIFIERS: &[&str] = &["__restrict__", "__restrict", "__grid_constant__"];
const TYPE_KEYWORDS: &[&str] = &[
    "int", "unsigned", "signed", "long", "short", "char", "float", "double",
];

/// Joins type words (`unsigned int`, `std::uint32_t`), rejecting anything else.
fn type_words(toks: &[Token]) -> Result<Vec<String>, String> {
    let mut words: Vec<String> = Vec::new();
    let mut glue_next = false;
    for t in toks {
        match &t.tk {
            Tk::Ident(w) if w == "const" || IGNORED_QUALIFIERS.contains(&w.as_str()) => {}
            Tk::Ident(w) if w == "volatile" => {
                return Err("volatile parameters are not allowed".into())
            }
            Tk::Ident(w) => {
                if glue_next {
                    if let Some(last) = words.last_mut() {
                        last.push_str(w);
                    }
                } else {
                    words.push(w.clone());
                }
                glue_next = false;
            }
            Tk::Punct("::") => {
                match words.last_mut() {
                    Some(last) if !glue_next => last.push_str("::"),
                    _ => words.push("::".into()),
                }
                glue_next = true;
            }
            _ => return Err(format!("unsupported token `{t}` in the parameter type")),
        }
    }
    Ok(words)
}

fn parse_param(toks: &[Token]) -> Result<ParsedParam, String> {
    let toks = match toks.iter().position(|t| t.is_punct("=")) {
        Some(eq) => &toks[..eq],
        None => toks,
    };
    if toks.iter().any(|t| t.is_punct("&")) {
        return Err("references are not allowed; pass a pointer or a value".into());
    }
    if toks.iter().any(|t| t.is_punct("[")) {
        return Err("array parameters are not allowed; write a pointer".into());
    }
    let stars: Vec<usize> = toks
        .iter()
        .enumerate()
        .filter(|(_, t)| t.is_punct("*"))
        .map(|(k, _)| k)
        .collect();
    match stars.as_slice() {
        [] => {
            let mut words = type_words(toks)?;
            if words.len() > 1
                && words
                    .last()
                    .is_some_and(|w| !TYPE_KEYWORDS.contains(&w.as_str()))
            {
                words.pop();
            }
            Ok(ParsedParam {
                pointer: false,
                pointee_const: false,
                base: normalize_base(&words),
            })
        }
        [star] => {
            let (before, after) = (&toks[..*star], &toks[star + 1..]);
            let words = type_words(before)?;
            let after_words = type_words(after)?;
            if after_words.len() > 1 {
                return Err("unexpected words after `*`".into());
            }
            if words.is_empty() {
                return Err("missing pointee type".into());
            }
            Ok(ParsedParam {
                pointer: true,
                pointee_const: has_ident(before, "const"),
                base: normalize_base(&words),
            })
        }
        _ => Err("pointers to pointers are not allowed".into()),
    }
}

fn normalize_base(words: &[String]) -> String {
    let joined = words.join(" ");
    let trimmed = joined.trim_start_matches("::");
    trimmed.strip_prefix("std::").unwrap_or(trimmed).to_string()
}

impl ParsedParam {
    fn matches(&self, kind: ParamKind, dtype: DType) -> bool {
        match kind {
            ParamKind::ConstPtr(s) => {
                self.pointer && self.pointee_const && base_is(&self.base, s, dtype)
            }
            ParamKind::MutPtr(s) => {
                self.pointer && !self.pointee_const && base_is(&self.base, s, dtype)
            }
            ParamKind::Int => !self.pointer && base_is(&self.base, ScalarKind::I32, dtype),
        }
    }
}

fn base_is(base: &str, kind: ScalarKind, dtype: DType) -> bool {
    match kind {
        ScalarKind::Dtype => base == "scalar_t" || scalar_spellings(dtype).contains(&base),
        ScalarKind::F32 => base == "float",
        ScalarKind::U32 => matches!(base, "unsigned int" | "unsigned" | "uint32_t"),
        ScalarKind::I32 => matches!(base, "int" | "signed int" | "signed" | "int32_t"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rmsnorm_target() -> TargetSignature {
        TargetSignature {
            entry: "rmsnorm".into(),
            params: vec![
                Param {
                    name: "x".into(),
                    kind: ParamKind::ConstPtr(ScalarKind::Dtype),
                },
                Param {
                    name: "w".into(),
                    kind: ParamKind::ConstPtr(ScalarKind::Dtype),
                },
                Param {
                    name: "y".into(),
                    kind: ParamKind::MutPtr(ScalarKind::Dtype),
                },
                Param {
                    name: "T".into(),
                    kind: ParamKind::Int,
                },
            ],
            dtype: DType::BF16,
        }
    }

    const LAUNCH: &str = "// kiln: block=256 grid=T smem=0\n";

    fn good_body() -> String {
        format!(
            "{LAUNCH}#include <cuda_bf16.h>\n\
             __device__ __forceinline__ float warp_sum(float v) {{\n\
               for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);\n\
               return v;\n\
             }}\n\
             extern \"C\" __global__ void __launch_bounds__(256) rmsnorm(const scalar_t* __restrict__ x,\n\
                 const scalar_t* __restrict__ w, scalar_t* __restrict__ y, int T) {{\n\
               __shared__ float red[32];\n\
               extern __shared__ float dyn[];\n\
               static __shared__ float more[4];\n\
               const float eps = 1e-6f;\n\
               int row = blockIdx.x; if (row >= T) return;\n\
               y[row] = x[row];\n\
             }}\n"
        )
    }

    fn check(src: &str) -> Result<CheckedCandidate, StaticCheckError> {
        Candidate::new(src).check(&rmsnorm_target())
    }

    #[test]
    fn accepts_a_well_formed_candidate() {
        let c = check(&good_body()).expect("good candidate passes");
        assert_eq!(c.launch.spec, "block=256 grid=T smem=0");
        assert_eq!(c.launch.line, 1);
        assert_eq!(c.entry_line, 7);
    }

    #[test]
    fn tolerates_param_spellings() {
        let src = format!(
            "{LAUNCH}extern \"C\" __global__ void rmsnorm(__nv_bfloat16 const *a, const __nv_bfloat16* const __restrict__ b,\n\
             scalar_t *__restrict c, const int n) {{ }}"
        );
        check(&src).expect("spellings tolerated");
    }

    #[test]
    fn accepts_extern_c_block_and_void_params() {
        let target = TargetSignature {
            entry: "k".into(),
            params: vec![],
            dtype: DType::F32,
        };
        let src = format!("{LAUNCH}extern \"C\" {{\n__global__ void k(void) {{}}\n}}\n");
        Candidate::new(src).check(&target).expect("extern C block");
    }

    #[test]
    fn rejects_empty_and_huge() {
        assert_eq!(check("  \n\t"), Err(StaticCheckError::Empty));
        let huge = "x".repeat(MAX_SOURCE_BYTES + 1);
        assert!(matches!(
            check(&huge),
            Err(StaticCheckError::TooLarge { .. })
        ));
    }

    #[test]
    fn launch_line_rules() {
        let no_launch = good_body().replacen(LAUNCH, "", 1);
        assert_eq!(
            check(&no_launch),
            Err(StaticCheckError::MissingLaunchComment)
        );
        let two = format!("{LAUNCH}{}", good_body());
        assert_eq!(
            check(&two),
            Err(StaticCheckError::MultipleLaunchComments { lines: vec![1, 2] })
        );
        // A launch line inside a block comment or a string does not count.
        let hidden = good_body().replacen(LAUNCH, "/* // kiln: block=1 grid=1 smem=0 */\n", 1);
        assert_eq!(check(&hidden), Err(StaticCheckError::MissingLaunchComment));
        let l = launch_line("int a; //   kiln:  block=32 grid=ceil_div(T,4),1,1 smem=0  \n")
            .expect("found");
        assert_eq!(
            l,
            LaunchComment {
                line: 1,
                spec: "block=32 grid=ceil_div(T,4),1,1 smem=0".into()
            }
        );
    }

    #[test]
    fn param_count_message_is_actionable() {
        let src = format!("{LAUNCH}extern \"C\" __global__ void rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* y) {{}}");
        let err = check(&src).expect_err("too few params");
        assert!(matches!(
            err,
            StaticCheckError::ParamCount {
                found: 3,
                expected: 4,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("entry point `rmsnorm` takes 3 parameters, the target needs 4"),
            "{msg}"
        );
        assert!(
            msg.contains("rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* y, int T)"),
            "{msg}"
        );
        assert!(msg.contains("scalar_t = __nv_bfloat16"), "{msg}");
    }

    #[test]
    fn param_type_and_constness_mismatches() {
        let cases = [
            ("scalar_t* x, const scalar_t* w, scalar_t* y, int T", 1),
            ("const scalar_t* x, const float* w, scalar_t* y, int T", 2),
            (
                "const scalar_t* x, const scalar_t* w, const scalar_t* y, int T",
                3,
            ),
            (
                "const scalar_t* x, const scalar_t* w, scalar_t* y, long T",
                4,
            ),
            (
                "const scalar_t* x, const scalar_t* w, scalar_t* y, int* T",
                4,
            ),
            (
                "const scalar_t* x, const scalar_t* w, scalar_t** y, int T",
                3,
            ),
            (
                "const scalar_t* x, const scalar_t* w, scalar_t& y, int T",
                3,
            ),
            (
                "const scalar_t* x, const scalar_t* w, scalar_t y[], int T",
                3,
            ),
            ("const scalar_t* x, const __half* w, scalar_t* y, int T", 2),
        ];
        for (params, index) in cases {
            let src = format!("{LAUNCH}extern \"C\" __global__ void rmsnorm({params}) {{}}");
            match check(&src) {
                Err(StaticCheckError::ParamMismatch { index: got, .. }) => {
                    assert_eq!(got, index, "{params}")
                }
                other => panic!("{params}: {other:?}"),
            }
        }
        let src = format!("{LAUNCH}extern \"C\" __global__ void rmsnorm(float* x, const scalar_t* w, scalar_t* y, int T) {{}}");
        let msg = check(&src).expect_err("mismatch").to_string();
        assert!(
            msg.contains("parameter 1 is `float* x`, the target needs `const scalar_t*`"),
            "{msg}"
        );
    }

    #[test]
    fn scalar_kinds_match_their_spellings() {
        let target = TargetSignature {
            entry: "topk".into(),
            params: vec![
                Param {
                    name: "s".into(),
                    kind: ParamKind::ConstPtr(ScalarKind::F32),
                },
                Param {
                    name: "i".into(),
                    kind: ParamKind::MutPtr(ScalarKind::I32),
                },
                Param {
                    name: "u".into(),
                    kind: ParamKind::MutPtr(ScalarKind::U32),
                },
                Param {
                    name: "h".into(),
                    kind: ParamKind::MutPtr(ScalarKind::Dtype),
                },
            ],
            dtype: DType::F16,
        };
        let src = format!("{LAUNCH}extern \"C\" __global__ void topk(const float* s, int32_t* i, std::uint32_t* u, half* h) {{}}");
        Candidate::new(src).check(&target).expect("spellings");
        let src = format!("{LAUNCH}extern \"C\" __global__ void topk(const float* s, unsigned* i, unsigned int* u, __half* h) {{}}");
        assert!(matches!(
            Candidate::new(src).check(&target),
            Err(StaticCheckError::ParamMismatch { index: 2, .. })
        ));
    }

    #[test]
    fn entry_point_rules() {
        let missing = format!("{LAUNCH}extern \"C\" __global__ void rms(const scalar_t* x) {{}}");
        let err = check(&missing).expect_err("missing");
        assert!(
            matches!(&err, StaticCheckError::MissingEntry { found, .. } if found == &["rms".to_string()])
        );
        assert!(err.to_string().contains("found __global__ functions: rms"));

        let sig = "const scalar_t* x, const scalar_t* w, scalar_t* y, int T";
        let dup = format!("{LAUNCH}extern \"C\" __global__ void rmsnorm({sig}) {{}}\nextern \"C\" __global__ void rmsnorm({sig}) {{}}");
        assert!(
            matches!(check(&dup), Err(StaticCheckError::DuplicateEntry { lines, .. }) if lines == vec![2, 3])
        );

        let mangled = format!("{LAUNCH}__global__ void rmsnorm({sig}) {{}}");
        assert!(matches!(
            check(&mangled),
            Err(StaticCheckError::EntryNotExternC { .. })
        ));

        let template = format!("{LAUNCH}template <int N> __global__ void rmsnorm({sig}) {{}}");
        assert!(matches!(
            check(&template),
            Err(StaticCheckError::EntryNotExternC { .. })
        ));

        // A forward declaration plus one definition is fine.
        let fwd = format!("{LAUNCH}extern \"C\" __global__ void rmsnorm({sig});\nextern \"C\" __global__ void rmsnorm({sig}) {{}}");
        check(&fwd).expect("declaration + definition");

        // Only in a comment or string: not a definition.
        let commented = format!("{LAUNCH}// extern \"C\" __global__ void rmsnorm({sig}) {{}}\nconst char* const s = \"extern\";");
        assert!(matches!(
            check(&commented),
            Err(StaticCheckError::MissingEntry { .. })
        ));

        // Through an object-like macro: expanded, so found.
        let via_macro = format!(
            "{LAUNCH}#define ENTRY rmsnorm\nextern \"C\" __global__ void ENTRY({sig}) {{}}"
        );
        check(&via_macro).expect("object macro expanded");
    }

    #[test]
    fn include_rules() {
        for ok in [
            "<cuda_bf16.h>",
            "<cuda_fp16.h>",
            "<cuda_pipeline.h>",
            "<cuda/barrier>",
            "<cub/cub.cuh>",
            "<cooperative_groups.h>",
            "<cooperative_groups/reduce.h>",
            "<mma.h>",
        ] {
            let src = good_body().replacen("#include <cuda_bf16.h>", &format!("#include {ok}"), 1);
            check(&src).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "<stdio.h>",
            "\"cuda_bf16.h\"",
            "<cuda/../../etc/passwd>",
            "HEADER",
            "</etc/passwd>",
            "<cuda/std/chrono>",
        ] {
            let src = good_body().replacen("#include <cuda_bf16.h>", &format!("#include {bad}"), 1);
            assert!(
                matches!(
                    check(&src),
                    Err(StaticCheckError::ForbiddenInclude { .. }
                        | StaticCheckError::ForbiddenConstruct { .. })
                ),
                "{bad}"
            );
        }
        let src =
            good_body().replacen("#include <cuda_bf16.h>", "#  include_next <cuda_bf16.h>", 1);
        assert!(matches!(
            check(&src),
            Err(StaticCheckError::ForbiddenDirective { .. })
        ));
        // An include hidden in a comment is not an include.
        let src = good_body().replacen("#include <cuda_bf16.h>", "/* #include <stdio.h> */", 1);
        check(&src).expect("commented include ignored");
    }

    fn with_line(extra: &str) -> String {
        good_body().replacen(
            "#include <cuda_bf16.h>\n",
            &format!("#include <cuda_bf16.h>\n{extra}\n"),
            1,
        )
    }

    fn with_stmt(extra: &str) -> String {
        good_body().replacen("const float eps", &format!("{extra}\n const float eps"), 1)
    }

    #[test]
    fn rejects_persistent_state() {
        let bad_globals = [
            "__device__ float cache[1024];",
            "static __device__ float cache[4];",
            "__device__ int calls = 0;",
            "__device__ int calls(0);",
            "__device__ int calls{0};",
            "__device__ float* last_out;",
            "__device__ const float* p;",
            "float host_or_device[16];",
            "int counter;",
            "namespace a { __device__ int n; }",
            "#define DEV __device__\nDEV float cache[4];",
            "__attribute__((device)) float cache[4];",
            "template <int N> __device__ void f() {}\n__device__ float cache[4];",
            "struct S { static __device__ int n; };",
            "template <int N = 4> __device__ float tv[N];",
        ];
        for g in bad_globals {
            match check(&with_line(g)) {
                Err(
                    StaticCheckError::PersistentState { .. }
                    | StaticCheckError::ForbiddenConstruct { .. },
                ) => {}
                other => panic!("{g}: {other:?}"),
            }
        }
        for s in [
            "static int calls = 0;",
            "static float* p;",
            "static const float* p;",
            "static __device__ int n;",
        ] {
            assert!(
                matches!(
                    check(&with_stmt(s)),
                    Err(StaticCheckError::PersistentState { .. })
                ),
                "{s}"
            );
        }
        let err = check(&with_line("__device__ float cache[1024];")).expect_err("cache");
        assert!(
            err.to_string().contains("`cache` is a __device__ variable"),
            "{err}"
        );
    }

    #[test]
    fn allows_read_only_and_per_launch_state() {
        let fine = [
            "__constant__ float table[4] = {1, 2, 3, 4};",
            "static __constant__ float t2[2];",
            "constexpr int kVec = 8;",
            "static constexpr float kScale = 0.5f;",
            "const float kEps = 1e-6f;",
            "__device__ constexpr int kWarps = 8;",
            "typedef float acc_t;",
            "using vec_t = float4;",
            "struct alignas(16) Pack { float a, b, c, d; };",
            "template <typename T> __device__ __forceinline__ T twice(T v) { static_assert(sizeof(T) > 0, \"x\"); return v + v; }",
            "namespace detail { __device__ inline float sq(float v) { return v * v; } }",
            "enum class Mode : int { A, B };",
            "template <int N = 4> __device__ float tfn(float v) { return v * N; }",
            "__device__ float (twice2)(float v) { return v; }",
        ];
        for f in fine {
            check(&with_line(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
        for s in [
            "static const float tbl[2] = {1.f, 2.f};",
            "static __shared__ float s[8];",
            "auto f = [] __device__ (float v) { return v; };",
            "int local[4] = {0};",
        ] {
            check(&with_stmt(s)).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    #[test]
    fn rejects_forbidden_constructs() {
        let cases = [
            ("printf(\"%d\", row);", "printf"),
            ("float* p = (float*)malloc(4);", "malloc"),
            ("long long t = clock64();", "clock64"),
            (
                "asm volatile(\"mov.u64 %0, %globaltimer;\" : \"=l\"(t));",
                "%globaltimer",
            ),
            (
                "asm volatile(\"mov.u32 %0, %%clock;\" : \"=r\"(t));",
                "%clock",
            ),
            (
                "asm volatile(\"mov.u64 %0, %global\" \"timer;\" : \"=l\"(t));",
                "%globaltimer",
            ),
            (
                "asm volatile(\"mov.u64 %0, %\\x67lobaltimer;\" : \"=l\"(t));",
                "%globaltimer",
            ),
        ];
        for (stmt, construct) in cases {
            match check(&with_stmt(stmt)) {
                Err(StaticCheckError::ForbiddenConstruct { construct: c, .. }) => {
                    assert_eq!(c, construct, "{stmt}")
                }
                other => panic!("{stmt}: {other:?}"),
            }
        }
        // Allowed inline PTX.
        check(&with_stmt(
            "unsigned s; asm volatile(\"mov.u32 %0, %%smid;\" : \"=r\"(s));",
        ))
        .expect("smid ok");
        check(&with_line("__device__ __managed__ int m;")).expect_err("managed");
        check(&with_line("#define P(x) x\nP(__managed__) int m;"))
            .expect_err("managed via macro argument");
    }

    #[test]
    fn macro_tricks_are_rejected() {
        let paste = with_line("#define CAT(a, b) a##b\nCAT(__dev, ice__) float cache[4];");
        assert!(matches!(
            check(&paste),
            Err(StaticCheckError::TokenPasting { .. })
        ));
        let hide = with_line("#define GLOBAL(t, n) __device__ t n\nGLOBAL(float, cache[4]);");
        assert!(matches!(
            check(&hide),
            Err(StaticCheckError::MacroHidesDeclaration { .. })
        ));
        let stat = with_line("#define KEEP(x) static x\n");
        assert!(matches!(
            check(&stat),
            Err(StaticCheckError::MacroHidesDeclaration { .. })
        ));
        // Object-like macros are fine and are expanded.
        check(&with_line(
            "#define DEVI __device__ __forceinline__\nDEVI float sq(float v) { return v * v; }",
        ))
        .expect("qualifier macro");
        let bomb = with_line(
            "#define A0 x x x x x x x x x x x x x x x x\n#define A1 A0 A0 A0 A0 A0 A0 A0 A0 A0 A0 A0 A0 A0 A0 A0 A0\n\
             #define A2 A1 A1 A1 A1 A1 A1 A1 A1 A1 A1 A1 A1 A1 A1 A1 A1\n#define A3 A2 A2 A2 A2 A2 A2 A2 A2 A2 A2 A2 A2 A2 A2 A2 A2\n\
             #define A4 A3 A3 A3 A3 A3 A3 A3 A3 A3 A3 A3 A3 A3 A3 A3 A3\nA4",
        );
        assert!(matches!(
            check(&bomb),
            Err(StaticCheckError::MacroExpansionTooLarge { .. })
        ));
        // Self-referential macros do not loop.
        check(&with_line("#define SELF SELF\n")).expect("self reference terminates");
    }

    #[test]
    fn splices_and_comments_cannot_hide_code() {
        // A `//` comment continued by a backslash swallows the next line.
        let swallowed = good_body().replacen("extern \"C\"", "// note \\\nextern \"C\"", 1);
        assert!(
            matches!(check(&swallowed), Err(StaticCheckError::Unbalanced { .. })),
            "{:?}",
            check(&swallowed)
        );
        // A keyword split by a splice is still that keyword.
        let split = with_line("__dev\\\nice__ float cache[4];");
        assert!(matches!(
            check(&split),
            Err(StaticCheckError::PersistentState { .. })
        ));
        // A `/*` inside a string is not a comment.
        check(&with_stmt("const char* s = \"/*\"; (void)s;")).expect("string with comment opener");
        let raw = with_stmt("const char* r = R\"x(/* \" )x\"; (void)r;");
        check(&raw).expect("raw string");
    }

    #[test]
    fn lexing_errors() {
        assert!(matches!(
            check(&format!("{LAUNCH}/* never closed")),
            Err(StaticCheckError::Lex { .. })
        ));
        assert!(matches!(
            check(&format!("{LAUNCH}const char* s = \"open;\n")),
            Err(StaticCheckError::Lex { .. })
        ));
        assert!(matches!(
            check(&format!("{LAUNCH}}}")),
            Err(StaticCheckError::Unbalanced { .. })
        ));
    }

    #[test]
    fn strip_comments_keeps_lines_and_launch_line_is_separate() {
        let src = "a /* one\ntwo */ b // c\n\"//x\" d";
        let stripped = strip_comments(src).expect("strip");
        assert_eq!(stripped.lines().count(), 3);
        assert!(!stripped.contains("one") && !stripped.contains("// c"));
        assert!(stripped.contains("\"//x\""));
        let spliced = strip_comments("#define X a \\\n b\nY").expect("strip");
        assert_eq!(spliced, "#define X a  b\n\nY");
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
            "#define",
            "#define F(",
            "extern \"C\" __global__ void rmsnorm(",
            "}}}{{{",
            "\\",
            "é€𝄞 __global__",
        ] {
            let _ = check(&format!("{LAUNCH}{src}"));
            let _ = check(src);
        }
    }
}
