//! The code-only path's own rules, for the steps [`walk`] runs: before a batch leaves rotation,
//! every LB is read again (never the last server, nothing out that the tool did not take out);
//! when a batch fails, its failed nodes stay out (maint) and the good ones go back; and
//! `--auto-rollback`, which walks a plan of its own.

use super::*;

/// Before `batch` is drained: a reload may have dropped the states this roll set, and someone
/// may have taken servers out since the last batch.
pub(super) fn guard(ctx: &mut Ctx, batch: &[Node], opts: &RollOptions) -> Result<(), RollError> {
    ctx.reapply_after_reload()?;
    let names: Vec<&str> = batch.iter().map(|n| n.name.as_str()).collect();
    let web_servers: Vec<String> = web_nodes(ctx.cfg).iter().map(|n| server_name(n)).collect();
    for lb in ctx.lbs.clone() {
        let servers = lb.servers()?;
        let in_rotation = servers
            .iter()
            .filter(|s| web_servers.contains(&s.name) && s.in_rotation())
            .count();
        let leaving = servers
            .iter()
            .filter(|s| batch.iter().any(|n| server_name(n) == s.name) && s.in_rotation())
            .count();
        if in_rotation.saturating_sub(leaving) == 0 && !opts.force {
            return Err(ctx.fail(
                None,
                format!("{}: draining {} would leave no server in rotation ({} of {} are up); lower --batch or bring servers back", lb.name, names.join(", "), in_rotation, web_servers.len()),
            ));
        }
        for s in &servers {
            let ours = ctx.state.out_of_rotation.contains(&s.name)
                || batch.iter().any(|n| server_name(n) == s.name);
            if (s.drain || s.maint) && !ours && !opts.force {
                return Err(ctx.fail(None, format!("{}: server {} went out of rotation during the roll, not by this tool: stopping", lb.name, s.name)));
            }
        }
    }
    Ok(())
}

/// The end of a batch: every node back in rotation, or, when some failed, those stay out
/// (maint) with the reason and the others go back. Failures within the failure budget
/// (`budget`, `[roll] max_failed_nodes`; `failed_before` nodes of earlier batches count) let the roll go
/// on (`Ok(true)`: what is left must be planned again, with a smaller batch); beyond it, the
/// roll stops.
pub(super) fn end_batch(
    ctx: &mut Ctx,
    batch: &[Node],
    failed: &[(String, String)],
    failed_before: usize,
    budget: usize,
) -> Result<bool, RollError> {
    for n in batch {
        let state = if failed.iter().any(|(f, _)| f == &n.name) {
            AdminState::Maint
        } else {
            AdminState::Ready
        };
        ctx.set_all(&n.name, &server_name(n), state)?;
    }
    let Some((node, why)) = failed.first().cloned() else {
        return Ok(false);
    };
    let count = failed_before + failed.len();
    if count <= budget {
        for (n, why) in failed {
            let msg = format!("{n} failed ({why}); it stays out of rotation (maint); failure budget: {count} of max_failed_nodes = {budget} used, the roll goes on");
            ctx.log(
                Some(n),
                None,
                "failure budget",
                StepResult::Warning,
                Instant::now(),
                &msg,
            );
            ctx.warn(msg);
            ctx.state.failed_nodes.push(n.clone());
        }
        ctx.save_state();
        return Ok(true);
    }
    let resume = ctx.state.resume_command();
    let over = if budget > 0 {
        format!(" ({count} failed, beyond max_failed_nodes = {budget})")
    } else {
        String::new()
    };
    Err(ctx.fail(Some(&node), format!("{why}; {node} stays out of rotation (maint){over}; fix it and run `{resume}`, or `moodle-release rollback`")))
}

/// After failures within the budget: the web batches left (in `rest`, the steps not walked
/// yet), again, in batches that leave room for the failed nodes out of rotation, so never more
/// than `batch` are out; then cron and the purge (on a web node that did not fail). `None`
/// when no room is left (`--batch` no larger than the failed nodes).
pub(super) fn replan(
    cfg: &Config,
    plan: &Plan,
    rest: &[Step],
    failed: &[FailedNode],
) -> Option<Vec<Step>> {
    let webs: Vec<String> = rest
        .iter()
        .filter_map(|s| match s {
            Step::Drain { node } => Some(node.clone()),
            _ => None,
        })
        .collect();
    let room = plan.batch.saturating_sub(failed.len());
    if room == 0 && !webs.is_empty() {
        return None;
    }
    let is_failed = |n: &str| failed.iter().any(|f| f.node == n);
    let left = Plan {
        batches: webs.chunks(room.max(1)).map(<[String]>::to_vec).collect(),
        canary: None,
        purge_on: plan.purge_on.as_ref().and_then(|_| {
            web_nodes(cfg)
                .into_iter()
                .map(|n| n.name.clone())
                .find(|n| !is_failed(n))
        }),
        ..plan.clone()
    };
    Some(steps(&left, &Shape::new(cfg, Vec::new())))
}

/// `--auto-rollback`: the nodes this roll already upgraded go back to the version they ran, by a
/// plan of their own (code-only: mixed versions are safe) walked like any other. Returns the
/// roll's error, completed with what happened.
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
        StepResult::Info,
        Instant::now(),
        &format!("after: {cause}"),
    );
    let result = back_to_previous(ctx, plan, upgraded, opts);
    ctx.state.status = RollStatus::Failed;
    ctx.save_state();
    match result {
        Ok(back) => RollError::Failed {
            message: format!(
                "{cause}\n  --auto-rollback: back on their previous version: {}",
                back.join(", ")
            ),
            journal: ctx.journal_path(),
        },
        Err(e) => RollError::Failed {
            message: format!("{cause}; --auto-rollback then failed too: {e}"),
            journal: ctx.journal_path(),
        },
    }
}

/// Sends the web nodes in `upgraded` back to the version each ran before the roll, by a plan
/// of their own (code-only: mixed versions are safe) walked like any other. Returns them as
/// `node (version)`, or why going back stopped.
pub(super) fn back_to_previous(
    ctx: &mut Ctx,
    plan: &Plan,
    upgraded: &[String],
    opts: &RollOptions,
) -> Result<Vec<String>, RollError> {
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
        let rb = back_plan(ctx.cfg, plan, &version, &nodes);
        walk(ctx, &rb, &back_opts).map_err(|stop| stop.error)?;
        back.extend(nodes.iter().map(|n| format!("{n} ({version})")));
    }
    Ok(back)
}

/// The plan that takes `nodes` (web nodes) back to `version`, batch by batch as `plan` did.
fn back_plan(cfg: &Config, plan: &Plan, version: &str, nodes: &[String]) -> Plan {
    let mut rb = Plan {
        target: version.to_string(),
        probe: plan.probes.get(version).cloned(),
        path: RollPath::CodeOnly,
        batches: nodes.chunks(plan.batch).map(<[String]>::to_vec).collect(),
        cron: Vec::new(),
        purge_on: None,
        canary: None,
        steps: Vec::new(),
        ..plan.clone()
    };
    rb.steps = steps(&rb, &Shape::new(cfg, Vec::new()));
    rb
}
