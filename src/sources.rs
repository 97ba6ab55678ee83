//! The real build context: a folder on disk, read for planning through the
//! [`Context`] seam. It looks at paths without following symlinks, lists
//! folders in bytewise order, and hides the build's own output (and what an
//! interrupted build left beside it) so that a build never packs itself.
//! Building later opens each file beneath the context with
//! [`crate::fsx::ContextDir`] and checks it is the file planned.

use crate::plan::sources::{Context, Kind, Stamp, Stat};
use crate::plan::PlanError;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A build context folder on disk.
#[derive(Debug)]
pub struct DiskContext {
    root: PathBuf,
    /// Folders never listed (canonical): the output layout.
    skip: Vec<PathBuf>,
}

impl DiskContext {
    /// Opens the context folder (canonicalized); `skip` names folders never
    /// put in a layer even when a glob covers them.
    pub fn open(path: &Path, skip: &[PathBuf]) -> Result<Self, PlanError> {
        let root = std::fs::canonicalize(path).map_err(|source| PlanError::Context {
            path: path.to_path_buf(),
            source,
        })?;
        if !root.is_dir() {
            return Err(PlanError::Context {
                path: path.to_path_buf(),
                source: io::Error::other("not a folder"),
            });
        }
        Ok(DiskContext {
            root,
            skip: skip.iter().map(|p| canonical_prefix(p)).collect(),
        })
    }
}

impl Context for DiskContext {
    fn root(&self) -> &Path {
        &self.root
    }

    fn stat(&self, rel: &Path) -> io::Result<Option<Stat>> {
        let md = match std::fs::symlink_metadata(self.root.join(rel)) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let ft = md.file_type();
        let kind = if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else {
            Kind::Other(crate::fsx::kind_name(ft))
        };
        Ok(Some(Stat {
            kind,
            size: md.len(),
            executable: md.permissions().mode() & 0o111 != 0,
            id: (md.dev(), md.ino()),
            stamp: Stamp::of(&md),
        }))
    }

    fn list(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        let dir = self.root.join(rel);
        let mut names = Vec::new();
        // One level, sorted by name (bytewise), never following a symlink.
        let walk = walkdir::WalkDir::new(&dir)
            .min_depth(1)
            .max_depth(1)
            .follow_links(false)
            .sort_by_file_name();
        for item in walk {
            let item = item.map_err(|e| {
                e.into_io_error()
                    .unwrap_or_else(|| io::Error::other("a filesystem loop"))
            })?;
            if !is_skipped(item.path(), &self.skip) {
                names.push(item.file_name().to_os_string());
            }
        }
        Ok(names)
    }

    fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        std::fs::read_link(self.root.join(rel))
    }
}

/// Whether `path` is a skipped folder, is below one, or is a staging or
/// temporary folder of one (`.<name>.imgc-…` beside it): a build never
/// packs its output layout, nor what an interrupted build left beside it.
fn is_skipped(path: &Path, skip: &[PathBuf]) -> bool {
    skip.iter().any(|s| {
        if path.starts_with(s) {
            return true;
        }
        let (Some(name), Some(parent)) = (s.file_name(), s.parent()) else {
            return false;
        };
        let litter = format!(".{}.imgc-", name.to_string_lossy());
        path.strip_prefix(parent)
            .ok()
            .and_then(|rest| rest.components().next())
            .is_some_and(|first| {
                first
                    .as_os_str()
                    .to_string_lossy()
                    .starts_with(litter.as_str())
            })
    })
}

/// The canonical form of a path that may not exist yet: its longest existing
/// ancestor canonicalized, with the rest appended.
fn canonical_prefix(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
    let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
    out.extend(rest.iter().rev());
    out
}

impl Stamp {
    /// The stamp of `md` (on the disk side: the planner never sees a
    /// filesystem).
    pub fn of(md: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Stamp {
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            ctime_ns: ns(md.ctime(), md.ctime_nsec()),
            mode: md.mode(),
        }
    }
}
