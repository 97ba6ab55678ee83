//! What `imgc build` shows on stderr while it works: one line per layer and
//! base blob, and, on a terminal, a progress bar for the layer being built.

use super::{human, short};
use imgc::progress::{Event, Reporter};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;

/// Reports build events on stderr.
pub struct StderrReporter {
    quiet: bool,
    /// Whether stderr is a terminal (bars are drawn only there).
    terminal: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl StderrReporter {
    /// A reporter; `quiet` shows only warnings.
    pub fn new(quiet: bool) -> Self {
        StderrReporter {
            quiet,
            terminal: std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    /// Prints a line above the bar, if one is shown.
    fn line(&self, text: String) {
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
            "  layer {msg:<16} [{bar:30}] {bytes:>10} / {total_bytes} {binary_bytes_per_sec}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(name.to_string());
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

impl Reporter for StderrReporter {
    fn report(&self, event: Event<'_>) {
        if self.quiet {
            if let Event::Warning(w) = event {
                self.line(format!("warning: {w}"));
            }
            return;
        }
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
            } => {
                self.end_bar();
                self.line(format!(
                    "  layer {name:<16} {} {:>10} (tar {})",
                    short(digest.as_str()),
                    human(size),
                    human(tar_size)
                ))
            }
            Event::BaseBlobCopied { digest, size } => self.line(format!(
                "  base  {:<16} {} {:>10}",
                "blob",
                short(digest.as_str()),
                human(size)
            )),
            Event::BlobsRemoved { count } => {
                self.line(format!("  removed {count} blob(s) no tag uses any more"))
            }
            Event::Warning(w) => self.line(format!("warning: {w}")),
            Event::LayoutWritten { path, digest } => self.line(format!(
                "wrote {} ({})",
                path.display(),
                short(digest.as_str())
            )),
        }
    }
}
