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
