//! Renders a failure for the terminal: the message, its causes, the spec
//! location with the source line underlined, and a hint.

use super::Failure;
use std::error::Error as _;
use std::fmt::Write;

/// The full text printed on stderr for a failure.
pub fn render(failure: &Failure) -> String {
    let mut out = String::new();
    match failure {
        Failure::Usage(msg) => {
            let _ = writeln!(out, "error: {msg}");
        }
        Failure::Cli(msg, cause) => {
            let _ = writeln!(out, "error: {msg}");
            if let Some(c) = cause {
                let _ = writeln!(out, "  caused by: {c}");
            }
        }
        Failure::Lib(err) => {
            let _ = writeln!(out, "error: {err}");
            let mut source = err.source();
            // `#[error(transparent)]` wrappers repeat their inner message: skip it.
            if let Some(s) = source {
                if s.to_string() == err.to_string() {
                    source = s.source();
                }
            }
            while let Some(s) = source {
                let _ = writeln!(out, "  caused by: {s}");
                source = s.source();
            }
            if let Some(loc) = err.location() {
                let num = loc.line.to_string();
                let pad = " ".repeat(num.len());
                let _ = writeln!(out, "{pad}--> {loc}");
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{num} | {}", loc.line_text);
                let _ = writeln!(
                    out,
                    "{pad} | {}{}",
                    " ".repeat(loc.column.saturating_sub(1)),
                    "^".repeat(
                        loc.width
                            .min(loc.line_text.chars().count().saturating_sub(loc.column - 1))
                            .max(1)
                    )
                );
            }
            if let Some(help) = err.help() {
                let _ = writeln!(out, "  = help: {help}");
            }
        }
    }
    out
}
