//! Image references (`host[:port]/repo[:tag][@digest]`), parsed by the
//! `oci-client` crate (Docker Hub normalisation included) and checked again
//! here: the digest must be a valid sha256 digest before any URL is built.

use crate::oci::Digest;
use std::fmt;

/// A reference failed to parse.
#[derive(Debug, thiserror::Error)]
#[error("`{reference}` is not a valid image reference: {reason}")]
pub struct ReferenceError {
    /// The text given.
    pub reference: String,
    /// Why.
    pub reason: String,
}

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageRef {
    /// The registry as named (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The repository (`library/debian`).
    pub repository: String,
    /// The tag, if any (`latest` when neither tag nor digest is given).
    pub tag: Option<String>,
    /// The digest, if any.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses a reference; `docker.io` is implied and `library/` added for
    /// official images, as Docker does.
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        let err = |reason: String| ReferenceError {
            reference: s.to_string(),
            reason,
        };
        let parsed: oci_client::Reference = s.parse().map_err(|e| err(format!("{e}")))?;
        if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err("repository names must be lowercase".into()));
        }
        let digest = match parsed.digest() {
            Some(d) => Some(
                d.parse::<Digest>()
                    .map_err(|_| err(format!("`{d}` is not a sha256 digest")))?,
            ),
            None => None,
        };
        let tag = match (parsed.tag(), &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(ImageRef {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
            tag,
            digest,
        })
    }

    /// The host[:port] the API is served from (Docker Hub's differs from its name).
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository, another tag.
    pub fn with_tag(&self, tag: &str) -> ImageRef {
        ImageRef {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same repository, by digest.
    pub fn with_digest(&self, digest: &Digest) -> ImageRef {
        ImageRef {
            tag: None,
            digest: Some(digest.clone()),
            ..self.clone()
        }
    }

    /// What goes in a manifest URL: the digest if known, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_docker_hub_names() {
        let r = ImageRef::parse("debian:bookworm-slim").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/debian");
        assert_eq!(r.tag.as_deref(), Some("bookworm-slim"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.to_string(), "docker.io/library/debian:bookworm-slim");
        let r = ImageRef::parse("127.0.0.1:5000/acme/base").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "acme/base");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("localhost:5000/base@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), d);
    }

    #[test]
    fn rejects_bad_references() {
        for bad in ["", "UPPER/case", "a/b@sha256:xyz", "host:5000/x@md5:abcd"] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }
}
