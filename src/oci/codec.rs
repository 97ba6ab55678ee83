//! The layer compression codecs, as the plan and the OCI media types name
//! them. How each encodes is `layers/compress.rs`'s business; the exact
//! byte format of each is named here, by [`Codec::format_id`], because it
//! is part of a layer's identity (plan keys, cache keys).

/// A layer compression codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    /// gzip: one member, raw deflate by zlib-rs at level 2 in independent
    /// 1 MiB blocks.
    Gzip,
    /// zstd (one frame, libzstd multithreaded encoder, level 3).
    Zstd,
    /// No compression: the layer blob is the tar stream itself.
    None,
}

impl Codec {
    /// Media type suffix for OCI layer types: "+gzip", "+zstd", "".
    pub fn media_type_suffix(self) -> &'static str {
        match self {
            Codec::Gzip => "+gzip",
            Codec::Zstd => "+zstd",
            Codec::None => "",
        }
    }

    /// A string naming the exact byte format (implementation, level, block
    /// size, version of the scheme), e.g. "gzip/zlib-rs/l3/b1m/v1". Goes into
    /// cache keys and the plan output; it changes whenever the bytes would.
    pub fn format_id(self) -> &'static str {
        match self {
            Codec::Gzip => GZIP_FORMAT_ID,
            Codec::Zstd => ZSTD_FORMAT_ID,
            Codec::None => "none/v1",
        }
    }
}

/// The format id of the gzip block scheme (`layers/compress.rs`,
/// `GZIP_SCHEME`); kept in step with it by hand (a test checks
/// that it names the scheme's level and block size). "v1" is the scheme:
/// independent blocks, sync flush between them, one gzip member.
const GZIP_FORMAT_ID: &str = "gzip/zlib-rs/l2/b1m/v1";

/// The zstd format: libzstd version, level, multithreaded encoder with
/// 4 MiB jobs, checksum flag on, content-size flag off (a test checks the
/// libzstd version).
const ZSTD_FORMAT_ID: &str = "zstd/libzstd-1.5.7/l3/mt/j4m/ck1/cs0/v1";
