//! The executor's context: the drivers of the LBs and the nodes, the journal and the state it
//! writes as it goes, the warnings it gathers, and the stop flag. What changes a server's state
//! on every LB, what a stop writes, and how the journal is kept are here, once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::actions::Failure;
use super::drivers::{Balancer, Nodes};
use super::step::Step;
use super::{warn, RollError, RollOptions};
use crate::cluster::lock::{self, REMOTE_STATE};
use crate::cluster::probe::apt_sources;
use crate::cluster::{lock_node, server_name};
use crate::config::{Config, SiteLayout};
use crate::haproxy::{AdminState, Process};
use crate::journal::{now_ms, Entry, Journal, RollState, RollStatus, StepResult};
use crate::report::Reporter;
use crate::ssh::{quote, Output, SshError};

/// Where a roll is, as the executor walks it.
pub(super) struct Ctx<'a> {
    cfg: &'a Config,
    reporter: &'a dyn Reporter,
    lbs: Vec<Box<dyn Balancer + 'a>>,
    nodes: Box<dyn Nodes + 'a>,
    journal: Option<Journal>,
    state_dir: PathBuf,
    state: RollState,
    stop: Arc<AtomicBool>,
    warnings: Vec<String>,
    /// Each LB's process as first seen: a change means HAProxy was reloaded and dropped the
    /// runtime states this tool set.
    processes: BTreeMap<String, Process>,
    /// A copy of the state could not be written on the lock node (said once).
    remote_state_failed: bool,
    notifier: Option<Arc<crate::notify::Notifier>>,
    /// When the roll began (for notifications' durations).
    started: Instant,
    /// A journal or state write that failed: the roll stops at its next stop point.
    unrecorded: Option<String>,
}

impl<'a> Ctx<'a> {
    pub(super) fn cfg(&self) -> &'a Config {
        self.cfg
    }

    pub(super) fn reporter(&self) -> &'a dyn Reporter {
        self.reporter
    }

    pub(super) fn lbs(&self) -> &[Box<dyn Balancer + 'a>] {
        &self.lbs
    }

    pub(super) fn nodes(&self) -> &dyn Nodes {
        self.nodes.as_ref()
    }

    /// The site's package name.
    pub(super) fn pkg(&self) -> &str {
        &self.cfg.site.package.0
    }

    /// The package that holds `version`: the site's, or in the releases layout its own.
    pub(super) fn package_of(&self, version: &str) -> String {
        match self.cfg.site.layout {
            SiteLayout::InPlace => self.pkg().to_string(),
            SiteLayout::Releases => self.cfg.site.release_package(version),
        }
    }

    pub(super) fn notifier(&self) -> Option<&Arc<crate::notify::Notifier>> {
        self.notifier.as_ref()
    }

    /// When the roll began.
    pub(super) fn started(&self) -> Instant {
        self.started
    }

    /// The roll's state, as written so far.
    pub(super) fn state(&self) -> &RollState {
        &self.state
    }

    /// The roll's state, to change; [`Ctx::save_state`] writes it.
    pub(super) fn state_mut(&mut self) -> &mut RollState {
        &mut self.state
    }

    /// A journal or state write that failed (the roll stops at its next stop point).
    pub(super) fn unrecorded(&self) -> Option<String> {
        self.unrecorded.clone()
    }

    pub(super) fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Opens this roll's journal, `roll-<id>.jsonl` in the state folder.
    pub(super) fn open_journal(&mut self, id: &str) -> Result<(), RollError> {
        let journal =
            Journal::create(&self.state_dir, id).map_err(|source| RollError::Journal {
                dir: self.state_dir.clone(),
                source,
            })?;
        self.journal = Some(journal);
        Ok(())
    }

    /// The journal's file, once open.
    pub(super) fn journal_file(&self) -> Option<PathBuf> {
        self.journal.as_ref().map(|j| j.path.clone())
    }

    /// Every line journalled so far.
    pub(super) fn journal_entries(&self) -> &[Entry] {
        self.journal.as_ref().map_or(&[], |j| &j.entries)
    }

    /// The executor's context over `lbs` and `nodes` (each LB's process as the preflight saw
    /// it in `processes`), with no journal yet ([`super::execute::run_plan`] opens it).
    #[expect(
        clippy::too_many_arguments,
        reason = "each is a part of the roll the caller made, in one place"
    )]
    pub(super) fn new(
        cfg: &'a Config,
        opts: &RollOptions,
        reporter: &'a dyn Reporter,
        state_dir: PathBuf,
        warnings: Vec<String>,
        started: Instant,
        lbs: Vec<Box<dyn Balancer + 'a>>,
        nodes: Box<dyn Nodes + 'a>,
        processes: BTreeMap<String, Process>,
    ) -> Ctx<'a> {
        Ctx {
            cfg,
            reporter,
            lbs,
            nodes,
            journal: None,
            state_dir,
            state: RollState::default(),
            stop: opts.stop.clone(),
            warnings,
            notifier: opts.notifier.clone(),
            started,
            processes,
            remote_state_failed: false,
            unrecorded: None,
        }
    }

    /// Notices a reloaded LB and sets again the states this roll had set on it (drain for the
    /// nodes being upgraded, maint for a failed one).
    pub(super) fn reapply_after_reload(&mut self) -> Result<(), RollError> {
        for i in 0..self.lbs.len() {
            let now = self.lbs[i].process()?;
            let name = self.lbs[i].name().to_string();
            let Some(before) = self.processes.get(&name).cloned() else {
                self.processes.insert(name, now);
                continue;
            };
            if before.pid == now.pid && now.uptime_sec >= before.uptime_sec {
                continue;
            }
            self.processes.insert(name.clone(), now);
            let msg = format!(
                "{name} was reloaded during the roll (its runtime server states were lost): setting them again"
            );
            warn(self.reporter, &mut self.warnings, msg.clone());
            self.log(
                None,
                Some(&name),
                "reload detected",
                StepResult::Warning,
                Instant::now(),
                &msg,
            );
            for node in self.state.out_of_rotation.clone() {
                let Some(n) = self.cfg.nodes.iter().find(|n| n.name == node) else {
                    continue;
                };
                let state = if self.state.failed_node.as_deref() == Some(node.as_str())
                    || self.state.failed_nodes.contains(&node)
                {
                    AdminState::Maint
                } else {
                    AdminState::Drain
                };
                self.lbs[i].set_state(&server_name(n), state)?;
                self.log(
                    Some(&node),
                    Some(&name),
                    &format!("state {} (again)", state.as_str()),
                    StepResult::Ok,
                    Instant::now(),
                    "",
                );
            }
        }
        Ok(())
    }

    pub(super) fn log(
        &mut self,
        node: Option<&str>,
        lb: Option<&str>,
        action: &str,
        result: StepResult,
        started: Instant,
        detail: &str,
    ) {
        let Some(j) = &mut self.journal else {
            return;
        };
        let written = j.log(Entry {
            time_ms: now_ms(),
            node: node.map(String::from),
            lb: lb.map(String::from),
            action: action.to_string(),
            result,
            duration_ms: started.elapsed().as_millis(),
            detail: detail.to_string(),
        });
        if let Err(e) = written {
            let what = format!("cannot write the journal {}: {e}", j.path.display());
            self.said_unrecorded(what);
        }
    }

    /// A write of the journal or of the state failed: said at once (the first time), and the
    /// roll stops at its next stop point (the next batch's `Guard` step): a roll that cannot
    /// record what it does would leave `--resume` and `status` guessing.
    fn said_unrecorded(&mut self, what: String) {
        if self.unrecorded.is_none() {
            warn(
                self.reporter,
                &mut self.warnings,
                format!("{what}; the roll stops before its next batch"),
            );
            self.unrecorded = Some(what);
        }
    }

    /// Journals a planned step under the action and node the plan gives it.
    pub(super) fn log_step(
        &mut self,
        step: &Step,
        lb: Option<&str>,
        result: StepResult,
        started: Instant,
        detail: &str,
    ) {
        let action = step.action();
        self.log(step.node(), lb, &action, result, started, detail);
    }

    /// Runs an apt script (see [`Ctx::apt_install`]) on `nodes` at once. A node that waits for
    /// another apt's lock says so on screen and in the journal as it happens, rather than
    /// after up to `apt_lock_timeout` of silence.
    pub(super) fn run_apt(
        &mut self,
        nodes: &[String],
        script: &str,
    ) -> Vec<Result<Output, SshError>> {
        let t = Instant::now();
        let (reporter, journal) = (self.reporter, &mut self.journal);
        let mut failed_write = None;
        let results = self.nodes.run_all_long(nodes, script, &mut |i, note| {
            reporter.note(&format!("{}: {note}", nodes[i]));
            if let Some(j) = journal.as_mut() {
                let written = j.log(Entry {
                    time_ms: now_ms(),
                    node: Some(nodes[i].clone()),
                    lb: None,
                    action: "apt lock".into(),
                    result: StepResult::Waiting,
                    duration_ms: t.elapsed().as_millis(),
                    detail: note.into(),
                });
                if let Err(e) = written {
                    failed_write = Some(format!(
                        "cannot write the journal {}: {e}",
                        j.path.display()
                    ));
                }
            }
        });
        if let Some(what) = failed_write {
            self.said_unrecorded(what);
        }
        results
    }

    /// Says `msg` at once (a roll that fails later must not lose it) and keeps it for `--json`.
    pub(super) fn warn(&mut self, msg: String) {
        warn(self.reporter, &mut self.warnings, msg);
    }

    /// Writes the state in the state folder and a copy on the lock node ([`REMOTE_STATE`]),
    /// where a run from another machine finds it.
    pub(super) fn save_state(&mut self) {
        if let Err(e) = self.state.write(&self.state_dir) {
            let what = format!(
                "cannot write the roll's state {}: {e}",
                RollState::path(&self.state_dir).display()
            );
            self.said_unrecorded(what);
        }
        let node = lock_node(self.cfg);
        let script = lock::write_state(&self.state);
        let ok = matches!(self.nodes.run(node, &script), Ok(o) if o.success());
        if !ok && !std::mem::replace(&mut self.remote_state_failed, true) {
            self.reporter.warn(&format!(
                "{node}: cannot keep a copy of the roll's state in {REMOTE_STATE}: a run from another machine will not know what this one did (the copy in {} is kept)",
                self.state_dir.display()
            ));
        }
    }

    pub(super) fn journal_path(&self) -> PathBuf {
        self.journal
            .as_ref()
            .map(|j| j.path.clone())
            .unwrap_or_default()
    }

    /// Stops the roll on Ctrl-C or SIGTERM, between steps: the state says so, for `--resume`.
    pub(super) fn interrupt(&mut self, message: String) -> RollError {
        self.state.status = RollStatus::Interrupted;
        self.save_state();
        self.log(
            None,
            None,
            "interrupt",
            StepResult::Info,
            Instant::now(),
            &message,
        );
        RollError::Interrupted {
            message,
            journal: self.journal_path(),
        }
    }

    /// What a stop before this run's maintenance window leaves behind: nothing, unless an
    /// earlier roll stopped with the site in maintenance and its upgrade left to run.
    pub(super) fn untouched(&self) -> &'static str {
        if self.state.upgrade_pending {
            "this run changed nothing, but the site is still in maintenance mode from the earlier roll: run again to finish its database upgrade"
        } else {
            "nothing was changed"
        }
    }

    /// The end of a walk that stopped at `step` with `error`: whatever stopped it (a step that
    /// failed, an LB or node that stopped answering mid-roll, a write that failed, the canary,
    /// Ctrl-C), the journal's last line says so, naming the step, its node and the cause, and
    /// the state is no longer `running`, so `status` and the next `roll` tell the truth. An
    /// error that does not name the journal yet (an LB's, an SSH connection's) is wrapped in
    /// [`RollError::Stopped`], which does.
    pub(super) fn stopped(&mut self, step: &Step, target: &str, error: RollError) -> RollError {
        let recorded = self
            .journal
            .as_ref()
            .and_then(|j| j.entries.last())
            .is_some_and(|e| e.action == "stop" || e.action == "interrupt");
        // The step's node; for a batch's step (guard, wait idle), its node when it is one.
        let nodes = step.nodes();
        let node = (nodes.len() == 1).then(|| nodes[0].clone());
        if self.state.status == RollStatus::Running {
            self.state.status = RollStatus::Failed;
            self.state.failed_node = node.clone();
            self.state.reason = Some(error.reason());
        }
        let at = step.describe(target);
        if !recorded {
            let result = if matches!(error, RollError::Interrupted { .. }) {
                StepResult::Info
            } else {
                StepResult::Failed
            };
            let detail = format!("at {at}: {error}");
            let lb = error.lb().map(String::from);
            self.log(
                node.as_deref(),
                lb.as_deref(),
                "stop",
                result,
                Instant::now(),
                &detail,
            );
        }
        self.save_state();
        if error.journal().is_some() {
            return error;
        }
        RollError::Stopped {
            at,
            cause: Box::new(error),
            journal: self.journal_path(),
        }
    }

    /// The roll stops on `failure` (a node that failed a step), with what the roll leaves
    /// behind and what to do (`then`): the state and the journal say so.
    pub(super) fn node_failed(&mut self, failure: Failure, then: String) -> RollError {
        let message = format!("{failure}; {then}");
        self.state.status = RollStatus::Failed;
        self.state.failed_node = Some(failure.node.clone());
        self.state.reason = Some(message.clone());
        self.save_state();
        let node = failure.node.clone();
        let detail = format!("at {}: {message}", failure.step);
        let now = Instant::now();
        self.log(Some(&node), None, "stop", StepResult::Failed, now, &detail);
        RollError::NodeFailed {
            failure: Box::new(failure),
            then,
            journal: self.journal_path(),
        }
    }

    /// The roll stops with `error` (one that names the journal): the state and the journal's
    /// last line say so.
    pub(super) fn stop_with(&mut self, node: Option<&str>, error: RollError) -> RollError {
        let reason = error.reason();
        self.state.status = RollStatus::Failed;
        self.state.failed_node = node.map(String::from);
        self.state.reason = Some(reason.clone());
        self.save_state();
        self.log(
            node,
            None,
            "stop",
            StepResult::Failed,
            Instant::now(),
            &reason,
        );
        error
    }

    /// The roll stops with `message` (about `node`, if one): the state and the journal say so.
    pub(super) fn fail(&mut self, node: Option<&str>, message: String) -> RollError {
        let error = RollError::Failed {
            message,
            journal: self.journal_path(),
        };
        self.stop_with(node, error)
    }

    /// Sets `state` for `server` on every LB.
    pub(super) fn set_all(
        &mut self,
        node: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), RollError> {
        for i in 0..self.lbs.len() {
            let t = Instant::now();
            let name = self.lbs[i].name().to_string();
            match self.lbs[i].set_state(server, state) {
                Ok(()) => self.log(
                    Some(node),
                    Some(&name),
                    &format!("state {}", state.as_str()),
                    StepResult::Ok,
                    t,
                    "",
                ),
                Err(e) => {
                    self.log(
                        Some(node),
                        Some(&name),
                        &format!("state {}", state.as_str()),
                        StepResult::Failed,
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

    /// Refreshes the site's own apt source only, then installs (or only downloads) `version`.
    ///
    /// Another apt on the node (unattended-upgrades) may hold one of apt's locks. apt 2.6 can
    /// wait for dpkg's lock itself (`DPkg::Lock::Timeout`), but not for the lists' and the
    /// archives' (measured), and it waits without a word. So each command is tried again
    /// every 2 s while a lock is what it failed on, up to `[roll] apt_lock_timeout` in all, and
    /// the first failure of each wait is a [`crate::ssh::NOTE`] line naming the lock and
    /// who holds it (`run_apt` shows it at once).
    ///
    /// In the releases layout a release goes beside the live one: with `need_kib` (its
    /// `Installed-Size`), the disk under `releases_dir` is checked first.
    pub(super) fn apt_install(
        &self,
        version: &str,
        download_only: bool,
        need_kib: Option<u64>,
    ) -> String {
        let [list, sources] = apt_sources(self.pkg());
        let space = match (self.cfg.site.layout, need_kib) {
            (SiteLayout::Releases, Some(kib)) => {
                space_check_script(&self.cfg.site.releases_dir(), version, kib)
            }
            _ => String::new(),
        };
        space + &format!(
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
            what = quote(&format!("{}={version}", self.package_of(version))),
        )
    }

    pub(super) fn interrupted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The shell lines that stop (exit 100, saying why) when the disk under `dir` (or its nearest
/// existing parent) has less than `kib` and a tenth free.
fn space_check_script(dir: &str, version: &str, kib: u64) -> String {
    let need = kib + kib / 10;
    format!(
        "p={d}; while [ ! -d \"$p\" ]; do p=$(dirname \"$p\"); done; \
         free=$(df -Pk \"$p\" | awk 'NR==2 {{print $4}}'); \
         if [ \"$free\" -lt {need} ]; then echo \"not enough space for release {version} under {dir}: {need} KiB needed (its Installed-Size and a tenth), $free KiB free\" >&2; exit 100; fi; ",
        d = quote(dir),
    )
}

#[cfg(test)]
mod tests {
    use super::space_check_script;

    /// The check run by the real shell and df: a folder not made yet is measured by its parent;
    /// more than the disk holds stops with the figures, less goes on.
    #[test]
    fn a_release_that_does_not_fit_is_refused_before_apt() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("not/made/releases");
        let dir = dir.to_str().unwrap();
        let run = |kib| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(space_check_script(dir, "2-1", kib) + "echo fits")
                .output()
                .unwrap()
        };
        let small = run(1);
        assert!(small.status.success());
        assert_eq!(String::from_utf8_lossy(&small.stdout).trim(), "fits");
        let huge = run(1 << 50);
        assert_eq!(huge.status.code(), Some(100));
        let err = String::from_utf8_lossy(&huge.stderr);
        assert!(
            err.contains("not enough space for release 2-1") && err.contains("KiB free"),
            "{err}"
        );
    }
}
