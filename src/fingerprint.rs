//! The fingerprint cache: what each file of a build context held when imgc
//! last read it, so that a rebuild knows an unchanged file's content digest
//! without reading it. A fingerprint is the file's device, inode, size,
//! modification and status-change times (nanoseconds) and mode; it maps to
//! the sha256 of the bytes read. One table per context (by its canonical
//! path) lives in the local store: `<store>/fingerprints/v<FORMAT>/<hash>`.
//!
//! Racy files are never fingerprinted, as git does with its index: a file
//! whose mtime or ctime is not older than the moment its read began (less
//! a margin for the clock's and the filesystem's timestamp granularity)
//! could be changed again within the same timestamp tick after it was read,
//! and the stamp would not show it. Such a file is read again next time;
//! once it has settled, its fingerprint is kept.
//!
//! The table is a cache, never an authority on anything but the user's own
//! files: a missing, damaged or foreign table is ignored (everything is
//! read again), and a failure to save it never fails a build.

use crate::oci::Digest;
use crate::plan::sources::Stamp;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The version of the table's format; a change makes a new folder.
pub const FINGERPRINT_FORMAT: u32 = 1;

/// The largest table read (about 2 million files).
const MAX_TABLE_BYTES: u64 = 256 << 20;

/// Rows kept across builds: beyond this, only the files of the last build
/// are written (files deleted long ago do not pile up for ever).
const MAX_ROWS: usize = 1_000_000;

/// How far a stamp must lie before the read began to be trusted, when the
/// filesystem keeps nanoseconds (covers the kernel's coarse clock, which
/// stamps files up to a scheduler tick late).
const MARGIN_FINE_NS: i64 = 100_000_000;

/// The same for a filesystem that keeps whole seconds (a ctime without
/// nanoseconds): FAT keeps two-second mtimes.
const MARGIN_COARSE_NS: i64 = 2_000_000_000;

const HEADER: &str = "imgc-fingerprints 1\n";

/// What identifies a file's state without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Print {
    /// Device and inode.
    pub id: (u64, u64),
    /// Size in bytes.
    pub size: u64,
    /// Times and mode.
    pub stamp: Stamp,
}

/// Whether a file with `stamp`, read from `read_began_ns` on (nanoseconds
/// since the epoch, this machine's clock), has settled: no change after
/// the read could leave the same stamp.
pub fn settled(stamp: &Stamp, read_began_ns: i64) -> bool {
    if stamp.mtime_ns == 0 && stamp.ctime_ns == 0 {
        return false;
    }
    let margin = if stamp.ctime_ns % 1_000_000_000 == 0 {
        MARGIN_COARSE_NS
    } else {
        MARGIN_FINE_NS
    };
    let limit = read_began_ns.saturating_sub(margin);
    stamp.mtime_ns < limit && stamp.ctime_ns < limit
}

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

type Row = (Print, [u8; 32]);

/// One context's fingerprint table.
#[derive(Debug)]
pub struct Fingerprints {
    path: PathBuf,
    /// Whether the table was there (the context was built before).
    existed: bool,
    /// The table's rows, read on the first lookup (a rebuild that finds
    /// every layer by its recipe key never reads them).
    known: std::sync::OnceLock<BTreeMap<String, Row>>,
    /// Rows this build recorded that the table did not hold: the table is
    /// written only when there are some (or there was no table).
    recorded: Mutex<BTreeMap<String, Row>>,
}

impl Fingerprints {
    /// The table of the context at `context_root` (canonical), in the store
    /// folder `store`; empty when there is none or it cannot be read.
    pub fn open(store: &Path, context_root: &Path) -> Fingerprints {
        use sha2::Digest as _;
        let name = hex::encode(sha2::Sha256::digest(
            context_root.as_os_str().as_encoded_bytes(),
        ));
        let path = store
            .join("fingerprints")
            .join(format!("v{FINGERPRINT_FORMAT}"))
            .join(name);
        Fingerprints {
            existed: std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()),
            path,
            known: std::sync::OnceLock::new(),
            recorded: Mutex::new(BTreeMap::new()),
        }
    }

    /// The rows of the table, read once (none if it cannot be read).
    fn known(&self) -> &BTreeMap<String, Row> {
        self.known.get_or_init(|| {
            crate::fsx::read_bounded(&self.path, MAX_TABLE_BYTES, crate::fsx::Links::Refuse)
                .ok()
                .and_then(|bytes| parse(&bytes))
                .unwrap_or_default()
        })
    }

    /// Whether there was no table (a first build of this context, or one
    /// written by another format).
    pub fn is_new(&self) -> bool {
        !self.existed
    }

    /// The content digest of the file at `rel` if its fingerprint is
    /// `print`, as recorded.
    pub fn lookup(&self, rel: &str, print: &Print) -> Option<Digest> {
        let row = self.known().get(rel).filter(|(p, _)| p == print)?;
        Digest::from_hex(&hex::encode(row.1)).ok()
    }

    /// Records that the file at `rel`, read from `read_began_ns` on with
    /// fingerprint `print` before and after, held `digest`; a racy file
    /// (see [`settled`]) is not recorded.
    pub fn record(&self, rel: &str, print: &Print, digest: &Digest, read_began_ns: i64) {
        if !settled(&print.stamp, read_began_ns) || rel.contains('\n') {
            return;
        }
        let mut sha = [0u8; 32];
        if hex::decode_to_slice(digest.hex(), &mut sha).is_err() {
            return;
        }
        let row = (*print, sha);
        if self.existed && self.known().get(rel) == Some(&row) {
            return;
        }
        self.lock().insert(rel.to_string(), row);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Row>> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the table, if this build recorded anything new: its rows,
    /// and the others it knew (unless there are too many), under a
    /// temporary name then renamed.
    pub fn save(&self) -> io::Result<()> {
        let recorded = self.lock();
        if self.existed && recorded.is_empty() {
            return Ok(());
        }
        let mut rows: BTreeMap<&str, &Row> =
            recorded.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let known = self.known();
        if known.len() + recorded.len() <= MAX_ROWS {
            for (k, v) in known {
                rows.entry(k.as_str()).or_insert(v);
            }
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{}.{}.new",
            std::process::id(),
            crate::fsx::unique()
        ));
        let _ = fs::remove_file(&tmp);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let mut out = io::BufWriter::new(file);
        out.write_all(HEADER.as_bytes())?;
        for (rel, (p, sha)) in rows {
            let s = &p.stamp;
            writeln!(
                out,
                "{} {} {} {} {} {} {}\t{rel}",
                hex::encode(sha),
                p.id.0,
                p.id.1,
                p.size,
                s.mtime_ns,
                s.ctime_ns,
                s.mode
            )?;
        }
        out.into_inner().map_err(|e| e.into_error())?;
        fs::rename(&tmp, &self.path)
    }
}

/// The rows of a table; a line that does not parse is skipped, and a table
/// of another header is none.
fn parse(bytes: &[u8]) -> Option<BTreeMap<String, Row>> {
    let body = bytes.strip_prefix(HEADER.as_bytes())?;
    let text = std::str::from_utf8(body).ok()?;
    Some(text.lines().take(MAX_ROWS).filter_map(parse_row).collect())
}

fn parse_row(line: &str) -> Option<(String, Row)> {
    let (fields, rel) = line.split_once('\t')?;
    let mut f = fields.split(' ');
    let mut sha = [0u8; 32];
    hex::decode_to_slice(f.next()?, &mut sha).ok()?;
    let mut num = || f.next()?.parse::<i128>().ok();
    let (dev, ino, size, mtime, ctime, mode) = (num()?, num()?, num()?, num()?, num()?, num()?);
    let print = Print {
        id: (u64::try_from(dev).ok()?, u64::try_from(ino).ok()?),
        size: u64::try_from(size).ok()?,
        stamp: Stamp {
            mtime_ns: i64::try_from(mtime).ok()?,
            ctime_ns: i64::try_from(ctime).ok()?,
            mode: u32::try_from(mode).ok()?,
        },
    };
    (!rel.is_empty()).then(|| (rel.to_string(), (print, sha)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000_000;

    fn stamp(mtime_ns: i64, ctime_ns: i64) -> Stamp {
        Stamp {
            mtime_ns,
            ctime_ns,
            mode: 0o100644,
        }
    }

    #[test]
    fn a_file_changed_near_its_read_is_racy() {
        let began = 1_700_000_000 * SEC + 500_000_000;
        // Long settled.
        assert!(settled(
            &stamp(began - 10 * SEC, began - 5 * SEC + 7),
            began
        ));
        // Changed in the same tick as the read, or after it began.
        assert!(!settled(&stamp(began - 10 * SEC, began + 3), began));
        assert!(!settled(&stamp(began, began - 10 * SEC + 1), began));
        // Within the margin of the clock's granularity.
        assert!(!settled(
            &stamp(began - 50_000_000, began - 50_000_000),
            began
        ));
        // A filesystem of whole seconds gets two seconds of margin.
        assert!(!settled(
            &stamp(began - SEC, began - SEC - 500_000_000),
            began
        ));
        assert!(settled(
            &stamp(began - 3 * SEC, began - 3 * SEC - 500_000_000),
            began
        ));
        // Unknown stamps (a memory context) are never trusted.
        assert!(!settled(&Stamp::default(), began));
    }

    fn print(ino: u64, mtime_ns: i64) -> Print {
        Print {
            id: (1, ino),
            size: 5,
            stamp: stamp(mtime_ns, mtime_ns + 1),
        }
    }

    #[test]
    fn rows_round_trip_and_only_the_same_print_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_ns();
        let d = crate::oci::sha256_digest(b"hello");
        let t = Fingerprints::open(dir.path(), Path::new("/ctx"));
        assert!(t.is_new());
        t.record("a b/c.txt", &print(7, now - 10 * SEC), &d, now);
        t.record("racy.txt", &print(8, now), &d, now);
        t.save().unwrap();
        let t = Fingerprints::open(dir.path(), Path::new("/ctx"));
        assert!(!t.is_new());
        assert_eq!(t.known().len(), 1, "the racy file is not kept");
        assert_eq!(
            t.lookup("a b/c.txt", &print(7, now - 10 * SEC)),
            Some(d.clone())
        );
        assert_eq!(t.lookup("a b/c.txt", &print(9, now - 10 * SEC)), None);
        assert_eq!(t.lookup("a b/c.txt", &print(7, now - 9 * SEC)), None);
        // Nothing new (a lookup, a row recorded again): not written again.
        t.record("a b/c.txt", &print(7, now - 10 * SEC), &d, now);
        let table = t.path.clone();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&table);
        t.save().unwrap();
        assert_eq!(inode(&table), before, "rewritten with nothing new");
        // Another context has its own table.
        assert!(Fingerprints::open(dir.path(), Path::new("/other")).is_new());
        // A table with no settled row is still saved: the context is known.
        let t = Fingerprints::open(dir.path(), Path::new("/new"));
        t.record("racy.txt", &print(8, now), &d, now);
        t.save().unwrap();
        assert!(!Fingerprints::open(dir.path(), Path::new("/new")).is_new());
    }

    #[test]
    fn a_damaged_or_foreign_table_is_ignored_row_by_row() {
        let ok = format!("{} 1 2 3 4 5 6\tgood", "ab".repeat(32));
        let text = format!(
            "{HEADER}{ok}\nnot a row\n{} 1 2 3 4 5\tshort\n{} x 2 3 4 5 6\tbad\n",
            "ab".repeat(32),
            "ab".repeat(32)
        );
        let rows = parse(text.as_bytes()).unwrap();
        assert_eq!(rows.keys().collect::<Vec<_>>(), ["good"]);
        assert!(parse(format!("imgc-fingerprints 9\n{ok}\n").as_bytes()).is_none());
        assert!(parse(b"\xff\xfe").is_none());
    }
}
