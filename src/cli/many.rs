//! `imgc build SPEC MORE_SPECS…`: several specs in one run, built in
//! parallel by a few workers that share the layer cache (a layer the specs
//! have in common is built once), one snapshot of their contexts (each path
//! looked at once, however many specs plan it) and one display: a line per
//! spec when it is done, and on a terminal one bar counting the specs.

use super::render;
use super::{BuildArgs, Failure, Format, Sharing, Shown};
use imgc::progress::{Event, Reporter};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The run's one display: lines above a bar of specs done (on a terminal),
/// or plain lines.
struct Display {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Display {
    fn new(specs: usize, quiet: bool) -> Display {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(specs as u64), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("specs [{wide_bar}] {pos}/{len}") {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Display { bar, quiet }
    }

    fn line(&self, text: &str) {
        let text = render::clean(text);
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }
}

/// One spec's reporter: its warnings, named by the spec, and a count of
/// its layers built and taken from the cache.
struct SpecReporter<'a> {
    spec: String,
    display: &'a Display,
    built: AtomicUsize,
    cached: AtomicUsize,
}

impl Reporter for SpecReporter<'_> {
    fn report(&self, event: Event<'_>) {
        match event {
            Event::Warning(w) => self.display.line(&format!("{}: warning: {w}", self.spec)),
            Event::LayerFinished { cache, .. } => {
                let n = if cache.is_some() {
                    &self.cached
                } else {
                    &self.built
                };
                n.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// What the workers share.
struct Run<'a> {
    args: &'a BuildArgs,
    specs: &'a [PathBuf],
    next: AtomicUsize,
    stop: AtomicBool,
    results: Mutex<Vec<Option<Result<Shown, ()>>>>,
    cache: Option<imgc::cache::LayerCache>,
    snapshot: std::sync::Arc<imgc::sources::Snapshot>,
    display: Display,
    threads: usize,
}

impl Run<'_> {
    /// Takes specs until none is left (or a failure stops the run).
    fn work(&self) {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            let Some(spec) = self.specs.get(i) else {
                return;
            };
            let result = self.build(spec);
            if result.is_err() && self.args.fail_fast {
                self.stop.store(true, Ordering::SeqCst);
            }
            if let Ok(mut r) = self.results.lock() {
                r[i] = Some(result);
            }
            self.display.done();
        }
    }

    /// Builds one spec and shows its line.
    fn build(&self, spec: &std::path::Path) -> Result<Shown, ()> {
        let started = Instant::now();
        let mut one = self.args.clone();
        one.common.spec = spec.to_path_buf();
        one.more.clear();
        let reporter = SpecReporter {
            spec: spec.display().to_string(),
            display: &self.display,
            built: AtomicUsize::new(0),
            cached: AtomicUsize::new(0),
        };
        let sharing = Sharing {
            cache: self.cache.as_ref(),
            snapshot: &self.snapshot,
            reporter: &reporter,
            threads: self.threads,
        };
        match super::build_one(&one, Some(&sharing)) {
            Ok(shown) => {
                if !self.display.quiet {
                    self.display.line(&format!(
                        "{}: {} ({} layer(s) built, {} from the cache) in {:.2} s",
                        reporter.spec,
                        shown_digest(&shown),
                        reporter.built.load(Ordering::Relaxed),
                        reporter.cached.load(Ordering::Relaxed),
                        started.elapsed().as_secs_f64()
                    ));
                }
                Ok(shown)
            }
            Err(failure) => {
                let text = render::render(&failure);
                self.display
                    .line(&format!("{}: failed\n{}", reporter.spec, text.trim_end()));
                Err(())
            }
        }
    }
}

/// The index digest a build showed, short.
fn shown_digest(shown: &Shown) -> String {
    let full = match shown {
        Shown::Digest(d) => d.clone(),
        Shown::Summary(v) => v["index"]["digest"].as_str().unwrap_or("").to_string(),
    };
    super::short(&full).to_string()
}

/// `imgc build SPEC MORE_SPECS…`: every spec into its default output, by
/// up to `-j` workers at once (each compressing with up to `-j` threads);
/// a failure is shown, named by its spec file, and
/// the others still build (unless `--fail-fast`: then no spec starts after
/// a failure). Exit 1 if any failed.
pub(super) fn build_many(args: BuildArgs) -> Result<(), Failure> {
    if args.common.output.is_some() || args.digest_file.is_some() || args.metadata_file.is_some() {
        return Err(Failure::Usage(
            "--output, --digest-file and --metadata-file name one image: with several specs, each is written to ./imgc-out/<name>".into(),
        ));
    }
    let specs: Vec<PathBuf> = std::iter::once(args.common.spec.clone())
        .chain(args.more.iter().cloned())
        .collect();
    let threads = super::threads(args.jobs)?;
    let workers = threads.min(specs.len()).max(1);
    let display = Display::new(specs.len(), args.quiet);
    let cache = super::layer_cache(
        args.no_cache,
        &SpecReporter {
            spec: "imgc".to_string(),
            display: &display,
            built: AtomicUsize::new(0),
            cached: AtomicUsize::new(0),
        },
    );
    let run = Run {
        args: &args,
        specs: &specs,
        next: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        results: Mutex::new((0..specs.len()).map(|_| None).collect()),
        cache,
        snapshot: Default::default(),
        display,
        // Each spec compresses with all the threads: a worker waiting for
        // a shared layer leaves its core to the one building it.
        threads,
    };
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| run.work());
        }
    });
    if let Some(bar) = &run.display.bar {
        bar.finish_and_clear();
    }
    let results = run.results.into_inner().unwrap_or_default();
    finish(&specs, results, args.format)
}

/// Prints stdout and the closing line: exit 1 if any spec failed.
fn finish(
    specs: &[PathBuf],
    results: Vec<Option<Result<Shown, ()>>>,
    format: Format,
) -> Result<(), Failure> {
    let done: Vec<(String, Option<Shown>)> = specs
        .iter()
        .zip(results)
        .filter_map(|(spec, r)| Some((spec.display().to_string(), r?.ok())))
        .collect();
    print_many(&done, format);
    let failed: Vec<&str> = done
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(s, _)| s.as_str())
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    let skipped = specs.len() - done.len();
    let skipped = if skipped > 0 {
        format!(" ({skipped} not built: --fail-fast)")
    } else {
        String::new()
    };
    Err(Failure::Cli(
        format!(
            "{} of {} specs failed: {}{skipped}",
            failed.len(),
            specs.len(),
            failed.join(", ")
        ),
        None,
    ))
}

/// Stdout of a many-spec build, in the order the specs were given: `DIGEST
/// SPEC` per spec built, or one JSON array of `{"spec", "ok", "summary"}`.
fn print_many(results: &[(String, Option<Shown>)], format: Format) {
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let docs: Vec<serde_json::Value> = results
            .iter()
            .map(|(spec, r)| match r {
                Some(Shown::Summary(v)) => {
                    serde_json::json!({ "spec": spec, "ok": true, "summary": v })
                }
                _ => serde_json::json!({ "spec": spec, "ok": false }),
            })
            .collect();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&docs).unwrap_or_default()
        );
        return;
    }
    for (spec, r) in results {
        if let Some(Shown::Digest(d)) = r {
            let _ = writeln!(out, "{d} {spec}");
        }
    }
}
