//! TEMPORARY stand-in (single-threaded); replaced by the block-parallel compressor.
use sha2::{Digest as _, Sha256};
use std::io::{self, Write};

/// Layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    /// gzip
    Gzip,
    /// zstd
    Zstd,
    /// none
    None,
}

impl Codec {
    /// Media type suffix.
    pub fn media_type_suffix(self) -> &'static str {
        match self {
            Codec::Gzip => "+gzip",
            Codec::Zstd => "+zstd",
            Codec::None => "",
        }
    }
    /// Format id.
    pub fn format_id(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip/stub",
            Codec::Zstd => "zstd/stub",
            Codec::None => "none",
        }
    }
}

struct Hashing<W> {
    inner: W,
    h: Sha256,
    n: u64,
}
impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.h.update(&b[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Enc<W: Write> {
    Gz(flate2::write::GzEncoder<Hashing<W>>),
    Zs(zstd::stream::write::Encoder<'static, Hashing<W>>),
    No(Hashing<W>),
}

/// Compressor.
pub struct Compressor<W: Write + Send + 'static> {
    enc: Enc<W>,
}

/// Result.
pub struct Compressed<W> {
    /// inner
    pub inner: W,
    /// hex
    pub sha256_hex: String,
    /// size
    pub size: u64,
}

impl<W: Write + Send + 'static> Compressor<W> {
    /// New.
    pub fn new(codec: Codec, threads: usize, out: W) -> io::Result<Self> {
        let h = Hashing {
            inner: out,
            h: Sha256::new(),
            n: 0,
        };
        let enc = match codec {
            Codec::Gzip => Enc::Gz(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(h, flate2::Compression::new(3)),
            ),
            Codec::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(h, 3)?;
                e.multithread(threads.max(1) as u32)?;
                Enc::Zs(e)
            }
            Codec::None => Enc::No(h),
        };
        Ok(Compressor { enc })
    }
    /// Finish.
    pub fn finish(self) -> io::Result<Compressed<W>> {
        let h = match self.enc {
            Enc::Gz(e) => e.finish()?,
            Enc::Zs(e) => e.finish()?,
            Enc::No(h) => h,
        };
        Ok(Compressed {
            inner: h.inner,
            sha256_hex: hex::encode(h.h.finalize()),
            size: h.n,
        })
    }
}

impl<W: Write + Send + 'static> Write for Compressor<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match &mut self.enc {
            Enc::Gz(e) => e.write(b),
            Enc::Zs(e) => e.write(b),
            Enc::No(e) => e.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
