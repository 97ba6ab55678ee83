//! Hostile and faulty registries (issue 7, group "registry"): credentials
//! offered to an upload on another host or to a plain-HTTP realm, slow and
//! stalled downloads, a registry restarting mid-push, redirect loops, a
//! realm that is not HTTP, a corrupt store, private registries with the
//! self-signed certificate Docker's documentation makes. A real
//! `docker-registry` is behind every test; the fault proxy or a listener of
//! the test plays the foreign side.

use crate::proxy::{Gate, Proxy, Rule};
use crate::registry::{addr, app, push_base};
use crate::support::*;
use crate::tls::{TlsRegistry, TlsResponder};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USER: &str = "hostile-user";
const PASSWORD: &str = "Pw-hostile-7Kq2";

/// The digest of the example base's amd64 layer.
fn amd64_layer() -> String {
    let base = example_dir("multi-arch").join("base");
    let index = read_json(&base.join("index.json"));
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"][REF_NAME] == "1.0-amd64")
        .unwrap()
        .clone();
    let manifest = read_blob_json(&base, entry["digest"].as_str().unwrap());
    manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn base_layout() -> std::ffi::OsString {
    let mut src = oci_arg(&example_dir("multi-arch").join("base"));
    src.push(":1.0");
    src
}

/// Pushes the base through a gate whose upload `Location`s point at a
/// foreign proxy (in front of the same registry); returns what the foreign
/// side saw, as (requests, requests with an Authorization header).
fn push_through_foreign_uploads(gate: Gate, chunked: bool) -> (usize, usize) {
    let reg = Registry::start();
    let foreign = Proxy::start(addr(&reg), vec![]);
    let gated = Proxy::start_with_gate(
        addr(&reg),
        vec![Rule::rewrite_location(&foreign.host_port())
            .path("/blobs/uploads/")
            .always()],
        gate,
    );
    let host = gated.host_port();
    let env = Env::new();
    env.basic_login(&host, USER, PASSWORD);
    let mut cmd = env.imgc();
    cmd.arg("push")
        .arg(base_layout())
        .arg(format!("{host}/base:1.0"))
        .args(insecure(&host));
    if chunked {
        cmd.args(["--chunk-size", "1024"]);
    }
    let out = output(&mut cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = foreign.requests();
    let with_auth = seen.iter().filter(|r| r.auth.is_some()).count();
    (seen.len(), with_auth)
}

#[test]
fn credentials_never_follow_an_upload_to_another_host() {
    for (gate, chunked) in [
        (Gate::new(USER, PASSWORD).basic(), false),
        (Gate::new(USER, PASSWORD).basic(), true),
        (Gate::new(USER, PASSWORD), false),
    ] {
        let (seen, with_auth) = push_through_foreign_uploads(gate, chunked);
        assert!(seen > 0, "the uploads did not go to the foreign host");
        assert_eq!(
            with_auth, 0,
            "{with_auth} of {seen} foreign requests had credentials"
        );
    }
}

/// A plain-HTTP listener that answers every request 401 and records
/// whether each came with an `Authorization` header.
fn recorder(ip: Ipv4Addr, port: u16) -> Arc<Mutex<Vec<bool>>> {
    let l = TcpListener::bind((ip, port))
        .unwrap_or_else(|e| panic!("bind {ip}:{port} (this test needs root): {e}"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut auth = false;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                auth |= line.to_ascii_lowercase().starts_with("authorization:");
            }
            s.lock().unwrap().push(auth);
            let mut w = conn;
            let _ = w.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    seen
}

#[test]
fn credentials_never_go_to_a_plain_http_realm_on_the_registry_host() {
    // An HTTPS registry on 127.0.0.57:443 (the default port) whose token
    // realm is http://127.0.0.57/token (port 80, cleartext).
    let ip = Ipv4Addr::new(127, 0, 0, 57);
    let seen = recorder(ip, 80);
    let reg = TlsRegistry::start_token_auth_on_443(ip, "http://127.0.0.57/token");
    let env = Env::new();
    env.basic_login("127.0.0.57", USER, PASSWORD);
    let out = output(
        env.imgc()
            .args(["inspect", "127.0.0.57/app:1", "--ca-file"])
            .arg(reg.ca_file()),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused access"), "{err}");
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the realm was never asked: {err}");
    assert!(
        seen.iter().all(|a| !a),
        "credentials went to the realm in cleartext"
    );
}

/// Builds the multi-arch example for linux/amd64 with `--timeout 1` on its
/// base, pushed to a real registry and pulled through a proxy with `rules`.
/// Returns (the proxy, the output, how long the build took).
fn build_through(rules: Vec<Rule>) -> (Proxy, std::process::Output, Duration) {
    let reg = Registry::start();
    let env = Env::new();
    push_base(&env, &reg.host_port(), &insecure(&reg.host_port()));
    let proxy = Proxy::start(addr(&reg), rules);
    let host = proxy.host_port();
    let (_t, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
    let started = Instant::now();
    let out = output(
        env.imgc()
            .arg("build")
            .arg(&spec)
            .args(["--platform", "linux/amd64", "--timeout", "1", "--output"])
            .arg(oci_arg(&env.path("out")))
            .args(insecure(&host)),
    );
    (proxy, out, started.elapsed())
}

#[test]
fn a_steady_download_longer_than_the_timeout_succeeds() {
    // The layer trickles in over 3.5 s; no read waits more than 0.2 s.
    let rule = Rule::trickle(Duration::from_millis(3500))
        .method("GET")
        .path(&amd64_layer());
    let (proxy, out, took) = build_through(vec![rule]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(took > Duration::from_secs(3), "no slow download happened");
    assert!(!err.contains("retry"), "a steady download was cut: {err}");
    assert_eq!(proxy.rules()[0].times, 0, "the trickle applied");
}

#[test]
fn a_download_that_stalls_midway_is_retried_then_fails_naming_the_blob_and_timeout() {
    let layer = amd64_layer();
    let rule = Rule::stall_body(Duration::from_secs(30))
        .method("GET")
        .path(&layer)
        .always();
    let (_proxy, out, _) = build_through(vec![rule]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.matches("retry").count() >= 3, "{err}");
    let last = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(last.contains(&layer), "{err}");
    assert!(err.contains("for 1 s (the --timeout)"), "{err}");
}

#[test]
fn a_registry_restarting_mid_push_is_survived() {
    let mut reg = Registry::start();
    let host = reg.host_port();
    let env = Env::new();
    // An image of twelve 16 MiB layers, pushed one blob at a time: long
    // enough that the registry goes down with most of it still to send.
    let dir = env.path("ctx");
    fs::create_dir_all(&dir).unwrap();
    let mut spec = String::from("[image]\nplatforms = [\"linux/amd64\"]\ncompression = \"none\"\n");
    for i in 0..12 {
        fs::write(dir.join(format!("f{i}")), noise(i, 16 << 20)).unwrap();
        spec.push_str(&format!(
            "[[layers]]\nname = \"l{i}\"\nfiles = [{{ src = \"f{i}\", dst = \"/f{i}\" }}]\n"
        ));
    }
    fs::write(dir.join("image.toml"), spec).unwrap();
    let layout = env.path("out");
    run(env
        .imgc()
        .arg("build")
        .arg(dir.join("image.toml"))
        .arg("-o")
        .arg(oci_arg(&layout)));
    let child = env
        .imgc()
        .arg("push")
        .arg(oci_arg(&layout))
        .arg(format!("{host}/app:1"))
        .args(["--transfers", "1"])
        .args(insecure(&host))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once a blob has landed in the registry's storage, it goes down for 2 s.
    let blobs = reg.storage().join("docker/registry/v2/blobs/sha256");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !blobs.is_dir() || fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no blob arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    reg.restart_after(Duration::from_secs(2));
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("retry"), "the outage was not noticed: {err}");
    let pushed = digest_line(&stdout(&out));
    let raw = run(env
        .imgc()
        .args(["inspect", "--raw", &format!("{host}/app:1")])
        .args(insecure(&host)));
    assert_eq!(sha256_digest(raw.as_bytes()), pushed);
}

#[test]
fn redirect_loops_and_non_http_realms_fail_at_once_without_retries() {
    let reg = Registry::start();
    let env = Env::new();
    push_base(&env, &reg.host_port(), &insecure(&reg.host_port()));
    let proxy = Proxy::start(
        addr(&reg),
        vec![
            Rule::status_with(307, &[("Location", "/v2/base/manifests/1.0")])
                .path("/manifests/")
                .always(),
        ],
    );
    inspect_fails_at_once(&env, &proxy.host_port(), "too many redirects");
    let gated = Proxy::start_with_gate(
        addr(&reg),
        vec![],
        Gate::new(USER, PASSWORD).realm_url("file:///etc/passwd"),
    );
    env.basic_login(&gated.host_port(), USER, PASSWORD);
    inspect_fails_at_once(&env, &gated.host_port(), "scheme `file`");
}

#[test]
fn a_redirect_from_https_to_plain_http_is_refused_at_once() {
    let reg = Registry::start();
    let env = Env::new();
    push_base(&env, &reg.host_port(), &insecure(&reg.host_port()));
    let to = format!("http://{}/v2/base/manifests/1.0", reg.host_port());
    let https = TlsResponder::start(&format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ));
    let started = Instant::now();
    let out = output(
        env.imgc()
            .args([
                "inspect",
                &format!("{}/base:1.0", https.host_port()),
                "--ca-file",
            ])
            .arg(https.ca_file()),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("from HTTPS to plain HTTP"), "{err}");
    assert!(!err.contains("retry"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4), "{err}");
}

/// `imgc inspect HOST/base:1.0` fails within 4 s, naming `needle`, and
/// without a retry.
fn inspect_fails_at_once(env: &Env, host: &str, needle: &str) {
    let started = Instant::now();
    let out = output(
        env.imgc()
            .args(["inspect", &format!("{host}/base:1.0")])
            .args(insecure(host)),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "{err}");
    assert!(!err.contains("retry"), "{err}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}: {err}");
}

/// The store file of the base's amd64 layer.
fn store_layer(env: &Env) -> PathBuf {
    blob_path(&env.cache().join("store"), &amd64_layer())
}

#[test]
fn a_corrupt_store_blob_of_the_right_size_is_fetched_again_or_named_offline() {
    let reg = Registry::start();
    let host = reg.host_port();
    let env = Env::new();
    push_base(&env, &host, &insecure(&host));
    let (_t, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
    let build = |out: &str, extra: &[&str]| {
        output(
            env.imgc()
                .arg("build")
                .arg(&spec)
                .args(["--platform", "linux/amd64", "--output"])
                .arg(oci_arg(&env.path(out)))
                .args(extra)
                .args(insecure(&host)),
        )
    };
    let first = build("a", &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    run(env.imgc().arg("lock").arg(&spec).args(insecure(&host)));
    let flip = || {
        let path = store_layer(&env);
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        fs::write(&path, bytes).unwrap();
    };
    // Offline: the error names the blob and says what to do.
    flip();
    let out = build("b", &["--offline", "--locked"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        !env.path("b").join("index.json").exists(),
        "a layout was written"
    );
    assert!(
        err.contains("corrupt") && err.contains("--offline"),
        "{err}"
    );
    // Online: discarded, fetched again, and the build is the same.
    let again = build("c", &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(digest_line(&stdout(&again)), digest_line(&stdout(&first)));
    verify_layout(&env.path("c"), true);
}

#[test]
fn the_store_is_shown_pruned_and_cleaned() {
    let reg = Registry::start();
    let host = reg.host_port();
    let env = Env::new();
    push_base(&env, &host, &insecure(&host));
    let (_t, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
    run(env
        .imgc()
        .arg("build")
        .arg(&spec)
        .arg("--output")
        .arg(oci_arg(&env.path("out")))
        .args(insecure(&host)));
    let du = run(env.imgc().args(["cache", "du"]));
    let blobs: usize = du
        .lines()
        .find_map(|l| l.strip_prefix("blobs: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{du}"));
    assert!(blobs >= 5, "{du}");
    // Used just now: nothing is 30 days old.
    let pruned = run(env.imgc().args(["cache", "prune", "--older-than", "30"]));
    assert!(pruned.contains("removed 0 blob(s)"), "{pruned}");
    let cleaned = run(env.imgc().args(["cache", "clean"]));
    assert!(
        cleaned.contains(&format!("removed {blobs} blob(s)")),
        "{cleaned}"
    );
    let du = run(env.imgc().args(["cache", "du"]));
    assert!(du.contains("blobs: 0"), "{du}");
}

#[test]
fn a_registry_with_the_docker_docs_self_signed_certificate_works() {
    let reg = TlsRegistry::start_docker_docs_self_signed();
    let host = reg.host_port();
    let env = Env::new();
    // With --ca-file.
    let out = output(
        env.imgc()
            .arg("push")
            .arg(base_layout())
            .arg(format!("{host}/base:1.0"))
            .arg("--ca-file")
            .arg(reg.ca_file()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // With the certificate in a certs.d folder and no flag.
    let dir = env.path("certs.d").join(&host);
    fs::create_dir_all(&dir).unwrap();
    fs::copy(reg.ca_file(), dir.join("ca.crt")).unwrap();
    let raw = run(env
        .imgc()
        .args(["inspect", "--raw", &format!("{host}/base:1.0")]));
    assert!(raw.contains("manifests"), "{raw}");
    // Without either: refused, with the hint.
    fs::remove_file(dir.join("ca.crt")).unwrap();
    let out = output(env.imgc().args(["inspect", &format!("{host}/base:1.0")]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--ca-file"), "{err}");
    // A pinned certificate is trusted only for the names it holds.
    let other = format!("localhost:{}", reg.port());
    let out = output(
        env.imgc()
            .args(["inspect", &format!("{other}/base:1.0"), "--ca-file"])
            .arg(reg.ca_file()),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn a_client_certificate_in_the_certificate_folder_is_presented() {
    let reg = TlsRegistry::start_with_client_certificates();
    let host = reg.host_port();
    let env = Env::new();
    let push = |env: &Env| {
        output(
            env.imgc()
                .arg("push")
                .arg(base_layout())
                .arg(format!("{host}/base:1.0")),
        )
    };
    // The CA alone in the folder: the registry refuses the handshake.
    let dir = env.path("certs.d").join(&host);
    fs::create_dir_all(&dir).unwrap();
    fs::copy(reg.ca_file(), dir.join("ca.crt")).unwrap();
    let out = push(&env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // With client.cert and client.key beside it: accepted.
    let (cert, key) = reg.tls_files().client.clone().unwrap();
    fs::copy(cert, dir.join("client.cert")).unwrap();
    fs::copy(&key, dir.join("client.key")).unwrap();
    let out = push(&env);
    assert!(out.status.success(), "{}", stderr(&out));
    // A certificate without its key is an error naming the missing key.
    fs::remove_file(dir.join("client.key")).unwrap();
    let out = push(&env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("client.key") && err.contains("missing"),
        "{err}"
    );
}

/// A registry whose blob HEADs fail with 500 (as one restarted while it
/// committed a blob does, until the blob is uploaded again): the push
/// uploads the blobs instead of giving up, and the image arrives whole.
#[test]
fn a_blob_head_failing_with_500_is_answered_by_uploading() {
    let reg = Registry::start();
    let env = Env::new();
    let (_t, dir) = copy_example("hello");
    let layout = env.path("out");
    let built = run(env
        .imgc()
        .arg("build")
        .arg(dir.join("image.toml"))
        .args(["-q", "-o"])
        .arg(oci_arg(&layout)));
    let proxy = Proxy::start(
        addr(&reg),
        vec![Rule::status(500).method("HEAD").path("/blobs/").always()],
    );
    let host = proxy.host_port();
    let out = output(
        env.imgc()
            .arg("push")
            .arg(oci_arg(&layout))
            .arg(format!("{host}/app:1"))
            .args(insecure(&host)),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(digest_line(&stdout(&out)), built.trim());
    assert!(proxy.count("HEAD", "/blobs/") > 0, "no blob HEAD was asked");
    // Every blob went up through the registry, which checked its digest.
    let inspected = run(env
        .imgc()
        .args(["inspect", "--raw", &format!("{}/app:1", reg.host_port())])
        .args(insecure(&reg.host_port())));
    assert!(!inspected.is_empty());
}
