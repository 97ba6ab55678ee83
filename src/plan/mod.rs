//! The planner: spec + build context + resolved bases → `Plan`, the layer
//! graph of a build. Everything that decides what the output holds happens
//! here, once: template rendering, glob expansion, modes and owners, the
//! build epoch, per-platform overrides, and layer identity (a layer that
//! renders the same for several platforms is one node, built once).
//!
//! It does no I/O of its own: the build context and the bases come through
//! the [`sources`] seam, so that it can be tested in memory.

mod entries;
mod key;
pub mod sources;
pub mod template;

use crate::base::{Base, BaseError, BaseImage};
use crate::oci::{self, Codec, Platform};
use crate::spec::{
    CompressionName, ConfigSection, LayerSpec, Location, MediaTypesName, PlatformOverride, Sp,
    SpecFile,
};
use entries::{DirItem, FileItem, LayerDefaults, LinkItem};
use sources::Sources;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use template::{TemplateContext, TemplateFailure};

/// What the caller decides besides the spec.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Only these platforms (each must be one of the spec's).
    pub platforms: Vec<Platform>,
    /// `--var` overrides.
    pub vars: BTreeMap<String, String>,
    /// `SOURCE_DATE_EPOCH`, read by the caller.
    pub source_date_epoch: Option<u64>,
    /// Tags replacing `[image].tags` (`--tag`); each is checked.
    pub tags: Vec<String>,
}

/// The layer graph of one build.
#[derive(Debug)]
pub struct Plan {
    /// The build context (canonical): context files are opened beneath it.
    pub context: PathBuf,
    /// The build epoch: every mtime and `created`.
    pub epoch: u64,
    /// Layer compression.
    pub codec: Codec,
    /// Media type family.
    pub media_types: MediaTypesName,
    /// `[image].name`.
    pub name: Option<String>,
    /// `[image].cache_repo`: the registry-shared layer cache.
    pub cache_repo: Option<String>,
    /// Rendered tags (at least one).
    pub tags: Vec<String>,
    /// Annotations of the image index.
    pub index_annotations: BTreeMap<String, String>,
    /// Distinct layers, in first-use order.
    pub layers: Vec<LayerNode>,
    /// One image per platform.
    pub images: Vec<ImagePlan>,
    /// All the spec's platforms, in index order (also when `--platform`
    /// picks a few): what a complete set of CI shards covers.
    pub platforms: Vec<String>,
    /// The sha256 of the spec file's bytes: shards from other specs are
    /// told apart by it.
    pub spec_digest: oci::Digest,
}

impl LayerNode {
    /// The bytes of file content the layer holds.
    pub fn content_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File { size, .. } => *size,
                _ => 0,
            })
            .sum()
    }
}

/// One platform's image.
#[derive(Debug)]
pub struct ImagePlan {
    /// The platform, as declared.
    pub platform: Platform,
    /// Its position among all the spec's platforms (also when `--platform`
    /// picks a few): the order of the index, so shards can be joined.
    pub position: usize,
    /// The base for this platform.
    pub base: BaseImage,
    /// Indices into `Plan::layers`, in order.
    pub layers: Vec<usize>,
    /// The config to merge onto the base's.
    pub config: ConfigSection,
    /// Manifest annotations.
    pub annotations: BTreeMap<String, String>,
}

/// One layer to build.
#[derive(Debug)]
pub struct LayerNode {
    /// Identity of the layer's recipe within a build: entries, metadata,
    /// sources (context-relative paths, inline content hashes), epoch and
    /// encoder. Equal keys mean equal blobs.
    pub key: String,
    /// The `name` of the `[[layers]]` table.
    pub name: String,
    /// Sorted entries (parents before children).
    pub entries: Vec<Entry>,
    /// Platforms using this layer, as strings.
    pub platforms: Vec<String>,
}

/// One entry of a layer's tar.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Path in the image without the leading `/` (`app/server`).
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission and special bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

impl Entry {
    /// The name stored in the tar: the path, with a final `/` for folders.
    pub fn tar_name(&self) -> String {
        match self.kind {
            EntryKind::Dir => format!("{}/", self.path),
            _ => self.path.clone(),
        }
    }
}

/// The kind of an entry.
#[derive(Clone, Debug)]
pub enum EntryKind {
    /// A regular file.
    File {
        /// Where its bytes come from.
        source: FileSource,
        /// Its size when planned; a different size at build time is an error.
        size: u64,
    },
    /// A folder.
    Dir,
    /// A symbolic link.
    Symlink {
        /// The target, verbatim.
        target: String,
    },
}

/// Where a file's bytes come from.
#[derive(Clone, Debug)]
pub enum FileSource {
    /// A file of the build context (its path on disk: the plan's context
    /// joined with `rel`, made only for messages).
    Context {
        /// Its path relative to the context.
        rel: String,
        /// Its device and inode when planned: building opens it beneath the
        /// context and refuses any other file found there.
        id: (u64, u64),
        /// Its change stamp when planned: a fingerprint of the same stamp
        /// gives its content digest without reading it.
        stamp: sources::Stamp,
    },
    /// Inline `content`.
    Inline(Vec<u8>),
}

/// Errors while planning. Each names the offending spec item.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum PlanError {
    #[error("undefined template variable `{name}` in {what}")]
    UndefinedVariable {
        name: String,
        what: String,
        suggestion: Option<String>,
        location: Option<Box<Location>>,
    },
    #[error("invalid template in {what}: {message}")]
    Template {
        what: String,
        message: String,
        location: Option<Box<Location>>,
    },
    #[error("the template in {what} was stopped: {message}")]
    TemplateLimit {
        what: String,
        message: String,
        location: Option<Box<Location>>,
    },
    #[error("the build epoch {epoch} (from {from}) is after 9999-12-31T23:59:59Z ({MAX_EPOCH}), which image readers cannot parse")]
    EpochTooLate { epoch: u64, from: &'static str },
    #[error("the image for {platform} would have {count} layers ({base} from the base); at most {MAX_LAYERS} are allowed")]
    TooManyLayers {
        platform: String,
        count: usize,
        base: usize,
    },
    #[error("`src` `{src}` is outside the build context (absolute, or uses `..`)")]
    SrcOutsideContext {
        src: String,
        location: Box<Location>,
    },
    #[error("`src` `{src}` passes through the symlink `{link}`; imgc never follows symlinks in the build context")]
    SrcThroughSymlink {
        src: String,
        link: String,
        location: Box<Location>,
    },
    #[error("`src` `{src}` does not exist in the build context")]
    SrcNotFound {
        src: String,
        location: Box<Location>,
    },
    #[error("glob `{src}` matched nothing in the build context")]
    GlobMatchedNothing {
        src: String,
        location: Box<Location>,
    },
    #[error("glob `{src}` needs a folder `dst` ending in `/`, not `{dst}`")]
    GlobNeedsFolder {
        src: String,
        dst: String,
        location: Box<Location>,
    },
    #[error("invalid glob `{glob}`: {message}")]
    BadGlob {
        glob: String,
        message: String,
        location: Box<Location>,
    },
    #[error("a file entry has both `src` and `content`; give one")]
    SrcAndContent { location: Box<Location> },
    #[error("a file entry needs `src` or `content`")]
    NoSrcNorContent { location: Box<Location> },
    #[error("invalid image path `{path}`: {reason}")]
    InvalidImagePath {
        path: String,
        reason: &'static str,
        location: Box<Location>,
    },
    #[error("two entries of the layer write `{path}` (the other one is at {first})")]
    DuplicateDst {
        path: String,
        first: Box<Location>,
        location: Box<Location>,
    },
    #[error("`{path}` in the build context is {kind}, which images cannot hold")]
    UnsupportedFileType {
        path: String,
        kind: &'static str,
        location: Box<Location>,
    },
    #[error("`{path}` in the build context is selected, but its name is not valid UTF-8, which image paths must be")]
    NotUtf8 {
        path: String,
        location: Box<Location>,
    },
    #[error(
        "`{path}` is below `{above}`, which is {kind} in the same layer (at {first}), not a folder"
    )]
    EntryBelowNonFolder {
        path: String,
        above: String,
        kind: &'static str,
        first: Box<Location>,
        location: Box<Location>,
    },
    #[error("failed to read `{path}` in the build context")]
    ReadContext {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("build context `{path}` is not a readable folder")]
    Context {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to resolve base `{reference}`")]
    Base {
        reference: String,
        #[source]
        source: BaseError,
        location: Option<Box<Location>>,
    },
    #[error("platform {platform} is not one of the spec's platforms ({available})")]
    PlatformNotInSpec { platform: String, available: String },
    #[error("platform {platform} is listed twice")]
    DuplicatePlatform {
        platform: String,
        location: Option<Box<Location>>,
    },
    #[error(
        "`[platform.\"{first}\"]` and `[platform.\"{second}\"]` name the same platform; merge them"
    )]
    DuplicateOverride { first: String, second: String },
    #[error("no platforms to build: the base is `scratch`, so `[image].platforms` must list them")]
    NoPlatforms,
    #[error(
        "invalid tag `{tag}`: tags are 1 to 128 of `A-Za-z0-9_.-`, not starting with `.` or `-`"
    )]
    InvalidTag {
        tag: String,
        location: Option<Box<Location>>,
    },
    #[error("`compression = \"{compression}\"` needs OCI media types; `media_types = \"docker\"` supports only gzip")]
    DockerCompression { compression: &'static str },
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidConfig {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("`[platform.\"{platform}\"]` is not one of the spec's platforms ({available})")]
    OverrideNotBuilt {
        platform: String,
        available: String,
        location: Option<Box<Location>>,
    },
}

impl PlanError {
    /// Where in the spec the error is, if known.
    pub fn location(&self) -> Option<&Location> {
        use PlanError::*;
        match self {
            UndefinedVariable { location, .. }
            | Template { location, .. }
            | TemplateLimit { location, .. }
            | Base { location, .. }
            | DuplicatePlatform { location, .. }
            | InvalidTag { location, .. }
            | OverrideNotBuilt { location, .. } => location.as_deref(),
            SrcOutsideContext { location, .. }
            | SrcThroughSymlink { location, .. }
            | SrcNotFound { location, .. }
            | GlobMatchedNothing { location, .. }
            | GlobNeedsFolder { location, .. }
            | BadGlob { location, .. }
            | SrcAndContent { location }
            | NoSrcNorContent { location }
            | InvalidImagePath { location, .. }
            | DuplicateDst { location, .. }
            | NotUtf8 { location, .. }
            | EntryBelowNonFolder { location, .. }
            | UnsupportedFileType { location, .. } => Some(location),
            _ => None,
        }
    }

    /// A hint for the user, if there is one.
    pub fn help(&self) -> Option<String> {
        use PlanError::*;
        match self {
            UndefinedVariable {
                suggestion: Some(s),
                ..
            } => Some(format!("did you mean `{s}`?")),
            UndefinedVariable { name, .. } if name.starts_with("vars.") => Some(format!(
                "define it under [vars] or pass `--var {}=VALUE`",
                &name[5..]
            )),
            UndefinedVariable { name, .. } if name.starts_with("platform.") => Some(
                "`platform.*` exists only in per-platform values, not in tags, the base or index annotations".into(),
            ),
            UndefinedVariable { .. } => Some(
                "templates see only `vars.*` and `platform.*` (os, arch, variant, string); the environment is not visible".into(),
            ),
            GlobMatchedNothing { .. } | SrcNotFound { .. } => {
                Some("paths are relative to the build context; add `optional = true` to allow no match".into())
            }
            SrcThroughSymlink { .. } => Some("name the folder the symlink points to instead".into()),
            DuplicateDst { .. } => Some("each path may be written once per layer; put overrides in a later layer".into()),
            EntryBelowNonFolder { .. } => Some("remove one of the two entries, or put the one that replaces the other in a later layer".into()),
            NotUtf8 { .. } => Some("rename it, or leave it out with `exclude`".into()),
            Base { source, .. } => source.help(),
            _ => None,
        }
    }
}

/// Renders a spanned template string, naming it in errors.
struct Renderer<'a> {
    file: &'a SpecFile,
}

impl Renderer<'_> {
    fn sp(&self, ctx: &TemplateContext, s: &Sp<String>, what: &str) -> Result<String, PlanError> {
        self.render(ctx, &s.value, what, Some(&s.span))
    }

    fn render(
        &self,
        ctx: &TemplateContext,
        text: &str,
        what: &str,
        span: Option<&std::ops::Range<usize>>,
    ) -> Result<String, PlanError> {
        let location = span.map(|s| Box::new(self.file.locate(s)));
        ctx.render(text).map_err(|f| match f {
            TemplateFailure::Undefined { name, suggestion } => PlanError::UndefinedVariable {
                name,
                what: what.to_string(),
                suggestion,
                location,
            },
            TemplateFailure::Other(message) => PlanError::Template {
                what: what.to_string(),
                message,
                location,
            },
            TemplateFailure::Limit(message) => PlanError::TemplateLimit {
                what: what.to_string(),
                message,
                location,
            },
        })
    }

    fn strings(
        &self,
        ctx: &TemplateContext,
        v: &Option<Vec<String>>,
        what: &str,
    ) -> Result<Option<Vec<String>>, PlanError> {
        v.as_ref()
            .map(|items| {
                items
                    .iter()
                    .map(|s| self.render(ctx, s, what, None))
                    .collect()
            })
            .transpose()
    }

    fn opt(
        &self,
        ctx: &TemplateContext,
        v: &Option<String>,
        what: &str,
    ) -> Result<Option<String>, PlanError> {
        v.as_ref()
            .map(|s| self.render(ctx, s, what, None))
            .transpose()
    }

    fn map(
        &self,
        ctx: &TemplateContext,
        m: &BTreeMap<String, String>,
        what: &str,
    ) -> Result<BTreeMap<String, String>, PlanError> {
        m.iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    self.render(ctx, v, &format!("{what}.{k}"), None)?,
                ))
            })
            .collect()
    }

    fn spanned_map(
        &self,
        ctx: &TemplateContext,
        m: &BTreeMap<String, Sp<String>>,
        what: &str,
    ) -> Result<BTreeMap<String, String>, PlanError> {
        m.iter()
            .map(|(k, v)| Ok((k.clone(), self.sp(ctx, v, &format!("{what}.\"{k}\""))?)))
            .collect()
    }
}

/// Every key of the spec, destructured without `..` (house rule 2): a key
/// added to the spec types fails to compile here until planning handles it.
/// Each names where it is planned.
fn every_key_is_planned(spec: &crate::spec::Spec) {
    let crate::spec::Spec {
        image,                // below
        vars: _,              // Planner::new: the template variables
        config: _,            // merge_config
        annotations: _,       // Planner::image, Planner::index_annotations
        index_annotations: _, // Planner::index_annotations
        layers: _,            // Planner::image_layers → expand_layer
        platform,             // below
    } = spec;
    let crate::spec::ImageSection {
        name: _,        // plan: Plan::name
        tags: _,        // Planner::tags
        base: _,        // Planner::default_base, Planner::image_base
        platforms: _,   // Planner::declared_platforms
        compression: _, // encoding
        media_types: _, // encoding
        epoch: _,       // build_epoch
        cache_repo: _,  // plan: Plan::cache_repo
    } = image;
    for ov in platform.values() {
        let PlatformOverride {
            base: _,        // Planner::image_base
            config: _,      // merge_config
            annotations: _, // Planner::image
            layers: _,      // Planner::image_layers
        } = &ov.value;
    }
}

/// Plans a build from a spec and its sources.
pub fn plan(file: &SpecFile, opts: &PlanOptions, sources: Sources) -> Result<Plan, PlanError> {
    let spec = &file.spec;
    every_key_is_planned(spec);
    let (codec, media_types) = encoding(spec)?;
    let mut p = Planner::new(file, opts, sources, codec)?;
    let default_base = p.default_base()?;
    let declared = p.declared_platforms(&default_base)?;
    let selected = p.selected_platforms(&declared)?;
    let mut images = Vec::new();
    for platform in selected {
        let position = declared.iter().position(|(q, _)| *q == platform);
        let image = p.image(&platform, &default_base)?;
        images.push(ImagePlan {
            position: position.unwrap_or(images.len()),
            ..image
        });
    }
    let tags = p.tags()?;
    let index_annotations = p.index_annotations()?;
    let name = spec
        .image
        .name
        .as_ref()
        .map(|n| p.r.sp(&p.global, n, "`[image].name`"))
        .transpose()?;
    let cache_repo = spec
        .image
        .cache_repo
        .as_ref()
        .map(|n| p.r.sp(&p.global, n, "`[image].cache_repo`"))
        .transpose()?;
    Ok(Plan {
        context: sources.context.root().to_path_buf(),
        epoch: p.epoch,
        codec,
        media_types,
        name,
        cache_repo,
        tags,
        index_annotations,
        layers: p.layers,
        images,
        platforms: declared.iter().map(|(p, _)| p.to_string()).collect(),
        spec_digest: oci::sha256_digest(file.source.as_bytes()),
    })
}

/// The platforms a build of the spec makes, in index order (`--platform`
/// applied): declared, else the default base's (then it is opened). No
/// build input is read.
pub fn platforms(
    file: &SpecFile,
    opts: &PlanOptions,
    bases: &dyn sources::Bases,
) -> Result<Vec<Platform>, PlanError> {
    without_context(file, opts, bases, |_, _, selected| Ok(selected))
}

/// Resolves the bases of the selected platforms, and nothing else: no build
/// input is read (what `imgc lock` needs). Returns each platform's base.
pub fn resolve_bases(
    file: &SpecFile,
    opts: &PlanOptions,
    bases: &dyn sources::Bases,
) -> Result<Vec<(Platform, BaseImage)>, PlanError> {
    without_context(file, opts, bases, |p, default_base, selected| {
        let mut out = Vec::new();
        for platform in selected {
            let ctx = p.global.with_platform(&platform);
            let ov = p.override_for(&platform);
            let base = p.image_base(&platform, &ctx, ov, default_base)?;
            out.push((platform, base));
        }
        Ok(out)
    })
}

/// Plans the platforms with an empty build context (nothing of the build
/// is read), then hands the planner, the default base and the selected
/// platforms to `then`.
fn without_context<T>(
    file: &SpecFile,
    opts: &PlanOptions,
    bases: &dyn sources::Bases,
    then: impl FnOnce(
        &mut Planner,
        &(String, Option<Box<Location>>),
        Vec<Platform>,
    ) -> Result<T, PlanError>,
) -> Result<T, PlanError> {
    let empty = sources::MemoryContext::new();
    let sources = Sources {
        context: &empty,
        bases,
    };
    let mut p = Planner::new(file, opts, sources, Codec::None)?;
    let default_base = p.default_base()?;
    let declared = p.declared_platforms(&default_base)?;
    let selected = p.selected_platforms(&declared)?;
    then(&mut p, &default_base, selected)
}

/// The layer codec and the media type family (Docker's takes gzip only).
fn encoding(spec: &crate::spec::Spec) -> Result<(Codec, MediaTypesName), PlanError> {
    let codec = match spec.image.compression.unwrap_or(CompressionName::Gzip) {
        CompressionName::Gzip => Codec::Gzip,
        CompressionName::Zstd => Codec::Zstd,
        CompressionName::None => Codec::None,
    };
    let media_types = spec.image.media_types.unwrap_or(MediaTypesName::Oci);
    if media_types == MediaTypesName::Docker && codec != Codec::Gzip {
        return Err(PlanError::DockerCompression {
            compression: if codec == Codec::Zstd { "zstd" } else { "none" },
        });
    }
    Ok((codec, media_types))
}

/// A platform with where the spec declares it.
type Declared = (Platform, Option<Box<Location>>);

/// What planning works with, and what it has built up so far.
struct Planner<'a> {
    file: &'a SpecFile,
    opts: &'a PlanOptions,
    r: Renderer<'a>,
    /// Templates without a platform.
    global: TemplateContext,
    sources: Sources<'a>,
    epoch: u64,
    codec: Codec,
    /// Bases opened so far, by reference (each is opened once).
    bases: BTreeMap<String, Arc<dyn Base>>,
    /// Distinct layers so far, in first-use order.
    layers: Vec<LayerNode>,
}

impl<'a> Planner<'a> {
    fn new(
        file: &'a SpecFile,
        opts: &'a PlanOptions,
        sources: Sources<'a>,
        codec: Codec,
    ) -> Result<Self, PlanError> {
        let mut vars = file.spec.vars.clone();
        vars.extend(opts.vars.clone());
        Ok(Planner {
            file,
            opts,
            r: Renderer { file },
            global: TemplateContext::new(vars),
            sources,
            epoch: build_epoch(opts.source_date_epoch, file.spec.image.epoch)?,
            codec,
            bases: BTreeMap::new(),
            layers: Vec::new(),
        })
    }

    /// The `[platform."…"]` table that applies to a platform, if any.
    fn override_for(&self, platform: &Platform) -> Option<&'a PlatformOverride> {
        self.file
            .spec
            .platform
            .iter()
            .find(|(k, _)| k.0.matches(platform))
            .map(|(_, v)| &v.value)
    }

    /// `[image].base` rendered (default `scratch`), with its place.
    fn default_base(&self) -> Result<(String, Option<Box<Location>>), PlanError> {
        Ok(match &self.file.spec.image.base {
            Some(b) => (
                self.r.sp(&self.global, b, "`[image].base`")?,
                Some(Box::new(self.file.locate(&b.span))),
            ),
            None => ("scratch".to_string(), None),
        })
    }

    /// The spec's platforms: declared, else the default base's.
    fn declared_platforms(
        &mut self,
        default_base: &(String, Option<Box<Location>>),
    ) -> Result<Vec<Declared>, PlanError> {
        let mut platforms: Vec<Declared> = Vec::new();
        let Some(list) = &self.file.spec.image.platforms else {
            let (reference, loc) = default_base;
            let opened = self.open_base(reference, loc.clone())?;
            return match opened.platforms() {
                v if v.is_empty() => Err(PlanError::NoPlatforms),
                v => Ok(v.into_iter().map(|p| (p, None)).collect()),
            };
        };
        for p in list {
            let loc = Some(Box::new(self.file.locate(&p.span)));
            if platforms.iter().any(|(q, _)| q.matches(&p.value.0)) {
                return Err(PlanError::DuplicatePlatform {
                    platform: p.value.0.to_string(),
                    location: loc,
                });
            }
            platforms.push((p.value.0.clone(), loc));
        }
        if platforms.is_empty() {
            return Err(PlanError::NoPlatforms);
        }
        Ok(platforms)
    }

    /// The platforms to build (`--platform`, else all), after checking that
    /// every override and every `--platform` names one of the spec's.
    fn selected_platforms(&self, declared: &[Declared]) -> Result<Vec<Platform>, PlanError> {
        let spec = &self.file.spec;
        let available = || {
            let names: Vec<String> = declared.iter().map(|(p, _)| p.to_string()).collect();
            names.join(", ")
        };
        let keys: Vec<&Platform> = spec.platform.keys().map(|k| &k.0).collect();
        for (i, a) in keys.iter().enumerate() {
            if let Some(b) = keys[i + 1..].iter().find(|b| a.matches(b)) {
                return Err(PlanError::DuplicateOverride {
                    first: a.to_string(),
                    second: b.to_string(),
                });
            }
        }
        for (key, ov) in &spec.platform {
            if !declared.iter().any(|(p, _)| p.matches(&key.0)) {
                return Err(PlanError::OverrideNotBuilt {
                    platform: key.0.to_string(),
                    available: available(),
                    location: Some(Box::new(self.file.locate(&ov.span))),
                });
            }
        }
        let wanted = &self.opts.platforms;
        if let Some(want) = wanted
            .iter()
            .find(|w| !declared.iter().any(|(p, _)| p.matches(w)))
        {
            return Err(PlanError::PlatformNotInSpec {
                platform: want.to_string(),
                available: available(),
            });
        }
        Ok(declared
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| wanted.is_empty() || wanted.iter().any(|w| w.matches(p)))
            .collect())
    }

    /// Opens a base reference once per build.
    fn open_base(
        &mut self,
        reference: &str,
        location: Option<Box<Location>>,
    ) -> Result<Arc<dyn Base>, PlanError> {
        if let Some(b) = self.bases.get(reference) {
            return Ok(b.clone());
        }
        let opened = self
            .sources
            .bases
            .open(reference)
            .map_err(|source| PlanError::Base {
                reference: reference.to_string(),
                source,
                location,
            })?;
        self.bases.insert(reference.to_string(), opened.clone());
        Ok(opened)
    }

    /// One platform's image (its position is set by the caller).
    fn image(
        &mut self,
        platform: &Platform,
        default_base: &(String, Option<Box<Location>>),
    ) -> Result<ImagePlan, PlanError> {
        let spec = &self.file.spec;
        let ctx = self.global.with_platform(platform);
        let ov = self.override_for(platform);
        let base = self.image_base(platform, &ctx, ov, default_base)?;
        let layer_ids = self.image_layers(platform, &ctx, ov)?;
        check_layer_count(platform, base.layers.len(), layer_ids.len())?;
        let r = &self.r;
        let config = merge_config(r, &ctx, &spec.config, ov.and_then(|o| o.config.as_ref()))?;
        let mut annotations = r.spanned_map(&ctx, &spec.annotations, "annotations")?;
        if let Some(o) = ov {
            let what = format!("platform.\"{platform}\".annotations");
            annotations.extend(r.spanned_map(&ctx, &o.annotations, &what)?);
        }
        annotations
            .entry(oci::ANNOTATION_CREATED.to_string())
            .or_insert_with(|| oci::rfc3339(self.epoch));
        check_annotations(&annotations, "annotation")?;
        Ok(ImagePlan {
            position: 0,
            platform: platform.clone(),
            base,
            layers: layer_ids,
            config,
            annotations,
        })
    }

    /// A platform's base: its override's, else `[image].base`.
    fn image_base(
        &mut self,
        platform: &Platform,
        ctx: &TemplateContext,
        ov: Option<&PlatformOverride>,
        default_base: &(String, Option<Box<Location>>),
    ) -> Result<BaseImage, PlanError> {
        let spec = &self.file.spec;
        let (base_ref, base_loc) = match ov.and_then(|o| o.base.as_ref()) {
            Some(b) => (
                self.r
                    .sp(ctx, b, &format!("`[platform.\"{platform}\"].base`"))?,
                Some(Box::new(self.file.locate(&b.span))),
            ),
            None => {
                let scratch = Sp {
                    value: "scratch".into(),
                    span: 0..0,
                };
                let b = spec.image.base.as_ref().unwrap_or(&scratch);
                (self.r.sp(ctx, b, "`[image].base`")?, default_base.1.clone())
            }
        };
        self.open_base(&base_ref, base_loc.clone())?
            .select(platform)
            .map_err(|source| PlanError::Base {
                reference: base_ref.clone(),
                source,
                location: base_loc,
            })
    }

    /// A platform's layers (`[[layers]]`, then its override's), as indices
    /// into the distinct layers: a layer equal to one planned already is
    /// shared.
    fn image_layers(
        &mut self,
        platform: &Platform,
        ctx: &TemplateContext,
        ov: Option<&PlatformOverride>,
    ) -> Result<Vec<usize>, PlanError> {
        let spec = &self.file.spec;
        let specs = spec
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("layers[{i}]"), l))
            .chain(ov.into_iter().flat_map(|o| {
                o.layers
                    .iter()
                    .enumerate()
                    .map(move |(i, l)| (format!("platform.\"{platform}\".layers[{i}]"), l))
            }));
        let mut ids = Vec::new();
        for (what, layer) in specs {
            let only = layer.value.platforms.as_ref();
            if only.is_some_and(|o| !o.iter().any(|p| p.0.matches(platform))) {
                continue;
            }
            let context = self.sources.context;
            let entries = expand_layer(&self.r, ctx, context, &layer.value, &what)?;
            let key = key::layer_key(&layer.value.name, &entries, self.epoch, self.codec);
            let id = match self.layers.iter().position(|l| l.key == key) {
                Some(id) => id,
                None => {
                    self.layers.push(LayerNode {
                        key,
                        name: layer.value.name.clone(),
                        entries,
                        platforms: Vec::new(),
                    });
                    self.layers.len() - 1
                }
            };
            self.layers[id].platforms.push(platform.to_string());
            ids.push(id);
        }
        Ok(ids)
    }

    /// `[image].tags` rendered, checked and deduplicated (default `latest`).
    fn tags(&self) -> Result<Vec<String>, PlanError> {
        let mut tags = Vec::new();
        for t in &self.opts.tags {
            if !valid_tag(t) {
                return Err(PlanError::InvalidTag {
                    tag: t.clone(),
                    location: None,
                });
            }
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        if !tags.is_empty() {
            return Ok(tags);
        }
        for t in &self.file.spec.image.tags {
            let tag = self.r.sp(&self.global, t, "`[image].tags`")?;
            if !valid_tag(&tag) {
                return Err(PlanError::InvalidTag {
                    tag,
                    location: Some(Box::new(self.file.locate(&t.span))),
                });
            }
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        if tags.is_empty() {
            tags.push("latest".to_string());
        }
        Ok(tags)
    }

    /// The image index's annotations: `[annotations]`, then
    /// `[index_annotations]`, and the creation time.
    fn index_annotations(&self) -> Result<BTreeMap<String, String>, PlanError> {
        let spec = &self.file.spec;
        let (r, global) = (&self.r, &self.global);
        let mut index_annotations = r.spanned_map(global, &spec.annotations, "annotations")?;
        index_annotations.extend(r.spanned_map(
            global,
            &spec.index_annotations,
            "index_annotations",
        )?);
        index_annotations
            .entry(oci::ANNOTATION_CREATED.to_string())
            .or_insert_with(|| oci::rfc3339(self.epoch));
        check_annotations(&index_annotations, "index annotation")?;
        Ok(index_annotations)
    }
}

fn expand_layer(
    r: &Renderer,
    ctx: &TemplateContext,
    context: &dyn sources::Context,
    layer: &LayerSpec,
    what: &str,
) -> Result<Vec<Entry>, PlanError> {
    // Destructured without `..`: a new key cannot be silently ignored.
    let LayerSpec {
        name: _,
        platforms: _,
        defaults,
        files,
        dirs,
        symlinks,
    } = layer;
    let crate::spec::Defaults {
        owner,
        mode,
        dir_mode,
    } = *defaults;
    let defaults = LayerDefaults {
        owner,
        mode,
        dir_mode,
    };
    let file_items = files
        .iter()
        .enumerate()
        .map(|(i, f)| file_item(r, ctx, f, &format!("{what}.files[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut dir_items = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let crate::spec::DirEntry { path, mode, owner } = &d.value;
        dir_items.push(DirItem {
            path: r.sp(ctx, path, &format!("{what}.dirs[{i}].path"))?,
            mode: *mode,
            owner: *owner,
            location: r.file.locate(&d.span),
        });
    }
    let mut link_items = Vec::new();
    for (i, l) in symlinks.iter().enumerate() {
        let crate::spec::SymlinkEntry {
            path,
            target,
            owner,
        } = &l.value;
        link_items.push(LinkItem {
            path: r.sp(ctx, path, &format!("{what}.symlinks[{i}].path"))?,
            target: r.sp(ctx, target, &format!("{what}.symlinks[{i}].target"))?,
            owner: *owner,
            location: r.file.locate(&l.span),
        });
    }
    entries::expand(context, &defaults, file_items, dir_items, link_items)
}

/// One `files` entry, rendered (`what` names it in errors).
fn file_item(
    r: &Renderer,
    ctx: &TemplateContext,
    f: &Sp<crate::spec::FileEntry>,
    what: &str,
) -> Result<FileItem, PlanError> {
    // Destructured without `..`: a new key cannot be silently ignored.
    let crate::spec::FileEntry {
        src,
        content,
        dst,
        exclude,
        mode,
        dir_mode,
        owner,
        optional,
    } = &f.value;
    let opt = |v: &Option<Sp<String>>, key: &str| {
        v.as_ref()
            .map(|s| r.sp(ctx, s, &format!("{what}.{key}")))
            .transpose()
    };
    Ok(FileItem {
        src: opt(src, "src")?,
        content: opt(content, "content")?,
        dst: r.sp(ctx, dst, &format!("{what}.dst"))?,
        exclude: exclude
            .iter()
            .map(|e| r.render(ctx, e, &format!("{what}.exclude"), Some(&f.span)))
            .collect::<Result<_, _>>()?,
        mode: *mode,
        dir_mode: *dir_mode,
        owner: *owner,
        optional: *optional,
        location: r.file.locate(&f.span),
    })
}

/// Merges `[config]` with a platform's `config` (the platform wins; `env`
/// and `labels` merge by key) and renders every string.
fn merge_config(
    r: &Renderer,
    ctx: &TemplateContext,
    global: &ConfigSection,
    over: Option<&ConfigSection>,
) -> Result<ConfigSection, PlanError> {
    let mut c = global.clone();
    if let Some(o) = over {
        let ConfigSection {
            entrypoint,
            cmd,
            env,
            user,
            workdir,
            ports,
            volumes,
            labels,
            stop_signal,
        } = o.clone();
        // Scalars and lists replace; `env` and `labels` merge by key.
        fn replace<T>(slot: &mut Option<T>, value: Option<T>) {
            if value.is_some() {
                *slot = value;
            }
        }
        replace(&mut c.entrypoint, entrypoint);
        replace(&mut c.cmd, cmd);
        c.env.extend(env);
        replace(&mut c.user, user);
        replace(&mut c.workdir, workdir);
        replace(&mut c.ports, ports);
        replace(&mut c.volumes, volumes);
        c.labels.extend(labels);
        replace(&mut c.stop_signal, stop_signal);
    }
    let rendered = ConfigSection {
        entrypoint: r.strings(ctx, &c.entrypoint, "config.entrypoint")?,
        cmd: r.strings(ctx, &c.cmd, "config.cmd")?,
        env: r.map(ctx, &c.env, "config.env")?,
        user: r.opt(ctx, &c.user, "config.user")?,
        workdir: r.opt(ctx, &c.workdir, "config.workdir")?,
        ports: c.ports,
        volumes: r.strings(ctx, &c.volumes, "config.volumes")?,
        labels: r.map(ctx, &c.labels, "config.labels")?,
        stop_signal: r.opt(ctx, &c.stop_signal, "config.stop_signal")?,
    };
    check_config_strings(&rendered)?;
    if let Some(w) = &rendered.workdir {
        if !w.starts_with('/') {
            return Err(PlanError::InvalidConfig {
                what: "config.workdir",
                value: w.clone(),
                reason: "the working folder must be an absolute path",
            });
        }
    }
    for v in rendered.volumes.iter().flatten() {
        if !v.starts_with('/') {
            return Err(PlanError::InvalidConfig {
                what: "config.volumes entry",
                value: v.clone(),
                reason: "volumes must be absolute paths",
            });
        }
    }
    Ok(rendered)
}

/// The build epoch: `SOURCE_DATE_EPOCH`, else `[image].epoch`, else 0;
/// refused past [`MAX_EPOCH`].
fn build_epoch(source_date_epoch: Option<u64>, spec: Option<u64>) -> Result<u64, PlanError> {
    let epoch = source_date_epoch.or(spec).unwrap_or(0);
    if epoch > MAX_EPOCH {
        return Err(PlanError::EpochTooLate {
            epoch,
            from: if source_date_epoch.is_some() {
                "SOURCE_DATE_EPOCH"
            } else {
                "`[image].epoch`"
            },
        });
    }
    Ok(epoch)
}

/// Refuses an image of more than [`MAX_LAYERS`] layers, base layers included.
fn check_layer_count(platform: &Platform, base: usize, own: usize) -> Result<(), PlanError> {
    if base + own > MAX_LAYERS {
        return Err(PlanError::TooManyLayers {
            platform: platform.to_string(),
            count: base + own,
            base,
        });
    }
    Ok(())
}

/// Refuses config values that readers downstream cannot take: environment
/// names that are empty or hold `=` or a control character, and NUL
/// anywhere (C strings, the kernel's `execve`, Go's runtimes stop there).
fn check_config_strings(c: &ConfigSection) -> Result<(), PlanError> {
    let nul = |what: &'static str, value: &str| {
        if value.contains('\0') {
            return Err(PlanError::InvalidConfig {
                what,
                value: value.to_string(),
                reason: "it contains a NUL character",
            });
        }
        Ok(())
    };
    for (k, v) in &c.env {
        if k.is_empty() || k.contains('=') || k.chars().any(char::is_control) {
            return Err(PlanError::InvalidConfig {
                what: "env key",
                value: k.clone(),
                reason: "environment variable names must be non-empty and cannot contain `=` or control characters (newline, NUL)",
            });
        }
        nul("config.env value", v)?;
    }
    for (k, v) in &c.labels {
        nul("config.labels key", k)?;
        nul("config.labels value", v)?;
    }
    let lists = [
        ("config.entrypoint entry", &c.entrypoint),
        ("config.cmd entry", &c.cmd),
        ("config.volumes entry", &c.volumes),
    ];
    for (what, list) in lists {
        for v in list.iter().flatten() {
            nul(what, v)?;
        }
    }
    let single = [
        ("config.user", &c.user),
        ("config.workdir", &c.workdir),
        ("config.stop_signal", &c.stop_signal),
    ];
    for (what, v) in single {
        if let Some(v) = v {
            nul(what, v)?;
        }
    }
    Ok(())
}

/// Refuses annotations that are empty keys or hold NUL.
fn check_annotations(
    annotations: &BTreeMap<String, String>,
    what: &'static str,
) -> Result<(), PlanError> {
    for (k, v) in annotations {
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(PlanError::InvalidConfig {
                what,
                value: format!("{k}={v}"),
                reason:
                    "annotation keys must be non-empty, and neither key nor value may contain NUL",
            });
        }
    }
    Ok(())
}

/// The last second an RFC 3339 timestamp with a four-digit year can hold
/// (9999-12-31T23:59:59Z); readers such as Go's `time` refuse later ones.
pub const MAX_EPOCH: u64 = 253_402_300_799;

/// Most layers an image may have (base layers included): the limit of
/// overlay filesystems' lower directories that runtimes are built around.
pub const MAX_LAYERS: usize = 127;

pub use oci::valid_tag;

#[cfg(test)]
mod tests;
