//! The planner's only window on the world: the build context and the bases,
//! each behind a small trait. The planner does no I/O of its own; the binary
//! hands it the real context ([`crate::sources::DiskContext`], race-safe and
//! never following a symlink) and the real bases (local layouts and the
//! registry store), and tests hand it [`MemoryContext`] and
//! [`MemoryBases`], so that planning can be checked without a filesystem.
//!
//! Context paths are relative to the context's root and kept as raw OS
//! paths: a name that is not UTF-8 is an error only when a spec entry
//! selects it.

pub use crate::base::{Base, Bases};
use crate::base::{BaseError, BaseImage};
use crate::oci::Platform;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a context path is, as planning needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// Anything else (FIFO, socket, device), named for errors.
    Other(&'static str),
}

/// The facts about one context path that planning uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// What it is.
    pub kind: Kind,
    /// Its size in bytes (files).
    pub size: u64,
    /// Whether any execute bit is set (files).
    pub executable: bool,
    /// Device and inode: building refuses any other file found at the path.
    pub id: (u64, u64),
    /// When it last changed, and its mode: what the fingerprint cache
    /// compares to know a file unchanged without reading it.
    pub stamp: Stamp,
}

/// A file's change stamp as its filesystem reports it: modification and
/// status-change times in nanoseconds since the epoch, and the full mode.
/// Zero where unknown (a memory context): never matches a fingerprint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// `st_mtime` in nanoseconds.
    pub mtime_ns: i64,
    /// `st_ctime` in nanoseconds.
    pub ctime_ns: i64,
    /// `st_mode`, type bits included.
    pub mode: u32,
}

/// A build context. Paths are relative to its root (`""` is the root).
pub trait Context: Debug {
    /// The root, shown in errors and used by the build to open files.
    fn root(&self) -> &Path;
    /// What is at `rel`, without following a final symlink; `None` when
    /// nothing is there.
    fn stat(&self, rel: &Path) -> io::Result<Option<Stat>>;
    /// The names in the folder at `rel`, sorted bytewise, without the
    /// entries the context hides (the build's own output).
    fn list(&self, rel: &Path) -> io::Result<Vec<OsString>>;
    /// The target of the symlink at `rel`, verbatim.
    fn read_link(&self, rel: &Path) -> io::Result<PathBuf>;
    /// The names in the folder `rel` (what [`Context::list`] says), each
    /// with what is there (what [`Context::stat`] says of `rel/name`). A
    /// context may look at many names at once, or have looked ahead.
    fn list_stats(&self, rel: &Path) -> io::Result<Listing> {
        list_then_stat(self, rel)
    }
    /// Runs `walk`, which lists a folder and folders below it with
    /// [`Context::list_stats`], parents first, entering only folders for
    /// which `enters` holds. A context may look at those folders on another
    /// thread meanwhile; what `walk` sees is what looking then would say.
    fn walk_below(&self, enters: &(dyn Fn(&Path) -> bool + Sync), walk: &mut dyn FnMut()) {
        let _ = enters;
        walk()
    }
}

/// [`Context::list_stats`] from [`Context::list`] and a [`Context::stat`]
/// of each name.
pub fn list_then_stat<C: Context + ?Sized>(ctx: &C, rel: &Path) -> io::Result<Listing> {
    Ok(stat_each(ctx, rel, ctx.list(rel)?))
}

/// `names` of the folder `rel`, each with a [`Context::stat`].
pub fn stat_each<C: Context + ?Sized>(ctx: &C, rel: &Path, names: Vec<OsString>) -> Listing {
    names
        .into_iter()
        .map(|n| {
            let st = ctx.stat(&rel.join(&n));
            (n, st)
        })
        .collect()
}

/// A folder's names in bytewise order, each with what is there (`None`:
/// gone since it was listed).
pub type Listing = Vec<(OsString, io::Result<Option<Stat>>)>;

/// The two sources a plan is made from.
#[derive(Clone, Copy, Debug)]
pub struct Sources<'a> {
    /// The build context.
    pub context: &'a dyn Context,
    /// The bases.
    pub bases: &'a dyn Bases,
}

/// One node of a [`MemoryContext`].
#[derive(Clone, Debug)]
pub enum MemoryNode {
    /// A file with its bytes and whether it is executable.
    File(Vec<u8>, bool),
    /// A folder.
    Dir,
    /// A symlink and its target.
    Symlink(PathBuf),
    /// A FIFO, socket or device, by name.
    Other(&'static str),
}

/// A build context held in memory, for tests: it never touches a
/// filesystem, so a planner that did would fail against it (its root does
/// not exist).
#[derive(Clone, Debug, Default)]
pub struct MemoryContext {
    nodes: BTreeMap<PathBuf, MemoryNode>,
}

impl MemoryContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node at `rel`, and the folders above it.
    pub fn insert(&mut self, rel: impl Into<PathBuf>, node: MemoryNode) -> &mut Self {
        let rel = rel.into();
        for parent in rel.ancestors().skip(1) {
            if !parent.as_os_str().is_empty() {
                self.nodes.insert(parent.to_path_buf(), MemoryNode::Dir);
            }
        }
        self.nodes.insert(rel, node);
        self
    }

    /// Adds a file (mode 0644) with its bytes.
    pub fn file(&mut self, rel: impl Into<PathBuf>, bytes: &[u8]) -> &mut Self {
        self.insert(rel, MemoryNode::File(bytes.to_vec(), false))
    }

    fn ino(&self, rel: &Path) -> u64 {
        self.nodes
            .keys()
            .position(|k| k == rel)
            .map_or(0, |i| i as u64 + 1)
    }
}

impl Context for MemoryContext {
    fn root(&self) -> &Path {
        Path::new("/nonexistent/imgc-memory-context")
    }

    fn stat(&self, rel: &Path) -> io::Result<Option<Stat>> {
        let node = if rel.as_os_str().is_empty() {
            Some(&MemoryNode::Dir)
        } else {
            self.nodes.get(rel)
        };
        Ok(node.map(|n| {
            let (kind, size, executable) = match n {
                MemoryNode::File(b, x) => (Kind::File, b.len() as u64, *x),
                MemoryNode::Dir => (Kind::Dir, 0, false),
                MemoryNode::Symlink(_) => (Kind::Symlink, 0, false),
                MemoryNode::Other(what) => (Kind::Other(what), 0, false),
            };
            Stat {
                kind,
                size,
                executable,
                id: (1, self.ino(rel)),
                stamp: Stamp::default(),
            }
        }))
    }

    fn list(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        let mut names: Vec<OsString> = self
            .nodes
            .keys()
            .filter(|k| k.parent() == Some(rel))
            .filter_map(|k| k.file_name().map(|n| n.to_os_string()))
            .collect();
        names.sort();
        Ok(names)
    }

    fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        match self.nodes.get(rel) {
            Some(MemoryNode::Symlink(t)) => Ok(t.clone()),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "not a symlink")),
        }
    }
}

/// Bases held in memory, for tests: `scratch`, and any reference added with
/// its per-platform images.
#[derive(Clone, Debug, Default)]
pub struct MemoryBases {
    bases: BTreeMap<String, Vec<(Platform, BaseImage)>>,
}

impl MemoryBases {
    /// Only `scratch`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a reference offering these images.
    pub fn insert(&mut self, reference: &str, images: Vec<(Platform, BaseImage)>) -> &mut Self {
        self.bases.insert(reference.to_string(), images);
        self
    }
}

#[derive(Debug)]
struct MemoryBase {
    reference: String,
    images: Vec<(Platform, BaseImage)>,
}

impl Base for MemoryBase {
    fn platforms(&self) -> Vec<Platform> {
        self.images.iter().map(|(p, _)| p.clone()).collect()
    }

    fn select(&self, platform: &Platform) -> Result<BaseImage, BaseError> {
        if self.reference == "scratch" {
            return Ok(BaseImage::scratch());
        }
        self.images
            .iter()
            .find(|(p, _)| p.matches(platform))
            .map(|(_, b)| b.clone())
            .ok_or_else(|| BaseError::MissingPlatform {
                reference: self.reference.clone(),
                platform: platform.to_string(),
                available: crate::base::platform_names(&self.platforms()),
            })
    }
}

impl Bases for MemoryBases {
    fn open(&self, reference: &str) -> Result<Arc<dyn Base>, BaseError> {
        let images = match self.bases.get(reference) {
            Some(images) => images.clone(),
            None if reference == "scratch" => Vec::new(),
            None => {
                return Err(BaseError::RegistryUnsupported {
                    reference: reference.to_string(),
                })
            }
        };
        Ok(Arc::new(MemoryBase {
            reference: reference.to_string(),
            images,
        }))
    }
}
