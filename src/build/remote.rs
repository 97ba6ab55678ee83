//! Layers from the registry-shared cache (`--cache-repo`), and layers filed
//! there. Whoever can push to the cache repository can write any entry, so
//! a hit is used only when (1) the tar stream made again from the sources
//! hashes to the entry's diff_id and size, and (2) the blob, fetched with
//! its digest checked, decompresses to that same diff_id. Both are far
//! cheaper than compressing. Anything else is reported and the layer built.
//! The cache never fails a build: a registry error is a warning.

use crate::cache::{CacheEntry, LayerCache, RemoteCache, RemoteEntry};
use crate::layers::{self, BuiltLayer, LayerSettings};
use crate::layout::{LayoutError, LayoutWriter};
use crate::oci::{Codec, Descriptor};
use crate::plan::LayerNode;
use crate::progress::{error_chain as chain, Event, Reporter};
use std::path::Path;

use super::Error;

/// One layer looked up in the cache repository.
pub(super) struct Job<'a> {
    pub node: &'a LayerNode,
    pub settings: &'a LayerSettings<'a>,
    pub cache: &'a LayerCache,
    pub remote: &'a dyn RemoteCache,
    pub reporter: &'a dyn Reporter,
}

impl Job<'_> {
    fn warn(&self, what: &str) {
        self.reporter.report(Event::Warning(&format!(
            "layer {}: {what}; it is built instead",
            self.node.name
        )));
    }

    /// The layer filed under the content key `key` in the cache repository,
    /// checked against the sources, placed into the output and filed in the
    /// local cache (also under `recipe`, when given); `None` to build it.
    pub fn take(
        &self,
        key: &str,
        recipe: Option<&str>,
        writer: &mut LayoutWriter,
    ) -> Result<Option<(BuiltLayer, bool)>, Error> {
        let repo = self.remote.name();
        let entry = match self.remote.lookup(key) {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.warn(&format!(
                    "cache repository {repo} not read (nor used again in this build): {}",
                    chain(&e)
                ));
                return Ok(None);
            }
        };
        if let Some(why) = self.check(&entry)? {
            self.warn(&format!("the entry in {repo} is refused: {why}"));
            return Ok(None);
        }
        let desc = Descriptor::new(String::new(), entry.digest.clone(), entry.size);
        let held = writer.holds(&desc);
        match writer.place_blob(self.cache.blobs_root(), &desc, None) {
            Ok(_) => {}
            Err(e @ (LayoutError::DigestMismatch { .. } | LayoutError::Io { .. })) => {
                self.warn(&format!(
                    "its blob from {repo} was not placed: {}",
                    chain(&e)
                ));
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        self.file_locally(key, recipe, &entry);
        Ok(Some((
            BuiltLayer {
                digest: entry.digest,
                diff_id: entry.diff_id,
                size: entry.size,
                tar_size: entry.tar_size,
            },
            held,
        )))
    }

    /// Why the entry may not be used (`None`: it may). Fetches its blob.
    fn check(&self, entry: &RemoteEntry) -> Result<Option<String>, Error> {
        let codec = self.settings.codec;
        let expected_type = format!(
            "{}{}",
            crate::oci::MEDIA_TYPE_LAYER,
            codec.media_type_suffix()
        );
        let docker = crate::oci::MEDIA_TYPE_DOCKER_LAYER_GZIP;
        if entry.media_type != expected_type
            && !(codec == Codec::Gzip && entry.media_type == docker)
        {
            return Ok(Some(format!("its media type is {}", entry.media_type)));
        }
        let (diff_id, tar_size) = layers::tar_digest(self.node, self.settings)?;
        if (&entry.diff_id, entry.tar_size) != (&diff_id, tar_size) {
            return Ok(Some(format!(
                "its diff_id {} ({} bytes) is not the sources' tar stream {diff_id} ({tar_size} bytes)",
                entry.diff_id, entry.tar_size
            )));
        }
        // No codec makes a blob much larger than its tar stream: a larger
        // declared size is a lie that would cost a download.
        if entry.size > tar_size + tar_size / 64 + (1 << 16) {
            return Ok(Some(format!(
                "its blob is declared {} bytes, more than a {tar_size}-byte tar stream compresses to",
                entry.size
            )));
        }
        let path = match self.remote.fetch(entry) {
            Ok(path) => path,
            Err(e) => return Ok(Some(format!("its blob was not fetched: {}", chain(&e)))),
        };
        let unpacked = crate::fsx::open_regular(&path, crate::fsx::Links::Refuse)
            .and_then(|f| layers::decompressed_digest(codec, f, tar_size));
        match unpacked {
            Ok((d, n)) if d == diff_id && n == tar_size => Ok(None),
            Ok((d, n)) => Ok(Some(format!(
                "its blob {} decompresses to {d} ({n} bytes), not to its diff_id {diff_id}",
                entry.digest
            ))),
            Err(e) => Ok(Some(format!(
                "its blob {} does not decompress: {e}",
                entry.digest
            ))),
        }
    }

    /// Files a checked entry in the local cache (its blob is in the store).
    fn file_locally(&self, key: &str, recipe: Option<&str>, entry: &RemoteEntry) {
        let local = CacheEntry {
            format: crate::cache::CACHE_FORMAT,
            key: String::new(),
            digest: entry.digest.clone(),
            size: entry.size,
            diff_id: entry.diff_id.clone(),
            tar_size: entry.tar_size,
            blob: None,
        };
        let mut keys = vec![key.to_string()];
        keys.extend(recipe.map(str::to_string));
        let blob = crate::base::blob_path(self.cache.blobs_root(), &entry.digest);
        if let Err(e) = self.cache.put(&keys, &local, &blob) {
            self.reporter.report(Event::Warning(&format!(
                "layer {} was not saved in the layer cache: {e}",
                self.node.name
            )));
        }
    }
}

/// Files a built layer in the cache repository under its content key; a
/// failure is a warning.
pub(super) fn publish(
    remote: &dyn RemoteCache,
    node: &LayerNode,
    key: &str,
    layer: &BuiltLayer,
    blob: &Path,
    codec: Codec,
    reporter: &dyn Reporter,
) {
    let entry = RemoteEntry {
        media_type: format!(
            "{}{}",
            crate::oci::MEDIA_TYPE_LAYER,
            codec.media_type_suffix()
        ),
        digest: layer.digest.clone(),
        size: layer.size,
        diff_id: layer.diff_id.clone(),
        tar_size: layer.tar_size,
    };
    if let Err(e) = remote.publish(key, &entry, blob) {
        reporter.report(Event::Warning(&format!(
            "layer {} was not saved in the cache repository {} (nor will other layers of this build be): {}",
            node.name,
            remote.name(),
            chain(&e)
        )));
    }
}
