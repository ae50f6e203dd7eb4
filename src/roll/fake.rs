//! A fake cluster for the executor's unit tests: load balancers and nodes in memory behind the
//! executor's own traits ([`Balancer`], [`Nodes`]), with the faults a roll meets (an install
//! that fails, a node that stays unhealthy, sessions that never end, a canary that serves 5xx,
//! a PHP that keeps its old code, a HAProxy reload, Ctrl-C). The lab tests run the real parts;
//! these run every branch of the walk in milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::drivers::{Balancer, Nodes};
use crate::cluster::health::{ProbeAnswer, Unhealthy};
use crate::cluster::probe::Installed;
use crate::config::Node;
use crate::haproxy::{AdminState, Counters, HaError, Process, Server};
use crate::ssh::{Output, SshError};

/// A server as one fake LB holds it.
#[derive(Debug, Clone, Default)]
pub(super) struct FakeServer {
    pub drain: bool,
    pub maint: bool,
    pub responses: u64,
    pub errors_5xx: u64,
}

/// The whole fake cluster.
#[derive(Debug, Default)]
pub(super) struct World {
    /// Each LB's servers.
    pub lbs: BTreeMap<String, BTreeMap<String, FakeServer>>,
    /// Each LB's process id (a reload changes it).
    pub pids: BTreeMap<String, u32>,
    /// The version each node has installed.
    pub installed: BTreeMap<String, String>,
    /// The version each node's PHP runs (its release probe's answer).
    pub php: BTreeMap<String, String>,
    /// Nodes whose install fails.
    pub fail_install: BTreeSet<String>,
    /// Nodes whose health URL answers 503.
    pub unhealthy: BTreeSet<String>,
    /// Servers with a session that never ends.
    pub busy: BTreeSet<String>,
    /// Nodes whose PHP keeps the code it ran (nothing reloads it after an install).
    pub stale: BTreeSet<String>,
    /// Nodes that serve 5xx to every request (a broken page).
    pub broken: BTreeSet<String>,
    /// After this many state changes in all, this LB is reloaded: its runtime states are lost.
    pub reload_after: Option<(String, usize)>,
    pub state_changes: usize,
    /// The most web servers out of rotation at once, on any LB.
    pub most_out: usize,
    /// Set the stop flag (as Ctrl-C does) once this node is installed.
    pub ctrl_c_after_install: Option<(String, Arc<AtomicBool>)>,
    /// Every command a node ran, in order: (node, script).
    pub commands: Vec<(String, String)>,
}

impl World {
    fn out_now(&self) -> usize {
        self.lbs
            .values()
            .map(|s| s.values().filter(|x| x.drain || x.maint).count())
            .max()
            .unwrap_or(0)
    }
}

/// A handle on the fake cluster, shared by its LBs, its nodes and the test.
#[derive(Clone, Default)]
pub(super) struct Fake(pub Arc<Mutex<World>>);

impl Fake {
    /// `lbs` balancing `webs`, every node (`webs` and `others`) on `version`.
    pub fn new(lbs: &[&str], webs: &[&str], others: &[&str], version: &str) -> Fake {
        let mut w = World::default();
        for (i, lb) in lbs.iter().enumerate() {
            let servers = webs
                .iter()
                .map(|n| (n.to_string(), FakeServer::default()))
                .collect();
            w.lbs.insert(lb.to_string(), servers);
            w.pids.insert(lb.to_string(), 100 + i as u32);
        }
        for n in webs.iter().chain(others) {
            w.installed.insert(n.to_string(), version.to_string());
            w.php.insert(n.to_string(), version.to_string());
        }
        Fake(Arc::new(Mutex::new(w)))
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn balancers<'a>(&self) -> Vec<Box<dyn Balancer + 'a>> {
        let names: Vec<String> = self.world().lbs.keys().cloned().collect();
        names
            .into_iter()
            .map(|name| {
                Box::new(FakeLb {
                    name,
                    fake: self.clone(),
                }) as Box<dyn Balancer>
            })
            .collect()
    }

    pub fn processes(&self) -> BTreeMap<String, Process> {
        self.world()
            .pids
            .iter()
            .map(|(lb, pid)| {
                let p = Process {
                    pid: pid.to_string(),
                    uptime_sec: 100,
                };
                (lb.clone(), p)
            })
            .collect()
    }

    /// A server's admin state on an LB: `ready`, `drain` or `maint`.
    pub fn state(&self, lb: &str, server: &str) -> &'static str {
        let w = self.world();
        let s = &w.lbs[lb][server];
        match (s.maint, s.drain) {
            (true, _) => "maint",
            (false, true) => "drain",
            _ => "ready",
        }
    }
}

pub(super) struct FakeLb {
    name: String,
    fake: Fake,
}

impl Balancer for FakeLb {
    fn name(&self) -> &str {
        &self.name
    }

    fn servers(&self) -> Result<Vec<Server>, HaError> {
        let w = self.fake.world();
        Ok(w.lbs[&self.name]
            .iter()
            .map(|(name, s)| {
                let healthy = !w.unhealthy.contains(name);
                Server {
                    name: name.clone(),
                    drain: s.drain,
                    maint: s.maint,
                    scur: u64::from(w.busy.contains(name)),
                    qcur: 0,
                    status: match (s.maint, s.drain, healthy) {
                        (true, _, _) => "MAINT",
                        (_, _, false) => "DOWN",
                        (_, true, true) => "DRAIN",
                        _ => "UP",
                    }
                    .into(),
                    check_status: if healthy { "L7OK" } else { "L7STS" }.into(),
                    agent: false,
                    weight: 1,
                }
            })
            .collect())
    }

    fn set_state(&self, server: &str, state: AdminState) -> Result<(), HaError> {
        let mut w = self.fake.world();
        let Some(s) = w.lbs.get_mut(&self.name).and_then(|l| l.get_mut(server)) else {
            return Err(HaError::Command {
                lb: self.name.clone(),
                command: format!("set server {server} state"),
                answer: "No such server.".into(),
            });
        };
        s.drain = state == AdminState::Drain;
        s.maint = state == AdminState::Maint;
        w.state_changes += 1;
        w.most_out = w.most_out.max(w.out_now());
        if let Some((lb, after)) = w.reload_after.clone() {
            if w.state_changes == after {
                // A reload: a new process, and every runtime state set through the API lost.
                w.reload_after = None;
                *w.pids.entry(lb.clone()).or_default() += 1;
                for s in w.lbs.entry(lb).or_default().values_mut() {
                    s.drain = false;
                    s.maint = false;
                }
            }
        }
        Ok(())
    }

    fn health_down(&self, _server: &str) -> Result<(), HaError> {
        Ok(())
    }

    fn process(&self) -> Result<Process, HaError> {
        let w = self.fake.world();
        Ok(Process {
            pid: w.pids[&self.name].to_string(),
            uptime_sec: 100,
        })
    }

    /// Every read, each server in rotation has served 50 more requests (all 5xx if broken).
    fn counters(&self) -> Result<Vec<Counters>, HaError> {
        let mut w = self.fake.world();
        let broken = w.broken.clone();
        let servers = w.lbs.get_mut(&self.name).map(|l| l.iter_mut());
        Ok(servers
            .into_iter()
            .flatten()
            .map(|(name, s)| {
                if !s.drain && !s.maint {
                    s.responses += 50;
                    if broken.contains(name) {
                        s.errors_5xx += 50;
                    }
                }
                Counters {
                    name: name.clone(),
                    responses: s.responses,
                    errors_5xx: s.errors_5xx,
                    rtime_ms: 1,
                    ttime_ms: 2,
                }
            })
            .collect())
    }
}

fn ok() -> Output {
    Output {
        code: Some(0),
        stdout: Vec::new(),
        stderr: String::new(),
    }
}

/// The version an apt script installs (`PACKAGE=VERSION`).
fn version_in(script: &str, package: &str) -> Option<String> {
    let at = script.find(&format!("{package}="))? + package.len() + 1;
    Some(
        script[at..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '\'')
            .collect(),
    )
}

/// The nodes of the fake cluster; `package` is the site's package.
pub(super) struct FakeNodes {
    pub fake: Fake,
    pub package: String,
    /// The config's `reload_command`, recognised when it runs.
    pub reload_command: Option<String>,
}

impl Nodes for FakeNodes {
    fn run(&self, node: &str, script: &str) -> Result<Output, SshError> {
        self.run_long(node, script)
    }

    fn run_long(&self, node: &str, script: &str) -> Result<Output, SshError> {
        let mut w = self.fake.world();
        w.commands.push((node.to_string(), script.to_string()));
        if self.reload_command.as_deref() == Some(script) {
            let v = w.installed.get(node).cloned().unwrap_or_default();
            w.php.insert(node.to_string(), v);
        }
        Ok(ok())
    }

    fn run_all_long(
        &self,
        nodes: &[String],
        script: &str,
        _on_note: &mut dyn FnMut(usize, &str),
    ) -> Vec<Result<Output, SshError>> {
        nodes
            .iter()
            .map(|n| {
                let installs =
                    script.contains("apt-get install") && !script.contains("--download-only");
                let Some(v) = version_in(script, &self.package).filter(|_| installs) else {
                    return self.run_long(n, script);
                };
                let mut w = self.fake.world();
                w.commands.push((n.clone(), script.to_string()));
                if w.fail_install.contains(n) {
                    return Ok(Output {
                        code: Some(100),
                        stdout: Vec::new(),
                        stderr: "E: Sub-process /usr/bin/dpkg returned an error code (1)".into(),
                    });
                }
                w.installed.insert(n.clone(), v.clone());
                if !w.stale.contains(n) {
                    w.php.insert(n.clone(), v);
                }
                if let Some((node, stop)) = &w.ctrl_c_after_install {
                    if node == n {
                        stop.store(true, Ordering::SeqCst);
                    }
                }
                Ok(ok())
            })
            .collect()
    }

    fn installed(&self, nodes: &[String]) -> Vec<Result<Installed, SshError>> {
        let w = self.fake.world();
        nodes
            .iter()
            .map(|n| {
                Ok(Installed {
                    version: w.installed.get(n).cloned(),
                    ..Installed::default()
                })
            })
            .collect()
    }

    fn health(&self, node: &Node) -> Result<(), Unhealthy> {
        if self.fake.world().unhealthy.contains(&node.name) {
            return Err(Unhealthy::Status {
                url: format!("http://{}/admin/tool/heartbeat/index.php", node.name),
                code: 503,
            });
        }
        Ok(())
    }

    fn probe(&self, node: &Node, _path: &str) -> Result<ProbeAnswer, Unhealthy> {
        Ok(ProbeAnswer {
            package: self.package.clone(),
            version: self.fake.world().php[&node.name].clone(),
            commit: String::new(),
        })
    }
}
