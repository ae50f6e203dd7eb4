//! The code-only path: a batch of web nodes at a time, in rotation: drain, wait idle, install,
//! health, ready; and `--auto-rollback` by the same steps.

use super::*;

pub(super) fn code_only_batch(
    ctx: &mut Ctx,
    plan: &Plan,
    batch: &[String],
    opts: &RollOptions,
) -> Result<(), RollError> {
    let nodes: Vec<Node> = batch
        .iter()
        .map(|b| ctx.cfg.nodes.iter().find(|n| &n.name == b).unwrap().clone())
        .collect();
    ctx.reapply_after_reload()?;
    // Re-read every LB: someone (or a reload) may have changed states since the last batch.
    let web_servers: Vec<String> = web_nodes(ctx.cfg).iter().map(|n| server_name(n)).collect();
    for lb in ctx.lbs.clone() {
        let servers = lb.servers()?;
        let in_rotation = servers
            .iter()
            .filter(|s| web_servers.contains(&s.name) && s.in_rotation())
            .count();
        let leaving = servers
            .iter()
            .filter(|s| nodes.iter().any(|n| server_name(n) == s.name) && s.in_rotation())
            .count();
        if in_rotation.saturating_sub(leaving) == 0 && !opts.force {
            return Err(ctx.fail(
                None,
                format!("{}: draining {} would leave no server in rotation ({} of {} are up); lower --batch or bring servers back", lb.name, batch.join(", "), in_rotation, web_servers.len()),
            ));
        }
        for s in &servers {
            let ours = ctx.state.out_of_rotation.contains(&s.name)
                || nodes.iter().any(|n| server_name(n) == s.name);
            if (s.drain || s.maint) && !ours && !opts.force {
                return Err(ctx.fail(None, format!("{}: server {} went out of rotation during the roll, not by this tool: stopping", lb.name, s.name)));
            }
        }
    }
    // Drain, then wait for the sessions to end.
    ctx.reporter.step(&format!(
        "draining {} and waiting for their sessions to end",
        batch.join(", ")
    ));
    let (t, busy) = drain_and_wait(ctx, &nodes)?;
    let forced = !busy.is_empty() && opts.force_drain;
    if !busy.is_empty() {
        if forced {
            maint_after_timeout(ctx, &nodes, t, "--force-drain", &busy)?;
        } else {
            for n in &nodes {
                ctx.set_all(&n.name, &server_name(n), AdminState::Ready)?;
            }
            ctx.reporter.step_done();
            return Err(ctx.fail(
                None,
                format!("sessions did not end within drain_timeout {}: {}; the nodes are back in rotation; raise drain_timeout or use --force-drain", crate::config::format_duration(ctx.cfg.roll.drain_timeout), busy.join("; ")),
            ));
        }
    }
    ctx.reporter.step_done();

    // Install, verify, health.
    let mut failed: Vec<(String, String)> = Vec::new();
    if let Err(f) = install_nodes(ctx, batch, &plan.target) {
        failed.push(f);
    }
    for n in &nodes {
        if failed.iter().any(|(f, _)| f == &n.name) {
            continue;
        }
        // HAProxy does not check a server in maint: back to drain (still no new traffic), or
        // the checks below would never see the new code.
        if forced {
            ctx.set_all(&n.name, &server_name(n), AdminState::Drain)?;
        }
        // The LBs' last check result may predate the install: mark the (drained, idle) server
        // down, so that only checks of the new code can bring it back up.
        let health_down = Step::HealthDown {
            node: n.name.clone(),
        };
        for lb in ctx.lbs.clone() {
            let t = Instant::now();
            let cmd = format!("set server {}/{} health down", lb.backend, server_name(n));
            match lb.send(&cmd) {
                Ok(_) => ctx.log_step(&health_down, Some(&lb.name), "ok", t, ""),
                Err(e) => ctx.log_step(&health_down, Some(&lb.name), "warning", t, &e.to_string()),
            }
        }
        ctx.reporter
            .step(&format!("waiting for {} to be healthy", n.name));
        if let Err(m) = wait_healthy(ctx, n) {
            failed.push((n.name.clone(), m));
        }
        ctx.reporter.step_done();
    }
    if failed.is_empty() {
        for n in &nodes {
            ctx.set_all(&n.name, &server_name(n), AdminState::Ready)?;
        }
        return Ok(());
    }
    // A failed node stays out (maint) with the reason; the batch's good nodes go back.
    for n in &nodes {
        if failed.iter().any(|(f, _)| f == &n.name) {
            ctx.set_all(&n.name, &server_name(n), AdminState::Maint)?;
        } else {
            ctx.set_all(&n.name, &server_name(n), AdminState::Ready)?;
        }
    }
    let (node, why) = failed[0].clone();
    let resume = ctx.state.resume_command();
    Err(ctx.fail(Some(&node), format!("{why}; {node} stays out of rotation (maint); fix it and run `{resume}`, or `moodle-release rollback`")))
}

/// `--auto-rollback`: the nodes this roll already upgraded go back to the version they ran, by the
/// same drain, install, health, ready steps (the roll was code-only, so mixed versions are safe).
/// Returns the roll's error, completed with what happened.
pub(super) fn auto_rollback(
    ctx: &mut Ctx,
    plan: &Plan,
    upgraded: &[String],
    opts: &RollOptions,
    cause: RollError,
) -> RollError {
    let cause = cause.to_string();
    ctx.log(
        None,
        None,
        "auto-rollback",
        "info",
        Instant::now(),
        &format!("after: {cause}"),
    );
    let mut by_version: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in upgraded {
        if let Some(v) = ctx.state.previous.get(n) {
            by_version.entry(v.clone()).or_default().push(n.clone());
        }
    }
    let back_opts = RollOptions {
        auto_rollback: false,
        ..opts.clone()
    };
    let mut back = Vec::new();
    for (version, nodes) in by_version {
        let rb = Plan {
            target: version.clone(),
            ..plan.clone()
        };
        for chunk in nodes.chunks(plan.batch) {
            if let Err(e) = code_only_batch(ctx, &rb, chunk, &back_opts) {
                return RollError::Failed {
                    message: format!("{cause}; --auto-rollback then failed too: {e}"),
                    journal: ctx.journal_path(),
                };
            }
            back.extend(chunk.iter().map(|n| format!("{n} ({version})")));
        }
    }
    ctx.state.status = RollStatus::Failed;
    ctx.save_state();
    RollError::Failed {
        message: format!(
            "{cause}\n  --auto-rollback: back on their previous version: {}",
            back.join(", ")
        ),
        journal: ctx.journal_path(),
    }
}
