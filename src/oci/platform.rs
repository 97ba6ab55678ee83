//! `Platform`: the `os/arch[/variant]` strings of the spec and the platform
//! objects of indexes and configs, with containerd-style normalization for
//! matching (`linux/arm64` matches `arm64` with variant `v8`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A platform as written in an index descriptor.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// The CPU architecture (`amd64`, `arm64`, ...).
    pub architecture: String,
    /// The operating system (`linux`, `windows`, ...).
    pub os: String,
    /// The OS version (Windows).
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required OS features.
    #[serde(default, rename = "os.features", skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// The CPU variant (`v7`, `v8`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A platform string that is not `os/arch[/variant]`.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a valid platform (expected `os/arch` or `os/arch/variant`, like `linux/arm64`)"
)]
pub struct PlatformError(pub String);

impl Platform {
    /// A platform from its parts.
    pub fn new(os: &str, arch: &str, variant: Option<&str>) -> Self {
        Platform {
            architecture: arch.to_string(),
            os: os.to_string(),
            os_version: None,
            os_features: Vec::new(),
            variant: variant.map(str::to_string),
        }
    }

    /// The normalized `(os, arch, variant)` used for matching, as containerd
    /// normalizes: `aarch64`→`arm64`, `arm64/v8`→`arm64`, `x86_64`→`amd64`,
    /// `amd64/v1`→`amd64`, `arm`→`arm/v7`, `armhf`→`arm/v7`, `armel`→`arm/v6`,
    /// `i386`→`386`.
    pub fn normalized(&self) -> (String, String, String) {
        let os = self.os.to_ascii_lowercase();
        let arch = self.architecture.to_ascii_lowercase();
        let variant = self
            .variant
            .clone()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (arch, variant) = match (arch.as_str(), variant.as_str()) {
            ("aarch64" | "arm64", "v8" | "") => ("arm64", String::new()),
            ("aarch64", v) => ("arm64", v.to_string()),
            ("x86_64" | "x86-64" | "amd64", "v1" | "") => ("amd64", String::new()),
            ("x86_64" | "x86-64", v) => ("amd64", v.to_string()),
            ("armhf", _) => ("arm", "v7".to_string()),
            ("armel", _) => ("arm", "v6".to_string()),
            ("arm", "") => ("arm", "v7".to_string()),
            ("arm", v) if v.len() == 1 => ("arm", format!("v{v}")),
            ("i386", v) => ("386", v.to_string()),
            (a, v) => (a, v.to_string()),
        };
        (os, arch.to_string(), variant)
    }

    /// Whether two platforms are the same after normalization.
    pub fn matches(&self, other: &Platform) -> bool {
        self.normalized() == other.normalized()
            && (self.os_version.is_none()
                || other.os_version.is_none()
                || self.os_version == other.os_version)
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        // Each part is a short name (the spec's values are at most a dozen
        // characters; 64 leaves room and keeps errors and configs small).
        let valid_part = |p: &str| {
            (1..=64).contains(&p.len())
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| valid_part(p)) {
            return Err(PlatformError(s.to_string()));
        }
        Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!(p("linux/arm64/v8").variant.as_deref(), Some("v8"));
        assert_eq!(p("linux/amd64").to_string(), "linux/amd64");
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64", ""] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn matches_like_containerd() {
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        assert!(p("linux/aarch64").matches(&p("linux/arm64")));
        assert!(p("linux/x86_64").matches(&p("linux/amd64")));
        assert!(p("linux/arm").matches(&p("linux/arm/v7")));
        assert!(!p("linux/arm/v6").matches(&p("linux/arm/v7")));
        assert!(!p("linux/amd64").matches(&p("linux/arm64")));
        assert!(!p("windows/amd64").matches(&p("linux/amd64")));
    }
}
