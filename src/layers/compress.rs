//! Layer compression: turns the uncompressed byte stream of a layer into a
//! compressed blob, deterministically and in parallel, and hashes the blob
//! (sha256, size) as it is written.
//!
//! This module owns the compressed byte format of a layer:
//!
//! * [`Codec::Gzip`] is a pigz-style block scheme. The input is cut into
//!   fixed-size blocks; each block is raw-deflated by a fresh zlib-rs
//!   compressor (independent blocks, every block but the last ends in a sync
//!   flush, the last in a final block) on a pool of worker threads; an ordered
//!   collector writes the blocks into one single gzip member (fixed header,
//!   CRC-32 combined from per-block CRCs, ISIZE). The bytes depend only on the
//!   input bytes, never on the thread count or on how the input was chunked
//!   into `write` calls.
//! * [`Codec::Zstd`] is libzstd's multithreaded encoder (always with at least
//!   one worker), fixed level and frame flags.
//! * [`Codec::None`] is a pass-through.
//!
//! Memory stays bounded whatever the stream length: the gzip pipeline keeps at
//! most `2 × threads + 2` input blocks alive (in the writer, queued, being
//! compressed or waiting to be written in order).
//!
//! It must not know about tar, files or paths: it sees bytes in and bytes out.
//! The design and the measurements behind the chosen level and block size are
//! in `book/src/design/compression.md`. Any change that alters output bytes
//! must change [`Codec::format_id`] (the golden-digest tests below catch it).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use flate2::{Compress, Compression, FlushCompress, Status};

pub use crate::oci::Codec;

/// The most worker threads a [`Compressor`] starts (more would only cost
/// memory: the bytes do not depend on the count).
const MAX_THREADS: usize = 256;

/// zstd compression level (part of the format).
const ZSTD_LEVEL: i32 = 3;

/// libzstd's multithreaded job size (part of the format: it decides where
/// jobs, and so matches, are cut). Its default at level 3 is 8 MiB; 4 MiB
/// cuts the encoder's memory by about 30 MB with 2 workers for 0.8% more
/// bytes (measured in the book's design chapter).
const ZSTD_JOB_SIZE: u32 = 4 << 20;

/// The parameters of the gzip block scheme. All of them are part of the byte
/// format: changing any of them changes the output and must change
/// [`crate::oci::Codec::format_id`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GzipScheme {
    /// zlib-rs compression level (1–9).
    pub(crate) level: u32,
    /// Uncompressed bytes per block (at least [`DICT_SIZE`]).
    pub(crate) block_size: usize,
    /// Prime each block's compressor with the previous 32 KiB of input.
    pub(crate) dictionary: bool,
}

/// The gzip scheme in use (see the book chapter for the measurements).
pub(crate) const GZIP_SCHEME: GzipScheme = GzipScheme {
    level: 2,
    block_size: 1 << 20,
    dictionary: false,
};

/// The deflate window: the most a dictionary can usefully hold.
const DICT_SIZE: usize = 32 * 1024;

/// gzip member header: magic, CM=8 (deflate), FLG=0, MTIME=0, XFL=0, OS=255.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// Compresses everything written to it and writes the compressed stream to
/// `out`, hashing the compressed bytes (sha256) as they are written.
///
/// The output depends only on the codec and the bytes written, never on the
/// thread count or on how the input is split into `write` calls.
/// [`Write::flush`] does not emit partial blocks (that would make the bytes
/// depend on when it is called): the stream is completed by
/// [`Compressor::finish`], which must be called. Dropping a `Compressor`
/// without `finish` stops its threads and leaves `out` with an incomplete
/// stream.
pub struct Compressor<W: Write + Send + 'static> {
    inner: Inner<W>,
    /// The first error, reported again by every later call.
    failed: Option<Failure>,
}

enum Inner<W: Write + Send + 'static> {
    Gzip(GzipPipeline<W>),
    Zstd(zstd::stream::write::Encoder<'static, HashingWriter<W>>),
    None(HashingWriter<W>),
}

/// The result of [`Compressor::finish`].
#[derive(Debug)]
pub struct Compressed<W> {
    /// The writer given to [`Compressor::new`], after the whole stream was
    /// written to it and it was flushed.
    pub inner: W,
    /// lowercase hex sha256 of the compressed bytes written to `inner`
    pub sha256_hex: String,
    /// number of compressed bytes written to `inner`
    pub size: u64,
}

impl<W: Write + Send + 'static> Compressor<W> {
    /// `threads` >= 1 (treat 0 as 1): total worker threads to use for
    /// compression.
    ///
    /// gzip runs `threads` compression workers plus one thread that writes
    /// to `out` and hashes; zstd runs libzstd's `threads` workers and writes
    /// to `out` from the calling thread; none writes through. Counts above
    /// 256 are treated as 256. The output bytes do not depend on `threads`.
    pub fn new(codec: Codec, threads: usize, out: W) -> io::Result<Self> {
        let threads = threads.clamp(1, MAX_THREADS);
        let inner = match codec {
            Codec::Gzip => Inner::Gzip(GzipPipeline::start(GZIP_SCHEME, threads, out)?),
            Codec::Zstd => Inner::Zstd(zstd_encoder(threads, out)?),
            Codec::None => Inner::None(HashingWriter::new(out)),
        };
        Ok(Compressor {
            inner,
            failed: None,
        })
    }

    /// A gzip compressor with another block scheme: for measurements and
    /// tests only (the format is [`GZIP_SCHEME`]).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn gzip_with_scheme(scheme: GzipScheme, threads: usize, out: W) -> io::Result<Self> {
        let threads = threads.clamp(1, MAX_THREADS);
        let inner = Inner::Gzip(GzipPipeline::start(scheme, threads, out)?);
        Ok(Compressor {
            inner,
            failed: None,
        })
    }

    /// Flushes everything, ends the stream, joins threads. Errors from any
    /// worker or from `out` come back here (or from an earlier write) as
    /// io::Error, never a panic.
    pub fn finish(self) -> io::Result<Compressed<W>> {
        if let Some(failure) = &self.failed {
            return Err(failure.to_error());
        }
        let mut hashed = match self.inner {
            Inner::Gzip(pipeline) => pipeline.finish()?,
            Inner::Zstd(encoder) => encoder.finish()?,
            Inner::None(hashed) => hashed,
        };
        hashed.get_mut().flush()?;
        Ok(into_compressed(hashed))
    }
}

impl<W: Write + Send + 'static> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(failure) = &self.failed {
            return Err(failure.to_error());
        }
        let result = match &mut self.inner {
            Inner::Gzip(pipeline) => pipeline.write(buf),
            Inner::Zstd(encoder) => encoder.write(buf),
            Inner::None(hashed) => hashed.write(buf),
        };
        // An interrupted write changed nothing and may be retried.
        if let Err(e) = &result {
            if e.kind() != io::ErrorKind::Interrupted {
                self.failed = Some(Failure::from_error(e));
            }
        }
        result
    }

    /// Does not emit partial blocks or frames (the bytes must not depend on
    /// flush calls); for [`Codec::None`] it flushes `out`.
    fn flush(&mut self) -> io::Result<()> {
        if let Some(failure) = &self.failed {
            return Err(failure.to_error());
        }
        match &mut self.inner {
            Inner::Gzip(pipeline) => pipeline.check(),
            Inner::Zstd(_) => Ok(()),
            Inner::None(hashed) => hashed.get_mut().flush(),
        }
    }
}

use crate::oci::HashingWriter;

/// What a hashing writer saw, as [`Compressed`].
fn into_compressed<W: Write>(hashed: HashingWriter<W>) -> Compressed<W> {
    let (inner, digest, size) = hashed.finish();
    Compressed {
        inner,
        sha256_hex: digest.hex().to_string(),
        size,
    }
}

/// An error remembered after a failure, so that later calls report it too.
struct Failure {
    kind: io::ErrorKind,
    message: String,
}

impl Failure {
    fn from_error(error: &io::Error) -> Self {
        Failure {
            kind: error.kind(),
            message: error.to_string(),
        }
    }

    fn to_error(&self) -> io::Error {
        // Never `Interrupted`: `write_all` would retry it forever.
        let kind = match self.kind {
            io::ErrorKind::Interrupted => io::ErrorKind::Other,
            kind => kind,
        };
        io::Error::new(kind, format!("compressor failed earlier: {}", self.message))
    }
}

// ---------------------------------------------------------------- zstd ---

/// libzstd's multithreaded encoder with the fixed frame parameters.
fn zstd_encoder<W: Write + Send + 'static>(
    threads: usize,
    out: W,
) -> io::Result<zstd::stream::write::Encoder<'static, HashingWriter<W>>> {
    // libzstd clamps the count to its own maximum.
    let workers = u32::try_from(threads.max(1)).unwrap_or(u32::MAX);
    let mut encoder = zstd::stream::write::Encoder::new(HashingWriter::new(out), ZSTD_LEVEL)?;
    encoder.multithread(workers)?;
    encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
    encoder.include_checksum(true)?;
    encoder.include_contentsize(false)?;
    encoder.include_dictid(false)?;
    encoder.long_distance_matching(false)?;
    Ok(encoder)
}

// ---------------------------------------------------------------- gzip ---

/// One block of input on its way to a worker.
struct Job {
    seq: u64,
    /// The previous block's last [`DICT_SIZE`] bytes (empty without a
    /// dictionary or for the first block).
    dict: Vec<u8>,
    data: Vec<u8>,
    last: bool,
}

/// One compressed block on its way to the collector.
struct Done {
    seq: u64,
    /// The input buffer, handed back to the writer once the block is written.
    input: Vec<u8>,
    /// Raw deflate bytes and the CRC-32 state of the block's input.
    result: io::Result<(Vec<u8>, crc32fast::Hasher)>,
    last: bool,
}

struct GzipPipeline<W: Write + Send + 'static> {
    scheme: GzipScheme,
    /// The block being filled.
    buf: Vec<u8>,
    /// Dictionary for the next block sent.
    dict: Vec<u8>,
    seq: u64,
    jobs: Option<SyncSender<Job>>,
    /// Input buffers handed back by the collector after their block was
    /// written: one buffer is one token of the in-flight bound.
    free: Receiver<Vec<u8>>,
    allocated: usize,
    max_buffers: usize,
    workers: Vec<JoinHandle<()>>,
    collector: Option<JoinHandle<io::Result<HashingWriter<W>>>>,
    abort: Arc<AtomicBool>,
    failed: Option<Failure>,
}

impl<W: Write + Send + 'static> GzipPipeline<W> {
    fn start(scheme: GzipScheme, threads: usize, out: W) -> io::Result<Self> {
        if scheme.block_size < DICT_SIZE || !(1..=9).contains(&scheme.level) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "gzip scheme needs a level 1-9 and blocks of at least 32 KiB",
            ));
        }
        let threads = threads.max(1);
        let max_buffers = 2 * threads + 2;
        let (job_tx, job_rx) = sync_channel::<Job>(threads);
        let (done_tx, done_rx) = sync_channel::<Done>(max_buffers);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(max_buffers);
        let abort = Arc::new(AtomicBool::new(false));
        let job_rx = Arc::new(Mutex::new(job_rx));

        let mut pipeline = GzipPipeline {
            scheme,
            buf: Vec::with_capacity(scheme.block_size),
            dict: Vec::new(),
            seq: 0,
            jobs: Some(job_tx),
            free: free_rx,
            allocated: 1,
            max_buffers,
            workers: Vec::with_capacity(threads),
            collector: None,
            abort: Arc::clone(&abort),
            failed: None,
        };
        // If spawning fails part way, dropping `pipeline` stops what started.
        for i in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            let abort = Arc::clone(&abort);
            let handle = thread::Builder::new()
                .name(format!("imgc-gzip-{i}"))
                .spawn(move || gzip_worker(scheme, &job_rx, &done_tx, &abort))?;
            pipeline.workers.push(handle);
        }
        drop(done_tx);
        let collector_abort = Arc::clone(&abort);
        let handle = thread::Builder::new()
            .name("imgc-gzip-out".to_owned())
            .spawn(move || {
                let result = gzip_collect(out, &done_rx, &free_tx);
                if result.is_err() {
                    collector_abort.store(true, Ordering::SeqCst);
                }
                result
            })?;
        pipeline.collector = Some(handle);
        Ok(pipeline)
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some(failure) => Err(failure.to_error()),
            None => Ok(()),
        }
    }

    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check()?;
        let mut rest = data;
        while !rest.is_empty() {
            let room = self.scheme.block_size - self.buf.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.buf.extend_from_slice(now);
            rest = later;
            if self.buf.len() == self.scheme.block_size {
                self.send_block(false)?;
            }
        }
        Ok(data.len())
    }

    /// Sends the current block to the workers; on failure stops the pipeline
    /// and returns the first error of the stream.
    fn send_block(&mut self, last: bool) -> io::Result<()> {
        match self.try_send_block(last) {
            Ok(()) => Ok(()),
            Err(()) => Err(self.fail()),
        }
    }

    fn try_send_block(&mut self, last: bool) -> Result<(), ()> {
        if self.abort.load(Ordering::SeqCst) {
            return Err(());
        }
        let next_buf = if last {
            Vec::new()
        } else if self.allocated < self.max_buffers {
            self.allocated += 1;
            Vec::with_capacity(self.scheme.block_size)
        } else {
            // Blocks until the collector has written an earlier block.
            let mut buf = self.free.recv().map_err(|_| ())?;
            buf.clear();
            buf
        };
        let data = std::mem::replace(&mut self.buf, next_buf);
        let dict = if self.scheme.dictionary && !last {
            let tail = data[data.len() - DICT_SIZE..].to_vec();
            std::mem::replace(&mut self.dict, tail)
        } else {
            std::mem::take(&mut self.dict)
        };
        let job = Job {
            seq: self.seq,
            dict,
            data,
            last,
        };
        self.seq += 1;
        let jobs = self.jobs.as_ref().ok_or(())?;
        jobs.send(job).map_err(|_| ())
    }

    /// Stops the pipeline after a failure and returns the error that caused
    /// it (the collector's, which is the first in stream order).
    fn fail(&mut self) -> io::Error {
        self.abort.store(true, Ordering::SeqCst);
        let error = match self.shutdown() {
            Err(e) => e,
            Ok(_) => io::Error::other("gzip pipeline stopped unexpectedly"),
        };
        self.failed = Some(Failure::from_error(&error));
        error
    }

    /// Closes the job queue, joins the workers and the collector, and
    /// returns the collector's result.
    fn shutdown(&mut self) -> io::Result<HashingWriter<W>> {
        drop(self.jobs.take());
        for worker in self.workers.drain(..) {
            // Workers catch panics of the compressor; a panic elsewhere in a
            // worker shows up as a missing block at the collector.
            let _ = worker.join();
        }
        match self.collector.take() {
            Some(handle) => match handle.join() {
                Ok(result) => result,
                Err(_) => Err(io::Error::other("gzip output thread panicked")),
            },
            None => Err(io::Error::other("gzip pipeline already stopped")),
        }
    }

    fn finish(mut self) -> io::Result<HashingWriter<W>> {
        self.check()?;
        self.send_block(true)?;
        match self.shutdown() {
            Ok(hashed) => Ok(hashed),
            Err(e) => {
                self.failed = Some(Failure::from_error(&e));
                Err(e)
            }
        }
    }
}

impl<W: Write + Send + 'static> Drop for GzipPipeline<W> {
    fn drop(&mut self) {
        // Without `finish` (or after a failed start): stop compressing, let
        // the threads see the closed queue, and wait for them to end.
        self.abort.store(true, Ordering::SeqCst);
        let _ = self.shutdown();
    }
}

/// Worker thread: compresses jobs until the queue closes or the pipeline
/// aborts.
fn gzip_worker(
    scheme: GzipScheme,
    jobs: &Mutex<Receiver<Job>>,
    done: &SyncSender<Done>,
    abort: &AtomicBool,
) {
    loop {
        let job = {
            // The receiver behind the lock has no invariant a panic could
            // break (nothing that holds the lock can panic), so a poisoned
            // lock is still usable.
            let rx = jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        if abort.load(Ordering::SeqCst) {
            return;
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            deflate_block(scheme.level, &job.dict, &job.data, job.last)
        }))
        .unwrap_or_else(|_| Err(io::Error::other("gzip worker panicked")));
        let done_msg = Done {
            seq: job.seq,
            input: job.data,
            result,
            last: job.last,
        };
        if done.send(done_msg).is_err() {
            return;
        }
    }
}

/// Raw-deflates one block with a fresh compressor. Every block but the last
/// ends with a sync flush (byte aligned, not final); the last one ends the
/// deflate stream.
fn deflate_block(
    level: u32,
    dict: &[u8],
    data: &[u8],
    last: bool,
) -> io::Result<(Vec<u8>, crc32fast::Hasher)> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(data);

    let mut c = Compress::new(Compression::new(level), false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    // Room for incompressible data (stored blocks cost 5 bytes per 64 KiB)
    // plus the flush markers, so that one call normally suffices.
    let mut out = Vec::with_capacity(data.len() + data.len() / 16 + 1024);
    loop {
        let consumed = usize::try_from(c.total_in()).map_err(io::Error::other)?;
        let input = data
            .get(consumed..)
            .ok_or_else(|| io::Error::other("deflate consumed more input than given"))?;
        let status = c
            .compress_vec(input, &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() == data.len() as u64;
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            // A sync flush is complete when output space is left over.
            _ => all_in && out.len() < out.capacity(),
        };
        if done {
            return Ok((out, crc));
        }
        out.reserve(out.capacity().max(4096));
    }
}

/// Collector thread: writes the gzip header, then the blocks in order as
/// they arrive, then the trailer; hands input buffers back to the writer.
fn gzip_collect<W: Write>(
    out: W,
    done: &Receiver<Done>,
    free: &SyncSender<Vec<u8>>,
) -> io::Result<HashingWriter<W>> {
    let mut out = HashingWriter::new(out);
    out.write_all(&GZIP_HEADER)?;
    let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
    let mut next: u64 = 0;
    let mut crc = crc32fast::Hasher::new();
    loop {
        let block = done
            .recv()
            .map_err(|_| io::Error::other("gzip stream ended before its last block"))?;
        pending.insert(block.seq, block);
        while let Some(block) = pending.remove(&next) {
            let (bytes, block_crc) = block.result?;
            out.write_all(&bytes)?;
            crc.combine(&block_crc);
            next += 1;
            if block.last {
                let isize = crc.total_len() as u32; // ISIZE is the length mod 2^32
                let mut trailer = [0u8; 8];
                trailer[..4].copy_from_slice(&crc.finalize().to_le_bytes());
                trailer[4..].copy_from_slice(&isize.to_le_bytes());
                out.write_all(&trailer)?;
                return Ok(out);
            }
            // The channel holds every buffer there is, so this never blocks;
            // it fails only once the writer is gone, which is fine.
            let _ = free.send(block.input);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const BLOCK: usize = GZIP_SCHEME.block_size;

    // "v1" in the format id means independent blocks: a dictionary scheme
    // needs a new format id.
    const _: () = assert!(!GZIP_SCHEME.dictionary);

    /// Deterministic xorshift64 generator.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    /// Mixed data: runs of random bytes, of text-like words, and of
    /// repeated earlier content.
    fn mixed(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = XorShift(seed | 1);
        let words: [&[u8]; 8] = [
            b"usr/lib/python3/",
            b"import ",
            b"def ",
            b"return None\n",
            b"\x00\x00\x00\x00",
            b"ustar\x0000",
            b"0000644\x00",
            b"self.",
        ];
        let mut v = Vec::with_capacity(len + 4096);
        while v.len() < len {
            let kind = rng.next() % 4;
            let run = (rng.next() % 20_000) as usize + 1;
            match kind {
                0 => {
                    for _ in 0..run / 8 + 1 {
                        v.extend_from_slice(&rng.next().to_le_bytes());
                    }
                }
                1 | 2 => {
                    let end = v.len() + run;
                    while v.len() < end {
                        v.extend_from_slice(words[(rng.next() % 8) as usize]);
                    }
                }
                _ => {
                    if v.len() > 1000 {
                        let start = (rng.next() as usize) % (v.len() - 500);
                        let n = run.min(v.len() - start);
                        v.extend_from_within(start..start + n);
                    } else {
                        v.extend(std::iter::repeat_n(b'a', run));
                    }
                }
            }
        }
        v.truncate(len);
        v
    }

    fn compress_chunked(
        codec: Codec,
        threads: usize,
        data: &[u8],
        chunk: usize,
    ) -> Compressed<Vec<u8>> {
        let mut c = Compressor::new(codec, threads, Vec::new()).expect("new");
        for part in data.chunks(chunk.max(1)) {
            c.write_all(part).expect("write");
        }
        c.finish().expect("finish")
    }

    fn compress(codec: Codec, threads: usize, data: &[u8]) -> Compressed<Vec<u8>> {
        let mut c = Compressor::new(codec, threads, Vec::new()).expect("new");
        c.write_all(data).expect("write");
        c.finish().expect("finish")
    }

    fn decompress(codec: Codec, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match codec {
            Codec::Gzip => {
                // Single-member decoder on purpose: it must read everything.
                let mut d = flate2::read::GzDecoder::new(bytes);
                d.read_to_end(&mut out).expect("gunzip");
                // And nothing may follow the member.
                let mut rest = Vec::new();
                d.into_inner().read_to_end(&mut rest).expect("rest");
                assert!(
                    rest.is_empty(),
                    "{} bytes after the gzip member",
                    rest.len()
                );
            }
            Codec::Zstd => {
                zstd::stream::copy_decode(bytes, &mut out).expect("unzstd");
            }
            Codec::None => out.extend_from_slice(bytes),
        }
        out
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        crate::oci::sha256_digest(bytes).hex().to_string()
    }

    fn sizes() -> Vec<usize> {
        vec![
            0,
            1,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            BLOCK * 7 / 2,
            3 * BLOCK + DICT_SIZE - 1,
        ]
    }

    #[test]
    fn media_type_suffix_and_format_id() {
        assert_eq!(Codec::Gzip.media_type_suffix(), "+gzip");
        assert_eq!(Codec::Zstd.media_type_suffix(), "+zstd");
        assert_eq!(Codec::None.media_type_suffix(), "");
        let gz = Codec::Gzip.format_id();
        assert!(gz.starts_with("gzip/zlib-rs"), "{gz}");
        assert!(gz.contains(&format!("/l{}/", GZIP_SCHEME.level)), "{gz}");
        assert!(
            gz.contains(&format!("/b{}m/", GZIP_SCHEME.block_size >> 20)),
            "{gz}"
        );
        assert_eq!(GZIP_SCHEME.block_size % (1 << 20), 0);
        let zs = Codec::Zstd.format_id();
        assert!(zs.contains(&format!("/l{ZSTD_LEVEL}/")), "{zs}");
        // A libzstd upgrade can change bytes: the id names the version.
        let v = zstd::zstd_safe::version_number();
        let want = format!("libzstd-{}.{}.{}/", v / 10000, v / 100 % 100, v % 100);
        assert!(zs.contains(&want), "{zs} should name {want}");
        let ids = [Codec::Gzip, Codec::Zstd, Codec::None].map(Codec::format_id);
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    }

    #[test]
    fn round_trip_all_sizes() {
        let data = mixed(BLOCK * 4, 7);
        for codec in [Codec::Gzip, Codec::Zstd, Codec::None] {
            for &n in &sizes() {
                let input = &data[..n];
                let c = compress(codec, 2, input);
                assert_eq!(decompress(codec, &c.inner), input, "{codec:?} size {n}");
            }
        }
    }

    #[test]
    fn round_trip_few_megabytes_mixed() {
        let data = mixed(5 * 1024 * 1024 + 12_345, 42);
        for codec in [Codec::Gzip, Codec::Zstd] {
            let c = compress(codec, 3, &data);
            assert!(c.size < data.len() as u64, "{codec:?} did not compress");
            assert_eq!(decompress(codec, &c.inner), data, "{codec:?}");
        }
    }

    #[test]
    fn same_bytes_for_any_thread_count_and_chunking() {
        let data = mixed(BLOCK * 7 / 2 + 3, 99);
        for codec in [Codec::Gzip, Codec::Zstd, Codec::None] {
            let reference = compress(codec, 1, &data);
            for threads in [0, 2, 3, 4, 8] {
                let c = compress(codec, threads, &data);
                assert!(
                    c.inner == reference.inner,
                    "{codec:?}: {threads} threads differ from 1"
                );
            }
            for chunk in [1000, 4096, 65_537, BLOCK + 1] {
                let c = compress_chunked(codec, 2, &data, chunk);
                assert!(
                    c.inner == reference.inner,
                    "{codec:?}: chunks of {chunk} differ"
                );
            }
        }
    }

    #[test]
    fn huge_thread_counts_are_capped() {
        let data = mixed(BLOCK + 10, 12);
        for codec in [Codec::Gzip, Codec::Zstd, Codec::None] {
            let reference = compress(codec, 1, &data);
            let huge = compress(codec, usize::MAX, &data);
            assert!(huge.inner == reference.inner, "{codec:?}");
        }
    }

    #[test]
    fn same_bytes_across_runs() {
        let data = mixed(BLOCK * 3 + 77, 5);
        for codec in [Codec::Gzip, Codec::Zstd] {
            let first = compress(codec, 4, &data);
            for _ in 0..3 {
                assert_eq!(
                    compress(codec, 4, &data).sha256_hex,
                    first.sha256_hex,
                    "{codec:?}"
                );
            }
        }
    }

    #[test]
    fn dictionary_scheme_round_trips_and_is_thread_independent() {
        let scheme = GzipScheme {
            dictionary: true,
            block_size: 64 * 1024,
            ..GZIP_SCHEME
        };
        let data = mixed(scheme.block_size * 9 / 2, 3);
        let run = |threads| {
            let mut c = Compressor::gzip_with_scheme(scheme, threads, Vec::new()).expect("new");
            c.write_all(&data).expect("write");
            c.finish().expect("finish").inner
        };
        let one = run(1);
        assert_eq!(decompress(Codec::Gzip, &one), data);
        for threads in [2, 3, 4] {
            assert!(
                run(threads) == one,
                "dictionary scheme differs at {threads} threads"
            );
        }
    }

    #[test]
    fn gzip_header_and_trailer() {
        for n in [0usize, 5, BLOCK + 1] {
            let data = mixed(n, 11);
            let c = compress(Codec::Gzip, 2, &data);
            let b = &c.inner;
            assert_eq!(&b[..3], &[0x1f, 0x8b, 8], "magic and CM");
            assert_eq!(b[3], 0, "FLG: no name, comment, extra, hcrc, text");
            assert_eq!(&b[4..8], &[0, 0, 0, 0], "MTIME 0");
            assert_eq!(b[8], 0, "XFL");
            assert_eq!(b[9], 255, "OS unknown");
            let t = &b[b.len() - 8..];
            assert_eq!(t[..4], crc32fast::hash(&data).to_le_bytes(), "CRC32");
            assert_eq!(t[4..], (n as u32).to_le_bytes(), "ISIZE");
        }
        // The empty stream, byte for byte: header, one final empty fixed
        // Huffman block (03 00), CRC 0, ISIZE 0.
        let empty = compress(Codec::Gzip, 1, &[]);
        assert_eq!(decompress(Codec::Gzip, &empty.inner), Vec::<u8>::new());
        let want: [u8; 20] = [
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(empty.inner, want);
        // A stream of exactly one block: the block ends in a sync flush
        // (empty stored block 00 00 ff ff), then the empty final block.
        let one = compress(Codec::Gzip, 2, &mixed(BLOCK, 6));
        let body = &one.inner[..one.inner.len() - 8];
        assert!(
            body.ends_with(&[0, 0, 0xff, 0xff, 3, 0]),
            "{:x?}",
            &body[body.len() - 8..]
        );
    }

    #[test]
    fn reported_digest_and_size_match_inner() {
        let data = mixed(BLOCK * 2 + 5, 13);
        for codec in [Codec::Gzip, Codec::Zstd, Codec::None] {
            for n in [0, 1, data.len()] {
                let c = compress(codec, 2, &data[..n]);
                assert_eq!(c.size, c.inner.len() as u64, "{codec:?} {n}");
                assert_eq!(c.sha256_hex, sha256_hex(&c.inner), "{codec:?} {n}");
                assert_eq!(c.sha256_hex.len(), 64);
                assert!(c
                    .sha256_hex
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            }
        }
    }

    /// Golden digests: a change of encoder, level, block size or frame flags
    /// changes them, and must change `format_id` too.
    #[test]
    fn golden_digests() {
        let data = mixed(BLOCK * 5 / 2, 2024);
        let gz = compress(Codec::Gzip, 2, &data);
        let zs = compress(Codec::Zstd, 2, &data);
        let none = compress(Codec::None, 2, &data);
        let got = [
            (Codec::Gzip.format_id(), gz.sha256_hex.as_str(), gz.size),
            (Codec::Zstd.format_id(), zs.sha256_hex.as_str(), zs.size),
            (Codec::None.format_id(), none.sha256_hex.as_str(), none.size),
        ];
        let want = [
            (
                "gzip/zlib-rs/l2/b1m/v1",
                "ac8f9eb8aaada38d69da17ff27490b158a18cf83705ad02265a828df0b674de4",
                1_185_033,
            ),
            (
                "zstd/libzstd-1.5.7/l3/mt/j4m/ck1/cs0/v1",
                "ec31724d4484bf786ca980b5c18c44d1049ddb957a700aeee600e8ed8707d879",
                875_217,
            ),
            (
                "none/v1",
                "3d4b0d6613a32a21a68fff5a2ffe1698cce409216e5dcfcb08f7064cc50484b3",
                2_621_440,
            ),
        ];
        assert_eq!(got, want);
    }

    /// A writer that accepts `limit` bytes, then fails.
    struct FailAfter {
        written: usize,
        limit: usize,
    }

    impl Write for FailAfter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.written >= self.limit {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "disk full (test)",
                ));
            }
            let n = buf.len().min(self.limit - self.written);
            self.written += n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` on its own thread and fails the test if it panics or takes
    /// longer than a minute (a hang).
    fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(value) => {
                handle.join().expect("test thread");
                value
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what}: hung"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
        }
    }

    #[test]
    fn failing_output_gives_error_not_panic_or_hang() {
        let data = Arc::new(mixed(BLOCK * 6 + 100, 17));
        for codec in [Codec::Gzip, Codec::Zstd, Codec::None] {
            for limit in [0, 5, 10, 1000, BLOCK / 2, BLOCK * 2] {
                for threads in [1, 3] {
                    let what = format!("{codec:?} limit {limit} threads {threads}");
                    let data = Arc::clone(&data);
                    let message = within_a_minute(&what.clone(), move || {
                        let out = FailAfter { written: 0, limit };
                        let mut c = Compressor::new(codec, threads, out).expect("new");
                        let mut error = None;
                        for part in data.chunks(100_000) {
                            if let Err(e) = c.write_all(part) {
                                error = Some(e);
                                break;
                            }
                        }
                        let error = match error {
                            Some(e) => {
                                // Later calls keep failing.
                                assert!(c.write_all(b"more").is_err(), "{what}: write after error");
                                assert!(c.flush().is_err(), "{what}: flush after error");
                                assert!(c.finish().is_err(), "{what}: finish after error");
                                e
                            }
                            None => match c.finish() {
                                Ok(_) => panic!("{what}: no error"),
                                Err(e) => e,
                            },
                        };
                        error.to_string()
                    });
                    assert!(
                        message.contains("disk full (test)"),
                        "{codec:?} {limit}: unexpected error {message}"
                    );
                }
            }
        }
    }

    /// An output that records when it is dropped.
    struct DropFlag(Arc<AtomicBool>);

    impl Write for DropFlag {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn drop_without_finish_ends_threads() {
        let data = Arc::new(mixed(BLOCK * 5, 23));
        for codec in [Codec::Gzip, Codec::Zstd, Codec::None] {
            for threads in [1, 4] {
                for len in [0, 10, BLOCK * 5] {
                    let data = Arc::clone(&data);
                    let what = format!("drop {codec:?} threads {threads} after {len} bytes");
                    within_a_minute(&what.clone(), move || {
                        let dropped = Arc::new(AtomicBool::new(false));
                        let out = DropFlag(Arc::clone(&dropped));
                        let mut c = Compressor::new(codec, threads, out).expect("new");
                        c.write_all(&data[..len]).expect("write");
                        drop(c);
                        // The output thread has ended and released `out`.
                        assert!(dropped.load(Ordering::SeqCst), "{what}: output still held");
                    });
                }
            }
        }
        // A pipeline whose output failed, with the writer stopped part way,
        // must also drop cleanly.
        within_a_minute("drop after failure", move || {
            let out = FailAfter {
                written: 0,
                limit: 0,
            };
            let mut c = Compressor::new(Codec::Gzip, 2, out).expect("new");
            let _ = c.write_all(&mixed(BLOCK * 20, 4));
            drop(c);
        });
    }

    /// An output that blocks until a gate opens, then accepts everything.
    struct GateWriter {
        gate: Option<std::sync::mpsc::Receiver<()>>,
    }

    impl Write for GateWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn memory_stays_bounded() {
        // While the output is stuck, the producer must block after at most
        // 2 × threads + 2 blocks instead of queueing the whole stream.
        use std::sync::atomic::AtomicUsize;
        use std::time::{Duration, Instant};
        let threads = 2;
        let bound = 2 * threads + 2;
        let total_blocks = 40;
        let (open, gate) = std::sync::mpsc::channel();
        let mut c =
            Compressor::new(Codec::Gzip, threads, GateWriter { gate: Some(gate) }).expect("new");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let producer = thread::spawn(move || {
            let block = mixed(BLOCK, 1);
            for _ in 0..total_blocks {
                c.write_all(&block)?;
                counter.fetch_add(1, Ordering::SeqCst);
            }
            c.finish()
        });
        // Wait until the producer stops making progress.
        let start = Instant::now();
        let mut last = usize::MAX;
        while start.elapsed() < Duration::from_secs(20) {
            thread::sleep(Duration::from_millis(300));
            let now = accepted.load(Ordering::SeqCst);
            if now == last {
                break;
            }
            last = now;
        }
        let stuck_at = accepted.load(Ordering::SeqCst);
        assert!(
            stuck_at <= bound,
            "{stuck_at} blocks accepted with a stuck output"
        );
        assert!(stuck_at >= 1, "the producer did not get going");
        open.send(()).expect("open the gate");
        let done = producer.join().expect("producer").expect("finish");
        assert_eq!(accepted.load(Ordering::SeqCst), total_blocks);
        assert!(done.size > 0);
    }

    /// Runs `tool -t` (`gzip`, `zstd`) on the stream: `None` if the tool is
    /// not installed, else whether it accepted the stream.
    fn external_test(tool: &str, bytes: &[u8]) -> Option<bool> {
        use std::process::{Command, Stdio};
        let child = Command::new(tool)
            .args(["-t", "-q", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => panic!("running {tool}: {e}"),
        };
        let mut stdin = child.stdin.take().expect("stdin");
        let owned = bytes.to_vec();
        // The tool may stop reading early on a bad stream: ignore EPIPE.
        let feeder = thread::spawn(move || {
            let _ = stdin.write_all(&owned);
        });
        let status = child.wait().expect("wait");
        feeder.join().expect("feeder");
        Some(status.success())
    }

    #[test]
    fn external_tools_accept_streams() {
        let data = mixed(BLOCK * 5 / 2 + 9, 31);
        for n in [0, 1, BLOCK, data.len()] {
            for (codec, tool) in [(Codec::Gzip, "gzip"), (Codec::Zstd, "zstd")] {
                let bytes = compress(codec, 2, &data[..n]).inner;
                match external_test(tool, &bytes) {
                    Some(ok) => assert!(ok, "{tool} -t rejected {n} bytes"),
                    None => {
                        panic!("`{tool}` is not installed: run scripts/test.sh, which installs it")
                    }
                }
                // The check itself can fail: a corrupt trailer is caught.
                let mut bad = bytes.clone();
                let i = bad.len() - 2;
                bad[i] ^= 0x55;
                if let Some(ok) = external_test(tool, &bad) {
                    assert!(!ok, "{tool} -t accepted a corrupt stream");
                }
            }
        }
    }

    #[test]
    fn compressor_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Compressor<Vec<u8>>>();
        assert_send::<Compressor<std::fs::File>>();
    }
}
