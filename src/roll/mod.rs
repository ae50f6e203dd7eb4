//! `roll` and `rollback`: upgrading the web nodes behind HAProxy a batch at a time.
//!
//! The order for a node, and why (see DOMAIN notes on HAProxy 2.6): drain it on every LB (no
//! new requests, in-flight ones finish, health checks go on); wait until `scur` and `qcur` are 0
//! everywhere; install; check the installed version; wait for its own health URL to answer 200
//! **and** for every LB's health check to pass while it is still drained (leaving maint is
//! optimistic in 2.6, leaving drain is not); only then `ready`. Never more than `batch` web nodes
//! out of rotation, never the last one in rotation.
//!
//! When the target changes a core or plugin `$version` or any `db/` file (the hashes `build`
//! records), mixed code is unsafe: the tool downloads the package everywhere first, turns
//! maintenance on, installs on every node, runs `upgrade_command` once, turns maintenance off.
//!
//! The rooms, in the order a roll goes through them: [`probe`] (what each node runs),
//! [`preflight`] (every part answers, locks, servers out of rotation), [`plan`] (target, path,
//! batches) and [`step`] (the whole program as data), then [`execute`], which walks the steps,
//! with each path's own rules in [`code_only`] and [`database`] and the health checks in
//! [`health`]; [`lock`] is the cluster lock and the state kept beside it.

mod actions;
mod canary;
mod code_only;
mod ctx;
mod database;
mod drivers;
mod execute;
#[cfg(test)]
mod fake;
mod freeze;
mod health;
mod notice;
mod plan;
mod preflight;
mod program;
mod step;
mod target;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::apt::AptError;
use crate::cluster::lock::{self, newer, remote_state};
use crate::cluster::{lock_node, web_nodes};
use crate::config::Config;
use crate::haproxy::{HaError, Lb};
use crate::journal::{Entry, RollKind, RollState, RollStatus, StateError};
use crate::report::Reporter;
use crate::ssh::{Ssh, SshError};
pub use canary::Verdict;
use ctx::Ctx;
use drivers::{Balancer, SshNodes};
use execute::{run_plan, Walked};
use plan::make_plan;
pub use plan::{Plan, RollPath};
use preflight::{check_locks, preflight, refuse_foreign_out_of_rotation, Before};
use target::choose_target;

/// What `roll` or `rollback` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RollOptions {
    pub batch: Option<u32>,
    pub version: Option<String>,
    pub plan: bool,
    pub force: bool,
    pub force_drain: bool,
    pub resume: bool,
    pub auto_rollback: bool,
    pub break_lock: bool,
    /// `rollback` rather than `roll`.
    pub rollback: bool,
    /// `--canary [D]`: `Some(Some(D))`, `Some(None)` for the config's (or 2m); `None`: as the
    /// config says.
    pub canary: Option<Option<Duration>>,
    /// `--no-canary`, although `[roll] canary` is set.
    pub no_canary: bool,
    /// Where `[[notify]]` events go (none: no notifications).
    pub notifier: Option<Arc<crate::notify::Notifier>>,
    /// Set (by the caller's Ctrl-C or SIGTERM handler) to stop between batches.
    pub stop: Arc<AtomicBool>,
}

impl RollOptions {
    pub fn kind(&self) -> RollKind {
        if self.rollback {
            RollKind::Rollback
        } else {
            RollKind::Roll
        }
    }
}

/// Why a roll did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RollError {
    #[error("the config has no [[nodes]]: nothing to roll")]
    NoNodes,
    #[error("the config has web nodes but no [[lb]]: the tool must take nodes out of rotation")]
    NoLb,
    #[error("--batch must be at least 1")]
    ZeroBatch,

    /// The roll state (local file or the lock node's copy) cannot be read.
    #[error("before changing anything: {0}")]
    State(#[from] StateError),
    /// An LB does not answer, or answers what the tool cannot read.
    #[error("before changing anything: {0}")]
    LbUnreachable(HaError),
    /// A web node's server is not in an LB's backend.
    #[error("before changing anything: {source}; node {node} needs it")]
    ServerMissing { node: String, source: HaError },
    /// The Runtime API refuses state changes.
    #[error("before changing anything: {0} (the stats socket needs `level admin`)")]
    NotAdmin(HaError),
    /// A node does not answer over SSH.
    #[error("before changing anything: {0}")]
    NodeUnreachable(SshError),
    #[error("before changing anything: {}: no apt source for {package}: write /etc/apt/sources.list.d/{package}.list (or {package}.sources), the only source roll refreshes (docs/getting-started.md: \"Serve [apt] repo\")", nodes.join(", "))]
    NoAptSource { nodes: Vec<String>, package: String },
    #[error("before changing anything: {}: {config_php} requires lib/setup.php from its own folder (__DIR__), where it is not: every page would fail. Delete that line: the package's {install_dir}/config.php requires {config_php}, then lib/setup.php", nodes.join(", "))]
    RelativeSetup {
        nodes: Vec<String>,
        config_php: String,
        install_dir: String,
    },
    #[error("before changing anything: the apt repository {} holds no version of {package}", repo.display())]
    EmptyRepo { repo: PathBuf, package: String },
    #[error("before changing anything: no earlier version in the repository to roll back to")]
    NothingEarlier,
    #[error("before changing anything: version {version} of {package} is not in the apt repository {} ({why})", repo.display())]
    NotInRepo {
        version: String,
        package: String,
        repo: PathBuf,
        why: String,
    },
    /// In the releases layout, the target is in the repository only as the in-place layout's
    /// package (published before the site moved): `rebuild` is how to make it a release.
    #[error("before changing anything: version {version} is in the apt repository only as {package}, the in-place layout's package (published before the site moved to layout = \"releases\"), and a node in the releases layout runs releases: build that version as a release, publish it, and run this again: {rebuild}")]
    NotARelease {
        version: String,
        package: String,
        rebuild: String,
    },
    /// Another roll holds the cluster lock (`on`: where, and who).
    #[error(
        "another roll holds the cluster lock ({on}); wait for it, or use --break-lock if it is dead"
    )]
    Locked { on: String },
    #[error("before changing anything: {node}: cannot take the cluster lock: {message}")]
    LockFailed { node: String, message: String },
    /// A server is out of rotation, and not by this tool.
    #[error("refused: {lb}: server {server} is out of rotation ({state}), and not by this tool; bring it back or use --force")]
    OutOfRotation {
        lb: String,
        server: String,
        state: &'static str,
    },
    #[error("refused: {why}: the database was upgraded for the newer code, and Moodle cannot downgrade a database. Restore the database from before the upgrade and use --force, or roll forward to a fixed version")]
    DatabaseDowngrade { why: String },
    #[error("refused: inside the freeze window {window}: no roll now; wait for its end, or use --force (the journal records it)")]
    Frozen { window: String },
    #[error("refused: the only web server would go out of rotation (the site down while it is upgraded): add a web node, or use --force")]
    OnlyServer,
    #[error("refused: --batch {batch} would take all {pool} web servers out of rotation at once: use --batch {} or less (or --force)", pool - 1)]
    WholePool { batch: usize, pool: usize },
    /// `--resume` with no stopped roll (or rollback) to continue.
    #[error("--resume: no stopped roll to resume: {}; run `moodle-release {kind}` without --resume", match last { Some((k, t)) => format!("the last {k} (to {t}) is done"), None => "no roll left its state here or on the lock node".into() })]
    NothingToResume {
        kind: RollKind,
        last: Option<(RollKind, String)>,
    },
    /// `--resume` from the other command than the stopped run's.
    #[error("--resume: the stopped run is a {stopped} to {target}, not a {kind}: `moodle-release {stopped} --resume` finishes it")]
    ResumeOtherKind {
        stopped: RollKind,
        target: String,
        kind: RollKind,
    },
    /// `--resume` with another version than the stopped run's.
    #[error("--resume: the stopped {kind} was going to {target}, and {flag} asks for {asked}: drop {flag} to finish it on {target}, or drop --resume to start a {kind} to {asked}")]
    ResumeOtherVersion {
        kind: RollKind,
        target: String,
        flag: &'static str,
        asked: String,
    },
    #[error("cannot write the journal in {}: {source}", dir.display())]
    Journal {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// The canary failed: the figures that decided it, and how it went back.
    #[error("the roll stopped: the canary failed: {}\n  {back}\n  journal: {}", verdict.reason, journal.display())]
    Canary {
        verdict: Box<Verdict>,
        back: String,
        journal: PathBuf,
    },
    /// A step stopped on an error of its parts (an LB or a node that stopped answering
    /// mid-roll): the step, its node, the cause.
    #[error("the roll stopped at {at}: {cause}\n  journal: {}", journal.display())]
    Stopped {
        /// The step, as `--plan` says it (`web2: drain`).
        at: String,
        cause: Box<RollError>,
        journal: PathBuf,
    },
    /// A node failed a step (its install, its version check, its reload, its health or
    /// release probe), with what the roll left behind and what to do (`then`).
    #[error("the roll stopped: {failure}; {then}\n  journal: {}", journal.display())]
    NodeFailed {
        failure: Box<actions::Failure>,
        then: String,
        journal: PathBuf,
    },
    /// Sessions outlasted `drain_timeout`: the batch went back into rotation.
    #[error("the roll stopped: sessions did not end within drain_timeout {timeout}: {}; the nodes are back in rotation; raise drain_timeout or use --force-drain\n  journal: {}", busy.join("; "), journal.display())]
    DrainTimeout {
        timeout: String,
        /// `web1 on lb1 (2 sessions, 0 queued)`, for each server still busy.
        busy: Vec<String>,
        journal: PathBuf,
    },
    /// Nodes failed within the failure budget fill the batch: no room to take another out.
    #[error("the roll stopped: {} failed and stay out of rotation: with --batch {batch} no room is left to take another node out (never more than the batch out); fix them and run `{resume}`\n  journal: {}", failed.join(", "), journal.display())]
    BudgetSpent {
        failed: Vec<String>,
        batch: usize,
        resume: String,
        journal: PathBuf,
    },
    #[error("the roll stopped: {message}\n  journal: {journal}")]
    Failed { message: String, journal: PathBuf },
    #[error("interrupted: {message}\n  journal: {journal}")]
    Interrupted { message: String, journal: PathBuf },
    #[error(transparent)]
    Ha(#[from] HaError),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Apt(#[from] AptError),
}

impl RollError {
    /// The journal of a roll that began and stopped (for CI to keep as an artifact).
    pub fn journal(&self) -> Option<&std::path::Path> {
        match self {
            RollError::Failed { journal, .. }
            | RollError::NodeFailed { journal, .. }
            | RollError::DrainTimeout { journal, .. }
            | RollError::BudgetSpent { journal, .. }
            | RollError::Stopped { journal, .. }
            | RollError::Interrupted { journal, .. }
            | RollError::Canary { journal, .. } => Some(journal),
            _ => None,
        }
    }

    /// What the state's `reason` and the journal's stop line say: the message without the
    /// `journal: ...` line the errors of a roll that began end with.
    pub fn reason(&self) -> String {
        let text = self.to_string();
        match text.split_once("\n  journal: ") {
            Some((reason, _)) => reason.to_string(),
            None => text,
        }
    }

    /// The load balancer the error is about, when it is an LB's.
    pub fn lb(&self) -> Option<&str> {
        match self {
            RollError::Ha(e) | RollError::LbUnreachable(e) => Some(e.lb()),
            RollError::Stopped { cause, .. } => cause.lb(),
            _ => None,
        }
    }

    /// The canary's verdict, when it is what stopped the roll.
    pub fn canary(&self) -> Option<&Verdict> {
        match self {
            RollError::Canary { verdict, .. } => Some(verdict),
            _ => None,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            RollError::NoNodes
            | RollError::NoLb
            | RollError::ZeroBatch
            | RollError::Journal { .. }
            | RollError::NothingToResume { .. }
            | RollError::ResumeOtherKind { .. }
            | RollError::ResumeOtherVersion { .. } => 2,
            RollError::Locked { .. }
            | RollError::Frozen { .. }
            | RollError::OutOfRotation { .. }
            | RollError::DatabaseDowngrade { .. }
            | RollError::OnlyServer
            | RollError::WholePool { .. } => 3,
            RollError::Interrupted { .. } => 130,
            _ => 1,
        }
    }
}

/// What a finished roll did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub plan: Plan,
    pub planned_only: bool,
    pub upgraded: Vec<String>,
    pub maintenance_secs: Option<f64>,
    /// The canary's verdict, when the roll had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<Verdict>,
    /// Web nodes that failed within `[roll] max_failed_nodes`, left out of rotation (maint).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedNode>,
    pub journal: Option<PathBuf>,
    pub timeline: Vec<Entry>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

/// A node that failed, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailedNode {
    pub node: String,
    pub reason: String,
}

/// Says `msg` at once (a roll that fails later must not lose it) and keeps it for `--json`.
fn warn(reporter: &dyn Reporter, warnings: &mut Vec<String>, msg: String) {
    reporter.warn(&msg);
    warnings.push(msg);
}

fn substitute(cmd: &str, cfg: &Config) -> String {
    cmd.replace("{install_dir}", &cfg.site.install_dir.to_string())
}

/// Runs `roll` (or `rollback`).
pub fn roll(
    cfg: &Config,
    opts: &RollOptions,
    reporter: &dyn Reporter,
) -> Result<Outcome, RollError> {
    let started = Instant::now();
    let mut known = notice::Known::default();
    let mut result = checked_roll(cfg, opts, reporter, started, &mut known);
    notice::ended(opts, reporter, &known, started, &mut result);
    result
}

/// [`roll`], but for the notification of its end: the checks in the order that is the safety
/// argument (config, freeze, preflight, plan, locks), then the walk under the cluster lock.
fn checked_roll(
    cfg: &Config,
    opts: &RollOptions,
    reporter: &dyn Reporter,
    started: Instant,
    known: &mut notice::Known,
) -> Result<Outcome, RollError> {
    if cfg.nodes.is_empty() {
        return Err(RollError::NoNodes);
    }

    if cfg.lb.is_empty() && !web_nodes(cfg).is_empty() {
        return Err(RollError::NoLb);
    }
    // clap's range and the config's check refuse 0 to the user; a library caller gets told too.
    let batch = opts.batch.unwrap_or(cfg.roll.batch) as usize;
    if batch == 0 {
        return Err(RollError::ZeroBatch);
    }
    let mut warnings = Vec::new();
    for problem in opts.notifier.iter().flat_map(|n| n.problems()) {
        warn(reporter, &mut warnings, problem);
    }
    let frozen = freeze::check(cfg, opts, reporter, &mut warnings)?;
    let state_dir = cfg.base_dir.join(&cfg.roll.state_dir);
    let previous_state = RollState::read(&state_dir)?;
    let (repo, _mirror) = crate::apt::open(cfg)?;
    let ssh = Ssh::with_masters(&cfg.ssh, Some(state_dir.join("ssh-masters.json")))?;
    let mut before = Before {
        cfg,
        reporter,
        ssh,
        lbs: cfg.lb.iter().map(Lb::from_config).collect(),
        conns: Default::default(),
        processes: Default::default(),
        warnings,
    };

    // Nothing changes until every part answers.
    let installed = preflight(&mut before)?;
    // A roll from another machine (another CI job, a colleague) left its state on the lock node.
    let lock_node = lock_node(cfg);
    let remote = installed.get(lock_node).and_then(|i| i.state.as_deref());
    let previous_state = newer(previous_state, remote_state(lock_node, remote)?);
    let pkg = cfg.site.package.to_string();
    let chosen = choose_target(&pkg, &repo, opts, &installed, previous_state.as_ref())?;
    let plan = make_plan(
        cfg,
        opts,
        batch,
        &chosen,
        &installed,
        previous_state.as_ref(),
        frozen,
    )?;
    known.learn(&plan);
    refuse_foreign_out_of_rotation(&before, opts, previous_state.as_ref())?;
    warn_about_plan(&mut before, opts, &plan);

    check_locks(&mut before, opts, &installed)?;

    if opts.plan {
        return Ok(Outcome::planned(plan, before.warnings, started));
    }
    let held = take_lock(&before, &plan.target, opts)?;
    known.started = true;
    let Before {
        ssh,
        lbs,
        conns,
        processes,
        warnings,
        ..
    } = before;
    let lbs = lbs
        .into_iter()
        .map(|l| Box::new(l) as Box<dyn Balancer>)
        .collect();
    let nodes = Box::new(SshNodes { ssh, conns, cfg });
    let mut ctx = Ctx::new(
        cfg, opts, reporter, state_dir, warnings, started, lbs, nodes, processes,
    );
    let result = run_plan(&mut ctx, &plan, &installed, previous_state, opts, known);
    held.release(|script| {
        let _ = ctx.nodes().run(lock_node, script);
    });
    let walked = result?;
    ctx.state_mut().status = RollStatus::Done;
    ctx.save_state();
    Ok(Outcome::new(plan, walked, ctx))
}

impl Outcome {
    /// What `plan` did, as the executor left `ctx`.
    fn new(plan: Plan, w: Walked, ctx: Ctx) -> Outcome {
        Outcome {
            plan,
            planned_only: false,
            upgraded: w.upgraded,
            maintenance_secs: w.maintenance_secs,
            canary: w.canary,
            failed: w.failed,
            journal: ctx.journal_file(),
            timeline: ctx.journal_entries().to_vec(),
            warnings: ctx.warnings().to_vec(),
            seconds: ctx.started().elapsed().as_secs_f64(),
        }
    }

    /// What `plan` would do (`--plan`).
    fn planned(plan: Plan, warnings: Vec<String>, started: Instant) -> Outcome {
        Outcome {
            plan,
            planned_only: true,
            upgraded: Vec::new(),
            maintenance_secs: None,
            canary: None,
            failed: Vec::new(),
            journal: None,
            timeline: Vec::new(),
            warnings,
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// The cluster lock, on the first node: held by another roll (refused, exit 3) or taken.
fn take_lock(ctx: &Before, target: &str, opts: &RollOptions) -> Result<lock::Held, RollError> {
    let node = lock_node(ctx.cfg);
    let Some(conn) = ctx.conn(node) else {
        return Err(RollError::LockFailed {
            node: node.to_string(),
            message: "no connection to it".into(),
        });
    };
    lock::take(&ctx.ssh, conn, target, opts.break_lock).map_err(|e| match e {
        lock::TakeError::Held(l) => RollError::Locked {
            on: format!("on {node}: {l}"),
        },
        lock::TakeError::Ssh(e) => e.into(),
        lock::TakeError::Failed(e) => RollError::LockFailed {
            node: node.to_string(),
            message: e.to_string(),
        },
    })
}

/// What the roll says up front about its plan: options that do not apply to its path, a
/// failure budget that the batch leaves no room for.
fn warn_about_plan(ctx: &mut Before, opts: &RollOptions, plan: &Plan) {
    if plan.database() && canary::window(ctx.cfg, opts).is_some() {
        ctx.warn("no canary on the database path: once the database is upgraded, no node can go back to the old code; the roll goes without one".into());
    }
    let budget = ctx.cfg.roll.max_failed_nodes as usize;
    if !plan.database() && budget > 0 && budget >= plan.batch && plan.batches().len() > 1 {
        ctx.warn(format!("max_failed_nodes = {budget} with --batch {}: a failed node left out of rotation fills the batch, so the roll stops at the first failure; use --batch {} or more to go past it", plan.batch, budget + 1));
    }
    if plan.database() && opts.auto_rollback {
        ctx.warn("--auto-rollback does not apply to the database path: the upgraded database cannot go back to older code; a failure stops the roll for --resume".into());
    }
}
