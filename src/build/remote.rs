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
use crate::shared_cache::{remote_key, shape_key, Checked, RemoteCache, RemoteEntry};
use std::path::Path;

use super::{place_cached, Error};

/// One layer looked up in the cache repository.
pub(super) struct Job<'a> {
    pub node: &'a LayerNode,
    pub settings: &'a LayerSettings<'a>,
    pub cache: &'a LayerCache,
    pub remote: &'a dyn RemoteCache,
    pub reporter: &'a dyn Reporter,
    /// Whether to fetch the layer's shape entry while the tar stream is
    /// made (a first build of the context here: the local cache cannot
    /// hold the layer, so the fetch is not wasted on a local hit).
    pub early: bool,
}

/// The layer's shape entry, fetched while the tar stream was made, and
/// its blob decompressed and compared with that stream as both were made.
struct Early {
    entry: RemoteEntry,
    /// Why the blob was not fetched (outer), or why it did not decompress
    /// (inner).
    fetched: Result<Result<(), String>, String>,
    /// What the comparison with the tar stream said.
    compared: Option<Result<(), String>>,
    /// What the blob decompresses to, when it was hashed instead of
    /// compared (its first download failed and a retry brought it).
    rehashed: Option<(Digest, u64)>,
}

impl Early {
    /// Why the entry may not be used for the sources' tar stream `tar`
    /// (`None`: it may): the blob was not fetched whole with its digest, or
    /// does not decompress to exactly that stream.
    fn refusal(&self, tar: (&Digest, u64)) -> Option<String> {
        let checked = match &self.fetched {
            Err(why) => return Some(why.clone()),
            Ok(checked) => checked,
        };
        if let Some(unpacked) = &self.rehashed {
            return refusal(&self.entry, tar, checked.clone().map(|()| unpacked.clone()));
        }
        match &self.compared {
            Some(Err(why)) => Some(why.clone()),
            None => Some("its blob was not compared with the tar stream".into()),
            Some(Ok(())) => checked.clone().err(),
        }
    }
}

impl Job<'_> {
    fn warn(&self, what: &str) {
        self.reporter.report(Event::Warning(&format!(
            "layer {}: {what}; it is built instead",
            self.node.name
        )));
    }

    /// Reports a refused shape entry: the tar stream's own entry is still
    /// looked up.
    fn refuse_shape(&self, why: &str) {
        self.reporter.report(Event::Warning(&format!(
            "layer {}: its shape entry in {} is refused: {why}; the entry of its tar stream is looked up instead",
            self.node.name,
            self.remote.name()
        )));
    }

    /// The layer filed under the key of the tar stream its sources make
    /// now: in the local cache (where a hit from the repository is filed),
    /// else in the cache repository (its shape entry, fetched meanwhile,
    /// when it says that tar stream), checked, placed into the output and
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
        let (tar, early) = self.tar_and_early()?;
        let (diff_id, tar_size, stand) = (tar.diff_id, tar.size, tar.stand);
        let key = &remote_key(self.settings.codec.format_id(), &diff_id, tar_size);
        if let Some(hit) = self.local((key, recipe), (&diff_id, tar_size, stand), writer)? {
            return Ok(Some(hit));
        }
        let Some(entry) = self.repo_entry(key, early, (&diff_id, tar_size)) else {
            return Ok(None);
        };
        let mut keys = vec![key.to_string()];
        keys.extend(content.map(str::to_string));
        keys.extend(stand.then(|| recipe.to_string()));
        self.place(entry, &keys, writer)
    }

    /// The sources' tar stream; meanwhile, on another thread, the layer's
    /// shape entry fetched, and its blob decompressed and compared with the
    /// stream as it is made (when `early`).
    fn tar_and_early(&self) -> Result<(layers::TarStream, Option<Early>), Error> {
        if !self.early {
            return Ok((layers::tar_digest(self.node, self.settings, None)?, None));
        }
        let (unpacker, against) = layers::compare::pair();
        std::thread::scope(|s| {
            // Should the thread not start, the unpacker is dropped with
            // it, and the comparison stops at once.
            let early = std::thread::Builder::new()
                .name("imgc-cache-early".into())
                .spawn_scoped(s, move || self.fetch_early(unpacker));
            let tar = layers::tar_digest(self.node, self.settings, Some(against));
            let early = match early {
                Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                Err(_) => None,
            };
            let mut tar = tar?;
            let compared = tar.compared.take();
            Ok((tar, early.map(|e| Early { compared, ..e })))
        })
    }

    /// The layer's shape entry, its blob fetched and decompressed into
    /// `unpacker`; `None` when there is none, or it is refused before any
    /// download.
    fn fetch_early(&self, unpacker: layers::compare::Unpacker) -> Option<Early> {
        let shape = shape_key(self.settings.codec.format_id(), &self.node.key);
        let entry = self.lookup(&shape)?;
        if let Some(why) = implausible(self.node, self.settings.codec, &entry) {
            self.refuse_shape(&why);
            return None;
        }
        let (fetched, rehashed) = self.fetch_into(&entry, unpacker);
        Some(Early {
            entry,
            fetched,
            compared: None,
            rehashed,
        })
    }

    /// Fetches the entry's blob, decompressing it into `unpacker` as it
    /// comes. A blob read a second time (its first download failed and a
    /// retry brought it) cannot be compared any more: it is hashed, and
    /// what it decompresses to comes second.
    fn fetch_into(
        &self,
        entry: &RemoteEntry,
        unpacker: layers::compare::Unpacker,
    ) -> (Result<Checked, String>, Option<(Digest, u64)>) {
        let unpacker = std::cell::RefCell::new(Some(unpacker));
        let rehashed = std::cell::RefCell::new(None);
        let check = |blob: &mut dyn std::io::Read| {
            let taken = unpacker.borrow_mut().take();
            if let Some(unpacker) = taken {
                let unpacked = unpacker.unpack(self.settings.codec, blob, entry.tar_size);
                return unpacked.map(drop).map_err(|e| not_decompressed(entry, e));
            }
            *rehashed.borrow_mut() = Some(self.decompressed(entry, blob)?);
            Ok(())
        };
        let fetched = self
            .remote
            .fetch(entry, &check)
            .map(|(_, checked)| checked)
            .map_err(|e| format!("its blob was not fetched: {}", chain(e.as_ref())));
        (fetched, rehashed.into_inner())
    }

    /// The entry filed under `key`; `None` when there is none, or the
    /// repository failed (said once: it is not asked again).
    fn lookup(&self, key: &str) -> Option<RemoteEntry> {
        match self.remote.lookup(key) {
            Ok(found) => found,
            Err(e) => {
                self.warn(&format!(
                    "cache repository {} not read (nor used again in this build): {}",
                    self.remote.name(),
                    chain(e.as_ref())
                ));
                None
            }
        }
    }

    /// The layer from the local cache under the tar stream's key `key`
    /// (filed under `recipe` too once its files stand).
    fn local(
        &self,
        (key, recipe): (&str, &str),
        (diff_id, tar_size, stand): (&Digest, u64, bool),
        writer: &mut LayoutWriter,
    ) -> Result<Option<(BuiltLayer, bool, CacheHit)>, Error> {
        let found = self.cache.get(key);
        // The key names the tar stream: an entry saying another is not used.
        let Some(found) =
            found.filter(|f| (&f.entry.diff_id, f.entry.tar_size) == (diff_id, tar_size))
        else {
            return Ok(None);
        };
        let entry = found.entry.clone();
        let placed = place_cached(self.node, self.cache, key, found, writer, self.reporter)?;
        let Some((layer, held)) = placed else {
            return Ok(None);
        };
        // Found by its recipe next time, once its files have settled.
        if stand {
            self.cache.alias(recipe, &entry);
        }
        Ok(Some((layer, held, CacheHit::Local)))
    }

    /// The repository's entry for the tar stream `tar`, checked: the shape
    /// entry fetched early when it says that stream (a stale one, of other
    /// content, is passed over quietly), else the one under `key`.
    fn repo_entry(
        &self,
        key: &str,
        early: Option<Early>,
        tar: (&Digest, u64),
    ) -> Option<RemoteEntry> {
        let repo = self.remote.name();
        if let Some(early) = early {
            if (&early.entry.diff_id, early.entry.tar_size) == tar {
                match early.refusal(tar) {
                    None => return Some(early.entry),
                    Some(why) => self.refuse_shape(&why),
                }
            }
        }
        let entry = self.lookup(key)?;
        if let Some(why) = self.check(&entry, tar) {
            self.warn(&format!("the entry in {repo} is refused: {why}"));
            return None;
        }
        Some(entry)
    }

    /// Files a checked entry locally under `keys` and places its blob
    /// (fetched into the local store) into the output.
    fn place(
        &self,
        entry: RemoteEntry,
        keys: &[String],
        writer: &mut LayoutWriter,
    ) -> Result<Option<(BuiltLayer, bool, CacheHit)>, Error> {
        let layer = BuiltLayer {
            digest: entry.digest,
            diff_id: entry.diff_id,
            size: entry.size,
            tar_size: entry.tar_size,
        };
        let desc = Descriptor::new(String::new(), layer.digest.clone(), layer.size);
        let held = writer.holds(&desc);
        // Filed locally first: the store blob's stamp lets it be linked.
        self.file_locally(keys, &layer);
        let good = self.cache.get(&keys[0]).and_then(|f| f.good);
        match writer.place_blob(self.cache.blobs_root(), &desc, good) {
            Ok(_) => {}
            Err(e @ (LayoutError::DigestMismatch { .. } | LayoutError::Io { .. })) => {
                self.cache.drop_entry(&keys[0], &layer.digest);
                self.warn(&format!(
                    "its blob from {} was not placed: {}",
                    self.remote.name(),
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
    fn check(&self, entry: &RemoteEntry, tar: (&Digest, u64)) -> Option<String> {
        if let Some(why) = implausible(self.node, self.settings.codec, entry) {
            return Some(why);
        }
        if (&entry.diff_id, entry.tar_size) != tar {
            return Some(format!(
                "its diff_id {} ({} bytes) is not the sources' tar stream {} ({} bytes)",
                entry.diff_id, entry.tar_size, tar.0, tar.1
            ));
        }
        refusal(entry, tar, self.unpacked(entry))
    }

    /// Fetches the entry's blob (digest checked) and returns what it
    /// decompresses to (at most the entry's tar size and one byte read).
    fn unpacked(&self, entry: &RemoteEntry) -> Result<(Digest, u64), String> {
        let got = std::cell::RefCell::new(None);
        let check = |blob: &mut dyn std::io::Read| {
            *got.borrow_mut() = Some(self.decompressed(entry, blob)?);
            Ok(())
        };
        let (_, checked) = self
            .remote
            .fetch(entry, &check)
            .map_err(|e| format!("its blob was not fetched: {}", chain(e.as_ref())))?;
        checked?;
        got.into_inner()
            .ok_or_else(|| "its blob was not decompressed".to_string())
    }

    /// What the entry's blob, read from `blob`, decompresses to (at most
    /// the entry's tar size and one byte read).
    fn decompressed(
        &self,
        entry: &RemoteEntry,
        blob: &mut dyn std::io::Read,
    ) -> Result<(Digest, u64), String> {
        layers::decompressed_digest(self.settings.codec, blob, entry.tar_size)
            .map_err(|e| not_decompressed(entry, e))
    }

    /// Files a checked entry in the local cache (its blob is in the store).
    fn file_locally(&self, keys: &[String], layer: &BuiltLayer) {
        let blob = crate::base::blob_path(self.cache.blobs_root(), &layer.digest);
        super::file_layer(self.cache, (self.node, keys), layer, &blob, self.reporter);
    }
}

/// The refusal of an entry whose blob does not decompress.
fn not_decompressed(entry: &RemoteEntry, e: std::io::Error) -> String {
    format!("its blob {} does not decompress: {e}", entry.digest)
}

/// Why an entry whose blob decompressed to `unpacked` (or could not) may
/// not be used for the tar stream `tar`.
fn refusal(
    entry: &RemoteEntry,
    tar: (&Digest, u64),
    unpacked: Result<(Digest, u64), String>,
) -> Option<String> {
    match unpacked {
        Ok((d, n)) if (&d, n) == tar => None,
        Ok((d, n)) => Some(format!(
            "its blob {} decompresses to {d} ({n} bytes), not to its diff_id {}",
            entry.digest, tar.0
        )),
        Err(why) => Some(why),
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
    let shape = shape_key(codec.format_id(), &node.key);
    let published = remote
        .publish(&key, &entry, blob)
        .and_then(|()| remote.publish(&shape, &entry, blob));
    if let Err(e) = published {
        reporter.report(Event::Warning(&format!(
            "layer {} was not saved in the cache repository {} (nor will other layers of this build be): {}",
            node.name,
            remote.name(),
            chain(e.as_ref())
        )));
    }
}
