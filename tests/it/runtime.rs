//! Images must run: an app built by imgc on a busybox base is unpacked by
//! umoci and run by `runc`, a real OCI runtime, and what it prints shows
//! the config was applied: entrypoint and cmd, user and group, environment,
//! working folder, and files from both the base and the app's layers.

use crate::support::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// This machine's platform, as imgc names it.
fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        other => panic!("the runtime test knows amd64 and arm64, not {other}"),
    }
}

/// A statically linked busybox (Debian's busybox-static).
fn busybox() -> PathBuf {
    let path = PathBuf::from("/bin/busybox");
    let out = output(Command::new("file").arg("-L").arg(&path));
    let kind = stdout(&out);
    assert!(
        kind.contains("statically linked") || kind.contains("static-pie linked"),
        "{} is not a static busybox ({kind}); scripts/test.sh installs busybox-static",
        path.display()
    );
    path
}

/// Builds a busybox base for the host platform into `dir/base`, with imgc.
fn busybox_base(dir: &Path) -> PathBuf {
    let ctx = dir.join("base-ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::copy(busybox(), ctx.join("busybox")).unwrap();
    let tools = ["sh", "id", "pwd", "cat", "env", "echo"];
    let links: Vec<String> = tools
        .iter()
        .map(|t| format!("{{ path = \"/bin/{t}\", target = \"busybox\" }}"))
        .collect();
    let spec = ctx.join("image.toml");
    fs::write(
        &spec,
        format!(
            r#"[image]
tags = ["latest"]
platforms = ["{}"]
epoch = 1700000000

[config]
env = {{ PATH = "/bin" }}

[[layers]]
name = "busybox"
files = [{{ src = "busybox", dst = "/bin/busybox", mode = "0755" }}]
dirs = [{{ path = "/bin" }}, {{ path = "/tmp", mode = "1777" }}]
symlinks = [{links}]
"#,
            host_platform(),
            links = links.join(", ")
        ),
    )
    .unwrap();
    let out = dir.join("base");
    build(&spec, &out, &[]);
    out
}

const APP: &str = r#"#!/bin/sh
echo "hello from $APP_NAME"
echo "uid=$(id -u) gid=$(id -g)"
echo "cwd=$(pwd)"
echo "args=$*"
echo "path=$PATH"
cat /etc/app/motd
"#;

fn app_spec() -> String {
    format!(
        r#"[image]
tags = ["latest"]
base = "oci:../base:latest"
platforms = ["{}"]

[config]
entrypoint = ["/app/run"]
cmd = ["one", "two"]
env = {{ APP_NAME = "imgc-app" }}
user = "1234:5678"
workdir = "/srv/work"

[[layers]]
name = "app"
files = [
  {{ src = "run", dst = "/app/run", mode = "0755" }},
  {{ content = "motd from a layer\n", dst = "/etc/app/motd" }},
]
dirs = [{{ path = "/srv/work", owner = "1234:5678" }}]
"#,
        host_platform()
    )
}

/// Unpacks `layout:latest` with umoci (as root: real owners) and runs it
/// with runc; returns (exit status, stdout, stderr).
fn run_with_runc(layout: &Path, bundle: &Path, id: &str) -> (Option<i32>, String, String) {
    require("umoci");
    require("runc");
    let mut image = layout.as_os_str().to_owned();
    image.push(":latest");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(&image)
        .arg(bundle));
    // A test has no terminal.
    let config_path = bundle.join("config.json");
    let mut config = read_json(&config_path);
    config["process"]["terminal"] = false.into();
    fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let out = output(
        Command::new("runc")
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id),
    );
    let _ = Command::new("runc")
        .args(["delete", "--force", id])
        .output();
    (out.status.code(), stdout(&out), stderr(&out))
}

#[test]
fn an_app_on_a_busybox_base_runs_under_runc_as_declared() {
    let tmp = tempdir();
    let dir = tmp.path();
    busybox_base(dir);
    let ctx = dir.join("app");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("run"), APP).unwrap();
    fs::write(ctx.join("image.toml"), app_spec()).unwrap();
    let layout = dir.join("app-out");
    build(&ctx.join("image.toml"), &layout, &[]);
    assert_layout_valid(&layout);
    let id = format!("imgc-it-{}", std::process::id());
    let (code, out, err) = run_with_runc(&layout, &dir.join("bundle"), &id);
    assert_eq!(
        code,
        Some(0),
        "runc failed:\nstdout:\n{out}\nstderr:\n{err}"
    );
    let expected = "hello from imgc-app\n\
                    uid=1234 gid=5678\n\
                    cwd=/srv/work\n\
                    args=one two\n\
                    path=/bin\n\
                    motd from a layer\n";
    assert_eq!(out, expected, "stderr:\n{err}");
}
