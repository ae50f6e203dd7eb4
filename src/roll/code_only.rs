//! The code-only path's own rules, for the steps [`walk`] runs: before a batch leaves rotation,
//! every LB is read again (never the last server, nothing out that the tool did not take out);
//! and the way back of `--auto-rollback` and of a failed canary, a program of its own walked
//! like any other.

use std::collections::BTreeMap;
use std::time::Instant;

use super::ctx::Ctx;
use super::execute::walk;
use super::{program, Plan, RollError, RollOptions};
use crate::cluster::{server_name, web_nodes};
use crate::config::Node;
use crate::journal::{RollStatus, StepResult};

/// Before `batch` is drained: a reload may have dropped the states this roll set, and someone
/// may have taken servers out since the last batch.
pub(super) fn guard(ctx: &mut Ctx, batch: &[Node], opts: &RollOptions) -> Result<(), RollError> {
    ctx.reapply_after_reload()?;
    let names: Vec<&str> = batch.iter().map(|n| n.name.as_str()).collect();
    let web_servers: Vec<String> = web_nodes(ctx.cfg())
        .iter()
        .map(|n| server_name(n))
        .collect();
    for i in 0..ctx.lbs().len() {
        let servers = ctx.lbs()[i].servers()?;
        let lb = ctx.lbs()[i].name().to_string();
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
                format!("{lb}: draining {} would leave no server in rotation ({} of {} are up); lower --batch or bring servers back", names.join(", "), in_rotation, web_servers.len()),
            ));
        }
        for s in &servers {
            let ours = ctx.state().out_of_rotation.contains(&s.name)
                || batch.iter().any(|n| server_name(n) == s.name);
            if (s.drain || s.maint) && !ours && !opts.force {
                return Err(ctx.fail(None, format!("{lb}: server {} went out of rotation during the roll, not by this tool: stopping", s.name)));
            }
        }
    }
    Ok(())
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
    ctx.state_mut().status = RollStatus::Failed;
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
        if let Some(v) = ctx.state().previous.get(n) {
            by_version.entry(v.clone()).or_default().push(n.clone());
        }
    }
    let back_opts = RollOptions {
        auto_rollback: false,
        ..opts.clone()
    };
    let mut back = Vec::new();
    for (version, nodes) in by_version {
        let rb = back_plan(plan, &version, &nodes);
        walk(ctx, &rb, &back_opts).map_err(|stop| stop.error)?;
        back.extend(nodes.iter().map(|n| format!("{n} ({version})")));
    }
    Ok(back)
}

/// The plan that takes `nodes` (web nodes) back to `version`, batch by batch as `plan` did,
/// checked by that version's release probe (if its package has one).
fn back_plan(plan: &Plan, version: &str, nodes: &[String]) -> Plan {
    let mut back = Plan {
        target: version.to_string(),
        path: super::RollPath::CodeOnly,
        ..plan.clone()
    };
    back.program = program::back(&plan.layout, nodes, back.probe());
    back
}
