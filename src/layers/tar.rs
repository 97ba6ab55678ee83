//! A deterministic tar writer. Every header field is set here and none is
//! read from the disk: USTAR headers, with PAX records only where USTAR
//! cannot hold a value (long paths or link targets, huge sizes or ids).
//! Never GNU long names, never sparse files, never atime/ctime, and the
//! archive ends with exactly two zero blocks (DETERMINISM.md rules 1–7).

use std::io::{self, Write};

const BLOCK: usize = 512;
const MAX_OCTAL_7: u64 = 0o7_777_777;
const MAX_OCTAL_11: u64 = 0o77_777_777_777;

/// The type of a tar entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TarKind {
    /// Regular file (`0`).
    File,
    /// Folder (`5`).
    Dir,
    /// Symbolic link (`2`).
    Symlink,
}

/// Header values of one entry.
#[derive(Clone, Debug)]
pub struct TarHeader<'a> {
    /// Path inside the archive (folders end with `/`).
    pub path: &'a str,
    /// Entry type.
    pub kind: TarKind,
    /// Permission and special bits (`0o7777` at most).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Data size (files only).
    pub size: u64,
    /// Modification time, seconds since 1970.
    pub mtime: u64,
    /// Link target (symlinks only).
    pub link: &'a str,
}

/// Writes tar entries to `out`.
pub struct TarWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> TarWriter<W> {
    /// A writer with nothing written yet.
    pub fn new(out: W) -> Self {
        TarWriter { out, written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes a header (and a PAX header before it when needed). The caller
    /// then writes exactly `size` bytes of data with [`TarWriter::data`] and
    /// calls [`TarWriter::pad`].
    pub fn header(&mut self, h: &TarHeader<'_>) -> io::Result<()> {
        let mut pax: Vec<(&str, String)> = Vec::new();
        let (name, prefix) = match split_ustar_path(h.path) {
            Some(np) => np,
            None => {
                pax.push(("path", h.path.to_string()));
                (truncate(h.path, 100), "")
            }
        };
        if h.link.len() > 100 {
            pax.push(("linkpath", h.link.to_string()));
        }
        if h.size > MAX_OCTAL_11 {
            pax.push(("size", h.size.to_string()));
        }
        if u64::from(h.uid) > MAX_OCTAL_7 {
            pax.push(("uid", h.uid.to_string()));
        }
        if u64::from(h.gid) > MAX_OCTAL_7 {
            pax.push(("gid", h.gid.to_string()));
        }
        if h.mtime > MAX_OCTAL_11 {
            pax.push(("mtime", h.mtime.to_string()));
        }
        if !pax.is_empty() {
            pax.sort_by(|a, b| a.0.cmp(b.0));
            let mut records = Vec::new();
            for (k, v) in &pax {
                records.extend_from_slice(&pax_record(k, v));
            }
            let pax_name = format!("PaxHeaders/{}", truncate(h.path.trim_end_matches('/'), 80));
            let (pname, pprefix) =
                split_ustar_path(&pax_name).unwrap_or((truncate(&pax_name, 100), ""));
            let block = ustar_block(
                pname,
                pprefix,
                b'x',
                0o644,
                0,
                0,
                records.len() as u64,
                h.mtime.min(MAX_OCTAL_11),
                "",
            );
            self.put(&block)?;
            self.put(&records)?;
            self.pad(records.len() as u64)?;
        }
        let typeflag = match h.kind {
            TarKind::File => b'0',
            TarKind::Dir => b'5',
            TarKind::Symlink => b'2',
        };
        let block = ustar_block(
            name,
            prefix,
            typeflag,
            h.mode & 0o7777,
            u64::from(h.uid).min(MAX_OCTAL_7),
            u64::from(h.gid).min(MAX_OCTAL_7),
            if h.size > MAX_OCTAL_11 { 0 } else { h.size },
            h.mtime.min(MAX_OCTAL_11),
            truncate(h.link, 100),
        );
        self.put(&block)
    }

    /// Writes entry data.
    pub fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.put(bytes)
    }

    /// Pads the data of an entry of `size` bytes to a whole block.
    pub fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.put(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Writes the two zero blocks that end an archive and returns `out`.
    pub fn finish(mut self) -> io::Result<W> {
        self.put(&[0u8; 2 * BLOCK])?;
        Ok(self.out)
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

/// Splits a path into USTAR `name` (≤ 100 bytes) and `prefix` (≤ 155 bytes).
fn split_ustar_path(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some((path, ""));
    }
    // Split at a `/` so that the prefix fits and the name is non-empty and fits.
    let bytes = path.as_bytes();
    let body = path.trim_end_matches('/');
    for (i, &b) in bytes.iter().enumerate().take(156.min(body.len())) {
        if b == b'/' && path.len() - i - 1 <= 100 && i <= 155 && i + 1 < body.len() {
            return Some((&path[i + 1..], &path[..i]));
        }
    }
    None
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len = len.to_string().len() + body.len();
    }
    format!("{len}{body}").into_bytes()
}

#[allow(clippy::too_many_arguments)]
fn ustar_block(
    name: &str,
    prefix: &str,
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    link: &str,
) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut b[100..108], u64::from(mode));
    octal(&mut b[108..116], uid);
    octal(&mut b[116..124], gid);
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], mtime);
    b[156] = typeflag;
    b[157..157 + link.len()].copy_from_slice(link.as_bytes());
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    // uname and gname stay empty; devmajor and devminor are zero.
    octal(&mut b[329..337], 0);
    octal(&mut b[337..345], 0);
    b[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    b[148..156].copy_from_slice(b"        ");
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    let cks = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(cks.as_bytes());
    b
}

/// Zero-padded octal digits followed by a NUL, filling `field`.
/// (The lowest digits when the value has more: callers bound their values.)
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let mut v = value;
    for b in field[..digits].iter_mut().rev() {
        *b = b'0' + (v & 7) as u8;
        v >>= 3;
    }
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_fields_are_zero_padded_and_nul_ended() {
        let mut f = [b'x'; 8];
        octal(&mut f, 0o755);
        assert_eq!(&f, b"0000755\0");
        let mut f = [b'x'; 12];
        for v in [0u64, 1, 7, 8, 0o777, 1 << 30, 0o77777777777] {
            octal(&mut f, v);
            assert_eq!(&f[..11], format!("{v:011o}").as_bytes(), "{v}");
            assert_eq!(f[11], 0);
        }
    }

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(pax_record("path", "a"), b"9 path=a\n");
        assert_eq!(pax_record("path", "abc"), b"12 path=abc\n");
        let long = "x".repeat(95);
        let r = pax_record("path", &long);
        let n: usize = std::str::from_utf8(&r)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(n, r.len());
    }

    #[test]
    fn long_paths_split_or_use_pax() {
        let p = format!("{}/{}", "d".repeat(120), "f".repeat(50));
        assert_eq!(split_ustar_path(&p), Some((&p[121..], &p[..120])));
        let long = "a/".repeat(200) + "file";
        assert_eq!(split_ustar_path(&long), None);
    }

    #[test]
    fn archive_reads_back_with_the_tar_crate() {
        let mut w = TarWriter::new(Vec::new());
        let long = format!("{}/file.txt", "deep/".repeat(60).trim_end_matches('/'));
        for (path, kind, data, link) in [
            ("app/", TarKind::Dir, &b""[..], ""),
            ("app/hello", TarKind::File, &b"hi\n"[..], ""),
            ("app/link", TarKind::Symlink, &b""[..], "hello"),
            (long.as_str(), TarKind::File, &b"x"[..], ""),
        ] {
            w.header(&TarHeader {
                path,
                kind,
                mode: if kind == TarKind::Dir { 0o755 } else { 0o644 },
                uid: 65532,
                gid: 3_000_000,
                size: data.len() as u64,
                mtime: 1_700_000_000,
                link,
            })
            .unwrap();
            w.data(data).unwrap();
            w.pad(data.len() as u64).unwrap();
        }
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 512, 0);
        assert!(bytes[bytes.len() - 1024..].iter().all(|&b| b == 0));
        let mut ar = tar::Archive::new(&bytes[..]);
        let got: Vec<(String, u64, u64, u32)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().uid().unwrap(),
                    e.header().mtime().unwrap(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(got[0], ("app/".into(), 65532, 1_700_000_000, 0o755));
        assert_eq!(got[1].0, "app/hello");
        assert_eq!(got[3].0, long);
        assert_eq!(got.len(), 4);
    }
}
