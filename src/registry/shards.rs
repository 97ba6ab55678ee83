//! The metadata file (`--metadata-file`) and joining CI shards: each shard
//! builds some platforms and pushes their manifests by digest; `imgc index`
//! reads the shards' metadata and assembles the index a one-machine build
//! would have written, byte for byte (same entries in the spec's platform
//! order, same annotations, same canonical JSON).

use super::RegistryError;
use crate::oci::{self, Descriptor, Digest, Index};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Why a metadata file cannot be read, or a set of shards cannot be joined.
/// Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The file is not metadata.
    #[error("`{path}` is not an imgc metadata file")]
    NotMetadata {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Nothing to join.
    #[error("no metadata files to join (expected the shards' --metadata-file outputs)")]
    NoShards,
    /// A file without the spec's platform list.
    #[error("`{name}` does not list the spec's platforms (it was written by an older imgc, or not by `imgc build`); build the shard again")]
    NoPlatformList {
        /// The file.
        name: String,
    },
    /// A shard of another spec.
    #[error("`{name}` and `{first}` come from different specs (their {what} differ); it is a foreign shard")]
    ForeignSpec {
        /// The shard.
        name: String,
        /// The first shard.
        first: String,
        /// What differs.
        what: &'static str,
    },
    /// A platform the spec lacks, or at another position.
    #[error("`{name}` holds platform {platform} at position {position}, which is not the spec's ({platforms}); it is a foreign shard")]
    ForeignPlatform {
        /// The shard.
        name: String,
        /// Its platform.
        platform: String,
        /// Its position.
        position: usize,
        /// The spec's platforms.
        platforms: String,
    },
    /// Two shards of one platform.
    #[error("`{name}` and `{other}` both build platform {platform}; remove the extra shard")]
    Duplicate {
        /// The later shard.
        name: String,
        /// The earlier one.
        other: String,
        /// The platform.
        platform: String,
    },
    /// A platform no shard built.
    #[error("no shard builds platform {platform} (position {position} of the spec's {count}: {platforms}); its metadata file is missing")]
    Missing {
        /// The platform.
        platform: String,
        /// Its position.
        position: usize,
        /// How many the spec has.
        count: usize,
        /// The spec's platforms.
        platforms: String,
    },
    /// The joined index could not be encoded.
    #[error("failed to encode the joined index")]
    Encode(#[source] serde_json::Error),
}

/// One platform manifest in a metadata file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// `os/arch[/variant]`.
    pub platform: String,
    /// Its digest.
    pub digest: Digest,
    /// Its position among all the spec's platforms (the index order).
    pub position: usize,
    /// The index entry for it, exactly as the index lists it.
    pub descriptor: Descriptor,
}

/// What `--metadata-file` writes: enough to join shards and to drive a pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The repository pushed to (`registry/repository`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The image index digest (of the layout written, or pushed).
    pub index_digest: Digest,
    /// Whether the index itself was pushed (false for `--push-by-digest`).
    pub index_pushed: bool,
    /// The index media type.
    pub index_media_type: String,
    /// The index annotations.
    pub index_annotations: BTreeMap<String, String>,
    /// Each platform manifest.
    pub manifests: Vec<ManifestEntry>,
    /// The tags.
    pub tags: Vec<String>,
    /// Every reference pushed.
    pub pushed: Vec<String>,
    /// All the spec's platforms in index order, also those other shards
    /// build: `imgc index` refuses a set of shards that misses one.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// The sha256 of the spec file built (`None` when not built from a
    /// spec, as by `imgc push`): shards of other specs are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_digest: Option<Digest>,
}

impl Metadata {
    /// Metadata for an index (its entries at `positions` among all the
    /// spec's platforms); tags and pushed references start empty.
    pub fn for_index(
        name: Option<String>,
        index_digest: &Digest,
        index: &Index,
        positions: &[usize],
        index_pushed: bool,
    ) -> Metadata {
        Metadata {
            name,
            index_digest: index_digest.clone(),
            index_pushed,
            index_media_type: index
                .media_type
                .clone()
                .unwrap_or_else(|| oci::MEDIA_TYPE_INDEX.to_string()),
            index_annotations: index.annotations.clone(),
            manifests: index
                .manifests
                .iter()
                .zip(positions)
                .map(|(d, &position)| ManifestEntry {
                    platform: d
                        .platform
                        .as_ref()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    digest: d.digest.clone(),
                    position,
                    descriptor: d.clone(),
                })
                .collect(),
            tags: Vec::new(),
            pushed: Vec::new(),
            platforms: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect(),
            spec_digest: None,
        }
    }

    /// Reads a metadata file (bounded to 4 MiB).
    pub fn read(path: &Path) -> Result<Metadata, RegistryError> {
        let bytes = crate::fsx::read_bounded(
            path,
            crate::oci::MAX_DOCUMENT_SIZE,
            crate::fsx::Links::Follow,
        )
        .map_err(|source| RegistryError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| {
            RegistryError::from(ShardError::NotMetadata {
                path: path.to_path_buf(),
                source,
            })
        })
    }
}

/// Refuses a shard of another spec than the first shard's.
fn check_same_spec(
    name: &str,
    m: &Metadata,
    first_name: &str,
    first: &Metadata,
) -> Result<(), ShardError> {
    if m.platforms.is_empty() {
        return Err(ShardError::NoPlatformList {
            name: name.to_string(),
        });
    }
    let differs = if m.spec_digest != first.spec_digest {
        Some("spec files")
    } else if m.platforms != first.platforms {
        Some("platform lists")
    } else if m.index_annotations != first.index_annotations
        || m.index_media_type != first.index_media_type
    {
        Some("index annotations or media types")
    } else {
        None
    };
    match differs {
        Some(what) => Err(ShardError::ForeignSpec {
            name: name.to_string(),
            first: first_name.to_string(),
            what,
        }),
        None => Ok(()),
    }
}

/// The joined index: its bytes and descriptor.
#[derive(Clone, Debug)]
pub struct Joined {
    /// Canonical JSON bytes.
    pub bytes: Vec<u8>,
    /// Its descriptor.
    pub descriptor: Descriptor,
    /// The entries, in order.
    pub manifests: Vec<ManifestEntry>,
}

/// Joins shards' metadata into one index. Every shard must come from the
/// same spec (same spec digest, platform list, index annotations and media
/// type), each of the spec's platforms must be built by exactly one shard,
/// and no shard may hold a platform the spec lacks.
pub fn join(shards: &[(String, Metadata)]) -> Result<Joined, ShardError> {
    let Some((first_name, first)) = shards.first() else {
        return Err(ShardError::NoShards);
    };
    let mut by_position: BTreeMap<usize, (String, ManifestEntry)> = BTreeMap::new();
    for (name, m) in shards {
        check_same_spec(name, m, first_name, first)?;
        for e in &m.manifests {
            if first.platforms.get(e.position) != Some(&e.platform) {
                return Err(ShardError::ForeignPlatform {
                    name: name.clone(),
                    platform: e.platform.clone(),
                    position: e.position,
                    platforms: first.platforms.join(", "),
                });
            }
            if let Some((other, _)) = by_position.get(&e.position) {
                return Err(ShardError::Duplicate {
                    name: name.clone(),
                    other: other.clone(),
                    platform: e.platform.clone(),
                });
            }
            by_position.insert(e.position, (name.clone(), e.clone()));
        }
    }
    if let Some((i, p)) =
        (first.platforms.iter().enumerate()).find(|(i, _)| !by_position.contains_key(i))
    {
        return Err(ShardError::Missing {
            platform: p.clone(),
            position: i,
            count: first.platforms.len(),
            platforms: first.platforms.join(", "),
        });
    }
    let manifests: Vec<ManifestEntry> = by_position.into_values().map(|(_, e)| e).collect();
    let index = Index {
        schema_version: 2,
        media_type: Some(first.index_media_type.clone()),
        artifact_type: None,
        manifests: manifests.iter().map(|e| e.descriptor.clone()).collect(),
        subject: None,
        annotations: first.index_annotations.clone(),
        extra: Default::default(),
    };
    let bytes = oci::to_canonical_json(&index).map_err(ShardError::Encode)?;
    let descriptor = Descriptor::new(
        first.index_media_type.clone(),
        oci::sha256_digest(&bytes),
        bytes.len() as u64,
    );
    Ok(Joined {
        bytes,
        descriptor,
        manifests,
    })
}
