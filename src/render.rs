//! The text each command prints on stdout without `--json`: one function per command, so
//! `run.rs` only dispatches and a change of wording happens in one place.

use std::io::Write;

use crate::apt;
use crate::merge;
use crate::roll;
use crate::status::Status;

/// `merge`: what the deployment branch is now, the changes, the lock written.
pub fn merge(m: &merge::Merged, out: &mut dyn Write) -> std::io::Result<()> {
    let what = if m.dry_run { "would be" } else { "is" };
    if m.changed {
        writeln!(
            out,
            "{} {what} now Moodle {}{}",
            m.branch,
            m.core_release.clone().unwrap_or_default(),
            if m.dry_run {
                String::new()
            } else {
                format!(" ({})", &m.commit[..12.min(m.commit.len())])
            }
        )?;
        for line in merge::summary_lines(m) {
            writeln!(out, "  {line}")?;
        }
    } else {
        writeln!(
            out,
            "{} is up to date: nothing changed ({})",
            m.branch,
            &m.commit[..12.min(m.commit.len())]
        )?;
    }
    if m.lock_changed {
        let verb = if m.dry_run { "would write" } else { "wrote" };
        writeln!(out, "{verb} {}", m.lock.display())?;
    }
    Ok(())
}

/// `publish`: what was added, kept and removed, and what the repository holds now.
pub fn publish(
    p: &apt::Published,
    package: &str,
    keep: u32,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    for v in &p.added {
        writeln!(out, "added {} {v}", package)?;
    }
    for v in &p.unchanged {
        writeln!(
            out,
            "{} {v} is already published with the same bytes: nothing to do",
            package
        )?;
    }
    for v in &p.removed {
        writeln!(out, "removed {} {v} (beyond keep = {keep})", package)?;
    }
    for v in &p.replaced {
        writeln!(
            out,
            "the release of {v} replaces {package} {v}, the in-place layout's package of that version"
        )?;
    }
    writeln!(
        out,
        "{}: {} version(s) of {} ({}), {}",
        p.repo.display(),
        p.versions.len(),
        package,
        p.versions.join(", "),
        if p.signed {
            "signed"
        } else {
            "NOT signed: set [apt] sign_key"
        }
    )?;
    Ok(())
}

/// The program as `--plan` shows it: every step, numbered; the steps of one group (run at
/// once) under one number; a batch's steps under its heading; each group's failure rule when
/// it changes.
fn program(p: &roll::Plan, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "steps (one number runs at once; [what a failure does]):"
    )?;
    let mut batch = None;
    for (i, g) in p.program.iter().enumerate() {
        if g.batch != batch {
            batch = g.batch;
            if let Some(b) = batch {
                writeln!(out, "  batch {}:", b + 1)?;
            }
        }
        for (k, s) in g.steps.iter().enumerate() {
            let lbs = if s.on_every_lb() { " (every LB)" } else { "" };
            let line = format!("{}{lbs}", s.describe(&p.target));
            if k == 0 {
                writeln!(out, "  {:>3}. {line} [{}]", i + 1, g.on_fail.tag())?;
            } else {
                writeln!(out, "       {line}")?;
            }
        }
    }
    writeln!(out, "  (leave out: the node stays out of rotation (maint) and its batch goes on; beyond the budget of failed nodes the roll stops)")?;
    Ok(())
}

/// `status`: a line per node (version, health, each LB's view), the last roll, the lock.
pub fn status(st: &Status, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "newest in the repository: {}",
        st.newest.clone().unwrap_or_else(|| "-".into())
    )?;
    for n in &st.nodes {
        let lbs = n
            .lbs
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        // The release the node's PHP runs, beside the package installed: `php 2-1`, or
        // `php STALE 1-1` when PHP still runs what its opcode cache kept.
        let php = match (&n.php, &n.version) {
            (None, _) => String::new(),
            (Some(p), Some(v)) if p == v => format!("php {p} "),
            (Some(p), _) if p.starts_with('?') => "php ? ".into(),
            (Some(p), _) => format!("php STALE {p} "),
        };
        // The releases layout: the releases beside the live one, each a rollback by switch.
        let others: Vec<&str> = n
            .releases
            .iter()
            .filter(|r| Some(*r) != n.version.as_ref())
            .map(String::as_str)
            .collect();
        let others = if others.is_empty() {
            String::new()
        } else {
            format!(" (also installed: {})", others.join(", "))
        };
        writeln!(
            out,
            "{:<10} {:<5} {:<28} {:<10} {php}{}{others}{}",
            n.name,
            n.role,
            n.version.clone().unwrap_or_else(|| "(none)".into()),
            match n.healthy {
                Some(true) => "healthy",
                Some(false) => "UNHEALTHY",
                None => "-",
            },
            lbs,
            n.error
                .as_ref()
                .map(|e| format!(" ERROR: {e}"))
                .unwrap_or_default()
        )?;
    }
    if let Some(r) = &st.roll {
        writeln!(
            out,
            "last {}: to {} is {}{}",
            r.kind,
            r.target,
            r.status,
            r.reason
                .as_ref()
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        )?;
        if !r.failed_nodes.is_empty() {
            writeln!(
                out,
                "failed within max_failed_nodes, left out of rotation (maint): {}; the next roll takes them first",
                r.failed_nodes.join(", ")
            )?;
        }
        if r.upgrade_left() {
            writeln!(
                out,
                "database upgrade pending: the site is in maintenance mode; `{}` runs the upgrade and ends it",
                r.resume_command()
            )?;
        }
    }
    if let Some(e) = &st.roll_error {
        writeln!(out, "last roll: unknown: {e}")?;
    }
    if let Some(w) = &st.frozen {
        writeln!(
            out,
            "inside the freeze window {w}: `roll` is refused until it ends (exit 3; --force overrides); `rollback` is not"
        )?;
    }
    if let Some(l) = &st.lock {
        writeln!(out, "cluster lock on {}: {}", l.node, l.lock)?;
    }
    Ok(())
}

/// `roll` and `rollback`: the plan (with every step, for `--plan`), the timeline, a summary.
pub fn roll(o: &roll::Outcome, out: &mut dyn Write) -> std::io::Result<()> {
    let p = &o.plan;
    writeln!(
        out,
        "{} to {}: {} path ({})",
        p.kind, p.target, p.path, p.why
    )?;
    writeln!(out, "  target {}: {}", p.target, p.target_why)?;
    for (node, v) in &p.installed {
        writeln!(
            out,
            "  {node:<10} {}",
            v.clone().unwrap_or_else(|| "(not installed)".into())
        )?;
    }
    for (i, b) in p.batches().iter().enumerate() {
        writeln!(out, "  batch {}: {}", i + 1, b.join(", "))?;
    }
    if let Some(c) = &p.canary() {
        writeln!(out, "  {}", c.rule())?;
    }
    let cron = p.cron();
    if !cron.is_empty() {
        writeln!(out, "  then cron: {}", cron.join(", "))?;
    }
    if let Some(w) = &p.frozen {
        writeln!(out, "  inside the freeze window {w}")?;
    }
    if let Some(n) = &p.purge_on() {
        writeln!(out, "  then purge_command on {n} (Moodle's caches)")?;
    }
    if !p.skipped.is_empty() {
        writeln!(out, "  already on {}: {}", p.target, p.skipped.join(", "))?;
    }
    if o.planned_only && !p.program.is_empty() {
        program(p, out)?;
    }
    if o.planned_only {
        writeln!(out, "(--plan: nothing was changed)")?;
        return Ok(());
    }
    timeline(&o.timeline, out)?;
    if let Some(m) = o.maintenance_secs {
        writeln!(out, "the site was in maintenance mode for {m:.1}s")?;
    }
    if let Some(v) = &o.canary {
        writeln!(out, "canary passed: {}", v.reason)?;
    }
    for f in &o.failed {
        writeln!(
            out,
            "FAILED {} (within max_failed_nodes): {}; out of rotation (maint) until fixed",
            f.node, f.reason
        )?;
    }
    writeln!(
        out,
        "done: {} node(s) on {} in {:.1}s{}",
        o.upgraded.len(),
        p.target,
        o.seconds,
        o.journal
            .as_ref()
            .map(|j| format!("; journal {}", j.display()))
            .unwrap_or_default()
    )?;
    Ok(())
}

/// The journal's lines, each with its time since the first.
fn timeline(timeline: &[crate::journal::Entry], out: &mut dyn Write) -> std::io::Result<()> {
    if let Some(first) = timeline.first() {
        writeln!(out, "timeline:")?;
        for e in timeline {
            let at = (e.time_ms.saturating_sub(first.time_ms)) as f64 / 1000.0;
            writeln!(
                out,
                "  {at:>7.1}s  {:<8} {:<5} {:<26} {}{}",
                e.node.clone().unwrap_or_default(),
                e.lb.clone().unwrap_or_default(),
                e.action,
                e.result,
                if e.detail.is_empty() || e.result == crate::journal::StepResult::Ok {
                    String::new()
                } else {
                    format!(": {}", e.detail)
                }
            )?;
        }
    }
    Ok(())
}

/// `build`: a summary on stderr (what was built, how big, how fast), the package's path on
/// stdout, for a script to read.
pub fn built(b: &crate::build::Built, secs: f64, out: &mut dyn Write) -> std::io::Result<()> {
    let reused = match b.md5_reused {
        0 => String::new(),
        n => format!(" ({n} MD5s from the last build)"),
    };
    eprintln!(
        "built {} {} (Moodle {}, {} plugins): {} files, {:.1} MB -> {:.1} MB in {secs:.1}s{reused}",
        b.package,
        b.version,
        b.site.core.release,
        b.site.plugins.len(),
        b.files,
        b.content_bytes as f64 / 1e6,
        b.size as f64 / 1e6,
    );
    writeln!(out, "{}", b.path.display())
}
