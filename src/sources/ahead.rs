//! Looking ahead of a walk: while the planner walks a tree of the context
//! folder by folder, a helper thread lists the folders it will reach and
//! looks at their names, so that the walk's system calls run on two cores.
//!
//! The walk goes depth first, in order; the helper takes the folder queued
//! last, so it starts at the far end of the first folder's subfolders and
//! works its way back through the part the walk reaches last: the two
//! rarely want the same folder. (Taking the folder queued first, the
//! helper was at the walk's very next folder so often that the walk spent
//! a quarter of its time waiting for it.) A folder is looked at once, by whichever comes first:
//! the walk takes what the helper found, waits while the helper is at the
//! very folder it wants, and otherwise looks itself. What the helper holds
//! for the walk is bounded ([`MAX_AHEAD_NAMES`]).

use super::key;
use crate::plan::sources::{Kind, Listing};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

/// The most names the helper holds, found and not yet taken by the walk,
/// before it waits for the walk (about 100 bytes each).
pub(super) const MAX_AHEAD_NAMES: usize = 32 * 1024;

/// One walk's read-ahead, shared by the walk and its helper.
#[derive(Debug, Default)]
pub(super) struct ReadAhead {
    state: Mutex<State>,
    /// Signalled when a listing is done or taken, a folder is queued, or
    /// the walk ends; waited on only by a side that said it waits.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Folders found, in the order found (the helper takes the last).
    queue: VecDeque<PathBuf>,
    /// Each queued folder, the one the helper is at, and what it found, by
    /// the folder's path bytes (comparing paths as bytes, not component by
    /// component, takes a tenth of the time).
    slots: BTreeMap<Vec<u8>, Slot>,
    /// Names in `Done` slots.
    held_names: usize,
    /// The walk has ended (or the helper has): no more looking ahead.
    stopped: bool,
    /// How many sides wait on `changed`.
    waiting: usize,
}

#[derive(Debug)]
enum Slot {
    Queued,
    /// The helper is looking at it.
    Busy,
    Done(io::Result<Listing>),
}

impl ReadAhead {
    /// What the walk lists at `rel`: the helper's listing when it has one
    /// (waiting while the helper is at `rel`), else `look(rel)` here.
    /// The folders found in it are queued for the helper.
    pub(super) fn take(
        &self,
        rel: &Path,
        look: impl FnOnce(&Path) -> io::Result<Listing>,
    ) -> io::Result<Listing> {
        let mut st = self.lock();
        loop {
            match st.slots.remove(key(rel)) {
                Some(Slot::Done(listing)) => {
                    st.held_names -= listing.as_ref().map_or(0, Vec::len);
                    self.notify(&st);
                    return listing;
                }
                Some(Slot::Busy) if !st.stopped => {
                    st.slots.insert(key(rel).to_vec(), Slot::Busy);
                    st = self.wait(st);
                }
                // Queued (now taken off) or never queued: looked at here.
                _ => break,
            }
        }
        drop(st);
        let listing = look(rel);
        self.queue_below(rel, &listing);
        listing
    }

    /// Queues the folders of `listing` (of the folder `rel`).
    fn queue_below(&self, rel: &Path, listing: &io::Result<Listing>) {
        let Ok(listing) = listing else {
            return;
        };
        let mut dirs = listing
            .iter()
            .filter(|(_, st)| matches!(st, Ok(Some(st)) if st.kind == Kind::Dir))
            .map(|(name, _)| rel.join(name))
            .peekable();
        if dirs.peek().is_none() {
            return;
        }
        let mut st = self.lock();
        for dir in dirs {
            st.slots.insert(key(&dir).to_vec(), Slot::Queued);
            st.queue.push_back(dir);
        }
        self.notify(&st);
    }

    /// The helper: looks at the queued folders the walk `enters`, the
    /// last queued first, until the walk ends.
    pub(super) fn run(
        &self,
        enters: &(dyn Fn(&Path) -> bool + Sync),
        look: impl Fn(&Path) -> io::Result<Listing>,
    ) {
        // Ends the read-ahead when the helper does, panics included: the
        // walk then waits for nothing.
        let _stop = self.stopper();
        let mut st = self.lock();
        while !st.stopped {
            if st.held_names >= MAX_AHEAD_NAMES {
                st = self.wait(st);
                continue;
            }
            let Some(dir) = st.queue.pop_back() else {
                st = self.wait(st);
                continue;
            };
            if !matches!(st.slots.get(key(&dir)), Some(Slot::Queued)) {
                continue;
            }
            if !enters(&dir) {
                st.slots.remove(key(&dir));
                continue;
            }
            st.slots.insert(key(&dir).to_vec(), Slot::Busy);
            drop(st);
            let listing = look(&dir);
            self.queue_below(&dir, &listing);
            st = self.lock();
            st.held_names += listing.as_ref().map_or(0, Vec::len);
            st.slots.insert(key(&dir).to_vec(), Slot::Done(listing));
            self.notify(&st);
        }
    }

    /// Stops the read-ahead when dropped.
    pub(super) fn stopper(&self) -> Stopper<'_> {
        Stopper(self)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a change, saying so.
    fn wait<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.waiting += 1;
        let mut st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        st.waiting -= 1;
        st
    }

    /// Wakes the other side, if it waits (a wake is a system call).
    fn notify(&self, st: &State) {
        if st.waiting > 0 {
            self.changed.notify_all();
        }
    }
}

/// Ends a read-ahead when dropped: see [`ReadAhead::stopper`].
pub(super) struct Stopper<'a>(&'a ReadAhead);

impl Drop for Stopper<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.stopped = true;
        // What the helper held is not taken now.
        st.slots.clear();
        st.queue.clear();
        st.held_names = 0;
        self.0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::sources::{Stamp, Stat};
    use std::ffi::OsString;
    use std::thread::ThreadId;

    /// A made-up tree: below the root, folders `d0`..`d{fan-1}` down to
    /// `depth`, each folder also holding `files` files.
    struct Tree {
        fan: usize,
        depth: usize,
        files: usize,
        /// Every look: the folder and the thread that looked.
        looks: Mutex<Vec<(PathBuf, ThreadId)>>,
    }

    fn stat(kind: Kind) -> io::Result<Option<Stat>> {
        Ok(Some(Stat {
            kind,
            size: 0,
            executable: false,
            id: (0, 0),
            stamp: Stamp::default(),
        }))
    }

    impl Tree {
        fn new(fan: usize, depth: usize, files: usize) -> Self {
            Tree {
                fan,
                depth,
                files,
                looks: Mutex::new(Vec::new()),
            }
        }

        fn look(&self, rel: &Path) -> io::Result<Listing> {
            let thread = std::thread::current();
            if thread.name() == Some("panicking-helper") {
                panic!("the helper fails");
            }
            self.looks
                .lock()
                .unwrap()
                .push((rel.to_path_buf(), thread.id()));
            // Long enough for the other side to get work.
            std::thread::sleep(std::time::Duration::from_micros(200));
            let mut out: Listing = Vec::new();
            if rel.components().count() < self.depth {
                for i in 0..self.fan {
                    out.push((OsString::from(format!("d{i}")), stat(Kind::Dir)));
                }
            }
            for i in 0..self.files {
                out.push((OsString::from(format!("f{i}")), stat(Kind::File)));
            }
            Ok(out)
        }
    }

    /// Walks depth first as the planner does, through `ahead`, returning
    /// every path seen in order.
    fn walk(
        ahead: &ReadAhead,
        tree: &Tree,
        rel: &Path,
        enters: &dyn Fn(&Path) -> bool,
    ) -> Vec<PathBuf> {
        let mut seen = Vec::new();
        let listing = ahead.take(rel, |r| tree.look(r)).unwrap();
        for (name, st) in listing {
            let path = rel.join(name);
            seen.push(path.clone());
            if st.unwrap().unwrap().kind == Kind::Dir && enters(&path) {
                seen.extend(walk(ahead, tree, &path, enters));
            }
        }
        seen
    }

    /// What a walk alone sees of a tree of `fan`, `depth` and `files`.
    fn alone(fan: usize, depth: usize, files: usize) -> Vec<PathBuf> {
        let tree = Tree::new(fan, depth, files);
        walk(&ReadAhead::default(), &tree, Path::new(""), &|_| true)
    }

    /// The walk of `tree` with a helper named `helper`, and whether the
    /// helper ended well.
    fn walk_with_helper(
        tree: &Tree,
        enters: &(dyn Fn(&Path) -> bool + Sync),
        helper: &str,
    ) -> (Vec<PathBuf>, bool) {
        let ahead = ReadAhead::default();
        std::thread::scope(|s| {
            let stop = ahead.stopper();
            let h = std::thread::Builder::new()
                .name(helper.to_string())
                .spawn_scoped(s, || ahead.run(enters, |r| tree.look(r)))
                .unwrap();
            let seen = walk(&ahead, tree, Path::new(""), enters);
            drop(stop);
            (seen, h.join().is_ok())
        })
    }

    #[test]
    fn the_walk_sees_what_it_would_alone_and_each_folder_is_looked_at_once() {
        let expected = alone(3, 4, 2);
        let tree = Tree::new(3, 4, 2);
        let (seen, ok) = walk_with_helper(&tree, &|_| true, "helper");
        assert!(ok);
        assert_eq!(seen, expected);
        let looks = tree.looks.into_inner().unwrap();
        let mut folders: Vec<_> = looks.iter().map(|(p, _)| p.clone()).collect();
        folders.sort();
        let n = folders.len();
        folders.dedup();
        assert_eq!(folders.len(), n, "a folder was looked at twice");
        // 1 + 3 + 9 + 27 + 81 folders.
        assert_eq!(n, 121);
        let here = std::thread::current().id();
        let by_helper = looks.iter().filter(|(_, t)| *t != here).count();
        assert!(
            by_helper > 0 && by_helper < n,
            "{by_helper} of {n} by the helper"
        );
    }

    #[test]
    fn the_helper_never_looks_in_a_folder_the_walk_does_not_enter() {
        let tree = Tree::new(3, 4, 1);
        let enters = |p: &Path| !p.starts_with("d1");
        let (seen, ok) = walk_with_helper(&tree, &enters, "helper");
        assert!(ok);
        assert!(seen.contains(&PathBuf::from("d1")));
        let below_d1 = |p: &PathBuf| p.starts_with("d1") && p != Path::new("d1");
        assert!(!seen.iter().any(below_d1));
        let looks = tree.looks.into_inner().unwrap();
        assert!(!looks.iter().any(|(p, _)| p.starts_with("d1")), "{looks:?}");
        // All 121 folders but d1 and the 39 below it.
        assert_eq!(looks.len(), 121 - 40);
    }

    #[test]
    fn a_helper_that_fails_leaves_the_walk_to_look_itself() {
        let expected = alone(3, 3, 2);
        let tree = Tree::new(3, 3, 2);
        let (seen, ok) = walk_with_helper(&tree, &|_| true, "panicking-helper");
        assert!(!ok, "the helper panicked");
        assert_eq!(seen, expected);
    }

    #[test]
    fn the_helper_holds_at_most_its_budget_for_a_walk_that_lags() {
        // 64 folders of 2,000 names each below the root: 128k names.
        let tree = Tree::new(64, 1, 2000);
        let ahead = ReadAhead::default();
        std::thread::scope(|s| {
            let _stop = ahead.stopper();
            s.spawn(|| ahead.run(&|_| true, |r| tree.look(r)));
            ahead.take(Path::new(""), |r| tree.look(r)).unwrap();
            // The walk lags: the helper looks ahead until it holds its budget.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                let st = ahead.lock();
                if st.held_names >= MAX_AHEAD_NAMES && st.waiting > 0 {
                    break;
                }
                drop(st);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            let held = ahead.lock().held_names;
            assert!(held >= MAX_AHEAD_NAMES, "{held}");
            assert!(held < MAX_AHEAD_NAMES + 2000, "{held}");
            // Taking what it holds lets it go on; the walk gets everything.
            for i in 0..64 {
                let l = ahead.take(&PathBuf::from(format!("d{i}")), |r| tree.look(r));
                assert_eq!(l.unwrap().len(), 2000);
            }
        });
    }
}
