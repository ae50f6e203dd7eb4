//! Publishing to `ssh://[user@]host[:port]/path`, through the same SSH layer as `roll` (host keys
//! checked).
//!
//! The repository's metadata (`dists/`, the public key, `.moodle-release/state.json`; never the
//! pool) is pulled into a local mirror, the ordinary local publish runs there, and what changed
//! is pushed back in the order that keeps every reader consistent: new pool files, by-hash
//! indices, plain indices, then Release.gpg, Release, InRelease, then state; each file lands by
//! `rename` on the server, then a `sync`. Files the publish collected are deleted last. A lock
//! directory on the server keeps two publishes apart, from any machine.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::AptError;
use crate::ssh::{quote, Conn, Ssh};

/// A connection to the repository's host.
pub struct Remote {
    ssh: Ssh,
    conn: Conn,
    pub url: String,
    pub path: String,
    locked: bool,
}

fn err(url: &str, message: String) -> AptError {
    AptError::Remote {
        url: url.to_string(),
        message,
    }
}

impl Remote {
    /// Connects to `dest` (`[user@]host[:port]`), whose repository is the folder `path`.
    pub fn connect(
        dest: &str,
        path: &str,
        ssh_cfg: &crate::config::Ssh,
    ) -> Result<Remote, AptError> {
        let url = &format!("ssh://{dest}{path}");
        let ssh = Ssh::new(ssh_cfg).map_err(|e| err(url, e.to_string()))?;
        let conn = ssh
            .connect("apt", dest)
            .map_err(|e| err(url, e.to_string()))?;
        Ok(Remote {
            ssh,
            conn,
            url: url.to_string(),
            path: path.to_string(),
            locked: false,
        })
    }

    fn run(&self, script: &str) -> Result<crate::ssh::Output, AptError> {
        self.ssh
            .run(&self.conn, script)
            .map_err(|e| err(&self.url, e.to_string()))
    }

    /// Takes the server-side lock (waits up to a minute for another publish).
    pub fn lock(&mut self) -> Result<(), AptError> {
        let p = quote(&self.path);
        let who = quote(&format!(
            "pid {} on {}",
            std::process::id(),
            crate::fsutil::hostname()
        ));
        let script = format!(
            "if [ -d {p} ] && [ -n \"$(ls -A {p})\" ] && [ ! -d {p}/.moodle-release ]; then exit 4; fi; mkdir -p {p}/.moodle-release && for i in $(seq 1 450); do if mkdir {p}/.moodle-release/remote.lock 2>/dev/null; then echo {who} > {p}/.moodle-release/remote.lock/owner; exit 0; fi; sleep 0.1; done; cat {p}/.moodle-release/remote.lock/owner; exit 3"
        );
        let out = self.run(&script)?;
        match out.code {
            Some(0) => {
                self.locked = true;
                Ok(())
            }
            Some(4) => Err(AptError::NotARepo(PathBuf::from(&self.url))),
            Some(3) => Err(AptError::Busy(PathBuf::from(format!(
                "{} (held by {})",
                self.url,
                out.text().trim()
            )))),
            _ => Err(err(&self.url, out.tail())),
        }
    }

    /// Pulls the metadata into `mirror`; returns what was pulled (path -> sha256).
    pub fn pull(&self, mirror: &Path) -> Result<BTreeMap<String, String>, AptError> {
        let p = quote(&self.path);
        let out = self.run(&format!(
            "cd {p} && set -- $(ls -d dists .moodle-release/state.json *.asc *.gpg 2>/dev/null) && if [ $# -gt 0 ]; then tar -cf - \"$@\"; fi"
        ))?;
        if !out.success() {
            return Err(err(
                &self.url,
                format!("reading the repository: {}", out.tail()),
            ));
        }
        fs::create_dir_all(mirror).map_err(|source| AptError::Io {
            path: mirror.to_path_buf(),
            source,
        })?;
        if !out.stdout.is_empty() {
            tar::Archive::new(&out.stdout[..])
                .unpack(mirror)
                .map_err(|e| {
                    err(
                        &self.url,
                        format!("unpacking the repository's metadata: {e}"),
                    )
                })?;
        }
        fs::create_dir_all(mirror.join(".moodle-release")).map_err(|source| AptError::Io {
            path: mirror.to_path_buf(),
            source,
        })?;
        Ok(manifest(mirror))
    }

    /// Pushes what changed in `mirror` since `before`, in reader-safe order, then deletes
    /// `deleted`. Over the mark for a reason: the order (pool, by-hash, indices, Release, then
    /// deletions) is what keeps an apt client reading meanwhile safe, and reads best whole.
    pub fn push(
        &self,
        mirror: &Path,
        before: &BTreeMap<String, String>,
        deleted: &[String],
    ) -> Result<(), AptError> {
        let after = manifest(mirror);
        let changed: Vec<&String> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        let is_release = |p: &str| {
            p.ends_with("/Release") && p.matches('/').count() == 2
                || p.ends_with("/InRelease")
                || p.ends_with("/Release.gpg")
        };
        let stages: [Vec<&String>; 5] = [
            changed
                .iter()
                .copied()
                .filter(|p| p.starts_with("pool/"))
                .collect(),
            changed
                .iter()
                .copied()
                .filter(|p| p.contains("/by-hash/"))
                .collect(),
            changed
                .iter()
                .copied()
                .filter(|p| p.starts_with("dists/") && !p.contains("/by-hash/") && !is_release(p))
                .collect(),
            changed
                .iter()
                .copied()
                .filter(|p| {
                    !p.starts_with("pool/")
                        && !p.starts_with("dists/")
                        && !p.starts_with(".moodle-release/")
                })
                .collect(),
            Vec::new(),
        ];
        for files in stages.iter().filter(|s| !s.is_empty()) {
            self.put(mirror, files)?;
        }
        // The Release files last, InRelease the very last (apt prefers it).
        for name in ["Release.gpg", "Release", "InRelease"] {
            let f: Vec<&String> = changed
                .iter()
                .copied()
                .filter(|p| {
                    p.starts_with("dists/")
                        && p.ends_with(&format!("/{name}"))
                        && p.matches('/').count() == 2
                })
                .collect();
            if !f.is_empty() {
                self.put(mirror, &f)?;
            }
        }
        let state: Vec<&String> = changed
            .iter()
            .copied()
            .filter(|p| p.starts_with(".moodle-release/"))
            .collect();
        if !state.is_empty() {
            self.put(mirror, &state)?;
        }
        if !deleted.is_empty() {
            let list = deleted
                .iter()
                .map(|d| quote(d))
                .collect::<Vec<_>>()
                .join(" ");
            let out = self.run(&format!("cd {} && rm -f {list}", quote(&self.path)))?;
            if !out.success() {
                return Err(err(
                    &self.url,
                    format!("deleting old files: {}", out.tail()),
                ));
            }
        }
        let out = self.run(&format!(
            "sync -f {} 2>/dev/null || sync",
            quote(&self.path)
        ))?;
        if !out.success() {
            return Err(err(&self.url, out.tail()));
        }
        Ok(())
    }

    /// Sends `files` in one tar stream to a staging folder on the server, syncs it, then renames
    /// each into place.
    fn put(&self, mirror: &Path, files: &[&String]) -> Result<(), AptError> {
        // The tar stream is made by a thread into a pipe and streamed over ssh: a new package
        // is never held in memory whole.
        let (reader, writer) = std::io::pipe().map_err(|source| AptError::Io {
            path: mirror.to_path_buf(),
            source,
        })?;
        let paths: Vec<(PathBuf, String)> = files
            .iter()
            .map(|f| (mirror.join(f), f.to_string()))
            .collect();
        let producer = std::thread::spawn(move || -> Result<(), AptError> {
            let mut b = tar::Builder::new(writer);
            for (path, name) in &paths {
                b.append_path_with_name(path, name)
                    .map_err(|source| AptError::Io {
                        path: path.clone(),
                        source,
                    })?;
            }
            b.into_inner().map(drop).map_err(|source| AptError::Io {
                path: PathBuf::from("tar"),
                source,
            })
        });
        let p = quote(&self.path);
        let script = format!(
            "set -e; cd {p}; stage=.moodle-release/incoming.$$; mkdir -p $stage; tar -xf - -C $stage; sync -f $stage 2>/dev/null || sync; cd $stage; find . -type f | while read -r f; do mkdir -p \"../../$(dirname \"$f\")\"; chmod 644 \"$f\"; mv -f \"$f\" \"../../$f\"; done; cd ../..; rm -rf $stage"
        );
        let out = self
            .ssh
            .run_with_input(&self.conn, &script, reader)
            .map_err(|e| err(&self.url, e.to_string()));
        let made = producer
            .join()
            .unwrap_or_else(|_| Err(err(&self.url, "the tar writer stopped".into())));
        let out = out?;
        made?;
        if !out.success() {
            return Err(err(
                &self.url,
                format!("writing {} file(s): {}", files.len(), out.tail()),
            ));
        }
        Ok(())
    }

    pub fn unlock(&mut self) {
        if self.locked {
            let _ = self.run(&format!(
                "rm -rf {}/.moodle-release/remote.lock",
                quote(&self.path)
            ));
            self.locked = false;
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.unlock();
    }
}

/// Every file under `root` (relative path -> sha256; `new` for pool files), the lock excluded.
fn manifest(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if rel.ends_with("/lock") || rel == ".moodle-release/lock" {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if rel.starts_with("pool/") {
                // The pool is never pulled: a package in the mirror is one this publish added.
                // No need to read (maybe 200 MB) to know it changed.
                out.insert(rel, "new".into());
            } else if let Ok(bytes) = fs::read(&p) {
                out.insert(rel, hex::encode(Sha256::digest(&bytes)));
            }
        }
    }
    out
}
