//! Freeze windows (`[[roll.freeze]]`), checked when a roll starts: inside one, `roll` is refused
//! (exit 3) naming the window, unless `--force`, which the journal records. `rollback` is never
//! frozen: going back to a known version is how a bad release is undone, in a freeze or not.

use super::{warn, RollError, RollOptions};
use crate::config::Config;
use crate::report::Reporter;

/// The window `now` is in, if any, for a roll (never for a rollback).
pub(super) fn window_now(cfg: &Config, opts: &RollOptions) -> Option<String> {
    if opts.rollback {
        return None;
    }
    crate::cluster::frozen_now(cfg)
}

/// Refuses a roll inside a freeze window; with `--force`, or for `--plan`, says so and returns
/// the window (for the plan, and the journal).
pub(super) fn check(
    cfg: &Config,
    opts: &RollOptions,
    reporter: &dyn Reporter,
    warnings: &mut Vec<String>,
) -> Result<Option<String>, RollError> {
    let Some(window) = window_now(cfg, opts) else {
        return Ok(None);
    };
    if opts.force {
        warn(
            reporter,
            warnings,
            format!("--force: rolling inside the freeze window {window}"),
        );
    } else if opts.plan {
        warn(
            reporter,
            warnings,
            format!(
                "inside the freeze window {window}: `roll` is refused now (exit 3) unless --force"
            ),
        );
    } else {
        return Err(RollError::Frozen { window });
    }
    Ok(Some(window))
}
