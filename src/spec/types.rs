//! The spec's types. Their field names are the file format's keys (the
//! contract in SPEC-FORMAT.md); the JSON Schema is generated from them.

use crate::oci::Platform;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::{Deref, Range};

/// A value together with the byte span it came from.
#[derive(Clone, Debug)]
pub struct Sp<T> {
    /// The value.
    pub value: T,
    /// Its byte span in the spec source.
    pub span: Range<usize>,
}

impl<T> Deref for Sp<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Sp<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = toml::Spanned::<T>::deserialize(d)?;
        let span = s.span();
        Ok(Sp {
            value: s.into_inner(),
            span,
        })
    }
}

impl<T: JsonSchema> JsonSchema for Sp<T> {
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
    fn inline_schema() -> bool {
        T::inline_schema()
    }
}

/// A whole `image.toml`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "imgc image spec")]
pub struct Spec {
    /// What is built: name, tags, base, platforms, encoding.
    pub image: ImageSection,
    /// Template variables, used as `{{ vars.NAME }}`; `--var NAME=VALUE` overrides.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Container config, merged onto the base image's config.
    #[serde(default)]
    pub config: ConfigSection,
    /// Annotations on every manifest and on the index.
    #[serde(default)]
    pub annotations: BTreeMap<String, Sp<String>>,
    /// Annotations on the index only.
    #[serde(default)]
    pub index_annotations: BTreeMap<String, Sp<String>>,
    /// Layers, in order, on top of the base's layers.
    #[serde(default)]
    pub layers: Vec<Sp<LayerSpec>>,
    /// Per-platform overrides, keyed by platform (`[platform."linux/arm64"]`).
    #[serde(default)]
    pub platform: BTreeMap<PlatformName, Sp<PlatformOverride>>,
}

/// The `[image]` table.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// Repository the image is pushed to, e.g. `registry.example.com/acme/api`.
    pub name: Option<Sp<String>>,
    /// Tags (templated with `vars`); `latest` when empty.
    #[serde(default)]
    pub tags: Vec<Sp<String>>,
    /// `scratch` (default); `oci:DIR[:tag]`, a local OCI layout relative to the spec's folder; or a registry reference (`registry.example.com/repo:tag[@sha256:…]`), pinned by `imgc lock`.
    pub base: Option<Sp<String>>,
    /// Platforms to build, `os/arch[/variant]`. Default: the base's platforms (required on `scratch`).
    pub platforms: Option<Vec<Sp<PlatformName>>>,
    /// Layer compression: `gzip` (default), `zstd` or `none`.
    pub compression: Option<CompressionName>,
    /// Media types: `oci` (default) or `docker` (v2.2 manifests and manifest list).
    pub media_types: Option<MediaTypesName>,
    /// Build epoch in seconds since 1970 (`SOURCE_DATE_EPOCH` wins). Default 0.
    pub epoch: Option<u64>,
    /// A registry repository shared as a layer cache between machines, e.g. `registry.example.com/acme/cache` (`--cache-repo` wins). Hits are checked against the sources before use.
    pub cache_repo: Option<Sp<String>>,
}

/// Layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CompressionName {
    /// gzip (the default; readable everywhere).
    Gzip,
    /// zstd (needs OCI media types; not readable by Docker 20.10).
    Zstd,
    /// Uncompressed tar.
    None,
}

/// Media type family of the documents written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MediaTypesName {
    /// OCI image-spec 1.1 (the default).
    Oci,
    /// Docker image manifest v2.2 and manifest list.
    Docker,
}

/// The `[config]` table: the container's execution parameters.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigSection {
    /// Entrypoint; set without `cmd`, it clears the base's `cmd`.
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    pub cmd: Option<Vec<String>>,
    /// Environment, merged by key onto the base's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `uid[:gid]` or a user name.
    pub user: Option<String>,
    /// Working directory (absolute).
    pub workdir: Option<String>,
    /// Exposed ports, `8080/tcp`, `53/udp` or `8080` (tcp).
    pub ports: Option<Vec<Port>>,
    /// Volumes (absolute paths).
    pub volumes: Option<Vec<String>>,
    /// Labels, merged by key onto the base's.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Stop signal, e.g. `SIGTERM`.
    pub stop_signal: Option<String>,
}

/// One `[[layers]]` table: one OCI layer.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// The layer's name (shown in plans and history).
    pub name: String,
    /// Limit the layer to these platforms.
    pub platforms: Option<Vec<PlatformName>>,
    /// Defaults for this layer's entries.
    #[serde(default)]
    pub defaults: Defaults,
    /// Files: from the context (`src`, globs allowed) or inline (`content`).
    #[serde(default)]
    pub files: Vec<Sp<FileEntry>>,
    /// Folders to create.
    #[serde(default)]
    pub dirs: Vec<Sp<DirEntry>>,
    /// Symbolic links to create.
    #[serde(default)]
    pub symlinks: Vec<Sp<SymlinkEntry>>,
}

/// Per-layer defaults for entries.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Owner of every entry, `uid:gid`.
    pub owner: Option<Owner>,
    /// Mode of every file.
    pub mode: Option<Mode>,
    /// Mode of every folder.
    pub dir_mode: Option<Mode>,
}

/// A file entry.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path in the build context; a glob (`**` recursive) or a folder (copied recursively).
    pub src: Option<Sp<String>>,
    /// Inline file content (instead of `src`).
    pub content: Option<Sp<String>>,
    /// Absolute path in the image; ending in `/` means a folder that receives the matches.
    pub dst: Sp<String>,
    /// Globs of paths to leave out (matched against the path below the glob's literal prefix, and the context path).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Mode of the files, e.g. `"0755"`.
    pub mode: Option<Mode>,
    /// Mode of folders copied from the context.
    pub dir_mode: Option<Mode>,
    /// Owner, `uid:gid`.
    pub owner: Option<Owner>,
    /// A glob that matches nothing is not an error.
    #[serde(default)]
    pub optional: bool,
}

/// A folder entry.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirEntry {
    /// Absolute path in the image.
    pub path: Sp<String>,
    /// Mode, default `"0755"`.
    pub mode: Option<Mode>,
    /// Owner, `uid:gid`.
    pub owner: Option<Owner>,
}

/// A symbolic link entry.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SymlinkEntry {
    /// Absolute path in the image.
    pub path: Sp<String>,
    /// The link target, stored verbatim.
    pub target: Sp<String>,
    /// Owner, `uid:gid`.
    pub owner: Option<Owner>,
}

/// A `[platform."os/arch"]` table.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlatformOverride {
    /// A different base for this platform.
    pub base: Option<Sp<String>>,
    /// Config merged over `[config]` for this platform.
    pub config: Option<ConfigSection>,
    /// Extra annotations on this platform's manifest.
    #[serde(default)]
    pub annotations: BTreeMap<String, Sp<String>>,
    /// Extra layers, after the common ones, for this platform only.
    #[serde(default)]
    pub layers: Vec<Sp<LayerSpec>>,
}

macro_rules! string_newtype_schema {
    ($ty:ident, $name:literal, $pattern:literal, $desc:literal) => {
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "pattern": $pattern, "description": $desc })
            }
        }
    };
}

/// A validated platform string, `os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlatformName(pub Platform);

impl<'de> Deserialize<'de> for PlatformName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map(PlatformName)
            .map_err(serde::de::Error::custom)
    }
}
string_newtype_schema!(
    PlatformName,
    "Platform",
    "^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$",
    "os/arch[/variant], like linux/arm64"
);

/// A file mode, written as an octal string (`"0644"`, `"755"`, `"4755"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Mode;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an octal mode string like \"0755\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Mode, E> {
                let ok =
                    (3..=4).contains(&s.len()) && s.bytes().all(|b| (b'0'..=b'7').contains(&b));
                match u32::from_str_radix(s, 8) {
                    Ok(m) if ok => Ok(Mode(m)),
                    _ => Err(E::custom(format!(
                        "invalid mode `{s}`: expected 3 or 4 octal digits, like \"0755\""
                    ))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Mode, E> {
                Err(E::custom(format!(
                    "invalid mode {n}: write modes as octal strings, like \"0755\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}
string_newtype_schema!(
    Mode,
    "Mode",
    "^[0-7]{3,4}$",
    "octal mode string, like \"0755\""
);

/// A numeric owner, `uid:gid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let parse = |p: &str| -> Option<u32> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        match s.split_once(':') {
            Some((u, g)) => match (parse(u), parse(g)) {
                (Some(uid), Some(gid)) => Ok(Owner { uid, gid }),
                _ => Err(bad_owner(&s)),
            },
            None => Err(bad_owner(&s)),
        }
    }
}

fn bad_owner<E: serde::de::Error>(s: &str) -> E {
    E::custom(format!(
        "invalid owner `{s}`: expected numeric `uid:gid`, like \"65532:65532\""
    ))
}
string_newtype_schema!(
    Owner,
    "Owner",
    "^[0-9]+:[0-9]+$",
    "numeric uid:gid, like \"65532:65532\""
);

/// An exposed port, `8080/tcp`, `53/udp`, `9/sctp` or `8080` (tcp).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port(pub String);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (num, proto) = s.split_once('/').unwrap_or((&s, "tcp"));
        let num_ok = matches!(num.parse::<u16>(), Ok(n) if n > 0) && !num.starts_with('0');
        if num_ok && matches!(proto, "tcp" | "udp" | "sctp") {
            Ok(Port(format!("{num}/{proto}")))
        } else {
            Err(serde::de::Error::custom(format!(
                "invalid port `{s}`: expected PORT or PORT/tcp|udp|sctp, like \"8080/tcp\""
            )))
        }
    }
}
string_newtype_schema!(
    Port,
    "Port",
    "^[1-9][0-9]{0,4}(/(tcp|udp|sctp))?$",
    "PORT[/tcp|udp|sctp]"
);
