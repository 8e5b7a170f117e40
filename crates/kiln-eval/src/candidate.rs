//! Static checks on an untrusted candidate source, before anything compiles.
//!
//! A candidate is one CUDA C++ text from a proposer (usually an LLM). Before it
//! reaches NVRTC, [`Candidate::check`] proves the cheap things and rejects with
//! a reason the proposer can act on ([`StaticCheckError`]):
//!
//! 1. Size: not empty, at most [`MAX_SOURCE_BYTES`].
//! 2. Lexing, by kiln-kernels' shared lexer ([`kiln_kernels::source`]):
//!    backslash-newline splices are joined first (as the preprocessor does),
//!    then comments are stripped; string, character and raw string literals
//!    are understood, so a `//` inside a string is not a comment. A backslash
//!    followed by spaces before a newline, and a lone carriage return, are
//!    errors (compilers disagree on them).
//! 3. Launch line, by the one rule every tool shares
//!    ([`kiln_kernels::source::launch_line`]): exactly one `//` comment whose
//!    trimmed text starts with `kiln:`; near misses (`// KILN:`, `///kiln:`,
//!    `// kiln :`), one inside `/* */`, or one continued by a splice are
//!    errors. Its text is returned in [`CheckedCandidate::launch`].
//! 4. Directives: `#include` only of [`ALLOWED_INCLUDES`] or under
//!    [`ALLOWED_INCLUDE_PREFIXES`] (no quoted or computed includes, no `..`;
//!    no `<cuda/ptx>`, `<cuda/std/chrono>` or `<cuda/std/ctime>`, which
//!    provide timers); no `#include_next`/`#import`/`#undef`; no `##` token
//!    pasting and no `#` stringizing in function-like macros (both can spell
//!    names or PTX the scan cannot see); no `#define` of a keyword, a
//!    reserved `__x`/`_X` name or a forbidden name; a macro defined twice
//!    must be token-identical or sit in different branches of one
//!    `#if`/`#else` group. Function-like macros may not contain, reach through
//!    object-like macros, or be passed `__device__`, `__managed__`, `static`,
//!    `extern`, `thread_local` or `mutable`.
//! 5. Macro expansion: the candidate's own macros (object- and function-like)
//!    are expanded where they are defined, as the preprocessor would, and the
//!    scans below run on the result once per combination of the `#if`
//!    branches that hold definitions (at most [`MAX_MACRO_CONFIGURATIONS`]),
//!    because `#if` is not evaluated. Forbidden names are also searched in
//!    the unexpanded code and in every directive, macro bodies included.
//! 6. Forbidden constructs (see [`FORBIDDEN_IDENTIFIERS`] and
//!    [`FORBIDDEN_IDENTIFIER_PARTS`]): managed memory, device `printf`,
//!    device-heap `malloc`/`free`, `mutable`, `thread_local`, `const_cast`,
//!    and any identifier containing `clock`, `timer`, `chrono`,
//!    `cyclecounter` or `get_sreg`; in `asm` strings `%clock`,
//!    `%globaltimer`, `%pmN` counters and `.global` declarations; `asm`
//!    outside a function.
//! 7. **No state that persists across launches.** Caching results between
//!    calls is a known cheat: a kernel that remembers its inputs or outputs can
//!    skip work during timing repetitions. So a candidate may not declare
//!    `__device__`/`__managed__` variables, mutable namespace-scope variables
//!    (NVRTC's `-default-device` makes them device globals), or `static`
//!    variables in device code, unless they are read-only (`__constant__`,
//!    `constexpr`, or `const` objects) or per-launch (`__shared__`, including
//!    `extern __shared__`). `__device__` functions are of course fine. Since
//!    `T name(x);` can declare a variable, a namespace-scope declaration
//!    without a body must read unambiguously as a function (`__global__`,
//!    empty parameters, or parameters like `float v`/`T v`); `name(…)`
//!    followed by another name (`M(int) counter`) is a variable; and a `;`
//!    or a `({` block inside parentheses outside a function body (a
//!    declaration smuggled through a macro argument) is rejected.
//! 8. Entry point: exactly one definition of `__global__ void <entry>(…)`,
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

use kiln_kernels::source::{self, Directive, LaunchLineError, LexError, Lexed, Tk, Token};
use kiln_kernels::DType;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The largest candidate source accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 200 * 1024;

/// Upper bound on tokens after object-like macro expansion (stops macro bombs).
pub const MAX_EXPANDED_TOKENS: usize = 1 << 20;

/// Most alternative macro configurations checked (see [`Candidate::check`]).
pub const MAX_MACRO_CONFIGURATIONS: usize = 64;

/// Header prefixes a candidate may `#include` (inside `<…>`). Only `cub/`:
/// honest kernels use its block and warp primitives, and its device code
/// reads no clock (the identifier scan also applies to every name a
/// candidate writes, whatever header declares it).
pub const ALLOWED_INCLUDE_PREFIXES: &[&str] = &["cub/"];

/// The allowed headers as one line for messages (derived from the two lists).
fn allowed_includes() -> String {
    let mut all: Vec<String> = ALLOWED_INCLUDES.iter().map(|h| format!("<{h}>")).collect();
    all.extend(ALLOWED_INCLUDE_PREFIXES.iter().map(|p| format!("<{p}...>")));
    all.join(", ")
}

/// Headers a candidate may `#include` exactly (inside `<…>`): what honest
/// kernels need, and nothing that provides timers (`<cuda/ptx>` has
/// `get_sreg_clock64()`, `<cuda/std/chrono>` and `<cuda/std/ctime>` read clocks).
pub const ALLOWED_INCLUDES: &[&str] = &[
    "cuda_bf16.h",
    "cuda_fp16.h",
    "cuda_fp8.h",
    "cuda_pipeline.h",
    "cuda_pipeline_primitives.h",
    "cuda_awbarrier_primitives.h",
    "cooperative_groups.h",
    "cooperative_groups/reduce.h",
    "cooperative_groups/memcpy_async.h",
    "cooperative_groups/scan.h",
    "mma.h",
    "cuda/pipeline",
    "cuda/std/cstdint",
    "cuda/std/cstddef",
    "cuda/std/climits",
    "cuda/std/type_traits",
    "cuda/std/limits",
    "cuda/std/utility",
    "cuda/std/array",
    "cuda/std/cmath",
    "cuda/std/bit",
    "cuda/std/tuple",
    "cuda/std/functional",
];

/// Parts of identifiers (compared in lower case) a candidate may not use:
/// every spelling of a timer (`clock64`, `get_sreg_clock64`, `system_clock`,
/// `globaltimer`, `chrono`, …), whichever header would provide it.
pub const FORBIDDEN_IDENTIFIER_PARTS: &[(&str, &str)] = &[
    ("clock", "kernels may not read clocks or timers; remove the timing code"),
    ("timer", "kernels may not read clocks or timers; remove the timing code"),
    ("chrono", "kernels may not read clocks or timers; remove the timing code"),
    ("cyclecounter", "kernels may not read clocks or timers; remove the timing code"),
    ("get_sreg", "kernels may not read special registers through cuda::ptx; use threadIdx/blockIdx and the cooperative_groups API"),
];

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
    ("mutable", "a mutable member of a const object is writable state that persists across launches; make the object non-const and per-launch (__shared__ or registers)"),
    ("thread_local", "thread_local storage is not per-launch state; use registers or __shared__"),
    ("const_cast", "casting away const lets a kernel write a read-only table that persists across launches; keep tables read-only or copy them to registers or __shared__"),
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
    #[error(
        "line {line}: `#include {header}` is not allowed ({reason}); the allowed headers are {}",
        allowed_includes()
    )]
    ForbiddenInclude {
        /// 1-based line.
        line: usize,
        /// The header as written.
        header: String,
        /// Why.
        reason: String,
    },
    /// A launch line the shared rule rejects (misspelled, in a block comment, spliced).
    #[error("{0}")]
    LaunchLine(LaunchLineError),
    /// A disallowed preprocessor directive.
    #[error("line {line}: directive `#{directive}` is not allowed; {why}")]
    ForbiddenDirective {
        /// 1-based line.
        line: usize,
        /// The directive name.
        directive: String,
        /// What to do instead.
        why: String,
    },
    /// The `#` stringizing operator in a function-like macro.
    #[error("line {line}: macro `{name}` uses the `#` stringizing operator (it can spell text, such as inline PTX, the checker cannot see); write the string out")]
    Stringizing {
        /// 1-based line.
        line: usize,
        /// The macro.
        name: String,
    },
    /// A macro defined twice where both definitions could be active.
    #[error("macro `{name}` is defined more than once (lines {lines:?}) outside mutually exclusive #if/#else branches; define each macro once")]
    MacroRedefined {
        /// The macro.
        name: String,
        /// 1-based lines of two of its definitions.
        lines: Vec<usize>,
    },
    /// A `#define` of a keyword, a reserved name or a forbidden identifier.
    #[error("line {line}: `#define {name}` is not allowed: it redefines a keyword, a reserved `__`/`_X` name or a forbidden name; use a plain name such as KILN_{name_upper}", name_upper = .name.trim_start_matches('_').to_ascii_uppercase())]
    ReservedMacroName {
        /// 1-based line.
        line: usize,
        /// The macro name.
        name: String,
    },
    /// A storage keyword passed as an argument to a function-like macro.
    #[error("line {line}: `{keyword}` is passed to macro `{name}`; write declarations out (not through macros) so they can be checked")]
    MacroArgument {
        /// 1-based line.
        line: usize,
        /// The macro.
        name: String,
        /// The keyword.
        keyword: String,
    },
    /// Too many `#if` branch combinations hold macro definitions.
    #[error("macro definitions inside #if branches give more than {limit} combinations to check; define macros unconditionally or use fewer conditional definitions")]
    TooManyMacroConfigurations {
        /// The limit.
        limit: usize,
    },
    /// A namespace-scope declaration the checker cannot tell from a variable.
    #[error("line {line}: `{name}` is declared at namespace scope without a body, which may declare a variable (`T name(x);`); define functions where you declare them, and declare no mutable namespace-scope variables")]
    ForwardDeclaration {
        /// 1-based line.
        line: usize,
        /// The declared name as far as it could be told.
        name: String,
    },
    /// A `;` or block inside parentheses outside a function body.
    #[error("line {line}: `{token}` inside parentheses outside a function body (a declaration passed through a macro?); write declarations out at namespace scope")]
    HiddenDeclaration {
        /// 1-based line.
        line: usize,
        /// The token.
        token: String,
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
    /// Macro expansion exceeded [`MAX_EXPANDED_TOKENS`].
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
        let lexed = source::lex(&self.source)?;
        let launch = launch_of(&lexed)?;
        let macros = check_directives(&lexed.directives)?;
        // Every directive (macro bodies included) and the unexpanded code are
        // scanned too: expansion is not trusted to reveal everything.
        for d in &lexed.directives {
            scan_forbidden(&d.tokens)?;
        }
        scan_forbidden(&lexed.tokens)?;
        // The checker does not evaluate #if, so code is checked under every
        // combination of the branches that define macros.
        let mut entry_line = None;
        for config in configurations(&macros)? {
            let tokens = expand_macros(&lexed.tokens, &active(&macros, &config))?;
            scan_forbidden(&tokens)?;
            let functions = scan_structure(&tokens)?;
            let line = check_entry(&functions, target)?;
            entry_line.get_or_insert(line);
        }
        let entry_line = entry_line.ok_or_else(|| StaticCheckError::MissingEntry {
            entry: target.entry.clone(),
            found: Vec::new(),
            signature: target.render_with_note(),
        })?;
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
/// splices joined (newlines are kept, so line numbers survive); see
/// [`kiln_kernels::source`].
pub fn strip_comments(source: &str) -> Result<String, StaticCheckError> {
    check_size(source)?;
    Ok(source::strip_comments(source)?)
}

/// Finds the single `// kiln:` launch comment by the one rule of
/// [`kiln_kernels::source::launch_line`].
pub fn launch_line(source: &str) -> Result<LaunchComment, StaticCheckError> {
    check_size(source)?;
    launch_of(&source::lex(source)?)
}

fn launch_of(lexed: &Lexed) -> Result<LaunchComment, StaticCheckError> {
    match lexed.launch_line() {
        Ok(l) => Ok(LaunchComment {
            line: l.line,
            spec: l.spec,
        }),
        Err(LaunchLineError::Missing) => Err(StaticCheckError::MissingLaunchComment),
        Err(LaunchLineError::Multiple { lines }) => {
            Err(StaticCheckError::MultipleLaunchComments { lines })
        }
        Err(LaunchLineError::Lex(e)) => Err(e.into()),
        Err(other) => Err(StaticCheckError::LaunchLine(other)),
    }
}

impl From<LexError> for StaticCheckError {
    fn from(e: LexError) -> Self {
        StaticCheckError::Lex {
            line: e.line,
            message: e.message,
        }
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
    if inner == "cuda/barrier" {
        // Its arrive_and_wait backs off on %globaltimer, which the PTX check
        // rejects; say so here, where the fix is obvious.
        return Err(reject(
            "libcu++'s cuda::barrier waits with a %globaltimer backoff and kernels may not read timers; synchronise with __syncthreads, cooperative groups or cuda::pipeline",
        ));
    }
    if !include_allowed(inner) {
        return Err(reject("not in the allowed list"));
    }
    Ok(())
}

/// Keywords a function-like macro may not contain or be passed: with them a
/// macro can assemble a declaration of persistent state.
const MACRO_STORAGE_KEYWORDS: &[&str] = &[
    "__device__",
    "__managed__",
    "static",
    "extern",
    "thread_local",
    "mutable",
];

/// Names a candidate may not `#define` (besides reserved `__x`/`_X` names):
/// redefining a keyword changes what every later declaration means.
const UNDEFINABLE: &[&str] = &[
    "const",
    "constexpr",
    "static",
    "extern",
    "volatile",
    "mutable",
    "typedef",
    "using",
    "struct",
    "class",
    "union",
    "enum",
    "namespace",
    "template",
    "typename",
    "asm",
    "inline",
    "auto",
    "decltype",
    "void",
    "int",
    "unsigned",
    "signed",
    "long",
    "short",
    "char",
    "float",
    "double",
    "bool",
    "operator",
    "register",
    "thread_local",
    "scalar_t",
];

/// One `#define`.
#[derive(Debug, Clone)]
struct MacroDef {
    line: usize,
    /// `None` for an object-like macro, else the parameter names.
    params: Option<Vec<String>>,
    variadic: bool,
    body: Vec<Token>,
    /// Index of the first code token after the definition (it applies from there).
    at: usize,
    /// The `(#if group, branch)` pairs enclosing it, outermost first.
    path: Vec<(usize, usize)>,
}

/// An `#if` group that holds definitions: its branch count and whether it has an `#else`.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    branches: usize,
    has_else: bool,
}

/// The macros a candidate defines, with the `#if` structure around them.
#[derive(Debug, Default)]
struct MacroSet {
    defs: HashMap<String, Vec<MacroDef>>,
    groups: Vec<Group>,
}

/// Whether two definitions are token-for-token the same (a benign redefinition).
fn same_definition(a: &MacroDef, b: &MacroDef) -> bool {
    a.params == b.params
        && a.variadic == b.variadic
        && a.body.len() == b.body.len()
        && a.body.iter().zip(&b.body).all(|(x, y)| x.text == y.text)
}

/// Whether two definitions can never both be active: they sit in different
/// branches of one `#if` group.
fn exclusive(a: &[(usize, usize)], b: &[(usize, usize)]) -> bool {
    a.iter()
        .any(|(g, br)| b.iter().any(|(g2, br2)| g == g2 && br != br2))
}

fn parse_define(
    d: &Directive,
    path: &[(usize, usize)],
) -> Result<Option<(String, MacroDef)>, StaticCheckError> {
    let Some(name) = d.tokens.get(1).and_then(Token::ident) else {
        return Ok(None);
    };
    if name.starts_with("__")
        || (name.starts_with('_') && name.chars().nth(1).is_some_and(|c| c.is_ascii_uppercase()))
        || UNDEFINABLE.contains(&name)
        || forbidden_identifier(name).is_some()
    {
        return Err(StaticCheckError::ReservedMacroName {
            line: d.line,
            name: name.to_string(),
        });
    }
    // Function-like iff `(` follows the name with no space between.
    let function_like = d
        .tokens
        .get(2)
        .is_some_and(|t| t.is_punct("(") && !t.space_before);
    let (params, variadic, body_start) = if function_like {
        let close = d
            .tokens
            .iter()
            .position(|t| t.is_punct(")"))
            .unwrap_or(d.tokens.len());
        let inner = d.tokens.get(3..close).unwrap_or(&[]);
        let params: Vec<String> = inner
            .iter()
            .filter_map(|t| t.ident().map(str::to_string))
            .collect();
        let variadic = inner.iter().filter(|t| t.is_punct(".")).count() >= 3;
        (Some(params), variadic, close + 1)
    } else {
        (None, false, 2)
    };
    let body = d.tokens.get(body_start..).unwrap_or(&[]).to_vec();
    if function_like {
        if let Some(t) = body.iter().find(|t| t.is_punct("#")) {
            return Err(StaticCheckError::Stringizing {
                line: t.line,
                name: name.to_string(),
            });
        }
        for t in &body {
            if let Some(kw) = t.ident().filter(|n| MACRO_STORAGE_KEYWORDS.contains(n)) {
                return Err(StaticCheckError::MacroHidesDeclaration {
                    line: t.line,
                    name: name.to_string(),
                    keyword: kw.to_string(),
                });
            }
        }
    }
    Ok(Some((
        name.to_string(),
        MacroDef {
            line: d.line,
            params,
            variadic,
            body,
            at: d.at,
            path: path.to_vec(),
        },
    )))
}

fn check_directives(directives: &[Directive]) -> Result<MacroSet, StaticCheckError> {
    let mut set = MacroSet::default();
    // Open `#if` groups: (group index, current branch).
    let mut open: Vec<(usize, usize)> = Vec::new();
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
                    why: "only #include of the allowed headers is".into(),
                })
            }
            "undef" => {
                return Err(StaticCheckError::ForbiddenDirective {
                    line: d.line,
                    directive: name.to_string(),
                    why: "give each macro one definition instead (the branches of one #if/#else may each define it)".into(),
                })
            }
            "if" | "ifdef" | "ifndef" => {
                set.groups.push(Group {
                    branches: 1,
                    has_else: false,
                });
                open.push((set.groups.len() - 1, 0));
            }
            "elif" | "elifdef" | "elifndef" | "else" => {
                if let Some((g, branch)) = open.last_mut() {
                    *branch += 1;
                    if let Some(group) = set.groups.get_mut(*g) {
                        group.branches += 1;
                        group.has_else |= name == "else";
                    }
                }
            }
            "endif" => {
                open.pop();
            }
            "define" => {
                if let Some((mname, def)) = parse_define(d, &open)? {
                    let same = set.defs.entry(mname.clone()).or_default();
                    // An identical redefinition is legal C and changes nothing.
                    if same.iter().any(|p| same_definition(p, &def)) {
                        continue;
                    }
                    if let Some(prev) = same.iter().find(|p| !exclusive(&p.path, &def.path)) {
                        return Err(StaticCheckError::MacroRedefined {
                            name: mname,
                            lines: vec![prev.line, def.line],
                        });
                    }
                    same.push(def);
                }
            }
            _ => {}
        }
    }
    // A function-like macro may not reach a storage keyword through an
    // object-like macro either (`#define DEV __device__` then `DEV` in its body).
    for (name, defs) in &set.defs {
        for def in defs.iter().filter(|d| d.params.is_some()) {
            for t in &def.body {
                if let Some(kw) = reaches_keyword(t, &set, &mut Vec::new()) {
                    return Err(StaticCheckError::MacroHidesDeclaration {
                        line: t.line,
                        name: name.clone(),
                        keyword: kw,
                    });
                }
            }
        }
    }
    Ok(set)
}

/// The storage keyword an identifier expands to through object-like macros, if any.
fn reaches_keyword<'a>(t: &'a Token, set: &'a MacroSet, seen: &mut Vec<&'a str>) -> Option<String> {
    let name = t.ident()?;
    if MACRO_STORAGE_KEYWORDS.contains(&name) {
        return Some(name.to_string());
    }
    if seen.contains(&name) || seen.len() > 64 {
        return None;
    }
    seen.push(name);
    let found = set.defs.get(name).and_then(|defs| {
        defs.iter()
            .filter(|d| d.params.is_none())
            .flat_map(|d| d.body.iter())
            .find_map(|b| reaches_keyword(b, set, seen))
    });
    seen.pop();
    found
}

/// One choice of branch (or none) for every `#if` group that holds a definition.
type Configuration = HashMap<usize, Option<usize>>;

/// Every combination of branches the compiler might take in the groups that
/// hold definitions, so each is checked (the checker does not evaluate `#if`).
fn configurations(set: &MacroSet) -> Result<Vec<Configuration>, StaticCheckError> {
    let mut groups: Vec<usize> = set
        .defs
        .values()
        .flatten()
        .flat_map(|d| d.path.iter().map(|(g, _)| *g))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let mut configs: Vec<Configuration> = vec![HashMap::new()];
    for g in groups {
        let group = set.groups.get(g).copied().unwrap_or_default();
        let mut options: Vec<Option<usize>> = (0..group.branches).map(Some).collect();
        if !group.has_else {
            options.push(None);
        }
        let mut next = Vec::new();
        for c in &configs {
            for o in &options {
                let mut c2 = c.clone();
                c2.insert(g, *o);
                next.push(c2);
            }
        }
        if next.len() > MAX_MACRO_CONFIGURATIONS {
            return Err(StaticCheckError::TooManyMacroConfigurations {
                limit: MAX_MACRO_CONFIGURATIONS,
            });
        }
        configs = next;
    }
    Ok(configs)
}

/// The definitions active in one configuration (at most one per name).
fn active<'s>(set: &'s MacroSet, config: &Configuration) -> HashMap<&'s str, &'s MacroDef> {
    let mut out = HashMap::new();
    for (name, defs) in &set.defs {
        for d in defs {
            if d.path.iter().all(|(g, b)| config.get(g) == Some(&Some(*b))) {
                out.insert(name.as_str(), d);
            }
        }
    }
    out
}

/// A token during expansion: the macros it came from may not expand it again,
/// and `pos` is where its expansion started (a macro applies only after its `#define`).
struct Pending {
    tok: Token,
    hide: Vec<String>,
    pos: usize,
}

/// Expands the candidate's own macros, object-like and function-like, as the
/// preprocessor would (no `#`/`##`: those are rejected), so the scans see what
/// the compiler sees. Macros from headers are not expanded.
fn expand_macros(
    tokens: &[Token],
    macros: &HashMap<&str, &MacroDef>,
) -> Result<Vec<Token>, StaticCheckError> {
    let too_large = || StaticCheckError::MacroExpansionTooLarge {
        limit: MAX_EXPANDED_TOKENS,
    };
    let mut input: std::collections::VecDeque<Pending> = tokens
        .iter()
        .enumerate()
        .map(|(pos, t)| Pending {
            tok: t.clone(),
            hide: Vec::new(),
            pos,
        })
        .collect();
    let mut out = Vec::with_capacity(tokens.len());
    while let Some(p) = input.pop_front() {
        if out.len() + input.len() > MAX_EXPANDED_TOKENS {
            return Err(too_large());
        }
        let def = p
            .tok
            .ident()
            .filter(|n| !p.hide.iter().any(|h| h == n) && p.hide.len() < 64)
            .and_then(|n| macros.get(n).map(|d| (n.to_string(), *d)))
            .filter(|(_, d)| d.at <= p.pos);
        let Some((name, def)) = def else {
            out.push(p.tok);
            continue;
        };
        let mut hide = p.hide.clone();
        hide.push(name.clone());
        let line = p.tok.line;
        let mk = |t: &Token, hide: &Vec<String>| Pending {
            tok: Token { line, ..t.clone() },
            hide: hide.clone(),
            pos: p.pos,
        };
        let Some(params) = &def.params else {
            for b in def.body.iter().rev() {
                input.push_front(mk(b, &hide));
            }
            continue;
        };
        // A function-like macro name not followed by `(` is not an invocation.
        if !input.front().is_some_and(|n| n.tok.is_punct("(")) {
            out.push(p.tok);
            continue;
        }
        let Some(args) = take_args(&mut input) else {
            out.push(p.tok);
            continue;
        };
        for arg in &args {
            for t in arg {
                if let Some(kw) = t.ident().filter(|n| MACRO_STORAGE_KEYWORDS.contains(n)) {
                    return Err(StaticCheckError::MacroArgument {
                        line: t.line,
                        name: name.clone(),
                        keyword: kw.to_string(),
                    });
                }
            }
        }
        let mut replaced: Vec<Pending> = Vec::new();
        for b in &def.body {
            let arg = b.ident().and_then(|n| {
                if def.variadic && n == "__VA_ARGS__" {
                    return Some(params.len());
                }
                params.iter().position(|q| q == n)
            });
            match arg {
                // Arguments keep the invocation's context: the compiler expands
                // them before substitution, so this macro's name is not hidden in them.
                Some(k) if def.variadic && k >= params.len() => {
                    for (m, a) in args.iter().enumerate().skip(params.len()) {
                        if m > params.len() {
                            replaced.push(mk(&comma(line), &p.hide));
                        }
                        replaced.extend(a.iter().map(|t| mk(t, &p.hide)));
                    }
                }
                Some(k) => {
                    if let Some(a) = args.get(k) {
                        replaced.extend(a.iter().map(|t| mk(t, &p.hide)));
                    }
                }
                None => replaced.push(mk(b, &hide)),
            }
            if replaced.len() + out.len() > MAX_EXPANDED_TOKENS {
                return Err(too_large());
            }
        }
        for r in replaced.into_iter().rev() {
            input.push_front(r);
        }
    }
    Ok(out)
}

fn comma(line: usize) -> Token {
    Token {
        tk: Tk::Punct(","),
        line,
        text: ",".into(),
        space_before: false,
    }
}

/// Takes a parenthesised argument list off the front of `input`, split at top-level commas.
fn take_args(input: &mut std::collections::VecDeque<Pending>) -> Option<Vec<Vec<Token>>> {
    let mut depth = 0usize;
    let end = input.iter().position(|p| {
        if p.tok.is_punct("(") {
            depth += 1;
        } else if p.tok.is_punct(")") {
            depth = depth.saturating_sub(1);
            return depth == 0;
        }
        false
    })?;
    let group: Vec<Pending> = input.drain(..=end).collect();
    let mut args = vec![Vec::new()];
    let mut depth = 0usize;
    for p in group.into_iter().skip(1).take(end.saturating_sub(1)) {
        if p.tok.is_punct("(") {
            depth += 1;
        } else if p.tok.is_punct(")") {
            depth = depth.saturating_sub(1);
        } else if p.tok.is_punct(",") && depth == 0 {
            args.push(Vec::new());
            continue;
        }
        if let Some(last) = args.last_mut() {
            last.push(p.tok);
        }
    }
    if args.len() == 1 && args[0].is_empty() {
        args.clear();
    }
    Some(args)
}

/// Why an identifier is forbidden, if it is.
fn forbidden_identifier(name: &str) -> Option<&'static str> {
    if let Some((_, reason)) = FORBIDDEN_IDENTIFIERS.iter().find(|(f, _)| *f == name) {
        return Some(reason);
    }
    let lower = name.to_ascii_lowercase();
    FORBIDDEN_IDENTIFIER_PARTS
        .iter()
        .find(|(part, _)| lower.contains(part))
        .map(|(_, reason)| *reason)
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
        if let Some(found) = asm_declares_global(s) {
            return Err(StaticCheckError::ForbiddenConstruct {
                line,
                construct: found,
                reason: "inline PTX may not declare .global variables: they keep state across launches; use __shared__ or registers".into(),
            });
        }
        Ok(())
    };
    for (i, t) in tokens.iter().enumerate() {
        match &t.tk {
            Tk::Ident(name) => {
                if let Some(reason) = forbidden_identifier(name) {
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

/// A `.global` state-space declaration (`.global .u32 x;`) or a `%pmN`
/// performance-counter read in inline PTX. Instructions that merely address
/// global memory (`ld.global.nc`, `cp.async.cg.shared.global [..]`) are fine.
fn asm_declares_global(s: &str) -> Option<String> {
    let mut rest = s;
    while let Some(k) = rest.find(".global") {
        let after = &rest[k + ".global".len()..];
        let trimmed = after.trim_start();
        if trimmed.len() < after.len() && trimmed.starts_with('.') {
            return Some(".global declaration".into());
        }
        rest = after;
    }
    let bytes = s.as_bytes();
    s.match_indices("%pm")
        .any(|(k, _)| bytes.get(k + 3).is_some_and(u8::is_ascii_digit))
        .then(|| "%pm performance counter".to_string())
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

/// Words that may follow a function's parameter list before its body or `;`.
const AFTER_PARAMS: &[&str] = &[
    "const", "volatile", "noexcept", "override", "final", "throw", "mutable", "requires",
];

/// Whether a declaration head declares a function (not a variable).
///
/// `name(…)` must be the last declarator: `M(int) counter` (a macro from a
/// header wrapping a type) is a variable named `counter`, not a function `M`.
fn is_function_head(head: &[Token]) -> bool {
    let Some(mut p) = call_paren(head) else {
        return false;
    };
    let Some(mut end) = balanced_group(head, p) else {
        return false;
    };
    // `T (name)(params)`: a parenthesised declarator name, then the parameters.
    if end == p + 3
        && head[p + 1].ident().is_some()
        && head.get(end).is_some_and(|t| t.is_punct("("))
    {
        p = end;
        match balanced_group(head, p) {
            Some(e) => end = e,
            None => return false,
        }
    }
    let first_ok = match head.get(p + 1).map(|t| &t.tk) {
        Some(Tk::Punct("*" | "&" | "^" | "-" | "+" | "!" | "~" | "{")) => false,
        Some(Tk::Num | Tk::Str(_) | Tk::Char) => false,
        Some(Tk::Ident(w)) if matches!(w.as_str(), "nullptr" | "true" | "false" | "NULL") => false,
        _ => true,
    };
    if !first_ok {
        return false;
    }
    // After the parameters: qualifiers, attributes, or a trailing return type.
    let mut k = end;
    while let Some(t) = head.get(k) {
        if t.is_punct("-") && head.get(k + 1).is_some_and(|n| n.is_punct(">")) {
            return true;
        }
        match t.ident() {
            Some(w) if ATTRIBUTE_LIKE.contains(&w) => match balanced_group(head, k + 1) {
                Some(e) => k = e,
                None => k += 1,
            },
            Some(w) if AFTER_PARAMS.contains(&w) => {
                k += balanced_group(head, k + 1).map_or(1, |e| e - k);
            }
            Some(_) => return false,
            None if t.is_punct("&") => k += 1,
            None if t.is_punct("[") => {
                // `[[attribute]]`
                match head[k..].iter().position(|x| x.is_punct("]")) {
                    Some(off) => k += off + 1,
                    None => return false,
                }
            }
            None if t.is_punct("]") => k += 1,
            None => return false,
        }
    }
    true
}

/// Whether a namespace-scope declaration without a body is unambiguously a
/// function: a `__global__` (kernels cannot be variables) or empty parameters.
fn prototype_is_unambiguous(head: &[Token]) -> bool {
    if has_ident(head, "__global__") {
        return true;
    }
    let Some(p) = call_paren(head) else {
        return false;
    };
    let Some(end) = balanced_group(head, p) else {
        return false;
    };
    let inner = &head[p + 1..end - 1];
    if inner.is_empty() {
        return true;
    }
    // Every parameter must read as a declaration, which no initializer
    // expression does: a type keyword not used as a functional cast
    // (`float v`, not `float(3)`), or a type followed by a name (`S v`).
    let mut depth = 0usize;
    let mut param_ok = false;
    for (k, t) in inner.iter().enumerate() {
        match &t.tk {
            Tk::Punct("(" | "[" | "<") => depth += 1,
            Tk::Punct(")" | "]" | ">") => depth = depth.saturating_sub(1),
            Tk::Punct(",") if depth == 0 => {
                if !param_ok {
                    return false;
                }
                param_ok = false;
            }
            Tk::Ident(w) if depth == 0 => {
                let next = inner.get(k + 1);
                let cast = next.is_some_and(|n| n.is_punct("(") || n.is_punct("{"));
                let keyword = PARAM_TYPE_WORDS.contains(&w.as_str());
                let named = next.is_some_and(|n| n.ident().is_some());
                if (keyword && !cast) || named {
                    param_ok = true;
                }
            }
            _ => {}
        }
    }
    param_ok
}

/// Words that make a parameter a declaration rather than an expression.
const PARAM_TYPE_WORDS: &[&str] = &[
    "void", "bool", "char", "short", "int", "long", "float", "double", "unsigned", "signed",
    "const", "volatile", "struct", "class", "typename",
];

/// The head without a leading `template <…>` (and `extern "C"`), for first-word tests.
fn skip_template(head: &[Token]) -> &[Token] {
    if head.first().is_some_and(|t| t.is_ident("template"))
        && head.get(1).is_some_and(|t| t.is_punct("<"))
    {
        let mut depth = 0usize;
        for (k, t) in head.iter().enumerate().skip(1) {
            if t.is_punct("<") {
                depth += 1;
            } else if t.is_punct(">") {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return &head[k + 1..];
                }
            }
        }
    }
    head
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
    // A pointer declarator is a `*` outside brackets and parentheses: the `*`
    // in `table[N * 2]` is arithmetic in the bound, not a pointer.
    let mut depth = 0i32;
    let mut last_star = None;
    for (i, t) in head.iter().enumerate() {
        if t.is_punct("[") || t.is_punct("(") {
            depth += 1;
        } else if t.is_punct("]") || t.is_punct(")") {
            depth -= 1;
        } else if depth == 0 && t.is_punct("*") {
            last_star = Some(i);
        }
    }
    match last_star {
        None => true,
        Some(star) => head[star..].iter().any(|t| t.is_ident("const")),
    }
}

/// How a declaration head ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadEnd {
    /// `;`: a declaration with no body or initializer.
    Semicolon,
    /// `=` or a brace initializer: a variable (or `= delete`/`= default`).
    Initializer,
}

/// Words that start a declaration of a type, an alias or an assertion, never of a variable.
const TYPE_DECL_KEYWORDS: &[&str] = &[
    "typedef",
    "using",
    "static_assert",
    "friend",
    "namespace",
    "struct",
    "class",
    "union",
    "enum",
];

/// Words that start a statement, not a declaration.
const STATEMENT_KEYWORDS: &[&str] = &["return", "goto", "case", "default"];

/// Storage that makes a variable outlive a launch.
const STORAGE_KEYWORDS: &[&str] = &["__device__", "__managed__", "static"];

/// Checks one declaration head for state that persists across launches.
fn analyze_decl(head: &[Token], scope: Scope, end: HeadEnd) -> Result<(), StaticCheckError> {
    let Some(first) = head.first() else {
        return Ok(());
    };
    if matches!(scope, Scope::Namespace { .. } | Scope::Class) {
        if let Some(t) = head.iter().find(|t| {
            t.ident()
                .is_some_and(|w| matches!(w, "asm" | "__asm__" | "__asm"))
        }) {
            return Err(StaticCheckError::ForbiddenConstruct {
                line: t.line,
                construct: "asm outside a function".into(),
                reason: "inline PTX at namespace scope can declare .global variables that keep state across launches; put asm statements inside device functions".into(),
            });
        }
    }
    let bare = skip_template(head);
    let Some(bare_first) = bare.first() else {
        return Ok(());
    };
    let type_like = TYPE_DECL_KEYWORDS.iter().any(|k| bare_first.is_ident(k));
    let storage = STORAGE_KEYWORDS.iter().any(|k| has_ident(head, k));
    // At namespace scope `T name(x);` may be a variable with an initializer,
    // and an initializer after `name(…)` (`= …`) always makes one.
    // A block-scope function declaration cannot be `static` or `__device__`,
    // so in code such a head is a variable whatever its parentheses look like.
    let storage_in_code = matches!(scope, Scope::Code | Scope::Init) && storage;
    if is_function_head(head)
        && !storage_in_code
        && !(end == HeadEnd::Initializer && matches!(scope, Scope::Namespace { .. }))
    {
        if end == HeadEnd::Semicolon
            && matches!(scope, Scope::Namespace { .. })
            && !type_like
            && !prototype_is_unambiguous(head)
        {
            return Err(StaticCheckError::ForwardDeclaration {
                line: first.line,
                name: decl_name(head),
            });
        }
        return Ok(());
    }
    let type_or_alias = TYPE_DECL_KEYWORDS
        .iter()
        .chain(STATEMENT_KEYWORDS)
        .any(|k| first.is_ident(k) || bare_first.is_ident(k));
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
    if is_function_head(head) {
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
                    analyze_decl(&toks[top.head_start..i], top.scope, HeadEnd::Semicolon)?;
                }
                top.reset_head(i + 1);
            }
            // Outside function bodies a `;` in parentheses is never honest C++:
            // it is a declaration smuggled through a macro argument.
            ";" if matches!(top.scope, Scope::Namespace { .. } | Scope::Class) => {
                return Err(StaticCheckError::HiddenDeclaration {
                    line: t.line,
                    token: ";".into(),
                });
            }
            "=" if top.paren == 0 && top.angle == 0 && !top.analyzed => {
                analyze_decl(&toks[top.head_start..i], top.scope, HeadEnd::Initializer)?;
                top.analyzed = true;
            }
            "{" if top.paren > 0
                && matches!(top.scope, Scope::Namespace { .. } | Scope::Class)
                && i.checked_sub(1)
                    .and_then(|k| toks.get(k))
                    .is_some_and(|prev| prev.is_punct("(") || prev.is_punct(",")) =>
            {
                return Err(StaticCheckError::HiddenDeclaration {
                    line: t.line,
                    token: "{".into(),
                });
            }
            "{" => {
                let scope = if top.paren > 0 || matches!(top.scope, Scope::Code | Scope::Init) {
                    if top.paren == 0 && top.scope == Scope::Code {
                        if !top.analyzed {
                            analyze_decl(&toks[top.head_start..i], top.scope, HeadEnd::Semicolon)?;
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
                            analyze_decl(head, top.scope, HeadEnd::Initializer)?;
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
        assert!(matches!(
            check(&hidden),
            Err(StaticCheckError::LaunchLine(
                LaunchLineError::InBlockComment { .. }
            ))
        ));
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
            "<cuda/pipeline>",
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
            "<cuda/barrier>",
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
    fn launch_line_follows_the_one_rule() {
        // The checker reports exactly the launch text the shared rule finds.
        for (src, want) in kiln_kernels::source::LAUNCH_LINE_CASES {
            let got = launch_line(src).ok().map(|l| l.spec);
            assert_eq!(got.as_deref(), *want, "{src:?}");
            let body = good_body().replacen(LAUNCH, "", 1);
            let full = format!("{src}\n{body}");
            let checked = check(&full).ok().map(|c| c.launch.spec);
            if want.is_some() && !src.contains("int ") && !src.contains("char") {
                assert_eq!(checked.as_deref(), *want, "{src:?}");
            }
            if want.is_none() {
                assert_eq!(checked, None, "{src:?}");
            }
        }
        for near_miss in [
            "// KILN: block=1 grid=1 smem=0",
            "///kiln: block=1 grid=1 smem=0",
        ] {
            let src = format!("{}{near_miss}\n", good_body());
            assert!(matches!(
                check(&src),
                Err(StaticCheckError::LaunchLine(
                    LaunchLineError::Misspelled { .. }
                ))
            ));
        }
    }

    #[test]
    fn closes_the_attack_holes() {
        let globals = [
            // Declarations that look like functions.
            "__device__ int counter(0);",
            "__device__ int counter(kInit);",
            "int counter(kInit);",
            "scalar_t counter(kInit);",
            "__device__ float cache[1024], other;",
            "__device__ int a, b(3);",
            "__device__ __attribute__((used)) int s;",
            "__device__ decltype(1) s;",
            "__device__ int (*fp)(int);",
            "__device__ int counter(0) ;",
            "WRAP(int) counter;",
            "WRAP(int) counter = 0;",
            "WRAP(int) counter{0};",
            "NV_IF_TARGET(NV_IS_DEVICE, (int counter;))",
            "NV_IF_TARGET(NV_IS_DEVICE, ({ int counter; }))",
            "static __device__ int n(kInit);",
            // Macros that pass a keyword through.
            "#define PASS(x) x\nPASS(__device__) int s;",
            "#define PASS(x) x\nPASS(int) counter;",
            "#define DEV __device__\n#define DECL(t, n) DEV t n;\nDECL(int, s)",
            "#define EXT(t) extern t\nEXT(int) s;",
            // Dead branches and redefinitions.
            "#if 0\n#define X __device__\n#endif\nX int s;",
            "#if 0\n#define uint32_t const unsigned\n#endif\nuint32_t counter = 0;",
            "#ifdef A\n#define Q const\n#else\n#define Q\n#endif\nQ int counter = 0;",
            "#define Q const\n#define Q\nint x;",
            "#define Q const\n#undef Q\n#define Q\nQ int counter = 0;",
            "#define __shared__ __device__\n__shared__ int s;",
            "#define const\nconst int counter = 0;",
            "uint32_t counter;\n#define uint32_t const unsigned",
            // Plain namespace-scope variables (device globals under -default-device).
            "int counter;",
            "float buf[256];",
            "struct S { mutable int n; };\n__device__ const S s{};",
            "asm(\".global .u32 counter;\");",
        ];
        for g in globals {
            let r = check(&with_line(g));
            assert!(r.is_err(), "{g}: accepted");
        }
        let stmts = [
            "static int calls(kInit);",
            "#define S(x) #x\nasm volatile(S(mov.u64 %0, %%clock64;) : \"=l\"(t));",
            "unsigned long long t = cuda::ptx::get_sreg_clock64();",
            "auto t = cuda::std::chrono::system_clock::now();",
            "auto t = system_clock::now();",
            "asm volatile(\".reg .u32 r; mov.u32 r, %pm0;\");",
            "asm volatile(\".global .u32 g;\");",
            "float* w = const_cast<float*>(kTable);",
        ];
        for st in stmts {
            let r = check(&with_stmt(st));
            assert!(r.is_err(), "{st}: accepted");
        }
        for bad in [
            "<cuda/ptx>",
            "<cuda/std/chrono>",
            "<cuda/std/ctime>",
            "<cuda_runtime.h>",
        ] {
            let src = good_body().replacen("#include <cuda_bf16.h>", &format!("#include {bad}"), 1);
            assert!(
                matches!(check(&src), Err(StaticCheckError::ForbiddenInclude { .. })),
                "{bad}"
            );
        }
        // The messages say what to do.
        let err = check(&with_line("#define S(x) #x\n")).expect_err("stringize");
        assert!(err.to_string().contains("write the string out"), "{err}");
        let err =
            check(&with_line("#define PASS(x) x\nPASS(__device__) int s;")).expect_err("pass");
        assert!(err.to_string().contains("write declarations out"), "{err}");
        let err = check(&with_line("__device__ int c(kInit);")).expect_err("fwd");
        assert!(
            err.to_string()
                .contains("define functions where you declare them"),
            "{err}"
        );
    }

    #[test]
    fn accepts_honest_idioms() {
        let lines = [
            "#include <cooperative_groups.h>\n#include <cooperative_groups/reduce.h>\nnamespace cg = cooperative_groups;",
            "__constant__ float t[8] = {1, 2, 3, 4, 5, 6, 7, 8};",
            "constexpr int kTile = 64;\nnamespace cfg { constexpr float kScale = 0.5f; }",
            "template <typename T, int N> __device__ __forceinline__ T sum(const T (&v)[N]) { T s = 0; for (int i = 0; i < N; ++i) s += v[i]; return s; }",
            "__device__ __forceinline__ uint4 ldg(const void* p) { uint4 r; asm volatile(\"ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];\" : \"=r\"(r.x), \"=r\"(r.y), \"=r\"(r.z), \"=r\"(r.w) : \"l\"(p)); return r; }",
            "__device__ void cp(void* s, const void* g) { asm volatile(\"cp.async.cg.shared.global [%0], [%1], 16;\" :: \"r\"((unsigned)__cvta_generic_to_shared(s)), \"l\"(g)); }",
            "#if KILN_X\n#define VEC 8\n#else\n#define VEC 4\n#endif\n__device__ float f(float v) { return v * VEC; }",
            "#ifndef KILN_TILE\n#define KILN_TILE 64\n#endif\n__shared__ float tile_buf[KILN_TILE];",
            "#define LOAD(p, i) (p)[(i)]\n#define MAX2(a, b) ((a) > (b) ? (a) : (b))\n__device__ float g(const float* p) { return MAX2(LOAD(p, 0), LOAD(p, 1)); }",
            "__device__ float neg(float v) { return -v; }",
            "struct Acc { float v; __device__ void add(float x); __device__ static Acc zero(); };",
            "__device__ float (twice3)(float v) { return v + v; }",
            "__device__ auto tr(float v) -> float { return v; }",
            "__device__ __noinline__ float h(float v) { return v; }",
            "#define CLUSTER_ATTR __cluster_dims__(2, 1, 1)\n__device__ int rank_of() { return 0; }",
            "#include <cub/cub.cuh>",
            "template <typename S> __device__ __forceinline__ S from_f(float v);\ntemplate <> __device__ __forceinline__ float from_f<float>(float v) { return v; }",
            "__device__ float scale(const float* p, int n);\n__device__ float scale(const float* p, int n) { return p[n]; }",
            "#define KO_BLOCK 256\n#define KO_BLOCK 256\n__shared__ float sb[KO_BLOCK];",
            "#include <cuda/std/cstdint>\n#include <cuda/pipeline>\n#include <cuda_fp8.h>",
        ];
        for l in lines {
            check(&with_line(l)).unwrap_or_else(|e| panic!("{l}: {e}"));
        }
        let stmts = [
            "static constexpr int kLanes = 32;",
            "static const float kHalf = 0.5f;",
            "auto block = cooperative_groups::this_thread_block(); block.sync();",
            "namespace cg = cooperative_groups; auto warp = cg::tiled_partition<32>(cg::this_thread_block()); float s = cg::reduce(warp, 1.0f, cg::plus<float>()); (void)s;",
            "__nanosleep(100);",
            "int n(3); (void)n;",
        ];
        for st in stmts {
            check(&with_stmt(st)).unwrap_or_else(|e| panic!("{st}: {e}"));
        }
        // Thread-block clusters.
        let cluster = format!(
            "{LAUNCH}#include <cooperative_groups.h>\nnamespace cg = cooperative_groups;\n\
             extern \"C\" __global__ void __cluster_dims__(2, 1, 1) rmsnorm(const scalar_t* x, const scalar_t* w, scalar_t* y, int T) {{\n\
               cg::cluster_group c = cg::this_cluster(); c.sync();\n}}\n"
        );
        check(&cluster).expect("cluster kernel");
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
