//! OCI wire types: digests, descriptors, platforms, manifests, indexes and
//! image configs, plus the canonical JSON writer every document goes through.
//!
//! Owns the shape of the bytes imgc writes. It must not touch the filesystem
//! or know how a value was built. Maps are `BTreeMap` so that serialization
//! can never depend on hash order (DETERMINISM.md rule 13).

mod canonical;
mod codec;
mod digest;
mod layout_ref;
mod platform;

pub use canonical::to_canonical_json;
pub use codec::Codec;
pub use layout_ref::{select_entry, LayoutRef, LayoutRefError, SelectError};

/// The tag grammar of the distribution spec:
/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Where a blob lives in an OCI image layout (or the store, laid out as
/// one): `DIR/blobs/sha256/<hex>`.
pub fn blob_path(dir: &std::path::Path, digest: &Digest) -> std::path::PathBuf {
    blobs_dir(dir).join(digest.hex())
}

/// The folder of a layout's sha256 blobs: `DIR/blobs/sha256`.
pub fn blobs_dir(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("blobs").join("sha256")
}

/// The platform of an index entry that is a platform's image: an image
/// manifest whose platform is given and known. Attestations and other
/// artifacts, listed as `unknown/unknown`, are not.
pub fn listed_platform(entry: &Descriptor) -> Option<&Platform> {
    if !is_manifest_media_type(&entry.media_type) {
        return None;
    }
    entry.platform.as_ref().filter(|p| p.os != "unknown")
}

/// Largest manifest, index or config imgc reads (4 MiB).
pub const MAX_DOCUMENT_SIZE: u64 = 4 * 1024 * 1024;
pub use digest::{sha256_digest, Digest, DigestError, HashingWriter, SideHasher, SideHashing};
pub use platform::{Platform, PlatformError};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `application/vnd.oci.image.index.v1+json`
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// `application/vnd.oci.image.manifest.v1+json`
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI 1.1's empty descriptor media type (an artifact's config `{}`).
pub const MEDIA_TYPE_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// `application/vnd.oci.image.config.v1+json`
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// `application/vnd.oci.image.layer.v1.tar` (a suffix `+gzip` or `+zstd` names the compression)
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker manifest list (v2.2).
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest (v2.2).
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The annotation that names a tag in an image layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation holding the creation time (RFC 3339).
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// The annotation naming the base image.
pub const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
/// The annotation holding the base image's manifest digest.
pub const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

/// Whether a media type names an image index or a Docker manifest list.
pub fn is_index_media_type(mt: &str) -> bool {
    mt == MEDIA_TYPE_INDEX || mt == MEDIA_TYPE_DOCKER_LIST
}

/// Whether a media type names an image manifest (OCI or Docker v2.2).
pub fn is_manifest_media_type(mt: &str) -> bool {
    mt == MEDIA_TYPE_MANIFEST || mt == MEDIA_TYPE_DOCKER_MANIFEST
}

/// A content descriptor. "The digest property MUST be present."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    pub media_type: String,
    /// The digest of the referenced content.
    pub digest: Digest,
    /// The size in bytes of the referenced content.
    pub size: u64,
    /// Where the content may be fetched from besides the registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform of a manifest listed in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The artifact type of an artifact manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Fields imgc does not model (`data`, future fields), kept verbatim so
    /// that rewriting an existing `index.json` loses nothing.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Descriptor {
    /// A descriptor with no urls, annotations or platform.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
            extra: BTreeMap::new(),
        }
    }
}

/// An image manifest (OCI image-spec `manifest.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// "This REQUIRED property specifies the image manifest schema version. ... MUST be 2."
    pub schema_version: u32,
    /// "This property SHOULD be used".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The artifact type, for artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (OCI image-spec `image-index.md`), also used for `index.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// "MUST be 2."
    pub schema_version: u32,
    /// "This property SHOULD be used".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The artifact type, for artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The manifests (or nested indexes).
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Fields imgc does not model, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A document that may be a manifest or an index: read first to tell them
/// apart, and to reject a document that claims to be both (CVE-2021-41190).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnyDocument {
    /// The declared media type.
    #[serde(default)]
    pub media_type: Option<String>,
    /// Present on manifests.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Present on manifests.
    #[serde(default)]
    pub layers: Option<serde_json::Value>,
    /// Present on indexes.
    #[serde(default)]
    pub manifests: Option<serde_json::Value>,
}

/// The image config (OCI image-spec `config.md`). Fields imgc does not model
/// are kept in `extra` so that a base image's config survives a rebuild.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// "The CPU architecture which the binaries in this image are built to run on."
    #[serde(default)]
    pub architecture: String,
    /// "The name of the operating system which the image is built to run on."
    #[serde(default)]
    pub os: String,
    /// The OS version.
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// OS features.
    #[serde(default, rename = "os.features", skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// The CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The execution parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    /// The layer content addresses.
    #[serde(default)]
    pub rootfs: RootFs,
    /// One entry per layer (and per empty step of other builders).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Fields imgc does not model, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// The execution parameters of a container (`config` in the image config).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `uid[:gid]` or names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `"8080/tcp": {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// `KEY=value` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// The entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// The default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `"/data": {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    /// The working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// The signal that stops the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Fields imgc does not model (Healthcheck, Shell, ...), kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `rootfs` of the image config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// "MUST be set to layers."
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed layer digests, base first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry of the image config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// What made the layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// A comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step made no layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
}

/// Checks the bytes of an `oci-layout` file: JSON with an
/// `imageLayoutVersion` of 1.x.x (the image layout spec's only version).
pub fn check_oci_layout(bytes: &[u8]) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let version = v["imageLayoutVersion"]
        .as_str()
        .ok_or("it has no `imageLayoutVersion` string")?;
    let parts: Vec<&str> = version.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if parts.len() != 3 || parts[0] != "1" || !parts.iter().all(numeric) {
        return Err(format!(
            "imageLayoutVersion `{version}` is not 1.x.x, the versions imgc reads"
        ));
    }
    Ok(())
}

/// Formats seconds since the Unix epoch as RFC 3339 in UTC (`1970-01-01T00:00:00Z`).
///
/// ```
/// assert_eq!(imgc::oci::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
/// ```
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian), after H. Hinnant's public-domain algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn descriptors_and_indexes_keep_unknown_fields() {
        let raw = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0,"data":"","x-future":1}],"x-top":true}"#;
        let index: Index = serde_json::from_slice(raw).unwrap();
        let out = to_canonical_json(&index).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(back["manifests"][0]["data"], "");
        assert_eq!(back["manifests"][0]["x-future"], 1);
        assert_eq!(back["x-top"], true);
    }

    #[test]
    fn config_keeps_unknown_fields_and_sorts_keys() {
        let raw = br#"{"os":"linux","architecture":"amd64","config":{"Healthcheck":{"Test":["NONE"]},"Env":["A=1"]},"rootfs":{"type":"layers","diff_ids":[]},"docker_version":"20"}"#;
        let cfg: ImageConfig = serde_json::from_slice(raw).unwrap();
        let out = String::from_utf8(to_canonical_json(&cfg).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"architecture":"amd64","config":{"Env":["A=1"],"Healthcheck":{"Test":["NONE"]}},"docker_version":"20","os":"linux","rootfs":{"diff_ids":[],"type":"layers"}}"#
        );
    }
}
