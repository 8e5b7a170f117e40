//! `kiln`: find faster GPU kernels for LLM inference and put them to work.
//!
//! A thin shell: argument parsing and printing. The logic lives in the
//! library crates (`kiln-cuda`, `kiln-kernels`, `kiln-eval`, `kiln-search`, `kiln-propose`, `kiln-candle`).

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    restore_sigpipe();
    let args = cli::Cli::parse();
    init_logging(args.verbose);
    match commands::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", user_message(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined with `: `, leaving out a cause whose text
/// the message already holds (many typed errors print their source in their own
/// message, and `{:#}` would print it again).
pub(crate) fn user_message(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Rust ignores SIGPIPE, so `kiln … | head` would panic on the closed pipe;
/// the default action ends the process quietly, as other command-line tools do.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; setting a
    // signal's disposition to SIG_DFL has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .init();
}

#[cfg(test)]
mod tests {
    use super::user_message;
    use std::fmt;

    #[derive(Debug)]
    struct Inner;
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("inner failure")
        }
    }
    impl std::error::Error for Inner {}

    /// An error whose message may repeat its source's.
    #[derive(Debug)]
    struct Outer {
        says_source: bool,
    }
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.says_source {
                true => write!(f, "outer: {Inner}"),
                false => f.write_str("outer"),
            }
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&Inner)
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        for says_source in [true, false] {
            let e = anyhow::Error::new(Outer { says_source }).context("doing a thing");
            assert_eq!(user_message(&e), "doing a thing: outer: inner failure");
        }
    }
}
