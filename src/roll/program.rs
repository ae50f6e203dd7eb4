//! The planner's last part: from what the plan decided (path, batches, canary, cron, purge,
//! probe) to the program the executor walks, every step with its batch and its failure rule.
//! Replanning after failures within the budget and the plans that send nodes back
//! (`--auto-rollback`, a failed canary) are written here too, so every program has one author.

use super::canary::CanaryPlan;
use super::step::{Group, OnFail, Step};
use crate::cluster::web_nodes;
use crate::config::Config;

/// What the program is written from.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// The database path: download, maintenance, install everywhere, upgrade once.
    pub database: bool,
    /// The web batches in order (with a canary, the first is the canary alone).
    pub batches: Vec<Vec<String>>,
    pub cron: Vec<String>,
    /// Web nodes out of rotation at once (the database path installs this many at a time).
    pub batch: usize,
    pub canary: Option<CanaryPlan>,
    /// The web node that runs `purge_command` at the end (code-only).
    pub purge_on: Option<String>,
    /// The URL path of the target's release probe.
    pub probe: Option<String>,
    /// `[roll] max_failed_nodes`: web nodes of the code-only path that may fail.
    pub budget: usize,
    /// `--force-drain`: sessions that outlast `drain_timeout` do not stop the roll.
    pub force_drain: bool,
    /// Every web node of the config, in its order.
    pub webs: Vec<String>,
    /// The node that runs the site-wide commands: the first web node, else the first node.
    pub first: String,
    /// Nodes an earlier run left out of rotation that already run the target.
    pub put_back: Vec<String>,
    /// `[roll] reload_command` is set: a `Reload` after each web node's install.
    pub reload: bool,
    /// The releases layout: the target is installed on every node first, while it serves, and
    /// each node then switches to it (and its PHP is reloaded).
    pub releases: bool,
    /// Nodes that have the target installed already (the releases layout: a rollback to a
    /// release still there is a switch, no apt).
    pub have_target: Vec<String>,
    /// The releases layout: the releases each node removes at the end (`keep_releases`).
    pub prune: Vec<(String, Vec<String>)>,
}

impl Layout {
    /// The cluster's side of a layout (web nodes, the first one, reload) from the config.
    pub fn of(cfg: &Config) -> Layout {
        let webs: Vec<String> = web_nodes(cfg).iter().map(|n| n.name.clone()).collect();
        Layout {
            database: false,
            batches: Vec::new(),
            cron: Vec::new(),
            batch: 1,
            canary: None,
            purge_on: None,
            probe: None,
            budget: cfg.roll.max_failed_nodes as usize,
            force_drain: false,
            first: webs.first().cloned().unwrap_or(cfg.nodes[0].name.clone()),
            webs,
            put_back: Vec::new(),
            reload: cfg.roll.reload_command.is_some(),
            releases: cfg.site.layout == crate::config::SiteLayout::Releases,
            have_target: Vec::new(),
            prune: Vec::new(),
        }
    }
}

/// The program of `l`, in the order the executor runs it. In the releases layout, "install"
/// below is "switch" (then the PHP reload), and the target is installed on every node that
/// lacks it first, while they all serve; old releases are removed last.
///
/// Code-only: nodes left out by an earlier run put back first; per batch, the guard, drain
/// every node, wait until the batch is idle, install and verify each (then reload PHP), then
/// per node health down, release probe, wait healthy, and ready; the canary (the first batch,
/// one node) watched once it is back; cron nodes after every web node; the purge last.
/// Database: download everywhere, maintenance on, per batch (web nodes drained while their
/// files are swapped, unless that would leave none), install, verify, reload and probe, the
/// upgrade once, maintenance off, every web node healthy.
pub(super) fn write(l: &Layout) -> Vec<Group> {
    let mut w = Writer { l, out: Vec::new() };
    w.put_back();
    if l.releases {
        w.install_releases();
    }
    if l.database {
        w.database();
    } else {
        w.code_only();
    }
    let prune: Vec<Step> = l
        .prune
        .iter()
        .map(|(node, versions)| Step::Prune {
            node: node.clone(),
            versions: versions.clone(),
        })
        .collect();
    if !prune.is_empty() {
        w.out.push(Group::new(None, OnFail::Warn, prune));
    }
    w.out
}

struct Writer<'a> {
    l: &'a Layout,
    out: Vec<Group>,
}

impl Writer<'_> {
    /// One group of `make(node)` for each of `nodes` (none when `nodes` is empty).
    fn each(
        &mut self,
        batch: Option<usize>,
        on_fail: OnFail,
        nodes: &[String],
        make: impl Fn(&String) -> Step,
    ) {
        if !nodes.is_empty() {
            let steps = nodes.iter().map(make).collect();
            self.out.push(Group::new(batch, on_fail, steps));
        }
    }

    fn one(&mut self, batch: Option<usize>, on_fail: OnFail, step: Step) {
        self.out.push(Group::new(batch, on_fail, vec![step]));
    }

    fn webs_of(&self, nodes: &[String]) -> Vec<String> {
        nodes
            .iter()
            .filter(|n| self.l.webs.contains(n))
            .cloned()
            .collect()
    }

    /// A node left out already on the target: its PHP reloaded first (a stale PHP may be why
    /// it was left out), as after taking it to the target: with `reload_command`, or always in
    /// the releases layout.
    fn put_back(&mut self) {
        for n in self.l.put_back.clone() {
            if (self.l.reload || self.l.releases) && self.l.webs.contains(&n) {
                self.one(None, OnFail::Stop, Step::Reload { node: n.clone() });
            }
            self.one(None, OnFail::Stop, Step::PutBack { node: n });
        }
    }

    /// Install and verify `nodes` at once; their web nodes' PHP reloaded (if the config says
    /// how).
    fn install(&mut self, batch: Option<usize>, on_fail: OnFail, nodes: &[String]) {
        self.each(batch, on_fail, nodes, |n| Step::Install { node: n.clone() });
        self.each(batch, on_fail, nodes, |n| Step::Verify { node: n.clone() });
        if self.l.reload {
            let webs = self.webs_of(nodes);
            self.each(batch, on_fail, &webs, |n| Step::Reload { node: n.clone() });
        }
    }

    /// The releases layout: the target installed (and checked) on every node that lacks it, at
    /// once, before any node leaves rotation.
    fn install_releases(&mut self) {
        let l = self.l;
        let all: Vec<String> = l
            .batches
            .iter()
            .flatten()
            .chain(&l.cron)
            .filter(|n| !l.have_target.contains(n))
            .cloned()
            .collect();
        self.each(None, OnFail::Stop, &all, |n| Step::Install {
            node: n.clone(),
        });
        self.each(None, OnFail::Stop, &all, |n| Step::Verify {
            node: n.clone(),
        });
    }

    /// Bring `nodes` to the target: install and verify (in place), or switch (releases); then
    /// their web nodes' PHP reloaded (always after a switch: no package reloads it then).
    fn take(&mut self, batch: Option<usize>, on_fail: OnFail, nodes: &[String]) {
        if !self.l.releases {
            return self.install(batch, on_fail, nodes);
        }
        self.each(batch, on_fail, nodes, |n| Step::Switch { node: n.clone() });
        let webs = self.webs_of(nodes);
        self.each(batch, on_fail, &webs, |n| Step::Reload { node: n.clone() });
    }

    fn probe(&mut self, batch: Option<usize>, on_fail: OnFail, node: &str) {
        if let Some(path) = self.l.probe.clone() {
            let step = Step::Probe {
                node: node.to_string(),
                path,
            };
            self.one(batch, on_fail, step);
        }
    }

    fn code_only(&mut self) {
        let l = self.l;
        for (i, b) in l.batches.iter().enumerate() {
            let canary = l
                .canary
                .as_ref()
                .filter(|c| b == std::slice::from_ref(&c.node));
            let batch = Some(i);
            // The canary's batch has no budget: a canary that fails to install or to come up
            // healthy is the release failing its test.
            let leave_out = OnFail::LeaveOut {
                budget: if canary.is_some() { 0 } else { l.budget },
            };
            self.one(batch, OnFail::Stop, Step::Guard { nodes: b.clone() });
            self.each(batch, OnFail::Stop, b, |n| Step::Drain { node: n.clone() });
            let idle = if l.force_drain {
                OnFail::Maint
            } else {
                OnFail::BackInAndStop
            };
            self.one(batch, idle, Step::WaitIdle { nodes: b.clone() });
            self.take(batch, leave_out, b);
            for n in b {
                self.one(batch, OnFail::Warn, Step::HealthDown { node: n.clone() });
                self.probe(batch, leave_out, n);
                self.one(batch, leave_out, Step::WaitHealthy { node: n.clone() });
            }
            self.each(batch, OnFail::Stop, b, |n| Step::Ready { node: n.clone() });
            if let Some(c) = canary {
                self.one(None, OnFail::SendBack, Step::canary(c));
            }
        }
        for c in &l.cron {
            self.take(None, OnFail::Stop, std::slice::from_ref(c));
        }
        if let Some(n) = &l.purge_on {
            self.one(None, OnFail::Warn, Step::Purge { node: n.clone() });
        }
    }

    fn database(&mut self) {
        let l = self.l;
        let all: Vec<String> = l.batches.iter().flatten().chain(&l.cron).cloned().collect();
        let first = l.first.clone();
        if !l.releases {
            self.each(None, OnFail::Stop, &all, |n| Step::Download {
                node: n.clone(),
            });
        }
        let on = Step::MaintenanceOn {
            node: first.clone(),
        };
        self.one(None, OnFail::Stop, on);
        if l.releases {
            // Installed already, while serving: the window is the switch and the upgrade.
            self.take(None, OnFail::Stop, &all);
            for n in self.webs_of(&all) {
                self.probe(None, OnFail::Stop, &n);
            }
            return self.upgrade(&first);
        }
        for (i, chunk) in all.chunks(l.batch.max(1)).enumerate() {
            let batch = Some(i);
            let web = self.webs_of(chunk);
            let out_of_rotation = !web.is_empty() && web.len() < l.webs.len();
            if out_of_rotation {
                self.each(batch, OnFail::Stop, &web, |n| Step::Drain {
                    node: n.clone(),
                });
                // The site is in maintenance: no session is worth waiting longer for.
                self.one(batch, OnFail::Maint, Step::WaitIdle { nodes: web.clone() });
            }
            self.install(batch, OnFail::Stop, chunk);
            for n in &web {
                self.probe(batch, OnFail::Stop, n);
            }
            if out_of_rotation {
                self.each(batch, OnFail::Stop, &web, |n| Step::Ready {
                    node: n.clone(),
                });
            }
        }
        self.upgrade(&first);
    }

    /// The database path's end: `upgrade_command` once, maintenance off, every web node healthy.
    fn upgrade(&mut self, first: &str) {
        let up = Step::Upgrade {
            node: first.to_string(),
        };
        self.one(None, OnFail::Stop, up);
        let off = Step::MaintenanceOff {
            node: first.to_string(),
        };
        self.one(None, OnFail::Stop, off);
        for n in self.l.webs.clone() {
            self.one(None, OnFail::Stop, Step::WaitHealthy { node: n });
        }
    }
}

/// After failures within the budget: the web batches not walked yet (the nodes of the `Guard`
/// steps in `rest`), planned again in batches that leave room for the `failed` nodes out of
/// rotation, so never more than `l.batch` are out; then cron and the purge (on a web node that
/// did not fail). `None` when no room is left (`--batch` no larger than the failed nodes).
pub(super) fn replan(l: &Layout, rest: &[Group], failed: &[String]) -> Option<Vec<Group>> {
    let webs: Vec<String> = rest
        .iter()
        .flat_map(|g| &g.steps)
        .filter_map(|s| match s {
            Step::Guard { nodes } => Some(nodes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let room = l.batch.saturating_sub(failed.len());
    if room == 0 && !webs.is_empty() {
        return None;
    }
    let left = Layout {
        // The rest of the roll removes no release: some nodes are left out, on what they ran.
        prune: Vec::new(),
        batches: webs.chunks(room.max(1)).map(<[String]>::to_vec).collect(),
        canary: None,
        put_back: Vec::new(),
        purge_on: l
            .purge_on
            .as_ref()
            .and_then(|_| l.webs.iter().find(|n| !failed.contains(n)).cloned()),
        ..l.clone()
    };
    Some(write(&left))
}

/// The program that takes `nodes` (web nodes) back to a version whose release probe is
/// `probe`, batch by batch as `l` did: code-only (mixed versions are safe), no canary, no
/// purge.
pub(super) fn back(l: &Layout, nodes: &[String], probe: Option<String>) -> Vec<Group> {
    let back = Layout {
        // Going back, a release is still installed where the node ran it.
        have_target: nodes.to_vec(),
        database: false,
        batches: nodes
            .chunks(l.batch.max(1))
            .map(<[String]>::to_vec)
            .collect(),
        cron: Vec::new(),
        canary: None,
        purge_on: None,
        put_back: Vec::new(),
        prune: Vec::new(),
        probe,
        ..l.clone()
    };
    write(&back)
}
