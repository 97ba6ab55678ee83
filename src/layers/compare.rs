//! Comparing the tar stream a layer's sources make with what a cached blob
//! decompresses to, piece by piece while both are made. The stream is
//! hashed anyway (its digest is the layer's diff_id); a blob that
//! decompresses to the very same bytes decompresses to that digest, so
//! the blob's side is compared instead of hashed a second time.
//!
//! [`pair`] gives the two ends: an [`Unpacker`], which decompresses a blob
//! into pieces, and an [`Against`], a writer the tar stream goes through
//! that compares each byte with the next decompressed one. At most a few
//! pieces are in flight. Either end may stop first; the other then stops
//! waiting for it. Until the first piece comes (the blob's entry is still
//! being looked up), the stream is held, up to [`MAX_HELD`] bytes, rather
//! than waited for: when there is no entry, a small stream then never waits
//! for the look-up, and a big one waits only once that much is made.

use crate::oci::Codec;
use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};

/// Bytes per piece.
const PIECE: usize = 256 * 1024;

/// The most bytes of the stream held before the first piece comes.
const MAX_HELD: usize = 8 << 20;

/// The decompressing end (see [`pair`]).
pub struct Unpacker {
    tx: SyncSender<Vec<u8>>,
    free: Receiver<Vec<u8>>,
}

/// The comparing end: a writer that compares what it is given with what
/// the blob decompresses to (see [`pair`]).
pub struct Against {
    rx: Option<Receiver<Vec<u8>>>,
    free: SyncSender<Vec<u8>>,
    piece: Vec<u8>,
    at: usize,
    /// Bytes found equal so far.
    seen: u64,
    /// Why the bytes are not the same, once known.
    differs: Option<String>,
    /// The stream written before the first piece came (see [`MAX_HELD`]).
    held: Vec<u8>,
    /// Whether the stream is still being held.
    holding: bool,
}

/// The two ends of one comparison.
pub fn pair() -> (Unpacker, Against) {
    let (tx, rx) = sync_channel(4);
    let (free_tx, free) = sync_channel(6);
    let unpacker = Unpacker { tx, free };
    let against = Against {
        rx: Some(rx),
        free: free_tx,
        piece: Vec::new(),
        at: 0,
        seen: 0,
        differs: None,
        held: Vec::new(),
        holding: true,
    };
    (unpacker, against)
}

impl Unpacker {
    /// Decompresses `blob` (of `codec`) for the comparing end, reading at
    /// most `limit + 1` decompressed bytes (a blob may lie about its size);
    /// returns how many it sent. Stops with an error when the comparing
    /// end is gone (the bytes differed, or the stream failed).
    pub fn unpack(self, codec: Codec, blob: &mut dyn Read, limit: u64) -> io::Result<u64> {
        let mut decoded = super::decoder(codec, blob)?.take(limit + 1);
        let mut sent = 0u64;
        loop {
            let mut piece = self.free.try_recv().unwrap_or_default();
            piece.resize(PIECE, 0);
            let n = fill(&mut decoded, &mut piece)?;
            if n == 0 {
                return Ok(sent);
            }
            piece.truncate(n);
            sent += n as u64;
            self.tx
                .send(piece)
                .map_err(|_| io::Error::other("the comparison stopped"))?;
        }
    }
}

/// Reads into `buf` until it is full or the reader ends; how much it read.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl Against {
    fn stop(&mut self, why: String) {
        self.differs.get_or_insert(why);
        self.rx = None;
    }

    /// The next decompressed piece; `false` (and stopped) when there is
    /// none.
    fn next_piece(&mut self) -> bool {
        let Some(rx) = &self.rx else {
            return false;
        };
        match rx.recv() {
            Ok(next) => {
                let used = std::mem::replace(&mut self.piece, next);
                let _ = self.free.try_send(used);
                self.at = 0;
                true
            }
            Err(_) => {
                let seen = self.seen;
                self.stop(format!(
                    "its blob decompresses to {seen} bytes, fewer than the sources' tar stream"
                ));
                false
            }
        }
    }

    fn compare(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() && self.differs.is_none() {
            if self.at == self.piece.len() && !self.next_piece() {
                return;
            }
            let n = buf.len().min(self.piece.len() - self.at);
            let theirs = &self.piece[self.at..self.at + n];
            if buf[..n] != *theirs {
                let first = buf.iter().zip(theirs).take_while(|(a, b)| a == b).count();
                let seen = self.seen + first as u64;
                self.stop(format!(
                    "its blob decompresses to other bytes than the sources' tar stream (from byte {seen} on)"
                ));
                return;
            }
            self.at += n;
            self.seen += n as u64;
            buf = &buf[n..];
        }
    }

    /// Holds `buf` while no piece has come and there is room; `false` when
    /// the stream is no longer held (what was held has been compared).
    fn hold(&mut self, buf: &[u8]) -> bool {
        if !self.holding {
            return false;
        }
        if let Some(rx) = &self.rx {
            match rx.try_recv() {
                Ok(first) => {
                    self.piece = first;
                    self.at = 0;
                }
                Err(TryRecvError::Empty) if self.held.len() + buf.len() <= MAX_HELD => {
                    self.held.extend_from_slice(buf);
                    return true;
                }
                // Gone (compare() says so), or no more room: wait.
                Err(_) => {}
            }
        }
        self.release();
        false
    }

    /// Compares what was held (waiting for the first piece if need be).
    fn release(&mut self) {
        self.holding = false;
        let held = std::mem::take(&mut self.held);
        self.compare(&held);
    }

    /// Whether the blob decompressed to exactly what was written: the same
    /// bytes, and nothing after them (waits for the decompressing end).
    pub fn finish(mut self) -> Result<(), String> {
        if self.holding {
            self.release();
        }
        loop {
            if let Some(why) = self.differs.take() {
                return Err(why);
            }
            if self.at < self.piece.len() {
                return Err(format!(
                    "its blob decompresses to more bytes than the sources' tar stream ({})",
                    self.seen
                ));
            }
            let Some(rx) = &self.rx else {
                return Err("its blob was not compared".into());
            };
            match rx.recv() {
                Ok(next) => {
                    self.piece = next;
                    self.at = 0;
                }
                Err(_) => return Ok(()),
            }
        }
    }
}

impl Write for Against {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.hold(buf) {
            self.compare(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compares `written` (in pieces of `step` bytes) with what `blob`
    /// (`codec`) decompresses to.
    fn compare(codec: Codec, blob: &[u8], written: &[u8], step: usize) -> Result<(), String> {
        let (unpacker, mut against) = pair();
        std::thread::scope(|s| {
            let limit = written.len() as u64;
            let unpacking = s.spawn(move || unpacker.unpack(codec, &mut &blob[..], limit));
            for chunk in written.chunks(step.max(1)) {
                against.write_all(chunk).unwrap();
            }
            let verdict = against.finish();
            let _ = unpacking.join().unwrap();
            verdict
        })
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[test]
    fn the_same_bytes_compare_equal_in_any_pieces_and_codecs() {
        let tar = data(3 * PIECE + 123);
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        assert_eq!(compare(Codec::Zstd, &zst, &tar, 4096), Ok(()));
        assert_eq!(compare(Codec::Zstd, &zst, &tar, PIECE + 1), Ok(()));
        assert_eq!(compare(Codec::None, &tar, &tar, 1000), Ok(()));
        assert_eq!(compare(Codec::None, &[], &[], 1), Ok(()));
    }

    #[test]
    fn a_changed_byte_a_shorter_or_a_longer_blob_is_told() {
        let tar = data(2 * PIECE);
        let mut other = tar.clone();
        other[PIECE + 5] ^= 1;
        let e = compare(Codec::None, &other, &tar, 10_000).unwrap_err();
        assert!(e.contains(&format!("from byte {} on", PIECE + 5)), "{e}");
        let e = compare(Codec::None, &tar[..tar.len() - 1], &tar, 4096).unwrap_err();
        assert!(e.contains("fewer"), "{e}");
        let mut longer = tar.clone();
        longer.push(0);
        let e = compare(Codec::None, &longer, &tar, 4096).unwrap_err();
        assert!(e.contains("more bytes"), "{e}");
        let e = compare(Codec::Zstd, b"not zstd at all", &tar, 4096).unwrap_err();
        assert!(e.contains("fewer"), "{e}");
    }

    #[test]
    fn a_stream_is_held_not_waited_for_until_the_blob_side_starts() {
        // No piece yet, and the unpacker still alive (its entry is being
        // looked up): writing does not wait, up to the limit.
        let (unpacker, mut against) = pair();
        let (wrote_tx, wrote) = std::sync::mpsc::channel();
        let verdict = std::thread::scope(|s| {
            let writer = s.spawn(move || {
                against.write_all(&data(MAX_HELD)).unwrap();
                let _ = wrote_tx.send(());
                against
            });
            let waited = wrote
                .recv_timeout(std::time::Duration::from_secs(10))
                .is_err();
            // No entry after all (this also lets a waiting writer go).
            drop(unpacker);
            let against = writer.join().unwrap();
            assert!(!waited, "the writer waited for the blob's side");
            against.finish()
        });
        assert!(verdict.unwrap_err().contains("0 bytes, fewer"));
        // A stream longer than the limit, compared as the blob comes.
        let tar = data(MAX_HELD + 3 * PIECE + 5);
        assert_eq!(compare(Codec::None, &tar, &tar, 100_000), Ok(()));
        let mut other = tar.clone();
        other[MAX_HELD + 7] ^= 1;
        let e = compare(Codec::None, &other, &tar, 100_000).unwrap_err();
        assert!(e.contains(&format!("from byte {} on", MAX_HELD + 7)), "{e}");
    }

    #[test]
    fn either_end_stopping_first_never_leaves_the_other_waiting() {
        // The comparing end goes away at once: the unpacker stops.
        let (unpacker, against) = pair();
        drop(against);
        let big = data(8 * PIECE);
        let e = unpacker.unpack(Codec::None, &mut &big[..], big.len() as u64);
        assert!(e.is_err());
        // The unpacker goes away unused: the comparison says so, at once.
        let (unpacker, mut against) = pair();
        drop(unpacker);
        against.write_all(b"abc").unwrap();
        assert!(against.finish().unwrap_err().contains("0 bytes, fewer"));
    }
}
