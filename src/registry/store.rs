//! The local content-addressed store of pulled blobs (manifests, configs,
//! layers). It is laid out as an OCI image layout (`oci-layout`,
//! `blobs/sha256/<hex>`), so a base read from it is read exactly like an
//! `oci:` base. Blobs arrive through a temporary file in `tmp/` that is
//! verified against its digest before it is renamed into place; nothing
//! unverified is ever visible under `blobs/`.
//!
//! Every process using the store holds a shared lock on its `lock` file;
//! `imgc cache prune` and `clean` need it exclusively, so they never pull a
//! blob from under a build. A partial download is locked by its writer
//! while it lives (made under a `.new` name, locked, then renamed to
//! `.partial`), so the partials of a process that died are told apart and
//! swept when the store is opened. A blob's modification time is set when
//! a build uses it: `prune` removes what no build used for a while.

use super::RegistryError;
use crate::layout::staging;
use crate::oci::Digest;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The store folder, held open with a shared lock.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    _lock: File,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError {
    let path = path.to_path_buf();
    move |source| RegistryError::Io {
        action,
        path,
        source,
    }
}

/// How much the store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Blobs.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// `.new` partial files older than this are litter.
const NEW_GRACE: Duration = Duration::from_secs(60);

/// Writes `bytes` to `dest` through a temporary file beside it.
fn write_new(dest: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let tmp = dest.with_extension(format!("{}.new", std::process::id()));
    fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
    fs::rename(&tmp, dest).map_err(io("write", dest))
}

impl Store {
    /// Opens (creating if needed) a store folder, with a shared lock, and
    /// sweeps the partial downloads of processes that are gone.
    pub fn open(root: &Path) -> Result<Store, RegistryError> {
        let lock = Self::open_locked(root, false)?;
        let store = Store {
            root: root.to_path_buf(),
            _lock: lock,
        };
        store.sweep();
        Ok(store)
    }

    /// Opens the store with its lock taken exclusively, for `prune` and
    /// `clean`; an error when another imgc is using it.
    pub fn open_exclusive(root: &Path) -> Result<Store, RegistryError> {
        let lock = Self::open_locked(root, true)?;
        Ok(Store {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    fn open_locked(root: &Path, exclusive: bool) -> Result<File, RegistryError> {
        for dir in [crate::oci::blobs_dir(root), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(io("create the store folder", &dir))?;
        }
        let marker = root.join("oci-layout");
        if !marker.exists() {
            write_new(&marker, crate::layout::OCI_LAYOUT)?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            write_new(&index, br#"{"schemaVersion":2,"manifests":[]}"#)?;
        }
        let path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io("open", &path))?;
        if !exclusive {
            lock.lock_shared().map_err(io("lock", &path))?;
        } else if lock.try_lock().is_err() {
            return Err(RegistryError::StoreBusy {
                store: root.to_path_buf(),
            });
        }
        Ok(lock)
    }

    /// Removes partial downloads whose writer is gone.
    fn sweep(&self) {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = if name.ends_with(".partial") {
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&path)
                    .is_ok_and(|f| f.try_lock().is_ok())
            } else {
                fs::symlink_metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > NEW_GRACE)
            };
            if stale {
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// The store folder (an OCI layout).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        crate::oci::blob_path(&self.root, digest)
    }

    /// Whether the store holds a blob of this size (a regular file; its
    /// bytes are verified where they are used). Marks it as used.
    pub fn has(&self, digest: &Digest, size: u64) -> bool {
        let path = self.path(digest);
        let held = fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == size);
        if held {
            let _ = File::options()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .and_then(|f| f.set_modified(SystemTime::now()));
        }
        held
    }

    /// Removes a blob found to be corrupt, so it is fetched again.
    pub fn discard(&self, digest: &Digest) {
        let _ = fs::remove_file(self.path(digest));
    }

    /// A new temporary file inside the store, locked by this process.
    pub fn temp_file(&self) -> Result<(File, TempPath), RegistryError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("{}-{n}", std::process::id());
        let fresh = self.root.join("tmp").join(format!("{base}.new"));
        let path = self.root.join("tmp").join(format!("{base}.partial"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&fresh)
            .map_err(io("create", &fresh))?;
        let locked = file.lock().and_then(|()| fs::rename(&fresh, &path));
        if let Err(e) = locked {
            let _ = fs::remove_file(&fresh);
            return Err(io("create", &path)(e));
        }
        staging::register(&path);
        Ok((file, TempPath(path)))
    }

    /// Moves a verified temporary file into place.
    pub fn commit(&self, tmp: TempPath, digest: &Digest) -> Result<PathBuf, RegistryError> {
        let dest = self.path(digest);
        fs::rename(&tmp.0, &dest).map_err(io("move into the store", &dest))?;
        staging::unregister(&tmp.0);
        std::mem::forget(tmp);
        Ok(dest)
    }

    /// Stores bytes already verified against `digest`.
    pub fn put_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<PathBuf, RegistryError> {
        if self.has(digest, bytes.len() as u64) {
            return Ok(self.path(digest));
        }
        let (mut file, tmp) = self.temp_file()?;
        file.write_all(bytes).map_err(io("write", &tmp.0))?;
        file.sync_all().map_err(io("write", &tmp.0))?;
        self.commit(tmp, digest)
    }

    /// The blobs as `(path, size, last used)`.
    fn blobs(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let Ok(entries) = fs::read_dir(crate::oci::blobs_dir(&self.root)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok().filter(|m| m.is_file())?;
                Some((e.path(), m.len(), m.modified().ok()?))
            })
            .collect()
    }

    /// How much the store holds.
    pub fn usage(&self) -> Usage {
        let blobs = self.blobs();
        Usage {
            blobs: blobs.len(),
            bytes: blobs.iter().map(|b| b.1).sum(),
        }
    }

    /// Removes the blobs no build used for `unused_for` (all of them for
    /// zero); returns what was removed. Needs the exclusive lock.
    pub fn prune(&self, unused_for: Duration) -> Usage {
        let now = SystemTime::now();
        let mut removed = Usage::default();
        for (path, size, used) in self.blobs() {
            let old = now.duration_since(used).unwrap_or_default() >= unused_for;
            if old && fs::remove_file(&path).is_ok() {
                removed.blobs += 1;
                removed.bytes += size;
            }
        }
        removed
    }
}

/// A temporary file that is deleted unless committed.
#[derive(Debug)]
pub struct TempPath(PathBuf);

impl TempPath {
    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
        staging::unregister(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_vanish_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (_, tmp) = store.temp_file().unwrap();
        let p = tmp.path().to_path_buf();
        assert!(p.exists());
        drop(tmp);
        assert!(!p.exists());
        let d = crate::oci::sha256_digest(b"x");
        store.put_bytes(&d, b"x").unwrap();
        assert!(store.has(&d, 1));
        assert!(!store.has(&d, 2));
        assert!(dir.path().join("oci-layout").is_file());
    }

    #[test]
    fn partials_of_dead_writers_are_swept_and_prune_needs_the_store_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (_f, live) = store.temp_file().unwrap();
        let dead = dir.path().join("tmp/1-1.partial");
        fs::write(&dead, b"half a blob").unwrap();
        let again = Store::open(dir.path()).unwrap();
        assert!(!dead.exists() && live.path().exists());
        assert!(matches!(
            Store::open_exclusive(dir.path()),
            Err(RegistryError::StoreBusy { .. })
        ));
        drop((store, again));
        let d = crate::oci::sha256_digest(b"x");
        let only = Store::open_exclusive(dir.path()).unwrap();
        only.put_bytes(&d, b"x").unwrap();
        assert_eq!(only.usage(), Usage { blobs: 1, bytes: 1 });
        assert_eq!(only.prune(Duration::from_secs(3600)), Usage::default());
        assert_eq!(only.prune(Duration::ZERO), Usage { blobs: 1, bytes: 1 });
    }
}
