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
/// (maint) with the reason, the others go back, and the roll stops.
pub(super) fn end_batch(
    ctx: &mut Ctx,
    batch: &[Node],
    failed: &[(String, String)],
) -> Result<(), RollError> {
    for n in batch {
        let state = if failed.iter().any(|(f, _)| f == &n.name) {
            AdminState::Maint
        } else {
            AdminState::Ready
        };
        ctx.set_all(&n.name, &server_name(n), state)?;
    }
    let Some((node, why)) = failed.first().cloned() else {
        return Ok(());
    };
    let resume = ctx.state.resume_command();
    Err(ctx.fail(Some(&node), format!("{why}; {node} stays out of rotation (maint); fix it and run `{resume}`, or `moodle-release rollback`")))
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
        let rb = back_plan(ctx.cfg, plan, &version, &nodes);
        if let Err(stop) = walk(ctx, &rb, &back_opts) {
            return RollError::Failed {
                message: format!("{cause}; --auto-rollback then failed too: {}", stop.error),
                journal: ctx.journal_path(),
            };
        }
        back.extend(nodes.iter().map(|n| format!("{n} ({version})")));
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

/// The plan that takes `nodes` (web nodes) back to `version`, batch by batch as `plan` did.
fn back_plan(cfg: &Config, plan: &Plan, version: &str, nodes: &[String]) -> Plan {
    let mut rb = Plan {
        target: version.to_string(),
        path: RollPath::CodeOnly,
        batches: nodes.chunks(plan.batch).map(<[String]>::to_vec).collect(),
        cron: Vec::new(),
        purge_on: None,
        steps: Vec::new(),
        ..plan.clone()
    };
    rb.steps = steps(&rb, &Shape::new(cfg, Vec::new()));
    rb
}
