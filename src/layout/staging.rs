//! Staging folders and other temporary litter: how they are made so that a
//! crash leaves nothing that changes a later build, and how they are swept.
//!
//! A staging folder `.<name>.imgc-staging-<id>` sits beside its layout. It
//! is made under a temporary name (`.<name>.imgc-new-<id>`), its `lock`
//! file is created and locked (`flock`), and only then is it renamed to its
//! staging name: so a staging folder always holds a lock while its build
//! lives, and the kernel drops the lock when the build dies, even by
//! `kill -9`. A staging folder is removed by renaming it to a trash name
//! (`.<name>.imgc-trash-<id>`) first, so one being removed never looks
//! like a live one. [`sweep`] removes every staging folder whose lock it
//! can take (its build is gone) or that has no lock, every trash folder,
//! and `imgc-new-` folders whose lock it can take or that are older than a
//! minute.
//!
//! Live temporary paths are also listed in [`ACTIVE`], so that a SIGINT or
//! SIGTERM handler (the CLI's) can remove them before the process exits
//! ([`remove_active`]).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Temporary paths of this process to remove if it is interrupted.
static ACTIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// `imgc-new-` folders older than this are litter.
const NEW_GRACE: Duration = Duration::from_secs(60);

/// Lists a temporary path (a folder or a file) for [`remove_active`].
pub fn register(path: &Path) {
    ACTIVE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(path.to_path_buf());
}

/// Takes a path off the list (it was removed or kept on purpose).
pub fn unregister(path: &Path) {
    ACTIVE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|p| p != path);
}

/// Removes every temporary path this process still has (for a signal
/// handler, right before the process exits). Returns how many.
pub fn remove_active() -> usize {
    let paths = std::mem::take(&mut *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()));
    let mut removed = 0;
    for p in paths {
        let gone = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&p).is_ok(),
            Ok(_) => fs::remove_file(&p).is_ok(),
            Err(_) => false,
        };
        removed += usize::from(gone);
    }
    removed
}

/// A staging folder, locked while this value lives.
#[derive(Debug)]
pub struct Staging {
    /// The folder.
    pub path: PathBuf,
    layout_name: String,
    _lock: File,
    /// It became the layout itself ([`Staging::promote`]): nothing to remove.
    promoted: bool,
}

fn unique_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The names of a layout's staging folders start with this.
pub fn staging_prefix(layout_name: &str) -> String {
    format!(".{layout_name}.imgc-staging-")
}

fn new_prefix(layout_name: &str) -> String {
    format!(".{layout_name}.imgc-new-")
}

fn trash_prefix(layout_name: &str) -> String {
    format!(".{layout_name}.imgc-trash-")
}

/// Removes a temporary folder: renamed to a trash name first (atomic), so
/// it never looks live while half removed.
fn discard(path: &Path, layout_name: &str) {
    let trash = path.with_file_name(format!("{}{}", trash_prefix(layout_name), unique_id()));
    match fs::rename(path, &trash) {
        Ok(()) => {
            let _ = fs::remove_dir_all(&trash);
        }
        Err(_) => {
            let _ = fs::remove_dir_all(path);
        }
    }
}

impl Staging {
    /// Makes a locked staging folder in `parent` for the layout `name`.
    pub fn create(parent: &Path, name: &str) -> io::Result<Staging> {
        let id = unique_id();
        let fresh = parent.join(format!("{}{id}", new_prefix(name)));
        let path = parent.join(format!("{}{id}", staging_prefix(name)));
        fs::create_dir(&fresh)?;
        register(&fresh);
        let made = (|| {
            let lock = make_lock(&fresh)?;
            fs::rename(&fresh, &path)?;
            Ok(lock)
        })();
        unregister(&fresh);
        match made {
            Ok(lock) => {
                register(&path);
                Ok(Staging {
                    path,
                    layout_name: name.to_string(),
                    _lock: lock,
                    promoted: false,
                })
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&fresh);
                Err(e)
            }
        }
    }

    /// Makes the staging folder, complete, the layout `target`, which must
    /// not exist: `Ok(true)` when it did. `Ok(false)` when `target` exists
    /// by now (another build made it) or the filesystem cannot rename
    /// without replacing: the folder is a locked staging folder again.
    ///
    /// The folder is protected from [`sweep`] all along: it is renamed to an
    /// `imgc-new-` name while still locked, loses its lock file there
    /// (a young `imgc-new-` folder of a live process is left alone), and is
    /// renamed to `target` only if nothing is there (`RENAME_NOREPLACE`).
    /// A crash between the steps leaves a folder `sweep` removes.
    pub fn promote(&mut self, target: &Path) -> io::Result<bool> {
        let parent = self.path.parent().unwrap_or(Path::new("."));
        let fresh = parent.join(format!("{}{}", new_prefix(&self.layout_name), unique_id()));
        fs::rename(&self.path, &fresh)?;
        register(&fresh);
        unregister(&self.path);
        let unlocked = fs::remove_file(fresh.join("lock")).is_ok();
        if unlocked && rename_new(&fresh, target) {
            unregister(&fresh);
            self.promoted = true;
            return Ok(true);
        }
        // Locked again (a new lock file: the old one's lock is still held
        // through the old handle) before it takes its staging name back.
        let back = (|| {
            if unlocked {
                self._lock = make_lock(&fresh)?;
            }
            fs::rename(&fresh, &self.path)
        })();
        unregister(&fresh);
        register(&self.path);
        back.map(|()| false)
    }
}

/// A new `lock` file in `dir`, locked (`flock`).
fn make_lock(dir: &Path) -> io::Result<File> {
    let lock = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join("lock"))?;
    lock.lock()?;
    Ok(lock)
}

/// Renames `from` to `to` unless something is at `to` (or the filesystem
/// cannot promise that: no `RENAME_NOREPLACE`). Whether it did.
fn rename_new(from: &Path, to: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).ok();
    let (Some(from_c), Some(to_c)) = (c(from), c(to)) else {
        return false;
    };
    // SAFETY: two NUL-terminated paths, relative to the working folder.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    r == 0
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.promoted {
            discard(&self.path, &self.layout_name);
        }
        unregister(&self.path);
    }
}

/// Whether a live process holds the lock of a temporary folder. Without a
/// lock file, a staging folder is dead (it gets its lock before its name),
/// and an `imgc-new-` folder is live only while young (its lock may be
/// about to be made).
fn is_live(dir: &Path, new: bool) -> bool {
    let lock = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join("lock"));
    match lock {
        // Locked: live. Unlocked: its build is gone, unless it is a young
        // `imgc-new-` folder of a live process, whose maker has made the
        // lock file and not yet locked it (the lock is dropped with `f`).
        Ok(f) => f.try_lock().is_err() || (new && is_young(dir) && maker_alive(dir)),
        // Not locked yet: a build between making the folder and locking it
        // (young, and its process alive), or one killed there.
        Err(_) => new && is_young(dir) && maker_alive(dir),
    }
}

/// Whether the process named in a temporary folder's name (`…-<pid>-…`,
/// see `unique_id`) is alive; `true` when it cannot be told.
fn maker_alive(dir: &Path) -> bool {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let pid = name
        .rsplit_once(".imgc-new-")
        .and_then(|(_, id)| id.split('-').next())
        .and_then(|p| p.parse::<libc::pid_t>().ok());
    match pid {
        Some(pid) if pid > 0 => {
            // SAFETY: signal 0 only checks that the process exists.
            let r = unsafe { libc::kill(pid, 0) };
            r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
        }
        _ => true,
    }
}

fn is_young(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age < NEW_GRACE)
}

/// Removes the temporary folders of the layout `name` in `parent` whose
/// build is gone. Symlinks are never followed. Returns how many were removed.
pub fn sweep(parent: &Path, name: &str) -> usize {
    let Ok(entries) = fs::read_dir(parent) else {
        return 0;
    };
    let (staging, fresh, trash) = (staging_prefix(name), new_prefix(name), trash_prefix(name));
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(n) = file_name.to_str() else {
            continue;
        };
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let stale = is_dir
            && ((n.starts_with(&staging) && !is_live(&path, false))
                || (n.starts_with(&fresh) && !is_live(&path, true))
                || n.starts_with(&trash));
        if stale && fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unlocked_new_folder_is_kept_while_its_maker_lives() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        // Killed between making the folder and locking it: swept at once.
        let dead = dir
            .path()
            .join(format!("{}{dead_pid}-1-0", new_prefix("out")));
        fs::create_dir(&dead).unwrap();
        // This process is alive: its young folder is left alone.
        let alive = dir
            .path()
            .join(format!("{}{}-1-0", new_prefix("out"), std::process::id()));
        fs::create_dir(&alive).unwrap();
        // Its lock file made and not locked yet: left alone too (a
        // concurrent build swept such a folder, and its maker failed).
        let making = dir
            .path()
            .join(format!("{}{}-2-0", new_prefix("out"), std::process::id()));
        fs::create_dir(&making).unwrap();
        fs::write(making.join("lock"), "").unwrap();
        assert_eq!(sweep(dir.path(), "out"), 1);
        assert!(!dead.exists() && alive.is_dir() && making.is_dir());
    }

    #[test]
    fn staging_of_a_dead_build_is_swept_and_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let live = Staging::create(dir.path(), "out").unwrap();
        // A build that died: its folder is there, its lock free.
        let dead = dir.path().join(format!("{}1-2-3", staging_prefix("out")));
        fs::create_dir(&dead).unwrap();
        File::create(dead.join("lock")).unwrap();
        fs::write(dead.join("blob"), b"x").unwrap();
        // Another layout's staging is not ours to touch.
        let other = dir.path().join(format!("{}1-2-3", staging_prefix("other")));
        fs::create_dir(&other).unwrap();
        File::create(other.join("lock")).unwrap();
        assert_eq!(sweep(dir.path(), "out"), 1);
        assert!(live.path.is_dir() && !dead.exists() && other.is_dir());
        let path = live.path.clone();
        drop(live);
        assert!(!path.exists());
    }

    #[test]
    fn a_staging_folder_that_cannot_take_the_target_is_a_live_staging_folder_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Staging::create(dir.path(), "out").unwrap();
        fs::write(st.path.join("data"), "x").unwrap();
        let target = dir.path().join("out");
        fs::create_dir(&target).unwrap();
        assert!(!st.promote(&target).unwrap());
        assert!(st.path.join("data").is_file(), "back under its name");
        assert!(is_live(&st.path, false), "locked again");
        assert_eq!(sweep(dir.path(), "out"), 0, "a sweep leaves it alone");
        assert!(
            fs::read_dir(&target).unwrap().next().is_none(),
            "target untouched"
        );
        let path = st.path.clone();
        drop(st);
        assert!(!path.exists(), "removed when dropped, as before");

        // Where nothing is, it becomes the target: no lock file, no litter.
        let mut st = Staging::create(dir.path(), "new").unwrap();
        fs::write(st.path.join("data"), "y").unwrap();
        let target = dir.path().join("new");
        assert!(st.promote(&target).unwrap());
        drop(st);
        let names: Vec<_> = fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["data"]);
        let mut beside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        beside.sort();
        assert_eq!(beside, ["new", "out"]);
    }
}
