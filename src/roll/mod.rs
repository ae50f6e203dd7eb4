//! `roll`, `rollback` and `status`: upgrading the web nodes behind HAProxy a batch at a time.
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

mod http;
mod lock;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::apt::AptError;
use crate::config::{Config, Node, Role};
use crate::haproxy::{AdminState, HaError, Lb};
use crate::journal::{now_ms, Entry, Journal, RollKind, RollState, RollStatus};
use crate::report::Reporter;
use crate::ssh::{quote, Conn, Output, Ssh, SshError};
use lock::{newer, remote_state, Lock, REMOTE_STATE};

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
    #[error("{0}")]
    Config(String),
    #[error("before changing anything: {0}")]
    Preflight(String),
    #[error(
        "another roll holds the cluster lock ({0}); wait for it, or use --break-lock if it is dead"
    )]
    Locked(String),
    #[error("refused: {0}")]
    Refused(String),
    /// `--resume` with no stopped roll (or rollback) to continue.
    #[error("--resume: {0}")]
    NothingToResume(String),
    /// `--resume` asked for another version, or the other command, than the stopped roll's.
    #[error("--resume: {0}")]
    ResumeMismatch(String),
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
            RollError::Failed { journal, .. } | RollError::Interrupted { journal, .. } => {
                Some(journal)
            }
            _ => None,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            RollError::Config(_) | RollError::NothingToResume(_) | RollError::ResumeMismatch(_) => {
                2
            }
            RollError::Locked(_) | RollError::Refused(_) => 3,
            RollError::Interrupted { .. } => 130,
            _ => 1,
        }
    }
}

/// What a node runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Installed {
    pub version: Option<String>,
    pub versions_hash: Option<String>,
    pub db_hash: Option<String>,
    /// The node's apt source for the package, the only one `roll` refreshes:
    /// `/etc/apt/sources.list.d/<package>.list`, else `.sources` (deb822).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apt_source: Option<String>,
    /// The node's config.php requires lib/setup.php relative to its own folder.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub config_php_relative_setup: bool,
    /// The cluster lock, when this node holds it (the first node does while a roll runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<Lock>,
    /// The roll state kept on this node ([`REMOTE_STATE`]), as JSON.
    #[serde(skip)]
    pub state: Option<String>,
}

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

/// What a finished roll did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub plan: Plan,
    pub planned_only: bool,
    pub upgraded: Vec<String>,
    pub maintenance_secs: Option<f64>,
    pub journal: Option<PathBuf>,
    pub timeline: Vec<Entry>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

struct Ctx<'a> {
    cfg: &'a Config,
    reporter: &'a dyn Reporter,
    ssh: Ssh,
    lbs: Vec<Lb>,
    conns: BTreeMap<String, Conn>,
    journal: Option<Journal>,
    state_dir: PathBuf,
    state: RollState,
    stop: Arc<AtomicBool>,
    warnings: Vec<String>,
    pkg: String,
    /// Each LB's process as first seen: a change means HAProxy was reloaded and dropped the
    /// runtime states this tool set.
    processes: BTreeMap<String, crate::haproxy::Process>,
    /// A copy of the state could not be written on the lock node (said once).
    remote_state_failed: std::cell::Cell<bool>,
}

impl Ctx<'_> {
    /// Notices a reloaded LB and sets again the states this roll had set on it (drain for the
    /// nodes being upgraded, maint for a failed one).
    fn reapply_after_reload(&mut self) -> Result<(), RollError> {
        for lb in self.lbs.clone() {
            let now = lb.process()?;
            let Some(before) = self.processes.get(&lb.name).cloned() else {
                self.processes.insert(lb.name.clone(), now);
                continue;
            };
            if before.pid == now.pid && now.uptime_sec >= before.uptime_sec {
                continue;
            }
            self.processes.insert(lb.name.clone(), now);
            let msg = format!(
                "{} was reloaded during the roll (its runtime server states were lost): setting them again",
                lb.name
            );
            warn(self.reporter, &mut self.warnings, msg.clone());
            self.log(
                None,
                Some(&lb.name),
                "reload detected",
                "warning",
                Instant::now(),
                &msg,
            );
            for node in self.state.out_of_rotation.clone() {
                let Some(n) = self.cfg.nodes.iter().find(|n| n.name == node) else {
                    continue;
                };
                let state = if self.state.failed_node.as_deref() == Some(node.as_str()) {
                    AdminState::Maint
                } else {
                    AdminState::Drain
                };
                lb.set_state(&server_name(n), state)?;
                self.log(
                    Some(&node),
                    Some(&lb.name),
                    &format!("state {} (again)", state.as_str()),
                    "ok",
                    Instant::now(),
                    "",
                );
            }
        }
        Ok(())
    }

    fn log(
        &mut self,
        node: Option<&str>,
        lb: Option<&str>,
        action: &str,
        result: &str,
        started: Instant,
        detail: &str,
    ) {
        if let Some(j) = &mut self.journal {
            j.log(Entry {
                time_ms: now_ms(),
                node: node.map(String::from),
                lb: lb.map(String::from),
                action: action.to_string(),
                result: result.to_string(),
                duration_ms: started.elapsed().as_millis(),
                detail: detail.to_string(),
            });
        }
    }

    /// Runs an apt script (see [`Ctx::apt_install`]) on `nodes` at once. A node that waits for
    /// another apt's lock says so on screen and in the journal as it happens, rather than
    /// after up to `apt_lock_timeout` of silence.
    fn run_apt(&mut self, nodes: &[String], script: &str) -> Vec<Result<Output, SshError>> {
        let t = Instant::now();
        let jobs = nodes
            .iter()
            .map(|n| (&self.conns[n], script.to_string()))
            .collect();
        let (reporter, journal) = (self.reporter, &mut self.journal);
        self.ssh.run_all_long_noting(jobs, |i, note| {
            reporter.note(&format!("{}: {note}", nodes[i]));
            if let Some(j) = journal.as_mut() {
                j.log(Entry {
                    time_ms: now_ms(),
                    node: Some(nodes[i].clone()),
                    lb: None,
                    action: "apt lock".into(),
                    result: "waiting".into(),
                    duration_ms: t.elapsed().as_millis(),
                    detail: note.into(),
                });
            }
        })
    }

    /// Says `msg` at once (a roll that fails later must not lose it) and keeps it for `--json`.
    fn warn(&mut self, msg: String) {
        warn(self.reporter, &mut self.warnings, msg);
    }

    /// Writes the state in the state folder and a copy on the lock node ([`REMOTE_STATE`]),
    /// where a run from another machine finds it.
    fn save_state(&self) {
        let _ = self.state.write(&self.state_dir);
        let Some(conn) = self.conns.get(lock_node(self.cfg)) else {
            return;
        };
        let script = lock::write_state(&self.state);
        let ok = matches!(self.ssh.run(conn, &script), Ok(o) if o.success());
        if !ok && !self.remote_state_failed.replace(true) {
            self.reporter.warn(&format!(
                "{}: cannot keep a copy of the roll's state in {REMOTE_STATE}: a run from another machine will not know what this one did (the copy in {} is kept)",
                conn.node,
                self.state_dir.display()
            ));
        }
    }

    fn journal_path(&self) -> PathBuf {
        self.journal
            .as_ref()
            .map(|j| j.path.clone())
            .unwrap_or_default()
    }

    fn conn(&self, node: &str) -> &Conn {
        &self.conns[node]
    }

    /// Stops the roll on Ctrl-C or SIGTERM, between steps: the state says so, for `--resume`.
    fn interrupt(&mut self, message: String) -> RollError {
        self.state.status = RollStatus::Interrupted;
        self.save_state();
        self.log(None, None, "interrupt", "info", Instant::now(), &message);
        RollError::Interrupted {
            message,
            journal: self.journal_path(),
        }
    }

    /// What a stop before this run's maintenance window leaves behind: nothing, unless an
    /// earlier roll stopped with the site in maintenance and its upgrade left to run.
    fn untouched(&self) -> &'static str {
        if self.state.upgrade_pending {
            "this run changed nothing, but the site is still in maintenance mode from the earlier roll: run again to finish its database upgrade"
        } else {
            "nothing was changed"
        }
    }

    fn fail(&mut self, node: Option<&str>, message: String) -> RollError {
        self.state.status = RollStatus::Failed;
        self.state.failed_node = node.map(String::from);
        self.state.reason = Some(message.clone());
        self.save_state();
        self.log(node, None, "stop", "failed", Instant::now(), &message);
        RollError::Failed {
            message,
            journal: self.journal_path(),
        }
    }

    /// Sets `state` for `server` on every LB.
    fn set_all(&mut self, node: &str, server: &str, state: AdminState) -> Result<(), RollError> {
        for lb in self.lbs.clone() {
            let t = Instant::now();
            match lb.set_state(server, state) {
                Ok(()) => self.log(
                    Some(node),
                    Some(&lb.name),
                    &format!("state {}", state.as_str()),
                    "ok",
                    t,
                    "",
                ),
                Err(e) => {
                    self.log(
                        Some(node),
                        Some(&lb.name),
                        &format!("state {}", state.as_str()),
                        "failed",
                        t,
                        &e.to_string(),
                    );
                    return Err(e.into());
                }
            }
        }
        match state {
            AdminState::Ready => self.state.out_of_rotation.retain(|n| n != node),
            _ => {
                if !self.state.out_of_rotation.iter().any(|n| n == node) {
                    self.state.out_of_rotation.push(node.to_string());
                }
            }
        }
        self.save_state();
        Ok(())
    }

    /// What `names` run, asked of all of them at once (`dpkg-query` with the fields `build`
    /// records).
    fn installed_on(&self, names: &[String]) -> Result<BTreeMap<String, Installed>, RollError> {
        let conns: Vec<&Conn> = names.iter().map(|n| self.conn(n)).collect();
        let mut out = BTreeMap::new();
        for (n, r) in names
            .iter()
            .zip(query_installed(&self.ssh, self.cfg, &conns))
        {
            out.insert(n.clone(), r?);
        }
        Ok(out)
    }

    /// Refreshes the site's own apt source only, then installs (or only downloads) `version`.
    ///
    /// Another apt on the node (unattended-upgrades) may hold one of apt's locks. apt 2.6 can
    /// wait for dpkg's lock itself (`DPkg::Lock::Timeout`), but not for the lists' and the
    /// archives' (measured), and it waits without a word. So each command is tried again
    /// every 2 s while a lock is what it failed on, up to `[roll] apt_lock_timeout` in all, and
    /// the first failure of each wait is a [`crate::ssh::NOTE`] line naming the lock and
    /// who holds it (`run_apt` shows it at once).
    fn apt_install(&self, version: &str, download_only: bool) -> String {
        let [list, sources] = apt_sources(&self.pkg);
        format!(
            "export DEBIAN_FRONTEND=noninteractive LC_ALL=C; end=$(( $(date +%s) + {wait} )); \
             apt_retry() {{ said=; while :; do out=$(\"$@\" 2>&1) && return 0; \
             case $out in *'Could not get lock'*) if [ $(date +%s) -lt $end ]; then \
             [ -n \"$said\" ] || printf '{note}waiting up to %ss for another apt: %s\\n' $(( end - $(date +%s) )) \"$(printf '%s\\n' \"$out\" | grep -m1 'Could not get lock' | sed 's/^E: //')\" >&2; \
             said=1; sleep 2; continue; fi;; esac; \
             printf '%s\\n' \"$out\" | grep -v '^W: Unable to read /etc/apt/-/' >&2; return 100; done; }}; \
             src={list}; [ -e /etc/apt/$src ] || src={sources}; \
             apt_retry apt-get update -qq -o Dir::Etc::sourcelist=$src -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 && \
             apt_retry apt-get install -y -qq --allow-downgrades{only} -o Dpkg::Options::=--force-confold {what}",
            note = crate::ssh::NOTE,
            list = quote(&list),
            sources = quote(&sources),
            wait = self.cfg.roll.apt_lock_timeout.as_secs(),
            only = if download_only { " --download-only" } else { "" },
            what = quote(&format!("{}={version}", self.pkg)),
        )
    }

    fn interrupted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// What each of `conns` has installed of `pkg`, asked of all at once; results in the same
/// order. Used by roll and by status.
fn query_installed(ssh: &Ssh, cfg: &Config, conns: &[&Conn]) -> Vec<Result<Installed, SshError>> {
    let script = installed_script(cfg);
    let jobs = conns.iter().map(|c| (*c, script.clone())).collect();
    conns
        .iter()
        .zip(ssh.run_all(jobs))
        .map(|(c, r)| installed_answer(&c.node, r))
        .collect()
}

/// Connects to `nodes` and asks each what it has installed in the same round trip (see
/// [`Ssh::connect_all_then`]); results in the same order. Used by roll and by status.
fn connect_and_query(
    ssh: &Ssh,
    cfg: &Config,
    nodes: &[(String, String)],
) -> Vec<Result<(Conn, Answer), SshError>> {
    let script = installed_script(cfg);
    ssh.connect_all_then(nodes, Some(&script))
        .into_iter()
        .map(|r| {
            r.map(|(c, out)| {
                let answer = installed_answer(&c.node, out);
                (c, answer)
            })
        })
        .collect()
}

/// What a node answered to [`installed_script`].
type Answer = Result<Installed, SshError>;

/// The query of what a node has installed of this site's package.
fn installed_script(cfg: &Config) -> String {
    installed_query(
        &cfg.site.package.to_string(),
        cfg.site.config_php_target().as_deref(),
    )
}

/// A node's answer to [`installed_script`].
fn installed_answer(node: &str, r: Result<Output, SshError>) -> Result<Installed, SshError> {
    let o = r?;
    // The query itself never fails (`|| true`): a failure is the shell's or sudo's, and must
    // not read as "nothing installed".
    if !o.success() {
        return Err(SshError::Run {
            node: node.to_string(),
            command: "dpkg-query".into(),
            message: o.tail(),
        });
    }
    Ok(parse_installed(&o.text()))
}

/// The query whose answer [`parse_installed`] reads.
fn installed_query(pkg: &str, config_php: Option<&str>) -> String {
    // A config.php copied from a plain install ends with require_once(__DIR__ .
    // '/lib/setup.php'): from the node's config folder that names a file that does not exist,
    // and every page of the site fails (the packaged stub requires setup.php itself).
    let relative_setup = config_php
        .map(|c| {
            format!(
                "; if grep -Eq \"^[[:space:]]*(require|include)(_once)?[[:space:](]*(__DIR__|dirname[(]__FILE__[)])[[:space:]]*[.][[:space:]]*['\\\"]/lib/setup[.]php\" {} 2>/dev/null; then echo relative-setup; fi",
                quote(c)
            )
        })
        .unwrap_or_default();
    format!(
        "dpkg-query -W -f='${{Status}}|${{Version}}|${{X-Moodle-Versions-Hash}}|${{X-Moodle-Db-Hash}}\\n' {q} 2>/dev/null || true; \
         for f in {list} {sources}; do if [ -e \"$f\" ]; then echo \"source $f\"; fi; done{relative_setup}; \
         {lock}; true",
        lock = lock::query(),
        q = quote(pkg),
        list = quote(&format!("/etc/apt/{}", apt_sources(pkg)[0])),
        sources = quote(&format!("/etc/apt/{}", apt_sources(pkg)[1])),
    )
}

/// The package's own apt source on a node, the only one roll refreshes: `<package>.list`, else
/// the deb822 `<package>.sources`. Relative to /etc/apt, as `Dir::Etc::sourcelist` takes it.
fn apt_sources(pkg: &str) -> [String; 2] {
    [
        format!("sources.list.d/{pkg}.list"),
        format!("sources.list.d/{pkg}.sources"),
    ]
}

/// `Status|Version|X-Moodle-Versions-Hash|X-Moodle-Db-Hash` from dpkg-query, then a `source
/// PATH` line for each apt source of the package the node has.
fn parse_installed(stdout: &str) -> Installed {
    let apt_source = stdout
        .lines()
        .find_map(|l| l.strip_prefix("source "))
        .map(str::to_string);
    let config_php_relative_setup = stdout.lines().any(|l| l == "relative-setup");
    let lock = Lock::parse(stdout);
    let state = lock::state_text(stdout).map(str::to_string);
    let line = stdout.lines().find(|l| l.contains('|')).unwrap_or("");
    let parts: Vec<&str> = line.split('|').collect();
    if parts.len() < 4 || !parts[0].ends_with("ok installed") {
        return Installed {
            apt_source,
            config_php_relative_setup,
            lock,
            state,
            ..Installed::default()
        };
    }
    let opt = |s: &str| {
        if s.is_empty() {
            None
        } else {
            Some(s.to_string())
        }
    };
    Installed {
        version: opt(parts[1]),
        versions_hash: opt(parts[2]),
        db_hash: opt(parts[3]),
        apt_source,
        config_php_relative_setup,
        lock,
        state,
    }
}

fn server_name(n: &Node) -> String {
    n.server.clone().unwrap_or_else(|| n.name.clone())
}

fn web_nodes(cfg: &Config) -> Vec<&Node> {
    cfg.nodes.iter().filter(|n| n.role == Role::Web).collect()
}

/// [`Ctx::warn`] for code that holds other parts of the context borrowed.
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
    if cfg.nodes.is_empty() {
        return Err(RollError::Config(
            "the config has no [[nodes]]: nothing to roll".into(),
        ));
    }
    if cfg.lb.is_empty() && !web_nodes(cfg).is_empty() {
        return Err(RollError::Config(
            "the config has web nodes but no [[lb]]: the tool must take nodes out of rotation"
                .into(),
        ));
    }
    // clap's range and the config's check refuse 0 to the user; a library caller gets told too.
    let batch = opts.batch.unwrap_or(cfg.roll.batch) as usize;
    if batch == 0 {
        return Err(RollError::Config("--batch must be at least 1".into()));
    }
    let state_dir = cfg.base_dir.join(&cfg.roll.state_dir);
    let previous_state = RollState::read(&state_dir).map_err(RollError::Preflight)?;
    let stop = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone());
    let _ = signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone());
    let (repo, _mirror) = crate::apt::open(cfg)?;
    let mut ctx = Ctx {
        cfg,
        reporter,
        ssh: Ssh::with_masters(&cfg.ssh, Some(state_dir.join("ssh-masters.json")))?,
        lbs: cfg.lb.iter().map(Lb::from_config).collect(),
        conns: BTreeMap::new(),
        journal: None,
        state_dir: state_dir.clone(),
        state: RollState::default(),
        stop,
        warnings: Vec::new(),
        pkg: cfg.site.package.to_string(),
        processes: BTreeMap::new(),
        remote_state_failed: Default::default(),
    };

    // Nothing changes until every part answers.
    let installed = preflight(&mut ctx)?;
    // A roll from another machine (another CI job, a colleague) left its state on the lock node.
    let lock_node = lock_node(cfg);
    let remote = installed.get(lock_node).and_then(|i| i.state.as_deref());
    let previous_state = newer(
        previous_state,
        remote_state(lock_node, remote).map_err(RollError::Preflight)?,
    );
    let (target, listed, target_why) =
        choose_target(&ctx, &repo, opts, &installed, previous_state.as_ref())?;
    let mut plan = make_plan(
        cfg,
        opts,
        batch,
        &target,
        &listed,
        &installed,
        previous_state.as_ref(),
    )?;
    plan.target_why = target_why;
    refuse_foreign_out_of_rotation(&ctx, opts, previous_state.as_ref())?;
    if plan.database() && opts.auto_rollback {
        ctx.warn("--auto-rollback does not apply to the database path: the upgraded database cannot go back to older code; a failure stops the roll for --resume".into());
    }

    check_locks(&mut ctx, opts, &installed)?;

    if opts.plan {
        return Ok(Outcome {
            plan,
            planned_only: true,
            upgraded: Vec::new(),
            maintenance_secs: None,
            journal: None,
            timeline: Vec::new(),
            warnings: ctx.warnings,
            seconds: started.elapsed().as_secs_f64(),
        });
    }

    // --- The cluster lock, on the first node.
    let held = match lock::take(&ctx.ssh, ctx.conn(lock_node), &target, opts.break_lock) {
        Ok(h) => h,
        Err(lock::TakeError::Held(l)) => {
            return Err(RollError::Locked(format!("on {lock_node}: {l}")))
        }
        Err(lock::TakeError::Ssh(e)) => return Err(e.into()),
        Err(lock::TakeError::Failed(e)) => {
            return Err(RollError::Preflight(format!(
                "{lock_node}: cannot take the cluster lock: {e}"
            )))
        }
    };
    let result = run_plan(&mut ctx, &plan, &installed, previous_state, opts);
    held.release(&ctx.ssh, ctx.conn(lock_node));
    let (upgraded, maintenance_secs) = result?;
    ctx.state.status = RollStatus::Done;
    ctx.save_state();
    Ok(Outcome {
        plan,
        planned_only: false,
        upgraded,
        maintenance_secs,
        journal: ctx.journal.as_ref().map(|j| j.path.clone()),
        timeline: ctx
            .journal
            .as_ref()
            .map(|j| j.entries.clone())
            .unwrap_or_default(),
        warnings: ctx.warnings,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Before anything changes: every LB answers, lists every web node's server and takes state
/// changes; every node answers over SSH. Returns what each node has installed.
fn preflight(ctx: &mut Ctx) -> Result<BTreeMap<String, Installed>, RollError> {
    let cfg = ctx.cfg;
    ctx.reporter.step("checking the load balancers");
    for lb in &ctx.lbs {
        let servers = lb
            .servers()
            .map_err(|e| RollError::Preflight(e.to_string()))?;
        for n in web_nodes(cfg) {
            let s = server_name(n);
            let x = lb
                .find(&servers, &s)
                .map_err(|e| RollError::Preflight(format!("{e}; node {} needs it", n.name)))?;
            if x.agent {
                warn(
                    ctx.reporter,
                    &mut ctx.warnings,
                    format!(
                        "{}: {s} has an agent-check, which can cancel a drain set by this tool",
                        lb.name
                    ),
                );
            }
        }
        // The Runtime API must accept state changes (level admin). Setting a server's weight to
        // the weight it has proves it and changes nothing.
        if let Some(x) = web_nodes(cfg)
            .first()
            .and_then(|n| servers.iter().find(|x| x.name == server_name(n)))
        {
            lb.send(&format!(
                "set weight {}/{} {}",
                lb.backend, x.name, x.weight
            ))
            .map_err(|e| {
                RollError::Preflight(format!("{e} (the stats socket needs `level admin`)"))
            })?;
        }
    }
    ctx.reporter.step_done();
    for lb in &ctx.lbs {
        let p = lb
            .process()
            .map_err(|e| RollError::Preflight(e.to_string()))?;
        ctx.processes.insert(lb.name.clone(), p);
    }
    ctx.reporter.step("connecting to the nodes");
    let dests: Vec<(String, String)> = cfg
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.ssh.clone()))
        .collect();
    let mut installed = BTreeMap::new();
    for r in connect_and_query(&ctx.ssh, cfg, &dests) {
        let (c, answer) = r.map_err(|e| RollError::Preflight(e.to_string()))?;
        installed.insert(c.node.clone(), answer?);
        ctx.conns.insert(c.node.clone(), c);
    }
    let names: Vec<String> = cfg.nodes.iter().map(|n| n.name.clone()).collect();
    ctx.reporter.step_done();
    let nodes_where = |bad: fn(&Installed) -> bool| -> Vec<&str> {
        names
            .iter()
            .filter(|n| bad(&installed[*n]))
            .map(String::as_str)
            .collect()
    };
    // Without it, apt would refresh nothing and fail later, on a node already drained.
    let missing = nodes_where(|i| i.apt_source.is_none());
    if !missing.is_empty() {
        return Err(RollError::Preflight(format!(
            "{}: no apt source for {pkg}: write /etc/apt/sources.list.d/{pkg}.list (or {pkg}.sources), the only source roll refreshes (README: \"Serve [apt] repo\")",
            missing.join(", "),
            pkg = ctx.pkg
        )));
    }
    let relative = nodes_where(|i| i.config_php_relative_setup);
    if let (false, Some(c)) = (relative.is_empty(), cfg.site.config_php_target()) {
        return Err(RollError::Preflight(format!(
            "{}: {c} requires lib/setup.php from its own folder (__DIR__), where it is not: every page would fail. Delete that line: the package's {}/config.php requires {c}, then lib/setup.php",
            relative.join(", "),
            cfg.site.install_dir
        )));
    }
    Ok(installed)
}

/// The stopped roll that `--resume` continues: the newer of the local and the lock node's
/// state, unfinished, of the same command, and going to the version asked for (if any).
/// Anything else is refused before the cluster is touched: resuming must never pick a target
/// nobody chose for this deploy (the repository's newest, say).
fn resumed<'a>(
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
fn choose_target(
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
fn make_plan(
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

/// The node that holds the cluster lock and the copy of the state: the config's first.
fn lock_node(cfg: &Config) -> &str {
    &cfg.nodes[0].name
}

/// The cluster locks the preflight query found, said before anything changes.
///
/// On the lock node: `--plan` says what taking it would do, `--break-lock` whose lock it
/// removes (for the record: `--json` keeps warnings); else [`lock::take`] refuses. On any
/// other node, a roll whose config lists the nodes in another order holds it, against the same
/// cluster: a live one refuses this roll (exit 3), one known dead is a warning, `--break-lock`
/// removes it.
fn check_locks(
    ctx: &mut Ctx,
    opts: &RollOptions,
    installed: &BTreeMap<String, Installed>,
) -> Result<(), RollError> {
    let first = lock_node(ctx.cfg);
    let held_here = installed.get(first).and_then(|i| i.lock.as_ref());
    match (held_here, opts.plan, opts.break_lock) {
        (Some(l), true, b) => ctx.warn(format!(
            "another roll holds the cluster lock on {first} ({l}): {}",
            if b {
                "--break-lock would remove it"
            } else {
                "this roll would be refused"
            }
        )),
        (held, false, true) => ctx.warn(format!(
            "--break-lock: removing the cluster lock on {first}{}",
            held.map_or(", which no roll held".into(), |l| format!(
                ", held by {}",
                l.owner
            ))
        )),
        _ => {}
    }
    for (node, l) in installed
        .iter()
        .filter(|(n, _)| *n != first)
        .filter_map(|(n, i)| Some((n, i.lock.as_ref()?)))
    {
        let what = format!(
            "on {node}: {l}; a roll whose config lists {node} first took it, against this cluster"
        );
        if opts.break_lock && !opts.plan {
            ctx.warn(format!("--break-lock: removing the cluster lock {what}"));
            ctx.ssh.run(ctx.conn(node), &lock::remove())?;
        } else if l.dead() || opts.plan {
            ctx.warn(format!("a cluster lock is held {what}"));
        } else {
            return Err(RollError::Locked(what));
        }
    }
    Ok(())
}

/// Servers out of rotation that this tool did not put there (by the last roll's state) stop
/// the roll, unless `--force`: someone took them out for a reason.
fn refuse_foreign_out_of_rotation(
    ctx: &Ctx,
    opts: &RollOptions,
    previous_state: Option<&RollState>,
) -> Result<(), RollError> {
    let cfg = ctx.cfg;
    let ours: Vec<String> = previous_state
        .filter(|s| s.unfinished())
        .map(|s| s.out_of_rotation.clone())
        .unwrap_or_default();
    for lb in &ctx.lbs {
        for s in lb.servers()? {
            let node = web_nodes(cfg)
                .into_iter()
                .find(|n| server_name(n) == s.name)
                .map(|n| n.name.clone());
            if (s.drain || s.maint) && !opts.force {
                match &node {
                    Some(n) if ours.contains(n) => {}
                    _ => {
                        return Err(RollError::Refused(format!(
                            "{}: server {} is out of rotation ({}), and not by this tool; bring it back or use --force",
                            lb.name,
                            s.name,
                            if s.maint { "maint" } else { "drain" }
                        )))
                    }
                }
            }
        }
    }
    Ok(())
}

fn run_plan(
    ctx: &mut Ctx,
    plan: &Plan,
    installed: &BTreeMap<String, Installed>,
    previous_state: Option<RollState>,
    opts: &RollOptions,
) -> Result<(Vec<String>, Option<f64>), RollError> {
    let id = format!("{}", now_ms());
    ctx.journal = Some(Journal::create(&ctx.state_dir, &id).map_err(|e| {
        RollError::Config(format!(
            "cannot write the journal in {}: {e}",
            ctx.state_dir.display()
        ))
    })?);
    ctx.state = RollState {
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
        reason: None,
        upgrade_pending: previous_state.as_ref().is_some_and(|s| s.upgrade_left()),
    };
    if opts.resume {
        if let Some(p) = &previous_state {
            ctx.state.previous = p.previous.clone();
        }
    }
    ctx.save_state();
    ctx.log(
        None,
        None,
        &format!("{} to {} ({})", plan.kind, plan.target, plan.path),
        "info",
        Instant::now(),
        &plan.why,
    );

    // Nodes an earlier run left out of rotation: back in when they are on the target and healthy.
    for node in ctx.state.out_of_rotation.clone() {
        let Some(n) = ctx.cfg.nodes.iter().find(|n| n.name == node) else {
            continue;
        };
        if installed[&node].version.as_deref() != Some(plan.target.as_str()) {
            continue;
        }
        match health_now(ctx.cfg, n) {
            Ok(()) => {
                ctx.reporter.step(&format!("{node}: on {} and healthy, left out of rotation by an earlier run: putting it back", plan.target));
                ctx.set_all(&node, &server_name(n), AdminState::Ready)?;
                ctx.reporter.step_done();
            }
            // Going on would put more than `batch` servers out of rotation, and ending "done"
            // would leave a node out that no later run knows as its own.
            Err(why) => {
                return Err(ctx.fail(
                    Some(&node),
                    format!(
                        "{node} is on {} but not healthy ({why}); it stays out of rotation, where an earlier run left it: fix it and run again",
                        plan.target
                    ),
                ))
            }
        }
    }

    if plan.database() {
        let secs = database_path(ctx, plan)?;
        if ctx.interrupted() {
            // Stopping halfway would leave the site in maintenance, or on code its database
            // does not match: the database path, once begun, runs to its end.
            ctx.warn("interrupted (Ctrl-C or SIGTERM) during the database path: it was finished rather than leave the site in maintenance mode".into());
        }
        Ok((
            plan.batches
                .iter()
                .flatten()
                .chain(plan.cron.iter())
                .cloned()
                .collect(),
            Some(secs),
        ))
    } else {
        let mut upgraded = Vec::new();
        for b in &plan.batches {
            if ctx.interrupted() {
                let msg = format!(
                    "stopped before batch {}; every node is in rotation; run again with --resume",
                    b.join(", ")
                );
                return Err(ctx.interrupt(msg));
            }
            if let Err(e) = code_only_batch(ctx, plan, b, opts) {
                if opts.auto_rollback && !upgraded.is_empty() {
                    return Err(auto_rollback(ctx, plan, &upgraded, opts, e));
                }
                return Err(e);
            }
            upgraded.extend(b.iter().cloned());
        }
        for c in &plan.cron {
            install_nodes(ctx, std::slice::from_ref(c), &plan.target)
                .map_err(|(n, m)| ctx.fail(Some(&n), m))?;
            upgraded.push(c.clone());
        }
        if let Some(node) = &plan.purge_on {
            purge_caches(ctx, node);
        }
        Ok((upgraded, None))
    }
}

/// `purge_command` once, on `node`, with every node on the target. A failure is a warning: the
/// code is in place and serving; only its caches are stale until the purge is run by hand.
fn purge_caches(ctx: &mut Ctx, node: &str) {
    let t = Instant::now();
    let cmd = substitute(&ctx.cfg.roll.purge_command, ctx.cfg);
    ctx.reporter
        .step(&format!("purging Moodle's caches on {node}"));
    let r = ctx.ssh.run_long(ctx.conn(node), &cmd);
    ctx.reporter.step_done();
    let failure = match r {
        Ok(o) if o.success() => None,
        Ok(o) => Some(format!("{} ({})", o.tail(), o.status())),
        Err(e) => Some(e.to_string()),
    };
    match failure {
        None => ctx.log(Some(node), None, "purge caches", "ok", t, &cmd),
        Some(why) => {
            ctx.log(Some(node), None, "purge caches", "failed", t, &why);
            ctx.warn(format!(
                "{node}: purge_command failed: {why}; every node runs the new code, but its caches are stale until `{cmd}` runs"
            ));
        }
    }
}

/// Installs the target on `nodes` in parallel and checks the installed version. On failure:
/// the first failed node and why.
fn install_nodes(ctx: &mut Ctx, nodes: &[String], target: &str) -> Result<(), (String, String)> {
    let t = Instant::now();
    ctx.reporter
        .step(&format!("installing {target} on {}", nodes.join(", ")));
    let script = ctx.apt_install(target, false);
    let results = ctx.run_apt(nodes, &script);
    let mut failure = None;
    for (n, r) in nodes.iter().zip(results) {
        match r {
            Ok(o) if o.success() => ctx.log(Some(n), None, "install", "ok", t, target),
            Ok(o) => {
                let m = format!(
                    "{n}: apt-get install {}={target} failed ({}): {}",
                    ctx.pkg,
                    o.status(),
                    o.tail()
                );
                ctx.log(Some(n), None, "install", "failed", t, &m);
                failure.get_or_insert((n.clone(), m));
            }
            Err(e) => {
                ctx.log(Some(n), None, "install", "failed", t, &e.to_string());
                failure.get_or_insert((n.clone(), e.to_string()));
            }
        }
    }
    ctx.reporter.step_done();
    if let Some(f) = failure {
        return Err(f);
    }
    let t = Instant::now();
    let now = ctx
        .installed_on(nodes)
        .map_err(|e| (nodes[0].clone(), e.to_string()))?;
    for n in nodes {
        let v = &now[n];
        if v.version.as_deref() != Some(target) {
            let m = format!(
                "{n}: after install dpkg reports {:?}, not {target}",
                v.version
            );
            ctx.log(Some(n), None, "verify version", "failed", t, &m);
            return Err((n.clone(), m));
        }
        ctx.log(Some(n), None, "verify version", "ok", t, target);
    }
    Ok(())
}

fn health_url(cfg: &Config, n: &Node) -> Option<String> {
    n.http
        .as_ref()
        .map(|h| format!("{}{}", h.trim_end_matches('/'), cfg.roll.health_path))
}

/// Whether the node's health URL answers 200 now, else what it answered; Ok for a node
/// without one (cron).
fn health_now(cfg: &Config, n: &Node) -> Result<(), String> {
    let Some(u) = health_url(cfg, n) else {
        return Ok(());
    };
    match http::get_status(&u, cfg.roll.health_host.as_deref(), Duration::from_secs(3)) {
        Ok(200) => Ok(()),
        Ok(code @ 301..=308) => Err(format!(
            "{u} answered {code}, a redirect (Moodle redirects a request whose Host is not its wwwroot's: check [roll] health_host)"
        )),
        Ok(code) => Err(format!("{u} answered {code}")),
        Err(e) => Err(format!("{u}: {e}")),
    }
}

/// Whether the node's health URL answers 200 now; `None` for a node without one (cron).
fn healthy(cfg: &Config, n: &Node) -> Option<bool> {
    health_url(cfg, n).map(|_| health_now(cfg, n).is_ok())
}

/// Waits until the node answers 200 on its health URL and every LB's check passes.
fn wait_healthy(ctx: &mut Ctx, n: &Node) -> Result<(), String> {
    let t = Instant::now();
    let deadline = t + ctx.cfg.roll.health_timeout;
    let url = health_url(ctx.cfg, n);
    let mut last = String::new();
    loop {
        if let Err(e) = ctx.reapply_after_reload() {
            last = e.to_string();
        }
        let own = match health_now(ctx.cfg, n) {
            Ok(()) => true,
            Err(why) => {
                last = why;
                false
            }
        };
        let mut lbs_ok = own;
        if own {
            for lb in &ctx.lbs {
                match lb.server(&server_name(n)) {
                    Ok(s) if s.check_ok() && !s.status.starts_with("DOWN") => {}
                    Ok(s) => {
                        lbs_ok = false;
                        last = format!(
                            "{}: its health check says {} ({})",
                            lb.name, s.check_status, s.status
                        );
                    }
                    Err(e) => {
                        lbs_ok = false;
                        last = e.to_string();
                    }
                }
            }
        }
        if lbs_ok {
            ctx.log(
                Some(&n.name),
                None,
                "health",
                "ok",
                t,
                url.as_deref().unwrap_or(""),
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            let m = format!(
                "{}: not healthy after {}: {last}",
                n.name,
                crate::config::format_duration(ctx.cfg.roll.health_timeout)
            );
            ctx.log(Some(&n.name), None, "health", "failed", t, &m);
            return Err(m);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn code_only_batch(
    ctx: &mut Ctx,
    plan: &Plan,
    batch: &[String],
    opts: &RollOptions,
) -> Result<(), RollError> {
    let nodes: Vec<Node> = batch
        .iter()
        .map(|b| ctx.cfg.nodes.iter().find(|n| &n.name == b).unwrap().clone())
        .collect();
    ctx.reapply_after_reload()?;
    // Re-read every LB: someone (or a reload) may have changed states since the last batch.
    let web_servers: Vec<String> = web_nodes(ctx.cfg).iter().map(|n| server_name(n)).collect();
    for lb in ctx.lbs.clone() {
        let servers = lb.servers()?;
        let in_rotation = servers
            .iter()
            .filter(|s| web_servers.contains(&s.name) && s.in_rotation())
            .count();
        let leaving = servers
            .iter()
            .filter(|s| nodes.iter().any(|n| server_name(n) == s.name) && s.in_rotation())
            .count();
        if in_rotation.saturating_sub(leaving) == 0 && !opts.force {
            return Err(ctx.fail(
                None,
                format!("{}: draining {} would leave no server in rotation ({} of {} are up); lower --batch or bring servers back", lb.name, batch.join(", "), in_rotation, web_servers.len()),
            ));
        }
        for s in &servers {
            let ours = ctx.state.out_of_rotation.contains(&s.name)
                || nodes.iter().any(|n| server_name(n) == s.name);
            if (s.drain || s.maint) && !ours && !opts.force {
                return Err(ctx.fail(None, format!("{}: server {} went out of rotation during the roll, not by this tool: stopping", lb.name, s.name)));
            }
        }
    }
    // Drain, then wait for the sessions to end.
    ctx.reporter.step(&format!(
        "draining {} and waiting for their sessions to end",
        batch.join(", ")
    ));
    let (t, busy) = drain_and_wait(ctx, &nodes)?;
    let forced = !busy.is_empty() && opts.force_drain;
    if !busy.is_empty() {
        if forced {
            maint_after_timeout(ctx, &nodes, t, "--force-drain", &busy)?;
        } else {
            for n in &nodes {
                ctx.set_all(&n.name, &server_name(n), AdminState::Ready)?;
            }
            ctx.reporter.step_done();
            return Err(ctx.fail(
                None,
                format!("sessions did not end within drain_timeout {}: {}; the nodes are back in rotation; raise drain_timeout or use --force-drain", crate::config::format_duration(ctx.cfg.roll.drain_timeout), busy.join("; ")),
            ));
        }
    }
    ctx.reporter.step_done();

    // Install, verify, health.
    let mut failed: Vec<(String, String)> = Vec::new();
    if let Err(f) = install_nodes(ctx, batch, &plan.target) {
        failed.push(f);
    }
    for n in &nodes {
        if failed.iter().any(|(f, _)| f == &n.name) {
            continue;
        }
        // HAProxy does not check a server in maint: back to drain (still no new traffic), or
        // the checks below would never see the new code.
        if forced {
            ctx.set_all(&n.name, &server_name(n), AdminState::Drain)?;
        }
        // The LBs' last check result may predate the install: mark the (drained, idle) server
        // down, so that only checks of the new code can bring it back up.
        for lb in ctx.lbs.clone() {
            let t = Instant::now();
            let cmd = format!("set server {}/{} health down", lb.backend, server_name(n));
            match lb.send(&cmd) {
                Ok(_) => ctx.log(
                    Some(&n.name),
                    Some(&lb.name),
                    "health down until checked",
                    "ok",
                    t,
                    "",
                ),
                Err(e) => ctx.log(
                    Some(&n.name),
                    Some(&lb.name),
                    "health down until checked",
                    "warning",
                    t,
                    &e.to_string(),
                ),
            }
        }
        ctx.reporter
            .step(&format!("waiting for {} to be healthy", n.name));
        if let Err(m) = wait_healthy(ctx, n) {
            failed.push((n.name.clone(), m));
        }
        ctx.reporter.step_done();
    }
    if failed.is_empty() {
        for n in &nodes {
            ctx.set_all(&n.name, &server_name(n), AdminState::Ready)?;
        }
        return Ok(());
    }
    // A failed node stays out (maint) with the reason; the batch's good nodes go back.
    for n in &nodes {
        if failed.iter().any(|(f, _)| f == &n.name) {
            ctx.set_all(&n.name, &server_name(n), AdminState::Maint)?;
        } else {
            ctx.set_all(&n.name, &server_name(n), AdminState::Ready)?;
        }
    }
    let (node, why) = failed[0].clone();
    let resume = ctx.state.resume_command();
    Err(ctx.fail(Some(&node), format!("{why}; {node} stays out of rotation (maint); fix it and run `{resume}`, or `moodle-release rollback`")))
}

/// `--auto-rollback`: the nodes this roll already upgraded go back to the version they ran, by the
/// same drain, install, health, ready steps (the roll was code-only, so mixed versions are safe).
/// Returns the roll's error, completed with what happened.
fn auto_rollback(
    ctx: &mut Ctx,
    plan: &Plan,
    upgraded: &[String],
    opts: &RollOptions,
    cause: RollError,
) -> RollError {
    let cause = cause.to_string();
    ctx.log(
        None,
        None,
        "auto-rollback",
        "info",
        Instant::now(),
        &format!("after: {cause}"),
    );
    let mut by_version: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in upgraded {
        if let Some(v) = ctx.state.previous.get(n) {
            by_version.entry(v.clone()).or_default().push(n.clone());
        }
    }
    let back_opts = RollOptions {
        auto_rollback: false,
        ..opts.clone()
    };
    let mut back = Vec::new();
    for (version, nodes) in by_version {
        let rb = Plan {
            target: version.clone(),
            ..plan.clone()
        };
        for chunk in nodes.chunks(plan.batch) {
            if let Err(e) = code_only_batch(ctx, &rb, chunk, &back_opts) {
                return RollError::Failed {
                    message: format!("{cause}; --auto-rollback then failed too: {e}"),
                    journal: ctx.journal_path(),
                };
            }
            back.extend(chunk.iter().map(|n| format!("{n} ({version})")));
        }
    }
    ctx.state.status = RollStatus::Failed;
    ctx.save_state();
    RollError::Failed {
        message: format!(
            "{cause}\n  --auto-rollback: back on their previous version: {}",
            back.join(", ")
        ),
        journal: ctx.journal_path(),
    }
}

fn database_path(ctx: &mut Ctx, plan: &Plan) -> Result<f64, RollError> {
    let all: Vec<String> = plan
        .batches
        .iter()
        .flatten()
        .chain(plan.cron.iter())
        .cloned()
        .collect();
    let first_web = web_nodes(ctx.cfg)
        .first()
        .map(|n| n.name.clone())
        .unwrap_or_else(|| ctx.cfg.nodes[0].name.clone());
    // 1. Download everywhere first: the maintenance window holds no download.
    let t = Instant::now();
    if !all.is_empty() {
        ctx.reporter.step(&format!(
            "downloading {} on {}",
            plan.target,
            all.join(", ")
        ));
        let script = ctx.apt_install(&plan.target, true);
        for (n, r) in all.clone().iter().zip(ctx.run_apt(&all, &script)) {
            let failure = match r {
                Ok(o) if o.success() => {
                    ctx.log(Some(n), None, "download", "ok", t, &plan.target);
                    continue;
                }
                Ok(o) => format!(
                    "{n}: downloading {}={} failed: {}",
                    ctx.pkg,
                    plan.target,
                    o.tail()
                ),
                Err(e) => e.to_string(),
            };
            ctx.reporter.step_done();
            let untouched = ctx.untouched();
            return Err(ctx.fail(Some(n), format!("{failure}; {untouched}")));
        }
        ctx.reporter.step_done();
    }
    if ctx.interrupted() {
        let untouched = ctx.untouched();
        return Err(ctx.interrupt(format!("stopped before the maintenance step; {untouched}")));
    }
    // 2. Maintenance on.
    let on = substitute(&ctx.cfg.roll.maintenance_on, ctx.cfg);
    let t = Instant::now();
    let m_start = Instant::now();
    if plan.installed.get(&first_web).is_some_and(|v| v.is_some()) {
        let out = ctx.ssh.run_long(ctx.conn(&first_web), &on)?;
        if !out.success() {
            let untouched = ctx.untouched();
            return Err(ctx.fail(
                Some(&first_web),
                format!("maintenance_on failed: {}; {untouched}", out.tail()),
            ));
        }
        ctx.log(Some(&first_web), None, "maintenance on", "ok", t, &on);
    } else {
        // A first install: no code on the node yet, so nothing to put in maintenance.
        ctx.log(
            Some(&first_web),
            None,
            "maintenance on",
            "skipped",
            t,
            "no code installed yet",
        );
    }
    ctx.state.upgrade_pending = true;
    ctx.save_state();
    // 3. Install everywhere, batch after batch. Web nodes leave rotation while their files are
    // swapped (the others serve the maintenance page meanwhile), unless that would leave none.
    let web_count = web_nodes(ctx.cfg).len();
    for chunk in all.chunks(plan.batch) {
        let web: Vec<Node> = ctx
            .cfg
            .nodes
            .iter()
            .filter(|n| n.role == Role::Web && chunk.contains(&n.name))
            .cloned()
            .collect();
        let drain = !web.is_empty() && web.len() < web_count;
        if drain {
            take_out_for_install(ctx, &web)?;
        }
        if let Err((n, m)) = install_nodes(ctx, chunk, &plan.target) {
            for w in &web {
                let state = if w.name == n {
                    AdminState::Maint
                } else {
                    AdminState::Ready
                };
                if drain || state == AdminState::Maint {
                    let _ = ctx.set_all(&w.name, &server_name(w), state);
                }
            }
            let resume = ctx.state.resume_command();
            return Err(ctx.fail(Some(&n), format!("{m}; the site is left in maintenance mode (the database is not upgraded yet): fix {n} and run `{resume}`")));
        }
        if drain {
            for w in &web {
                ctx.set_all(&w.name, &server_name(w), AdminState::Ready)?;
            }
        }
    }
    // 4. The database upgrade, once.
    let up = substitute(&ctx.cfg.roll.upgrade_command, ctx.cfg);
    let t = Instant::now();
    ctx.reporter
        .step(&format!("upgrading the database on {first_web}"));
    let out = ctx.ssh.run_long(ctx.conn(&first_web), &up)?;
    ctx.reporter.step_done();
    if !out.success() {
        let resume = ctx.state.resume_command();
        return Err(ctx.fail(
            Some(&first_web),
            format!(
                "upgrade_command failed ({}): {}; the site is left in maintenance mode: fix the cause and run `{resume}` (it runs the upgrade again and ends maintenance)",
                out.status(),
                out.tail()
            ),
        ));
    }
    ctx.log(Some(&first_web), None, "upgrade", "ok", t, &up);
    // 5. Maintenance off, then every web node healthy.
    let off = substitute(&ctx.cfg.roll.maintenance_off, ctx.cfg);
    let t = Instant::now();
    let out = ctx.ssh.run_long(ctx.conn(&first_web), &off)?;
    if !out.success() {
        return Err(ctx.fail(
            Some(&first_web),
            format!("maintenance_off failed: {}", out.tail()),
        ));
    }
    ctx.state.upgrade_pending = false;
    ctx.save_state();
    let secs = m_start.elapsed().as_secs_f64();
    ctx.log(
        Some(&first_web),
        None,
        "maintenance off",
        "ok",
        t,
        &format!("site in maintenance for {secs:.1}s"),
    );
    for n in web_nodes(ctx.cfg).into_iter().cloned().collect::<Vec<_>>() {
        if let Err(m) = wait_healthy(ctx, &n) {
            let _ = ctx.set_all(&n.name, &server_name(&n), AdminState::Maint);
            return Err(ctx.fail(
                Some(&n.name),
                format!("{m}; {} is out of rotation (maint)", n.name),
            ));
        }
    }
    Ok(secs)
}

/// Drains `nodes` on every LB and waits, at most `drain_timeout`, until none has a session in
/// flight or queued (one read of each LB per poll, whatever the batch size). A server that left
/// drain by itself (an agent-check, a reload) is drained again, with a warning. Returns when it
/// started and, at the timeout, what was still busy (empty: drained, logged as such).
fn drain_and_wait(ctx: &mut Ctx, nodes: &[Node]) -> Result<(Instant, Vec<String>), RollError> {
    for n in nodes {
        ctx.set_all(&n.name, &server_name(n), AdminState::Drain)?;
    }
    let t = Instant::now();
    let deadline = t + ctx.cfg.roll.drain_timeout;
    loop {
        let mut busy = Vec::new();
        for lb in &ctx.lbs {
            let servers = lb.servers()?;
            for n in nodes {
                let s = lb.find(&servers, &server_name(n))?;
                if !s.drain && !s.maint {
                    warn(ctx.reporter, &mut ctx.warnings, format!("{}: {} left drain by itself (an agent-check or a reload?); draining it again", lb.name, s.name));
                    lb.set_state(&s.name, AdminState::Drain)?;
                }
                if s.scur + s.qcur > 0 {
                    busy.push(format!(
                        "{} on {} ({} sessions, {} queued)",
                        n.name, lb.name, s.scur, s.qcur
                    ));
                }
            }
        }
        if busy.is_empty() {
            let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
            ctx.log(
                None,
                None,
                &format!("drained {}", names.join(", ")),
                "ok",
                t,
                "",
            );
            return Ok((t, busy));
        }
        if Instant::now() > deadline {
            return Ok((t, busy));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Database path: takes `nodes` out of rotation while their files are swapped. The site is in
/// maintenance mode, so no session is worth waiting longer than `drain_timeout` for: then the
/// nodes go to maint and the install goes on.
fn take_out_for_install(ctx: &mut Ctx, nodes: &[Node]) -> Result<(), RollError> {
    let (t, busy) = drain_and_wait(ctx, nodes)?;
    if !busy.is_empty() {
        maint_after_timeout(ctx, nodes, t, "site in maintenance", &busy)?;
    }
    Ok(())
}

/// After `drain_timeout`: `nodes` go to maint (no traffic, not even cookie-bound), and the
/// journal says why and what was still busy.
fn maint_after_timeout(
    ctx: &mut Ctx,
    nodes: &[Node],
    since: Instant,
    why: &str,
    busy: &[String],
) -> Result<(), RollError> {
    for n in nodes {
        ctx.set_all(&n.name, &server_name(n), AdminState::Maint)?;
    }
    ctx.log(
        None,
        None,
        "drain timeout",
        "warning",
        since,
        &format!("{why}: switched to maint: {}", busy.join("; ")),
    );
    Ok(())
}

/// `status`: what each node runs, how each LB sees it, the repository's newest version.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub newest: Option<String>,
    pub nodes: Vec<NodeStatus>,
    pub roll: Option<RollState>,
    /// Why the last roll's state could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roll_error: Option<String>,
    /// The cluster lock, when a roll holds it (or a dead one left it).
    pub lock: Option<LockStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LockStatus {
    pub node: String,
    #[serde(flatten)]
    pub lock: Lock,
    /// Its roll is known dead (see [`Lock::dead`]).
    pub dead: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: String,
    pub version: Option<String>,
    pub healthy: Option<bool>,
    pub lbs: BTreeMap<String, String>,
    pub error: Option<String>,
}

pub fn status(cfg: &Config) -> Result<Status, RollError> {
    // The repository may be over ssh: `open` reads it either way.
    let newest = crate::apt::open(cfg)
        .ok()
        .and_then(|(r, _mirror)| r.list().ok())
        .and_then(|l| l.first().map(|x| x.version.clone()));
    let ssh = Ssh::with_masters(
        &cfg.ssh,
        Some(
            cfg.base_dir
                .join(&cfg.roll.state_dir)
                .join("ssh-masters.json"),
        ),
    )?;
    let lbs: Vec<Lb> = cfg.lb.iter().map(Lb::from_config).collect();
    let lb_servers: Vec<(String, Result<Vec<crate::haproxy::Server>, HaError>)> =
        lbs.iter().map(|l| (l.name.clone(), l.servers())).collect();
    // Every node at once: connections, then one query each.
    let dests: Vec<(String, String)> = cfg
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.ssh.clone()))
        .collect();
    let mut answers: BTreeMap<String, Result<Installed, String>> = BTreeMap::new();
    let mut lock = None;
    let mut remote = None;
    for (r, (node, _)) in connect_and_query(&ssh, cfg, &dests).into_iter().zip(&dests) {
        let answer = match r {
            Ok((_, answer)) => answer.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        answers.insert(node.clone(), answer);
    }
    // Every node's health at once: a node that does not answer costs its timeout once.
    let health: Vec<Option<bool>> = std::thread::scope(|s| {
        let checks: Vec<_> = cfg
            .nodes
            .iter()
            .map(|n| s.spawn(move || healthy(cfg, n)))
            .collect();
        checks
            .into_iter()
            .map(|c| c.join().unwrap_or(Some(false)))
            .collect()
    });
    let mut nodes = Vec::new();
    for (n, healthy) in cfg.nodes.iter().zip(health) {
        let mut st = NodeStatus {
            name: n.name.clone(),
            role: if n.role == Role::Web { "web" } else { "cron" }.into(),
            version: None,
            healthy,
            lbs: BTreeMap::new(),
            error: None,
        };
        match answers.remove(&n.name) {
            Some(Ok(i)) => {
                if n.name == lock_node(cfg) {
                    remote = i.state;
                }
                if let Some(l) = i.lock {
                    lock = Some(LockStatus {
                        node: n.name.clone(),
                        dead: l.dead(),
                        lock: l,
                    });
                }
                st.version = i.version
            }
            Some(Err(e)) => st.error = Some(e),
            None => st.error = Some("no answer".into()),
        }
        if n.role == Role::Web {
            for (lb, servers) in &lb_servers {
                let text = match servers {
                    Ok(list) => match list.iter().find(|s| s.name == server_name(n)) {
                        Some(s) => format!(
                            "{}{}{} ({})",
                            s.status,
                            if s.drain { ", drain" } else { "" },
                            if s.maint { ", maint" } else { "" },
                            s.check_status
                        ),
                        None => "not in the backend".into(),
                    },
                    Err(e) => format!("unreachable: {e}"),
                };
                st.lbs.insert(lb.clone(), text);
            }
        }
        nodes.push(st);
    }
    let here = RollState::read(&cfg.base_dir.join(&cfg.roll.state_dir));
    let there = remote_state(lock_node(cfg), remote.as_deref());
    let (roll, roll_error) = match (here, there) {
        (Ok(h), Ok(t)) => (newer(h, t), None),
        (Err(e), _) => (None, Some(e)),
        (_, Err(e)) => (None, Some(e)),
    };
    Ok(Status {
        newest,
        nodes,
        roll,
        roll_error,
        lock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_query_answer_is_read_whole() {
        let i = parse_installed(
            "install ok installed|4.1.9+2-1|vh|dh\nsource /etc/apt/sources.list.d/m.list\nlock root@ci pid 42 since Mon (target 4.1.9+3-1)\nlock-idle 3\nstate {\"id\":\"1\"}\n",
        );
        assert_eq!(i.version.as_deref(), Some("4.1.9+2-1"));
        assert_eq!(i.db_hash.as_deref(), Some("dh"));
        assert_eq!(
            i.apt_source.as_deref(),
            Some("/etc/apt/sources.list.d/m.list")
        );
        assert_eq!(
            i.lock,
            Some(Lock {
                owner: "root@ci pid 42 since Mon (target 4.1.9+3-1)".into(),
                idle_secs: Some(3)
            })
        );
        assert_eq!(i.state.as_deref(), Some("{\"id\":\"1\"}"));
        // Removed (config files left): nothing installed, and no lock.
        let i = parse_installed("deinstall ok config-files|4.1.9+2-1|vh|dh\n");
        assert_eq!((i.version, i.lock), (None, None));
    }

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
