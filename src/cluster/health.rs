//! A node's own answers over HTTP, for `roll` and `status` alike: its health URL (200 means
//! healthy) and its release probe (the release its PHP runs).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::http;
use crate::config::{Config, Node};
use crate::haproxy::HaError;

pub fn health_url(cfg: &Config, n: &Node) -> Option<String> {
    n.http.as_ref().map(|h| h.url(&cfg.roll.health_path))
}

/// Why a node is not healthy: what its health URL answered, or what an LB's check says. The
/// message is the journal's and the roll's, as the engineer reads it.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error("{url} answered {code}, a redirect (Moodle redirects a request whose Host is not its wwwroot's: check [roll] health_host)")]
    Redirect { url: String, code: u16 },
    #[error("{url} answered {code}")]
    Status { url: String, code: u16 },
    #[error("{url}: {message}")]
    Unreachable { url: String, message: String },
    /// The node's PHP answers for another release than the one installed: its opcode cache
    /// still holds the code it ran before (nothing reloaded PHP after the install).
    #[error("{url}: its PHP runs {runs}, not {target}, although {target} is installed: a stale opcode cache (PHP was not reloaded after the install): reload PHP on {node} (php-fpm, or Apache with mod_php), or set [roll] reload_command")]
    Stale {
        node: String,
        url: String,
        runs: String,
        target: String,
    },
    /// The release probe answered 200 with something that is not a probe's answer.
    #[error("{url} answered 200 but not as a release probe: {body:?} (is the web root {install_dir}, or its public/ folder?)")]
    NotProbe {
        url: String,
        body: String,
        install_dir: String,
    },
    /// An LB's own check of the server does not pass (yet).
    #[error("{lb}: its health check says {check} ({status})")]
    LbCheck {
        lb: String,
        check: String,
        status: String,
    },
    /// An LB could not be asked.
    #[error(transparent)]
    Lb(#[from] HaError),
    /// Still not healthy at the end of `health_timeout`: the last reason.
    #[error("not healthy after {after}: {last}")]
    Timeout {
        node: String,
        after: String,
        last: Box<Unhealthy>,
    },
}

/// Whether the node's health URL answers 200 now, else what it answered; Ok for a node
/// without one (cron).
pub fn health_now(cfg: &Config, n: &Node) -> Result<(), Unhealthy> {
    let Some(base) = &n.http else {
        return Ok(());
    };
    let url = base.url(&cfg.roll.health_path);
    let target = base.target(&cfg.roll.health_path);
    match http::get_status(
        base,
        &target,
        cfg.roll.health_host.as_deref(),
        Duration::from_secs(3),
    ) {
        Ok(200) => Ok(()),
        Ok(code @ 301..=308) => Err(Unhealthy::Redirect { url, code }),
        Ok(code) => Err(Unhealthy::Status { url, code }),
        Err(e) => Err(Unhealthy::Unreachable {
            url,
            message: e.to_string(),
        }),
    }
}

/// Whether the node's health URL answers 200 now; `None` for a node without one (cron).
pub fn healthy(cfg: &Config, n: &Node) -> Option<bool> {
    health_url(cfg, n).map(|_| health_now(cfg, n).is_ok())
}

/// What the release probe answers: the package, version and commit its PHP runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ProbeAnswer {
    pub package: String,
    pub version: String,
    #[serde(default)]
    pub commit: String,
}

/// Asks `n`'s release probe at `path` once: what its PHP runs.
pub fn probe_now(cfg: &Config, n: &Node, path: &str) -> Result<ProbeAnswer, Unhealthy> {
    let Some(base) = &n.http else {
        return Err(Unhealthy::Unreachable {
            url: path.to_string(),
            message: "the node has no http".into(),
        });
    };
    let url = base.url(path);
    match http::get(
        base,
        &base.target(path),
        cfg.roll.health_host.as_deref(),
        Duration::from_secs(3),
    ) {
        Ok((200, body)) => serde_json::from_slice(&body).map_err(|_| Unhealthy::NotProbe {
            url,
            body: String::from_utf8_lossy(&body).chars().take(120).collect(),
            install_dir: cfg.site.install_dir.to_string(),
        }),
        Ok((code @ 301..=308, _)) => Err(Unhealthy::Redirect { url, code }),
        Ok((code, _)) => Err(Unhealthy::Status { url, code }),
        Err(e) => Err(Unhealthy::Unreachable {
            url,
            message: e.to_string(),
        }),
    }
}

pub fn url_of(n: &Node, path: &str) -> String {
    n.http.as_ref().map(|h| h.url(path)).unwrap_or_default()
}
