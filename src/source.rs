//! Where the tree to package comes from: a commit in a git object database, or a directory.
//!
//! Both give the same thing: a sorted list of entries (path, kind, size) and, per worker
//! thread, a [`Reader`] that fetches one entry's bytes. The git side reads blobs straight from
//! the object database (no checkout, no copy of a 700 MB tree); every worker opens its own
//! `Repository`, because libgit2 handles are not shared across threads.

use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { exec: bool },
    Symlink,
}

/// One path of the tree, relative to its root, `/`-separated.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Bytes of a file, or length of a symlink's target (directory sources; for git ones,
    /// [`Reader::size`] asks the object database, off the listing's path); 0 for directories.
    pub size: u64,
    /// The git blob id (git sources only).
    pub oid: Option<Oid>,
    /// Modification time (directory sources only; 0 for git).
    pub mtime: i64,
}

/// A source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open git repository `{}`: {}", path.display(), source.message())]
    OpenRepo { path: PathBuf, source: git2::Error },
    #[error("ref `{reference}` does not exist in `{}`; check the name, or run `moodle-release merge` first", repo.display())]
    NoRef { reference: String, repo: PathBuf },
    #[error("`{reference}` in `{}` is not a commit: {}", repo.display(), source.message())]
    NotCommit {
        reference: String,
        repo: PathBuf,
        source: git2::Error,
    },
    #[error("`{path}` is a git submodule (gitlink): its files are not in this tree; graft the plugin with `moodle-release merge` instead")]
    Submodule { path: String },
    #[error("cannot read `{path}` from git: {}", source.message())]
    Git { path: String, source: git2::Error },
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{}` is not a directory", path.display())]
    NotDir { path: PathBuf },
    #[error("`{}` is a {what}: only files, directories and symlinks can be packaged", path.display())]
    Special { path: PathBuf, what: &'static str },
}

/// The tree to package.
#[derive(Debug, Clone)]
pub enum Source {
    /// A commit's tree in the repository at `repo`.
    Git { repo: PathBuf, commit: Oid },
    /// A plain directory.
    Dir(PathBuf),
}

/// A resolved git commit and what we know of it.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub id: Oid,
    pub time: i64,
    /// Commits on the first-parent chain, this one included; `None` in a shallow clone, whose
    /// history stops early (the count would be too small to order builds).
    pub first_parent_count: Option<u64>,
}

/// Resolves `reference` (branch, tag, `refs/...` or commit id) in `repo`.
pub fn resolve(repo: &Path, reference: &str) -> Result<CommitInfo, SourceError> {
    limit_pack_maps();
    let r = Repository::open(repo).map_err(|source| SourceError::OpenRepo {
        path: repo.to_path_buf(),
        source,
    })?;
    let obj = r
        .revparse_single(reference)
        .map_err(|_| SourceError::NoRef {
            reference: reference.to_string(),
            repo: repo.to_path_buf(),
        })?;
    let commit = obj
        .peel_to_commit()
        .map_err(|source| SourceError::NotCommit {
            reference: reference.to_string(),
            repo: repo.to_path_buf(),
            source,
        })?;
    let git = |source| SourceError::Git {
        path: reference.to_string(),
        source,
    };
    let first_parent_count = if r.is_shallow() {
        None
    } else {
        let mut walk = r.revwalk().map_err(git)?;
        walk.push(commit.id()).map_err(git)?;
        walk.simplify_first_parent().map_err(git)?;
        let mut count = 0u64;
        for c in walk {
            c.map_err(git)?;
            count += 1;
        }
        Some(count)
    };
    Ok(CommitInfo {
        id: commit.id(),
        time: commit.time().seconds(),
        first_parent_count,
    })
}

/// Decides which paths are left out (`.git*` metadata and the configured globs).
pub struct Filter {
    globs: globset::GlobSet,
}

impl Filter {
    /// `globs` were checked when the config was read.
    pub fn new(globs: &[String]) -> Filter {
        let mut b = globset::GlobSetBuilder::new();
        for g in globs {
            if let Ok(g) = globset::GlobBuilder::new(g).literal_separator(true).build() {
                b.add(g);
            }
        }
        Filter {
            globs: b.build().unwrap_or_else(|_| globset::GlobSet::empty()),
        }
    }

    /// True when `path` (relative, `/`-separated) must not be packaged.
    pub fn excluded(&self, path: &[u8]) -> bool {
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        if name.starts_with(b".git") {
            return true;
        }
        match std::str::from_utf8(path) {
            Ok(p) => self.globs.is_match(p),
            Err(_) => self.globs.is_match(String::from_utf8_lossy(path).as_ref()),
        }
    }
}

impl Source {
    /// Every entry of the tree not excluded by `filter`, in tar order (see [`sort_key`]).
    pub fn list(&self, filter: &Filter) -> Result<Vec<Entry>, SourceError> {
        match self {
            Source::Git { repo, commit } => list_git(repo, *commit, filter),
            Source::Dir(root) => {
                let meta = std::fs::metadata(root).map_err(|source| SourceError::Io {
                    path: root.clone(),
                    source,
                })?;
                if !meta.is_dir() {
                    return Err(SourceError::NotDir { path: root.clone() });
                }
                let mut out = Vec::new();
                list_dir(root, Vec::new(), filter, &mut out)?;
                Ok(out)
            }
        }
    }

    /// A reader for one thread.
    pub fn reader(&self) -> Result<Reader, SourceError> {
        match self {
            Source::Git { repo, .. } => {
                limit_pack_maps();
                Ok(Reader::Git(Repository::open(repo).map_err(|source| {
                    SourceError::OpenRepo {
                        path: repo.clone(),
                        source,
                    }
                })?))
            }
            Source::Dir(root) => Ok(Reader::Dir(root.clone())),
        }
    }
}

/// Also turns off libgit2's re-hashing of objects on read (see below).
///
/// libgit2 reads packs through mmap windows, up to 8 GiB of them by default on 64-bit: every
/// page it touched stays mapped (and counted as resident) until the limit is hit. Streaming a
/// tree reads each object once, so a small window budget costs nothing and keeps memory flat.
fn limit_pack_maps() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: called once, before this process's readers open their repositories (the
        // options are global to libgit2 and read when packs are mapped).
        unsafe {
            let _ = git2::opts::set_mwindow_size(16 << 20);
            let _ = git2::opts::set_mwindow_mapped_limit(48 << 20);
        }
        // libgit2 re-hashes every object it reads with collision-detecting SHA-1: a quarter of
        // a build's CPU. git itself does not on reads; pack data is still checked by zlib's
        // checksums, and the package's md5sums are computed from what was read.
        git2::opts::strict_hash_verification(false);
    });
}

/// Sort key that keeps each directory's contents together, as git trees and dpkg-deb do:
/// a directory sorts as its path followed by `/`.
pub fn sort_key(path: &[u8], is_dir: bool) -> Vec<u8> {
    let mut k = path.to_vec();
    if is_dir {
        k.push(b'/');
    }
    k
}

fn list_git(repo: &Path, commit: Oid, filter: &Filter) -> Result<Vec<Entry>, SourceError> {
    let r = Repository::open(repo).map_err(|source| SourceError::OpenRepo {
        path: repo.to_path_buf(),
        source,
    })?;
    let git = |path: &str| {
        let path = path.to_string();
        move |source| SourceError::Git { path, source }
    };
    let tree = r
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(git("/"))?;
    let mut out = Vec::new();
    let mut failure = None;
    tree.walk(TreeWalkMode::PreOrder, |dir, e| {
        let mut path = dir.as_bytes().to_vec();
        path.extend_from_slice(e.name_bytes());
        if filter.excluded(&path) {
            return TreeWalkResult::Skip;
        }
        let kind = match (e.kind(), e.filemode()) {
            (Some(ObjectType::Tree), _) => Kind::Dir,
            (Some(ObjectType::Blob), 0o120000) => Kind::Symlink,
            (Some(ObjectType::Blob), m) => Kind::File {
                exec: m & 0o111 != 0,
            },
            (Some(ObjectType::Commit), _) | (None, 0o160000) => {
                failure = Some(SourceError::Submodule {
                    path: String::from_utf8_lossy(&path).into_owned(),
                });
                return TreeWalkResult::Abort;
            }
            _ => return TreeWalkResult::Skip,
        };
        out.push(Entry {
            path,
            kind,
            size: 0,
            oid: (kind != Kind::Dir).then(|| e.id()),
            mtime: 0,
        });
        TreeWalkResult::Ok
    })
    .map_err(|e| {
        failure.take().unwrap_or(SourceError::Git {
            path: "/".into(),
            source: e,
        })
    })?;
    if let Some(f) = failure {
        return Err(f);
    }
    Ok(out)
}

fn list_dir(
    root: &Path,
    rel: Vec<u8>,
    filter: &Filter,
    out: &mut Vec<Entry>,
) -> Result<(), SourceError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = root.join(std::ffi::OsStr::from_bytes(&rel));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SourceError::Io { path, source }
    };
    let mut children = Vec::new();
    for d in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let d = d.map_err(io(&dir))?;
        let mut path = rel.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(d.file_name().as_bytes());
        let full = d.path();
        let meta = std::fs::symlink_metadata(&full).map_err(io(&full))?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_file() {
            Kind::File {
                exec: meta.permissions().mode() & 0o111 != 0,
            }
        } else {
            let what = if ft.is_fifo() {
                "fifo"
            } else if ft.is_socket() {
                "socket"
            } else {
                "device"
            };
            return Err(SourceError::Special { path: full, what });
        };
        if filter.excluded(&path) {
            continue;
        }
        let size = match kind {
            Kind::Dir => 0,
            Kind::Symlink => std::fs::read_link(&full)
                .map_err(io(&full))?
                .as_os_str()
                .len() as u64,
            Kind::File { .. } => meta.len(),
        };
        children.push(Entry {
            path,
            kind,
            size,
            oid: None,
            mtime: std::os::unix::fs::MetadataExt::mtime(&meta),
        });
    }
    children.sort_by_cached_key(|e| sort_key(&e.path, e.kind == Kind::Dir));
    for e in children {
        let sub = (e.kind == Kind::Dir).then(|| e.path.clone());
        out.push(e);
        if let Some(sub) = sub {
            list_dir(root, sub, filter, out)?;
        }
    }
    Ok(())
}

/// Reads entries' bytes for one thread.
pub enum Reader {
    Git(Repository),
    Dir(PathBuf),
}

impl Reader {
    /// A file's content, or a symlink's target.
    pub fn read(&self, e: &Entry) -> Result<Vec<u8>, SourceError> {
        self.with(e, <[u8]>::to_vec)
    }

    /// Calls `f` with a file's content (or a symlink's target) without copying git blobs.
    pub fn with<R>(&self, e: &Entry, f: impl FnOnce(&[u8]) -> R) -> Result<R, SourceError> {
        use std::os::unix::ffi::OsStrExt;
        match self {
            Reader::Git(r) => {
                let git = |source| SourceError::Git {
                    path: String::from_utf8_lossy(&e.path).into_owned(),
                    source,
                };
                let oid = e
                    .oid
                    .ok_or_else(|| git(git2::Error::from_str("no blob id")))?;
                let odb = r.odb().map_err(git)?;
                let obj = odb.read(oid).map_err(git)?;
                Ok(f(obj.data()))
            }
            Reader::Dir(root) => {
                let p = root.join(std::ffi::OsStr::from_bytes(&e.path));
                let io = |source| SourceError::Io {
                    path: p.clone(),
                    source,
                };
                match e.kind {
                    Kind::Symlink => Ok(f(std::fs::read_link(&p)
                        .map_err(io)?
                        .as_os_str()
                        .as_bytes())),
                    _ => Ok(f(&std::fs::read(&p).map_err(io)?)),
                }
            }
        }
    }

    /// The bytes of a file or symlink target, without reading its content.
    pub fn size(&self, e: &Entry) -> Result<u64, SourceError> {
        match (self, e.oid) {
            (Reader::Git(r), Some(oid)) => r
                .odb()
                .and_then(|odb| odb.read_header(oid))
                .map(|(size, _)| size as u64)
                .map_err(|source| SourceError::Git {
                    path: String::from_utf8_lossy(&e.path).into_owned(),
                    source,
                }),
            _ => Ok(e.size),
        }
    }

    /// The git blob id of an entry (computed for directories, which have none stored).
    pub fn blob_id(&self, e: &Entry) -> Result<Oid, SourceError> {
        match e.oid {
            Some(o) => Ok(o),
            None => {
                let data = self.read(e)?;
                Oid::hash_object(ObjectType::Blob, &data).map_err(|source| SourceError::Git {
                    path: String::from_utf8_lossy(&e.path).into_owned(),
                    source,
                })
            }
        }
    }
}
