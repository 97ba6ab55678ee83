//! Planning on an in-memory context and in-memory bases: no filesystem is
//! touched (the memory context's root does not exist, so a planner that
//! read the disk would fail here).

use super::sources::{MemoryBases, MemoryContext, MemoryNode, Sources};
use super::*;
use crate::spec::SpecFile;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const HEAD: &str = "[image]\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\n";

fn spec(text: &str) -> SpecFile {
    SpecFile::parse(Path::new("image.toml"), format!("{HEAD}{text}")).unwrap()
}

fn plan_with(ctx: &MemoryContext, bases: &MemoryBases, text: &str) -> Result<Plan, PlanError> {
    let sources = Sources {
        context: ctx,
        bases,
    };
    plan(&spec(text), &PlanOptions::default(), sources)
}

fn plan_in(ctx: &MemoryContext, text: &str) -> Result<Plan, PlanError> {
    plan_with(ctx, &MemoryBases::new(), text)
}

/// The tar names of the first layer.
fn names(plan: &Plan) -> Vec<String> {
    plan.layers[0].entries.iter().map(Entry::tar_name).collect()
}

/// The 1-based spec line of an error (the two header lines included).
fn line(e: &PlanError) -> usize {
    e.location().expect("a location").line
}

fn web() -> MemoryContext {
    let mut ctx = MemoryContext::new();
    ctx.file("web/index.html", b"<p>")
        .file("web/css/site.css", b"p{}")
        .file("web/css/print.css", b"")
        .file("web/notes.txt", b"n")
        .file("junk/old.html", b"x");
    ctx
}

#[test]
fn a_glob_selects_by_context_path_in_bytewise_order() {
    let p = plan_in(
        &web(),
        r#"[[layers]]
name = "web"
files = [{ src = "web/**/*.css", dst = "/srv/" }]
"#,
    )
    .unwrap();
    // No folder is written for the glob's own path, only what it matched;
    // the context-relative path lands below `dst`.
    assert_eq!(names(&p), ["srv/css/print.css", "srv/css/site.css"]);
}

#[test]
fn a_folder_is_copied_with_parents_before_children() {
    let p = plan_in(
        &web(),
        r#"[[layers]]
name = "web"
files = [{ src = "web", dst = "/srv/www" }]
"#,
    )
    .unwrap();
    assert_eq!(
        names(&p),
        [
            "srv/www/",
            "srv/www/css/",
            "srv/www/css/print.css",
            "srv/www/css/site.css",
            "srv/www/index.html",
            "srv/www/notes.txt",
        ]
    );
}

#[test]
fn excludes_drop_paths_below_src_and_context_paths() {
    let p = plan_in(
        &web(),
        r#"[[layers]]
name = "web"
files = [
  { src = "web", dst = "/a", exclude = ["css"] },
  { src = "**/*.html", dst = "/b/", exclude = ["junk/**"] },
]
"#,
    )
    .unwrap();
    assert_eq!(
        names(&p),
        ["a/", "a/index.html", "a/notes.txt", "b/web/index.html"]
    );
}

#[test]
fn dst_rules_for_one_file() {
    let p = plan_in(
        &web(),
        r#"[[layers]]
name = "one"
files = [
  { src = "web/notes.txt", dst = "/etc/" },
  { src = "web/index.html", dst = "/srv/home.html", mode = "0600", owner = "10:20" },
]
"#,
    )
    .unwrap();
    let e = &p.layers[0].entries;
    assert_eq!(names(&p), ["etc/notes.txt", "srv/home.html"]);
    assert_eq!((e[1].mode, e[1].uid, e[1].gid), (0o600, 10, 20));
    assert_eq!((e[0].mode, e[0].uid), (0o644, 0));
}

#[test]
fn parents_are_not_invented() {
    let mut ctx = MemoryContext::new();
    ctx.insert("bin/hello", MemoryNode::File(b"\x7fELF".to_vec(), true));
    let p = plan_in(
        &ctx,
        r#"[[layers]]
name = "bin"
files = [{ src = "bin/hello", dst = "/usr/local/bin/hello" }]
"#,
    )
    .unwrap();
    assert_eq!(names(&p), ["usr/local/bin/hello"]);
    assert_eq!(p.layers[0].entries[0].mode, 0o755, "executable bit kept");
}

#[test]
fn a_glob_needs_a_folder_dst() {
    let e = plan_in(
        &web(),
        "[[layers]]\nname = \"w\"\nfiles = [{ src = \"web/*.html\", dst = \"/srv\" }]\n",
    )
    .unwrap_err();
    assert!(matches!(e, PlanError::GlobNeedsFolder { .. }), "{e}");
    assert_eq!(line(&e), 5);
}

#[test]
fn a_name_that_is_not_utf8_fails_only_when_selected() {
    let mut ctx = web();
    ctx.file(OsStr::from_bytes(b"junk/bad-\xff.txt"), b"?");
    let ok = plan_in(
        &ctx,
        r#"[[layers]]
name = "web"
files = [
  { src = "**/*.html", dst = "/b/", exclude = ["junk/**"] },
  { src = "web", dst = "/w" },
]
"#,
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
    let e = plan_in(
        &ctx,
        "[[layers]]\nname = \"j\"\nfiles = [\n  { src = \"junk\", dst = \"/j\" },\n]\n",
    )
    .unwrap_err();
    assert!(matches!(e, PlanError::NotUtf8 { .. }), "{e}");
    assert!(e.to_string().contains(r"junk/bad-\xFF.txt"), "{e}");
    assert_eq!(line(&e), 6);
}

#[test]
fn a_file_and_an_entry_below_it_name_both() {
    let e = plan_in(
        &web(),
        r#"[[layers]]
name = "x"
files = [
  { content = "a", dst = "/x" },
  { content = "b", dst = "/x/y" },
]
"#,
    )
    .unwrap_err();
    let PlanError::EntryBelowNonFolder {
        path,
        above,
        kind,
        first,
        location,
    } = &e
    else {
        panic!("{e}");
    };
    assert_eq!(
        (path.as_str(), above.as_str(), *kind),
        ("/x/y", "/x", "a file")
    );
    assert_eq!((first.line, location.line), (6, 7));
}

#[test]
fn a_symlink_and_an_entry_below_it_name_both() {
    let e = plan_in(
        &web(),
        r#"[[layers]]
name = "etc"
symlinks = [{ path = "/etc", target = "/usr/etc" }]
files = [{ content = "root:x:0:0::/:/bin/sh", dst = "/etc/passwd" }]
"#,
    )
    .unwrap_err();
    assert!(
        matches!(
            &e,
            PlanError::EntryBelowNonFolder {
                kind: "a symlink",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("`/etc/passwd` is below `/etc`"),
        "{e}"
    );
}

#[test]
fn a_folder_entry_may_hold_entries() {
    let p = plan_in(
        &web(),
        r#"[[layers]]
name = "etc"
dirs = [{ path = "/etc" }]
files = [{ content = "x", dst = "/etc/passwd" }]
"#,
    )
    .unwrap();
    assert_eq!(names(&p), ["etc/", "etc/passwd"]);
}

#[test]
fn symlinks_in_the_context_are_kept_never_followed() {
    let mut ctx = web();
    ctx.insert("link", MemoryNode::Symlink("web".into()));
    let p = plan_in(
        &ctx,
        "[[layers]]\nname = \"l\"\nfiles = [{ src = \"link\", dst = \"/l\" }]\n",
    )
    .unwrap();
    assert!(matches!(
        &p.layers[0].entries[0].kind,
        EntryKind::Symlink { target } if target == "web"
    ));
    let e = plan_in(
        &ctx,
        "[[layers]]\nname = \"l\"\nfiles = [{ src = \"link/index.html\", dst = \"/l\" }]\n",
    )
    .unwrap_err();
    assert!(matches!(e, PlanError::SrcThroughSymlink { .. }), "{e}");
}

#[test]
fn special_files_are_refused_naming_the_path() {
    let mut ctx = web();
    ctx.insert("web/pipe", MemoryNode::Other("a named pipe (FIFO)"));
    let e = plan_in(
        &ctx,
        "[[layers]]\nname = \"w\"\nfiles = [{ src = \"web\", dst = \"/w\" }]\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("`web/pipe`"), "{e}");
    assert!(e.to_string().contains("FIFO"), "{e}");
}

#[test]
fn equal_layers_are_shared_and_platform_dependent_ones_are_not() {
    let p = plan_in(
        &web(),
        r#"[[layers]]
name = "same"
files = [{ src = "web/index.html", dst = "/srv/" }]

[[layers]]
name = "arch"
files = [{ content = "{{ platform.arch }}", dst = "/arch" }]
"#,
    )
    .unwrap();
    assert_eq!(p.layers.len(), 3, "one shared layer and one per platform");
    assert_eq!(p.layers[0].platforms, ["linux/amd64", "linux/arm64"]);
    assert_eq!(p.images[0].layers, [0, 1]);
    assert_eq!(p.images[1].layers, [0, 2]);
}

#[test]
fn overrides_add_layers_and_merge_config_for_their_platform_only() {
    let p = plan_in(
        &web(),
        r#"[config]
env = { A = "1", B = "2" }
entrypoint = ["/app"]

[platform."linux/arm64"]
config = { env = { B = "arm" } }
[[platform."linux/arm64".layers]]
name = "extra"
files = [{ content = "arm", dst = "/extra" }]
"#,
    )
    .unwrap();
    let (amd, arm) = (&p.images[0], &p.images[1]);
    assert!(amd.layers.is_empty());
    assert_eq!(arm.layers.len(), 1);
    assert_eq!(amd.config.env["B"], "2");
    assert_eq!(arm.config.env["B"], "arm");
    assert_eq!(arm.config.env["A"], "1");
    assert_eq!(
        arm.config.entrypoint.as_deref(),
        Some(&["/app".to_string()][..])
    );
}

#[test]
fn platforms_come_from_the_base_when_not_declared() {
    let mut bases = MemoryBases::new();
    let image = |p: &str| (p.parse().unwrap(), BaseImage::scratch());
    bases.insert(
        "example.com/base:1",
        vec![image("linux/amd64"), image("linux/s390x")],
    );
    let file = SpecFile::parse(
        Path::new("image.toml"),
        "[image]\nbase = \"example.com/base:1\"\n".to_string(),
    )
    .unwrap();
    let ctx = MemoryContext::new();
    let sources = Sources {
        context: &ctx,
        bases: &bases,
    };
    let p = plan(&file, &PlanOptions::default(), sources).unwrap();
    let got: Vec<String> = p.images.iter().map(|i| i.platform.to_string()).collect();
    assert_eq!(got, ["linux/amd64", "linux/s390x"]);
}

#[test]
fn resolving_bases_reads_no_build_input() {
    let mut bases = MemoryBases::new();
    let image = |p: &str| (p.parse().unwrap(), BaseImage::scratch());
    bases.insert(
        "example.com/base:1",
        vec![image("linux/amd64"), image("linux/arm64")],
    );
    let file = spec(
        r#"[platform."linux/arm64"]
base = "example.com/base:1"

[[layers]]
name = "app"
files = [{ src = "target/release/app", dst = "/app" }]
"#,
    );
    let got = resolve_bases(&file, &PlanOptions::default(), &bases).unwrap();
    let refs: Vec<&str> = got.iter().map(|(_, b)| b.reference.as_str()).collect();
    assert_eq!(refs, ["scratch", "scratch"]);
    let e = plan_in(&MemoryContext::new(), &file.source[HEAD.len()..]).unwrap_err();
    assert!(matches!(e, PlanError::SrcNotFound { .. }), "{e}");
}

#[test]
fn tags_from_the_caller_replace_the_spec_and_are_checked() {
    let file = spec("");
    let ctx = MemoryContext::new();
    let bases = MemoryBases::new();
    let sources = Sources {
        context: &ctx,
        bases: &bases,
    };
    let opts = PlanOptions {
        tags: vec!["v1".into(), "v1".into(), "edge".into()],
        ..PlanOptions::default()
    };
    assert_eq!(plan(&file, &opts, sources).unwrap().tags, ["v1", "edge"]);
    let bad = PlanOptions {
        tags: vec!["-bad".into()],
        ..PlanOptions::default()
    };
    let e = plan(&file, &bad, sources).unwrap_err();
    assert!(matches!(e, PlanError::InvalidTag { .. }), "{e}");
}

/// The planner reads through the seam only: no module of `plan/` names a
/// filesystem API.
#[test]
fn plan_modules_name_no_filesystem_api() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/plan");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for api in [
            "std::fs",
            "walkdir",
            "fsx::",
            "File::",
            "read_dir",
            "canonicalize",
        ] {
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            assert!(!code.contains(api), "{} uses {api}", path.display());
        }
    }
}

#[test]
fn a_folder_and_a_file_at_one_path_name_both() {
    let e = plan_in(
        &web(),
        r#"[[layers]]
name = "x"
dirs = [{ path = "/x" }]
files = [{ content = "a", dst = "/x" }, { content = "b", dst = "/x-y" }]
"#,
    )
    .unwrap_err();
    // (`/x-y` sorts between the file's tar name `x` and the folder's `x/`.)
    assert!(
        matches!(&e, PlanError::DuplicateDst { path, .. } if path == "/x"),
        "{e}"
    );
    let PlanError::DuplicateDst {
        first, location, ..
    } = &e
    else {
        unreachable!()
    };
    assert_eq!((first.line, location.line), (5, 6));
}

#[test]
fn an_entry_below_a_file_is_found_across_names_that_sort_between() {
    // `/a-b` and `/a.c` sort between `/a` and `/a/x` by tar name; `/a/b` is
    // missing between the file `/a` and `/a/b/c`.
    for (extra, path, above, line_above) in [
        ("{ content = \"x\", dst = \"/a/x\" }", "/a/x", "/a", 6),
        ("{ content = \"c\", dst = \"/a/b/c\" }", "/a/b/c", "/a", 6),
    ] {
        let spec = format!(
            "[[layers]]\nname = \"x\"\nfiles = [\n  {{ content = \"a\", dst = \"/a\" }},\n  {{ content = \"ab\", dst = \"/a-b/f\" }},\n  {{ content = \"ac\", dst = \"/a.c\" }},\n  {extra},\n]\n"
        );
        let e = plan_in(&web(), &spec).unwrap_err();
        let PlanError::EntryBelowNonFolder {
            path: p,
            above: a,
            first,
            ..
        } = &e
        else {
            panic!("{e}");
        };
        assert_eq!(
            (p.as_str(), a.as_str(), first.line),
            (path, above, line_above),
            "{e}"
        );
    }
    // Below a folder, below a file: the file is named.
    let e = plan_in(
        &web(),
        r#"[[layers]]
name = "x"
dirs = [{ path = "/a" }]
files = [
  { content = "b", dst = "/a/b" },
  { content = "c", dst = "/a/b/c/d" },
]
"#,
    )
    .unwrap_err();
    assert!(
        matches!(&e, PlanError::EntryBelowNonFolder { above, .. } if above == "/a/b"),
        "{e}"
    );
}

#[test]
fn entries_come_in_tar_name_order_with_folders_before_their_content() {
    let p = plan_in(
        &web(),
        r#"[[layers]]
name = "x"
dirs = [{ path = "/a" }, { path = "/a/b" }]
files = [
  { content = "1", dst = "/a/b/z" },
  { content = "2", dst = "/a-b" },
  { content = "3", dst = "/a/b.c" },
  { content = "4", dst = "/a0" },
  { content = "5", dst = "/a/b/a" },
]
"#,
    )
    .unwrap();
    assert_eq!(
        names(&p),
        ["a-b", "a/", "a/b.c", "a/b/", "a/b/a", "a/b/z", "a0"]
    );
}
