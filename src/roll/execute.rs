//! The executor: [`run_plan`] opens the journal and the state, [`walk`] runs the program's
//! groups in order, and what a stop leads to (the canary sent back, `--auto-rollback`) follows
//! the plan's failure rules. The executor decides nothing the plan does not say: which steps run
//! at once is a [`Group`], where a batch begins and ends is its `batch`, what a failure does is
//! its [`OnFail`].

use std::collections::BTreeMap;
use std::time::Instant;

use super::actions::{self, config_nodes, Failure};
use super::canary::{self, Verdict};
use super::code_only::{auto_rollback, guard};
use super::ctx::Ctx;
use super::database::{download, maintenance_off, maintenance_on, upgrade};
use super::health::wait_healthy;
use super::notice;
use super::program;
use super::step::{Group, OnFail, Step};
use super::{FailedNode, Plan, RollError, RollOptions};
use crate::cluster::probe::Installed;
use crate::cluster::{server_name, web_nodes};
use crate::config::format_duration;
use crate::haproxy::AdminState;
use crate::journal::{now_ms, RollState, RollStatus, StepResult};

/// Runs the plan under the cluster lock: the journal and the state first (so a killed roll
/// leaves them), then the walk, and what a stopped walk leads to: the canary sent back
/// ([`OnFail::SendBack`]), `--auto-rollback`. Whatever stopped it, the journal's last line and
/// the state say so ([`Ctx::stopped`]).
pub(super) fn run_plan(
    ctx: &mut Ctx,
    plan: &Plan,
    installed: &BTreeMap<String, Installed>,
    previous_state: Option<RollState>,
    opts: &RollOptions,
    known: &notice::Known,
) -> Result<Walked, RollError> {
    let id = format!("{}", now_ms());
    ctx.open_journal(&id)?;
    *ctx.state_mut() = RollState {
        id,
        kind: plan.kind,
        target: plan.target.clone(),
        previous: installed
            .iter()
            .filter_map(|(k, v)| v.version.clone().map(|v| (k.clone(), v)))
            .collect(),
        status: RollStatus::Running,
        journal: ctx.journal_path(),
        out_of_rotation: previous_state
            .as_ref()
            .map(|s| s.out_of_rotation.clone())
            .unwrap_or_default(),
        failed_node: None,
        failed_nodes: Vec::new(),
        reason: None,
        upgrade_pending: previous_state.as_ref().is_some_and(|s| s.upgrade_left()),
    };
    if let Some(p) = previous_state.as_ref().filter(|_| opts.resume) {
        ctx.state_mut().previous = p.previous.clone();
    }
    ctx.save_state();
    let begun = format!("{} to {} ({})", plan.kind, plan.target, plan.path);
    ctx.log(
        None,
        None,
        &begun,
        StepResult::Info,
        Instant::now(),
        &plan.why,
    );
    if let Some(window) = &plan.frozen {
        let why = format!("--force: inside the freeze window {window}");
        let now = Instant::now();
        ctx.log(
            None,
            None,
            "freeze overridden",
            StepResult::Warning,
            now,
            &why,
        );
    }
    notice::start(ctx, opts, known);

    let stopped = match walk(ctx, plan, opts) {
        Ok(w) => {
            if w.maintenance_secs.is_some() && ctx.interrupted() {
                // Stopping halfway would leave the site in maintenance, or on code its database
                // does not match: once maintenance is on, the program runs to its end.
                ctx.warn("interrupted (Ctrl-C or SIGTERM) during the database path: it was finished rather than leave the site in maintenance mode".into());
            }
            return Ok(w);
        }
        Err(s) => *s,
    };
    let Stopped {
        error,
        upgraded,
        in_batch,
        step,
        on_fail,
    } = stopped;
    let error = match on_fail {
        OnFail::SendBack => canary::send_back(ctx, plan, &upgraded, opts, error),
        _ if in_batch && opts.auto_rollback && !upgraded.is_empty() => {
            auto_rollback(ctx, plan, &upgraded, opts, error)
        }
        _ => error,
    };
    Err(ctx.stopped(&step, &plan.target, error))
}

/// Why a walk stopped: the error, the nodes it had upgraded (for `--auto-rollback`), whether
/// it stopped inside a batch of web nodes, the step and its failure rule.
pub(super) struct Stopped {
    pub error: RollError,
    pub upgraded: Vec<String>,
    pub in_batch: bool,
    pub step: Step,
    pub on_fail: OnFail,
}

/// What a walk did.
#[derive(Default)]
pub(super) struct Walked {
    pub upgraded: Vec<String>,
    pub maintenance_secs: Option<f64>,
    pub canary: Option<Verdict>,
    pub failed: Vec<FailedNode>,
}

/// Runs the program of `plan`, group by group: the executor does what the plan says, and
/// nothing else. At a batch's end, failures within the budget have the rest planned again
/// ([`program::replan`]).
pub(super) fn walk(ctx: &mut Ctx, plan: &Plan, opts: &RollOptions) -> Result<Walked, Box<Stopped>> {
    let mut run = Run::default();
    let mut program = plan.program.clone();
    let mut i = 0;
    while i < program.len() {
        let group = program[i].clone();
        let mut result = run.group(ctx, plan, opts, &group);
        let batch_ends =
            group.batch.is_some() && program.get(i + 1).map(|g| g.batch) != Some(group.batch);
        if result.is_ok() && batch_ends {
            result = match run.end_batch(ctx, plan, &program, i) {
                Ok(Some(rest)) => {
                    program.truncate(i + 1);
                    program.extend(rest);
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
        }
        if let Err(error) = result {
            return Err(Box::new(Stopped {
                error,
                in_batch: !run.batch.is_empty(),
                upgraded: run.upgraded,
                step: group.steps[0].clone(),
                on_fail: group.on_fail,
            }));
        }
        i += 1;
    }
    Ok(Walked {
        upgraded: run.upgraded,
        maintenance_secs: run.maintenance_secs,
        canary: run.canary,
        failed: run.failed_within_budget,
    })
}

/// Where a walk is.
#[derive(Default)]
struct Run {
    /// The web nodes drained in the current batch; emptied at the batch's end (a stop before
    /// that is a stop inside a batch: `--auto-rollback` applies).
    batch: Vec<String>,
    /// The current batch's nodes that failed (left out, within its rule).
    failed: Vec<Failure>,
    /// Verified in a batch whose failures leave nodes out: upgraded once the batch is back.
    verified: Vec<String>,
    /// `--force-drain` switched the batch to maint: back to drain before its health checks.
    forced: bool,
    upgraded: Vec<String>,
    maintenance_since: Option<Instant>,
    maintenance_secs: Option<f64>,
    canary: Option<Verdict>,
    /// Web nodes that failed within `[roll] max_failed_nodes`: out of rotation (maint).
    failed_within_budget: Vec<FailedNode>,
}

impl Run {
    fn is_failed(&self, node: &str) -> bool {
        self.failed.iter().any(|f| f.node == node)
    }

    /// `nodes` run the target now: upgraded, or, in a batch that leaves failed nodes out, once
    /// the batch is back in rotation.
    fn reached(&mut self, g: &Group, nodes: Vec<String>) {
        if matches!(g.on_fail, OnFail::LeaveOut { .. }) {
            self.verified.extend(nodes);
        } else {
            self.upgraded.extend(nodes);
        }
    }

    /// The group's nodes that have not failed in this batch.
    fn going_on(&self, group: &Group) -> Vec<String> {
        group
            .nodes()
            .into_iter()
            .filter(|n| !self.is_failed(n))
            .collect()
    }

    /// One group: its steps at once, then its failure rule for the nodes that failed.
    #[expect(
        clippy::too_many_lines,
        reason = "one arm per kind of step, each a few lines calling the function that does it: the whole executor reads in one place"
    )]
    fn group(
        &mut self,
        ctx: &mut Ctx,
        plan: &Plan,
        opts: &RollOptions,
        g: &Group,
    ) -> Result<(), RollError> {
        let names = g.nodes();
        let target = plan.target.as_str();
        let failed: Vec<Failure> = match &g.steps[0] {
            Step::PutBack { node } => {
                actions::put_back(ctx, plan, node)?;
                Vec::new()
            }
            Step::Guard { nodes } => {
                if ctx.interrupted() {
                    let msg = format!(
                        "stopped before batch {}; every node is in rotation; run again with --resume",
                        nodes.join(", ")
                    );
                    return Err(ctx.interrupt(msg));
                }
                if let Some(what) = ctx.unrecorded().clone() {
                    let msg = format!(
                        "{what}: stopped before batch {}, with every node in rotation; fix it and run `{}`",
                        nodes.join(", "),
                        ctx.state().resume_command()
                    );
                    return Err(ctx.fail(None, msg));
                }
                let t = Instant::now();
                guard(ctx, &config_nodes(ctx.cfg(), nodes), opts)?;
                ctx.log_step(&g.steps[0], None, StepResult::Ok, t, "");
                Vec::new()
            }
            Step::Drain { .. } => {
                ctx.reporter().step(&format!(
                    "draining {} and waiting for their sessions to end",
                    names.join(", ")
                ));
                self.forced = false;
                for n in config_nodes(ctx.cfg(), &names) {
                    self.batch.push(n.name.clone());
                    ctx.set_all(&n.name, &server_name(&n), AdminState::Drain)?;
                }
                Vec::new()
            }
            Step::WaitIdle { nodes } => {
                let batch = config_nodes(ctx.cfg(), nodes);
                let (t, busy) = actions::wait_idle(ctx, &batch)?;
                if !busy.is_empty() {
                    self.drain_timeout(ctx, g.on_fail, &batch, t, busy)?;
                }
                ctx.reporter().step_done();
                Vec::new()
            }
            Step::Install { .. } => {
                actions::install(ctx, &self.going_on(g), target, plan.installed_kib())
            }
            Step::Verify { .. } => {
                let (failed, live) = actions::verify(ctx, &self.going_on(g), target);
                // A release installed beside the live one is not live: it counts when the node
                // switches to it.
                self.reached(g, live);
                failed
            }
            Step::Reload { .. } => actions::reload(ctx, &self.going_on(g)),
            Step::Switch { .. } => {
                let todo = self.going_on(g);
                let failed = actions::switch(ctx, &todo, target);
                let live = todo
                    .into_iter()
                    .filter(|n| !failed.iter().any(|f| &f.node == n));
                self.reached(g, live.collect());
                failed
            }
            Step::Probe { path, .. } => {
                let mut failed = Vec::new();
                for n in config_nodes(ctx.cfg(), &self.going_on(g)) {
                    failed.extend(actions::probe(ctx, &n, path, target));
                }
                failed
            }
            Step::HealthDown { .. } => {
                for n in config_nodes(ctx.cfg(), &self.going_on(g)) {
                    // HAProxy does not check a server in maint: back to drain (still no new
                    // traffic), or the checks would never see the new code.
                    if self.forced {
                        ctx.set_all(&n.name, &server_name(&n), AdminState::Drain)?;
                    }
                    actions::health_down(ctx, &n);
                }
                Vec::new()
            }
            Step::WaitHealthy { .. } => {
                let mut failed = Vec::new();
                for n in config_nodes(ctx.cfg(), &self.going_on(g)) {
                    ctx.reporter()
                        .step(&format!("waiting for {} to be healthy", n.name));
                    if let Err(m) = wait_healthy(ctx, &n) {
                        let step = Step::WaitHealthy {
                            node: n.name.clone(),
                        };
                        failed.push(Failure::of(&step, m));
                    }
                    ctx.reporter().step_done();
                }
                failed
            }
            Step::Ready { .. } => {
                for n in config_nodes(ctx.cfg(), &names) {
                    // A node of the batch that failed stays out, with no traffic at all.
                    let state = if self.is_failed(&n.name) {
                        AdminState::Maint
                    } else {
                        AdminState::Ready
                    };
                    ctx.set_all(&n.name, &server_name(&n), state)?;
                }
                Vec::new()
            }
            Step::Download { .. } => {
                download(ctx, &names, target)?;
                Vec::new()
            }
            Step::MaintenanceOn { node } => {
                self.maintenance_since = Some(Instant::now());
                maintenance_on(ctx, plan, node)?;
                Vec::new()
            }
            Step::Upgrade { node } => {
                upgrade(ctx, node)?;
                Vec::new()
            }
            Step::MaintenanceOff { node } => {
                let since = self.maintenance_since.unwrap_or_else(Instant::now);
                self.maintenance_secs = Some(maintenance_off(ctx, node, since)?);
                Vec::new()
            }
            Step::Purge { node } => {
                actions::purge_caches(ctx, node);
                Vec::new()
            }
            Step::Prune { .. } => actions::prune(ctx, &g.steps),
            step @ Step::Canary { .. } => {
                let Some(rule) = step.canary_plan() else {
                    return Ok(());
                };
                self.canary = Some(canary::watch(ctx, plan, &rule, opts)?);
                Vec::new()
            }
        };
        self.failures(ctx, g, failed)
    }

    /// Sessions still busy at `drain_timeout`: the batch back in rotation and stop, or to maint
    /// and on, as the plan says.
    fn drain_timeout(
        &mut self,
        ctx: &mut Ctx,
        on_fail: OnFail,
        batch: &[crate::config::Node],
        since: Instant,
        busy: Vec<String>,
    ) -> Result<(), RollError> {
        if on_fail == OnFail::Maint {
            let why = if ctx.state().upgrade_pending {
                "site in maintenance"
            } else {
                "--force-drain"
            };
            actions::maint_after_timeout(ctx, batch, since, why, &busy)?;
            self.forced = true;
            return Ok(());
        }
        for n in batch {
            ctx.set_all(&n.name, &server_name(n), AdminState::Ready)?;
        }
        self.batch.clear();
        ctx.reporter().step_done();
        let error = RollError::DrainTimeout {
            timeout: format_duration(ctx.cfg().roll.drain_timeout),
            busy,
            journal: ctx.journal_path(),
        };
        Err(ctx.stop_with(None, error))
    }

    /// What the group's rule does with the nodes that failed: kept for the batch's end
    /// (leave out), a warning, or the roll stops here.
    fn failures(
        &mut self,
        ctx: &mut Ctx,
        g: &Group,
        failed: Vec<Failure>,
    ) -> Result<(), RollError> {
        if failed.is_empty() {
            return Ok(());
        }
        match g.on_fail {
            OnFail::LeaveOut { .. } => {
                self.failed.extend(failed);
                Ok(())
            }
            OnFail::Warn => {
                for f in failed {
                    ctx.warn(f.to_string());
                }
                Ok(())
            }
            _ => Err(self.stop_on(ctx, failed)),
        }
    }

    /// The roll stops on `failed` nodes: a web node among them goes out of rotation (maint),
    /// the rest of the batch goes back, and the error says what is left to do.
    fn stop_on(&mut self, ctx: &mut Ctx, failed: Vec<Failure>) -> RollError {
        let webs: Vec<crate::config::Node> = web_nodes(ctx.cfg()).into_iter().cloned().collect();
        for w in &webs {
            let state = if failed.iter().any(|f| f.node == w.name) {
                AdminState::Maint
            } else if self.batch.contains(&w.name) {
                AdminState::Ready
            } else {
                continue;
            };
            // Best effort: the roll stops either way, and the journal says each.
            let _ = ctx.set_all(&w.name, &server_name(w), state);
        }
        self.batch.clear();
        let mut failed = failed.into_iter();
        let Some(first) = failed.next() else {
            return ctx.fail(None, "stopped".into());
        };
        let node = first.node.clone();
        let resume = ctx.state().resume_command();
        let then = if ctx.state().upgrade_pending {
            format!("the site is left in maintenance mode (the database is not upgraded yet): fix {node} and run `{resume}`")
        } else if webs.iter().any(|w| w.name == node) {
            format!("{node} is out of rotation (maint); fix it and run `{resume}`")
        } else {
            format!("fix it and run `{resume}`")
        };
        ctx.node_failed(first, then)
    }

    /// The end of batch `program[i].batch`: the nodes verified in it are upgraded unless they
    /// failed. Failures within the budget (this roll's failed nodes, at most `budget` of its
    /// rule) let the roll go on: the rest is planned again, with room for the failed nodes
    /// out of rotation (`Some`: the new rest). Beyond it, the roll stops.
    fn end_batch(
        &mut self,
        ctx: &mut Ctx,
        plan: &Plan,
        program: &[Group],
        i: usize,
    ) -> Result<Option<Vec<Group>>, RollError> {
        let failed = std::mem::take(&mut self.failed);
        let verified = std::mem::take(&mut self.verified);
        self.upgraded.extend(
            verified
                .into_iter()
                .filter(|n| !failed.iter().any(|f| &f.node == n)),
        );
        if failed.is_empty() {
            self.batch.clear();
            return Ok(None);
        }
        let budget = program
            .iter()
            .filter(|g| g.batch == program[i].batch)
            .find_map(|g| match g.on_fail {
                OnFail::LeaveOut { budget } => Some(budget),
                _ => None,
            })
            .unwrap_or(0);
        let count = self.failed_within_budget.len() + failed.len();
        if count > budget {
            let over = if budget > 0 {
                format!(" ({count} failed, beyond max_failed_nodes = {budget})")
            } else {
                String::new()
            };
            let first = failed.into_iter().next().map(Box::new);
            let resume = ctx.state().resume_command();
            return Err(match first {
                Some(f) => {
                    let node = f.node.clone();
                    ctx.node_failed(*f, format!("{node} stays out of rotation (maint){over}; fix it and run `{resume}`, or `moodle-release rollback`"))
                }
                None => ctx.fail(None, "stopped".into()),
            });
        }
        // Within the budget: the batch is over (its failed nodes out, the others back).
        self.batch.clear();
        for f in failed {
            let msg = format!("{f}; it stays out of rotation (maint); failure budget: {count} of max_failed_nodes = {budget} used, the roll goes on");
            ctx.log(
                Some(&f.node),
                None,
                "failure budget",
                StepResult::Warning,
                Instant::now(),
                &msg,
            );
            ctx.warn(msg);
            ctx.state_mut().failed_nodes.push(f.node.clone());
            self.failed_within_budget.push(FailedNode {
                reason: f.to_string(),
                node: f.node,
            });
        }
        ctx.save_state();
        let out: Vec<String> = self
            .failed_within_budget
            .iter()
            .map(|f| f.node.clone())
            .collect();
        match program::replan(&plan.layout, &program[i + 1..], &out) {
            Some(rest) => {
                let said: Vec<String> = rest
                    .iter()
                    .flat_map(|g| &g.steps)
                    .map(|s| s.describe(&plan.target))
                    .collect();
                let now = Instant::now();
                ctx.log(
                    None,
                    None,
                    "replanned",
                    StepResult::Info,
                    now,
                    &said.join("; "),
                );
                Ok(Some(rest))
            }
            None => {
                let error = RollError::BudgetSpent {
                    failed: out,
                    batch: plan.batch,
                    resume: ctx.state().resume_command(),
                    journal: ctx.journal_path(),
                };
                Err(ctx.stop_with(None, error))
            }
        }
    }
}
