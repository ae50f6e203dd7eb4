//! Waiting for a node after its install: its health URL and every LB's check (while it is
//! still drained), and its release probe (its PHP runs the target, not what its opcode cache
//! kept). The single checks are [`crate::cluster::health`]'s.

use std::time::{Duration, Instant};

use super::ctx::Ctx;
use super::step::Step;
use super::RollError;
use crate::cluster::health::{health_url, url_of, Unhealthy};
use crate::cluster::server_name;
use crate::config::Node;
use crate::journal::StepResult;

/// Waits until the node answers 200 on its health URL and every LB's check passes.
pub(super) fn wait_healthy(ctx: &mut Ctx, n: &Node) -> Result<(), Unhealthy> {
    let step = Step::WaitHealthy {
        node: n.name.clone(),
    };
    let t = Instant::now();
    let deadline = t + ctx.cfg().roll.health_timeout;
    let url = health_url(ctx.cfg(), n);
    let mut last = None;
    loop {
        if let Err(RollError::Ha(e)) = ctx.reapply_after_reload() {
            last = Some(Unhealthy::Lb(e));
        }
        let own = match ctx.nodes().health(n) {
            Ok(()) => true,
            Err(why) => {
                last = Some(why);
                false
            }
        };
        let mut lbs_ok = own;
        if own {
            for lb in ctx.lbs() {
                match lb.server(&server_name(n)) {
                    Ok(s) if s.check_ok() && !s.status.starts_with("DOWN") => {}
                    Ok(s) => {
                        lbs_ok = false;
                        last = Some(Unhealthy::LbCheck {
                            lb: lb.name().to_string(),
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
                after: crate::config::format_duration(ctx.cfg().roll.health_timeout),
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

/// Waits, at most `health_timeout`, until the node's own health URL answers 200 (not the
/// LBs' checks: they do not check a server in maint); the last answer if it never does.
pub(super) fn wait_own_health(ctx: &Ctx, n: &Node) -> Result<(), Unhealthy> {
    let deadline = Instant::now() + ctx.cfg().roll.health_timeout;
    loop {
        match ctx.nodes().health(n) {
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            r => return r,
        }
    }
}

/// How long a node's PHP may go on answering for another release after its install before it
/// is called stale: PHP's default `opcache.revalidate_freq` is 2 s, and a php-fpm reload lets
/// its old workers finish their requests first.
const STALE_AFTER: Duration = Duration::from_secs(5);

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
    let deadline = t + ctx.cfg().roll.health_timeout;
    let mut wrong_since = None;
    loop {
        let last = match ctx.nodes().probe(n, path) {
            Ok(a) if a.version == target => {
                let detail = format!("{} {} (commit {})", a.package, a.version, a.commit);
                ctx.log_step(&step, None, StepResult::Ok, t, &detail);
                return Ok(());
            }
            Ok(a) => {
                let since = *wrong_since.get_or_insert_with(Instant::now);
                let stale = Unhealthy::Stale {
                    node: n.name.clone(),
                    url: url_of(n, path),
                    runs: a.version,
                    target: target.to_string(),
                };
                if since.elapsed() >= STALE_AFTER.min(ctx.cfg().roll.health_timeout) {
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
                after: crate::config::format_duration(ctx.cfg().roll.health_timeout),
                last: Box::new(last),
            };
            ctx.log_step(&step, None, StepResult::Failed, t, &e.to_string());
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
