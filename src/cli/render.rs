//! Renders a failure for the terminal: the message, its causes, the spec
//! location with the source line underlined, and a hint. Every piece of
//! text that may come from outside (the spec, the context, a registry) is
//! made safe for a terminal here: control characters are escaped and a
//! huge message is cut, so an error always fits on a screen.

use super::Failure;
use std::fmt::Write;

/// The full text printed on stderr for a failure.
pub fn render(failure: &Failure) -> String {
    let mut out = String::new();
    match failure {
        Failure::Usage(msg) => {
            let _ = writeln!(out, "error: {}", clean(msg));
        }
        Failure::Cli(msg, cause) => {
            let _ = writeln!(out, "error: {}", clean(msg));
            if let Some(c) = cause {
                let _ = writeln!(out, "  caused by: {}", clean(&c.to_string()));
            }
        }
        Failure::Lib(err) => {
            chain(&mut out, err.as_ref());
            if let Some(loc) = err.location() {
                let num = loc.line.to_string();
                let pad = " ".repeat(num.len());
                let _ = writeln!(out, "{pad}--> {}", clean(&loc.to_string()));
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{num} | {}", clean_aligned(&loc.line_text));
                let _ = writeln!(
                    out,
                    "{pad} | {}{}",
                    " ".repeat(loc.text_column.saturating_sub(1)),
                    "^".repeat(
                        loc.width
                            .min(
                                loc.line_text
                                    .chars()
                                    .count()
                                    .saturating_sub(loc.text_column - 1)
                            )
                            .max(1)
                    )
                );
            }
            if let Some(help) = err.help() {
                let _ = writeln!(out, "  = help: {}", clean(&help));
            }
        }
    }
    out
}

/// An error and its causes, one per line.
fn chain(out: &mut String, err: &(dyn std::error::Error + 'static)) {
    let _ = writeln!(out, "error: {}", clean(&err.to_string()));
    let mut source = err.source();
    // `#[error(transparent)]` wrappers repeat their inner message: skip it.
    if let Some(s) = source {
        if s.to_string() == err.to_string() {
            source = s.source();
        }
    }
    while let Some(s) = source {
        let _ = writeln!(out, "  caused by: {}", clean(&s.to_string()));
        source = s.source();
    }
}

/// Longest message shown (in characters); the rest is cut.
const MAX_MESSAGE: usize = 2000;

/// Bidirectional text controls, which reorder what a terminal shows.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` made safe for a terminal: control characters escaped (`\n`, `\t`,
/// `\r`, else `\u{..}`), bidirectional controls too, and cut after
/// [`MAX_MESSAGE`] characters.
pub(crate) fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_MESSAGE + 64));
    for (shown, c) in s.chars().enumerate() {
        if shown == MAX_MESSAGE {
            let rest = s.chars().count() - shown;
            let _ = write!(out, "… ({rest} more characters)");
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || is_bidi_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// `s` with each control character replaced by one visible character (a
/// tab by a space, others by their Unicode control picture or `�`), so
/// that columns stay aligned under a source line.
pub(crate) fn clean_aligned(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' => ' ',
            '\u{0}'..='\u{1f}' => char::from_u32(0x2400 + c as u32).unwrap_or('�'),
            '\u{7f}' => '\u{2421}',
            c if c.is_control() || is_bidi_control(c) => '�',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal_raw() {
        assert_eq!(clean("a\x1b[31mb\nc\u{202e}"), "a\\u{1b}[31mb\\nc\\u{202e}");
        assert_eq!(clean_aligned("a\tb\x1bc"), "a b\u{241b}c");
        let long = "x".repeat(MAX_MESSAGE + 10);
        assert!(clean(&long).ends_with("… (10 more characters)"));
    }
}
