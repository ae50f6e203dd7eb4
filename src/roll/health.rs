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
            ctx.log_step(&step, None, "ok", t, url.as_deref().unwrap_or(""));
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
            ctx.log_step(&step, None, "failed", t, &e.to_string());
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
