//! Duplicate detection by normalised source.
//!
//! Two candidates are the same kernel when their sources are equal after
//! [`normalize_source`]: comments removed (except the launch line, whose
//! launch configuration is part of the kernel's identity; it is found by the
//! one rule of [`kiln_kernels::source::launch_line`] and put first), runs of
//! whitespace collapsed to one space, and the ends trimmed. Newlines survive
//! only where they end a preprocessor directive, because there a line break
//! changes the meaning of the text after it.
//!
//! The identity of a source is the SHA-256 hex digest of its normal form
//! ([`source_hash`]). The tree keeps an index of these digests so duplicates
//! are refused across the whole tree, not only among siblings.

use kiln_kernels::source::{self, Lexed, Token};
use sha2::{Digest, Sha256};

/// Returns `src` in normal form: the launch line first (as `// kiln: <spec>`,
/// whitespace collapsed), then the code with comments dropped and every run
/// of whitespace collapsed to one space (none where the source had none), one
/// line per preprocessor directive.
///
/// Comments, string literals and splices are read by kiln-kernels' shared
/// lexer and launch-line rule ([`kiln_kernels::source`]), so dedupe sees the
/// same launch line as the checker and the worker. A source that does not lex
/// (the checker rejects it anyway) falls back to whitespace collapsing.
pub fn normalize_source(src: &str) -> String {
    match source::lex(src) {
        Ok(lexed) => normal_form(&lexed),
        // Marked so it can never read as a launch line or equal a lexed form.
        Err(_) => format!(
            "\u{0}unlexed\n{}",
            src.split_whitespace().collect::<Vec<_>>().join(" ")
        ),
    }
}

fn normal_form(lexed: &Lexed) -> String {
    let mut out = String::new();
    if let Ok(launch) = lexed.launch_line() {
        let spec: Vec<&str> = launch.spec.split_whitespace().collect();
        out.push_str(
            source::LaunchText {
                line: launch.line,
                spec: spec.join(" "),
            }
            .canonical()
            .trim_end(),
        );
        out.push('\n');
    }
    let mut directives = lexed.directives.iter().peekable();
    for i in 0..=lexed.tokens.len() {
        while let Some(d) = directives.next_if(|d| d.at == i) {
            // A directive must begin a line and its end is significant.
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push('#');
            push_tokens(&mut out, &d.tokens);
            out.push('\n');
        }
        if let Some(t) = lexed.tokens.get(i) {
            push_tokens(&mut out, std::slice::from_ref(t));
        }
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

/// Appends tokens, one space where the source had whitespace or a comment.
fn push_tokens(out: &mut String, tokens: &[Token]) {
    for (k, t) in tokens.iter().enumerate() {
        let line_start = out.is_empty() || out.ends_with('\n') || (k == 0 && out.ends_with('#'));
        if t.space_before && !line_start {
            out.push(' ');
        }
        out.push_str(&t.text);
    }
}

/// Returns the SHA-256 hex digest of [`normalize_source`]`(src)`.
pub fn source_hash(src: &str) -> String {
    hex::encode(Sha256::digest(normalize_source(src).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "// kiln: block=256 grid=ceil_div(T*D, 256) smem=0\n\
        #include <cuda_bf16.h>\n\
        extern \"C\" __global__ void f(float* y, const float* x, int T) {\n\
        \x20   int i = blockIdx.x * blockDim.x + threadIdx.x;\n\
        \x20   if (i < T * D) y[i] = x[i] * 2.0f;\n\
        }\n";

    #[test]
    fn comment_and_whitespace_variants_are_equal() {
        let variant = "// kiln:   block=256  grid=ceil_div(T*D, 256)   smem=0\r\n\
            // a helpful remark\n\
            #include <cuda_bf16.h>   /* headers */\n\n\n\
            extern \"C\"   __global__ void f(float* y,\n\t const float* x, int T)\n{\n\
            \x20 /* the index */ int i = blockIdx.x * blockDim.x + threadIdx.x; // global id\n\
            \x20 if (i < T * D) y[i] = x[i] * 2.0f;   \n\
            }   // end\n\n";
        assert_eq!(normalize_source(BASE), normalize_source(variant));
        assert_eq!(source_hash(BASE), source_hash(variant));
    }

    #[test]
    fn launch_line_variants_are_distinct() {
        let other = BASE.replace(
            "block=256 grid=ceil_div(T*D, 256)",
            "block=128 grid=ceil_div(T*D, 128)",
        );
        assert_ne!(source_hash(BASE), source_hash(&other));
        let no_launch = BASE.replacen("// kiln: block=256 grid=ceil_div(T*D, 256) smem=0\n", "", 1);
        assert_ne!(source_hash(BASE), source_hash(&no_launch));
    }

    #[test]
    fn code_changes_are_distinct() {
        let other = BASE.replace("2.0f", "3.0f");
        assert_ne!(source_hash(BASE), source_hash(&other));
    }

    #[test]
    fn normal_form_keeps_directive_and_launch_line_ends() {
        let src = "// kiln: block=32 grid=1\n#define N 4 // four\nint a[N];\n/* c */ #define M \\\n 5\nint b;";
        assert_eq!(
            normalize_source(src),
            "// kiln: block=32 grid=1\n#define N 4\nint a[N];\n#define M 5\nint b;"
        );
        // Where the launch comment sits does not matter to the compiler.
        let moved = "#define N 4\nint a[N]; // kiln: block=32   grid=1\n#define M 5\nint b;";
        assert_eq!(normalize_source(moved), normalize_source(src));
    }

    #[test]
    fn directive_line_breaks_matter() {
        let a = "#define A 1\nint x;";
        let b = "#define A 1 int x;";
        assert_ne!(source_hash(a), source_hash(b));
    }

    #[test]
    fn comment_markers_inside_literals_are_content() {
        let a = "printf(\"// not a comment  \"); int x;";
        let b = "printf(\"/* nor this */\"); int x;";
        assert_eq!(normalize_source(a), a);
        assert_ne!(source_hash(a), source_hash(b));
        assert_eq!(normalize_source("char c = '/'; // x"), "char c = '/';");
    }

    #[test]
    fn unterminated_comment_and_literal_do_not_panic() {
        assert_eq!(
            normalize_source("int a; /* open"),
            "\u{0}unlexed\nint a; /* open"
        );
        assert_eq!(normalize_source("\"open"), "\u{0}unlexed\n\"open");
        assert_eq!(normalize_source(""), "");
        assert_eq!(normalize_source("//"), "");
    }

    #[test]
    fn launch_line_follows_the_one_rule() {
        // Dedupe keeps exactly the launch text the checker and the worker see.
        for (src, want) in kiln_kernels::source::LAUNCH_LINE_CASES {
            let normal = normalize_source(src);
            let kept = normal
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("// kiln: "))
                .map(str::to_string);
            let want = want.map(|w| w.split_whitespace().collect::<Vec<_>>().join(" "));
            assert_eq!(kept, want, "{src:?}");
            let checker = kiln_eval::candidate::launch_line(src).ok().map(|l| l.spec);
            let worker = kiln_kernels::LaunchLine::parse_source(src).is_ok();
            assert_eq!(checker.is_some(), want.is_some(), "{src:?}");
            assert_eq!(worker, want.is_some(), "{src:?}");
        }
        // A launch line hidden in a string is content, not identity.
        let a =
            "const char* s = \"// kiln: block=1 grid=1 smem=0\";\n// kiln: block=2 grid=1 smem=0";
        assert!(normalize_source(a).starts_with("// kiln: block=2 grid=1 smem=0\n"));
    }

    #[test]
    fn operators_stay_distinct() {
        assert_ne!(
            normalize_source("x = a&&b;"),
            normalize_source("x = a& &b;")
        );
    }
}
