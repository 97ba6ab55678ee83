//! Garbage collection of a layout's blobs: what `index.json` no longer
//! reaches is removed, and nothing else, ever.
//!
//! Reachability follows every descriptor of every JSON document reachable
//! from `index.json` (`manifests`, `config`, `layers`, `blobs`, `subject`),
//! whatever its media type: a Helm chart, an OCI 1.1 artifact or any other
//! document imgc does not model keeps what it lists. A blob is read as a
//! document when it is small enough and starts with `{`. It is conservative
//! in every doubt: when a reachable document cannot be read or parsed, or
//! `blobs` or `blobs/sha256` is a symlink, nothing is removed. Only regular
//! files named like a sha256 digest are ever removed, and never through a
//! symlink. It must run under the layout's lock.

use crate::fsx::{self, Links};
use crate::oci::MAX_DOCUMENT_SIZE;
use crate::oci::{self, Digest, Index};
use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::Path;

/// Why garbage collection removed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// `blobs` or `blobs/sha256` is a symlink (named).
    Symlinked(String),
    /// A reachable document could not be read or is not JSON.
    Unreadable(Digest),
}

/// Whether a media type names a JSON document.
fn is_document_type(media_type: &str) -> bool {
    oci::is_index_media_type(media_type)
        || oci::is_manifest_media_type(media_type)
        || media_type.ends_with("+json")
        || media_type.ends_with("/json")
}

/// Reads a blob as a JSON document if it is one: `Ok(None)` when it is not
/// (too large, or not starting with `{`), `Err` when it cannot be read.
fn read_document(path: &Path, size: u64) -> Result<Option<serde_json::Value>, ()> {
    if size > MAX_DOCUMENT_SIZE {
        return Ok(None);
    }
    let mut file = fsx::open_regular(path, Links::Refuse).map_err(|_| ())?;
    let mut first = [0u8; 1];
    if file.read(&mut first).map_err(|_| ())? == 0 || first[0] != b'{' {
        return Ok(None);
    }
    let rest = fsx::read_to_end_bounded(file, MAX_DOCUMENT_SIZE).map_err(|_| ())?;
    let mut bytes = first.to_vec();
    bytes.extend_from_slice(&rest);
    serde_json::from_slice(&bytes).map(Some).map_err(|_| ())
}

/// The descriptors a document lists (`(media type, digest, size)` each);
/// `Err` when one has a malformed digest.
fn listed(doc: &serde_json::Value) -> Result<Vec<(String, Digest, u64)>, ()> {
    let mut out = Vec::new();
    let mut push = |v: &serde_json::Value| -> Result<(), ()> {
        let Some(d) = v["digest"].as_str() else {
            return Ok(());
        };
        let digest: Digest = d.parse().map_err(|_| ())?;
        let mt = v["mediaType"].as_str().unwrap_or_default().to_string();
        out.push((mt, digest, v["size"].as_u64().unwrap_or(u64::MAX)));
        Ok(())
    };
    for key in ["manifests", "layers", "blobs"] {
        for item in doc[key].as_array().into_iter().flatten() {
            push(item)?;
        }
    }
    for key in ["config", "subject"] {
        if doc[key].is_object() {
            push(&doc[key])?;
        }
    }
    Ok(out)
}

/// The digests `index` reaches in the layout at `dir`.
fn reachable(dir: &Path, index: &Index) -> Result<BTreeSet<Digest>, Skipped> {
    let blobs = crate::oci::blobs_dir(dir);
    let mut seen = BTreeSet::new();
    let mut todo: Vec<(String, Digest, u64)> = index
        .manifests
        .iter()
        .map(|d| (d.media_type.clone(), d.digest.clone(), d.size))
        .collect();
    while let Some((media_type, digest, size)) = todo.pop() {
        if !seen.insert(digest.clone()) {
            continue;
        }
        let path = blobs.join(digest.hex());
        let must_be_document = is_document_type(&media_type);
        match read_document(&path, size) {
            Ok(Some(doc)) => {
                todo.extend(listed(&doc).map_err(|_| Skipped::Unreadable(digest.clone()))?)
            }
            Ok(None) if must_be_document => return Err(Skipped::Unreadable(digest)),
            Err(()) if must_be_document => return Err(Skipped::Unreadable(digest)),
            _ => {}
        }
    }
    Ok(seen)
}

/// Removes the blobs of the layout at `dir` that `index` (its `index.json`)
/// does not reach (see the module documentation). Returns how many were
/// removed, or why nothing was.
pub fn collect(dir: &Path, index: &Index) -> Result<usize, Skipped> {
    if let Some(link) = super::symlinked_blobs(dir) {
        return Err(Skipped::Symlinked(link.display().to_string()));
    }
    let keep = reachable(dir, index)?;
    let blobs = crate::oci::blobs_dir(dir);
    let Ok(entries) = fs::read_dir(&blobs) else {
        return Ok(0);
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(digest) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) else {
            continue;
        };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && !keep.contains(&digest) && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Descriptor;

    fn put(dir: &Path, bytes: &[u8]) -> Descriptor {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let d = oci::sha256_digest(bytes);
        fs::write(blobs.join(d.hex()), bytes).unwrap();
        Descriptor::new("application/octet-stream", d, bytes.len() as u64)
    }

    fn index(entries: Vec<Descriptor>) -> Index {
        serde_json::from_value(serde_json::json!({"schemaVersion": 2, "manifests": entries}))
            .unwrap()
    }

    #[test]
    fn documents_of_unknown_media_types_keep_what_they_list() {
        let dir = tempfile::tempdir().unwrap();
        let chart = put(dir.path(), b"helm chart bytes");
        let config = put(dir.path(), b"{}");
        let junk = put(dir.path(), b"nobody wants me");
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.example.artifact.v1+json",
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": config.digest, "size": 2},
            "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", "digest": chart.digest, "size": chart.size}],
        });
        let mut m = put(dir.path(), &serde_json::to_vec(&manifest).unwrap());
        m.media_type = "application/vnd.example.artifact.v1+json".into();
        assert_eq!(collect(dir.path(), &index(vec![m])), Ok(1));
        assert!(!dir
            .path()
            .join("blobs/sha256")
            .join(junk.digest.hex())
            .exists());
        assert!(dir
            .path()
            .join("blobs/sha256")
            .join(chart.digest.hex())
            .exists());
    }

    #[test]
    fn a_missing_document_or_a_symlinked_blobs_folder_removes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), b"junk");
        let mut gone = Descriptor::new(oci::MEDIA_TYPE_MANIFEST, oci::sha256_digest(b"missing"), 7);
        gone.media_type = oci::MEDIA_TYPE_MANIFEST.into();
        assert!(matches!(
            collect(dir.path(), &index(vec![gone])),
            Err(Skipped::Unreadable(_))
        ));
        let shared = tempfile::tempdir().unwrap();
        put(shared.path(), b"someone else's");
        let layout = dir.path().join("l");
        fs::create_dir_all(layout.join("blobs")).unwrap();
        std::os::unix::fs::symlink(
            shared.path().join("blobs/sha256"),
            layout.join("blobs/sha256"),
        )
        .unwrap();
        assert!(matches!(
            collect(&layout, &index(vec![])),
            Err(Skipped::Symlinked(_))
        ));
        assert_eq!(
            fs::read_dir(shared.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            1
        );
    }
}
