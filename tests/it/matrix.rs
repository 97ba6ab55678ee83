//! `imgc plan --matrix`: the CI matrix's shape, and the book's recipe (one
//! shard job per matrix entry, then one join job per spec) run locally
//! against a loopback registry, giving what one-machine builds give.

use crate::registry::skopeo_raw;
use crate::support::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// What GitHub Actions documents for `strategy.matrix` from `fromJSON`: an
/// object whose `include` is a list of objects with scalar values, at most
/// 256 jobs.
const GITHUB_MATRIX_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["include"],
  "additionalProperties": false,
  "properties": {
    "include": {
      "type": "array", "minItems": 1, "maxItems": 256,
      "items": {
        "type": "object",
        "required": ["spec", "platform", "shard"],
        "additionalProperties": { "type": ["string", "number", "boolean"] }
      }
    }
  }
}"#;

fn validate(doc: &str, schema: &str) {
    let tmp = tempdir();
    fs::write(tmp.path().join("doc.json"), doc).unwrap();
    fs::write(tmp.path().join("schema.json"), schema).unwrap();
    let script = "import json,sys,jsonschema\n\
        jsonschema.validate(json.load(open(sys.argv[2])), json.load(open(sys.argv[1])))\n";
    run(std::process::Command::new(python())
        .args(["-c", script])
        .arg(tmp.path().join("schema.json"))
        .arg(tmp.path().join("doc.json")));
}

/// Two example specs, named into the registry at `host`.
fn two_specs(host: &str) -> (tempfile::TempDir, Vec<PathBuf>) {
    let tmp = tempdir();
    let mut specs = Vec::new();
    for (example, repo) in [("multi-arch", "ma"), ("hello", "hello")] {
        let dir = tmp.path().join(example);
        copy_dir(&example_dir(example), &dir);
        let spec = dir.join("image.toml");
        let text = fs::read_to_string(&spec).unwrap();
        let old = format!("name = \"example.com/imgc/{example}\"");
        assert!(text.contains(&old));
        fs::write(
            &spec,
            text.replace(&old, &format!("name = \"{host}/{repo}\"")),
        )
        .unwrap();
        specs.push(spec);
    }
    (tmp, specs)
}

fn matrix(env: &Env, specs: &[PathBuf], extra: &[&str]) -> String {
    run(env
        .imgc()
        .args(["plan", "--matrix"])
        .args(extra)
        .args(specs))
}

#[test]
fn the_matrix_has_one_job_per_spec_and_platform_in_the_documented_shapes() {
    let env = Env::new();
    let (_t, specs) = two_specs("127.0.0.1:5000");
    let text = matrix(&env, &specs, &[]);
    validate(&text, GITHUB_MATRIX_SCHEMA);
    let v: Value = serde_json::from_str(&text).unwrap();
    let jobs: Vec<(String, String)> = v["include"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["spec"].as_str().unwrap().to_string(),
                j["platform"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut want = Vec::new();
    for s in &specs {
        for p in ["linux/amd64", "linux/arm64"] {
            want.push((s.display().to_string(), p.to_string()));
        }
    }
    assert_eq!(jobs, want);
    let shards: std::collections::BTreeSet<&str> = v["include"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["shard"].as_str().unwrap())
        .collect();
    assert_eq!(shards.len(), 4, "shard ids are distinct: {shards:?}");
    assert!(shards
        .iter()
        .all(|s| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')));

    let gitlab: Value =
        serde_json::from_str(&matrix(&env, &specs, &["--matrix-format", "gitlab"])).unwrap();
    let entries = gitlab["parallel"]["matrix"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        entries[0]["PLATFORM"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );

    // `--platform` narrows every spec's jobs.
    let one: Value =
        serde_json::from_str(&matrix(&env, &specs, &["--platform", "linux/arm64"])).unwrap();
    assert_eq!(one["include"].as_array().unwrap().len(), 2);
}

/// The book's recipe (book/src/registries.md, "A CI matrix"), run here:
/// a shard job per matrix entry, then a join job per spec.
#[test]
fn the_matrix_recipe_shards_and_joins_to_one_machine_digests() {
    let reg = Registry::start();
    let host = reg.host_port();
    let env = Env::new();
    let (tmp, specs) = two_specs(&host);
    let v: Value = serde_json::from_str(&matrix(&env, &specs, &[])).unwrap();
    let shards = tmp.path().join("shards");
    // Each shard runs on a machine of its own (an empty store, an empty
    // working folder), as the recipe's jobs do; a second run of the
    // pipeline takes every layer from the cache repository.
    let cache = format!("{host}/cache");
    for pass in 0..2 {
        for job in v["include"].as_array().unwrap() {
            let s = |k: &str| job[k].as_str().unwrap().to_string();
            let folder = shards.join(Path::new(&s("name")).file_name().unwrap());
            fs::create_dir_all(&folder).unwrap();
            let machine = Env::new();
            let out = output(
                machine
                    .imgc()
                    .current_dir(machine.path(""))
                    .args(["build", &s("spec"), "--platform", &s("platform")])
                    .args(["--cache-repo", &cache, "--push-by-digest"])
                    .arg("--metadata-file")
                    .arg(folder.join(format!("{}.json", s("shard"))))
                    .args(insecure(&host)),
            );
            assert!(out.status.success(), "{}", stderr(&out));
            assert!(
                !machine.path("imgc-out").exists(),
                "a shard keeps no layout"
            );
            let err = stderr(&out);
            let layers: Vec<&str> = err.lines().filter(|l| l.starts_with("  layer ")).collect();
            assert!(!layers.is_empty(), "{err}");
            if pass == 1 {
                assert!(layers.iter().all(|l| l.contains("(cache repo")), "{err}");
            }
        }
    }
    let mut joined = BTreeMap::new();
    for repo in ["ma", "hello"] {
        let out = run(env
            .imgc()
            .args(["index", "--from"])
            .arg(shards.join(repo))
            .args(["--tag", &format!("{host}/{repo}:ci")])
            .args(insecure(&host)));
        joined.insert(repo, digest_line(&out));
    }
    for (spec, repo) in specs.iter().zip(["ma", "hello"]) {
        let one = build(spec, &tmp.path().join(format!("one-{repo}")), &[]);
        assert_eq!(joined[repo], one, "{repo}");
        let raw = skopeo_raw(&format!("{host}/{repo}:ci"), &["--tls-verify=false"]);
        assert_eq!(sha256_digest(&raw), one, "{repo} in the registry");
    }
}
