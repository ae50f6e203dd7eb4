//! `moodle-release build`: a deployment tree (dirroot) to a versioned, reproducible `.deb`.
//!
//! Plan first: list the tree, check every path, read the Moodle versions and decide the
//! package's version and entries. Then write: data.tar (parallel, streamed from git objects),
//! control.tar, and the ar container, into temporary files in the output folder that are
//! renamed to the final name only when complete, so no partial `.deb` ever has the real name.

mod lintian;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{Config, InstallDir, PackageName, SiteLayout};
use crate::deb::control::{self, Control};
use crate::deb::data::{self, Content, DataEntry, DataSummary};
use crate::deb::md5cache::Md5Cache;
use crate::deb::{self, Compression};
use crate::moodle::{MoodleError, SiteInfo};
use crate::report::Reporter;
use crate::source::{self, Entry, Filter, Kind, Reader, Source, SourceError};
use crate::time::{rfc2822, yyyymmdd};

/// Longest path dpkg can carry (PATH_MAX less the terminating NUL).
const MAX_PATH: usize = 4095;
/// Longest file name on the filesystems nodes use.
const MAX_NAME: usize = 255;
/// Where `build` records what the package holds (read back by `roll`).
pub fn metadata_path(package: &str) -> String {
    format!("/usr/share/{package}/moodle-release.json")
}

/// What to package.
#[derive(Debug, Clone)]
pub enum Input {
    /// `[deploy] branch` of `[deploy] repo`.
    DeployBranch,
    /// Another ref or commit of `[deploy] repo`.
    Ref(String),
    /// A plain directory.
    Dir(PathBuf),
}

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub input: Input,
    pub out_dir: PathBuf,
    pub compression: Compression,
    /// Overrides the build part of the version (CI pipelines' counters).
    pub build_number: Option<u64>,
    /// Worker threads (default: every core).
    pub jobs: Option<usize>,
    /// `SOURCE_DATE_EPOCH`, when set.
    pub source_date_epoch: Option<i64>,
}

/// A built package.
#[derive(Debug, Clone, Serialize)]
pub struct Built {
    pub path: PathBuf,
    pub package: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    /// Regular files in the package.
    pub files: u64,
    /// Files whose MD5 came from the cache of the previous build (`.git/moodle-release/`).
    pub md5_reused: u64,
    #[serde(skip)]
    pub site: SiteInfo,
    #[serde(skip)]
    pub content_bytes: u64,
}

/// `build` failed; nothing was left under the final name.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Moodle(#[from] MoodleError),
    #[error("`{path}`: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("symlink `{path}` points to `{target}`, outside the install directory `{install_dir}`: the package would depend on files it does not carry")]
    SymlinkEscape {
        path: String,
        target: String,
        install_dir: String,
    },
    #[error("two entries of the package are both `{path}`")]
    Duplicate { path: String },
    #[error("cannot write to the output folder `{}`: {source}", path.display())]
    OutDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing `{}` failed: {source}; nothing was left under that name", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the package failed: {0}")]
    Data(#[from] data::DataError),
    #[error("SOURCE_DATE_EPOCH=`{0}` is not a Unix time in seconds")]
    BadEpoch(String),
    #[error("`{}` is a shallow clone: its commit count would not order this build after earlier ones; fetch the whole history (`git fetch --unshallow`) or give `--build-number N`", repo.display())]
    Shallow { repo: PathBuf },
}

/// Reads `SOURCE_DATE_EPOCH` from the environment.
pub fn source_date_epoch_from_env() -> Result<Option<i64>, BuildError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or(BuildError::BadEpoch(v)),
        _ => Ok(None),
    }
}

/// The tree to package, as read and checked.
struct Read {
    src: Source,
    /// The commit, when built from git.
    commit: Option<source::CommitInfo>,
    tree: Vec<Entry>,
    reader: Reader,
    info: SiteInfo,
}

/// Builds the package described by `cfg` from `opts.input`, as a list of named stages: read
/// the tree, name the version, plan the entries, write data.tar, write control.tar, assemble
/// the package and put it in place. Over the mark for a reason: the two temporary files and
/// their error mapping stay here, where it shows that a failed build leaves nothing behind.
pub fn build(
    cfg: &Config,
    opts: &BuildOptions,
    reporter: &dyn Reporter,
) -> Result<Built, BuildError> {
    let started = std::time::Instant::now();
    let lap =
        |what: &str| tracing::debug!("build: {what} at {:.3}s", started.elapsed().as_secs_f64());
    std::fs::create_dir_all(&opts.out_dir).map_err(|source| BuildError::OutDir {
        path: opts.out_dir.clone(),
        source,
    })?;
    let read = read_tree(cfg, opts, reporter, &lap)?;
    let (epoch, version) = stamp(cfg, opts, &read)?;
    // The releases layout: the package of this version, its tree in releases_dir/<version>.
    let release_cfg;
    let cfg = if cfg.site.layout == SiteLayout::Releases {
        release_cfg = for_release(cfg, &version);
        &release_cfg
    } else {
        cfg
    };
    let package = cfg.site.package.0.clone();
    let file_name = format!("{package}_{version}_all.deb");
    let final_path = opts.out_dir.join(&file_name);
    let mtime = epoch as u64;
    let commit_id = read.commit.as_ref().map(|c| c.id.to_string());
    let generated = generated_files(
        cfg,
        &read.tree,
        &read.info,
        &version,
        commit_id.clone(),
        epoch,
        lintian::lintian_overrides(cfg, &read.tree, &read.reader, opts.compression),
    )?;
    let entries = plan_entries(cfg, &read.tree, generated)?;

    let out_err = |source| BuildError::OutDir {
        path: opts.out_dir.clone(),
        source,
    };
    let write_err = |source| BuildError::Write {
        path: final_path.clone(),
        source,
    };
    let mut data_file = tempfile::Builder::new()
        .prefix(".data.")
        .tempfile_in(&opts.out_dir)
        .map_err(out_err)?;
    let md5s = md5_cache(&read.reader, reporter);
    let mut summary = write_data(
        &read,
        &entries,
        opts,
        mtime,
        &md5s,
        &mut data_file,
        reporter,
    )
    .map_err(|e| match e {
        DataOut::Build(e) => e,
        DataOut::Write(e) => write_err(e),
    })?;
    lap("wrote data.tar");

    let control = control_fields(cfg, &read.info, &version, summary.installed_kib, commit_id);
    let control_tar = control_member(cfg, &control, &version, &summary, opts.compression, mtime)
        .map_err(write_err)?;
    let mut deb_file = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .tempfile_in(&opts.out_dir)
        .map_err(out_err)?;
    let (sha256, size) = deb::assemble(
        deb_file.as_file_mut(),
        &control_tar,
        data_file.as_file_mut(),
        opts.compression,
        mtime,
    )
    .map_err(write_err)?;
    lap("assembled and synced the package");
    drop(data_file);
    // Only now: a failed build leaves the previous cache as it was.
    if let Err(e) = md5s.save(&mut summary.blob_md5s) {
        reporter.warn(&format!(
            "could not save the MD5 cache: {e} (the next build hashes every file)"
        ));
    }
    crate::fsutil::set_mode_0644(deb_file.path()).map_err(write_err)?;
    deb_file
        .persist(&final_path)
        .map_err(|e| BuildError::Write {
            path: final_path.clone(),
            source: e.error,
        })?;
    Ok(Built {
        path: final_path,
        package,
        version,
        sha256,
        size,
        files: summary.files,
        md5_reused: summary.md5_reused,
        site: read.info,
        content_bytes: summary.content_bytes,
    })
}

/// The config as the package of `version` sees it in the releases layout: its name
/// `<package>-release-<version>`, its dirroot `releases_dir/<version>`. Every path the package
/// writes (the tree, its docs, its metadata) is then its own, so releases install side by side.
fn for_release(cfg: &Config, version: &str) -> Config {
    let mut c = cfg.clone();
    // The node's config.php is the site's, whatever the release's package is called.
    c.site.config_php = Some(cfg.site.config_php_target().unwrap_or_default());
    c.site.install_dir = InstallDir(format!("{}/{version}", cfg.site.releases_dir()));
    c.site.package = PackageName(cfg.site.release_package(version));
    c
}

/// Reads the tree (a ref of the deployment repository, or a folder), leaves out a root
/// config.php (secrets stay on the nodes), checks every path and reads the site's versions.
fn read_tree(
    cfg: &Config,
    opts: &BuildOptions,
    reporter: &dyn Reporter,
    lap: &dyn Fn(&str),
) -> Result<Read, BuildError> {
    let site = &cfg.site;
    reporter.step("reading the tree");
    let (src, commit) = match &opts.input {
        Input::Dir(d) => (Source::Dir(d.clone()), None),
        Input::DeployBranch | Input::Ref(_) => {
            let r = match &opts.input {
                Input::Ref(r) => r.clone(),
                _ => cfg.deploy.branch.clone(),
            };
            let repo = cfg.deploy_repo();
            let info = source::resolve(&repo, &r)?;
            (
                Source::Git {
                    repo,
                    commit: info.id,
                },
                Some(info),
            )
        }
    };
    let filter = Filter::new(&site.exclude);
    lap("resolved the ref");
    let mut tree = src.list(&filter)?;
    lap("listed the tree");
    if let Some(i) = tree.iter().position(|e| e.path == b"config.php") {
        tree.remove(i);
        reporter.warn("the tree has a config.php at its root: it is never packaged (secrets stay on the nodes, see [site] config_php)");
    }
    let reader = src.reader()?;
    check_paths(&tree, &reader, &site.install_dir.0)?;
    lap("listed and checked the tree");
    let info = SiteInfo::analyze(&tree, &reader)?;
    lap("analyzed the site");
    reporter.step_done();
    Ok(Read {
        src,
        commit,
        tree,
        reader,
        info,
    })
}

/// The package's time (`SOURCE_DATE_EPOCH`, else the commit's, else the newest file's) and
/// version (Moodle's release, the build number: the commit's first-parent count by default).
fn stamp(cfg: &Config, opts: &BuildOptions, read: &Read) -> Result<(i64, String), BuildError> {
    let epoch = match (opts.source_date_epoch, &read.commit) {
        (Some(e), _) => e,
        (None, Some(c)) => c.time.max(0),
        (None, None) => read.tree.iter().map(|e| e.mtime).max().unwrap_or(0).max(0),
    };
    let build_number = match (opts.build_number, &read.commit) {
        (Some(n), _) => n,
        (None, Some(c)) => c.first_parent_count.ok_or_else(|| BuildError::Shallow {
            repo: cfg.deploy_repo(),
        })?,
        (None, None) => 0,
    };
    let version = read
        .info
        .release()
        .debian_version(build_number, yyyymmdd(epoch));
    Ok((epoch, version))
}

/// The MD5s of the last build from this repository, by blob (none for a folder).
fn md5_cache(reader: &Reader, reporter: &dyn Reporter) -> Md5Cache {
    match reader {
        Reader::Git(r) => {
            let (cache, warning) = Md5Cache::open(r.path());
            if let Some(w) = warning {
                reporter.warn(&w);
            }
            cache
        }
        Reader::Dir(_) => Md5Cache::none(),
    }
}

/// Why writing data.tar failed: the tree (read errors) or the output file.
enum DataOut {
    Build(BuildError),
    Write(std::io::Error),
}

/// Writes data.tar, compressed, into `file`, on `--jobs` threads (one per core by default).
fn write_data(
    read: &Read,
    entries: &[DataEntry],
    opts: &BuildOptions,
    mtime: u64,
    md5s: &Md5Cache,
    file: &mut tempfile::NamedTempFile,
    reporter: &dyn Reporter,
) -> Result<DataSummary, DataOut> {
    reporter.step(&format!(
        "writing data.tar.{}",
        opts.compression.extension()
    ));
    let threads = opts.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file.as_file_mut());
    let s = data::write(
        entries,
        &data::Job {
            source: &read.src,
            compression: opts.compression,
            mtime,
            threads,
            md5s,
        },
        &mut w,
        reporter,
    )
    .map_err(|e| DataOut::Build(e.into()))?;
    w.flush().map_err(DataOut::Write)?;
    reporter.step_done();
    Ok(s)
}

/// control.tar: the control file, md5sums and the maintainer scripts from their templates.
fn control_member(
    cfg: &Config,
    control: &Control,
    version: &str,
    summary: &DataSummary,
    compression: Compression,
    mtime: u64,
) -> std::io::Result<Vec<u8>> {
    let site = &cfg.site;
    let config_php = site.config_php_target().unwrap_or_default();
    // A release is installed while another serves: PHP is reloaded when `roll` switches to it,
    // not by its postinst.
    let reload = match site.layout {
        SiteLayout::InPlace => "reload_php_fpm; reload_apache_mod_php",
        SiteLayout::Releases => ": # a release: roll reloads PHP when it switches to it",
    };
    let vars = [
        ("package", site.package.0.as_str()),
        ("version", version),
        ("install_dir", site.install_dir.0.as_str()),
        ("config_php", config_php.as_str()),
        ("reload", reload),
        ("reload_php", control::RELOAD_PHP),
    ];
    let scripts: Vec<(&str, String)> = control::SCRIPTS
        .iter()
        .map(|t| (t.name, control::render(t.text, &vars)))
        .collect();
    control::control_tar(
        &control.to_text(),
        &summary.md5sums,
        &scripts,
        compression,
        mtime,
    )
}

/// Refuses names dpkg cannot carry and symlinks that leave the install directory.
fn check_paths(
    tree: &[Entry],
    reader: &source::Reader,
    install_dir: &str,
) -> Result<(), BuildError> {
    for e in tree {
        let shown = || String::from_utf8_lossy(&e.path).into_owned();
        if e.path.iter().any(|&b| b == b'\n' || b == b'\r') {
            return Err(BuildError::BadPath {
                path: shown().escape_debug().to_string(),
                why: "a file name with a line break cannot be carried by dpkg (its file lists are one path per line); rename it",
            });
        }
        if install_dir.len() + 1 + e.path.len() > MAX_PATH
            || e.path.split(|&b| b == b'/').any(|c| c.len() > MAX_NAME)
        {
            return Err(BuildError::BadPath {
                path: shown(),
                why: "the path is longer than a filesystem allows (255 bytes a name, 4095 in all); rename it",
            });
        }
        if e.kind == Kind::Symlink {
            let target = reader.read(e)?;
            if !symlink_stays_inside(&e.path, &target, install_dir) {
                return Err(BuildError::SymlinkEscape {
                    path: shown(),
                    target: String::from_utf8_lossy(&target).into_owned(),
                    install_dir: install_dir.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// True when the symlink at `path` (relative to dirroot) with `target` resolves, lexically,
/// inside dirroot.
fn symlink_stays_inside(path: &[u8], target: &[u8], install_dir: &str) -> bool {
    if target.is_empty() {
        return false;
    }
    let (mut depth, rest): (i64, &[u8]) = if target[0] == b'/' {
        let root = install_dir.as_bytes();
        match target.strip_prefix(root) {
            Some([]) => return true,
            Some(r) if r[0] == b'/' => (0, &r[1..]),
            _ => return false,
        }
    } else {
        (path.split(|&b| b == b'/').count() as i64 - 1, target)
    };
    for part in rest.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// Every entry of data.tar, sorted: the tree under install_dir, the config.php stub, the docs
/// and the metadata, and every parent folder.
fn plan_entries(
    cfg: &Config,
    tree: &[Entry],
    generated: Vec<Generated>,
) -> Result<Vec<DataEntry>, BuildError> {
    let under = |p: &[u8]| under_install_dir(cfg, p);
    let mut entries = Vec::with_capacity(tree.len() + 16);
    for e in tree {
        let mode = match e.kind {
            Kind::Dir | Kind::File { exec: true } => 0o755,
            Kind::File { exec: false } => 0o644,
            Kind::Symlink => 0o777,
        };
        entries.push(DataEntry {
            path: under(&e.path),
            content: if e.kind == Kind::Dir {
                Content::Dir
            } else {
                Content::Tree(e.clone())
            },
            mode,
        });
    }
    let mut dirs = BTreeSet::new();
    let add_parents = |p: &[u8], dirs: &mut BTreeSet<Vec<u8>>| {
        for (i, &b) in p.iter().enumerate() {
            if b == b'/' {
                dirs.insert(p[..i].to_vec());
            }
        }
    };
    add_parents(&under(b""), &mut dirs);
    for (p, _) in &generated {
        add_parents(p, &mut dirs);
    }
    dirs.insert(Vec::new());
    // A generated file in a folder of the tree (the release probe in `public/`): the folder
    // is the tree's entry already.
    let in_tree: BTreeSet<&[u8]> = entries
        .iter()
        .filter(|e| matches!(e.content, Content::Dir))
        .map(|e| e.path.as_slice())
        .collect();
    let dirs: Vec<Vec<u8>> = dirs
        .into_iter()
        .filter(|d| !in_tree.contains(d.as_slice()))
        .collect();
    for d in dirs {
        entries.push(DataEntry {
            path: d,
            content: Content::Dir,
            mode: 0o755,
        });
    }
    for (p, data) in generated {
        entries.push(DataEntry {
            path: p,
            content: Content::File(Arc::new(data)),
            mode: 0o644,
        });
    }
    entries.sort_by_cached_key(DataEntry::sort_key);
    for w in entries.windows(2) {
        if w[0].path == w[1].path {
            return Err(BuildError::Duplicate {
                path: format!("/{}", String::from_utf8_lossy(&w[0].path)),
            });
        }
    }
    Ok(entries)
}

/// `p` (relative to dirroot) as a path in data.tar.
fn under_install_dir(cfg: &Config, p: &[u8]) -> Vec<u8> {
    let mut v = cfg.site.install_dir.relative().as_bytes().to_vec();
    v.push(b'/');
    v.extend_from_slice(p);
    v
}

/// A file the package adds: its path in data.tar and its content.
type Generated = (Vec<u8>, Vec<u8>);

/// The files the package adds to the tree (path, content): the config.php stub under
/// install_dir (`under`), the copyright, the changelog, the lintian overrides, the metadata.
fn generated_files(
    cfg: &Config,
    tree: &[Entry],
    info: &SiteInfo,
    version: &str,
    commit: Option<String>,
    epoch: i64,
    lintian_overrides: String,
) -> Result<Vec<Generated>, BuildError> {
    let under = |p: &[u8]| under_install_dir(cfg, p);
    let site = &cfg.site;
    let pkg = site.package.0.as_str();
    let mut generated: Vec<Generated> = Vec::new();
    if let Some(target) = site.config_php_target() {
        let setup = format!("{}/{}lib/setup.php", site.install_dir, setup_prefix(tree));
        let text = control::render(
            control::CONFIG_PHP,
            &[
                ("package", pkg),
                ("config_php", &target),
                ("setup_php", &setup),
            ],
        );
        generated.push((under(b"config.php"), text.into_bytes()));
    }
    // The release probe, in the web root: what a node's PHP answers proves which release it runs.
    let probe = control::render(
        control::PROBE_PHP,
        &[
            ("package", pkg),
            ("version", version),
            ("commit", commit.as_deref().unwrap_or("")),
        ],
    );
    let probe_path = format!("{}{}", setup_prefix(tree), control::PROBE_PATH);
    generated.push((under(probe_path.as_bytes()), probe.into_bytes()));
    let doc = format!("usr/share/doc/{pkg}");
    let vars = [
        ("package", pkg),
        ("install_dir", site.install_dir.0.as_str()),
    ];
    generated.push((
        format!("{doc}/copyright").into_bytes(),
        control::render(control::COPYRIGHT, &vars).into_bytes(),
    ));
    let changelog = changelog(cfg, info, version, commit.as_deref(), epoch);
    let gz = {
        let mut e = flate2::GzBuilder::new()
            .mtime(0)
            .operating_system(3)
            .write(Vec::new(), flate2::Compression::best());
        e.write_all(changelog.as_bytes()).and_then(|_| e.finish())
    }
    .map_err(|source| BuildError::Write {
        path: PathBuf::from("changelog.Debian.gz"),
        source,
    })?;
    generated.push((format!("{doc}/changelog.Debian.gz").into_bytes(), gz));
    generated.push((
        format!("usr/share/lintian/overrides/{pkg}").into_bytes(),
        lintian_overrides.into_bytes(),
    ));
    let meta = serde_json::json!({
        "package": pkg,
        "version": version,
        "install_dir": site.install_dir.0,
        "source_commit": commit,
        "moodle": info,
    });
    let mut meta = serde_json::to_vec_pretty(&meta).unwrap_or_default();
    meta.push(b'\n');
    generated.push((
        metadata_path(pkg)
            .trim_start_matches('/')
            .as_bytes()
            .to_vec(),
        meta,
    ));

    Ok(generated)
}

/// `public/` for Moodle 5.1+ trees whose `lib/` moved there, else nothing.
fn setup_prefix(tree: &[Entry]) -> &'static str {
    let has = |p: &[u8]| tree.iter().any(|e| e.path == p);
    if !has(b"lib/setup.php") && has(b"public/lib/setup.php") {
        "public/"
    } else {
        ""
    }
}

fn control_fields(
    cfg: &Config,
    info: &SiteInfo,
    version: &str,
    installed_kib: u64,
    commit: Option<String>,
) -> Control {
    let site = &cfg.site;
    let mut f: Vec<(String, String)> = vec![
        ("Package".into(), site.package.0.clone()),
        ("Version".into(), version.into()),
        ("Architecture".into(), "all".into()),
        ("Maintainer".into(), site.maintainer.0.clone()),
        ("Installed-Size".into(), installed_kib.to_string()),
    ];
    if !site.depends.is_empty() {
        f.push(("Depends".into(), site.depends.join(", ")));
    }
    f.push(("Section".into(), site.section.clone()));
    f.push(("Priority".into(), site.priority.clone()));
    let source = commit
        .as_deref()
        .map(|c| format!("git commit {c}"))
        .unwrap_or_else(|| "a directory".into());
    f.push((
        "Description".into(),
        format!(
            "{}\n{}",
            site.description.trim(),
            wrap(
                &format!(
                    "Moodle {} (version {}, branch {}) with {} plugins, installed in {}. Built by moodle-release from {}.",
                    info.core.release,
                    info.core.version,
                    info.core.branch,
                    info.plugins.len(),
                    site.install_dir,
                    source
                ),
                79
            )
        ),
    ));
    f.push(("X-Moodle-Release".into(), info.core.release.clone()));
    f.push(("X-Moodle-Version".into(), info.core.version.clone()));
    f.push(("X-Moodle-Branch".into(), info.core.branch.clone()));
    f.push(("X-Moodle-Versions-Hash".into(), info.versions_hash.clone()));
    f.push(("X-Moodle-Db-Hash".into(), info.db_hash.clone()));
    if let Some(c) = commit {
        f.push(("X-Moodle-Source-Commit".into(), c));
    }
    // The URL path of the release probe on a node (`roll` asks it only of packages that say so).
    f.push((
        "X-Moodle-Release-Probe".into(),
        format!("/{}", crate::deb::control::PROBE_PATH),
    ));
    Control { fields: f }
}

fn changelog(
    cfg: &Config,
    info: &SiteInfo,
    version: &str,
    commit: Option<&str>,
    epoch: i64,
) -> String {
    let dist = cfg
        .apt
        .as_ref()
        .map(|a| a.suite.clone())
        .unwrap_or_else(|| "unstable".into());
    // Debian policy wants changelog lines under 80 columns: the commit id gets its own line.
    let from = commit
        .map(|c| format!("\n    Source commit {c}."))
        .unwrap_or_default();
    format!(
        "{} ({}) {}; urgency=medium\n\n  * Moodle {} with {} plugins, built by moodle-release.{}\n\n -- {}  {}\n",
        cfg.site.package,
        version,
        dist,
        info.core.release,
        info.plugins.len(),
        from,
        cfg.site.maintainer,
        rfc2822(epoch)
    )
}

/// Wraps text at word boundaries to lines of at most `width` characters (Debian policy wants the
/// extended description under 80 columns); a word longer than `width` gets a line of its own.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_must_stay_inside() {
        let d = "/srv/moodle/html";
        assert!(symlink_stays_inside(b"a/b/link", b"../c", d));
        assert!(symlink_stays_inside(b"a/link", b"../c", d));
        assert!(!symlink_stays_inside(b"a/link", b"../../c", d));
        assert!(!symlink_stays_inside(b"link", b"../etc/passwd", d));
        assert!(!symlink_stays_inside(b"link", b"/etc/passwd", d));
        assert!(symlink_stays_inside(b"link", b"/srv/moodle/html/lib", d));
        assert!(!symlink_stays_inside(b"link", b"/srv/moodle/html2/lib", d));
        assert!(symlink_stays_inside(b"a/link", b"./x/../y", d));
    }
}
