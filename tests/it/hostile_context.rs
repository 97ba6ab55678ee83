//! A hostile build context (issue 7, group "context"): FIFOs and sockets in
//! it, and files and folders swapped between planning and building (a
//! folder for a symlink to outside, a file for a FIFO, a file for another
//! file). imgc never reads outside the context, never hangs, and never
//! packs a file other than the one it planned.

use crate::support::*;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A first layer big enough to take a moment to compress (`-j 1`), so that
/// the context can be changed after planning and before the second layer.
const SPEC: &str = r#"[image]
platforms = ["linux/amd64"]
[[layers]]
name = "big"
files = [{ src = "big.bin", dst = "/big.bin" }]
[[layers]]
name = "app"
files = [{ src = "sub/f", dst = "/f" }]
"#;

struct Race {
    _t: tempfile::TempDir,
    root: PathBuf,
    ctx: PathBuf,
}

impl Race {
    fn new() -> Race {
        let t = tempdir();
        let root = t.path().to_path_buf();
        let ctx = root.join("ctx");
        fs::create_dir_all(ctx.join("sub")).unwrap();
        fs::write(ctx.join("sub/f"), "inside\n").unwrap();
        fs::create_dir_all(root.join("outside")).unwrap();
        fs::write(root.join("outside/f"), "SECRET\n").unwrap();
        // 96 MiB that gzip cannot shrink much.
        fs::write(ctx.join("big.bin"), noise(7, 96 << 20)).unwrap();
        fs::write(ctx.join("image.toml"), SPEC).unwrap();
        Race { _t: t, root, ctx }
    }

    fn out(&self) -> PathBuf {
        self.root.join("out")
    }

    /// Starts a build, runs `change` as soon as planning is done, and waits
    /// (at most 60 s, then kills it). Returns (exit code, stderr, seconds).
    fn build_changing(&self, change: impl FnOnce(&Path)) -> (Option<i32>, String, f64) {
        self.build_changing_with("1", change)
    }

    /// [`Race::build_changing`] with `-j jobs`.
    fn build_changing_with(
        &self,
        jobs: &str,
        change: impl FnOnce(&Path),
    ) -> (Option<i32>, String, f64) {
        let started = Instant::now();
        let mut child = imgc()
            .arg("build")
            .arg(self.ctx.join("image.toml"))
            .args(["-j", jobs, "--output"])
            .arg(oci_arg(&self.out()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut err = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap_or_default();
            err.push_str(&line);
            err.push('\n');
            if line.starts_with("planned") {
                break;
            }
        }
        change(&self.ctx);
        let pid = child.id();
        let watchdog = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        });
        for line in lines {
            err.push_str(&line.unwrap_or_default());
            err.push('\n');
        }
        let status = child.wait().unwrap();
        drop(watchdog);
        (status.code(), err, started.elapsed().as_secs_f64())
    }
}

fn assert_refused(race: &Race, result: (Option<i32>, String, f64), needle: &str) {
    let (code, err, secs) = result;
    assert_eq!(
        code,
        Some(1),
        "the build did not fail ({secs:.1} s):\n{err}"
    );
    assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    assert!(err.contains("sub/f"), "{err}");
    assert!(!race.out().exists(), "a layout was written");
}

#[test]
fn a_folder_swapped_for_a_symlink_to_outside_after_planning_is_not_followed() {
    let race = Race::new();
    let outside = race.root.join("outside");
    let result = race.build_changing(|ctx| {
        fs::rename(ctx.join("sub"), ctx.join("sub.old")).unwrap();
        std::os::unix::fs::symlink(&outside, ctx.join("sub")).unwrap();
    });
    assert_refused(&race, result, "symbolic link");
}

#[test]
fn a_file_swapped_for_a_fifo_after_planning_is_refused_without_hanging() {
    let race = Race::new();
    let result = race.build_changing(|ctx| {
        mkfifo(&ctx.join("sub/f"));
    });
    assert!(result.2 < 30.0, "took {:.1} s", result.2);
    assert_refused(&race, result, "named pipe");
}

#[test]
fn a_file_replaced_by_another_after_planning_is_refused() {
    let race = Race::new();
    let result = race.build_changing(|ctx| {
        // Same size, another inode: what an editor's atomic save does.
        fs::write(ctx.join("sub/g"), "OUTSID\n").unwrap();
        fs::rename(ctx.join("sub/g"), ctx.join("sub/f")).unwrap();
    });
    assert_refused(&race, result, "not the file that was planned");
}

#[test]
fn fifos_and_sockets_in_the_context_are_refused_when_planning() {
    let t = tempdir();
    let ctx = t.path();
    fs::create_dir_all(ctx.join("d")).unwrap();
    fs::write(ctx.join("d/ok"), "ok").unwrap();
    mkfifo(&ctx.join("d/pipe"));
    let _sock = std::os::unix::net::UnixListener::bind(ctx.join("d/sock")).unwrap();
    for (name, what) in [("pipe", "a named pipe"), ("sock", "a socket")] {
        fs::write(
            ctx.join("image.toml"),
            format!(
                "[image]\nplatforms = [\"linux/amd64\"]\n[[layers]]\nname = \"a\"\n\
                 files = [{{ src = \"d/{name}\", dst = \"/x\" }}]\n"
            ),
        )
        .unwrap();
        let m = measured(
            imgc().arg("plan").arg(ctx.join("image.toml")),
            Duration::from_secs(20),
        );
        let err = stderr(&m.out);
        assert_eq!(m.out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(what) && err.contains(&format!("d/{name}")),
            "{err}"
        );
        assert!(err.contains("image.toml:5:"), "{err}");
    }
}

/// Among many small files, with `-j 2`: a file that changed after planning
/// fails the build, named, and quickly (a read-ahead thread once tried here
/// hung the build on such a failure; see the design chapter).
#[test]
fn a_changed_file_among_many_fails_the_build_quickly() {
    let race = Race::new();
    let many = race.ctx.join("many");
    fs::create_dir(&many).unwrap();
    // Sorted first in the layer: a file too big to be read ahead.
    fs::write(many.join("0.bin"), noise(3, 200_000)).unwrap();
    for i in 0..600 {
        fs::write(many.join(format!("f{i:04}.txt")), format!("small {i}\n")).unwrap();
    }
    fs::write(
        race.ctx.join("image.toml"),
        SPEC.replace("src = \"sub/f\"", "src = \"many/**\"")
            .replace("dst = \"/f\"", "dst = \"/many/\""),
    )
    .unwrap();
    // The big file shrinks after planning: the build fails on it.
    let (code, err, secs) = race.build_changing_with("2", |ctx| {
        fs::write(ctx.join("many/0.bin"), b"short").unwrap();
    });
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("many/0.bin"), "{err}");
    assert!(secs < 30.0, "{secs} s");
    // A small file changed after planning fails the build too, named.
    fs::write(many.join("0.bin"), noise(3, 200_000)).unwrap();
    let (code, err, _) = race.build_changing_with("2", |ctx| {
        fs::write(ctx.join("many/f0300.txt"), b"another size entirely").unwrap();
    });
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("many/f0300.txt"), "{err}");
    assert!(!race.out().exists(), "a layout was written");
}
