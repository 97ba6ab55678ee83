//! Layers from the registry-shared cache (`--cache-repo`), and layers filed
//! there. Whoever can push to the cache repository can write any entry, so
//! a hit is used only when (1) the tar stream made again from the sources
//! hashes to the entry's diff_id and size, and (2) the blob, fetched with
//! its digest checked, decompresses to that same diff_id. Both are far
//! cheaper than compressing. Anything else is reported and the layer built.
//! The cache never fails a build: a registry error is a warning.

use crate::cache::LayerCache;
use crate::layers::{self, BuiltLayer, LayerSettings};
use crate::layout::{LayoutError, LayoutWriter};
use crate::oci::{Codec, Descriptor};
use crate::plan::LayerNode;
use crate::progress::{error_chain as chain, Event, Reporter};
use crate::shared_cache::{RemoteCache, RemoteEntry};
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
                    chain(e.as_ref())
                ));
                return Ok(None);
            }
        };
        if let Some(why) = self.check(&entry)? {
            self.warn(&format!("the entry in {repo} is refused: {why}"));
            return Ok(None);
        }
        let layer = BuiltLayer {
            digest: entry.digest,
            diff_id: entry.diff_id,
            size: entry.size,
            tar_size: entry.tar_size,
        };
        let desc = Descriptor::new(String::new(), layer.digest.clone(), layer.size);
        let held = writer.holds(&desc);
        // Filed locally first: the store blob's stamp lets it be linked.
        self.file_locally(key, recipe, &layer);
        let good = self.cache.get(key).and_then(|f| f.good);
        match writer.place_blob(self.cache.blobs_root(), &desc, good) {
            Ok(_) => {}
            Err(e @ (LayoutError::DigestMismatch { .. } | LayoutError::Io { .. })) => {
                self.cache.drop_entry(key, &layer.digest);
                self.warn(&format!(
                    "its blob from {repo} was not placed: {}",
                    chain(&e)
                ));
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Some((layer, held)))
    }

    /// Why the entry may not be used (`None`: it may). Makes the tar
    /// stream from the sources on one thread while the blob is fetched and
    /// decompressed on this one.
    fn check(&self, entry: &RemoteEntry) -> Result<Option<String>, Error> {
        if let Some(why) = implausible(self.node, self.settings.codec, entry) {
            return Ok(Some(why));
        }
        let (tar, unpacked) = std::thread::scope(|s| {
            let tar = s.spawn(|| layers::tar_digest(self.node, self.settings));
            let unpacked = self.unpacked(entry);
            (tar.join(), unpacked)
        });
        let (diff_id, tar_size) = tar.unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        if (&entry.diff_id, entry.tar_size) != (&diff_id, tar_size) {
            return Ok(Some(format!(
                "its diff_id {} ({} bytes) is not the sources' tar stream {diff_id} ({tar_size} bytes)",
                entry.diff_id, entry.tar_size
            )));
        }
        match unpacked {
            Ok((d, n)) if d == diff_id && n == tar_size => Ok(None),
            Ok((d, n)) => Ok(Some(format!(
                "its blob {} decompresses to {d} ({n} bytes), not to its diff_id {diff_id}",
                entry.digest
            ))),
            Err(why) => Ok(Some(why)),
        }
    }

    /// Fetches the entry's blob (digest checked) and returns what it
    /// decompresses to (at most the entry's tar size and one byte read).
    fn unpacked(&self, entry: &RemoteEntry) -> Result<(crate::oci::Digest, u64), String> {
        let path = self
            .remote
            .fetch(entry)
            .map_err(|e| format!("its blob was not fetched: {}", chain(e.as_ref())))?;
        crate::fsx::open_regular(&path, crate::fsx::Links::Refuse)
            .and_then(|f| layers::decompressed_digest(self.settings.codec, f, entry.tar_size))
            .map_err(|e| format!("its blob {} does not decompress: {e}", entry.digest))
    }

    /// Files a checked entry in the local cache (its blob is in the store).
    fn file_locally(&self, key: &str, recipe: Option<&str>, layer: &BuiltLayer) {
        let mut keys = vec![key.to_string()];
        keys.extend(recipe.map(str::to_string));
        let blob = crate::base::blob_path(self.cache.blobs_root(), &layer.digest);
        super::file_layer(self.cache, (self.node, &keys), layer, &blob, self.reporter);
    }
}

/// Why an entry cannot be right whatever its bytes (checked before any
/// download): a media type of another codec, a tar stream larger than the
/// layer's entries can make, a blob larger than its tar stream compresses to.
fn implausible(node: &LayerNode, codec: Codec, entry: &RemoteEntry) -> Option<String> {
    let expected = layer_media_type(codec);
    let docker = crate::oci::MEDIA_TYPE_DOCKER_LAYER_GZIP;
    if entry.media_type != expected && !(codec == Codec::Gzip && entry.media_type == docker) {
        return Some(format!("its media type is {}", entry.media_type));
    }
    // Each entry: a header, a PAX header for long names, padding; the end.
    let names: u64 = node.entries.iter().map(|e| e.path.len() as u64).sum();
    let most = node.content_bytes() + 2 * names + 4096 * node.entries.len() as u64 + 10_240;
    if entry.tar_size > most {
        return Some(format!(
            "its tar stream is declared {} bytes, more than these sources can make ({most})",
            entry.tar_size
        ));
    }
    if entry.size > entry.tar_size + entry.tar_size / 64 + (1 << 16) {
        return Some(format!(
            "its blob is declared {} bytes, more than a {}-byte tar stream compresses to",
            entry.size, entry.tar_size
        ));
    }
    None
}

/// The OCI media type of a layer of this codec.
fn layer_media_type(codec: Codec) -> String {
    format!(
        "{}{}",
        crate::oci::MEDIA_TYPE_LAYER,
        codec.media_type_suffix()
    )
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
        media_type: layer_media_type(codec),
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
            chain(e.as_ref())
        )));
    }
}
