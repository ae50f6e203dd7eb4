//! The plan: the target (and why it is the target), the path (code-only, database, first install)
//! and the batches, computed from what the nodes run before anything changes, so `--plan` shows
//! exactly what a roll would do.

use super::*;

/// The plan, as `--plan` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub kind: RollKind,
    pub target: String,
    /// Why `target` is the target: `--version`, the newest, the stopped roll `--resume` finishes.
    pub target_why: String,
    pub path: RollPath,
    pub why: String,
    /// Web nodes out of rotation at once (`--batch`, else `[roll] batch`), at least 1.
    pub batch: usize,
    pub batches: Vec<Vec<String>>,
    pub cron: Vec<String>,
    pub skipped: Vec<String>,
    pub installed: BTreeMap<String, Option<String>>,
    /// The web node that runs `purge_command` once every node is on the target (code-only path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purge_on: Option<String>,
}

/// How the nodes get the target: in rotation a batch at a time, or behind maintenance mode with
/// `upgrade_command` once (a first install goes that way too: there is no database yet that
/// the code matches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollPath {
    CodeOnly,
    Database,
    FirstInstall,
}

impl std::fmt::Display for RollPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RollPath::CodeOnly => "code-only",
            RollPath::Database => "database",
            RollPath::FirstInstall => "first-install database",
        })
    }
}

impl Plan {
    /// The database path (maintenance mode and `upgrade_command`), rather than code-only.
    pub fn database(&self) -> bool {
        self.path != RollPath::CodeOnly
    }
}

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
        return Err(RollError::NothingToResume(match previous {
            Some(s) => format!(
                "no stopped roll to resume: the last {} (to {}) is done; run `moodle-release {kind}` without --resume",
                s.kind, s.target
            ),
            None => format!(
                "no stopped roll to resume: no roll left its state here or on the lock node; run `moodle-release {kind}` without --resume"
            ),
        }));
    };
    if s.kind != kind {
        return Err(RollError::ResumeMismatch(format!(
            "the stopped run is a {} to {}, not a {kind}: `moodle-release {} --resume` finishes it",
            s.kind, s.target, s.kind
        )));
    }
    let flag = if opts.rollback { "--to" } else { "--version" };
    if let Some(v) = opts.version.as_ref().filter(|v| **v != s.target) {
        return Err(RollError::ResumeMismatch(format!(
            "the stopped {kind} was going to {t}, and {flag} asks for {v}: drop {flag} to finish it on {t}, or drop --resume to start a {kind} to {v}",
            t = s.target
        )));
    }
    Ok(s)
}

/// The version to roll to, its entry in the repository, and why it is the target: the stopped
/// roll's with `--resume`, else `--version`, else the newest (roll) or the one before the
/// current (rollback: from the last roll's state, else the repository).
pub(super) fn choose_target(
    ctx: &Ctx,
    repo: &crate::apt::Repo,
    opts: &RollOptions,
    installed: &BTreeMap<String, Installed>,
    previous_state: Option<&RollState>,
) -> Result<(String, crate::apt::Listed, String), RollError> {
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
        (Some(s), _, _) => (
            s.target.clone(),
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
            ),
        ),
        (None, Some(v), rollback) => (
            v.clone(),
            if rollback { "--to" } else { "--version" }.to_string(),
        ),
        (None, None, false) => (
            list.first().map(|l| l.version.clone()).ok_or_else(|| {
                RollError::Preflight(format!(
                    "the apt repository {} holds no version of {}",
                    repo.root.display(),
                    ctx.pkg
                ))
            })?,
            "the newest in the repository".to_string(),
        ),
        (None, None, true) => {
            let current = current_max.as_ref().map(|c| c.to_string());
            // The version every node ran before the last roll (from its journal state), when that
            // is one version, differs from now, and is still in the repository...
            let before_last = previous_state.and_then(|s| {
                let versions: std::collections::BTreeSet<String> =
                    s.previous.values().cloned().collect();
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
            from_journal.or(below).ok_or_else(|| {
                RollError::Preflight("no earlier version in the repository to roll back to".into())
            })?
        }
    };
    let listed = list.iter().find(|l| l.version == target).ok_or_else(|| {
        RollError::Preflight(format!(
            "version {target} of {} is not in the apt repository {} ({why})",
            ctx.pkg,
            repo.root.display()
        ))
    })?;
    Ok((target, listed.clone(), why))
}

/// The plan: the nodes not on `target`, the path (database or code-only, and why), the batches.
/// Refuses a rollback across a database upgrade and a batch that would empty the pool (unless
/// `--force`).
pub(super) fn make_plan(
    cfg: &Config,
    opts: &RollOptions,
    batch: usize,
    target: &str,
    listed: &crate::apt::Listed,
    installed: &BTreeMap<String, Installed>,
    previous_state: Option<&RollState>,
) -> Result<Plan, RollError> {
    let (t_versions, t_db) = (&listed.versions_hash, &listed.db_hash);
    let to_do: Vec<&Node> = cfg
        .nodes
        .iter()
        .filter(|n| installed[&n.name].version.as_deref() != Some(target))
        .collect();
    let mut why = String::new();
    let mut first_install = false;
    for n in &to_do {
        let i = &installed[&n.name];
        if i.version.is_none() {
            first_install = true;
            why = format!(
                "{} has no version of {} installed",
                n.name, cfg.site.package
            );
            break;
        }
        if i.versions_hash != *t_versions {
            why = format!(
                "a core or plugin $version differs between {} ({}) and {target}",
                i.version.clone().unwrap_or_default(),
                n.name
            );
            break;
        }
        if i.db_hash != *t_db {
            why = format!(
                "files under db/ differ between {} ({}) and {target}",
                i.version.clone().unwrap_or_default(),
                n.name
            );
            break;
        }
    }
    let components_differ = !why.is_empty();
    // A stopped roll can leave the site in maintenance with its upgrade not run (say
    // upgrade_command failed once every node had the code): nothing differs any more, yet the
    // upgrade and maintenance off remain to do.
    if why.is_empty() {
        if let Some(p) = previous_state.filter(|s| s.upgrade_left()) {
            why = format!(
                "an earlier {} to {} stopped before its database upgrade finished (the site is in maintenance mode)",
                p.kind, p.target
            );
        }
    }
    let database = !why.is_empty();
    // Code whose $version or db/ differs from what runs means a database made for the other
    // code. (Only finishing a pending upgrade, with every node already on the target, is not a
    // downgrade: the upgrade runs for the code installed.)
    if opts.rollback && components_differ && !opts.force {
        return Err(RollError::Refused(format!(
            "{why}: the database was upgraded for the newer code, and Moodle cannot downgrade a database. Restore the database from before the upgrade and use --force, or roll forward to a fixed version"
        )));
    }
    let mut webs: Vec<String> = web_nodes(cfg)
        .iter()
        .filter(|n| to_do.iter().any(|t| t.name == n.name))
        .map(|n| n.name.clone())
        .collect();
    // Nodes an earlier run left out of rotation go first: a batch of others while they are
    // still out would put more than `batch` servers out at once.
    if let Some(p) = previous_state.filter(|s| s.unfinished()) {
        webs.sort_by_key(|n| !p.out_of_rotation.contains(n));
    }
    // In rotation, a batch as large as the pool would leave no server: refused before anything,
    // even --plan (the database path takes the site to maintenance anyway).
    let pool = web_nodes(cfg).len();
    if !database && !opts.force && pool > 0 && batch.min(webs.len()) >= pool {
        return Err(RollError::Refused(if pool == 1 {
            "the only web server would go out of rotation (the site down while it is upgraded): add a web node, or use --force".to_string()
        } else {
            format!(
                "--batch {batch} would take all {pool} web servers out of rotation at once: use --batch {} or less (or --force)",
                pool - 1
            )
        }));
    }
    let plan = Plan {
        kind: opts.kind(),
        target: target.to_string(),
        target_why: String::new(),
        path: match (database, first_install) {
            (false, _) => RollPath::CodeOnly,
            (true, true) => RollPath::FirstInstall,
            (true, false) => RollPath::Database,
        },
        why: if database {
            why.clone()
        } else {
            "no $version and no db/ file differs: nodes are upgraded in rotation".into()
        },
        batch,
        batches: webs.chunks(batch).map(|c| c.to_vec()).collect(),
        cron: cfg
            .nodes
            .iter()
            .filter(|n| n.role == Role::Cron && to_do.iter().any(|t| t.name == n.name))
            .map(|n| n.name.clone())
            .collect(),
        skipped: cfg
            .nodes
            .iter()
            .filter(|n| !to_do.iter().any(|t| t.name == n.name))
            .map(|n| n.name.clone())
            .collect(),
        installed: installed
            .iter()
            .map(|(k, v)| (k.clone(), v.version.clone()))
            .collect(),
        purge_on: web_nodes(cfg)
            .first()
            .filter(|_| !database && !to_do.is_empty() && !cfg.roll.purge_command.trim().is_empty())
            .map(|n| n.name.clone()),
    };
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_an_earlier_run_left_out_are_planned_first() {
        let mut text = String::from(
            "[site]\npackage = \"moodle-site\"\nmaintainer = \"M <m@example.edu>\"\ndescription = \"d\"\ninstall_dir = \"/srv/moodle\"\n[deploy]\nrepo = \".\"\nbranch = \"deploy\"\n",
        );
        for n in ["web1", "web2", "web3", "web4"] {
            text.push_str(&format!(
                "[[nodes]]\nname = \"{n}\"\nssh = \"{n}\"\nhttp = \"http://{n}\"\n"
            ));
        }
        let cfg = Config::parse(&text, std::path::Path::new("moodle-release.toml")).unwrap();
        let listed = crate::apt::Listed {
            package: "moodle-site".into(),
            version: "2".into(),
            filename: String::new(),
            size: 0,
            sha256: String::new(),
            moodle_release: None,
            versions_hash: Some("v".into()),
            db_hash: Some("d".into()),
        };
        let on = |v: &str| Installed {
            version: Some(v.into()),
            versions_hash: Some("v".into()),
            db_hash: Some("d".into()),
            ..Installed::default()
        };
        let installed: BTreeMap<String, Installed> = [
            ("web1", on("2")),
            ("web2", on("1")),
            ("web3", on("1")),
            ("web4", on("1")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let opts = RollOptions::default();
        let plan = |state: Option<&RollState>| {
            make_plan(&cfg, &opts, 1, "2", &listed, &installed, state)
                .unwrap()
                .batches
        };
        let names = |b: Vec<Vec<String>>| b.concat();
        assert_eq!(names(plan(None)), ["web2", "web3", "web4"]);
        let stopped = RollState {
            status: RollStatus::Failed,
            out_of_rotation: vec!["web4".into()],
            ..RollState::default()
        };
        assert_eq!(names(plan(Some(&stopped))), ["web4", "web2", "web3"]);
        // A finished roll's list is not its own any more.
        let done = RollState {
            status: RollStatus::Done,
            ..stopped
        };
        assert_eq!(names(plan(Some(&done))), ["web2", "web3", "web4"]);
    }

    #[test]
    fn resume_takes_the_stopped_rolls_target_or_refuses() {
        let stopped = RollState {
            kind: RollKind::Roll,
            target: "2".into(),
            status: RollStatus::Failed,
            ..RollState::default()
        };
        let opts = |version: Option<&str>, rollback: bool| RollOptions {
            version: version.map(Into::into),
            rollback,
            resume: true,
            ..RollOptions::default()
        };
        let target =
            |o: RollOptions, s: Option<&RollState>| resumed(&o, s).map(|s| s.target.clone());
        assert_eq!(target(opts(None, false), Some(&stopped)).unwrap(), "2");
        assert_eq!(target(opts(Some("2"), false), Some(&stopped)).unwrap(), "2");
        // Another version: refused, naming both.
        let e = target(opts(Some("4"), false), Some(&stopped)).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string()
                .contains("going to 2, and --version asks for 4"),
            "{e}"
        );
        // The other command: refused, naming the one that finishes it.
        let e = target(opts(None, true), Some(&stopped)).unwrap_err();
        assert!(
            e.to_string().contains("`moodle-release roll --resume`"),
            "{e}"
        );
        // Nothing stopped: refused, not a new roll.
        let e = target(opts(None, false), None).unwrap_err();
        assert!(matches!(e, RollError::NothingToResume(_)), "{e}");
        let done = RollState {
            status: RollStatus::Done,
            ..stopped.clone()
        };
        let e = target(opts(None, false), Some(&done)).unwrap_err();
        assert!(e.to_string().contains("(to 2) is done"), "{e}");
        // A killed roll (its state still says running) is resumed too.
        let killed = RollState {
            status: RollStatus::Running,
            ..stopped
        };
        assert_eq!(target(opts(None, false), Some(&killed)).unwrap(), "2");
    }
}
