//! imgc against a real registry (`docker-registry`, CNCF distribution) on
//! 127.0.0.1: pulling bases by reference, pushing, mounts, the lock file,
//! offline builds, CI shards, TLS + auth, faults injected by a proxy in
//! front of the real registry, and the errors users see.

use crate::proxy::{Proxy, RawTap, Rule};
use crate::support::*;
use crate::tls::TlsRegistry;
use base64::Engine as _;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// Pushes the multi-arch example's base layout (made by umoci) to `host/base:1.0`.
pub(crate) fn push_base<S: AsRef<std::ffi::OsStr>>(env: &Env, host: &str, extra: &[S]) -> String {
    let base = example_dir("multi-arch").join("base");
    let mut src = std::ffi::OsString::from("oci:");
    src.push(&base);
    src.push(":1.0");
    let out = run(env
        .imgc()
        .arg("push")
        .arg(src)
        .arg(format!("{host}/base:1.0"))
        .args(extra));
    digest_line(&out)
}

/// The multi-arch example, on `base` from a registry, named `name`.
pub(crate) fn app(base: &str, name: &str) -> (TempDir, PathBuf) {
    let (tmp, dir) = copy_example("multi-arch");
    let spec = dir.join("image.toml");
    let text = fs::read_to_string(&spec).unwrap();
    let text = text
        .replace("base = \"oci:base:1.0\"", &format!("base = \"{base}\""))
        .replace(
            "name = \"example.com/imgc/multi-arch\"",
            &format!("name = \"{name}\""),
        );
    assert!(text.contains(base) && text.contains(name));
    fs::write(&spec, text).unwrap();
    (tmp, spec)
}

pub(crate) fn addr(reg: &Registry) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], reg.port()))
}

/// The raw bytes skopeo reads for a reference.
pub(crate) fn skopeo_raw(reference: &str, extra: &[&str]) -> Vec<u8> {
    let out = output(
        skopeo()
            .args(["inspect", "--raw"])
            .args(extra)
            .arg(format!("docker://{reference}")),
    );
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        stderr(&out)
    );
    out.stdout
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walk(dir);
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn build_on_a_registry_base_push_and_pull_back_identical() {
    let reg = Registry::start();
    let proxy = Proxy::start(addr(&reg), vec![]);
    let host = proxy.host_port();
    let env = Env::new();
    push_base(&env, &host, &insecure(&host));

    let (_t, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
    let out_dir = env.path("out");
    let meta = env.path("meta.json");
    let digest_file = env.path("digest");
    let stdout = run(env
        .imgc()
        .arg("build")
        .arg(&spec)
        .arg("--output")
        .arg(oci_arg(&out_dir))
        .arg("--push")
        .arg("--metadata-file")
        .arg(&meta)
        .arg("--digest-file")
        .arg(&digest_file)
        .args(insecure(&host)));
    let digest = digest_line(&stdout);
    assert_eq!(fs::read_to_string(&digest_file).unwrap(), digest);
    verify_layout(&out_dir, true);

    // The registry serves exactly the index imgc built, under the tag.
    let raw = skopeo_raw(&format!("{host}/app:2.1.0"), &["--tls-verify=false"]);
    assert_eq!(sha256_digest(&raw), digest);

    // The metadata file says what was pushed.
    let m = read_json(&meta);
    assert_eq!(m["index_digest"], digest.as_str());
    assert_eq!(m["index_pushed"], true);
    assert_eq!(m["tags"], serde_json::json!(["2.1.0"]));
    let manifests = m["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2);
    assert_eq!(manifests[0]["platform"], "linux/amd64");
    let pushed: Vec<String> = m["pushed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(pushed.contains(&format!("{host}/app:2.1.0")), "{pushed:?}");
    assert!(
        pushed.contains(&format!("{host}/app@{digest}")),
        "{pushed:?}"
    );

    // Base layers were mounted from the base's repository, not uploaded:
    // the only blob uploads are imgc's own layers and configs.
    let index = read_blob_json(&out_dir, &digest);
    let mut base_layers = Vec::new();
    let mut own = Vec::new();
    for child in index["manifests"].as_array().unwrap() {
        let man = read_blob_json(&out_dir, child["digest"].as_str().unwrap());
        assert!(man["annotations"]["org.opencontainers.image.base.name"]
            .as_str()
            .unwrap()
            .ends_with("/base:1.0"));
        let layers = man["layers"].as_array().unwrap();
        base_layers.push(layers[0]["digest"].as_str().unwrap().to_string());
        own.push(man["config"]["digest"].as_str().unwrap().to_string());
        for l in &layers[1..] {
            own.push(l["digest"].as_str().unwrap().to_string());
        }
    }
    own.sort();
    own.dedup();
    let mounts = proxy
        .requests()
        .iter()
        .filter(|r| {
            r.method == "POST" && r.path.ends_with("/app/blobs/uploads/") && r.status == Some(201)
        })
        .count();
    assert_eq!(mounts, base_layers.len(), "{:#?}", proxy.requests());
    let app_puts = proxy.count("PUT", "/v2/app/blobs/uploads/");
    assert_eq!(app_puts, own.len(), "{:#?}", proxy.requests());

    // skopeo pulls the pushed image back into a layout: identical bytes.
    let pulled = env.path("pulled");
    run(skopeo()
        .args(["copy", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{host}/app:2.1.0"))
        .arg(format!("oci:{}:2.1.0", pulled.display())));
    for f in files_in(&out_dir.join("blobs")) {
        let rel = f.strip_prefix(&out_dir).unwrap();
        assert_eq!(
            fs::read(&f).unwrap(),
            fs::read(pulled.join(rel)).unwrap(),
            "{}",
            rel.display()
        );
    }
    assert_eq!(
        files_in(&out_dir.join("blobs")).len(),
        files_in(&pulled.join("blobs")).len()
    );

    // A second push of the same image uploads no blob at all.
    let before = proxy.requests().len();
    let out = output(
        env.imgc()
            .arg("push")
            .arg(format!("oci:{}:2.1.0", out_dir.display()))
            .arg(format!("{host}/app:2.1.0"))
            .args(insecure(&host)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let again: Vec<_> = proxy.requests()[before..].to_vec();
    assert!(
        !again.iter().any(|r| r.path.contains("/blobs/uploads/")),
        "{again:#?}"
    );
    assert!(
        stderr(&out).contains("0 blob(s) uploaded"),
        "{}",
        stderr(&out)
    );
    assert_eq!(digest_line(&String::from_utf8_lossy(&out.stdout)), digest);
}

#[test]
fn a_flaky_registry_still_gets_every_blob_right() {
    let reg = Registry::start();
    let env = Env::new();
    let proxy = Proxy::start(
        addr(&reg),
        vec![
            // A connection cut in the middle of the first blob upload.
            Rule::drop_request_after(100)
                .method("PUT")
                .path("/blobs/uploads/"),
            // The registry is briefly unavailable, then rate-limits.
            Rule::status(503).method("HEAD").path("/blobs/").times(2),
            Rule::too_many_requests(1).method("PUT").path("/manifests/"),
            // A response lost after the registry did the work.
            Rule::drop_response().method("POST").path("/blobs/uploads/"),
        ],
    );
    let host = proxy.host_port();
    let (_t, spec) = app("scratch", &format!("{host}/flaky"));
    // A bigger layer, so the cut upload is cut mid-body.
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(spec.parent().unwrap().join("web/big.bin"), &big).unwrap();
    let out_dir = env.path("out");
    let out = output(
        env.imgc()
            .arg("build")
            .arg(&spec)
            .arg("--output")
            .arg(oci_arg(&out_dir))
            .arg("--push")
            .args(insecure(&host)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = digest_line(&String::from_utf8_lossy(&out.stdout));
    let err = stderr(&out);
    assert!(err.contains("retry"), "{err}");
    // Every rule fired.
    assert!(
        proxy.rules().iter().all(|r| r.times == 0),
        "{:#?}",
        proxy.rules()
    );
    // What the registry holds verifies, byte for byte, through skopeo.
    let raw = skopeo_raw(
        &format!("{}/flaky:2.1.0", reg.host_port()),
        &["--tls-verify=false"],
    );
    assert_eq!(sha256_digest(&raw), digest);
    let pulled = env.path("pulled");
    run(skopeo()
        .args(["copy", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{}/flaky:2.1.0", reg.host_port()))
        .arg(format!("oci:{}:2.1.0", pulled.display())));
    verify_layout(&pulled, true);
    for f in files_in(&pulled.join("blobs")) {
        let rel = f.strip_prefix(&pulled).unwrap();
        assert_eq!(fs::read(&f).unwrap(), fs::read(out_dir.join(rel)).unwrap());
    }

    // Chunked uploads, when asked: several PATCHes per big blob, same bytes.
    let out = output(
        env.imgc()
            .arg("push")
            .arg(format!("oci:{}:2.1.0", out_dir.display()))
            .arg(format!("{host}/chunked:1"))
            .args(["--chunk-size", "1048576", "--transfers", "1"])
            .args(insecure(&host)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        proxy.count("PATCH", "/v2/chunked/blobs/uploads/") >= 3,
        "{:#?}",
        proxy.requests()
    );
    let raw = skopeo_raw(
        &format!("{}/chunked:1", reg.host_port()),
        &["--tls-verify=false"],
    );
    assert_eq!(sha256_digest(&raw), digest);
    let chunked = env.path("chunked");
    run(skopeo()
        .args(["copy", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{}/chunked:1", reg.host_port()))
        .arg(format!("oci:{}:1", chunked.display())));
    verify_layout(&chunked, true);
}

#[test]
fn a_corrupted_base_blob_is_an_error_naming_it_and_nothing_corrupt_is_kept() {
    let reg = Registry::start();
    let env = Env::new();
    push_base(&env, &reg.host_port(), &insecure(&reg.host_port()));
    let proxy = Proxy::start(
        addr(&reg),
        vec![Rule::corrupt_body().path("/blobs/sha256:").always()],
    );
    let host = proxy.host_port();
    let (_t, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
    let out = run_fails(
        env.imgc()
            .arg("build")
            .arg(&spec)
            .arg("--output")
            .arg(oci_arg(&env.path("out")))
            .args(insecure(&host)),
    );
    let err = stderr(&out);
    let corrupted: Vec<String> = proxy
        .requests()
        .iter()
        .filter(|r| r.faulted)
        .map(|r| r.path.rsplit('/').next().unwrap().to_string())
        .collect();
    assert!(!corrupted.is_empty());
    assert!(
        corrupted.iter().any(|d| err.contains(d.as_str())),
        "error names none of {corrupted:?}: {err}"
    );
    assert!(err.contains("does not match its digest"), "{err}");
    // Nothing of the corrupted blobs is in the store, no partial file either.
    let store = env.cache().join("store");
    for d in &corrupted {
        let hex = d.trim_start_matches("sha256:");
        assert!(!store.join("blobs/sha256").join(hex).exists(), "{d} kept");
    }
    assert_eq!(files_in(&store.join("tmp")), Vec::<PathBuf>::new());
    assert!(!env.path("out").join("index.json").exists());
}

/// CI locks before it compiles: `imgc lock` resolves the bases and reads
/// nothing of the build context, which may not exist yet.
#[test]
fn lock_needs_no_build_input() {
    let env = Env::new();
    let reg = Registry::start();
    let host = reg.host_port();
    push_base(&env, &host, &insecure(&host));
    let (_t, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
    let dir = spec.parent().unwrap();
    fs::remove_dir_all(dir.join("bin")).unwrap();
    fs::remove_dir_all(dir.join("web")).unwrap();
    let out = run(env.imgc().arg("lock").arg(&spec).args(insecure(&host)));
    assert!(out.contains(&format!("{host}/base:1.0 sha256:")), "{out}");
    let lock = fs::read_to_string(spec.with_file_name("image.lock")).unwrap();
    assert!(lock.contains("linux/arm64/v8"), "{lock}");
    let json = run(env
        .imgc()
        .arg("lock")
        .arg(&spec)
        .args(["--format", "json"])
        .args(insecure(&host)));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["bases"][0]["reference"], format!("{host}/base:1.0"));
    assert!(
        v["bases"][0]["platforms"]["linux/arm64/v8"].is_string(),
        "{v}"
    );
    // Building still needs them, and says which.
    let out = run_fails(
        env.imgc()
            .arg("plan")
            .arg(&spec)
            .arg("--locked")
            .args(insecure(&host)),
    );
    assert!(stderr(&out).contains("web/**"), "{}", stderr(&out));
}

#[test]
fn lock_then_locked_offline_build_without_the_registry() {
    let env = Env::new();
    let (_t, spec);
    let online;
    {
        let reg = Registry::start();
        let host = reg.host_port();
        push_base(&env, &host, &insecure(&host));
        (_t, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
        let out = run(env.imgc().arg("lock").arg(&spec).args(insecure(&host)));
        assert!(out.contains(&format!("{host}/base:1.0 sha256:")), "{out}");
        // Locking (and planning) fetch the index, manifests and configs, never a layer.
        run(env.imgc().arg("plan").arg(&spec).args(insecure(&host)));
        let stored = files_in(&env.cache().join("store/blobs/sha256"));
        assert_eq!(
            stored.len(),
            5,
            "index + 2 manifests + 2 configs: {stored:?}"
        );
        for f in &stored {
            assert!(
                fs::metadata(f).unwrap().len() < 4096,
                "{f:?} looks like a layer"
            );
        }
        let lock = fs::read_to_string(spec.with_file_name("image.lock")).unwrap();
        assert!(
            lock.contains("linux/amd64") && lock.contains("linux/arm64/v8"),
            "{lock}"
        );
        online = digest_line(&run(env
            .imgc()
            .arg("build")
            .arg(&spec)
            .arg("--output")
            .arg(oci_arg(&env.path("online")))
            .args(insecure(&host))));
        // Locking again changes nothing.
        run(env.imgc().arg("lock").arg(&spec).args(insecure(&host)));
        assert_eq!(
            fs::read_to_string(spec.with_file_name("image.lock")).unwrap(),
            lock
        );

        // The tag moves on (to the image just built). `imgc lock` keeps the
        // pin and builds still use it; `imgc lock --update` follows the tag.
        let mut src = std::ffi::OsString::from("oci:");
        src.push(env.path("online"));
        src.push(":2.1.0");
        run(env
            .imgc()
            .arg("push")
            .arg(src)
            .arg(format!("{host}/base:1.0"))
            .args(insecure(&host)));
        run(env.imgc().arg("lock").arg(&spec).args(insecure(&host)));
        let lock_path = spec.with_file_name("image.lock");
        assert_eq!(fs::read_to_string(&lock_path).unwrap(), lock);
        let again = digest_line(&run(env
            .imgc()
            .arg("build")
            .arg(&spec)
            .arg("--output")
            .arg(oci_arg(&env.path("again")))
            .args(insecure(&host))));
        assert_eq!(again, online);
        run(env
            .imgc()
            .args(["lock", "--update"])
            .arg(&spec)
            .args(insecure(&host)));
        let updated = fs::read_to_string(&lock_path).unwrap();
        assert_ne!(updated, lock);
        assert!(!updated.contains("linux/arm64/v8"), "{updated}");
        fs::write(&lock_path, &lock).unwrap();
    } // the registry stops here
    let mut cmd = env.imgc();
    cmd.arg("build")
        .arg(&spec)
        .arg("--output")
        .arg(oci_arg(&env.path("offline")))
        .args(["--locked", "--offline"]);
    let offline = digest_line(&run(&mut cmd));
    assert_eq!(offline, online);

    // Base layers the output already holds are not needed from the store.
    let index = read_blob_json(&env.path("online"), &online);
    for child in index["manifests"].as_array().unwrap() {
        let man = read_blob_json(&env.path("online"), child["digest"].as_str().unwrap());
        let layer = man["layers"][0]["digest"].as_str().unwrap();
        let stored = env
            .cache()
            .join("store/blobs/sha256")
            .join(layer.trim_start_matches("sha256:"));
        if stored.exists() {
            fs::remove_file(&stored).unwrap();
        }
    }
    let again = digest_line(&run(env
        .imgc()
        .arg("build")
        .arg(&spec)
        .arg("--output")
        .arg(oci_arg(&env.path("online")))
        .args(["--locked", "--offline"])));
    assert_eq!(again, online);

    // Offline with an empty store names what is missing.
    let empty = Env::new();
    let out = run_fails(
        empty
            .imgc()
            .arg("build")
            .arg(&spec)
            .arg("--output")
            .arg(oci_arg(&empty.path("out")))
            .args(["--locked", "--offline"]),
    );
    let err = stderr(&out);
    assert!(
        err.contains("working offline") && err.contains("sha256:"),
        "{err}"
    );

    // A base reference the lock does not pin fails with --locked, naming it.
    let text = fs::read_to_string(&spec)
        .unwrap()
        .replace("/base:1.0", "/base:2.0");
    fs::write(&spec, text).unwrap();
    let out = run_fails(
        env.imgc()
            .arg("build")
            .arg(&spec)
            .arg("--output")
            .arg(oci_arg(&env.path("changed")))
            .args(["--locked", "--offline"]),
    );
    let err = stderr(&out);
    assert!(
        err.contains("/base:2.0") && err.contains("image.lock"),
        "{err}"
    );
    assert!(err.contains("imgc lock"), "{err}");
}

#[test]
fn ci_shards_joined_by_imgc_index_equal_a_one_machine_build() {
    let reg = Registry::start();
    let host = reg.host_port();
    let env = Env::new();
    push_base(&env, &host, &insecure(&host));
    let (_t, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
    let one = build(&spec, &env.path("one"), &["--insecure-registry", &host]);

    let shards = env.path("shards");
    fs::create_dir(&shards).unwrap();
    for (p, f) in [("linux/arm64", "arm64.json"), ("linux/amd64", "amd64.json")] {
        run(env
            .imgc()
            .arg("build")
            .arg(&spec)
            .args(["--platform", p, "--push-by-digest", "--metadata-file"])
            .arg(shards.join(f))
            .arg("--output")
            .arg(oci_arg(&env.path(f)))
            .args(insecure(&host)));
        let m = read_json(&shards.join(f));
        assert_eq!(m["index_pushed"], false);
    }
    // Nothing is tagged yet.
    let out = output(
        skopeo()
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{host}/app:2.1.0")),
    );
    assert!(!out.status.success());

    let digest_file = env.path("index-digest");
    let stdout = run(env
        .imgc()
        .args(["index", "--from"])
        .arg(&shards)
        .args([
            "--tag",
            &format!("{host}/app:2.1.0"),
            "--tag",
            &format!("{host}/app:latest"),
        ])
        .arg("--digest-file")
        .arg(&digest_file)
        .args(insecure(&host)));
    assert_eq!(digest_line(&stdout), one);
    assert_eq!(fs::read_to_string(&digest_file).unwrap(), one);
    for tag in ["2.1.0", "latest"] {
        let raw = skopeo_raw(&format!("{host}/app:{tag}"), &["--tls-verify=false"]);
        assert_eq!(sha256_digest(&raw), one);
    }
    refuses_partial_extra_and_foreign_shards(&env, &shards, &host);
    // A shard whose manifest never reached the registry is refused.
    let lonely = env.path("lonely");
    fs::create_dir(&lonely).unwrap();
    fs::copy(shards.join("arm64.json"), lonely.join("b.json")).unwrap();
    let mut m = read_json(&shards.join("amd64.json"));
    let fake = sha256_digest(b"never pushed");
    m["manifests"][0]["digest"] = fake.clone().into();
    m["manifests"][0]["descriptor"]["digest"] = fake.clone().into();
    fs::write(lonely.join("a.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let out = run_fails(
        env.imgc()
            .args(["index", "--from"])
            .arg(&lonely)
            .args(["--tag", &format!("{host}/app:broken")])
            .args(insecure(&host)),
    );
    assert!(stderr(&out).contains(&fake), "{}", stderr(&out));
}

/// A credential helper script that answers for one registry.
fn write_helper(env: &Env, name: &str, host: &str, user: &str, password: &str) {
    let path = env.path("bin").join(format!("docker-credential-{name}"));
    fs::write(
        &path,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r server\n\
             [ \"$server\" = \"{host}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$server\"\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn tls_registry_with_basic_auth_from_docker_config_and_from_a_helper() {
    let password = "s3cret-Pa55word";
    let reg = TlsRegistry::start(Some(("alice", password)));
    let host = reg.host_port();
    let ca = reg.ca_file().to_path_buf();
    let ca_args = ["--ca-file".to_string(), ca.display().to_string()];

    // Credentials in a docker config.json (`auths`).
    let env = Env::new();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"));
    env.docker_config(&format!(
        r#"{{"auths":{{"https://{host}":{{"auth":"{auth}"}}}}}}"#
    ));
    push_base(&env, &host, &ca_args);
    let (_t, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
    let out = output(
        env.imgc()
            .arg("build")
            .arg(&spec)
            .arg("--output")
            .arg(oci_arg(&env.path("out")))
            .arg("--push")
            .args(&ca_args),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = digest_line(&String::from_utf8_lossy(&out.stdout));
    assert!(!stderr(&out).contains(password));
    let raw = skopeo_raw(
        &format!("{host}/app:2.1.0"),
        &[
            "--tls-verify=false",
            "--creds",
            &format!("alice:{password}"),
        ],
    );
    assert_eq!(sha256_digest(&raw), digest);

    // Credentials from a credential helper named in credHelpers.
    let env2 = Env::new();
    write_helper(&env2, "imgctest", &host, "alice", password);
    env2.docker_config(&format!(r#"{{"credHelpers":{{"{host}":"imgctest"}}}}"#));
    let out = output(
        env2.imgc()
            .arg("push")
            .arg(format!("oci:{}:2.1.0", env.path("out").display()))
            .arg(format!("{host}/other:1"))
            .args(&ca_args),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(digest_line(&String::from_utf8_lossy(&out.stdout)), digest);

    // Credentials from Podman's auth file (REGISTRY_AUTH_FILE), and from
    // $XDG_RUNTIME_DIR/containers/auth.json.
    let env5 = Env::new();
    let podman = env5.path("podman-auth.json");
    fs::write(
        &podman,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let out = output(
        env5.imgc()
            .arg("inspect")
            .arg(format!("{host}/app:2.1.0"))
            .args(&ca_args)
            .env("REGISTRY_AUTH_FILE", &podman),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&digest));
    let runtime = env5.path("run");
    fs::create_dir_all(runtime.join("containers")).unwrap();
    fs::copy(&podman, runtime.join("containers/auth.json")).unwrap();
    let out = output(
        env5.imgc()
            .arg("inspect")
            .arg(format!("{host}/app:2.1.0"))
            .args(&ca_args)
            .env("XDG_RUNTIME_DIR", &runtime),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Without credentials: 401, naming the registry and where imgc looked.
    let env3 = Env::new();
    let out = run_fails(
        env3.imgc()
            .arg("inspect")
            .arg(format!("{host}/app:2.1.0"))
            .args(&ca_args),
    );
    let err = stderr(&out);
    assert!(err.contains(&host) && err.contains("401"), "{err}");
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains("docker login"), "{err}");

    // A wrong password: refused, and the password is never shown.
    let env4 = Env::new();
    let bad = base64::engine::general_purpose::STANDARD.encode("alice:wrong-Pa55word");
    env4.docker_config(&format!(r#"{{"auths":{{"{host}":{{"auth":"{bad}"}}}}}}"#));
    let out = run_fails(
        env4.imgc()
            .arg("inspect")
            .arg(format!("{host}/app:2.1.0"))
            .args(&ca_args),
    );
    let err = stderr(&out);
    assert!(err.contains("refused access"), "{err}");
    assert!(
        !err.contains("wrong-Pa55word") && !err.contains(&bad),
        "{err}"
    );

    // Without the CA: a TLS error, and not one plain-HTTP request.
    let tap = RawTap::start(reg.addr());
    let tapped = tap.host_port();
    let out = run_fails(env.imgc().arg("inspect").arg(format!("{tapped}/app:2.1.0")));
    let err = stderr(&out);
    assert!(err.contains("certificate") || err.contains("TLS"), "{err}");
    assert!(err.contains("--ca-file"), "{err}");
    assert!(tap.tls_connections() >= 1);
    assert_eq!(tap.plain_http_connections(), 0, "{:?}", tap.openings());
}

#[test]
fn clear_errors_for_unknown_hosts_repositories_tags_and_platforms() {
    let reg = Registry::start();
    let host = reg.host_port();
    let env = Env::new();
    push_base(&env, &host, &insecure(&host));
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            "no-such-host.invalid:5000/base:1.0".into(),
            vec!["cannot reach registry no-such-host.invalid:5000".into()],
        ),
        (
            format!("{host}/nope:1.0"),
            vec!["repository `nope` does not exist".into(), host.clone()],
        ),
        (
            format!("{host}/base:9.9"),
            vec![
                "base:9.9` does not exist".into(),
                host.clone(),
                "tags there: 1.0".into(),
            ],
        ),
    ];
    for (base, expect) in &cases {
        let (_t, spec) = app(base, &format!("{host}/app"));
        let out = run_fails(
            env.imgc()
                .arg("build")
                .arg(&spec)
                .arg("--output")
                .arg(oci_arg(&env.path("out")))
                .args(insecure(&host)),
        );
        let err = stderr(&out);
        for e in expect {
            assert!(err.contains(e), "{base}: expected `{e}` in:\n{err}");
        }
        assert!(err.contains("image.toml:"), "{err}");
        assert_eq!(out.status.code(), Some(1));
    }
    // A platform the base lacks: the error lists what it has.
    let (_t, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
    let text = fs::read_to_string(&spec)
        .unwrap()
        .replace(
            "platforms = [\"linux/amd64\", \"linux/arm64\"]",
            "platforms = [\"linux/amd64\", \"linux/riscv64\"]",
        )
        .replace("[platform.\"linux/arm64\"]", "[platform.\"linux/riscv64\"]")
        .replace(
            "[[platform.\"linux/arm64\".layers]]",
            "[[platform.\"linux/riscv64\".layers]]",
        );
    fs::write(&spec, text).unwrap();
    let out = run_fails(env.imgc().arg("build").arg(&spec).args(insecure(&host)));
    let err = stderr(&out);
    assert!(
        err.contains("linux/riscv64") && err.contains("linux/amd64, linux/arm64/v8"),
        "{err}"
    );

    // HTTPS is never downgraded: without --insecure-registry a plain registry fails.
    let out = run_fails(env.imgc().arg("inspect").arg(format!("{host}/base:1.0")));
    assert!(stderr(&out).contains(&host), "{}", stderr(&out));
    // --push without [image].name is a usage error.
    let (_t2, spec2) = copy_example("hello");
    let spec2 = spec2.join("image.toml");
    let text = fs::read_to_string(&spec2).unwrap();
    fs::write(
        &spec2,
        text.replace("name = \"example.com/imgc/hello\"\n", ""),
    )
    .unwrap();
    let out = run_fails(env.imgc().arg("build").arg(&spec2).arg("--push"));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("[image].name"), "{err}");
}

#[test]
fn other_4xx_are_never_retried_and_a_warning_is_shown_once() {
    let reg = Registry::start();
    let env = Env::new();
    let warning = ("Warning", "299 - \"this registry is read-only on Sundays\"");
    let proxy = Proxy::start(
        addr(&reg),
        vec![
            Rule::status_with(503, &[warning]).method("HEAD").times(3),
            Rule::status_with(400, &[warning])
                .method("PUT")
                .path("/manifests/"),
        ],
    );
    let host = proxy.host_port();
    let (_t, spec) = app("scratch", &format!("{host}/app"));
    let out = run_fails(
        env.imgc()
            .arg("build")
            .arg(&spec)
            .arg("--output")
            .arg(oci_arg(&env.path("out")))
            .arg("--push")
            .args(insecure(&host)),
    );
    let err = stderr(&out);
    assert_eq!(
        err.matches("this registry is read-only on Sundays").count(),
        1,
        "{err}"
    );
    assert!(err.contains("HTTP 400"), "{err}");
    // The 400 was not retried: one manifest PUT, and nothing was tagged.
    assert_eq!(
        proxy.count("PUT", "/manifests/"),
        1,
        "{:#?}",
        proxy.requests()
    );
    assert!(proxy.rules().iter().all(|r| r.times == 0));
}

#[test]
fn bad_registry_inputs_are_named_and_change_nothing() {
    let env = Env::new();
    let (_t, spec) = app("127.0.0.1:9/base:1.0", "127.0.0.1:9/app");
    let lock = spec.with_file_name("image.lock");

    // A malformed lock file: file, line and column; the file is kept as it was.
    let text = "version = 1\n\n[[base]]\nreference = \"127.0.0.1:9/base:1.0\"\ndigest = \"sha256:nothex\"\n";
    fs::write(&lock, text).unwrap();
    let out = run_fails(env.imgc().arg("build").arg(&spec));
    let err = stderr(&out);
    assert!(
        err.contains("image.lock") && err.contains("line 5, column 10"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&lock).unwrap(), text);
    let out = run_fails(env.imgc().arg("lock").arg(&spec));
    assert!(stderr(&out).contains("image.lock"), "{}", stderr(&out));
    assert_eq!(fs::read_to_string(&lock).unwrap(), text);
    fs::remove_file(&lock).unwrap();

    // --locked without a lock file says how to make one.
    let out = run_fails(env.imgc().arg("build").arg(&spec).arg("--locked"));
    let err = stderr(&out);
    assert!(
        err.contains("image.lock") && err.contains("imgc lock"),
        "{err}"
    );
    assert!(!lock.exists());

    // --insecure-registry takes HOST:PORT, not a URL: a usage error.
    let out = run_fails(
        env.imgc()
            .arg("inspect")
            .arg("127.0.0.1:9/app:1")
            .args(["--insecure-registry", "http://127.0.0.1:9"]),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`http://127.0.0.1:9`"),
        "{}",
        stderr(&out)
    );

    // A malformed config file: named, with its line.
    let cfg = env.path("config/imgc/config.toml");
    fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    fs::write(&cfg, "insecure_registries = [\"a:1\"]\nca_file = \"x\"\n").unwrap();
    let out = run_fails(env.imgc().arg("inspect").arg("127.0.0.1:9/app:1"));
    let err = stderr(&out);
    assert!(
        err.contains("config.toml") && err.contains("line 2"),
        "{err}"
    );
    fs::remove_file(&cfg).unwrap();

    // A CA file that holds no certificate.
    let ca = env.path("not-a-ca.pem");
    fs::write(&ca, "hello\n").unwrap();
    let out = run_fails(
        env.imgc()
            .arg("inspect")
            .arg("127.0.0.1:9/app:1")
            .arg("--ca-file")
            .arg(&ca),
    );
    assert!(stderr(&out).contains("not-a-ca.pem"), "{}", stderr(&out));

    // Pushing what is not a layout, or a tag the layout lacks.
    let out = run_fails(
        env.imgc()
            .arg("push")
            .arg(format!("oci:{}", env.path("nowhere").display()))
            .arg("127.0.0.1:9/app:1"),
    );
    assert!(stderr(&out).contains("nowhere"), "{}", stderr(&out));
    let base = example_dir("multi-arch").join("base");
    let out = run_fails(
        env.imgc()
            .arg("push")
            .arg(format!("oci:{}:9.9", base.display()))
            .arg("127.0.0.1:9/app:1"),
    );
    let err = stderr(&out);
    assert!(
        err.contains("no tag `9.9`") && err.contains("1.0-amd64"),
        "{err}"
    );

    // Bad references are named.
    let out = run_fails(env.imgc().arg("inspect").arg("127.0.0.1:9/App:1"));
    assert!(
        stderr(&out).contains("`127.0.0.1:9/App:1`"),
        "{}",
        stderr(&out)
    );

    // imgc index with nothing to join.
    let empty = env.path("empty");
    fs::create_dir(&empty).unwrap();
    let out = run_fails(
        env.imgc()
            .args(["index", "--from"])
            .arg(&empty)
            .args(["--tag", "127.0.0.1:9/app:1"]),
    );
    assert!(
        stderr(&out).contains("no metadata files"),
        "{}",
        stderr(&out)
    );
    let junk = empty.join("x.json");
    fs::write(&junk, "{}").unwrap();
    let out = run_fails(
        env.imgc()
            .args(["index", "--from"])
            .arg(&empty)
            .args(["--tag", "127.0.0.1:9/app:1"]),
    );
    assert!(stderr(&out).contains("x.json"), "{}", stderr(&out));
}

/// A layout with Docker media types (which skopeo 1.9 cannot read from an
/// `oci:` layout) is pushed by imgc as is, and pulled back by skopeo.
#[test]
fn docker_media_types_push_and_pull_back_through_a_registry() {
    let reg = Registry::start();
    let host = reg.host_port();
    let env = Env::new();
    let (_t, dir) = copy_example("hello");
    let spec = dir.join("image.toml");
    let text = fs::read_to_string(&spec).unwrap().replace(
        "name = \"example.com/imgc/hello\"",
        &format!("name = \"{host}/dhello\"\nmedia_types = \"docker\""),
    );
    fs::write(&spec, text).unwrap();
    let out_dir = env.path("out");
    let digest = digest_line(&run(env
        .imgc()
        .arg("build")
        .arg(&spec)
        .arg("--push")
        .arg("--output")
        .arg(oci_arg(&out_dir))
        .args(insecure(&host))));
    let raw = skopeo_raw(&format!("{host}/dhello:latest"), &["--tls-verify=false"]);
    assert_eq!(sha256_digest(&raw), digest);
    let index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let pulled = env.path("pulled");
    run(skopeo()
        .args(["copy", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{host}/dhello:latest"))
        .arg(format!("dir:{}", pulled.display())));
    // skopeo's dir: names blobs by their hex digest: every layer and config
    // imgc pushed comes back with the same bytes.
    let mut same = 0;
    for f in files_in(&out_dir.join("blobs")) {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        if let Ok(bytes) = fs::read(pulled.join(&name)) {
            assert_eq!(bytes, fs::read(&f).unwrap(), "{name}");
            same += 1;
        }
    }
    assert!(
        same >= 4,
        "{same} blobs compared in {:?}",
        files_in(&pulled)
    );
}

/// A build that pulls nothing needs no cache folder: with one, it keeps its
/// layers in the layer cache there (unless `--no-cache`); without one, it
/// builds all the same.
#[test]
fn builds_without_registry_bases_need_no_cache_folder() {
    let env = Env::new();
    let (_t, dir) = copy_example("hello");
    run(env
        .imgc()
        .arg("build")
        .arg(dir.join("image.toml"))
        .args(["--no-cache", "--output"])
        .arg(oci_arg(&env.path("out")))
        .env_remove("IMGC_CACHE_DIR"));
    assert!(!env.path("home/.cache").exists());
    run(env
        .imgc()
        .arg("build")
        .arg(dir.join("image.toml"))
        .arg("--output")
        .arg(oci_arg(&env.path("out1")))
        .env_remove("IMGC_CACHE_DIR"));
    assert!(env.path("home/.cache/imgc/store/layers/v2").is_dir());
    assert!(env.path("home/.cache/imgc/store/fingerprints/v1").is_dir());
    let mut cmd = env.imgc();
    cmd.arg("build")
        .arg(dir.join("image.toml"))
        .arg("--output")
        .arg(oci_arg(&env.path("out2")))
        .env_remove("IMGC_CACHE_DIR")
        .env_remove("HOME");
    run(&mut cmd);
    assert!(!env.cache().join("store").exists());
}

/// A registry that goes silent is given up on after `--timeout` and the
/// request is retried.
#[test]
fn a_stalled_registry_is_timed_out_and_retried() {
    let reg = Registry::start();
    let env = Env::new();
    push_base(&env, &reg.host_port(), &insecure(&reg.host_port()));
    let proxy = Proxy::start(
        addr(&reg),
        vec![
            Rule::stall(std::time::Duration::from_secs(30))
                .method("GET")
                .path("/blobs/sha256:"),
            Rule::stall(std::time::Duration::from_secs(30))
                .method("GET")
                .path("/manifests/"),
        ],
    );
    let host = proxy.host_port();
    let (_t, spec) = app(&format!("{host}/base:1.0"), &format!("{host}/app"));
    let started = std::time::Instant::now();
    let out = output(
        env.imgc()
            .arg("build")
            .arg(&spec)
            .arg("--output")
            .arg(oci_arg(&env.path("out")))
            .args(["--timeout", "1"])
            .args(insecure(&host)),
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "{err}"
    );
    assert_eq!(err.matches("retry").count(), 2, "{err}");
    assert!(proxy.rules().iter().all(|r| r.times == 0));
    verify_layout(&env.path("out"), true);
}

/// `imgc index` over a folder holding these shards' metadata files fails;
/// returns its stderr.
fn index_fails(env: &Env, host: &str, files: &[(&str, serde_json::Value)]) -> String {
    let dir = env.path(&format!("set-{}", files.len()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).unwrap();
    for (name, m) in files {
        fs::write(dir.join(name), serde_json::to_vec(m).unwrap()).unwrap();
    }
    let out = run_fails(
        env.imgc()
            .args(["index", "--from"])
            .arg(&dir)
            .args(["--tag", &format!("{host}/app:partial")])
            .args(insecure(host)),
    );
    stderr(&out)
}

/// A lost shard, a shard given twice and a shard of another spec are each
/// refused, naming it; nothing is pushed.
fn refuses_partial_extra_and_foreign_shards(env: &Env, shards: &Path, host: &str) {
    let amd = read_json(&shards.join("amd64.json"));
    let arm = read_json(&shards.join("arm64.json"));
    let err = index_fails(env, host, &[("amd64.json", amd.clone())]);
    assert!(
        err.contains("no shard builds platform linux/arm64"),
        "{err}"
    );
    let err = index_fails(
        env,
        host,
        &[
            ("a.json", amd.clone()),
            ("b.json", arm.clone()),
            ("c.json", amd.clone()),
        ],
    );
    assert!(err.contains("a.json") && err.contains("c.json"), "{err}");
    assert!(err.contains("linux/amd64"), "{err}");
    let mut foreign = arm.clone();
    foreign["spec_digest"] = sha256_digest(b"another spec").into();
    let err = index_fails(env, host, &[("a.json", amd), ("z.json", foreign)]);
    assert!(err.contains("z.json") && err.contains("foreign"), "{err}");
    let out = output(
        skopeo()
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{host}/app:partial")),
    );
    assert!(!out.status.success(), "a refused set pushed nothing");
}
