//! The real build context: a folder on disk, read for planning through the
//! [`Context`] seam. It looks at paths without following symlinks, lists
//! folders in bytewise order, and hides the build's own output (and what an
//! interrupted build left beside it) so that a build never packs itself.
//! Building later opens each file beneath the context with
//! [`crate::fsx::ContextDir`] and checks it is the file planned.

use crate::fsx::ContextDir;
use crate::plan::sources::{Context, Kind, Listing, Stamp, Stat};
use crate::plan::PlanError;
use ahead::ReadAhead;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

mod ahead;

/// What the specs of one run saw of their contexts: each path looked at
/// once, for all of them. Specs that share a context (a monorepo's specs
/// with one `--context`) then plan from memory after the first, and all
/// see the same snapshot. Paths are keyed by their bytes (compared with
/// one `memcmp`, not component by component), and read under shared
/// locks: after the first spec, specs only read.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// By context root, then path in it.
    stats: RwLock<BTreeMap<PathBuf, Stats>>,
    /// Folders' names, sorted, before the output is hidden (that depends
    /// on the spec); by absolute path.
    lists: RwLock<BTreeMap<Vec<u8>, Vec<OsString>>>,
    /// Folders' names, each with what is there (as `stats` says), before
    /// the output is hidden; by absolute path. A later spec's walk takes a
    /// folder with one look-up instead of one per name.
    listings: RwLock<BTreeMap<Vec<u8>, Arc<Looked>>>,
}

/// What each path of one context is, by the path's bytes.
type Stats = BTreeMap<Vec<u8>, Option<Stat>>;

/// A folder's names, each with what is there.
type Looked = Vec<(OsString, Option<Stat>)>;

/// The bytes of a path, as the snapshot keys it.
pub(crate) fn key(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

/// The most folders one thread holds open at once (a deeper walk opens the
/// ones above again).
const MAX_HELD_FOLDERS: usize = 64;

/// A build context folder on disk.
#[derive(Debug)]
pub struct DiskContext {
    root: PathBuf,
    /// The root, held open: every look is beneath it.
    dir: ContextDir,
    /// Folders never listed (canonical): the output layout.
    skip: Vec<PathBuf>,
    /// The folders the walk looked in last, held open.
    open: Held,
    /// The run's snapshot, when specs share one.
    snapshot: Option<Arc<Snapshot>>,
    /// The read-ahead of the walk under way ([`Context::walk_below`]).
    ahead: Mutex<Option<Arc<ReadAhead>>>,
}

/// The folder one thread looked in last and the ones above it that it
/// looked in on the way, held open: a walk stats the names of one folder in
/// a row, each with one `fstatat` (no path walk per name), opens a
/// subfolder with one `openat` from its parent, and finds the parent still
/// open when it comes back up.
#[derive(Debug, Default)]
struct Held(Mutex<Vec<(PathBuf, OwnedFd)>>);

impl Held {
    /// Runs `f` on the open folder `rel`: one held open, else opened from
    /// its parent when that is held, else opened beneath `root`.
    fn in_dir<T>(
        &self,
        root: &ContextDir,
        rel: &Path,
        f: impl FnOnce(&OwnedFd) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut open = lock(&self.0);
        // Each held folder lies in the one before it: keep rel's ancestors.
        while open.last().is_some_and(|(p, _)| !rel.starts_with(p)) {
            open.pop();
        }
        if let Some((_, fd)) = open.last().filter(|(p, _)| p == rel) {
            return f(fd);
        }
        let fd = match (open.last(), rel.parent(), rel.file_name()) {
            (Some((p, parent)), Some(up), Some(name)) if p == up => {
                crate::fsx::open_subdir(parent, name)?
            }
            _ => root.open_dir(rel)?,
        };
        let out = f(&fd);
        if open.len() >= MAX_HELD_FOLDERS {
            open.clear();
        }
        open.push((rel.to_path_buf(), fd));
        out
    }
}

impl DiskContext {
    /// Opens the context folder (canonicalized); `skip` names folders never
    /// put in a layer even when a glob covers them.
    pub fn open(path: &Path, skip: &[PathBuf]) -> Result<Self, PlanError> {
        let err = |source| PlanError::Context {
            path: path.to_path_buf(),
            source,
        };
        let root = std::fs::canonicalize(path).map_err(err)?;
        if !root.is_dir() {
            return Err(err(io::Error::other("not a folder")));
        }
        Ok(DiskContext {
            dir: ContextDir::open(&root).map_err(err)?,
            root,
            skip: skip.iter().map(|p| canonical_prefix(p)).collect(),
            open: Held::default(),
            snapshot: None,
            ahead: Mutex::new(None),
        })
    }

    /// The same, looking at each path once for all the contexts opened
    /// with `snapshot`.
    pub fn open_in(
        path: &Path,
        skip: &[PathBuf],
        snapshot: Arc<Snapshot>,
    ) -> Result<Self, PlanError> {
        Ok(DiskContext {
            snapshot: Some(snapshot),
            ..DiskContext::open(path, skip)?
        })
    }

    /// What is at `rel`, looked at on disk.
    fn look(&self, rel: &Path) -> io::Result<Option<Stat>> {
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => (Path::new(""), std::ffi::OsStr::new(".")),
        };
        match self.open.in_dir(&self.dir, parent, |fd| look_in(fd, name)) {
            // A parent that is gone, or is not a folder: nothing there.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
            other => other,
        }
    }

    /// Removes from `names` (of the folder `rel`) the build's own output.
    fn hide(&self, rel: &Path, names: &mut Vec<OsString>) {
        if let Some(hidden) = self.hider(rel) {
            names.retain(|n| !hidden(n));
        }
    }

    /// Whether a name of the folder `rel` is the build's own output; `None`
    /// when none can be: only a folder holding a skipped one (or lying in
    /// one) can hide a name, and the others are not checked name by name.
    fn hider(&self, rel: &Path) -> Option<impl Fn(&std::ffi::OsStr) -> bool + '_> {
        let dir = self.root.join(rel);
        let near = self
            .skip
            .iter()
            .any(|s| s.parent() == Some(dir.as_path()) || dir.starts_with(s));
        near.then_some(move |n: &std::ffi::OsStr| is_skipped(&dir.join(n), &self.skip))
    }

    /// The names of the folder `rel` in bytewise order, the build's output
    /// not yet hidden: from the run's snapshot (listed once for all specs),
    /// else from the disk.
    fn names(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        let Some(snap) = &self.snapshot else {
            return self.open.in_dir(&self.dir, rel, sorted_names);
        };
        let dir = self.root.join(rel);
        if let Some(names) = read(&snap.lists).get(key(&dir)) {
            return Ok(names.clone());
        }
        let names = self.open.in_dir(&self.dir, rel, sorted_names)?;
        // Listed by two specs at once: both take what was kept first.
        let mut lists = write(&snap.lists);
        Ok(lists.entry(key(&dir).to_vec()).or_insert(names).clone())
    }

    /// The folder `rel` from the run's snapshot: listed and each name
    /// looked at once for all specs (the first to walk it fills it), then
    /// this spec's output hidden.
    fn snapshot_listing(&self, snap: &Snapshot, rel: &Path) -> io::Result<Listing> {
        let dir = self.root.join(rel);
        let known = read(&snap.listings).get(key(&dir)).cloned();
        let mut looked: Listing = match known {
            Some(all) => all.iter().map(|(n, st)| (n.clone(), Ok(*st))).collect(),
            None => {
                // Names and stats come from the snapshot (the first look
                // kept), so specs filling it at once make the same listing.
                let looked = crate::plan::sources::stat_each(self, rel, self.names(rel)?);
                // One with an error is not kept: the next spec looks again.
                let all: Option<Looked> = looked
                    .iter()
                    .map(|(n, st)| Some((n.clone(), *st.as_ref().ok()?)))
                    .collect();
                if let Some(all) = all {
                    let mut listings = write(&snap.listings);
                    listings.entry(key(&dir).to_vec()).or_insert(Arc::new(all));
                }
                looked
            }
        };
        if let Some(hidden) = self.hider(rel) {
            looked.retain(|(n, _)| !hidden(n));
        }
        Ok(looked)
    }

    /// The folder `rel` listed and each of its names looked at, on disk,
    /// through the folders `held` holds open: one descriptor for all.
    fn listing(&self, held: &Held, rel: &Path) -> io::Result<Listing> {
        held.in_dir(&self.dir, rel, |fd| {
            let mut names = sorted_names(fd)?;
            self.hide(rel, &mut names);
            Ok(look_all(fd, names))
        })
    }
}

/// The names of the open folder `dir`, in bytewise order.
fn sorted_names(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut names = crate::fsx::read_names(dir)?;
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Folders with at least this many names are looked at on two threads.
const PARALLEL_STATS: usize = 512;

/// Each of `names` with what is at it in the open folder `dir`; a big
/// folder on two threads.
fn look_all(dir: &OwnedFd, names: Vec<OsString>) -> Listing {
    let look = |fd: &OwnedFd, names: &[OsString]| -> Vec<_> {
        names.iter().map(|n| look_in(fd, n)).collect()
    };
    // A descriptor of the helper's own.
    let helper_fd = (names.len() >= PARALLEL_STATS)
        .then(|| dir.try_clone().ok())
        .flatten();
    let Some(fd) = helper_fd else {
        let stats = look(dir, &names);
        return names.into_iter().zip(stats).collect();
    };
    let (first, second) = names.split_at(names.len() / 2);
    let stats = std::thread::scope(|s| {
        let helper = std::thread::Builder::new().spawn_scoped(s, || look(&fd, second));
        let mut out = look(dir, first);
        match helper {
            Ok(h) => out.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
            Err(_) => out.extend(look(dir, second)),
        }
        out
    });
    names.into_iter().zip(stats).collect()
}

/// What is at `name` in the open folder `dir`.
fn look_in(dir: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<Option<Stat>> {
    let Some(st) = crate::fsx::stat_at(dir, name)? else {
        return Ok(None);
    };
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFREG => Kind::File,
        other => Kind::Other(crate::fsx::mode_kind_name(other)),
    };
    Ok(Some(Stat {
        kind,
        size: u64::try_from(st.st_size).unwrap_or(0),
        executable: st.st_mode & 0o111 != 0,
        id: (st.st_dev, st.st_ino),
        stamp: Stamp::of_stat(&st),
    }))
}

impl Context for DiskContext {
    fn root(&self) -> &Path {
        &self.root
    }

    fn stat(&self, rel: &Path) -> io::Result<Option<Stat>> {
        let Some(snap) = &self.snapshot else {
            return self.look(rel);
        };
        let seen = read(&snap.stats)
            .get(&self.root)
            .and_then(|m| m.get(key(rel)).copied());
        if let Some(st) = seen {
            return Ok(st);
        }
        let st = self.look(rel)?;
        // Looked at by two specs at once: both take what was kept first.
        let mut stats = write(&snap.stats);
        let kept = stats.entry(self.root.clone()).or_default();
        Ok(*kept.entry(key(rel).to_vec()).or_insert(st))
    }

    fn list(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        let mut names = self.names(rel)?;
        // Never the build's own output.
        self.hide(rel, &mut names);
        Ok(names)
    }

    fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        std::fs::read_link(self.root.join(rel))
    }

    fn list_stats(&self, rel: &Path) -> io::Result<Listing> {
        if let Some(snap) = &self.snapshot {
            return self.snapshot_listing(snap, rel);
        }
        let ahead = lock(&self.ahead).clone();
        match ahead {
            Some(ahead) => ahead.take(rel, |rel| self.listing(&self.open, rel)),
            None => self.listing(&self.open, rel),
        }
    }

    fn walk_below(&self, enters: &(dyn Fn(&Path) -> bool + Sync), walk: &mut dyn FnMut()) {
        // A snapshot is filled path by path, by one spec at a time.
        if self.snapshot.is_some() || lock(&self.ahead).is_some() {
            return walk();
        }
        let ahead = Arc::new(ReadAhead::default());
        *lock(&self.ahead) = Some(ahead.clone());
        let _detach = Detach(&self.ahead);
        std::thread::scope(|s| {
            // Stops the helper when the walk ends, panics included.
            let _stop = ahead.stopper();
            let helper = || {
                let held = Held::default();
                ahead.run(enters, |rel| self.listing(&held, rel));
            };
            // Without a helper, the walk looks at everything itself.
            let _helper = std::thread::Builder::new()
                .name("imgc-read-ahead".into())
                .spawn_scoped(s, helper);
            walk();
        });
    }
}

/// Takes a context's read-ahead off when dropped: the walk has ended,
/// panics included.
struct Detach<'a>(&'a Mutex<Option<Arc<ReadAhead>>>);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        *lock(self.0) = None;
    }
}

/// Locks a mutex (a poisoned lock still holds what was seen).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads a snapshot's map (a poisoned lock still holds what was seen).
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

/// Writes a snapshot's map.
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// Whether `path` is a skipped folder, is below one, or is a staging or
/// temporary folder of one (`.<name>.imgc-…` beside it): a build never
/// packs its output layout, nor what an interrupted build left beside it.
fn is_skipped(path: &Path, skip: &[PathBuf]) -> bool {
    skip.iter().any(|s| {
        if path.starts_with(s) {
            return true;
        }
        let (Some(name), Some(parent)) = (s.file_name(), s.parent()) else {
            return false;
        };
        let litter = format!(".{}.imgc-", name.to_string_lossy());
        path.strip_prefix(parent)
            .ok()
            .and_then(|rest| rest.components().next())
            .is_some_and(|first| {
                first
                    .as_os_str()
                    .to_string_lossy()
                    .starts_with(litter.as_str())
            })
    })
}

/// The canonical form of a path that may not exist yet: its longest existing
/// ancestor canonicalized, with the rest appended.
fn canonical_prefix(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
    let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
    out.extend(rest.iter().rev());
    out
}

impl Stamp {
    /// The stamp of what `fstatat` returned.
    pub fn of_stat(st: &libc::stat) -> Stamp {
        Stamp {
            mtime_ns: nanos(st.st_mtime, st.st_mtime_nsec),
            ctime_ns: nanos(st.st_ctime, st.st_ctime_nsec),
            mode: st.st_mode,
        }
    }

    /// The stamp of `md` (on the disk side: the planner never sees a
    /// filesystem).
    pub fn of(md: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            mtime_ns: nanos(md.mtime(), md.mtime_nsec()),
            ctime_ns: nanos(md.ctime(), md.ctime_nsec()),
            mode: md.mode(),
        }
    }
}

/// Seconds and nanoseconds as nanoseconds since the epoch.
fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context with `in_dir/a.txt` and two specs' outputs `in_dir/out1`
    /// and `in_dir/out2`, opened by two specs of one run (one hides
    /// `out1`, the other `out2`).
    fn two_specs(in_dir: &str) -> (tempfile::TempDir, PathBuf, DiskContext, DiskContext) {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let base = root.join(in_dir);
        std::fs::create_dir_all(base.join("out1")).unwrap();
        std::fs::create_dir(base.join("out2")).unwrap();
        std::fs::write(base.join("a.txt"), "a").unwrap();
        let snap = Arc::new(Snapshot::default());
        let one = DiskContext::open_in(&root, &[base.join("out1")], snap.clone()).unwrap();
        let two = DiskContext::open_in(&root, &[base.join("out2")], snap).unwrap();
        (dir, root, one, two)
    }

    #[test]
    fn contexts_of_one_snapshot_look_once_and_hide_each_their_output() {
        let (_dir, root, one, two) = two_specs("");
        let alone = DiskContext::open(&root, &[]).unwrap();
        let names = |c: &DiskContext| -> Vec<String> {
            c.list(Path::new(""))
                .unwrap()
                .iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(&one), ["a.txt", "out2"]);
        assert!(one.stat(Path::new("a.txt")).unwrap().is_some());
        // Gone from the disk: the snapshot still has it, for every context
        // of the run, each hiding its own output.
        std::fs::remove_file(root.join("a.txt")).unwrap();
        assert!(two.stat(Path::new("a.txt")).unwrap().is_some());
        assert_eq!(names(&two), ["a.txt", "out1"]);
        assert!(alone.stat(Path::new("a.txt")).unwrap().is_none());
        assert_eq!(names(&alone), ["out1", "out2"]);
    }

    #[test]
    fn a_snapshot_listing_is_taken_once_for_all_specs_each_hiding_its_output() {
        let (_dir, root, one, two) = two_specs("src");
        std::fs::create_dir(root.join("src/deep")).unwrap();
        let names = |c: &DiskContext| -> Vec<(String, Option<Kind>)> {
            c.list_stats(Path::new("src"))
                .unwrap()
                .into_iter()
                .map(|(n, st)| {
                    (
                        n.to_string_lossy().into_owned(),
                        st.unwrap().map(|s| s.kind),
                    )
                })
                .collect()
        };
        let file = Some(Kind::File);
        let folder = Some(Kind::Dir);
        let first = names(&one);
        assert_eq!(
            first,
            [
                ("a.txt".into(), file),
                ("deep".into(), folder),
                ("out2".into(), folder)
            ]
        );
        // Changed on disk since: every spec of the run still sees the
        // snapshot, each without its own output, and the same as `stat`.
        std::fs::remove_file(root.join("src/a.txt")).unwrap();
        std::fs::write(root.join("src/b.txt"), "b").unwrap();
        assert_eq!(
            names(&two),
            [
                ("a.txt".into(), file),
                ("deep".into(), folder),
                ("out1".into(), folder)
            ]
        );
        assert_eq!(names(&one), first);
        assert!(two.stat(Path::new("src/a.txt")).unwrap().is_some());
    }

    #[test]
    fn a_big_folder_looked_at_on_two_threads_says_what_one_by_one_says() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let big = root.join("big");
        std::fs::create_dir(&big).unwrap();
        for i in 0..PARALLEL_STATS + 100 {
            std::fs::write(big.join(format!("f{i:04}")), vec![b'x'; i]).unwrap();
        }
        std::fs::create_dir(big.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", big.join("link")).unwrap();
        let c = DiskContext::open(&root, &[]).unwrap();
        let rel = Path::new("big");
        let mut names = c.list(rel).unwrap();
        // A name gone since it was listed.
        names.push(OsString::from("zz-gone"));
        let together = look_all(&c.dir.open_dir(rel).unwrap(), names.clone());
        assert_eq!(together.len(), names.len());
        for (name, (listed, st)) in names.iter().zip(together) {
            assert_eq!(&listed, name);
            let alone = c.stat(&rel.join(name)).unwrap();
            assert_eq!(st.unwrap(), alone, "{name:?}");
        }
        let link = c.stat(&rel.join("link")).unwrap().unwrap();
        assert_eq!(link.kind, Kind::Symlink, "not followed");
        assert!(c.stat(&rel.join("zz-gone")).unwrap().is_none());
    }

    /// Every path below `rel` with what is there, depth first, through
    /// `list_stats`.
    fn dfs(c: &DiskContext, rel: &Path) -> Vec<(PathBuf, Option<Stat>)> {
        let mut out = Vec::new();
        for (name, st) in c.list_stats(rel).unwrap() {
            let (path, st) = (rel.join(name), st.unwrap());
            out.push((path.clone(), st));
            if st.is_some_and(|st| st.kind == Kind::Dir) {
                out.extend(dfs(c, &path));
            }
        }
        out
    }

    #[test]
    fn a_walk_with_read_ahead_sees_what_one_without_does_and_ends_with_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        for a in 0..6 {
            for b in 0..6 {
                let d = root.join(format!("a{a}/b{b}"));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join("f"), format!("{a}{b}")).unwrap();
            }
        }
        std::os::unix::fs::symlink(root.join("a1"), root.join("a0/link")).unwrap();
        std::fs::create_dir_all(root.join("out/blobs")).unwrap();
        let c = DiskContext::open(&root, &[root.join("out")]).unwrap();
        let alone = dfs(&c, Path::new(""));
        assert_eq!(
            alone.len(),
            6 + 36 * 2 + 1,
            "the output is hidden: {alone:?}"
        );
        let mut ahead = Vec::new();
        c.walk_below(&|_| true, &mut || {
            assert!(lock(&c.ahead).is_some(), "read-ahead on");
            ahead = dfs(&c, Path::new(""));
        });
        assert_eq!(ahead, alone);
        assert!(lock(&c.ahead).is_none(), "off after the walk");
        // A walk that panics ends its read-ahead: no hang, no helper left.
        let walk = std::panic::AssertUnwindSafe(|| {
            c.walk_below(&|_| true, &mut || {
                let _ = c.list_stats(Path::new(""));
                panic!("the walk fails");
            })
        });
        assert!(std::panic::catch_unwind(walk).is_err());
        assert!(lock(&c.ahead).is_none());
        let mut again = Vec::new();
        c.walk_below(&|_| true, &mut || again = dfs(&c, Path::new("")));
        assert_eq!(again, alone);
    }
}
