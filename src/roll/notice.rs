//! The roll's side of `[[notify]]`: what each event says (start once the journal is open, the
//! canary's verdict, the end, success or failure) and where a failed notification goes (a
//! warning, never the roll's result). The posting is in [`crate::notify`].

use std::collections::BTreeMap;
use std::time::Instant;

use super::ctx::Ctx;
use super::{Outcome, Plan, RollError, RollOptions, RollPath, Verdict};
use crate::config::NotifyEvent;
use crate::notify::{Event, Notifier};
use crate::report::Reporter;

/// What the roll has learnt so far, for a notification of its end: a failure may come before
/// the target is known (a preflight), or after.
#[derive(Debug, Default)]
pub(super) struct Known {
    pub target: Option<String>,
    pub path: Option<RollPath>,
    pub from: BTreeMap<String, Option<String>>,
    /// The roll reached the point where it changes the cluster (it holds the lock).
    pub started: bool,
}

impl Known {
    pub fn learn(&mut self, plan: &Plan) {
        self.target = Some(plan.target.clone());
        self.path = Some(plan.path);
        self.from = plan.installed.clone();
    }
}

fn event(
    n: &crate::notify::Notifier,
    what: NotifyEvent,
    opts: &RollOptions,
    known: &Known,
    started: Instant,
) -> Event {
    let mut e = n.event(
        what,
        opts.kind(),
        known.target.as_deref().unwrap_or("(not chosen)"),
    );
    e.from = known.from.clone();
    e.path = known.path.map(|p| p.to_string());
    e.duration_secs = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    e.changed = known.started;
    e
}

/// Posts `e`, said on screen: a webhook that does not answer takes up to 10 s.
fn send(reporter: &dyn Reporter, n: &Notifier, e: Event) -> Vec<String> {
    reporter.step(&format!("notifying the webhooks: {}", e.event));
    let warnings = n.send(e);
    reporter.step_done();
    warnings
}

/// The event carries the canary's verdict (figures as JSON) when there is one.
fn set_canary(e: &mut Event, verdict: Option<&Verdict>) {
    e.canary = verdict.and_then(|v| serde_json::to_value(v).ok());
}

/// The roll begins changing the cluster.
pub(super) fn start(ctx: &mut Ctx, opts: &RollOptions, known: &Known) {
    let Some(n) = ctx
        .notifier()
        .cloned()
        .filter(|n| n.wants(NotifyEvent::Start))
    else {
        return;
    };
    let e = event(&n, NotifyEvent::Start, opts, known, ctx.started());
    for w in send(ctx.reporter(), &n, e) {
        ctx.warn(w);
    }
}

/// The canary was judged.
pub(super) fn canary(ctx: &mut Ctx, plan: &Plan, opts: &RollOptions, verdict: &Verdict) {
    let Some(n) = ctx
        .notifier()
        .cloned()
        .filter(|n| n.wants(NotifyEvent::Canary))
    else {
        return;
    };
    let mut known = Known {
        started: true,
        ..Known::default()
    };
    known.learn(plan);
    let mut e = event(&n, NotifyEvent::Canary, opts, &known, ctx.started());
    e.reason = Some(verdict.reason.clone());
    set_canary(&mut e, Some(verdict));
    for w in send(ctx.reporter(), &n, e) {
        ctx.warn(w);
    }
}

/// The roll ended: success, or failure with its reason (a refusal too: the release did not
/// happen). Not for `--plan`.
pub(super) fn ended(
    opts: &RollOptions,
    reporter: &dyn Reporter,
    known: &Known,
    started: Instant,
    result: &mut Result<Outcome, RollError>,
) {
    let Some(n) = opts.notifier.clone() else {
        return;
    };
    if opts.plan {
        return;
    }
    let what = match result {
        Ok(_) => NotifyEvent::Success,
        Err(_) => NotifyEvent::Failure,
    };
    if !n.wants(what) {
        return;
    }
    let mut e = event(&n, what, opts, known, started);
    match result {
        Ok(o) => {
            e.upgraded = o.upgraded.clone();
            e.failed_nodes = o.failed.iter().map(|f| f.node.clone()).collect();
            set_canary(&mut e, o.canary.as_ref());
        }
        Err(err) => {
            e.reason = Some(
                err.to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
            set_canary(&mut e, err.canary());
        }
    }
    for w in send(reporter, &n, e) {
        reporter.warn(&w);
        if let Ok(o) = result {
            o.warnings.push(w);
        }
    }
}
