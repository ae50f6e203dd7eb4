//! A node's own health: its health URL answers 200, and every LB's check passes while it is
//! still drained.

use super::*;

pub(super) fn health_url(cfg: &Config, n: &Node) -> Option<String> {
    n.http.as_ref().map(|h| h.url(&cfg.roll.health_path))
}

/// Whether the node's health URL answers 200 now, else what it answered; Ok for a node
/// without one (cron).
pub(super) fn health_now(cfg: &Config, n: &Node) -> Result<(), String> {
    let Some(base) = &n.http else {
        return Ok(());
    };
    let u = base.url(&cfg.roll.health_path);
    let target = base.target(&cfg.roll.health_path);
    match http::get_status(base, &target, cfg.roll.health_host.as_deref(), Duration::from_secs(3)) {
        Ok(200) => Ok(()),
        Ok(code @ 301..=308) => Err(format!(
            "{u} answered {code}, a redirect (Moodle redirects a request whose Host is not its wwwroot's: check [roll] health_host)"
        )),
        Ok(code) => Err(format!("{u} answered {code}")),
        Err(e) => Err(format!("{u}: {e}")),
    }
}

/// Whether the node's health URL answers 200 now; `None` for a node without one (cron).
pub(crate) fn healthy(cfg: &Config, n: &Node) -> Option<bool> {
    health_url(cfg, n).map(|_| health_now(cfg, n).is_ok())
}

/// Waits until the node answers 200 on its health URL and every LB's check passes.
pub(super) fn wait_healthy(ctx: &mut Ctx, n: &Node) -> Result<(), String> {
    let step = Step::WaitHealthy {
        node: n.name.clone(),
    };
    let t = Instant::now();
    let deadline = t + ctx.cfg.roll.health_timeout;
    let url = health_url(ctx.cfg, n);
    let mut last = String::new();
    loop {
        if let Err(e) = ctx.reapply_after_reload() {
            last = e.to_string();
        }
        let own = match health_now(ctx.cfg, n) {
            Ok(()) => true,
            Err(why) => {
                last = why;
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
                        last = format!(
                            "{}: its health check says {} ({})",
                            lb.name, s.check_status, s.status
                        );
                    }
                    Err(e) => {
                        lbs_ok = false;
                        last = e.to_string();
                    }
                }
            }
        }
        if lbs_ok {
            ctx.log_step(&step, None, "ok", t, url.as_deref().unwrap_or(""));
            return Ok(());
        }
        if Instant::now() > deadline {
            let m = format!(
                "{}: not healthy after {}: {last}",
                n.name,
                crate::config::format_duration(ctx.cfg.roll.health_timeout)
            );
            ctx.log_step(&step, None, "failed", t, &m);
            return Err(m);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
