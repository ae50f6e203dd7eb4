//! The executor: its context (connections, LBs, journal, state) and [`walk`], which runs the
//! plan's steps in order; the steps every path shares (drain, wait idle, install, verify, health
//! down, ready, put back, purge) are here.

use super::*;

pub(super) struct Ctx<'a> {
    pub(super) cfg: &'a Config,
    pub(super) reporter: &'a dyn Reporter,
    pub(super) ssh: Ssh,
    pub(super) lbs: Vec<Lb>,
    pub(super) conns: BTreeMap<String, Conn>,
    pub(super) journal: Option<Journal>,
    pub(super) state_dir: PathBuf,
    pub(super) state: RollState,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) warnings: Vec<String>,
    pub(super) pkg: String,
    /// Each LB's process as first seen: a change means HAProxy was reloaded and dropped the
    /// runtime states this tool set.
    pub(super) processes: BTreeMap<String, crate::haproxy::Process>,
    /// A copy of the state could not be written on the lock node (said once).
    pub(super) remote_state_failed: std::cell::Cell<bool>,
    pub(super) notifier: Option<Arc<crate::notify::Notifier>>,
    /// When the roll began (for notifications' durations).
    pub(super) started: Instant,
    /// A journal or state write that failed: the roll stops at its next stop point.
    pub(super) unrecorded: Option<String>,
}

impl<'a> Ctx<'a> {
    /// A context with no connection yet ([`preflight`] makes them).
    pub(super) fn new(
        cfg: &'a Config,
        opts: &RollOptions,
        reporter: &'a dyn Reporter,
        state_dir: PathBuf,
        warnings: Vec<String>,
        started: Instant,
    ) -> Result<Ctx<'a>, RollError> {
        Ok(Ctx {
            cfg,
            reporter,
            ssh: Ssh::with_masters(&cfg.ssh, Some(state_dir.join("ssh-masters.json")))?,
            lbs: cfg.lb.iter().map(Lb::from_config).collect(),
            conns: BTreeMap::new(),
            journal: None,
            state_dir,
            state: RollState::default(),
            stop: opts.stop.clone(),
            warnings,
            notifier: opts.notifier.clone(),
            started,
            pkg: cfg.site.package.to_string(),
            processes: BTreeMap::new(),
            remote_state_failed: Default::default(),
            unrecorded: None,
        })
    }
    /// Notices a reloaded LB and sets again the states this roll had set on it (drain for the
    /// nodes being upgraded, maint for a failed one).
    pub(super) fn reapply_after_reload(&mut self) -> Result<(), RollError> {
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
                lb.set_state(&server_name(n), state)?;
                self.log(
                    Some(&node),
                    Some(&lb.name),
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
            self.unrecorded(what);
        }
    }

    /// A write of the journal or of the state failed: said at once (the first time), and the
    /// roll stops at its next stop point ([`Ctx::must_stop`]): a roll that cannot record what it
    /// does would leave `--resume` and `status` guessing.
    fn unrecorded(&mut self, what: String) {
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
        let jobs = nodes
            .iter()
            .map(|n| (&self.conns[n], script.to_string()))
            .collect();
        let (reporter, journal) = (self.reporter, &mut self.journal);
        let mut failed_write = None;
        let results = self.ssh.run_all_long_noting(jobs, |i, note| {
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
            self.unrecorded(what);
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
            self.unrecorded(what);
        }
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

    pub(super) fn journal_path(&self) -> PathBuf {
        self.journal
            .as_ref()
            .map(|j| j.path.clone())
            .unwrap_or_default()
    }

    pub(super) fn conn(&self, node: &str) -> &Conn {
        &self.conns[node]
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
        let node = step.node().map(String::from).or_else(|| match step {
            Step::WaitIdle { nodes } if nodes.len() == 1 => Some(nodes[0].clone()),
            _ => None,
        });
        if self.state.status == RollStatus::Running {
            self.state.status = RollStatus::Failed;
            self.state.failed_node = node.clone();
            self.state.reason = Some(error.to_string());
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

    pub(super) fn fail(&mut self, node: Option<&str>, message: String) -> RollError {
        self.state.status = RollStatus::Failed;
        self.state.failed_node = node.map(String::from);
        self.state.reason = Some(message.clone());
        self.save_state();
        self.log(
            node,
            None,
            "stop",
            StepResult::Failed,
            Instant::now(),
            &message,
        );
        RollError::Failed {
            message,
            journal: self.journal_path(),
        }
    }

    /// Sets `state` for `server` on every LB.
    pub(super) fn set_all(
        &mut self,
        node: &str,
        server: &str,
        state: AdminState,
    ) -> Result<(), RollError> {
        for lb in self.lbs.clone() {
            let t = Instant::now();
            match lb.set_state(server, state) {
                Ok(()) => self.log(
                    Some(node),
                    Some(&lb.name),
                    &format!("state {}", state.as_str()),
                    StepResult::Ok,
                    t,
                    "",
                ),
                Err(e) => {
                    self.log(
                        Some(node),
                        Some(&lb.name),
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

    /// What `names` run, asked of all of them at once (`dpkg-query` with the fields `build`
    /// records).
    pub(super) fn installed_on(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, Installed>, RollError> {
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
    pub(super) fn apt_install(&self, version: &str, download_only: bool) -> String {
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

    pub(super) fn interrupted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Runs the plan under the cluster lock: the journal and the state first (so a killed roll
/// leaves them), then the walk, and what a stopped walk leads to (the canary sent back,
/// `--auto-rollback`). A few lines over the mark for the state it writes, field by field.
pub(super) fn run_plan(
    ctx: &mut Ctx,
    plan: &Plan,
    installed: &BTreeMap<String, Installed>,
    previous_state: Option<RollState>,
    opts: &RollOptions,
    known: &notice::Known,
) -> Result<Walked, RollError> {
    let id = format!("{}", now_ms());
    ctx.journal =
        Some(
            Journal::create(&ctx.state_dir, &id).map_err(|source| RollError::Journal {
                dir: ctx.state_dir.clone(),
                source,
            })?,
        );
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
        failed_nodes: Vec::new(),
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
        StepResult::Info,
        Instant::now(),
        &plan.why,
    );
    if let Some(window) = &plan.frozen {
        ctx.log(
            None,
            None,
            "freeze overridden",
            StepResult::Warning,
            Instant::now(),
            &format!("--force: inside the freeze window {window}"),
        );
    }
    notice::start(ctx, opts, known);

    let stopped = match walk(ctx, plan, opts) {
        Ok(w) => {
            if plan.database() && ctx.interrupted() {
                // Stopping halfway would leave the site in maintenance, or on code its database
                // does not match: the database path, once begun, runs to its end.
                ctx.warn("interrupted (Ctrl-C or SIGTERM) during the database path: it was finished rather than leave the site in maintenance mode".into());
            }
            return Ok(w);
        }
        Err(s) => *s,
    };
    let step = stopped.step.clone();
    let error = match stopped {
        s if matches!(s.error, RollError::Canary { .. }) => {
            canary::send_back(ctx, plan, &s.upgraded, opts, s.error)
        }
        s if s.in_batch && opts.auto_rollback && !s.upgraded.is_empty() => {
            auto_rollback(ctx, plan, &s.upgraded, opts, s.error)
        }
        s => s.error,
    };
    Err(ctx.stopped(&step, &plan.target, error))
}

/// Why a walk stopped: the error, the nodes it had upgraded (for `--auto-rollback`), and
/// whether it stopped inside a batch of web nodes.
pub(super) struct Stopped {
    pub error: RollError,
    pub upgraded: Vec<String>,
    pub in_batch: bool,
    /// The step it stopped at.
    pub step: Step,
}

/// What a walk did.
#[derive(Default)]
pub(super) struct Walked {
    pub upgraded: Vec<String>,
    pub maintenance_secs: Option<f64>,
    pub canary: Option<Verdict>,
    pub failed: Vec<FailedNode>,
}

/// Runs `plan.steps` in order: the executor does what the plan says, and nothing else.
/// Consecutive steps of one kind run together (a batch's installs at once on every node, its
/// versions checked in one query), as one step would.
pub(super) fn walk(ctx: &mut Ctx, plan: &Plan, opts: &RollOptions) -> Result<Walked, Box<Stopped>> {
    let mut run = Run::default();
    let mut steps = plan.steps.clone();
    let mut i = 0;
    while i < steps.len() {
        let kind = std::mem::discriminant(&steps[i]);
        let end = steps[i..]
            .iter()
            .position(|s| std::mem::discriminant(s) != kind)
            .map_or(steps.len(), |p| i + p);
        let mut result = run.step(ctx, plan, opts, &steps[i..end]);
        if result.is_ok() && std::mem::take(&mut run.replan) {
            match replan(ctx.cfg, plan, &steps[end..], &run.failed_within_budget) {
                Some(rest) => {
                    let said: Vec<String> = rest.iter().map(|s| s.describe(&plan.target)).collect();
                    ctx.log(
                        None,
                        None,
                        "replanned",
                        StepResult::Info,
                        Instant::now(),
                        &said.join("; "),
                    );
                    steps.truncate(end);
                    steps.extend(rest);
                }
                None => {
                    let out: Vec<&str> = run
                        .failed_within_budget
                        .iter()
                        .map(|f| f.node.as_str())
                        .collect();
                    let resume = ctx.state.resume_command();
                    result = Err(ctx.fail(None, format!("{} failed and stay out of rotation: with --batch {} no room is left to take another node out (never more than the batch out); fix them and run `{resume}`", out.join(", "), plan.batch)));
                }
            }
        }
        if let Err(error) = result {
            return Err(Box::new(Stopped {
                error,
                in_batch: !run.batch.is_empty(),
                upgraded: run.upgraded,
                step: steps[i].clone(),
            }));
        }
        i = end;
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
    /// The web nodes drained by the last `Drain` and not yet back (`Ready`).
    batch: Vec<Node>,
    /// The batch's nodes that failed, and why (code-only: they stay out, the others go back).
    failed: Vec<(String, String)>,
    /// `--force-drain` switched the batch to maint: back to drain before its health checks.
    forced: bool,
    upgraded: Vec<String>,
    maintenance_since: Option<Instant>,
    maintenance_secs: Option<f64>,
    canary: Option<Verdict>,
    /// Web nodes that failed within `[roll] max_failed_nodes`: out of rotation (maint).
    failed_within_budget: Vec<FailedNode>,
    /// Set by a batch that ended with failures within the budget: what is left is planned again.
    replan: bool,
}

impl Run {
    /// One step, or a run of steps of one kind (`group`). Long on purpose: one arm per kind of
    /// step, each a few lines calling the function that does it, so the whole executor reads
    /// in one place.
    fn step(
        &mut self,
        ctx: &mut Ctx,
        plan: &Plan,
        opts: &RollOptions,
        group: &[Step],
    ) -> Result<(), RollError> {
        let names: Vec<String> = group
            .iter()
            .filter_map(|s| s.node().map(String::from))
            .collect();
        let target = plan.target.as_str();
        match &group[0] {
            Step::PutBack { .. } => {
                for n in &names {
                    put_back(ctx, plan, n)?;
                }
            }
            Step::Drain { .. } => {
                let nodes = config_nodes(ctx.cfg, &names);
                if !plan.database() {
                    if ctx.interrupted() {
                        let msg = format!(
                            "stopped before batch {}; every node is in rotation; run again with --resume",
                            names.join(", ")
                        );
                        return Err(ctx.interrupt(msg));
                    }
                    if let Some(what) = ctx.unrecorded.clone() {
                        let msg = format!(
                            "{what}: stopped before batch {}, with every node in rotation; fix it and run `{}`",
                            names.join(", "),
                            ctx.state.resume_command()
                        );
                        return Err(ctx.fail(None, msg));
                    }
                    self.batch = nodes.clone();
                    self.failed.clear();
                    self.forced = false;
                    guard(ctx, &nodes, opts)?;
                    ctx.reporter.step(&format!(
                        "draining {} and waiting for their sessions to end",
                        names.join(", ")
                    ));
                } else {
                    self.batch = nodes.clone();
                }
                for n in &nodes {
                    ctx.set_all(&n.name, &server_name(n), AdminState::Drain)?;
                }
            }
            Step::WaitIdle { .. } => {
                let batch = self.batch.clone();
                let (t, busy) = wait_idle(ctx, &batch)?;
                if !busy.is_empty() {
                    if plan.database() {
                        // The site is in maintenance: no session is worth waiting longer for.
                        maint_after_timeout(ctx, &batch, t, "site in maintenance", &busy)?;
                    } else if opts.force_drain {
                        maint_after_timeout(ctx, &batch, t, "--force-drain", &busy)?;
                        self.forced = true;
                    } else {
                        for n in &batch {
                            ctx.set_all(&n.name, &server_name(n), AdminState::Ready)?;
                        }
                        ctx.reporter.step_done();
                        return Err(ctx.fail(
                            None,
                            format!("sessions did not end within drain_timeout {}: {}; the nodes are back in rotation; raise drain_timeout or use --force-drain", crate::config::format_duration(ctx.cfg.roll.drain_timeout), busy.join("; ")),
                        ));
                    }
                }
                if !plan.database() {
                    ctx.reporter.step_done();
                }
            }
            Step::Install { .. } => {
                let failed = install(ctx, &names, target);
                self.failures(ctx, plan, &names, failed)?;
            }
            Step::Verify { .. } => {
                let todo: Vec<String> = names
                    .iter()
                    .filter(|n| !self.failed.iter().any(|(f, _)| f == *n))
                    .cloned()
                    .collect();
                let failed = verify(ctx, &todo, target);
                self.failures(ctx, plan, &names, failed)?;
                // Web nodes of a code-only batch count once back in rotation (`Ready`).
                if plan.database() || self.batch.is_empty() {
                    self.upgraded.extend(todo);
                }
            }
            Step::HealthDown { .. } => {
                for n in config_nodes(ctx.cfg, &names) {
                    if self.failed.iter().any(|(f, _)| f == &n.name) {
                        continue;
                    }
                    // HAProxy does not check a server in maint: back to drain (still no new
                    // traffic), or the checks would never see the new code.
                    if self.forced {
                        ctx.set_all(&n.name, &server_name(&n), AdminState::Drain)?;
                    }
                    health_down(ctx, &n);
                }
            }
            Step::Reload { .. } => {
                let todo: Vec<String> = names
                    .iter()
                    .filter(|n| !self.failed.iter().any(|(f, _)| f == *n))
                    .cloned()
                    .collect();
                let failed = reload(ctx, &todo);
                self.failures(ctx, plan, &names, failed)?;
            }
            Step::Probe { path, .. } => {
                for n in config_nodes(ctx.cfg, &names) {
                    if self.failed.iter().any(|(f, _)| f == &n.name) {
                        continue;
                    }
                    ctx.reporter
                        .step(&format!("asking {}'s PHP which release it runs", n.name));
                    let r = wait_release(ctx, &n, path, target);
                    ctx.reporter.step_done();
                    if let Err(m) = r {
                        let failed = vec![(n.name.clone(), format!("{}: {m}", n.name))];
                        self.failures(ctx, plan, &names, failed)?;
                    }
                }
            }
            Step::WaitHealthy { .. } => {
                for n in config_nodes(ctx.cfg, &names) {
                    if plan.database() {
                        // After maintenance off: every web node must serve.
                        if let Err(m) = wait_healthy(ctx, &n) {
                            let _ = ctx.set_all(&n.name, &server_name(&n), AdminState::Maint);
                            return Err(ctx.fail(
                                Some(&n.name),
                                format!("{m}; {} is out of rotation (maint)", n.name),
                            ));
                        }
                        continue;
                    }
                    if self.failed.iter().any(|(f, _)| f == &n.name) {
                        continue;
                    }
                    ctx.reporter
                        .step(&format!("waiting for {} to be healthy", n.name));
                    if let Err(m) = wait_healthy(ctx, &n) {
                        self.failed.push((n.name.clone(), m.to_string()));
                    }
                    ctx.reporter.step_done();
                }
            }
            Step::Ready { .. } => {
                // The batch stays set until it is back: a stop in it is a stop inside a batch.
                let batch = self.batch.clone();
                if plan.database() {
                    for n in &batch {
                        ctx.set_all(&n.name, &server_name(n), AdminState::Ready)?;
                    }
                } else {
                    let before = self.failed_within_budget.len();
                    // The canary's batch has no budget: a canary that fails to install or to
                    // come up healthy is the release failing its test.
                    let canary = plan
                        .canary
                        .as_ref()
                        .is_some_and(|c| batch.iter().any(|n| n.name == c.node));
                    let budget = if canary {
                        0
                    } else {
                        ctx.cfg.roll.max_failed_nodes as usize
                    };
                    self.replan = end_batch(ctx, &batch, &self.failed, before, budget)?;
                    let failed = std::mem::take(&mut self.failed);
                    let is_failed = |n: &str| failed.iter().any(|(f, _)| f == n);
                    self.upgraded
                        .extend(batch.into_iter().map(|n| n.name).filter(|n| !is_failed(n)));
                    self.failed_within_budget.extend(
                        failed
                            .into_iter()
                            .map(|(node, reason)| FailedNode { node, reason }),
                    );
                }
                self.batch.clear();
                self.failed.clear();
            }
            Step::Download { .. } => download(ctx, &names, target)?,
            Step::MaintenanceOn { node } => {
                self.maintenance_since = Some(Instant::now());
                maintenance_on(ctx, plan, node)?;
            }
            Step::Upgrade { node } => upgrade(ctx, node)?,
            Step::MaintenanceOff { node } => {
                let since = self.maintenance_since.unwrap_or_else(Instant::now);
                self.maintenance_secs = Some(maintenance_off(ctx, node, since)?);
            }
            Step::Purge { node } => purge_caches(ctx, node),
            Step::Canary { .. } => self.canary = Some(canary::watch(ctx, plan, opts)?),
        }
        Ok(())
    }

    /// Installs or version checks that failed on `names`: on the database path the roll stops
    /// there (the failed web node out, the others back), and so it does for a cron node; in a
    /// code-only batch the failed nodes are kept for the batch's end.
    fn failures(
        &mut self,
        ctx: &mut Ctx,
        plan: &Plan,
        names: &[String],
        failed: Vec<(String, String)>,
    ) -> Result<(), RollError> {
        let Some((node, why)) = failed.first().cloned() else {
            return Ok(());
        };
        if plan.database() {
            for w in web_nodes(ctx.cfg) {
                if !names.contains(&w.name) {
                    continue;
                }
                if failed.iter().any(|(f, _)| f == &w.name) {
                    let _ = ctx.set_all(&w.name, &server_name(w), AdminState::Maint);
                } else if self.batch.iter().any(|b| b.name == w.name) {
                    let _ = ctx.set_all(&w.name, &server_name(w), AdminState::Ready);
                }
            }
            self.batch.clear();
            let resume = ctx.state.resume_command();
            return Err(ctx.fail(Some(&node), format!("{why}; the site is left in maintenance mode (the database is not upgraded yet): fix {node} and run `{resume}`")));
        }
        if self.batch.is_empty() {
            return Err(ctx.fail(Some(&node), why));
        }
        self.failed.extend(failed);
        Ok(())
    }
}

/// The config's nodes named in `names`, in that order.
fn config_nodes(cfg: &Config, names: &[String]) -> Vec<Node> {
    names
        .iter()
        .filter_map(|n| cfg.nodes.iter().find(|c| &c.name == n).cloned())
        .collect()
}

/// A node an earlier run left out of rotation, already on the target: back in when healthy.
/// One still unhealthy stops the roll: going on would put more than `batch` servers out, and
/// ending "done" would leave a node out that no later run knows as its own.
fn put_back(ctx: &mut Ctx, plan: &Plan, node: &str) -> Result<(), RollError> {
    let Some(n) = ctx.cfg.nodes.iter().find(|n| n.name == node).cloned() else {
        return Ok(());
    };
    // Healthy, and its PHP runs the target (a stale PHP may be why an earlier run left it out).
    let checked = health_now(ctx.cfg, &n).and_then(|()| match plan.probe.as_deref() {
        Some(path) if n.http.is_some() => wait_release(ctx, &n, path, &plan.target),
        _ => Ok(()),
    });
    match checked {
        Ok(()) => {
            ctx.reporter.step(&format!("{node}: on {} and healthy, left out of rotation by an earlier run: putting it back", plan.target));
            ctx.set_all(node, &server_name(&n), AdminState::Ready)?;
            ctx.reporter.step_done();
            Ok(())
        }
        Err(why) => Err(ctx.fail(
            Some(node),
            format!(
                "{node} is on {} but not healthy ({why}); it stays out of rotation, where an earlier run left it: fix it and run again",
                plan.target
            ),
        )),
    }
}

/// Marks the (drained, idle) server down on every LB: the LBs' last check may predate the
/// install, so only checks of the new code can bring it back up. A refusal is a warning.
fn health_down(ctx: &mut Ctx, n: &Node) {
    let step = Step::HealthDown {
        node: n.name.clone(),
    };
    for lb in ctx.lbs.clone() {
        let t = Instant::now();
        let cmd = format!("set server {}/{} health down", lb.backend, server_name(n));
        match lb.send(&cmd) {
            Ok(_) => ctx.log_step(&step, Some(&lb.name), StepResult::Ok, t, ""),
            Err(e) => ctx.log_step(
                &step,
                Some(&lb.name),
                StepResult::Warning,
                t,
                &e.to_string(),
            ),
        }
    }
}

/// `purge_command` once, on `node`, with every node on the target. A failure is a warning: the
/// code is in place and serving; only its caches are stale until the purge is run by hand.
pub(super) fn purge_caches(ctx: &mut Ctx, node: &str) {
    let purge = Step::Purge {
        node: node.to_string(),
    };
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
        None => ctx.log_step(&purge, None, StepResult::Ok, t, &cmd),
        Some(why) => {
            ctx.log_step(&purge, None, StepResult::Failed, t, &why);
            ctx.warn(format!(
                "{node}: purge_command failed: {why}; every node runs the new code, but its caches are stale until `{cmd}` runs"
            ));
        }
    }
}

/// Installs the target on `nodes` in parallel: the nodes where it failed, and why.
pub(super) fn install(ctx: &mut Ctx, nodes: &[String], target: &str) -> Vec<(String, String)> {
    let t = Instant::now();
    ctx.reporter
        .step(&format!("installing {target} on {}", nodes.join(", ")));
    let script = ctx.apt_install(target, false);
    let results = ctx.run_apt(nodes, &script);
    let mut failed = Vec::new();
    for (n, r) in nodes.iter().zip(results) {
        let step = Step::Install { node: n.clone() };
        match r {
            Ok(o) if o.success() => ctx.log_step(&step, None, StepResult::Ok, t, target),
            Ok(o) => {
                let m = format!(
                    "{n}: apt-get install {}={target} failed ({}): {}",
                    ctx.pkg,
                    o.status(),
                    o.tail()
                );
                ctx.log_step(&step, None, StepResult::Failed, t, &m);
                failed.push((n.clone(), m));
            }
            Err(e) => {
                ctx.log_step(&step, None, StepResult::Failed, t, &e.to_string());
                failed.push((n.clone(), e.to_string()));
            }
        }
    }
    ctx.reporter.step_done();
    failed
}

/// `[roll] reload_command` on `nodes` at once, after their install: what makes their PHP serve
/// the new code. The nodes where it failed, and why.
pub(super) fn reload(ctx: &mut Ctx, nodes: &[String]) -> Vec<(String, String)> {
    let Some(cmd) = ctx.cfg.roll.reload_command.as_deref() else {
        return Vec::new();
    };
    if nodes.is_empty() {
        return Vec::new();
    }
    let cmd = substitute(cmd, ctx.cfg);
    let t = Instant::now();
    ctx.reporter
        .step(&format!("reloading PHP on {}", nodes.join(", ")));
    let jobs = nodes.iter().map(|n| (&ctx.conns[n], cmd.clone())).collect();
    let results = ctx.ssh.run_all_long_noting(jobs, |_, _| {});
    ctx.reporter.step_done();
    let mut failed = Vec::new();
    for (n, r) in nodes.iter().zip(results) {
        let step = Step::Reload { node: n.clone() };
        let why = match r {
            Ok(o) if o.success() => {
                ctx.log_step(&step, None, StepResult::Ok, t, &cmd);
                continue;
            }
            Ok(o) => format!(
                "{n}: reload_command `{cmd}` failed ({}): {}",
                o.status(),
                o.tail()
            ),
            Err(e) => format!("{n}: reload_command `{cmd}`: {e}"),
        };
        ctx.log_step(&step, None, StepResult::Failed, t, &why);
        failed.push((n.clone(), why));
    }
    failed
}

/// Checks, in one query per node, that `nodes` run the target: the ones that do not, and why.
pub(super) fn verify(ctx: &mut Ctx, nodes: &[String], target: &str) -> Vec<(String, String)> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let t = Instant::now();
    let now = match ctx.installed_on(nodes) {
        Ok(now) => now,
        Err(e) => return vec![(nodes[0].clone(), e.to_string())],
    };
    let mut failed = Vec::new();
    for n in nodes {
        let step = Step::Verify { node: n.clone() };
        let v = &now[n];
        if v.version.as_deref() == Some(target) {
            ctx.log_step(&step, None, StepResult::Ok, t, target);
            continue;
        }
        let m = format!(
            "{n}: after install dpkg reports {:?}, not {target}",
            v.version
        );
        ctx.log_step(&step, None, StepResult::Failed, t, &m);
        failed.push((n.clone(), m));
    }
    failed
}

/// Waits, at most `drain_timeout`, until none of the drained `nodes` has a session in flight
/// or queued on any LB (one read of each LB per poll, whatever the batch size). A server that
/// left drain by itself (an agent-check, a reload) is drained again, with a warning. Returns
/// when it started and, at the timeout, what was still busy (empty: drained, logged as such).
pub(super) fn wait_idle(
    ctx: &mut Ctx,
    nodes: &[Node],
) -> Result<(Instant, Vec<String>), RollError> {
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
            let nodes = nodes.iter().map(|n| n.name.clone()).collect();
            ctx.log_step(&Step::WaitIdle { nodes }, None, StepResult::Ok, t, "");
            return Ok((t, busy));
        }
        if Instant::now() > deadline {
            return Ok((t, busy));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// After `drain_timeout`: `nodes` go to maint (no traffic, not even cookie-bound), and the
/// journal says why and what was still busy.
pub(super) fn maint_after_timeout(
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
        StepResult::Warning,
        since,
        &format!("{why}: switched to maint: {}", busy.join("; ")),
    );
    Ok(())
}
