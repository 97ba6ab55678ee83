//! The reproducibility matrix: the same spec and inputs give the same bytes
//! whatever the folder, umask, time zone, locale, file mtimes, file creation
//! order and thread count; SOURCE_DATE_EPOCH is the one clock.

use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use crate::support::*;

const PLATFORMS: [&str; 2] = ["linux/amd64", "linux/arm64"];

/// A deterministic "random-ish" sequence (a 64-bit LCG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// Every path below `root` (files, folders, symlinks), sorted.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Recreates every file below `root` in reverse order, as under umask 077
/// (0600, or 0700 for executables so the exec bit survives), with scattered
/// mtimes; folders become 0700 with scattered mtimes too. Contents stay.
fn scramble(root: &Path) {
    enum Item {
        File(Vec<u8>, bool),
        Link(PathBuf),
    }
    let mut items = Vec::new();
    let mut dirs = Vec::new();
    for p in walk(root) {
        let meta = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        if meta.file_type().is_symlink() {
            items.push((rel, Item::Link(fs::read_link(&p).unwrap())));
        } else if meta.is_dir() {
            dirs.push(rel);
        } else {
            let exec = meta.permissions().mode() & 0o111 != 0;
            items.push((rel, Item::File(fs::read(&p).unwrap(), exec)));
        }
    }
    for e in fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
    let mut rng = Lcg(0x1234_5678_9abc_def0);
    let mut when =
        move || UNIX_EPOCH + Duration::from_secs(1_000_000_000 + rng.next() % 700_000_000);
    for (rel, item) in items.into_iter().rev() {
        let p = root.join(&rel);
        let parent = p.parent().unwrap();
        fs::create_dir_all(parent).unwrap();
        match item {
            Item::Link(target) => std::os::unix::fs::symlink(target, &p).unwrap(),
            Item::File(bytes, exec) => {
                let mode = if exec { 0o700 } else { 0o600 };
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&p)
                    .unwrap();
                f.write_all(&bytes).unwrap();
                f.set_permissions(fs::Permissions::from_mode(mode)).unwrap();
                let t = when();
                f.set_times(FileTimes::new().set_modified(t).set_accessed(t))
                    .unwrap();
            }
        }
    }
    // Folders last (creating files changed their mtimes), deepest first.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for rel in dirs.iter().map(PathBuf::as_path).chain([Path::new("")]) {
        let p = root.join(rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        let t = when();
        File::open(&p)
            .unwrap()
            .set_times(FileTimes::new().set_modified(t).set_accessed(t))
            .unwrap();
    }
}

/// `sh -c 'umask U; exec imgc "$@"' build SPEC --output oci:OUT ...` with env.
fn build_in_env(spec: &Path, out: &Path, umask: &str, env: &[(&str, &str)], cwd: &Path) -> String {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_imgc"))
        .arg("build")
        .arg(spec)
        .arg("--output")
        .arg(oci_arg(out))
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("IMGC_THREADS")
        .current_dir(cwd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    digest_line(&run(&mut cmd))
}

fn reproducible_across_environments(example: &str) {
    let (tmp_a, a) = copy_example(example);
    let (tmp_b, b) = copy_example(example);
    scramble(&b);
    // The scrambling really changed what the disk says.
    let probe = walk(&b)
        .into_iter()
        .find(|p| fs::symlink_metadata(p).unwrap().is_file())
        .unwrap();
    let rel = probe.strip_prefix(&b).unwrap();
    let (ma, mb) = (
        fs::metadata(a.join(rel)).unwrap(),
        fs::metadata(&probe).unwrap(),
    );
    assert_ne!(ma.modified().unwrap(), mb.modified().unwrap());
    assert_eq!(mb.permissions().mode() & 0o077, 0);

    let out_a = tmp_a.path().join("out");
    let out_b = tmp_b.path().join("nested/elsewhere/out");
    let da = build_in_env(
        &a.join("image.toml"),
        &out_a,
        "022",
        &[("TZ", "UTC"), ("LC_ALL", "C"), ("IMGC_THREADS", "1")],
        &a,
    );
    let db = build_in_env(
        &b.join("image.toml"),
        &out_b,
        "077",
        &[
            ("TZ", "Asia/Kolkata"),
            ("LC_ALL", "fr_FR.UTF-8"),
            ("IMGC_THREADS", "2"),
        ],
        Path::new("/"),
    );
    assert_eq!(
        da, db,
        "{example}: index digest differs between environments"
    );
    assert_same_tree(&out_a, &out_b);
    assert_layout_valid(&out_a);
}

#[test]
fn hello_is_reproducible_across_folders_umask_tz_locale_mtimes_order_and_threads() {
    reproducible_across_environments("hello");
}

#[test]
fn multi_arch_is_reproducible_across_folders_umask_tz_locale_mtimes_order_and_threads() {
    reproducible_across_environments("multi-arch");
}

/// Adds to a copy of hello: one 3 MiB file mixing text and noise (several
/// compression blocks, so parallel compression has work to split) and 300
/// small files (so parallel layer building has work to split).
fn add_bulk(hello: &Path) {
    let dir = hello.join("rootfs/usr/share/hello");
    fs::create_dir_all(dir.join("many")).unwrap();
    let mut rng = Lcg(42);
    let mut big = Vec::with_capacity(3 << 20);
    let mut line = 0u64;
    while big.len() < 3 << 20 {
        if rng.next().is_multiple_of(4) {
            for _ in 0..256 {
                big.push((rng.next() & 0xff) as u8);
            }
        } else {
            big.extend_from_slice(
                format!("line {line}: the quick brown fox {}\n", rng.next() % 1000).as_bytes(),
            );
        }
        line += 1;
    }
    big.truncate(3 << 20);
    fs::write(dir.join("big.bin"), &big).unwrap();
    for i in 0..300 {
        fs::write(
            dir.join("many").join(format!("f{i:03}.txt")),
            format!("file {i} {}\n", rng.next()),
        )
        .unwrap();
    }
}

fn build_threads(spec: &Path, out: &Path, threads: &str) -> String {
    build(spec, out, &["-j", threads])
}

#[test]
fn thread_count_does_not_change_the_bytes_gzip_and_zstd() {
    let (tmp, hello) = copy_example("hello");
    add_bulk(&hello);
    let spec = hello.join("image.toml");
    let mut per_compression = Vec::new();
    for compression in ["gzip", "zstd"] {
        set_compression(&spec, compression);
        let outs: Vec<PathBuf> = ["1", "2", "4"]
            .iter()
            .map(|j| tmp.path().join(format!("out-{compression}-j{j}")))
            .collect();
        let digests: Vec<String> = ["1", "2", "4"]
            .iter()
            .zip(&outs)
            .map(|(j, out)| build_threads(&spec, out, j))
            .collect();
        assert_eq!(digests[0], digests[1], "{compression}: -j 1 vs -j 2");
        assert_eq!(digests[0], digests[2], "{compression}: -j 1 vs -j 4");
        assert_same_tree(&outs[0], &outs[1]);
        assert_same_tree(&outs[0], &outs[2]);
        assert_layout_valid(&outs[0]);
        // The big file really is in there.
        let files = list_fs(&outs[0], "linux/amd64", Some("latest"));
        assert_eq!(
            files["/usr/share/hello/big.bin"]["size"],
            3u64 << 20,
            "big.bin"
        );
        assert!(files.contains_key("/usr/share/hello/many/f299.txt"));
        let want = if compression == "gzip" {
            MT_LAYER_GZIP
        } else {
            MT_LAYER_ZSTD
        };
        let index = read_blob_json(&outs[0], &digests[0]);
        for d in index["manifests"].as_array().unwrap() {
            let m = read_blob_json(&outs[0], d["digest"].as_str().unwrap());
            for l in m["layers"].as_array().unwrap() {
                assert_eq!(l["mediaType"], want, "{compression}");
            }
        }
        per_compression.push(digests[0].clone());
    }
    assert_ne!(
        per_compression[0], per_compression[1],
        "gzip and zstd give one digest"
    );
}

/// Every mtime in every layer of a platform.
fn layer_mtimes(layout: &Path, plat: &str) -> Vec<(String, Value)> {
    layer_headers(layout, plat, None)
        .iter()
        .flat_map(|l| l["members"].as_array().unwrap().clone())
        .map(|m| (m["path"].as_str().unwrap().to_string(), m["mtime"].clone()))
        .collect()
}

#[test]
fn source_date_epoch_sets_every_mtime_and_changes_the_digest() {
    let (tmp, hello) = copy_example("hello");
    let spec = hello.join("image.toml");
    let plain_out = tmp.path().join("plain");
    let plain = build(&spec, &plain_out, &[]);
    let sde_out = tmp.path().join("sde");
    let sde = digest_line(&run(imgc()
        .env("SOURCE_DATE_EPOCH", "1234567890")
        .arg("build")
        .arg(&spec)
        .arg("--output")
        .arg(oci_arg(&sde_out))));
    assert_ne!(plain, sde, "SOURCE_DATE_EPOCH must change the digest");
    for plat in PLATFORMS {
        let mt = layer_mtimes(&plain_out, plat);
        assert!(!mt.is_empty());
        for (path, m) in &mt {
            assert_eq!(
                m, 0,
                "{plat} {path}: mtime without SOURCE_DATE_EPOCH (hello has no epoch)"
            );
        }
        for (path, m) in &layer_mtimes(&sde_out, plat) {
            assert_eq!(
                m, 1_234_567_890,
                "{plat} {path}: mtime under SOURCE_DATE_EPOCH"
            );
        }
        let cfg = image_config(&sde_out, plat, Some("latest"));
        assert_eq!(cfg["created"], "2009-02-13T23:31:30Z", "{plat}");
    }
    // Same epoch again: same bytes (the clock is the only thing that moved).
    let again_out = tmp.path().join("again");
    let again = digest_line(&run(imgc()
        .env("SOURCE_DATE_EPOCH", "1234567890")
        .arg("build")
        .arg(&spec)
        .arg("--output")
        .arg(oci_arg(&again_out))));
    assert_eq!(sde, again);
    assert_same_tree(&sde_out, &again_out);
}

#[test]
fn source_date_epoch_overrides_the_spec_epoch() {
    let (tmp, multi) = copy_example("multi-arch");
    let spec = multi.join("image.toml");
    let out = tmp.path().join("out");
    let sde = digest_line(&run(imgc()
        .env("SOURCE_DATE_EPOCH", "1234567890")
        .arg("build")
        .arg(&spec)
        .arg("--output")
        .arg(oci_arg(&out))));
    let plain = build(&spec, &tmp.path().join("plain"), &[]);
    assert_ne!(sde, plain);
    let base = example_dir("multi-arch").join("base");
    for plat in PLATFORMS {
        let base_layers = layer_headers(&base, plat, Some("1.0"));
        let layers = layer_headers(&out, plat, None);
        assert_eq!(
            layers[0]["digest"], base_layers[0]["digest"],
            "{plat}: base layer reused"
        );
        for l in &layers[1..] {
            for m in l["members"].as_array().unwrap() {
                assert_eq!(m["mtime"], 1_234_567_890, "{plat} {}", m["path"]);
            }
        }
        let cfg = image_config(&out, plat, None);
        assert_eq!(cfg["created"], "2009-02-13T23:31:30Z", "{plat}");
    }
}
