//! Talking to OCI registries: references, credentials, the HTTP transport
//! (auth challenges, retries, bounded reads, TLS), pulling bases into the
//! local content-addressed store, the lock file, and pushing layouts.
//!
//! The transport is a thin blocking `reqwest` client of our own, and
//! references are parsed by our own parser (`reference.rs`), checked against
//! `oci-client`'s by a test. The book's design chapter says why neither is
//! `oci-client`'s.

pub mod auth;
pub mod cache_repo;
mod client;
mod follow;
pub mod lock;
pub mod pull;
pub mod push;
mod reference;
pub mod shards;
pub mod store;
pub mod tls;

pub use client::{Client, RegistryOptions, RetryPolicy};
pub use reference::{ImageRef, ReferenceError};

use crate::oci::Digest;

/// What went wrong on the wire: a stall past `--timeout`, or the HTTP
/// client's or the socket's own error (with its causes).
#[derive(Debug, thiserror::Error)]
pub enum Transport {
    /// No answer, or no data, for the stall timeout.
    #[error("no answer or data for {0} s (the --timeout)")]
    Stalled(u64),
    /// The HTTP client's error (its URL left out).
    #[error(transparent)]
    Http(reqwest::Error),
    /// Reading a body failed.
    #[error(transparent)]
    Io(std::io::Error),
}

/// Errors talking to a registry. Each names the registry and what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A `--cache-repo` that names a tag or digest.
    #[error("cache repository `{repo}` names a tag or digest; name only the repository (entries are tagged by imgc)")]
    BadCacheRepo {
        /// The repository as given.
        repo: String,
    },
    /// The HTTP client could not be set up (TLS setup, a request that
    /// cannot be built).
    #[error("failed to set up the HTTP client: {what}")]
    Setup {
        /// What failed.
        what: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A CA file could not be read or parsed.
    #[error("failed to read CA certificate file `{path}`: {reason}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The registry could not be reached (DNS, refused, TLS, reset).
    #[error("cannot reach registry {registry} ({url})")]
    Connect {
        /// host[:port].
        registry: String,
        /// The URL asked for (no query string).
        url: String,
        /// What went wrong on the wire.
        #[source]
        cause: Transport,
        /// Whether trying again may help.
        retryable: bool,
    },
    /// Authentication failed or credentials are missing.
    #[error("registry {registry} refused access to `{repository}` (HTTP {status}); credentials were looked for in: {looked_in}")]
    Unauthorized {
        /// host[:port].
        registry: String,
        /// The repository.
        repository: String,
        /// 401 or 403.
        status: u16,
        /// Where credentials were looked for.
        looked_in: String,
    },
    /// The repository does not exist.
    #[error("repository `{repository}` does not exist on registry {registry}")]
    RepositoryUnknown {
        /// host[:port].
        registry: String,
        /// The repository.
        repository: String,
    },
    /// The tag or manifest does not exist.
    #[error("`{reference}` does not exist on registry {registry} (no such tag or manifest{tags})")]
    ManifestUnknown {
        /// host[:port].
        registry: String,
        /// The full reference.
        reference: String,
        /// The repository's tags, when known (with a leading `; `).
        tags: String,
    },
    /// The blob does not exist.
    #[error("blob {digest} does not exist in `{repository}` on registry {registry}")]
    BlobUnknown {
        /// host[:port].
        registry: String,
        /// The repository.
        repository: String,
        /// The blob.
        digest: Digest,
    },
    /// Any other unexpected HTTP status.
    #[error("registry {registry} answered HTTP {status} to {url}{detail}")]
    Status {
        /// host[:port].
        registry: String,
        /// The URL (no query string).
        url: String,
        /// The status.
        status: u16,
        /// The registry's error message, if any (with a leading `: `).
        detail: String,
        /// Seconds the registry asked to wait (Retry-After), if any.
        retry_after: Option<u64>,
    },
    /// Content does not match its digest.
    #[error("{what} {expected} from registry {registry} does not match its digest (got {actual}, {actual_size} bytes); nothing was kept")]
    DigestMismatch {
        /// host[:port].
        registry: String,
        /// "blob" or "manifest".
        what: &'static str,
        /// The digest asked for.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
        /// The size of what arrived.
        actual_size: u64,
    },
    /// A document or body is larger than imgc reads.
    #[error("{what} from registry {registry} is larger than {limit} bytes")]
    TooLarge {
        /// host[:port].
        registry: String,
        /// What was read.
        what: String,
        /// The bound.
        limit: u64,
    },
    /// A document that is not what it claims.
    #[error("{what} from registry {registry} is invalid: {reason}")]
    BadDocument {
        /// host[:port].
        registry: String,
        /// What was read.
        what: String,
        /// Why.
        reason: String,
    },
    /// The token endpoint misbehaved.
    #[error("failed to get a token for registry {registry} from {realm}: {reason}")]
    Token {
        /// host[:port].
        registry: String,
        /// The realm URL (no query string).
        realm: String,
        /// Why.
        reason: String,
    },
    /// A layout document could not be read or does not match its descriptor.
    #[error(transparent)]
    Base(#[from] crate::base::BaseError),
    /// Joining CI shards.
    #[error(transparent)]
    Shards(#[from] shards::ShardError),
    /// Credential lookup failed.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// A local file could not be read or written.
    #[error("failed to {action} `{path}`")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A blob of the store is corrupt, and offline it cannot be fetched again.
    #[error("blob {digest} in the local store is corrupt (`{path}` does not match its digest), and working offline it cannot be fetched again")]
    CorruptOffline {
        /// The blob.
        digest: Digest,
        /// Its file.
        path: std::path::PathBuf,
    },
    /// The store is in use by another imgc (prune and clean need it alone).
    #[error("the store `{store}` is in use by another imgc process")]
    StoreBusy {
        /// The store folder.
        store: std::path::PathBuf,
    },
    /// Working offline and something is not in the store.
    #[error("working offline and {what} is not in the local store ({store})")]
    Offline {
        /// What is missing.
        what: String,
        /// The store folder.
        store: std::path::PathBuf,
    },
    /// A document of a layout to push is not valid JSON of its kind.
    #[error("{what} {digest} of the layout is invalid")]
    InvalidDocument {
        /// `index` or `manifest`.
        what: &'static str,
        /// Its digest.
        digest: Digest,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An index lists something that is not an image manifest.
    #[error("index {digest} lists {child} of media type `{media_type}`; imgc pushes indexes of image manifests")]
    NotAnImageIndex {
        /// The index.
        digest: Digest,
        /// The entry.
        child: Digest,
        /// Its media type.
        media_type: String,
    },
    /// A blob file whose size is not its descriptor's.
    #[error("blob `{path}` is {actual} bytes; its descriptor says {declared}")]
    SizeMismatch {
        /// The file.
        path: std::path::PathBuf,
        /// Its size.
        actual: u64,
        /// The descriptor's.
        declared: u64,
    },
    /// Registry bases need a cache folder.
    #[error("there is no cache folder for pulled blobs: set IMGC_CACHE_DIR (or HOME)")]
    NoCacheDir,
    /// `--locked`, and the lock file does not pin a base.
    #[error("base `{reference}` is not pinned in `{lock_file}` (--locked); run `imgc lock` to update the lock file")]
    NotLocked {
        /// The base reference.
        reference: String,
        /// The lock file.
        lock_file: std::path::PathBuf,
    },
    /// What a pinned digest holds disagrees with the lock file.
    #[error("base `{reference}` at {digest} does not list {platform} as {expected}, as the lock file says; run `imgc lock --update`")]
    LockMismatch {
        /// The base reference.
        reference: String,
        /// The digest it resolved to.
        digest: Digest,
        /// The platform.
        platform: String,
        /// The manifest digest the lock file gives it.
        expected: Digest,
    },
}

impl RegistryError {
    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Connect { retryable, .. } => *retryable,
            RegistryError::Status { status, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
            }
            _ => false,
        }
    }

    /// The wait the registry asked for, in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A hint for the user, if there is one.
    pub fn help(&self) -> Option<String> {
        match self {
            RegistryError::Unauthorized { registry, .. } => Some(format!(
                "log in with `docker login {registry}` or `podman login {registry}`, or set DOCKER_CONFIG / REGISTRY_AUTH_FILE"
            )),
            RegistryError::RepositoryUnknown { .. } => Some(
                "check the name; some registries (such as Amazon ECR) need the repository created before the first push".into(),
            ),
            RegistryError::Connect { registry, url, .. } if url.contains("https://") => Some(format!(
                "imgc talks HTTPS to {registry}: if it uses a private CA, pass it with --ca-file FILE; if it serves plain HTTP, name it with --insecure-registry {registry}"
            )),
            RegistryError::Offline { .. } => Some(
                "run once with network access (e.g. `imgc lock SPEC` or a build without --offline) to fill the store".into(),
            ),
            RegistryError::CorruptOffline { .. } => Some(
                "run without --offline to fetch it again, or `imgc cache clean` to empty the store".into(),
            ),
            RegistryError::StoreBusy { .. } => {
                Some("wait for the other builds to finish, then run the command again".into())
            }
            _ => None,
        }
    }
}
