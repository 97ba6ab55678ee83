//! The layer key: the sha256 of the layer's canonical JSON description
//! (name, epoch, codec and every entry; see "Layer identity" in the book).
//! The JSON is the one serde_json writes for the description (sorted keys,
//! no spaces), written here by hand and hashed as it is written: a no-op
//! rebuild makes a key for every entry of the tree, and serde's way cost
//! about 2 ms more of it on a 9k-file tree. A test holds the two byte for
//! byte equal, on names that need escaping too.

use super::{Entry, EntryKind, FileSource};
use crate::oci::Codec;
use sha2::{Digest as _, Sha256};

/// Bytes written before they are hashed.
const CHUNK: usize = 16 * 1024;

/// The sha256 (hex) of the layer's canonical JSON description.
pub(super) fn layer_key(name: &str, entries: &[Entry], epoch: u64, codec: Codec) -> String {
    let mut w = KeyWriter {
        sha: Sha256::new(),
        buf: Vec::with_capacity(CHUNK + 1024),
    };
    w.raw(b"{\"codec\":");
    w.string(codec.format_id());
    w.raw(b",\"entries\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            w.raw(b",");
        }
        w.entry(e);
    }
    w.raw(b"],\"epoch\":");
    w.number(epoch);
    w.raw(b",\"name\":");
    w.string(name);
    w.raw(b"}");
    w.sha.update(&w.buf);
    hex::encode(w.sha.finalize())
}

/// Writes JSON into a buffer, hashed a chunk at a time.
struct KeyWriter {
    sha: Sha256,
    buf: Vec<u8>,
}

impl KeyWriter {
    fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK {
            self.sha.update(&self.buf);
            self.buf.clear();
        }
    }

    /// A number, in decimal.
    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.raw(&digits[at..]);
    }

    /// `"` `prefix` `s` `"`, escaped as serde_json escapes.
    fn prefixed(&mut self, prefix: &str, s: &str) {
        if needs_escape(prefix) || needs_escape(s) {
            let whole = format!("{prefix}{s}");
            // Writing a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut self.buf, &whole);
            return self.raw(b"");
        }
        self.raw(b"\"");
        self.raw(prefix.as_bytes());
        self.raw(s.as_bytes());
        self.raw(b"\"");
    }

    fn string(&mut self, s: &str) {
        self.prefixed("", s);
    }

    fn entry(&mut self, e: &Entry) {
        let (kind, size) = match &e.kind {
            EntryKind::Dir => ("dir", 0),
            EntryKind::Symlink { .. } => ("symlink", 0),
            EntryKind::File { size, .. } => ("file", *size),
        };
        self.raw(b"{\"gid\":");
        self.number(u64::from(e.gid));
        self.raw(b",\"kind\":\"");
        self.raw(kind.as_bytes());
        self.raw(b"\",\"mode\":");
        self.number(u64::from(e.mode));
        self.raw(b",\"path\":");
        self.string(&e.path);
        self.raw(b",\"size\":");
        self.number(size);
        self.raw(b",\"source\":");
        match &e.kind {
            EntryKind::Dir => self.string(""),
            EntryKind::Symlink { target } => self.string(target),
            EntryKind::File { source, .. } => match source {
                FileSource::Context { rel, .. } => self.prefixed("context:", rel),
                FileSource::Inline(b) => {
                    self.prefixed("inline:", &hex::encode(Sha256::digest(b)));
                }
            },
        }
        self.raw(b",\"uid\":");
        self.number(u64::from(e.uid));
        self.raw(b"}");
    }
}

/// Whether serde_json would escape a byte of `s`: a quote, a backslash or
/// a control character below 0x20.
fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::sources::Stamp;
    use serde::Serialize;

    /// The layer key's document as serde writes it: the reference.
    #[derive(Serialize)]
    struct Doc<'a> {
        codec: &'a str,
        entries: Vec<DocEntry>,
        epoch: u64,
        name: &'a str,
    }

    #[derive(Serialize)]
    struct DocEntry {
        gid: u32,
        kind: &'static str,
        mode: u32,
        path: String,
        size: u64,
        source: String,
        uid: u32,
    }

    fn reference(name: &str, entries: &[Entry], epoch: u64, codec: Codec) -> String {
        let entries = entries
            .iter()
            .map(|e| {
                let (kind, size, source) = match &e.kind {
                    EntryKind::Dir => ("dir", 0, String::new()),
                    EntryKind::Symlink { target } => ("symlink", 0, target.clone()),
                    EntryKind::File { source, size } => (
                        "file",
                        *size,
                        match source {
                            FileSource::Context { rel, .. } => format!("context:{rel}"),
                            FileSource::Inline(b) => {
                                format!("inline:{}", hex::encode(Sha256::digest(b)))
                            }
                        },
                    ),
                };
                DocEntry {
                    gid: e.gid,
                    kind,
                    mode: e.mode,
                    path: e.path.clone(),
                    size,
                    source,
                    uid: e.uid,
                }
            })
            .collect();
        let doc = Doc {
            codec: codec.format_id(),
            entries,
            epoch,
            name,
        };
        hex::encode(Sha256::digest(serde_json::to_vec(&doc).unwrap()))
    }

    fn entry(path: &str, kind: EntryKind, mode: u32, owner: u32) -> Entry {
        Entry {
            path: path.to_string(),
            kind,
            mode,
            uid: owner,
            gid: owner.wrapping_mul(7),
        }
    }

    fn file(rel: &str, size: u64) -> EntryKind {
        EntryKind::File {
            source: FileSource::Context {
                rel: rel.to_string(),
                id: (1, 2),
                stamp: Stamp::default(),
            },
            size,
        }
    }

    #[test]
    fn the_key_is_the_sha256_of_what_serde_json_writes_byte_for_byte() {
        let odd = "q\"uote\\back\tslash\n\u{1}\u{1f}\u{7f}é€😀/end";
        let mut entries = vec![
            entry("app", EntryKind::Dir, 0o755, 0),
            entry("app/x", file("src/x", 0), 0o644, 1000),
            entry(odd, file(odd, u64::MAX), u32::MAX, u32::MAX),
            entry("l", EntryKind::Symlink { target: odd.into() }, 0o777, 65534),
            entry(
                "in",
                EntryKind::File {
                    source: FileSource::Inline(b"inline bytes".to_vec()),
                    size: 12,
                },
                0o4755,
                3,
            ),
        ];
        // Enough entries to cross several hashing chunks.
        for i in 0..2000 {
            entries.push(entry(
                &format!("many/f{i}"),
                file(&format!("m/{i}"), i),
                0o600,
                i as u32,
            ));
        }
        for codec in [Codec::Gzip, Codec::Zstd, Codec::None] {
            for (name, epoch) in [("app", 0), (odd, 1_700_000_000), ("", u64::MAX)] {
                assert_eq!(
                    layer_key(name, &entries, epoch, codec),
                    reference(name, &entries, epoch, codec),
                    "{name:?} {epoch} {codec:?}"
                );
            }
        }
        assert_eq!(
            layer_key("e", &[], 0, Codec::Gzip),
            reference("e", &[], 0, Codec::Gzip)
        );
    }
}
