//! The local layer cache: a layer built once is found again by its plan
//! key (entries, modes, owners, sizes, sources, epoch, the codec's exact
//! format) and not compressed again. Entries sit in the local store, beside
//! its blobs: `<store>/layers/v<FORMAT>/<key>.json` holds the blob's digest
//! and size and the tar stream's diff_id; the blob is `<store>/blobs/…`.
//!
//! An entry is never trusted. Before it is used, the tar stream is made
//! again from the sources and hashed (cheap next to compressing) and must
//! equal the entry's diff_id; then the blob is copied into the output with
//! its digest and size checked. A blob that fails is dropped with its entry
//! and the layer is built again. A cache written by another format version
//! lives under another folder and is never read. A failure to write the
//! cache never fails a build.

use crate::oci::Digest;
use crate::registry::store::Store;
use crate::registry::RegistryError;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The version of the cache's entries and keys; a change makes a new
/// folder, so no entry of another version is ever read.
pub const CACHE_FORMAT: u32 = 1;

/// What the cache remembers of a built layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// [`CACHE_FORMAT`] when written.
    pub format: u32,
    /// The compressed blob's digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// The uncompressed tar stream's digest.
    pub diff_id: Digest,
    /// Its size.
    pub tar_size: u64,
}

/// The layer cache, in the local store.
#[derive(Debug)]
pub struct LayerCache {
    store: Store,
}

impl LayerCache {
    /// Opens (creating) the cache in the store folder `dir`.
    pub fn open(dir: &Path) -> Result<LayerCache, RegistryError> {
        Ok(LayerCache {
            store: Store::open(dir)?,
        })
    }

    /// The folder blobs are copied from (an OCI layout's root).
    pub fn blobs_root(&self) -> &Path {
        self.store.root()
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.store
            .root()
            .join("layers")
            .join(format!("v{CACHE_FORMAT}"))
            .join(format!("{key}.json"))
    }

    /// The entry for a plan key, if there is one of this format.
    pub fn get(&self, key: &str) -> Option<CacheEntry> {
        if !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let path = self.entry_path(key);
        let bytes = crate::fsx::read_bounded(&path, 64 * 1024, crate::fsx::Links::Refuse).ok()?;
        let entry: CacheEntry = serde_json::from_slice(&bytes).ok()?;
        (entry.format == CACHE_FORMAT && self.store.has(&entry.digest, entry.size)).then_some(entry)
    }

    /// Remembers a layer: its blob (`blob`, the build's own staged copy,
    /// just written, hashed and synced: hard-linked into the store, else
    /// copied) and its entry, written under a temporary name and renamed.
    pub fn put(&self, key: &str, entry: &CacheEntry, blob: &Path) -> std::io::Result<()> {
        let linked = match fs::hard_link(blob, self.store.path(&entry.digest)) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::AlreadyExists,
        };
        if !linked && !self.store.has(&entry.digest, entry.size) {
            let (mut file, tmp) = self.store.temp_file().map_err(std::io::Error::other)?;
            let source = crate::fsx::open_regular(blob, crate::fsx::Links::Refuse)?;
            let copied = std::io::copy(&mut source.take(entry.size), &mut file)?;
            if copied != entry.size {
                return Err(std::io::Error::other(
                    "the blob changed while it was copied",
                ));
            }
            file.sync_all()?;
            self.store
                .commit(tmp, &entry.digest)
                .map_err(std::io::Error::other)?;
        }
        let path = self.entry_path(key);
        let dir = path.parent().unwrap_or(self.store.root());
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{key}.{}.new", std::process::id()));
        let bytes = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        // Never written through whatever stands at the name: a leftover of
        // a killed process is removed, and the file is made anew.
        let _ = fs::remove_file(&tmp);
        std::io::Write::write_all(
            &mut fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?,
            &bytes,
        )?;
        fs::rename(&tmp, &path)
    }

    /// Forgets an entry and its blob (found corrupt).
    pub fn drop_entry(&self, key: &str, digest: &Digest) {
        let _ = fs::remove_file(self.entry_path(key));
        self.store.discard(digest);
    }
}
