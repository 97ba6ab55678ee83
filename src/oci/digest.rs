//! The `Digest` newtype: `sha256:` followed by 64 lowercase hex digits,
//! validated before it is ever used to build a path or a URL.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// A validated sha256 content digest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

/// A string that is not a valid sha256 digest.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a valid digest (expected `sha256:` and 64 lowercase hex digits)")]
pub struct DigestError(pub String);

impl Digest {
    /// A digest from 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        format!("sha256:{hex}").parse()
    }

    /// The 64 hex digits, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// The full `sha256:<hex>` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The sha256 digest of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
}

/// A writer that hashes (sha256) and counts what its inner writer accepted:
/// the one way imgc digests a stream as it writes it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    sha: Sha256,
    size: u64,
}

impl<W: std::io::Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            sha: Sha256::new(),
            size: 0,
        }
    }

    /// The inner writer, the digest and the size of all it accepted.
    pub fn finish(self) -> (W, Digest, u64) {
        let digest = Digest(format!("sha256:{}", hex::encode(self.sha.finalize())));
        (self.inner, digest, self.size)
    }

    /// The inner writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(accepted(buf, n)?);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The part of `buf` a writer said it took (`n` bytes): an error when it
/// said more than it was given.
fn accepted(buf: &[u8], n: usize) -> std::io::Result<&[u8]> {
    buf.get(..n).ok_or_else(|| {
        std::io::Error::other("a writer reported more bytes written than it was given")
    })
}

/// Bytes handed to a [`SideHasher`]'s thread at a time.
const SIDE_PIECE: usize = 256 * 1024;

/// A writer that sha256-hashes and counts what is written to it on a helper
/// thread, in pieces of 256 KiB (at most a few in flight), so that making
/// the bytes and hashing them use two cores. [`SideHasher::finish`] gives
/// the digest and the size.
#[derive(Debug)]
pub struct SideHasher {
    buf: Vec<u8>,
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    worker: Option<std::thread::JoinHandle<(Digest, u64)>>,
}

impl SideHasher {
    /// Starts the helper thread.
    pub fn new() -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let (free_tx, free) = std::sync::mpsc::sync_channel::<Vec<u8>>(6);
        let worker = std::thread::Builder::new()
            .name("imgc-hash".into())
            .spawn(move || {
                let (mut sha, mut size) = (Sha256::new(), 0u64);
                for mut piece in rx {
                    sha.update(&piece);
                    size += piece.len() as u64;
                    piece.clear();
                    let _ = free_tx.try_send(piece);
                }
                let digest = Digest(format!("sha256:{}", hex::encode(sha.finalize())));
                (digest, size)
            })?;
        Ok(SideHasher {
            buf: Vec::with_capacity(SIDE_PIECE),
            tx: Some(tx),
            free,
            worker: Some(worker),
        })
    }

    /// Hands the buffered bytes to the thread.
    fn send(&mut self) -> std::io::Result<()> {
        let next = self
            .free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(SIDE_PIECE));
        let full = std::mem::replace(&mut self.buf, next);
        let gone = || std::io::Error::other("the hashing thread stopped");
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(full)
            .map_err(|_| gone())
    }

    /// The digest and the size of everything written.
    pub fn finish(mut self) -> std::io::Result<(Digest, u64)> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        self.tx = None;
        let worker = self
            .worker
            .take()
            .ok_or_else(|| std::io::Error::other("finished twice"))?;
        worker
            .join()
            .map_err(|_| std::io::Error::other("the hashing thread panicked"))
    }
}

impl std::io::Write for SideHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        if self.buf.len() >= SIDE_PIECE {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A writer that passes what it is given to `inner` and hashes it on a
/// [`SideHasher`]'s thread: [`HashingWriter`] with the hashing on another
/// core.
#[derive(Debug)]
pub struct SideHashing<W> {
    inner: W,
    hasher: SideHasher,
}

impl<W: std::io::Write> SideHashing<W> {
    /// Wraps `inner`, starting the hashing thread.
    pub fn new(inner: W) -> std::io::Result<Self> {
        Ok(SideHashing {
            inner,
            hasher: SideHasher::new()?,
        })
    }

    /// The inner writer, the digest and the size of all it accepted.
    pub fn finish(self) -> std::io::Result<(W, Digest, u64)> {
        let (digest, size) = self.hasher.finish()?;
        Ok((self.inner, digest, size))
    }
}

impl<W: std::io::Write> std::io::Write for SideHashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.write_all(accepted(buf, n)?)?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.len() == 71
            && s.starts_with("sha256:")
            && s[7..]
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok {
            Ok(Digest(s.to_string()))
        } else {
            Err(DigestError(s.chars().take(100).collect()))
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_side_hasher_hashes_what_one_pass_hashes() {
        use std::io::Write;
        let data: Vec<u8> = (0..3 * SIDE_PIECE + 12_345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for cut in [0, 1, 1000, SIDE_PIECE, 2 * SIDE_PIECE + 1] {
            let mut h = SideHasher::new().unwrap();
            h.write_all(&data[..cut]).unwrap();
            for piece in data[cut..].chunks(4096 + 17) {
                h.write_all(piece).unwrap();
            }
            assert_eq!(
                h.finish().unwrap(),
                (sha256_digest(&data), data.len() as u64)
            );
        }
        let empty = SideHasher::new().unwrap().finish().unwrap();
        assert_eq!(empty, (sha256_digest(b""), 0));
    }

    /// A writer that takes at most 1000 bytes a call, then fails after
    /// `fail_after` bytes in all.
    struct Stingy {
        got: Vec<u8>,
        fail_after: usize,
    }

    impl std::io::Write for Stingy {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.got.len() >= self.fail_after {
                return Err(std::io::Error::other("disk full"));
            }
            let n = buf.len().min(1000);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn side_hashing_hashes_what_its_writer_took_and_passes_its_error_on() {
        use std::io::Write;
        let data: Vec<u8> = (0..SIDE_PIECE + 4321).map(|i| (i % 253) as u8).collect();
        let inner = Stingy {
            got: Vec::new(),
            fail_after: usize::MAX,
        };
        let mut w = SideHashing::new(inner).unwrap();
        w.write_all(&data).unwrap();
        let (inner, digest, size) = w.finish().unwrap();
        assert_eq!(inner.got, data);
        let mut one = HashingWriter::new(Vec::new());
        one.write_all(&data).unwrap();
        let (_, want, want_size) = one.finish();
        assert_eq!((digest, size), (want, want_size));

        let inner = Stingy {
            got: Vec::new(),
            fail_after: 5000,
        };
        let mut w = SideHashing::new(inner).unwrap();
        let err = w.write_all(&data).unwrap_err();
        assert_eq!(err.to_string(), "disk full");
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "sha256:abc",
            "sha512:0000000000000000000000000000000000000000000000000000000000000000",
            "sha256:000000000000000000000000000000000000000000000000000000000000000G",
            "sha256:../../../../etc/passwd/00000000000000000000000000000000000000000",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        let d = sha256_digest(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
    }
}
