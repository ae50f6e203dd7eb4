//! The roll's program as data. The planner ([`super::program`]) writes it, `--plan` and
//! `--json` show it, the executor ([`walk`](super::execute::walk)) runs it and the journal
//! names what it did with the same [`Step::action`]: the plan is the program.
//!
//! The program is a list of [`Group`]s. A group is steps of one kind that run at once (a
//! batch's installs, one per node), the batch they belong to (web nodes out of rotation
//! together), and what a failure of one of them does ([`OnFail`]). The executor asks nothing
//! else: not which path the roll is on, not which steps are neighbours.

use std::time::Duration;

use serde::Serialize;

use super::canary::CanaryPlan;
use crate::config::{format_duration, Percent};

/// One step of a roll.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// A node an earlier run left out of rotation, already on the target: back in once healthy
    /// and its PHP runs the target.
    PutBack { node: String },
    /// Before a batch leaves rotation: the stop point (Ctrl-C, or a journal or state that
    /// cannot be written, stop the roll here, every node in rotation), then every LB read
    /// again: states a reload dropped are set again, never the last server, nothing out of
    /// rotation that this roll did not take out.
    Guard { nodes: Vec<String> },
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
    /// The releases layout: `install_dir` now points to the target's release (a new symlink
    /// renamed over it: there is no instant without a path).
    Switch { node: String },
    /// `[roll] reload_command`: what makes the node's PHP serve the code just installed.
    Reload { node: String },
    /// The node's PHP answers for the target at the package's release probe (`path`): the code
    /// it runs is the release installed, not what its opcode cache kept.
    Probe { node: String, path: String },
    /// `set server health down` on every LB: only checks of the new code bring it up.
    HealthDown { node: String },
    /// Its health URL answers 200 and every LB's check passes, while it is still drained.
    WaitHealthy { node: String },
    /// `state ready` on every LB (a node of the batch that failed goes to `maint` instead).
    Ready { node: String },
    /// `upgrade_command`, once for the site.
    Upgrade { node: String },
    /// `maintenance_off`, once for the site.
    MaintenanceOff { node: String },
    /// `purge_command`, once every node runs the target.
    Purge { node: String },
    /// The releases layout: the node's releases beyond `[roll] keep_releases` removed
    /// (`apt-get purge`), never the live one nor the one before it.
    Prune { node: String, versions: Vec<String> },
    /// Watch the canary (in rotation on the target) for its window: its 5xx rate on every LB
    /// against the other servers', by the rule it carries.
    Canary {
        node: String,
        window_ms: u64,
        max_5xx: Percent,
        min_requests: u64,
    },
}

impl Step {
    /// The canary step of `c`.
    pub fn canary(c: &CanaryPlan) -> Step {
        Step::Canary {
            node: c.node.clone(),
            window_ms: c.window.as_millis() as u64,
            max_5xx: c.max_5xx,
            min_requests: c.min_requests,
        }
    }

    /// The canary's rule, for a canary step.
    pub fn canary_plan(&self) -> Option<CanaryPlan> {
        match self {
            Step::Canary {
                node,
                window_ms,
                max_5xx,
                min_requests,
            } => Some(CanaryPlan {
                node: node.clone(),
                window: Duration::from_millis(*window_ms),
                max_5xx: *max_5xx,
                min_requests: *min_requests,
            }),
            _ => None,
        }
    }

    /// The journal's action for this step: what `roll --plan` promises is what the journal says.
    pub fn action(&self) -> String {
        match self {
            Step::PutBack { .. } | Step::Ready { .. } => "state ready".into(),
            Step::Guard { .. } => "guard".into(),
            Step::Drain { .. } => "state drain".into(),
            Step::WaitIdle { nodes } => format!("drained {}", nodes.join(", ")),
            Step::Download { .. } => "download".into(),
            Step::MaintenanceOn { .. } => "maintenance on".into(),
            Step::Install { .. } => "install".into(),
            Step::Verify { .. } => "verify version".into(),
            Step::Switch { .. } => "switch".into(),
            Step::Reload { .. } => "reload".into(),
            Step::Probe { .. } => "release probe".into(),
            Step::HealthDown { .. } => "health down until checked".into(),
            Step::WaitHealthy { .. } => "health".into(),
            Step::Upgrade { .. } => "upgrade".into(),
            Step::MaintenanceOff { .. } => "maintenance off".into(),
            Step::Purge { .. } => "purge caches".into(),
            Step::Prune { .. } => "remove old releases".into(),
            Step::Canary { .. } => "canary".into(),
        }
    }

    /// The node the step is about (the journal's `node`), `None` for a whole batch.
    pub fn node(&self) -> Option<&str> {
        match self {
            Step::WaitIdle { .. } | Step::Guard { .. } => None,
            Step::PutBack { node }
            | Step::Drain { node }
            | Step::Download { node }
            | Step::MaintenanceOn { node }
            | Step::Install { node }
            | Step::Verify { node }
            | Step::Switch { node }
            | Step::Reload { node }
            | Step::Probe { node, .. }
            | Step::HealthDown { node }
            | Step::WaitHealthy { node }
            | Step::Ready { node }
            | Step::Upgrade { node }
            | Step::MaintenanceOff { node }
            | Step::Purge { node }
            | Step::Prune { node, .. }
            | Step::Canary { node, .. } => Some(node),
        }
    }

    /// Every node the step is about.
    pub fn nodes(&self) -> Vec<String> {
        match self {
            Step::WaitIdle { nodes } | Step::Guard { nodes } => nodes.clone(),
            other => other.node().map(String::from).into_iter().collect(),
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
            Step::Guard { nodes } => format!(
                "{}: stop point, then every LB checked again (states a reload lost, never the last server, nothing out that is not this roll's)",
                nodes.join(", ")
            ),
            Step::Drain { node } => format!("{node}: drain"),
            Step::WaitIdle { nodes } => {
                format!("{}: wait until no session is in flight", nodes.join(", "))
            }
            Step::Download { node } => format!("{node}: download {target}"),
            Step::MaintenanceOn { node } => format!("{node}: maintenance_on (the whole site)"),
            Step::Install { node } => format!("{node}: install {target}"),
            Step::Verify { node } => format!("{node}: verify {target} is installed"),
            Step::Switch { node } => format!("{node}: switch install_dir to release {target}"),
            Step::Reload { node } => format!("{node}: reload_command (its PHP serves the new code)"),
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
            Step::Prune { node, versions } if versions.is_empty() => {
                format!("{node}: remove the in-place folder set aside by the move to releases")
            }
            Step::Prune { node, versions } => format!(
                "{node}: remove the releases beyond keep_releases: {}",
                versions.join(", ")
            ),
            Step::Canary {
                node,
                window_ms,
                max_5xx,
                min_requests,
            } => format!(
                "{node}: canary: watch its 5xx rate on every LB for {}, against the other servers' (fails above {max_5xx} and above theirs, or with fewer than {min_requests} requests)",
                format_duration(Duration::from_millis(*window_ms))
            ),
        }
    }
}

/// What a failure of a step does: the planner decides it, per path and step; the executor
/// only follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum OnFail {
    /// The roll stops here. A web node that failed stays out of rotation (maint); the rest of
    /// its batch goes back.
    Stop,
    /// The node that failed stays out of rotation (maint) and its batch goes on without it;
    /// at the batch's end, more than `budget` nodes failed in this roll stop it (`[roll]
    /// max_failed_nodes`; the canary's batch has none). Within it, the rest is planned again.
    LeaveOut { budget: usize },
    /// The canary: back to the version it ran by the same safe steps, and the roll stops.
    SendBack,
    /// A warning; the roll goes on.
    Warn,
    /// Sessions that outlast `drain_timeout`: the batch goes back into rotation, the roll stops.
    BackInAndStop,
    /// Sessions that outlast `drain_timeout`: the batch goes to maint (no traffic, not even
    /// cookie-bound) and the roll goes on (`--force-drain`, or the site is in maintenance).
    Maint,
}

impl OnFail {
    /// How `--plan` says it, in a few words beside each step.
    pub fn tag(&self) -> String {
        match self {
            OnFail::Stop => "stop".into(),
            OnFail::LeaveOut { budget } => format!("leave out, budget {budget}"),
            OnFail::SendBack => "send back, stop".into(),
            OnFail::Warn => "warn".into(),
            OnFail::BackInAndStop => "drain timeout: back in, stop".into(),
            OnFail::Maint => "drain timeout: maint, go on".into(),
        }
    }
}

/// Steps of one kind that run at once, in one batch (or none), with one failure rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// The batch (0-based) of web nodes out of rotation together it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    pub on_fail: OnFail,
    pub steps: Vec<Step>,
}

impl Group {
    pub fn new(batch: Option<usize>, on_fail: OnFail, steps: Vec<Step>) -> Group {
        Group {
            batch,
            on_fail,
            steps,
        }
    }

    /// Every node of its steps, in order.
    pub fn nodes(&self) -> Vec<String> {
        self.steps.iter().flat_map(Step::nodes).collect()
    }
}
