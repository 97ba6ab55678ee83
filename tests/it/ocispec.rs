//! imgc's documents read back through the `oci-spec` crate's types: a second,
//! independent model of the OCI image spec agrees with what imgc wrote.

use crate::support::*;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

#[test]
fn documents_parse_with_oci_spec_types() {
    let (_tmp, dir) = copy_example("multi-arch");
    let out = dir.join("out");
    let digest = build(&dir.join("image.toml"), &out, &[]);
    let index = ImageIndex::from_file(blob_path(&out, &digest)).unwrap();
    assert_eq!(index.schema_version(), 2);
    let annotations = index.annotations().clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("org.opencontainers.image.created")
            .map(String::as_str),
        Some("2023-11-14T22:13:20Z")
    );
    let mut seen = Vec::new();
    for desc in index.manifests() {
        let platform = desc.platform().clone().expect("platform on every child");
        let manifest = ImageManifest::from_file(blob_path(&out, desc.digest().as_ref())).unwrap();
        let config =
            ImageConfiguration::from_file(blob_path(&out, manifest.config().digest().as_ref()))
                .unwrap();
        assert_eq!(config.architecture(), platform.architecture());
        assert_eq!(config.os(), platform.os());
        assert_eq!(config.rootfs().diff_ids().len(), manifest.layers().len());
        assert_eq!(config.created().as_deref(), Some("2023-11-14T22:13:20Z"));
        let cfg = config.config().clone().unwrap();
        assert_eq!(
            cfg.entrypoint().clone().unwrap(),
            vec!["/app/server".to_string()]
        );
        for layer in manifest.layers() {
            assert_eq!(
                layer.media_type().to_string(),
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
        }
        seen.push(platform.architecture().to_string());
    }
    assert_eq!(seen, ["amd64", "arm64"]);
}
