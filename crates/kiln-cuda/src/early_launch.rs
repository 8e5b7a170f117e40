//! Early launch (CUDA's programmatic dependent launch): a kernel launched with
//! `CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION` may be scheduled
//! while the kernel before it on the stream is still running, once every block
//! of that kernel has executed `griddepcontrol.launch_dependents` (or exited).
//! Its blocks then sit on the SMs and must execute `griddepcontrol.wait`, which
//! returns when the earlier kernel has finished and its writes are visible,
//! before they touch memory that kernel may read or write. What this saves is
//! the launch and block scheduling between two dependent kernels, and whatever
//! independent work (an L2 prefetch of weights) fits before the wait.
//!
//! Whether a kernel may be launched this way is read off its compiled PTX
//! ([`waits_before_memory`]), not trusted from its source: the entry must reach
//! `griddepcontrol.wait` on every path before any memory access.

use std::ffi::c_void;

use cudarc::driver::sys;

use crate::error::{CudaError, Result};

/// True when the PTX entry `entry` executes `griddepcontrol.wait` before any
/// instruction that reads or writes memory other than its own parameters.
///
/// The check is deliberately narrow: up to the first wait, only parameter
/// loads, register arithmetic, moves, conversions, comparisons, selects,
/// cache prefetches and `griddepcontrol.launch_dependents` may appear, and no
/// branch, call, return, barrier or memory access. Straight-line code with
/// no branch means every thread executes that prefix, so every thread waits
/// before its first access.
pub fn waits_before_memory(ptx: &str, entry: &str) -> bool {
    let Some(body) = entry_body(ptx, entry) else {
        return false;
    };
    for stmt in statements(&body) {
        let op = opcode(&stmt);
        if op.is_empty() || op.starts_with('.') {
            continue; // a directive (.reg, .shared, .pragma …) or an empty statement
        }
        if op == "griddepcontrol.wait" {
            return true;
        }
        if !allowed_before_wait(op) {
            return false;
        }
    }
    false
}

/// Opcodes that touch no memory but the kernel's parameters and cannot branch.
fn allowed_before_wait(op: &str) -> bool {
    const ARITHMETIC: &[&str] = &[
        "mov", "cvta", "cvt", "add", "sub", "mul", "mad", "shl", "shr", "and", "or", "xor", "not",
        "neg", "min", "max", "setp", "selp",
    ];
    let base = op.split('.').next().unwrap_or(op);
    ARITHMETIC.contains(&base)
        || op.starts_with("ld.param")
        || op.starts_with("prefetch.")
        || op.starts_with("prefetchu.")
        || op.starts_with("cp.async.bulk.prefetch.")
        || op == "griddepcontrol.launch_dependents"
}

/// The text between the braces of `.entry name(…)`, comments removed.
fn entry_body(ptx: &str, entry: &str) -> Option<String> {
    let code = strip_comments(ptx);
    let mut from = 0;
    let start = loop {
        let at = from + code[from..].find(".entry")?;
        let rest = code[at + ".entry".len()..].trim_start();
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(rest.len());
        if &rest[..name_len] == entry {
            break at;
        }
        from = at + 1;
    };
    let open = start + code[start..].find('{')?;
    let mut depth = 0usize;
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(code[open + 1..open + i].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

fn strip_comments(ptx: &str) -> String {
    let mut out = String::with_capacity(ptx.len());
    let mut rest = ptx;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |n| &r[n..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |n| &r[n + 2..]);
            out.push(' ');
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The body's statements (split at `;`), with braces and labels removed.
fn statements(body: &str) -> Vec<String> {
    body.split(';')
        .map(|s| {
            let s = s.replace(['{', '}'], " ");
            let mut s = s.trim();
            // Labels (`$L__BB0_2:`) lead the statement they mark.
            while let Some(colon) = s.find(':') {
                let label = &s[..colon];
                if label.is_empty() || label.contains(char::is_whitespace) {
                    break;
                }
                s = s[colon + 1..].trim_start();
            }
            s.to_string()
        })
        .collect()
}

/// The opcode of a statement, past an optional `@p` / `@!p` guard.
fn opcode(stmt: &str) -> &str {
    let mut words = stmt.split_whitespace();
    match words.next() {
        Some(w) if w.starts_with('@') => words.next().unwrap_or(""),
        Some(w) => w,
        None => "",
    }
}

/// Launches `func` on `stream` with `params` (one pointer per kernel
/// parameter, in order), early when `early` is set.
///
/// # Safety
/// `params` must match the kernel's signature and every buffer it names must
/// be live and large enough; with `early`, the kernel must satisfy
/// [`waits_before_memory`].
pub unsafe fn launch(
    stream: &cudarc::driver::CudaStream,
    func: &cudarc::driver::CudaFunction,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    smem: u32,
    params: &mut [*mut c_void],
    early: bool,
) -> Result<()> {
    stream
        .context()
        .bind_to_thread()
        .map_err(CudaError::driver("cuCtxSetCurrent"))?;
    // SAFETY: a zeroed attribute is a valid "ignore" value; the fields set
    // below are the ones the driver reads for this id.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let config = sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block.0,
        blockDimY: block.1,
        blockDimZ: block.2,
        sharedMemBytes: smem,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: u32::from(early),
    };
    // SAFETY: the caller guarantees the parameters; `config` and `attr` live
    // across the call.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            func.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
    .map_err(CudaError::driver("cuLaunchKernelEx"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &str) -> String {
        format!(
            ".version 8.0\n.target sm_90\n.visible .entry other(\n.param .u64 other_param_0\n)\n{{\nld.global.u32 %r1, [%rd1];\n}}\n\
             .visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u32 k_param_1\n)\n.maxntid 256, 1, 1\n{{\n\
             \t.reg .pred %p<3>;\n\t.reg .b64 %rd<9>;\n{body}\n}}\n"
        )
    }

    #[test]
    fn a_wait_first_allows_early_launch() {
        let ptx = entry(
            "\tld.param.u64 %rd1, [k_param_0];\n\tmov.u32 %r1, %tid.x; // a comment\n\
             \tcvta.to.global.u64 %rd2, %rd1;\n\tcp.async.bulk.prefetch.L2.global [%rd2], 4096;\n\
             \tgriddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;\n\tld.global.u32 %r2, [%rd2];\n",
        );
        assert!(waits_before_memory(&ptx, "k"));
    }

    #[test]
    fn memory_branches_or_no_wait_before_it_refuse() {
        for prefix in [
            "\tld.global.u32 %r2, [%rd2];\n",
            "\tst.global.u32 [%rd2], %r1;\n",
            "\tatom.global.add.u32 %r2, [%rd2], 1;\n",
            "\tld.u32 %r2, [%rd2];\n",
            "\tsetp.ge.s32 %p1, %r1, 4;\n\t@%p1 bra $L__BB0_2;\n",
            "\t@%p1 ret;\n",
            "\tbar.sync 0;\n",
            "\tcall.uni (retval0), f, (param0);\n",
            "\tcp.async.ca.shared.global [%r1], [%rd2], 16;\n",
            // Not a load, but it drops L2 lines another kernel may still need.
            "\tdiscard.global.L2 [%rd2], 128;\n",
            "\tst.param.b32 [param0], %r1;\n",
            "\tmbarrier.init.shared.b64 [%r1], 1;\n",
            "\tred.global.add.u32 [%rd2], 1;\n",
            "\tsuld.b.1d.b32.trap {%r2}, [%rd1, {%r1}];\n",
        ] {
            let ptx = entry(&format!("{prefix}\tgriddepcontrol.wait;\n"));
            assert!(!waits_before_memory(&ptx, "k"), "{prefix}");
        }
        assert!(!waits_before_memory(
            &entry("\tld.param.u64 %rd1, [k_param_0];\n"),
            "k"
        ));
        // A wait in another entry does not count, nor does a missing entry.
        assert!(!waits_before_memory(
            &entry("\tgriddepcontrol.wait;\n"),
            "other"
        ));
        assert!(!waits_before_memory(
            &entry("\tgriddepcontrol.wait;\n"),
            "absent"
        ));
    }

    #[test]
    fn labels_guards_and_comments_are_read_through() {
        let ptx = entry(
            "$L__BB0_1:\n\t@%p1 mov.u32 %r1, 0;\n\t/* griddepcontrol.wait; */\n\tgriddepcontrol.wait;\n",
        );
        assert!(waits_before_memory(&ptx, "k"));
        let commented = entry("\t// griddepcontrol.wait;\n\tld.global.u32 %r2, [%rd2];\n");
        assert!(!waits_before_memory(&commented, "k"));
    }
}
