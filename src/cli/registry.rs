//! The registry side of the command line: the flags every command that
//! talks to a registry accepts, the config file and environment they read
//! (`IMGC_CACHE_DIR`, `XDG_CACHE_HOME`, `IMGC_CONFIG`, `IMGC_CERTS_DIRS`,
//! credentials), and the
//! `push`, `lock`, `index` and `inspect` commands.

use super::{report, write_file, Failure};
use clap::Args;
use imgc::registry::lock::LockFile;
use imgc::registry::pull::{RegistryBases, ResolveMode};
use imgc::registry::push::{read_layout_doc, PushOptions, PushOutcome};
use imgc::registry::shards::{self, Metadata};
use imgc::registry::{Client, ImageRef, RegistryOptions};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Flags of every command that talks to a registry.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Talk plain HTTP to this registry (HOST:PORT; repeatable). Never implied.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure: Vec<String>,
    /// Trust this CA certificate (PEM) besides the system roots (repeatable).
    #[arg(long = "ca-file", value_name = "FILE")]
    pub ca_files: Vec<PathBuf>,
    /// Retry a registry request that gets no answer, or no data, for this long (default 300).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: Option<u64>,
}

/// Flags of the commands that move blobs (`build --push`, `push`).
#[derive(Args, Debug, Clone, Default)]
pub struct TransferArgs {
    /// Concurrent blob transfers (default 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub transfers: Option<u16>,
    /// Upload blobs in chunks of this many bytes instead of one request each.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1024..))]
    pub chunk_size: Option<u64>,
}

/// The optional config file: `$IMGC_CONFIG`, else `$XDG_CONFIG_HOME/imgc/config.toml`,
/// else `~/.config/imgc/config.toml`.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    insecure_registries: Vec<String>,
    #[serde(default)]
    ca_files: Vec<PathBuf>,
}

use super::env::{self, path as env_path};

fn config_file() -> Result<ConfigFile, Failure> {
    let (path, explicit) = match env_path(env::IMGC_CONFIG) {
        Some(p) => (p, true),
        None => match env_path(env::XDG_CONFIG_HOME)
            .or_else(|| env_path(env::HOME).map(|h| h.join(".config")))
        {
            Some(d) => (d.join("imgc").join("config.toml"), false),
            None => return Ok(ConfigFile::default()),
        },
    };
    let read = |p: &Path| -> std::io::Result<String> {
        let bytes = imgc::fsx::read_bounded(p, 1024 * 1024, imgc::fsx::Links::Follow)?;
        String::from_utf8(bytes).map_err(|_| std::io::Error::other("the file is not UTF-8 text"))
    };
    let text = match read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            return Ok(ConfigFile::default())
        }
        Err(e) => {
            return Err(Failure::Cli(
                format!("failed to read config file `{}`", path.display()),
                Some(e),
            ))
        }
    };
    toml::from_str(&text).map_err(|e| {
        let at = imgc::spec::locate_in(&path, &text, e.span());
        let (line, col) = (at.line, at.column);
        Failure::Cli(
            format!(
                "config file `{}` is invalid at line {line}, column {col}: {}",
                path.display(),
                e.message()
            ),
            None,
        )
    })
}

/// Where pulled blobs are kept: `$IMGC_CACHE_DIR`, else `$XDG_CACHE_HOME/imgc`, else `~/.cache/imgc`.
pub fn cache_dir() -> Result<PathBuf, Failure> {
    env_path(env::IMGC_CACHE_DIR)
        .or_else(|| env_path(env::XDG_CACHE_HOME).map(|d| d.join("imgc")))
        .or_else(|| env_path(env::HOME).map(|h| h.join(".cache").join("imgc")))
        .ok_or_else(|| {
            Failure::Usage(
                "set IMGC_CACHE_DIR (or HOME) so imgc has a cache folder for pulled blobs".into(),
            )
        })
}

/// The store folder in the cache folder, if there is a cache folder.
pub fn store_dir() -> Option<PathBuf> {
    cache_dir().ok().map(|d| d.join("store"))
}

/// A client configured from the flags, the config file and the environment.
pub fn client(
    args: &RegistryArgs,
    transfer: Option<&TransferArgs>,
    quiet: bool,
) -> Result<Arc<Client>, Failure> {
    let cfg = config_file()?;
    let mut insecure: BTreeSet<String> = cfg.insecure_registries.into_iter().collect();
    for h in &args.insecure {
        if h.contains('/') || h.is_empty() {
            return Err(Failure::Usage(format!(
                "--insecure-registry `{h}` is not HOST[:PORT] (no scheme, no path)"
            )));
        }
        insecure.insert(h.clone());
    }
    let mut ca_files = cfg.ca_files;
    ca_files.extend(args.ca_files.iter().cloned());
    // IMGC_CERTS_DIRS (a `:`-separated list) replaces the usual roots.
    let certs_dirs = match env::var(env::IMGC_CERTS_DIRS) {
        Some(v) => std::env::split_paths(&v)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        None => imgc::registry::tls::default_certs_dirs(env_path(env::HOME).as_deref()),
    };
    let mut opts = RegistryOptions {
        insecure,
        ca_files,
        certs_dirs,
        auth_env: env::auth(),
        chunk_size: transfer.and_then(|t| t.chunk_size),
        ..RegistryOptions::default()
    };
    if let Some(t) = transfer.and_then(|t| t.transfers) {
        opts.jobs = usize::from(t);
    }
    if let Some(t) = args.timeout {
        opts.stall_timeout = std::time::Duration::from_secs(t);
    }
    let reporter: Arc<dyn imgc::progress::Reporter> = Arc::new(report::StderrReporter::new(quiet));
    Ok(Arc::new(Client::new(opts, reporter)?))
}

/// The base resolver for a spec: its lock file, the store, the mode.
pub fn bases(
    spec: &Path,
    client: Arc<Client>,
    mode: ResolveMode,
) -> Result<(Arc<RegistryBases>, PathBuf), Failure> {
    let lock_path = LockFile::path_for(spec);
    let lock = LockFile::read(&lock_path)?;
    if mode.locked && lock.is_none() && !mode.update {
        return Err(Failure::Cli(
            format!(
                "--locked needs the lock file `{}`, which does not exist; run `imgc lock {}`",
                lock_path.display(),
                spec.display()
            ),
            None,
        ));
    }
    let lock = lock.map(|l| (lock_path.clone(), l));
    Ok((
        Arc::new(RegistryBases::new(client, store_dir(), lock, mode)),
        lock_path,
    ))
}

/// Parses a reference given on the command line.
pub fn parse_ref(s: &str) -> Result<ImageRef, Failure> {
    ImageRef::parse(s).map_err(|e| Failure::from(imgc::registry::RegistryError::from(e)))
}

/// Writes the metadata file.
pub fn write_metadata(path: &Path, m: &Metadata) -> Result<(), Failure> {
    let mut text = serde_json::to_string_pretty(m).unwrap_or_default();
    text.push('\n');
    write_file(path, text.as_bytes())
}

/// A one-line summary of a push: blobs and bytes uploaded, mounted and
/// already there, and the bytes this run downloaded (base blobs).
pub fn push_summary(target: &ImageRef, o: &PushOutcome, downloaded: u64) -> String {
    use super::human;
    format!(
        "pushed {} ({} blob(s) uploaded, {} sent; {} mounted, {}; {} already there, {}; {} downloaded)",
        target.name(),
        o.uploaded,
        human(o.bytes_uploaded),
        o.mounted,
        human(o.bytes_mounted),
        o.existed,
        human(o.bytes_existed),
        human(downloaded),
    )
}

/// The folder a shallow build (`build --push` without `--output`) writes
/// its layout in: a private folder under the cache folder, removed when
/// dropped. Folders left by killed runs are swept after a day.
pub struct ShallowDir(PathBuf);

impl ShallowDir {
    /// Makes a new private folder.
    pub fn create() -> Result<ShallowDir, Failure> {
        let root = cache_dir()
            .map(|d| d.join("shallow"))
            .unwrap_or_else(|_| std::env::temp_dir().join("imgc-shallow"));
        let fail = |p: &Path| {
            let p = p.to_path_buf();
            move |e| {
                Failure::Cli(
                    format!("failed to create folder `{}`", p.display()),
                    Some(e),
                )
            }
        };
        std::fs::create_dir_all(&root).map_err(fail(&root))?;
        sweep_shallow(&root);
        let dir = root.join(format!("{}-{}", std::process::id(), imgc::fsx::unique()));
        std::fs::create_dir(&dir).map_err(fail(&dir))?;
        Ok(ShallowDir(dir))
    }

    /// Where the layout goes (inside the private folder).
    pub fn layout(&self) -> PathBuf {
        self.0.join("layout")
    }
}

impl Drop for ShallowDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes shallow folders not touched for a day (a killed run's).
fn sweep_shallow(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let day = std::time::Duration::from_secs(24 * 3600);
    for e in entries.flatten() {
        // `symlink_metadata`: a link is judged (and removed) as itself.
        let old = e
            .path()
            .symlink_metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > day);
        if old {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The layout to push: oci:DIR or oci:DIR:TAG.
    #[arg(value_name = "oci:DIR[:TAG]")]
    source: String,
    /// Where to push: REGISTRY/REPOSITORY[:TAG].
    #[arg(value_name = "REF")]
    target: String,
    /// Also push these tags (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Push only the platform manifests, by digest (no index, no tags).
    #[arg(long)]
    push_by_digest: bool,
    /// Write the pushed digest (sha256:…) to this file.
    #[arg(long, value_name = "FILE")]
    digest_file: Option<PathBuf>,
    /// Write a JSON summary (digests, tags, pushed references) to this file.
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// Print only the digest.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    transfer: TransferArgs,
}

/// `oci:DIR[:TAG]` → (dir, tag).
/// A layout named on the command line (`oci:DIR[:TAG][@DIGEST]`), and the
/// document it names.
pub(crate) fn layout_arg(s: &str) -> Result<(PathBuf, imgc::oci::Descriptor), Failure> {
    let r = imgc::oci::LayoutRef::parse(s).map_err(|e| Failure::Usage(e.to_string()))?;
    let top = imgc::base::layout_entry(&r.dir, &r)?;
    Ok((r.dir, top))
}

pub fn cmd_push(args: PushArgs) -> Result<(), Failure> {
    let (dir, top) = layout_arg(&args.source)?;
    let target = parse_ref(&args.target)?;
    let client = client(&args.registry, Some(&args.transfer), args.quiet)?;
    let mut tags: Vec<String> = Vec::new();
    if target.digest.is_none() {
        if let Some(t) = &target.tag {
            tags.push(t.clone());
        }
    }
    for t in &args.tags {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    let outcome = client.push_layout(
        &dir,
        &top,
        &target,
        &PushOptions {
            tags: tags.clone(),
            by_digest: args.push_by_digest,
            ..PushOptions::default()
        },
    )?;
    if !args.quiet {
        eprintln!(
            "{}",
            push_summary(&target, &outcome, client.bytes_downloaded())
        );
    }
    let digest = outcome.digest.clone().unwrap_or_else(|| top.digest.clone());
    if let Some(f) = &args.digest_file {
        write_file(f, digest.as_str().as_bytes())?;
    }
    if let Some(f) = &args.metadata_file {
        let doc = read_layout_doc(&dir, &top)?;
        let index = if imgc::oci::is_index_media_type(&top.media_type) {
            serde_json::from_slice(&doc.bytes)
                .map_err(|e| Failure::Cli(format!("index {} is invalid: {e}", top.digest), None))?
        } else {
            imgc::oci::Index {
                schema_version: 2,
                media_type: Some(top.media_type.clone()),
                artifact_type: None,
                manifests: vec![top.clone()],
                subject: None,
                annotations: Default::default(),
                extra: Default::default(),
            }
        };
        let positions: Vec<usize> = (0..index.manifests.len()).collect();
        let mut m = Metadata::for_index(
            Some(target.name()),
            &top.digest,
            &index,
            &positions,
            !args.push_by_digest,
        );
        if !args.push_by_digest {
            m.tags = tags.clone();
        }
        m.pushed = outcome.pushed.clone();
        write_metadata(f, &m)?;
    }
    let _ = writeln!(std::io::stdout().lock(), "{digest}");
    Ok(())
}

#[derive(Args, Debug)]
pub struct LockArgs {
    /// The spec file (image.toml).
    spec: PathBuf,
    /// Resolve every base again, even those already in the lock file.
    #[arg(long)]
    update: bool,
    /// Set a template variable (repeatable), overriding [vars].
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = super::parse_var)]
    vars: Vec<(String, String)>,
    /// Output format: `REFERENCE DIGEST` lines, or the pinned bases as JSON.
    #[arg(long, value_enum, default_value_t = super::Format::Text)]
    format: super::Format,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn cmd_lock(args: LockArgs) -> Result<(), Failure> {
    let file = imgc::spec::SpecFile::load(&args.spec)?;
    let client = client(&args.registry, None, false)?;
    // Bases the lock already pins stay pinned (their documents are read by
    // digest); the others are resolved. --update resolves every tag again.
    let (resolver, lock_path) = bases(
        &args.spec,
        client,
        ResolveMode {
            update: args.update,
            ..ResolveMode::default()
        },
    )?;
    // Only the bases are resolved: the build context is not read, so a lock
    // can be made before what the image holds is built.
    let opts = imgc::plan::PlanOptions {
        vars: args.vars.iter().cloned().collect(),
        ..Default::default()
    };
    let bases = imgc::base::LayoutBases {
        spec_dir: super::spec_dir(&file),
        remote: Some(resolver.clone()),
    };
    imgc::plan::resolve_bases(&file, &opts, &bases)?;
    let resolved = resolver.resolved();
    let lock = LockFile::new(resolved);
    lock.write(&lock_path)?;
    let mut out = std::io::stdout().lock();
    if args.format == super::Format::Json {
        let doc = serde_json::json!({ "lock": lock_path, "bases": lock.bases });
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        );
    } else {
        for b in &lock.bases {
            let _ = writeln!(out, "{} {}", b.reference, b.digest);
        }
    }
    eprintln!("wrote {}", lock_path.display());
    Ok(())
}

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// A folder of shards' metadata files (*.json), or one metadata file.
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// Push the index as this reference (repeatable): REGISTRY/REPO:TAG.
    #[arg(long = "tag", value_name = "REF", required = true)]
    tags: Vec<String>,
    /// Write the index digest (sha256:…) to this file.
    #[arg(long, value_name = "FILE")]
    digest_file: Option<PathBuf>,
    /// Write a JSON summary to this file.
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn cmd_index(args: IndexArgs) -> Result<(), Failure> {
    let files: Vec<PathBuf> = if args.from.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&args.from)
            .map_err(|e| {
                Failure::Cli(format!("failed to read `{}`", args.from.display()), Some(e))
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        v.sort();
        v
    } else {
        vec![args.from.clone()]
    };
    let mut shards_meta = Vec::new();
    for f in &files {
        shards_meta.push((f.display().to_string(), Metadata::read(f)?));
    }
    let joined = shards::join(&shards_meta)?;
    let client = client(&args.registry, None, false)?;
    let targets: Vec<ImageRef> = args
        .tags
        .iter()
        .map(|t| parse_ref(t))
        .collect::<Result<_, _>>()?;
    let mut pushed = Vec::new();
    for target in &targets {
        for e in &joined.manifests {
            if !client.manifest_exists(target, &e.digest)? {
                return Err(Failure::Cli(
                    format!(
                        "platform {} ({}) is not in {}; push the shard first (imgc build --push-by-digest)",
                        e.platform,
                        e.digest,
                        target.name()
                    ),
                    None,
                ));
            }
        }
        let media_type = &joined.descriptor.media_type;
        client.push_manifest(
            target,
            joined.descriptor.digest.as_str(),
            media_type,
            &joined.bytes,
        )?;
        pushed.push(target.with_digest(&joined.descriptor.digest).to_string());
        if let Some(t) = &target.tag {
            if target.digest.is_none() {
                client.push_manifest(target, t, media_type, &joined.bytes)?;
                pushed.push(target.to_string());
            }
        }
    }
    let digest = &joined.descriptor.digest;
    if let Some(f) = &args.digest_file {
        write_file(f, digest.as_str().as_bytes())?;
    }
    if let Some(f) = &args.metadata_file {
        let first = &shards_meta[0].1;
        let m = Metadata {
            name: targets.first().map(|t| t.name()),
            index_digest: digest.clone(),
            index_pushed: true,
            index_media_type: first.index_media_type.clone(),
            index_annotations: first.index_annotations.clone(),
            manifests: joined.manifests.clone(),
            tags: targets.iter().filter_map(|t| t.tag.clone()).collect(),
            pushed,
            platforms: first.platforms.clone(),
            spec_digest: first.spec_digest.clone(),
        };
        write_metadata(f, &m)?;
    }
    let _ = writeln!(std::io::stdout().lock(), "{digest}");
    Ok(())
}

#[derive(Args, Debug)]
pub struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,
}

/// `imgc cache prune --repo`: the cache repository and how to reach it.
#[derive(Args, Debug)]
struct PruneRepoArgs {
    /// Delete the entries of this cache repository (`--cache-repo`) filed
    /// at least `--older-than` days ago, instead of pruning the local store.
    /// The registry must allow deletes.
    #[arg(long, value_name = "REPO")]
    repo: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(clap::Subcommand, Debug)]
enum CacheCommand {
    /// Show where the local store is and how much it holds (blobs, and the
    /// layer cache's entries and fingerprint tables).
    Du,
    /// Remove the blobs no build has used for a number of days (and layer
    /// cache entries left without a blob).
    Prune {
        /// Remove blobs unused (or, with --repo, entries filed) at least this many days ago.
        #[arg(long, value_name = "DAYS", default_value_t = 30)]
        older_than: u64,
        #[command(flatten)]
        remote: PruneRepoArgs,
    },
    /// Remove every blob, layer cache entry and fingerprint table.
    Clean,
}

pub fn cmd_cache(args: CacheArgs) -> Result<(), Failure> {
    let root = cache_dir()?.join("store");
    if let CacheCommand::Prune {
        older_than,
        remote: PruneRepoArgs {
            repo: Some(repo),
            registry,
        },
    } = &args.command
    {
        return prune_repo(repo, registry, *older_than, &root);
    }
    let mut out = std::io::stdout().lock();
    if !root.join("blobs").is_dir() {
        let _ = writeln!(
            out,
            "store: {} (empty: nothing was pulled yet)",
            root.display()
        );
        return Ok(());
    }
    let days = |d: u64| std::time::Duration::from_secs(d.saturating_mul(86_400));
    let (removed, index, verb) = match args.command {
        CacheCommand::Du => {
            let store = imgc::registry::store::Store::open(&root)?;
            let u = store.usage();
            let _ = writeln!(out, "store: {}", root.display());
            let _ = writeln!(out, "blobs: {}", u.blobs);
            let _ = writeln!(out, "size:  {} ({} bytes)", super::human(u.bytes), u.bytes);
            let i = imgc::cache::index_usage(&root);
            let _ = writeln!(
                out,
                "index: {} file(s), {} (layer cache entries and fingerprints)",
                i.files,
                super::human(i.bytes)
            );
            return Ok(());
        }
        CacheCommand::Prune { older_than, .. } => {
            let store = imgc::registry::store::Store::open_exclusive(&root)?;
            let removed = store.prune(days(older_than));
            let index = imgc::cache::prune_index(&root, false);
            (removed, index, format!("unused for {older_than} day(s)"))
        }
        CacheCommand::Clean => {
            let store = imgc::registry::store::Store::open_exclusive(&root)?;
            let removed = store.prune(days(0));
            let index = imgc::cache::prune_index(&root, true);
            (removed, index, "(all)".to_string())
        }
    };
    let _ = writeln!(
        out,
        "removed {} blob(s) {verb}, {} from {}",
        removed.blobs,
        super::human(removed.bytes),
        root.display()
    );
    if index.files > 0 {
        let _ = writeln!(
            out,
            "removed {} layer cache entr(ies) and fingerprint table(s) of no further use, {}",
            index.files,
            super::human(index.bytes)
        );
    }
    Ok(())
}

/// `imgc cache prune --repo REPO`: deletes the cache repository's entries
/// filed at least `days` days ago.
fn prune_repo(repo: &str, registry: &RegistryArgs, days: u64, store: &Path) -> Result<(), Failure> {
    let client = client(registry, None, true)?;
    let cache = imgc::registry::cache_repo::CacheRepo::new(client, repo, store)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let done = cache.prune(days.saturating_mul(86_400), now)?;
    println!(
        "removed {} of {} cache entr(ies) filed {days} day(s) ago or more from {repo} (their blobs go with the registry's garbage collection)",
        done.deleted, done.entries
    );
    Ok(())
}
