//! The `// kiln:` launch line: parsing and checked evaluation.
//!
//! Every kernel source (catalog or candidate) declares its launch in one line
//!
//! ```text
//! // kiln: block=256 grid=ceil_div(T*D, 256*8) smem=0
//! ```
//!
//! where each value is an integer expression over shape variables and device
//! facts with `+ - * / %` (integer, `/` truncates), parentheses, literals and
//! `ceil_div(a,b)`, `min(a,b)`, `max(a,b)`. Candidate sources are untrusted, so
//! parsing never panics and evaluation is checked: overflow, division by zero,
//! unknown variables and out-of-range results are typed errors.

use std::collections::BTreeMap;

use crate::source::LaunchLineError;
use std::fmt;

pub use kiln_cuda::LaunchDims;

/// The canonical spelling that starts a launch line (the exact rule is
/// [`crate::source`]'s: a `//` comment whose trimmed text starts with `kiln:`).
pub const MARKER: &str = "// kiln:";

/// Longest launch line accepted (a guard against pathological candidates).
const MAX_LINE_LEN: usize = 4096;
/// Deepest expression nesting accepted (recursion guard).
const MAX_DEPTH: usize = 64;

/// Why a launch line could not be parsed or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// The source has no `// kiln:` line.
    #[error(
        "no launch line: add one comment line `// kiln: block=<expr> grid=<expr> smem=<expr>`"
    )]
    Missing,
    /// The source has more than one `// kiln:` line.
    #[error("{count} launch lines (lines {lines:?}): keep exactly one `// kiln:` line")]
    Duplicate {
        /// How many were found.
        count: usize,
        /// Their 1-based line numbers.
        lines: Vec<usize>,
    },
    /// The launch line is malformed.
    #[error("launch line: {0}")]
    Syntax(String),
    /// The source cannot be lexed, or has a near-miss, block-comment or
    /// spliced launch line (see [`crate::source`]).
    #[error("{0}")]
    Source(LaunchLineError),
    /// An expression uses a variable the target does not define.
    #[error("launch line: unknown variable `{name}` (known: {known})")]
    UnknownVariable {
        /// The variable.
        name: String,
        /// The variables available for this target.
        known: String,
    },
    /// Arithmetic overflowed 64-bit integers.
    #[error("launch line: `{expr}` overflows")]
    Overflow {
        /// The offending sub-expression.
        expr: String,
    },
    /// A division or `ceil_div` by zero.
    #[error("launch line: `{expr}` divides by zero")]
    DivisionByZero {
        /// The offending sub-expression.
        expr: String,
    },
    /// A field evaluated outside its allowed range.
    #[error("launch line: {field} = {value} is out of range ({allowed})")]
    OutOfRange {
        /// `block`, `grid.x`, … or `smem`.
        field: String,
        /// The evaluated value.
        value: i64,
        /// The allowed range in words.
        allowed: &'static str,
    },
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/` (truncating)
    Div,
    /// `%`
    Rem,
}

/// A built-in function of two arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// `ceil_div(a, b)` = ⌈a / b⌉ for a ≥ 0, b > 0.
    CeilDiv,
    /// `min(a, b)`
    Min,
    /// `max(a, b)`
    Max,
}

/// An integer expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// An integer literal.
    Lit(i64),
    /// A shape variable or device fact.
    Var(String),
    /// Unary minus.
    Neg(Box<Expr>),
    /// A binary operation.
    Bin(BinOp, Box<Expr>, Box<Expr>),
    /// A function call.
    Call(Func, Box<Expr>, Box<Expr>),
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Lit(v) => write!(f, "{v}"),
            Expr::Var(n) => write!(f, "{n}"),
            Expr::Neg(e) => write!(f, "-({e})"),
            Expr::Bin(op, a, b) => {
                let s = match op {
                    BinOp::Add => "+",
                    BinOp::Sub => "-",
                    BinOp::Mul => "*",
                    BinOp::Div => "/",
                    BinOp::Rem => "%",
                };
                write!(f, "({a} {s} {b})")
            }
            Expr::Call(func, a, b) => {
                let n = match func {
                    Func::CeilDiv => "ceil_div",
                    Func::Min => "min",
                    Func::Max => "max",
                };
                write!(f, "{n}({a}, {b})")
            }
        }
    }
}

impl Expr {
    /// Parses one expression (the whole string must be consumed).
    pub fn parse(text: &str) -> Result<Expr, LaunchError> {
        let tokens = tokenize(text)?;
        let mut p = Parser {
            tokens: &tokens,
            pos: 0,
            depth: 0,
        };
        let e = p.expr()?;
        match p.peek() {
            None => Ok(e),
            Some(t) => Err(LaunchError::Syntax(format!(
                "unexpected `{t}` after a complete expression in `{text}`"
            ))),
        }
    }

    /// Evaluates with checked 64-bit arithmetic.
    pub fn eval(&self, vars: &BTreeMap<String, i64>) -> Result<i64, LaunchError> {
        let overflow = || LaunchError::Overflow {
            expr: self.to_string(),
        };
        let div0 = || LaunchError::DivisionByZero {
            expr: self.to_string(),
        };
        match self {
            Expr::Lit(v) => Ok(*v),
            Expr::Var(name) => {
                vars.get(name)
                    .copied()
                    .ok_or_else(|| LaunchError::UnknownVariable {
                        name: name.clone(),
                        known: vars.keys().cloned().collect::<Vec<_>>().join(", "),
                    })
            }
            Expr::Neg(e) => e.eval(vars)?.checked_neg().ok_or_else(overflow),
            Expr::Bin(op, a, b) => {
                let (a, b) = (a.eval(vars)?, b.eval(vars)?);
                match op {
                    BinOp::Add => a.checked_add(b).ok_or_else(overflow),
                    BinOp::Sub => a.checked_sub(b).ok_or_else(overflow),
                    BinOp::Mul => a.checked_mul(b).ok_or_else(overflow),
                    BinOp::Div if b == 0 => Err(div0()),
                    BinOp::Div => a.checked_div(b).ok_or_else(overflow),
                    BinOp::Rem if b == 0 => Err(div0()),
                    BinOp::Rem => a.checked_rem(b).ok_or_else(overflow),
                }
            }
            Expr::Call(func, a, b) => {
                let (a, b) = (a.eval(vars)?, b.eval(vars)?);
                match func {
                    Func::Min => Ok(a.min(b)),
                    Func::Max => Ok(a.max(b)),
                    Func::CeilDiv if b == 0 => Err(div0()),
                    // Floor-adjusted so negative operands still give the mathematical ceiling.
                    Func::CeilDiv => {
                        let q = a.checked_div(b).ok_or_else(overflow)?;
                        let r = a.checked_rem(b).ok_or_else(overflow)?;
                        if r != 0 && ((r > 0) == (b > 0)) {
                            q.checked_add(1).ok_or_else(overflow)
                        } else {
                            Ok(q)
                        }
                    }
                }
            }
        }
    }

    /// The variables the expression mentions.
    pub fn variables(&self, out: &mut Vec<String>) {
        match self {
            Expr::Lit(_) => {}
            Expr::Var(n) => {
                if !out.contains(n) {
                    out.push(n.clone());
                }
            }
            Expr::Neg(e) => e.variables(out),
            Expr::Bin(_, a, b) | Expr::Call(_, a, b) => {
                a.variables(out);
                b.variables(out);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Num(i64),
    Ident(String),
    Op(char),
    LParen,
    RParen,
    Comma,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Num(v) => write!(f, "{v}"),
            Tok::Ident(s) => write!(f, "{s}"),
            Tok::Op(c) => write!(f, "{c}"),
            Tok::LParen => write!(f, "("),
            Tok::RParen => write!(f, ")"),
            Tok::Comma => write!(f, ","),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Tok>, LaunchError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let lit: String = chars[start..i].iter().collect();
            let v = lit.parse::<i64>().map_err(|_| {
                LaunchError::Syntax(format!(
                    "`{lit}` is not a decimal integer literal that fits in 64 bits"
                ))
            })?;
            out.push(Tok::Num(v));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else {
            out.push(match c {
                '+' | '-' | '*' | '/' | '%' => Tok::Op(c),
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                ',' => Tok::Comma,
                _ => {
                    return Err(LaunchError::Syntax(format!(
                        "unexpected character `{c}` in `{text}` (allowed: integers, names, + - * / % ( ) ,)"
                    )))
                }
            });
            i += 1;
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: &'a [Tok],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, want: Tok, context: &str) -> Result<(), LaunchError> {
        match self.next() {
            Some(t) if t == want => Ok(()),
            Some(t) => Err(LaunchError::Syntax(format!(
                "expected `{want}` {context}, found `{t}`"
            ))),
            None => Err(LaunchError::Syntax(format!(
                "expected `{want}` {context}, found the end"
            ))),
        }
    }

    fn enter(&mut self) -> Result<(), LaunchError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(LaunchError::Syntax(format!(
                "expression nested deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(())
    }

    // expr := term (('+' | '-') term)*
    fn expr(&mut self) -> Result<Expr, LaunchError> {
        self.enter()?;
        let mut lhs = self.term()?;
        while let Some(Tok::Op(c @ ('+' | '-'))) = self.peek() {
            let op = if *c == '+' { BinOp::Add } else { BinOp::Sub };
            self.pos += 1;
            let rhs = self.term()?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1;
        Ok(lhs)
    }

    // term := unary (('*' | '/' | '%') unary)*
    fn term(&mut self) -> Result<Expr, LaunchError> {
        let mut lhs = self.unary()?;
        while let Some(Tok::Op(c @ ('*' | '/' | '%'))) = self.peek() {
            let op = match c {
                '*' => BinOp::Mul,
                '/' => BinOp::Div,
                _ => BinOp::Rem,
            };
            self.pos += 1;
            let rhs = self.unary()?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    // unary := '-' unary | atom
    fn unary(&mut self) -> Result<Expr, LaunchError> {
        if let Some(Tok::Op('-')) = self.peek() {
            self.pos += 1;
            self.enter()?;
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Neg(Box::new(e)));
        }
        self.atom()
    }

    // atom := NUM | IDENT | FUNC '(' expr ',' expr ')' | '(' expr ')'
    fn atom(&mut self) -> Result<Expr, LaunchError> {
        match self.next() {
            Some(Tok::Num(v)) => Ok(Expr::Lit(v)),
            Some(Tok::LParen) => {
                let e = self.expr()?;
                self.expect(Tok::RParen, "to close `(`")?;
                Ok(e)
            }
            Some(Tok::Ident(name)) => {
                if let Some(Tok::LParen) = self.peek() {
                    let func = match name.as_str() {
                        "ceil_div" => Func::CeilDiv,
                        "min" => Func::Min,
                        "max" => Func::Max,
                        _ => {
                            return Err(LaunchError::Syntax(format!(
                                "unknown function `{name}` (allowed: ceil_div, min, max)"
                            )))
                        }
                    };
                    self.pos += 1;
                    let a = self.expr()?;
                    self.expect(
                        Tok::Comma,
                        &format!("between the two arguments of `{name}`"),
                    )?;
                    let b = self.expr()?;
                    self.expect(Tok::RParen, &format!("after the arguments of `{name}`"))?;
                    Ok(Expr::Call(func, Box::new(a), Box::new(b)))
                } else if matches!(name.as_str(), "ceil_div" | "min" | "max") {
                    Err(LaunchError::Syntax(format!(
                        "`{name}` is a function: write `{name}(a, b)`"
                    )))
                } else {
                    Ok(Expr::Var(name))
                }
            }
            Some(t) => Err(LaunchError::Syntax(format!(
                "expected a number, a name or `(`, found `{t}`"
            ))),
            None => Err(LaunchError::Syntax(
                "expected a number, a name or `(`, found the end".into(),
            )),
        }
    }
}

/// A parsed launch line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchLine {
    /// Threads per block (1-D).
    pub block: Expr,
    /// Grid x, and optionally y and z.
    pub grid: Vec<Expr>,
    /// Dynamic shared memory in bytes.
    pub smem: Expr,
}

impl LaunchLine {
    /// Finds the single launch line of a source by the one rule
    /// ([`crate::source::launch_line`]: comments and literals understood,
    /// near misses rejected) and parses it.
    pub fn parse_source(src: &str) -> Result<LaunchLine, LaunchError> {
        let found = crate::source::launch_line(src).map_err(|e| match e {
            LaunchLineError::Missing => LaunchError::Missing,
            LaunchLineError::Multiple { lines } => LaunchError::Duplicate {
                count: lines.len(),
                lines,
            },
            other => LaunchError::Source(other),
        })?;
        Self::parse(&found.spec)
    }

    /// Parses the text after `// kiln:`: `block=<expr> grid=<expr>[,<expr>[,<expr>]] smem=<expr>`.
    pub fn parse(text: &str) -> Result<LaunchLine, LaunchError> {
        if text.len() > MAX_LINE_LEN {
            return Err(LaunchError::Syntax(format!(
                "longer than {MAX_LINE_LEN} characters"
            )));
        }
        // Split at `key=` boundaries so expressions may contain spaces.
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        let mut rest = text.trim();
        let keys = ["block", "grid", "smem"];
        while !rest.is_empty() {
            let key = keys
                .iter()
                .find(|k| {
                    rest.strip_prefix(**k)
                        .is_some_and(|r| r.trim_start().starts_with('='))
                })
                .ok_or_else(|| {
                    LaunchError::Syntax(format!(
                        "expected `block=`, `grid=` or `smem=` at `{}`",
                        rest.chars().take(40).collect::<String>()
                    ))
                })?;
            let after = rest[key.len()..].trim_start();
            let after = &after[1..]; // the '='
            let end = next_key_start(after, &keys).unwrap_or(after.len());
            if fields.insert(key, after[..end].trim()).is_some() {
                return Err(LaunchError::Syntax(format!("`{key}=` given twice")));
            }
            rest = after[end..].trim_start();
        }
        let get = |k: &str| {
            fields.get(k).copied().ok_or_else(|| {
                LaunchError::Syntax(format!(
                    "missing `{k}=` (the line needs block=, grid= and smem=)"
                ))
            })
        };
        let block = Expr::parse(get("block")?)?;
        let grid_text = get("grid")?;
        let parts = split_top_level_commas(grid_text)?;
        if parts.is_empty() || parts.len() > 3 {
            return Err(LaunchError::Syntax(format!(
                "grid needs 1 to 3 comma-separated expressions, found {}",
                parts.len()
            )));
        }
        let grid = parts
            .iter()
            .map(|p| Expr::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let smem = Expr::parse(get("smem")?)?;
        Ok(LaunchLine { block, grid, smem })
    }

    /// Evaluates against shape variables and device facts (`T`, `D`, `SMS`, …).
    pub fn evaluate(&self, vars: &BTreeMap<String, i64>) -> Result<LaunchDims, LaunchError> {
        let block = in_range("block", self.block.eval(vars)?, 1, 1024, "1..=1024")?;
        let mut grid = [1u32; 3];
        for (i, e) in self.grid.iter().enumerate() {
            let name = ["grid.x", "grid.y", "grid.z"][i];
            let (hi, text) = if i == 0 {
                (i32::MAX as i64, "1..=2147483647")
            } else {
                (65_535, "1..=65535")
            };
            grid[i] = in_range(name, e.eval(vars)?, 1, hi, text)?;
        }
        let smem = in_range(
            "smem",
            self.smem.eval(vars)?,
            0,
            u32::MAX as i64,
            "0..=4294967295 bytes",
        )?;
        Ok(LaunchDims {
            grid: (grid[0], grid[1], grid[2]),
            block: (block, 1, 1),
            smem,
        })
    }

    /// Every variable the line mentions.
    pub fn variables(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.block.variables(&mut out);
        for g in &self.grid {
            g.variables(&mut out);
        }
        self.smem.variables(&mut out);
        out
    }
}

fn in_range(
    field: &str,
    value: i64,
    lo: i64,
    hi: i64,
    allowed: &'static str,
) -> Result<u32, LaunchError> {
    if value < lo || value > hi {
        return Err(LaunchError::OutOfRange {
            field: field.to_string(),
            value,
            allowed,
        });
    }
    u32::try_from(value).map_err(|_| LaunchError::OutOfRange {
        field: field.to_string(),
        value,
        allowed,
    })
}

/// Byte offset of the next ` key=` (preceded by whitespace) in `s`.
fn next_key_start(s: &str, keys: &[&str]) -> Option<usize> {
    let bytes = s.as_bytes();
    (1..s.len()).find(|&i| {
        bytes[i - 1].is_ascii_whitespace()
            && s.is_char_boundary(i)
            && keys.iter().any(|k| {
                s[i..]
                    .strip_prefix(k)
                    .is_some_and(|r| r.trim_start().starts_with('='))
            })
    })
}

fn split_top_level_commas(s: &str) -> Result<Vec<&str>, LaunchError> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(LaunchError::Syntax(format!("unbalanced `)` in grid `{s}`")));
        }
    }
    parts.push(&s[start..]);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn eval(text: &str, v: &[(&str, i64)]) -> Result<i64, LaunchError> {
        Expr::parse(text)?.eval(&vars(v))
    }

    #[test]
    fn precedence_and_functions() {
        assert_eq!(eval("1 + 2 * 3", &[]), Ok(7));
        assert_eq!(eval("(1 + 2) * 3", &[]), Ok(9));
        assert_eq!(eval("7 / 2", &[]), Ok(3));
        assert_eq!(eval("-7 / 2", &[]), Ok(-3));
        assert_eq!(eval("7 % 4 - 1", &[]), Ok(2));
        assert_eq!(
            eval("ceil_div(T*D, 256*8)", &[("T", 3), ("D", 2048)]),
            Ok(3)
        );
        assert_eq!(eval("ceil_div(1, 2048)", &[]), Ok(1));
        assert_eq!(eval("ceil_div(0, 7)", &[]), Ok(0));
        assert_eq!(eval("ceil_div(-5, 2)", &[]), Ok(-2));
        assert_eq!(
            eval("min(SMS*4, max(1, T))", &[("SMS", 132), ("T", 9)]),
            Ok(9)
        );
        assert_eq!(eval("--3", &[]), Ok(3));
        assert_eq!(eval("  max ( 1 , 2 ) ", &[]), Ok(2));
    }

    #[test]
    fn malformed_expressions_are_errors() {
        for bad in [
            "",
            "(",
            "(1 + 2",
            "1 + 2)",
            "1 +",
            "* 2",
            "1 2",
            "foo(1, 2)",
            "min(1)",
            "min(1, 2, 3)",
            "1.5",
            "0x10",
            "T ^ 2",
            "99999999999999999999999",
            "ceil_div",
        ] {
            assert!(
                matches!(Expr::parse(bad), Err(LaunchError::Syntax(_))),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn evaluation_errors_are_typed() {
        assert!(matches!(
            eval("1/0", &[]),
            Err(LaunchError::DivisionByZero { .. })
        ));
        assert!(matches!(
            eval("5 % (T - T)", &[("T", 3)]),
            Err(LaunchError::DivisionByZero { .. })
        ));
        assert!(matches!(
            eval("ceil_div(1, 0)", &[]),
            Err(LaunchError::DivisionByZero { .. })
        ));
        assert!(matches!(
            eval("9223372036854775807 + 1", &[]),
            Err(LaunchError::Overflow { .. })
        ));
        assert!(matches!(
            eval("T * T * T * T * T", &[("T", 1 << 20)]),
            Err(LaunchError::Overflow { .. })
        ));
        assert!(matches!(
            eval("-9223372036854775807 - 1 - 1", &[]),
            Err(LaunchError::Overflow { .. })
        ));
        match eval("Q + 1", &[("T", 1)]) {
            Err(LaunchError::UnknownVariable { name, known }) => {
                assert_eq!(name, "Q");
                assert_eq!(known, "T");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowing_the_stack() {
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(matches!(Expr::parse(&deep), Err(LaunchError::Syntax(_))));
        let negs = format!("{}1", "-".repeat(10_000));
        assert!(matches!(Expr::parse(&negs), Err(LaunchError::Syntax(_))));
    }

    #[test]
    fn parses_a_source_line() {
        let src =
            "// header\n// kiln: block=256 grid=ceil_div(T*D, 256*8) smem=0\nextern \"C\" ...";
        let line = LaunchLine::parse_source(src).expect("parses");
        let dims = line
            .evaluate(&vars(&[("T", 4096), ("D", 2048)]))
            .expect("evaluates");
        assert_eq!(dims.block, (256, 1, 1));
        assert_eq!(dims.grid, (4096, 1, 1));
        assert_eq!(dims.smem, 0);
        assert_eq!(line.variables(), vec!["T".to_string(), "D".to_string()]);
    }

    #[test]
    fn grid_with_three_dims_and_spaces() {
        let line =
            LaunchLine::parse(" block = 128  grid = ceil_div(T, 4), min(E, 2) , 1 smem= 4 * E ")
                .expect("parses");
        let dims = line
            .evaluate(&vars(&[("T", 5), ("E", 8)]))
            .expect("evaluates");
        assert_eq!(dims.grid, (2, 2, 1));
        assert_eq!(dims.smem, 32);
    }

    #[test]
    fn missing_duplicate_and_garbage_lines() {
        assert_eq!(
            LaunchLine::parse_source("int x;"),
            Err(LaunchError::Missing)
        );
        let two = "// kiln: block=1 grid=1 smem=0\n// kiln: block=2 grid=1 smem=0\n";
        assert!(matches!(
            LaunchLine::parse_source(two),
            Err(LaunchError::Duplicate { count: 2, .. })
        ));
        for bad in [
            "",
            "block=1 grid=1",
            "block=1 grid=1 smem=0 junk",
            "block=1 grid=1 smem=0 smem=1",
            "block=1 grid=1,2,3,4 smem=0",
            "block=1 grid= smem=0",
            "block=1 grid=(1,2 smem=0",
            "block=1 grid=1) smem=0",
            "threads=1 grid=1 smem=0",
            "block=1 grid=1 smem=0;",
        ] {
            assert!(
                LaunchLine::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn parse_source_follows_the_one_rule() {
        // The worker parses exactly the launch text the shared rule finds.
        for (src, want) in crate::source::LAUNCH_LINE_CASES {
            let got = LaunchLine::parse_source(src).ok();
            let want = want.map(|w| LaunchLine::parse(w).expect("table specs parse"));
            assert_eq!(got, want, "{src:?}");
        }
        // A string literal line that starts with the marker is not a launch line.
        let src = "const char* r = R\"(\n// kiln: block=1 grid=1 smem=0\n)\";";
        assert_eq!(LaunchLine::parse_source(src), Err(LaunchError::Missing));
        assert!(matches!(
            LaunchLine::parse_source("// KILN: block=1 grid=1 smem=0"),
            Err(LaunchError::Source(LaunchLineError::Misspelled { .. }))
        ));
    }

    #[test]
    fn ranges_are_enforced() {
        let v = vars(&[("T", 0)]);
        let check = |text: &str| LaunchLine::parse(text).expect("parses").evaluate(&v);
        assert!(matches!(
            check("block=0 grid=1 smem=0"),
            Err(LaunchError::OutOfRange { .. })
        ));
        assert!(matches!(
            check("block=1025 grid=1 smem=0"),
            Err(LaunchError::OutOfRange { .. })
        ));
        assert!(matches!(
            check("block=32 grid=T smem=0"),
            Err(LaunchError::OutOfRange { .. })
        ));
        assert!(matches!(
            check("block=32 grid=1,65536 smem=0"),
            Err(LaunchError::OutOfRange { .. })
        ));
        assert!(matches!(
            check("block=32 grid=1 smem=-1"),
            Err(LaunchError::OutOfRange { .. })
        ));
        assert!(matches!(
            check("block=32 grid=4294967296 smem=0"),
            Err(LaunchError::OutOfRange { .. })
        ));
        assert!(check("block=1024 grid=2147483647,65535,65535 smem=0").is_ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix and some mutations of real lines.
        let seeds = [
            "block=256 grid=ceil_div(T*D, 256*8) smem=0",
            "block=128 grid=ceil_div(T, 4*max(1, 256/D)) smem=0",
            "block=4*F grid=T,2,3 smem=min(SMS, 9)%2",
        ];
        let v = vars(&[("T", 7), ("D", 64), ("F", 64), ("SMS", 132)]);
        let junk = ['(', ')', ',', '=', '-', '/', '%', 'é', '\0', ' ', '9'];
        for s in seeds {
            for end in 0..=s.len() {
                if let Ok(l) = LaunchLine::parse(&s[..end]) {
                    let _ = l.evaluate(&v);
                }
                for (k, j) in junk.iter().enumerate() {
                    let mut m = s[..end].to_string();
                    m.push(*j);
                    m.push_str(&s[end..]);
                    if let Ok(l) = LaunchLine::parse(&m) {
                        let _ = l.evaluate(&v);
                    }
                    let _ = k;
                }
            }
        }
    }
}
