//! The `Reporter` trait: how the library tells the outside world what it is
//! doing. The library never prints; the CLI implements this trait and
//! decides how (and whether) to show each event.

use crate::oci::Digest;
use std::path::Path;

/// Which cache a layer was taken from (instead of being compressed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheHit {
    /// The local layer cache.
    Local,
    /// The cache repository (`--cache-repo`), checked against the sources.
    Repo,
}

/// Something worth telling the user while building.
#[derive(Debug)]
pub enum Event<'a> {
    /// The plan is ready.
    Planned {
        /// Images (platforms) to assemble.
        images: usize,
        /// Distinct layers to build.
        layers: usize,
    },
    /// A layer is being built.
    LayerStarted {
        /// The layer's name.
        name: &'a str,
        /// The platforms that use it, as strings.
        platforms: &'a [String],
        /// The bytes of file content it will hold (the tar is a little larger).
        content_bytes: u64,
    },
    /// A layer is being built: this many tar bytes are written.
    LayerProgress {
        /// The layer's name.
        name: &'a str,
        /// Tar bytes written so far.
        tar_bytes: u64,
    },
    /// A layer was built.
    LayerFinished {
        /// The layer's name.
        name: &'a str,
        /// The compressed blob's digest.
        digest: &'a Digest,
        /// Compressed size.
        size: u64,
        /// Uncompressed tar size.
        tar_size: u64,
        /// Taken from a cache (checked against the sources), not
        /// compressed again: which.
        cache: Option<CacheHit>,
    },
    /// A base image blob was copied into the output layout.
    BaseBlobCopied {
        /// Its digest.
        digest: &'a Digest,
        /// Its size.
        size: u64,
    },
    /// Blobs no tag reaches any more were removed from the output layout.
    BlobsRemoved {
        /// How many.
        count: usize,
    },
    /// Something the user should know, which does not stop the build.
    Warning(&'a str),
    /// A registry operation failed and is tried again.
    Retrying {
        /// What is retried.
        what: &'a str,
        /// The attempt that failed (1 = the first).
        attempt: u32,
        /// How long imgc waits before the next attempt.
        wait: std::time::Duration,
        /// Why it failed.
        reason: &'a str,
    },
    /// A blob was downloaded from a registry into the local store.
    BlobPulled {
        /// Its digest.
        digest: &'a Digest,
        /// Its size.
        size: u64,
    },
    /// A blob transfer to a registry started.
    PushStarted {
        /// Its digest.
        digest: &'a Digest,
        /// Its size.
        size: u64,
    },
    /// Bytes of a blob sent so far.
    PushProgress {
        /// Its digest.
        digest: &'a Digest,
        /// Bytes sent (restarts from 0 when an upload is retried).
        sent: u64,
    },
    /// A blob is in the registry.
    BlobPushed {
        /// Its digest.
        digest: &'a Digest,
        /// Its size.
        size: u64,
        /// How it got there.
        how: BlobOutcome,
    },
    /// A manifest or index was pushed.
    ManifestPushed {
        /// The reference it was pushed as (by digest or tag).
        reference: &'a str,
        /// Its digest.
        digest: &'a Digest,
    },
    /// The layout was written.
    LayoutWritten {
        /// Where.
        path: &'a Path,
        /// The image index digest.
        digest: &'a Digest,
    },
}

/// How a blob came to be in a registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobOutcome {
    /// The registry had it already (HEAD said so).
    Existed,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Uploaded.
    Uploaded,
}

/// Receives events; implementations must be cheap and must not fail.
pub trait Reporter: Send + Sync {
    /// Called for each event, from any thread.
    fn report(&self, event: Event<'_>);
}

/// A reporter that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullReporter;

impl Reporter for NullReporter {
    fn report(&self, _: Event<'_>) {}
}

/// An error with its causes, `: `-joined (a cause already in the text is
/// not repeated), for a one-line warning.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s
}
