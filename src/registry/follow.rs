//! A blob file that one thread downloads into while another reads it as it
//! grows, so a blob's check (decompressing it) runs beside its download
//! instead of after it. Only the first download attempt is followed: a
//! retry writes another file, and the reader of the first one gets an
//! error (its caller reads the finished file again).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Condvar, Mutex, MutexGuard};

/// How far the download is.
#[derive(Default)]
struct State {
    /// A handle of the file being written, once the first attempt began.
    file: Option<File>,
    /// Bytes written so far by the followed attempt.
    len: u64,
    /// `Some(true)`: the followed attempt wrote the whole blob and its
    /// digest matched; `Some(false)`: it did not (or a retry began).
    end: Option<bool>,
    /// Attempts begun.
    attempts: u32,
}

/// The download's side: says where it is.
#[derive(Default)]
pub(super) struct Growing {
    state: Mutex<State>,
    more: Condvar,
}

impl Growing {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A download attempt begins writing `file` from its start; returns
    /// whether it is followed (the first one is). A later attempt ends the
    /// reading with an error.
    pub fn begin(&self, file: &File) -> bool {
        let mut s = self.lock();
        s.attempts += 1;
        if s.attempts == 1 {
            s.file = file.try_clone().ok();
            if s.file.is_none() {
                s.end = Some(false);
            }
        } else if s.end.is_none() {
            s.end = Some(false);
        }
        self.more.notify_all();
        s.attempts == 1 && s.end.is_none()
    }

    /// The followed attempt wrote `n` more bytes.
    pub fn grew(&self, n: u64) {
        self.lock().len += n;
        self.more.notify_all();
    }

    /// The download ended: `ok` when its blob is whole and matched.
    pub fn end(&self, ok: bool) {
        let mut s = self.lock();
        s.end.get_or_insert(ok);
        self.more.notify_all();
    }

    /// Whether the reader followed the blob that was kept: the first
    /// attempt succeeded (else it must read the final file again).
    pub fn followed_the_kept_blob(&self) -> bool {
        let s = self.lock();
        s.attempts == 1 && s.end == Some(true)
    }

    /// A reader of the file from its start, waiting for bytes not yet
    /// written; it ends when the download does, with an error if that
    /// failed.
    pub fn reader(&self) -> Follower<'_> {
        Follower {
            growing: self,
            file: None,
            at: 0,
        }
    }
}

/// The reading side (see [`Growing::reader`]).
pub(super) struct Follower<'a> {
    growing: &'a Growing,
    /// Its own handle of the file, made at the first read.
    file: Option<File>,
    at: u64,
}

impl Read for Follower<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stopped = || io::Error::other("the download was not completed");
        if buf.is_empty() {
            return Ok(0);
        }
        let mut s = self.growing.lock();
        loop {
            match (&s.file, s.end) {
                (Some(_), None | Some(true)) if s.len > self.at => break,
                (_, Some(true)) => return Ok(0),
                (_, Some(false)) => return Err(stopped()),
                _ => s = self.growing.more.wait(s).unwrap_or_else(|p| p.into_inner()),
            }
        }
        let want = usize::try_from(s.len - self.at).map_or(buf.len(), |n| n.min(buf.len()));
        if self.file.is_none() {
            self.file = s.file.as_ref().map(File::try_clone).transpose()?;
        }
        drop(s);
        let file = self.file.as_ref().ok_or_else(stopped)?;
        let n = file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Ends the download as failed unless told otherwise, so a reader never
/// waits for a download thread that returned early or panicked.
pub(super) struct Ending<'a>(pub &'a Growing);

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        self.0.end(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("blob"))
            .unwrap();
        (dir, file)
    }

    #[test]
    fn the_reader_gets_every_byte_as_it_is_written_then_the_end() {
        let (_dir, mut file) = temp();
        let growing = Growing::default();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let read = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut got = Vec::new();
                growing.reader().read_to_end(&mut got).map(|_| got)
            });
            assert!(growing.begin(&file));
            for chunk in data.chunks(7_001) {
                file.write_all(chunk).unwrap();
                growing.grew(chunk.len() as u64);
            }
            growing.end(true);
            reader.join().unwrap()
        });
        assert_eq!(read.unwrap(), data);
        assert!(growing.followed_the_kept_blob());
    }

    #[test]
    fn a_failed_download_or_a_retry_ends_the_reader_with_an_error() {
        let (_dir, mut file) = temp();
        let growing = Growing::default();
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut got = Vec::new();
                growing.reader().read_to_end(&mut got)
            });
            assert!(growing.begin(&file));
            file.write_all(b"half").unwrap();
            growing.grew(4);
            // A retry begins: it is not followed, and the reader stops.
            assert!(!growing.begin(&file));
            growing.end(true);
            let e = reader.join().unwrap().unwrap_err();
            assert!(e.to_string().contains("not completed"), "{e}");
        });
        assert!(!growing.followed_the_kept_blob());
    }

    #[test]
    fn a_download_thread_that_returns_early_never_leaves_the_reader_waiting() {
        let growing = Growing::default();
        std::thread::scope(|s| {
            let reader = s.spawn(|| growing.reader().read(&mut [0u8; 16]));
            {
                let _end = Ending(&growing);
                // Returns before any attempt began.
            }
            assert!(reader.join().unwrap().is_err());
        });
    }
}
