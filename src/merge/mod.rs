//! `moodle-release merge`: upstream Moodle, each plugin grafted at its path, and the local patch
//! branches merged on top, committed to the deployment branch with git2 tree operations (no
//! checkout: the deployment repository may be bare).
//!
//! How the commits are laid out, and why:
//!
//! ```text
//! previous deploy ──────────────────────────────┐
//! upstream, plugin commits, patch tips ─────────┴─> new deploy commit (tree = result)
//! ```
//!
//! The tree is recomposed from upstream and the plugins at every merge, then each patch branch is
//! applied with a three-way merge of *trees* whose base is the patch's fork point: the newest
//! commit of the deployment branch's first-parent history that the patch branch contains (a patch
//! branched off `deploy`), else its merge base with upstream (a patch branched off upstream).
//! A commit-graph merge would find the patch already merged (it is an ancestor of the previous
//! deployment) and silently drop it.

pub mod fetch;
pub mod lock;
mod message;
mod plugins;
pub mod submodules;

use message::commit_message;
pub use message::{notes_markdown, summary_lines};
use plugins::{check_dependencies, check_plugin, plugin_types, read_version_php};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use git2::{FileMode, Oid, Repository, Tree};
use serde::Serialize;

use crate::config::Config;
use crate::moodle::versionphp::VersionPhp;
use crate::report::Reporter;
use fetch::{FetchError, Request};
use lock::{Lock, LockError, Pin, PluginPin};

/// What `merge` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// `--update`: `Some(empty)` moves every pin, `Some(list)` those components (or `upstream`).
    pub update: Option<Vec<String>>,
    /// `--locked`: build exactly the lock; refuse when it would change.
    pub locked: bool,
    /// `--dry-run`: say what would change, write nothing (sources are still fetched).
    pub dry_run: bool,
    /// `--strict`: warnings of the Moodle checks are errors.
    pub strict: bool,
    /// The config file's path (the lock goes beside it).
    pub config_path: PathBuf,
}

/// `merge` failed; the deployment branch and the lock are as they were.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("[upstream] is missing from the config: merge needs upstream Moodle's url and ref")]
    NoUpstream,
    #[error("cannot open the deployment repository {path}: {message}")]
    Repo { path: PathBuf, message: String },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("--locked: {0}; run `moodle-release merge` (or `--update`) and commit the new lock")]
    LockedMismatch(String),
    #[error("{0}")]
    Moodle(String),
    #[error("patch branch `{branch}` does not merge cleanly: conflicts in {files}; rebase it on `{deploy}` and resolve them there")]
    Conflict {
        branch: String,
        deploy: String,
        files: String,
    },
    #[error("patch branch `{0}` shares no history with upstream or the deployment branch: refusing to merge unrelated histories")]
    Unrelated(String),
    #[error("patch branch `{0}` does not exist in the deployment repository")]
    NoPatch(String),
    #[error("another merge is running on {path} (lock file {lock}); wait for it, or remove the file if that merge is dead")]
    Busy { path: PathBuf, lock: PathBuf },
    #[error("the deployment branch `{0}` moved while this merge ran; run merge again")]
    Raced(String),
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

impl MergeError {
    /// A held lock is a refusal for safety (3); the rest are failures (1).
    pub fn exit_code(&self) -> i32 {
        match self {
            MergeError::Busy { .. } => 3,
            MergeError::NoUpstream | MergeError::LockedMismatch(_) => 2,
            _ => 1,
        }
    }
}

/// A version change of one component.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub component: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub commit: Option<String>,
}

/// What `merge` did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct Merged {
    pub changed: bool,
    pub dry_run: bool,
    pub branch: String,
    pub commit: String,
    pub previous: Option<String>,
    pub core: Change,
    pub core_release: Option<String>,
    pub previous_release: Option<String>,
    pub plugins: Vec<Change>,
    pub patches: Vec<PatchApplied>,
    pub warnings: Vec<String>,
    pub lock: PathBuf,
    pub lock_changed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PatchApplied {
    pub branch: String,
    pub commit: String,
}

struct Source {
    component: String,
    url: String,
    reference: String,
    path: String,
    replace: bool,
    commit: Oid,
}

/// Upstream as fetched: its commit and tree, where its web code lives, and its version.php.
struct Core<'r> {
    commit: Oid,
    tree: Tree<'r>,
    /// `public/` for Moodle 5.1+, else empty.
    prefix: &'static str,
    version: String,
    release: Option<String>,
    branch: String,
}

/// The tree with every plugin grafted, and what was read on the way.
struct Grafted {
    tree: Oid,
    /// Each plugin's `$plugin->version`.
    versions: BTreeMap<String, String>,
    /// Each plugin's version.php, read once: the dependency check needs it again.
    php: BTreeMap<String, VersionPhp>,
    warnings: Vec<String>,
}

/// Runs a merge, as a list of named stages: the pins to keep, the fetch, upstream's core, the
/// plugins' paths, checks and grafting, dependencies, patches, the new lock, what changed, and
/// the commit (with the lock written) unless `--dry-run`.
pub fn merge(
    cfg: &Config,
    opts: &MergeOptions,
    reporter: &dyn Reporter,
) -> Result<Merged, MergeError> {
    let upstream = cfg.upstream.as_ref().ok_or(MergeError::NoUpstream)?;
    let repo_path = cfg.deploy_repo();
    let repo = Repository::open(&repo_path).map_err(|e| MergeError::Repo {
        path: repo_path.clone(),
        message: e.message().to_string(),
    })?;
    let _guard = MergeLock::take(&repo, &repo_path)?;
    let lock_path = lock::Lock::path_for(&opts.config_path);
    let old_lock = Lock::read(&lock_path)?;
    let branch_ref = format!("refs/heads/{}", cfg.deploy.branch);
    let previous = repo
        .find_reference(&branch_ref)
        .ok()
        .and_then(|r| r.target());

    let requests = requests(cfg, opts, old_lock.as_ref(), &lock_path)?;
    let mut results =
        fetch::fetch_all(&repo, &requests, cfg.deploy.fetch, &cfg.ssh, reporter).into_iter();
    // The first failure in the config's order (upstream first) is the one reported.
    let up = results.next().ok_or(MergeError::NoUpstream)??;
    let fetched: Vec<Oid> = results.collect::<Result<_, _>>()?;
    let core = read_core(&repo, up, upstream)?;
    let (sources, types) = place_plugins(cfg, &repo, &core, &fetched)?;
    let grafted = check_and_graft(&repo, &core, &sources, old_lock.as_ref(), opts)?;
    check_dependencies(&repo, &core, &grafted, &types)?;
    let (tree_id, applied) = merge_patches(&repo, cfg, previous, up, grafted.tree, reporter)?;

    let new_lock = new_lock(upstream, &core, &sources, &grafted.versions);
    let lock_changed = old_lock.as_ref() != Some(&new_lock);
    if opts.locked && lock_changed {
        return Err(MergeError::LockedMismatch("the lock would change".into()));
    }
    let mut result = changes(
        &repo,
        cfg,
        opts,
        previous,
        up,
        &core,
        &sources,
        grafted,
        applied,
        tree_id,
        (&lock_path, lock_changed, old_lock.as_ref()),
    )?;
    if opts.dry_run {
        return Ok(result);
    }
    if result.changed {
        let id = commit(
            &repo,
            &branch_ref,
            previous,
            up,
            &sources,
            &result,
            &new_lock,
            tree_id,
        )
        .map_err(|e| match e {
            CommitError::Raced => MergeError::Raced(cfg.deploy.branch.clone()),
            CommitError::Git(e) => e.into(),
        })?;
        result.commit = id.to_string();
    }
    if lock_changed {
        new_lock.write(&lock_path)?;
    }
    Ok(result)
}

/// What the merge changes against the branch's last commit: core's version and release, each
/// plugin's, the patches applied, the lock (`lock`: its path, whether it changed, the old one).
#[allow(clippy::too_many_arguments)]
fn changes(
    repo: &Repository,
    cfg: &Config,
    opts: &MergeOptions,
    previous: Option<Oid>,
    up: Oid,
    core: &Core,
    sources: &[Source],
    grafted: Grafted,
    applied: Vec<PatchApplied>,
    tree_id: Oid,
    lock: (&Path, bool, Option<&Lock>),
) -> Result<Merged, MergeError> {
    let (lock_path, lock_changed, old_lock) = lock;
    let prev_tree = match previous {
        Some(p) => Some(repo.find_commit(p)?.tree()?),
        None => None,
    };
    let prev_core = prev_tree
        .as_ref()
        .and_then(|t| read_version_php(repo, t, &format!("{}version.php", core.prefix)));
    Ok(Merged {
        changed: prev_tree.as_ref().map(|t| t.id()) != Some(tree_id),
        dry_run: opts.dry_run,
        branch: cfg.deploy.branch.clone(),
        commit: previous.map(|p| p.to_string()).unwrap_or_default(),
        previous: previous.map(|p| p.to_string()),
        core: Change {
            component: "core".into(),
            from: prev_core
                .as_ref()
                .and_then(|v| v.text("version").map(String::from)),
            to: Some(core.version.clone()),
            commit: Some(up.to_string()),
        },
        core_release: core.release.clone(),
        previous_release: prev_core
            .as_ref()
            .and_then(|v| v.text("release").map(String::from)),
        plugins: plugin_changes(
            repo,
            prev_tree.as_ref(),
            sources,
            &grafted.versions,
            old_lock,
        ),
        patches: applied,
        warnings: grafted.warnings,
        lock: lock_path.to_path_buf(),
        lock_changed,
    })
}

/// What to fetch: upstream, then every plugin, each with the commit the lock pins when that pin
/// stays (the source's url and ref did not change and it is not being updated). `--locked`
/// refuses any difference between the config and the lock. Over the mark for a reason: upstream
/// and plugins follow one rule, written once for both.
fn requests<'c>(
    cfg: &'c Config,
    opts: &MergeOptions,
    old_lock: Option<&Lock>,
    lock_path: &Path,
) -> Result<Vec<Request<'c>>, MergeError> {
    let upstream = cfg.upstream.as_ref().ok_or(MergeError::NoUpstream)?;
    let updating = |name: &str| match &opts.update {
        Some(list) => list.is_empty() || list.iter().any(|c| c == name),
        None => false,
    };
    let keep_pin = |name: &str,
                    url: &str,
                    reference: &str,
                    pin: Option<&Pin>|
     -> Result<Option<Oid>, MergeError> {
        let Some(pin) = pin else {
            if opts.locked {
                return Err(MergeError::LockedMismatch(format!(
                    "{name} is not in the lock"
                )));
            }
            return Ok(None);
        };
        if pin.url != url || pin.reference != reference {
            if opts.locked {
                return Err(MergeError::LockedMismatch(format!(
                    "{name} changed in the config ({} {} -> {url} {reference})",
                    pin.url, pin.reference
                )));
            }
            return Ok(None);
        }
        if updating(name) && !opts.locked {
            return Ok(None);
        }
        Oid::from_str(&pin.commit).map(Some).map_err(|_| {
            MergeError::Lock(LockError::Parse {
                path: lock_path.to_path_buf(),
                message: format!("{name}: `{}` is not a commit id", pin.commit),
            })
        })
    };
    if opts.locked {
        if let Some(lock) = old_lock {
            for p in &lock.plugins {
                if !cfg.plugins.iter().any(|c| c.component.0 == p.component) {
                    return Err(MergeError::LockedMismatch(format!(
                        "{} is in the lock but no longer in the config",
                        p.component
                    )));
                }
            }
        } else {
            return Err(MergeError::LockedMismatch(format!(
                "{} does not exist",
                lock_path.display()
            )));
        }
    }
    let base = &cfg.base_dir;
    let mut requests = vec![Request {
        name: "upstream",
        url: fetch::normalize_url(&upstream.url, base),
        reference: &upstream.reference,
        local_ref: "refs/moodle-release/upstream".into(),
        pinned: keep_pin(
            "upstream",
            &upstream.url,
            &upstream.reference,
            old_lock.and_then(|l| l.upstream.as_ref()),
        )?,
    }];
    for p in &cfg.plugins {
        let name = p.component.0.as_str();
        requests.push(Request {
            name,
            url: fetch::normalize_url(&p.url, base),
            reference: &p.reference,
            local_ref: format!("refs/moodle-release/plugins/{name}"),
            pinned: keep_pin(
                name,
                &p.url,
                &p.reference,
                old_lock.and_then(|l| l.plugin(name)).map(|pp| &pp.pin),
            )?,
        });
    }
    Ok(requests)
}

/// Upstream's commit `up`: its layout (`public/` since Moodle 5.1) and its version.php.
fn read_core<'r>(
    repo: &'r Repository,
    up: Oid,
    upstream: &crate::config::Upstream,
) -> Result<Core<'r>, MergeError> {
    let tree = repo.find_commit(up)?.tree()?;
    let prefix = if tree.get_path(Path::new("public/version.php")).is_ok() {
        "public/"
    } else {
        ""
    };
    let v = read_version_php(repo, &tree, &format!("{prefix}version.php")).ok_or_else(|| {
        MergeError::Moodle(format!(
            "upstream ({} {}) has no version.php at {prefix}version.php: is it Moodle?",
            upstream.url, upstream.reference
        ))
    })?;
    Ok(Core {
        commit: up,
        prefix,
        version: v.text("version").unwrap_or("").to_string(),
        release: v.text("release").map(String::from),
        branch: v.text("branch").unwrap_or("").to_string(),
        tree,
    })
}

/// Each plugin with its fetched commit and its path: from the config, else from the plugin
/// types upstream declares (and parents' subplugin types). Returns the types too.
fn place_plugins(
    cfg: &Config,
    repo: &Repository,
    core: &Core,
    fetched: &[Oid],
) -> Result<(Vec<Source>, BTreeMap<String, String>), MergeError> {
    let prefix = core.prefix;
    let mut sources: Vec<Source> = cfg
        .plugins
        .iter()
        .zip(fetched)
        .map(|(p, f)| Source {
            component: p.component.0.clone(),
            url: p.url.clone(),
            reference: p.reference.clone(),
            path: String::new(),
            replace: p.replace,
            commit: *f,
        })
        .collect();
    let types = plugin_types(repo, &core.tree, prefix, &sources)?;
    for (s, p) in sources.iter_mut().zip(&cfg.plugins) {
        s.path = match &p.path {
            Some(path) => format!("{prefix}{}", path.trim_matches('/')),
            None => {
                let (t, n) = p.component.split();
                let dir = types.get(t).ok_or_else(|| {
                    MergeError::Moodle(format!(
                        "{}: upstream declares no plugin type `{t}` (lib/components.json, db/subplugins.json); set `path` in its [[plugins]] entry",
                        p.component
                    ))
                })?;
                format!("{prefix}{dir}/{n}")
            }
        };
    }
    Ok((sources, types))
}

/// Grafts every plugin onto upstream's tree, parents first (a subplugin's path lies inside its
/// parent's), after checking it ([`check_plugin`]) and that it takes no path another source
/// has unless `replace = true`.
fn check_and_graft(
    repo: &Repository,
    core: &Core,
    sources: &[Source],
    old_lock: Option<&Lock>,
    opts: &MergeOptions,
) -> Result<Grafted, MergeError> {
    let mut grafted = Grafted {
        tree: core.tree.id(),
        versions: BTreeMap::new(),
        php: BTreeMap::new(),
        warnings: Vec::new(),
    };
    let mut order: Vec<&Source> = sources.iter().collect();
    order.sort_by_key(|s| s.path.matches('/').count());
    let mut seen_paths: BTreeMap<String, String> = BTreeMap::new();
    for s in order {
        let what = format!("{} ({} {})", s.component, s.url, s.reference);
        let ptree = repo.find_commit(s.commit)?.tree()?;
        let (version, php) =
            check_plugin(repo, core, s, &ptree, old_lock, opts, &mut grafted.warnings)?;
        if let Some(other) = seen_paths.get(&s.path) {
            if !s.replace {
                return Err(MergeError::Moodle(format!(
                    "{} and {other} both go to {}; set `replace = true` on the one that wins",
                    s.component, s.path
                )));
            }
        }
        let current = repo.find_tree(grafted.tree)?;
        if current.get_path(Path::new(&s.path)).is_ok()
            && !s.replace
            && !seen_paths.contains_key(&s.path)
        {
            return Err(MergeError::Moodle(format!(
                "{what}: upstream already has {}; set `replace = true` to replace it with the plugin",
                s.path
            )));
        }
        seen_paths.insert(s.path.clone(), s.component.clone());
        grafted.tree = graft(repo, &current, &s.path, ptree.id())?;
        grafted.versions.insert(s.component.clone(), version);
        grafted.php.insert(s.component.clone(), php);
    }
    Ok(grafted)
}

/// Merges each patch branch, three-way, onto `tree`. Its base is where it forked from the
/// deployment branch's first-parent line (a tip already on it adds nothing), else its merge
/// base with upstream: never a commit whose history already contains the patch. A conflict
/// names the files and changes nothing. Returns the tree and the patches applied.
fn merge_patches(
    repo: &Repository,
    cfg: &Config,
    previous: Option<Oid>,
    up: Oid,
    mut tree: Oid,
    reporter: &dyn Reporter,
) -> Result<(Oid, Vec<PatchApplied>), MergeError> {
    let mut applied = Vec::new();
    let first_parent_chain = match previous {
        Some(p) => first_parents(repo, p)?,
        None => Vec::new(),
    };
    for name in &cfg.deploy.patches {
        reporter.step(&format!("merging patch branch {name}"));
        let tip = repo
            .revparse_single(name)
            .and_then(|o| o.peel_to_commit())
            .map_err(|_| MergeError::NoPatch(name.clone()))?;
        let fork = first_parent_chain
            .iter()
            .copied()
            .find(|&d| d == tip.id() || repo.graph_descendant_of(tip.id(), d).unwrap_or(false));
        let base = match fork {
            Some(d) if d != tip.id() => d,
            Some(_) => {
                // The tip itself is on the deployment branch's first-parent line: nothing to add.
                reporter.step_done();
                continue;
            }
            None => repo
                .merge_base(tip.id(), up)
                .map_err(|_| MergeError::Unrelated(name.clone()))?,
        };
        let ancestor = repo.find_commit(base)?.tree()?;
        let ours = repo.find_tree(tree)?;
        let theirs = tip.tree()?;
        let mut index = repo.merge_trees(&ancestor, &ours, &theirs, None)?;
        if index.has_conflicts() {
            let mut files = BTreeSet::new();
            for c in index.conflicts()? {
                let c = c?;
                for e in [c.our, c.their, c.ancestor].into_iter().flatten() {
                    files.insert(String::from_utf8_lossy(&e.path).into_owned());
                }
            }
            return Err(MergeError::Conflict {
                branch: name.clone(),
                deploy: cfg.deploy.branch.clone(),
                files: files.into_iter().collect::<Vec<_>>().join(", "),
            });
        }
        tree = index.write_tree_to(repo)?;
        applied.push(PatchApplied {
            branch: name.clone(),
            commit: tip.id().to_string(),
        });
        reporter.step_done();
    }
    Ok((tree, applied))
}

/// The lock this merge pins: upstream's commit and version, each plugin's.
fn new_lock(
    upstream: &crate::config::Upstream,
    core: &Core,
    sources: &[Source],
    versions: &BTreeMap<String, String>,
) -> Lock {
    Lock {
        upstream: Some(Pin {
            url: upstream.url.clone(),
            reference: upstream.reference.clone(),
            commit: core.commit.to_string(),
            version: core.version.clone(),
            release: core.release.clone(),
        }),
        plugins: sources
            .iter()
            .map(|s| PluginPin {
                component: s.component.clone(),
                path: s.path.clone(),
                pin: Pin {
                    url: s.url.clone(),
                    reference: s.reference.clone(),
                    commit: s.commit.to_string(),
                    version: versions[&s.component].clone(),
                    release: None,
                },
            })
            .collect(),
    }
}

/// Each plugin's version before (in the previous deployment) and now; plugins the lock had
/// and the config no longer names, as removed.
fn plugin_changes(
    repo: &Repository,
    prev_tree: Option<&Tree>,
    sources: &[Source],
    versions: &BTreeMap<String, String>,
    old_lock: Option<&Lock>,
) -> Vec<Change> {
    let mut plugins = Vec::new();
    for s in sources {
        let from = prev_tree
            .and_then(|t| read_version_php(repo, t, &format!("{}/version.php", s.path)))
            .and_then(|v| v.plugin("version").map(String::from));
        plugins.push(Change {
            component: s.component.clone(),
            from,
            to: Some(versions[&s.component].clone()),
            commit: Some(s.commit.to_string()),
        });
    }
    for p in old_lock.map(|l| l.plugins.as_slice()).unwrap_or_default() {
        if !sources.iter().any(|s| s.component == p.component) {
            plugins.push(Change {
                component: p.component.clone(),
                from: Some(p.pin.version.clone()),
                to: None,
                commit: None,
            });
        }
    }
    plugins
}

/// Why the deployment commit could not be written.
enum CommitError {
    /// The branch moved while this merge ran.
    Raced,
    Git(git2::Error),
}

impl From<git2::Error> for CommitError {
    fn from(e: git2::Error) -> Self {
        CommitError::Git(e)
    }
}

/// Commits `tree` on the deployment branch, its parents the previous deployment, upstream,
/// every plugin and every patch (each once), and moves the branch only if it is still where
/// this merge found it.
#[allow(clippy::too_many_arguments)] // each is one part of the commit; a struct would only rename them
fn commit(
    repo: &Repository,
    branch_ref: &str,
    previous: Option<Oid>,
    up: Oid,
    sources: &[Source],
    result: &Merged,
    new_lock: &Lock,
    tree: Oid,
) -> Result<Oid, CommitError> {
    let tree = repo.find_tree(tree)?;
    let sig = repo
        .signature()
        .or_else(|_| git2::Signature::now("moodle-release", "moodle-release@localhost"))?;
    let mut parents: Vec<Oid> = Vec::new();
    for id in previous
        .into_iter()
        .chain(std::iter::once(up))
        .chain(sources.iter().map(|s| s.commit))
        .chain(
            result
                .patches
                .iter()
                .filter_map(|p| Oid::from_str(&p.commit).ok()),
        )
    {
        if !parents.contains(&id) {
            parents.push(id);
        }
    }
    let parent_commits = parents
        .iter()
        .map(|id| repo.find_commit(*id))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&git2::Commit> = parent_commits.iter().collect();
    let message = commit_message(result, new_lock);
    let id = repo.commit(None, &sig, &sig, &message, &tree, &refs)?;
    let log = format!(
        "moodle-release merge: {}",
        message.lines().next().unwrap_or("")
    );
    match previous {
        Some(p) => repo
            .reference_matching(branch_ref, id, true, p, &log)
            .map_err(|_| CommitError::Raced)?,
        None => repo
            .reference(branch_ref, id, false, &log)
            .map_err(|_| CommitError::Raced)?,
    };
    Ok(id)
}

/// Grafts `subtree` at `path` of `base` (replacing whatever was there).
fn graft(repo: &Repository, base: &Tree, path: &str, subtree: Oid) -> Result<Oid, git2::Error> {
    let mut b = git2::build::TreeUpdateBuilder::new();
    b.upsert(path, subtree, FileMode::Tree);
    b.create_updated(repo, base)
}

/// The first-parent history of `tip`, newest first (bounded: fork points older than that are
/// found through upstream instead).
fn first_parents(repo: &Repository, tip: Oid) -> Result<Vec<Oid>, git2::Error> {
    let mut out = Vec::new();
    let mut c = repo.find_commit(tip)?;
    loop {
        out.push(c.id());
        if out.len() >= 2000 {
            break;
        }
        match c.parent(0) {
            Ok(p) => c = p,
            Err(_) => break,
        }
    }
    Ok(out)
}

pub(super) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A lock file in the repository's git folder: a second merge on the same repository refuses
/// while one runs. Removed on drop.
struct MergeLock {
    path: PathBuf,
}

impl MergeLock {
    fn take(repo: &Repository, repo_path: &Path) -> Result<MergeLock, MergeError> {
        let path = repo.path().join("moodle-release-merge.lock");
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                let _ = std::io::Write::write_all(
                    &mut f,
                    format!("{}\n", std::process::id()).as_bytes(),
                );
                Ok(MergeLock { path })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // A lock whose process is gone (killed merge) is stale: take it over.
                let pid = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok());
                if let Some(pid) = pid {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = std::fs::remove_file(&path);
                        return MergeLock::take(repo, repo_path);
                    }
                }
                Err(MergeError::Busy {
                    path: repo_path.to_path_buf(),
                    lock: path,
                })
            }
            Err(e) => Err(MergeError::Repo {
                path: repo_path.to_path_buf(),
                message: format!("cannot create {}: {e}", path.display()),
            }),
        }
    }
}

impl Drop for MergeLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
