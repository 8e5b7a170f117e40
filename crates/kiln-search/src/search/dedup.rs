//! Duplicate detection by normalised source.
//!
//! Two candidates are the same kernel when their sources are equal after
//! [`normalize_source`]: comments removed (except the `// kiln:` launch line,
//! whose launch configuration is part of the kernel's identity), runs of
//! whitespace collapsed to one space, and the ends trimmed. Newlines survive
//! only where they end a preprocessor directive or the launch line, because
//! there a line break changes the meaning of the text after it.
//!
//! The identity of a source is the SHA-256 hex digest of its normal form
//! ([`source_hash`]). The tree keeps an index of these digests so duplicates
//! are refused across the whole tree, not only among siblings.

use sha2::{Digest, Sha256};

/// The marker that keeps a line comment in the normal form: the launch line.
const LAUNCH_MARKER: &str = "kiln:";

/// Returns `src` with comments stripped (the `// kiln:` line kept) and whitespace collapsed.
pub fn normalize_source(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Normalized::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '/' if next == Some('/') => {
                let end = chars[i..]
                    .iter()
                    .position(|&ch| ch == '\n')
                    .map_or(chars.len(), |p| i + p);
                let body: String = chars[i + 2..end].iter().collect();
                if body.trim_start().starts_with(LAUNCH_MARKER) {
                    // The launch line is identity: keep it, whitespace-normalised,
                    // on a line of its own.
                    out.begin_line();
                    out.token_text("//");
                    out.space();
                    for word in body.split_whitespace() {
                        out.token_text(word);
                        out.space();
                    }
                    out.line_end_pending = true;
                } else {
                    out.space();
                }
                // The newline itself (if any) is handled as whitespace below.
                i = end;
            }
            '/' if next == Some('*') => {
                // A block comment is one space to the compiler, even inside a
                // directive (its newlines do not end the directive).
                let close = (i + 2..chars.len().saturating_sub(1))
                    .find(|&j| chars[j] == '*' && chars[j + 1] == '/')
                    .map_or(chars.len(), |j| j + 2);
                out.space();
                i = close;
            }
            '"' | '\'' => {
                // Literals are copied verbatim: comment markers and whitespace
                // inside them are content.
                let end = literal_end(&chars, i);
                let lit: String = chars[i..end].iter().collect();
                out.token_text(&lit);
                i = end;
            }
            '\\' if next == Some('\n')
                || (next == Some('\r') && chars.get(i + 2) == Some(&'\n')) =>
            {
                // Line continuation: the directive goes on; it is whitespace.
                out.space();
                i += if next == Some('\n') { 2 } else { 3 };
            }
            '#' if out.at_line_start() => {
                // A directive must begin a line, so the break before it stays.
                out.begin_line();
                out.in_directive = true;
                out.token_char('#');
                i += 1;
            }
            c if c.is_whitespace() => {
                if c == '\n' {
                    out.newline();
                } else {
                    out.space();
                }
                i += 1;
            }
            c => {
                out.token_char(c);
                i += 1;
            }
        }
    }
    out.finish()
}

/// Returns the SHA-256 hex digest of [`normalize_source`]`(src)`.
pub fn source_hash(src: &str) -> String {
    hex::encode(Sha256::digest(normalize_source(src).as_bytes()))
}

/// Index one past the end of the string or char literal opening at `start`.
fn literal_end(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut j = start + 1;
    while j < chars.len() {
        match chars[j] {
            '\\' => j += 2,
            // An unterminated literal ends at the line end, as for the compiler.
            '\n' => return j,
            ch if ch == quote => return j + 1,
            _ => j += 1,
        }
    }
    chars.len()
}

/// The normal form under construction, with the whitespace state machine.
#[derive(Default)]
struct Normalized {
    text: String,
    /// A space is owed before the next token.
    space_pending: bool,
    /// The current line is a preprocessor directive or the launch line, so
    /// its end must stay a newline.
    line_end_pending: bool,
    /// The current line is a preprocessor directive.
    in_directive: bool,
    /// No token has been emitted since the last significant newline.
    fresh_line: bool,
    /// Nothing but whitespace or comments since the last raw newline.
    raw_line_start: bool,
}

impl Normalized {
    fn at_line_start(&self) -> bool {
        self.text.is_empty() || self.raw_line_start || self.fresh_line
    }

    fn space(&mut self) {
        self.space_pending = true;
    }

    fn newline(&mut self) {
        self.raw_line_start = true;
        if self.in_directive || self.line_end_pending {
            self.in_directive = false;
            self.line_end_pending = false;
            if !self.text.is_empty() && !self.fresh_line {
                self.text.push('\n');
            }
            self.fresh_line = true;
            self.space_pending = false;
        } else {
            self.space_pending = true;
        }
    }

    fn begin_line(&mut self) {
        if !self.text.is_empty() && !self.fresh_line {
            self.text.push('\n');
        }
        self.fresh_line = true;
        self.space_pending = false;
    }

    fn flush_space(&mut self) {
        if self.space_pending && !self.text.is_empty() && !self.fresh_line {
            self.text.push(' ');
        }
        self.space_pending = false;
        self.fresh_line = false;
        self.raw_line_start = false;
    }

    fn token_char(&mut self, c: char) {
        self.flush_space();
        self.text.push(c);
    }

    fn token_text(&mut self, s: &str) {
        self.flush_space();
        self.text.push_str(s);
    }

    fn finish(mut self) -> String {
        let trimmed = self.text.trim_end().len();
        self.text.truncate(trimmed);
        self.text
    }
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
        assert_eq!(normalize_source("int a; /* open"), "int a;");
        assert_eq!(normalize_source("\"open"), "\"open");
        assert_eq!(normalize_source(""), "");
        assert_eq!(normalize_source("//"), "");
    }
}
