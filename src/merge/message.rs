//! What a merge says: the deployment commit's message (a summary, what changed, the pins as
//! trailers), the summary lines `merge` prints and the release notes in Markdown.

use std::fmt::Write as _;

use super::lock::Lock;
use super::{short, Merged};

/// The deployment commit's message: a summary line, what changed, and the pins as trailers.
pub(super) fn commit_message(m: &Merged, lock: &Lock) -> String {
    let mut s = String::new();
    let release = m.core_release.clone().unwrap_or_default();
    let _ = write!(s, "Moodle {release}");
    let n = lock.plugins.len();
    let _ = writeln!(s, " with {n} plugin{}\n", if n == 1 { "" } else { "s" });
    for line in summary_lines(m) {
        let _ = writeln!(s, "{line}");
    }
    let _ = writeln!(s);
    if let Some(u) = &lock.upstream {
        let _ = writeln!(
            s,
            "Moodle-Release-Upstream: {} {} {}",
            u.url, u.reference, u.commit
        );
    }
    for p in &lock.plugins {
        let _ = writeln!(
            s,
            "Moodle-Release-Plugin: {} {} {} {}",
            p.component, p.pin.url, p.pin.reference, p.pin.commit
        );
    }
    for p in &m.patches {
        let _ = writeln!(s, "Moodle-Release-Patch: {} {}", p.branch, p.commit);
    }
    s
}

/// One line per change, for people: core, each plugin, patches.
pub fn summary_lines(m: &Merged) -> Vec<String> {
    let mut out = Vec::new();
    let c = &m.core;
    match (&c.from, &c.to) {
        (Some(f), Some(t)) if f != t => out.push(format!(
            "- core: {} ({f}) -> {} ({t})",
            m.previous_release.clone().unwrap_or_default(),
            m.core_release.clone().unwrap_or_default()
        )),
        (None, Some(t)) => out.push(format!(
            "- core: {} ({t})",
            m.core_release.clone().unwrap_or_default()
        )),
        _ => {}
    }
    for p in &m.plugins {
        match (&p.from, &p.to) {
            (None, Some(t)) => out.push(format!("- {}: added, version {t}", p.component)),
            (Some(f), None) => out.push(format!("- {}: removed (was {f})", p.component)),
            (Some(f), Some(t)) if f != t => out.push(format!("- {}: {f} -> {t}", p.component)),
            _ => {}
        }
    }
    for p in &m.patches {
        out.push(format!(
            "- patch {} ({}) merged",
            p.branch,
            short(&p.commit)
        ));
    }
    out
}

/// `--notes FILE`: the change summary as Markdown.
pub fn notes_markdown(m: &Merged) -> String {
    let mut s = format!(
        "## Moodle {}\n\n",
        m.core_release.clone().unwrap_or_default()
    );
    let lines = summary_lines(m);
    if lines.is_empty() || !m.changed {
        s.push_str("No change.\n");
    }
    for l in lines {
        s.push_str(&l);
        s.push('\n');
    }
    for w in &m.warnings {
        let _ = writeln!(s, "\n> warning: {w}");
    }
    s
}
