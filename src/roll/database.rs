//! The database path's own steps, for [`walk`]: download everywhere (no download inside the
//! maintenance window), maintenance on, `upgrade_command` once, maintenance off. Installing and
//! the health checks are the shared steps of [`execute`](super::execute).

use std::time::Instant;

use super::ctx::Ctx;
use super::step::Step;
use super::{substitute, Plan, RollError};
use crate::journal::StepResult;

/// Fetches the target into apt's cache on `nodes` at once. A failure stops the roll before
/// anything changed.
pub(super) fn download(ctx: &mut Ctx, nodes: &[String], target: &str) -> Result<(), RollError> {
    let t = Instant::now();
    ctx.reporter()
        .step(&format!("downloading {target} on {}", nodes.join(", ")));
    let script = ctx.apt_install(target, true, None);
    for (n, r) in nodes.iter().zip(ctx.run_apt(nodes, &script)) {
        let failure = match r {
            Ok(o) if o.success() => {
                ctx.log_step(
                    &Step::Download { node: n.clone() },
                    None,
                    StepResult::Ok,
                    t,
                    target,
                );
                continue;
            }
            Ok(o) => format!(
                "{n}: downloading {}={target} failed: {}",
                ctx.pkg(),
                o.tail()
            ),
            Err(e) => e.to_string(),
        };
        ctx.reporter().step_done();
        let untouched = ctx.untouched();
        return Err(ctx.fail(Some(n), format!("{failure}; {untouched}")));
    }
    ctx.reporter().step_done();
    Ok(())
}

/// `maintenance_on` on `node`, unless it has no code yet (a first install). From here the
/// database path runs to its end, and the state says an upgrade is pending.
pub(super) fn maintenance_on(ctx: &mut Ctx, plan: &Plan, node: &str) -> Result<(), RollError> {
    if ctx.interrupted() {
        let untouched = ctx.untouched();
        return Err(ctx.interrupt(format!("stopped before the maintenance step; {untouched}")));
    }
    let step = Step::MaintenanceOn {
        node: node.to_string(),
    };
    let on = substitute(&ctx.cfg().roll.maintenance_on, ctx.cfg());
    let t = Instant::now();
    if plan.installed.get(node).is_some_and(|v| v.is_some()) {
        let out = ctx.nodes().run_long(node, &on)?;
        if !out.success() {
            let untouched = ctx.untouched();
            return Err(ctx.fail(
                Some(node),
                format!("maintenance_on failed: {}; {untouched}", out.tail()),
            ));
        }
        ctx.log_step(&step, None, StepResult::Ok, t, &on);
    } else {
        // A first install: no code on the node yet, so nothing to put in maintenance.
        ctx.log_step(&step, None, StepResult::Skipped, t, "no code installed yet");
    }
    ctx.state_mut().upgrade_pending = true;
    ctx.save_state();
    Ok(())
}

/// `upgrade_command`, once, on `node`.
pub(super) fn upgrade(ctx: &mut Ctx, node: &str) -> Result<(), RollError> {
    let up = substitute(&ctx.cfg().roll.upgrade_command, ctx.cfg());
    let t = Instant::now();
    ctx.reporter()
        .step(&format!("upgrading the database on {node}"));
    let out = ctx.nodes().run_long(node, &up)?;
    ctx.reporter().step_done();
    if !out.success() {
        let resume = ctx.state().resume_command();
        return Err(ctx.fail(
            Some(node),
            format!(
                "upgrade_command failed ({}): {}; the site is left in maintenance mode: fix the cause and run `{resume}` (it runs the upgrade again and ends maintenance)",
                out.status(),
                out.tail()
            ),
        ));
    }
    let step = Step::Upgrade {
        node: node.to_string(),
    };
    ctx.log_step(&step, None, StepResult::Ok, t, &up);
    Ok(())
}

/// `maintenance_off` on `node`: the site serves again. Returns how long it was in maintenance
/// (since `since`).
pub(super) fn maintenance_off(ctx: &mut Ctx, node: &str, since: Instant) -> Result<f64, RollError> {
    let off = substitute(&ctx.cfg().roll.maintenance_off, ctx.cfg());
    let t = Instant::now();
    let out = ctx.nodes().run_long(node, &off)?;
    if !out.success() {
        return Err(ctx.fail(
            Some(node),
            format!("maintenance_off failed: {}", out.tail()),
        ));
    }
    ctx.state_mut().upgrade_pending = false;
    ctx.save_state();
    let secs = since.elapsed().as_secs_f64();
    ctx.log_step(
        &Step::MaintenanceOff {
            node: node.to_string(),
        },
        None,
        StepResult::Ok,
        t,
        &format!("site in maintenance for {secs:.1}s"),
    );
    Ok(secs)
}
