//! The HTTP transport to registries: one blocking `reqwest` client shared by
//! all threads, the auth challenge flow (anonymous, basic, bearer tokens per
//! scope), retries with backoff that honour `Retry-After`, bounded reads of
//! every body, a registry's `Warning` header shown once, and the scheme rule:
//! HTTPS always, plain HTTP only for registries named insecure, and never a
//! redirect from HTTPS to HTTP.
//!
//! Nothing here logs a credential, a token, or a URL's query string (upload
//! locations carry signed state).

use super::auth::{self, AuthEnv, Credential};
use super::RegistryError;
use crate::progress::{Event, Reporter};
use base64::Engine as _;
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, WWW_AUTHENTICATE};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

/// Largest error or token body read.
pub const MAX_SMALL_BODY: u64 = 1024 * 1024;

/// The slowest upload rate allowed for, in bytes per second: an upload's
/// deadline is the stall timeout plus its size at this rate.
pub const MIN_UPLOAD_RATE: u64 = 64 * 1024;

/// Scheme, host and port (the default port made explicit) of a URL.
fn origin(url: &reqwest::Url) -> Option<(String, String, u16)> {
    Some((
        url.scheme().to_string(),
        url.host_str()?.to_ascii_lowercase(),
        url.port_or_known_default()?,
    ))
}

/// The length of a request's streamed (not in-memory) body, if it has one.
fn streamed_len(req: &reqwest::blocking::Request) -> Option<u64> {
    let body = req.body()?;
    if body.as_bytes().is_some() {
        return None;
    }
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or(Some(0))
}

/// Whether a transport failure may go away on another try: a timeout, a
/// refused connection (a registry restarting), or a connection lost
/// mid-request; not a bad URL, a refused redirect, a name that does not
/// resolve, or a TLS failure.
fn transport_retryable(e: &reqwest::Error) -> bool {
    if e.is_builder() || e.is_redirect() {
        return false;
    }
    if e.is_timeout() {
        return true;
    }
    if e.is_connect() {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                return io.kind() == std::io::ErrorKind::ConnectionRefused;
            }
            src = s.source();
        }
        return false;
    }
    true
}

/// How failed requests are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// First backoff; doubled each time.
    pub base_delay: Duration,
    /// Largest backoff.
    pub max_delay: Duration,
    /// Largest `Retry-After` honoured; longer asks are cut to this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// How to talk to registries.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Registries (host[:port]) spoken to over plain HTTP.
    pub insecure: BTreeSet<String>,
    /// Extra CA certificates (PEM files), added to the system roots.
    pub ca_files: Vec<PathBuf>,
    /// Roots of per-registry certificate folders (`<root>/<host[:port]>/`:
    /// `*.crt` CAs, `*.cert` + `*.key` client certificates), in order.
    pub certs_dirs: Vec<PathBuf>,
    /// Where credentials are looked for.
    pub auth_env: AuthEnv,
    /// Retries.
    pub retry: RetryPolicy,
    /// Concurrent blob transfers.
    pub jobs: usize,
    /// Upload in chunks of this size instead of one PUT.
    pub chunk_size: Option<u64>,
    /// Blobs at least this large are uploaded in chunks even when not asked.
    pub chunk_threshold: u64,
    /// A request without a large body fails (and is retried) when no
    /// answer, or no data of a download, comes for this long.
    pub stall_timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: BTreeSet::new(),
            ca_files: Vec::new(),
            certs_dirs: Vec::new(),
            auth_env: AuthEnv::default(),
            retry: RetryPolicy::default(),
            jobs: 4,
            chunk_size: None,
            chunk_threshold: 4 * 1024 * 1024 * 1024,
            stall_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Debug)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Default)]
struct State {
    credentials: BTreeMap<String, auth::Lookup>,
    challenges: BTreeMap<String, Challenge>,
    tokens: BTreeMap<(String, String), String>,
    /// Token requests refused (401/403): not asked again this run, so a
    /// wrong password is tried once, not once per concurrent transfer.
    refused: BTreeMap<(String, String), u16>,
    warnings: BTreeSet<String>,
    /// (host, source repository) pairs a mount was refused for.
    no_mount: BTreeSet<(String, String)>,
}

/// A client for any number of registries; share it between threads.
pub struct Client {
    opts: RegistryOptions,
    /// `--ca-file` certificates, read once.
    ca_certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// One HTTP client per registry (host[:port]), each with its own TLS trust.
    http: Mutex<BTreeMap<String, reqwest::blocking::Client>>,
    state: Mutex<State>,
    /// Held while a token is fetched: one fetch per scope set, not one per thread.
    token_fetch: Mutex<()>,
    reporter: Arc<dyn Reporter>,
    /// Bytes of blobs downloaded (verified) by this client.
    downloaded: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("insecure", &self.opts.insecure)
            .finish_non_exhaustive()
    }
}

/// One request to make, rebuilt for every attempt.
pub(crate) struct Call<'a> {
    /// host[:port] as in the reference.
    pub host: &'a str,
    /// The repository (for errors).
    pub repository: &'a str,
    /// Token scopes the request needs.
    pub scopes: &'a [String],
}

/// The settings every registry's HTTP client shares.
fn http_builder(stall_timeout: Duration) -> reqwest::blocking::ClientBuilder {
    reqwest::blocking::Client::builder()
        .user_agent(concat!("imgc/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        // The blocking client's timeout bounds the wait for each answer and
        // each read of a body (never a whole download); uploads get a
        // deadline of their own (see `send`). Dead peers are found by TCP
        // keepalive, and a peer that stops acknowledging (or reading) an
        // upload by the TCP user timeout.
        .timeout(stall_timeout)
        .tcp_keepalive(Duration::from_secs(30))
        .tcp_user_timeout(stall_timeout)
        .https_only(false)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let downgrade = attempt
                .previous()
                .last()
                .is_some_and(|u| u.scheme() == "https")
                && attempt.url().scheme() != "https";
            if downgrade {
                attempt.error("refusing to follow a redirect from HTTPS to plain HTTP")
            } else if attempt.previous().len() >= 10 {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        }))
}

/// A URL without its query string, safe to show.
pub(crate) fn shown(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or("").to_string()
}

impl Client {
    /// A client with these options; events (warnings, retries, progress) go to `reporter`.
    pub fn new(
        opts: RegistryOptions,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Client, RegistryError> {
        static PROVIDER: Once = Once::new();
        PROVIDER.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let mut ca_certs = Vec::new();
        for path in &opts.ca_files {
            ca_certs.extend(super::tls::load_certs(path)?);
        }
        Ok(Client {
            opts,
            ca_certs,
            http: Mutex::new(BTreeMap::new()),
            state: Mutex::new(State::default()),
            token_fetch: Mutex::new(()),
            downloaded: Default::default(),
            reporter,
        })
    }

    /// The HTTP client for a registry (made on first use): TLS trusts the
    /// system roots, `--ca-file` and the registry's certificate folders.
    fn http(&self, host: &str) -> Result<reqwest::blocking::Client, RegistryError> {
        let mut clients = self.http.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(host) {
            return Ok(c.clone());
        }
        let folders = super::tls::host_certs(&self.opts.certs_dirs, host)?;
        let mut trusted = self.ca_certs.clone();
        trusted.extend(folders.cas);
        let tls = super::tls::client_config(trusted, folders.identity)?;
        let client = http_builder(self.opts.stall_timeout)
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| RegistryError::Setup {
                what: "the HTTP client",
                source: Box::new(e),
            })?;
        clients.insert(host.to_string(), client.clone());
        Ok(client)
    }

    /// The options.
    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// Bytes of blobs this client downloaded (and verified) so far.
    pub fn bytes_downloaded(&self) -> u64 {
        self.downloaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a blob downloaded.
    pub(crate) fn count_download(&self, bytes: u64) {
        self.downloaded
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn reporter(&self) -> &dyn Reporter {
        &*self.reporter
    }

    pub(crate) fn reporter_arc(&self) -> Arc<dyn Reporter> {
        self.reporter.clone()
    }

    /// `http://host/v2/` or `https://host/v2/`.
    pub(crate) fn base(&self, host: &str) -> String {
        let scheme = if self.opts.insecure.contains(host) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}/v2/")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn credentials(&self, host: &str) -> Result<Option<Credential>, RegistryError> {
        if let Some(l) = self.lock().credentials.get(host) {
            return Ok(l.credential.clone());
        }
        let lookup = auth::find_credentials(&self.opts.auth_env, host)?;
        let cred = lookup.credential.clone();
        self.lock().credentials.insert(host.to_string(), lookup);
        Ok(cred)
    }

    fn looked_in(&self, host: &str) -> String {
        match self.lock().credentials.get(host) {
            Some(l) if !l.looked_in.is_empty() => l.looked_in.join("; "),
            _ => "nowhere (no credential files are configured)".to_string(),
        }
    }

    /// The Authorization header for a call, fetching a token if needed.
    fn authorization(&self, call: &Call<'_>) -> Result<Option<String>, RegistryError> {
        let challenge = self.lock().challenges.get(call.host).cloned();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(match self.credentials(call.host)? {
                Some(Credential::Basic { username, password }) => Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{}", password.expose()))
                )),
                _ => None,
            }),
            Some(Challenge::Bearer { realm, service }) => {
                let key = (call.host.to_string(), call.scopes.join(" "));
                let cached = |st: &State| -> Result<Option<String>, RegistryError> {
                    if let Some(&status) = st.refused.get(&key) {
                        return Err(RegistryError::Unauthorized {
                            registry: call.host.to_string(),
                            repository: call.repository.to_string(),
                            status,
                            looked_in: String::new(),
                        });
                    }
                    Ok(st.tokens.get(&key).map(|t| format!("Bearer {t}")))
                };
                let found = {
                    let st = self.lock();
                    cached(&st)
                };
                if let Some(t) = found.map_err(|_| self.unauthorized(call, 401))? {
                    return Ok(Some(t));
                }
                let _one_at_a_time = self.token_fetch.lock().unwrap_or_else(|p| p.into_inner());
                let found = {
                    let st = self.lock();
                    cached(&st)
                };
                if let Some(t) = found.map_err(|_| self.unauthorized(call, 401))? {
                    return Ok(Some(t));
                }
                match self.fetch_token(call, &realm, service.as_deref()) {
                    Ok(token) => {
                        self.lock().tokens.insert(key, token.clone());
                        Ok(Some(format!("Bearer {token}")))
                    }
                    Err(e @ RegistryError::Unauthorized { status, .. }) => {
                        self.lock().refused.insert(key, status);
                        Err(e)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn fetch_token(
        &self,
        call: &Call<'_>,
        realm: &str,
        service: Option<&str>,
    ) -> Result<String, RegistryError> {
        let url = reqwest::Url::parse(realm)
            .map_err(|e| token_error(call, realm, format!("bad realm URL: {e}")))?;
        let cred = self.realm_credential(call, realm, &url)?;
        let http = self.http(call.host)?;
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in call.scopes {
            query.push(("scope", s));
        }
        let resp = token_request(&http, url, &query, cred.as_ref())
            .send()
            .map_err(|e| RegistryError::Connect {
                registry: call.host.to_string(),
                url: format!("token realm {}", shown(realm)),
                retryable: transport_retryable(&e),
                cause: self.describe_transport(e),
            })?;
        self.read_token(call, realm, resp)
    }

    /// The credential to send to a realm: over HTTPS, or over plain HTTP only
    /// to a host:port named insecure; a realm of any other scheme is refused.
    fn realm_credential(
        &self,
        call: &Call<'_>,
        realm: &str,
        url: &reqwest::Url,
    ) -> Result<Option<Credential>, RegistryError> {
        let may_send = match url.scheme() {
            "https" => true,
            "http" => self.named_insecure(url),
            other => {
                let why = format!("the realm's scheme `{other}` is neither https nor http");
                return Err(token_error(call, realm, why));
            }
        };
        if may_send {
            self.credentials(call.host)
        } else {
            Ok(None)
        }
    }

    /// The token from a realm's answer; its failures as errors (5xx and 429
    /// retryable, 401/403 a refusal).
    fn read_token(
        &self,
        call: &Call<'_>,
        realm: &str,
        resp: Response,
    ) -> Result<String, RegistryError> {
        let status = resp.status().as_u16();
        if matches!(status, 408 | 429 | 500 | 502 | 503 | 504) {
            return Err(RegistryError::Status {
                registry: call.host.to_string(),
                url: format!("token realm {}", shown(realm)),
                status,
                detail: String::new(),
                retry_after: retry_after(resp.headers()),
            });
        }
        if status == 401 || status == 403 {
            return Err(RegistryError::Unauthorized {
                registry: call.host.to_string(),
                repository: call.repository.to_string(),
                status,
                looked_in: self.looked_in(call.host),
            });
        }
        let body = read_limited(resp, MAX_SMALL_BODY, call.host, "token response")?;
        if !(200..300).contains(&status) {
            return Err(token_error(call, realm, format!("HTTP {status}")));
        }
        #[derive(serde::Deserialize)]
        struct TokenBody {
            token: Option<String>,
            access_token: Option<String>,
        }
        let parsed: TokenBody = serde_json::from_slice(&body).map_err(|e| {
            token_error(
                call,
                realm,
                format!("the answer is not a token document ({e})"),
            )
        })?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_error(call, realm, "the answer holds no token".into()))
    }

    /// Sends a request built by `make`, answering an auth challenge once.
    /// Returns the response whatever its status (after 401 handling).
    pub(crate) fn send(
        &self,
        call: &Call<'_>,
        make: &dyn Fn(&reqwest::blocking::Client) -> Result<RequestBuilder, RegistryError>,
    ) -> Result<Response, RegistryError> {
        let mut answered = false;
        loop {
            let http = self.http(call.host)?;
            let mut req = make(&http)?.build().map_err(|e| RegistryError::Setup {
                what: "a request",
                source: Box::new(e),
            })?;
            // Credentials and tokens go only to the origin they were issued
            // for (scheme, host and port): an upload `Location` on another
            // host is followed without them.
            let own = self.is_registry_origin(call.host, req.url());
            let sent_auth = if own { self.authorization(call)? } else { None };
            if let Some(a) = &sent_auth {
                let mut value = reqwest::header::HeaderValue::from_str(a).map_err(|e| {
                    RegistryError::Setup {
                        what: "the Authorization header",
                        source: Box::new(e),
                    }
                })?;
                value.set_sensitive(true);
                req.headers_mut().insert(AUTHORIZATION, value);
            }
            // The client's timeout bounds the wait for an answer and each
            // read of a download (a stall timeout). A streamed upload may
            // take long: it gets a deadline from its size instead, and the
            // kernel's TCP user timeout finds a peer that stops reading.
            if let Some(len) = streamed_len(&req) {
                *req.timeout_mut() = Some(self.upload_deadline(len));
            }
            let url = shown(req.url().as_str());
            let method = req.method().to_string();
            let resp = http.execute(req).map_err(|e| RegistryError::Connect {
                registry: call.host.to_string(),
                url: format!("{method} {url}"),
                retryable: transport_retryable(&e),
                cause: self.describe_transport(e),
            })?;
            self.note_warnings(call.host, resp.headers());
            if resp.status().as_u16() != 401 || !own {
                return Ok(resp);
            }
            if answered {
                return Err(self.unauthorized(call, 401));
            }
            answered = true;
            let challenge = parse_challenge(resp.headers());
            let mut st = self.lock();
            st.challenges
                .insert(call.host.to_string(), challenge.clone());
            // Forget the token this request carried (expired or too narrow);
            // one another thread fetched since is kept.
            let key = (call.host.to_string(), call.scopes.join(" "));
            if let (Some(sent), Some(t)) = (&sent_auth, st.tokens.get(&key)) {
                if *sent == format!("Bearer {t}") {
                    st.tokens.remove(&key);
                }
            }
            drop(st);
            // Basic credentials that were sent and refused, or none to send:
            // another try cannot help. (A refused token is fetched again once.)
            if matches!(challenge, Challenge::Basic)
                && (sent_auth.is_some() || self.credentials(call.host)?.is_none())
            {
                return Err(self.unauthorized(call, 401));
            }
        }
    }

    /// Whether `url` is on the registry `host` itself: same scheme, host and
    /// port (default ports made explicit) as the registry's API base.
    pub(crate) fn is_registry_origin(&self, host: &str, url: &reqwest::Url) -> bool {
        let base = reqwest::Url::parse(&self.base(host)).ok();
        base.is_some_and(|b| origin(&b).is_some() && origin(&b) == origin(url))
    }

    /// Whether a plain-HTTP URL's host:port was named insecure.
    fn named_insecure(&self, url: &reqwest::Url) -> bool {
        let want = origin(url);
        want.is_some()
            && self.opts.insecure.iter().any(|h| {
                reqwest::Url::parse(&format!("http://{h}/"))
                    .ok()
                    .is_some_and(|u| origin(&u) == want)
            })
    }

    /// The deadline of an upload of `len` bytes: the stall timeout plus the
    /// time the body takes at [`MIN_UPLOAD_RATE`].
    fn upload_deadline(&self, len: u64) -> Duration {
        self.opts
            .stall_timeout
            .saturating_add(Duration::from_secs(len / MIN_UPLOAD_RATE))
    }

    /// A failed read of a response body as a sentence; a stall names the
    /// timeout.
    pub(crate) fn describe_read(&self, e: std::io::Error) -> super::Transport {
        // reqwest wraps its own error in the `io::Error` (`source()` skips it).
        let timed_out = e.kind() == std::io::ErrorKind::TimedOut
            || e.get_ref()
                .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
                .is_some_and(reqwest::Error::is_timeout);
        if timed_out {
            super::Transport::Stalled(self.opts.stall_timeout.as_secs())
        } else {
            super::Transport::Io(e)
        }
    }

    /// A transport error; a timeout is a stall of the stall timeout.
    pub(crate) fn describe_transport(&self, e: reqwest::Error) -> super::Transport {
        if e.is_timeout() {
            return super::Transport::Stalled(self.opts.stall_timeout.as_secs());
        }
        super::Transport::Http(e.without_url())
    }

    /// Whether mounting from `source` on `host` was refused before.
    pub(crate) fn mount_refused(&self, host: &str, source: &str) -> bool {
        self.lock()
            .no_mount
            .contains(&(host.to_string(), source.to_string()))
    }

    /// Remembers that mounting from `source` on `host` is refused.
    pub(crate) fn refuse_mount(&self, host: &str, source: &str) {
        self.lock()
            .no_mount
            .insert((host.to_string(), source.to_string()));
    }

    fn unauthorized(&self, call: &Call<'_>, status: u16) -> RegistryError {
        let _ = self.credentials(call.host);
        RegistryError::Unauthorized {
            registry: call.host.to_string(),
            repository: call.repository.to_string(),
            status,
            looked_in: self.looked_in(call.host),
        }
    }

    /// Turns a response with an unexpected status into an error, reading
    /// the registry's error body (bounded).
    pub(crate) fn status_error(
        &self,
        call: &Call<'_>,
        resp: Response,
        reference: Option<&str>,
    ) -> RegistryError {
        let status = resp.status().as_u16();
        let method_url = shown(resp.url().as_str());
        let retry_after = retry_after(resp.headers());
        let body = read_limited(resp, MAX_SMALL_BODY, call.host, "error body").unwrap_or_default();
        #[derive(serde::Deserialize)]
        struct Errors {
            #[serde(default)]
            errors: Vec<ErrorItem>,
        }
        #[derive(serde::Deserialize)]
        struct ErrorItem {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        let items = serde_json::from_slice::<Errors>(&body)
            .map(|e| e.errors)
            .unwrap_or_default();
        let codes: Vec<&str> = items.iter().map(|i| i.code.as_str()).collect();
        if status == 403 || codes.contains(&"DENIED") || codes.contains(&"UNAUTHORIZED") {
            return self.unauthorized(call, status);
        }
        if codes.contains(&"NAME_UNKNOWN") {
            return RegistryError::RepositoryUnknown {
                registry: call.host.to_string(),
                repository: call.repository.to_string(),
            };
        }
        if let (Some(r), true) = (
            reference,
            status == 404 || codes.contains(&"MANIFEST_UNKNOWN"),
        ) {
            return RegistryError::ManifestUnknown {
                registry: call.host.to_string(),
                reference: r.to_string(),
                tags: String::new(),
            };
        }
        let detail = items
            .iter()
            .map(|i| format!("{} {}", i.code, i.message).trim().to_string())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let detail: String = detail.chars().take(300).collect();
        RegistryError::Status {
            registry: call.host.to_string(),
            url: method_url,
            status,
            detail: if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            },
            retry_after,
        }
    }

    fn note_warnings(&self, host: &str, headers: &HeaderMap) {
        for v in headers.get_all("warning") {
            let Ok(v) = v.to_str() else { continue };
            // `299 - "text"`: show the text.
            let text = match (v.find('"'), v.rfind('"')) {
                (Some(a), Some(b)) if b > a => &v[a + 1..b],
                _ => v,
            };
            let text: String = text.chars().filter(|c| !c.is_control()).take(500).collect();
            let new = self.lock().warnings.insert(format!("{host}\0{text}"));
            if new {
                self.reporter
                    .report(Event::Warning(&format!("registry {host} says: {text}")));
            }
        }
    }

    /// Runs `op` until it succeeds, fails for good, or attempts run out.
    /// `what` names the operation in retry events.
    pub(crate) fn retrying<T>(
        &self,
        what: &str,
        mut op: impl FnMut() -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let policy = &self.opts.retry;
        let mut attempt = 1;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < policy.attempts => {
                    let backoff = policy
                        .base_delay
                        .saturating_mul(1 << (attempt - 1).min(16))
                        .min(policy.max_delay);
                    let wait = match e.retry_after() {
                        Some(s) => Duration::from_secs(s).min(policy.max_retry_after),
                        None => backoff,
                    };
                    self.reporter.report(Event::Retrying {
                        what,
                        attempt,
                        wait,
                        reason: &crate::progress::error_chain(&e),
                    });
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn token_error(call: &Call<'_>, realm: &str, reason: String) -> RegistryError {
    RegistryError::Token {
        registry: call.host.to_string(),
        realm: shown(realm),
        reason,
    }
}

/// A token request: a refresh-token form for an identity token, else a GET
/// with the query (and basic auth when there are credentials).
fn token_request(
    http: &reqwest::blocking::Client,
    url: reqwest::Url,
    query: &[(&str, &str)],
    cred: Option<&Credential>,
) -> RequestBuilder {
    match cred {
        Some(Credential::IdentityToken(tok)) => {
            let mut form: Vec<(&str, &str)> = vec![
                ("grant_type", "refresh_token"),
                ("client_id", "imgc"),
                ("refresh_token", tok.expose()),
            ];
            form.extend(query.iter().copied());
            let body = form
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect::<Vec<_>>()
                .join("&");
            http.post(url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body)
        }
        Some(Credential::Basic { username, password }) => http
            .get(with_query(&url, query))
            .basic_auth(username, Some(password.expose())),
        None => http.get(with_query(&url, query)),
    }
}

/// A `Retry-After` in seconds, if the answer has one.
fn retry_after(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// `url` with `pairs` appended to its query.
fn with_query(url: &reqwest::Url, pairs: &[(&str, &str)]) -> reqwest::Url {
    let mut u = url.clone();
    if !pairs.is_empty() {
        u.query_pairs_mut().extend_pairs(pairs);
    }
    u
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn parse_challenge(headers: &HeaderMap) -> Challenge {
    for v in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(v) = v.to_str() else { continue };
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            let params = parse_params(rest);
            if let Some(realm) = params.get("realm") {
                return Challenge::Bearer {
                    realm: realm.clone(),
                    service: params.get("service").cloned(),
                };
            }
        }
    }
    Challenge::Basic
}

/// `key="value", key2=value2` → map (quoted values may hold commas).
fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_string());
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// Reads a whole body, failing if it exceeds `limit`.
pub(crate) fn read_limited(
    resp: Response,
    limit: u64,
    host: &str,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    let too_large = || RegistryError::TooLarge {
        registry: host.to_string(),
        what: what.to_string(),
        limit,
    };
    if let Some(len) = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    crate::fsx::read_stream_bounded(resp, limit, 0).map_err(|e| match e.kind() {
        std::io::ErrorKind::FileTooLarge => too_large(),
        _ => RegistryError::Connect {
            registry: host.to_string(),
            url: what.to_string(),
            cause: super::Transport::Io(e),
            retryable: true,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let mut h = HeaderMap::new();
        h.insert(
            WWW_AUTHENTICATE,
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
                .parse()
                .unwrap(),
        );
        match parse_challenge(&h) {
            Challenge::Bearer { realm, service } => {
                assert_eq!(realm, "https://auth.example/token");
                assert_eq!(service.as_deref(), Some("registry.example"));
            }
            c => panic!("{c:?}"),
        }
        let mut h = HeaderMap::new();
        h.insert(WWW_AUTHENTICATE, r#"Basic realm="x""#.parse().unwrap());
        assert!(matches!(parse_challenge(&h), Challenge::Basic));
    }

    /// Records the waits of retry events.
    #[derive(Default)]
    struct Waits(Mutex<Vec<Duration>>);

    impl Reporter for Waits {
        fn report(&self, event: Event<'_>) {
            if let Event::Retrying { wait, .. } = event {
                self.0.lock().unwrap().push(wait);
            }
        }
    }

    fn status(code: u16, retry_after: Option<u64>) -> RegistryError {
        RegistryError::Status {
            registry: "r".into(),
            url: "u".into(),
            status: code,
            detail: String::new(),
            retry_after,
        }
    }

    #[test]
    fn retries_back_off_honour_a_capped_retry_after_and_stop_on_other_4xx() {
        let waits = Arc::new(Waits::default());
        let opts = RegistryOptions {
            retry: RetryPolicy {
                attempts: 4,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(3),
                max_retry_after: Duration::from_millis(5),
            },
            ..RegistryOptions::default()
        };
        let client = Client::new(opts, waits.clone()).unwrap();
        // 503, 503, 429 with Retry-After: 3600 (capped), then success.
        let mut answers = vec![
            Ok(7),
            Err(status(429, Some(3600))),
            Err(status(503, None)),
            Err(status(503, None)),
        ];
        let got = client.retrying("x", || answers.pop().unwrap());
        assert_eq!(got.unwrap(), 7);
        assert_eq!(
            *waits.0.lock().unwrap(),
            [1, 2, 5].map(Duration::from_millis).to_vec()
        );
        // A 400 is final at once; attempts run out on a persistent 503.
        let mut calls = 0;
        let e = client
            .retrying("x", || -> Result<(), _> {
                calls += 1;
                Err(status(400, None))
            })
            .unwrap_err();
        assert!(matches!(e, RegistryError::Status { status: 400, .. }));
        assert_eq!(calls, 1);
        let mut calls = 0;
        let _ = client.retrying("x", || -> Result<(), _> {
            calls += 1;
            Err(status(503, None))
        });
        assert_eq!(calls, 4);
    }

    #[test]
    fn urls_are_shown_without_query() {
        assert_eq!(
            shown("http://h/v2/r/blobs/uploads/abc?_state=SECRET&digest=x"),
            "http://h/v2/r/blobs/uploads/abc"
        );
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
    }
}
