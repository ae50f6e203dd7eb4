//! The steps that touch a node or the LBs for one node, as the executor runs them: install,
//! verify, reload PHP, wait until idle, health down, put back, purge. A node that fails one is
//! a [`Failure`] with a typed [`Cause`]; what the roll does about it is the plan's
//! ([`super::step::OnFail`]), not theirs.

use std::time::{Duration, Instant};

use super::ctx::Ctx;
use super::health::{wait_own_health, wait_release};
use super::step::Step;
use super::{Plan, RollError};
use crate::cluster::health::Unhealthy;
use crate::cluster::server_name;
use crate::config::{Config, Node, SiteLayout};
use crate::haproxy::AdminState;
use crate::journal::StepResult;
use crate::ssh::{quote, SshError};

/// Why a node failed a step.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("apt-get install {package}={version} failed ({status}): {tail}")]
    Install {
        package: String,
        version: String,
        status: String,
        tail: String,
    },
    #[error("after install dpkg reports {found:?}, not {target}")]
    NotInstalled {
        found: Option<String>,
        target: String,
    },
    #[error("reload_command `{command}` failed ({status}): {tail}")]
    Reload {
        command: String,
        status: String,
        tail: String,
    },
    #[error("the switch to {release} failed ({status}): {tail}")]
    Switch {
        release: String,
        status: String,
        tail: String,
    },
    #[error("removing the releases {versions} failed ({status}): {tail}")]
    Prune {
        versions: String,
        status: String,
        tail: String,
    },
    #[error(transparent)]
    Unhealthy(#[from] Unhealthy),
    #[error(transparent)]
    Ssh(#[from] SshError),
}

/// A node that failed a step (its journal action: `install`, `release probe`...), and why.
#[derive(Debug, thiserror::Error)]
#[error("{node}: {cause}")]
pub struct Failure {
    pub node: String,
    pub step: String,
    pub cause: Cause,
}

impl Failure {
    /// `step` (of one node) failed with `cause`.
    pub fn of(step: &Step, cause: impl Into<Cause>) -> Failure {
        Failure {
            node: step.node().unwrap_or_default().to_string(),
            step: step.action(),
            cause: cause.into(),
        }
    }
}

/// The config's nodes named in `names`, in that order.
pub(super) fn config_nodes(cfg: &Config, names: &[String]) -> Vec<Node> {
    names
        .iter()
        .filter_map(|n| cfg.nodes.iter().find(|c| &c.name == n).cloned())
        .collect()
}

/// A node an earlier run left out of rotation, already on the target: back in when healthy.
/// One still unhealthy stops the roll: going on would put more than `batch` servers out, and
/// ending "done" would leave a node out that no later run knows as its own.
pub(super) fn put_back(ctx: &mut Ctx, plan: &Plan, node: &str) -> Result<(), RollError> {
    let Some(n) = ctx.cfg().nodes.iter().find(|n| n.name == node).cloned() else {
        return Ok(());
    };
    // Healthy, and its PHP runs the target (a stale PHP may be why an earlier run left it out).
    // Its health URL is waited for within health_timeout, as after an install: PHP may have
    // just been reloaded. (The LBs' checks are not: they do not check a server in maint.)
    let checked = wait_own_health(ctx, &n).and_then(|()| match plan.probe().as_deref() {
        Some(path) if n.http.is_some() => wait_release(ctx, &n, path, &plan.target),
        _ => Ok(()),
    });
    match checked {
        Ok(()) => {
            ctx.reporter().step(&format!("{node}: on {} and healthy, left out of rotation by an earlier run: putting it back", plan.target));
            ctx.set_all(node, &server_name(&n), AdminState::Ready)?;
            ctx.reporter().step_done();
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
pub(super) fn health_down(ctx: &mut Ctx, n: &Node) {
    let step = Step::HealthDown {
        node: n.name.clone(),
    };
    for i in 0..ctx.lbs().len() {
        let t = Instant::now();
        let name = ctx.lbs()[i].name().to_string();
        match ctx.lbs()[i].health_down(&server_name(n)) {
            Ok(()) => ctx.log_step(&step, Some(&name), StepResult::Ok, t, ""),
            Err(e) => ctx.log_step(&step, Some(&name), StepResult::Warning, t, &e.to_string()),
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
    let cmd = super::substitute(&ctx.cfg().roll.purge_command, ctx.cfg());
    ctx.reporter()
        .step(&format!("purging Moodle's caches on {node}"));
    let r = ctx.nodes().run_long(node, &cmd);
    ctx.reporter().step_done();
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

/// Each node's result of a command run on `nodes` at once (since `t`) as its `step`: journalled
/// ok (with `detail`), or failed with the cause `cause` makes of the command's output.
fn journal_each(
    ctx: &mut Ctx,
    nodes: &[String],
    results: Vec<Result<crate::ssh::Output, SshError>>,
    t: Instant,
    (step, detail): (&dyn Fn(&String) -> Step, &str),
    cause: &dyn Fn(&crate::ssh::Output) -> Cause,
) -> Vec<Failure> {
    let mut failed = Vec::new();
    for (n, r) in nodes.iter().zip(results) {
        let step = step(n);
        let f = match r {
            Ok(o) if o.success() => {
                ctx.log_step(&step, None, StepResult::Ok, t, detail);
                continue;
            }
            Ok(o) => Failure::of(&step, cause(&o)),
            Err(e) => Failure::of(&step, e),
        };
        ctx.log_step(&step, None, StepResult::Failed, t, &f.to_string());
        failed.push(f);
    }
    failed
}

/// `script` on `nodes` at once, shown as `progress` while it runs, each node journalled as its
/// `step` by [`journal_each`].
fn run_each(
    ctx: &mut Ctx,
    nodes: &[String],
    progress: &str,
    script: &str,
    step: (&dyn Fn(&String) -> Step, &str),
    cause: &dyn Fn(&crate::ssh::Output) -> Cause,
) -> Vec<Failure> {
    let t = Instant::now();
    ctx.reporter().step(progress);
    let results = ctx.nodes().run_all_long(nodes, script, &mut |_, _| {});
    ctx.reporter().step_done();
    journal_each(ctx, nodes, results, t, step, cause)
}

/// Installs the target on `nodes` in parallel: the nodes where it failed, and why.
pub(super) fn install(
    ctx: &mut Ctx,
    nodes: &[String],
    target: &str,
    need_kib: Option<u64>,
) -> Vec<Failure> {
    let t = Instant::now();
    ctx.reporter()
        .step(&format!("installing {target} on {}", nodes.join(", ")));
    let script = ctx.apt_install(target, false, need_kib);
    let results = ctx.run_apt(nodes, &script);
    let package = ctx.package_of(target);
    let failed = journal_each(
        ctx,
        nodes,
        results,
        t,
        (&|n| Step::Install { node: n.clone() }, target),
        &|o| Cause::Install {
            package: package.clone(),
            version: target.to_string(),
            status: o.status(),
            tail: o.tail(),
        },
    );
    ctx.reporter().step_done();
    failed
}

/// `[roll] reload_command` on `nodes` at once, after their install (or their switch, where
/// without one the running php-fpm or Apache is reloaded): what makes their PHP serve the new
/// code. The nodes where it failed, and why.
pub(super) fn reload(ctx: &mut Ctx, nodes: &[String]) -> Vec<Failure> {
    // (the script, and how the journal and errors name it)
    let (script, said) = match ctx.cfg().roll.reload_command.as_deref() {
        Some(cmd) => {
            let cmd = super::substitute(cmd, ctx.cfg());
            (cmd.clone(), cmd)
        }
        // No package is installed at a switch to reload PHP: its postinst's own way (php-fpm,
        // Apache with mod_php, whichever runs). The release probe then says if it was enough.
        None if ctx.cfg().site.layout == SiteLayout::Releases => (
            format!(
                "{}\nreload_php_fpm; reload_apache_mod_php",
                crate::deb::control::RELOAD_PHP
            ),
            "reload_php_fpm; reload_apache_mod_php (the postinst's reload)".to_string(),
        ),
        None => return Vec::new(),
    };
    if nodes.is_empty() {
        return Vec::new();
    }
    run_each(
        ctx,
        nodes,
        &format!("reloading PHP on {}", nodes.join(", ")),
        &script,
        (&|n| Step::Reload { node: n.clone() }, &said),
        &|o| Cause::Reload {
            command: said.clone(),
            status: o.status(),
            tail: o.tail(),
        },
    )
}

/// Checks, in one query per node, that `nodes` have the target installed: the ones that do
/// not, and why; and the ones whose live code it is (in place, the package installed; in the
/// releases layout, where install_dir points).
pub(super) fn verify(ctx: &mut Ctx, nodes: &[String], target: &str) -> (Vec<Failure>, Vec<String>) {
    if nodes.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let t = Instant::now();
    let answers = ctx.nodes().installed(nodes);
    let mut failed = Vec::new();
    let mut live = Vec::new();
    for (n, answer) in nodes.iter().zip(answers) {
        let step = Step::Verify { node: n.clone() };
        let f = match answer {
            Ok(i) if i.has(target) => {
                ctx.log_step(&step, None, StepResult::Ok, t, target);
                if i.version.as_deref() == Some(target) {
                    live.push(n.clone());
                }
                continue;
            }
            Ok(i) => Failure::of(
                &step,
                Cause::NotInstalled {
                    found: i.version,
                    target: target.to_string(),
                },
            ),
            Err(e) => Failure::of(&step, e),
        };
        ctx.log_step(&step, None, StepResult::Failed, t, &f.to_string());
        failed.push(f);
    }
    (failed, live)
}

/// The releases layout: `nodes` switch to the target's release at once: a new symlink renamed
/// over `install_dir` (a rename is atomic: no request finds no path). An empty folder there
/// (a node never installed) gives way. One with files is an in-place install, moved to the
/// releases layout: the folder is renamed aside (`install_dir.in-place`, removed with the old
/// releases at the end) and the in-place package purged, both before the symlink exists, so
/// that dpkg, removing the old package's files, cannot reach the release's through it. A site
/// whose config.php sets `$CFG->alternative_component_cache` has that per-node cache rebuilt
/// from the new release first (Moodle's component cache follows dirroot).
pub(super) fn switch(ctx: &mut Ctx, nodes: &[String], target: &str) -> Vec<Failure> {
    let dir = ctx.cfg().site.install_dir.0.clone();
    let release = format!("{}/{target}", ctx.cfg().site.releases_dir());
    let config_php = ctx.cfg().site.config_php_target().unwrap_or_default();
    let script = format!(
        "set -e; d={d}; t={t}; c={c}; [ -d \"$t\" ] || {{ echo \"$t is not installed\" >&2; exit 1; }}; \
         if [ -n \"$c\" ] && grep -q alternative_component_cache \"$c\" 2>/dev/null; then \
         php \"$t/admin/cli/alternative_component_cache.php\" --rebuild >/dev/null || {{ echo \"alternative_component_cache.php --rebuild failed\" >&2; exit 1; }}; fi; \
         if [ -d \"$d\" ] && [ ! -L \"$d\" ] && ! rmdir \"$d\" 2>/dev/null; then \
         old=\"$d.in-place\"; rm -rf \"$old\"; mv -T \"$d\" \"$old\"; \
         if dpkg-query -W -f='${{Status}}' {p} 2>/dev/null | grep -q 'ok installed'; then \
         DEBIAN_FRONTEND=noninteractive dpkg --purge {p} >/dev/null || {{ mv -T \"$old\" \"$d\"; echo \"dpkg --purge {p} failed: $d is back\" >&2; exit 1; }}; fi; fi; \
         mkdir -p \"$(dirname \"$d\")\"; ln -sfn \"$t\" \"$d.switch\"; mv -T \"$d.switch\" \"$d\"; [ \"$(readlink \"$d\")\" = \"$t\" ]",
        d = quote(&dir),
        t = quote(&release),
        c = quote(&config_php),
        p = quote(ctx.pkg()),
    );
    run_each(
        ctx,
        nodes,
        &format!("switching {} to {target}", nodes.join(", ")),
        &script,
        (&|n| Step::Switch { node: n.clone() }, &release),
        &|o| Cause::Switch {
            release: release.clone(),
            status: o.status(),
            tail: o.tail(),
        },
    )
}

/// The releases layout: each `Prune` step's node removes its releases beyond `keep_releases`
/// (`apt-get purge`), the nodes with the same releases to remove at once. A failure is the
/// group's rule's (a warning): the new release serves either way.
pub(super) fn prune(ctx: &mut Ctx, steps: &[Step]) -> Vec<Failure> {
    let mut by_versions: std::collections::BTreeMap<Vec<String>, Vec<String>> = Default::default();
    for s in steps {
        if let Step::Prune { node, versions } = s {
            by_versions
                .entry(versions.clone())
                .or_default()
                .push(node.clone());
        }
    }
    let mut failed = Vec::new();
    for (versions, nodes) in by_versions {
        let packages: Vec<String> = versions.iter().map(|v| ctx.package_of(v)).collect();
        let leftover = quote(&format!("{}.in-place", ctx.cfg().site.install_dir));
        let listed = packages
            .iter()
            .map(|p| quote(p))
            .collect::<Vec<_>>()
            .join(" ");
        let script = if packages.is_empty() {
            format!("rm -rf {leftover}")
        } else {
            format!(
                "export DEBIAN_FRONTEND=noninteractive LC_ALL=C; rm -rf {leftover}; apt-get purge -y -qq {listed} 2>&1 | grep -v '^(Reading database' || true; ! dpkg-query -W -f='${{Status}}\\n' {listed} 2>/dev/null | grep -q 'ok installed'"
            )
        };
        let said = versions.join(", ");
        failed.extend(run_each(
            ctx,
            &nodes,
            &format!("removing releases {said} on {}", nodes.join(", ")),
            &script,
            (
                &|n| Step::Prune {
                    node: n.clone(),
                    versions: versions.clone(),
                },
                &said,
            ),
            &|o| Cause::Prune {
                versions: said.clone(),
                status: o.status(),
                tail: o.tail(),
            },
        ));
    }
    failed
}

/// Waits until `n`'s PHP answers for the target at its release probe `path`.
pub(super) fn probe(ctx: &mut Ctx, n: &Node, path: &str, target: &str) -> Option<Failure> {
    ctx.reporter()
        .step(&format!("asking {}'s PHP which release it runs", n.name));
    let r = wait_release(ctx, n, path, target);
    ctx.reporter().step_done();
    let step = Step::Probe {
        node: n.name.clone(),
        path: path.to_string(),
    };
    r.err().map(|e| Failure::of(&step, e))
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
    let deadline = t + ctx.cfg().roll.drain_timeout;
    loop {
        let mut busy = Vec::new();
        let mut said = Vec::new();
        for lb in ctx.lbs() {
            let servers = lb.servers()?;
            for n in nodes {
                let s = lb.find(&servers, &server_name(n))?;
                if !s.drain && !s.maint {
                    said.push(format!("{}: {} left drain by itself (an agent-check or a reload?); draining it again", lb.name(), s.name));
                    lb.set_state(&s.name, AdminState::Drain)?;
                }
                if s.scur + s.qcur > 0 {
                    busy.push(format!(
                        "{} on {} ({} sessions, {} queued)",
                        n.name,
                        lb.name(),
                        s.scur,
                        s.qcur
                    ));
                }
            }
        }
        for w in said {
            ctx.warn(w);
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
