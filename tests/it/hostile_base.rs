//! Hostile base layouts (issue 7, group "base layout"): documents and
//! blobs that are FIFOs or symlinks to devices, descriptors whose size
//! lies, nested indexes that fan out or nest too deep, an `oci-layout`
//! of another version. Each ends fast with an error naming the file, and
//! bounded memory; nothing is written.

use crate::support::*;
use serde_json::{json, Value};
use std::fs;
use std::path::PathBuf;

/// A copy of the multi-arch example's base layout and a spec on it.
struct Base {
    _t: tempfile::TempDir,
    dir: PathBuf,
    layout: PathBuf,
}

impl Base {
    fn new() -> Base {
        let t = tempdir();
        let dir = t.path().join("ctx");
        let layout = dir.join("base");
        copy_dir(&example_dir("multi-arch").join("base"), &layout);
        Base { _t: t, dir, layout }
    }

    /// A spec on `oci:base:<tag>` for linux/amd64.
    fn spec(&self, tag: &str) -> PathBuf {
        let path = self.dir.join("image.toml");
        fs::write(
            &path,
            format!(
                "[image]\nbase = \"oci:base:{tag}\"\nplatforms = [\"linux/amd64\"]\n\
                 [[layers]]\nname = \"a\"\nfiles = [{{ content = \"x\", dst = \"/x\" }}]\n"
            ),
        )
        .unwrap();
        path
    }

    fn blob(&self, digest: &str) -> PathBuf {
        blob_path(&self.layout, digest)
    }

    /// The tag's descriptor in index.json.
    fn entry(&self, tag: &str) -> Value {
        index_entries(&self.layout)
            .into_iter()
            .find(|d| d["annotations"][REF_NAME] == tag)
            .unwrap()
    }

    /// Writes a JSON document as a blob; returns its descriptor.
    fn put(&self, media_type: &str, doc: &Value) -> Value {
        let bytes = serde_json::to_vec(doc).unwrap();
        let digest = write_blob(&self.layout, &bytes);
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    /// Points `tag` at `desc` in index.json (replacing or adding it).
    fn tag(&self, tag: &str, desc: &Value) {
        let path = self.layout.join("index.json");
        let mut index = read_json(&path);
        let list = index["manifests"].as_array_mut().unwrap();
        list.retain(|d| d["annotations"][REF_NAME] != tag);
        let mut d = desc.clone();
        d["annotations"] = json!({ REF_NAME: tag });
        list.push(d);
        fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
    }

    /// The amd64 manifest's descriptor (with its platform) and document.
    fn amd64(&self) -> (Value, Value) {
        let d = self.entry("1.0-amd64");
        let m = read_blob_json(&self.layout, d["digest"].as_str().unwrap());
        let mut with_platform = d.clone();
        with_platform.as_object_mut().unwrap().remove("annotations");
        with_platform["platform"] = json!({"os": "linux", "architecture": "amd64"});
        (with_platform, m)
    }

    /// Builds `tag` and expects a failure within the limits naming `needles`.
    fn refused(&self, tag: &str, needles: &[&str]) -> String {
        let out = self.dir.join("out");
        let err = refused_fast(
            imgc()
                .arg("build")
                .arg(self.spec(tag))
                .arg("--output")
                .arg(oci_arg(&out)),
            needles,
        );
        assert!(!out.exists(), "an output was written");
        err
    }
}

#[test]
fn fifos_in_a_base_layout_are_refused_without_hanging() {
    let b = Base::new();
    mkfifo(&b.layout.join("index.json"));
    b.refused("1.0-amd64", &["index.json", "named pipe"]);

    let b = Base::new();
    let manifest = b.entry("1.0-amd64")["digest"].as_str().unwrap().to_string();
    mkfifo(&b.blob(&manifest));
    b.refused("1.0-amd64", &[&manifest[7..], "named pipe"]);

    let b = Base::new();
    let (_, m) = b.amd64();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    mkfifo(&b.blob(&layer));
    b.refused("1.0-amd64", &[&layer[7..], "named pipe"]);
}

#[test]
fn a_layer_blob_that_is_a_symlink_to_dev_zero_is_refused() {
    let b = Base::new();
    let (_, m) = b.amd64();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    fs::remove_file(b.blob(&layer)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", b.blob(&layer)).unwrap();
    b.refused("1.0-amd64", &[&layer[7..], "symbolic link"]);
}

#[test]
fn a_descriptor_whose_size_lies_is_refused_naming_the_blob() {
    let b = Base::new();
    let (_, mut m) = b.amd64();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let size = m["layers"][0]["size"].as_u64().unwrap();
    m["layers"][0]["size"] = json!(size + 1);
    let d = b.put(MT_MANIFEST, &m);
    b.tag("lying", &d);
    let err = b.refused("lying", &[&layer[7..], &format!("{} bytes", size + 1)]);
    assert!(
        err.contains(&format!("found {layer}, {size} bytes")),
        "{err}"
    );
    // A smaller size than the blob's: also refused, never cut short.
    m["layers"][0]["size"] = json!(size - 1);
    let d = b.put(MT_MANIFEST, &m);
    b.tag("lying", &d);
    b.refused("lying", &[&layer[7..], "or more"]);
}

/// An index listing `children` (descriptors).
fn index_of(children: Vec<Value>, note: usize) -> Value {
    json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": children,
           "annotations": {"n": note.to_string()}})
}

#[test]
fn nested_indexes_that_fan_out_resolve_fast_and_too_deep_or_too_many_are_refused() {
    let b = Base::new();
    let (manifest, _) = b.amd64();
    // Five levels, each listing the next 150 times: read once each.
    let mut child = b.put(MT_INDEX, &index_of(vec![manifest.clone(); 150], 5));
    for level in (1..5).rev() {
        child = b.put(MT_INDEX, &index_of(vec![child; 150], level));
    }
    b.tag("fan", &child);
    let out = b.dir.join("fan-out");
    let m = measured(
        imgc()
            .arg("build")
            .arg(b.spec("fan"))
            .arg("--output")
            .arg(oci_arg(&out)),
        HOSTILE_LIMIT * 4,
    );
    assert!(m.out.status.success(), "{}", stderr(&m.out));
    assert!(
        m.elapsed < HOSTILE_LIMIT && m.max_rss < HOSTILE_MAX_RSS,
        "{:?}",
        m.elapsed
    );

    // Six levels: the depth limit, said as such.
    let mut child = b.put(MT_INDEX, &index_of(vec![manifest.clone()], 6));
    for level in (1..6).rev() {
        child = b.put(MT_INDEX, &index_of(vec![child], level));
    }
    b.tag("deep", &child);
    b.refused("deep", &["depth limit", "4 levels"]);

    // A hundred distinct indexes: the document budget.
    let leaves: Vec<Value> = (0..100)
        .map(|i| {
            let mut d = b.put(MT_INDEX, &index_of(vec![manifest.clone()], 1000 + i));
            d["platform"] = json!({"os": "linux", "architecture": "amd64"});
            d
        })
        .collect();
    let top = b.put(MT_INDEX, &index_of(leaves, 0));
    b.tag("many", &top);
    b.refused("many", &["document budget", "64"]);
}

#[test]
fn an_oci_layout_file_of_another_version_is_refused() {
    for (content, needle) in [
        (r#"{"imageLayoutVersion":"2.0.0"}"#, "not 1.x.x"),
        ("not json", "not JSON"),
        ("{}", "no `imageLayoutVersion`"),
    ] {
        let b = Base::new();
        fs::write(b.layout.join("oci-layout"), content).unwrap();
        b.refused("1.0-amd64", &["oci-layout", needle]);
    }
}
