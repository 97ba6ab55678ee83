//! Bases: `scratch` and `oci:DIR[:tag]` (a local OCI image layout). Resolves
//! a base reference to, per platform, the manifest, the parsed config and the
//! layer descriptors. Base layers are never unpacked: they are referenced by
//! descriptor and their blobs copied by the layout writer.
//!
//! Every document read is bounded (4 MiB) and checked against its digest.
//! Registry references are resolved through a [`RemoteBases`] (the registry
//! module implements it): it fills a local store laid out as an OCI layout,
//! which is then read exactly like an `oci:` base.

use crate::fsx::{self, Links};
use crate::oci::{self, AnyDocument, Descriptor, Digest, ImageConfig, Index, Manifest, Platform};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Resolves registry references into a local store (an OCI layout).
pub trait RemoteBases: Send + Sync + std::fmt::Debug {
    /// Resolves a registry reference to the platform manifests it offers.
    fn open(&self, reference: &str) -> Result<RemoteOpened, BaseError>;
    /// Makes sure a blob of that base is in the store (its bytes are
    /// verified where they are read).
    fn fetch(&self, reference: &str, desc: &Descriptor) -> Result<(), BaseError>;
    /// Replaces a store copy found corrupt: discards it and fetches it again.
    fn refetch(&self, reference: &str, desc: &Descriptor) -> Result<(), BaseError>;
}

/// A registry base, resolved.
#[derive(Clone, Debug)]
pub struct RemoteOpened {
    /// The store folder (an OCI layout holding the fetched blobs).
    pub store: PathBuf,
    /// The top document's digest (index or manifest).
    pub digest: Digest,
    /// Each platform manifest with its platform.
    pub candidates: Vec<(Platform, Descriptor)>,
}

pub use crate::oci::MAX_DOCUMENT_SIZE;

/// Errors resolving a base image.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// The layout folder is missing or not a layout.
    #[error("base layout `{dir}` does not exist or is not an OCI image layout (no `{missing}`)")]
    MissingLayout {
        /// The layout folder.
        dir: PathBuf,
        /// The file that was looked for.
        missing: &'static str,
    },
    /// A file of the layout could not be read.
    #[error("failed to read `{path}` of base layout")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON document of the layout is malformed.
    #[error("`{path}` of base layout is not a valid {what}")]
    BadDocument {
        /// The file.
        path: PathBuf,
        /// What it should have been.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A blob's bytes do not match its digest or size.
    #[error("blob `{path}` of base layout does not match its descriptor (expected {expected}, {expected_size} bytes; found {actual}, {actual_size} bytes)")]
    DigestMismatch {
        /// The blob file.
        path: PathBuf,
        /// The descriptor's digest.
        expected: Digest,
        /// The descriptor's size.
        expected_size: u64,
        /// The digest of the bytes found.
        actual: Digest,
        /// The size found.
        actual_size: u64,
    },
    /// A document is larger than imgc reads.
    #[error("`{path}` of base layout is larger than {MAX_DOCUMENT_SIZE} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// No entry of the layout's `index.json` could be picked.
    #[error("no image to use in layout `{dir}`")]
    Select {
        /// The layout folder.
        dir: PathBuf,
        /// Why.
        #[source]
        source: oci::SelectError,
    },
    /// `@DIGEST` names no document of the layout.
    #[error("layout `{dir}` holds no document {digest}")]
    NoSuchDigest {
        /// The layout folder.
        dir: PathBuf,
        /// The digest asked for.
        digest: Digest,
    },
    /// The base lacks a platform.
    #[error("base `{reference}` has no image for platform {platform} (it has: {available})")]
    MissingPlatform {
        /// The base reference.
        reference: String,
        /// The platform asked for.
        platform: String,
        /// The platforms present.
        available: String,
    },
    /// A document of an unexpected kind.
    #[error("`{path}` of base layout has media type `{media_type}`, which is neither an image index nor an image manifest")]
    UnsupportedMediaType {
        /// The file.
        path: PathBuf,
        /// Its media type.
        media_type: String,
    },
    /// A document that claims to be both an index and a manifest.
    #[error("`{path}` of base layout is ambiguous: it has both `manifests` and `layers`/`config`")]
    Ambiguous {
        /// The file.
        path: PathBuf,
    },
    /// The `oci-layout` file is not what the image layout spec says.
    #[error("`{path}` is not a valid `oci-layout` file: {reason}")]
    BadLayoutFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Nested indexes deeper than imgc follows.
    #[error("`{path}` of base layout nests image indexes more than {limit} levels deep (the depth limit)")]
    TooDeep {
        /// The index past the limit.
        path: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// More documents than a base may take to resolve.
    #[error("base layout `{dir}` needs more than {limit} documents read to find its images (the document budget)")]
    TooManyDocuments {
        /// The layout folder.
        dir: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// A registry reference, but no way to reach registries was given.
    #[error("base `{reference}` is a registry reference, and this command does not pull from registries")]
    RegistryUnsupported {
        /// The reference.
        reference: String,
    },
    /// Resolving or fetching a registry base failed.
    #[error(transparent)]
    Remote(RemoteFailure),
    /// An `oci:` reference without a folder.
    #[error("base `{reference}` names no layout folder (expected `oci:DIR` or `oci:DIR:TAG`)")]
    BadReference {
        /// The reference.
        reference: String,
    },
}

impl BaseError {
    /// A hint for the user, if there is one.
    pub fn help(&self) -> Option<String> {
        match self {
            BaseError::Remote(e) => e.help.clone(),
            _ => None,
        }
    }
}

/// What a [`RemoteBases`] failed with, and its hint: shown as the error
/// itself (its text and its causes), so no text is pasted twice.
#[derive(Debug)]
pub struct RemoteFailure {
    /// The error.
    pub error: Box<dyn std::error::Error + Send + Sync>,
    /// A hint for the user, if there is one.
    pub help: Option<String>,
}

impl std::fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for RemoteFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// A base reference opened once; images are selected from it per platform.
pub trait Base: std::fmt::Debug {
    /// The platforms it offers (empty for `scratch`).
    fn platforms(&self) -> Vec<Platform>;
    /// The base image for one platform.
    fn select(&self, platform: &Platform) -> Result<BaseImage, BaseError>;
}

/// Opens base references (`scratch`, `oci:DIR[:TAG]`, registry references).
pub trait Bases: std::fmt::Debug {
    /// Opens one reference, as rendered from the spec.
    fn open(&self, reference: &str) -> Result<Arc<dyn Base>, BaseError>;
}

/// The real bases: `scratch`, local layouts (relative to the spec's
/// folder), and registry references through a [`RemoteBases`].
#[derive(Debug)]
pub struct LayoutBases {
    /// What relative `oci:` folders are relative to.
    pub spec_dir: PathBuf,
    /// How registry references are resolved; `None`: they are an error.
    pub remote: Option<Arc<dyn RemoteBases>>,
}

impl Bases for LayoutBases {
    fn open(&self, reference: &str) -> Result<Arc<dyn Base>, BaseError> {
        Ok(Arc::new(OpenedBase::open(
            reference,
            &self.spec_dir,
            self.remote.as_ref(),
        )?))
    }
}

impl Base for OpenedBase {
    fn platforms(&self) -> Vec<Platform> {
        OpenedBase::platforms(self)
    }

    fn select(&self, platform: &Platform) -> Result<BaseImage, BaseError> {
        OpenedBase::select(self, platform)
    }
}

/// A base image resolved for one platform.
#[derive(Clone, Debug)]
pub struct BaseImage {
    /// The reference as written in the spec (`scratch`, `oci:...`).
    pub reference: String,
    /// The layout the blobs come from (`None` for scratch).
    pub layout_dir: Option<PathBuf>,
    /// The platform manifest's descriptor (`None` for scratch).
    pub manifest: Option<Descriptor>,
    /// The base config (empty for scratch).
    pub config: ImageConfig,
    /// The base layers.
    pub layers: Vec<Descriptor>,
    /// For a registry base: where to fetch its blobs from when an output needs them.
    pub remote: Option<Arc<dyn RemoteBases>>,
}

impl BaseImage {
    /// The empty base.
    pub fn scratch() -> Self {
        BaseImage {
            reference: "scratch".to_string(),
            layout_dir: None,
            manifest: None,
            config: ImageConfig::default(),
            layers: Vec::new(),
            remote: None,
        }
    }
}

/// A base reference opened once; images for platforms are selected from it.
#[derive(Debug)]
pub enum OpenedBase {
    /// `scratch`.
    Scratch,
    /// A local layout.
    Layout {
        /// The reference as written.
        reference: String,
        /// The layout folder.
        dir: PathBuf,
        /// Each candidate manifest with its platform.
        candidates: Vec<(Platform, Descriptor)>,
        /// For a registry base: what fetches its blobs into `dir`.
        remote: Option<Arc<dyn RemoteBases>>,
    },
}

impl OpenedBase {
    /// Opens a base reference; relative layout folders are relative to `spec_dir`.
    pub fn open(
        reference: &str,
        spec_dir: &Path,
        remote: Option<&Arc<dyn RemoteBases>>,
    ) -> Result<OpenedBase, BaseError> {
        if reference == "scratch" {
            return Ok(OpenedBase::Scratch);
        }
        if !reference.starts_with("oci:") {
            let Some(remote) = remote else {
                return Err(BaseError::RegistryUnsupported {
                    reference: reference.to_string(),
                });
            };
            let opened = remote.open(reference)?;
            return Ok(OpenedBase::Layout {
                reference: reference.to_string(),
                dir: opened.store,
                candidates: opened.candidates,
                remote: Some(remote.clone()),
            });
        }
        let parsed = oci::LayoutRef::parse(reference).map_err(|_| BaseError::BadReference {
            reference: reference.to_string(),
        })?;
        let dir = spec_dir.join(&parsed.dir);
        let entry = &layout_entry(&dir, &parsed)?;
        let mut walk = Walk {
            dir: &dir,
            visited: BTreeSet::new(),
            out: Vec::new(),
        };
        walk.collect(entry, 0)?;
        let candidates = walk.out;
        Ok(OpenedBase::Layout {
            reference: reference.to_string(),
            dir,
            candidates,
            remote: None,
        })
    }

    /// The platforms the base offers (empty for scratch).
    pub fn platforms(&self) -> Vec<Platform> {
        match self {
            OpenedBase::Scratch => Vec::new(),
            OpenedBase::Layout { candidates, .. } => {
                candidates.iter().map(|(p, _)| p.clone()).collect()
            }
        }
    }

    /// The base image for one platform.
    pub fn select(&self, platform: &Platform) -> Result<BaseImage, BaseError> {
        let (reference, dir, candidates, remote) = match self {
            OpenedBase::Scratch => return Ok(BaseImage::scratch()),
            OpenedBase::Layout {
                reference,
                dir,
                candidates,
                remote,
            } => (reference, dir, candidates, remote),
        };
        let Some((_, desc)) = candidates.iter().find(|(p, _)| p.matches(platform)) else {
            let available = if candidates.is_empty() {
                "no platform images at all".to_string()
            } else {
                candidates
                    .iter()
                    .map(|(p, _)| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(BaseError::MissingPlatform {
                reference: reference.clone(),
                platform: platform.to_string(),
                available,
            });
        };
        let path = blob_path(dir, &desc.digest);
        let read = |d: &Descriptor| -> Result<Vec<u8>, BaseError> {
            let Some(r) = remote else {
                return read_blob(dir, d);
            };
            r.fetch(reference, d)?;
            match read_blob(dir, d) {
                Err(BaseError::DigestMismatch { .. }) => {
                    r.refetch(reference, d)?;
                    read_blob(dir, d)
                }
                other => other,
            }
        };
        let manifest: Manifest = parse_doc(&path, &read(desc)?, "image manifest")?;
        let config_path = blob_path(dir, &manifest.config.digest);
        let config = parse_doc(&config_path, &read(&manifest.config)?, "image config")?;
        Ok(BaseImage {
            reference: reference.clone(),
            layout_dir: Some(dir.clone()),
            manifest: Some(desc.clone()),
            config,
            layers: manifest.layers,
            remote: remote.clone(),
        })
    }
}

/// Checks that `dir` is an OCI layout: its `oci-layout` file says 1.x.x.
fn check_layout_marker(dir: &Path) -> Result<(), BaseError> {
    let marker = dir.join("oci-layout");
    if !marker.is_file() {
        return Err(BaseError::MissingLayout {
            dir: dir.to_path_buf(),
            missing: "oci-layout",
        });
    }
    let bytes =
        fsx::read_bounded(&marker, 64 * 1024, Links::Refuse).map_err(|source| BaseError::Read {
            path: marker.clone(),
            source,
        })?;
    oci::check_oci_layout(&bytes).map_err(|reason| BaseError::BadLayoutFile {
        path: marker,
        reason,
    })
}

/// The entry of a layout a reference names: by digest (an entry of
/// `index.json`, or any document of the layout: its media type is read from
/// it), else by tag (see [`oci::select_entry`]).
pub fn layout_entry(dir: &Path, r: &oci::LayoutRef) -> Result<Descriptor, BaseError> {
    check_layout_marker(dir)?;
    let index_path = dir.join("index.json");
    let top: Index = parse_doc(&index_path, &read_bounded(&index_path)?, "index.json")?;
    let Some(digest) = &r.digest else {
        return oci::select_entry(&top, r.tag.as_deref())
            .cloned()
            .map_err(|source| BaseError::Select {
                dir: dir.to_path_buf(),
                source,
            });
    };
    if let Some(d) = top.manifests.iter().find(|d| &d.digest == digest) {
        return Ok(d.clone());
    }
    let path = blob_path(dir, digest);
    if !path.is_file() {
        return Err(BaseError::NoSuchDigest {
            dir: dir.to_path_buf(),
            digest: digest.clone(),
        });
    }
    let bytes = read_bounded(&path)?;
    let actual = oci::sha256_digest(&bytes);
    if actual != *digest {
        return Err(BaseError::DigestMismatch {
            path,
            expected: digest.clone(),
            expected_size: bytes.len() as u64,
            actual,
            actual_size: bytes.len() as u64,
        });
    }
    let doc: AnyDocument = parse_doc(&path, &bytes, "document")?;
    let media_type = match (doc.media_type, &doc.manifests) {
        (Some(m), _) => m,
        (None, Some(_)) => oci::MEDIA_TYPE_INDEX.to_string(),
        (None, None) => oci::MEDIA_TYPE_MANIFEST.to_string(),
    };
    Ok(Descriptor::new(
        media_type,
        digest.clone(),
        bytes.len() as u64,
    ))
}

/// Most documents read to resolve one base: nested indexes are walked once
/// each (a visited set), and never more than this many in all.
pub const MAX_DOCUMENTS_PER_BASE: usize = 64;

/// Deepest nesting of indexes followed.
pub const MAX_INDEX_DEPTH: usize = 4;

/// The walk of a base's nested indexes: what was read, and how much.
struct Walk<'a> {
    dir: &'a Path,
    visited: BTreeSet<Digest>,
    out: Vec<(Platform, Descriptor)>,
}

impl Walk<'_> {
    fn read(&mut self, desc: &Descriptor) -> Result<Option<Vec<u8>>, BaseError> {
        if !self.visited.insert(desc.digest.clone()) {
            return Ok(None);
        }
        if self.visited.len() > MAX_DOCUMENTS_PER_BASE {
            return Err(BaseError::TooManyDocuments {
                dir: self.dir.to_path_buf(),
                limit: MAX_DOCUMENTS_PER_BASE,
            });
        }
        read_blob(self.dir, desc).map(Some)
    }

    fn collect(&mut self, desc: &Descriptor, depth: usize) -> Result<(), BaseError> {
        let path = blob_path(self.dir, &desc.digest);
        if depth > MAX_INDEX_DEPTH {
            return Err(BaseError::TooDeep {
                path,
                limit: MAX_INDEX_DEPTH,
            });
        }
        let Some(bytes) = self.read(desc)? else {
            return Ok(());
        };
        let any: AnyDocument = parse_doc(&path, &bytes, "OCI document")?;
        let is_index = any.manifests.is_some();
        if is_index && (any.layers.is_some() || any.config.is_some()) {
            return Err(BaseError::Ambiguous { path });
        }
        let media_type = any
            .media_type
            .clone()
            .unwrap_or_else(|| desc.media_type.clone());
        if is_index || oci::is_index_media_type(&media_type) {
            let index: Index = parse_doc(&path, &bytes, "image index")?;
            for child in &index.manifests {
                if oci::is_index_media_type(&child.media_type) {
                    self.collect(child, depth + 1)?;
                } else if let Some(p) = oci::listed_platform(child) {
                    if !self.out.iter().any(|(_, d)| d.digest == child.digest) {
                        self.out.push((p.clone(), child.clone()));
                    }
                }
            }
            Ok(())
        } else if oci::is_manifest_media_type(&media_type) {
            let manifest: Manifest = parse_doc(&path, &bytes, "image manifest")?;
            let config = read_config(self.dir, &manifest)?;
            let mut platform =
                Platform::new(&config.os, &config.architecture, config.variant.as_deref());
            platform.os_version = config.os_version.clone();
            self.out.push((platform, desc.clone()));
            Ok(())
        } else {
            Err(BaseError::UnsupportedMediaType { path, media_type })
        }
    }
}

/// Reads and checks the config blob of a manifest.
fn read_config(dir: &Path, manifest: &Manifest) -> Result<ImageConfig, BaseError> {
    let path = blob_path(dir, &manifest.config.digest);
    parse_doc(&path, &read_blob(dir, &manifest.config)?, "image config")
}

pub use crate::oci::blob_path;

fn read_bounded(path: &Path) -> Result<Vec<u8>, BaseError> {
    fsx::read_bounded(path, MAX_DOCUMENT_SIZE, Links::Refuse).map_err(|source| {
        if source.kind() == std::io::ErrorKind::FileTooLarge {
            BaseError::TooLarge {
                path: path.to_path_buf(),
            }
        } else {
            BaseError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Reads a (small) blob of a layout, bounded, and checks it against its descriptor.
pub fn read_blob(dir: &Path, desc: &Descriptor) -> Result<Vec<u8>, BaseError> {
    let path = blob_path(dir, &desc.digest);
    if desc.size > MAX_DOCUMENT_SIZE {
        return Err(BaseError::TooLarge { path });
    }
    let bytes = read_bounded(&path)?;
    let actual = oci::sha256_digest(&bytes);
    if actual != desc.digest || bytes.len() as u64 != desc.size {
        return Err(BaseError::DigestMismatch {
            path,
            expected: desc.digest.clone(),
            expected_size: desc.size,
            actual,
            actual_size: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

fn parse_doc<T: serde::de::DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    what: &'static str,
) -> Result<T, BaseError> {
    serde_json::from_slice(bytes).map_err(|source| BaseError::BadDocument {
        path: path.to_path_buf(),
        what,
        source,
    })
}

/// Platforms offered by several opened bases, deduplicated in order.
pub fn platform_names(platforms: &[Platform]) -> String {
    let mut seen = BTreeMap::new();
    for p in platforms {
        seen.entry(p.to_string()).or_insert(());
    }
    seen.into_keys().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_the_example_base() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/multi-arch");
        let base = OpenedBase::open("oci:base:1.0", &dir, None).unwrap();
        assert_eq!(
            platform_names(&base.platforms()),
            "linux/amd64, linux/arm64/v8"
        );
        let img = base.select(&"linux/arm64".parse().unwrap()).unwrap();
        assert_eq!(img.config.architecture, "arm64");
        assert_eq!(img.layers.len(), 1);
        let err = base.select(&"linux/riscv64".parse().unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("linux/amd64, linux/arm64/v8"),
            "{err}"
        );
        let single = OpenedBase::open("oci:base:1.0-amd64", &dir, None).unwrap();
        assert_eq!(platform_names(&single.platforms()), "linux/amd64");
        let err = OpenedBase::open("oci:base:nope", &dir, None).unwrap_err();
        let cause = std::error::Error::source(&err).map(|c| c.to_string());
        assert!(err.to_string().contains("base"), "{err}");
        assert!(
            cause
                .as_deref()
                .is_some_and(|c| c.contains("has no tag `nope`")),
            "{cause:?}"
        );
        let err = OpenedBase::open("oci:missing", &dir, None).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
