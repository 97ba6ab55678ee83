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
use crate::oci::{Codec, Descriptor, Digest};
use crate::plan::LayerNode;
use crate::progress::{error_chain as chain, CacheHit, Event, Reporter};
use crate::shared_cache::{remote_key, RemoteCache, RemoteEntry};
use std::path::Path;

use super::{place_cached, Error};

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

    /// The layer filed under the key of the tar stream its sources make
    /// now: in the local cache (where a hit from the repository is filed),
    /// else in the cache repository, checked, placed into the output and
    /// filed locally (also under the content key `content` when known, and
    /// under `recipe` when every file stands for its bytes); `None` to
    /// build it (at once when the repository is no longer asked). Says
    /// which cache it came from.
    pub fn take(
        &self,
        (content, recipe): (Option<&str>, &str),
        writer: &mut LayoutWriter,
    ) -> Result<Option<(BuiltLayer, bool, CacheHit)>, Error> {
        if !self.remote.in_use() {
            return Ok(None);
        }
        let (diff_id, tar_size, stand) = layers::tar_digest(self.node, self.settings)?;
        let key = &remote_key(self.settings.codec.format_id(), &diff_id, tar_size);
        let local = self.cache.get(key);
        // The key names the tar stream: an entry saying another is not used.
        let local = local.filter(|f| (&f.entry.diff_id, f.entry.tar_size) == (&diff_id, tar_size));
        if let Some(found) = local {
            let entry = found.entry.clone();
            let placed = place_cached(self.node, self.cache, key, found, writer, self.reporter)?;
            if let Some((layer, held)) = placed {
                // Found by its recipe next time, once its files have settled.
                if stand {
                    self.cache.alias(recipe, &entry);
                }
                return Ok(Some((layer, held, CacheHit::Local)));
            }
        }
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
        if let Some(why) = self.check(&entry, (&diff_id, tar_size)) {
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
        let mut keys = vec![key.to_string()];
        keys.extend(content.map(str::to_string));
        keys.extend(stand.then(|| recipe.to_string()));
        self.file_locally(&keys, &layer);
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
        Ok(Some((layer, held, CacheHit::Repo)))
    }

    /// Why the entry may not be used (`None`: it may): it does not say
    /// the sources' tar stream (`tar`: digest and size), checked before any
    /// download, or its blob does not decompress to that.
    fn check(&self, entry: &RemoteEntry, (diff_id, tar_size): (&Digest, u64)) -> Option<String> {
        if let Some(why) = implausible(self.node, self.settings.codec, entry) {
            return Some(why);
        }
        if (&entry.diff_id, entry.tar_size) != (diff_id, tar_size) {
            return Some(format!(
                "its diff_id {} ({} bytes) is not the sources' tar stream {diff_id} ({tar_size} bytes)",
                entry.diff_id, entry.tar_size
            ));
        }
        match self.unpacked(entry) {
            Ok((d, n)) if &d == diff_id && n == tar_size => None,
            Ok((d, n)) => Some(format!(
                "its blob {} decompresses to {d} ({n} bytes), not to its diff_id {diff_id}",
                entry.digest
            )),
            Err(why) => Some(why),
        }
    }

    /// Fetches the entry's blob (digest checked) and returns what it
    /// decompresses to (at most the entry's tar size and one byte read).
    fn unpacked(&self, entry: &RemoteEntry) -> Result<(Digest, u64), String> {
        let path = self
            .remote
            .fetch(entry)
            .map_err(|e| format!("its blob was not fetched: {}", chain(e.as_ref())))?;
        crate::fsx::open_regular(&path, crate::fsx::Links::Refuse)
            .and_then(|f| layers::decompressed_digest(self.settings.codec, f, entry.tar_size))
            .map_err(|e| format!("its blob {} does not decompress: {e}", entry.digest))
    }

    /// Files a checked entry in the local cache (its blob is in the store).
    fn file_locally(&self, keys: &[String], layer: &BuiltLayer) {
        let blob = crate::base::blob_path(self.cache.blobs_root(), &layer.digest);
        super::file_layer(self.cache, (self.node, keys), layer, &blob, self.reporter);
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

/// Files a built layer in the cache repository under the key of its tar
/// stream; a failure is a warning.
pub(super) fn publish(
    remote: &dyn RemoteCache,
    node: &LayerNode,
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
    let key = remote_key(codec.format_id(), &layer.diff_id, layer.tar_size);
    if let Err(e) = remote.publish(&key, &entry, blob) {
        reporter.report(Event::Warning(&format!(
            "layer {} was not saved in the cache repository {} (nor will other layers of this build be): {}",
            node.name,
            remote.name(),
            chain(e.as_ref())
        )));
    }
}
