//! Pushing an OCI layout's image to a registry, in the order that never
//! leaves a dangling reference: blobs (configs and layers, concurrently,
//! bounded) → platform manifests → the index → tags. A blob the registry
//! has (HEAD) is skipped; a base blob is mounted from the base's repository
//! on the same registry when the manifest names its base; uploads stream
//! from disk in one PUT (or in chunks when asked or for huge blobs) and are
//! retried whole.

use super::client::{shown, Call};
use super::{Client, ImageRef, RegistryError};
use crate::base::{self, blob_path};
use crate::oci::{self, Descriptor, Digest, Index, Manifest};
use crate::progress::{BlobOutcome, Event, Reporter};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What to push besides the blobs and manifests.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Tags to point at the top document.
    pub tags: Vec<String>,
    /// Push only the platform manifests (by digest): no index, no tags.
    pub by_digest: bool,
    /// Layers of registry bases, by digest: the base reference they come
    /// from. A shallow layout lacks their blobs; they are mounted when the
    /// registry can, else fetched (through `fetcher`) and uploaded.
    pub bases: BTreeMap<Digest, String>,
    /// Fetches a base blob the layout lacks into a local store.
    pub fetcher: Option<Arc<dyn BlobFetcher>>,
}

/// Fetches a blob of a registry base into local storage (verified), for a
/// push whose layout lacks it.
pub trait BlobFetcher: Send + Sync + std::fmt::Debug {
    /// Makes sure the blob is stored locally (the client counts the bytes
    /// downloaded); returns its path.
    fn fetch_blob_file(&self, reference: &str, desc: &Descriptor)
        -> Result<PathBuf, RegistryError>;
}

/// What a push did.
#[derive(Clone, Debug, Default)]
pub struct PushOutcome {
    /// The top document's digest (the index, or the manifest).
    pub digest: Option<Digest>,
    /// Each platform manifest: platform and digest.
    pub manifests: Vec<(String, Digest)>,
    /// Every reference pushed (`repo@digest`, `repo:tag`).
    pub pushed: Vec<String>,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Blobs the registry already had.
    pub existed: usize,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// Bytes of the blobs mounted.
    pub bytes_mounted: u64,
    /// Bytes of the blobs the registry already had.
    pub bytes_existed: u64,
}

/// One document read from a layout, checked against its descriptor.
#[derive(Clone, Debug)]
pub struct LayoutDoc {
    /// Its descriptor (as listed by its parent).
    pub desc: Descriptor,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Reads a document blob of a layout, bounded and verified.
pub fn read_layout_doc(layout: &Path, desc: &Descriptor) -> Result<LayoutDoc, RegistryError> {
    Ok(LayoutDoc {
        desc: desc.clone(),
        bytes: base::read_blob(layout, desc)?,
    })
}

/// Finds the top descriptor for `tag` (or the only one) in a layout's
/// index.json: the one rule of [`crate::oci::select_entry`].
pub fn layout_entry(layout: &Path, tag: Option<&str>) -> Result<Descriptor, RegistryError> {
    let r = crate::oci::LayoutRef {
        dir: layout.to_path_buf(),
        tag: tag.map(str::to_string),
        digest: None,
    };
    Ok(base::layout_entry(layout, &r)?)
}

/// The platform manifests of a top document: those an index lists (image
/// manifests only), or the manifest itself.
fn platform_manifests(layout: &Path, top: &LayoutDoc) -> Result<Vec<LayoutDoc>, RegistryError> {
    if !oci::is_index_media_type(&top.desc.media_type) {
        return Ok(vec![top.clone()]);
    }
    let digest = &top.desc.digest;
    let index: Index =
        serde_json::from_slice(&top.bytes).map_err(|source| RegistryError::InvalidDocument {
            what: "index",
            digest: digest.clone(),
            source,
        })?;
    let mut manifests = Vec::new();
    for child in &index.manifests {
        if !oci::is_manifest_media_type(&child.media_type) {
            return Err(RegistryError::NotAnImageIndex {
                digest: digest.clone(),
                child: child.digest.clone(),
                media_type: child.media_type.clone(),
            });
        }
        manifests.push(read_layout_doc(layout, child)?);
    }
    Ok(manifests)
}

/// Every blob of the manifests once, with a mount source when a manifest
/// (or `bases`) names a base in another repository of the same registry.
fn blob_jobs(
    manifests: &[LayoutDoc],
    target: &ImageRef,
    bases: &BTreeMap<Digest, String>,
) -> Result<Vec<BlobJob>, RegistryError> {
    let same_registry = |name: &str| {
        ImageRef::parse(name)
            .ok()
            .filter(|b| b.registry == target.registry && b.repository != target.repository)
            .map(|b| b.repository)
    };
    let mut jobs: BTreeMap<Digest, BlobJob> = BTreeMap::new();
    for m in manifests {
        let manifest: Manifest =
            serde_json::from_slice(&m.bytes).map_err(|source| RegistryError::InvalidDocument {
                what: "manifest",
                digest: m.desc.digest.clone(),
                source,
            })?;
        let named = manifest.annotations.get(oci::ANNOTATION_BASE_NAME);
        jobs.entry(manifest.config.digest.clone())
            .or_insert_with(|| BlobJob::new(manifest.config.clone()));
        for l in &manifest.layers {
            let job = jobs
                .entry(l.digest.clone())
                .or_insert_with(|| BlobJob::new(l.clone()));
            if job.base.is_none() {
                job.base = bases.get(&l.digest).cloned();
            }
            if job.mount_from.is_none() {
                job.mount_from = named.or(job.base.as_ref()).and_then(|n| same_registry(n));
            }
        }
    }
    Ok(jobs.into_values().collect())
}

/// How an upload started.
enum Started {
    /// Nothing to send: the registry has the blob, or mounted it.
    Done(BlobOutcome),
    /// The mount from this repository was refused.
    MountRefused(String),
    /// Send the bytes to this upload location.
    Upload(reqwest::Url),
}

/// A blob to push, with where a mount may find it.
struct BlobJob {
    desc: Descriptor,
    /// A repository of the target's registry that has it (a base's).
    mount_from: Option<String>,
    /// For a registry base's layer: the base reference (to fetch it from
    /// when the layout lacks it).
    base: Option<String>,
}

impl BlobJob {
    fn new(desc: Descriptor) -> BlobJob {
        BlobJob {
            desc,
            mount_from: None,
            base: None,
        }
    }
}

/// Where a blob's bytes are: the layout, or (for a shallow layout's base
/// layer) a store the fetcher fills on demand.
struct BlobSource<'a> {
    layout_path: PathBuf,
    base: Option<&'a str>,
    fetcher: Option<&'a dyn BlobFetcher>,
}

impl BlobSource<'_> {
    /// Whether the bytes are local (else they are fetched when needed).
    /// Anything at the path counts, a symlink too (dangling or not), so
    /// that `check_blob_file` refuses it rather than fetching around it.
    fn local(&self) -> bool {
        self.in_layout() || self.base.is_none() || self.fetcher.is_none()
    }

    fn in_layout(&self) -> bool {
        std::fs::symlink_metadata(&self.layout_path).is_ok()
    }

    /// The file to upload; fetched first when the layout lacks it.
    fn file(&self, desc: &Descriptor) -> Result<PathBuf, RegistryError> {
        match (self.base, self.fetcher) {
            (Some(base), Some(f)) if !self.in_layout() => f.fetch_blob_file(base, desc),
            _ => Ok(self.layout_path.clone()),
        }
    }
}

/// How a blob push asks the registry to mount it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mount<'a> {
    /// No mount: a plain upload.
    No,
    /// From this repository of the same registry.
    From(&'a str),
    /// OCI 1.1's `mount=` without `from`: the registry may find it anywhere.
    Anonymous,
}

/// Counts bytes read and reports progress.
struct Progress<R> {
    inner: R,
    sent: u64,
    last: u64,
    digest: Digest,
    reporter: Arc<dyn Reporter>,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sent += n as u64;
        if self.sent - self.last >= 1 << 20 || n == 0 {
            self.last = self.sent;
            self.reporter.report(Event::PushProgress {
                digest: &self.digest,
                sent: self.sent,
            });
        }
        Ok(n)
    }
}

impl PushOutcome {
    /// Counts one blob pushed: how, and its size.
    fn count(&mut self, (how, size): (BlobOutcome, u64)) {
        match how {
            BlobOutcome::Existed => {
                self.existed += 1;
                self.bytes_existed += size;
            }
            BlobOutcome::Mounted => {
                self.mounted += 1;
                self.bytes_mounted += size;
            }
            BlobOutcome::Uploaded => {
                self.uploaded += 1;
                self.bytes_uploaded += size;
            }
        }
    }
}

/// Checks that a layout's blob file is a regular file of the declared size.
pub(crate) fn check_blob_file(path: &Path, desc: &Descriptor) -> Result<(), RegistryError> {
    let meta = crate::fsx::open_regular(path, crate::fsx::Links::Refuse)
        .and_then(|f| f.metadata())
        .map_err(|source| RegistryError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
    if meta.len() != desc.size {
        return Err(RegistryError::SizeMismatch {
            path: path.to_path_buf(),
            actual: meta.len(),
            declared: desc.size,
        });
    }
    Ok(())
}

impl Client {
    /// Pushes the image `top` (an index or manifest) of the layout at
    /// `layout` to `target`'s repository.
    pub fn push_layout(
        &self,
        layout: &Path,
        top: &Descriptor,
        target: &ImageRef,
        opts: &PushOptions,
    ) -> Result<PushOutcome, RegistryError> {
        let top_doc = read_layout_doc(layout, top)?;
        let is_index = oci::is_index_media_type(&top.media_type);
        let manifests = platform_manifests(layout, &top_doc)?;
        let jobs = blob_jobs(&manifests, target, &opts.bases)?;
        let mut outcome = PushOutcome::default();
        let fetcher = opts.fetcher.as_deref();
        self.push_blobs(layout, target, jobs, fetcher, &mut outcome)?;

        for m in &manifests {
            self.push_manifest(target, m.desc.digest.as_str(), &m.desc.media_type, &m.bytes)?;
            outcome
                .pushed
                .push(target.with_digest(&m.desc.digest).to_string());
            let platform = m
                .desc
                .platform
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default();
            outcome.manifests.push((platform, m.desc.digest.clone()));
        }
        if opts.by_digest {
            return Ok(outcome);
        }
        if is_index {
            self.push_manifest(target, top.digest.as_str(), &top.media_type, &top_doc.bytes)?;
            outcome
                .pushed
                .push(target.with_digest(&top.digest).to_string());
        }
        outcome.digest = Some(top.digest.clone());
        for tag in &opts.tags {
            self.push_manifest(target, tag, &top.media_type, &top_doc.bytes)?;
            outcome.pushed.push(target.with_tag(tag).to_string());
        }
        Ok(outcome)
    }

    fn push_blobs(
        &self,
        layout: &Path,
        target: &ImageRef,
        jobs: Vec<BlobJob>,
        fetcher: Option<&dyn BlobFetcher>,
        outcome: &mut PushOutcome,
    ) -> Result<(), RegistryError> {
        let mut jobs = jobs;
        let one = |job: &BlobJob| {
            let source = BlobSource {
                layout_path: blob_path(layout, &job.desc.digest),
                base: job.base.as_deref(),
                fetcher,
            };
            let mount = match (&job.mount_from, &job.base) {
                (Some(repo), _) => Mount::From(repo),
                (None, Some(_)) => Mount::Anonymous,
                (None, None) => Mount::No,
            };
            let how = self.push_blob(target, &source, &job.desc, mount)?;
            Ok::<_, RegistryError>((how, job.desc.size))
        };
        // The first blob alone: it meets the registry's auth challenge and
        // gets the token the others then share (one login, not one per worker).
        let Some(first) = jobs.pop() else {
            return Ok(());
        };
        let results = Mutex::new(vec![one(&first)?]);
        let workers = self.options().jobs.max(1).min(jobs.len().max(1));
        let queue = Mutex::new(jobs);
        let failure: Mutex<Option<RegistryError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                        return;
                    }
                    let Some(job) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                        return;
                    };
                    match one(&job) {
                        Ok(r) => {
                            if let Ok(mut all) = results.lock() {
                                all.push(r);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        for r in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
            outcome.count(r);
        }
        Ok(())
    }

    /// Puts a local file into `target`'s repository as the blob `desc`
    /// (skipped when the registry has it).
    pub(crate) fn push_file(
        &self,
        target: &ImageRef,
        path: &Path,
        desc: &Descriptor,
    ) -> Result<BlobOutcome, RegistryError> {
        let source = BlobSource {
            layout_path: path.to_path_buf(),
            base: None,
            fetcher: None,
        };
        self.push_blob(target, &source, desc, Mount::No)
    }

    /// Puts one blob into the repository: skip, mount or upload; retried
    /// whole. Returns how.
    fn push_blob(
        &self,
        target: &ImageRef,
        source: &BlobSource<'_>,
        desc: &Descriptor,
        mount: Mount<'_>,
    ) -> Result<BlobOutcome, RegistryError> {
        if source.local() {
            check_blob_file(&source.layout_path, desc)?;
        }
        self.reporter().report(Event::PushStarted {
            digest: &desc.digest,
            size: desc.size,
        });
        let how = self.retrying(&format!("pushing {}", desc.digest), || {
            self.push_blob_once(target, source, desc, mount)
        })?;
        self.reporter().report(Event::BlobPushed {
            digest: &desc.digest,
            size: desc.size,
            how,
        });
        Ok(how)
    }

    fn push_blob_once(
        &self,
        target: &ImageRef,
        source: &BlobSource<'_>,
        desc: &Descriptor,
        mount: Mount<'_>,
    ) -> Result<BlobOutcome, RegistryError> {
        let host = target.api_host().to_string();
        let mount = match mount {
            Mount::From(src) if self.mount_refused(&host, src) => Mount::No,
            Mount::Anonymous if self.mount_refused(&host, "") => Mount::No,
            m => m,
        };
        let mut scopes = vec![format!("repository:{}:pull,push", target.repository)];
        if let Mount::From(src) = mount {
            scopes.push(format!("repository:{src}:pull"));
        }
        let call = Call {
            host: &host,
            repository: &target.repository,
            scopes: &scopes,
        };
        let location = match self.start_upload(&call, target, desc, mount)? {
            Started::Done(how) => return Ok(how),
            // A mount we may not do: upload instead, and stop asking.
            Started::MountRefused(src) => {
                self.refuse_mount(&host, &src);
                return self.push_blob_once(target, source, desc, Mount::No);
            }
            Started::Upload(location) => location,
        };
        let path = source.file(desc)?;
        let chunk = match self.options().chunk_size {
            Some(c) => Some(c),
            None if desc.size >= self.options().chunk_threshold => Some(64 * 1024 * 1024),
            None => None,
        };
        match chunk.filter(|&c| c > 0 && desc.size > 0) {
            Some(chunk) => self.upload_chunked(&call, location, &path, desc, chunk)?,
            None => self.upload_whole(&call, location, &path, desc)?,
        }
        Ok(BlobOutcome::Uploaded)
    }

    /// Asks whether the registry has the blob (HEAD), then mounts it or
    /// starts an upload session.
    fn start_upload(
        &self,
        call: &Call<'_>,
        target: &ImageRef,
        desc: &Descriptor,
        mount: Mount<'_>,
    ) -> Result<Started, RegistryError> {
        let base = self.base(call.host);
        let head_url = format!("{base}{}/blobs/{}", target.repository, desc.digest);
        let resp = self.send(call, &|http| Ok(http.head(&head_url)))?;
        match resp.status().as_u16() {
            200 => return Ok(Started::Done(BlobOutcome::Existed)),
            404 => {}
            // The registry cannot say (seen from one restarted while it
            // committed this blob: its HEAD failed with 500 until the blob
            // was uploaded again). Uploading is always safe: the registry
            // checks the digest, and a failed upload is retried.
            500..=599 => {}
            _ => return Err(self.status_error(call, resp, None)),
        }
        let uploads = format!("{base}{}/blobs/uploads/", target.repository);
        let start_url = match mount {
            Mount::From(src) => format!("{uploads}?mount={}&from={src}", desc.digest),
            Mount::Anonymous => format!("{uploads}?mount={}", desc.digest),
            Mount::No => uploads,
        };
        let mounting = mount != Mount::No;
        let refused = || {
            Started::MountRefused(match mount {
                Mount::From(src) => src.to_string(),
                _ => String::new(),
            })
        };
        let sent = self.send(call, &|http| {
            Ok(http.post(&start_url).header("Content-Length", "0"))
        });
        let resp = match sent {
            Err(RegistryError::Unauthorized { .. }) if mounting => return Ok(refused()),
            other => other?,
        };
        match (resp.status().as_u16(), mount) {
            (201, Mount::From(_) | Mount::Anonymous) => Ok(Started::Done(BlobOutcome::Mounted)),
            (401 | 403, Mount::From(_) | Mount::Anonymous) => Ok(refused()),
            (201 | 202, _) => Ok(Started::Upload(self.location(call.host, &resp)?)),
            // A registry that does not take `mount=` without `from`.
            (400..=499, Mount::Anonymous) => Ok(refused()),
            _ => Err(self.status_error(call, resp, None)),
        }
    }

    /// Sends the blob in chunks (`PATCH` with `Content-Range`), then closes
    /// the session (`PUT ?digest=`).
    fn upload_chunked(
        &self,
        call: &Call<'_>,
        mut location: reqwest::Url,
        path: &Path,
        desc: &Descriptor,
        chunk: u64,
    ) -> Result<(), RegistryError> {
        let mut offset = 0u64;
        while offset < desc.size {
            let len = chunk.min(desc.size - offset);
            let body = self.file_body(path, offset, len, &desc.digest)?;
            let url = location.clone();
            let range = format!("{}-{}", offset, offset + len - 1);
            let resp = self.send(call, &|http| {
                Ok(http
                    .patch(url.as_str())
                    .header("Content-Type", "application/octet-stream")
                    .header("Content-Range", range.as_str())
                    .header("Content-Length", len.to_string())
                    .body(body.try_clone_body()?))
            })?;
            if !matches!(resp.status().as_u16(), 202 | 201 | 204) {
                return Err(self.status_error(call, resp, None));
            }
            location = self.location(call.host, &resp)?;
            offset += len;
        }
        location
            .query_pairs_mut()
            .append_pair("digest", desc.digest.as_str());
        let resp = self.send(call, &|http| {
            Ok(http.put(location.as_str()).header("Content-Length", "0"))
        })?;
        if resp.status().as_u16() != 201 {
            return Err(self.status_error(call, resp, None));
        }
        Ok(())
    }

    /// Sends the blob in one `PUT ?digest=`.
    fn upload_whole(
        &self,
        call: &Call<'_>,
        mut location: reqwest::Url,
        path: &Path,
        desc: &Descriptor,
    ) -> Result<(), RegistryError> {
        location
            .query_pairs_mut()
            .append_pair("digest", desc.digest.as_str());
        let body = self.file_body(path, 0, desc.size, &desc.digest)?;
        let resp = self.send(call, &|http| {
            Ok(http
                .put(location.as_str())
                .header("Content-Type", "application/octet-stream")
                .header("Content-Length", desc.size.to_string())
                .body(body.try_clone_body()?))
        })?;
        if resp.status().as_u16() != 201 {
            return Err(self.status_error(call, resp, None));
        }
        Ok(())
    }

    fn location(
        &self,
        host: &str,
        resp: &reqwest::blocking::Response,
    ) -> Result<reqwest::Url, RegistryError> {
        let loc = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::BadDocument {
                registry: host.to_string(),
                what: format!("answer to {}", shown(resp.url().as_str())),
                reason: "it has no Location header".into(),
            })?;
        let url = resp
            .url()
            .join(loc)
            .map_err(|e| RegistryError::BadDocument {
                registry: host.to_string(),
                what: "upload location".into(),
                reason: e.to_string(),
            })?;
        // An upload may continue on another host, but never drop from HTTPS to HTTP.
        if resp.url().scheme() == "https" && url.scheme() != "https" {
            return Err(RegistryError::BadDocument {
                registry: host.to_string(),
                what: "upload location".into(),
                reason: "it moves the upload from HTTPS to plain HTTP".into(),
            });
        }
        Ok(url)
    }

    fn file_body(
        &self,
        path: &Path,
        offset: u64,
        len: u64,
        digest: &Digest,
    ) -> Result<FileBody, RegistryError> {
        Ok(FileBody {
            path: path.to_path_buf(),
            offset,
            len,
            digest: digest.clone(),
            reporter: self.reporter_arc(),
        })
    }

    /// Deletes a manifest by digest (and so every tag of it); a registry
    /// that does not allow deletes answers 405, an error that says so.
    pub fn delete_manifest(&self, target: &ImageRef, digest: &Digest) -> Result<(), RegistryError> {
        let host = target.api_host().to_string();
        let scopes = vec![format!("repository:{}:delete", target.repository)];
        let call = Call {
            host: &host,
            repository: &target.repository,
            scopes: &scopes,
        };
        let url = format!(
            "{}{}/manifests/{digest}",
            self.base(&host),
            target.repository
        );
        self.retrying(&format!("deleting {digest}"), || {
            let resp = self.send(&call, &|http| Ok(http.delete(&url)))?;
            match resp.status().as_u16() {
                200..=299 | 404 => Ok(()),
                _ => Err(self.status_error(&call, resp, None)),
            }
        })
    }

    /// Pushes a manifest or index (exact bytes) as `reference` (a tag or digest).
    pub fn push_manifest(
        &self,
        target: &ImageRef,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), RegistryError> {
        let host = target.api_host().to_string();
        let scopes = vec![format!("repository:{}:pull,push", target.repository)];
        let call = Call {
            host: &host,
            repository: &target.repository,
            scopes: &scopes,
        };
        let url = format!(
            "{}{}/manifests/{reference}",
            self.base(&host),
            target.repository
        );
        let digest = oci::sha256_digest(bytes);
        self.retrying(&format!("pushing manifest {reference}"), || {
            let resp = self.send(&call, &|http| {
                Ok(http
                    .put(&url)
                    .header("Content-Type", media_type)
                    .body(bytes.to_vec()))
            })?;
            if resp.status().as_u16() != 201 {
                return Err(self.status_error(&call, resp, None));
            }
            if let Some(d) = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
            {
                if d != digest.as_str() {
                    return Err(RegistryError::BadDocument {
                        registry: host.clone(),
                        what: format!("answer to the push of {reference}"),
                        reason: format!(
                            "the registry says the manifest is {d}; imgc sent {digest}"
                        ),
                    });
                }
            }
            Ok(())
        })?;
        self.reporter().report(Event::ManifestPushed {
            reference,
            digest: &digest,
        });
        Ok(())
    }
}

/// A part of a file sent as a request body; reopened for every attempt.
struct FileBody {
    path: PathBuf,
    offset: u64,
    len: u64,
    digest: Digest,
    reporter: Arc<dyn Reporter>,
}

impl FileBody {
    fn try_clone_body(&self) -> Result<reqwest::blocking::Body, RegistryError> {
        let io = |source| RegistryError::Io {
            action: "read",
            path: self.path.clone(),
            source,
        };
        let mut file =
            crate::fsx::open_regular(&self.path, crate::fsx::Links::Refuse).map_err(io)?;
        file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        let reader = Progress {
            inner: file.take(self.len),
            sent: 0,
            last: 0,
            digest: self.digest.clone(),
            reporter: self.reporter.clone(),
        };
        Ok(reqwest::blocking::Body::sized(reader, self.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct NoFetch;

    impl BlobFetcher for NoFetch {
        fn fetch_blob_file(&self, _: &str, _: &Descriptor) -> Result<PathBuf, RegistryError> {
            panic!("a blob the layout has is never fetched")
        }
    }

    #[test]
    fn a_dangling_symlink_in_a_shallow_layout_is_local_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("blob");
        std::os::unix::fs::symlink(dir.path().join("missing"), &link).unwrap();
        let source = BlobSource {
            layout_path: link.clone(),
            base: Some("registry.example/base:1"),
            fetcher: Some(&NoFetch),
        };
        assert!(
            source.local(),
            "a symlink counts as present, so it is checked"
        );
        let desc = Descriptor::new(oci::MEDIA_TYPE_LAYER, oci::sha256_digest(b"abc"), 3);
        let err = check_blob_file(&link, &desc).unwrap_err().to_string();
        assert!(err.contains(&link.display().to_string()), "{err}");
    }
}
