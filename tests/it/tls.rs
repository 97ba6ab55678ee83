//! Registry fixtures with TLS and basic auth: a `docker-registry` (CNCF
//! distribution 2.8) serving HTTPS with a certificate for 127.0.0.1 and
//! localhost signed by a CA made for the test, optionally behind htpasswd.
//!
//! [`write_tls_files`] makes the CA and server certificate (rcgen, ECDSA
//! P-256) as PEM files; [`write_htpasswd`] writes a bcrypt htpasswd file (the
//! registry accepts bcrypt entries only). [`TlsRegistry`] starts a registry
//! with both; [`PlainRegistry`] is the same without TLS. Each registry lives
//! in its own temporary folder and is killed on drop.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tempfile::TempDir;

/// The htpasswd realm the registries use.
pub const REALM: &str = "imgc-test";

// ------------------------------------------------------------ certificates and htpasswd

/// The PEM files [`write_tls_files`] wrote.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate: what a client is given to trust (`--ca-file`).
    pub ca_cert: PathBuf,
    /// The server certificate (SANs: IP 127.0.0.1, DNS localhost), signed by the CA.
    pub server_cert: PathBuf,
    /// The server's private key (PKCS#8).
    pub server_key: PathBuf,
    /// A client certificate signed by the CA (`client.cert`) and its key
    /// (`client.key`), for registries that ask for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Makes a fresh self-signed CA and a server certificate for 127.0.0.1 and
/// localhost signed by it, and writes them into `dir` as `ca.pem`,
/// `server.pem` and `server-key.pem`.
pub fn write_tls_files(dir: &Path) -> TlsFiles {
    write_tls_files_for(dir, "127.0.0.1")
}

/// [`write_tls_files`] for a server at `ip` (and localhost).
pub fn write_tls_files_for(dir: &Path, ip: &str) -> TlsFiles {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "imgc test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let ca = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec![ip.to_string(), "localhost".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, ip);
    params.use_authority_key_identifier_extension = true;
    let server_cert = params
        .signed_by(&server_key, &ca)
        .expect("sign the server certificate");

    let client_key = KeyPair::generate().expect("client key");
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "imgc test client");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = params
        .signed_by(&client_key, &ca)
        .expect("sign the client certificate");
    let client = (dir.join("client.cert"), dir.join("client.key"));
    fs::write(&client.0, client_cert.pem()).unwrap();
    fs::write(&client.1, client_key.serialize_pem()).unwrap();

    let files = TlsFiles {
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client: Some(client),
    };
    fs::write(&files.ca_cert, ca_cert.pem()).unwrap();
    fs::write(&files.server_cert, server_cert.pem()).unwrap();
    fs::write(&files.server_key, server_key.serialize_pem()).unwrap();
    files
}

/// One htpasswd line `user:$2y$04$...` (bcrypt at the lowest cost, to keep
/// tests fast; `$2y$` is what Apache's `htpasswd -B` writes).
pub fn htpasswd_line(user: &str, password: &str) -> String {
    let hash = bcrypt::hash_with_result(password, 4).expect("bcrypt");
    format!("{user}:{}", hash.format_for_version(bcrypt::Version::TwoY))
}

/// Writes an htpasswd file with one user.
pub fn write_htpasswd(path: &Path, user: &str, password: &str) {
    crate::support::register_login(user, password);
    fs::write(path, format!("{}\n", htpasswd_line(user, password))).unwrap();
}

// ------------------------------------------------------------ registries

/// A `docker-registry` serving HTTPS on a free 127.0.0.1 port, its
/// certificate signed by a CA of its own ([`TlsRegistry::ca_file`]).
pub struct TlsRegistry {
    server: Server,
    files: TlsFiles,
}

impl TlsRegistry {
    /// Starts one; with `Some((user, password))` it asks for basic auth
    /// (realm [`REALM`]) and knows that one user.
    pub fn start(htpasswd: Option<(&str, &str)>) -> TlsRegistry {
        let auth = match htpasswd {
            Some((u, p)) => Auth::Htpasswd(u, p),
            None => Auth::None,
        };
        TlsRegistry::start_with(Ipv4Addr::LOCALHOST, None, auth, write_tls_files)
    }

    /// Starts one on `ip` (and `port`, else a free one) with the TLS files
    /// `make` writes into the registry's folder.
    fn start_with(
        ip: Ipv4Addr,
        port: Option<u16>,
        auth: Auth<'_>,
        make: impl Fn(&Path) -> TlsFiles,
    ) -> TlsRegistry {
        let mut files = None;
        let server = Server::start_at(ip, port, auth, |dir| {
            let f = make(dir);
            let yaml = tls_yaml(&f);
            files = Some(f);
            yaml
        });
        TlsRegistry {
            server,
            files: files.unwrap(),
        }
    }

    /// "127.0.0.1:PORT".
    pub fn host_port(&self) -> String {
        self.server.host_port()
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The CA certificate (PEM) the server's certificate is signed by.
    pub fn ca_file(&self) -> &Path {
        &self.files.ca_cert
    }

    /// All the PEM files.
    pub fn tls_files(&self) -> &TlsFiles {
        &self.files
    }

    /// Its temporary folder: config, PEM files, htpasswd, log, storage.
    pub fn dir(&self) -> &Path {
        self.server.dir.path()
    }

    /// What the registry has logged so far.
    pub fn log(&self) -> String {
        self.server.log()
    }
}

impl TlsRegistry {
    /// A registry with the self-signed certificate Docker's documentation
    /// shows how to make (`openssl req -x509 -newkey rsa -nodes ...
    /// -addext subjectAltName=...`): a CA certificate (`CA:TRUE`) served as
    /// the leaf. `ca_file()` is that certificate.
    pub fn start_docker_docs_self_signed() -> TlsRegistry {
        TlsRegistry::start_with(Ipv4Addr::LOCALHOST, None, Auth::None, |dir| {
            let f = TlsFiles {
                ca_cert: dir.join("domain.crt"),
                server_cert: dir.join("domain.crt"),
                server_key: dir.join("domain.key"),
                client: None,
            };
            crate::support::require("openssl");
            let out = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                ])
                .args(["-subj", "/CN=127.0.0.1"])
                .args(["-addext", "subjectAltName=IP:127.0.0.1"])
                .arg("-keyout")
                .arg(&f.server_key)
                .arg("-out")
                .arg(&f.server_cert)
                .stdin(Stdio::null())
                .output()
                .expect("openssl");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{err}");
            f
        })
    }

    /// A registry that asks every client for a certificate signed by its CA
    /// (`tls.clientcas`); `tls_files().client` is one.
    pub fn start_with_client_certificates() -> TlsRegistry {
        let mut files = None;
        let server = Server::start(None, |dir| {
            let f = write_tls_files(dir);
            let yaml =
                tls_yaml(&f).replace("}", &format!(", clientcas: [{}]}}", yaml_path(&f.ca_cert)));
            files = Some(f);
            yaml
        });
        TlsRegistry {
            server,
            files: files.unwrap(),
        }
    }

    /// A registry on `ip`:443 with token auth whose challenges name `realm`.
    /// Binding port 443 needs root (or CAP_NET_BIND_SERVICE).
    pub fn start_token_auth_on_443(ip: Ipv4Addr, realm: &str) -> TlsRegistry {
        // Distribution checks tokens against this bundle (none come here).
        let bundle_dir = tempfile::tempdir().unwrap();
        let bundle = write_tls_files_for(bundle_dir.path(), "127.0.0.1").ca_cert;
        let auth = Auth::Token {
            realm,
            bundle: &bundle,
        };
        TlsRegistry::start_with(ip, Some(443), auth, |dir| {
            write_tls_files_for(dir, &ip.to_string())
        })
    }
}

/// A `docker-registry` serving plain HTTP on a free 127.0.0.1 port.
pub struct PlainRegistry {
    server: Server,
}

impl PlainRegistry {
    pub fn start() -> PlainRegistry {
        PlainRegistry {
            server: Server::start(None, |_| String::new()),
        }
    }

    /// One that asks for basic auth (realm [`REALM`]) and knows one user.
    pub fn start_with_auth(user: &str, password: &str) -> PlainRegistry {
        PlainRegistry {
            server: Server::start(Some((user, password)), |_| String::new()),
        }
    }

    /// "127.0.0.1:PORT".
    pub fn host_port(&self) -> String {
        self.server.host_port()
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub fn dir(&self) -> &Path {
        self.server.dir.path()
    }

    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// The registry process and its folder. Killed on drop.
struct Server {
    child: Child,
    ip: Ipv4Addr,
    port: u16,
    tls: bool,
    dir: TempDir,
}

/// How a registry asks for credentials.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    /// Basic auth for one user (realm [`REALM`]).
    Htpasswd(&'a str, &'a str),
    /// Token auth: challenges name this realm (service and issuer "test";
    /// tokens are checked against `bundle`, a PEM certificate file).
    Token {
        realm: &'a str,
        bundle: &'a Path,
    },
}

impl Server {
    /// Starts a registry; `tls_yaml` may write files into the folder and
    /// returns what to add to the `http:` map (empty for plain HTTP).
    fn start(htpasswd: Option<(&str, &str)>, tls_yaml: impl FnMut(&Path) -> String) -> Server {
        let auth = match htpasswd {
            Some((u, p)) => Auth::Htpasswd(u, p),
            None => Auth::None,
        };
        Server::start_at(Ipv4Addr::LOCALHOST, None, auth, tls_yaml)
    }

    /// Starts a registry on `ip`, on `port` (else a free one).
    fn start_at(
        ip: Ipv4Addr,
        port: Option<u16>,
        auth: Auth<'_>,
        mut tls_yaml: impl FnMut(&Path) -> String,
    ) -> Server {
        let mut last = String::new();
        // A port free a moment ago may be taken before the registry binds it.
        for _attempt in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("imgc-registry-")
                .tempdir()
                .expect("temp dir");
            let port = port.unwrap_or_else(free_port);
            let storage = dir.path().join("storage");
            fs::create_dir(&storage).unwrap();
            let tls = tls_yaml(dir.path());
            let auth = match auth {
                Auth::Htpasswd(user, password) => {
                    let file = dir.path().join("htpasswd");
                    write_htpasswd(&file, user, password);
                    format!(
                        "auth: {{htpasswd: {{realm: {REALM}, path: {}}}}}\n",
                        yaml_path(&file)
                    )
                }
                Auth::Token { realm, bundle } => format!(
                    "auth: {{token: {{realm: '{realm}', service: test, issuer: test, rootcertbundle: {}}}}}\n",
                    yaml_path(bundle)
                ),
                Auth::None => String::new(),
            };
            let config = format!(
                "version: 0.1\n\
                 log: {{level: info, accesslog: {{disabled: true}}}}\n\
                 storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}, \
                 maintenance: {{uploadpurging: {{enabled: false}}}}}}\n\
                 http: {{addr: '{ip}:{port}', secret: test-secret{tls}}}\n\
                 health: {{storagedriver: {{enabled: false}}}}\n\
                 {auth}",
                yaml_path(&storage)
            );
            let config_path = dir.path().join("config.yml");
            fs::write(&config_path, config).unwrap();
            let log = fs::File::create(dir.path().join("registry.log")).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run docker-registry (apt-get install docker-registry): {e}")
                });
            let mut server = Server {
                child,
                ip,
                port,
                tls: !tls.is_empty(),
                dir,
            };
            match server.wait_ready(Duration::from_secs(20)) {
                Ok(()) => return server,
                Err(why) => {
                    last = format!("{why}\n--- registry log ---\n{}", server.log());
                    if !last.contains("address already in use") {
                        panic!("docker-registry did not start on port {port}: {last}");
                    }
                }
            }
        }
        panic!("docker-registry did not start after 5 attempts: {last}");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    fn host_port(&self) -> String {
        self.addr().to_string()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Ready when it logged that it listens on our port and answers there:
    /// plain HTTP with 200 or 401 on `GET /v2/`; HTTPS with the 400 Go's
    /// server gives a plain-HTTP request on a TLS port (no TLS client needed).
    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let listening = format!("listening on {}", self.addr());
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("docker-registry exited: {status}"));
            }
            if self.log().contains(&listening) {
                match (plain_get_status(self.addr(), "/v2/"), self.tls) {
                    (Some(200 | 401), false) | (Some(400), true) => return Ok(()),
                    (Some(code), _) => return Err(format!("GET /v2/ answered {code}")),
                    (None, _) => {}
                }
            }
            if Instant::now() > deadline {
                return Err(format!("not serving after {limit:?}"));
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `tls:` entry of a registry's `http:` map, for these files.
fn tls_yaml(f: &TlsFiles) -> String {
    format!(
        ", tls: {{certificate: {}, key: {}}}",
        yaml_path(&f.server_cert),
        yaml_path(&f.server_key)
    )
}

/// A path as a single-quoted YAML scalar.
fn yaml_path(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "''"))
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// The status of a plain-HTTP `GET path`, or None if nothing answers yet.
fn plain_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

// ------------------------------------------------------------ a TLS responder

/// An HTTPS server on a free 127.0.0.1 port (certificate from
/// [`write_tls_files`]) that answers every request with one fixed response:
/// what a registry cannot be made to send (a redirect from HTTPS to plain
/// HTTP). Stops accepting when dropped.
pub struct TlsResponder {
    files: TlsFiles,
    port: u16,
    _dir: TempDir,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TlsResponder {
    /// Serves `response` (a whole HTTP/1.1 response, head and body).
    pub fn start(response: &str) -> TlsResponder {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = tempfile::tempdir().unwrap();
        let files = write_tls_files(dir.path());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.server_cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&files.server_key).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let config = std::sync::Arc::new(config);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop2, response) = (stop.clone(), response.to_string());
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                    continue;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = tls.write_all(response.as_bytes());
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        TlsResponder {
            files,
            port,
            _dir: dir,
            stop,
        }
    }

    /// "127.0.0.1:PORT".
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The CA that signed its certificate.
    pub fn ca_file(&self) -> &Path {
        &self.files.ca_cert
    }
}

impl Drop for TlsResponder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
    }
}
