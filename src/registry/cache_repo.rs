//! The registry-shared layer cache (`--cache-repo`): one OCI artifact per
//! built layer, in a repository of its own, tagged by the layer's content
//! key. The artifact's manifest has the empty config, the layer blob as its
//! only layer (its diff_id and tar size in annotations), and the key, the
//! cache format and the time it was filed in its annotations. Also lists
//! and deletes old entries (`imgc cache prune --repo`).
//!
//! An entry is only a claim: whoever can push to the repository can write
//! any. The build checks a hit against the sources before using it.

use super::store::Store;
use super::{Client, ImageRef, RegistryError};
use crate::oci::{self, Descriptor, Digest, Manifest};
use crate::shared_cache::{Checked, RemoteCache, RemoteEntry, RemoteError, REMOTE_FORMAT};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The artifact type of a cache entry.
pub const ARTIFACT_TYPE: &str = "application/vnd.imgc.layer-cache.v1";
/// Annotation: the content key the entry is filed under.
pub const ANNOTATION_KEY: &str = "dev.imgc.cache.key";
/// Annotation: the cache format ([`REMOTE_FORMAT`]).
pub const ANNOTATION_FORMAT: &str = "dev.imgc.cache.format";
/// Annotation: when the entry was filed, in seconds since 1970 (what
/// `imgc cache prune --repo` goes by; `org.opencontainers.image.created`
/// says the same for retention policies).
pub const ANNOTATION_FILED: &str = "dev.imgc.cache.filed";
/// Layer annotation: the tar stream's digest.
pub const ANNOTATION_DIFF_ID: &str = "dev.imgc.layer.diff-id";
/// Layer annotation: the tar stream's size.
pub const ANNOTATION_TAR_SIZE: &str = "dev.imgc.layer.tar-size";
/// The empty JSON object the artifact's config is (OCI 1.1's empty descriptor).
const EMPTY_CONFIG: &[u8] = b"{}";

/// The tag an entry is filed under: the format and the content key.
pub fn tag_for(key: &str) -> String {
    format!("imgc-layer-v{REMOTE_FORMAT}-{key}")
}

/// A cache repository, with the local store its blobs are fetched into.
/// After a failed lookup it is not asked again in this run, nor written
/// after a failed write: one warning, not one per layer (and no retries
/// against a registry that is down).
#[derive(Debug)]
pub struct CacheRepo {
    client: Arc<Client>,
    repo: ImageRef,
    store: Store,
    unread: AtomicBool,
    unwritten: AtomicBool,
}

impl CacheRepo {
    /// The cache in `repo` (a repository; a tag or digest is refused).
    pub fn new(client: Arc<Client>, repo: &str, store: &Path) -> Result<CacheRepo, RegistryError> {
        let r = ImageRef::parse(repo)?;
        if r.digest.is_some()
            || repo
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':'))
        {
            return Err(RegistryError::BadCacheRepo {
                repo: repo.to_string(),
            });
        }
        Ok(CacheRepo {
            client,
            repo: ImageRef { tag: None, ..r },
            store: Store::open(store)?,
            unread: AtomicBool::new(false),
            unwritten: AtomicBool::new(false),
        })
    }

    /// The empty config's descriptor.
    fn empty_config() -> Descriptor {
        Descriptor::new(
            oci::MEDIA_TYPE_EMPTY.to_string(),
            oci::sha256_digest(EMPTY_CONFIG),
            EMPTY_CONFIG.len() as u64,
        )
    }

    /// Uploads a local file as a blob of the cache repository.
    fn put_blob(&self, path: &Path, desc: &Descriptor) -> Result<(), RegistryError> {
        self.client.push_file(&self.repo, path, desc).map(|_| ())
    }
}

/// The entry a cache manifest describes, checked to be filed under `key`
/// and of this format.
pub fn parse_entry(bytes: &[u8], key: &str) -> Result<RemoteEntry, String> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if m.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
        return Err(format!("its artifact type is not `{ARTIFACT_TYPE}`"));
    }
    let format = REMOTE_FORMAT.to_string();
    if m.annotations.get(ANNOTATION_FORMAT) != Some(&format) {
        return Err(format!("it is not of cache format {REMOTE_FORMAT}"));
    }
    if m.annotations.get(ANNOTATION_KEY).map(String::as_str) != Some(key) {
        return Err("it is filed under another key than its own".into());
    }
    let [layer] = m.layers.as_slice() else {
        return Err(format!("it has {} layers, not 1", m.layers.len()));
    };
    let note = |name: &str| {
        layer
            .annotations
            .get(name)
            .ok_or_else(|| format!("its layer has no `{name}` annotation"))
    };
    let diff_id: Digest = note(ANNOTATION_DIFF_ID)?
        .parse()
        .map_err(|e| format!("bad diff_id: {e}"))?;
    let tar_size: u64 = note(ANNOTATION_TAR_SIZE)?
        .parse()
        .map_err(|e| format!("bad tar size: {e}"))?;
    Ok(RemoteEntry {
        media_type: layer.media_type.clone(),
        digest: layer.digest.clone(),
        size: layer.size,
        diff_id,
        tar_size,
    })
}

/// The manifest an entry is filed as (created at `now`, seconds).
pub fn entry_manifest(key: &str, entry: &RemoteEntry, now: u64) -> Manifest {
    let mut layer = Descriptor::new(entry.media_type.clone(), entry.digest.clone(), entry.size);
    layer
        .annotations
        .insert(ANNOTATION_DIFF_ID.into(), entry.diff_id.to_string());
    layer
        .annotations
        .insert(ANNOTATION_TAR_SIZE.into(), entry.tar_size.to_string());
    let annotations = BTreeMap::from([
        (ANNOTATION_KEY.to_string(), key.to_string()),
        (ANNOTATION_FORMAT.to_string(), REMOTE_FORMAT.to_string()),
        (oci::ANNOTATION_CREATED.to_string(), oci::rfc3339(now)),
        (ANNOTATION_FILED.to_string(), now.to_string()),
    ]);
    Manifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_MANIFEST.to_string()),
        artifact_type: Some(ARTIFACT_TYPE.to_string()),
        config: CacheRepo::empty_config(),
        layers: vec![layer],
        subject: None,
        annotations,
    }
}

/// Tags asked for per page when pruning, and the most pages followed.
const TAG_PAGES: (usize, usize) = (1000, 10_000);

/// What `imgc cache prune --repo` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneOutcome {
    /// Entries (imgc cache tags) looked at.
    pub entries: usize,
    /// Entries deleted.
    pub deleted: usize,
}

impl CacheRepo {
    /// Deletes the entries filed more than `older_than` seconds before
    /// `now` (a tag that is not an entry is left alone). Stops at the first
    /// delete the registry refuses, with its error.
    pub fn prune(&self, older_than: u64, now: u64) -> Result<PruneOutcome, RegistryError> {
        let mut out = PruneOutcome::default();
        // Each page is one bounded document, and the pages are counted.
        self.client
            .for_each_tag_page(&self.repo, TAG_PAGES, &mut |tags| {
                for tag in tags.iter().filter(|t| t.starts_with(&tag_for(""))) {
                    out.entries += 1;
                    if self.prune_entry(tag, older_than, now)? {
                        out.deleted += 1;
                    }
                }
                Ok(())
            })?;
        Ok(out)
    }

    /// Deletes the entry tagged `tag` if it was filed `older_than` seconds
    /// before `now` or earlier; returns whether it did.
    fn prune_entry(&self, tag: &str, older_than: u64, now: u64) -> Result<bool, RegistryError> {
        let fetched = match self.client.get_manifest_once(&self.repo.with_tag(tag)) {
            Err(RegistryError::ManifestUnknown { .. }) => return Ok(false),
            other => other?,
        };
        let filed = serde_json::from_slice::<Manifest>(&fetched.bytes)
            .ok()
            .and_then(|m| m.annotations.get(ANNOTATION_FILED)?.parse::<u64>().ok());
        // An entry that does not say when it was filed is not imgc's: kept.
        if filed.is_none_or(|t| now.saturating_sub(t) < older_than) {
            return Ok(false);
        }
        self.client.delete_manifest(&self.repo, &fetched.digest)?;
        Ok(true)
    }
}

impl RemoteCache for CacheRepo {
    fn name(&self) -> String {
        self.repo.name()
    }

    fn in_use(&self) -> bool {
        !self.unread.load(Ordering::Relaxed)
    }

    fn lookup(&self, key: &str) -> Result<Option<RemoteEntry>, RemoteError> {
        if self.unread.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let found = self.lookup_entry(key);
        if found.is_err() {
            self.unread.store(true, Ordering::Relaxed);
            self.unwritten.store(true, Ordering::Relaxed);
        }
        Ok(found?)
    }

    fn fetch(
        &self,
        entry: &RemoteEntry,
        check: &dyn Fn(&mut dyn std::io::Read) -> Checked,
    ) -> Result<(PathBuf, Checked), RemoteError> {
        let desc = Descriptor::new(entry.media_type.clone(), entry.digest.clone(), entry.size);
        Ok(self
            .client
            .get_blob_checked(&self.repo, &desc, &self.store, check)?)
    }

    fn publish(&self, key: &str, entry: &RemoteEntry, blob: &Path) -> Result<(), RemoteError> {
        if self.unwritten.load(Ordering::Relaxed) {
            return Ok(());
        }
        let filed = self.file_entry(key, entry, blob);
        if filed.is_err() {
            self.unwritten.store(true, Ordering::Relaxed);
        }
        Ok(filed?)
    }
}

impl CacheRepo {
    fn lookup_entry(&self, key: &str) -> Result<Option<RemoteEntry>, RegistryError> {
        let tag = tag_for(key);
        let r = self.repo.with_tag(&tag);
        let fetched = match self.client.get_manifest_once(&r) {
            Err(
                RegistryError::ManifestUnknown { .. } | RegistryError::RepositoryUnknown { .. },
            ) => return Ok(None),
            other => other?,
        };
        // A bad entry is that entry's fault, not the repository's: it is
        // refused (its layer is built and filed again), the cache stays on.
        match parse_entry(&fetched.bytes, key) {
            Ok(entry) => Ok(Some(entry)),
            Err(reason) => {
                self.client
                    .reporter()
                    .report(crate::progress::Event::Warning(&format!(
                        "cache entry {r} is refused: {reason}; its layer is built instead"
                    )));
                Ok(None)
            }
        }
    }

    fn file_entry(&self, key: &str, entry: &RemoteEntry, blob: &Path) -> Result<(), RegistryError> {
        let config = CacheRepo::empty_config();
        let config_path = self.store.put_bytes(&config.digest, EMPTY_CONFIG)?;
        self.put_blob(&config_path, &config)?;
        let desc = Descriptor::new(entry.media_type.clone(), entry.digest.clone(), entry.size);
        self.put_blob(blob, &desc)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let manifest = entry_manifest(key, entry, now);
        let bytes = oci::to_canonical_json(&manifest).map_err(|e| RegistryError::BadDocument {
            registry: self.repo.registry.clone(),
            what: "cache entry".into(),
            reason: e.to_string(),
        })?;
        self.client
            .push_manifest(&self.repo, &tag_for(key), oci::MEDIA_TYPE_MANIFEST, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> RemoteEntry {
        RemoteEntry {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: oci::sha256_digest(b"blob"),
            size: 4,
            diff_id: oci::sha256_digest(b"tar"),
            tar_size: 3,
        }
    }

    #[test]
    fn an_entry_reads_back_only_under_its_own_key() {
        let bytes = oci::to_canonical_json(&entry_manifest("k1", &entry(), 0)).unwrap();
        assert_eq!(parse_entry(&bytes, "k1").unwrap(), entry());
        let e = parse_entry(&bytes, "k2").unwrap_err();
        assert!(e.contains("another key"), "{e}");
        let other = String::from_utf8(bytes.clone())
            .unwrap()
            .replace(ARTIFACT_TYPE, "application/x-other");
        assert!(parse_entry(other.as_bytes(), "k1")
            .unwrap_err()
            .contains("artifact type"));
        let old = String::from_utf8(bytes).unwrap().replace(
            &format!("\"{ANNOTATION_FORMAT}\":\"{REMOTE_FORMAT}\""),
            &format!("\"{ANNOTATION_FORMAT}\":\"1\""),
        );
        assert!(parse_entry(old.as_bytes(), "k1")
            .unwrap_err()
            .contains("format"));
        assert!(tag_for("k1").len() <= 128);
    }
}
