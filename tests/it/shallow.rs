//! Shallow pushes: `build --push` with no `--output` on a registry base
//! downloads no base layer and writes no layout. Counted at the real
//! registry through the proxy: base-layer GETs, upload POSTs and PUTs.

use crate::proxy::{Proxy, Record, Rule};
use crate::registry::{addr, app, push_base};
use crate::support::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// The base's layer digests (every platform's), and the total size of its
/// configs, read from the example's base layout that `push_base` pushed.
fn base_parts() -> (BTreeSet<String>, u64) {
    let base = example_dir("multi-arch").join("base");
    let index = read_json(&base.join("index.json"));
    let top = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "1.0")
        .unwrap();
    let top = read_blob_json(&base, top["digest"].as_str().unwrap());
    let (mut layers, mut configs) = (BTreeSet::new(), 0);
    for m in top["manifests"].as_array().unwrap() {
        let man = read_blob_json(&base, m["digest"].as_str().unwrap());
        configs += man["config"]["size"].as_u64().unwrap();
        for l in man["layers"].as_array().unwrap() {
            layers.insert(l["digest"].as_str().unwrap().to_string());
        }
    }
    assert!(!layers.is_empty());
    (layers, configs)
}

/// The requests that touched one of `digests` (in the path, or in the
/// query: a mount's `mount=`, an upload's closing `digest=`).
fn touching<'a>(reqs: &'a [Record], digests: &BTreeSet<String>) -> Vec<&'a Record> {
    let names = |d: &String| [d.clone(), d.replace(':', "%3A")];
    reqs.iter()
        .filter(|r| {
            digests
                .iter()
                .flat_map(names)
                .any(|d| r.path.contains(&d) || r.query.contains(&d))
        })
        .collect()
}

/// Whether a folder holds no entry (or does not exist).
fn empty(dir: &Path) -> bool {
    fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

/// The digest the same spec builds into a layout (a full, non-shallow build
/// with its own store).
fn full_build_digest(spec: &Path, host: &str) -> String {
    let env = Env::new();
    digest_line(&run(env
        .imgc()
        .arg("build")
        .arg(spec)
        .arg("--output")
        .arg(oci_arg(&env.path("full")))
        .args(insecure(host))))
}

#[test]
fn a_push_without_output_moves_no_base_layer_and_writes_no_layout() {
    let reg = Registry::start();
    let proxy = Proxy::start(addr(&reg), vec![]);
    let host = proxy.host_port();
    let env = Env::new();
    push_base(&env, &host, &insecure(&host));
    let (tmp, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
    let expected = full_build_digest(&spec, &host);

    // From an empty store, in a folder of its own (where ./imgc-out would go).
    let env = Env::new();
    let cwd = tmp.path().join("cwd");
    fs::create_dir(&cwd).unwrap();
    let first = proxy.requests().len();
    let out = output(
        env.imgc()
            .current_dir(&cwd)
            .arg("build")
            .arg(&spec)
            .arg("--push")
            .args(["--format", "json"])
            .args(insecure(&host)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = summary["index"]["digest"].as_str().unwrap().to_string();
    assert_eq!(digest, expected, "a shallow build makes the same image");
    assert_eq!(summary["layout"], Value::Null);
    // What was downloaded is the base's configs (planning needs them).
    let (layers, configs) = base_parts();
    assert_eq!(summary["bytes"]["downloaded"], configs, "{summary}");
    assert!(
        summary["bytes"]["mounted"].as_u64().unwrap() > 0,
        "{summary}"
    );
    let err = stderr(&out);
    assert!(err.contains(&format!("; {configs} B downloaded)")), "{err}");

    // At the registry: no base layer downloaded, uploaded or even asked
    // for by an upload; each mounted from `base` (201).
    let reqs = proxy.requests()[first..].to_vec();
    for r in touching(&reqs, &layers) {
        assert!(
            (r.method == "HEAD" && r.path.starts_with("/v2/app/blobs/"))
                || (r.method == "POST"
                    && r.path == "/v2/app/blobs/uploads/"
                    && r.query.contains("from=base")
                    && r.status == Some(201)),
            "a base layer moved: {r:#?}"
        );
    }
    let mounts = reqs
        .iter()
        .filter(|r| r.method == "POST" && r.status == Some(201))
        .count();
    assert_eq!(mounts, layers.len(), "{reqs:#?}");

    // No layout written, in the working folder or left in the cache.
    assert!(
        empty(&cwd),
        "{:?}",
        fs::read_dir(&cwd).unwrap().collect::<Vec<_>>()
    );
    assert!(empty(&env.cache().join("shallow")));

    // The registry holds the whole image: skopeo copies it (checking every
    // digest) and it is the image a full build makes.
    assert_eq!(
        sha256_digest(&crate::registry::skopeo_raw(
            &format!("{host}/app:2.1.0"),
            &["--tls-verify=false"]
        )),
        expected
    );
    let pulled = env.path("pulled");
    run(skopeo()
        .args(["copy", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{host}/app:2.1.0"))
        .arg(format!("oci:{}:x", pulled.display())));
}

#[test]
fn a_push_to_another_registry_tries_an_anonymous_mount_then_fetches_and_uploads() {
    // Two proxies in front of one registry are two registries to imgc:
    // the base's and the target's.
    let reg = Registry::start();
    let source = Proxy::start(addr(&reg), vec![]);
    let target = Proxy::start(addr(&reg), vec![]);
    let (src, dst) = (source.host_port(), target.host_port());
    let env = Env::new();
    push_base(&env, &src, &insecure(&src));
    let (_tmp, spec) = app(&format!("{src}/base:1.0"), &format!("{dst}/app"));
    let expected = full_build_digest(&spec, &src);

    let env = Env::new();
    let before = source.requests().len();
    let out = output(
        env.imgc()
            .current_dir(env.path(""))
            .arg("build")
            .arg(&spec)
            .arg("--push")
            .args(insecure(&src))
            .args(insecure(&dst)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(digest_line(&String::from_utf8_lossy(&out.stdout)), expected);
    let (layers, configs) = base_parts();
    // Each base layer: an anonymous mount asked (`mount=` without `from`;
    // this registry ignores it and opens an upload), then fetched from the
    // base's registry once and uploaded.
    let reqs = target.requests();
    let anonymous = reqs
        .iter()
        .filter(|r| r.method == "POST" && r.query.contains("mount=") && !r.query.contains("from="))
        .count();
    assert_eq!(anonymous, layers.len(), "{reqs:#?}");
    let fetched = source.requests()[before..]
        .iter()
        .filter(|r| r.method == "GET" && layers.iter().any(|l| r.path.ends_with(l.as_str())))
        .count();
    assert_eq!(fetched, layers.len());
    let err = stderr(&out);
    assert!(
        !err.contains(&format!("; {configs} B downloaded)")),
        "{err}"
    );
    assert!(empty(&env.cache().join("shallow")));
    assert!(!env.path("imgc-out").exists());
}

#[test]
fn a_failed_shallow_push_leaves_no_layout_behind() {
    let reg = Registry::start();
    let proxy = Proxy::start(
        addr(&reg),
        vec![Rule::status(400).method("PUT").path("/v2/app/").always()],
    );
    let host = proxy.host_port();
    let env = Env::new();
    push_base(&env, &host, &insecure(&host));
    let (tmp, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
    let cwd = tmp.path().join("cwd");
    fs::create_dir(&cwd).unwrap();
    let out = run_fails(
        env.imgc()
            .current_dir(&cwd)
            .arg("build")
            .arg(&spec)
            .arg("--push")
            .args(insecure(&host)),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("HTTP 400"), "{}", stderr(&out));
    assert!(empty(&cwd));
    assert!(empty(&env.cache().join("shallow")));
}
