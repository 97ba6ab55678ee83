//! The command line: clap arguments, one function per command, the only
//! printer and the only reader of environment variables (`IMGC_THREADS`,
//! `SOURCE_DATE_EPOCH`). Errors are rendered here once, with their spec
//! location and a hint.

mod env;
mod inspect;
mod many;
mod matrix;
mod plan_json;
mod registry;
mod render;
mod report;

use clap::{Args, Parser, Subcommand, ValueEnum};
use imgc::oci::Platform;
use imgc::plan::{self, Plan, PlanOptions};
use imgc::spec::SpecFile;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Compose reproducible multi-platform OCI images from a declarative spec.
#[derive(Parser, Debug)]
#[command(name = "imgc", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Plan, build and write an OCI image layout.
    Build(BuildArgs),
    /// Print the layer graph without building.
    Plan(PlanArgs),
    /// Resolve the spec's registry bases to digests and write image.lock.
    Lock(registry::LockArgs),
    /// Push an image from an OCI layout to a registry.
    Push(registry::PushArgs),
    /// Join per-platform builds (CI shards) into one index and push it.
    Index(registry::IndexArgs),
    /// Show an image or index, from a registry or a layout.
    Inspect(inspect::InspectArgs),
    /// Show or shrink the local store: pulled blobs, the layer cache (du, prune, clean).
    Cache(registry::CacheArgs),
    /// Print a JSON Schema: of image.toml (default), or of `inspect --format json`.
    Schema {
        /// Which document.
        #[arg(value_enum, default_value_t = SchemaOf::Spec)]
        of: SchemaOf,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum SchemaOf {
    /// image.toml.
    Spec,
    /// The output of `imgc inspect --format json`.
    Inspect,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct CommonArgs {
    /// The spec file (image.toml).
    spec: PathBuf,
    /// Build only this platform (repeatable), e.g. linux/arm64.
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]", value_parser = parse_platform)]
    platforms: Vec<Platform>,
    /// Set a template variable (repeatable), overriding [vars].
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    /// The build context (default: the spec file's folder).
    #[arg(long, value_name = "DIR")]
    context: Option<PathBuf>,
    /// Where to write: oci:DIR (default: ./imgc-out/<name>). Never packed
    /// into a layer, nor is ./imgc-out.
    #[arg(long, short, value_name = "oci:DIR", value_parser = parse_output)]
    output: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct BuildArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Write the image index digest (sha256:…) to this file.
    #[arg(long, value_name = "FILE")]
    digest_file: Option<PathBuf>,
    /// Worker threads (default: IMGC_THREADS, else the number of cores).
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    jobs: Option<u16>,
    /// Print only the digest.
    #[arg(long, short)]
    quiet: bool,
    /// What stdout gets: the index digest (`text`), or a JSON summary
    /// (index, each platform's manifest and layers, tags, pushed references).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Compress every layer again: neither read nor write the layer cache.
    #[arg(long)]
    no_cache: bool,
    /// A registry repository shared as a layer cache between machines
    /// (overrides `[image].cache_repo`): layers are looked up there by
    /// content, checked against the sources, and built ones are pushed there.
    #[arg(long, value_name = "REPO", conflicts_with = "no_cache")]
    cache_repo: Option<String>,
    /// More specs to build in the same run, each into its default output.
    #[arg(value_name = "MORE_SPECS")]
    more: Vec<PathBuf>,
    /// With several specs: stop at the first that fails (default: build
    /// every spec, then exit 1 if any failed).
    #[arg(long)]
    fail_fast: bool,
    /// Push to [image].name with every tag after building.
    #[arg(long)]
    push: bool,
    /// Push only the platform manifests, by digest (for CI shards; join them with `imgc index`).
    #[arg(long, conflicts_with = "push")]
    push_by_digest: bool,
    /// Tag (repeatable), instead of [image].tags.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Fail unless every registry base is pinned in the lock file.
    #[arg(long)]
    locked: bool,
    /// Use no network: bases come from the local store only.
    #[arg(long, conflicts_with_all = ["push", "push_by_digest"])]
    offline: bool,
    /// Write a JSON summary (index and manifest digests, tags, pushed references) to this file.
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    #[command(flatten)]
    registry: registry::RegistryArgs,
    #[command(flatten)]
    transfer: registry::TransferArgs,
}

#[derive(Args, Debug)]
struct PlanArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Fail unless every registry base is pinned in the lock file.
    #[arg(long)]
    locked: bool,
    /// Use no network: bases come from the local store only.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    registry: registry::RegistryArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Print, instead of the plan, a CI matrix: one job per spec × platform
    /// (this SPEC and every MORE_SPECS).
    #[arg(long)]
    matrix: bool,
    /// The matrix's form: GitHub Actions' `strategy.matrix`, or GitLab's
    /// `parallel:matrix`.
    #[arg(long, value_enum, default_value_t = matrix::MatrixFormat::Github, requires = "matrix")]
    matrix_format: matrix::MatrixFormat,
    /// More specs, for `--matrix`.
    #[arg(value_name = "MORE_SPECS", requires = "matrix")]
    more: Vec<PathBuf>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

pub(crate) fn parse_platform(s: &str) -> Result<Platform, String> {
    s.parse()
        .map_err(|e: imgc::oci::PlatformError| e.to_string())
}

pub(crate) fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn parse_output(s: &str) -> Result<PathBuf, String> {
    match s.strip_prefix("oci:") {
        Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
        _ => Err(format!(
            "`{s}` is not a supported output; use oci:DIR (an OCI image layout folder)"
        )),
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove this process's staging folders and
/// partial downloads, then exit with 128 + the signal. The signals are
/// blocked in every thread (threads inherit the mask) and taken by one
/// thread with `sigwait`; child processes start with an empty mask.
fn handle_signals() {
    // SAFETY: plain libc calls on a local, initialized signal set.
    let set = unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        set
    };
    let waiter = std::thread::Builder::new()
        .name("imgc-signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is initialized; `sig` is a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                imgc::layout::staging::remove_active();
                eprintln!("imgc: interrupted; temporary files removed");
                std::process::exit(128 + sig);
            }
        });
    if waiter.is_err() {
        // SAFETY: as above; without a waiter, signals act as by default.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

/// Runs the CLI and returns the process exit code.
pub fn run() -> i32 {
    handle_signals();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let result = match cli.command {
        Command::Build(args) => cmd_build(args),
        Command::Plan(args) => cmd_plan(args),
        Command::Lock(args) => registry::cmd_lock(args),
        Command::Push(args) => registry::cmd_push(args),
        Command::Index(args) => registry::cmd_index(args),
        Command::Inspect(args) => inspect::cmd_inspect(args),
        Command::Cache(args) => registry::cmd_cache(args),
        Command::Schema { of } => {
            print!(
                "{}",
                match of {
                    SchemaOf::Spec => imgc::spec::json_schema(),
                    SchemaOf::Inspect => imgc::inspect::json_schema(),
                }
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => 0,
        Err(failure) => {
            eprint!("{}", render::render(&failure));
            failure.exit_code()
        }
    }
}

/// A library error as the CLI shows it: its text and causes, and where
/// the library knows them, a spec location and a hint.
pub trait Diagnostic: std::error::Error + Send + Sync + 'static {
    /// Where in a spec file the error is.
    fn location(&self) -> Option<&imgc::spec::Location> {
        None
    }
    /// A hint for the user.
    fn help(&self) -> Option<String> {
        None
    }
}

impl Diagnostic for imgc::Error {
    fn help(&self) -> Option<String> {
        imgc::Error::help(self)
    }
}

impl Diagnostic for imgc::spec::SpecError {
    fn location(&self) -> Option<&imgc::spec::Location> {
        imgc::spec::SpecError::location(self)
    }
    fn help(&self) -> Option<String> {
        imgc::spec::SpecError::help(self)
    }
}

impl Diagnostic for imgc::plan::PlanError {
    fn location(&self) -> Option<&imgc::spec::Location> {
        imgc::plan::PlanError::location(self)
    }
    fn help(&self) -> Option<String> {
        imgc::plan::PlanError::help(self)
    }
}

impl Diagnostic for imgc::registry::RegistryError {
    fn help(&self) -> Option<String> {
        imgc::registry::RegistryError::help(self)
    }
}

impl Diagnostic for imgc::base::BaseError {
    fn help(&self) -> Option<String> {
        imgc::base::BaseError::help(self)
    }
}

impl Diagnostic for imgc::registry::lock::LockError {}
impl Diagnostic for imgc::registry::shards::ShardError {}
impl Diagnostic for imgc::inspect::InspectError {}

/// A failure of a command: a library error or a CLI-level one.
#[derive(Debug)]
pub enum Failure {
    /// From the library.
    Lib(Box<dyn Diagnostic>),
    /// From the CLI itself (environment, output files), exit 1.
    Cli(String, Option<std::io::Error>),
    /// A usage problem found after parsing, exit 2.
    Usage(String),
}

impl Failure {
    fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl<E: Diagnostic> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Lib(Box::new(e))
    }
}

fn env_epoch() -> Result<Option<u64>, Failure> {
    let bad = |v: &str| {
        Failure::Usage(format!(
            "SOURCE_DATE_EPOCH `{v}` is not a whole number of seconds since 1970"
        ))
    };
    match env::text(env::SOURCE_DATE_EPOCH) {
        Some(Ok(v)) if v.trim().is_empty() => Ok(None),
        Some(Ok(v)) => v.trim().parse().map(Some).map_err(|_| bad(&v)),
        Some(Err(raw)) => Err(bad(&raw.to_string_lossy())),
        None => Ok(None),
    }
}

fn threads(jobs: Option<u16>) -> Result<usize, Failure> {
    if let Some(j) = jobs {
        return Ok(usize::from(j));
    }
    let value = env::text(env::IMGC_THREADS)
        .map(|v| v.unwrap_or_else(|raw| raw.to_string_lossy().into_owned()));
    match value {
        Some(v) if !v.trim().is_empty() => match v.trim().parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => Err(Failure::Usage(format!(
                "IMGC_THREADS `{v}` is not a number of threads from 1 to 1024"
            ))),
        },
        _ => Ok(imgc::build::default_threads()),
    }
}

/// What a build never packs, whatever the globs say: `./imgc-out` and the
/// `--output` layout (each with the staging folders beside it). `plan`,
/// `build` use this same list.
pub(crate) fn skip_list(output: Option<&Path>) -> Vec<PathBuf> {
    let mut skip = vec![PathBuf::from(DEFAULT_OUTPUT_ROOT)];
    skip.extend(output.map(Path::to_path_buf));
    skip.into_iter()
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .collect()
}

/// Checks, before building, that an output file can be written: its folder
/// exists and it is not a folder itself.
fn check_output_file(flag: &str, path: Option<&Path>) -> Result<(), Failure> {
    let Some(path) = path else {
        return Ok(());
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(Failure::Cli(
            format!(
                "the folder of {flag} `{}` does not exist; nothing was built",
                path.display()
            ),
            None,
        ));
    }
    if path.is_dir() {
        return Err(Failure::Cli(
            format!(
                "{flag} `{}` is a folder; name a file; nothing was built",
                path.display()
            ),
            None,
        ));
    }
    Ok(())
}

fn make_plan(
    file: &SpecFile,
    common: &CommonArgs,
    remote: Option<std::sync::Arc<dyn imgc::base::RemoteBases>>,
    tags: &[String],
    snapshot: Option<&std::sync::Arc<imgc::sources::Snapshot>>,
) -> Result<Plan, Failure> {
    let root = common.context.clone().unwrap_or_else(|| spec_dir(file));
    let skip = skip_list(common.output.as_deref());
    let context = match snapshot {
        Some(snap) => imgc::sources::DiskContext::open_in(&root, &skip, snap.clone())?,
        None => imgc::sources::DiskContext::open(&root, &skip)?,
    };
    let bases = imgc::base::LayoutBases {
        spec_dir: spec_dir(file),
        remote,
    };
    let opts = plan_options(common, tags)?;
    let sources = plan::sources::Sources {
        context: &context,
        bases: &bases,
    };
    Ok(plan::plan(file, &opts, sources)?)
}

/// What planning takes from the command line besides the sources.
fn plan_options(common: &CommonArgs, tags: &[String]) -> Result<PlanOptions, Failure> {
    Ok(PlanOptions {
        platforms: common.platforms.clone(),
        vars: common.vars.iter().cloned().collect::<BTreeMap<_, _>>(),
        source_date_epoch: env_epoch()?,
        tags: tags.to_vec(),
    })
}

/// The spec file's folder: the default build context, and what relative
/// `oci:` bases are relative to.
pub(crate) fn spec_dir(file: &SpecFile) -> PathBuf {
    file.path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The folder default outputs go in.
pub(crate) const DEFAULT_OUTPUT_ROOT: &str = "imgc-out";

/// `./imgc-out/<last part of [image].name>`, else `./imgc-out/<spec folder>`.
fn default_output(file: &SpecFile) -> PathBuf {
    let from_name = file
        .spec
        .image
        .name
        .as_ref()
        .map(|n| n.value.as_str())
        .filter(|n| !n.contains("{{"))
        .and_then(|n| n.rsplit('/').next())
        .map(|n| n.split([':', '@']).next().unwrap_or(n).to_string())
        .filter(|n| !n.is_empty());
    let from_dir = || {
        std::fs::canonicalize(&file.path).ok().and_then(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
    };
    let name = from_name
        .or_else(from_dir)
        .unwrap_or_else(|| "image".to_string());
    Path::new(DEFAULT_OUTPUT_ROOT).join(name)
}

pub(crate) fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}

pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn cmd_build(args: BuildArgs) -> Result<(), Failure> {
    if !args.more.is_empty() {
        return many::build_many(args);
    }
    let shown = build_one(&args, None)?;
    let text = match shown {
        Shown::Digest(d) => d,
        Shown::Summary(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
    };
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    Ok(())
}

/// The layer cache in the local store, unless `--no-cache`; a store that
/// cannot be opened is a warning, and the build goes on without it.
fn layer_cache(
    no_cache: bool,
    reporter: &dyn imgc::progress::Reporter,
) -> Option<imgc::cache::LayerCache> {
    if no_cache {
        return None;
    }
    let dir = registry::store_dir()?;
    match imgc::cache::LayerCache::open(&dir) {
        Ok(c) => Some(c),
        Err(e) => {
            reporter.report(imgc::progress::Event::Warning(&format!(
                "the layer cache is not used: {e}"
            )));
            None
        }
    }
}

/// What a build prints on stdout.
enum Shown {
    Digest(String),
    Summary(serde_json::Value),
}

/// What a build of several specs shares: the layer cache, a reporter per
/// spec, and the compression threads each spec gets.
struct Sharing<'a> {
    cache: Option<&'a imgc::cache::LayerCache>,
    /// What the run's specs saw of their contexts (each path looked at once).
    snapshot: &'a std::sync::Arc<imgc::sources::Snapshot>,
    reporter: &'a dyn imgc::progress::Reporter,
    threads: usize,
}

/// Builds one spec (and pushes it when asked), alone or as one of several
/// (`sharing`); returns what stdout gets.
fn build_one(args: &BuildArgs, sharing: Option<&Sharing>) -> Result<Shown, Failure> {
    let threads = match sharing {
        Some(s) => s.threads,
        None => threads(args.jobs)?,
    };
    let file = SpecFile::load(&args.common.spec)?;
    let output = args
        .common
        .output
        .clone()
        .unwrap_or_else(|| default_output(&file));
    // Outputs and tags are checked before anything is built or written.
    check_output_file("--digest-file", args.digest_file.as_deref())?;
    check_output_file("--metadata-file", args.metadata_file.as_deref())?;
    check_tags(&args.tags)?;
    let client = registry::client(&args.registry, Some(&args.transfer), args.quiet)?;
    let mode = imgc::registry::pull::ResolveMode {
        locked: args.locked,
        offline: args.offline,
        update: false,
    };
    let (resolver, _) = registry::bases(&args.common.spec, client.clone(), mode)?;
    let plan = make_plan(
        &file,
        &args.common,
        Some(resolver.clone()),
        &args.tags,
        sharing.map(|s| s.snapshot),
    )?;
    let target = push_target(args, &plan, &file)?;
    // A push with no --output writes no layout: a private one, without the
    // registry bases' layers, is pushed and removed.
    let shallow = match (&target, &args.common.output) {
        (Some(_), None) => Some(registry::ShallowDir::create()?),
        _ => None,
    };
    let output = shallow.as_ref().map_or(output, |d| d.layout());
    let own = report::StderrReporter::new(args.quiet);
    let reporter: &dyn imgc::progress::Reporter = sharing.map_or(&own, |s| s.reporter);
    let own_cache = match sharing {
        Some(_) => None,
        None => layer_cache(args.no_cache, reporter),
    };
    let cache = sharing.map_or(own_cache.as_ref(), |s| s.cache);
    let remote = cache_repo(args, &plan, &client, cache.is_some())?;
    let opts = imgc::BuildOptions {
        threads,
        cache,
        shallow: shallow.is_some(),
        remote: remote
            .as_ref()
            .map(|r| r as &dyn imgc::shared_cache::RemoteCache),
    };
    let mut out = imgc::build(&plan, &output, &opts, reporter)?;
    let push = match &target {
        Some(target) => Some(push_built(args, &client, resolver, &plan, &out, target)?),
        None => None,
    };
    if shallow.is_some() {
        out.layout = None;
    }
    let pushed = push.as_ref().map(|p| p.pushed.clone()).unwrap_or_default();
    write_build_files(args, target.as_ref(), &plan, &out, pushed)?;
    let transfer = push.map(|p| (p, client.bytes_downloaded()));
    Ok(match args.format {
        Format::Text => Shown::Digest(out.index.digest.to_string()),
        Format::Json => Shown::Summary(build_summary(&out, transfer)),
    })
}

/// The cache repository: `--cache-repo`, else `[image].cache_repo`. It
/// needs the local layer cache (its blobs go into the store), and is not
/// used `--offline`.
fn cache_repo(
    args: &BuildArgs,
    plan: &Plan,
    client: &std::sync::Arc<imgc::registry::Client>,
    local: bool,
) -> Result<Option<imgc::registry::cache_repo::CacheRepo>, Failure> {
    let Some(repo) = args.cache_repo.as_ref().or(plan.cache_repo.as_ref()) else {
        return Ok(None);
    };
    let Some(store) = registry::store_dir().filter(|_| local && !args.offline) else {
        return Ok(None);
    };
    let repo = imgc::registry::cache_repo::CacheRepo::new(client.clone(), repo, &store)?;
    Ok(Some(repo))
}

/// Pushes a build's output to `target`; returns what the push did. A
/// registry base's layer the output lacks (a shallow build) is mounted from
/// the base's repository, or fetched and uploaded.
fn push_built(
    args: &BuildArgs,
    client: &imgc::registry::Client,
    resolver: std::sync::Arc<imgc::registry::pull::RegistryBases>,
    plan: &Plan,
    out: &imgc::BuildOutput,
    target: &imgc::registry::ImageRef,
) -> Result<imgc::registry::push::PushOutcome, Failure> {
    let opts = imgc::registry::push::PushOptions {
        tags: out.tags.clone(),
        by_digest: args.push_by_digest,
        bases: imgc::build::registry_base_layers(plan),
        fetcher: Some(resolver),
    };
    let layout = out.layout.as_deref().unwrap_or(Path::new("."));
    let outcome = client.push_layout(layout, &out.index, target, &opts)?;
    if !args.quiet {
        let downloaded = client.bytes_downloaded();
        eprintln!("{}", registry::push_summary(target, &outcome, downloaded));
    }
    Ok(outcome)
}

/// `build --format json`: what was built, written and pushed.
/// `transfer` is the push's outcome and the bytes the run downloaded.
fn build_summary(
    out: &imgc::BuildOutput,
    transfer: Option<(imgc::registry::push::PushOutcome, u64)>,
) -> serde_json::Value {
    let pushed = transfer.as_ref().map(|(p, _)| p.pushed.clone());
    let bytes = transfer.map(|(p, downloaded)| {
        serde_json::json!({
            "uploaded": p.bytes_uploaded,
            "mounted": p.bytes_mounted,
            "existed": p.bytes_existed,
            "downloaded": downloaded,
        })
    });
    serde_json::json!({
        "index": {
            "digest": out.index.digest,
            "mediaType": out.index.media_type,
            "size": out.index.size,
        },
        "layout": out.layout,
        "tags": out.tags,
        "images": out.images,
        "context_bytes_read": out.context_bytes_read,
        "pushed": pushed.unwrap_or_default(),
        "bytes": bytes,
    })
}

/// Refuses a `--tag` that is not a valid tag.
fn check_tags(tags: &[String]) -> Result<(), Failure> {
    match tags.iter().find(|t| !plan::valid_tag(t)) {
        Some(t) => Err(Failure::Usage(format!(
            "--tag `{t}` is not a valid tag (letters, digits, `_`, `.`, `-`; at most 128; not starting with `.` or `-`)"
        ))),
        None => Ok(()),
    }
}

/// The repository `--push` / `--push-by-digest` push to: `[image].name`.
fn push_target(
    args: &BuildArgs,
    plan: &Plan,
    file: &SpecFile,
) -> Result<Option<imgc::registry::ImageRef>, Failure> {
    if !(args.push || args.push_by_digest) {
        return Ok(None);
    }
    let Some(name) = &plan.name else {
        return Err(Failure::Usage(format!(
            "--push needs `[image].name` in `{}` (the repository to push to)",
            file.path.display()
        )));
    };
    let r = registry::parse_ref(name)?;
    Ok(Some(imgc::registry::ImageRef {
        tag: None,
        digest: None,
        ..r
    }))
}

/// Writes `--digest-file` and `--metadata-file`, when asked for.
fn write_build_files(
    args: &BuildArgs,
    target: Option<&imgc::registry::ImageRef>,
    plan: &Plan,
    out: &imgc::BuildOutput,
    pushed: Vec<String>,
) -> Result<(), Failure> {
    if let Some(f) = &args.digest_file {
        write_file(f, out.index.digest.as_str().as_bytes())?;
    }
    if let Some(f) = &args.metadata_file {
        let name = target.map(|t| t.name()).or_else(|| plan.name.clone());
        let mut m = imgc::registry::shards::Metadata::for_index(
            name,
            &out.index.digest,
            &out.index_doc,
            &out.positions,
            args.push,
        );
        m.tags = out.tags.clone();
        m.pushed = pushed;
        m.platforms = plan.platforms.clone();
        m.spec_digest = Some(plan.spec_digest.clone());
        registry::write_metadata(f, &m)?;
    }
    Ok(())
}

/// Writes a whole file atomically (a temporary file beside it, renamed).
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let fail = |e| Failure::Cli(format!("failed to write `{}`", path.display()), Some(e));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.imgc-{}.new", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(e)
        })
}

fn cmd_plan(args: PlanArgs) -> Result<(), Failure> {
    if args.matrix {
        let form = args.matrix_format;
        let mut specs = vec![args.common.spec.clone()];
        specs.extend(args.more.iter().cloned());
        let mode = imgc::registry::pull::ResolveMode {
            locked: args.locked,
            offline: args.offline,
            update: false,
        };
        let jobs = matrix::jobs(&specs, &args.common, &args.registry, mode)?;
        let doc = matrix::render(&jobs, form);
        let text = serde_json::to_string(&doc).unwrap_or_default();
        let _ = writeln!(std::io::stdout().lock(), "{text}");
        return Ok(());
    }
    let file = SpecFile::load(&args.common.spec)?;
    let client = registry::client(&args.registry, None, true)?;
    let mode = imgc::registry::pull::ResolveMode {
        locked: args.locked,
        offline: args.offline,
        update: false,
    };
    let (resolver, _) = registry::bases(&args.common.spec, client, mode)?;
    let plan = make_plan(&file, &args.common, Some(resolver), &[], None)?;
    let mut stdout = std::io::stdout().lock();
    let _ = match args.format {
        Format::Json => plan_json::write(&plan, stdout),
        Format::Text => stdout.write_all(plan_text(&plan).as_bytes()),
    };
    Ok(())
}

fn plan_text(plan: &Plan) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "epoch {} ({}), layers {}, media types {}\n",
        plan.epoch,
        imgc::oci::rfc3339(plan.epoch),
        plan.codec.format_id(),
        format!("{:?}", plan.media_types).to_lowercase()
    ));
    s.push_str(&format!("tags: {}\n", plan.tags.join(", ")));
    s.push_str("layers:\n");
    for (i, l) in plan.layers.iter().enumerate() {
        s.push_str(&format!(
            "  [{i}] {:<16} key {}  {} entries, {}  ({})\n",
            l.name,
            &l.key[..12],
            l.entries.len(),
            human(l.content_bytes()),
            l.platforms.join(", ")
        ));
    }
    s.push_str("images:\n");
    for img in &plan.images {
        let layers: Vec<String> = img.layers.iter().map(|i| format!("[{i}]")).collect();
        s.push_str(&format!(
            "  {:<16} base {} (+{} layers)  layers {}\n",
            img.platform.to_string(),
            img.base.reference,
            img.base.layers.len(),
            layers.join(" ")
        ));
    }
    s
}
