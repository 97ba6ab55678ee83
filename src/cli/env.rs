//! Every environment variable imgc reads, in one list: they are read here
//! and nowhere else (the library takes what they say as arguments), and the
//! book's Commands page lists the same names (a test checks it).

use imgc::registry::auth::AuthEnv;
use std::ffi::OsString;
use std::path::PathBuf;

/// The build epoch (seconds since 1970); wins over `[image].epoch`.
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";
/// Worker threads when `--jobs` is not given.
pub const IMGC_THREADS: &str = "IMGC_THREADS";
/// The cache folder (the store is `store/` in it).
pub const IMGC_CACHE_DIR: &str = "IMGC_CACHE_DIR";
/// The config file.
pub const IMGC_CONFIG: &str = "IMGC_CONFIG";
/// Certificate folder roots, `:`-separated.
pub const IMGC_CERTS_DIRS: &str = "IMGC_CERTS_DIRS";
/// Default cache folder: `$XDG_CACHE_HOME/imgc`.
pub const XDG_CACHE_HOME: &str = "XDG_CACHE_HOME";
/// Default config folder: `$XDG_CONFIG_HOME/imgc`.
pub const XDG_CONFIG_HOME: &str = "XDG_CONFIG_HOME";
/// Default cache, config, certificate and credential folders.
pub const HOME: &str = "HOME";
/// Docker's config folder (credentials).
pub const DOCKER_CONFIG: &str = "DOCKER_CONFIG";
/// Podman's auth file.
pub const REGISTRY_AUTH_FILE: &str = "REGISTRY_AUTH_FILE";
/// Holds Podman's `containers/auth.json`.
pub const XDG_RUNTIME_DIR: &str = "XDG_RUNTIME_DIR";
/// Searched for `docker-credential-<name>` helpers.
pub const PATH: &str = "PATH";

/// Every variable imgc reads itself.
pub const ALL: &[&str] = &[
    SOURCE_DATE_EPOCH,
    IMGC_THREADS,
    IMGC_CACHE_DIR,
    IMGC_CONFIG,
    IMGC_CERTS_DIRS,
    XDG_CACHE_HOME,
    XDG_CONFIG_HOME,
    HOME,
    DOCKER_CONFIG,
    REGISTRY_AUTH_FILE,
    XDG_RUNTIME_DIR,
    PATH,
];

/// Read by the HTTP client (reqwest's system proxy support), not by imgc's
/// code: listed in the book with the others.
#[cfg_attr(not(test), allow(dead_code))]
pub const READ_BY_HTTP_CLIENT: &[&str] = &["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"];

/// A variable's value; an empty one counts as unset.
pub fn var(name: &str) -> Option<OsString> {
    debug_assert!(ALL.contains(&name), "{name} is not in env::ALL");
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// A variable as text (`Err` with the raw value when it is not UTF-8).
pub fn text(name: &str) -> Option<Result<String, OsString>> {
    var(name).map(OsString::into_string)
}

/// A variable naming a path.
pub fn path(name: &str) -> Option<PathBuf> {
    var(name).map(PathBuf::from)
}

/// Where credentials are looked for.
pub fn auth() -> AuthEnv {
    AuthEnv {
        docker_config: path(DOCKER_CONFIG),
        home: path(HOME),
        registry_auth_file: path(REGISTRY_AUTH_FILE),
        xdg_runtime_dir: path(XDG_RUNTIME_DIR),
        path: var(PATH),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_book_lists_every_variable() {
        let page = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("book/src/commands.md"),
        )
        .unwrap();
        let section = page
            .split("## Environment")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("commands.md has an Environment section");
        for name in ALL.iter().chain(READ_BY_HTTP_CLIENT) {
            assert!(
                section.contains(&format!("`{name}`")),
                "commands.md's Environment section does not list {name}"
            );
        }
    }
}
