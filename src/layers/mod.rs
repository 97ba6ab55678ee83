//! Layers: one plan node → a deterministic tar stream → a compressed blob,
//! hashed while written (diff_id over the tar, digest over the blob, in one
//! pass). Memory does not grow with layer size: files are streamed, and the
//! compressor holds a bounded number of blocks.
//!
//! It reads the context files the plan names and writes one blob file it is
//! given; it knows nothing of layouts, manifests or registries.

pub mod compare;
pub mod compress;
pub mod tar;

pub use compress::Codec;

use crate::fingerprint::Print;
use crate::fsx::ContextDir;
use crate::oci::Digest;
use crate::plan::sources::Stamp;
use crate::plan::{Entry, EntryKind, FileSource, LayerNode};
use compress::Compressor;
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use tar::{TarHeader, TarKind, TarWriter};

/// Errors building a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A context file could not be read.
    #[error("failed to read `{path}` for layer `{layer}`")]
    Read {
        /// The layer.
        layer: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A context file changed between planning and building.
    #[error("`{path}` changed while layer `{layer}` was being built (it was {planned} bytes when planned)")]
    Changed {
        /// The layer.
        layer: String,
        /// The file.
        path: PathBuf,
        /// Its planned size.
        planned: u64,
    },
    /// Writing the blob failed.
    #[error("failed to write the blob of layer `{layer}`")]
    Write {
        /// The layer.
        layer: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A built layer blob.
#[derive(Clone, Debug)]
pub struct BuiltLayer {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the compressed blob.
    pub size: u64,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
}

/// How often (in tar bytes) [`build_layer`] reports progress.
pub const PROGRESS_STEP: u64 = 8 << 20;

/// What building a layer needs besides its node.
#[derive(Clone, Copy, Debug)]
pub struct LayerSettings<'a> {
    /// The build context, held open: files are opened beneath it.
    pub context: &'a ContextDir,
    /// The build epoch (every mtime).
    pub epoch: u64,
    /// The compression.
    pub codec: Codec,
    /// Compression threads.
    pub threads: usize,
    /// Whether to hash each context file as it is packed (for the layer
    /// cache's content key and the fingerprints; a cold build does not).
    pub hash_files: bool,
}

/// A context file as it was read: its fingerprint when opened, the digest
/// of the bytes read, when the read began, and whether its fingerprint was
/// the same when the read ended (only then is it worth remembering).
#[derive(Clone, Debug)]
pub struct FileRead {
    /// The file, relative to the context.
    pub rel: String,
    /// Its fingerprint when opened.
    pub print: Print,
    /// The sha256 of the bytes read, when they were hashed.
    pub digest: Option<Digest>,
    /// When the read began (nanoseconds since the epoch).
    pub began_ns: i64,
    /// Whether the fingerprint was unchanged after the read.
    pub steady: bool,
}

/// What a build of a layer saw of its context files.
#[derive(Clone, Debug, Default)]
pub struct Reads {
    /// Whether the files were hashed (`settings.hash_files`).
    pub hashed: bool,
    /// Each context file as read, in entry order, when hashed (else none:
    /// 150 bytes a file that a cold build does not need).
    pub files: Vec<FileRead>,
    /// Whether every context file [`FileRead::stands`] for its bytes.
    pub all_stand: bool,
}

impl FileRead {
    /// Whether the file read was the file planned (`planned`), did not
    /// change while read, and had settled: its fingerprint stands for its
    /// bytes.
    pub fn stands(&self, planned: &Print) -> bool {
        self.steady
            && self.print == *planned
            && crate::fingerprint::settled(&self.print.stamp, self.began_ns)
    }
}

/// Builds the layer `node` into `out` (a fresh, empty file, synced to disk
/// before this returns), returning its digests and sizes, and what it saw
/// of its context files (see [`Reads`]).
///
/// `progress` is called with the number of tar bytes written so far, about
/// every [`PROGRESS_STEP`] bytes.
pub fn build_layer(
    node: &LayerNode,
    settings: &LayerSettings<'_>,
    out: File,
    progress: &mut dyn FnMut(u64),
) -> Result<(BuiltLayer, Reads), LayerError> {
    let write_err = |source| LayerError::Write {
        layer: node.name.clone(),
        source,
    };
    let out = crate::fsx::EarlyWriteback::new(out);
    let compressor = Compressor::new(
        settings.codec,
        settings.threads,
        BufWriter::with_capacity(1 << 20, out),
    )
    .map_err(write_err)?;
    // Making the tar stream and hashing it take a core each.
    let tar = crate::oci::SideHashing::new(compressor).map_err(write_err)?;
    let mut w = EntryWriter::new(node, settings, tar, progress);
    for entry in &node.entries {
        w.write_entry(entry)?;
    }
    let reads = Reads {
        hashed: w.hash_files,
        files: std::mem::take(&mut w.files),
        all_stand: w.all_stand,
    };
    let (compressor, diff_id, tar_size) = w
        .tar
        .finish()
        .map_err(write_err)?
        .finish()
        .map_err(write_err)?;
    let compressed = compressor.finish().map_err(write_err)?;
    let file = compressed
        .inner
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?
        .file;
    file.sync_all().map_err(write_err)?;
    let digest =
        Digest::from_hex(&compressed.sha256_hex).map_err(|e| write_err(io::Error::other(e)))?;
    let layer = BuiltLayer {
        digest,
        diff_id,
        size: compressed.size,
        tar_size,
    };
    Ok((layer, reads))
}

/// The diff_id and size of the layer's tar stream, made from the sources
/// and hashed, not kept: what a registry cache entry is checked against
/// before its blob is used (far cheaper than compressing); and whether
/// every file read [`FileRead::stands`] for its bytes. The files are not
/// hashed one by one (whatever `settings.hash_files` says). With
/// `against`, the stream is also compared with what a blob decompresses
/// to, and the verdict comes last (see [`compare`]).
pub fn tar_digest(
    node: &LayerNode,
    settings: &LayerSettings<'_>,
    against: Option<compare::Against>,
) -> Result<TarStream, LayerError> {
    let settings = &LayerSettings {
        hash_files: false,
        ..*settings
    };
    let mut progress = |_| {};
    let failed = |source| LayerError::Write {
        layer: node.name.clone(),
        source,
    };
    // Reading the files and hashing the stream take a core each.
    let hasher = crate::oci::SideHasher::new().map_err(failed)?;
    let mut w = EntryWriter::new(node, settings, Tee { hasher, against }, &mut progress);
    for entry in &node.entries {
        w.write_entry(entry)?;
    }
    let stand = w.all_stand;
    let tee = w.tar.finish().map_err(failed)?;
    let (diff_id, size) = tee.hasher.finish().map_err(failed)?;
    Ok(TarStream {
        diff_id,
        size,
        stand,
        compared: tee.against.map(compare::Against::finish),
    })
}

/// What [`tar_digest`] found of a layer's tar stream.
#[derive(Debug)]
pub struct TarStream {
    /// Its digest (the layer's diff_id).
    pub diff_id: Digest,
    /// Its size.
    pub size: u64,
    /// Whether every file read stands for its bytes.
    pub stand: bool,
    /// Whether it was what the blob it was compared with decompresses to.
    pub compared: Option<Result<(), String>>,
}

/// The tar stream's way in [`tar_digest`]: hashed, and compared when asked.
struct Tee {
    hasher: crate::oci::SideHasher,
    against: Option<compare::Against>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.write_all(buf)?;
        if let Some(a) = &mut self.against {
            a.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The digest and size of what a layer blob decompresses to, reading at
/// most `limit + 1` decompressed bytes (a blob may lie about its size).
pub fn decompressed_digest(
    codec: crate::oci::Codec,
    blob: impl Read,
    limit: u64,
) -> io::Result<(Digest, u64)> {
    let mut decoded = decoder(codec, blob)?;
    // Decompressing and hashing take a core each.
    let mut out = crate::oci::SideHasher::new()?;
    io::copy(&mut (&mut decoded).take(limit + 1), &mut out)?;
    out.finish()
}

/// What `blob`, compressed with `codec`, decompresses to.
fn decoder<'a>(codec: crate::oci::Codec, blob: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let reader = io::BufReader::new(blob);
    Ok(match codec {
        crate::oci::Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        crate::oci::Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        crate::oci::Codec::None => Box::new(reader),
    })
}

/// Reads and hashes one context file of `node` (planned as `id`, `size`
/// bytes), opened beneath the context like a file being packed, through
/// `buf` (reused across files: a fresh big buffer per file costs a mapping).
pub fn hash_file(
    node: &LayerNode,
    settings: &LayerSettings<'_>,
    rel: &str,
    id: (u64, u64),
    size: u64,
    buf: &mut [u8],
) -> Result<FileRead, LayerError> {
    let mut hasher = Sha256::new();
    let streamed = stream_file(settings.context, rel, id, size, buf, &mut |b| {
        hasher.update(b);
        Ok(())
    })
    .map_err(|e| e.into_layer_error(&node.name, &settings.context.path().join(rel), size))?;
    Ok(streamed.read(rel, Some(&hasher.finalize())))
}

/// Why streaming a context file stopped.
enum StreamError {
    Read(io::Error),
    Changed,
    Write(io::Error),
}

impl StreamError {
    fn into_layer_error(self, layer: &str, path: &Path, planned: u64) -> LayerError {
        let layer = layer.to_string();
        let path = path.to_path_buf();
        match self {
            StreamError::Read(source) => LayerError::Read {
                layer,
                path,
                source,
            },
            StreamError::Changed => LayerError::Changed {
                layer,
                path,
                planned,
            },
            StreamError::Write(source) => LayerError::Write { layer, source },
        }
    }
}

/// What [`stream_file`] saw of a file.
struct Streamed {
    print: Print,
    steady: bool,
    began_ns: i64,
}

impl Streamed {
    fn read(self, rel: &str, sha: Option<&[u8]>) -> FileRead {
        FileRead {
            rel: rel.to_string(),
            print: self.print,
            digest: sha.and_then(|sha| Digest::from_hex(&hex::encode(sha)).ok()),
            began_ns: self.began_ns,
            steady: self.steady,
        }
    }
}

/// Streams exactly `size` bytes of the context file `rel` into `sink`,
/// opened beneath the context (no symlink followed on the way), refusing
/// anything but the regular file planned (device and inode `id`, `size`
/// bytes, no more and no less), counting what it reads.
fn stream_file(
    context: &ContextDir,
    rel: &str,
    id: (u64, u64),
    size: u64,
    buf: &mut [u8],
    sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> Result<Streamed, StreamError> {
    let began_ns = crate::fingerprint::now_ns();
    let (mut file, md) = context
        .open_file_stat(Path::new(rel), Some(id))
        .map_err(StreamError::Read)?;
    if md.len() != size {
        return Err(StreamError::Changed);
    }
    let print = Print {
        id,
        size,
        stamp: Stamp::of(&md),
    };
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file.read(&mut buf[..want]).map_err(StreamError::Read)?;
        if n == 0 {
            return Err(StreamError::Changed);
        }
        context.count_read(n);
        sink(&buf[..n]).map_err(StreamError::Write)?;
        left -= n as u64;
    }
    // A file that grew while read says so in its size (one `fstat`, not
    // another `read` at the end).
    let after = file.metadata().map_err(StreamError::Read)?;
    if after.len() != size {
        return Err(StreamError::Changed);
    }
    Ok(Streamed {
        steady: Stamp::of(&after) == print.stamp && after.len() == size,
        print,
        began_ns,
    })
}

/// Writes the entries of one layer into its tar.
struct EntryWriter<'a, W: Write> {
    tar: TarWriter<W>,
    epoch: u64,
    layer: &'a str,
    buf: Vec<u8>,
    context: &'a ContextDir,
    progress: &'a mut dyn FnMut(u64),
    /// Each context file as read, when hashing files.
    files: Vec<FileRead>,
    hash_files: bool,
    /// Whether every context file so far stands for its bytes.
    all_stand: bool,
}

impl<'a, W: Write> EntryWriter<'a, W> {
    fn new(
        node: &'a LayerNode,
        settings: &LayerSettings<'a>,
        out: W,
        progress: &'a mut dyn FnMut(u64),
    ) -> Self {
        EntryWriter {
            tar: TarWriter::new(out),
            epoch: settings.epoch,
            layer: &node.name,
            buf: vec![0u8; 256 * 1024],
            context: settings.context,
            progress,
            files: Vec::new(),
            hash_files: settings.hash_files,
            all_stand: true,
        }
    }

    fn write_err(&self, source: io::Error) -> LayerError {
        LayerError::Write {
            layer: self.layer.to_string(),
            source,
        }
    }

    fn write_entry(&mut self, entry: &Entry) -> Result<(), LayerError> {
        let dir_path;
        let (kind, path, size, link) = match &entry.kind {
            EntryKind::Dir => {
                dir_path = format!("{}/", entry.path);
                (TarKind::Dir, dir_path.as_str(), 0, "")
            }
            EntryKind::Symlink { target } => {
                (TarKind::Symlink, entry.path.as_str(), 0, target.as_str())
            }
            EntryKind::File { size, .. } => (TarKind::File, entry.path.as_str(), *size, ""),
        };
        let header = TarHeader {
            path,
            kind,
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            size,
            mtime: self.epoch,
            link,
        };
        self.tar.header(&header).map_err(|e| self.write_err(e))?;
        if let EntryKind::File { source, size } = &entry.kind {
            match source {
                FileSource::Inline(bytes) => self.tar.data(bytes).map_err(|e| self.write_err(e))?,
                FileSource::Context { rel, id, stamp } => {
                    let planned = Print {
                        id: *id,
                        size: *size,
                        stamp: *stamp,
                    };
                    self.copy_file(rel, &planned)?
                }
            }
            self.tar.pad(*size).map_err(|e| self.write_err(e))?;
        }
        Ok(())
    }

    /// Streams a context file into the tar (see [`stream_file`]), hashing
    /// it on the way when asked.
    fn copy_file(&mut self, rel: &str, planned: &Print) -> Result<(), LayerError> {
        let (id, size) = (planned.id, planned.size);
        let mut hasher = self.hash_files.then(Sha256::new);
        let (tar, progress) = (&mut self.tar, &mut self.progress);
        let mut sink = |data: &[u8]| {
            if let Some(h) = hasher.as_mut() {
                h.update(data);
            }
            let before = tar.written();
            tar.data(data)?;
            if before / PROGRESS_STEP != tar.written() / PROGRESS_STEP {
                (progress)(tar.written());
            }
            Ok(())
        };
        let streamed = stream_file(self.context, rel, id, size, &mut self.buf, &mut sink)
            .map_err(|e| e.into_layer_error(self.layer, &self.context.path().join(rel), size))?;
        let sha = hasher.map(|h| h.finalize());
        let read = streamed.read(rel, sha.as_deref());
        self.all_stand &= read.stands(planned);
        if self.hash_files {
            self.files.push(read);
        }
        Ok(())
    }
}
