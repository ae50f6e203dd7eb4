//! The two things the executor drives, behind traits: the load balancers ([`Balancer`]: the
//! HAProxy Runtime API) and the nodes ([`Nodes`]: commands over SSH, and the node's own HTTP
//! answers). A roll drives the real ones ([`Lb`], [`SshNodes`]); the executor's unit tests
//! drive a fake cluster (`roll::fake`) through the same traits, so every branch of the walk is
//! tested in milliseconds, and the lab tests keep the real parts honest.

use std::collections::BTreeMap;

use crate::cluster::health::{self, ProbeAnswer, Unhealthy};
use crate::cluster::probe::{query_installed, Installed};
use crate::config::{Config, Node};
use crate::haproxy::{AdminState, Counters, HaError, Lb, Process, Server};
use crate::ssh::{Conn, Output, Ssh, SshError};

/// A load balancer's Runtime API, as the executor uses it.
pub(crate) trait Balancer: Send + Sync {
    fn name(&self) -> &str;
    /// Every server of the backend, as the LB sees it now.
    fn servers(&self) -> Result<Vec<Server>, HaError>;
    /// `set server BACKEND/SERVER state ...`.
    fn set_state(&self, server: &str, state: AdminState) -> Result<(), HaError>;
    /// `set server BACKEND/SERVER health down`.
    fn health_down(&self, server: &str) -> Result<(), HaError>;
    /// The HAProxy process (a reload changes it).
    fn process(&self) -> Result<Process, HaError>;
    /// Every server's response counters.
    fn counters(&self) -> Result<Vec<Counters>, HaError>;

    /// `name` among `servers` (read from this LB), or an error that lists them.
    fn find<'a>(&self, servers: &'a [Server], name: &str) -> Result<&'a Server, HaError> {
        crate::haproxy::find_server(self.name(), "", servers, name)
    }

    /// One server.
    fn server(&self, name: &str) -> Result<Server, HaError> {
        self.find(&self.servers()?, name).cloned()
    }
}

impl Balancer for Lb {
    fn name(&self) -> &str {
        &self.name
    }
    fn servers(&self) -> Result<Vec<Server>, HaError> {
        Lb::servers(self)
    }
    fn set_state(&self, server: &str, state: AdminState) -> Result<(), HaError> {
        Lb::set_state(self, server, state)
    }
    fn health_down(&self, server: &str) -> Result<(), HaError> {
        self.send(&format!("set server {}/{server} health down", self.backend))
            .map(|_| ())
    }
    fn process(&self) -> Result<Process, HaError> {
        Lb::process(self)
    }
    fn counters(&self) -> Result<Vec<Counters>, HaError> {
        Lb::counters(self)
    }
    fn find<'a>(&self, servers: &'a [Server], name: &str) -> Result<&'a Server, HaError> {
        Lb::find(self, servers, name)
    }
}

/// The nodes, as the executor uses them.
pub(crate) trait Nodes {
    /// A short command (a query) on `node`, with the query timeout.
    fn run(&self, node: &str, script: &str) -> Result<Output, SshError>;
    /// A command that changes the node: no timeout, run to its end even if the tool dies.
    fn run_long(&self, node: &str, script: &str) -> Result<Output, SshError>;
    /// [`Nodes::run_long`] on several nodes at once; each stderr line that starts with
    /// [`crate::ssh::NOTE`] goes to `on_note` (the node's index, the rest) as it comes.
    fn run_all_long(
        &self,
        nodes: &[String],
        script: &str,
        on_note: &mut dyn FnMut(usize, &str),
    ) -> Vec<Result<Output, SshError>>;
    /// What each of `nodes` has installed, asked of all at once.
    fn installed(&self, nodes: &[String]) -> Vec<Result<Installed, SshError>>;
    /// The node's health URL answers 200 now (`Ok` for a node without one).
    fn health(&self, node: &Node) -> Result<(), Unhealthy>;
    /// What the node's release probe at `path` answers now.
    fn probe(&self, node: &Node, path: &str) -> Result<ProbeAnswer, Unhealthy>;
}

/// The real nodes: SSH masters (made by the preflight) and HTTP to each node.
pub(crate) struct SshNodes<'a> {
    pub ssh: Ssh,
    pub conns: BTreeMap<String, Conn>,
    pub cfg: &'a Config,
}

impl SshNodes<'_> {
    pub fn conn(&self, node: &str) -> Result<&Conn, SshError> {
        self.conns.get(node).ok_or_else(|| unreached(node))
    }

    /// The connections to `nodes`, or the error for each when one is missing.
    fn conns_of(&self, nodes: &[String]) -> Result<Vec<&Conn>, Vec<Result<Output, SshError>>> {
        nodes
            .iter()
            .map(|n| self.conn(n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| nodes.iter().map(|n| Err(unreached(n))).collect())
    }
}

/// A node the preflight did not connect to (the executor only drives nodes of the plan, which
/// the preflight reached: a bug if it happens, said as an error rather than a panic).
fn unreached(node: &str) -> SshError {
    SshError::Connect {
        node: node.to_string(),
        dest: "-".into(),
        message: "no connection to this node (it was not reached before the roll)".into(),
    }
}

impl Nodes for SshNodes<'_> {
    fn run(&self, node: &str, script: &str) -> Result<Output, SshError> {
        self.ssh.run(self.conn(node)?, script)
    }
    fn run_long(&self, node: &str, script: &str) -> Result<Output, SshError> {
        self.ssh.run_long(self.conn(node)?, script)
    }
    fn run_all_long(
        &self,
        nodes: &[String],
        script: &str,
        on_note: &mut dyn FnMut(usize, &str),
    ) -> Vec<Result<Output, SshError>> {
        match self.conns_of(nodes) {
            Ok(conns) => {
                let jobs = conns.into_iter().map(|c| (c, script.to_string())).collect();
                self.ssh.run_all_long_noting(jobs, on_note)
            }
            Err(each) => each,
        }
    }
    fn installed(&self, nodes: &[String]) -> Vec<Result<Installed, SshError>> {
        match self.conns_of(nodes) {
            Ok(conns) => query_installed(&self.ssh, self.cfg, &conns),
            Err(_) => nodes.iter().map(|n| Err(unreached(n))).collect(),
        }
    }
    fn health(&self, node: &Node) -> Result<(), Unhealthy> {
        health::health_now(self.cfg, node)
    }
    fn probe(&self, node: &Node, path: &str) -> Result<ProbeAnswer, Unhealthy> {
        health::probe_now(self.cfg, node, path)
    }
}
