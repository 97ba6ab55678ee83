//! imgc's output as independent readers see it: our own checker
//! (`tests/tools/oci_check.py`, sharing no code with imgc), skopeo through a
//! real registry, and umoci unpacking each platform. Each test checks the
//! files, modes, owners, times and config that the example specs declare.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::*;

const PLATFORMS: [&str; 2] = ["linux/amd64", "linux/arm64"];
/// `[image].epoch` of examples/multi-arch, and its RFC 3339 form.
const MULTI_ARCH_EPOCH: i64 = 1_700_000_000;
const MULTI_ARCH_CREATED: &str = "2023-11-14T22:13:20Z";

/// One example built into a temporary folder.
struct Built {
    _tmp: TempDir,
    /// The copy of the example that was built.
    src: PathBuf,
    /// The output layout.
    out: PathBuf,
    /// The index digest imgc printed.
    digest: String,
}

/// Copies `examples/<name>`, optionally sets its compression, builds it with
/// `--digest-file`, and checks the digest file agrees with stdout.
fn build_example(name: &str, compression: Option<&str>) -> Built {
    let (tmp, src) = copy_example(name);
    if let Some(c) = compression {
        set_compression(&src.join("image.toml"), c);
    }
    let out = tmp.path().join("out");
    let digest_file = tmp.path().join("digest.txt");
    let mut args = vec!["--digest-file".to_string()];
    args.push(digest_file.to_str().unwrap().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let digest = build(&src.join("image.toml"), &out, &args);
    let written = fs::read_to_string(&digest_file).expect("--digest-file was written");
    assert_eq!(written.trim(), digest, "--digest-file differs from stdout");
    Built {
        _tmp: tmp,
        src,
        out,
        digest,
    }
}

/// The layer digests of the committed base layout (never rewritten by imgc).
fn base_layer_digests() -> BTreeSet<String> {
    let base = example_dir("multi-arch").join("base");
    let mut out = BTreeSet::new();
    for d in index_entries(&base) {
        if d["mediaType"] == MT_MANIFEST {
            let m = read_blob_json(&base, d["digest"].as_str().unwrap());
            for l in m["layers"].as_array().unwrap() {
                out.insert(l["digest"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(!out.is_empty());
    out
}

/// The structure every imgc layout must have: one index.json entry per tag,
/// all pointing to one image index, whose manifests carry their platform.
fn check_structure(b: &Built, want_tags: &[&str], layer_type: &str) {
    let tags = tags(&b.out);
    let want: BTreeSet<&str> = want_tags.iter().copied().collect();
    let got: BTreeSet<&str> = tags.keys().map(String::as_str).collect();
    assert_eq!(got, want, "tags in index.json");
    for (tag, digest) in &tags {
        assert_eq!(
            digest, &b.digest,
            "tag {tag} points elsewhere than the printed digest"
        );
    }
    for d in index_entries(&b.out) {
        assert_eq!(d["mediaType"], MT_INDEX, "index.json entry: {d}");
    }
    let index = read_blob_json(&b.out, &b.digest);
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], MT_INDEX);
    let mans = platform_manifests(&b.out, &b.digest);
    assert_eq!(
        mans.keys().map(String::as_str).collect::<Vec<_>>(),
        PLATFORMS.to_vec()
    );
    for (plat, (desc, man)) in &mans {
        assert_eq!(desc["mediaType"], MT_MANIFEST, "{plat}");
        assert_eq!(man["mediaType"], MT_MANIFEST, "{plat}");
        assert_eq!(man["config"]["mediaType"], MT_CONFIG, "{plat}");
        let layers = man["layers"].as_array().unwrap();
        assert!(!layers.is_empty(), "{plat} has no layers");
        let base = base_layer_digests();
        for l in layers {
            if !base.contains(l["digest"].as_str().unwrap()) {
                assert_eq!(l["mediaType"], layer_type, "{plat} layer {l}");
            }
        }
    }
}

// ------------------------------------------------------------ (a) the checker

#[test]
fn checker_accepts_the_committed_base_layout() {
    // Needs no imgc: shows the checker passes a layout umoci made.
    let base = example_dir("multi-arch").join("base");
    let out = run(oci_check().args(["verify", "--require-schemas"]).arg(&base));
    assert!(out.contains("schemas checked"), "{out}");
    assert!(out.contains("2 layer(s)"), "{out}");
}

#[test]
fn hello_layout_passes_the_independent_checker() {
    let b = build_example("hello", None);
    assert_layout_valid(&b.out);
    check_structure(&b, &["1.0.0", "latest"], MT_LAYER_GZIP);
}

#[test]
fn multi_arch_layout_passes_the_independent_checker() {
    let b = build_example("multi-arch", None);
    assert_layout_valid(&b.out);
    check_structure(&b, &["2.1.0"], MT_LAYER_GZIP);
}

#[test]
fn zstd_and_uncompressed_layouts_pass_with_the_same_diff_ids() {
    let gz = build_example("multi-arch", None);
    let zs = build_example("multi-arch", Some("zstd"));
    let none = build_example("multi-arch", Some("none"));
    assert_layout_valid(&zs.out);
    assert_layout_valid(&none.out);
    check_structure(&zs, &["2.1.0"], MT_LAYER_ZSTD);
    check_structure(&none, &["2.1.0"], MT_LAYER_TAR);
    assert_ne!(gz.digest, zs.digest);
    assert_ne!(gz.digest, none.digest);
    assert_ne!(zs.digest, none.digest);
    // The same tar streams, whatever the compression.
    for p in PLATFORMS {
        let ids = |b: &Built| image_config(&b.out, p, None)["rootfs"]["diff_ids"].clone();
        assert_eq!(ids(&gz), ids(&zs), "{p}: diff_ids gzip vs zstd");
        assert_eq!(ids(&gz), ids(&none), "{p}: diff_ids gzip vs none");
    }
}

/// The checker must fail on `layout` and say `what`.
fn assert_checker_rejects(layout: &Path, what: &str) {
    let out = run_fails(
        oci_check()
            .args(["verify", "--require-schemas", "--strict"])
            .arg(layout),
    );
    assert_eq!(out.status.code(), Some(1), "exit code of a failed verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(what), "expected {what:?} in:\n{text}");
}

#[test]
fn checker_fails_on_a_flipped_byte_in_a_layer() {
    let b = build_example("hello", None);
    assert_layout_valid(&b.out);
    let (_, man) = &platform_manifests(&b.out, &b.digest)["linux/amd64"];
    let layer = man["layers"][0]["digest"].as_str().unwrap();
    let path = blob_path(&b.out, layer);
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    assert_checker_rejects(&b.out, "does not match its digest");
}

/// Edit the first image's manifest and config, then re-seal every document
/// above them (config, manifest, image index, index.json) so they still match
/// their digests. The old manifest and image index blobs are removed.
fn reseal_first_image(b: &Built, edit: impl FnOnce(&mut Value, &mut Value)) {
    let layout = &b.out;
    let mut index = read_blob_json(layout, &b.digest);
    let mdesc = index["manifests"][0].clone();
    let mut man = read_blob_json(layout, mdesc["digest"].as_str().unwrap());
    let mut cfg = read_blob_json(layout, man["config"]["digest"].as_str().unwrap());
    edit(&mut man, &mut cfg);
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    man["config"]["digest"] = json!(write_blob(layout, &cfg_bytes));
    man["config"]["size"] = json!(cfg_bytes.len());
    let man_bytes = serde_json::to_vec(&man).unwrap();
    index["manifests"][0]["digest"] = json!(write_blob(layout, &man_bytes));
    index["manifests"][0]["size"] = json!(man_bytes.len());
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let index_digest = write_blob(layout, &index_bytes);
    let mut top = read_json(&layout.join("index.json"));
    for d in top["manifests"].as_array_mut().unwrap() {
        d["digest"] = json!(index_digest);
        d["size"] = json!(index_bytes.len());
    }
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    for old in [
        b.digest.clone(),
        mdesc["digest"].as_str().unwrap().to_string(),
    ] {
        fs::remove_file(blob_path(layout, &old)).unwrap();
    }
}

#[test]
fn checker_fails_on_a_wrong_diff_id() {
    // Change one diff_id and re-seal every document above it, so only the
    // diff_id is wrong.
    let b = build_example("hello", None);
    let layout = &b.out;
    reseal_first_image(&b, |_, cfg| {
        cfg["rootfs"]["diff_ids"][0] = json!(sha256_digest(b"not the layer"));
    });
    let out = run_fails(oci_check().args(["verify", "--strict"]).arg(layout));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("diff_id mismatch"), "{text}");
    // Only the diff_id is wrong (and the old config is now unreferenced).
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(
        errors
            .iter()
            .all(|l| l.contains("diff_id mismatch") || l.contains("not referenced")),
        "{text}"
    );
}

#[test]
fn checker_lists_a_zstd_layer_with_padding_after_the_end_of_the_archive() {
    // A tar reader stops at the end-of-archive blocks. The checker must still
    // read out the rest of a zstd stream, or zstd dies of a broken pipe and a
    // sound layer is reported as corrupt (this failed CI once, by chance).
    let b = build_example("hello", Some("zstd"));
    let before = list_fs(&b.out, "linux/amd64", None);
    reseal_first_image(&b, |man, cfg| {
        let layers = man["layers"].as_array().unwrap();
        let last = layers.len() - 1;
        assert_eq!(layers[last]["mediaType"], MT_LAYER_ZSTD);
        let old = blob_path(&b.out, layers[last]["digest"].as_str().unwrap());
        let mut tar = zstd::decode_all(fs::File::open(old).unwrap()).unwrap();
        tar.resize(tar.len() + (4 << 20), 0);
        let packed = zstd::encode_all(&tar[..], 3).unwrap();
        man["layers"][last]["digest"] = json!(write_blob(&b.out, &packed));
        man["layers"][last]["size"] = json!(packed.len());
        cfg["rootfs"]["diff_ids"][last] = json!(sha256_digest(&tar));
    });
    assert_eq!(list_fs(&b.out, "linux/amd64", None), before);
}

// ------------------------------------------------------------ (b) skopeo + registry

/// skopeo copies `layout:tag` (the image index `digest`) into the registry and
/// back; every digest and blob must survive.
fn skopeo_round_trip(
    reg: &Registry,
    layout: &Path,
    digest: &str,
    tag: &str,
    repo: &str,
    strict: bool,
) {
    let remote = reg.docker_ref(&format!("{repo}:{tag}"));
    let mut src = oci_arg(layout);
    src.push(format!(":{tag}"));
    let mut up = skopeo();
    up.args([
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ])
    .arg(&src)
    .arg(&remote);
    run(&mut up);
    // The registry serves the very index imgc wrote.
    let raw = output(
        skopeo()
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(&remote),
    );
    assert!(
        raw.status.success(),
        "skopeo inspect: {}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert_eq!(sha256_digest(&raw.stdout), digest, "registry's index bytes");
    assert_eq!(raw.stdout, fs::read(blob_path(layout, digest)).unwrap());
    // Each platform manifest too, by digest.
    for (plat, (desc, _)) in platform_manifests(layout, digest) {
        let d = desc["digest"].as_str().unwrap();
        let by_digest = reg.docker_ref(&format!("{repo}@{d}"));
        let raw = output(
            skopeo()
                .args(["inspect", "--raw", "--tls-verify=false"])
                .arg(&by_digest),
        );
        assert!(
            raw.status.success(),
            "{plat}: {}",
            String::from_utf8_lossy(&raw.stderr)
        );
        assert_eq!(
            sha256_digest(&raw.stdout),
            d,
            "{plat} manifest from the registry"
        );
    }
    // And back into a fresh layout.
    let back_tmp = tempdir();
    let back = back_tmp.path().join("back");
    let mut dst = oci_arg(&back);
    dst.push(format!(":{tag}"));
    run(skopeo()
        .args([
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
        ])
        .arg(&remote)
        .arg(&dst));
    let back_tags = tags(&back);
    assert_eq!(
        back_tags.get(tag).map(String::as_str),
        Some(digest),
        "digest after the round trip"
    );
    verify_layout(&back, strict);
    // The same blobs, byte for byte.
    let blobs = |l: &Path| tree_contents(&l.join("blobs"));
    assert_eq!(blobs(&back), blobs(layout), "blobs after the round trip");
}

#[test]
fn skopeo_round_trip_through_a_real_registry_keeps_every_digest() {
    let hello = build_example("hello", None);
    let multi = build_example("multi-arch", None);
    let reg = Registry::start();
    skopeo_round_trip(&reg, &hello.out, &hello.digest, "1.0.0", "imgc/hello", true);
    skopeo_round_trip(
        &reg,
        &hello.out,
        &hello.digest,
        "latest",
        "imgc/hello",
        true,
    );
    skopeo_round_trip(
        &reg,
        &multi.out,
        &multi.digest,
        "2.1.0",
        "imgc/multi-arch",
        true,
    );
}

#[test]
fn registry_and_skopeo_harness_work_on_the_committed_base() {
    // Needs no imgc: the registry answers, and a layout umoci made survives
    // the same round trip, so a failure above is imgc's.
    let reg = Registry::start();
    assert_eq!(http_status(reg.port(), "/v2/"), Some(200));
    let base = example_dir("multi-arch").join("base");
    let digest = tags(&base)["1.0"].clone();
    skopeo_round_trip(&reg, &base, &digest, "1.0", "imgc/base", false);
    // Dropping it stops it.
    let port = reg.port();
    drop(reg);
    assert_eq!(
        http_status(port, "/v2/"),
        None,
        "the registry still answers"
    );
}

// ------------------------------------------------------------ (c) umoci + the flattened filesystem

/// Unpacks every platform with umoci; returns (temp, platform -> rootfs).
fn unpack_all(b: &Built) -> (TempDir, BTreeMap<String, PathBuf>) {
    let tmp = tempdir();
    let copy = tmp.path().join("layout");
    copy_dir(&b.out, &copy);
    let tagged = tag_platform_manifests(&copy, &b.digest);
    let mut roots = BTreeMap::new();
    for (plat, tag) in tagged {
        let bundle = tmp.path().join(format!("bundle-{tag}"));
        roots.insert(plat, umoci_unpack(&copy, &tag, &bundle));
    }
    assert_eq!(roots.len(), 2);
    (tmp, roots)
}

fn perm(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn text(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn umoci_unpacks_hello_as_declared() {
    let b = build_example("hello", None);
    let (_tmp, roots) = unpack_all(&b);
    let greeting = text(&b.src.join("rootfs/etc/hello/greeting.txt"));
    let hello_bin = fs::read(b.src.join("bin/hello")).unwrap();
    for (plat, root) in &roots {
        assert_eq!(
            text(&root.join("etc/hello/greeting.txt")),
            greeting,
            "{plat}"
        );
        assert_eq!(perm(&root.join("etc/hello/greeting.txt")), 0o644, "{plat}");
        assert_eq!(
            fs::read(root.join("bin/hello")).unwrap(),
            hello_bin,
            "{plat}"
        );
        assert_eq!(perm(&root.join("bin/hello")), 0o755, "{plat}");
        assert_eq!(
            text(&root.join("etc/hello/platform.txt")),
            format!("hello 1.0.0 for {plat}\n")
        );
        let vlh = root.join("var/lib/hello");
        assert!(fs::symlink_metadata(&vlh).unwrap().is_dir(), "{plat}");
        assert_eq!(perm(&vlh), 0o750, "{plat}");
        let link = root.join("usr/bin/hello");
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("../../bin/hello"));
        // The link resolves inside the rootfs to the binary.
        assert_eq!(fs::read(&link).unwrap(), hello_bin, "{plat}");
    }
}

#[test]
fn hello_filesystem_has_exactly_the_declared_entries() {
    let b = build_example("hello", None);
    for plat in PLATFORMS {
        let fs_ = list_fs(&b.out, plat, Some("latest"));
        let paths: Vec<&str> = fs_.keys().map(String::as_str).collect();
        // Implicit parents (/bin, /usr, /usr/bin, /var, /var/lib) are not written.
        assert_eq!(
            paths,
            [
                "/bin/hello",
                "/etc",
                "/etc/hello",
                "/etc/hello/greeting.txt",
                "/etc/hello/platform.txt",
                "/usr/bin/hello",
                "/var/lib/hello",
            ],
            "{plat}"
        );
        let e = |p: &str| &fs_[p];
        let expect = |p: &str, ty: &str, mode: u32, owner: u32| {
            assert_eq!(e(p)["type"], ty, "{plat} {p}");
            assert_eq!(
                e(p)["mode"].as_u64(),
                Some(u64::from(mode)),
                "{plat} {p} mode {:o}",
                e(p)["mode"].as_u64().unwrap_or(0)
            );
            assert_eq!(e(p)["uid"], owner, "{plat} {p} uid");
            assert_eq!(e(p)["gid"], owner, "{plat} {p} gid");
            assert_eq!(
                e(p)["mtime"],
                0,
                "{plat} {p}: epoch 0 without [image].epoch"
            );
        };
        expect("/bin/hello", "file", 0o755, 0);
        expect("/etc", "dir", 0o755, 0);
        expect("/etc/hello", "dir", 0o755, 0);
        expect("/etc/hello/greeting.txt", "file", 0o644, 0);
        expect("/etc/hello/platform.txt", "file", 0o644, 0);
        expect("/var/lib/hello", "dir", 0o750, 65532);
        assert_eq!(e("/usr/bin/hello")["type"], "symlink");
        assert_eq!(e("/usr/bin/hello")["linkname"], "../../bin/hello");
        assert_eq!(
            e("/etc/hello/platform.txt")["sha256"],
            sha256_digest(format!("hello 1.0.0 for {plat}\n").as_bytes())["sha256:".len()..]
        );
    }
}

#[test]
fn umoci_unpacks_multi_arch_as_declared() {
    let b = build_example("multi-arch", None);
    let (_tmp, roots) = unpack_all(&b);
    for (plat, root) in &roots {
        let arch = plat.split('/').nth(1).unwrap();
        let server = root.join("app/server");
        assert_eq!(
            fs::read(&server).unwrap(),
            fs::read(b.src.join(format!("bin/{arch}/server"))).unwrap(),
            "{plat}: /app/server is the {arch} binary"
        );
        assert_eq!(
            perm(&server),
            0o755,
            "{plat}: explicit mode wins over the source's 0644"
        );
        assert_eq!(text(&root.join("app/VERSION")), format!("2.1.0 {plat}\n"));
        assert_eq!(
            fs::read_link(root.join("usr/local/bin/server")).unwrap(),
            Path::new("/app/server")
        );
        assert_eq!(
            text(&root.join("srv/www/css/site.css")),
            text(&b.src.join("web/css/site.css"))
        );
        assert_eq!(
            text(&root.join("srv/www/index.html")),
            text(&b.src.join("web/index.html"))
        );
        assert!(
            fs::symlink_metadata(root.join("srv/www/css/site.css.map")).is_err(),
            "{plat}: **/*.map is excluded"
        );
        assert_eq!(perm(&root.join("var/lib/app")), 0o750, "{plat}");
        // From the base.
        assert!(
            text(&root.join("etc/passwd")).starts_with("root:x:0:0:"),
            "{plat}"
        );
        assert_eq!(
            perm(&root.join("tmp")),
            0o1777,
            "{plat}: base /tmp keeps 1777"
        );
        assert_eq!(perm(&root.join("root")), 0o700, "{plat}");
        assert!(text(&root.join("etc/os-release")).contains(&format!("ARCH={arch}")));
        let tuning = root.join("etc/app/tuning.conf");
        if arch == "arm64" {
            assert_eq!(text(&tuning), "tuned for arm64\n");
        } else {
            assert!(
                fs::symlink_metadata(&tuning).is_err(),
                "{plat} has tuning.conf"
            );
        }
    }
}

#[test]
fn multi_arch_filesystem_has_the_declared_owners_modes_and_times() {
    let b = build_example("multi-arch", None);
    for plat in PLATFORMS {
        let fs_ = list_fs(&b.out, plat, Some("2.1.0"));
        let paths: BTreeSet<&str> = fs_.keys().map(String::as_str).collect();
        let mut want: BTreeSet<&str> = [
            // base
            "/",
            "/app",
            "/etc",
            "/etc/group",
            "/etc/os-release",
            "/etc/passwd",
            "/root",
            "/tmp",
            // static
            "/srv/www/css",
            "/srv/www/css/site.css",
            "/srv/www/index.html",
            // app
            "/app/VERSION",
            "/app/server",
            "/usr/local/bin/server",
            "/var/lib/app",
        ]
        .into_iter()
        .collect();
        if plat == "linux/arm64" {
            want.insert("/etc/app/tuning.conf");
        }
        assert_eq!(paths, want, "{plat}");
        let e = |p: &str| &fs_[p];
        let expect = |p: &str, ty: &str, mode: u32, owner: u32, mtime: i64| {
            assert_eq!(e(p)["type"], ty, "{plat} {p}");
            assert_eq!(
                e(p)["mode"].as_u64(),
                Some(u64::from(mode)),
                "{plat} {p} mode {:o}",
                e(p)["mode"].as_u64().unwrap_or(0)
            );
            assert_eq!(e(p)["uid"], owner, "{plat} {p} uid");
            assert_eq!(e(p)["gid"], owner, "{plat} {p} gid");
            assert_eq!(e(p)["mtime"], mtime, "{plat} {p} mtime");
        };
        let t = MULTI_ARCH_EPOCH;
        // Base entries are untouched: implicit parents of new entries
        // (/app, /etc) are not rewritten over the base.
        expect("/app", "dir", 0o755, 0, 0);
        expect("/etc", "dir", 0o755, 0, 0);
        expect("/tmp", "dir", 0o1777, 0, 0);
        expect("/root", "dir", 0o700, 0, 0);
        expect("/etc/passwd", "file", 0o644, 0, 0);
        // Layer "static": owner 0, default modes.
        expect("/srv/www/css", "dir", 0o755, 0, t);
        expect("/srv/www/css/site.css", "file", 0o644, 0, t);
        expect("/srv/www/index.html", "file", 0o644, 0, t);
        // Layer "app": defaults.owner 65532.
        expect("/app/server", "file", 0o755, 65532, t);
        expect("/app/VERSION", "file", 0o644, 65532, t);
        expect("/var/lib/app", "dir", 0o750, 65532, t);
        assert_eq!(e("/usr/local/bin/server")["type"], "symlink");
        assert_eq!(e("/usr/local/bin/server")["linkname"], "/app/server");
        assert_eq!(e("/usr/local/bin/server")["mtime"], t);
        if plat == "linux/arm64" {
            expect("/etc/app/tuning.conf", "file", 0o644, 0, t);
        }
    }
}

// ------------------------------------------------------------ (d) shared layer

#[test]
fn multi_arch_static_layer_is_one_blob_for_both_platforms() {
    let b = build_example("multi-arch", None);
    let mans = platform_manifests(&b.out, &b.digest);
    let digests = |plat: &str| -> Vec<String> {
        mans[plat].1["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    };
    let amd = digests("linux/amd64");
    let arm = digests("linux/arm64");
    // base, static, app (+ arm64-tuning)
    assert_eq!(amd.len(), 3, "{amd:?}");
    assert_eq!(arm.len(), 4, "{arm:?}");
    let base = base_layer_digests();
    assert!(
        base.contains(&amd[0]) && base.contains(&arm[0]),
        "base layers by descriptor"
    );
    assert_ne!(amd[0], arm[0], "the base has per-arch layers");
    assert_eq!(
        amd[1], arm[1],
        "the static layer is the same blob on both platforms"
    );
    assert_ne!(amd[2], arm[2], "the app layer differs per platform");
    let shared: BTreeSet<&String> = amd.iter().filter(|d| arm.contains(d)).collect();
    assert_eq!(
        shared.len(),
        1,
        "only the static layer is shared: {shared:?}"
    );
    // It holds the web files only, as the spec's glob and exclude say.
    let layers = layer_headers(&b.out, "linux/amd64", None);
    assert_eq!(layers[1]["digest"], amd[1].as_str());
    let names: Vec<&str> = layers[1]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["srv/www/css/", "srv/www/css/site.css", "srv/www/index.html"]
    );
}

// ------------------------------------------------------------ tar header hygiene

/// Checks every member of every layer imgc wrote (base layers excluded).
fn check_headers(layout: &Path, plat: &str, epoch: i64) {
    let base = base_layer_digests();
    let mut seen = 0;
    for layer in layer_headers(layout, plat, None) {
        if base.contains(layer["digest"].as_str().unwrap()) {
            continue;
        }
        seen += 1;
        let d = layer["digest"].as_str().unwrap();
        assert_eq!(layer["errors"], json!([]), "{plat} {d}");
        assert_eq!(
            layer["end_zero_blocks"], 2,
            "{plat} {d}: two end-of-archive blocks"
        );
        assert_eq!(
            layer["trailing_bytes"], 0,
            "{plat} {d}: no padding after them"
        );
        assert_eq!(
            layer["pax_global"],
            json!({}),
            "{plat} {d}: no global PAX header"
        );
        let members = layer["members"].as_array().unwrap();
        assert!(!members.is_empty(), "{plat} {d} is empty");
        let mut prev: Option<&str> = None;
        for m in members {
            let path = m["path"].as_str().unwrap();
            let at = format!("{plat} {d} {path}");
            assert!(
                !path.starts_with('/') && !path.starts_with("./"),
                "{at}: path must be relative"
            );
            if let Some(p) = prev {
                assert!(
                    p.as_bytes() < path.as_bytes(),
                    "{at}: not after {p} (bytewise order)"
                );
            }
            prev = Some(path);
            let ty = m["type"].as_str().unwrap();
            assert_eq!(
                ty == "dir",
                path.ends_with('/'),
                "{at}: folders (only) end with /"
            );
            assert_eq!(m["magic"], "ustar", "{at}: USTAR headers");
            assert_eq!(m["gnu_long"], false, "{at}: no GNU long names");
            assert_eq!(m["uname"], "", "{at}: uname");
            assert_eq!(m["gname"], "", "{at}: gname");
            assert_eq!(m["mtime"], epoch, "{at}: mtime");
            assert_eq!(m["devmajor"], 0, "{at}");
            assert_eq!(m["devminor"], 0, "{at}");
            let pax = m["pax"].as_object().unwrap();
            for k in pax.keys() {
                assert!(
                    matches!(k.as_str(), "path" | "linkpath" | "size"),
                    "{at}: PAX record {k} (only path/linkpath/size where USTAR cannot hold them)"
                );
            }
            let mode = m["mode"].as_u64().unwrap();
            assert_eq!(
                mode & !0o7777,
                0,
                "{at}: file type bits in the mode field {mode:o}"
            );
            if ty == "symlink" {
                assert!(!m["linkname"].as_str().unwrap().is_empty(), "{at}");
            }
            assert!(
                matches!(ty, "file" | "dir" | "symlink" | "hardlink"),
                "{at}: unexpected type {ty}"
            );
        }
    }
    assert!(seen > 0, "{plat}: no imgc layer found");
}

#[test]
fn layer_headers_are_clean_in_both_examples() {
    let hello = build_example("hello", None);
    let multi = build_example("multi-arch", None);
    for plat in PLATFORMS {
        check_headers(&hello.out, plat, 0);
        check_headers(&multi.out, plat, MULTI_ARCH_EPOCH);
    }
}

// ------------------------------------------------------------ (e) config

fn env_set(cfg: &Value) -> BTreeSet<String> {
    let env: Vec<String> = cfg["config"]["Env"]
        .as_array()
        .unwrap_or_else(|| panic!("config has no Env: {cfg}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let set: BTreeSet<String> = env.iter().cloned().collect();
    assert_eq!(set.len(), env.len(), "duplicate Env entries: {env:?}");
    let keys: BTreeSet<&str> = env.iter().map(|e| e.split('=').next().unwrap()).collect();
    assert_eq!(keys.len(), env.len(), "a variable set twice: {env:?}");
    set
}

fn check_history(cfg: &Value, created: &str) {
    if let Some(h) = cfg["history"].as_array() {
        for (i, e) in h.iter().enumerate() {
            if let Some(c) = e.get("created") {
                assert_eq!(c, created, "history[{i}].created");
            }
        }
    }
}

#[test]
fn multi_arch_config_merges_the_base_and_the_spec() {
    let b = build_example("multi-arch", None);
    let base = example_dir("multi-arch").join("base");
    for plat in PLATFORMS {
        let cfg = image_config(&b.out, plat, None);
        let arch = plat.split('/').nth(1).unwrap();
        assert_eq!(cfg["os"], "linux", "{plat}");
        assert_eq!(cfg["architecture"], arch, "{plat}");
        assert_eq!(
            cfg["created"], MULTI_ARCH_CREATED,
            "{plat}: created = epoch 1700000000"
        );
        check_history(&cfg, MULTI_ARCH_CREATED);
        let mut want: BTreeSet<String> = [
            "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
            "APP_MODE=production".to_string(),
        ]
        .into();
        if arch == "arm64" {
            want.insert("GOGC=50".into());
        }
        assert_eq!(env_set(&cfg), want, "{plat}: Env");
        let c = &cfg["config"];
        assert_eq!(c["Entrypoint"], json!(["/app/server"]), "{plat}");
        assert_eq!(c["Cmd"], json!(["--listen", ":8080"]), "{plat}");
        assert_eq!(c["User"], "65532:65532", "{plat}");
        assert_eq!(c["WorkingDir"], "/app", "{plat}");
        assert_eq!(c["ExposedPorts"], json!({"8080/tcp": {}}), "{plat}");
        assert_eq!(c["Volumes"], json!({"/data": {}}), "{plat}");
        assert_eq!(
            c["Labels"],
            json!({"org.opencontainers.image.title": "multi-arch"}),
            "{plat}"
        );
        assert_eq!(c["StopSignal"], "SIGTERM", "{plat}");
        // The base's layer comes first, its diff_id unchanged.
        let base_cfg = image_config(&base, plat, Some("1.0"));
        assert_eq!(
            cfg["rootfs"]["diff_ids"][0], base_cfg["rootfs"]["diff_ids"][0],
            "{plat}: base diff_id"
        );
        let n = if arch == "arm64" { 4 } else { 3 };
        assert_eq!(
            cfg["rootfs"]["diff_ids"].as_array().unwrap().len(),
            n,
            "{plat}"
        );
    }
}

#[test]
fn hello_config_is_what_the_spec_declares() {
    let b = build_example("hello", None);
    for plat in PLATFORMS {
        let cfg = image_config(&b.out, plat, Some("1.0.0"));
        assert_eq!(cfg["os"], "linux");
        assert_eq!(cfg["architecture"], plat.split('/').nth(1).unwrap());
        assert_eq!(cfg["created"], "1970-01-01T00:00:00Z", "{plat}: epoch 0");
        check_history(&cfg, "1970-01-01T00:00:00Z");
        let want: BTreeSet<String> = ["GREETING_FILE=/etc/hello/greeting.txt".to_string()].into();
        assert_eq!(env_set(&cfg), want, "{plat}: scratch has no env of its own");
        let c = &cfg["config"];
        assert_eq!(c["Entrypoint"], json!(["/bin/hello"]));
        assert!(
            c["Cmd"].is_null() || c["Cmd"] == json!([]),
            "{plat}: Cmd {}",
            c["Cmd"]
        );
        assert_eq!(c["User"], "65532:65532");
        assert_eq!(c["WorkingDir"], "/");
        assert_eq!(
            c["Labels"],
            json!({"org.opencontainers.image.title": "hello"})
        );
        assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);
    }
}

#[test]
fn annotations_land_on_the_index_and_the_manifests() {
    let hello = build_example("hello", None);
    let multi = build_example("multi-arch", None);
    for (b, version, desc, created) in [
        (
            &hello,
            "1.0.0",
            "imgc's hello example",
            "1970-01-01T00:00:00Z",
        ),
        (
            &multi,
            "2.1.0",
            "imgc's multi-arch example",
            MULTI_ARCH_CREATED,
        ),
    ] {
        let index = read_blob_json(&b.out, &b.digest);
        let ia = &index["annotations"];
        assert_eq!(ia["org.opencontainers.image.description"], desc);
        assert_eq!(ia["org.opencontainers.image.version"], version);
        if let Some(c) = ia.get("org.opencontainers.image.created") {
            assert_eq!(c, created, "index created annotation = the epoch");
        }
        for (plat, (_, man)) in platform_manifests(&b.out, &b.digest) {
            let ma = &man["annotations"];
            assert_eq!(ma["org.opencontainers.image.version"], version, "{plat}");
            assert!(
                ma.get("org.opencontainers.image.description").is_none(),
                "{plat}: index_annotations are on the index only"
            );
            if let Some(c) = ma.get("org.opencontainers.image.created") {
                assert_eq!(c, created, "{plat}: created annotation = the epoch");
            }
            let tuned = ma.get("com.example.tuned");
            if std::ptr::eq(b, &multi) && plat == "linux/arm64" {
                assert_eq!(tuned, Some(&json!("arm64")), "{plat}");
            } else {
                assert_eq!(tuned, None, "{plat}: per-platform annotation leaked");
            }
        }
    }
}
