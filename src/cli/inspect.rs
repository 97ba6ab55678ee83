//! `imgc inspect`: an image or index from a layout or a registry, with
//! every platform's config and history, as text or JSON.

use super::registry::{client, layout_arg, parse_ref, RegistryArgs};
use super::{human, parse_platform, Failure, Format};
use clap::Args;
use imgc::inspect::{ImageInfo, Inspection, LayoutDocuments};
use imgc::oci::{Descriptor, Platform};
use imgc::registry::pull::RegistryDocuments;
use std::io::Write;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// REGISTRY/REPO[:TAG|@DIGEST] or oci:DIR[:TAG][@DIGEST].
    #[arg(value_name = "REF")]
    reference: String,
    /// Show only this platform's image (os/arch[/variant]; repeatable).
    #[arg(long = "platform", value_name = "PLATFORM", value_parser = parse_platform)]
    platforms: Vec<Platform>,
    /// Output format (`json` follows the schema `imgc schema inspect` prints).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Print the top document's exact bytes instead.
    #[arg(long, conflicts_with_all = ["format", "platforms"])]
    raw: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn cmd_inspect(args: InspectArgs) -> Result<(), Failure> {
    let inspected = if args.reference.starts_with("oci:") {
        let (dir, top) = layout_arg(&args.reference)?;
        let docs = LayoutDocuments { dir: &dir };
        let bytes = imgc::inspect::Fetch::fetch(&docs, &top).map_err(Failure::from)?;
        if args.raw {
            return raw(&bytes);
        }
        imgc::inspect::inspect(&args.reference, &top, &bytes, &docs, &args.platforms)
    } else {
        let r = parse_ref(&args.reference)?;
        let client = client(&args.registry, None, true)?;
        let m = client.get_manifest(&r)?;
        if args.raw {
            return raw(&m.bytes);
        }
        let top = Descriptor::new(m.media_type.clone(), m.digest.clone(), m.bytes.len() as u64);
        let docs = RegistryDocuments {
            client: &client,
            reference: &r,
        };
        imgc::inspect::inspect(&args.reference, &top, &m.bytes, &docs, &args.platforms)
    };
    let inspection = inspected.map_err(Failure::from)?;
    let text = match args.format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&inspection).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Text => text(&inspection),
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(())
}

fn raw(bytes: &[u8]) -> Result<(), Failure> {
    let _ = std::io::stdout().lock().write_all(bytes);
    Ok(())
}

/// The summary: the top document, then each image's config, layers and
/// history, one fact per line.
fn text(i: &Inspection) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<12}{v}\n"));
    line("digest", &i.digest);
    line("media type", &i.media_type);
    line("size", &human(i.size));
    for (k, v) in &i.annotations {
        line("annotation", &format!("{k}={v}"));
    }
    for image in &i.images {
        out.push('\n');
        out.push_str(&image_text(image));
    }
    out
}

fn image_text(m: &ImageInfo) -> String {
    let mut out = format!("{}  {}  ({})\n", m.platform, m.digest, human(m.size));
    let mut line = |k: &str, v: &str| out.push_str(&format!("  {k:<12}{v}\n"));
    let c = &m.config;
    let list = |v: &Option<Vec<String>>| v.as_ref().map(|v| format!("{v:?}"));
    let facts = [
        ("user", c.user.clone()),
        ("entrypoint", list(&c.entrypoint)),
        ("cmd", list(&c.cmd)),
        ("workdir", c.working_dir.clone()),
        ("stop signal", c.stop_signal.clone()),
        ("created", c.created.clone()),
    ];
    for (k, v) in facts {
        if let Some(v) = v {
            line(k, &v);
        }
    }
    let many = [
        ("env", c.env.clone()),
        ("ports", c.exposed_ports.clone()),
        ("volumes", c.volumes.clone()),
        (
            "label",
            c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        ),
        (
            "annotation",
            m.annotations
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
    ];
    for (k, values) in many {
        for v in values {
            line(k, &v);
        }
    }
    for l in &m.layers {
        line("layer", &format!("{}  {}", l.digest, human(l.size)));
    }
    for h in &m.history {
        let what = h
            .created_by
            .as_deref()
            .or(h.comment.as_deref())
            .unwrap_or("-");
        let empty = if h.empty_layer { " (no layer)" } else { "" };
        line("history", &format!("{what}{empty}"));
    }
    out
}
