//! `oci:DIR[:TAG][@sha256:…]`, the one way a local OCI image layout is
//! named on the command line and in a spec's `base`, and the one rule for
//! picking an entry of its `index.json`.

use super::{Descriptor, Digest, Index, ANNOTATION_REF_NAME};
use std::path::PathBuf;

/// A parsed `oci:` reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutRef {
    /// The layout folder, as written.
    pub dir: PathBuf,
    /// `:TAG`: what follows the last `:` when it holds no `/`.
    pub tag: Option<String>,
    /// `@sha256:…`: a document of the layout, by digest.
    pub digest: Option<Digest>,
}

/// Why an `oci:` reference does not parse.
#[derive(Debug, thiserror::Error)]
#[error("`{reference}` is not a layout reference: {reason} (expected oci:DIR, oci:DIR:TAG or oci:DIR@sha256:…)")]
pub struct LayoutRefError {
    /// The text given.
    pub reference: String,
    /// Why.
    pub reason: &'static str,
}

impl LayoutRef {
    /// Parses `oci:DIR`, `oci:DIR:TAG`, `oci:DIR@DIGEST` or
    /// `oci:DIR:TAG@DIGEST`.
    pub fn parse(s: &str) -> Result<LayoutRef, LayoutRefError> {
        let bad = |reason| LayoutRefError {
            reference: s.to_string(),
            reason,
        };
        let rest = s
            .strip_prefix("oci:")
            .ok_or_else(|| bad("it does not start with `oci:`"))?;
        let (rest, digest) = match rest.rsplit_once('@') {
            Some((r, d)) if d.starts_with("sha256:") => {
                let digest: Digest = d
                    .parse()
                    .map_err(|_| bad("the digest is not a valid sha256 digest"))?;
                (r, Some(digest))
            }
            _ => (rest, None),
        };
        let (dir, tag) = match rest.rsplit_once(':') {
            Some((dir, tag)) if !tag.is_empty() && !tag.contains('/') && !dir.is_empty() => {
                (dir, Some(tag.to_string()))
            }
            _ => (rest, None),
        };
        if dir.is_empty() {
            return Err(bad("it names no folder"));
        }
        Ok(LayoutRef {
            dir: PathBuf::from(dir),
            tag,
            digest,
        })
    }
}

/// Why no entry of an `index.json` was picked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    /// No entry has the tag.
    #[error("it has no tag `{tag}` (tags: {available})")]
    NoSuchTag {
        /// The tag asked for.
        tag: String,
        /// The tags present, or `none`.
        available: String,
    },
    /// No tag was given and the entries differ.
    #[error("it holds several images and none is tagged `latest`; name one with oci:DIR:TAG (tags: {available})")]
    Ambiguous {
        /// The tags present, or `none`.
        available: String,
    },
}

/// Picks an entry of a layout's `index.json`: the one tagged `tag`; without
/// a tag, the only entry (or the only digest, when every entry points at
/// the same document), else the one tagged `latest`.
pub fn select_entry<'a>(
    index: &'a Index,
    tag: Option<&str>,
) -> Result<&'a Descriptor, SelectError> {
    let tag_of = |d: &Descriptor| d.annotations.get(ANNOTATION_REF_NAME).cloned();
    let available = || {
        let tags: Vec<String> = index.manifests.iter().filter_map(tag_of).collect();
        if tags.is_empty() {
            "none".to_string()
        } else {
            tags.join(", ")
        }
    };
    let tagged = |t: &str| {
        index
            .manifests
            .iter()
            .find(|d| tag_of(d).as_deref() == Some(t))
    };
    if let Some(t) = tag {
        return tagged(t).ok_or_else(|| SelectError::NoSuchTag {
            tag: t.to_string(),
            available: available(),
        });
    }
    match index.manifests.first() {
        Some(first) if index.manifests.iter().all(|d| d.digest == first.digest) => Ok(first),
        _ => tagged("latest").ok_or_else(|| SelectError::Ambiguous {
            available: available(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> (String, Option<String>, Option<String>) {
        let r = LayoutRef::parse(s).unwrap();
        (
            r.dir.display().to_string(),
            r.tag,
            r.digest.map(|d| d.to_string()),
        )
    }

    #[test]
    fn parses_folder_tag_and_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let s = |x: &str| Some(x.to_string());
        assert_eq!(parse("oci:out"), ("out".into(), None, None));
        assert_eq!(parse("oci:out:v1"), ("out".into(), s("v1"), None));
        assert_eq!(parse("oci:./a:b/c"), ("./a:b/c".into(), None, None));
        assert_eq!(
            parse("oci:../vendor/base:1.0"),
            ("../vendor/base".into(), s("1.0"), None)
        );
        assert_eq!(parse("oci:C:/x/base"), ("C:/x/base".into(), None, None));
        assert_eq!(parse(&format!("oci:out@{d}")), ("out".into(), None, s(&d)));
        assert_eq!(
            parse(&format!("oci:out:v1@{d}")),
            ("out".into(), s("v1"), s(&d))
        );
        assert_eq!(parse("oci:/x/y:"), ("/x/y:".into(), None, None));
        assert!(LayoutRef::parse("oci:").is_err());
        assert!(LayoutRef::parse("out").is_err());
        assert!(LayoutRef::parse("oci:out@sha256:short").is_err());
    }

    fn entry(digest: char, tag: Option<&str>) -> Descriptor {
        let mut d = Descriptor::new(
            super::super::MEDIA_TYPE_INDEX.to_string(),
            format!("sha256:{}", digest.to_string().repeat(64))
                .parse()
                .unwrap(),
            1,
        );
        if let Some(t) = tag {
            d.annotations.insert(ANNOTATION_REF_NAME.into(), t.into());
        }
        d
    }

    fn index(entries: Vec<Descriptor>) -> Index {
        let mut i: Index = serde_json::from_str(r#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
        i.manifests = entries;
        i
    }

    #[test]
    fn selects_by_tag_only_entry_same_digest_or_latest() {
        let one = index(vec![entry('a', Some("v1")), entry('a', Some("latest"))]);
        assert_eq!(
            select_entry(&one, None).unwrap().digest,
            one.manifests[0].digest
        );
        let two = index(vec![entry('a', Some("v1")), entry('b', Some("latest"))]);
        assert_eq!(
            select_entry(&two, None).unwrap().digest,
            two.manifests[1].digest
        );
        assert_eq!(
            select_entry(&two, Some("v1")).unwrap().digest,
            two.manifests[0].digest
        );
        let e = select_entry(&two, Some("v2")).unwrap_err();
        assert_eq!(e.to_string(), "it has no tag `v2` (tags: v1, latest)");
        let amb = index(vec![entry('a', Some("v1")), entry('b', Some("v2"))]);
        assert!(matches!(
            select_entry(&amb, None),
            Err(SelectError::Ambiguous { .. })
        ));
        assert!(select_entry(&index(vec![]), None).is_err());
    }
}
