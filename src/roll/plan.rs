//! The plan: the target (and why it is the target), the path (code-only, database, first install)
//! and the batches, computed from what the nodes run before anything changes, so `--plan` shows
//! exactly what a roll would do.

use std::collections::BTreeMap;

use serde::Serialize;

use super::canary::{self, CanaryPlan};
use super::program::{self, Layout};
use super::step::{Group, OnFail, Step};
use super::target::Chosen;
use super::{RollError, RollOptions};
use crate::cluster::probe::Installed;
use crate::cluster::web_nodes;
use crate::config::{Config, Node, Role};
use crate::journal::{RollKind, RollState};

/// The plan, as `--plan` prints it: what the roll decided (target, path, why) and its
/// program. The summary (`batches`, `cron`, `purge_on`, `canary`) is read from the program,
/// never kept beside it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: RollKind,
    pub target: String,
    /// Why `target` is the target: `--version`, the newest, the stopped roll `--resume` finishes.
    pub target_why: String,
    pub path: RollPath,
    pub why: String,
    /// Web nodes out of rotation at once (`--batch`, else `[roll] batch`), at least 1.
    pub batch: usize,
    pub skipped: Vec<String>,
    pub installed: BTreeMap<String, Option<String>>,
    /// The freeze window this roll is in (`--force`, or `--plan`'s warning).
    pub frozen: Option<String>,
    /// Every version in the repository with its entry (release probe, `Installed-Size`): what
    /// the target's steps, and those of the way back, read of their version.
    pub repo: BTreeMap<String, crate::apt::Listed>,
    /// What the program was written from, for the programs written during the walk (the rest
    /// after failures within the budget, the way back of `--auto-rollback` and the canary).
    pub(super) layout: Layout,
    /// The program: every step, in groups that run at once, each with its batch and failure
    /// rule (see [`program::write`]).
    pub program: Vec<Group>,
}

impl Plan {
    /// The URL path of the target's release probe, asked of each web node before it goes back
    /// into rotation; `None` for a package built before packages carried one.
    pub fn probe(&self) -> Option<String> {
        self.repo.get(&self.target).and_then(|l| l.probe.clone())
    }

    /// What the target's package takes on a node (KiB), if the repository says.
    pub fn installed_kib(&self) -> Option<u64> {
        self.repo.get(&self.target).and_then(|l| l.installed_kib)
    }

    /// Every step, in order.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.program.iter().flat_map(|g| &g.steps)
    }

    /// The web nodes of each batch (a database path batch can hold a cron node too).
    pub fn batches(&self) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = Vec::new();
        for g in &self.program {
            let Some(b) = g.batch else { continue };
            for s in g.steps.iter().filter(|s| matches!(s, Step::Install { .. })) {
                if out.len() <= b {
                    out.resize(b + 1, Vec::new());
                }
                out[b].extend(s.node().map(String::from));
            }
        }
        out
    }

    /// The cron nodes the program installs: installed, never health-checked.
    pub fn cron(&self) -> Vec<String> {
        let checked: Vec<&str> = self
            .steps()
            .filter(|s| matches!(s, Step::WaitHealthy { .. }))
            .filter_map(Step::node)
            .collect();
        self.steps()
            .filter(|s| matches!(s, Step::Install { .. }))
            .filter_map(Step::node)
            .filter(|n| !checked.contains(n))
            .map(String::from)
            .collect()
    }

    /// The node that runs `purge_command` at the end, if the program purges.
    pub fn purge_on(&self) -> Option<String> {
        self.steps().find_map(|s| match s {
            Step::Purge { node } => Some(node.clone()),
            _ => None,
        })
    }

    /// The canary's rule, if the program has a canary.
    pub fn canary(&self) -> Option<CanaryPlan> {
        self.steps().find_map(Step::canary_plan)
    }
}

impl Serialize for Plan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        /// A step as `--json` shows it: with the journal `action` it logs, the group that runs
        /// at once (0-based), its batch and its failure rule.
        #[derive(Serialize)]
        struct ShownStep<'a> {
            #[serde(flatten)]
            step: &'a Step,
            action: String,
            group: usize,
            #[serde(skip_serializing_if = "Option::is_none")]
            batch: Option<usize>,
            on_fail: OnFail,
        }
        #[derive(Serialize)]
        struct Shown<'a> {
            kind: RollKind,
            target: &'a str,
            target_why: &'a str,
            path: RollPath,
            why: &'a str,
            batch: usize,
            batches: Vec<Vec<String>>,
            cron: Vec<String>,
            skipped: &'a [String],
            installed: &'a BTreeMap<String, Option<String>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            purge_on: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            frozen: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            probe: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            canary: Option<CanaryPlan>,
            steps: Vec<ShownStep<'a>>,
        }
        let steps = self
            .program
            .iter()
            .enumerate()
            .flat_map(|(i, g)| {
                g.steps.iter().map(move |step| ShownStep {
                    step,
                    action: step.action(),
                    group: i,
                    batch: g.batch,
                    on_fail: g.on_fail,
                })
            })
            .collect();
        Shown {
            kind: self.kind,
            target: &self.target,
            target_why: &self.target_why,
            path: self.path,
            why: &self.why,
            batch: self.batch,
            batches: self.batches(),
            cron: self.cron(),
            skipped: &self.skipped,
            installed: &self.installed,
            purge_on: self.purge_on(),
            frozen: &self.frozen,
            probe: self.probe(),
            canary: self.canary(),
            steps,
        }
        .serialize(s)
    }
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

/// Why the nodes in `to_do` need the database path to get `target`, if they do: one has nothing
/// installed (a first install), or runs code whose core or plugin `$version`, or whose `db/`
/// files, differ from the target's (the hashes `build` records).
fn database_why(
    cfg: &Config,
    target: &str,
    listed: &crate::apt::Listed,
    installed: &BTreeMap<String, Installed>,
    to_do: &[&Node],
) -> Option<String> {
    to_do.iter().find_map(|n| {
        let i = &installed[&n.name];
        let Some(v) = &i.version else {
            return Some(format!(
                "{} has no version of {} installed",
                n.name, cfg.site.package
            ));
        };
        if i.versions_hash != listed.versions_hash {
            Some(format!(
                "a core or plugin $version differs between {v} ({}) and {target}",
                n.name
            ))
        } else if i.db_hash != listed.db_hash {
            Some(format!(
                "files under db/ differ between {v} ({}) and {target}",
                n.name
            ))
        } else {
            None
        }
    })
}

/// The plan: the nodes not on `target`, the path (database or code-only, and why), the batches.
/// Refuses a rollback across a database upgrade and a batch that would empty the pool (unless
/// `--force`). Over the mark for a reason: the `Plan` literal is half of it, every field in one
/// place.
pub(super) fn make_plan(
    cfg: &Config,
    opts: &RollOptions,
    batch: usize,
    chosen: &Chosen,
    installed: &BTreeMap<String, Installed>,
    previous_state: Option<&RollState>,
    frozen: Option<String>,
) -> Result<Plan, RollError> {
    let (target, listed) = (chosen.version.as_str(), &chosen.listed);
    let to_do: Vec<&Node> = cfg
        .nodes
        .iter()
        .filter(|n| installed[&n.name].version.as_deref() != Some(target))
        .collect();
    // A node with nothing installed: no code of the site there yet to keep serving.
    let first_install = to_do.iter().any(|n| installed[&n.name].version.is_none());
    let mut why = database_why(cfg, target, listed, installed, &to_do).unwrap_or_default();
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
        return Err(RollError::DatabaseDowngrade { why });
    }
    let webs = web_order(cfg, &to_do, previous_state);
    // In rotation, a batch as large as the pool would leave no server: refused before anything,
    // even --plan (the database path takes the site to maintenance anyway).
    let pool = web_nodes(cfg).len();
    if !database && !opts.force && pool > 0 && batch.min(webs.len()) >= pool {
        return Err(if pool == 1 {
            RollError::OnlyServer
        } else {
            RollError::WholePool { batch, pool }
        });
    }
    // The canary: on the code-only path only (after a database upgrade, old code cannot serve).
    let canary = canary::window(cfg, opts)
        .filter(|_| !database)
        .and_then(|window| {
            Some(CanaryPlan {
                node: webs.first()?.clone(),
                window,
                max_5xx: cfg.roll.canary_max_5xx,
                min_requests: cfg.roll.canary_min_requests,
            })
        });
    let layout = Layout {
        database,
        batches: batches(&webs, batch, canary.is_some()),
        cron: cfg
            .nodes
            .iter()
            .filter(|n| n.role == Role::Cron && to_do.iter().any(|t| t.name == n.name))
            .map(|n| n.name.clone())
            .collect(),
        batch,
        canary,
        purge_on: web_nodes(cfg)
            .first()
            .filter(|_| !database && !to_do.is_empty() && !cfg.roll.purge_command.trim().is_empty())
            .map(|n| n.name.clone()),
        probe: listed.probe.clone(),
        force_drain: opts.force_drain,
        put_back: put_back(cfg, previous_state, installed, target),
        have_target: installed
            .iter()
            .filter(|(_, i)| i.has(target))
            .map(|(n, _)| n.clone())
            .collect(),
        prune: prune(cfg, installed, target),
        ..Layout::of(cfg)
    };
    let plan = Plan {
        kind: opts.kind(),
        target: target.to_string(),
        target_why: chosen.why.clone(),
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
        frozen,
        repo: chosen.repo.clone(),
        program: program::write(&layout),
        layout,
    };
    Ok(plan)
}

/// The web nodes to upgrade, in the config's order, except that nodes an earlier run left out
/// of rotation go first: a batch of others while they are still out would put more than
/// `batch` servers out at once.
fn web_order(cfg: &Config, to_do: &[&Node], previous_state: Option<&RollState>) -> Vec<String> {
    let mut webs: Vec<String> = web_nodes(cfg)
        .iter()
        .filter(|n| to_do.iter().any(|t| t.name == n.name))
        .map(|n| n.name.clone())
        .collect();
    if let Some(out) = previous_state.map(RollState::left_out) {
        webs.sort_by_key(|n| !out.contains(n));
    }
    webs
}

/// Nodes left out of rotation by the last run that already run the target: back in first.
fn put_back(
    cfg: &Config,
    previous_state: Option<&RollState>,
    installed: &BTreeMap<String, Installed>,
    target: &str,
) -> Vec<String> {
    previous_state
        .map(|s| s.out_of_rotation.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| {
            installed.get(n).and_then(|i| i.version.as_deref()) == Some(target)
                && cfg.nodes.iter().any(|c| &c.name == n)
        })
        .collect()
}

/// The releases layout: for each node, the releases to remove once it runs `target`: all but
/// the newest `keep_releases` (at least 2), and never the target nor the release it runs now
/// (the one a rollback goes back to).
fn prune(
    cfg: &Config,
    installed: &BTreeMap<String, Installed>,
    target: &str,
) -> Vec<(String, Vec<String>)> {
    if cfg.site.layout != crate::config::SiteLayout::Releases {
        return Vec::new();
    }
    let keep = (cfg.roll.keep_releases as usize).max(2);
    let order = |v: &String| v.parse::<debversion::Version>().ok();
    let mut out = Vec::new();
    for (node, i) in installed {
        let mut all: Vec<String> = i.releases.clone();
        if !all.iter().any(|v| v == target) {
            all.push(target.to_string());
        }
        all.sort_by_key(|v| std::cmp::Reverse(order(v)));
        let gone: Vec<String> = all
            .iter()
            .skip(keep)
            .filter(|v| *v != target && Some(v.as_str()) != i.version.as_deref())
            .cloned()
            .collect();
        // A node moved from the in-place layout also removes the old folder, set aside.
        if !gone.is_empty() || i.in_place_dir {
            out.push((node.clone(), gone));
        }
    }
    out
}

/// The web nodes in batches of `batch`; with a canary, the first batch is the canary alone.
fn batches(webs: &[String], batch: usize, canary: bool) -> Vec<Vec<String>> {
    let (first, rest) = match (canary, webs.split_first()) {
        (true, Some((c, rest))) => (Some(vec![c.clone()]), rest),
        _ => (None, webs),
    };
    first
        .into_iter()
        .chain(rest.chunks(batch).map(<[String]>::to_vec))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::RollStatus;
    use crate::roll::target::resumed;
    use crate::roll::Outcome;
    use std::time::{Duration, Instant};

    /// keep_releases: the newest are kept, and never the target nor the release a node runs.
    #[test]
    fn old_releases_go_but_never_the_target_nor_the_live_one() {
        let (mut cfg, _, _) = cluster("d");
        cfg.site.layout = crate::config::SiteLayout::Releases;
        cfg.roll.keep_releases = 2;
        let node = |live: &str, releases: &[&str]| Installed {
            version: Some(live.into()),
            releases: releases.iter().map(|r| r.to_string()).collect(),
            ..Installed::default()
        };
        let installed: BTreeMap<String, Installed> = [
            (
                "web1".to_string(),
                node("3-1", &["1-1", "2-1", "3-1", "4-1"]),
            ),
            ("web2".to_string(), node("1-1", &["1-1", "2-1", "3-1"])),
            ("web3".to_string(), node("3-1", &["3-1"])),
        ]
        .into_iter()
        .collect();
        let gone = prune(&cfg, &installed, "4-1");
        assert_eq!(
            gone,
            [
                (
                    "web1".to_string(),
                    vec!["2-1".to_string(), "1-1".to_string()]
                ),
                ("web2".to_string(), vec!["2-1".to_string()]),
            ]
        );
        // keep_releases below 2 keeps 2: the live one and the one before it.
        cfg.roll.keep_releases = 0;
        assert_eq!(prune(&cfg, &installed, "4-1")[0].1, ["2-1", "1-1"]);
    }

    #[test]
    fn nodes_an_earlier_run_left_out_are_planned_first() {
        let (cfg, listed, mut installed) = cluster("d");
        installed.get_mut("web1").unwrap().version = Some("2".into());
        let opts = RollOptions::default();
        let plan = |state: Option<&RollState>| {
            make_plan(&cfg, &opts, 1, &listed, &installed, state, None)
                .unwrap()
                .batches()
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
        assert!(matches!(e, RollError::NothingToResume { .. }), "{e}");
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

    /// Four web nodes and a cron node, all on version 1 (hashes `v`, `d`); the target, 2,
    /// has `db_hash` `target_db`.
    fn cluster(target_db: &str) -> (Config, Chosen, BTreeMap<String, Installed>) {
        let mut text = String::from(
            "[site]\npackage = \"moodle-site\"\nmaintainer = \"M <m@example.edu>\"\ndescription = \"d\"\ninstall_dir = \"/srv/moodle\"\n[deploy]\nrepo = \".\"\nbranch = \"deploy\"\n",
        );
        for n in ["web1", "web2", "web3", "web4"] {
            text.push_str(&format!(
                "[[nodes]]\nname = \"{n}\"\nssh = \"{n}\"\nhttp = \"http://{n}\"\n"
            ));
        }
        text.push_str("[[nodes]]\nname = \"cron1\"\nssh = \"cron1\"\nrole = \"cron\"\n");
        let cfg = Config::parse(&text, std::path::Path::new("moodle-release.toml")).unwrap();
        let listed = crate::apt::Listed::sample("2", "v", target_db);
        let listed = Chosen {
            version: "2".into(),
            listed,
            why: "the newest in the repository".into(),
            repo: [(
                "2".to_string(),
                crate::apt::Listed::sample("2", "v", target_db),
            )]
            .into_iter()
            .collect(),
        };
        let installed = cfg
            .nodes
            .iter()
            .map(|n| {
                let i = Installed {
                    version: Some("1".into()),
                    versions_hash: Some("v".into()),
                    db_hash: Some("d".into()),
                    ..Installed::default()
                };
                (n.name.clone(), i)
            })
            .collect();
        (cfg, listed, installed)
    }

    /// The plan to version 2, with no earlier roll.
    fn planned(
        cfg: &Config,
        opts: &RollOptions,
        batch: usize,
        listed: &Chosen,
        installed: &BTreeMap<String, Installed>,
    ) -> Result<Plan, RollError> {
        make_plan(cfg, opts, batch, listed, installed, None, None)
    }

    /// The web servers out of rotation after each step, at most.
    fn most_out(steps: &[Step]) -> usize {
        let mut out = std::collections::BTreeSet::new();
        let mut most = 0;
        for s in steps {
            match s {
                Step::Drain { node } => {
                    out.insert(node.clone());
                }
                Step::Ready { node } | Step::PutBack { node } => {
                    out.remove(node);
                }
                _ => {}
            }
            most = most.max(out.len());
        }
        most
    }

    fn position(steps: &[Step], want: impl Fn(&Step) -> bool) -> Vec<usize> {
        steps
            .iter()
            .enumerate()
            .filter(|(_, s)| want(s))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn a_code_only_plan_keeps_batch_limits_and_puts_cron_after_web() {
        let (cfg, listed, installed) = cluster("d");
        for batch in 1..=3 {
            let plan = planned(&cfg, &RollOptions::default(), batch, &listed, &installed).unwrap();
            assert_eq!(plan.path, RollPath::CodeOnly);
            assert!(plan.batches().iter().all(|b| b.len() <= batch));
            let s = &plan.steps().cloned().collect::<Vec<_>>();
            // Never more than `batch` out, never the last one.
            assert_eq!(most_out(s), batch, "{s:?}");
            // Every web node: drain, wait idle, install, verify, health down, healthy, ready.
            for n in ["web1", "web2", "web3", "web4"] {
                let at = |want: &dyn Fn(&Step) -> bool| position(s, want);
                let node = n.to_string();
                let order = [
                    at(&|x| *x == Step::Drain { node: node.clone() }),
                    at(&|x| matches!(x, Step::WaitIdle { nodes } if nodes.contains(&node))),
                    at(&|x| *x == Step::Install { node: node.clone() }),
                    at(&|x| *x == Step::Verify { node: node.clone() }),
                    at(&|x| *x == Step::HealthDown { node: node.clone() }),
                    at(&|x| *x == Step::WaitHealthy { node: node.clone() }),
                    at(&|x| *x == Step::Ready { node: node.clone() }),
                ];
                assert!(order.iter().all(|o| o.len() == 1), "{n}: {order:?}");
                assert!(
                    order.windows(2).all(|w| w[0][0] < w[1][0]),
                    "{n}: {order:?}"
                );
            }
            // Cron after every web node is back, the purge last.
            let cron = position(s, |x| {
                *x == Step::Install {
                    node: "cron1".into(),
                }
            });
            let last_ready = *position(s, |x| matches!(x, Step::Ready { .. }))
                .last()
                .unwrap();
            assert!(cron[0] > last_ready, "{s:?}");
            assert!(!s
                .iter()
                .any(|x| matches!(x, Step::Upgrade { .. } | Step::MaintenanceOn { .. })));
        }
        // A batch as large as the pool: refused, before anything (exit 3).
        let e = planned(&cfg, &RollOptions::default(), 4, &listed, &installed).unwrap_err();
        assert_eq!(e.exit_code(), 3, "{e}");
    }

    #[test]
    fn a_canary_is_the_first_batch_alone_watched_before_any_other_node_leaves() {
        let (cfg, listed, installed) = cluster("d");
        let opts = RollOptions {
            canary: Some(Some(Duration::from_secs(90))),
            ..RollOptions::default()
        };
        let plan = planned(&cfg, &opts, 2, &listed, &installed).unwrap();
        assert_eq!(
            plan.batches(),
            [vec!["web1"], vec!["web2", "web3"], vec!["web4"]]
        );
        let s = &plan.steps().cloned().collect::<Vec<_>>();
        let canary = position(
            s,
            |x| matches!(x, Step::Canary { node, window_ms: 90_000, .. } if node == "web1"),
        );
        assert_eq!(canary.len(), 1, "{s:?}");
        // After the canary is back in rotation, before any other node is drained.
        let ready = position(s, |x| {
            *x == Step::Ready {
                node: "web1".into(),
            }
        });
        let drains = position(s, |x| matches!(x, Step::Drain { node } if node != "web1"));
        assert!(ready[0] < canary[0] && canary[0] < drains[0], "{s:?}");
        assert_eq!(most_out(s), 2);
        assert_eq!(plan.canary().unwrap().min_requests, 100);
        // --no-canary, the config's window, no canary on rollback or on the database path.
        let off = |o: RollOptions, db: &str| {
            let (cfg, listed, installed) = cluster(db);
            planned(&cfg, &o, 2, &listed, &installed).unwrap().canary()
        };
        assert!(off(
            RollOptions {
                no_canary: true,
                ..opts.clone()
            },
            "d"
        )
        .is_none());
        assert!(off(
            RollOptions {
                rollback: true,
                ..opts.clone()
            },
            "d"
        )
        .is_none());
        assert!(off(opts.clone(), "d2").is_none());
        let mut cfg = cfg;
        cfg.roll.canary = Some(Duration::from_secs(30));
        let plan = make_plan(
            &cfg,
            &RollOptions {
                canary: Some(None),
                ..RollOptions::default()
            },
            2,
            &listed,
            &installed,
            None,
            None,
        )
        .unwrap();
        assert_eq!(plan.canary().unwrap().window, Duration::from_secs(30));
    }

    #[test]
    fn a_database_plan_downloads_then_upgrades_once_in_maintenance() {
        let (cfg, listed, installed) = cluster("d2");
        let plan = planned(&cfg, &RollOptions::default(), 2, &listed, &installed).unwrap();
        assert_eq!(plan.path, RollPath::Database);
        let s = &plan.steps().cloned().collect::<Vec<_>>();
        let one = |want: &dyn Fn(&Step) -> bool| {
            let p = position(s, want);
            assert_eq!(p.len(), 1, "{s:?}");
            p[0]
        };
        let on = one(&|x| matches!(x, Step::MaintenanceOn { node } if node == "web1"));
        let upgrade = one(&|x| matches!(x, Step::Upgrade { node } if node == "web1"));
        let off = one(&|x| matches!(x, Step::MaintenanceOff { .. }));
        let downloads = position(s, |x| matches!(x, Step::Download { .. }));
        let installs = position(s, |x| {
            matches!(x, Step::Install { .. } | Step::Verify { .. })
        });
        let healthy = position(s, |x| matches!(x, Step::WaitHealthy { .. }));
        assert_eq!(downloads.len(), 5);
        assert!(downloads.iter().all(|&d| d < on), "{s:?}");
        assert_eq!(installs.len(), 10);
        assert!(installs.iter().all(|&i| on < i && i < upgrade), "{s:?}");
        assert!(upgrade < off && healthy.len() == 4 && healthy.iter().all(|&h| h > off));
        assert!(most_out(s) <= 2, "{s:?}");
        // A node with nothing installed: the first-install path, the same steps.
        let mut fresh = installed.clone();
        fresh.get_mut("web3").unwrap().version = None;
        let plan = planned(&cfg, &RollOptions::default(), 2, &listed, &fresh).unwrap();
        assert_eq!(plan.path, RollPath::FirstInstall);
        assert!(plan.database());
    }

    /// What `roll --plan` prints and what the planner refuses, as a reader sees them.
    #[test]
    fn plan_and_refusals_as_printed() {
        let (cfg, listed, installed) = cluster("d");
        let mut plan = planned(&cfg, &RollOptions::default(), 2, &listed, &installed).unwrap();
        plan.target_why = "the newest in the repository".into();
        let outcome = Outcome::planned(plan, Vec::new(), Instant::now());
        let mut text = Vec::new();
        crate::render::roll(&outcome, &mut text).unwrap();
        insta::assert_snapshot!("code_only_plan", String::from_utf8(text).unwrap());

        let stopped = RollState {
            kind: RollKind::Roll,
            target: "2".into(),
            status: RollStatus::Failed,
            ..RollState::default()
        };
        let resume = |version: Option<&str>, rollback: bool, s: Option<&RollState>| {
            let o = RollOptions {
                version: version.map(Into::into),
                rollback,
                resume: true,
                ..RollOptions::default()
            };
            resumed(&o, s).unwrap_err().to_string()
        };
        let errors = [
            resume(Some("4"), false, Some(&stopped)),
            resume(None, true, Some(&stopped)),
            resume(None, false, None),
            planned(&cfg, &RollOptions::default(), 4, &listed, &installed)
                .unwrap_err()
                .to_string(),
        ];
        insta::assert_snapshot!("refusals", errors.join("\n"));
    }
}
