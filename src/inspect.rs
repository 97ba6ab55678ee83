//! What `imgc inspect` shows of an image or an index: every platform's
//! manifest, config (user, environment, entrypoint, cmd, working folder,
//! ports, volumes, labels) and history, as one serializable value with a
//! published JSON Schema. Documents come through [`Fetch`], so that a
//! layout and a registry are inspected alike; every document is bounded
//! and checked against its digest by the fetcher.

use crate::oci::{self, Descriptor, Digest, ImageConfig, Index, Manifest, Platform};
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;

/// Gets the exact bytes of a manifest, index or config, checked against
/// its descriptor (digest and size) and bounded.
pub trait Fetch {
    /// The bytes of the document `desc` names.
    fn fetch(&self, desc: &Descriptor) -> Result<Vec<u8>, InspectError>;
}

/// Errors while inspecting.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A document could not be had.
    #[error("failed to read {what} {digest}")]
    Fetch {
        /// Which document.
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A document is not what its media type says.
    #[error("{what} {digest} is not valid JSON of its kind")]
    Parse {
        /// Which document.
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// `--platform` matched none of the image's platforms.
    #[error("the image has no platform {platform} (it has: {available})")]
    NoPlatform {
        /// The platform asked for.
        platform: String,
        /// What it has.
        available: String,
    },
    /// Indexes nest deeper, or hold more documents, than imgc reads.
    #[error(
        "the index nests more than {MAX_DEPTH} levels or lists more than {MAX_DOCUMENTS} documents"
    )]
    TooMany,
}

/// Deepest nesting of indexes followed.
pub const MAX_DEPTH: usize = 4;
/// Most documents (indexes and manifests) read below the top one.
pub const MAX_DOCUMENTS: usize = 256;

/// An inspected image or index.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Inspection {
    /// What was inspected, as given.
    pub reference: String,
    /// The digest of the top document.
    pub digest: String,
    /// Its media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// `index` or `manifest`.
    pub kind: String,
    /// The index's annotations (a manifest's are on its image).
    pub annotations: BTreeMap<String, String>,
    /// One entry per platform manifest shown (all, or the `--platform` ones).
    pub images: Vec<ImageInfo>,
}

/// One platform's image.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ImageInfo {
    /// `os/arch[/variant]`, from the index entry, else the config.
    pub platform: String,
    /// The manifest's digest.
    pub digest: String,
    /// The manifest's media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The manifest's size.
    pub size: u64,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
    /// The config.
    pub config: ConfigInfo,
    /// The layers, base first.
    pub layers: Vec<LayerInfo>,
    /// The history, oldest first.
    pub history: Vec<HistoryInfo>,
}

/// What the config tells a runtime.
#[derive(Clone, Debug, Default, Serialize, JsonSchema)]
pub struct ConfigInfo {
    /// The config blob's digest.
    pub digest: String,
    /// The creation time (RFC 3339), if any.
    pub created: Option<String>,
    /// The user (`uid[:gid]` or names), if any.
    pub user: Option<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// The entrypoint, if any.
    pub entrypoint: Option<Vec<String>>,
    /// The default arguments, if any.
    pub cmd: Option<Vec<String>>,
    /// The working folder, if any.
    #[serde(rename = "workingDir")]
    pub working_dir: Option<String>,
    /// Exposed ports (`8080/tcp`).
    #[serde(rename = "exposedPorts")]
    pub exposed_ports: Vec<String>,
    /// Volumes.
    pub volumes: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The stop signal, if any.
    #[serde(rename = "stopSignal")]
    pub stop_signal: Option<String>,
}

/// One layer.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct LayerInfo {
    /// The blob's digest.
    pub digest: String,
    /// The blob's size.
    pub size: u64,
    /// Its media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The uncompressed tar's digest (from the config), if listed.
    #[serde(rename = "diffId")]
    pub diff_id: Option<String>,
}

/// One history entry.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct HistoryInfo {
    /// When (RFC 3339), if recorded.
    pub created: Option<String>,
    /// What made it, if recorded.
    #[serde(rename = "createdBy")]
    pub created_by: Option<String>,
    /// A comment, if any.
    pub comment: Option<String>,
    /// Whether the step made no layer.
    #[serde(rename = "emptyLayer")]
    pub empty_layer: bool,
}

/// The JSON Schema of `imgc inspect --format json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Inspection);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

/// Inspects the document `top` (whose bytes are `bytes`), showing only the
/// images of `platforms` when any are given.
pub fn inspect(
    reference: &str,
    top: &Descriptor,
    bytes: &[u8],
    fetch: &dyn Fetch,
    platforms: &[Platform],
) -> Result<Inspection, InspectError> {
    let is_index = oci::is_index_media_type(&top.media_type);
    let mut images = Vec::new();
    let annotations = if is_index {
        let index: Index = parse(bytes, "index", &top.digest)?;
        let mut budget = MAX_DOCUMENTS;
        collect(&index, fetch, 0, &mut budget, &mut images)?;
        index.annotations
    } else {
        images.push(image(top, bytes, fetch)?);
        BTreeMap::new()
    };
    let images = select(images, platforms)?;
    Ok(Inspection {
        reference: reference.to_string(),
        digest: top.digest.to_string(),
        media_type: top.media_type.clone(),
        size: bytes.len() as u64,
        kind: if is_index { "index" } else { "manifest" }.to_string(),
        annotations,
        images,
    })
}

/// The images of an index, nested indexes followed; every document read
/// counts against `budget`.
fn collect(
    index: &Index,
    fetch: &dyn Fetch,
    depth: usize,
    budget: &mut usize,
    out: &mut Vec<ImageInfo>,
) -> Result<(), InspectError> {
    if depth >= MAX_DEPTH {
        return Err(InspectError::TooMany);
    }
    for d in &index.manifests {
        *budget = budget.checked_sub(1).ok_or(InspectError::TooMany)?;
        let bytes = fetch.fetch(d)?;
        if oci::is_index_media_type(&d.media_type) {
            let nested: Index = parse(&bytes, "index", &d.digest)?;
            collect(&nested, fetch, depth + 1, budget, out)?;
            continue;
        }
        let mut info = image(d, &bytes, fetch)?;
        if let Some(p) = &d.platform {
            info.platform = p.to_string();
        }
        out.push(info);
    }
    Ok(())
}

/// One manifest, its config and history.
fn image(desc: &Descriptor, bytes: &[u8], fetch: &dyn Fetch) -> Result<ImageInfo, InspectError> {
    let manifest: Manifest = parse(bytes, "manifest", &desc.digest)?;
    let config_bytes = fetch.fetch(&manifest.config)?;
    let config: ImageConfig = parse(&config_bytes, "config", &manifest.config.digest)?;
    let diff_ids = &config.rootfs.diff_ids;
    let layers = manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| LayerInfo {
            digest: l.digest.to_string(),
            size: l.size,
            media_type: l.media_type.clone(),
            diff_id: diff_ids.get(i).map(|d| d.to_string()),
        })
        .collect();
    let history = config
        .history
        .iter()
        .map(|h| HistoryInfo {
            created: h.created.clone(),
            created_by: h.created_by.clone(),
            comment: h.comment.clone(),
            empty_layer: h.empty_layer.unwrap_or(false),
        })
        .collect();
    let mut platform = format!("{}/{}", config.os, config.architecture);
    if let Some(v) = &config.variant {
        platform = format!("{platform}/{v}");
    }
    Ok(ImageInfo {
        platform,
        digest: desc.digest.to_string(),
        media_type: desc.media_type.clone(),
        size: desc.size,
        annotations: manifest.annotations.clone(),
        config: config_info(&manifest.config.digest, &config),
        layers,
        history,
    })
}

fn config_info(digest: &Digest, config: &ImageConfig) -> ConfigInfo {
    let c = config.config.clone().unwrap_or_default();
    let keys = |m: Option<BTreeMap<String, serde_json::Value>>| {
        m.map(|m| m.into_keys().collect()).unwrap_or_default()
    };
    ConfigInfo {
        digest: digest.to_string(),
        created: config.created.clone(),
        user: c.user,
        env: c.env.unwrap_or_default(),
        entrypoint: c.entrypoint,
        cmd: c.cmd,
        working_dir: c.working_dir,
        exposed_ports: keys(c.exposed_ports),
        volumes: keys(c.volumes),
        labels: c.labels.unwrap_or_default(),
        stop_signal: c.stop_signal,
    }
}

/// The images of the platforms asked for (all when none is).
fn select(images: Vec<ImageInfo>, platforms: &[Platform]) -> Result<Vec<ImageInfo>, InspectError> {
    if platforms.is_empty() {
        return Ok(images);
    }
    let parsed = |i: &ImageInfo| i.platform.parse::<Platform>().ok();
    for want in platforms {
        if !images
            .iter()
            .any(|i| parsed(i).is_some_and(|p| want.matches(&p)))
        {
            let names: Vec<&str> = images.iter().map(|i| i.platform.as_str()).collect();
            return Err(InspectError::NoPlatform {
                platform: want.to_string(),
                available: names.join(", "),
            });
        }
    }
    Ok(images
        .into_iter()
        .filter(|i| parsed(i).is_some_and(|p| platforms.iter().any(|w| w.matches(&p))))
        .collect())
}

fn parse<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
    digest: &Digest,
) -> Result<T, InspectError> {
    serde_json::from_slice(bytes).map_err(|source| InspectError::Parse {
        what,
        digest: digest.clone(),
        source,
    })
}

/// Documents of a local OCI layout.
#[derive(Debug)]
pub struct LayoutDocuments<'a> {
    /// The layout folder.
    pub dir: &'a std::path::Path,
}

impl Fetch for LayoutDocuments<'_> {
    fn fetch(&self, desc: &Descriptor) -> Result<Vec<u8>, InspectError> {
        crate::base::read_blob(self.dir, desc).map_err(|e| InspectError::Fetch {
            what: "document",
            digest: desc.digest.clone(),
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every document is an empty index, counted as it is read.
    struct EmptyIndexes(std::cell::Cell<usize>);

    impl Fetch for EmptyIndexes {
        fn fetch(&self, _: &Descriptor) -> Result<Vec<u8>, InspectError> {
            self.0.set(self.0.get() + 1);
            Ok(br#"{"schemaVersion":2,"manifests":[]}"#.to_vec())
        }
    }

    #[test]
    fn an_index_of_too_many_documents_is_refused_before_reading_them_all() {
        let child = Descriptor::new(
            oci::MEDIA_TYPE_INDEX.to_string(),
            oci::sha256_digest(b"child"),
            35,
        );
        let mut index: Index =
            serde_json::from_str(r#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
        index.manifests = vec![child; 10_000];
        let bytes = serde_json::to_vec(&index).unwrap();
        let top = Descriptor::new(
            oci::MEDIA_TYPE_INDEX.to_string(),
            oci::sha256_digest(&bytes),
            bytes.len() as u64,
        );
        let docs = EmptyIndexes(std::cell::Cell::new(0));
        let err = inspect("oci:x", &top, &bytes, &docs, &[]).unwrap_err();
        assert!(matches!(err, InspectError::TooMany), "{err}");
        assert!(err.to_string().contains("256 documents"), "{err}");
        assert_eq!(docs.0.get(), MAX_DOCUMENTS);
    }
}
