//! Drives one build: plan → layers → images → layout. Builds each distinct
//! layer once, copies base blobs, assembles configs, manifests and the image
//! index, and commits the layout atomically. Reports through a `Reporter`.

use crate::base::{BaseError, BaseImage, MAX_DOCUMENT_SIZE};
use crate::cache::{CacheEntry, LayerCache};
use crate::layers::{self, BuiltLayer, LayerError};
use crate::layout::{GcSkipped, LayoutError, LayoutWriter, Placement};
use crate::oci::{
    self, ContainerConfig, Descriptor, Digest, History, ImageConfig, Index, Manifest, Platform,
};
use crate::plan::{ImagePlan, Plan};
use crate::progress::{CacheHit, Event, Reporter};
use crate::shared_cache::RemoteCache;
use crate::spec::MediaTypesName;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod remote;

/// What [`build`] fails with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building a layer.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// Writing the layout.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Fetching a base's blobs.
    #[error("failed to fetch layer {digest} of base `{reference}`")]
    Base {
        /// The base reference.
        reference: String,
        /// The layer.
        digest: Digest,
        /// The cause.
        #[source]
        source: Box<BaseError>,
    },
    /// A document larger than registries and imgc itself read.
    #[error("the {what} would be {size} bytes, more than the {MAX_DOCUMENT_SIZE} bytes registries and imgc read; nothing was written")]
    DocumentTooLarge {
        /// Which document.
        what: &'static str,
        /// Its size.
        size: u64,
    },
    /// Encoding a document.
    #[error("failed to encode {what}")]
    Encode {
        /// Which document.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// A hint for the user, if there is one.
    pub fn help(&self) -> Option<String> {
        match self {
            Error::Base { source, .. } => source.help(),
            _ => None,
        }
    }
}

/// What a build produced.
#[derive(Clone, Debug)]
pub struct BuildOutput {
    /// The layout folder (`None` once a shallow one was pushed and removed).
    pub layout: Option<PathBuf>,
    /// The image index's descriptor.
    pub index: Descriptor,
    /// The image index itself (entries, annotations, media type).
    pub index_doc: Index,
    /// Each entry's position among all the spec's platforms.
    pub positions: Vec<usize>,
    /// The tags written to `index.json`.
    pub tags: Vec<String>,
    /// Each platform's image: its manifest and its layers.
    pub images: Vec<ImageOutcome>,
    /// Bytes of build-context files read (none on a rebuild whose layers
    /// all came from the cache with their files' fingerprints).
    pub context_bytes_read: u64,
}

/// How to build, besides the plan.
#[derive(Clone, Copy, Debug)]
pub struct BuildOptions<'a> {
    /// Worker threads (the output never depends on it).
    pub threads: usize,
    /// The layer cache, if used.
    pub cache: Option<&'a LayerCache>,
    /// Leave registry bases' layers out of the output (a layout only a push
    /// reads, which mounts or fetches them): nothing of a base is downloaded.
    pub shallow: bool,
    /// The registry-shared layer cache (used with the local one only).
    pub remote: Option<&'a dyn RemoteCache>,
}

/// One platform's image as built.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageOutcome {
    /// The platform, as declared.
    pub platform: String,
    /// The manifest's digest.
    pub digest: Digest,
    /// Its layers, base first.
    pub layers: Vec<LayerOutcome>,
}

/// One layer of a built image.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerOutcome {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// `base` or `built`.
    pub origin: &'static str,
    /// The `[[layers]]` name, for a layer imgc built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether the output layout already held the blob before this build
    /// (nothing was written for it).
    pub reused: bool,
    /// For a built layer taken from a cache: `local` (the layer cache) or
    /// `repo` (the cache repository, checked against the sources).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheHit>,
}

/// Builds `plan` into the OCI layout at `output`.
pub fn build(
    plan: &Plan,
    output: &Path,
    opts: &BuildOptions,
    reporter: &dyn Reporter,
) -> Result<BuildOutput, Error> {
    reporter.report(Event::Planned {
        images: plan.images.len(),
        layers: plan.layers.len(),
    });
    let types = MediaTypes::of(plan);
    let mut writer = LayoutWriter::create(output)?;
    let (built, context_bytes_read) = build_layers(plan, &mut writer, opts, reporter)?;
    let mut children = Vec::new();
    let mut images = Vec::new();
    for image in &plan.images {
        let (desc, layers) = write_image(plan, image, &built, &types, &mut writer, opts, reporter)?;
        images.push(ImageOutcome {
            platform: image.platform.to_string(),
            digest: desc.digest.clone(),
            layers,
        });
        children.push(desc);
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(types.index.to_string()),
        artifact_type: None,
        manifests: children,
        subject: None,
        annotations: if types.docker {
            BTreeMap::new()
        } else {
            plan.index_annotations.clone()
        },
        extra: Default::default(),
    };
    let bytes = encode("image index", &index)?;
    let index_desc = writer.add_blob_bytes(types.index, &bytes)?;
    let refs: Vec<(String, Descriptor)> = plan
        .tags
        .iter()
        .map(|t| (t.clone(), index_desc.clone()))
        .collect();
    report_gc(reporter, writer.commit(&refs)?);
    if !opts.shallow {
        reporter.report(Event::LayoutWritten {
            path: output,
            digest: &index_desc.digest,
        });
    }
    Ok(BuildOutput {
        layout: Some(output.to_path_buf()),
        index: index_desc,
        index_doc: index,
        positions: plan.images.iter().map(|i| i.position).collect(),
        tags: plan.tags.clone(),
        images,
        context_bytes_read,
    })
}

/// The layers of the plan's registry bases, each with the base reference
/// it comes from: what a push of a shallow output mounts or fetches.
pub fn registry_base_layers(plan: &Plan) -> BTreeMap<Digest, String> {
    let mut out = BTreeMap::new();
    for image in plan.images.iter().filter(|i| i.base.remote.is_some()) {
        for l in &image.base.layers {
            out.entry(l.digest.clone())
                .or_insert_with(|| image.base.reference.clone());
        }
    }
    out
}

/// The media types of what a build writes: OCI or Docker's.
struct MediaTypes {
    docker: bool,
    layer: String,
    config: &'static str,
    manifest: &'static str,
    index: &'static str,
}

impl MediaTypes {
    fn of(plan: &Plan) -> MediaTypes {
        if plan.media_types == MediaTypesName::Docker {
            MediaTypes {
                docker: true,
                layer: oci::MEDIA_TYPE_DOCKER_LAYER_GZIP.to_string(),
                config: oci::MEDIA_TYPE_DOCKER_CONFIG,
                manifest: oci::MEDIA_TYPE_DOCKER_MANIFEST,
                index: oci::MEDIA_TYPE_DOCKER_LIST,
            }
        } else {
            MediaTypes {
                docker: false,
                layer: format!(
                    "{}{}",
                    oci::MEDIA_TYPE_LAYER,
                    plan.codec.media_type_suffix()
                ),
                config: oci::MEDIA_TYPE_CONFIG,
                manifest: oci::MEDIA_TYPE_MANIFEST,
                index: oci::MEDIA_TYPE_INDEX,
            }
        }
    }
}

/// The layer cache and the context's fingerprints, when the cache is used,
/// and the registry-shared cache, when there is one.
struct CacheUse<'a> {
    cache: &'a LayerCache,
    prints: crate::fingerprint::Fingerprints,
    remote: Option<&'a dyn RemoteCache>,
}

/// A layer as the build has it: built or taken from a cache, and whether
/// the output held its blob before this build.
#[derive(Clone, Debug)]
struct Made {
    layer: BuiltLayer,
    held: bool,
    /// Which cache it was taken from, if any.
    cache: Option<CacheHit>,
}

/// Builds every distinct layer of the plan into the writer's staging;
/// returns them, and the bytes of context files read.
fn build_layers(
    plan: &Plan,
    writer: &mut LayoutWriter,
    opts: &BuildOptions,
    reporter: &dyn Reporter,
) -> Result<(Vec<Made>, u64), Error> {
    let context =
        crate::fsx::ContextDir::open(&plan.context).map_err(|source| LayerError::Read {
            layer: "(context)".to_string(),
            path: plan.context.clone(),
            source,
        })?;
    let cache = opts.cache.map(|cache| CacheUse {
        cache,
        prints: cache.fingerprints(&plan.context),
        remote: opts.remote,
    });
    // A first build of the context hashes nothing (see `cached_layer`).
    let settings = layers::LayerSettings {
        context: &context,
        epoch: plan.epoch,
        codec: plan.codec,
        threads: opts.threads,
        hash_files: cache.as_ref().is_some_and(|c| !c.prints.is_new()),
    };
    let mut built = Vec::with_capacity(plan.layers.len());
    for node in &plan.layers {
        reporter.report(Event::LayerStarted {
            name: &node.name,
            platforms: &node.platforms,
            content_bytes: node.content_bytes(),
        });
        let made = make_layer(node, &settings, cache.as_ref(), writer, reporter)?;
        reporter.report(Event::LayerFinished {
            name: &node.name,
            digest: &made.layer.digest,
            size: made.layer.size,
            tar_size: made.layer.tar_size,
            cache: made.cache,
        });
        built.push(made);
    }
    if let Some(Err(e)) = cache.as_ref().map(|c| c.prints.save()) {
        reporter.report(Event::Warning(&format!(
            "the fingerprints of the build context were not saved: {e}"
        )));
    }
    Ok((built, context.bytes_read()))
}

/// One layer: from the local cache, else from the cache repository
/// (checked against the sources), else built (and filed in both).
fn make_layer(
    node: &crate::plan::LayerNode,
    settings: &layers::LayerSettings<'_>,
    cache: Option<&CacheUse>,
    writer: &mut LayoutWriter,
    reporter: &dyn Reporter,
) -> Result<Made, Error> {
    let Some(c) = cache else {
        let (layer, held) = fresh_layer(node, settings, None, writer, reporter)?;
        return Ok(Made {
            layer,
            held,
            cache: None,
        });
    };
    let recipe = crate::cache::recipe_key(node);
    // Another spec built by this process may be making the same layer.
    let _claim = c.cache.claim(&recipe);
    let key = match cached_layer(node, settings, (c, &recipe), writer, reporter)? {
        Cached::Hit(layer, held) => {
            return Ok(Made {
                layer,
                held,
                cache: Some(CacheHit::Local),
            })
        }
        Cached::Miss(key) => key,
    };
    if let Some(remote) = c.remote {
        let job = remote::Job {
            node,
            settings,
            cache: c.cache,
            remote,
            reporter,
            early: c.prints.is_new(),
        };
        if let Some((layer, held, hit)) = job.take((key.as_deref(), &recipe), writer)? {
            return Ok(Made {
                layer,
                held,
                cache: Some(hit),
            });
        }
    }
    let used = (c, recipe);
    let (layer, held) = fresh_layer(node, settings, Some(&used), writer, reporter)?;
    if let Some(remote) = c.remote {
        let blob = writer.staged_path(&layer.digest);
        remote::publish(remote, node, &layer, &blob, settings.codec, reporter);
    }
    Ok(Made {
        layer,
        held,
        cache: None,
    })
}

/// Builds a layer into the output's staging (and remembers it, and the
/// fingerprints of the files it read, in the cache); returns it and
/// whether the output held its blob already.
fn fresh_layer(
    node: &crate::plan::LayerNode,
    settings: &layers::LayerSettings<'_>,
    cache: Option<&(&CacheUse, String)>,
    writer: &mut LayoutWriter,
    reporter: &dyn Reporter,
) -> Result<(BuiltLayer, bool), Error> {
    let (file, tmp) = writer.temp_file()?;
    let mut progress = |tar_bytes| {
        reporter.report(Event::LayerProgress {
            name: &node.name,
            tar_bytes,
        })
    };
    let settings = layers::LayerSettings {
        hash_files: settings.hash_files
            || (cache.is_some() && crate::cache::any_racy(node, crate::fingerprint::now_ns())),
        ..*settings
    };
    let (layer, reads) = layers::build_layer(node, &settings, file, &mut progress)?;
    let desc = Descriptor::new(String::new(), layer.digest.clone(), layer.size);
    let held = writer.holds(&desc);
    writer.add_blob_file(&tmp, &layer.digest)?;
    if let Some((c, recipe)) = cache {
        let blob = writer.staged_path(&layer.digest);
        remember_layer((node, recipe), c, &layer, &reads, &blob, reporter);
    }
    Ok((layer, held))
}

/// Files a freshly built layer in the cache: under its content key when
/// its files were hashed, and under its recipe key when every file stands
/// for its bytes; records the files' fingerprints.
fn remember_layer(
    (node, recipe): (&crate::plan::LayerNode, &str),
    c: &CacheUse,
    layer: &BuiltLayer,
    reads: &layers::Reads,
    blob: &Path,
    reporter: &dyn Reporter,
) {
    let mut keys = Vec::new();
    for read in &reads.files {
        crate::cache::remember(&c.prints, read);
    }
    // Unhashed reads give no content key (they are not even kept).
    let digests: Option<Vec<&Digest>> = reads
        .hashed
        .then(|| reads.files.iter().map(|f| f.digest.as_ref()).collect())
        .flatten();
    keys.extend(digests.map(|d| crate::cache::content_key(node, d)));
    if reads.all_stand {
        keys.push(recipe.to_string());
    }
    file_layer(c.cache, (node, &keys), layer, blob, reporter);
}

/// Files a layer (its blob at `blob`) in the local cache under `keys`; a
/// failure is a warning.
fn file_layer(
    cache: &LayerCache,
    (node, keys): (&crate::plan::LayerNode, &[String]),
    layer: &BuiltLayer,
    blob: &Path,
    reporter: &dyn Reporter,
) {
    if keys.is_empty() {
        return;
    }
    if let Err(e) = cache.put(keys, &CacheEntry::of(layer), blob) {
        reporter.report(Event::Warning(&format!(
            "layer {} was not saved in the layer cache: {e}",
            node.name
        )));
    }
}

/// What the local cache answered: a layer, or a miss with the content key
/// when it was computed.
enum Cached {
    Hit(BuiltLayer, bool),
    Miss(Option<String>),
}

/// A layer from the cache, found by its recipe key (nothing read), else by
/// its content key (the files' digests from the fingerprints, or read);
/// its blob is linked or kept when its stamp is the recorded one, else
/// copied with its digest checked. A damaged blob is dropped (`None`:
/// build it).
fn cached_layer(
    node: &crate::plan::LayerNode,
    settings: &layers::LayerSettings<'_>,
    (c, recipe): (&CacheUse, &str),
    writer: &mut LayoutWriter,
    reporter: &dyn Reporter,
) -> Result<Cached, Error> {
    let hit = |placed: Option<(BuiltLayer, bool)>| match placed {
        Some((layer, held)) => Cached::Hit(layer, held),
        None => Cached::Miss(None),
    };
    if let Some(found) = c.cache.get(recipe) {
        return Ok(hit(place_cached(
            node, c.cache, recipe, found, writer, reporter,
        )?));
    }
    // A first build of the context: nothing of it can be cached under a
    // content key, and hashing before packing would read every file twice
    // (a cache repository is looked up by the tar stream's key instead).
    if c.prints.is_new() {
        return Ok(Cached::Miss(None));
    }
    let (digests, stand) = crate::cache::file_digests(node, &c.prints, settings)?;
    let key = crate::cache::content_key(node, &digests);
    let Some(found) = c.cache.get(&key) else {
        return Ok(Cached::Miss(Some(key)));
    };
    let entry = found.entry.clone();
    let placed = place_cached(node, c.cache, &key, found, writer, reporter)?;
    if placed.is_some() && stand {
        c.cache.alias(recipe, &entry);
    }
    Ok(hit(placed))
}

/// Puts a cache entry's blob into the output (see `cached_layer`).
fn place_cached(
    node: &crate::plan::LayerNode,
    cache: &LayerCache,
    key: &str,
    found: crate::cache::Found,
    writer: &mut LayoutWriter,
    reporter: &dyn Reporter,
) -> Result<Option<(BuiltLayer, bool)>, Error> {
    let entry = &found.entry;
    let desc = Descriptor::new(String::new(), entry.digest.clone(), entry.size);
    let held = writer.holds(&desc);
    let placed = match writer.place_blob(cache.blobs_root(), &desc, found.good) {
        Ok(placed) => placed,
        Err(LayoutError::DigestMismatch { .. }) | Err(LayoutError::Io { .. }) => {
            cache.drop_entry(key, &entry.digest);
            reporter.report(Event::Warning(&format!(
                "the cached blob {} of layer {} is damaged; it was dropped and the layer is built again",
                entry.digest, node.name
            )));
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    cache.used(&found, found.good.is_some() || placed == Placement::Copied);
    let layer = BuiltLayer {
        digest: entry.digest.clone(),
        diff_id: entry.diff_id.clone(),
        size: entry.size,
        tar_size: entry.tar_size,
    };
    Ok(Some((layer, held)))
}

/// Writes one platform's config and manifest (copying its base layers);
/// returns the manifest's descriptor, with its platform.
fn write_image(
    plan: &Plan,
    image: &ImagePlan,
    built: &[Made],
    types: &MediaTypes,
    writer: &mut LayoutWriter,
    opts: &BuildOptions,
    reporter: &dyn Reporter,
) -> Result<(Descriptor, Vec<LayerOutcome>), Error> {
    let layers = image_layers(plan, image, built, types);
    let mut outcomes = Vec::new();
    for layer in &layers {
        let reused = layer.place(writer, opts.shallow, reporter)?;
        outcomes.push(LayerOutcome {
            digest: layer.desc.digest.clone(),
            size: layer.desc.size,
            origin: if layer.base.is_some() {
                "base"
            } else {
                "built"
            },
            name: layer.built.as_ref().map(|(n, _)| n.to_string()),
            reused,
            cache: layer.cache,
        });
    }
    let diff_ids: Vec<(&str, Digest)> = layers.iter().filter_map(|l| l.built.clone()).collect();
    let layer_descs = layers.into_iter().map(|l| l.desc).collect();
    let config = assemble_config(&image.base, image, &diff_ids, plan.epoch);
    let config_desc = writer.add_blob_bytes(types.config, &encode("image config", &config)?)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(types.manifest.to_string()),
        artifact_type: None,
        config: config_desc,
        layers: layer_descs,
        subject: None,
        annotations: manifest_annotations(image, types.docker),
    };
    let bytes = encode("image manifest", &manifest)?;
    let mut desc = writer.add_blob_bytes(types.manifest, &bytes)?;
    desc.platform = Some(output_platform(&image.platform));
    Ok((desc, outcomes))
}

/// One layer of an image as the build assembles it, base or built alike:
/// its descriptor in the output, and where its bytes come from.
struct ImageLayer<'a> {
    /// The descriptor the manifest lists (media type in the output's family).
    desc: Descriptor,
    /// A layer imgc built: its name and diff_id (already in the output).
    built: Option<(&'a str, Digest)>,
    /// A base layer: the base, and the layout its blob is copied from.
    base: Option<(&'a BaseImage, &'a Path, &'a Descriptor)>,
    /// A built layer: whether the output held its blob before this build.
    held: bool,
    /// A built layer taken from a cache: which.
    cache: Option<CacheHit>,
}

impl ImageLayer<'_> {
    /// Makes sure the layer's blob is in the output (a built layer's is
    /// there since it was built; a registry base's is left out of a shallow
    /// output); returns whether the output held it before this build.
    fn place(
        &self,
        writer: &mut LayoutWriter,
        shallow: bool,
        reporter: &dyn Reporter,
    ) -> Result<bool, Error> {
        let Some((base, dir, desc)) = self.base else {
            return Ok(self.held);
        };
        if shallow && base.remote.is_some() {
            return Ok(false);
        }
        let copied = copy_base_layer(writer, dir, base, desc)?;
        if copied {
            reporter.report(Event::BaseBlobCopied {
                digest: &desc.digest,
                size: desc.size,
            });
        }
        Ok(!copied)
    }
}

/// An image's layers in order: its base's, then the ones imgc built.
fn image_layers<'a>(
    plan: &'a Plan,
    image: &'a ImagePlan,
    built: &[Made],
    types: &MediaTypes,
) -> Vec<ImageLayer<'a>> {
    let base = &image.base;
    let from_base = base.layout_dir.iter().flat_map(|dir| {
        base.layers.iter().map(move |desc| {
            let mut out = desc.clone();
            out.media_type = convert_layer_media_type(&desc.media_type, types.docker);
            ImageLayer {
                desc: out,
                built: None,
                base: Some((base, dir.as_path(), desc)),
                held: false,
                cache: None,
            }
        })
    });
    let own = image.layers.iter().map(|&i| {
        let Made {
            layer: l,
            held,
            cache,
        } = &built[i];
        ImageLayer {
            desc: Descriptor::new(types.layer.clone(), l.digest.clone(), l.size),
            built: Some((plan.layers[i].name.as_str(), l.diff_id.clone())),
            base: None,
            held: *held,
            cache: *cache,
        }
    });
    from_base.chain(own).collect()
}

/// A manifest's annotations: the spec's, and for a registry base its name
/// and digest (so that a push can mount its blobs); none for Docker's types.
fn manifest_annotations(image: &ImagePlan, docker: bool) -> BTreeMap<String, String> {
    if docker {
        return BTreeMap::new();
    }
    let mut annotations = image.annotations.clone();
    if let (Some(_), Some(base_manifest)) = (&image.base.remote, &image.base.manifest) {
        annotations
            .entry(oci::ANNOTATION_BASE_NAME.to_string())
            .or_insert_with(|| image.base.reference.clone());
        annotations
            .entry(oci::ANNOTATION_BASE_DIGEST.to_string())
            .or_insert_with(|| base_manifest.digest.to_string());
    }
    annotations
}

/// Tells what garbage collection did, or why it did nothing.
fn report_gc(reporter: &dyn Reporter, outcome: Result<usize, GcSkipped>) {
    match outcome {
        Ok(0) => {}
        Ok(count) => reporter.report(Event::BlobsRemoved { count }),
        Err(GcSkipped::Symlinked(path)) => reporter.report(Event::Warning(&format!(
            "no unused blob was removed: `{path}` is a symbolic link"
        ))),
        Err(GcSkipped::Unreadable(digest)) => reporter.report(Event::Warning(&format!(
            "no unused blob was removed: document {digest}, which a tag reaches, cannot be read"
        ))),
    }
}

/// Copies a base layer into the output; returns whether bytes were copied.
/// A registry base's layer is downloaded only when the output lacks it; a
/// store copy (or an output copy) that fails verification is fetched again.
fn copy_base_layer(
    writer: &mut LayoutWriter,
    dir: &Path,
    base: &BaseImage,
    desc: &Descriptor,
) -> Result<bool, Error> {
    let base_err = |source| Error::Base {
        reference: base.reference.clone(),
        digest: desc.digest.clone(),
        source: Box::new(source),
    };
    let Some(remote) = &base.remote else {
        return Ok(writer.copy_blob(dir, desc)?);
    };
    if !writer.holds(desc) {
        remote.fetch(&base.reference, desc).map_err(base_err)?;
    }
    // Only a fault of the store's copy (missing, unreadable, not matching)
    // is mended by fetching it again; an error writing the output is not.
    let source = crate::base::blob_path(dir, &desc.digest);
    match writer.copy_blob(dir, desc) {
        Err(LayoutError::DigestMismatch { .. }) => {}
        Err(LayoutError::Io { ref path, .. }) if *path == source => {}
        other => return Ok(other?),
    }
    remote.refetch(&base.reference, desc).map_err(base_err)?;
    Ok(writer.copy_blob(dir, desc)?)
}

/// A document as canonical JSON, refused when larger than readers take
/// (imgc's own push and pull read at most [`MAX_DOCUMENT_SIZE`]).
fn encode<T: serde::Serialize>(what: &'static str, doc: &T) -> Result<Vec<u8>, Error> {
    let bytes = oci::to_canonical_json(doc).map_err(|source| Error::Encode { what, source })?;
    if bytes.len() as u64 > MAX_DOCUMENT_SIZE {
        return Err(Error::DocumentTooLarge {
            what,
            size: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// The platform object written into the index: the declared platform.
fn output_platform(p: &Platform) -> Platform {
    let (os, arch, variant) = p.normalized();
    let variant = p.variant.clone().or(if variant.is_empty() {
        None
    } else {
        Some(variant)
    });
    let mut out = Platform::new(&os, &arch, variant.as_deref());
    out.os_version = p.os_version.clone();
    out
}

fn convert_layer_media_type(mt: &str, docker: bool) -> String {
    let table = [
        (
            oci::MEDIA_TYPE_DOCKER_LAYER_GZIP,
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar",
            oci::MEDIA_TYPE_LAYER,
        ),
        (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        ),
    ];
    for (d, o) in table {
        if docker && mt == o {
            return d.to_string();
        }
        if !docker && mt == d {
            return o.to_string();
        }
    }
    mt.to_string()
}

/// The base config with the spec's config merged on, the build epoch as
/// every time, and one history entry per added layer.
fn assemble_config(
    base: &BaseImage,
    image: &ImagePlan,
    layers: &[(&str, Digest)],
    epoch: u64,
) -> ImageConfig {
    let created = oci::rfc3339(epoch);
    let mut config = base.config.clone();
    let p = output_platform(&image.platform);
    config.created = Some(created.clone());
    config.architecture = p.architecture;
    config.os = p.os;
    config.variant = p.variant;
    if p.os_version.is_some() {
        config.os_version = p.os_version;
    }
    config.rootfs.kind = "layers".to_string();
    let mut cc = config.config.take().unwrap_or_default();
    merge_container_config(&mut cc, &image.config);
    config.config = Some(cc);
    for (name, diff_id) in layers {
        config.rootfs.diff_ids.push(diff_id.clone());
        config.history.push(History {
            created: Some(created.clone()),
            created_by: Some(format!("imgc build: layer {name}")),
            author: None,
            comment: Some("imgc".to_string()),
            empty_layer: None,
        });
    }
    config
}

fn merge_container_config(cc: &mut ContainerConfig, spec: &crate::spec::ConfigSection) {
    let crate::spec::ConfigSection {
        entrypoint,
        cmd,
        env,
        user,
        workdir,
        ports,
        volumes,
        labels,
        stop_signal,
    } = spec;
    if let Some(e) = entrypoint {
        cc.entrypoint = Some(e.clone());
        // Docker's rule: a new entrypoint without a cmd clears the base's cmd.
        if cmd.is_none() {
            cc.cmd = None;
        }
    }
    if let Some(c) = cmd {
        cc.cmd = Some(c.clone());
    }
    if !env.is_empty() {
        let mut list: Vec<String> = cc.env.take().unwrap_or_default();
        for (k, v) in env {
            let item = format!("{k}={v}");
            match list
                .iter()
                .position(|e| e.split('=').next() == Some(k.as_str()))
            {
                Some(i) => list[i] = item,
                None => list.push(item),
            }
        }
        cc.env = Some(list);
    }
    if let Some(u) = user {
        cc.user = Some(u.clone());
    }
    if let Some(w) = workdir {
        cc.working_dir = Some(w.clone());
    }
    if let Some(ports) = ports {
        cc.exposed_ports = Some(
            ports
                .iter()
                .map(|p| (p.0.clone(), serde_json::json!({})))
                .collect(),
        );
    }
    if let Some(v) = volumes {
        cc.volumes = Some(
            v.iter()
                .map(|p| (p.clone(), serde_json::json!({})))
                .collect(),
        );
    }
    if !labels.is_empty() {
        let mut l = cc.labels.take().unwrap_or_default();
        l.extend(labels.clone());
        cc.labels = Some(l);
    }
    if let Some(s) = stop_signal {
        cc.stop_signal = Some(s.clone());
    }
}

/// The number of worker threads to use when none is given.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
