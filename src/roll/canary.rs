//! The canary: the first batch is one web node, and once it is back in rotation the roll
//! watches it under real traffic for a window, reading every LB's own counters (`show stat`:
//! `hrsp_5xx` and all responses, per server) once a second. It fails when its 5xx rate is above
//! `[roll] canary_max_5xx` **and** above the other servers' rate over the same window (a
//! site-wide outage is not the release's fault), or when it served fewer than
//! `canary_min_requests` (not enough traffic to judge; `--force` accepts). It fails early, as
//! soon as it has served enough requests to be judged and fails: every second more is more
//! users served an error. A failed canary goes back to the version it ran, by the same safe
//! steps as `--auto-rollback` ([`back_to_previous`]), and the roll stops (exit 1).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::code_only::back_to_previous;
use super::ctx::Ctx;
use super::notice;
use super::step::Step;
use super::{Plan, RollError, RollOptions};
use crate::cluster::server_name;
use crate::config::{format_duration, Config, Percent};
use crate::haproxy::{Counters, HaError};
use crate::journal::{RollStatus, StepResult};

/// The canary the plan holds: which node, for how long, judged how.
#[derive(Debug, Clone, Serialize)]
pub struct CanaryPlan {
    pub node: String,
    #[serde(serialize_with = "as_duration")]
    pub window: Duration,
    pub max_5xx: Percent,
    pub min_requests: u64,
}

fn as_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_duration(*d))
}

impl CanaryPlan {
    /// How `--plan` says the rule.
    pub fn rule(&self) -> String {
        format!(
            "canary {}: watched {} under real traffic; fails above {} 5xx (and above the other servers' rate), or with fewer than {} requests",
            self.node,
            format_duration(self.window),
            self.max_5xx,
            self.min_requests
        )
    }
}

/// The canary window wanted: `--canary [D]` (D, else `[roll] canary`, else 2m), `--no-canary`,
/// else `[roll] canary`. Never on `rollback`: going back to a known version must not wait.
pub(super) fn window(cfg: &Config, opts: &RollOptions) -> Option<Duration> {
    if opts.rollback || opts.no_canary {
        return None;
    }
    match opts.canary {
        Some(Some(d)) => Some(d),
        Some(None) => Some(cfg.roll.canary.unwrap_or(Duration::from_secs(120))),
        None => cfg.roll.canary,
    }
}

/// One LB's figures over the window.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LbFigures {
    pub lb: String,
    pub requests: u64,
    pub errors_5xx: u64,
    pub others_requests: u64,
    pub others_5xx: u64,
}

/// What decided the canary: the figures `--json`, the journal and the notification carry.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub node: String,
    pub passed: bool,
    /// Why it passed or failed, in a sentence with the figures.
    pub reason: String,
    /// How long it was watched (less than the window when it failed early).
    pub watched_secs: f64,
    /// Responses the canary served in the window, on every LB.
    pub requests: u64,
    /// Of which 5xx: the failed requests users saw from the canary.
    pub errors_5xx: u64,
    /// `errors_5xx / requests`, in percent.
    pub rate_5xx: f64,
    pub others_requests: u64,
    pub others_5xx: u64,
    pub others_rate_5xx: f64,
    pub max_5xx: f64,
    pub min_requests: u64,
    /// HAProxy's average total time (ms) of the canary's last requests, and of the others'
    /// (weighted by their requests), for the record: the rule is on errors.
    pub ttime_ms: u64,
    pub others_ttime_ms: u64,
    pub per_lb: Vec<LbFigures>,
    /// Too few requests, accepted by `--force`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    /// The slowest reading of every LB's counters (one `show stat` each), in ms, and how many
    /// were taken: what the canary costs beyond its window (`scripts/bench-roll`).
    pub sample_ms_max: f64,
    pub samples: u32,
}

fn rate(errors: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        errors as f64 * 100.0 / requests as f64
    }
}

/// A counter's growth between two samples; a smaller value means the LB restarted (a reload
/// clears the counters), so the whole value is the growth since.
fn grew(before: u64, now: u64) -> u64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

/// The verdict on the window between `before` and `now` (each LB's counters, in LB order).
/// `complete`: the window is over (too little traffic fails only then). Pure, for unit tests.
pub(super) fn judge(
    canary: &CanaryPlan,
    server: &str,
    lbs: &[(String, Vec<Counters>, Vec<Counters>)],
    watched: Duration,
    complete: bool,
    force: bool,
) -> Option<Verdict> {
    let (per_lb, ttime, others_ttime) = figures(server, lbs);
    let sum = |g: fn(&LbFigures) -> u64| per_lb.iter().map(g).sum::<u64>();
    let (requests, errors) = (sum(|f| f.requests), sum(|f| f.errors_5xx));
    let (others, others_errors) = (sum(|f| f.others_requests), sum(|f| f.others_5xx));
    let (r, o) = (rate(errors, requests), rate(others_errors, others));
    let max = canary.max_5xx.0;
    let enough = requests >= canary.min_requests;
    let bad = r > max && r > o;
    let figures = format!(
        "{errors} of {requests} requests answered 5xx ({r:.2}%; the other servers {others_errors} of {others}, {o:.2}%)"
    );
    let (passed, reason, forced) = if enough && bad {
        (
            false,
            format!(
                "{}: {figures}: above canary_max_5xx {} and above the other servers",
                canary.node, canary.max_5xx
            ),
            false,
        )
    } else if !complete {
        return None;
    } else if !enough && !force {
        (
            false,
            format!(
                "{}: not enough traffic to judge: {requests} requests in {}, fewer than canary_min_requests = {}; run when the site has users, lower canary_min_requests, or use --force to accept it unjudged",
                canary.node,
                format_duration(Duration::from_secs(watched.as_secs())),
                canary.min_requests
            ),
            false,
        )
    } else if !enough {
        (
            true,
            format!(
                "{}: --force: accepted with too little traffic to judge ({requests} requests, fewer than canary_min_requests = {}); {figures}",
                canary.node, canary.min_requests
            ),
            true,
        )
    } else {
        (
            true,
            format!(
                "{}: {figures}: within canary_max_5xx {}",
                canary.node, canary.max_5xx
            ) + if r > max {
                ", as the other servers"
            } else {
                ""
            },
            false,
        )
    };
    Some(Verdict {
        node: canary.node.clone(),
        passed,
        reason,
        watched_secs: (watched.as_secs_f64() * 10.0).round() / 10.0,
        requests,
        errors_5xx: errors,
        rate_5xx: (r * 100.0).round() / 100.0,
        others_requests: others,
        others_5xx: others_errors,
        others_rate_5xx: (o * 100.0).round() / 100.0,
        max_5xx: max,
        min_requests: canary.min_requests,
        ttime_ms: ttime,
        others_ttime_ms: others_ttime,
        per_lb,
        forced,
        sample_ms_max: 0.0,
        samples: 0,
    })
}

/// Each LB's name and its servers' counters, in LB order.
type Sample = Vec<(String, Vec<Counters>)>;

/// Every LB's growth over the window for the canary's `server` and for the others; the
/// canary's `ttime` and the others' (weighted by their requests).
fn figures(
    server: &str,
    lbs: &[(String, Vec<Counters>, Vec<Counters>)],
) -> (Vec<LbFigures>, u64, u64) {
    let mut per_lb = Vec::new();
    let (mut ttime, mut others_ttime_sum, mut others) = (0u64, 0u64, 0u64);
    for (lb, before, now) in lbs {
        let mut f = LbFigures {
            lb: lb.clone(),
            ..Default::default()
        };
        for c in now {
            let b = before.iter().find(|b| b.name == c.name);
            let requests = grew(b.map_or(0, |b| b.responses), c.responses);
            let errors = grew(b.map_or(0, |b| b.errors_5xx), c.errors_5xx);
            if c.name == server {
                f.requests += requests;
                f.errors_5xx += errors;
                ttime = ttime.max(c.ttime_ms);
            } else {
                f.others_requests += requests;
                f.others_5xx += errors;
                others_ttime_sum += c.ttime_ms * requests;
                others += requests;
            }
        }
        per_lb.push(f);
    }
    (
        per_lb,
        ttime,
        others_ttime_sum.checked_div(others).unwrap_or(0),
    )
}

/// Every LB's counters now, and how long reading them took.
fn sample(ctx: &Ctx) -> Result<(Sample, Duration), HaError> {
    let t = Instant::now();
    let all = ctx
        .lbs()
        .iter()
        .map(|lb| Ok((lb.name().to_string(), lb.counters()?)))
        .collect::<Result<_, HaError>>()?;
    Ok((all, t.elapsed()))
}

/// Watches the canary for its window (or until it fails); the verdict, passed or failed, is
/// journalled with its figures. A failed verdict is `Err(RollError::Canary)`, for
/// [`execute::run_plan`] to send the canary back.
pub(super) fn watch(
    ctx: &mut Ctx,
    plan: &Plan,
    canary: &CanaryPlan,
    opts: &RollOptions,
) -> Result<Verdict, RollError> {
    let canary = canary.clone();
    let step = Step::canary(&canary);
    let server = ctx
        .cfg()
        .nodes
        .iter()
        .find(|n| n.name == canary.node)
        .map(server_name)
        .unwrap_or_else(|| canary.node.clone());
    let t = Instant::now();
    let verdict = observe(ctx, plan, &canary, &server, opts.force)?;
    ctx.reporter().step_done();
    let figures = serde_json::to_string(&verdict).unwrap_or_default();
    let result = if verdict.passed {
        StepResult::Ok
    } else {
        StepResult::Failed
    };
    ctx.log_step(&step, None, result, t, &figures);
    notice::canary(ctx, plan, opts, &verdict);
    if verdict.forced {
        ctx.warn(verdict.reason.clone());
    }
    if verdict.passed {
        ctx.reporter()
            .note(&format!("canary passed: {}", verdict.reason));
        Ok(verdict)
    } else {
        ctx.reporter().note(&format!(
            "canary FAILED: {}; sending it back",
            verdict.reason
        ));
        Err(RollError::Canary {
            verdict: Box::new(verdict),
            back: String::new(),
            journal: ctx.journal_path(),
        })
    }
}

/// Samples every LB once a second until the canary is judged (its window is over, or it has
/// failed already); says the figures so far as it goes.
fn observe(
    ctx: &mut Ctx,
    plan: &Plan,
    canary: &CanaryPlan,
    server: &str,
    force: bool,
) -> Result<Verdict, RollError> {
    let t = Instant::now();
    let mut samples = 1u32;
    let mut last_note = 0;
    ctx.reporter().step(&format!(
        "canary {}: watching its 5xx rate on every LB for {}",
        canary.node,
        format_duration(canary.window)
    ));
    // An LB that cannot be read leaves the canary unjudged: the roll stops there.
    let unread = |ctx: &mut Ctx, e: HaError| {
        ctx.reporter().step_done();
        let msg = format!(
            "canary: {e}; {} is on {} and in rotation, not judged",
            canary.node, plan.target
        );
        ctx.fail(Some(&canary.node), msg)
    };
    let (base, mut slowest) = sample(ctx).map_err(|e| unread(ctx, e))?;
    loop {
        let left = canary.window.saturating_sub(t.elapsed());
        std::thread::sleep(left.min(Duration::from_secs(1)));
        if ctx.interrupted() {
            let msg = format!(
                "stopped during the canary window of {} (on {}, in rotation, not judged); run again with --resume",
                canary.node, plan.target
            );
            ctx.reporter().step_done();
            return Err(ctx.interrupt(msg));
        }
        let (now, took) = sample(ctx).map_err(|e| unread(ctx, e))?;
        slowest = slowest.max(took);
        samples += 1;
        let lbs: Vec<_> = base
            .iter()
            .zip(now)
            .map(|((lb, b), (_, n))| (lb.clone(), b.clone(), n))
            .collect();
        let complete = t.elapsed() >= canary.window;
        if let Some(mut v) = judge(canary, server, &lbs, t.elapsed(), complete, force) {
            v.sample_ms_max = (slowest.as_secs_f64() * 1e4).round() / 10.0;
            v.samples = samples;
            return Ok(v);
        }
        let window_ms = canary.window.as_millis() as u64;
        ctx.reporter()
            .progress((t.elapsed().as_millis() as u64).min(window_ms), window_ms);
        // The figures so far, every 10 s: a CI log gets a line, not one a second.
        let secs = t.elapsed().as_secs();
        if secs / 10 > last_note {
            last_note = secs / 10;
            if let Some(v) = judge(canary, server, &lbs, t.elapsed(), true, true) {
                ctx.reporter().note(&format!(
                    "canary {}: {} requests, {} 5xx ({:.2}%; others {:.2}%), {} left",
                    canary.node,
                    v.requests,
                    v.errors_5xx,
                    v.rate_5xx,
                    v.others_rate_5xx,
                    format_duration(Duration::from_secs(
                        canary.window.saturating_sub(t.elapsed()).as_secs()
                    ))
                ));
            }
        }
    }
}

/// A failed canary goes back to the version it ran (the same steps as `--auto-rollback`), and
/// the roll stops with the verdict.
pub(super) fn send_back(
    ctx: &mut Ctx,
    plan: &Plan,
    upgraded: &[String],
    opts: &RollOptions,
    error: RollError,
) -> RollError {
    let RollError::Canary { verdict, .. } = error else {
        return error;
    };
    ctx.log(
        Some(&verdict.node),
        None,
        "canary failed",
        StepResult::Info,
        Instant::now(),
        &verdict.reason,
    );
    let back = match back_to_previous(ctx, plan, upgraded, opts) {
        Ok(back) => format!("back on its previous version: {}", back.join(", ")),
        Err(e) => format!("going back to its previous version failed: {e}"),
    };
    ctx.state_mut().status = RollStatus::Failed;
    ctx.state_mut().failed_node = Some(verdict.node.clone());
    ctx.state_mut().reason = Some(verdict.reason.clone());
    ctx.save_state();
    RollError::Canary {
        verdict,
        back,
        journal: ctx.journal_path(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, responses: u64, errors_5xx: u64) -> Counters {
        Counters {
            name: name.into(),
            responses,
            errors_5xx,
            rtime_ms: 0,
            ttime_ms: 10,
        }
    }

    fn plan() -> CanaryPlan {
        CanaryPlan {
            node: "web1".into(),
            window: Duration::from_secs(60),
            max_5xx: Percent(1.0),
            min_requests: 100,
        }
    }

    fn lbs(canary: (u64, u64), others: (u64, u64)) -> Vec<(String, Vec<Counters>, Vec<Counters>)> {
        // Counters that were not zero at the start: only the growth counts.
        let before = vec![c("web1", 1000, 50), c("web2", 1000, 50)];
        let now = vec![
            c("web1", 1000 + canary.0, 50 + canary.1),
            c("web2", 1000 + others.0, 50 + others.1),
        ];
        vec![("lb1".into(), before, now)]
    }

    /// The verdict when the canary served `canary` (requests, 5xx) and web2 `others`, `secs`
    /// into a 60 s window (complete at 60), with `--force` or not.
    fn judged(canary: (u64, u64), others: (u64, u64), secs: u64, force: bool) -> Option<Verdict> {
        let window = Duration::from_secs(secs);
        judge(
            &plan(),
            "web1",
            &lbs(canary, others),
            window,
            secs >= 60,
            force,
        )
    }

    #[test]
    fn a_canary_above_the_limit_and_the_others_fails_even_before_its_window_ends() {
        let v = judged((200, 100), (200, 0), 10, false).unwrap();
        assert!(!v.passed);
        assert_eq!((v.requests, v.errors_5xx, v.rate_5xx), (200, 100, 50.0));
        assert_eq!((v.others_requests, v.others_5xx), (200, 0));
        assert!(
            v.reason
                .contains("100 of 200 requests answered 5xx (50.00%"),
            "{}",
            v.reason
        );
    }

    #[test]
    fn a_site_wide_outage_is_not_blamed_on_the_canary() {
        assert!(judged((200, 20), (400, 80), 60, false).unwrap().passed);
        // Below the limit: passes, whatever the others do.
        assert!(judged((1000, 5), (1000, 0), 60, false).unwrap().passed);
    }

    #[test]
    fn too_little_traffic_fails_at_the_end_unless_forced_and_a_good_canary_waits_its_window() {
        assert_eq!(judged((10, 0), (10, 0), 10, false), None);
        assert_eq!(judged((500, 0), (500, 0), 10, false), None);
        let v = judged((10, 0), (10, 0), 60, false).unwrap();
        assert!(
            !v.passed
                && v.reason
                    .contains("not enough traffic to judge: 10 requests in 1m"),
            "{}",
            v.reason
        );
        let v = judged((10, 0), (10, 0), 60, true).unwrap();
        assert!(v.passed && v.forced);
    }

    #[test]
    fn counters_cleared_by_a_reload_count_from_zero() {
        let before = vec![c("web1", 1000, 0)];
        let now = vec![c("web1", 150, 3)];
        let v = judge(
            &plan(),
            "web1",
            &[("lb1".into(), before, now)],
            Duration::from_secs(60),
            true,
            false,
        )
        .unwrap();
        assert_eq!((v.requests, v.errors_5xx), (150, 3));
        assert!(!v.passed);
    }
}
