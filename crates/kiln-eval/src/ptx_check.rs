//! Checks on the compiled PTX: what actually runs, whatever the source looked
//! like to the static checker.
//!
//! NVRTC compiles a candidate once; the PTX it emits is what ptxas turns into
//! the loaded cubin. However a source spells a timer read, a printf or a
//! device-heap call (macros, stringization, a header that wraps it), it ends
//! up here as a special register or a call to a known symbol:
//!
//! - special registers that read time, performance counters or what identifies
//!   a launch: `%clock`, `%clock_hi`, `%clock64`, `%globaltimer` (`_lo`/`_hi`),
//!   `%pm0`..`%pm7` and their 64-bit forms, `%gridid`, `%current_graph_exec`
//!   (the graph a kernel runs in) and the driver's `%envreg0`..`%envreg31`
//!   (whose contents are the driver's and undocumented): a kernel that can
//!   tell one launch from the next, or a graph replay from a stream launch,
//!   can behave differently while timed;
//! - calls to `vprintf` (device printf), `malloc`/`free` (device heap),
//!   `cudaLaunchDevice`/`cudaGetParameterBuffer*` (dynamic parallelism),
//!   `__assertfail` (assert prints);
//! - `cvta.param`, the generic address of a kernel parameter (`&` of a
//!   `__grid_constant__` parameter): it points into the launch's own
//!   parameter buffer, so it too tells one launch from another;
//! - `discard` (`discard.global.L2`, `discard.L2`): it drops the cache lines
//!   of memory it names, a weak write of indeterminate values, and the
//!   catalog's replay, timed right after a candidate's, would then read its
//!   inputs from DRAM while the candidate's own found them in L2;
//! - module-scope `.global` and `.const` variables are listed
//!   ([`PtxFacts::globals`]) so the worker can prove each is byte-identical
//!   before and after every launch: CUDA headers bring in read-only ones, and
//!   a candidate may not write any. `__constant__` memory is global memory
//!   behind a cache, and a generic pointer to it (`cvta.const`) may be
//!   stored through, so it is watched like the rest. Their total size is
//!   capped ([`MAX_GLOBAL_BYTES`]), since the worker copies them around every
//!   launch it checks.
//!
//! The scan reads PTX tokens outside comments and string literals, so a
//! forbidden name in a comment or a file name does not trip it.

use std::fmt;

/// Most bytes of module-scope `.global` and `.const` data a candidate may carry.
pub const MAX_GLOBAL_BYTES: u64 = 64 * 1024;

/// Special-register prefixes that read a clock, a timer, a performance counter
/// or what identifies the launch.
const FORBIDDEN_REGISTERS: &[&str] = &[
    "%clock",
    "%globaltimer",
    "%pm",
    "%gridid",
    "%current_graph_exec",
    "%envreg",
];

/// Symbols a candidate may not call, with the reason given to the proposer.
const FORBIDDEN_CALLS: &[(&str, &str)] = &[
    (
        "vprintf",
        "device printf (vprintf) writes to the evaluator's output and distorts timing",
    ),
    (
        "malloc",
        "device-heap allocation (malloc) persists across launches",
    ),
    (
        "free",
        "device-heap allocation (free) persists across launches",
    ),
    (
        "__nv_aligned_device_malloc",
        "device-heap allocation persists across launches",
    ),
    (
        "cudaLaunchDevice",
        "dynamic parallelism (a kernel launching kernels) is not allowed",
    ),
    (
        "cudaLaunchDeviceV2",
        "dynamic parallelism (a kernel launching kernels) is not allowed",
    ),
    (
        "cudaGetParameterBuffer",
        "dynamic parallelism (a kernel launching kernels) is not allowed",
    ),
    (
        "cudaGetParameterBufferV2",
        "dynamic parallelism (a kernel launching kernels) is not allowed",
    ),
    (
        "cudaCGGetIntrinsicHandle",
        "grid-wide synchronisation needs a cooperative launch, which the evaluator never makes",
    ),
    (
        "__assertfail",
        "device assert prints to the evaluator's output; check your indices instead",
    ),
];

/// Instruction families a candidate may not use (`discard.global.L2` is
/// `discard` plus suffixes), with the reason given to the proposer.
const FORBIDDEN_INSTRUCTIONS: &[(&str, &str)] = &[
    (
        "discard",
        "it evicts cache lines of memory the kernel does not own (the inputs the catalog reads next, cold) and leaves their contents indeterminate",
    ),
    (
        // `&param` of a `__grid_constant__` parameter: the generic address of
        // the launch's own parameter buffer, which differs from one launch
        // (one graph node, one graph) to the next.
        "cvta.param",
        "it takes the address of a kernel parameter (`&` of a `__grid_constant__` parameter), which tells one launch from another; read parameters by value",
    ),
];

/// One module-scope `.global` or `.const` variable of the compiled module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtxGlobal {
    /// The PTX (mangled) name, as `cuModuleGetGlobal` takes it.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What the worker needs to know about a module that passed the checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PtxFacts {
    /// Every module-scope `.global` and `.const` variable.
    pub globals: Vec<PtxGlobal>,
}

impl PtxFacts {
    /// Total bytes of module-scope `.global` and `.const` data.
    pub fn global_bytes(&self) -> u64 {
        self.globals.iter().map(|g| g.bytes).sum()
    }
}

/// Why the compiled PTX was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtxCheckError {
    /// What the proposer should read.
    pub reason: String,
}

impl fmt::Display for PtxCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for PtxCheckError {}

fn reject(reason: impl Into<String>) -> PtxCheckError {
    PtxCheckError {
        reason: reason.into(),
    }
}

/// Checks a module's PTX text and lists its module-scope globals.
pub fn check_ptx(ptx: &str) -> Result<PtxFacts, PtxCheckError> {
    let code = strip_comments_and_strings(ptx);
    for (line_no, line) in code.lines().enumerate() {
        let line_no = line_no + 1;
        for word in words(line) {
            if let Some(reg) = word.strip_prefix('%') {
                let reg = format!("%{reg}");
                if FORBIDDEN_REGISTERS
                    .iter()
                    .any(|p| is_forbidden_register(&reg, p))
                {
                    return Err(reject(format!(
                        "the compiled PTX reads {reg} (line {line_no}): kernels may not read clocks, timers, performance counters or anything that identifies the launch"
                    )));
                }
            }
        }
        if let Some((op, why)) = words(line).find_map(|w| {
            FORBIDDEN_INSTRUCTIONS.iter().find_map(|(name, why)| {
                // The instruction always carries a suffix (`discard.L2`); a
                // function or label of the bare name is not it.
                w.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('.'))
                    .then_some((w, why))
            })
        }) {
            return Err(reject(format!(
                "the compiled PTX uses `{op}` (line {line_no}): {why}"
            )));
        }
        if let Some(target) = call_target(line) {
            if let Some((_, why)) = FORBIDDEN_CALLS.iter().find(|(name, _)| *name == target) {
                return Err(reject(format!(
                    "the compiled PTX calls `{target}` (line {line_no}): {why}"
                )));
            }
        }
        if let Some(name) = extern_function(line) {
            if let Some((_, why)) = FORBIDDEN_CALLS.iter().find(|(n, _)| *n == name) {
                return Err(reject(format!(
                    "the compiled PTX declares `{name}` (line {line_no}): {why}"
                )));
            }
        }
    }
    let globals = module_globals(&code)?;
    let facts = PtxFacts { globals };
    if facts.global_bytes() > MAX_GLOBAL_BYTES {
        return Err(reject(format!(
            "the module holds {} bytes of module-scope global memory (most {MAX_GLOBAL_BYTES}); a kernel may not keep state between launches",
            facts.global_bytes()
        )));
    }
    Ok(facts)
}

/// `%clock`, `%clock_hi`, `%clock64`, `%globaltimer_lo`, `%pm3`, `%pm0_64`,
/// `%envreg7`, `%current_graph_exec`… but
/// not an ordinary register that merely starts with the letters (`%pmx` is
/// not a PTX register; NVVM names its own `%p`, `%r`, `%rd`, `%f`, `%fd`, `%rs`, `%h`).
fn is_forbidden_register(reg: &str, prefix: &str) -> bool {
    let Some(rest) = reg.strip_prefix(prefix) else {
        return false;
    };
    match prefix {
        "%pm" => rest.chars().next().is_some_and(|c| c.is_ascii_digit()),
        _ => rest.is_empty() || rest.starts_with('_') || rest.chars().all(|c| c.is_ascii_digit()),
    }
}

/// Splits a PTX line into identifier-like words (`%clock64`, `vprintf`, `$L__x`).
fn words(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '%' | '_' | '$' | '.')))
        .filter(|w| !w.is_empty())
}

/// The callee of a `call` instruction: `call.uni (retval0), vprintf, (…);`.
fn call_target(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let t = t.strip_prefix('@').map_or(t, |p| {
        // A predicated call: `@%p1 call …`.
        p.split_once(char::is_whitespace)
            .map_or("", |(_, r)| r.trim_start())
    });
    if !(t.starts_with("call ") || t.starts_with("call.") || t.starts_with("call\t")) {
        return None;
    }
    let after = t.split_once(char::is_whitespace)?.1.trim_start();
    // Skip an optional return-value list `(retval0),`.
    let after = if after.starts_with('(') {
        after
            .split_once(')')?
            .1
            .trim_start()
            .strip_prefix(',')?
            .trim_start()
    } else {
        after
    };
    let end = after
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(after.len());
    Some(&after[..end])
}

/// The name of an `.extern .func` declaration.
fn extern_function(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if !t.starts_with(".extern") || !t.contains(".func") {
        return None;
    }
    let after_func = t.split_once(".func")?.1;
    // `.extern .func (.param .b32 func_retval0) vprintf(` or `.extern .func free(`.
    let after = match after_func.trim_start().strip_prefix('(') {
        Some(rest) => rest.split_once(')')?.1,
        None => after_func,
    };
    let after = after.trim_start();
    let end = after
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(after.len());
    Some(&after[..end])
}

/// Module-scope `.global` and `.const` declarations (outside every function body).
fn module_globals(code: &str) -> Result<Vec<PtxGlobal>, PtxCheckError> {
    let mut depth = 0i64;
    let mut out = Vec::new();
    // Declarations can span lines (`= { … }` initialisers); join each
    // module-scope statement up to its `;` before reading it.
    let mut statement = String::new();
    for ch in code.chars() {
        match ch {
            '{' if statement.trim_start().starts_with('.')
                && statement.contains('=')
                && depth == 0 =>
            {
                // An initialiser list of a module-scope variable, not a body.
                statement.push(ch);
                depth += 1000;
            }
            '{' => {
                if depth == 0 {
                    statement.clear();
                }
                depth += 1;
            }
            '}' if depth >= 1000 => {
                statement.push(ch);
                depth -= 1000;
            }
            '}' => depth -= 1,
            ';' if depth == 0 => {
                if let Some(g) = parse_global(&statement)? {
                    out.push(g);
                }
                statement.clear();
            }
            _ if depth == 0 || depth >= 1000 => statement.push(ch),
            _ => {}
        }
    }
    Ok(out)
}

/// Reads `[.visible|.weak|.extern] .global|.const [.align N] .TYPE name[dims] [= …]`.
fn parse_global(statement: &str) -> Result<Option<PtxGlobal>, PtxCheckError> {
    let decl = statement.split('=').next().unwrap_or("").trim();
    let tokens: Vec<&str> = decl.split_whitespace().collect();
    if !tokens.contains(&".global") && !tokens.contains(&".const") {
        return Ok(None);
    }
    if tokens.contains(&".extern") {
        return Err(reject(format!(
            "the compiled PTX declares an external global (`{decl}`): a kernel may not reach memory outside its own module"
        )));
    }
    let Some(last) = tokens.last() else {
        return Ok(None);
    };
    let elem = tokens
        .iter()
        .filter_map(|t| type_size(t))
        .next_back()
        .unwrap_or(1);
    let (name, dims) = match last.find('[') {
        Some(i) => (&last[..i], &last[i..]),
        None => (*last, ""),
    };
    let mut count: u64 = 1;
    for dim in dims.split('[').filter(|d| !d.is_empty()) {
        let n = dim.trim_end_matches(']').trim();
        let n: u64 = if n.is_empty() {
            // `name[]` sized by its initialiser: count the initialiser's items.
            let init = statement.split_once('=').map_or("", |(_, i)| i);
            init.split(',').count().max(1) as u64
        } else {
            n.parse().map_err(|_| {
                reject(format!(
                    "the compiled PTX declares a global with an unreadable size: `{decl}`"
                ))
            })?
        };
        count = count.saturating_mul(n);
    }
    Ok(Some(PtxGlobal {
        name: name.trim_end_matches(';').to_string(),
        bytes: count.saturating_mul(elem),
    }))
}

/// Bytes of a PTX fundamental type token (`.b8`, `.u32`, `.f64`, `.v4`…).
fn type_size(t: &str) -> Option<u64> {
    let t = t.strip_prefix('.')?;
    let (kind, bits) = t.split_at(t.find(|c: char| c.is_ascii_digit())?);
    if !matches!(kind, "b" | "u" | "s" | "f" | "bf") {
        return None;
    }
    let bits: u64 = bits.parse().ok()?;
    Some((bits / 8).max(1))
}

/// PTX with `//` and `/* */` comments and string literals blanked out.
fn strip_comments_and_strings(ptx: &str) -> String {
    let mut out = String::with_capacity(ptx.len());
    let mut chars = ptx.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for d in chars.by_ref() {
                    if d == '\n' {
                        out.push('\n');
                    }
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
                out.push(' ');
            }
            '"' => {
                for d in chars.by_ref() {
                    if d == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = r#"
.version 9.0
.target sm_90a
.address_size 64
	// .globl	k
.global .align 1 .b8 _ZN4cuda3std3__45__cpo4swapE[1];
.global .align 4 .b8 table[16] = {0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64};
.const .align 4 .b8 coeffs[8];

.visible .entry k(
	.param .u64 k_param_0
)
{
	.reg .b32 	%r<6>;
	.reg .b64 	%rd<4>;
	.reg .pred 	%p<3>;
	ld.param.u64 	%rd2, [k_param_0];
	// %clock64 in a comment is fine
	mov.u32 	%r1, %tid.x;
	st.global.u32 	[%rd2], %r1;
	ret;
}
"#;

    #[test]
    fn clean_module_passes_and_lists_its_globals() {
        let facts = check_ptx(CLEAN).expect("clean");
        assert_eq!(
            facts.globals,
            vec![
                PtxGlobal {
                    name: "_ZN4cuda3std3__45__cpo4swapE".into(),
                    bytes: 1
                },
                PtxGlobal {
                    name: "table".into(),
                    bytes: 16
                },
                PtxGlobal {
                    name: "coeffs".into(),
                    bytes: 8
                },
            ]
        );
    }

    #[test]
    fn constant_memory_is_watched_and_capped_like_globals() {
        // `__constant__` data can be written through a generic pointer
        // (`cvta.const`), so it is state like any global.
        let big = CLEAN.replace(
            ".const .align 4 .b8 coeffs[8];",
            ".const .align 4 .b8 coeffs[70000];",
        );
        assert!(check_ptx(&big).expect_err("big").reason.contains("70"));
        let ext = CLEAN.replace(
            ".const .align 4 .b8 coeffs[8];",
            ".extern .const .align 4 .b8 coeffs[8];",
        );
        assert!(check_ptx(&ext)
            .expect_err("extern")
            .reason
            .contains("external"));
    }

    #[test]
    fn clock_counter_and_launch_registers_are_rejected_in_every_spelling() {
        for reg in [
            "%clock",
            "%clock64",
            "%clock_hi",
            "%globaltimer",
            "%globaltimer_lo",
            "%globaltimer_hi",
            "%pm0",
            "%pm7_64",
            "%gridid",
            "%current_graph_exec",
            "%envreg0",
            "%envreg31",
        ] {
            let ptx = CLEAN.replace("%tid.x", reg);
            let err = check_ptx(&ptx).expect_err(reg);
            assert!(err.reason.contains(reg), "{reg}: {err}");
        }
        // NVVM's own registers are not timers.
        for ok in ["%p1", "%rd1", "%r12", "%fd3"] {
            assert!(
                !FORBIDDEN_REGISTERS
                    .iter()
                    .any(|p| is_forbidden_register(ok, p)),
                "{ok}"
            );
        }
    }

    #[test]
    fn forbidden_calls_are_rejected() {
        let printf = CLEAN.replace(
            "\tret;",
            "\t{\n\t.reg .b32 temp_param_reg;\n\tcall.uni (retval0), \n\tvprintf, \n\t(\n\tparam0\n\t);\n\t}\n\tret;",
        );
        // NVVM splits the callee onto its own line; the declaration catches it too.
        let with_decl = format!(
            ".extern .func  (.param .b32 func_retval0) vprintf\n(\n\t.param .b64 vprintf_param_0\n)\n;\n{printf}"
        );
        let err = check_ptx(&with_decl).expect_err("vprintf");
        assert!(err.reason.contains("vprintf"), "{err}");
        let malloc = format!(".extern .func  (.param .b64 func_retval0) malloc\n(\n\t.param .b64 malloc_param_0\n)\n;\n{CLEAN}");
        assert!(check_ptx(&malloc)
            .expect_err("malloc")
            .reason
            .contains("malloc"));
        let call = CLEAN.replace("\tret;", "\tcall.uni free, (param0);\n\tret;");
        assert!(check_ptx(&call).expect_err("free").reason.contains("free"));
        let dp = CLEAN.replace(
            "\tret;",
            "\t@%p1 call.uni (retval0), cudaLaunchDeviceV2, (param0, param1);\n\tret;",
        );
        assert!(check_ptx(&dp)
            .expect_err("dp")
            .reason
            .contains("dynamic parallelism"));
    }

    #[test]
    fn cache_discards_are_rejected_but_not_the_bare_name() {
        for op in [
            "discard.global.L2 [%rd1], 128;",
            "@%p1 discard.L2 [%rd1], 128;",
        ] {
            let ptx = CLEAN.replace("\tret;", &format!("\t{op}\n\tret;"));
            let err = check_ptx(&ptx).expect_err(op);
            assert!(err.reason.contains("discard"), "{err}");
        }
        let named = CLEAN.replace("\tret;", "\tcall.uni discard, (param0);\n\tret;");
        check_ptx(&named).expect("a function named discard is not the instruction");
    }

    #[test]
    fn the_address_of_a_kernel_parameter_is_rejected_but_its_value_is_not() {
        let taken = CLEAN.replace("\tret;", "\tcvta.param.u64 %rd5, %rd2;\n\tret;");
        let err = check_ptx(&taken).expect_err("cvta.param");
        assert!(err.reason.contains("cvta.param"), "{err}");
        // Reading parameters, and converting generic addresses to global ones, are fine.
        let read = CLEAN.replace(
            "\tret;",
            "\tld.param.u64 %rd1, [k_param_0];\n\tcvta.to.global.u64 %rd4, %rd1;\n\tret;",
        );
        check_ptx(&read).expect("ld.param and cvta.to.global");
    }

    #[test]
    fn names_in_strings_and_comments_do_not_count() {
        let ptx = CLEAN.replace(
            "\tret;",
            "\t/* call.uni vprintf, (x); %globaltimer */\n\tret;",
        );
        check_ptx(&ptx).expect("comment");
    }

    #[test]
    fn big_or_external_globals_are_rejected() {
        let big = CLEAN.replace(
            ".const .align 4 .b8 coeffs[8];",
            ".global .align 4 .u32 cache[1048576];",
        );
        let err = check_ptx(&big).expect_err("big");
        assert!(err.reason.contains("4194"), "{err}");
        let ext = CLEAN.replace(
            ".const .align 4 .b8 coeffs[8];",
            ".extern .global .align 4 .u32 elsewhere;",
        );
        assert!(check_ptx(&ext)
            .expect_err("extern")
            .reason
            .contains("external"));
    }

    #[test]
    fn scalar_and_vector_globals_are_sized() {
        let ptx = CLEAN.replace(
            ".const .align 4 .b8 coeffs[8];",
            ".global .align 8 .u64 counter;\n.visible .global .align 4 .f32 grid[4][8];",
        );
        let facts = check_ptx(&ptx).expect("ok");
        let sizes: Vec<(String, u64)> = facts
            .globals
            .iter()
            .map(|g| (g.name.clone(), g.bytes))
            .collect();
        assert!(sizes.contains(&("counter".into(), 8)), "{sizes:?}");
        assert!(sizes.contains(&("grid".into(), 128)), "{sizes:?}");
    }
}
