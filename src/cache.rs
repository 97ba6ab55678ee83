//! The local layer cache: a layer built once is found again by its content
//! key and neither re-tarred nor compressed again. The content key hashes
//! the plan node's key (entries, modes, owners, sizes, inline content,
//! epoch, the codec's exact format) with the sha256 of every context file
//! it packs; those digests come from the fingerprint cache
//! ([`crate::fingerprint`]) without reading an unchanged file. Entries sit
//! in the local store beside its blobs: `<store>/layers/v<FORMAT>/<key>.json`
//! holds the blob's digest and size, the tar stream's diff_id, and the
//! blob file's stamp when its digest was last checked.
//!
//! What is checked, and when: an entry must be of this format and filed
//! under its own key (a copied or renamed entry is refused); its blob must
//! be a regular file of the recorded size. A blob whose stamp (device,
//! inode, size, mtime) is the recorded one is used without reading it: it
//! is hard-linked into the output, or kept there if the output holds that
//! same file. Any other blob is copied with its digest checked, and one
//! that fails is dropped with its entry and the layer built again. The
//! local store is trusted as the user's own files are (like git's index):
//! these checks catch damage, not a forger with write access to the store;
//! a registry-shared cache gets the stronger checks of re-made tar streams.
//!
//! A cache of another format version lives under another folder and is
//! never read. A failure to write the cache never fails a build.

use crate::fingerprint::{settled, Fingerprints, Print};
use crate::layers::{self, FileRead, LayerError, LayerSettings};
use crate::oci::Digest;
use crate::plan::{EntryKind, FileSource, LayerNode};
use crate::registry::store::Store;
use crate::registry::RegistryError;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime};

pub use crate::shared_cache::CACHE_FORMAT;

/// A used blob whose mtime is older than this is touched (the store's
/// pruning goes by mtime) and its stamp recorded again.
const TOUCH_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What the cache remembers of a built layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// [`CACHE_FORMAT`] when written.
    pub format: u32,
    /// The content key it is filed under.
    pub key: String,
    /// The compressed blob's digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// The uncompressed tar stream's digest.
    pub diff_id: Digest,
    /// Its size.
    pub tar_size: u64,
    /// The blob file's stamp when its digest was last known good.
    pub blob: Option<BlobStamp>,
}

impl CacheEntry {
    /// The entry for a built layer (key and blob stamp are filled in when
    /// it is filed).
    pub fn of(layer: &layers::BuiltLayer) -> Self {
        CacheEntry {
            format: CACHE_FORMAT,
            key: String::new(),
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: layer.diff_id.clone(),
            tar_size: layer.tar_size,
            blob: None,
        }
    }
}

/// A store blob file's device, inode, size and mtime (nanoseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStamp {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size.
    pub size: u64,
    /// Modification time.
    pub mtime_ns: i64,
}

impl BlobStamp {
    fn of(md: &fs::Metadata) -> BlobStamp {
        BlobStamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime_ns: crate::plan::sources::Stamp::of(md).mtime_ns,
        }
    }
}

/// An entry found, and whether its blob is unchanged since it was checked.
#[derive(Clone, Debug)]
pub struct Found {
    /// The entry.
    pub entry: CacheEntry,
    /// The blob's (device, inode) when its stamp is the recorded one.
    pub good: Option<(u64, u64)>,
}

/// The content key of `node`, given the digest of each context file it
/// packs, in entry order.
pub fn content_key<'a>(node: &LayerNode, files: impl IntoIterator<Item = &'a Digest>) -> String {
    let mut h = Sha256::new();
    h.update(format!("imgc layer cache {CACHE_FORMAT}\n{}\n", node.key));
    for d in files {
        h.update(d.as_str());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

/// The recipe key of `node`: its plan key and the fingerprint of every
/// context file as planned. It stands for the content only while each of
/// those files is settled ([`crate::fingerprint::settled`]): an entry is
/// filed under it only then, and found by it without reading anything.
pub fn recipe_key(node: &LayerNode) -> String {
    let mut h = Sha256::new();
    h.update(format!("imgc layer recipe {CACHE_FORMAT}\n{}\n", node.key));
    for (_, p) in context_files(node) {
        let s = &p.stamp;
        for n in [p.id.0, p.id.1, p.size] {
            h.update(n.to_le_bytes());
        }
        for n in [s.mtime_ns, s.ctime_ns] {
            h.update(n.to_le_bytes());
        }
        h.update(s.mode.to_le_bytes());
    }
    hex::encode(h.finalize())
}

/// Whether some context file of `node` had not settled, as planned, by
/// `now_ns`: its layer cannot be filed under its recipe key, so a build
/// that would not hash hashes it (to file it by content).
pub fn any_racy(node: &LayerNode, now_ns: i64) -> bool {
    context_files(node).any(|(_, p)| !settled(&p.stamp, now_ns))
}

/// The context files `node` packs: (rel, print), in entry order.
fn context_files(node: &LayerNode) -> impl Iterator<Item = (&str, Print)> {
    node.entries.iter().filter_map(|e| match &e.kind {
        EntryKind::File {
            source: FileSource::Context { rel, id, stamp },
            size,
        } => Some((
            rel.as_str(),
            Print {
                id: *id,
                size: *size,
                stamp: *stamp,
            },
        )),
        _ => None,
    })
}

/// The digest of each context file `node` packs, from the fingerprints
/// where they know it; the others are read and hashed (and remembered).
/// Also says whether every file [`FileRead::stands`] (a row of the table does).
pub fn file_digests(
    node: &LayerNode,
    prints: &Fingerprints,
    settings: &LayerSettings<'_>,
) -> Result<(Vec<Digest>, bool), LayerError> {
    let files: Vec<_> = context_files(node).collect();
    let mut out: Vec<Option<Digest>> = files.iter().map(|(rel, p)| prints.lookup(rel, p)).collect();
    let todo: Vec<usize> = (0..files.len()).filter(|&i| out[i].is_none()).collect();
    // Files are read and hashed on up to `threads` threads, each with one
    // buffer for all its files; the bytes worth hashing in parallel are many.
    let bytes: u64 = todo.iter().map(|&i| files[i].1.size).sum();
    let threads = if bytes < 8 << 20 {
        1
    } else {
        settings.threads.clamp(1, 8)
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let hash_some = || -> Result<Vec<(usize, FileRead)>, LayerError> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut done = Vec::new();
        loop {
            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&i) = todo.get(k) else {
                return Ok(done);
            };
            let (rel, print) = &files[i];
            let read = layers::hash_file(node, settings, rel, print.id, print.size, &mut buf)?;
            done.push((i, read));
        }
    };
    let reads: Vec<Result<Vec<(usize, FileRead)>, LayerError>> = std::thread::scope(|s| {
        let others: Vec<_> = (1..threads).map(|_| s.spawn(hash_some)).collect();
        let mut all = vec![hash_some()];
        all.extend(
            others
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
        );
        all
    });
    let mut all = true;
    for (i, read) in reads
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
    {
        remember(prints, &read);
        all &= read.stands(&files[i].1);
        out[i] = read.digest;
    }
    Ok((out.into_iter().flatten().collect(), all))
}

/// Records a hashed file read in the fingerprints, if it held still.
pub fn remember(prints: &Fingerprints, read: &FileRead) {
    if let (true, Some(digest)) = (read.steady, &read.digest) {
        prints.record(&read.rel, &read.print, digest, read.began_ns);
    }
}

/// What the cache's own files (entries and fingerprint tables) hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexUsage {
    /// Files.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// The folders of the cache's own files in a store folder.
const INDEX_DIRS: [&str; 2] = ["layers", "fingerprints"];

/// The regular files below the cache's folders of the store at `root`
/// (walked without following a symlink), with their sizes.
fn index_files(root: &Path) -> Vec<(PathBuf, u64)> {
    INDEX_DIRS
        .iter()
        .flat_map(|d| walkdir::WalkDir::new(root.join(d)).follow_links(false))
        .flatten()
        .filter_map(|e| {
            let md = e.metadata().ok().filter(|m| m.is_file())?;
            Some((e.into_path(), md.len()))
        })
        .collect()
}

/// How much the cache's entries and fingerprint tables in the store at
/// `root` hold.
pub fn index_usage(root: &Path) -> IndexUsage {
    let files = index_files(root);
    IndexUsage {
        files: files.len(),
        bytes: files.iter().map(|f| f.1).sum(),
    }
}

/// Removes what of the cache's own files is of no use any more: with
/// `all`, every entry and fingerprint table; otherwise the folders of
/// other format versions and the entries whose blob is gone (after a
/// prune). Returns what was removed. The caller holds the store's
/// exclusive lock.
pub fn prune_index(root: &Path, all: bool) -> IndexUsage {
    let current = [
        root.join("layers").join(format!("v{CACHE_FORMAT}")),
        root.join("fingerprints")
            .join(format!("v{}", crate::fingerprint::FINGERPRINT_FORMAT)),
    ];
    let mut removed = IndexUsage::default();
    for (path, size) in index_files(root) {
        let kept = !all
            && current.iter().any(|c| path.starts_with(c))
            && (!path.starts_with(&current[0]) || entry_blob_held(root, &path));
        if !kept && fs::remove_file(&path).is_ok() {
            removed.files += 1;
            removed.bytes += size;
        }
    }
    removed
}

/// Whether the entry file at `path` names a blob the store holds.
fn entry_blob_held(root: &Path, path: &Path) -> bool {
    crate::fsx::read_bounded(path, 64 * 1024, crate::fsx::Links::Refuse)
        .ok()
        .and_then(|b| serde_json::from_slice::<CacheEntry>(&b).ok())
        .is_some_and(|e| {
            fs::symlink_metadata(crate::oci::blob_path(root, &e.digest))
                .is_ok_and(|m| m.is_file() && m.len() == e.size)
        })
}

/// The layer cache, in the local store.
#[derive(Debug)]
pub struct LayerCache {
    store: Store,
    /// Keys of layers being looked up or built by a thread of this
    /// process: another thread with the same layer waits, then finds it.
    claims: Mutex<BTreeSet<String>>,
    freed: Condvar,
}

/// A layer claimed by one thread (see [`LayerCache::claim`]); released
/// when dropped.
#[derive(Debug)]
pub struct Claim<'a> {
    cache: &'a LayerCache,
    key: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut claims = self.cache.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.remove(&self.key);
        self.cache.freed.notify_all();
    }
}

impl LayerCache {
    /// Opens (creating) the cache in the store folder `dir`.
    pub fn open(dir: &Path) -> Result<LayerCache, RegistryError> {
        Ok(LayerCache {
            store: Store::open(dir)?,
            claims: Mutex::new(BTreeSet::new()),
            freed: Condvar::new(),
        })
    }

    /// Claims the layer `key` (its recipe key) for this thread while it is
    /// looked up and, on a miss, built and put: a thread building the same
    /// layer of another spec waits here, then finds it in the cache. A
    /// thread holds one claim at a time, so claims cannot deadlock.
    pub fn claim(&self, key: &str) -> Claim<'_> {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        while claims.contains(key) {
            claims = self.freed.wait(claims).unwrap_or_else(|e| e.into_inner());
        }
        claims.insert(key.to_string());
        Claim {
            cache: self,
            key: key.to_string(),
        }
    }

    /// The folder blobs are copied from (an OCI layout's root).
    pub fn blobs_root(&self) -> &Path {
        self.store.root()
    }

    /// The fingerprint table of the context at `root` (canonical).
    pub fn fingerprints(&self, root: &Path) -> Fingerprints {
        Fingerprints::open(self.store.root(), root)
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.store
            .root()
            .join("layers")
            .join(format!("v{CACHE_FORMAT}"))
            .join(format!("{key}.json"))
    }

    /// The entry filed under `key`, if it is of this format, names that
    /// key, and its blob is a regular file of its size.
    pub fn get(&self, key: &str) -> Option<Found> {
        if !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let path = self.entry_path(key);
        let bytes = crate::fsx::read_bounded(&path, 64 * 1024, crate::fsx::Links::Refuse).ok()?;
        let entry: CacheEntry = serde_json::from_slice(&bytes).ok()?;
        if entry.format != CACHE_FORMAT || entry.key != key {
            return None;
        }
        let md = fs::symlink_metadata(self.store.path(&entry.digest)).ok()?;
        if !md.is_file() || md.len() != entry.size {
            return None;
        }
        let stamp = BlobStamp::of(&md);
        let good = (entry.blob == Some(stamp)).then_some((stamp.dev, stamp.ino));
        Some(Found { entry, good })
    }

    /// Notes that an entry's blob was used, `checked` (its stamp was good,
    /// or it was read with its digest checked): an old blob is touched for
    /// the store's pruning, and a newly checked one gets its stamp recorded.
    pub fn used(&self, found: &Found, checked: bool) {
        if !checked {
            return;
        }
        let path = self.store.path(&found.entry.digest);
        let Ok(md) = fs::symlink_metadata(&path) else {
            return;
        };
        let old = md
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > TOUCH_AFTER);
        if old {
            // `has` touches the blob it finds (never through a symlink).
            self.store.has(&found.entry.digest, found.entry.size);
        }
        if old || found.good.is_none() {
            let _ = self.write_entry(&found.entry.key, &found.entry);
        }
    }

    /// Remembers a layer: its blob (`blob`, the build's own staged copy,
    /// just written, hashed and synced: hard-linked into the store, else
    /// copied) and its entry, filed under each of `keys`.
    pub fn put(&self, keys: &[String], entry: &CacheEntry, blob: &Path) -> std::io::Result<()> {
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
        for key in keys {
            self.write_entry(key, entry)?;
        }
        Ok(())
    }

    /// Files an entry found under another key under `key` as well.
    pub fn alias(&self, key: &str, entry: &CacheEntry) {
        let _ = self.write_entry(key, entry);
    }

    /// Writes `entry` under `key`, with the store blob's stamp as it is
    /// now, under a temporary name then renamed.
    fn write_entry(&self, key: &str, entry: &CacheEntry) -> std::io::Result<()> {
        let md = fs::symlink_metadata(self.store.path(&entry.digest))?;
        let entry = CacheEntry {
            key: key.to_string(),
            blob: Some(BlobStamp::of(&md)),
            ..entry.clone()
        };
        let path = self.entry_path(key);
        let dir = path.parent().unwrap_or(self.store.root());
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{key}.{}.{}.new",
            std::process::id(),
            crate::fsx::unique()
        ));
        let bytes = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
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
