//! `moodle-release publish` and `repo list`: a signed apt repository that keeps the versions
//! needed for rollback and never shows a half-written state.
//!
//! Layout, as Debian's archives:
//!
//! ```text
//! pool/<component>/<p>/<package>/<package>_<version>_all.deb
//! dists/<suite>/<component>/binary-<arch>/{Packages,Packages.gz,Packages.xz}
//! dists/<suite>/<component>/binary-<arch>/by-hash/SHA256/<hex>
//! dists/<suite>/{Release,InRelease,Release.gpg}
//! <suite>.asc, <suite>.gpg          the public key, for the nodes' signed-by=
//! ```
//!
//! Atomicity: a reader (apt-get update at any moment, also over HTTP) must always see a Release
//! whose indices match it. Everything a new Release names is written first (pool files, then
//! by-hash copies of the indices, then the indices under their plain names, each by rename), and
//! the Release files last. apt fetches indices by hash (`Acquire-By-Hash: yes`), so a client
//! holding the previous Release still finds the previous indices' by-hash copies: those are
//! deleted only after a grace period, as are pool files that left the index.
//!
//! The index is updated, not rebuilt: the current `Packages` is the database (the pool is never
//! scanned), so publishing into a repository of 50 versions costs what publishing into one does.

pub mod deb;
pub mod remote;
pub mod stanza;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::Md5;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{AptRepo, Config};
use crate::report::Reporter;
use stanza::Stanza;

/// How long files that a previous Release named are kept (by-hash indices, pool files that left
/// the index): longer than any `apt-get update` or `apt-get install` takes.
pub const GRACE: Duration = Duration::from_secs(3600);

/// A publish or a listing failed; the repository is as it was.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error("[apt] is missing from the config: publish needs at least `repo`")]
    NoApt,
    #[error("{url}: {message}")]
    Remote { url: String, message: String },
    #[error("{path}: {message}")]
    BadDeb { path: PathBuf, message: String },
    #[error("{path} is a package of `{found}`, not of this site's `{expected}`")]
    OtherPackage {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{package} {version} is already in the repository with different content (sha256 {existing}, this file {new}): versions are immutable; build with another --build-number")]
    Immutable {
        package: String,
        version: String,
        existing: String,
        new: String,
    },
    #[error("{0} holds something other than an apt repository made by moodle-release; give [apt] repo an empty or new folder")]
    NotARepo(PathBuf),
    #[error("the repository index {} cannot be read: {source}", path.display())]
    BadIndex {
        path: PathBuf,
        source: stanza::StanzaError,
    },
    #[error("signing with gpg key {key} failed: {message}")]
    Sign { key: String, message: String },
    #[error("another publish holds {0}; try again when it is done")]
    Busy(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl AptError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AptError::Busy(_) => 3,
            AptError::NoApt => 2,
            _ => 1,
        }
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> AptError + '_ {
    move |source| AptError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A package version in the repository.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub package: String,
    pub version: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    pub moodle_release: Option<String>,
    /// `build`'s hashes of every `$version` and of the `db/` folders: what `roll` compares.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_hash: Option<String>,
    /// The URL path of the package's release probe (`X-Moodle-Release-Probe`), which packages
    /// built before it existed do not have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// `Installed-Size`, in KiB: what the package takes on a node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_kib: Option<u64>,
    /// The deployment branch's commit it was built from (`X-Moodle-Source-Commit`; none for a
    /// package built from a folder): what builds the same version again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_commit: Option<String>,
}

#[cfg(test)]
impl Listed {
    /// Version `version` of `moodle-site` with the hashes `build` records and a release probe,
    /// as the roll's unit tests list it.
    pub fn sample(version: &str, versions_hash: &str, db_hash: &str) -> Listed {
        Listed {
            package: "moodle-site".into(),
            version: version.into(),
            filename: String::new(),
            size: 0,
            sha256: String::new(),
            moodle_release: None,
            versions_hash: Some(versions_hash.into()),
            db_hash: Some(db_hash.into()),
            probe: Some("/moodle-release-probe.php".into()),
            installed_kib: Some(1024),
            source_commit: None,
        }
    }
}

/// What `publish` did.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// Versions added by this publish.
    pub added: Vec<String>,
    /// Versions that were there with the same bytes.
    pub unchanged: Vec<String>,
    /// Versions that left the index (beyond `keep`).
    pub removed: Vec<String>,
    /// Versions whose in-place package (published before the site moved to the releases
    /// layout) the release of the same version replaced.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<String>,
    /// Every version now listed, newest first.
    pub versions: Vec<String>,
    pub repo: PathBuf,
    pub signed: bool,
    /// Files deleted by this publish (paths relative to the root), for a remote to mirror.
    #[serde(skip)]
    pub collected: Vec<String>,
}

/// Options of `publish`.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Versions that stay whatever `keep` says (e.g. what the nodes run now).
    pub keep_versions: Vec<String>,
}

/// The repository a config names.
pub struct Repo {
    pub root: PathBuf,
    pub suite: String,
    pub component: String,
    pub architectures: Vec<String>,
    pub keep: usize,
    pub sign_key: Option<String>,
    /// The site's `[site]`: its package, and its layout, which names the package of each version.
    pub site: crate::config::Site,
}

impl Repo {
    /// The site's package name (in the releases layout, each version's is `<it>-release-<v>`).
    pub fn package(&self) -> &str {
        &self.site.package.0
    }

    /// The repository of a local `[apt] repo` (for `ssh://`, see [`open`] and [`publish`]).
    pub fn from_config(cfg: &Config) -> Result<Repo, AptError> {
        let apt = cfg.apt.as_ref().ok_or(AptError::NoApt)?;
        match &apt.repo {
            AptRepo::Local(dir) => Self::with_root(cfg, cfg.base_dir.join(dir)),
            AptRepo::Ssh { .. } => Err(AptError::Remote {
                url: apt.repo.to_string(),
                message: "an ssh:// repository is opened through a local copy (apt::open)".into(),
            }),
        }
    }

    fn with_root(cfg: &Config, root: PathBuf) -> Result<Repo, AptError> {
        let apt = cfg.apt.as_ref().ok_or(AptError::NoApt)?;
        Ok(Repo {
            root,
            suite: apt.suite.clone(),
            component: apt.component.clone(),
            architectures: apt.architectures.clone(),
            keep: apt.keep.max(1) as usize,
            sign_key: apt.sign_key.clone().filter(|k| !k.trim().is_empty()),
            site: cfg.site.clone(),
        })
    }

    fn dist(&self) -> PathBuf {
        self.root.join("dists").join(&self.suite)
    }

    fn binary_dir(&self, arch: &str) -> PathBuf {
        self.dist()
            .join(&self.component)
            .join(format!("binary-{arch}"))
    }

    fn pool_dir(&self) -> PathBuf {
        let p = self.package();
        let prefix = if p.starts_with("lib") && p.len() > 3 {
            &p[..4]
        } else {
            &p[..1]
        };
        self.root
            .join("pool")
            .join(&self.component)
            .join(prefix)
            .join(p)
    }

    fn state_path(&self) -> PathBuf {
        self.root.join(".moodle-release").join("state.json")
    }

    /// The folder is ours (or empty, or new).
    fn check_folder(&self) -> Result<(), AptError> {
        let marker = self.root.join(".moodle-release");
        match fs::read_dir(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.root)(e)),
            Ok(mut it) => {
                if marker.is_dir() || it.next().is_none() {
                    Ok(())
                } else {
                    Err(AptError::NotARepo(self.root.clone()))
                }
            }
        }
    }

    /// The packages listed now: the `Packages` of the first architecture (all list the same).
    pub fn current(&self) -> Result<Vec<Stanza>, AptError> {
        let arch = self
            .architectures
            .first()
            .map(String::as_str)
            .unwrap_or("amd64");
        let path = self.binary_dir(arch).join("Packages");
        match fs::read_to_string(&path) {
            Ok(text) => {
                stanza::parse_all(&text).map_err(|source| AptError::BadIndex { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    pub fn list(&self) -> Result<Vec<Listed>, AptError> {
        Ok(self
            .current()?
            .iter()
            .map(|s| Listed {
                package: s.get("Package").unwrap_or_default().to_string(),
                version: s.get("Version").unwrap_or_default().to_string(),
                filename: s.get("Filename").unwrap_or_default().to_string(),
                size: s.get("Size").and_then(|v| v.parse().ok()).unwrap_or(0),
                sha256: s.get("SHA256").unwrap_or_default().to_string(),
                moodle_release: s.get("X-Moodle-Release").map(String::from),
                versions_hash: s.get("X-Moodle-Versions-Hash").map(String::from),
                db_hash: s.get("X-Moodle-Db-Hash").map(String::from),
                probe: s.get("X-Moodle-Release-Probe").map(String::from),
                installed_kib: s.get("Installed-Size").and_then(|v| v.parse().ok()),
                source_commit: s.get("X-Moodle-Source-Commit").map(String::from),
            })
            .collect())
    }

    /// Adds `debs` to the repository. Over the mark for a reason: the order is the safety
    /// argument (every package checked, then copied and hashed, a changed version refused,
    /// then all persisted, then the indices), and reads best in one place.
    pub fn publish(
        &self,
        debs: &[PathBuf],
        opts: &PublishOptions,
        reporter: &dyn Reporter,
    ) -> Result<Published, AptError> {
        self.check_folder()?;
        let meta = self.root.join(".moodle-release");
        fs::create_dir_all(&meta).map_err(io_err(&meta))?;
        let _lock = take_lock(&meta.join("lock"))?;
        // A key that cannot sign is found out before anything changes.
        if let Some(key) = &self.sign_key {
            sign_clear(key, b"moodle-release signing check\n")?;
        }

        let incoming = self.read_incoming(debs)?;
        let mut entries = self.current()?;
        let mut added = Vec::new();
        let mut unchanged = Vec::new();
        let pool = self.pool_dir();
        // New pool files go in only once every package of the batch is known to be acceptable.
        let mut to_persist = Vec::new();
        let mut replaced = Vec::new();
        for (path, version, info) in incoming {
            reporter.step(&format!("adding {} {version}", self.package()));
            // One pass over the package: copied next to its final place and hashed.
            let (tmp, size, sha256) = deb::copy_hashing(&path, &pool)?;
            let pkg = info.control.get("Package").unwrap_or(self.package());
            // A release of a version published before the site moved to the releases layout
            // takes the place of that version's in-place package, which no roll installs now.
            if let Some(i) = entries.iter().position(|s| {
                s.get("Version") == Some(version.as_str())
                    && s.get("Package") == Some(self.package())
                    && pkg != self.package()
            }) {
                replaced.push(entries.remove(i));
            }
            if let Some(existing) = entries
                .iter()
                .find(|s| s.get("Version") == Some(version.as_str()))
            {
                let sha = existing.get("SHA256").unwrap_or_default();
                reporter.step_done();
                if sha == sha256 {
                    unchanged.push(version);
                    continue;
                }
                return Err(AptError::Immutable {
                    package: self.package().to_string(),
                    version,
                    existing: sha.to_string(),
                    new: sha256,
                });
            }
            let name = format!("{pkg}_{}_all.deb", version.replace(':', "%3a"));
            let dest = pool.join(&name);
            crate::fsutil::set_mode_0644(tmp.path()).map_err(io_err(&dest))?;
            to_persist.push((tmp, dest.clone()));
            let rel = dest.strip_prefix(&self.root).unwrap_or(&dest);
            entries.push(pool_entry(&info, rel, size, &sha256));
            added.push(version);
            reporter.step_done();
        }

        for (tmp, dest) in to_persist {
            tmp.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
        }

        let (kept, removed) = self.prune(entries, opts);
        let mut state = State::read(&self.state_path());
        let now = now_secs();
        for s in removed.iter().chain(&replaced) {
            if let Some(f) = s.get("Filename") {
                state.retired.insert(f.to_string(), now);
            }
        }

        if !added.is_empty()
            || !removed.is_empty()
            || !replaced.is_empty()
            || !self.dist().join("Release").exists()
        {
            reporter.step("writing the indices");
            self.write_indices(&kept, &mut state, now)?;
            reporter.step_done();
        }
        let collected = state.collect(&self.root, now);
        state.write(&self.state_path())?;
        self.export_key()?;

        Ok(Published {
            added,
            unchanged,
            removed: removed
                .iter()
                .map(|s| s.get("Version").unwrap_or_default().to_string())
                .collect(),
            replaced: replaced
                .iter()
                .map(|s| s.get("Version").unwrap_or_default().to_string())
                .collect(),
            versions: kept
                .iter()
                .map(|s| s.get("Version").unwrap_or_default().to_string())
                .collect(),
            repo: self.root.clone(),
            signed: self.sign_key.is_some(),
            collected,
        })
    }

    /// Reads and checks every package first: the right name, a Debian version.
    fn read_incoming(
        &self,
        debs: &[PathBuf],
    ) -> Result<Vec<(PathBuf, String, deb::DebInfo)>, AptError> {
        debs.iter()
            .map(|path| {
                let info = deb::read(path)?;
                let pkg = info.control.get("Package").unwrap_or_default().to_string();
                let version = info.control.get("Version").unwrap_or_default().to_string();
                // In the releases layout each version is a package of its own.
                let expected = match self.site.layout {
                    crate::config::SiteLayout::InPlace => self.package().to_string(),
                    crate::config::SiteLayout::Releases => self.site.release_package(&version),
                };
                if pkg != expected {
                    return Err(AptError::OtherPackage {
                        path: path.clone(),
                        found: pkg,
                        expected,
                    });
                }
                debversion::Version::from_str(&version).map_err(|_| AptError::BadDeb {
                    path: path.clone(),
                    message: format!("`{version}` is not a Debian version"),
                })?;
                Ok((path.clone(), version, info))
            })
            .collect()
    }

    /// Newest first, `keep` of them plus the pinned ones; and those that go.
    fn prune(&self, mut entries: Vec<Stanza>, opts: &PublishOptions) -> (Vec<Stanza>, Vec<Stanza>) {
        entries.sort_by_key(|s| std::cmp::Reverse(version_of(s)));
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        for (i, s) in entries.into_iter().enumerate() {
            let v = s.get("Version").unwrap_or_default().to_string();
            if i < self.keep || opts.keep_versions.contains(&v) {
                kept.push(s);
            } else {
                removed.push(s);
            }
        }
        (kept, removed)
    }

    /// Packages files (plain, gz, xz) for every architecture, their by-hash copies first, then
    /// the Release files.
    fn write_indices(&self, kept: &[Stanza], state: &mut State, now: u64) -> Result<(), AptError> {
        let mut text = String::new();
        for (i, s) in kept.iter().enumerate() {
            if i > 0 {
                text.push('\n');
            }
            text.push_str(&s.to_text());
        }
        let plain = text.into_bytes();
        // Level 9, unlike a package's data (deb::compress): the index is small and every node
        // fetches it on every `apt-get update`, so its smallest form costs nothing that matters.
        let gz = {
            let mut e = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::new(9));
            e.write_all(&plain).and_then(|_| e.finish())
        }
        .map_err(io_err(&self.root))?;
        let xz = {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(&plain).and_then(|_| e.finish())
        }
        .map_err(io_err(&self.root))?;

        let mut listed: Vec<(String, Vec<u8>)> = Vec::new();
        for arch in &self.architectures {
            let rel = format!("{}/binary-{arch}", self.component);
            listed.push((format!("{rel}/Packages"), plain.clone()));
            listed.push((format!("{rel}/Packages.gz"), gz.clone()));
            listed.push((format!("{rel}/Packages.xz"), xz.clone()));
            listed.push((
                format!("{rel}/Release"),
                format!(
                    "Archive: {}\nComponent: {}\nOrigin: {}\nLabel: {}\nArchitecture: {arch}\n",
                    self.suite,
                    self.component,
                    self.package(),
                    self.package()
                )
                .into_bytes(),
            ));
        }
        let dist = self.dist();
        let mut current = std::collections::BTreeSet::new();
        // 1. by-hash copies (what apt fetches), 2. the plain names.
        for (rel, data) in &listed {
            let path = dist.join(rel);
            let dir = path.parent().unwrap();
            for (kind, hash) in [
                ("SHA256", hex::encode(Sha256::digest(data))),
                ("MD5Sum", hex::encode(Md5::digest(data))),
            ] {
                let by_hash = dir.join("by-hash").join(kind).join(hash);
                if !by_hash.exists() {
                    write_atomic(&by_hash, data)?;
                }
                let rel = by_hash.strip_prefix(&self.root).unwrap_or(&by_hash);
                current.insert(rel.to_string_lossy().into_owned());
            }
        }
        for (rel, data) in &listed {
            write_atomic(&dist.join(rel), data)?;
        }
        // Everything the new Release names is on disk before it is.
        sync_fs(&self.root)?;
        // 3. Release, signed.
        let release = self.release_text(&listed);
        let (inrelease, detached) = match &self.sign_key {
            Some(key) => (
                Some(sign_clear(key, release.as_bytes())?),
                Some(sign_detached(key, release.as_bytes())?),
            ),
            None => (None, None),
        };
        if let Some(sig) = detached {
            write_atomic(&dist.join("Release.gpg"), &sig)?;
        }
        write_atomic(&dist.join("Release"), release.as_bytes())?;
        if let Some(ir) = inrelease {
            write_atomic(&dist.join("InRelease"), &ir)?;
        }
        state.rotate(current, now);
        sync_fs(&self.root)?;
        Ok(())
    }

    fn release_text(&self, listed: &[(String, Vec<u8>)]) -> String {
        let mut s = String::new();
        s.push_str(&format!("Origin: {}\n", self.package()));
        s.push_str(&format!("Label: {}\n", self.package()));
        s.push_str(&format!("Suite: {}\n", self.suite));
        s.push_str(&format!("Codename: {}\n", self.suite));
        s.push_str(&format!("Date: {}\n", rfc2822_now()));
        s.push_str(&format!(
            "Architectures: {}\n",
            self.architectures.join(" ")
        ));
        s.push_str(&format!("Components: {}\n", self.component));
        s.push_str(&format!(
            "Description: Moodle site packages of {}\n",
            self.package()
        ));
        s.push_str("Acquire-By-Hash: yes\n");
        s.push_str("MD5Sum:\n");
        for (rel, data) in listed {
            s.push_str(&format!(
                " {} {:>16} {rel}\n",
                hex::encode(Md5::digest(data)),
                data.len()
            ));
        }
        s.push_str("SHA256:\n");
        for (rel, data) in listed {
            s.push_str(&format!(
                " {} {:>16} {rel}\n",
                hex::encode(Sha256::digest(data)),
                data.len()
            ));
        }
        s
    }

    /// `<suite>.asc` and `<suite>.gpg`: the public key the nodes name in `signed-by=`.
    fn export_key(&self) -> Result<(), AptError> {
        let Some(key) = &self.sign_key else {
            return Ok(());
        };
        for (armor, ext) in [(true, "asc"), (false, "gpg")] {
            let mut cmd = Command::new("gpg");
            cmd.args(["--batch", "--export"]);
            if armor {
                cmd.arg("--armor");
            }
            let out = cmd.arg(key).output().map_err(|e| AptError::Sign {
                key: key.clone(),
                message: format!("cannot run gpg: {e}"),
            })?;
            if !out.status.success() || out.stdout.is_empty() {
                return Err(AptError::Sign {
                    key: key.clone(),
                    message: "gpg exported no public key".into(),
                });
            }
            let path = self.root.join(format!("{}.{ext}", self.suite));
            if fs::read(&path).ok().as_deref() != Some(&out.stdout[..]) {
                write_atomic(&path, &out.stdout)?;
            }
        }
        Ok(())
    }
}

fn version_of(s: &Stanza) -> debversion::Version {
    s.get("Version")
        .and_then(|v| debversion::Version::from_str(v).ok())
        .unwrap_or_else(|| debversion::Version::from_str("0").unwrap())
}

/// Files a previous Release named, and since when they are no longer named: deleted once
/// [`GRACE`] has passed.
#[derive(Debug, Default, serde::Deserialize, Serialize)]
struct State {
    /// by-hash files the current Release names (paths relative to the root).
    #[serde(default)]
    current: std::collections::BTreeSet<String>,
    /// by-hash files of earlier Releases, with when they stopped being current.
    #[serde(default)]
    superseded: BTreeMap<String, u64>,
    /// Pool files that left the index, with when they left.
    #[serde(default)]
    retired: BTreeMap<String, u64>,
}

impl State {
    fn read(path: &Path) -> State {
        fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write(&self, path: &Path) -> Result<(), AptError> {
        write_atomic(path, &serde_json::to_vec_pretty(self).unwrap_or_default())
    }

    /// The new Release names `now_current`: what it no longer names starts its grace period.
    fn rotate(&mut self, now_current: std::collections::BTreeSet<String>, now: u64) {
        for p in self.current.difference(&now_current) {
            self.superseded.entry(p.clone()).or_insert(now);
        }
        for p in &now_current {
            self.superseded.remove(p);
        }
        self.current = now_current;
    }

    /// Deletes what has been unnamed for longer than the grace period; returns what it deleted.
    fn collect(&mut self, root: &Path, now: u64) -> Vec<String> {
        let old = |t: &u64| now.saturating_sub(*t) > GRACE.as_secs();
        let mut deleted = Vec::new();
        for map in [&mut self.superseded, &mut self.retired] {
            let gone: Vec<String> = map
                .iter()
                .filter(|(_, t)| old(t))
                .map(|(p, _)| p.clone())
                .collect();
            for p in gone {
                let _ = fs::remove_file(root.join(&p));
                map.remove(&p);
                deleted.push(p);
            }
        }
        deleted
    }
}

fn now_secs() -> u64 {
    // The grace clock can be moved by tests (MOODLE_RELEASE_NOW), never by users by accident.
    if let Some(t) = std::env::var("MOODLE_RELEASE_NOW")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return t;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc2822_now() -> String {
    crate::time::rfc2822(now_secs() as i64).replace("+0000", "UTC")
}

/// [`crate::fsutil::write_atomic`], with the path in the error. Durability is [`sync_fs`]'s
/// job, once per stage rather than once per file (thirty fsyncs cost more than the rest of a
/// publish).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), AptError> {
    crate::fsutil::write_atomic(path, data).map_err(io_err(path))
}

/// Flushes the filesystem that holds `root` to disk: after this, everything written so far
/// survives a crash. Called before the files that name them (Release) are replaced.
fn sync_fs(root: &Path) -> Result<(), AptError> {
    use std::os::fd::AsRawFd;
    let dir = fs::File::open(root).map_err(io_err(root))?;
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io_err(root)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The repository's lock: waits up to a minute for another publish, then refuses.
fn take_lock(path: &Path) -> Result<fs::File, AptError> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(fs::TryLockError::WouldBlock) => return Err(AptError::Busy(path.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(path)(e)),
        }
    }
}

fn gpg(key: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>, AptError> {
    let err = |message: String| AptError::Sign {
        key: key.to_string(),
        message,
    };
    let mut child = Command::new("gpg")
        .args([
            "--batch",
            "--yes",
            "--pinentry-mode",
            "error",
            "--local-user",
            key,
        ])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run gpg: {e} (apt-get install gnupg)")))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input)
        .map_err(|e| err(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() || out.stdout.is_empty() {
        let text = String::from_utf8_lossy(&out.stderr);
        return Err(err(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("; ")));
    }
    Ok(out.stdout)
}

fn sign_clear(key: &str, data: &[u8]) -> Result<Vec<u8>, AptError> {
    gpg(key, &["--digest-algo", "SHA512", "--clearsign"], data)
}

fn sign_detached(key: &str, data: &[u8]) -> Result<Vec<u8>, AptError> {
    gpg(
        key,
        &["--digest-algo", "SHA512", "--armor", "--detach-sign"],
        data,
    )
}

/// The Packages stanza of a package put in the pool at `rel`: its control fields, with where
/// it is, its size and its SHA256 (no MD5sum: apt verifies packages by SHA256).
fn pool_entry(info: &deb::DebInfo, rel: &Path, size: u64, sha256: &str) -> Stanza {
    let mut st = info.control.clone();
    st.remove("Filename");
    st.set("Filename", &rel.to_string_lossy());
    st.set("Size", &size.to_string());
    st.set("SHA256", sha256);
    st
}

/// A repository opened for reading: a local folder as it is, an `ssh://` one through a local
/// copy of its metadata (kept alive by the returned guard).
pub fn open(cfg: &Config) -> Result<(Repo, Option<tempfile::TempDir>), AptError> {
    let apt = cfg.apt.as_ref().ok_or(AptError::NoApt)?;
    let AptRepo::Ssh { dest, path } = &apt.repo else {
        return Ok((Repo::from_config(cfg)?, None));
    };
    let remote = remote::Remote::connect(dest, path, &cfg.ssh)?;
    let mirror = tempfile::Builder::new()
        .prefix("moodle-release-apt-")
        .tempdir()
        .map_err(io_err(Path::new("/tmp")))?;
    remote.pull(mirror.path())?;
    let repo = Repo::with_root(cfg, mirror.path().to_path_buf())?;
    Ok((repo, Some(mirror)))
}

/// `publish`, to a local folder or over ssh.
pub fn publish(
    cfg: &Config,
    debs: &[PathBuf],
    opts: &PublishOptions,
    reporter: &dyn Reporter,
) -> Result<Published, AptError> {
    let apt = cfg.apt.as_ref().ok_or(AptError::NoApt)?;
    let AptRepo::Ssh { dest, path } = &apt.repo else {
        return Repo::from_config(cfg)?.publish(debs, opts, reporter);
    };
    reporter.step(&format!("connecting to {}", apt.repo));
    let mut remote = remote::Remote::connect(dest, path, &cfg.ssh)?;
    remote.lock()?;
    let mirror = tempfile::Builder::new()
        .prefix("moodle-release-apt-")
        .tempdir()
        .map_err(io_err(Path::new("/tmp")))?;
    let before = remote.pull(mirror.path())?;
    reporter.step_done();
    let repo = Repo::with_root(cfg, mirror.path().to_path_buf())?;
    let mut p = repo.publish(debs, opts, reporter)?;
    reporter.step(&format!("writing to {}", apt.repo));
    remote.push(mirror.path(), &before, &p.collected)?;
    reporter.step_done();
    remote.unlock();
    p.repo = PathBuf::from(apt.repo.to_string());
    Ok(p)
}
