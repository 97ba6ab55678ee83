//! Pulling: manifests and indexes by tag or digest (explicit OCI and Docker
//! Accept headers, bounded, digest-checked, CVE-2021-41190 ambiguity and
//! Content-Type checks), blobs streamed into the store and verified, and
//! [`RegistryBases`], which resolves spec bases through the lock file and
//! the store for the planner.

use super::client::{read_limited, Call};
use super::follow::{Ending, Growing};
use super::lock::{LockFile, LockedBase};
use super::store::{Store, TempPath};
use super::{Client, ImageRef, RegistryError};
use crate::base::{BaseError, RemoteBases, RemoteOpened, MAX_DOCUMENT_SIZE};
use crate::oci::{self, AnyDocument, Descriptor, Digest, ImageConfig, Index, Manifest, Platform};
use crate::progress::Event;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Every manifest media type imgc reads.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// A manifest or index as fetched and checked.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// Its digest (computed; equal to the asked digest when one was given).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its exact bytes.
    pub bytes: Vec<u8>,
}

impl FetchedManifest {
    /// Whether it is an index (else a manifest).
    pub fn is_index(&self) -> bool {
        oci::is_index_media_type(&self.media_type)
    }
}

/// What a pull request to a repository needs: its host and token scope.
struct Pull<'r> {
    r: &'r ImageRef,
    host: String,
    scopes: Vec<String>,
}

impl<'r> Pull<'r> {
    fn new(r: &'r ImageRef) -> Self {
        Pull {
            r,
            host: r.api_host().to_string(),
            scopes: vec![format!("repository:{}:pull", r.repository)],
        }
    }

    fn call(&self) -> Call<'_> {
        Call {
            host: &self.host,
            repository: &self.r.repository,
            scopes: &self.scopes,
        }
    }
}

/// Checks a fetched document: one kind only, media type agreeing with the
/// response's Content-Type. Returns its media type.
pub(crate) fn check_document(
    host: &str,
    what: &str,
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<String, RegistryError> {
    let bad = |reason: String| RegistryError::BadDocument {
        registry: host.to_string(),
        what: what.to_string(),
        reason,
    };
    let any: AnyDocument =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON ({e})")))?;
    if any.manifests.is_some() && (any.layers.is_some() || any.config.is_some()) {
        return Err(bad(
            "it has both `manifests` and `layers`/`config` (an ambiguous document)".into(),
        ));
    }
    let ct = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
        .filter(|c| !c.is_empty() && c != "application/json" && c != "application/octet-stream");
    let media_type = match (&any.media_type, &ct) {
        (Some(doc), Some(ct)) if doc != ct => {
            return Err(bad(format!(
                "its mediaType `{doc}` disagrees with the response's Content-Type `{ct}`"
            )))
        }
        (Some(doc), _) => doc.clone(),
        (None, Some(ct)) => ct.clone(),
        (None, None) if any.manifests.is_some() => oci::MEDIA_TYPE_INDEX.to_string(),
        (None, None) => oci::MEDIA_TYPE_MANIFEST.to_string(),
    };
    let is_index = oci::is_index_media_type(&media_type);
    if !is_index && !oci::is_manifest_media_type(&media_type) {
        return Err(bad(format!(
            "media type `{media_type}` is neither an image index nor an image manifest"
        )));
    }
    if is_index && any.layers.is_some() || !is_index && any.manifests.is_some() {
        return Err(bad(format!(
            "its content does not fit its media type `{media_type}`"
        )));
    }
    Ok(media_type)
}

impl Client {
    /// Fetches a manifest or index by tag or digest. A missing tag is told
    /// apart from a missing repository, and the error lists the tags there are.
    pub fn get_manifest(&self, r: &ImageRef) -> Result<FetchedManifest, RegistryError> {
        match self.get_manifest_once(r) {
            Err(RegistryError::ManifestUnknown {
                registry,
                reference,
                ..
            }) => match self.list_tags(r) {
                Err(e @ RegistryError::RepositoryUnknown { .. }) => Err(e),
                Ok(tags) if r.digest.is_none() => {
                    let mut shown: Vec<String> = tags.iter().take(20).cloned().collect();
                    if tags.len() > 20 {
                        shown.push(format!("and {} more", tags.len() - 20));
                    }
                    Err(RegistryError::ManifestUnknown {
                        registry,
                        reference,
                        tags: if shown.is_empty() {
                            "; the repository has no tags".into()
                        } else {
                            format!("; tags there: {}", shown.join(", "))
                        },
                    })
                }
                _ => Err(RegistryError::ManifestUnknown {
                    registry,
                    reference,
                    tags: String::new(),
                }),
            },
            other => other,
        }
    }

    /// Fetches a manifest or index by tag or digest (a missing one is
    /// `ManifestUnknown` or `RepositoryUnknown`, with no tag listing).
    pub(crate) fn get_manifest_once(&self, r: &ImageRef) -> Result<FetchedManifest, RegistryError> {
        let pull = Pull::new(r);
        let (call, host) = (pull.call(), &pull.host);
        let url = format!(
            "{}{}/manifests/{}",
            self.base(host),
            r.repository,
            r.manifest_ref()
        );
        let shown_ref = r.to_string();
        self.retrying(&format!("fetching {shown_ref}"), || {
            let resp = self.send(&call, &|http| {
                Ok(http.get(&url).header("Accept", MANIFEST_ACCEPT))
            })?;
            if !resp.status().is_success() {
                return Err(self.status_error(&call, resp, Some(&shown_ref)));
            }
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let header_digest = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = read_limited(
                resp,
                MAX_DOCUMENT_SIZE,
                host,
                &format!("manifest of {shown_ref}"),
            )?;
            let digest = oci::sha256_digest(&bytes);
            let expected = match (&r.digest, header_digest) {
                (Some(d), _) => Some(d.clone()),
                (None, Some(h)) => h.parse::<Digest>().ok(),
                (None, None) => None,
            };
            if let Some(expected) = expected {
                if expected != digest {
                    return Err(RegistryError::DigestMismatch {
                        registry: host.clone(),
                        what: "manifest",
                        expected,
                        actual: digest,
                        actual_size: bytes.len() as u64,
                    });
                }
            }
            let media_type = check_document(
                host,
                &format!("manifest of {shown_ref}"),
                &bytes,
                content_type.as_deref(),
            )?;
            Ok(FetchedManifest {
                digest,
                media_type,
                bytes,
            })
        })
    }

    /// Fetches a small blob (a config) into memory: at most
    /// [`MAX_DOCUMENT_SIZE`] bytes, checked against its size and digest.
    pub fn get_document_blob(
        &self,
        r: &ImageRef,
        desc: &Descriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let host = r.api_host().to_string();
        if desc.size > MAX_DOCUMENT_SIZE {
            return Err(RegistryError::TooLarge {
                registry: host,
                what: format!("blob {} (declared {} bytes)", desc.digest, desc.size),
                limit: MAX_DOCUMENT_SIZE,
            });
        }
        self.blob_request(r, desc, "fetching", |resp, _url| {
            let bytes = read_limited(resp, desc.size, &host, &format!("blob {}", desc.digest))?;
            let digest = oci::sha256_digest(&bytes);
            if digest != desc.digest || bytes.len() as u64 != desc.size {
                return Err(RegistryError::DigestMismatch {
                    registry: host.clone(),
                    what: "blob",
                    expected: desc.digest.clone(),
                    actual: digest,
                    actual_size: bytes.len() as u64,
                });
            }
            Ok(bytes)
        })
    }

    /// GETs a blob, retrying as the client does; a 404 is `BlobUnknown`.
    /// `take` reads the answer (given with the URL, for errors).
    fn blob_request<T>(
        &self,
        r: &ImageRef,
        desc: &Descriptor,
        verb: &str,
        take: impl Fn(reqwest::blocking::Response, &str) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let pull = Pull::new(r);
        let (call, host) = (pull.call(), &pull.host);
        let url = format!("{}{}/blobs/{}", self.base(host), r.repository, desc.digest);
        self.retrying(&format!("{verb} {}", desc.digest), || {
            let resp = self.send(&call, &|http| Ok(http.get(&url)))?;
            if resp.status().is_success() {
                return take(resp, &url);
            }
            Err(match self.status_error(&call, resp, None) {
                RegistryError::Status { status: 404, .. } => RegistryError::BlobUnknown {
                    registry: host.clone(),
                    repository: r.repository.clone(),
                    digest: desc.digest.clone(),
                },
                e => e,
            })
        })
    }

    /// The repository's tags (the first page; bounded).
    pub fn list_tags(&self, r: &ImageRef) -> Result<Vec<String>, RegistryError> {
        let url = format!("{}{}/tags/list", self.base(r.api_host()), r.repository);
        Ok(self.tags_page(r, &url)?.0)
    }

    /// Calls `each` with every page of the repository's tags, `per_page`
    /// asked for at a time, following the registry's `Link: <…>; rel="next"`
    /// for at most `max_pages` pages. A next page on another scheme, host
    /// or port, or at another path, is refused (it would get credentials).
    pub fn for_each_tag_page(
        &self,
        r: &ImageRef,
        (per_page, max_pages): (usize, usize),
        each: &mut dyn FnMut(Vec<String>) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        let first = format!(
            "{}{}/tags/list?n={per_page}",
            self.base(r.api_host()),
            r.repository
        );
        let mut url = Some(first);
        let mut pages = 0;
        while let Some(u) = url.take() {
            if pages == max_pages {
                return Err(tag_list_error(
                    r,
                    format!("it has more than {max_pages} pages of {per_page} tags"),
                ));
            }
            pages += 1;
            let (tags, next) = self.tags_page(r, &u)?;
            url = next.map(|n| self.next_tag_page(r, &u, &n)).transpose()?;
            each(tags)?;
        }
        Ok(())
    }

    /// One page of a tag list: its tags, and the `Link` to the next one.
    fn tags_page(
        &self,
        r: &ImageRef,
        url: &str,
    ) -> Result<(Vec<String>, Option<String>), RegistryError> {
        let pull = Pull::new(r);
        let (call, host) = (pull.call(), &pull.host);
        self.retrying(&format!("listing the tags of {}", r.name()), || {
            let resp = self.send(&call, &|http| Ok(http.get(url)))?;
            if !resp.status().is_success() {
                return Err(self.status_error(&call, resp, None));
            }
            let next = resp
                .headers()
                .get_all(reqwest::header::LINK)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(next_link);
            let bytes = read_limited(resp, MAX_DOCUMENT_SIZE, host, "tag list")?;
            #[derive(serde::Deserialize)]
            struct Tags {
                #[serde(default)]
                tags: Option<Vec<String>>,
            }
            let t: Tags =
                serde_json::from_slice(&bytes).map_err(|e| tag_list_error(r, e.to_string()))?;
            Ok((t.tags.unwrap_or_default(), next))
        })
    }

    /// Whether the repository has a manifest with this digest.
    pub fn manifest_exists(&self, r: &ImageRef, digest: &Digest) -> Result<bool, RegistryError> {
        let pull = Pull::new(r);
        let (call, host) = (pull.call(), &pull.host);
        let url = format!("{}{}/manifests/{digest}", self.base(host), r.repository);
        self.retrying(&format!("checking {digest}"), || {
            let resp = self.send(&call, &|http| {
                Ok(http.head(&url).header("Accept", MANIFEST_ACCEPT))
            })?;
            match resp.status().as_u16() {
                200 => Ok(true),
                404 => Ok(false),
                _ => Err(self.status_error(&call, resp, None)),
            }
        })
    }

    /// Downloads a blob into the store, verifying size and digest; a blob
    /// that does not match is deleted and the error names its digest.
    pub fn get_blob(
        &self,
        r: &ImageRef,
        desc: &Descriptor,
        store: &Store,
    ) -> Result<PathBuf, RegistryError> {
        if store.has(&desc.digest, desc.size) {
            return Ok(store.path(&desc.digest));
        }
        let (path, ()) = self.get_blob_checked(r, desc, store, &|_| ())?;
        Ok(path)
    }

    /// [`Client::get_blob`], and reads the blob with `check` from its start:
    /// a downloaded blob as it arrives (the download runs on another
    /// thread), so the check's time is not added to the download's. When
    /// the first attempt failed and a retry brought the blob, `check` saw
    /// an error and reads the kept blob again.
    pub fn get_blob_checked<T>(
        &self,
        r: &ImageRef,
        desc: &Descriptor,
        store: &Store,
        check: &dyn Fn(&mut dyn Read) -> T,
    ) -> Result<(PathBuf, T), RegistryError> {
        if store.has(&desc.digest, desc.size) {
            let path = store.path(&desc.digest);
            let opened = crate::fsx::open_regular(&path, crate::fsx::Links::Refuse);
            let mut file = opened.map_err(|source| RegistryError::Io {
                action: "open",
                path: path.clone(),
                source,
            })?;
            return Ok((path, check(&mut file)));
        }
        let growing = Growing::default();
        let fetch = || {
            let _end = Ending(&growing);
            self.download_synced(r, desc, store, &growing)
        };
        let (downloaded, streamed) = std::thread::scope(|s| {
            let thread = std::thread::Builder::new().name("imgc-download".into());
            match thread.spawn_scoped(s, fetch) {
                Ok(h) => {
                    let checked = check(&mut growing.reader());
                    let got = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                    (got, Some(checked))
                }
                Err(_) => (fetch(), None),
            }
        });
        let (file, tmp) = downloaded?;
        let checked = match streamed {
            Some(checked) if growing.followed_the_kept_blob() => checked,
            _ => {
                let mut reader = reread(&file).map_err(|source| RegistryError::Io {
                    action: "read",
                    path: tmp.path().to_path_buf(),
                    source,
                })?;
                check(&mut reader)
            }
        };
        let path = store.commit(tmp, &desc.digest)?;
        self.count_download(desc.size);
        self.reporter().report(Event::BlobPulled {
            digest: &desc.digest,
            size: desc.size,
        });
        Ok((path, checked))
    }

    /// Downloads a blob into a temporary file of the store (its size and
    /// digest checked; the first attempt told to `growing`) and syncs it.
    fn download_synced(
        &self,
        r: &ImageRef,
        desc: &Descriptor,
        store: &Store,
        growing: &Growing,
    ) -> Result<(std::fs::File, TempPath), RegistryError> {
        let host = r.api_host();
        let (file, tmp) = self.blob_request(r, desc, "downloading", |resp, url| {
            self.download_blob((resp, host, url), desc, store, growing)
        })?;
        file.sync_all().map_err(|source| RegistryError::Io {
            action: "sync",
            path: tmp.path().to_path_buf(),
            source,
        })?;
        Ok((file, tmp))
    }

    /// Writes a blob's body into a temporary file of the store and checks
    /// its size and digest; returns the file (not yet synced) and its path.
    /// Tells `growing` how far it is when it follows this attempt.
    fn download_blob(
        &self,
        (resp, host, url): (reqwest::blocking::Response, &str, &str),
        desc: &Descriptor,
        store: &Store,
        growing: &Growing,
    ) -> Result<(std::fs::File, TempPath), RegistryError> {
        let (file, tmp) = store.temp_file()?;
        // Only the first attempt is read as it comes.
        let followed = growing.begin(&file).then_some(growing);
        // Written back as it comes: the fsync at the end waits less.
        let mut out = oci::HashingWriter::new(crate::fsx::EarlyWriteback::new(file));
        let mut body = resp.take(desc.size + 1);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = body.read(&mut buf).map_err(|e| RegistryError::Connect {
                registry: host.to_string(),
                url: format!("GET {}", super::client::shown(url)),
                cause: self.describe_read(e),
                retryable: true,
            })?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|source| RegistryError::Io {
                    action: "write",
                    path: tmp.path().to_path_buf(),
                    source,
                })?;
            if let Some(g) = followed {
                g.grew(n as u64);
            }
        }
        let (written, actual, total) = out.finish();
        if actual != desc.digest || total != desc.size {
            // `tmp` is deleted when dropped here.
            return Err(RegistryError::DigestMismatch {
                registry: host.to_string(),
                what: "blob",
                expected: desc.digest.clone(),
                actual,
                actual_size: total,
            });
        }
        if let Some(g) = followed {
            g.end(true);
        }
        Ok((written.file, tmp))
    }
}

/// Whether and how builds use the lock file and the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolveMode {
    /// Every base must be in the lock file, as written in the spec.
    pub locked: bool,
    /// No network: everything comes from the store.
    pub offline: bool,
    /// Ignore the lock file and resolve every tag again (`imgc lock --update`).
    pub update: bool,
}

/// Resolves registry bases for the planner, through the lock file and the store.
pub struct RegistryBases {
    client: Arc<Client>,
    /// The store folder; opened (created) on first use, so builds that pull
    /// nothing touch no cache folder.
    store_dir: Option<PathBuf>,
    store: std::sync::OnceLock<Store>,
    lock: Option<(PathBuf, LockFile)>,
    mode: ResolveMode,
    resolved: Mutex<BTreeMap<String, LockedBase>>,
}

impl std::fmt::Debug for RegistryBases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryBases")
            .field("store", &self.store_dir)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn remote_err(e: RegistryError) -> BaseError {
    BaseError::Remote(crate::base::RemoteFailure {
        help: e.help(),
        error: Box::new(e),
    })
}

impl RegistryBases {
    /// A resolver; `lock` is the lock file read beside the spec, if any.
    /// `store_dir` is `None` when there is no cache folder (an error only
    /// when something must be pulled).
    pub fn new(
        client: Arc<Client>,
        store_dir: Option<PathBuf>,
        lock: Option<(PathBuf, LockFile)>,
        mode: ResolveMode,
    ) -> Self {
        RegistryBases {
            client,
            store_dir,
            store: std::sync::OnceLock::new(),
            lock,
            mode,
            resolved: Mutex::new(BTreeMap::new()),
        }
    }

    /// What each registry base resolved to, for a lock file.
    pub fn resolved(&self) -> Vec<LockedBase> {
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The store, opened on first use.
    fn store(&self) -> Result<&Store, RegistryError> {
        if let Some(s) = self.store.get() {
            return Ok(s);
        }
        let dir = self.store_dir.as_ref().ok_or(RegistryError::NoCacheDir)?;
        let store = Store::open(dir)?;
        Ok(self.store.get_or_init(|| store))
    }

    fn locked_entry(&self, reference: &str) -> Option<&LockedBase> {
        if self.mode.update {
            return None;
        }
        self.lock
            .as_ref()
            .and_then(|(_, l)| l.bases.iter().find(|b| b.reference == reference))
    }

    /// Reads a manifest by digest from the store, or fetches it.
    fn manifest_by_digest(
        &self,
        r: &ImageRef,
        digest: &Digest,
        what: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let path = self.store()?.path(digest);
        let read = crate::fsx::read_bounded(&path, MAX_DOCUMENT_SIZE, crate::fsx::Links::Refuse);
        if let Ok(bytes) = read {
            if &oci::sha256_digest(&bytes) == digest {
                let media_type = check_document(&r.registry, what, &bytes, None)?;
                return Ok(FetchedManifest {
                    digest: digest.clone(),
                    media_type,
                    bytes,
                });
            }
            let _ = std::fs::remove_file(&path);
        }
        if self.mode.offline {
            return Err(RegistryError::Offline {
                what: format!("{what} ({digest})"),
                store: self.store()?.root().to_path_buf(),
            });
        }
        let m = self.client.get_manifest(&r.with_digest(digest))?;
        self.store()?.put_bytes(&m.digest, &m.bytes)?;
        Ok(m)
    }

    fn open_inner(&self, reference: &str) -> Result<RemoteOpened, RegistryError> {
        let r = ImageRef::parse(reference)?;
        let entry = self.locked_entry(reference).cloned();
        if self.mode.locked && entry.is_none() {
            return Err(RegistryError::NotLocked {
                reference: reference.to_string(),
                lock_file: self
                    .lock
                    .as_ref()
                    .map(|(p, _)| p.clone())
                    .unwrap_or_else(|| PathBuf::from("image.lock")),
            });
        }
        let pinned = r
            .digest
            .clone()
            .or_else(|| entry.as_ref().map(|e| e.digest.clone()));
        let top = self.top_document(&r, reference, pinned.as_ref())?;
        let candidates = if top.is_index() {
            index_candidates(&r, reference, &top)?
        } else {
            vec![self.manifest_candidate(&r, reference, &top)?]
        };
        let platforms: BTreeMap<String, Digest> = candidates
            .iter()
            .map(|(p, d)| (p.to_string(), d.digest.clone()))
            .collect();
        if let Some(e) = &entry {
            check_lock(reference, &top.digest, e, &platforms)?;
        }
        let locked = LockedBase {
            reference: reference.to_string(),
            digest: top.digest.clone(),
            media_type: top.media_type.clone(),
            platforms,
        };
        self.resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(reference.to_string(), locked);
        Ok(RemoteOpened {
            store: self.store()?.root().to_path_buf(),
            digest: top.digest,
            candidates,
        })
    }

    /// The base's top document: by its pinned digest (from the store when
    /// there), else by its tag (never offline).
    fn top_document(
        &self,
        r: &ImageRef,
        reference: &str,
        pinned: Option<&Digest>,
    ) -> Result<FetchedManifest, RegistryError> {
        match pinned {
            Some(d) => self.manifest_by_digest(r, d, &format!("base `{reference}`")),
            None if self.mode.offline => Err(RegistryError::Offline {
                what: format!(
                    "base `{reference}` (a tag; offline builds need it pinned by digest or in image.lock)"
                ),
                store: self.store()?.root().to_path_buf(),
            }),
            None => {
                let m = self.client.get_manifest(r)?;
                self.store()?.put_bytes(&m.digest, &m.bytes)?;
                Ok(m)
            }
        }
    }

    /// A base that is a single manifest: its platform is in its config.
    fn manifest_candidate(
        &self,
        r: &ImageRef,
        reference: &str,
        top: &FetchedManifest,
    ) -> Result<(Platform, Descriptor), RegistryError> {
        let manifest: Manifest = serde_json::from_slice(&top.bytes)
            .map_err(|e| bad_document(r, &format!("manifest of base `{reference}`"), e))?;
        let bytes = self.read_verified(r, reference, &manifest.config)?;
        let config: ImageConfig = serde_json::from_slice(&bytes)
            .map_err(|e| bad_document(r, &format!("config of base `{reference}`"), e))?;
        let mut platform =
            Platform::new(&config.os, &config.architecture, config.variant.as_deref());
        platform.os_version = config.os_version.clone();
        let mut desc = Descriptor::new(
            top.media_type.clone(),
            top.digest.clone(),
            top.bytes.len() as u64,
        );
        desc.platform = Some(platform.clone());
        Ok((platform, desc))
    }

    /// A blob of the base, from the store, verified; a corrupt store copy is
    /// fetched again (offline, the error names it).
    fn read_verified(
        &self,
        r: &ImageRef,
        reference: &str,
        desc: &Descriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let store = self.store()?;
        self.fetch_blob(r, reference, desc)?;
        match crate::base::read_blob(store.root(), desc) {
            Err(BaseError::DigestMismatch { .. }) => {
                self.refetch_blob(r, reference, desc)?;
                Ok(crate::base::read_blob(store.root(), desc)?)
            }
            other => Ok(other?),
        }
    }

    /// Makes sure a blob of the base is in the store (by size; its bytes are
    /// verified where they are read).
    fn fetch_blob(
        &self,
        r: &ImageRef,
        reference: &str,
        desc: &Descriptor,
    ) -> Result<(), RegistryError> {
        let store = self.store()?;
        if store.has(&desc.digest, desc.size) {
            return Ok(());
        }
        if self.mode.offline {
            return Err(RegistryError::Offline {
                what: format!("blob {} of base `{reference}`", desc.digest),
                store: store.root().to_path_buf(),
            });
        }
        if oci::is_manifest_media_type(&desc.media_type)
            || oci::is_index_media_type(&desc.media_type)
        {
            let what = format!("manifest of base `{reference}`");
            return self.manifest_by_digest(r, &desc.digest, &what).map(|_| ());
        }
        self.client.get_blob(r, desc, store).map(|_| ())
    }

    /// Discards a store copy found corrupt and fetches it again.
    fn refetch_blob(
        &self,
        r: &ImageRef,
        reference: &str,
        desc: &Descriptor,
    ) -> Result<(), RegistryError> {
        let store = self.store()?;
        if self.mode.offline {
            return Err(RegistryError::CorruptOffline {
                digest: desc.digest.clone(),
                path: store.path(&desc.digest),
            });
        }
        store.discard(&desc.digest);
        self.fetch_blob(r, reference, desc)
    }
}

fn bad_document(r: &ImageRef, what: &str, e: serde_json::Error) -> RegistryError {
    RegistryError::BadDocument {
        registry: r.registry.clone(),
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// The platform manifests an index lists (attestations, listed as
/// unknown/unknown, left out).
fn index_candidates(
    r: &ImageRef,
    reference: &str,
    top: &FetchedManifest,
) -> Result<Vec<(Platform, Descriptor)>, RegistryError> {
    let index: Index = serde_json::from_slice(&top.bytes)
        .map_err(|e| bad_document(r, &format!("index of base `{reference}`"), e))?;
    Ok(index
        .manifests
        .iter()
        .filter_map(|c| Some((oci::listed_platform(c)?.clone(), c.clone())))
        .collect())
}

/// Checks that what the pinned digest holds is what the lock file says.
fn check_lock(
    reference: &str,
    digest: &Digest,
    entry: &LockedBase,
    platforms: &BTreeMap<String, Digest>,
) -> Result<(), RegistryError> {
    for (p, d) in &entry.platforms {
        if platforms.get(p) != Some(d) {
            return Err(RegistryError::LockMismatch {
                reference: reference.to_string(),
                digest: digest.clone(),
                platform: p.clone(),
                expected: d.clone(),
            });
        }
    }
    Ok(())
}

impl super::push::BlobFetcher for RegistryBases {
    fn fetch_blob_file(
        &self,
        reference: &str,
        desc: &Descriptor,
    ) -> Result<PathBuf, RegistryError> {
        let r = ImageRef::parse(reference)?;
        let store = self.store()?;
        self.fetch_blob(&r, reference, desc)?;
        Ok(store.path(&desc.digest))
    }
}

impl RemoteBases for RegistryBases {
    fn open(&self, reference: &str) -> Result<RemoteOpened, BaseError> {
        self.open_inner(reference).map_err(remote_err)
    }

    fn fetch(&self, reference: &str, desc: &Descriptor) -> Result<(), BaseError> {
        let r = ImageRef::parse(reference).map_err(|e| remote_err(e.into()))?;
        self.fetch_blob(&r, reference, desc).map_err(remote_err)
    }

    fn refetch(&self, reference: &str, desc: &Descriptor) -> Result<(), BaseError> {
        let r = ImageRef::parse(reference).map_err(|e| remote_err(e.into()))?;
        self.refetch_blob(&r, reference, desc).map_err(remote_err)
    }
}

/// A second handle of a just-written file, read from its start (the
/// writer is done with the offset they share).
fn reread(file: &std::fs::File) -> std::io::Result<std::fs::File> {
    use std::io::{Seek, SeekFrom};
    let mut reader = file.try_clone()?;
    reader.seek(SeekFrom::Start(0))?;
    Ok(reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_and_mismatched_documents_are_rejected() {
        let both = br#"{"schemaVersion":2,"manifests":[],"layers":[],"config":{}}"#;
        let e = check_document("h", "manifest of x", both, None).unwrap_err();
        assert!(e.to_string().contains("ambiguous"), "{e}");
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        let e = check_document(
            "h",
            "manifest of x",
            idx,
            Some("application/vnd.oci.image.manifest.v1+json"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("disagrees"), "{e}");
        assert_eq!(
            check_document("h", "x", idx, Some(oci::MEDIA_TYPE_INDEX)).unwrap(),
            oci::MEDIA_TYPE_INDEX
        );
    }
}

/// The documents of an image in a registry, for `imgc inspect`: manifests
/// and indexes by digest, configs as bounded, digest-checked blobs.
#[derive(Debug)]
pub struct RegistryDocuments<'a> {
    /// The client.
    pub client: &'a Client,
    /// The repository (its tag or digest is not used).
    pub reference: &'a ImageRef,
}

impl crate::inspect::Fetch for RegistryDocuments<'_> {
    fn fetch(&self, desc: &Descriptor) -> Result<Vec<u8>, crate::inspect::InspectError> {
        let wrap = |e: RegistryError| crate::inspect::InspectError::Fetch {
            what: "document",
            digest: desc.digest.clone(),
            source: Box::new(e),
        };
        let is_document = oci::is_manifest_media_type(&desc.media_type)
            || oci::is_index_media_type(&desc.media_type);
        if !is_document {
            return self
                .client
                .get_document_blob(self.reference, desc)
                .map_err(wrap);
        }
        let m = self
            .client
            .get_manifest(&self.reference.with_digest(&desc.digest))
            .map_err(wrap)?;
        Ok(m.bytes)
    }
}

/// The target of a `Link` header value's `rel="next"` part, if any.
fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        next.then(|| target.to_string())
    })
}

impl Client {
    /// The next tag page's URL: `link` resolved against the page `current`,
    /// refused unless it is on the registry itself (scheme, host and port),
    /// at the same path.
    fn next_tag_page(
        &self,
        r: &ImageRef,
        current: &str,
        link: &str,
    ) -> Result<String, RegistryError> {
        let bad = |why: &str| tag_list_error(r, format!("its next-page link `{link}` {why}"));
        let here = reqwest::Url::parse(current).map_err(|_| bad("is not a URL"))?;
        let next = here.join(link).map_err(|_| bad("is not a URL"))?;
        if !self.is_registry_origin(r.api_host(), &next) {
            return Err(bad("points to another host"));
        }
        if next.path() != here.path() {
            return Err(bad("is not this repository's tag list"));
        }
        Ok(next.to_string())
    }
}

/// A tag list the registry sent that cannot be read or followed.
fn tag_list_error(r: &ImageRef, reason: String) -> RegistryError {
    RegistryError::BadDocument {
        registry: r.api_host().to_string(),
        what: format!("tag list of {}", r.name()),
        reason,
    }
}
