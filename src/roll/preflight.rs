//! Before anything changes: every LB answers and accepts state changes, every node answers over
//! SSH, the cluster locks and the servers out of rotation are known.

use std::collections::BTreeMap;

use super::{lock_node, warn, RollError, RollOptions};
use crate::cluster::lock;
use crate::cluster::probe::{connect_and_query, Installed};
use crate::cluster::{server_name, web_nodes};
use crate::config::Config;
use crate::haproxy::{Lb, Process};
use crate::journal::RollState;
use crate::report::Reporter;
use crate::ssh::{Conn, Ssh};

/// What a roll has before it changes anything: the LBs, the SSH masters the preflight made,
/// each LB's process, the warnings so far. The executor's context is made from it.
pub(super) struct Before<'a> {
    pub cfg: &'a Config,
    pub reporter: &'a dyn Reporter,
    pub ssh: Ssh,
    pub lbs: Vec<Lb>,
    pub conns: BTreeMap<String, Conn>,
    pub processes: BTreeMap<String, Process>,
    pub warnings: Vec<String>,
}

impl Before<'_> {
    /// Says `msg` at once and keeps it for `--json`.
    pub fn warn(&mut self, msg: String) {
        warn(self.reporter, &mut self.warnings, msg);
    }

    pub fn conn(&self, node: &str) -> Option<&Conn> {
        self.conns.get(node)
    }
}

/// Before anything changes: every LB answers, lists every web node's server and takes state
/// changes; every node answers over SSH. Returns what each node has installed.
pub(super) fn preflight(ctx: &mut Before) -> Result<BTreeMap<String, Installed>, RollError> {
    let cfg = ctx.cfg;
    ctx.reporter.step("checking the load balancers");
    for lb in &ctx.lbs {
        let servers = lb.servers().map_err(RollError::LbUnreachable)?;
        for n in web_nodes(cfg) {
            let s = server_name(n);
            let x = lb
                .find(&servers, &s)
                .map_err(|source| RollError::ServerMissing {
                    node: n.name.clone(),
                    source,
                })?;
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
            .map_err(RollError::NotAdmin)?;
        }
    }
    ctx.reporter.step_done();
    for lb in &ctx.lbs {
        let p = lb.process().map_err(RollError::LbUnreachable)?;
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
        let (c, answer) = r.map_err(RollError::NodeUnreachable)?;
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
        return Err(RollError::NoAptSource {
            nodes: missing.iter().map(|s| s.to_string()).collect(),
            package: cfg.site.package.to_string(),
        });
    }
    let relative = nodes_where(|i| i.config_php_relative_setup);
    if let (false, Some(c)) = (relative.is_empty(), cfg.site.config_php_target()) {
        return Err(RollError::RelativeSetup {
            nodes: relative.iter().map(|s| s.to_string()).collect(),
            config_php: c.to_string(),
            install_dir: cfg.site.install_dir.to_string(),
        });
    }
    Ok(installed)
}

/// The cluster locks the preflight query found, said before anything changes.
///
/// On the lock node: `--plan` says what taking it would do, `--break-lock` whose lock it
/// removes (for the record: `--json` keeps warnings); else [`lock::take`] refuses. On any
/// other node, a roll whose config lists the nodes in another order holds it, against the same
/// cluster: a live one refuses this roll (exit 3), one known dead is a warning, `--break-lock`
/// removes it.
pub(super) fn check_locks(
    ctx: &mut Before,
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
            if let Some(conn) = ctx.conns.get(node) {
                ctx.ssh.run(conn, &lock::remove())?;
            }
        } else if l.dead() || opts.plan {
            ctx.warn(format!("a cluster lock is held {what}"));
        } else {
            return Err(RollError::Locked { on: what });
        }
    }
    Ok(())
}

/// Servers out of rotation that this tool did not put there (by the last roll's state) stop
/// the roll, unless `--force`: someone took them out for a reason.
pub(super) fn refuse_foreign_out_of_rotation(
    ctx: &Before,
    opts: &RollOptions,
    previous_state: Option<&RollState>,
) -> Result<(), RollError> {
    let cfg = ctx.cfg;
    let ours: Vec<String> = previous_state.map(RollState::left_out).unwrap_or_default();
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
                        return Err(RollError::OutOfRotation {
                            lb: lb.name.clone(),
                            server: s.name.clone(),
                            state: if s.maint { "maint" } else { "drain" },
                        })
                    }
                }
            }
        }
    }
    Ok(())
}
