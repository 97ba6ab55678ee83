//! What imgc shows on stderr while it works: one line per layer, base blob,
//! pulled and pushed blob and manifest, and, on a terminal, progress bars for
//! the layer being built and the blobs being uploaded.

use super::render::clean;
use super::{human, short};
use imgc::progress::{BlobOutcome, CacheHit, Event, Reporter};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;

/// Reports build events on stderr.
pub struct StderrReporter {
    quiet: bool,
    /// Whether stderr is a terminal (bars are drawn only there).
    terminal: bool,
    bar: Mutex<Option<ProgressBar>>,
    /// Bars of blobs being uploaded, by digest.
    uploads: Mutex<BTreeMap<String, ProgressBar>>,
    multi: MultiProgress,
}

impl StderrReporter {
    /// A reporter; `quiet` shows only warnings.
    pub fn new(quiet: bool) -> Self {
        StderrReporter {
            quiet,
            terminal: std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
            uploads: Mutex::new(BTreeMap::new()),
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
        }
    }

    fn any_upload_bar(&self) -> bool {
        self.uploads.lock().map(|u| !u.is_empty()).unwrap_or(false)
    }

    fn start_upload(&self, digest: &str, size: u64) {
        if !self.terminal {
            return;
        }
        let bar = self.multi.add(ProgressBar::new(size.max(1)));
        if let Ok(style) = ProgressStyle::with_template(
            "  push  {msg:<19} [{wide_bar}] {bytes:>11} {binary_bytes_per_sec:>13}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(short(digest).to_string());
        if let Ok(mut u) = self.uploads.lock() {
            u.insert(digest.to_string(), bar);
        }
    }

    fn end_upload(&self, digest: &str) {
        if let Ok(mut u) = self.uploads.lock() {
            if let Some(bar) = u.remove(digest) {
                bar.finish_and_clear();
                self.multi.remove(&bar);
            }
        }
    }

    /// Prints a line above the bar, if one is shown. On a terminal the
    /// line is cut to its width, so that it never wraps.
    fn line(&self, text: String) {
        let mut text = clean(&text);
        if self.terminal {
            text = fit(&text, terminal_width().saturating_sub(1));
        }
        if self.any_upload_bar() {
            let _ = self.multi.println(text);
            return;
        }
        match self.bar.lock().ok().as_deref().and_then(Option::as_ref) {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn start_bar(&self, name: &str, total: u64) {
        if !self.terminal {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total.max(1)), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "  layer {msg:<16} [{wide_bar}] {bytes:>11} {binary_bytes_per_sec:>13}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(fit(&clean(name), NAME_WIDTH));
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }

    fn end_bar(&self) {
        if let Ok(mut slot) = self.bar.lock() {
            if let Some(bar) = slot.take() {
                bar.finish_and_clear();
            }
        }
    }
}

/// Layer names shown in progress lines (longer ones are cut).
const NAME_WIDTH: usize = 16;

/// `text` cut to `width` characters, the cut marked with `…`.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The width of the terminal on stderr (80 when it cannot be told).
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ only writes a `winsize` into the struct given.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

/// `  <verb>  <what>  <digest> <size>`: one line per blob moved.
fn blob_line(verb: &str, what: &str, digest: &str, size: u64) -> String {
    format!(
        "  {verb:<5} {what:<16} {} {:>10}",
        short(digest),
        human(size)
    )
}

impl StderrReporter {
    /// Events of building and writing the layout.
    fn build_event(&self, event: Event<'_>) {
        match event {
            Event::Planned { images, layers } => self.line(format!(
                "planned {images} image(s), {layers} distinct layer(s)"
            )),
            Event::LayerStarted {
                name,
                content_bytes,
                ..
            } => self.start_bar(name, content_bytes),
            Event::LayerProgress { tar_bytes, .. } => {
                if let Ok(slot) = self.bar.lock() {
                    if let Some(bar) = slot.as_ref() {
                        bar.set_position(tar_bytes.min(bar.length().unwrap_or(tar_bytes)));
                    }
                }
            }
            Event::LayerFinished {
                name,
                digest,
                size,
                tar_size,
                cache,
            } => {
                self.end_bar();
                let how = match cache {
                    Some(CacheHit::Repo) => "cache repo",
                    Some(CacheHit::Local) => "cached",
                    None => "tar",
                };
                self.line(format!(
                    "  layer {:<16} {} {:>10} ({how} {})",
                    fit(name, NAME_WIDTH),
                    short(digest.as_str()),
                    human(size),
                    human(tar_size)
                ))
            }
            Event::BaseBlobCopied { digest, size } => {
                self.line(blob_line("base", "blob", digest.as_str(), size))
            }
            Event::BlobsRemoved { count } => {
                self.line(format!("  removed {count} blob(s) no tag uses any more"))
            }
            Event::LayoutWritten { path, digest } => self.line(format!(
                "wrote {} ({})",
                path.display(),
                short(digest.as_str())
            )),
            other => self.registry_event(other),
        }
    }

    /// Events of talking to registries, and warnings.
    fn registry_event(&self, event: Event<'_>) {
        match event {
            Event::Warning(w) => self.line(format!("warning: {w}")),
            Event::Retrying {
                what,
                attempt,
                wait,
                reason,
            } => self.line(format!(
                "  retry {what} in {:.1}s (attempt {attempt} failed: {reason})",
                wait.as_secs_f64()
            )),
            Event::BlobPulled { digest, size } => {
                self.line(blob_line("pull", "blob", digest.as_str(), size))
            }
            Event::PushStarted { digest, size } => self.start_upload(digest.as_str(), size),
            Event::PushProgress { digest, sent } => {
                if let Ok(u) = self.uploads.lock() {
                    if let Some(bar) = u.get(digest.as_str()) {
                        bar.set_position(sent.min(bar.length().unwrap_or(sent)));
                    }
                }
            }
            Event::BlobPushed { digest, size, how } => {
                self.end_upload(digest.as_str());
                let how = match how {
                    BlobOutcome::Existed => "exists",
                    BlobOutcome::Mounted => "mounted",
                    BlobOutcome::Uploaded => "uploaded",
                };
                self.line(blob_line("push", how, digest.as_str(), size))
            }
            Event::ManifestPushed { reference, digest } => {
                let tag = if reference.starts_with("sha256:") {
                    ""
                } else {
                    reference
                };
                self.line(format!(
                    "  push  {:<16} {} {tag}",
                    "manifest",
                    short(digest.as_str())
                ))
            }
            // Handled by `build_event`, which sends only the others here.
            Event::Planned { .. }
            | Event::LayerStarted { .. }
            | Event::LayerProgress { .. }
            | Event::LayerFinished { .. }
            | Event::BaseBlobCopied { .. }
            | Event::BlobsRemoved { .. }
            | Event::LayoutWritten { .. } => {}
        }
    }
}

impl Reporter for StderrReporter {
    fn report(&self, event: Event<'_>) {
        if self.quiet {
            if let Event::Warning(w) = event {
                self.line(format!("warning: {w}"));
            }
            return;
        }
        // `build_event` passes what is not its own to `registry_event`.
        self.build_event(event);
    }
}
