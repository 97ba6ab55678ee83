//! The layer cache: a rebuild takes unchanged layers from it with the same
//! digest and reads no file content; a changed file, mode or owner rebuilds
//! exactly its layer; a touched file is read again but its layer is still
//! cached; a damaged blob, a misfiled entry, or an entry of another format
//! is never used, and the image comes out right.

use crate::support::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A context with two layers, `a` and `b`, one file each.
fn two_layers(env: &Env, compression: &str) -> PathBuf {
    let ctx = env.path("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("a.txt"), noise(1, 300_000)).unwrap();
    fs::write(ctx.join("b.txt"), "bbbb\n").unwrap();
    fs::write(
        ctx.join("image.toml"),
        format!(
            r#"[image]
platforms = ["linux/amd64"]
compression = "{compression}"

[[layers]]
name = "a"
files = [{{ src = "a.txt", dst = "/a.txt" }}]

[[layers]]
name = "b"
files = [{{ src = "b.txt", dst = "/b.txt" }}]
"#
        ),
    )
    .unwrap();
    ctx.join("image.toml")
}

/// Builds into `out`; returns the digest and, per layer name, whether it
/// came from the cache.
fn build_noting_cache(
    env: &Env,
    spec: &Path,
    out: &str,
    extra: &[&str],
) -> (String, Vec<(String, bool)>, String) {
    let o = output(
        env.imgc()
            .arg("build")
            .arg(spec)
            .arg("--output")
            .arg(oci_arg(&env.path(out)))
            .args(extra),
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let layers = err
        .lines()
        .filter_map(|l| l.strip_prefix("  layer "))
        .map(|l| {
            let name = l.split_whitespace().next().unwrap().to_string();
            (name, l.contains("(cached "))
        })
        .collect();
    assert_layout_valid(&env.path(out));
    (digest_line(&stdout(&o)), layers, err)
}

fn pairs(v: &[(&str, bool)]) -> Vec<(String, bool)> {
    v.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

#[test]
fn a_rebuild_takes_layers_from_the_cache_with_the_same_digest() {
    for compression in ["gzip", "zstd"] {
        let env = Env::new();
        let spec = two_layers(&env, compression);
        let (cold, layers, _) = build_noting_cache(&env, &spec, "cold", &["-j", "2"]);
        assert_eq!(layers, pairs(&[("a", false), ("b", false)]));
        for (i, jobs) in ["1", "2", "8"].iter().enumerate() {
            let (warm, layers, _) =
                build_noting_cache(&env, &spec, &format!("warm{i}"), &["-j", jobs]);
            assert_eq!(warm, cold, "{compression} -j {jobs}");
            assert_eq!(layers, pairs(&[("a", true), ("b", true)]), "{compression}");
        }
        let (none, layers, _) = build_noting_cache(&env, &spec, "nocache", &["--no-cache"]);
        assert_eq!(none, cold);
        assert_eq!(layers, pairs(&[("a", false), ("b", false)]));
    }
}

/// Builds with `--format json` into `out`; returns the summary.
fn build_json(env: &Env, spec: &Path, out: &str) -> serde_json::Value {
    let o = output(
        env.imgc()
            .arg("build")
            .arg(spec)
            .arg("--format")
            .arg("json")
            .arg("--output")
            .arg(oci_arg(&env.path(out))),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

/// Files written less than a tick of the clock before a build are racy:
/// their fingerprints are not kept. Tests that count reads let them settle.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(300));
}

#[test]
fn a_warm_rebuild_reads_no_file_contents() {
    let env = Env::new();
    let spec = two_layers(&env, "zstd");
    settle();
    let cold = build_json(&env, &spec, "cold");
    assert_eq!(cold["context_bytes_read"], 300_005, "each file read once");
    // Into the same output, and into a new one: nothing read either way.
    for out in ["cold", "other"] {
        let warm = build_json(&env, &spec, out);
        assert_eq!(warm["context_bytes_read"], 0, "{out}: {warm}");
        assert_eq!(warm["index"], cold["index"]);
    }
    assert_layout_valid(&env.path("other"));
    // Touched, same bytes: read again (its fingerprint changed). The first
    // build hashed nothing (it packed a new context), so this one builds
    // the layer again and files it by content; after that, a touch only
    // costs reading the file.
    let a = spec.with_file_name("a.txt");
    let touch = || {
        let bytes = fs::read(&a).unwrap();
        fs::write(&a, &bytes).unwrap();
        settle();
    };
    touch();
    let (touched, layers, _) = build_noting_cache(&env, &spec, "touched", &[]);
    assert_eq!(layers, pairs(&[("a", false), ("b", true)]));
    assert_eq!(touched, cold["index"]["digest"].as_str().unwrap());
    touch();
    let again = build_json(&env, &spec, "touched-again");
    assert_eq!(again["context_bytes_read"], 300_000, "a.txt alone: {again}");
    assert_eq!(again["images"][0]["layers"][0]["reused"], false);
    assert_eq!(again["index"], cold["index"]);
    assert_eq!(build_json(&env, &spec, "again")["context_bytes_read"], 0);
}

#[test]
fn a_changed_owner_alone_rebuilds_its_layer() {
    let env = Env::new();
    let spec = two_layers(&env, "gzip");
    let (first, _, _) = build_noting_cache(&env, &spec, "first", &[]);
    let text = fs::read_to_string(&spec).unwrap().replace(
        r#"dst = "/b.txt" }]"#,
        r#"dst = "/b.txt", owner = "1000:1000" }]"#,
    );
    fs::write(&spec, text).unwrap();
    let (owned, layers, _) = build_noting_cache(&env, &spec, "owned", &[]);
    assert_eq!(layers, pairs(&[("a", true), ("b", false)]));
    assert_ne!(owned, first);
    let (fresh, _, _) = build_noting_cache(&env, &spec, "owned-fresh", &["--no-cache"]);
    assert_eq!(owned, fresh);
}

#[test]
fn a_changed_file_or_mode_rebuilds_exactly_its_layer() {
    let env = Env::new();
    let spec = two_layers(&env, "gzip");
    build_noting_cache(&env, &spec, "first", &[]);
    let b = spec.with_file_name("b.txt");
    // Same size, other bytes: only the sources tell.
    fs::write(&b, "cccc\n").unwrap();
    let (changed, layers, _) = build_noting_cache(&env, &spec, "changed", &[]);
    assert_eq!(layers, pairs(&[("a", true), ("b", false)]));
    let (fresh, _, _) = build_noting_cache(&env, &spec, "changed-fresh", &["--no-cache"]);
    assert_eq!(changed, fresh);
    fs::set_permissions(&b, fs::Permissions::from_mode(0o755)).unwrap();
    let (moded, layers, _) = build_noting_cache(&env, &spec, "moded", &[]);
    assert_eq!(layers, pairs(&[("a", true), ("b", false)]));
    assert_ne!(moded, changed);
    let (fresh, _, _) = build_noting_cache(&env, &spec, "moded-fresh", &["--no-cache"]);
    assert_eq!(moded, fresh);
}

/// The cache's entries (`layers/v2/*.json`), each parsed.
fn entries(env: &Env) -> Vec<(PathBuf, serde_json::Value)> {
    let dir = env.cache().join("store/layers/v2");
    let mut out: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let v = read_json(&p);
            (p, v)
        })
        .collect();
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
}

#[test]
fn a_damaged_blob_is_dropped_and_the_layer_built_again() {
    let env = Env::new();
    let spec = two_layers(&env, "gzip");
    let (cold, _, _) = build_noting_cache(&env, &spec, "cold", &[]);
    for (_, e) in entries(&env) {
        let blob = blob_path(&env.cache().join("store"), e["digest"].as_str().unwrap());
        let mut bytes = fs::read(&blob).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&blob, bytes).unwrap();
    }
    let (again, layers, err) = build_noting_cache(&env, &spec, "again", &[]);
    assert_eq!(again, cold);
    assert_eq!(layers, pairs(&[("a", false), ("b", false)]));
    assert!(err.contains("is damaged; it was dropped"), "{err}");
    // Built again, and cached again.
    let (third, layers, _) = build_noting_cache(&env, &spec, "third", &[]);
    assert_eq!(third, cold);
    assert_eq!(layers, pairs(&[("a", true), ("b", true)]));
}

#[test]
fn a_misfiled_entry_or_one_of_another_format_is_never_used() {
    let env = Env::new();
    let spec = two_layers(&env, "gzip");
    let (cold, _, _) = build_noting_cache(&env, &spec, "cold", &[]);
    let found = entries(&env);
    assert_eq!(found.len(), 2);
    // Each entry now names the other layer's blob and diff_id (and key:
    // an entry is only used under the key it names).
    fs::write(&found[0].0, serde_json::to_vec(&found[1].1).unwrap()).unwrap();
    fs::write(&found[1].0, serde_json::to_vec(&found[0].1).unwrap()).unwrap();
    let (again, layers, _) = build_noting_cache(&env, &spec, "poisoned", &[]);
    assert_eq!(again, cold);
    assert_eq!(layers, pairs(&[("a", false), ("b", false)]));
    // An entry of another format version is not read.
    for (path, mut v) in entries(&env) {
        v["format"] = 999.into();
        fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
    }
    let (again, layers, _) = build_noting_cache(&env, &spec, "other-format", &[]);
    assert_eq!(again, cold);
    assert_eq!(layers, pairs(&[("a", false), ("b", false)]));
}

/// `cache du` counts the layer cache's entries and fingerprint tables;
/// `prune` drops those of other format versions and entries whose blob is
/// gone; `clean` drops them all.
#[test]
fn cache_commands_account_for_entries_and_fingerprints() {
    let env = Env::new();
    let spec = two_layers(&env, "gzip");
    build_noting_cache(&env, &spec, "out", &[]);
    let index_files = |du: &str| -> usize {
        du.lines()
            .find_map(|l| l.strip_prefix("index: "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{du}"))
    };
    let du = run(env.imgc().args(["cache", "du"]));
    let before = index_files(&du);
    // Two entries (one per layer) and the context's fingerprint table.
    assert!(before >= 3, "{du}");
    let store = env.cache().join("store");
    fs::create_dir_all(store.join("layers/v1")).unwrap();
    fs::write(store.join("layers/v1/old.json"), "{}").unwrap();
    // An entry whose blob is gone.
    let (path, entry) = entries(&env).remove(0);
    fs::remove_file(blob_path(&store, entry["digest"].as_str().unwrap())).unwrap();
    let pruned = run(env.imgc().args(["cache", "prune"]));
    assert!(pruned.contains("removed 2 layer cache entr"), "{pruned}");
    assert!(!store.join("layers/v1/old.json").exists() && !path.exists());
    assert_eq!(
        index_files(&run(env.imgc().args(["cache", "du"]))),
        before - 1
    );
    let cleaned = run(env.imgc().args(["cache", "clean"]));
    assert!(cleaned.contains("fingerprint"), "{cleaned}");
    assert_eq!(index_files(&run(env.imgc().args(["cache", "du"]))), 0);
    // And the next build starts cold, and caches again.
    let (_, layers, _) = build_noting_cache(&env, &spec, "again", &[]);
    assert_eq!(layers, pairs(&[("a", false), ("b", false)]));
}

/// Four specs of one context share a layer: built in one run by two
/// workers, the shared layer is built once and taken from the cache by the
/// three others, and each image is the one a lone build makes.
#[test]
fn specs_built_together_build_a_shared_layer_once() {
    let env = Env::new();
    let ctx = env.path("mono");
    fs::create_dir_all(ctx.join("common")).unwrap();
    fs::write(ctx.join("common/big.bin"), noise(7, 2_000_000)).unwrap();
    let mut specs = Vec::new();
    for app in ["a", "b", "c", "d"] {
        fs::create_dir_all(ctx.join(app)).unwrap();
        fs::write(ctx.join(app).join("own.txt"), format!("{app}\n")).unwrap();
        fs::write(
            ctx.join(app).join("image.toml"),
            format!(
                r#"[image]
name = "example.com/{app}"
platforms = ["linux/amd64"]

[[layers]]
name = "common"
files = [{{ src = "common/**", dst = "/opt/" }}]

[[layers]]
name = "own"
files = [{{ src = "{app}/own.txt", dst = "/own.txt" }}]
"#
            ),
        )
        .unwrap();
        specs.push(format!("{app}/image.toml"));
    }
    settle();
    let o = output(
        env.imgc()
            .current_dir(&ctx)
            .args(["build", "--context", ".", "-j", "2"])
            .args(&specs),
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let counts: Vec<(usize, usize)> = err
        .lines()
        .filter(|l| l.contains("/image.toml: sha256:"))
        .map(|l| {
            let n = |word: &str| -> usize {
                let before = l.split(word).next().unwrap();
                before
                    .split(['(', ','])
                    .next_back()
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            };
            (n(" layer(s) built"), n(" from the cache"))
        })
        .collect();
    assert_eq!(counts.len(), 4, "one line per spec: {err}");
    let built: usize = counts.iter().map(|c| c.0).sum();
    let cached: usize = counts.iter().map(|c| c.1).sum();
    assert_eq!((built, cached), (5, 3), "{err}");
    let digests = stdout(&o);
    assert_eq!(digests.lines().count(), 4, "{digests}");
    let alone = run(env
        .imgc()
        .current_dir(&ctx)
        .args([
            "build",
            "--context",
            ".",
            "--no-cache",
            "-q",
            "c/image.toml",
        ])
        .arg("--output")
        .arg(oci_arg(&env.path("alone"))));
    assert!(
        digests.contains(&format!("{} c/image.toml", alone.trim())),
        "{digests}"
    );
    for app in ["a", "b", "c", "d"] {
        assert_layout_valid(&ctx.join("imgc-out").join(app));
    }
}
