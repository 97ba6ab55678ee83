//! What a user sees when a spec is wrong: the whole stderr, as snapshots
//! (`cargo insta review` after an intended change).

use crate::support::*;
use std::fs;

fn stderr_of(spec: &str) -> String {
    let tmp = tempdir();
    fs::create_dir_all(tmp.path().join("app")).unwrap();
    fs::write(tmp.path().join("app/server"), "x").unwrap();
    fs::write(tmp.path().join("image.toml"), spec).unwrap();
    let out = run_fails(imgc().current_dir(tmp.path()).args([
        "build",
        "image.toml",
        "--output",
        "oci:out",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !tmp.path().join("out").exists(),
        "a failed build created the output"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn unknown_key() {
    insta::assert_snapshot!(stderr_of(
        "[image]\nplatforms = [\"linux/amd64\"]\nentrypoint = [\"/app/server\"]\n"
    ));
}

#[test]
fn duplicate_dst() {
    insta::assert_snapshot!(stderr_of(
        "[image]\nplatforms = [\"linux/amd64\"]\n\n[[layers]]\nname = \"app\"\nfiles = [\n  { src = \"app/server\", dst = \"/app/server\" },\n  { content = \"hi\", dst = \"/app/server\" },\n]\n"
    ));
}

#[test]
fn undefined_variable() {
    insta::assert_snapshot!(stderr_of(
        "[image]\nplatforms = [\"linux/amd64\"]\n\n[vars]\nversion = \"1.0\"\n\n[[layers]]\nname = \"app\"\nfiles = [{ content = \"{{ vars.verison }}\", dst = \"/VERSION\" }]\n"
    ));
}

#[test]
fn toml_syntax() {
    insta::assert_snapshot!(stderr_of("[image]\nplatforms = [\"linux/amd64\"\n"));
}

#[test]
fn glob_matches_nothing() {
    insta::assert_snapshot!(stderr_of(
        "[image]\nplatforms = [\"linux/amd64\"]\n\n[[layers]]\nname = \"web\"\nfiles = [{ src = \"web/**\", dst = \"/srv/\" }]\n"
    ));
}
