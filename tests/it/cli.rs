//! The command line as a user meets it: schema, plan, build outputs.

use crate::support::*;
use std::fs;

#[test]
fn committed_schema_is_up_to_date() {
    let printed = run(imgc().arg("schema"));
    let committed = fs::read_to_string(repo_root().join("schema/imgc.schema.json")).unwrap();
    assert!(
        printed == committed,
        "schema/imgc.schema.json is stale: run `just schema` (or `cargo run -- schema > schema/imgc.schema.json`)"
    );
    let v: serde_json::Value = serde_json::from_str(&printed).unwrap();
    for key in [
        "image",
        "vars",
        "config",
        "annotations",
        "index_annotations",
        "layers",
        "platform",
    ] {
        assert!(v["properties"].get(key).is_some(), "schema lacks {key}");
    }
}

#[test]
fn plan_shows_shared_and_per_platform_layers() {
    let spec = example_dir("multi-arch").join("image.toml");
    let json: serde_json::Value = serde_json::from_str(&run(imgc()
        .arg("plan")
        .arg(&spec)
        .args(["--format", "json"])))
    .unwrap();
    let layers = json["layers"].as_array().unwrap();
    let names: Vec<&str> = layers.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["static", "app", "app", "arm64-tuning"]);
    assert_eq!(
        layers[0]["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    assert_eq!(json["images"][1]["layers"], serde_json::json!([0, 2, 3]));
    assert_eq!(json["epoch"], 1_700_000_000);
    let entries: Vec<&str> = layers[0]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    // The folder matched by the glob is listed; the excluded .map file is not.
    assert_eq!(
        entries,
        [
            "/srv/www/css",
            "/srv/www/css/site.css",
            "/srv/www/index.html"
        ]
    );
    let text = run(imgc()
        .arg("plan")
        .arg(&spec)
        .args(["--platform", "linux/arm64"]));
    assert!(text.contains("linux/arm64"), "{text}");
    assert!(!text.contains("linux/amd64"), "{text}");
}

#[test]
fn build_writes_digest_file_tags_and_only_the_digest_on_stdout() {
    let (_tmp, dir) = copy_example("hello");
    let out = dir.join("layout");
    let digest_file = dir.join("digest.txt");
    let stdout = run(imgc()
        .arg("build")
        .arg(dir.join("image.toml"))
        .arg("--output")
        .arg(oci_arg(&out))
        .arg("--digest-file")
        .arg(&digest_file));
    let digest = stdout.trim();
    assert!(is_sha256_digest(digest), "{stdout:?}");
    assert_eq!(stdout.lines().count(), 1);
    assert_eq!(fs::read_to_string(&digest_file).unwrap().trim(), digest);
    let first = tags(&out);
    assert_eq!(first.keys().collect::<Vec<_>>(), ["1.0.0", "latest"]);
    assert!(first.values().all(|d| d == digest));
    // --var overrides [vars]; other tags already in the layout are kept.
    let d2 = build(&dir.join("image.toml"), &out, &["--var", "version=2.0.0"]);
    assert_ne!(d2, digest);
    let tags = tags(&out);
    assert_eq!(tags["1.0.0"], digest);
    assert_eq!(tags["2.0.0"], d2);
    assert_eq!(tags["latest"], d2);
}

#[test]
fn default_output_is_imgc_out_slash_name() {
    let (_tmp, dir) = copy_example("hello");
    let stdout = run(imgc().current_dir(&dir).args(["build", "image.toml", "-q"]));
    let layout = dir.join("imgc-out/hello");
    assert!(layout.join("oci-layout").is_file());
    assert_eq!(tags(&layout)["latest"], stdout.trim());
}

#[test]
fn platform_flag_builds_a_subset() {
    let (_tmp, dir) = copy_example("multi-arch");
    let out = dir.join("out");
    let digest = build(
        &dir.join("image.toml"),
        &out,
        &["--platform", "linux/arm64"],
    );
    let m = platform_manifests(&out, &digest);
    assert_eq!(m.keys().collect::<Vec<_>>(), ["linux/arm64"]);
    let err = run_fails(
        imgc()
            .arg("build")
            .arg(dir.join("image.toml"))
            .args(["--platform", "linux/s390x", "--output"])
            .arg(oci_arg(&out)),
    );
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(
        stderr.contains(
            "platform linux/s390x is not one of the spec's platforms (linux/amd64, linux/arm64)"
        ),
        "{stderr}"
    );
}

#[test]
fn entries_sort_by_tar_name_and_excluded_folders_drop_their_files() {
    let tmp = tempdir();
    let ctx = tmp.path();
    for f in ["w/a/x.css", "w/a-b.css", "w/skip/y.css", "w/z.txt"] {
        fs::create_dir_all(ctx.join(f).parent().unwrap()).unwrap();
        fs::write(ctx.join(f), "x").unwrap();
    }
    let spec = ctx.join("image.toml");
    fs::write(
        &spec,
        "[image]\nplatforms = [\"linux/amd64\"]\n[[layers]]\nname = \"l\"\nfiles = [{ src = \"w/**/*.css\", dst = \"/w/\", exclude = [\"skip\"] }]\ndirs = [{ path = \"/w/a\" }]\n",
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&run(imgc()
        .arg("plan")
        .arg(&spec)
        .args(["--format", "json"])))
    .unwrap();
    let paths: Vec<&str> = json["layers"][0]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    // Stored names are `w/a-b.css`, `w/a/`, `w/a/x.css`: bytewise, `-` < `/`.
    assert_eq!(paths, ["/w/a-b.css", "/w/a", "/w/a/x.css"]);
}

#[test]
fn two_overrides_for_one_platform_are_an_error() {
    let tmp = tempdir();
    let spec = tmp.path().join("image.toml");
    fs::write(
        &spec,
        "[image]\nplatforms = [\"linux/arm64\"]\n[platform.\"linux/arm64\"]\nannotations = { a = \"1\" }\n[platform.\"linux/arm64/v8\"]\nannotations = { a = \"2\" }\n",
    )
    .unwrap();
    let out = run_fails(imgc().arg("plan").arg(&spec));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("name the same platform"), "{stderr}");
}

#[test]
fn a_corrupt_blob_in_the_output_is_rehashed_and_replaced() {
    let (_tmp, dir) = copy_example("hello");
    let out = dir.join("layout");
    let digest = build(&dir.join("image.toml"), &out, &[]);
    let (_, manifest) = &platform_manifests(&out, &digest)["linux/amd64"];
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let path = blob_path(&out, &layer);
    let good = fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[20] ^= 0x55;
    fs::write(&path, &bad).unwrap();
    assert_eq!(build(&dir.join("image.toml"), &out, &[]), digest);
    assert_eq!(
        fs::read(&path).unwrap(),
        good,
        "the corrupt blob was trusted"
    );
}

#[test]
fn a_glob_over_the_context_never_packs_the_output_layout() {
    let tmp = tempdir();
    let ctx = tmp.path();
    fs::write(ctx.join("a.txt"), "a\n").unwrap();
    fs::write(
        ctx.join("image.toml"),
        "[image]\nname = \"example.com/self\"\nplatforms = [\"linux/amd64\"]\n[[layers]]\nname = \"all\"\nfiles = [{ src = \"**\", dst = \"/ctx/\" }]\n",
    )
    .unwrap();
    // Built twice in the context itself: the second build must not pick up
    // the first one's output (./imgc-out/self), so the digests are equal.
    let first = run(imgc().current_dir(ctx).args(["build", "image.toml", "-q"]));
    let second = run(imgc().current_dir(ctx).args(["build", "image.toml", "-q"]));
    assert_eq!(first, second);
    assert!(ctx.join("imgc-out/self/index.json").is_file());
    let plan = run(imgc().current_dir(ctx).args(["plan", "image.toml"]));
    assert!(plan.contains("2 entries"), "{plan}");
    // The same with an explicit --output inside the context.
    let third =
        run(imgc()
            .current_dir(ctx)
            .args(["build", "image.toml", "-q", "--output", "oci:out"]));
    let fourth =
        run(imgc()
            .current_dir(ctx)
            .args(["build", "image.toml", "-q", "--output", "oci:out"]));
    assert_eq!(third, fourth);
}

#[test]
fn concurrent_builds_into_one_layout_keep_every_tag() {
    let (_tmp, dir) = copy_example("hello");
    let out = dir.join("shared-layout");
    let spawn = |version: &str| {
        imgc()
            .arg("build")
            .arg(dir.join("image.toml"))
            .arg("--output")
            .arg(oci_arg(&out))
            .args(["-q", "--var", &format!("version={version}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = ["1", "2", "3", "4"].iter().map(|v| spawn(v)).collect();
    let mut digests = Vec::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        digests.push(String::from_utf8(o.stdout).unwrap().trim().to_string());
    }
    let t = tags(&out);
    for (v, d) in ["1", "2", "3", "4"].iter().zip(&digests) {
        assert_eq!(&t[*v], d, "tag {v}");
    }
    verify_layout(&out, false);
}

fn blob_count(layout: &std::path::Path) -> usize {
    fs::read_dir(layout.join("blobs/sha256")).unwrap().count()
}

#[test]
fn rebuilding_a_tag_removes_the_blobs_no_tag_uses() {
    let tmp = tempdir();
    let ctx = tmp.path();
    fs::write(ctx.join("a.txt"), "one\n").unwrap();
    let spec = ctx.join("image.toml");
    fs::write(
        &spec,
        "[image]\nplatforms = [\"linux/amd64\"]\n[[layers]]\nname = \"a\"\nfiles = [{ src = \"a.txt\", dst = \"/a.txt\" }]\n",
    )
    .unwrap();
    let out = ctx.join("out");
    build(&spec, &out, &[]);
    let first = blob_count(&out);
    assert_eq!(first, 4, "layer, config, manifest, index");
    for text in ["two\n", "three\n", "four\n"] {
        fs::write(ctx.join("a.txt"), text).unwrap();
        build(&spec, &out, &[]);
        assert_eq!(blob_count(&out), first, "old blobs were kept");
        verify_layout(&out, true);
    }
}

#[test]
fn garbage_collection_keeps_everything_when_a_document_is_unreadable() {
    let (_tmp, dir) = copy_example("hello");
    let out = dir.join("out");
    let digest = build(&dir.join("image.toml"), &out, &[]);
    // An extra tag in index.json whose manifest is not JSON: imgc cannot
    // tell what it references, so nothing may be removed.
    let junk = write_blob(&out, b"not json");
    let mut index = read_json(&out.join("index.json"));
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": junk, "size": 8,
            "annotations": {"org.opencontainers.image.ref.name": "junk"}
        }));
    fs::write(out.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let before = blob_count(&out);
    let other = build(&dir.join("image.toml"), &out, &["--var", "version=9"]);
    assert_ne!(other, digest);
    // 1.0.0 and junk are still tagged; the new build added blobs; none went.
    assert!(blob_count(&out) > before);
    assert!(blob_path(&out, &digest).is_file());
    assert!(blob_path(&out, &junk).is_file());
}

#[test]
fn build_format_json_summarizes_images_layers_and_reuse() {
    let tmp = tempdir();
    let out = tmp.path().join("layout");
    let spec = example_dir("multi-arch").join("image.toml");
    let summary = |extra: &[&str]| -> serde_json::Value {
        let text = run(imgc()
            .arg("build")
            .arg(&spec)
            .arg("--output")
            .arg(oci_arg(&out))
            .args(["--format", "json"])
            .args(extra));
        serde_json::from_str(&text).unwrap()
    };
    let first = summary(&[]);
    let index_digest = first["index"]["digest"].as_str().unwrap().to_string();
    assert_eq!(tags(&out)["2.1.0"], index_digest);
    assert_eq!(first["tags"], serde_json::json!(["2.1.0"]));
    let images = first["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let manifests = platform_manifests(&out, &index_digest);
    for image in images {
        let platform = image["platform"].as_str().unwrap();
        let (_, manifest) = &manifests[platform];
        let digests = |v: &serde_json::Value| -> Vec<String> {
            let layers = v["layers"].as_array().unwrap();
            layers.iter().map(|l| l["digest"].to_string()).collect()
        };
        assert_eq!(digests(manifest), digests(image), "{platform}");
        let layers = image["layers"].as_array().unwrap();
        assert_eq!(layers[0]["origin"], "base");
        assert_eq!(layers[1]["name"], "static");
        assert!(layers.iter().all(|l| l["reused"] == false), "{image}");
    }
    // The same build again: every blob was there already.
    let again = summary(&["--quiet"]);
    assert_eq!(again["index"]["digest"], first["index"]["digest"]);
    for image in again["images"].as_array().unwrap() {
        assert!(
            image["layers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["reused"] == true),
            "{image}"
        );
    }
    assert_eq!(again["pushed"], serde_json::json!([]));
}

/// On an 80-column terminal (a pseudo-terminal made by `script`), no
/// progress line or bar is wider than the terminal, whatever the names.
#[test]
fn progress_fits_an_80_column_terminal() {
    require("script");
    let tmp = tempdir();
    let ctx = tmp.path();
    fs::write(ctx.join("big.bin"), noise(7, 24 << 20)).unwrap();
    fs::write(
        ctx.join("image.toml"),
        r#"[image]
platforms = ["linux/amd64"]

[[layers]]
name = "a-layer-name-far-longer-than-the-column-it-is-shown-in"
files = [{ src = "big.bin", dst = "/srv/data/big.bin" }]
"#,
    )
    .unwrap();
    let bin = std::env::var("IMGC_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_imgc").into());
    let command = format!(
        "stty cols 80 rows 24; '{}' build '{}' --output 'oci:{}'",
        bin,
        ctx.join("image.toml").display(),
        ctx.join("out").display()
    );
    let out = run(std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("SOURCE_DATE_EPOCH"));
    let mut plain = String::new();
    let mut chars = out.chars().peekable();
    // Strip the terminal's escape sequences (CSI: ESC [ … final letter).
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        plain.push(c);
    }
    let widest = plain
        .split(['\r', '\n'])
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    assert!(widest <= 80, "a line of {widest} columns:\n{plain}");
    assert!(plain.contains("a-layer-name-fa…"), "{plain}");
    assert!(plain.contains("wrote "), "{plain}");
}

/// `imgc build` with five specs, two of them broken: the three others are
/// built, each failure is named by its spec file, and the exit code is 1;
/// `--fail-fast` starts no spec after the first failure.
#[test]
fn many_specs_in_one_run_build_the_good_ones_and_name_the_bad_ones() {
    let tmp = tempdir();
    let dir = tmp.path();
    let mut specs = Vec::new();
    for i in 0..5 {
        let ctx = dir.join(format!("s{i}"));
        fs::create_dir_all(&ctx).unwrap();
        fs::write(ctx.join("hello.txt"), format!("spec {i}\n")).unwrap();
        let body = match i {
            1 => "[image\n".to_string(),
            3 => "[image]\nplatforms = [\"linux/amd64\"]\n[[layers]]\nname = \"l\"\nfiles = [{ src = \"missing/**\", dst = \"/m/\" }]\n".to_string(),
            _ => format!("[image]\nname = \"example.com/s{i}\"\nplatforms = [\"linux/amd64\"]\n[[layers]]\nname = \"l\"\nfiles = [{{ src = \"hello.txt\", dst = \"/hello.txt\" }}]\n"),
        };
        fs::write(ctx.join("image.toml"), body).unwrap();
        specs.push(format!("s{i}/image.toml"));
    }
    let out = run_fails(imgc().current_dir(dir).arg("build").args(&specs));
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{err}");
    for i in [0, 2, 4] {
        assert!(
            dir.join(format!("imgc-out/s{i}/index.json")).is_file(),
            "s{i} not built: {err}"
        );
        assert!(text.contains(&format!(" s{i}/image.toml")), "{text}");
    }
    assert_eq!(text.lines().count(), 3, "{text}");
    for bad in [
        "s1/image.toml: failed",
        "s3/image.toml: failed",
        "2 of 5 specs failed: s1/image.toml, s3/image.toml",
    ] {
        assert!(err.contains(bad), "stderr lacks {bad:?}:\n{err}");
    }
    fs::remove_dir_all(dir.join("imgc-out")).unwrap();
    let out = run_fails(
        imgc()
            .current_dir(dir)
            .args(["build", "--fail-fast"])
            .args(&specs),
    );
    // Workers run in parallel: no spec starts after the failure of s1
    // (s0, started beside it, finishes).
    assert!(
        stderr(&out).contains(" not built: --fail-fast)"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("imgc-out/s4").exists());
    assert!(dir.join("imgc-out/s0/index.json").is_file());
    assert!(!dir.join("imgc-out/s2").exists());
    let refused = run_fails(
        imgc()
            .current_dir(dir)
            .args(["build", "--output", "oci:x"])
            .args(&specs),
    );
    assert_eq!(refused.status.code(), Some(2));
}

#[test]
fn plan_json_of_many_files_is_streamed_not_held() {
    let tmp = tempdir();
    let ctx = tmp.path();
    let n = 20_000;
    for d in 0..20 {
        let dir = ctx.join(format!("files/d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..n / 20 {
            fs::write(
                dir.join(format!("a-rather-long-file-name-{f:05}.txt")),
                b"x",
            )
            .unwrap();
        }
    }
    let spec = ctx.join("image.toml");
    fs::write(
        &spec,
        "[image]\nplatforms = [\"linux/amd64\"]\n[[layers]]\nname = \"l\"\nfiles = [{ src = \"files/**\", dst = \"/f/\" }]\n",
    )
    .unwrap();
    let limit = std::time::Duration::from_secs(120);
    let text = measured(imgc().arg("plan").arg(&spec), limit);
    let json = measured(
        imgc().arg("plan").arg(&spec).args(["--format", "json"]),
        limit,
    );
    assert!(json.out.status.success(), "{}", stderr(&json.out));
    let doc: serde_json::Value = serde_json::from_slice(&json.out.stdout).unwrap();
    let entries = doc["layers"][0]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), n + 20, "the files and their 20 folders");
    assert_eq!(entries[1]["detail"]["size"], 1);
    // Held as a JSON tree, these entries took 70 MB more than the plan.
    assert!(
        json.max_rss < text.max_rss + (16 << 20),
        "json {} MB, text {} MB",
        json.max_rss >> 20,
        text.max_rss >> 20
    );
}
