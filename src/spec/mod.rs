//! The raw spec: `image.toml` parsed into typed values (toml + serde), with
//! the byte span of every value that a later error may need to point at.
//!
//! Owns syntax: unknown keys, value shapes (platform strings, modes, owners,
//! ports, enums) and error locations (file, line, column, source line). It
//! must not touch the filesystem beyond reading the spec file itself, and
//! must not render templates or decide semantics: that is `plan`'s job.

mod types;

pub use types::*;

use std::ops::Range;
use std::path::{Path, PathBuf};

/// A place in a spec file, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The spec file, as the user named it.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The text of that line (no newline) as shown: a long line is cut to a
    /// window around the column, marked with `…` where cut.
    pub line_text: String,
    /// 1-based column of the place within `line_text`.
    pub text_column: usize,
    /// How many characters to underline (at least 1).
    pub width: usize,
}

/// Longest line shown in an error; a longer one is cut around the column.
pub const MAX_SHOWN_LINE: usize = 160;

/// Largest spec file read.
pub const MAX_SPEC_SIZE: u64 = 16 * 1024 * 1024;

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// Errors reading or parsing a spec file.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("failed to read spec file `{path}`")]
    Read {
        /// The spec file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than a spec may be.
    #[error("spec file `{path}` is larger than {MAX_SPEC_SIZE} bytes")]
    TooLarge {
        /// The spec file.
        path: PathBuf,
    },
    /// The file is not UTF-8.
    #[error("spec file `{path}` is not valid UTF-8")]
    NotUtf8 {
        /// The spec file.
        path: PathBuf,
    },
    /// A key the spec format does not know.
    #[error("unknown key `{key}`")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// The closest known key, if any is close.
        suggestion: Option<String>,
        /// The keys allowed there.
        expected: Vec<String>,
        /// Where it is.
        location: Option<Box<Location>>,
    },
    /// TOML syntax or a value of the wrong shape.
    #[error("{message}")]
    Invalid {
        /// The parser's sentence.
        message: String,
        /// Where it is.
        location: Option<Box<Location>>,
    },
}

impl SpecError {
    /// Where in the spec file the error is, if known.
    pub fn location(&self) -> Option<&Location> {
        match self {
            SpecError::UnknownKey { location, .. } | SpecError::Invalid { location, .. } => {
                location.as_deref()
            }
            _ => None,
        }
    }

    /// A hint for the user, if there is one.
    pub fn help(&self) -> Option<String> {
        match self {
            SpecError::UnknownKey {
                suggestion: Some(s),
                ..
            } => Some(format!("did you mean `{s}`?")),
            SpecError::UnknownKey { key, .. } if home_table(key).is_some() => Some(format!(
                "`{key}` is a key of {}",
                home_table(key).unwrap_or_default()
            )),
            SpecError::UnknownKey { expected, .. } if !expected.is_empty() => Some(format!(
                "the keys allowed here are: {}",
                expected
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => None,
        }
    }
}

/// The table a well-known key belongs in, for "wrong table" hints.
fn home_table(key: &str) -> Option<&'static str> {
    match key {
        "entrypoint" | "cmd" | "env" | "user" | "workdir" | "ports" | "volumes" | "labels"
        | "stop_signal" => Some("[config]"),
        "name" | "tags" | "base" | "platforms" | "compression" | "media_types" | "epoch" => {
            Some("[image]")
        }
        "files" | "dirs" | "symlinks" | "defaults" => Some("[[layers]]"),
        _ => None,
    }
}

/// A parsed spec together with its source text, so that later stages can
/// turn spans into locations.
#[derive(Clone, Debug)]
pub struct SpecFile {
    /// The spec file's path, as given.
    pub path: PathBuf,
    /// The file's text.
    pub source: String,
    /// The parsed spec.
    pub spec: Spec,
    /// Where each line starts (byte offsets), for locating spans fast.
    line_starts: Vec<usize>,
}

impl SpecFile {
    /// Reads and parses a spec file.
    pub fn load(path: &Path) -> Result<SpecFile, SpecError> {
        let bytes = crate::fsx::read_bounded(path, MAX_SPEC_SIZE, crate::fsx::Links::Follow)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::FileTooLarge => SpecError::TooLarge {
                    path: path.to_path_buf(),
                },
                _ => SpecError::Read {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        let source = String::from_utf8(bytes).map_err(|_| SpecError::NotUtf8 {
            path: path.to_path_buf(),
        })?;
        Self::parse(path, source)
    }

    /// Parses spec text; `path` is used only in error locations.
    pub fn parse(path: &Path, source: String) -> Result<SpecFile, SpecError> {
        let line_starts = line_starts(&source);
        match toml::from_str::<Spec>(&source) {
            Ok(spec) => Ok(SpecFile {
                path: path.to_path_buf(),
                source,
                spec,
                line_starts,
            }),
            Err(err) => Err(convert_error(path, &source, &line_starts, &err)),
        }
    }

    /// The location of a byte span of the source.
    pub fn locate(&self, span: &Range<usize>) -> Location {
        locate(&self.path, &self.source, &self.line_starts, span)
    }
}

/// The location of a byte span in any TOML text imgc reads (the spec, the
/// lock file, the config file): the one locator, so every file's errors
/// count lines and columns (in characters) alike. `None` spans are 1:1.
pub fn locate_in(path: &Path, source: &str, span: Option<Range<usize>>) -> Location {
    locate(path, source, &line_starts(source), &span.unwrap_or(0..0))
}

fn line_starts(source: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(source.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// Locates a span using the line index: O(log lines + line length shown).
fn locate(path: &Path, source: &str, starts: &[usize], span: &Range<usize>) -> Location {
    let start = floor_char_boundary(source, span.start.min(source.len()));
    let line_idx = starts.partition_point(|&s| s <= start).saturating_sub(1);
    let line_start = starts.get(line_idx).copied().unwrap_or(0);
    let line_end = starts
        .get(line_idx + 1)
        .map_or(source.len(), |&next| next - 1);
    let end = floor_char_boundary(source, span.end.clamp(start, line_end));
    let before = &source[line_start..start];
    let column = before.chars().count() + 1;
    let width = source[start..end]
        .chars()
        .take(MAX_SHOWN_LINE)
        .count()
        .max(1);
    // A window of the line around the place, at most MAX_SHOWN_LINE characters.
    let lead: String = before.chars().rev().take(MAX_SHOWN_LINE / 4).collect();
    let lead: String = lead.chars().rev().collect();
    let cut_before = lead.len() < before.len();
    let rest = source[start..line_end].trim_end_matches('\r');
    let shown_rest: String = rest
        .chars()
        .take(MAX_SHOWN_LINE - lead.chars().count())
        .collect();
    let cut_after = shown_rest.len() < rest.len();
    let mut line_text = String::new();
    if cut_before {
        line_text.push('…');
    }
    line_text.push_str(&lead);
    line_text.push_str(&shown_rest);
    if cut_after {
        line_text.push('…');
    }
    Location {
        path: path.to_path_buf(),
        line: line_idx + 1,
        column,
        text_column: lead.chars().count() + 1 + usize::from(cut_before),
        line_text,
        width,
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn convert_error(path: &Path, source: &str, starts: &[usize], err: &toml::de::Error) -> SpecError {
    let location = err
        .span()
        .map(|span| Box::new(locate(path, source, starts, &span)));
    let message = err.message().trim().to_string();
    if let Some((key, expected)) = parse_unknown_field(&message) {
        let suggestion = expected
            .iter()
            .map(|k| (strsim::jaro_winkler(&key, k), k))
            .filter(|(score, _)| *score > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, k)| k.clone());
        return SpecError::UnknownKey {
            key,
            suggestion,
            expected,
            location,
        };
    }
    let message = match message.split_once('\n') {
        // toml puts details on following lines; keep them on one line.
        Some((first, rest)) => format!("{first} ({})", rest.trim().replace('\n', "; ")),
        None => message,
    };
    SpecError::Invalid { message, location }
}

/// Parses serde's "unknown field `x`, expected one of `a`, `b`" (or
/// "expected `a`", or "there are no fields").
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((key.to_string(), expected))
}

/// The JSON Schema of the spec format, as pretty JSON with a final newline.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Spec);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<SpecFile, SpecError> {
        SpecFile::parse(Path::new("image.toml"), src.to_string())
    }

    #[test]
    fn unknown_key_has_location_and_suggestion() {
        let err =
            parse("[image]\nplatforms = [\"linux/amd64\"]\ncompresion = \"zstd\"\n").unwrap_err();
        let loc = err.location().expect("location");
        assert_eq!((loc.line, loc.column), (3, 1));
        assert_eq!(err.to_string(), "unknown key `compresion`");
        assert_eq!(err.help().as_deref(), Some("did you mean `compression`?"));
    }

    #[test]
    fn invalid_values_name_the_value_and_place() {
        let err = parse("[image]\nplatforms = [\"linux\"]\n").unwrap_err();
        assert!(
            err.to_string().contains("`linux` is not a valid platform"),
            "{err}"
        );
        assert_eq!(err.location().unwrap().line, 2);

        let err = parse("[image]\n[[layers]]\nname = \"a\"\nfiles = [{ content = \"x\", dst = \"/x\", mode = \"0799\" }]\n").unwrap_err();
        assert!(err.to_string().contains("`0799`"), "{err}");
        assert_eq!(err.location().unwrap().line, 4);

        let err = parse(
            "[image]\n[[layers]]\nname = \"a\"\ndirs = [{ path = \"/x\", owner = \"root\" }]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("`root`"), "{err}");
    }

    #[test]
    fn syntax_error_has_location() {
        let err = parse("[image\nname = 1\n").unwrap_err();
        let loc = err.location().expect("location");
        assert_eq!(loc.line, 1);
        assert_eq!(loc.line_text, "[image");
    }

    #[test]
    fn full_example_parses() {
        let src = include_str!("../../examples/multi-arch/image.toml");
        let f = parse(src).unwrap();
        assert_eq!(f.spec.layers.len(), 2);
        let arm = f.spec.platform.keys().next().unwrap();
        assert_eq!(arm.0.to_string(), "linux/arm64");
        let loc = f.locate(&f.spec.layers[1].value.files[0].span);
        assert!(loc.line_text.contains("server"), "{loc:?}");
    }
}
