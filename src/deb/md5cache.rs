//! The MD5 of each git blob a build packaged, kept in the repository's git folder
//! (`.git/moodle-release/md5.cache`), so the next build hashes only the files that changed.
//!
//! A blob id names its content, so an entry never goes stale: the cache can only be missing or
//! damaged, and then it is ignored (the build hashes everything, as on a first build). It holds
//! the blobs of the last build only, so it stays the size of one tree (36 bytes a file).
//!
//! Format: `MRMD5v1\n`, then (20-byte blob id, 16-byte MD5) records sorted by id, then the
//! SHA-256 of everything before it.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use git2::Oid;
use sha2::{Digest, Sha256};

const MAGIC: &[u8] = b"MRMD5v1\n";
const RECORD: usize = 20 + 16;

/// Known MD5s by blob id.
#[derive(Debug, Default)]
pub struct Md5Cache {
    known: HashMap<Oid, [u8; 16]>,
    path: Option<PathBuf>,
}

impl Md5Cache {
    /// No cache (a `--dir` build, or a repository that cannot be opened).
    pub fn none() -> Md5Cache {
        Md5Cache::default()
    }

    /// The cache of the repository whose git folder is `git_dir`. A damaged file gives an
    /// empty cache and a warning; a missing one just an empty cache.
    pub fn open(git_dir: &Path) -> (Md5Cache, Option<String>) {
        let path = git_dir.join("moodle-release").join("md5.cache");
        let mut cache = Md5Cache {
            known: HashMap::new(),
            path: Some(path.clone()),
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (cache, None),
            Err(e) => {
                return (
                    cache,
                    Some(format!("{}: {e}; hashing every file", path.display())),
                )
            }
        };
        match parse(&bytes) {
            Some(known) => cache.known = known,
            None => {
                return (
                    cache,
                    Some(format!(
                        "{} is damaged; hashing every file (it is rewritten after this build)",
                        path.display()
                    )),
                )
            }
        }
        (cache, None)
    }

    pub fn get(&self, oid: &Oid) -> Option<[u8; 16]> {
        self.known.get(oid).copied()
    }

    /// Replaces the file with `entries` (the blobs of this build), written to a temporary name
    /// and renamed, so a reader never sees half a file.
    pub fn save(&self, entries: &mut Vec<(Oid, [u8; 16])>) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        entries.sort_unstable_by_key(|e| e.0);
        entries.dedup_by(|a, b| a.0 == b.0);
        let mut out = Vec::with_capacity(MAGIC.len() + entries.len() * RECORD + 32);
        out.extend_from_slice(MAGIC);
        for (oid, md5) in entries.iter() {
            out.extend_from_slice(oid.as_bytes());
            out.extend_from_slice(md5);
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        crate::fsutil::write_atomic(path, &out)
    }
}

fn parse(bytes: &[u8]) -> Option<HashMap<Oid, [u8; 16]>> {
    let body = bytes.strip_prefix(MAGIC)?;
    if body.len() < 32 || (body.len() - 32) % RECORD != 0 {
        return None;
    }
    let (records, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(records).as_slice() != sum {
        return None;
    }
    let mut known = HashMap::with_capacity((body.len() - 32) / RECORD);
    for r in body[..body.len() - 32].chunks_exact(RECORD) {
        let oid = Oid::from_bytes(&r[..20]).ok()?;
        known.insert(oid, r[20..].try_into().ok()?);
    }
    Some(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_reads_back_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (empty, warning) = Md5Cache::open(dir.path());
        assert!(empty.known.is_empty() && warning.is_none());
        let a = Oid::hash_object(git2::ObjectType::Blob, b"a").unwrap();
        let b = Oid::hash_object(git2::ObjectType::Blob, b"b").unwrap();
        let mut entries = vec![(b, [2; 16]), (a, [1; 16]), (b, [2; 16])];
        empty.save(&mut entries).unwrap();
        let (c, warning) = Md5Cache::open(dir.path());
        assert!(warning.is_none());
        assert_eq!(
            (c.known.len(), c.get(&a), c.get(&b)),
            (2, Some([1; 16]), Some([2; 16]))
        );

        let file = dir.path().join("moodle-release/md5.cache");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[MAGIC.len() + 25] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let (c, warning) = Md5Cache::open(dir.path());
        assert!(c.known.is_empty());
        assert!(warning.unwrap().contains("damaged"));
        std::fs::write(&file, &bytes[..40]).unwrap();
        assert!(Md5Cache::open(dir.path()).0.known.is_empty());
    }
}
