//! Bad input: every error exits 1 without a panic, names the offending item
//! (with file:line:column when it comes from the spec), and leaves an
//! existing output layout exactly as it was, with no staging left behind.

use crate::support::*;
use std::fs;
use std::path::PathBuf;

const GOOD: &str = r#"[image]
platforms = ["linux/amd64"]

[[layers]]
name = "app"
files = [{ src = "app/hello.txt", dst = "/app/hello.txt" }]
"#;

/// A context with a few files, and an output layout already built from a good spec.
struct Case {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    out: PathBuf,
}

impl Case {
    fn new() -> Case {
        let tmp = tempdir();
        let dir = tmp.path().join("ctx");
        fs::create_dir_all(dir.join("app")).unwrap();
        fs::write(dir.join("app/hello.txt"), "hello\n").unwrap();
        let out = tmp.path().join("out");
        fs::write(dir.join("good.toml"), GOOD).unwrap();
        build(&dir.join("good.toml"), &out, &[]);
        Case {
            _tmp: tmp,
            dir,
            out,
        }
    }

    /// Builds `spec` into the existing layout, expects exit 1 and every
    /// `needle` in stderr, checks the layout is unchanged; returns stderr.
    fn fails(&self, spec: &str, needles: &[&str]) -> String {
        let before = tree_contents(&self.out);
        let path = self.dir.join("image.toml");
        fs::write(&path, spec).unwrap();
        let out = run_fails(
            imgc()
                .arg("build")
                .arg(&path)
                .arg("--output")
                .arg(oci_arg(&self.out)),
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "exit code; stderr:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(out.stdout.is_empty(), "stdout must stay empty on failure");
        for n in needles {
            assert!(stderr.contains(n), "stderr lacks {n:?}:\n{stderr}");
        }
        assert_eq!(tree_contents(&self.out), before, "the layout changed");
        let leftovers: Vec<_> = fs::read_dir(self.out.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("imgc-staging"))
            .collect();
        assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
        stderr
    }
}

fn spec_with_layer(files: &str) -> String {
    format!("[image]\nplatforms = [\"linux/amd64\"]\n\n[[layers]]\nname = \"app\"\n{files}\n")
}

#[test]
fn toml_syntax_error_shows_file_line_column_and_source() {
    let c = Case::new();
    let err = c.fails("[image\nplatforms = []\n", &["image.toml:1:", "[image"]);
    assert!(err.contains(" | [image"), "{err}");
}

#[test]
fn unknown_key_suggests_the_right_one() {
    let c = Case::new();
    c.fails(
        "[image]\nplatforms = [\"linux/amd64\"]\ncompresion = \"zstd\"\n",
        &[
            "unknown key `compresion`",
            "image.toml:3:1",
            "did you mean `compression`?",
        ],
    );
    c.fails(
        &spec_with_layer("files = [{ src = \"app/hello.txt\", dest = \"/x\" }]"),
        &["unknown key `dest`", "image.toml:6:", "did you mean `dst`?"],
    );
}

#[test]
fn src_outside_the_context_is_refused() {
    let c = Case::new();
    fs::write(c.dir.parent().unwrap().join("secret"), "s3cret").unwrap();
    let err = c.fails(
        &spec_with_layer("files = [{ src = \"../secret\", dst = \"/s\" }]"),
        &[
            "`src` `../secret` is outside the build context",
            "image.toml:6:",
        ],
    );
    assert!(!err.contains("s3cret"));
    c.fails(
        &spec_with_layer("files = [{ src = \"/etc/passwd\", dst = \"/p\" }]"),
        &[
            "`src` `/etc/passwd` is outside the build context",
            "image.toml:6:",
        ],
    );
}

#[test]
fn src_through_a_symlink_out_of_the_context_is_refused() {
    let c = Case::new();
    std::os::unix::fs::symlink("/etc", c.dir.join("sys")).unwrap();
    c.fails(
        &spec_with_layer("files = [{ src = \"sys/passwd\", dst = \"/p\" }]"),
        &["passes through the symlink `sys`", "image.toml:6:"],
    );
    c.fails(
        &spec_with_layer("files = [{ src = \"sys/**\", dst = \"/p/\" }]"),
        &["passes through the symlink `sys`"],
    );
}

#[test]
fn glob_matching_nothing_is_an_error_unless_optional() {
    let c = Case::new();
    c.fails(
        &spec_with_layer("files = [{ src = \"nothing/**/*.txt\", dst = \"/x/\" }]"),
        &[
            "glob `nothing/**/*.txt` matched nothing",
            "image.toml:6:",
            "optional = true",
        ],
    );
    let ok = c.dir.join("optional.toml");
    fs::write(
        &ok,
        spec_with_layer("files = [{ src = \"nothing/**\", dst = \"/x/\", optional = true }, { src = \"app/hello.txt\", dst = \"/h\" }]"),
    )
    .unwrap();
    build(&ok, &c.dir.parent().unwrap().join("opt-out"), &[]);
}

#[test]
fn duplicate_dst_names_both_entries() {
    let c = Case::new();
    let err = c.fails(
        &spec_with_layer(
            "files = [\n  { content = \"a\", dst = \"/etc/x\" },\n  { src = \"app/hello.txt\", dst = \"/etc/x\" },\n]",
        ),
        &["two entries of the layer write `/etc/x`", "image.toml:7:", "image.toml:8:"],
    );
    assert!(err.contains("dst = \"/etc/x\""), "{err}");
}

#[test]
fn undefined_template_variable_is_named() {
    let c = Case::new();
    c.fails(
        &format!(
            "[vars]\nversion = \"1\"\n{}",
            spec_with_layer("files = [{ content = \"{{ vars.verison }}\", dst = \"/v\" }]")
        ),
        &[
            "undefined template variable `vars.verison`",
            "image.toml:8:",
            "did you mean `vars.version`?",
        ],
    );
    c.fails(
        &spec_with_layer("files = [{ content = \"{{ env.HOME }}\", dst = \"/v\" }]"),
        &[
            "undefined template variable `env.HOME`",
            "environment is not visible",
        ],
    );
}

#[test]
fn invalid_platform_mode_owner_and_relative_dst() {
    let c = Case::new();
    c.fails(
        "[image]\nplatforms = [\"linux/amd64\", \"linux\"]\n",
        &["`linux` is not a valid platform", "image.toml:2:"],
    );
    c.fails(
        &spec_with_layer("files = [{ src = \"app/hello.txt\", dst = \"/h\", mode = \"0799\" }]"),
        &["invalid mode `0799`", "image.toml:6:"],
    );
    c.fails(
        &spec_with_layer("files = [{ src = \"app/hello.txt\", dst = \"/h\", mode = 755 }]"),
        &["invalid mode 755", "octal strings"],
    );
    c.fails(
        &spec_with_layer("dirs = [{ path = \"/d\", owner = \"root:root\" }]"),
        &["invalid owner `root:root`", "image.toml:6:"],
    );
    c.fails(
        &spec_with_layer("files = [{ src = \"app/hello.txt\", dst = \"app/h\" }]"),
        &[
            "invalid image path `app/h`",
            "must be an absolute path",
            "image.toml:6:",
        ],
    );
    c.fails(
        &spec_with_layer("files = [{ src = \"app/hello.txt\", dst = \"/app/../etc/h\" }]"),
        &["invalid image path `/app/../etc/h`"],
    );
}

fn copy_base(c: &Case) {
    copy_dir(&example_dir("multi-arch").join("base"), &c.dir.join("base"));
}

#[test]
fn missing_base_layout_is_named() {
    let c = Case::new();
    c.fails(
        "[image]\nbase = \"oci:vendor/nope:1.0\"\nplatforms = [\"linux/amd64\"]\n",
        &[
            "failed to resolve base `oci:vendor/nope:1.0`",
            "vendor/nope",
            "image.toml:2:",
        ],
    );
    copy_base(&c);
    c.fails(
        "[image]\nbase = \"oci:base:2.0\"\nplatforms = [\"linux/amd64\"]\n",
        &["has no tag `2.0`", "1.0"],
    );
}

#[test]
fn base_lacking_a_platform_lists_what_it_has() {
    let c = Case::new();
    copy_base(&c);
    c.fails(
        "[image]\nbase = \"oci:base:1.0\"\nplatforms = [\"linux/amd64\", \"linux/riscv64\"]\n",
        &[
            "has no image for platform linux/riscv64",
            "linux/amd64, linux/arm64/v8",
            "image.toml:2:",
        ],
    );
}

#[test]
fn corrupt_base_blob_is_detected() {
    let c = Case::new();
    copy_base(&c);
    // Corrupt the arm64 base layer: the copy into the output must notice.
    let idx = read_json(&c.dir.join("base/index.json"));
    let arm = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == "1.0-arm64")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = read_blob_json(&c.dir.join("base"), &arm);
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let path = blob_path(&c.dir.join("base"), layer);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    c.fails(
        "[image]\nbase = \"oci:base:1.0\"\nplatforms = [\"linux/arm64\"]\n",
        &["does not match its descriptor", &layer[7..]],
    );
}

#[test]
fn a_glob_over_a_symlink_to_etc_stores_the_symlink_only() {
    let tmp = tempdir();
    let ctx = tmp.path().join("ctx");
    fs::create_dir_all(ctx.join("root")).unwrap();
    fs::write(ctx.join("root/file.txt"), "x\n").unwrap();
    std::os::unix::fs::symlink("/etc", ctx.join("root/etc-link")).unwrap();
    let spec = ctx.join("image.toml");
    fs::write(
        &spec,
        "[image]\nplatforms = [\"linux/amd64\"]\ncompression = \"none\"\n[[layers]]\nname = \"all\"\nfiles = [{ src = \"root/**\", dst = \"/\" }]\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let digest = build(&spec, &out, &[]);
    let manifests = platform_manifests(&out, &digest);
    let (_, manifest) = &manifests["linux/amd64"];
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let bytes = fs::read(blob_path(&out, layer)).unwrap();
    let mut names = Vec::new();
    for e in tar::Archive::new(&bytes[..]).entries().unwrap() {
        let e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned());
        names.push((path, e.header().entry_type().as_byte(), link));
    }
    assert_eq!(
        names,
        vec![
            ("etc-link".to_string(), b'2', Some("/etc".to_string())),
            ("file.txt".to_string(), b'0', None),
        ]
    );
    // And nothing of /etc's content went in.
    let passwd = fs::read("/etc/passwd").unwrap();
    assert!(!bytes
        .windows(passwd.len().min(64))
        .any(|w| w == &passwd[..passwd.len().min(64)]));
}

#[test]
fn usage_errors_exit_2() {
    let out = output(imgc().arg("build"));
    assert_eq!(out.status.code(), Some(2));
    let tmp = tempdir();
    let spec = tmp.path().join("image.toml");
    fs::write(&spec, GOOD).unwrap();
    let out = output(imgc().arg("build").arg(&spec).args(["--platform", "linux"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`linux` is not a valid platform"));
    let out = output(
        imgc()
            .arg("build")
            .arg(&spec)
            .args(["--output", "docker-archive:x.tar"]),
    );
    assert_eq!(out.status.code(), Some(2));
    let out = output(imgc().arg("build").arg(&spec).env("IMGC_THREADS", "zero"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("IMGC_THREADS `zero`"));
}

#[test]
fn refuses_to_write_into_a_folder_that_is_not_a_layout() {
    let tmp = tempdir();
    let spec = tmp.path().join("image.toml");
    fs::write(&spec, GOOD.replace("app/hello.txt", "image.toml")).unwrap();
    let out_dir = tmp.path().join("precious");
    fs::create_dir_all(&out_dir).unwrap();
    fs::write(out_dir.join("notes.txt"), "keep me").unwrap();
    let out = run_fails(
        imgc()
            .arg("build")
            .arg(&spec)
            .arg("--output")
            .arg(oci_arg(&out_dir)),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an OCI image layout"));
    assert_eq!(
        fs::read_to_string(out_dir.join("notes.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(fs::read_dir(&out_dir).unwrap().count(), 1);
}

#[test]
fn an_entry_below_a_file_or_symlink_of_the_same_layer_names_both() {
    let c = Case::new();
    c.fails(
        r#"[image]
platforms = ["linux/amd64"]

[[layers]]
name = "app"
files = [
  { content = "a", dst = "/x" },
  { content = "b", dst = "/x/y" },
]
"#,
        &[
            "`/x/y` is below `/x`",
            "a file",
            "image.toml:7:",
            "image.toml:8:",
        ],
    );
    c.fails(
        r#"[image]
platforms = ["linux/amd64"]

[[layers]]
name = "etc"
symlinks = [{ path = "/etc", target = "/usr/etc" }]
files = [{ content = "root:x:0:0::/:/bin/sh", dst = "/etc/passwd" }]
"#,
        &[
            "`/etc/passwd` is below `/etc`",
            "a symlink",
            "image.toml:6:",
            "image.toml:7:",
        ],
    );
}

/// Names that are not UTF-8 fail a build only when an entry selects them,
/// and the error escapes the name and points at the entry.
#[test]
fn a_name_that_is_not_utf8_fails_only_when_selected() {
    use std::os::unix::ffi::OsStrExt;
    let c = Case::new();
    let junk = c.dir.join("junk");
    fs::create_dir_all(&junk).unwrap();
    fs::write(junk.join(std::ffi::OsStr::from_bytes(b"bad-\xff.txt")), "?").unwrap();
    fs::write(c.dir.join("app/index.html"), "<p>").unwrap();
    let spec = c.dir.join("ok.toml");
    fs::write(
        &spec,
        r#"[image]
platforms = ["linux/amd64"]

[[layers]]
name = "web"
files = [{ src = "**/*.html", dst = "/srv/", exclude = ["junk/**"] }]
"#,
    )
    .unwrap();
    build(&spec, &c.dir.parent().unwrap().join("ok-out"), &[]);
    let err = c.fails(
        r#"[image]
platforms = ["linux/amd64"]

[[layers]]
name = "junk"
files = [{ src = "junk", dst = "/junk" }]
"#,
        &[r"junk/bad-\xFF.txt", "not valid UTF-8", "image.toml:6:"],
    );
    assert!(!err.contains('\u{FFFD}'), "{err}");
}
