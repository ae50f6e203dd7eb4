//! `status`: what each node runs, how every LB sees it, the last roll and the cluster lock, read
//! in one query per node; it changes nothing, so a read-only stats socket is enough.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cluster::health::{healthy, probe_now, Unhealthy};
use crate::cluster::lock::{newer, remote_state, Lock};
use crate::cluster::probe::{connect_and_query, Installed};
use crate::cluster::{frozen_now, lock_node, server_name};
use crate::config::{Config, Role};
use crate::haproxy::{HaError, Lb};
use crate::journal::RollState;
use crate::roll::RollError;
use crate::ssh::Ssh;

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
    /// The `[[roll.freeze]]` window the cluster is in now: `roll` is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frozen: Option<String>,
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
    /// The release the node's PHP runs, as its release probe answers (web nodes); it differs
    /// from `version` when PHP still runs code its opcode cache kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub php: Option<String>,
    pub lbs: BTreeMap<String, String>,
    pub error: Option<String>,
    /// The releases layout: every release installed on the node, oldest first, the live one
    /// (`version`) among them; a rollback to one of the others is a switch, with no apt.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<String>,
}

/// How each LB sees `n`'s server: `UP, drain (L7OK)`, or why it cannot say.
fn lb_view(
    lb_servers: &[(String, Result<Vec<crate::haproxy::Server>, HaError>)],
    n: &crate::config::Node,
) -> BTreeMap<String, String> {
    lb_servers
        .iter()
        .map(|(lb, servers)| {
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
            (lb.clone(), text)
        })
        .collect()
}

/// Every node's health and the release its PHP runs, at once: a node that does not answer
/// costs its timeout once.
fn health_of_all(cfg: &Config) -> Vec<(Option<bool>, Option<String>)> {
    std::thread::scope(|s| {
        let checks: Vec<_> = cfg
            .nodes
            .iter()
            .map(|n| s.spawn(move || (healthy(cfg, n), php_runs(cfg, n))))
            .collect();
        checks
            .into_iter()
            .map(|c| c.join().unwrap_or((Some(false), None)))
            .collect()
    })
}

/// What a web node's release probe answers: the version its PHP runs, or why it cannot say
/// (`?` and the reason); `None` for a node without `http` (cron).
fn php_runs(cfg: &Config, n: &crate::config::Node) -> Option<String> {
    n.http.as_ref()?;
    let path = format!("/{}", crate::deb::control::PROBE_PATH);
    match probe_now(cfg, n, &path) {
        Ok(a) => Some(a.version),
        // A package built before packages carried the probe.
        Err(Unhealthy::Status { code: 404, .. }) => None,
        Err(e) => Some(format!("? ({e})")),
    }
}

/// The cluster now: each node's version and health, how every LB sees it, the last roll (the
/// newer of this machine's state and the lock node's copy) and who holds the cluster lock.
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
    let mut answers: BTreeMap<String, Result<Installed, String>> =
        connect_and_query(&ssh, cfg, &dests)
            .into_iter()
            .zip(&dests)
            .map(|(r, (node, _))| {
                let answer = match r {
                    Ok((_, answer)) => answer.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (node.clone(), answer)
            })
            .collect();
    let mut lock = None;
    let mut remote = None;
    let health = health_of_all(cfg);
    let mut nodes = Vec::new();
    for (n, (healthy, php)) in cfg.nodes.iter().zip(health) {
        let mut st = NodeStatus {
            name: n.name.clone(),
            role: if n.role == Role::Web { "web" } else { "cron" }.into(),
            version: None,
            healthy,
            php,
            lbs: BTreeMap::new(),
            error: None,
            releases: Vec::new(),
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
                st.version = i.version;
                st.releases = i.releases;
            }
            Some(Err(e)) => st.error = Some(e),
            None => st.error = Some("no answer".into()),
        }
        if n.role == Role::Web {
            st.lbs = lb_view(&lb_servers, n);
        }
        nodes.push(st);
    }
    let here = RollState::read(&cfg.base_dir.join(&cfg.roll.state_dir));
    let there = remote_state(lock_node(cfg), remote.as_deref());
    let (roll, roll_error) = match (here, there) {
        (Ok(h), Ok(t)) => (newer(h, t), None),
        (Err(e), _) | (_, Err(e)) => (None, Some(e.to_string())),
    };
    Ok(Status {
        newest,
        nodes,
        roll,
        roll_error,
        lock,
        frozen: frozen_now(cfg),
    })
}
