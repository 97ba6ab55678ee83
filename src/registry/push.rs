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
/// names a base in another repository of the same registry.
fn blob_jobs(manifests: &[LayoutDoc], target: &ImageRef) -> Result<Vec<BlobJob>, RegistryError> {
    let mut jobs: BTreeMap<Digest, BlobJob> = BTreeMap::new();
    for m in manifests {
        let manifest: Manifest =
            serde_json::from_slice(&m.bytes).map_err(|source| RegistryError::InvalidDocument {
                what: "manifest",
                digest: m.desc.digest.clone(),
                source,
            })?;
        let mount_from = manifest
            .annotations
            .get(oci::ANNOTATION_BASE_NAME)
            .and_then(|n| ImageRef::parse(n).ok())
            .filter(|b| b.registry == target.registry && b.repository != target.repository)
            .map(|b| b.repository);
        jobs.entry(manifest.config.digest.clone())
            .or_insert(BlobJob {
                desc: manifest.config.clone(),
                mount_from: None,
            });
        for l in &manifest.layers {
            let job = jobs.entry(l.digest.clone()).or_insert(BlobJob {
                desc: l.clone(),
                mount_from: None,
            });
            if job.mount_from.is_none() {
                job.mount_from = mount_from.clone();
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
    mount_from: Option<String>,
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
        let jobs = blob_jobs(&manifests, target)?;
        let mut outcome = PushOutcome::default();
        self.push_blobs(layout, target, jobs, &mut outcome)?;

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
        outcome: &mut PushOutcome,
    ) -> Result<(), RegistryError> {
        let mut jobs = jobs;
        // The first blob alone: it meets the registry's auth challenge and
        // gets the token the others then share (one login, not one per worker).
        let Some(first) = jobs.pop() else {
            return Ok(());
        };
        let how = self.push_blob(
            target,
            &blob_path(layout, &first.desc.digest),
            &first.desc,
            first.mount_from.as_deref(),
        )?;
        let results: Mutex<Vec<(BlobOutcome, u64)>> = Mutex::new(vec![(how, first.desc.size)]);
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
                    let path = blob_path(layout, &job.desc.digest);
                    match self.push_blob(target, &path, &job.desc, job.mount_from.as_deref()) {
                        Ok(how) => {
                            if let Ok(mut r) = results.lock() {
                                r.push((how, job.desc.size));
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
        for (how, size) in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
            match how {
                BlobOutcome::Existed => outcome.existed += 1,
                BlobOutcome::Mounted => outcome.mounted += 1,
                BlobOutcome::Uploaded => {
                    outcome.uploaded += 1;
                    outcome.bytes_uploaded += size;
                }
            }
        }
        Ok(())
    }

    /// Puts one blob into the repository: skip, mount or upload; retried whole.
    fn push_blob(
        &self,
        target: &ImageRef,
        path: &Path,
        desc: &Descriptor,
        mount_from: Option<&str>,
    ) -> Result<BlobOutcome, RegistryError> {
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
        self.reporter().report(Event::PushStarted {
            digest: &desc.digest,
            size: desc.size,
        });
        let how = self.retrying(&format!("pushing {}", desc.digest), || {
            self.push_blob_once(target, path, desc, mount_from)
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
        path: &Path,
        desc: &Descriptor,
        mount_from: Option<&str>,
    ) -> Result<BlobOutcome, RegistryError> {
        let host = target.api_host().to_string();
        let mount_from = mount_from.filter(|src| !self.mount_refused(&host, src));
        let mut scopes = vec![format!("repository:{}:pull,push", target.repository)];
        if let Some(src) = mount_from {
            scopes.push(format!("repository:{src}:pull"));
        }
        let call = Call {
            host: &host,
            repository: &target.repository,
            scopes: &scopes,
        };
        let location = match self.start_upload(&call, target, desc, mount_from)? {
            Started::Done(how) => return Ok(how),
            // A mount we may not do: upload instead, and stop asking.
            Started::MountRefused(src) => {
                self.refuse_mount(&host, &src);
                return self.push_blob_once(target, path, desc, None);
            }
            Started::Upload(location) => location,
        };
        let chunk = match self.options().chunk_size {
            Some(c) => Some(c),
            None if desc.size >= self.options().chunk_threshold => Some(64 * 1024 * 1024),
            None => None,
        };
        match chunk.filter(|&c| c > 0 && desc.size > 0) {
            Some(chunk) => self.upload_chunked(&call, location, path, desc, chunk)?,
            None => self.upload_whole(&call, location, path, desc)?,
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
        mount_from: Option<&str>,
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
        let start_url = match mount_from {
            Some(src) => format!(
                "{base}{}/blobs/uploads/?mount={}&from={src}",
                target.repository, desc.digest
            ),
            None => format!("{base}{}/blobs/uploads/", target.repository),
        };
        let refused = || Started::MountRefused(mount_from.unwrap_or_default().to_string());
        let sent = self.send(call, &|http| {
            Ok(http.post(&start_url).header("Content-Length", "0"))
        });
        let resp = match sent {
            Err(RegistryError::Unauthorized { .. }) if mount_from.is_some() => return Ok(refused()),
            other => other?,
        };
        match (resp.status().as_u16(), mount_from.is_some()) {
            (201, true) => Ok(Started::Done(BlobOutcome::Mounted)),
            (401 | 403, true) => Ok(refused()),
            (201 | 202, _) => Ok(Started::Upload(self.location(call.host, &resp)?)),
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
