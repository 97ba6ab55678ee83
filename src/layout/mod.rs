//! The OCI image layout on disk: staged blob writes, the atomic commit of
//! `index.json` under a lock, and re-verification of blobs already present.
//!
//! Everything a build writes goes first into a staging folder beside the
//! target (same filesystem). Only when the whole build has succeeded are
//! the blobs renamed into place and `index.json` replaced, so a failed
//! build leaves an existing layout exactly as it was. A blob already in the
//! target is re-hashed before it is trusted, unless it is the very file
//! (same inode) of a source the caller vouches for (the layer cache's
//! blobs, whose stamps it keeps: see [`LayoutWriter::place_blob`]).
//!
//! Staging folders are locked while their build lives and swept when it is
//! gone ([`staging`]); garbage collection never removes what a tag reaches
//! and never deletes through a symlink ([`collect_garbage`]).

use crate::fsx::{self, Links};
mod gc;
pub mod staging;

pub use gc::{collect as collect_garbage, Skipped as GcSkipped};

use crate::oci::{self, Descriptor, Digest, Index};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The `oci-layout` file's content.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Errors writing a layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// An I/O error on a named path.
    #[error("failed to {action} `{path}`")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The output folder exists and is not an OCI layout.
    #[error("output `{path}` exists and is not an OCI image layout (no `oci-layout` file); refusing to write into it")]
    NotALayout {
        /// The folder.
        path: PathBuf,
    },
    /// A copied blob does not match its descriptor.
    #[error("blob `{path}` does not match its descriptor (expected {expected}, {expected_size} bytes; found {actual}, {actual_size} bytes{})", if *actual_size > *expected_size { " or more" } else { "" })]
    DigestMismatch {
        /// The source file.
        path: PathBuf,
        /// The expected digest.
        expected: Digest,
        /// The descriptor's size.
        expected_size: u64,
        /// The digest of what was read (at most one byte past the size).
        actual: Digest,
        /// The bytes read.
        actual_size: u64,
    },
    /// The `oci-layout` file is not what the image layout spec says.
    #[error("`{path}` is not a valid `oci-layout` file: {reason}")]
    BadLayoutFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `blobs` or `blobs/sha256` of the output is a symlink.
    #[error("`{path}` is a symbolic link; imgc never writes or deletes blobs through a symlink")]
    SymlinkedBlobs {
        /// The symlink.
        path: PathBuf,
    },
    /// The existing `index.json` is larger than imgc reads.
    #[error("existing `{path}` is larger than {MAX_LAYOUT_INDEX} bytes")]
    IndexTooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The existing `index.json` cannot be parsed.
    #[error("existing `{path}` is not a valid image index")]
    BadIndex {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LayoutError {
    let path = path.to_path_buf();
    move |source| LayoutError::Io {
        action,
        path,
        source,
    }
}

/// Writes one build's blobs and index into a layout, atomically.
#[derive(Debug)]
pub struct LayoutWriter {
    target: PathBuf,
    staging: PathBuf,
    /// Holds the staging folder's lock; removes the folder when dropped.
    guard: staging::Staging,
    next_tmp: u64,
    /// Blobs found already in the target (so not staged), with the layout
    /// they came from: checked again under the lock at commit, because
    /// another build's garbage collection may have removed them since.
    /// The inode, when the caller vouched for it (see [`Self::place_blob`]).
    reused: Vec<Reused>,
    /// Small blobs given as bytes (configs, manifests, indexes) that the
    /// target held already, verified: written only if gone at commit.
    kept: Vec<(Digest, Vec<u8>)>,
}

/// A blob found in the target: the layout it came from, its descriptor,
/// and the inode the caller vouched for, if any.
type Reused = (PathBuf, Descriptor, Option<(u64, u64)>);

/// Where [`LayoutWriter::place_blob`] found or put a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The output held it already (the source was not read).
    Held,
    /// Hard-linked from the source, whose copy the caller vouched for.
    Linked,
    /// Copied from the source, its digest checked on the way.
    Copied,
}

/// Whether `path` is the regular file `id` (device, inode) of `size` bytes.
fn is_file_of(path: &Path, id: (u64, u64), size: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_file() && (m.dev(), m.ino()) == id && m.len() == size)
}

impl LayoutWriter {
    /// Prepares to write the layout at `target` (created if missing).
    pub fn create(target: &Path) -> Result<Self, LayoutError> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "layout".to_string());
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(io_err("create folder", &parent))?;
        if target.exists() {
            // Emptiness first: a concurrent build's commit makes `oci-layout`
            // the first entry of a new layout, so "not empty" then implies it.
            let empty = target.is_dir()
                && fs::read_dir(target)
                    .map_err(io_err("read folder", target))?
                    .next()
                    .is_none();
            let marker = target.join("oci-layout");
            if !empty {
                if !marker.is_file() {
                    return Err(LayoutError::NotALayout {
                        path: target.to_path_buf(),
                    });
                }
                check_layout_file(&marker)?;
                check_blobs_not_symlinked(target)?;
            }
        }
        // Litter of builds that died (kill -9, power loss) goes first.
        staging::sweep(&parent, &name);
        let made = staging::Staging::create(&parent, &name)
            .map_err(io_err("create staging folder in", &parent))?;
        let staging = made.path.clone();
        let blobs = crate::oci::blobs_dir(&staging);
        fs::create_dir_all(&blobs).map_err(io_err("create folder", &blobs))?;
        Ok(LayoutWriter {
            target: target.to_path_buf(),
            staging,
            guard: made,
            next_tmp: 0,
            reused: Vec::new(),
            kept: Vec::new(),
        })
    }

    /// The layout folder this writer commits to.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// A new empty temporary file in the staging folder.
    pub fn temp_file(&mut self) -> Result<(File, PathBuf), LayoutError> {
        self.next_tmp += 1;
        let path = self.staging.join(format!("tmp-{}", self.next_tmp));
        let file = File::create(&path).map_err(io_err("create", &path))?;
        Ok((file, path))
    }

    /// Where a blob added to this build lies until the commit.
    pub fn staged_path(&self, digest: &Digest) -> PathBuf {
        self.staged(digest)
    }

    fn staged(&self, digest: &Digest) -> PathBuf {
        crate::oci::blob_path(&self.staging, digest)
    }

    fn in_target(&self, digest: &Digest) -> PathBuf {
        crate::oci::blob_path(&self.target, digest)
    }

    /// Moves a finished (synced) temporary file into place as blob `digest`.
    pub fn add_blob_file(&mut self, tmp: &Path, digest: &Digest) -> Result<(), LayoutError> {
        let dest = self.staged(digest);
        fs::rename(tmp, &dest).map_err(io_err("move blob into", &dest))
    }

    /// Writes a blob from bytes and returns its descriptor.
    pub fn add_blob_bytes(
        &mut self,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Descriptor, LayoutError> {
        let digest = oci::sha256_digest(bytes);
        let size = bytes.len() as u64;
        // A rebuild makes the same documents: the target's copies stay, and
        // nothing is written or synced for them.
        if !self.staged(&digest).exists()
            && verify_blob(&self.in_target(&digest), &digest, Some(size))
        {
            self.kept.push((digest.clone(), bytes.to_vec()));
        } else {
            self.stage_bytes(bytes, &digest)?;
        }
        Ok(Descriptor::new(media_type, digest, size))
    }

    /// Stages `bytes`, the blob `digest`.
    fn stage_bytes(&mut self, bytes: &[u8], digest: &Digest) -> Result<(), LayoutError> {
        let (mut file, tmp) = self.temp_file()?;
        file.write_all(bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        self.add_blob_file(&tmp, digest)
    }

    /// Whether the output already holds blob `desc` (staged, or in the
    /// target with the right size; `copy_blob` still verifies its digest).
    pub fn holds(&self, desc: &Descriptor) -> bool {
        self.staged(&desc.digest).exists()
            || fs::symlink_metadata(self.in_target(&desc.digest))
                .is_ok_and(|m| m.is_file() && m.len() == desc.size)
    }

    /// Copies blob `desc` from the layout at `src_dir`, checking its digest
    /// while copying. Returns false when the target already holds a verified
    /// copy (nothing copied).
    pub fn copy_blob(&mut self, src_dir: &Path, desc: &Descriptor) -> Result<bool, LayoutError> {
        if self.staged(&desc.digest).exists() {
            return Ok(false);
        }
        if verify_blob(&self.in_target(&desc.digest), &desc.digest, Some(desc.size)) {
            self.reused
                .push((src_dir.to_path_buf(), desc.clone(), None));
            return Ok(false);
        }
        self.stage_copy(src_dir, desc)?;
        Ok(true)
    }

    /// Places blob `desc` of the layout (or store) at `src_dir`. When the
    /// caller vouches that the source's file, inode `good` (device, inode),
    /// is unchanged since its digest was checked, the output's file of that
    /// same inode is kept without reading it, and a missing one is
    /// hard-linked from the source; anything else is [`Self::copy_blob`].
    pub fn place_blob(
        &mut self,
        src_dir: &Path,
        desc: &Descriptor,
        good: Option<(u64, u64)>,
    ) -> Result<Placement, LayoutError> {
        if self.staged(&desc.digest).exists() {
            return Ok(Placement::Held);
        }
        if let Some(id) = good {
            if is_file_of(&self.in_target(&desc.digest), id, desc.size) {
                self.reused
                    .push((src_dir.to_path_buf(), desc.clone(), Some(id)));
                return Ok(Placement::Held);
            }
            let src = crate::oci::blob_path(src_dir, &desc.digest);
            let staged = self.staged(&desc.digest);
            if is_file_of(&src, id, desc.size) && fs::hard_link(&src, &staged).is_ok() {
                // The link names what was at `src` when linked: if that was
                // swapped since the check, it is not the file vouched for.
                if is_file_of(&staged, id, desc.size) {
                    return Ok(Placement::Linked);
                }
                let _ = fs::remove_file(&staged);
            }
        }
        Ok(match self.copy_blob(src_dir, desc)? {
            true => Placement::Copied,
            false => Placement::Held,
        })
    }

    /// Copies blob `desc` from `src_dir` into staging: at most its declared
    /// size is read, and size and digest are checked while copying.
    fn stage_copy(&mut self, src_dir: &Path, desc: &Descriptor) -> Result<(), LayoutError> {
        let src = crate::oci::blob_path(src_dir, &desc.digest);
        let input = fsx::open_regular(&src, Links::Refuse).map_err(io_err("open", &src))?;
        let (mut out, tmp) = self.temp_file()?;
        let copied = hash_copy(input, desc.size, &mut out);
        let (actual, actual_size) = match copied {
            Ok(found) => found,
            Err(CopyError::Read(e)) => return Err(io_err("read", &src)(e)),
            Err(CopyError::Write(e)) => return Err(io_err("write", &tmp)(e)),
        };
        if actual != desc.digest || actual_size != desc.size {
            let _ = fs::remove_file(&tmp);
            return Err(LayoutError::DigestMismatch {
                path: src,
                expected: desc.digest.clone(),
                expected_size: desc.size,
                actual,
                actual_size,
            });
        }
        out.sync_all().map_err(io_err("sync", &tmp))?;
        self.add_blob_file(&tmp, &desc.digest)
    }

    /// Puts every staged blob into the target, then replaces `index.json`
    /// so that each `(tag, descriptor)` is listed (entries of other tags are
    /// kept), under an exclusive lock on the layout folder. The existing
    /// `index.json` is read and checked before anything moves, so a bad one
    /// leaves the layout as it was. Then, still under the lock, removes the
    /// blobs nothing in `index.json` reaches any more (see
    /// [`collect_garbage`]); returns how many were removed, or why none was.
    pub fn commit(
        mut self,
        refs: &[(String, Descriptor)],
    ) -> Result<Result<usize, GcSkipped>, LayoutError> {
        if fs::symlink_metadata(&self.target).is_err() && self.commit_new(refs)? {
            return Ok(Ok(0));
        }
        match fs::create_dir(&self.target) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(io_err("create folder", &self.target)(e))
            }
            _ => {}
        }
        let dir = File::open(&self.target).map_err(io_err("open", &self.target))?;
        dir.lock().map_err(io_err("lock", &self.target))?;
        // `oci-layout` is the first entry of a new layout (see `create`).
        let layout_file = self.target.join("oci-layout");
        if layout_file.is_file() {
            check_layout_file(&layout_file)?;
        } else {
            write_atomic(&self.staging, &layout_file, OCI_LAYOUT)?;
        }
        check_blobs_not_symlinked(&self.target)?;
        let index_path = self.target.join("index.json");
        let (mut index, old_bytes) = read_layout_index(&index_path)?;
        self.restage_reused()?;
        let moved = self.move_blobs_in()?;
        let bytes = tag_in(&mut index, refs, &index_path)?;
        // The same index (a rebuild with nothing changed) is not written
        // again: nothing to sync.
        if moved || old_bytes.as_deref() != Some(bytes.as_slice()) {
            write_atomic(&self.staging, &index_path, &bytes)?;
            sync_dir(&self.target)?;
        }
        Ok(collect_garbage(&self.target, &index))
    }

    /// A target that does not exist yet is the staging folder made whole
    /// (`oci-layout`, `index.json`) and renamed into place: no folder, blob
    /// or document is made twice. `false` (nothing done to the target) when
    /// the target appeared meanwhile: the caller commits as into an
    /// existing one.
    fn commit_new(&mut self, refs: &[(String, Descriptor)]) -> Result<bool, LayoutError> {
        self.restage_reused()?;
        let index_path = self.staging.join("index.json");
        let bytes = tag_in(&mut empty_index(), refs, &index_path)?;
        write_atomic(&self.staging, &self.staging.join("oci-layout"), OCI_LAYOUT)?;
        write_atomic(&self.staging, &index_path, &bytes)?;
        let blobs = crate::oci::blobs_dir(&self.staging);
        for dir in [
            blobs.as_path(),
            blobs.parent().unwrap_or(&blobs),
            &self.staging,
        ] {
            sync_dir(dir)?;
        }
        let promoted = self
            .guard
            .promote(&self.target)
            .map_err(io_err("move into place", &self.target))?;
        if promoted {
            let parent = match self.target.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            sync_dir(parent)?;
        }
        Ok(promoted)
    }

    /// Blobs reused from the target may have been collected by another
    /// build since they were checked: stage them again if so.
    fn restage_reused(&mut self) -> Result<(), LayoutError> {
        for (digest, bytes) in std::mem::take(&mut self.kept) {
            let size = Some(bytes.len() as u64);
            if !self.staged(&digest).exists()
                && !verify_blob(&self.in_target(&digest), &digest, size)
            {
                self.stage_bytes(&bytes, &digest)?;
            }
        }
        for (src_dir, desc, good) in std::mem::take(&mut self.reused) {
            let target = self.in_target(&desc.digest);
            let kept = match good {
                Some(id) => is_file_of(&target, id, desc.size),
                None => verify_blob(&target, &desc.digest, Some(desc.size)),
            };
            if !self.staged(&desc.digest).exists() && !kept {
                self.stage_copy(&src_dir, &desc)?;
            }
        }
        Ok(())
    }

    /// Renames every staged blob into the target (one already there and
    /// verified is left as it is); returns whether it renamed any.
    fn move_blobs_in(&self) -> Result<bool, LayoutError> {
        let blobs = crate::oci::blobs_dir(&self.target);
        fs::create_dir_all(&blobs).map_err(io_err("create folder", &blobs))?;
        let staged_dir = crate::oci::blobs_dir(&self.staging);
        let mut staged: Vec<_> = fs::read_dir(&staged_dir)
            .map_err(io_err("read folder", &staged_dir))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        staged.sort();
        let mut moved = false;
        for name in staged {
            let from = staged_dir.join(&name);
            let to = blobs.join(&name);
            let trusted = name
                .to_str()
                .and_then(|h| Digest::from_hex(h).ok())
                .is_some_and(|d| verify_blob(&to, &d, None));
            if !trusted {
                fs::rename(&from, &to).map_err(io_err("move blob into", &to))?;
                moved = true;
            }
        }
        if moved {
            sync_dir(&blobs)?;
        }
        Ok(moved)
    }
}

/// Largest `index.json` of an output layout imgc reads (a layout may hold
/// tens of thousands of tags).
pub const MAX_LAYOUT_INDEX: u64 = 64 * 1024 * 1024;

/// Reads an output layout's `index.json` (and its bytes), or an empty
/// index if it has none.
fn read_layout_index(path: &Path) -> Result<(Index, Option<Vec<u8>>), LayoutError> {
    if fs::symlink_metadata(path).is_err() {
        return Ok((empty_index(), None));
    }
    let bytes = fsx::read_bounded(path, MAX_LAYOUT_INDEX, Links::Refuse).map_err(|e| {
        if e.kind() == io::ErrorKind::FileTooLarge {
            LayoutError::IndexTooLarge {
                path: path.to_path_buf(),
            }
        } else {
            io_err("read", path)(e)
        }
    })?;
    let index =
        serde_json::from_slice::<Index>(&bytes).map_err(|source| LayoutError::BadIndex {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((index, Some(bytes)))
}

/// The index of a layout with nothing tagged.
fn empty_index() -> Index {
    Index {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_INDEX.to_string()),
        artifact_type: None,
        manifests: Vec::new(),
        subject: None,
        annotations: Default::default(),
        extra: Default::default(),
    }
}

/// Checks an `oci-layout` file: JSON with an `imageLayoutVersion` of 1.x.x.
pub fn check_layout_file(path: &Path) -> Result<(), LayoutError> {
    let bad = |reason: String| LayoutError::BadLayoutFile {
        path: path.to_path_buf(),
        reason,
    };
    let bytes =
        fsx::read_bounded(path, 64 * 1024, Links::Refuse).map_err(|e| bad(e.to_string()))?;
    oci::check_oci_layout(&bytes).map_err(bad)
}

/// `blobs` or `blobs/sha256` of the layout at `dir`, if either is a symlink.
fn symlinked_blobs(dir: &Path) -> Option<PathBuf> {
    ["blobs", "blobs/sha256"]
        .iter()
        .map(|sub| dir.join(sub))
        .find(|p| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()))
}

/// Refuses a layout whose `blobs` or `blobs/sha256` is a symlink.
fn check_blobs_not_symlinked(dir: &Path) -> Result<(), LayoutError> {
    match symlinked_blobs(dir) {
        Some(path) => Err(LayoutError::SymlinkedBlobs { path }),
        None => Ok(()),
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies at most `limit + 1` bytes of `input` to `out`, returning the
/// digest and size of what was read (more than `limit` means too large).
fn hash_copy(input: File, limit: u64, out: &mut impl Write) -> Result<(Digest, u64), CopyError> {
    let mut input = input.take(limit.saturating_add(1));
    let mut out = crate::oci::HashingWriter::new(out);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = input.read(&mut buf).map_err(CopyError::Read)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
    let (_, digest, total) = out.finish();
    Ok((digest, total))
}

/// Whether `path` is a regular file (not a symlink) holding exactly the
/// bytes of `digest` (and `size` bytes, when given).
pub fn verify_blob(path: &Path, digest: &Digest, size: Option<u64>) -> bool {
    let Ok(f) = fsx::open_regular(path, Links::Refuse) else {
        return false;
    };
    let Ok(len) = f.metadata().map(|m| m.len()) else {
        return false;
    };
    if size.is_some_and(|s| s != len) {
        return false;
    }
    matches!(hash_copy(f, len, &mut io::sink()), Ok((d, n)) if &d == digest && n == len)
}

fn write_atomic(staging: &Path, dest: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = staging.join(format!("{name}.new"));
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(bytes).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, dest).map_err(io_err("replace", dest))
}

/// Tags `refs` in `index` (replacing what had their tags) and encodes it
/// (`path` names it in errors).
fn tag_in(
    index: &mut Index,
    refs: &[(String, Descriptor)],
    path: &Path,
) -> Result<Vec<u8>, LayoutError> {
    let new_tags: Vec<&str> = refs.iter().map(|(t, _)| t.as_str()).collect();
    index.manifests.retain(|d| {
        d.annotations
            .get(oci::ANNOTATION_REF_NAME)
            .is_none_or(|t| !new_tags.contains(&t.as_str()))
    });
    for (tag, desc) in refs {
        let mut d = desc.clone();
        d.annotations
            .insert(oci::ANNOTATION_REF_NAME.to_string(), tag.clone());
        index.manifests.push(d);
    }
    oci::to_canonical_json(index).map_err(|e| io_err("encode", path)(io::Error::other(e)))
}

fn sync_dir(path: &Path) -> Result<(), LayoutError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync folder", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout_with(dir: &Path, bytes: &[u8]) -> Descriptor {
        let blobs = crate::oci::blobs_dir(dir);
        fs::create_dir_all(&blobs).unwrap();
        fs::write(dir.join("oci-layout"), OCI_LAYOUT).unwrap();
        let digest = oci::sha256_digest(bytes);
        fs::write(blobs.join(digest.hex()), bytes).unwrap();
        Descriptor::new(oci::MEDIA_TYPE_LAYER, digest, bytes.len() as u64)
    }

    fn inode(path: &Path) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(path).unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn a_vouched_blob_is_linked_or_kept_and_any_other_is_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let layer = layout_with(&store, b"cached layer");
        let src = crate::oci::blob_path(&store, &layer.digest);
        let id = inode(&src);
        // Vouched for: hard-linked, not read.
        let out = tmp.path().join("out");
        let mut w = LayoutWriter::create(&out).unwrap();
        assert_eq!(
            w.place_blob(&store, &layer, Some(id)).unwrap(),
            Placement::Linked
        );
        assert_eq!(inode(&w.staged(&layer.digest)), id);
        // The output holds that very file: kept without reading it.
        let held = tmp.path().join("held");
        layout_with(&held, b"x");
        fs::hard_link(&src, crate::oci::blob_path(&held, &layer.digest)).unwrap();
        let mut w = LayoutWriter::create(&held).unwrap();
        assert_eq!(
            w.place_blob(&store, &layer, Some(id)).unwrap(),
            Placement::Held
        );
        // Vouched for with another inode (the file was replaced since its
        // stamp was taken): copied with its digest checked, and a damaged
        // one refused.
        fs::remove_file(&src).unwrap();
        fs::write(&src, b"damaged lay!").unwrap();
        let other = tmp.path().join("other");
        let mut w = LayoutWriter::create(&other).unwrap();
        assert!(matches!(
            w.place_blob(&store, &layer, Some(id)),
            Err(LayoutError::DigestMismatch { .. })
        ));
        let mut w = LayoutWriter::create(&other).unwrap();
        assert!(w.place_blob(&store, &layer, None).is_err());
    }

    #[test]
    fn a_reused_blob_removed_before_commit_is_copied_again() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        let out = tmp.path().join("out");
        let layer = layout_with(&base, b"base layer");
        layout_with(&out, b"base layer");
        let mut w = LayoutWriter::create(&out).unwrap();
        assert!(
            !w.copy_blob(&base, &layer).unwrap(),
            "already in the target"
        );
        // Another build's garbage collection removes it meanwhile.
        fs::remove_file(w.in_target(&layer.digest)).unwrap();
        // A document that references the layer, so that it stays reachable.
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [layer]});
        let desc = w
            .add_blob_bytes(oci::MEDIA_TYPE_INDEX, &serde_json::to_vec(&index).unwrap())
            .unwrap();
        w.commit(&[("t".to_string(), desc)]).unwrap().unwrap();
        assert!(verify_blob(
            &out.join("blobs/sha256").join(layer.digest.hex()),
            &layer.digest,
            Some(layer.size)
        ));
    }

    /// What a layout's files are: path → (inode, modification time).
    fn files_of(dir: &Path) -> std::collections::BTreeMap<PathBuf, (u64, i64)> {
        use std::os::unix::fs::MetadataExt;
        let mut out = std::collections::BTreeMap::new();
        for e in walkdir::WalkDir::new(dir) {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_file() {
                out.insert(
                    e.path().to_path_buf(),
                    (md.ino(), md.mtime_nsec() + md.mtime() * 1_000_000_000),
                );
            }
        }
        out
    }

    #[test]
    fn the_same_documents_again_write_nothing_and_a_removed_one_comes_back() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let doc =
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": []})).unwrap();
        let write = |doc: &[u8]| {
            let mut w = LayoutWriter::create(&out).unwrap();
            let desc = w.add_blob_bytes(oci::MEDIA_TYPE_INDEX, doc).unwrap();
            w.commit(&[("t".to_string(), desc.clone())])
                .unwrap()
                .unwrap();
            desc
        };
        let desc = write(&doc);
        let before = files_of(&out);
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(&doc);
        assert_eq!(files_of(&out), before, "the same files, untouched");
        // Gone before commit (another build's garbage collection): written.
        let mut w = LayoutWriter::create(&out).unwrap();
        let again = w.add_blob_bytes(oci::MEDIA_TYPE_INDEX, &doc).unwrap();
        fs::remove_file(w.in_target(&desc.digest)).unwrap();
        w.commit(&[("t".to_string(), again)]).unwrap().unwrap();
        let blob = out.join("blobs/sha256").join(desc.digest.hex());
        assert!(verify_blob(&blob, &desc.digest, Some(desc.size)));
    }

    /// Every path below `dir`, relative, sorted.
    fn tree_of(dir: &Path) -> Vec<String> {
        let mut all: Vec<String> = walkdir::WalkDir::new(dir)
            .min_depth(1)
            .into_iter()
            .map(|e| {
                let e = e.unwrap();
                e.path().strip_prefix(dir).unwrap().display().to_string()
            })
            .collect();
        all.sort();
        all
    }

    #[test]
    fn a_new_layout_is_its_staging_folder_renamed_into_place_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let mut w = LayoutWriter::create(&out).unwrap();
        let staged = inode(&w.staging);
        let desc = w.add_blob_bytes(oci::MEDIA_TYPE_INDEX, b"{}").unwrap();
        w.commit(&[("t".to_string(), desc.clone())])
            .unwrap()
            .unwrap();
        // The very folder staged (no copy of it, no blob moved one by one).
        assert_eq!(inode(&out), staged);
        let blob = format!("blobs/sha256/{}", desc.digest.hex());
        let want = [
            "blobs",
            "blobs/sha256",
            blob.as_str(),
            "index.json",
            "oci-layout",
        ];
        assert_eq!(tree_of(&out), want, "no lock file, no temporary file");
        assert_eq!(
            tree_of(tmp.path()).len(),
            want.len() + 1,
            "no litter beside"
        );
        let (index, _) = read_layout_index(&out.join("index.json")).unwrap();
        assert_eq!(index.manifests.len(), 1);
        assert_eq!(index.manifests[0].digest, desc.digest);
        assert_eq!(fs::read(out.join("oci-layout")).unwrap(), OCI_LAYOUT);
    }

    #[test]
    fn a_layout_made_by_another_build_meanwhile_is_committed_into_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let mut w = LayoutWriter::create(&out).unwrap();
        let doc = |n: u32| {
            let v = serde_json::json!({"schemaVersion": 2, "manifests": [], "annotations": {"n": n.to_string()}});
            serde_json::to_vec(&v).unwrap()
        };
        let desc = w.add_blob_bytes(oci::MEDIA_TYPE_INDEX, &doc(1)).unwrap();
        // Another build commits first, with a tag of its own.
        let mut other = LayoutWriter::create(&out).unwrap();
        let theirs = other
            .add_blob_bytes(oci::MEDIA_TYPE_INDEX, &doc(2))
            .unwrap();
        other
            .commit(&[("theirs".to_string(), theirs.clone())])
            .unwrap()
            .unwrap();
        let made = inode(&out);
        w.commit(&[("t".to_string(), desc.clone())])
            .unwrap()
            .unwrap();
        assert_eq!(inode(&out), made, "the other build's folder is kept");
        let (index, _) = read_layout_index(&out.join("index.json")).unwrap();
        let digests: Vec<_> = index.manifests.iter().map(|d| d.digest.clone()).collect();
        assert_eq!(digests, [theirs.digest, desc.digest], "both tags");
        assert!(!tree_of(&out)
            .iter()
            .any(|p| p.contains("lock") || p.ends_with(".new")));
        assert_eq!(
            tree_of(tmp.path()).len(),
            tree_of(&out).len() + 1,
            "no litter"
        );
    }

    #[test]
    fn an_empty_folder_made_meanwhile_is_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let mut w = LayoutWriter::create(&out).unwrap();
        let desc = w.add_blob_bytes(oci::MEDIA_TYPE_INDEX, b"{}").unwrap();
        fs::create_dir(&out).unwrap();
        let made = inode(&out);
        w.commit(&[("t".to_string(), desc)]).unwrap().unwrap();
        assert_eq!(inode(&out), made);
        assert!(out.join("oci-layout").is_file());
        assert_eq!(
            tree_of(tmp.path()).len(),
            tree_of(&out).len() + 1,
            "no litter"
        );
    }
}
