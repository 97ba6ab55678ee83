//! What the layer caches share with the registry module: the cache format
//! version, and the interface of a layer cache shared through a registry
//! (`--cache-repo`), which the registry module implements and the build
//! uses. A leaf: it depends on nothing of imgc but [`crate::oci`].

use crate::oci::Digest;
use std::path::{Path, PathBuf};

/// The version of the caches' entries and keys; a change makes a new local
/// folder and new registry tags, so no entry of another version is read.
pub const CACHE_FORMAT: u32 = 2;

/// The version of registry cache entries (their tags, their annotations
/// and how their key is made); a change makes new tags, so no entry of
/// another version is read. Version 3 keys an entry by the layer's tar
/// stream (version 2 keyed it by the files' digests).
pub const REMOTE_FORMAT: u32 = 3;

/// The key a registry cache entry is filed under: the encoder (its format
/// id) and the tar stream's digest and size. Equal keys make equal blobs,
/// whatever the context's paths; and a reader makes the tar stream from
/// its sources to find the entry, which is the check a hit needs anyway.
pub fn remote_key(format_id: &str, diff_id: &Digest, tar_size: u64) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(format!(
        "imgc layer tar {REMOTE_FORMAT}\n{format_id}\n{diff_id}\n{tar_size}\n"
    ));
    hex::encode(h.finalize())
}

/// The key of a layer's shape entry: the entry filed last for a layer of
/// this recipe (its plan key `layer_key`: context paths, sizes, modes,
/// owners, name, epoch, encoder), whatever its files hold now. Only a
/// hint: a reader fetches and checks the entry while it makes the tar
/// stream, and uses it only if the stream is the entry's; otherwise it
/// looks up the stream's own key ([`remote_key`]). Written `shape-` and
/// hex, so its tags tell themselves apart.
pub fn shape_key(format_id: &str, layer_key: &str) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(format!(
        "imgc layer shape {REMOTE_FORMAT}\n{format_id}\n{layer_key}\n"
    ));
    format!("shape-{}", hex::encode(h.finalize()))
}

/// Why a registry-shared cache could not answer (rendered as a warning).
pub type RemoteError = Box<dyn std::error::Error + Send + Sync>;

/// What the check of a fetched blob said: why it failed, if it did.
pub type Checked = Result<(), String>;

/// A layer cache shared through a registry repository (`--cache-repo`):
/// entries found by content key, blobs fetched into the local store. What
/// it answers is not trusted: the build checks a hit against the sources
/// before using it.
pub trait RemoteCache: Send + Sync + std::fmt::Debug {
    /// Where the entries are, for messages (`registry/repository`).
    fn name(&self) -> String;
    /// Whether it is still asked (a repository that failed once is not,
    /// for the rest of the build): no key is worth making for it otherwise.
    fn in_use(&self) -> bool;
    /// The entry filed under the key `key`; `None` when there is none.
    fn lookup(&self, key: &str) -> Result<Option<RemoteEntry>, RemoteError>;
    /// Puts the entry's blob into the local store (its digest and size
    /// checked) and reads it with `check` (as it is downloaded); returns
    /// its path there and what `check` said. The check's verdict counts
    /// only when the fetch succeeds: it may have read a blob whose digest
    /// turned out wrong.
    fn fetch(
        &self,
        entry: &RemoteEntry,
        check: &dyn Fn(&mut dyn std::io::Read) -> Checked,
    ) -> Result<(PathBuf, Checked), RemoteError>;
    /// Files a built layer (its blob at `blob`) under `key`.
    fn publish(&self, key: &str, entry: &RemoteEntry, blob: &Path) -> Result<(), RemoteError>;
}

/// What a registry cache entry says of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEntry {
    /// The blob's media type.
    pub media_type: String,
    /// The compressed blob's digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// The tar stream's digest.
    pub diff_id: Digest,
    /// Its size.
    pub tar_size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_key_changes_with_each_part() {
        let d1 = crate::oci::sha256_digest(b"one");
        let d2 = crate::oci::sha256_digest(b"two");
        let base = remote_key("zstd/l3", &d1, 10);
        assert_eq!(base, remote_key("zstd/l3", &d1, 10));
        assert_eq!(base.len(), 64);
        for other in [
            remote_key("zstd/l4", &d1, 10),
            remote_key("zstd/l3", &d2, 10),
            remote_key("zstd/l3", &d1, 11),
        ] {
            assert_ne!(base, other);
        }
        let shape = shape_key("zstd/l3", "k1");
        assert!(shape.starts_with("shape-") && shape.len() == 70, "{shape}");
        assert_eq!(shape, shape_key("zstd/l3", "k1"));
        assert_ne!(shape, shape_key("zstd/l4", "k1"));
        assert_ne!(shape, shape_key("zstd/l3", "k2"));
    }
}
