//! Expanding one rendered layer spec into its sorted entry list: globs over
//! the build context (never following a symlink, never leaving the context),
//! `dst` rules, mode and owner normalization, duplicate detection.

use super::{Entry, EntryKind, FileSource, PlanError};
use crate::spec::{Location, Mode, Owner};
use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
struct Collector {
    entries: BTreeMap<String, (Entry, usize)>,
    origins: Vec<Location>,
    /// Folders never read, even when a glob covers them (the output layout).
    skip: Vec<PathBuf>,
}

impl Collector {
    fn add(&mut self, entry: Entry, origin: usize) -> Result<(), PlanError> {
        if let Some((_, first)) = self.entries.get(&entry.path) {
            if *first == origin {
                return Ok(());
            }
            return Err(PlanError::DuplicateDst {
                path: format!("/{}", entry.path),
                first: Box::new(self.origins[*first].clone()),
                location: Box::new(self.origins[origin].clone()),
            });
        }
        self.entries.insert(entry.path.clone(), (entry, origin));
        Ok(())
    }
}

/// Expands a layer's items into sorted entries.
pub(crate) fn expand(
    context: &Path,
    skip: &[PathBuf],
    defaults: &LayerDefaults,
    files: Vec<FileItem>,
    dirs: Vec<DirItem>,
    links: Vec<LinkItem>,
) -> Result<Vec<Entry>, PlanError> {
    let mut c = Collector {
        entries: BTreeMap::new(),
        origins: Vec::new(),
        skip: skip.to_vec(),
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
        expand_file(context, defaults, f, origin, &mut c)?;
    }
    let mut out: Vec<Entry> = c.entries.into_values().map(|(e, _)| e).collect();
    // Bytewise by the name stored in the tar (folders end with `/`): a parent
    // is a prefix of its children, so it always comes first.
    out.sort_by_cached_key(Entry::tar_name);
    Ok(out)
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
        _ => format!("{base}/{rel}"),
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
    context: &Path,
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
                add_glob(context, &item, src, &rel, c)
            } else {
                add_path(context, &item, src, &rel, c)
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
fn add_path(
    context: &Path,
    item: &Item,
    src: &str,
    rel: &Path,
    c: &mut Collector,
) -> Result<(), PlanError> {
    let f = item.f;
    let excludes = build_globset(&f.exclude, &f.location)?;
    check_no_symlink_ancestors(context, rel, src, &f.location)?;
    let path = context.join(rel);
    let md = match std::fs::symlink_metadata(&path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && f.optional => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PlanError::SrcNotFound {
                src: src.to_string(),
                location: item.loc(),
            })
        }
        Err(source) => return Err(PlanError::ReadContext { path, source }),
    };
    let dst = &item.dst;
    if md.is_dir() {
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
            context,
            dst,
            select: None,
            excludes: &excludes,
            meta: &item.meta,
            origin: item.origin,
            location: &f.location,
        };
        walk.add_below(&path, c)?;
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
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        join_image(dst, &name)
    } else {
        dst.clone()
    };
    let e = make_entry(context, &path, target, &md, &item.meta, &f.location)?;
    c.add(e, item.origin)
}

/// A glob: walk below its literal prefix, match context-relative paths.
fn add_glob(
    context: &Path,
    item: &Item,
    src: &str,
    rel: &Path,
    c: &mut Collector,
) -> Result<(), PlanError> {
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
    let root = context.join(&prefix);
    if !prefix.as_os_str().is_empty() {
        check_no_symlink_ancestors(context, &prefix, src, &f.location)?;
        if std::fs::symlink_metadata(&root).is_ok_and(|m| m.is_symlink()) {
            return Err(PlanError::SrcThroughSymlink {
                src: src.to_string(),
                link: path_str(&prefix),
                location: item.loc(),
            });
        }
    }
    let walk = Walk {
        context,
        dst: &item.dst,
        select: Some(&glob),
        excludes: &excludes,
        meta: &item.meta,
        origin: item.origin,
        location: &f.location,
    };
    let matched = root.is_dir() && walk.add_below(&root, c)?;
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
    context: &'a Path,
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

impl Walk<'_> {
    /// Adds what lies below `root` (never following a symlink, never entering a
    /// skipped folder or an excluded one) at `dst` + its path below `root`.
    /// Returns whether anything matched.
    fn add_below(&self, root: &Path, c: &mut Collector) -> Result<bool, PlanError> {
        let mut matched = false;
        // Folders matched by `select`, whose whole content is copied.
        let mut copied: Vec<PathBuf> = Vec::new();
        let mut walk = walkdir::WalkDir::new(root)
            .follow_links(false)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter();
        while let Some(item) = walk.next() {
            let item = item.map_err(|e| walk_error(root, e))?;
            let path = item.path();
            let is_dir = item.file_type().is_dir();
            if is_skipped(path, &c.skip) {
                if is_dir {
                    walk.skip_current_dir();
                }
                continue;
            }
            let below = relative(root, path)?;
            let ctx_rel = relative(self.context, path)?;
            if let Some(glob) = self.select {
                while copied.last().is_some_and(|d| !path.starts_with(d)) {
                    copied.pop();
                }
                if copied.is_empty() && !glob.is_match(&ctx_rel) {
                    continue;
                }
            }
            if is_excluded(self.excludes, &below, &ctx_rel) {
                if is_dir {
                    walk.skip_current_dir();
                }
                continue;
            }
            matched = true;
            let md = path
                .symlink_metadata()
                .map_err(|source| PlanError::ReadContext {
                    path: path.to_path_buf(),
                    source,
                })?;
            if self.select.is_some() && md.is_dir() {
                copied.push(path.to_path_buf());
            }
            let target = join_image(self.dst, &below);
            c.add(
                make_entry(self.context, path, target, &md, self.meta, self.location)?,
                self.origin,
            )?;
        }
        Ok(matched)
    }
}

fn make_entry(
    context: &Path,
    path: &Path,
    target: String,
    md: &std::fs::Metadata,
    meta: &Meta,
    location: &Location,
) -> Result<Entry, PlanError> {
    let ft = md.file_type();
    let owner = meta.owner;
    if ft.is_symlink() {
        let link = std::fs::read_link(path).map_err(|source| PlanError::ReadContext {
            path: path.to_path_buf(),
            source,
        })?;
        let target_str = link.to_str().ok_or_else(|| PlanError::NotUtf8 {
            path: path.to_path_buf(),
        })?;
        Ok(entry(
            target,
            EntryKind::Symlink {
                target: target_str.to_string(),
            },
            0o777,
            owner,
        ))
    } else if ft.is_dir() {
        Ok(entry(target, EntryKind::Dir, meta.dir_mode, owner))
    } else if ft.is_file() {
        let exec = md.permissions().mode() & 0o111 != 0;
        let mode = meta
            .file_mode
            .map_or(if exec { 0o755 } else { 0o644 }, |m| m.0);
        let rel = relative(context, path)?;
        Ok(entry(
            target,
            EntryKind::File {
                source: FileSource::Context {
                    path: path.to_path_buf(),
                    rel,
                    id: (md.dev(), md.ino()),
                },
                size: md.len(),
            },
            mode,
            owner,
        ))
    } else {
        Err(PlanError::UnsupportedFileType {
            path: relative(context, path)?,
            kind: crate::fsx::kind_name(ft),
            location: Box::new(location.clone()),
        })
    }
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
    context: &Path,
    rel: &Path,
    src: &str,
    location: &Location,
) -> Result<(), PlanError> {
    let mut cur = context.to_path_buf();
    let mut shown = PathBuf::new();
    let parts: Vec<_> = rel.components().collect();
    for comp in parts.iter().take(parts.len().saturating_sub(1)) {
        cur.push(comp);
        shown.push(comp);
        match std::fs::symlink_metadata(&cur) {
            Ok(md) if md.is_symlink() => {
                return Err(PlanError::SrcThroughSymlink {
                    src: src.to_string(),
                    link: path_str(&shown),
                    location: Box::new(location.clone()),
                })
            }
            _ => {}
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
/// as the path below the src's root or as the context-relative path.
fn is_excluded(excludes: &GlobSet, below: &str, ctx_rel: &str) -> bool {
    if excludes.is_empty() {
        return false;
    }
    let hit = |p: &str| {
        let mut end = p.len();
        loop {
            if excludes.is_match(&p[..end]) {
                return true;
            }
            match p[..end].rfind('/') {
                Some(i) => end = i,
                None => return false,
            }
        }
    };
    hit(below) || hit(ctx_rel)
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

fn relative(base: &Path, path: &Path) -> Result<String, PlanError> {
    let rel = path.strip_prefix(base).unwrap_or(path);
    rel.to_str()
        .map(|s| s.to_string())
        .ok_or_else(|| PlanError::NotUtf8 {
            path: path.to_path_buf(),
        })
}

fn walk_error(root: &Path, e: walkdir::Error) -> PlanError {
    let path = e.path().unwrap_or(root).to_path_buf();
    let source = e
        .into_io_error()
        .unwrap_or_else(|| std::io::Error::other("filesystem loop"));
    PlanError::ReadContext { path, source }
}
