//! Image references (`host[:port]/repo[:tag][@digest]`): parsed with the
//! grammar and Docker Hub normalisation of the distribution project's
//! `reference` package, by hand (no regex: compiling `oci-client`'s reference
//! regex cost ~30 ms per process, half of a re-push; see the design chapter).
//! A test checks this parser against `oci-client`'s on a corpus. The digest
//! must be a valid sha256 digest before any URL is built from it.

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
        let err = |reason: &str| ReferenceError {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|_| err("the part after `@` is not a sha256 digest"))?;
                (r, Some(digest))
            }
            None => (s, None),
        };
        // The tag is after the last `:` that follows the last `/`.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(err(
                    "the tag must be 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`",
                ));
            }
        }
        if name.len() > 255 {
            return Err(err("the name is longer than 255 characters"));
        }
        // A first component with `.` or `:`, or `localhost`, is a registry.
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first, path.to_string())
            }
            _ => ("docker.io", name.to_string()),
        };
        if !valid_registry(registry) {
            return Err(err("the registry must be HOST or HOST:PORT"));
        }
        let registry = if registry == "index.docker.io" {
            "docker.io"
        } else {
            registry
        };
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err("repository names must be lowercase"));
        }
        if path.is_empty() || !path.split('/').all(valid_component) {
            return Err(err(
                "each part of the repository name must be lowercase letters and digits, separated by `.`, `_`, `__` or dashes",
            ));
        }
        let repository = if registry == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(ImageRef {
            registry: registry.to_string(),
            repository,
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

use crate::oci::valid_tag;

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A host name or IPv4 address (or `[IPv6]`), with an optional port.
fn valid_registry(r: &str) -> bool {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, after)) => {
                if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                    return false;
                }
                ("x", after.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match r.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
    };
    port_ok && !host.is_empty() && host.split('.').all(label_ok)
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
        let r = ImageRef::parse("[::1]:5000/app:1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("[::1]:5000", "app")
        );
        let r = ImageRef::parse("127.0.0.1:5000/acme/base").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "acme/base");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("localhost:5000/base@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), d);
    }

    /// The same names and normalisation as `oci-client` (which follows the
    /// distribution project's grammar), on references of every shape.
    #[test]
    fn agrees_with_oci_client() {
        let d = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let corpus = [
            "busybox".to_string(),
            "busybox:1.36".into(),
            "library/busybox".into(),
            "docker.io/busybox".into(),
            "index.docker.io/library/busybox:latest".into(),
            "opensuse/leap:15.3".into(),
            "test.com:tag".into(),
            "test.com:5000".into(),
            "foo_bar.com:8080".into(),
            "localhost/app".into(),
            "localhost:5000/app:v1".into(),
            "127.0.0.1:5000/a/b/c:1.0".into(),
            "ghcr.io/acme/tools/imgc:v0.1.0-rc.1".into(),
            "registry.example.com/a.b/c_d/e__f/g-h--i:T_1.x".into(),
            format!("quay.io/org/app@{d}"),
            format!("quay.io/org/app:1.0@{d}"),
            format!("app@{d}"),
        ];
        for r in &corpus {
            let ours = ImageRef::parse(r).unwrap_or_else(|e| panic!("{e}"));
            let theirs: oci_client::Reference = r.parse().unwrap_or_else(|e| panic!("{r}: {e:?}"));
            assert_eq!(ours.registry, theirs.registry(), "{r}");
            assert_eq!(ours.repository, theirs.repository(), "{r}");
            assert_eq!(
                ours.digest.as_ref().map(|d| d.as_str()),
                theirs.digest(),
                "{r}"
            );
            let tag = theirs.tag().or(if theirs.digest().is_none() {
                Some("latest")
            } else {
                None
            });
            assert_eq!(ours.tag.as_deref(), tag, "{r}");
        }
        for bad in [
            "",
            "a/b:",
            "a//b",
            "a/-b",
            "host:5000/",
            ":tag",
            "a/b@sha256:xyz",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
            assert!(
                bad.parse::<oci_client::Reference>().is_err(),
                "oci-client accepts {bad}"
            );
        }
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "acme/UPPER",
            "a/b@sha256:xyz",
            "host:5000/x@md5:abcd",
            "a/b:",
            "a/b:-x",
            "host:port/x",
            "a//b",
            "a/-b",
            "a/b__-c",
            "host:5000/",
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }
}
