//! Hostile or damaged outputs (issue 7, group "output"): a layout whose
//! blobs folder is a symlink, one holding documents imgc does not model, a
//! broken or huge `index.json`, an output file that cannot be written, and
//! builds killed at random moments. The layout is never damaged, nothing
//! outside it is deleted, and no litter changes a later build.

use crate::support::*;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SPEC: &str = r#"[image]
platforms = ["linux/amd64"]
[[layers]]
name = "app"
files = [{ src = "**", dst = "/app/" }]
"#;

/// A context with some files, the spec packing all of it (`src = "**"`),
/// and the output layout inside the context.
struct Ctx {
    _t: tempfile::TempDir,
    dir: PathBuf,
    out: PathBuf,
}

impl Ctx {
    fn new(files: usize, size: usize) -> Ctx {
        let t = tempdir();
        let dir = t.path().join("ctx");
        fs::create_dir_all(dir.join("data")).unwrap();
        for i in 0..files {
            fs::write(dir.join(format!("data/f{i}")), noise(i as u64, size)).unwrap();
        }
        fs::write(dir.join("image.toml"), SPEC).unwrap();
        let out = dir.join("out");
        Ctx { _t: t, dir, out }
    }

    fn build_cmd(&self) -> Command {
        let mut cmd = imgc();
        cmd.arg("build")
            .arg(self.dir.join("image.toml"))
            .arg("--output")
            .arg(oci_arg(&self.out))
            .current_dir(&self.dir);
        cmd
    }

    fn build(&self) -> String {
        digest_line(&run(&mut self.build_cmd()))
    }

    /// Names beside the layout that an interrupted build could leave.
    fn litter(&self) -> Vec<String> {
        fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".imgc-"))
            .collect()
    }
}

#[test]
fn a_symlinked_blobs_folder_is_refused_and_nothing_outside_is_deleted() {
    let c = Ctx::new(2, 100);
    c.build();
    let shared = tempdir();
    let shared_blobs = shared.path().join("sha256");
    fs::create_dir_all(&shared_blobs).unwrap();
    // Five files of someone else's, named like blobs nobody in this layout uses.
    for i in 0..5 {
        let d = sha256_digest(format!("other {i}").as_bytes());
        fs::write(shared_blobs.join(&d[7..]), format!("other {i}")).unwrap();
    }
    let blobs = c.out.join("blobs/sha256");
    for e in fs::read_dir(&blobs).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), shared_blobs.join(e.file_name())).unwrap();
    }
    fs::remove_dir_all(&blobs).unwrap();
    std::os::unix::fs::symlink(&shared_blobs, &blobs).unwrap();
    let before = tree_contents(shared.path());
    fs::write(c.dir.join("data/new"), "a change").unwrap();
    let out = run_fails(&mut c.build_cmd());
    let err = stderr(&out);
    assert!(
        err.contains("blobs/sha256") && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(
        tree_contents(shared.path()),
        before,
        "files outside were touched"
    );
}

#[test]
fn documents_of_unknown_media_types_keep_their_blobs_through_gc() {
    let c = Ctx::new(2, 100);
    c.build();
    // A Helm-chart-like artifact tagged in the same layout.
    let chart = write_blob(&c.out, b"a helm chart, gzipped");
    let config = write_blob(&c.out, b"{}");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.example.chart.manifest.v1+json",
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                    "digest": chart, "size": 21}],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let m = write_blob(&c.out, &bytes);
    let path = c.out.join("index.json");
    let mut index = read_json(&path);
    index["manifests"].as_array_mut().unwrap().push(json!({
        "mediaType": "application/vnd.example.chart.manifest.v1+json",
        "digest": m, "size": bytes.len(),
        "annotations": {REF_NAME: "chart"}
    }));
    fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
    // Rebuild "latest" with other content: its old blobs go, the chart's stay.
    fs::write(c.dir.join("data/new"), "a change").unwrap();
    c.build();
    for d in [&chart, &config, &m] {
        assert!(blob_path(&c.out, d).is_file(), "{d} was removed");
    }
    assert_eq!(tags(&c.out).len(), 2);
}

#[test]
fn a_broken_index_json_leaves_the_layout_exactly_as_it_was() {
    let c = Ctx::new(2, 100);
    c.build();
    fs::write(
        c.out.join("index.json"),
        b"{\"schemaVersion\": 2, \"manifests\": [",
    )
    .unwrap();
    let before = tree_contents(&c.out);
    fs::write(c.dir.join("data/new"), "a change").unwrap();
    let out = run_fails(&mut c.build_cmd());
    assert!(stderr(&out).contains("index.json"), "{}", stderr(&out));
    assert_eq!(
        tree_contents(&c.out),
        before,
        "blobs moved in before the index was read"
    );
    assert!(c.litter().is_empty(), "{:?}", c.litter());
}

#[test]
fn a_layout_with_thirty_thousand_tags_is_updated() {
    let c = Ctx::new(2, 100);
    c.build();
    let path = c.out.join("index.json");
    let mut index = read_json(&path);
    let entry = index["manifests"][0].clone();
    let list = index["manifests"].as_array_mut().unwrap();
    for i in 0..30_000 {
        let mut e = entry.clone();
        e["annotations"] = json!({ REF_NAME: format!("release-{i:05}") });
        list.push(e);
    }
    let bytes = serde_json::to_vec(&index).unwrap();
    assert!(bytes.len() > 4 * 1024 * 1024);
    fs::write(&path, bytes).unwrap();
    fs::write(c.dir.join("data/new"), "a change").unwrap();
    c.build();
    assert_eq!(tags(&c.out).len(), 30_001);
}

#[test]
fn outputs_that_cannot_be_written_fail_before_anything_is_built() {
    let c = Ctx::new(2, 100);
    c.build();
    let before = tree_contents(&c.out);
    fs::write(c.dir.join("data/new"), "a change").unwrap();
    for flag in ["--digest-file", "--metadata-file"] {
        let out = run_fails(c.build_cmd().arg(flag).arg(c.dir.join("missing/d.txt")));
        let err = stderr(&out);
        assert!(
            err.contains(flag) && err.contains("does not exist"),
            "{err}"
        );
        assert_eq!(tree_contents(&c.out), before, "the layout changed");
    }
}

#[test]
fn an_output_oci_layout_of_another_version_is_refused() {
    let c = Ctx::new(1, 10);
    c.build();
    fs::write(
        c.out.join("oci-layout"),
        r#"{"imageLayoutVersion":"2.0.0"}"#,
    )
    .unwrap();
    let before = tree_contents(&c.out);
    let out = run_fails(&mut c.build_cmd());
    assert!(stderr(&out).contains("not 1.x.x"), "{}", stderr(&out));
    assert_eq!(tree_contents(&c.out), before);
}

#[test]
fn imgc_out_and_the_output_are_never_packed_by_plan_or_build() {
    let c = Ctx::new(1, 10);
    fs::create_dir_all(c.dir.join("imgc-out/old")).unwrap();
    fs::write(c.dir.join("imgc-out/old/stale"), "old output").unwrap();
    fs::create_dir_all(c.dir.join(".elsewhere.imgc-staging-1-2-3")).unwrap();
    // -o points elsewhere (inside the context); ./imgc-out is skipped anyway.
    let elsewhere = c.dir.join("elsewhere");
    let built = run(imgc()
        .arg("build")
        .arg(c.dir.join("image.toml"))
        .arg("-o")
        .arg(oci_arg(&elsewhere))
        .current_dir(&c.dir));
    assert!(is_sha256_digest(&digest_line(&built)));
    let files = list_fs(&elsewhere, "linux/amd64", None);
    let packed: Vec<&String> = files.keys().filter(|p| p.contains("imgc-")).collect();
    assert!(packed.is_empty(), "packed: {packed:?}");
    assert!(files.contains_key("/app/data/f0"), "{files:?}");
    // `plan` leaves out the same (it takes `-o` too).
    let plan = run(imgc()
        .arg("plan")
        .arg(c.dir.join("image.toml"))
        .args(["--format", "json", "-o"])
        .arg(oci_arg(&elsewhere))
        .current_dir(&c.dir));
    assert!(!plan.contains("imgc-"), "{plan}");
    assert!(plan.contains("/app/data/f0"), "{plan}");
}

/// A quick check: index.json parses and every blob it reaches is there with
/// the right digest (the full independent checker runs at the end).
fn quick_check(layout: &Path) {
    let mut todo: Vec<Value> = index_entries(layout);
    while let Some(d) = todo.pop() {
        // (An image config's `config` is an object without a digest.)
        let Some(digest) = d["digest"].as_str() else {
            continue;
        };
        let bytes = fs::read(blob_path(layout, digest))
            .unwrap_or_else(|e| panic!("{digest} of {} is missing: {e}", layout.display()));
        assert_eq!(sha256_digest(&bytes), digest);
        if let Ok(doc) = serde_json::from_slice::<Value>(&bytes) {
            for key in ["manifests", "layers"] {
                todo.extend(doc[key].as_array().cloned().unwrap_or_default());
            }
            if doc["config"].is_object() {
                todo.push(doc["config"].clone());
            }
        }
    }
}

#[test]
fn builds_killed_at_random_moments_never_damage_the_layout_or_change_the_next_digest() {
    let c = Ctx::new(16, 1 << 20);
    let clean = c.build();
    // The time of one build, to spread the interruptions over it.
    let started = Instant::now();
    c.build();
    // (A rebuild from the layer cache takes a few ms: a longer floor would
    // land most signals after the build.)
    let span = started.elapsed().as_millis().max(5) as u64;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = seed | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Until 20 builds were cut short by SIGKILL and 5 by SIGINT (a signal
    // that lands after a build ended does not count).
    let (mut kills, mut ints) = (0, 0);
    for round in 0..300 {
        if kills >= 20 && ints >= 5 {
            break;
        }
        let signal = if ints < 5 && (kills >= 20 || round % 5 == 4) {
            libc::SIGINT
        } else {
            libc::SIGKILL
        };
        let mut child = c
            .build_cmd()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(next() % span));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let status = child.wait().unwrap();
        if !status.success() {
            *(if signal == libc::SIGINT {
                &mut ints
            } else {
                &mut kills
            }) += 1;
        }
        let what = format!("round {round}, signal {signal}, seed {seed}, status {status}");
        if c.out.join("index.json").exists() {
            quick_check(&c.out);
        }
        assert_eq!(c.build(), clean, "{what}: the digest changed");
        assert!(c.litter().is_empty(), "{what}: left {:?}", c.litter());
        quick_check(&c.out);
    }
    assert!(
        kills >= 20 && ints >= 5,
        "{kills} kills and {ints} interrupts"
    );
    assert_layout_valid(&c.out);
}
