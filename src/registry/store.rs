//! The local content-addressed store of pulled blobs (manifests, configs,
//! layers). It is laid out as an OCI image layout (`oci-layout`,
//! `blobs/sha256/<hex>`), so a base read from it is read exactly like an
//! `oci:` base. Blobs arrive through a temporary file in `tmp/` that is
//! verified against its digest before it is renamed into place; nothing
//! unverified is ever visible under `blobs/`.

use super::RegistryError;
use crate::oci::Digest;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The store folder.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError {
    let path = path.to_path_buf();
    move |source| RegistryError::Io {
        action,
        path,
        source,
    }
}

impl Store {
    /// Opens (creating if needed) a store folder.
    pub fn open(root: &Path) -> Result<Store, RegistryError> {
        for dir in [root.join("blobs").join("sha256"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(io("create the store folder", &dir))?;
        }
        let marker = root.join("oci-layout");
        if !marker.exists() {
            let tmp = root
                .join("tmp")
                .join(format!("oci-layout.{}", std::process::id()));
            fs::write(&tmp, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io("write", &tmp))?;
            fs::rename(&tmp, &marker).map_err(io("write", &marker))?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            let tmp = root
                .join("tmp")
                .join(format!("index.json.{}", std::process::id()));
            fs::write(&tmp, br#"{"schemaVersion":2,"manifests":[]}"#).map_err(io("write", &tmp))?;
            fs::rename(&tmp, &index).map_err(io("write", &index))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// The store folder (an OCI layout).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    /// Whether the store holds a blob of this size.
    pub fn has(&self, digest: &Digest, size: u64) -> bool {
        fs::metadata(self.path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// A new temporary file inside the store.
    pub fn temp_file(&self) -> Result<(fs::File, TempPath), RegistryError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join("tmp")
            .join(format!("{}-{n}.partial", std::process::id()));
        let file = fs::File::create(&path).map_err(io("create", &path))?;
        Ok((file, TempPath(path)))
    }

    /// Moves a verified temporary file into place.
    pub fn commit(&self, tmp: TempPath, digest: &Digest) -> Result<PathBuf, RegistryError> {
        let dest = self.path(digest);
        fs::rename(&tmp.0, &dest).map_err(io("move into the store", &dest))?;
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
}
