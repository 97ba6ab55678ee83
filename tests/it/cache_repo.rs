//! The registry-shared layer cache (`--cache-repo`) against the real
//! registry: a second machine (an empty store, another checkout path)
//! compresses nothing; poisoned entries (a diff_id the sources do not
//! make, a blob that decompresses to another diff_id) are refused, reported
//! and rebuilt; `imgc cache prune --repo` deletes old entries.

use crate::proxy::Proxy;
use crate::registry::addr;
use crate::support::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

/// One raw HTTP/1.1 request to 127.0.0.1:port; the status and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, all[split + 4..].to_vec())
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The cache repository's entries: tag → manifest.
fn entries(reg: &Registry) -> BTreeMap<String, Value> {
    let (status, body) = http(reg.port(), "GET", "/v2/cache/tags/list", &[], b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let tags: Value = serde_json::from_slice(&body).unwrap();
    let mut out = BTreeMap::new();
    for t in tags["tags"].as_array().cloned().unwrap_or_default() {
        let t = t.as_str().unwrap();
        let path = format!("/v2/cache/manifests/{t}");
        let (status, body) = http(reg.port(), "GET", &path, &[("Accept", MANIFEST)], b"");
        assert_eq!(status, 200);
        out.insert(t.to_string(), serde_json::from_slice(&body).unwrap());
    }
    out
}

/// Files `manifest` under `tag` in the cache repository.
fn put_entry(reg: &Registry, tag: &str, manifest: &Value) {
    let body = serde_json::to_vec(manifest).unwrap();
    let path = format!("/v2/cache/manifests/{tag}");
    let (status, answer) = http(
        reg.port(),
        "PUT",
        &path,
        &[("Content-Type", MANIFEST)],
        &body,
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
}

/// `imgc build SPEC --cache-repo HOST/cache --format json` in `env`; the summary.
fn build_json(env: &Env, spec: &Path, host: &str, out: &Path) -> (Value, String) {
    let o = output(
        env.imgc()
            .arg("build")
            .arg(spec)
            .arg("--output")
            .arg(oci_arg(out))
            .args(["--cache-repo", &format!("{host}/cache"), "--format", "json"])
            .args(insecure(host)),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    (serde_json::from_slice(&o.stdout).unwrap(), stderr(&o))
}

/// Each built layer's digest → where it came from (`built`, `local`, `repo`).
fn sources(summary: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for image in summary["images"].as_array().unwrap() {
        for l in image["layers"].as_array().unwrap() {
            if l["origin"] == "built" {
                let from = l["cache"].as_str().unwrap_or("built").to_string();
                out.insert(l["digest"].as_str().unwrap().to_string(), from);
            }
        }
    }
    out
}

fn all(map: &BTreeMap<String, String>, what: &str) -> bool {
    !map.is_empty() && map.values().all(|v| v == what)
}

/// The digest of the spec built with no cache at all.
fn reference_digest(spec: &Path) -> String {
    let env = Env::new();
    digest_line(&run(env
        .imgc()
        .arg("build")
        .arg(spec)
        .arg("--no-cache")
        .arg("--output")
        .arg(oci_arg(&env.path("ref")))))
}

#[test]
fn a_second_machine_takes_every_layer_from_the_cache_repo_and_compresses_none() {
    let reg = Registry::start();
    let proxy = Proxy::start(addr(&reg), vec![]);
    let host = proxy.host_port();
    let (_t1, dir1) = copy_example("multi-arch");
    let spec1 = dir1.join("image.toml");
    let expected = reference_digest(&spec1);

    let first = Env::new();
    let (s1, _) = build_json(&first, &spec1, &host, &first.path("out"));
    assert_eq!(s1["index"]["digest"], expected.as_str());
    assert!(all(&sources(&s1), "built"), "{s1}");
    let filed = entries(&reg);
    // Each layer under its tar stream's key and under its shape's.
    let (shapes, streams): (Vec<_>, Vec<_>) = filed.keys().partition(|t| is_shape(t));
    assert_eq!(streams.len(), sources(&s1).len(), "{filed:#?}");
    assert_eq!(shapes.len(), streams.len(), "{filed:#?}");
    for (tag, m) in &filed {
        assert!(tag.starts_with("imgc-layer-v"), "{tag}");
        assert_eq!(m["artifactType"], "application/vnd.imgc.layer-cache.v1");
        assert!(sources(&s1).contains_key(layer_of(m)), "{tag}");
    }

    // Another machine: an empty store, the sources checked out elsewhere.
    let (_t2, dir2) = copy_example("multi-arch");
    let spec2 = dir2.join("image.toml");
    let second = Env::new();
    let before = proxy.requests().len();
    let (s2, _) = build_json(&second, &spec2, &host, &second.path("out"));
    assert_eq!(s2["index"]["digest"], expected.as_str());
    assert!(all(&sources(&s2), "repo"), "{s2}");
    // It uploaded nothing to the cache: every layer was a hit.
    let uploads = proxy.requests()[before..]
        .iter()
        .filter(|r| r.method == "PUT" || r.method == "POST" || r.method == "PATCH")
        .count();
    assert_eq!(uploads, 0, "{:#?}", &proxy.requests()[before..]);
    // Each layer came by its shape entry, fetched while its tar stream was
    // made: no tar stream's entry was looked up.
    let stream_lookups: Vec<_> = proxy.requests()[before..]
        .iter()
        .filter(|r| r.path.contains("/manifests/imgc-layer-") && !is_shape(&r.path))
        .map(|r| r.path.clone())
        .collect();
    assert!(stream_lookups.is_empty(), "{stream_lookups:#?}");

    // And a rebuild there takes them from its local cache.
    let (s3, _) = build_json(&second, &spec2, &host, &second.path("out2"));
    assert_eq!(s3["index"]["digest"], expected.as_str());
    assert!(all(&sources(&s3), "local"), "{s3}");
    // Once the files have settled, by their fingerprints: nothing read.
    std::thread::sleep(std::time::Duration::from_millis(250));
    let _ = build_json(&second, &spec2, &host, &second.path("out3"));
    let (s4, _) = build_json(&second, &spec2, &host, &second.path("out4"));
    assert!(all(&sources(&s4), "local"), "{s4}");
    assert_eq!(s4["context_bytes_read"], 0, "{s4}");
}

/// Whether a tag (or a path naming one) is a shape entry's.
fn is_shape(tag: &str) -> bool {
    tag.contains("-shape-")
}

/// The layer blob an entry names.
fn layer_of(m: &Value) -> &str {
    m["layers"][0]["digest"].as_str().unwrap()
}

/// A good entry of the cache repository filled by a first build (of its
/// largest layer), and the entries (tag, manifest) of another layer: the
/// victim's, under its tar stream's key and its shape's.
fn good_and_victim(reg: &Registry) -> (Value, Vec<(String, Value)>) {
    let filed = entries(reg);
    let mut v: Vec<_> = filed.values().collect();
    v.sort_by_key(|m| m["layers"][0]["size"].as_u64().unwrap());
    let good = v[v.len() - 1].clone();
    let victim = layer_of(v[0]).to_string();
    assert_ne!(layer_of(&good), victim);
    let victims: Vec<_> = filed
        .into_iter()
        .filter(|(_, m)| layer_of(m) == victim)
        .collect();
    assert_eq!(victims.len(), 2, "{victims:#?}");
    (good, victims)
}

/// A poisoned entry for one layer (both its entries): the build says why it
/// refused it, builds the layer, makes the right image, and files a good
/// entry.
fn poisoned_entry_is_refused(poison: fn(&Value, &Value) -> Value, reason: &str) {
    let reg = Registry::start();
    let host = reg.host_port();
    let (_t, dir) = copy_example("multi-arch");
    let spec = dir.join("image.toml");
    let expected = reference_digest(&spec);
    let first = Env::new();
    build_json(&first, &spec, &host, &first.path("out"));
    let (good, victims) = good_and_victim(&reg);
    for (tag, victim) in &victims {
        put_entry(&reg, tag, &poison(&good, victim));
    }

    let second = Env::new();
    let (s, err) = build_json(&second, &spec, &host, &second.path("out"));
    assert_eq!(s["index"]["digest"], expected.as_str(), "{err}");
    assert!(err.contains("is refused") && err.contains(reason), "{err}");
    let from = sources(&s);
    assert!(from.values().any(|v| v == "built"), "{s}");
    assert!(from.values().any(|v| v == "repo"), "{s}");
    // Only the victim's layer was built: the cache stayed in use.
    let victim_layer = layer_of(&victims[0].1);
    for (digest, how) in &from {
        let want = if digest == victim_layer {
            "built"
        } else {
            "repo"
        };
        assert_eq!(how, want, "{digest}: {s}");
    }
    // The poisoned tags now hold good entries: a third machine takes them.
    for (tag, victim) in &victims {
        assert_ne!(entries(&reg)[tag], poison(&good, victim));
    }
    let third = Env::new();
    let (s, err) = build_json(&third, &spec, &host, &third.path("out"));
    assert!(all(&sources(&s), "repo"), "{s} {err}");
    assert!(!err.contains("is refused"), "{err}");
}

#[test]
fn a_poisoned_or_stale_shape_entry_gives_way_to_the_tar_streams_own_entry() {
    let reg = Registry::start();
    let host = reg.host_port();
    let (_t, dir) = copy_example("multi-arch");
    let spec = dir.join("image.toml");
    let first = Env::new();
    build_json(&first, &spec, &host, &first.path("out"));
    let (good, victims) = good_and_victim(&reg);
    let (shape_tag, shape) = victims.iter().find(|(t, _)| is_shape(t)).unwrap();
    // The victim's shape entry says its diff_id, with another layer's blob.
    let mut poisoned = shape.clone();
    poisoned["layers"][0]["digest"] = good["layers"][0]["digest"].clone();
    poisoned["layers"][0]["size"] = good["layers"][0]["size"].clone();
    put_entry(&reg, shape_tag, &poisoned);
    let second = Env::new();
    let (s, err) = build_json(&second, &spec, &host, &second.path("out"));
    assert_eq!(s["index"]["digest"], reference_digest(&spec).as_str());
    assert!(
        err.contains("is refused") && err.contains("decompresses to"),
        "{err}"
    );
    // Refused, it gave way to the entry of the tar stream: nothing built,
    // and the warning says so.
    assert!(all(&sources(&s), "repo"), "{s}");
    assert!(
        err.contains("shape entry") && err.contains("looked up instead"),
        "{err}"
    );
    assert!(!err.contains("built instead"), "{err}");

    // A checkout whose web page changed (same size): the static layer's
    // shape entry is of other content; passed over without a warning.
    put_entry(&reg, shape_tag, shape);
    let (_t3, dir3) = copy_example("multi-arch");
    let page = dir3.join("web/index.html");
    let mut bytes = std::fs::read(&page).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&page, &bytes).unwrap();
    let spec3 = dir3.join("image.toml");
    let third = Env::new();
    let (s, err) = build_json(&third, &spec3, &host, &third.path("out"));
    assert_eq!(s["index"]["digest"], reference_digest(&spec3).as_str());
    assert!(!err.contains("is refused"), "{err}");
    let from = sources(&s);
    assert_eq!(from.values().filter(|v| *v == "built").count(), 1, "{s}");
    assert_eq!(
        from.values().filter(|v| *v == "repo").count(),
        from.len() - 1,
        "{s}"
    );
}

/// A second machine through a proxy that faults the first download of
/// the largest layer's blob with `rule`: its summary and warnings, the
/// proxy's GETs of that blob, and the image digest it should make.
fn second_machine_with_a_faulted_blob(rule: crate::proxy::Rule) -> (Value, String, usize, String) {
    let reg = Registry::start();
    let (_t, dir) = copy_example("multi-arch");
    let spec = dir.join("image.toml");
    let first = Env::new();
    build_json(&first, &spec, &reg.host_port(), &first.path("out"));
    let (good, _) = good_and_victim(&reg);
    let blob = layer_of(&good).to_string();
    let proxy = Proxy::start(addr(&reg), vec![rule.method("GET").path(&blob)]);
    let second = Env::new();
    let (s, err) = build_json(&second, &spec, &proxy.host_port(), &second.path("out"));
    let gets = proxy.count("GET", &blob);
    (s, err, gets, reference_digest(&spec))
}

#[test]
fn a_blob_download_that_breaks_midway_is_retried_and_the_layer_still_comes_from_the_repo() {
    // The blob is decompressed and compared as it downloads; the retry
    // writes another file, so the blob is read again (and hashed).
    let rule = crate::proxy::Rule::stall_body(std::time::Duration::from_millis(100));
    let (s, err, gets, expected) = second_machine_with_a_faulted_blob(rule);
    assert_eq!(s["index"]["digest"], expected.as_str(), "{err}");
    assert_eq!(gets, 2, "one broken download, one retry");
    assert!(all(&sources(&s), "repo"), "{s} {err}");
    assert!(!err.contains("refused"), "{err}");
}

#[test]
fn a_blob_whose_bytes_are_not_its_digest_is_refused_then_fetched_again() {
    let (s, err, gets, expected) =
        second_machine_with_a_faulted_blob(crate::proxy::Rule::corrupt_body());
    assert_eq!(s["index"]["digest"], expected.as_str(), "{err}");
    // The shape entry is refused for the blob's digest; the tar stream's
    // own entry names the same blob, fetched again, whole this time.
    assert!(
        err.contains("shape entry") && err.contains("not fetched") && err.contains("digest"),
        "{err}"
    );
    assert_eq!(gets, 2, "{err}");
    assert!(all(&sources(&s), "repo"), "{s} {err}");
}

#[test]
fn an_entry_whose_diff_id_the_sources_do_not_make_is_refused_and_rebuilt() {
    // The victim's key, with another layer's blob and diff_id.
    poisoned_entry_is_refused(
        |good, victim| {
            let mut m = victim.clone();
            m["layers"] = good["layers"].clone();
            m
        },
        "is not the sources' tar stream",
    );
}

#[test]
fn an_entry_filed_under_another_key_is_refused_and_the_cache_stays_on() {
    // Another layer's whole entry (its own key inside) under the victim's tag.
    poisoned_entry_is_refused(|good, _| good.clone(), "another key");
}

#[test]
fn an_entry_whose_blob_decompresses_to_another_diff_id_is_refused_and_rebuilt() {
    // The victim's key and diff_id, with another layer's blob.
    poisoned_entry_is_refused(
        |good, victim| {
            let mut m = victim.clone();
            m["layers"][0]["digest"] = good["layers"][0]["digest"].clone();
            m["layers"][0]["size"] = good["layers"][0]["size"].clone();
            m
        },
        "decompresses to",
    );
}

#[test]
fn an_entry_declaring_a_blob_larger_than_its_tar_stream_is_refused_unfetched() {
    // The victim's key, diff_id and blob, declared 10 GB.
    poisoned_entry_is_refused(
        |_, victim| {
            let mut m = victim.clone();
            m["layers"][0]["size"] = serde_json::json!(10_000_000_000u64);
            m
        },
        "more than a",
    );
}

#[test]
fn an_entry_declaring_a_tar_stream_larger_than_the_sources_make_is_refused_unfetched() {
    // The victim's key and blob, its tar stream (and so the decompression
    // bound) declared 1 TB.
    poisoned_entry_is_refused(
        |_, victim| {
            let mut m = victim.clone();
            m["layers"][0]["annotations"]["dev.imgc.layer.tar-size"] =
                serde_json::json!("1000000000000");
            m
        },
        "more than these sources can make",
    );
}

/// A registry whose cache repository a build of the multi-arch example
/// filled, the environment of that build, and the number of entries.
fn filled_cache_repo() -> (Registry, tempfile::TempDir, Env, usize) {
    let reg = Registry::start();
    let (t, dir) = copy_example("multi-arch");
    let env = Env::new();
    build_json(
        &env,
        &dir.join("image.toml"),
        &reg.host_port(),
        &env.path("out"),
    );
    let entries = entries(&reg).len();
    assert!(entries > 2, "{entries} entries: too few to page");
    (reg, t, env, entries)
}

/// `imgc cache prune --repo HOST/cache --older-than DAYS` in `env`.
fn prune(env: &Env, host: &str, days: &str) -> std::process::Output {
    output(
        env.imgc()
            .args(["cache", "prune", "--repo", &format!("{host}/cache")])
            .args(["--older-than", days])
            .args(insecure(host)),
    )
}

#[test]
fn prune_repo_deletes_old_entries_only() {
    let (reg, _t, env, before) = filled_cache_repo();
    let host = reg.host_port();
    let out = stdout(&prune(&env, &host, "1"));
    assert!(
        out.contains(&format!("removed 0 of {before} cache")),
        "{out}"
    );
    assert_eq!(entries(&reg).len(), before);
    let out = stdout(&prune(&env, &host, "0"));
    assert!(
        out.contains(&format!("removed {before} of {before} cache")),
        "{out}"
    );
    assert!(entries(&reg).is_empty());
}

#[test]
fn prune_repo_follows_the_tag_list_pages() {
    let (reg, _t, env, before) = filled_cache_repo();
    let proxy = Proxy::start(addr(&reg), vec![crate::proxy::Rule::page_tags(2, None)]);
    let o = prune(&env, &proxy.host_port(), "0");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("removed {before} of {before} cache")),
        "{}",
        stdout(&o)
    );
    assert!(entries(&reg).is_empty());
    assert_eq!(proxy.count("GET", "/tags/list"), before.div_ceil(2));
}

#[test]
fn prune_repo_refuses_a_next_page_on_another_host() {
    let (reg, _t, env, before) = filled_cache_repo();
    // The foreign host: another proxy, so that its requests are seen.
    let foreign = Proxy::start(addr(&reg), vec![]);
    let rule = crate::proxy::Rule::page_tags(2, Some(&foreign.host_port()));
    let proxy = Proxy::start(addr(&reg), vec![rule]);
    let o = prune(&env, &proxy.host_port(), "0");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("points to another host"), "{err}");
    assert!(err.contains(&foreign.host_port()), "{err}");
    assert!(foreign.requests().is_empty(), "{:?}", foreign.requests());
    // The page that carried the link is refused whole: nothing deleted.
    assert_eq!(entries(&reg).len(), before);
}

#[test]
fn a_cache_repo_that_is_down_costs_one_warning_and_the_build_goes_on() {
    let (_t, dir) = copy_example("multi-arch");
    let spec = dir.join("image.toml");
    let expected = reference_digest(&spec);
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let env = Env::new();
    let (s, err) = build_json(&env, &spec, &host, &env.path("out"));
    assert_eq!(s["index"]["digest"], expected.as_str());
    assert_eq!(err.matches("not read (nor used again").count(), 1, "{err}");
    assert!(err.contains(&host), "{err}");
    assert!(all(&sources(&s), "built"), "{s}");
    // Only the first layer made its tar stream for a lookup: the others
    // were read once, as in a build without a cache repository.
    let plain = Env::new();
    let out = run(plain
        .imgc()
        .arg("build")
        .arg(&spec)
        .args(["--format", "json", "--output"])
        .arg(oci_arg(&plain.path("out"))));
    let plain: Value = serde_json::from_str(&out).unwrap();
    let (read, once) = (&s["context_bytes_read"], &plain["context_bytes_read"]);
    assert!(
        read.as_u64().unwrap() < 2 * once.as_u64().unwrap(),
        "{read} against {once}"
    );
}

#[test]
fn a_cache_repo_with_a_tag_is_refused_before_anything_is_built() {
    let (_t, dir) = copy_example("multi-arch");
    let env = Env::new();
    let out = run_fails(
        env.imgc()
            .arg("build")
            .arg(dir.join("image.toml"))
            .arg("--output")
            .arg(oci_arg(&env.path("out")))
            .args(["--cache-repo", "127.0.0.1:5/cache:v1"]),
    );
    let err = stderr(&out);
    assert!(err.contains("`127.0.0.1:5/cache:v1` names a tag"), "{err}");
    assert!(!env.path("out").exists());
}
