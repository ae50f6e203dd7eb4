//! The cluster as `roll` and `status` both see it: what each node runs ([`probe`]), its health
//! URL and release probe ([`health`], over [`http`]), the cluster lock and the copy of the roll
//! state on the lock node ([`lock`]), the freeze windows, and the names that tie the config to
//! the LBs (a node's server name, the web nodes, the lock node). Reading only: what changes
//! the cluster is `roll`'s.

pub mod health;
pub mod http;
pub mod lock;
pub mod probe;

use crate::config::{Config, Node, Role};

/// The node's server name in the LBs' backend: `server`, else its name.
pub fn server_name(n: &Node) -> String {
    n.server.clone().unwrap_or_else(|| n.name.clone())
}

/// The config's web nodes, in its order.
pub fn web_nodes(cfg: &Config) -> Vec<&Node> {
    cfg.nodes.iter().filter(|n| n.role == Role::Web).collect()
}

/// The node that holds the cluster lock and the copy of the state: the config's first.
pub fn lock_node(cfg: &Config) -> &str {
    &cfg.nodes[0].name
}

/// The freeze window (`[[roll.freeze]]`) the cluster is in now, if any.
pub fn frozen_now(cfg: &Config) -> Option<String> {
    let now = jiff::Timestamp::now();
    cfg.roll
        .freeze
        .iter()
        .find(|f| f.contains(now))
        .map(|f| f.to_string())
}
