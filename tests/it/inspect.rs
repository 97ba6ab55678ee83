//! `imgc inspect`: what it shows of a layout and of a registry image, the
//! published JSON Schema its `--format json` output follows, and how a
//! platform or a document is picked.

use crate::support::*;
use serde_json::Value;
use std::fs;
use std::path::Path;

const SCHEMA: &str = "schema/inspect.schema.json";

/// Validates `doc` against the published schema with Python's jsonschema.
fn assert_valid(doc: &str) {
    let tmp = tempdir();
    let path = tmp.path().join("doc.json");
    fs::write(&path, doc).unwrap();
    let script = "import json,sys,jsonschema\n\
        schema=json.load(open(sys.argv[1]))\n\
        cls=jsonschema.validators.validator_for(schema)\n\
        cls.check_schema(schema)\n\
        cls(schema).validate(json.load(open(sys.argv[2])))\n";
    run(std::process::Command::new(python())
        .args(["-c", script])
        .arg(repo_root().join(SCHEMA))
        .arg(&path));
}

fn inspect_json(args: &[&std::ffi::OsStr]) -> (String, Value) {
    let out = run(imgc().arg("inspect").args(args).args(["--format", "json"]));
    let v = serde_json::from_str(&out).unwrap();
    (out, v)
}

fn multi_arch(tmp: &Path) -> std::ffi::OsString {
    let layout = tmp.join("layout");
    build(&example_dir("multi-arch").join("image.toml"), &layout, &[]);
    oci_arg(&layout)
}

/// What every image of the multi-arch example must show.
fn check_multi_arch(v: &Value) {
    assert_eq!(v["kind"], "index");
    let images = v["images"].as_array().unwrap();
    let platforms: Vec<&str> = images
        .iter()
        .map(|i| i["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    for i in images {
        let c = &i["config"];
        assert_eq!(c["user"], "65532:65532");
        assert_eq!(c["workingDir"], "/app");
        assert_eq!(c["entrypoint"], serde_json::json!(["/app/server"]));
        assert_eq!(c["cmd"], serde_json::json!(["--listen", ":8080"]));
        assert_eq!(c["exposedPorts"], serde_json::json!(["8080/tcp"]));
        assert_eq!(c["volumes"], serde_json::json!(["/data"]));
        assert_eq!(c["stopSignal"], "SIGTERM");
        assert_eq!(c["labels"]["org.opencontainers.image.title"], "multi-arch");
        assert!(c["env"]
            .as_array()
            .unwrap()
            .contains(&"APP_MODE=production".into()));
        let created_by: Vec<&str> = i["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h["createdBy"].as_str())
            .collect();
        assert!(
            created_by.contains(&"imgc build: layer app"),
            "{created_by:?}"
        );
        for l in i["layers"].as_array().unwrap() {
            assert!(l["diffId"].as_str().unwrap().starts_with("sha256:"));
        }
    }
    assert!(images[1]["config"]["env"]
        .as_array()
        .unwrap()
        .contains(&"GOGC=50".into()));
}

#[test]
fn the_published_inspect_schema_is_current() {
    let printed = run(imgc().args(["schema", "inspect"]));
    let committed = fs::read_to_string(repo_root().join(SCHEMA)).unwrap();
    assert!(
        printed == committed,
        "{SCHEMA} is stale: run `cargo run -- schema inspect > {SCHEMA}`"
    );
}

#[test]
fn inspect_json_of_a_layout_and_of_a_registry_image_follows_the_schema() {
    let tmp = tempdir();
    let layout = multi_arch(tmp.path());
    let (text, local) = inspect_json(&[&layout]);
    assert_valid(&text);
    check_multi_arch(&local);

    let reg = Registry::start();
    let host = reg.host_port();
    let mut tagged = layout.clone();
    tagged.push(":2.1.0");
    run(imgc()
        .arg("push")
        .arg(&tagged)
        .arg(format!("{host}/app:2.1.0"))
        .args(insecure(&host)));
    let reference = format!("{host}/app:2.1.0");
    let flags = insecure(&host);
    let args: Vec<&std::ffi::OsStr> = [reference.as_str(), &flags[0], &flags[1]]
        .iter()
        .map(|s| std::ffi::OsStr::new(*s))
        .collect();
    let (text, remote) = inspect_json(&args);
    assert_valid(&text);
    check_multi_arch(&remote);
    assert_eq!(remote["digest"], local["digest"]);
    assert_eq!(remote["images"], local["images"]);
}

#[test]
fn inspect_picks_a_platform_or_a_document_by_digest() {
    let tmp = tempdir();
    let layout = multi_arch(tmp.path());
    let (_, all) = inspect_json(&[&layout]);
    let arm = all["images"][1]["digest"].as_str().unwrap().to_string();

    let (text, one) = inspect_json(&[&layout, "--platform".as_ref(), "linux/arm64".as_ref()]);
    assert_valid(&text);
    assert_eq!(one["images"].as_array().unwrap().len(), 1);
    assert_eq!(one["images"][0]["digest"], arm.as_str());

    let mut by_digest = layout.clone();
    by_digest.push(format!("@{arm}"));
    let (text, m) = inspect_json(&[&by_digest]);
    assert_valid(&text);
    assert_eq!(
        (m["kind"].as_str(), m["digest"].as_str()),
        (Some("manifest"), Some(arm.as_str()))
    );
    assert_eq!(
        m["images"][0]["config"]["env"],
        all["images"][1]["config"]["env"]
    );

    let out = run_fails(
        imgc()
            .arg("inspect")
            .arg(&layout)
            .args(["--platform", "linux/s390x"]),
    );
    let err = stderr(&out);
    assert!(
        err.contains("linux/s390x") && err.contains("linux/amd64, linux/arm64"),
        "{err}"
    );
    let mut missing = layout.clone();
    missing.push(format!("@sha256:{}", "0".repeat(64)));
    let err = stderr(&run_fails(imgc().arg("inspect").arg(&missing)));
    assert!(err.contains("holds no document sha256:000"), "{err}");
    // A document whose bytes are not its name's is refused, and left as it is.
    let out_dir = tmp.path().join("layout");
    let fake = format!("sha256:{}", "1".repeat(64));
    let path = blob_path(&out_dir, &fake);
    fs::write(&path, br#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
    let mut forged = layout.clone();
    forged.push(format!("@{fake}"));
    let err = stderr(&run_fails(imgc().arg("inspect").arg(&forged)));
    assert!(
        err.contains(&fake) && err.contains("does not match"),
        "{err}"
    );
    assert!(path.is_file());
}

#[test]
fn inspect_text_shows_the_config_and_help_shows_only_its_options() {
    let tmp = tempdir();
    let layout = multi_arch(tmp.path());
    let out = run(imgc().arg("inspect").arg(&layout));
    for needle in [
        "user        65532:65532",
        "workdir     /app",
        "env         APP_MODE=production",
        "ports       8080/tcp",
        "label       org.opencontainers.image.title=multi-arch",
        "history     imgc build: layer static",
    ] {
        assert!(out.contains(needle), "lacks {needle:?}:\n{out}");
    }
    let help = run(imgc().args(["inspect", "--help"]));
    for flag in [
        "--platform",
        "--format",
        "--raw",
        "--insecure-registry",
        "--timeout",
    ] {
        assert!(help.contains(flag), "inspect --help lacks {flag}:\n{help}");
    }
    for flag in ["--transfers", "--chunk-size"] {
        assert!(!help.contains(flag), "inspect --help shows {flag}:\n{help}");
    }
}
