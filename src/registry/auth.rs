//! Registry credentials, found where Docker and Podman store them.
//!
//! This module owns reading `$REGISTRY_AUTH_FILE`, Docker's `config.json`
//! (`auths`, `credHelpers`, `credsStore`) and Podman's `auth.json`, and running
//! `docker-credential-<name>` helpers. [`find_credentials`] returns the first
//! credential found together with a human-readable list of the places it
//! looked, for error messages. It never prints, and no secret value ever
//! reaches an error message, a `Debug` output or that list.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde::Deserialize;

/// Largest credentials file or helper output read, in bytes (1 MiB).
const MAX_BYTES: usize = 1 << 20;
/// How long a credential helper may run before it is killed.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// The key Docker uses for Docker Hub, and the server URL its helpers expect.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// A secret string. `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret value itself; only for sending it to the registry.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A credential for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and password (HTTP basic auth, or the token exchange).
    Basic {
        /// The user name (not secret).
        username: String,
        /// The password.
        password: Secret,
    },
    /// An OAuth2 refresh token (`identitytoken`, or a helper's `<token>` user).
    IdentityToken(Secret),
}

/// Everything read from the process environment; tests build their own.
#[derive(Debug, Clone, Default)]
pub struct AuthEnv {
    /// `$DOCKER_CONFIG`: a directory holding `config.json`.
    pub docker_config: Option<PathBuf>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$REGISTRY_AUTH_FILE`: a Podman auth file.
    pub registry_auth_file: Option<PathBuf>,
    /// `$XDG_RUNTIME_DIR`: holds Podman's `containers/auth.json`.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// `$PATH`, searched for `docker-credential-<name>`.
    pub path: Option<OsString>,
}

/// The result of a search: the credential, if any, and where we looked.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The first credential found.
    pub credential: Option<Credential>,
    /// The places consulted, in order, e.g. `/root/.docker/config.json (not found)`.
    pub looked_in: Vec<String>,
}

/// Errors finding credentials. None of them holds a secret value.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A credentials file exists but could not be read.
    #[error("failed to read credentials file `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A credentials file is larger than we read.
    #[error("credentials file `{path}` is larger than 1 MiB; refusing to read it")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A credentials file is not valid JSON of the expected shape.
    #[error("credentials file `{path}` is not valid: {detail}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong and where (line and column), without any value.
        detail: String,
    },
    /// An `auths` entry cannot be used.
    #[error("the `auths` entry `{key}` in credentials file `{path}` is invalid: {reason}")]
    BadEntry {
        /// The file.
        path: PathBuf,
        /// The entry's key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `credHelpers` or `credsStore` names a helper we refuse to look up.
    #[error("credential helper name `{name}` in `{path}` is invalid: it must be a plain name such as `pass`")]
    BadHelperName {
        /// The file naming the helper.
        path: PathBuf,
        /// The name as written.
        name: String,
    },
    /// The helper is not on `$PATH`.
    #[error("credential helper `{helper}` (from {origin}) is not on PATH")]
    HelperNotFound {
        /// `docker-credential-<name>`.
        helper: String,
        /// Why it was wanted, e.g. "credHelpers in `/root/.docker/config.json`".
        origin: String,
    },
    /// The helper could not be started or talked to.
    #[error("failed to run credential helper `{helper}`")]
    HelperIo {
        /// The helper's path.
        helper: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The helper ran too long and was killed.
    #[error("credential helper `{helper}` did not finish within {} seconds and was killed", .timeout.as_secs())]
    HelperTimeout {
        /// The helper's path.
        helper: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// The helper failed for a reason other than "credentials not found".
    #[error("credential helper `{helper}` failed ({status}); its stderr: {stderr}")]
    HelperFailed {
        /// The helper's path.
        helper: PathBuf,
        /// Its exit status.
        status: String,
        /// At most about 300 characters of its stderr (never its stdout).
        stderr: String,
    },
    /// The helper succeeded but its output is unusable.
    #[error("credential helper `{helper}` printed unusable output: {detail}")]
    HelperOutput {
        /// The helper's path.
        helper: PathBuf,
        /// What is wrong, without any value.
        detail: String,
    },
}

/// Finds credentials for `registry` (`host` or `host:port`, as in an image
/// reference). Sources, first match wins: `$REGISTRY_AUTH_FILE`; Docker's
/// `config.json` (`$DOCKER_CONFIG`, else `$HOME/.docker`);
/// `$XDG_RUNTIME_DIR/containers/auth.json`; `$HOME/.config/containers/auth.json`.
pub fn find_credentials(env: &AuthEnv, registry: &str) -> Result<Lookup, AuthError> {
    let target = Target::new(registry);
    let mut looked_in = Vec::new();
    for (path, format) in sources(env) {
        let credential = check_file(env, &path, format, &target, &mut looked_in)?;
        if credential.is_some() {
            return Ok(Lookup {
                credential,
                looked_in,
            });
        }
    }
    Ok(Lookup {
        credential: None,
        looked_in,
    })
}

/// The registry being looked up, normalised.
struct Target {
    /// Lower-case `host[:port]`; Docker Hub's aliases become `docker.io`.
    host: String,
    /// What a helper gets on stdin, and the preferred `auths` key.
    server_url: String,
}

impl Target {
    fn new(registry: &str) -> Target {
        let host = canonical_host(registry);
        let server_url = if host == "docker.io" {
            DOCKER_HUB_SERVER.to_string()
        } else {
            host.clone()
        };
        Target { host, server_url }
    }
}

/// `https://Host:5000/v2/` → `host:5000`; Docker Hub's names → `docker.io`.
fn canonical_host(key: &str) -> String {
    let key = key.trim();
    let rest = key.find("://").map_or(key, |i| &key[i + 3..]);
    let host = rest.split('/').next().unwrap_or(rest).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => host,
    }
}

/// The entries of `map` whose key names the target, an exact key first.
fn matching<'a, V>(map: &'a BTreeMap<String, V>, target: &Target) -> Vec<(&'a str, &'a V)> {
    let mut found: Vec<(&str, &V)> = map
        .iter()
        .filter(|(key, _)| canonical_host(key) == target.host)
        .map(|(key, value)| (key.as_str(), value))
        .collect();
    found.sort_by_key(|(key, _)| *key != target.server_url);
    found
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `auths`, `credHelpers` and `credsStore`.
    Docker,
    /// `auths` only.
    Podman,
}

/// The files to consult, in order, without duplicates.
fn sources(env: &AuthEnv) -> Vec<(PathBuf, Format)> {
    let mut all = Vec::new();
    if let Some(file) = &env.registry_auth_file {
        all.push((file.clone(), Format::Podman));
    }
    let home_docker = || env.home.as_ref().map(|home| home.join(".docker"));
    if let Some(dir) = env.docker_config.clone().or_else(home_docker) {
        all.push((dir.join("config.json"), Format::Docker));
    }
    if let Some(dir) = &env.xdg_runtime_dir {
        all.push((dir.join("containers").join("auth.json"), Format::Podman));
    }
    if let Some(home) = &env.home {
        let file = home.join(".config").join("containers").join("auth.json");
        all.push((file, Format::Podman));
    }
    let mut seen = BTreeSet::new();
    all.retain(|(path, _)| seen.insert(path.clone()));
    all
}

/// A Docker `config.json` or Podman `auth.json`; other fields are ignored.
#[derive(Default, Deserialize)]
struct AuthFile {
    auths: Option<BTreeMap<String, AuthEntry>>,
    #[serde(rename = "credHelpers")]
    cred_helpers: Option<BTreeMap<String, String>>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
}

/// One `auths` entry. Deliberately not `Debug`: it holds secrets.
#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// Looks in one file, recording what happened in `looked_in`.
fn check_file(
    env: &AuthEnv,
    path: &Path,
    format: Format,
    target: &Target,
    looked_in: &mut Vec<String>,
) -> Result<Option<Credential>, AuthError> {
    let shown = path.display();
    let Some(bytes) = read_bounded(path)? else {
        looked_in.push(format!("{shown} (not found)"));
        return Ok(None);
    };
    let file: AuthFile = if bytes.iter().all(u8::is_ascii_whitespace) {
        AuthFile::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|err| AuthError::Malformed {
            path: path.to_path_buf(),
            detail: json_detail(&err),
        })?
    };

    if format == Format::Docker {
        let helpers = file.cred_helpers.unwrap_or_default();
        if let Some((_, name)) = matching(&helpers, target).first() {
            let origin = format!("credHelpers in {shown}");
            return run_helper(env, path, name, &origin, target, looked_in);
        }
    }

    let auths = file.auths.unwrap_or_default();
    let entries = matching(&auths, target);
    for (key, entry) in &entries {
        if let Some(credential) = entry_credential(path, key, entry)? {
            looked_in.push(format!("{shown} (auths entry \"{key}\")"));
            return Ok(Some(credential));
        }
    }
    let host = &target.host;
    looked_in.push(if entries.is_empty() {
        format!("{shown} (no entry for {host})")
    } else {
        format!("{shown} (empty entry for {host})")
    });

    match file.creds_store.filter(|name| !name.is_empty()) {
        Some(name) if format == Format::Docker => {
            let origin = format!("credsStore in {shown}");
            run_helper(env, path, &name, &origin, target, looked_in)
        }
        _ => Ok(None),
    }
}

/// Reads at most [`MAX_BYTES`]; `None` when the file does not exist.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, AuthError> {
    let read_err = |source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    };
    match crate::fsx::read_bounded(path, MAX_BYTES as u64, crate::fsx::Links::Follow) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) if err.kind() == io::ErrorKind::FileTooLarge => Err(AuthError::TooLarge {
            path: path.to_path_buf(),
        }),
        Err(err) => Err(read_err(err)),
    }
}

/// serde_json's message, except that type errors (which quote the offending
/// value, possibly a secret) are reduced to their position.
fn json_detail(err: &serde_json::Error) -> String {
    match err.classify() {
        serde_json::error::Category::Data => format!(
            "a value has the wrong type at line {} column {}",
            err.line(),
            err.column()
        ),
        _ => err.to_string(),
    }
}

/// The credential in one `auths` entry; `None` for an empty entry.
fn entry_credential(
    path: &Path,
    key: &str,
    entry: &AuthEntry,
) -> Result<Option<Credential>, AuthError> {
    let bad = |reason| AuthError::BadEntry {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    let present = |field: &Option<String>| field.clone().filter(|value| !value.is_empty());

    let basic = match (present(&entry.auth), present(&entry.username)) {
        (Some(auth), _) => Some(decode_auth(&auth).map_err(bad)?),
        (None, username) => match (username, present(&entry.password)) {
            (Some(username), Some(password)) => Some((username, password)),
            (None, None) => None,
            _ => return Err(bad("it has only one of `username` and `password`")),
        },
    };
    if let Some(token) = present(&entry.identitytoken) {
        return Ok(Some(Credential::IdentityToken(Secret(token))));
    }
    Ok(basic.map(|(username, password)| Credential::Basic {
        username,
        password: Secret(password),
    }))
}

/// Decodes `auth`: base64 of `user:password`, split at the first colon.
fn decode_auth(auth: &str) -> Result<(String, String), &'static str> {
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes = engine
        .decode(auth)
        .map_err(|_| "its `auth` field is not valid base64")?;
    let text = String::from_utf8(bytes).map_err(|_| "its `auth` field does not decode to UTF-8")?;
    match text.split_once(':') {
        Some((username, password)) => Ok((username.to_string(), password.to_string())),
        None => Err("its `auth` field does not decode to `username:password`"),
    }
}

/// What a helper prints on success.
#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `docker-credential-<name> get` for the target.
fn run_helper(
    env: &AuthEnv,
    config: &Path,
    name: &str,
    origin: &str,
    target: &Target,
    looked_in: &mut Vec<String>,
) -> Result<Option<Credential>, AuthError> {
    if name.is_empty() || name.contains(['/', '\\']) {
        return Err(AuthError::BadHelperName {
            path: config.to_path_buf(),
            name: name.to_string(),
        });
    }
    let helper = format!("docker-credential-{name}");
    let exe =
        find_on_path(env.path.as_deref(), &helper).ok_or_else(|| AuthError::HelperNotFound {
            helper: helper.clone(),
            origin: origin.to_string(),
        })?;
    let credential = helper_get(&exe, &target.server_url, HELPER_TIMEOUT)?;
    looked_in.push(match credential {
        Some(_) => format!("{helper} ({origin})"),
        None => format!("{helper} ({origin}; no credentials for {})", target.host),
    });
    Ok(credential)
}

/// The first executable `file` in the directories of `path`.
fn find_on_path(path: Option<&OsStr>, file: &str) -> Option<PathBuf> {
    let file = format!("{file}{}", std::env::consts::EXE_SUFFIX);
    std::env::split_paths(path?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(&file))
        .find(|candidate| is_executable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// Output of one pipe: at most [`MAX_BYTES`], and whether there was more.
type Captured = io::Result<(Vec<u8>, bool)>;

/// Reads a pipe on its own thread, draining whatever exceeds the bound.
fn capture<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Captured> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let result = match pipe {
            None => Ok((bytes, false)),
            Some(pipe) => {
                let mut limited = pipe.take(MAX_BYTES as u64 + 1);
                limited.read_to_end(&mut bytes).and_then(|_| {
                    let more = bytes.len() > MAX_BYTES;
                    bytes.truncate(MAX_BYTES);
                    io::copy(&mut limited.into_inner(), &mut io::sink())?;
                    Ok((bytes, more))
                })
            }
        };
        // The receiver is gone only if we already gave up on the helper.
        let _ = tx.send(result);
    });
    rx
}

/// Runs `<exe> get` with `server_url` on stdin and interprets the result.
fn helper_get(
    exe: &Path,
    server_url: &str,
    timeout: Duration,
) -> Result<Option<Credential>, AuthError> {
    let io_err = |source| AuthError::HelperIo {
        helper: exe.to_path_buf(),
        source,
    };
    let timed_out = || AuthError::HelperTimeout {
        helper: exe.to_path_buf(),
        timeout,
    };
    let mut child = Command::new(exe)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err)?;
    let stdout = capture(child.stdout.take());
    let stderr = capture(child.stderr.take());
    if let Some(mut stdin) = child.stdin.take() {
        // A helper may exit without reading stdin; its exit status tells.
        match stdin.write_all(server_url.as_bytes()) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {}
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io_err(err));
            }
        }
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io_err)? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(timed_out());
        }
        thread::sleep(Duration::from_millis(10));
    };
    let collect = |rx: mpsc::Receiver<Captured>| {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left)
            .map_err(|_| timed_out())?
            .map_err(io_err)
    };
    let out = collect(stdout)?;
    let (err, _) = collect(stderr)?;
    helper_reply(exe, status, out, &err)
}

/// What a helper's exit status and output say: a credential, none
/// ("credentials not found"), or an error.
fn helper_reply(
    exe: &Path,
    status: std::process::ExitStatus,
    (out, out_more): (Vec<u8>, bool),
    err: &[u8],
) -> Result<Option<Credential>, AuthError> {
    if !status.success() {
        let not_found = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes)
                .to_ascii_lowercase()
                .contains("credentials not found")
        };
        if not_found(&out) || not_found(err) {
            return Ok(None);
        }
        return Err(AuthError::HelperFailed {
            helper: exe.to_path_buf(),
            status: status.to_string(),
            stderr: excerpt(err),
        });
    }
    let unusable = |detail: String| AuthError::HelperOutput {
        helper: exe.to_path_buf(),
        detail,
    };
    if out_more {
        return Err(unusable("more than 1 MiB on stdout".to_string()));
    }
    let reply: HelperReply =
        serde_json::from_slice(&out).map_err(|err| unusable(json_detail(&err)))?;
    let HelperReply { username, secret } = reply;
    if secret.is_empty() {
        return Ok(None);
    }
    let secret = Secret(secret);
    Ok(Some(if username == "<token>" {
        Credential::IdentityToken(secret)
    } else {
        Credential::Basic {
            username,
            password: secret,
        }
    }))
}

/// About the first 300 characters of a helper's stderr, control characters
/// blanked, for an error message.
fn excerpt(bytes: &[u8]) -> String {
    const LIMIT: usize = 300;
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return "(empty)".to_string();
    }
    let mut short: String = text
        .chars()
        .take(LIMIT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(LIMIT).is_some() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use std::fs;
    use std::sync::Mutex;

    const PASSWORD: &str = "hunter2-s3cret";
    const DOCKER: &str = "home/.docker/config.json";

    /// Held while writing and running helper scripts: exec'ing a script while
    /// another test thread forks with it still open for writing fails (ETXTBSY).
    static HELPERS: Mutex<()> = Mutex::new(());

    struct Fixture(tempfile::TempDir);

    impl Fixture {
        fn new() -> Fixture {
            Fixture(tempfile::tempdir().unwrap())
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.0.path().join(rel)
        }

        fn write(&self, rel: &str, content: &str) -> PathBuf {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, content).unwrap();
            path
        }

        /// `home/` as $HOME and `bin/` as $PATH; nothing else set.
        fn env(&self) -> AuthEnv {
            AuthEnv {
                home: Some(self.path("home")),
                path: Some(self.path("bin").into_os_string()),
                ..AuthEnv::default()
            }
        }

        /// Writes `bin/docker-credential-<name>`, a script that saves its
        /// stdin to the file `stdin` and then runs `body`.
        fn helper(&self, name: &str, body: &str) {
            use std::os::unix::fs::PermissionsExt;
            let stdin = self.path("stdin");
            let script = format!("#!/bin/sh\ncat > '{}'\n{body}\n", stdin.display());
            let path = self.write(&format!("bin/docker-credential-{name}"), &script);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }

        fn stdin(&self) -> String {
            fs::read_to_string(self.path("stdin")).unwrap()
        }
    }

    /// `{"auths": {key: entry, ...}}`.
    fn auths(entries: &[(&str, &str)]) -> String {
        let body: Vec<String> = entries
            .iter()
            .map(|(k, e)| format!("\"{k}\": {e}"))
            .collect();
        format!(r#"{{"auths": {{{}}}}}"#, body.join(", "))
    }

    /// An entry with `auth` set to base64 of `user:password`.
    fn entry(user: &str, password: &str) -> String {
        let auth = STANDARD.encode(format!("{user}:{password}"));
        format!(r#"{{"auth": "{auth}"}}"#)
    }

    fn basic(username: &str, password: &str) -> Option<Credential> {
        Some(Credential::Basic {
            username: username.to_string(),
            password: Secret::new(password),
        })
    }

    fn find(env: &AuthEnv, registry: &str) -> Option<Credential> {
        find_credentials(env, registry).unwrap().credential
    }

    /// Shell that prints a helper's success reply.
    fn reply(user: &str, secret: &str) -> String {
        format!(r#"printf '%s' '{{"ServerURL":"x","Username":"{user}","Secret":"{secret}"}}'"#)
    }

    #[test]
    fn auth_field_is_base64_of_user_colon_password() {
        let fx = Fixture::new();
        fx.write(
            DOCKER,
            &auths(&[("127.0.0.1:5000", &entry("alice", "pa:ss"))]),
        );
        let lookup = find_credentials(&fx.env(), "127.0.0.1:5000").unwrap();
        assert_eq!(lookup.credential, basic("alice", "pa:ss"));
        let place = format!(
            "{} (auths entry \"127.0.0.1:5000\")",
            fx.path(DOCKER).display()
        );
        assert_eq!(lookup.looked_in, [place]);
    }

    #[test]
    fn username_password_fields_and_identity_token() {
        let fx = Fixture::new();
        let fields = r#"{"username": "bob", "password": "pw"}"#;
        fx.write(
            DOCKER,
            &auths(&[("a.io", fields), ("b.io", r#"{"identitytoken": "tok"}"#)]),
        );
        assert_eq!(find(&fx.env(), "a.io"), basic("bob", "pw"));
        let token = Credential::IdentityToken(Secret::new("tok"));
        assert_eq!(find(&fx.env(), "b.io"), Some(token));
    }

    #[test]
    fn keys_are_compared_by_host_and_port() {
        for key in [
            "https://reg.io:5000",
            "reg.io:5000/v2/",
            "http://REG.io:5000/v1/",
        ] {
            let fx = Fixture::new();
            fx.write(DOCKER, &auths(&[(key, &entry("u", "p"))]));
            assert_eq!(find(&fx.env(), "reg.io:5000"), basic("u", "p"), "{key}");
            let lookup = find_credentials(&fx.env(), "reg.io").unwrap();
            assert_eq!(lookup.credential, None);
            assert!(lookup.looked_in[0].ends_with("(no entry for reg.io)"));
        }
    }

    #[test]
    fn docker_hub_names_match_the_index_key() {
        for key in [
            "https://index.docker.io/v1/",
            "docker.io",
            "index.docker.io",
        ] {
            let fx = Fixture::new();
            fx.write(DOCKER, &auths(&[(key, &entry("hub", "p"))]));
            for registry in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
                assert_eq!(
                    find(&fx.env(), registry),
                    basic("hub", "p"),
                    "{key} {registry}"
                );
            }
        }
    }

    #[test]
    fn docker_config_overrides_home() {
        let fx = Fixture::new();
        fx.write(DOCKER, &auths(&[("r.io", &entry("home", "p"))]));
        fx.write("dc/config.json", &auths(&[("r.io", &entry("dc", "p"))]));
        let env = AuthEnv {
            docker_config: Some(fx.path("dc")),
            ..fx.env()
        };
        assert_eq!(find(&env, "r.io"), basic("dc", "p"));
    }

    #[test]
    fn registry_auth_file_comes_first_and_missing_files_are_listed() {
        let fx = Fixture::new();
        fx.write(DOCKER, &auths(&[("r.io", &entry("docker", "p"))]));
        let file = fx.write("auth.json", &auths(&[("r.io", &entry("podman", "p"))]));
        let env = AuthEnv {
            registry_auth_file: Some(file),
            ..fx.env()
        };
        assert_eq!(find(&env, "r.io"), basic("podman", "p"));

        let env = AuthEnv {
            registry_auth_file: Some(fx.path("missing.json")),
            xdg_runtime_dir: Some(fx.path("run")),
            ..fx.env()
        };
        let lookup = find_credentials(&env, "other.io").unwrap();
        assert_eq!(lookup.credential, None);
        let shown = |rel: &str| fx.path(rel).display().to_string();
        let expected = [
            format!("{} (not found)", shown("missing.json")),
            format!("{} (no entry for other.io)", shown(DOCKER)),
            format!("{} (not found)", shown("run/containers/auth.json")),
            format!("{} (not found)", shown("home/.config/containers/auth.json")),
        ];
        assert_eq!(lookup.looked_in, expected);
    }

    #[test]
    fn podman_files_in_xdg_runtime_dir_then_home() {
        let fx = Fixture::new();
        let (run, home) = (entry("run", "p"), entry("home", "p"));
        fx.write("run/containers/auth.json", &auths(&[("a.io", &run)]));
        let home_file = "home/.config/containers/auth.json";
        fx.write(home_file, &auths(&[("a.io", &home), ("b.io", &home)]));
        let env = AuthEnv {
            xdg_runtime_dir: Some(fx.path("run")),
            ..fx.env()
        };
        assert_eq!(find(&env, "a.io"), basic("run", "p"));
        assert_eq!(find(&env, "b.io"), basic("home", "p"));
    }

    #[test]
    fn cred_helpers_win_and_get_the_server_url() {
        let _guard = HELPERS.lock().unwrap_or_else(|e| e.into_inner());
        let fx = Fixture::new();
        fx.helper("fake", &reply("helper-user", "helper-pw"));
        let file_entry = entry("file-user", "p");
        let config = format!(
            r#"{{"auths": {{"127.0.0.1:5000": {file_entry}}},
                "credHelpers": {{"127.0.0.1:5000": "fake", "docker.io": "fake"}}}}"#
        );
        fx.write(DOCKER, &config);
        let lookup = find_credentials(&fx.env(), "127.0.0.1:5000").unwrap();
        assert_eq!(lookup.credential, basic("helper-user", "helper-pw"));
        assert_eq!(fx.stdin(), "127.0.0.1:5000");
        assert!(lookup.looked_in[0].starts_with("docker-credential-fake (credHelpers in "));

        assert_eq!(
            find(&fx.env(), "docker.io"),
            basic("helper-user", "helper-pw")
        );
        assert_eq!(fx.stdin(), "https://index.docker.io/v1/");
    }

    #[test]
    fn creds_store_is_used_after_an_empty_auths_entry() {
        let _guard = HELPERS.lock().unwrap_or_else(|e| e.into_inner());
        let fx = Fixture::new();
        fx.helper("store", &reply("<token>", "refresh"));
        fx.write(
            DOCKER,
            r#"{"auths": {"ghcr.io": {}}, "credsStore": "store"}"#,
        );
        let lookup = find_credentials(&fx.env(), "ghcr.io").unwrap();
        let token = Credential::IdentityToken(Secret::new("refresh"));
        assert_eq!(lookup.credential, Some(token));
        assert_eq!(fx.stdin(), "ghcr.io");
        assert!(lookup.looked_in[0].ends_with("(empty entry for ghcr.io)"));
        assert!(lookup.looked_in[1].starts_with("docker-credential-store (credsStore in "));
    }

    #[test]
    fn helper_without_credentials_falls_through_to_the_next_source() {
        let _guard = HELPERS.lock().unwrap_or_else(|e| e.into_inner());
        let fx = Fixture::new();
        fx.helper(
            "fake",
            "echo 'credentials not found in native keychain'\nexit 1",
        );
        fx.write(DOCKER, r#"{"credsStore": "fake"}"#);
        let home_file = "home/.config/containers/auth.json";
        fx.write(home_file, &auths(&[("q.io", &entry("podman", "p"))]));
        let lookup = find_credentials(&fx.env(), "q.io").unwrap();
        assert_eq!(lookup.credential, basic("podman", "p"));
        assert!(lookup.looked_in[1].ends_with("; no credentials for q.io)"));
    }

    #[test]
    fn helper_failure_names_the_helper_and_shows_only_stderr() {
        let _guard = HELPERS.lock().unwrap_or_else(|e| e.into_inner());
        let fx = Fixture::new();
        fx.helper(
            "fake",
            &format!("echo {PASSWORD}\necho 'keyring is locked' >&2\nexit 3"),
        );
        fx.write(DOCKER, r#"{"credHelpers": {"q.io": "fake"}}"#);
        let err = find_credentials(&fx.env(), "q.io").unwrap_err();
        assert!(matches!(err, AuthError::HelperFailed { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("docker-credential-fake"), "{message}");
        assert!(message.contains("keyring is locked"), "{message}");
        assert!(!message.contains(PASSWORD) && !format!("{err:?}").contains(PASSWORD));
    }

    #[test]
    fn helper_that_hangs_is_killed() {
        let _guard = HELPERS.lock().unwrap_or_else(|e| e.into_inner());
        let fx = Fixture::new();
        fx.helper("slow", "exec sleep 10");
        let start = Instant::now();
        let exe = fx.path("bin/docker-credential-slow");
        let err = helper_get(&exe, "q.io", Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, AuthError::HelperTimeout { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn helper_not_on_path_or_with_a_path_for_a_name_is_an_error() {
        let fx = Fixture::new();
        fx.write(DOCKER, r#"{"credsStore": "nothere"}"#);
        let message = find_credentials(&fx.env(), "q.io").unwrap_err().to_string();
        assert!(message.contains("`docker-credential-nothere`"), "{message}");
        assert!(message.contains("(from credsStore in "), "{message}");
        assert!(message.ends_with("is not on PATH"), "{message}");

        fx.write(DOCKER, r#"{"credsStore": "../../bin/sh"}"#);
        let err = find_credentials(&fx.env(), "q.io").unwrap_err();
        assert!(matches!(err, AuthError::BadHelperName { .. }), "{err:?}");
    }

    #[test]
    fn malformed_or_oversized_files_are_errors_naming_the_file() {
        let fx = Fixture::new();
        let path = fx.write(DOCKER, r#"{"auths": {"#).display().to_string();
        let message = find_credentials(&fx.env(), "q.io").unwrap_err().to_string();
        assert!(
            message.contains(&path) && message.contains("line 1"),
            "{message}"
        );

        fx.write(DOCKER, &" ".repeat(MAX_BYTES + 1));
        let err = find_credentials(&fx.env(), "q.io").unwrap_err();
        assert!(matches!(err, AuthError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains(&path));
    }

    #[test]
    fn bad_entries_name_file_and_key_but_not_the_value() {
        let no_colon = format!(r#"{{"auth": "{}"}}"#, STANDARD.encode(PASSWORD));
        let bad_base64 = format!(r#"{{"auth": "{PASSWORD}!!"}}"#);
        let wrong_type = format!(r#""{PASSWORD}""#);
        for bad in [no_colon, bad_base64, wrong_type] {
            let fx = Fixture::new();
            let path = fx.write(DOCKER, &auths(&[("q.io", &bad)]));
            let err = find_credentials(&fx.env(), "q.io").unwrap_err();
            let message = err.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(
                !message.contains(PASSWORD) && !message.contains(&bad),
                "{message}"
            );
            assert!(!format!("{err:?}").contains(PASSWORD), "{err:?}");
            if let AuthError::BadEntry { key, .. } = &err {
                assert_eq!(key, "q.io");
                assert!(message.contains("`q.io`"), "{message}");
            }
        }
    }

    #[test]
    fn secrets_never_show_in_debug_display_or_looked_in() {
        let fx = Fixture::new();
        fx.write(DOCKER, &auths(&[("q.io", &entry("alice", PASSWORD))]));
        let lookup = find_credentials(&fx.env(), "q.io").unwrap();
        assert_eq!(lookup.credential, basic("alice", PASSWORD));
        let debug = format!("{lookup:?}");
        assert!(
            !debug.contains(PASSWORD) && debug.contains("<redacted>"),
            "{debug}"
        );
        let secret = Secret::new(PASSWORD);
        assert_eq!(format!("{secret} {secret:?}"), "<redacted> <redacted>");
        assert_eq!(secret.expose(), PASSWORD);
    }
}
