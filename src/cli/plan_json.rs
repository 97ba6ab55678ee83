//! `imgc plan --format json`: the plan written as it is serialized, one
//! entry at a time, never built as a JSON tree in memory (100k entries
//! took 357 MB that way). Keys are in alphabetical order, as the tree's
//! sorted maps gave them: the output is unchanged.

use imgc::plan::{Entry, EntryKind, FileSource, ImagePlan, LayerNode, Plan};
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;

/// Writes the plan as pretty JSON and a newline.
pub fn write(plan: &Plan, out: impl Write) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let doc = Doc {
        compression: plan.codec.format_id().to_string(),
        created: imgc::oci::rfc3339(plan.epoch),
        epoch: plan.epoch,
        images: Images(&plan.images),
        index_annotations: &plan.index_annotations,
        layers: Layers(&plan.layers),
        media_types: format!("{:?}", plan.media_types).to_lowercase(),
        name: &plan.name,
        tags: &plan.tags,
    };
    serde_json::to_writer_pretty(&mut out, &doc).map_err(std::io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Serializes `items` as a sequence, each one through `doc`.
fn seq<'a, Z: Serializer, T, D: Serialize>(
    s: Z,
    items: &'a [T],
    doc: impl Fn(&'a T) -> D,
) -> Result<Z::Ok, Z::Error> {
    let mut seq = s.serialize_seq(Some(items.len()))?;
    for item in items {
        seq.serialize_element(&doc(item))?;
    }
    seq.end()
}

struct Images<'a>(&'a [ImagePlan]);
struct Layers<'a>(&'a [LayerNode]);
struct Entries<'a>(&'a [Entry]);

impl Serialize for Images<'_> {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        seq(s, self.0, image)
    }
}

impl Serialize for Layers<'_> {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        seq(s, self.0, layer)
    }
}

impl Serialize for Entries<'_> {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        seq(s, self.0, entry)
    }
}

#[derive(Serialize)]
struct Doc<'a> {
    compression: String,
    created: String,
    epoch: u64,
    images: Images<'a>,
    index_annotations: &'a BTreeMap<String, String>,
    layers: Layers<'a>,
    media_types: String,
    name: &'a Option<String>,
    tags: &'a [String],
}

#[derive(Serialize)]
struct LayerDoc<'a> {
    bytes: u64,
    entries: Entries<'a>,
    key: &'a str,
    name: &'a str,
    platforms: &'a [String],
}

fn layer(l: &LayerNode) -> LayerDoc<'_> {
    LayerDoc {
        bytes: l.content_bytes(),
        entries: Entries(&l.entries),
        key: &l.key,
        name: &l.name,
        platforms: &l.platforms,
    }
}

#[derive(Serialize)]
struct EntryDoc<'a> {
    detail: Detail<'a>,
    kind: &'static str,
    mode: String,
    owner: String,
    path: String,
}

/// What an entry's `detail` says: nothing (a folder), a symlink's target,
/// or a file's source and size.
#[derive(Serialize)]
#[serde(untagged)]
enum Detail<'a> {
    None,
    Target(&'a str),
    Context { size: u64, src: &'a str },
    Inline { inline: bool, size: u64 },
}

fn entry(e: &Entry) -> EntryDoc<'_> {
    let (kind, detail) = match &e.kind {
        EntryKind::Dir => ("dir", Detail::None),
        EntryKind::Symlink { target } => ("symlink", Detail::Target(target)),
        EntryKind::File { source, size } => (
            "file",
            match source {
                FileSource::Context { rel, .. } => Detail::Context {
                    size: *size,
                    src: rel,
                },
                FileSource::Inline(_) => Detail::Inline {
                    inline: true,
                    size: *size,
                },
            },
        ),
    };
    EntryDoc {
        detail,
        kind,
        mode: format!("{:04o}", e.mode),
        owner: format!("{}:{}", e.uid, e.gid),
        path: format!("/{}", e.path),
    }
}

#[derive(Serialize)]
struct ImageDoc<'a> {
    annotations: &'a BTreeMap<String, String>,
    base: &'a str,
    base_layers: usize,
    base_manifest: Option<String>,
    layers: &'a [usize],
    platform: String,
}

fn image(i: &ImagePlan) -> ImageDoc<'_> {
    ImageDoc {
        annotations: &i.annotations,
        base: &i.base.reference,
        base_layers: i.base.layers.len(),
        base_manifest: i.base.manifest.as_ref().map(|d| d.digest.to_string()),
        layers: &i.layers,
        platform: i.platform.to_string(),
    }
}
