//! A node's own health: its health URL answers 200, and every LB's check passes while it is
//! still drained.

use super::*;

pub(super) fn health_url(cfg: &Config, n: &Node) -> Option<String> {
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
    #[error("{node}: not healthy after {after}: {last}")]
    Timeout {
        node: String,
        after: String,
        last: Box<Unhealthy>,
    },
}

/// Whether the node's health URL answers 200 now, else what it answered; Ok for a node
/// without one (cron).
pub(super) fn health_now(cfg: &Config, n: &Node) -> Result<(), Unhealthy> {
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
        Err(message) => Err(Unhealthy::Unreachable { url, message }),
    }
}

/// Whether the node's health URL answers 200 now; `None` for a node without one (cron).
pub(crate) fn healthy(cfg: &Config, n: &Node) -> Option<bool> {
    health_url(cfg, n).map(|_| health_now(cfg, n).is_ok())
}

/// Waits until the node answers 200 on its health URL and every LB's check passes.
pub(super) fn wait_healthy(ctx: &mut Ctx, n: &Node) -> Result<(), Unhealthy> {
    let step = Step::WaitHealthy {
        node: n.name.clone(),
    };
    let t = Instant::now();
    let deadline = t + ctx.cfg.roll.health_timeout;
    let url = health_url(ctx.cfg, n);
    let mut last = None;
    loop {
        if let Err(RollError::Ha(e)) = ctx.reapply_after_reload() {
            last = Some(Unhealthy::Lb(e));
        }
        let own = match health_now(ctx.cfg, n) {
            Ok(()) => true,
            Err(why) => {
                last = Some(why);
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
                        last = Some(Unhealthy::LbCheck {
                            lb: lb.name.clone(),
                            check: s.check_status,
                            status: s.status,
                        });
                    }
                    Err(e) => {
                        lbs_ok = false;
                        last = Some(Unhealthy::Lb(e));
                    }
                }
            }
        }
        if lbs_ok {
            ctx.log_step(&step, None, StepResult::Ok, t, url.as_deref().unwrap_or(""));
            return Ok(());
        }
        if Instant::now() > deadline {
            let e = Unhealthy::Timeout {
                node: n.name.clone(),
                after: crate::config::format_duration(ctx.cfg.roll.health_timeout),
                last: Box::new(last.unwrap_or(Unhealthy::Unreachable {
                    url: url.clone().unwrap_or_default(),
                    message: "no answer".into(),
                })),
            };
            ctx.log_step(&step, None, StepResult::Failed, t, &e.to_string());
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long a node's PHP may go on answering for another release after its install before it
/// is called stale: PHP's default `opcache.revalidate_freq` is 2 s, and a php-fpm reload lets
/// its old workers finish their requests first.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// What the release probe answers: the package, version and commit its PHP runs.
#[derive(Debug, Clone, serde::Deserialize, Serialize, PartialEq)]
pub struct ProbeAnswer {
    pub package: String,
    pub version: String,
    #[serde(default)]
    pub commit: String,
}

/// Asks `n`'s release probe at `path` once: what its PHP runs.
pub(crate) fn probe_now(cfg: &Config, n: &Node, path: &str) -> Result<ProbeAnswer, Unhealthy> {
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
        Err(message) => Err(Unhealthy::Unreachable { url, message }),
    }
}

/// Waits until `n`'s PHP answers for `target` at its release probe `path`: at most
/// `health_timeout` while the probe does not answer (PHP restarting), and at most
/// [`STALE_AFTER`] while it answers for another release (a stale opcode cache does not heal).
pub(super) fn wait_release(
    ctx: &mut Ctx,
    n: &Node,
    path: &str,
    target: &str,
) -> Result<(), Unhealthy> {
    let step = Step::Probe {
        node: n.name.clone(),
        path: path.to_string(),
    };
    let t = Instant::now();
    let deadline = t + ctx.cfg.roll.health_timeout;
    let mut wrong_since = None;
    loop {
        let last = match probe_now(ctx.cfg, n, path) {
            Ok(a) if a.version == target => {
                let detail = format!("{} {} (commit {})", a.package, a.version, a.commit);
                ctx.log_step(&step, None, StepResult::Ok, t, &detail);
                return Ok(());
            }
            Ok(a) => {
                let since = *wrong_since.get_or_insert_with(Instant::now);
                let stale = Unhealthy::Stale {
                    node: n.name.clone(),
                    url: health_url_for(n, path),
                    runs: a.version,
                    target: target.to_string(),
                };
                if since.elapsed() >= STALE_AFTER.min(ctx.cfg.roll.health_timeout) {
                    ctx.log_step(&step, None, StepResult::Failed, t, &stale.to_string());
                    return Err(stale);
                }
                stale
            }
            Err(e) => {
                wrong_since = None;
                e
            }
        };
        if Instant::now() > deadline {
            let e = Unhealthy::Timeout {
                node: n.name.clone(),
                after: crate::config::format_duration(ctx.cfg.roll.health_timeout),
                last: Box::new(last),
            };
            ctx.log_step(&step, None, StepResult::Failed, t, &e.to_string());
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn health_url_for(n: &Node, path: &str) -> String {
    n.http.as_ref().map(|h| h.url(path)).unwrap_or_default()
}
