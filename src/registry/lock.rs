//! The lock file, `image.lock` beside the spec (`<stem>.lock` for a spec not
//! named `image.toml`): each registry base reference pinned to the digest of
//! its index (or manifest) and each platform's manifest digest. TOML, sorted,
//! written atomically; the same bases always give the same bytes.

use crate::oci::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The lock file format version this imgc writes and reads.
pub const LOCK_VERSION: u32 = 1;

/// Errors reading or writing a lock file.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The file could not be read or written.
    #[error("failed to {action} lock file `{path}`")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("lock file `{path}` is invalid at line {line}, column {column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A version this imgc does not know.
    #[error("lock file `{path}` has version {version}; this imgc reads version {LOCK_VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
}

/// One base, pinned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedBase {
    /// The reference as written in the spec.
    pub reference: String,
    /// The digest of what it resolved to (an index or a manifest).
    pub digest: Digest,
    /// That document's media type.
    pub media_type: String,
    /// Each platform's manifest digest.
    pub platforms: BTreeMap<String, Digest>,
}

/// The lock file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    /// The format version.
    pub version: u32,
    /// The bases, sorted by reference.
    #[serde(default, rename = "base")]
    pub bases: Vec<LockedBase>,
}

impl LockFile {
    /// A lock file holding these bases (sorted).
    pub fn new(mut bases: Vec<LockedBase>) -> LockFile {
        bases.sort_by(|a, b| a.reference.cmp(&b.reference));
        bases.dedup_by(|a, b| a.reference == b.reference);
        LockFile {
            version: LOCK_VERSION,
            bases,
        }
    }

    /// Where the lock file of a spec lives.
    pub fn path_for(spec: &Path) -> PathBuf {
        let stem = spec
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        spec.with_file_name(format!("{stem}.lock"))
    }

    /// Reads a lock file (at most 4 MiB); `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<LockFile>, LockError> {
        let text = match read_bounded(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LockError::Io {
                    action: "read",
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let lock: LockFile = toml::from_str(&text).map_err(|e| {
            let at = crate::spec::locate_in(path, &text, e.span());
            LockError::Parse {
                path: path.to_path_buf(),
                line: at.line,
                column: at.column,
                message: e.message().to_string(),
            }
        })?;
        if lock.version != LOCK_VERSION {
            return Err(LockError::Version {
                path: path.to_path_buf(),
                version: lock.version,
            });
        }
        Ok(Some(lock))
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# Written by `imgc lock`: each base pinned to a digest. Do not edit by hand.\n{body}"
        )
    }

    /// Writes the lock file atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let io = |action: &'static str| {
            let path = path.to_path_buf();
            move |source| LockError::Io {
                action,
                path,
                source,
            }
        };
        let tmp = path.with_extension(format!("lock.tmp.{}", std::process::id()));
        std::fs::write(&tmp, self.to_text()).map_err(io("write"))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io("write")(e)
        })
    }
}

/// Reads a text file of at most 4 MiB.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    let bytes = crate::fsx::read_bounded(
        path,
        crate::oci::MAX_DOCUMENT_SIZE,
        crate::fsx::Links::Follow,
    )?;
    String::from_utf8(bytes).map_err(|_| std::io::Error::other("the file is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_positions() {
        let dir = tempfile::tempdir().unwrap();
        let path = LockFile::path_for(&dir.path().join("image.toml"));
        assert!(path.ends_with("image.lock"));
        assert_eq!(LockFile::read(&path).unwrap(), None);
        let d = crate::oci::sha256_digest(b"x");
        let lock = LockFile::new(vec![LockedBase {
            reference: "127.0.0.1:5000/base:1.0".into(),
            digest: d.clone(),
            media_type: crate::oci::MEDIA_TYPE_INDEX.into(),
            platforms: BTreeMap::from([("linux/amd64".to_string(), d.clone())]),
        }]);
        lock.write(&path).unwrap();
        assert_eq!(LockFile::read(&path).unwrap(), Some(lock.clone()));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("digest = ", "digets = ")).unwrap();
        let err = LockFile::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("image.lock") && err.contains("line 6, column 1"),
            "{err}"
        );
    }
}
