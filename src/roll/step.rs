//! The roll's program as data: every step a roll takes, in order, each naming its node (and, for
//! the steps that go through the load balancers, that it happens on every LB). The planner
//! writes them ([`steps`]), `--plan` and `--json` show them, the executor walks them
//! ([`walk`](super::execute::walk)), and the journal names what it did with the same
//! [`Step::action`]: the plan is the program.

use super::*;

/// One step of a roll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// A node an earlier run left out of rotation, already on the target: back in once healthy.
    PutBack { node: String },
    /// `state drain` on every LB: no new requests, in-flight ones finish, checks go on.
    Drain { node: String },
    /// Wait until the batch's servers have no session in flight or queued on any LB.
    WaitIdle { nodes: Vec<String> },
    /// Fetch the package into apt's cache (database path: no download in maintenance).
    Download { node: String },
    /// `maintenance_on`, once for the site (the dataroot is shared).
    MaintenanceOn { node: String },
    /// `apt-get install <package>=<target>`.
    Install { node: String },
    /// `dpkg-query` says the target is installed.
    Verify { node: String },
    /// `[roll] reload_command`: what makes the node's PHP serve the code just installed.
    Reload { node: String },
    /// The node's PHP answers for the target at the package's release probe (`path`): the code
    /// it runs is the release installed, not what its opcode cache kept.
    Probe { node: String, path: String },
    /// `set server health down` on every LB: only checks of the new code bring it up.
    HealthDown { node: String },
    /// Its health URL answers 200 and every LB's check passes, while it is still drained.
    WaitHealthy { node: String },
    /// `state ready` on every LB.
    Ready { node: String },
    /// `upgrade_command`, once for the site.
    Upgrade { node: String },
    /// `maintenance_off`, once for the site.
    MaintenanceOff { node: String },
    /// `purge_command`, once every node runs the target.
    Purge { node: String },
    /// Watch the canary (in rotation on the target) for its window: its 5xx rate on every LB
    /// against the other servers'. A failure sends it back and stops the roll.
    Canary { node: String, window_ms: u64 },
}

impl Step {
    /// The journal's action for this step: what `roll --plan` promises is what the journal says.
    pub fn action(&self) -> String {
        match self {
            Step::PutBack { .. } | Step::Ready { .. } => "state ready".into(),
            Step::Drain { .. } => "state drain".into(),
            Step::WaitIdle { nodes } => format!("drained {}", nodes.join(", ")),
            Step::Download { .. } => "download".into(),
            Step::MaintenanceOn { .. } => "maintenance on".into(),
            Step::Install { .. } => "install".into(),
            Step::Verify { .. } => "verify version".into(),
            Step::Reload { .. } => "reload".into(),
            Step::Probe { .. } => "release probe".into(),
            Step::HealthDown { .. } => "health down until checked".into(),
            Step::WaitHealthy { .. } => "health".into(),
            Step::Upgrade { .. } => "upgrade".into(),
            Step::MaintenanceOff { .. } => "maintenance off".into(),
            Step::Purge { .. } => "purge caches".into(),
            Step::Canary { .. } => "canary".into(),
        }
    }

    /// The node the step is about (the journal's `node`), `None` for a whole batch.
    pub fn node(&self) -> Option<&str> {
        match self {
            Step::WaitIdle { .. } => None,
            Step::PutBack { node }
            | Step::Drain { node }
            | Step::Download { node }
            | Step::MaintenanceOn { node }
            | Step::Install { node }
            | Step::Verify { node }
            | Step::Reload { node }
            | Step::Probe { node, .. }
            | Step::HealthDown { node }
            | Step::WaitHealthy { node }
            | Step::Ready { node }
            | Step::Upgrade { node }
            | Step::MaintenanceOff { node }
            | Step::Purge { node }
            | Step::Canary { node, .. } => Some(node),
        }
    }

    /// Whether it is done on every LB (one journal line per LB).
    pub fn on_every_lb(&self) -> bool {
        matches!(
            self,
            Step::PutBack { .. }
                | Step::Drain { .. }
                | Step::HealthDown { .. }
                | Step::Ready { .. }
        )
    }

    /// How `--plan` says it, with the target version.
    pub fn describe(&self, target: &str) -> String {
        match self {
            Step::PutBack { node } => format!(
                "{node}: back in rotation if healthy (an earlier run left it out, on {target})"
            ),
            Step::Drain { node } => format!("{node}: drain"),
            Step::WaitIdle { nodes } => {
                format!("{}: wait until no session is in flight", nodes.join(", "))
            }
            Step::Download { node } => format!("{node}: download {target}"),
            Step::MaintenanceOn { node } => format!("{node}: maintenance_on (the whole site)"),
            Step::Install { node } => format!("{node}: install {target}"),
            Step::Verify { node } => format!("{node}: verify {target} is installed"),
            Step::Reload { node } => {
                format!("{node}: reload_command (its PHP serves the new code)")
            }
            Step::Probe { node, path } => {
                format!("{node}: its PHP answers {target} at {path} (the release probe)")
            }
            Step::HealthDown { node } => format!("{node}: health down until checked"),
            Step::WaitHealthy { node } => {
                format!("{node}: wait for its health URL and every LB's check")
            }
            Step::Ready { node } => format!("{node}: ready"),
            Step::Upgrade { node } => format!("{node}: upgrade_command (once)"),
            Step::MaintenanceOff { node } => format!("{node}: maintenance_off"),
            Step::Purge { node } => format!("{node}: purge_command (once)"),
            Step::Canary { node, window_ms } => format!(
                "{node}: canary: watch its 5xx rate on every LB for {}, against the other servers'",
                crate::config::format_duration(Duration::from_millis(*window_ms))
            ),
        }
    }
}

/// What the planner needs to write the steps, beyond the plan's own fields.
pub(super) struct Shape<'a> {
    /// Every web node of the config, in its order.
    pub webs: Vec<&'a str>,
    /// The node that runs the site-wide commands: the first web node, else the first node.
    pub first: &'a str,
    /// Nodes an earlier run left out of rotation that already run the target.
    pub put_back: Vec<String>,
    /// `[roll] reload_command` is set: a `Reload` after each web node's install.
    pub reload: bool,
}

impl<'a> Shape<'a> {
    /// The cluster's shape from the config, with the nodes to put back first.
    pub fn new(cfg: &'a Config, put_back: Vec<String>) -> Shape<'a> {
        let webs: Vec<&str> = web_nodes(cfg).iter().map(|n| n.name.as_str()).collect();
        Shape {
            first: webs.first().copied().unwrap_or(cfg.nodes[0].name.as_str()),
            webs,
            put_back,
            reload: cfg.roll.reload_command.is_some(),
        }
    }
}

/// The whole program of `plan`, in the order the executor runs it.
///
/// Code-only: per batch, drain every node, wait until the batch is idle, install and verify
/// each, then per node health down, wait healthy, and ready; the canary (the first batch, one
/// node) watched once it is back; cron nodes after every web node;
/// the purge last. Database: download everywhere, maintenance on, per batch (web nodes drained
/// while their files are swapped, unless that would leave none), install and verify, the upgrade
/// once, maintenance off, every web node healthy.
pub(super) fn steps(plan: &Plan, shape: &Shape) -> Vec<Step> {
    let node = |n: &String| n.clone();
    // A node left out already on the target: its PHP reloaded first (a stale PHP may be why it
    // was left out), when the config says how.
    let mut out: Vec<Step> = Vec::new();
    for n in &shape.put_back {
        if shape.reload && shape.webs.contains(&n.as_str()) {
            out.push(Step::Reload { node: n.clone() });
        }
        out.push(Step::PutBack { node: n.clone() });
    }
    let install = |out: &mut Vec<Step>, nodes: &[String]| {
        out.extend(nodes.iter().map(|n| Step::Install { node: node(n) }));
        out.extend(nodes.iter().map(|n| Step::Verify { node: node(n) }));
        // The web nodes' PHP: reloaded if the config says how, then proven to run the target.
        let webs = nodes.iter().filter(|n| shape.webs.contains(&n.as_str()));
        if shape.reload {
            out.extend(webs.clone().map(|n| Step::Reload { node: node(n) }));
        }
    };
    let probe = |n: &String| {
        plan.probe.as_ref().map(|path| Step::Probe {
            node: n.clone(),
            path: path.clone(),
        })
    };
    let drain = |out: &mut Vec<Step>, nodes: &[String]| {
        out.extend(nodes.iter().map(|n| Step::Drain { node: node(n) }));
        out.push(Step::WaitIdle {
            nodes: nodes.to_vec(),
        });
    };
    if !plan.database() {
        for b in &plan.batches {
            drain(&mut out, b);
            install(&mut out, b);
            for n in b {
                out.push(Step::HealthDown { node: node(n) });
                out.extend(probe(n));
                out.push(Step::WaitHealthy { node: node(n) });
            }
            out.extend(b.iter().map(|n| Step::Ready { node: node(n) }));
            if let Some(c) = plan
                .canary
                .as_ref()
                .filter(|c| b == std::slice::from_ref(&c.node))
            {
                out.push(Step::Canary {
                    node: c.node.clone(),
                    window_ms: c.window.as_millis() as u64,
                });
            }
        }
        for c in &plan.cron {
            install(&mut out, std::slice::from_ref(c));
        }
        if let Some(n) = &plan.purge_on {
            out.push(Step::Purge { node: node(n) });
        }
        return out;
    }
    let all: Vec<String> = plan
        .batches
        .iter()
        .flatten()
        .chain(&plan.cron)
        .cloned()
        .collect();
    let first = shape.first.to_string();
    out.extend(all.iter().map(|n| Step::Download { node: node(n) }));
    out.push(Step::MaintenanceOn {
        node: first.clone(),
    });
    for chunk in all.chunks(plan.batch) {
        let web: Vec<String> = chunk
            .iter()
            .filter(|n| shape.webs.contains(&n.as_str()))
            .cloned()
            .collect();
        let out_of_rotation = !web.is_empty() && web.len() < shape.webs.len();
        if out_of_rotation {
            drain(&mut out, &web);
        }
        install(&mut out, chunk);
        out.extend(web.iter().filter_map(probe));
        if out_of_rotation {
            out.extend(web.iter().map(|n| Step::Ready { node: node(n) }));
        }
    }
    out.push(Step::Upgrade {
        node: first.clone(),
    });
    out.push(Step::MaintenanceOff { node: first });
    out.extend(shape.webs.iter().map(|n| Step::WaitHealthy {
        node: n.to_string(),
    }));
    out
}
