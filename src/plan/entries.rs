//! Expanding one rendered layer spec into its sorted entry list: globs over
//! the build context (never following a symlink, never leaving the context),
//! `dst` rules, mode and owner normalization, duplicate and contradiction
//! detection. The context is read only through the [`Context`] seam, with
//! raw OS paths: only what an entry selects must be UTF-8.

use super::sources::{Context, Kind, Listing, Stat};
use super::{Entry, EntryKind, FileSource, PlanError};
use crate::spec::{Location, Mode, Owner};
use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// A file entry after rendering.
pub(crate) struct FileItem {
    pub src: Option<String>,
    pub content: Option<String>,
    pub dst: String,
    pub exclude: Vec<String>,
    pub mode: Option<Mode>,
    pub dir_mode: Option<Mode>,
    pub owner: Option<Owner>,
    pub optional: bool,
    pub location: Location,
}

/// A folder entry after rendering.
pub(crate) struct DirItem {
    pub path: String,
    pub mode: Option<Mode>,
    pub owner: Option<Owner>,
    pub location: Location,
}

/// A symlink entry after rendering.
pub(crate) struct LinkItem {
    pub path: String,
    pub target: String,
    pub owner: Option<Owner>,
    pub location: Location,
}

/// Layer-wide defaults.
pub(crate) struct LayerDefaults {
    pub owner: Option<Owner>,
    pub mode: Option<Mode>,
    pub dir_mode: Option<Mode>,
}

/// Collects entries by image path, remembering which spec entry made each.
struct Collector<'a> {
    ctx: &'a dyn Context,
    /// Every entry added, with its origin; sorted and checked by `finish`
    /// (a map keyed by path cost a copy of each path and tree nodes: about
    /// 300 bytes per entry, measured on 100k files).
    entries: Vec<(Entry, usize)>,
    origins: Vec<Location>,
}

impl Collector<'_> {
    fn add(&mut self, entry: Entry, origin: usize) -> Result<(), PlanError> {
        self.entries.push((entry, origin));
        Ok(())
    }

    /// The entries sorted by tar name, once each. A path added twice by one
    /// item is kept once (its first); by two items, it is an error naming
    /// both, as is an entry below one that is not a folder.
    fn finish(self) -> Result<Vec<Entry>, PlanError> {
        let Collector {
            mut entries,
            origins,
            ..
        } = self;
        // Bytewise by the name stored in the tar (folders end with `/`): a
        // folder comes before what lies in it, and all that follows it at
        // once. Stable: of equal names, the first added comes first.
        entries.sort_by(|a, b| cmp_tar_names(&a.0, &b.0));
        let duplicate = |path: &str, first: usize, then: usize| PlanError::DuplicateDst {
            path: format!("/{path}"),
            first: Box::new(origins[first.min(then)].clone()),
            location: Box::new(origins[first.max(then)].clone()),
        };
        let mut unique: Vec<(Entry, usize)> = Vec::with_capacity(entries.len());
        for (entry, origin) in entries {
            match unique.last() {
                Some((last, first)) if last.path == entry.path => {
                    if *first != origin {
                        return Err(duplicate(&entry.path, *first, origin));
                    }
                }
                _ => unique.push((entry, origin)),
            }
        }
        // A folder and a file (or symlink) at one path have two tar names.
        for (entry, origin) in unique
            .iter()
            .filter(|(e, _)| matches!(e.kind, EntryKind::Dir))
        {
            if let Some((_, other)) = find_tar_name(&unique, entry.path.as_bytes()) {
                return Err(duplicate(&entry.path, *other, *origin));
            }
        }
        check_contradictions(&unique, &origins)?;
        Ok(unique.into_iter().map(|(e, _)| e).collect())
    }
}

/// The entry whose tar name is `name`, in entries sorted by tar name.
fn find_tar_name<'a>(entries: &'a [(Entry, usize)], name: &[u8]) -> Option<&'a (Entry, usize)> {
    let i = entries
        .binary_search_by(|(e, _)| cmp_tar_name(e, name))
        .ok()?;
    entries.get(i)
}

/// Orders an entry's tar name ([`Entry::tar_name`]) against `name`,
/// without making it.
fn cmp_tar_name(e: &Entry, name: &[u8]) -> std::cmp::Ordering {
    let x = e.path.as_bytes();
    let n = x.len().min(name.len());
    // Most differ within the shorter: one memcmp.
    x[..n]
        .cmp(&name[..n])
        .then_with(|| x[n..].iter().chain(slash(e)).cmp(name[n..].iter()))
}

/// Orders entries bytewise by the name stored in the tar
/// ([`Entry::tar_name`]: a folder's ends with `/`), without making it.
fn cmp_tar_names(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    let (x, y) = (a.path.as_bytes(), b.path.as_bytes());
    let n = x.len().min(y.len());
    // Most pairs differ within the shorter path: one memcmp.
    x[..n].cmp(&y[..n]).then_with(|| {
        let (rx, ry) = (x[n..].iter().chain(slash(a)), y[n..].iter().chain(slash(b)));
        rx.cmp(ry)
    })
}

/// What ends an entry's tar name after its path: `/` for a folder.
fn slash(e: &Entry) -> &'static [u8] {
    match e.kind {
        EntryKind::Dir => b"/",
        _ => b"",
    }
}

/// Refuses an entry below one that is not a folder (a file `/x` and
/// `/x/y`; a symlink `/etc` and `/etc/passwd`): its tar would write
/// through, or over, the other. `entries` are sorted by tar name, once
/// each, and no folder shares its path with another entry.
fn check_contradictions(entries: &[(Entry, usize)], origins: &[Location]) -> Result<(), PlanError> {
    // The folders above the entry at hand, each in the one before: in tar
    // name order, all that lies in a folder follows it at once.
    let mut above: Vec<&str> = Vec::new();
    for (entry, origin) in entries {
        let path = entry.path.as_str();
        let inside = |dir: &str| {
            path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
        };
        while above.last().is_some_and(|d| !inside(d)) {
            above.pop();
        }
        // What lies between the nearest folder above and the entry (its
        // ancestors further up were checked with that folder).
        let floor = above.last().map_or(0, |d| d.len());
        let mut end = path.len();
        while let Some(i) = path[..end].rfind('/').filter(|&i| i > floor) {
            end = i;
            let Some((other, first)) = find_tar_name(entries, &path.as_bytes()[..end]) else {
                continue;
            };
            let kind = match other.kind {
                EntryKind::Symlink { .. } => "a symlink",
                _ => "a file",
            };
            return Err(PlanError::EntryBelowNonFolder {
                path: format!("/{path}"),
                above: format!("/{}", &path[..end]),
                kind,
                first: Box::new(origins[*first].clone()),
                location: Box::new(origins[*origin].clone()),
            });
        }
        if matches!(entry.kind, EntryKind::Dir) {
            above.push(path);
        }
    }
    Ok(())
}

/// Expands a layer's items into sorted entries.
pub(crate) fn expand(
    ctx: &dyn Context,
    defaults: &LayerDefaults,
    files: Vec<FileItem>,
    dirs: Vec<DirItem>,
    links: Vec<LinkItem>,
) -> Result<Vec<Entry>, PlanError> {
    let mut c = Collector {
        ctx,
        entries: Vec::new(),
        origins: Vec::new(),
    };
    let owner_of = |o: Option<Owner>| o.or(defaults.owner).unwrap_or(Owner { uid: 0, gid: 0 });
    for d in dirs {
        let origin = c.origins.len();
        c.origins.push(d.location.clone());
        let path = image_path(&d.path, &d.location, "path")?;
        let owner = owner_of(d.owner);
        let mode = d.mode.or(defaults.dir_mode).map_or(0o755, |m| m.0);
        if path.is_empty() {
            return Err(PlanError::InvalidImagePath {
                path: d.path,
                reason: "the root folder cannot be declared",
                location: Box::new(d.location),
            });
        }
        c.add(entry(path, EntryKind::Dir, mode, owner), origin)?;
    }
    for l in links {
        let origin = c.origins.len();
        c.origins.push(l.location.clone());
        let path = image_path(&l.path, &l.location, "path")?;
        if path.is_empty() {
            return Err(PlanError::InvalidImagePath {
                path: l.path,
                reason: "the root folder cannot be a symlink",
                location: Box::new(l.location),
            });
        }
        if l.target.is_empty() || l.target.contains('\0') {
            return Err(PlanError::InvalidImagePath {
                path: l.target,
                reason: "a symlink target must be a non-empty path",
                location: Box::new(l.location),
            });
        }
        let owner = owner_of(l.owner);
        c.add(
            entry(path, EntryKind::Symlink { target: l.target }, 0o777, owner),
            origin,
        )?;
    }
    for f in files {
        let origin = c.origins.len();
        c.origins.push(f.location.clone());
        expand_file(defaults, f, origin, &mut c)?;
    }
    c.finish()
}

fn entry(path: String, kind: EntryKind, mode: u32, owner: Owner) -> Entry {
    Entry {
        path,
        kind,
        mode,
        uid: owner.uid,
        gid: owner.gid,
    }
}

/// Validates an absolute image path and returns it without the leading `/`
/// and without a trailing `/` (`""` is the root).
fn image_path(p: &str, location: &Location, key: &'static str) -> Result<String, PlanError> {
    let bad = |reason| PlanError::InvalidImagePath {
        path: p.to_string(),
        reason,
        location: Box::new(location.clone()),
    };
    let Some(rest) = p.strip_prefix('/') else {
        return Err(bad(if key == "dst" {
            "`dst` must be an absolute path in the image (start with `/`)"
        } else {
            "image paths must be absolute (start with `/`)"
        }));
    };
    if p.contains('\0') {
        return Err(bad("image paths cannot contain NUL"));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(String::new());
    }
    for part in rest.split('/') {
        match part {
            "" => return Err(bad("image paths cannot contain `//`")),
            "." | ".." => return Err(bad("image paths cannot contain `.` or `..` components")),
            _ => {}
        }
    }
    Ok(rest.to_string())
}

fn join_image(base: &str, rel: &str) -> String {
    match (base.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (_, true) => base.to_string(),
        _ => {
            // Not format!: its machinery shows when planning big trees.
            let mut s = String::with_capacity(base.len() + 1 + rel.len());
            s.push_str(base);
            s.push('/');
            s.push_str(rel);
            s
        }
    }
}

/// One `files` entry, with what was worked out from it.
struct Item<'a> {
    f: &'a FileItem,
    /// `dst` as an image path (no leading or trailing `/`).
    dst: String,
    /// Whether `dst` was written with a final `/` (a folder).
    dst_is_dir: bool,
    meta: Meta,
    origin: usize,
}

impl Item<'_> {
    fn loc(&self) -> Box<Location> {
        Box::new(self.f.location.clone())
    }
}

fn expand_file(
    defaults: &LayerDefaults,
    f: FileItem,
    origin: usize,
    c: &mut Collector,
) -> Result<(), PlanError> {
    let item = Item {
        dst: image_path(&f.dst, &f.location, "dst")?,
        dst_is_dir: f.dst.ends_with('/'),
        meta: Meta {
            owner: f
                .owner
                .or(defaults.owner)
                .unwrap_or(Owner { uid: 0, gid: 0 }),
            file_mode: f.mode.or(defaults.mode),
            dir_mode: f.dir_mode.or(defaults.dir_mode).map_or(0o755, |m| m.0),
        },
        origin,
        f: &f,
    };
    match (&f.src, &f.content) {
        (Some(_), Some(_)) => Err(PlanError::SrcAndContent {
            location: item.loc(),
        }),
        (None, None) => Err(PlanError::NoSrcNorContent {
            location: item.loc(),
        }),
        (None, Some(content)) => add_inline(&item, content, c),
        (Some(src), None) => {
            let rel = context_relative(src).ok_or_else(|| PlanError::SrcOutsideContext {
                src: src.clone(),
                location: item.loc(),
            })?;
            if src.contains(['*', '?', '[', '{']) {
                add_glob(&item, src, &rel, c)
            } else {
                add_path(&item, src, &rel, c)
            }
        }
    }
}

/// Inline `content`: one file at `dst`.
fn add_inline(item: &Item, content: &str, c: &mut Collector) -> Result<(), PlanError> {
    if item.dst_is_dir || item.dst.is_empty() {
        return Err(PlanError::InvalidImagePath {
            path: item.f.dst.clone(),
            reason: "an inline `content` needs a file path as `dst`, not a folder",
            location: item.loc(),
        });
    }
    let bytes = content.as_bytes().to_vec();
    let size = bytes.len() as u64;
    let e = entry(
        item.dst.clone(),
        EntryKind::File {
            source: FileSource::Inline(bytes),
            size,
        },
        item.meta.file_mode.map_or(0o644, |m| m.0),
        item.meta.owner,
    );
    c.add(e, item.origin)
}

/// A `src` naming one path: a file (or symlink) at `dst`, or a folder
/// copied recursively to `dst`.
fn add_path(item: &Item, src: &str, rel: &Path, c: &mut Collector) -> Result<(), PlanError> {
    let f = item.f;
    let excludes = build_globset(&f.exclude, &f.location)?;
    check_no_symlink_ancestors(c.ctx, rel, src, &f.location)?;
    let st = match stat(c.ctx, rel)? {
        Some(st) => st,
        None if f.optional => return Ok(()),
        None => {
            return Err(PlanError::SrcNotFound {
                src: src.to_string(),
                location: item.loc(),
            })
        }
    };
    let dst = &item.dst;
    if st.kind == Kind::Dir {
        // A folder is copied recursively to `dst`, which names the folder itself.
        if !dst.is_empty() {
            let e = entry(
                dst.clone(),
                EntryKind::Dir,
                item.meta.dir_mode,
                item.meta.owner,
            );
            c.add(e, item.origin)?;
        }
        let walk = Walk {
            dst,
            select: None,
            excludes: &excludes,
            meta: &item.meta,
            origin: item.origin,
            location: &f.location,
        };
        walk.add_below(rel, c)?;
        return Ok(());
    }
    if dst.is_empty() && !item.dst_is_dir {
        return Err(PlanError::InvalidImagePath {
            path: f.dst.clone(),
            reason: "a file cannot replace the root folder",
            location: item.loc(),
        });
    }
    let target = if item.dst_is_dir || dst.is_empty() {
        let name = rel.file_name().map(PathBuf::from).unwrap_or_default();
        join_image(dst, utf8_str(&name, &f.location)?)
    } else {
        dst.clone()
    };
    let e = make_entry(c.ctx, rel, target, &st, &item.meta, &f.location)?;
    c.add(e, item.origin)
}

/// A glob: walk below its literal prefix, match context-relative paths.
fn add_glob(item: &Item, src: &str, rel: &Path, c: &mut Collector) -> Result<(), PlanError> {
    let f = item.f;
    let excludes = build_globset(&f.exclude, &f.location)?;
    if !item.dst_is_dir {
        return Err(PlanError::GlobNeedsFolder {
            src: src.to_string(),
            dst: f.dst.clone(),
            location: item.loc(),
        });
    }
    let rel_str = path_str(rel);
    let prefix: PathBuf = rel_str
        .split('/')
        .take_while(|p| !p.contains(['*', '?', '[', '{']))
        .collect();
    let glob = GlobBuilder::new(&rel_str)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| PlanError::BadGlob {
            glob: src.to_string(),
            message: e.kind().to_string(),
            location: item.loc(),
        })?
        .compile_matcher();
    let root = stat(c.ctx, &prefix)?;
    if !prefix.as_os_str().is_empty() {
        check_no_symlink_ancestors(c.ctx, &prefix, src, &f.location)?;
        if root.is_some_and(|st| st.kind == Kind::Symlink) {
            return Err(PlanError::SrcThroughSymlink {
                src: src.to_string(),
                link: path_str(&prefix),
                location: item.loc(),
            });
        }
    }
    let walk = Walk {
        dst: &item.dst,
        select: Some(&glob),
        excludes: &excludes,
        meta: &item.meta,
        origin: item.origin,
        location: &f.location,
    };
    let is_dir = root.is_some_and(|st| st.kind == Kind::Dir);
    let matched = is_dir && walk.add_below(&prefix, c)?;
    if !matched && !f.optional {
        return Err(PlanError::GlobMatchedNothing {
            src: src.to_string(),
            location: item.loc(),
        });
    }
    Ok(())
}

struct Meta {
    owner: Owner,
    file_mode: Option<Mode>,
    dir_mode: u32,
}

/// A walk below a folder of the context, adding what it finds.
struct Walk<'a> {
    /// Where what lies below the walked folder goes in the image.
    dst: &'a str,
    /// Only paths whose context path matches (and all below a matched
    /// folder); `None`: everything.
    select: Option<&'a GlobMatcher>,
    excludes: &'a GlobSet,
    meta: &'a Meta,
    origin: usize,
    location: &'a Location,
}

/// A folder being walked: its context path, the names left to visit, and
/// whether it lies in a folder the glob matched (whose content is copied).
type Frame = (PathBuf, Listed, bool);

/// A folder's names in bytewise order, each with what is there.
type Listed = <Listing as IntoIterator>::IntoIter;

impl Walk<'_> {
    /// Adds what lies below `root` (never following a symlink, never entering
    /// an excluded folder; the context hides skipped ones) at `dst` + its path
    /// below `root`, in bytewise order, parents first. Returns whether
    /// anything matched.
    fn add_below(&self, root: &Path, c: &mut Collector) -> Result<bool, PlanError> {
        let ctx = c.ctx;
        let enters = |path: &Path| !is_excluded(self.excludes, below_root(root, path), path);
        let mut out = Ok(false);
        ctx.walk_below(&enters, &mut || out = self.walk(root, c));
        out
    }

    /// What [`Walk::add_below`] does, with the context's read-ahead on.
    fn walk(&self, root: &Path, c: &mut Collector) -> Result<bool, PlanError> {
        let mut matched = false;
        let mut stack: Vec<Frame> = vec![(root.to_path_buf(), list(c.ctx, root)?, false)];
        while let Some((dir, names, copied)) = stack.last_mut() {
            let Some((name, looked)) = names.next() else {
                stack.pop();
                continue;
            };
            let (path, copied) = (join_name(dir, &name), *copied);
            // Gone since it was listed: nothing to add.
            let Some(st) = looked.map_err(read_error(c.ctx, &path))? else {
                continue;
            };
            let below = below_root(root, &path);
            if is_excluded(self.excludes, below, &path) {
                continue;
            }
            let is_dir = st.kind == Kind::Dir;
            let selected = copied || self.select.is_none_or(|g| g.is_match(&path));
            if selected {
                matched = true;
                // The whole context path is checked, so errors name it.
                utf8_str(&path, self.location)?;
                let target = join_image(self.dst, utf8_str(below, self.location)?);
                let e = make_entry(c.ctx, &path, target, &st, self.meta, self.location)?;
                c.add(e, self.origin)?;
            }
            if is_dir {
                let names = list(c.ctx, &path)?;
                stack.push((path, names, selected && self.select.is_some()));
            }
        }
        Ok(matched)
    }
}

/// `dir`/`name` for a folder's entry `name`, made in one allocation
/// (`Path::join` copies `dir` exactly, then grows it for `name`).
fn join_name(dir: &Path, name: &std::ffi::OsStr) -> PathBuf {
    let mut p = PathBuf::with_capacity(dir.as_os_str().len() + 1 + name.len());
    p.push(dir);
    p.push(name);
    p
}

/// `path` below `root`, for a `path` made by joining names onto `root`:
/// sliced off by bytes (`Path::strip_prefix` parses both paths' components,
/// a few per cent of planning a big tree), else as `strip_prefix` does;
/// `path` itself when it is not below `root`.
fn below_root<'p>(root: &Path, path: &'p Path) -> &'p Path {
    let (r, p) = (root.as_os_str().as_bytes(), path.as_os_str().as_bytes());
    if r.is_empty() {
        return path;
    }
    match p.strip_prefix(r).and_then(|rest| rest.strip_prefix(b"/")) {
        Some(rest)
            if !rest.is_empty()
                && !rest.starts_with(b"/")
                && !rest.ends_with(b"/")
                && !r.ends_with(b"/") =>
        {
            Path::new(std::ffi::OsStr::from_bytes(rest))
        }
        _ => path.strip_prefix(root).unwrap_or(path),
    }
}

fn make_entry(
    ctx: &dyn Context,
    rel: &Path,
    target: String,
    st: &Stat,
    meta: &Meta,
    location: &Location,
) -> Result<Entry, PlanError> {
    let owner = meta.owner;
    match st.kind {
        Kind::Symlink => {
            let link = ctx.read_link(rel).map_err(read_error(ctx, rel))?;
            let target_str = utf8(&link, location)?;
            Ok(entry(
                target,
                EntryKind::Symlink { target: target_str },
                0o777,
                owner,
            ))
        }
        Kind::Dir => Ok(entry(target, EntryKind::Dir, meta.dir_mode, owner)),
        Kind::File => {
            let mode = meta
                .file_mode
                .map_or(if st.executable { 0o755 } else { 0o644 }, |m| m.0);
            let source = FileSource::Context {
                rel: utf8(rel, location)?,
                id: st.id,
                stamp: st.stamp,
            };
            let kind = EntryKind::File {
                source,
                size: st.size,
            };
            Ok(entry(target, kind, mode, owner))
        }
        Kind::Other(kind) => Err(PlanError::UnsupportedFileType {
            path: escaped(rel),
            kind,
            location: Box::new(location.clone()),
        }),
    }
}

/// The error of a failed read of the context path `rel` (its path made
/// only on failure).
fn read_error<'a>(ctx: &'a dyn Context, rel: &'a Path) -> impl FnOnce(io::Error) -> PlanError + 'a {
    move |source| PlanError::ReadContext {
        path: ctx.root().join(rel),
        source,
    }
}

/// What is at a context path.
fn stat(ctx: &dyn Context, rel: &Path) -> Result<Option<Stat>, PlanError> {
    ctx.stat(rel).map_err(read_error(ctx, rel))
}

/// The names in a context folder, sorted bytewise, each with what is there.
fn list(ctx: &dyn Context, rel: &Path) -> Result<Listed, PlanError> {
    Ok(ctx
        .list_stats(rel)
        .map_err(read_error(ctx, rel))?
        .into_iter())
}

/// A selected context path as UTF-8, which image paths must be.
fn utf8(p: &Path, location: &Location) -> Result<String, PlanError> {
    utf8_str(p, location).map(str::to_string)
}

/// `p` as text, borrowed, or the error naming it and `location`.
fn utf8_str<'p>(p: &'p Path, location: &Location) -> Result<&'p str, PlanError> {
    p.to_str().ok_or_else(|| PlanError::NotUtf8 {
        path: escaped(p),
        location: Box::new(location.clone()),
    })
}

/// A path for messages, with bytes that are not UTF-8 as `\xNN`.
fn escaped(p: &Path) -> String {
    let debug = format!("{:?}", p.as_os_str());
    debug
        .strip_prefix('"')
        .and_then(|d| d.strip_suffix('"'))
        .unwrap_or(&debug)
        .to_string()
}

/// `src` as a normalized relative path, or `None` when it is absolute or
/// climbs out with `..`.
fn context_relative(src: &str) -> Option<PathBuf> {
    if src.is_empty() || src.contains('\0') {
        return None;
    }
    let mut out = PathBuf::new();
    for comp in Path::new(src).components() {
        match comp {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Errors when any folder between the context and `rel`'s last component is
/// a symlink: imgc never follows symlinks in the context.
fn check_no_symlink_ancestors(
    ctx: &dyn Context,
    rel: &Path,
    src: &str,
    location: &Location,
) -> Result<(), PlanError> {
    let mut cur = PathBuf::new();
    let parts: Vec<_> = rel.components().collect();
    for comp in parts.iter().take(parts.len().saturating_sub(1)) {
        cur.push(comp);
        if stat(ctx, &cur)?.is_some_and(|st| st.kind == Kind::Symlink) {
            return Err(PlanError::SrcThroughSymlink {
                src: src.to_string(),
                link: path_str(&cur),
                location: Box::new(location.clone()),
            });
        }
    }
    Ok(())
}

fn build_globset(patterns: &[String], location: &Location) -> Result<GlobSet, PlanError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .or_else(|_| Glob::new(p))
            .map_err(|e| PlanError::BadGlob {
                glob: p.clone(),
                message: e.kind().to_string(),
                location: Box::new(location.clone()),
            })?;
        b.add(g);
    }
    b.build().map_err(|e| PlanError::BadGlob {
        glob: patterns.join(", "),
        message: e.to_string(),
        location: Box::new(location.clone()),
    })
}

/// Whether a path, or any folder above it, matches an exclude pattern, either
/// as the path below the src's root or as the context-relative path. Raw
/// OS paths: a name that is not UTF-8 can be excluded.
fn is_excluded(excludes: &GlobSet, below: &Path, ctx_rel: &Path) -> bool {
    if excludes.is_empty() {
        return false;
    }
    let hit = |p: &Path| {
        p.ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .any(|a| excludes.is_match(a))
    };
    hit(below) || hit(ctx_rel)
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_order_by_their_tar_names_as_made() {
        let file = |p: &str| {
            entry(
                p.into(),
                EntryKind::Symlink { target: "t".into() },
                0,
                Owner { uid: 0, gid: 0 },
            )
        };
        let dir = |p: &str| entry(p.into(), EntryKind::Dir, 0, Owner { uid: 0, gid: 0 });
        // '-' and '.' sort before '/', '0' after: a folder's name is not
        // its path.
        let all = [
            dir("a"),
            file("a-b"),
            file("a.b"),
            dir("a/b"),
            file("a/b/c"),
            file("a0"),
            dir("a-"),
            file("a"),
            dir(""),
            file("ab"),
        ];
        for x in &all {
            for y in &all {
                let want = x.tar_name().cmp(&y.tar_name());
                assert_eq!(
                    cmp_tar_name(x, y.tar_name().as_bytes()),
                    want,
                    "{} vs the name {}",
                    x.tar_name(),
                    y.tar_name()
                );
                assert_eq!(
                    cmp_tar_names(x, y),
                    want,
                    "{} vs {}",
                    x.tar_name(),
                    y.tar_name()
                );
            }
        }
    }

    #[test]
    fn a_path_below_its_root_is_what_strip_prefix_says() {
        let cases = [
            ("", "a"),
            ("", "a/b"),
            ("a", "a/b"),
            ("a/b", "a/b/c"),
            ("a/b", "a/b/c/d"),
            ("a", "ab/c"),
            ("a/", "a/b"),
            ("./a", "./a/b"),
            ("a", "a"),
            ("a", "b/c"),
            ("a", "a//b"),
            ("a", "a/b/"),
            ("a", "a/b//c"),
        ];
        for (root, path) in cases {
            let (root, path) = (Path::new(root), Path::new(path));
            let want = path.strip_prefix(root).unwrap_or(path);
            let got = below_root(root, path).as_os_str().as_bytes();
            assert_eq!(got, want.as_os_str().as_bytes(), "{root:?} {path:?}");
            let name = std::ffi::OsStr::new("n");
            assert_eq!(join_name(root, name), root.join(name), "{root:?}");
        }
    }
}
