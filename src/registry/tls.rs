//! TLS trust for registries, per registry: the system's roots, the
//! `--ca-file` certificates, and the certificate folders podman, skopeo and
//! docker read (`<root>/<host[:port]>/*.crt` as CAs, `*.cert` with the
//! `*.key` of the same name as a client certificate), where the roots are
//! `~/.config/containers/certs.d`, `/etc/containers/certs.d` and
//! `/etc/docker/certs.d` unless the caller names others.
//!
//! A self-signed certificate made as Docker's documentation shows is a CA
//! certificate (`CA:TRUE`) served as the leaf, which WebPKI refuses
//! (`CaUsedAsEndEntity`). It is accepted exactly when the presented leaf is
//! byte-identical to a certificate the user trusted for that registry and
//! its names match the host: a pin, which is as strong as a chain.

use super::RegistryError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest certificate or key file read.
const MAX_PEM: u64 = 1024 * 1024;

/// The certificate folder roots podman, skopeo and docker read, in order.
pub fn default_certs_dirs(home: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(h) = home {
        dirs.push(h.join(".config/containers/certs.d"));
    }
    dirs.push(PathBuf::from("/etc/containers/certs.d"));
    dirs.push(PathBuf::from("/etc/docker/certs.d"));
    dirs
}

fn ca_error(path: &Path, reason: impl Into<String>) -> RegistryError {
    RegistryError::CaFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, RegistryError> {
    crate::fsx::read_bounded(path, MAX_PEM, crate::fsx::Links::Follow)
        .map_err(|e| ca_error(path, e.to_string()))
}

/// The certificates of a PEM file; an error when it holds none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, RegistryError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_error(path, format!("it is not valid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(ca_error(path, "it holds no PEM certificate"));
    }
    Ok(certs)
}

/// What the certificate folders hold for one registry.
#[derive(Default)]
pub struct HostCerts {
    /// CA certificates (`*.crt`).
    pub cas: Vec<CertificateDer<'static>>,
    /// A client certificate chain and its key (`*.cert` + `*.key`).
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

/// Reads `<root>/<host>/` of every root (missing folders are skipped).
pub fn host_certs(roots: &[PathBuf], host: &str) -> Result<HostCerts, RegistryError> {
    let mut out = HostCerts::default();
    for root in roots {
        let dir = root.join(host);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            match f.extension().and_then(|x| x.to_str()) {
                Some("crt") => out.cas.extend(load_certs(&f)?),
                Some("cert") if out.identity.is_none() => {
                    let key_path = f.with_extension("key");
                    if !key_path.is_file() {
                        return Err(ca_error(
                            &f,
                            format!("its key `{}` is missing", key_path.display()),
                        ));
                    }
                    let key = PrivateKeyDer::from_pem_slice(&read_pem(&key_path)?)
                        .map_err(|e| ca_error(&key_path, format!("no private key in it ({e})")))?;
                    out.identity = Some((load_certs(&f)?, key));
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The rustls configuration for one registry: `extra` CAs (trusted as
/// roots and as exact leaves), and a client identity if any.
pub fn client_config(
    extra: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, super::RegistryError> {
    let setup = |what: &'static str| {
        move |e: rustls::Error| super::RegistryError::Setup {
            what,
            source: Box::new(e),
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra.clone(), provider.clone())
            .map_err(setup("the certificate verifier"))?;
    let verifier = PinnedLeaf {
        inner,
        pinned: extra,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(setup("TLS protocol versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(setup("the client certificate"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The platform verifier, plus: a leaf byte-identical to a trusted
/// certificate, whose names match the server's, is accepted.
#[derive(Debug)]
struct PinnedLeaf {
    inner: rustls_platform_verifier::Verifier,
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for PinnedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let Err(e) = verdict else {
            return verdict;
        };
        if !self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Err(e);
        }
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
