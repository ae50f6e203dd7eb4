//! Which version a roll goes to, and why: the stopped roll's with `--resume`, `--version` (or
//! `rollback --to`), else the repository's newest (roll) or what the nodes ran before the last
//! roll (rollback). Refused before anything changes when it is not in the repository.

use std::collections::BTreeMap;

use super::{RollError, RollOptions};
use crate::cluster::probe::Installed;
use crate::journal::{RollState, RollStatus};

/// The stopped roll that `--resume` continues: the newer of the local and the lock node's
/// state, unfinished, of the same command, and going to the version asked for (if any).
/// Anything else is refused before the cluster is touched: resuming must never pick a target
/// nobody chose for this deploy (the repository's newest, say).
pub(super) fn resumed<'a>(
    opts: &RollOptions,
    previous: Option<&'a RollState>,
) -> Result<&'a RollState, RollError> {
    let kind = opts.kind();
    let Some(s) = previous.filter(|s| s.unfinished()) else {
        return Err(RollError::NothingToResume {
            kind,
            last: previous.map(|s| (s.kind, s.target.clone())),
        });
    };
    if s.kind != kind {
        return Err(RollError::ResumeOtherKind {
            stopped: s.kind,
            target: s.target.clone(),
            kind,
        });
    }
    let flag = if opts.rollback { "--to" } else { "--version" };
    if let Some(v) = opts.version.as_ref().filter(|v| **v != s.target) {
        return Err(RollError::ResumeOtherVersion {
            kind,
            target: s.target.clone(),
            flag,
            asked: v.clone(),
        });
    }
    Ok(s)
}

/// The version to roll to, its entry in the repository, and why it is the target: the stopped
/// roll's with `--resume`, else `--version`, else the newest (roll) or the one before the
/// current (rollback: from the last roll's state, else the repository).
pub(super) fn choose_target(
    pkg: &str,
    repo: &crate::apt::Repo,
    opts: &RollOptions,
    installed: &BTreeMap<String, Installed>,
    previous_state: Option<&RollState>,
) -> Result<Chosen, RollError> {
    let list = repo.list()?;
    let current_max = installed
        .values()
        .filter_map(|i| i.version.as_deref())
        .filter_map(|v| v.parse::<debversion::Version>().ok())
        .max();
    let resumed = opts
        .resume
        .then(|| resumed(opts, previous_state))
        .transpose()?;
    let (target, why) = match (resumed, &opts.version, opts.rollback) {
        (Some(s), _, _) => (s.target.clone(), resume_why(s)),
        (None, Some(v), rollback) => (
            v.clone(),
            if rollback { "--to" } else { "--version" }.to_string(),
        ),
        (None, None, false) => (
            list.first()
                .map(|l| l.version.clone())
                .ok_or_else(|| RollError::EmptyRepo {
                    repo: repo.root.clone(),
                    package: pkg.to_string(),
                })?,
            "the newest in the repository".to_string(),
        ),
        (None, None, true) => rollback_target(&list, current_max, previous_state)?,
    };
    let listed = list
        .iter()
        .find(|l| l.version == target)
        .ok_or_else(|| RollError::NotInRepo {
            version: target.clone(),
            package: pkg.to_string(),
            repo: repo.root.clone(),
            why: why.clone(),
        })?
        .clone();
    if let Some(e) = not_a_release(&repo.site, &listed) {
        return Err(e);
    }
    Ok(Chosen {
        version: target,
        listed,
        why,
        repo: list.into_iter().map(|l| (l.version.clone(), l)).collect(),
    })
}

/// Why `listed` cannot be installed on a site in the releases layout, if it cannot: it is the
/// in-place layout's package of that version (published before the site moved), which would
/// write its files through `install_dir`, the symlink, into the live release. The same commit
/// and build number make the same version as a release; the error says the commands.
fn not_a_release(site: &crate::config::Site, listed: &crate::apt::Listed) -> Option<RollError> {
    if site.layout != crate::config::SiteLayout::Releases
        || listed.package == site.release_package(&listed.version)
    {
        return None;
    }
    let build = crate::moodle::Release::build_of(&listed.version)
        .map(|b| format!(" --build-number {b}"))
        .unwrap_or_default();
    let rebuild = match &listed.source_commit {
        Some(commit) => format!(
            "`moodle-release build --ref {commit}{build}`, then `moodle-release publish` of the .deb it writes ({})",
            site.release_package(&listed.version)
        ),
        None => format!(
            "it was built from a folder: `moodle-release build --dir DIR{build}` of that tree, then `moodle-release publish` of the .deb it writes"
        ),
    };
    Some(RollError::NotARelease {
        version: listed.version.clone(),
        package: listed.package.clone(),
        rebuild,
    })
}

/// The target a roll goes to, as [`choose_target`] found it.
#[derive(Debug, Clone)]
pub(super) struct Chosen {
    pub version: String,
    /// Its entry in the repository (its hashes, its release probe).
    pub listed: crate::apt::Listed,
    /// Why it is the target.
    pub why: String,
    /// Every version in the repository, with its entry.
    pub repo: BTreeMap<String, crate::apt::Listed>,
}

/// `--resume: the roll to V that failed on web3: why`.
fn resume_why(s: &RollState) -> String {
    format!(
        "--resume: the {} to {} that {}{}{}",
        s.kind,
        s.target,
        match s.status {
            RollStatus::Running => "was killed".to_string(),
            other => other.to_string(),
        },
        s.failed_node
            .as_ref()
            .map(|n| format!(" on {n}"))
            .unwrap_or_default(),
        s.reason
            .as_ref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    )
}

/// The version a rollback goes back to when none is given, and why: what every node ran before
/// the last roll (its state), when that is one version, differs from now and is still in the
/// repository; else the repository's newest below what the nodes run (`current_max`).
fn rollback_target(
    list: &[crate::apt::Listed],
    current_max: Option<debversion::Version>,
    previous_state: Option<&RollState>,
) -> Result<(String, String), RollError> {
    let current = current_max.as_ref().map(|c| c.to_string());
    // The version every node ran before the last roll (from its journal state), when that
    // is one version, differs from now, and is still in the repository...
    let before_last = previous_state.and_then(|s| {
        let versions: std::collections::BTreeSet<String> = s.previous.values().cloned().collect();
        let only = versions.into_iter().collect::<Vec<_>>();
        (only.len() == 1).then(|| only[0].clone())
    });
    let from_journal = before_last
        .filter(|v| Some(v) != current.as_ref() && list.iter().any(|l| &l.version == v))
        .map(|v| (v, "what every node ran before the last roll".to_string()));
    // ... else the newest version of the repository below what the nodes run.
    let below = list
        .iter()
        .find(
            |l| match (&current_max, l.version.parse::<debversion::Version>()) {
                (Some(c), Ok(v)) => v < *c,
                _ => false,
            },
        )
        .map(|l| {
            (
                l.version.clone(),
                format!(
                    "the newest in the repository below {}",
                    current.clone().unwrap_or_default()
                ),
            )
        });
    from_journal.or(below).ok_or(RollError::NothingEarlier)
}
