//! Cross-field checks that serde cannot express: names used twice, a web node without a
//! health URL, a plugin path that leaves the Moodle tree.

use std::path::Path;

use super::locate::{describe, error_line, Seg};
use super::{Config, ConfigError, Role};

/// A check's failure: the key it is about, and what is wrong.
type Checked = Result<(), (Vec<Seg>, String)>;

use Seg::Index as I;

fn k(s: &str) -> Seg {
    Seg::Key(s.to_string())
}

impl Config {
    /// Cross-field checks that serde cannot express, each part in a function of its own; the
    /// first failure is reported with the file, line and key.
    pub(super) fn check(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let checked = self
            .check_site()
            .and_then(|()| self.check_plugins())
            .and_then(|()| self.check_roll())
            .and_then(|()| self.check_nodes());
        checked.map_err(|(segs, message)| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: error_line(text, &segs, None),
            key: describe(&segs),
            message,
        })
    }

    /// `[site]`: one-line description, globs, one dependency per item, config.php's place.
    fn check_site(&self) -> Checked {
        if self.site.description.trim().is_empty() || self.site.description.contains('\n') {
            return Err((
                vec![k("site"), k("description")],
                "must be one non-empty line".into(),
            ));
        }
        for (i, g) in self.site.exclude.iter().enumerate() {
            if let Err(e) = globset::Glob::new(g) {
                return Err((
                    vec![k("site"), k("exclude"), I(i)],
                    format!("`{g}` is not a glob: {e}"),
                ));
            }
        }
        for (i, d) in self.site.depends.iter().enumerate() {
            if d.trim().is_empty() || d.contains(['\n', ',']) {
                return Err((
                    vec![k("site"), k("depends"), I(i)],
                    format!("`{d}` is not one dependency; write one per list item, e.g. \"php8.2-fpm | php-fpm\""),
                ));
            }
        }
        let (dir, releases) = (&self.site.install_dir.0, self.site.releases_dir());
        let inside = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
        if self.site.layout == super::SiteLayout::Releases
            && (inside(&releases, dir) || inside(dir, &releases))
        {
            return Err((
                vec![k("site"), k("releases_dir")],
                format!("`{releases}` and install_dir `{dir}` must not hold one another: install_dir becomes a symlink to a release under it"),
            ));
        }
        if self.site.layout == super::SiteLayout::Releases
            && self.site.config_php_target().is_none()
        {
            return Err((
                vec![k("site"), k("config_php")],
                "`\"\"` ships no config.php stub, and with layout = \"releases\" a release folder holds only what its package ships: give the node's settings file (default /etc/<package>/config.php)".into(),
            ));
        }
        if let Some(t) = self.site.config_php_target() {
            if !t.starts_with('/') || t.contains(['\'', '\\', '\n']) {
                return Err((
                    vec![k("site"), k("config_php")],
                    format!("`{t}` must be an absolute path, e.g. \"/etc/moodle/config.php\""),
                ));
            }
        }
        Ok(())
    }

    /// `[[plugins]]`: each component once, each path inside the Moodle tree.
    fn check_plugins(&self) -> Checked {
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.plugins.iter().enumerate() {
            if !seen.insert(p.component.0.clone()) {
                return Err((
                    vec![k("plugins"), I(i), k("component")],
                    format!("`{}` is listed twice", p.component),
                ));
            }
            if let Some(why) = p.path.as_deref().and_then(bad_plugin_path) {
                return Err((
                    vec![k("plugins"), I(i), k("path")],
                    format!(
                        "`{}` {why}: give a folder inside the Moodle tree, e.g. \"mod/customcert\" (or leave `path` out: it follows from `component`)",
                        p.path.as_deref().unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[roll]`, `[apt]` and `[[notify]]` values that only make sense in range.
    fn check_roll(&self) -> Checked {
        if self.roll.batch == 0 {
            return Err((vec![k("roll"), k("batch")], "must be at least 1".into()));
        }
        if let Some(h) = &self.roll.health_host {
            if h.is_empty() || h.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/')
            {
                return Err((
                    vec![k("roll"), k("health_host")],
                    format!(
                        "{h:?} is not a host name; write the site's, e.g. \"moodle.example.edu\""
                    ),
                ));
            }
        }
        if let Some(apt) = &self.apt {
            if apt.keep == 0 {
                return Err((vec![k("apt"), k("keep")], "must be at least 1".into()));
            }
        }
        for (i, n) in self.notify.iter().enumerate() {
            if n.url.is_some() == n.url_env.is_some() {
                return Err((
                    vec![k("notify"), I(i)],
                    "give `url` (the webhook) or `url_env` (the variable that holds it), one of them".into(),
                ));
            }
        }
        if self.roll.canary.is_some_and(|c| c.is_zero()) {
            return Err((
                vec![k("roll"), k("canary")],
                "must be longer than 0s; leave it out for no canary".into(),
            ));
        }
        Ok(())
    }

    /// `[[nodes]]`: names and servers used once, a health URL for every web node.
    fn check_nodes(&self) -> Checked {
        let mut names = std::collections::BTreeSet::new();
        let mut servers = std::collections::BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !names.insert(n.name.clone()) {
                return Err((
                    vec![k("nodes"), I(i), k("name")],
                    format!("`{}` is used by two nodes", n.name),
                ));
            }
            if n.role == Role::Web {
                if n.http.is_none() {
                    return Err((
                        vec![k("nodes"), I(i)],
                        format!(
                            "web node `{}` needs `http`, the base URL of its health check",
                            n.name
                        ),
                    ));
                }
                if !servers.insert(n.server_name().to_string()) {
                    return Err((
                        vec![k("nodes"), I(i), k("server")],
                        format!("server `{}` is used by two nodes", n.server_name()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Why a plugin `path` cannot be grafted into dirroot, if it cannot: it is the folder the
/// plugin's tree replaces, so one that is absolute or climbs out with `..` would write outside
/// the site (and into every node's filesystem once packaged).
fn bad_plugin_path(path: &str) -> Option<&'static str> {
    if path.starts_with('/') {
        Some("is absolute")
    } else if path.split('/').any(|c| c == "..") {
        Some("leaves the Moodle tree")
    } else if path.split('/').any(|c| c.is_empty() || c == ".") {
        Some("has an empty or `.` part")
    } else if path.contains(['\\', '\n', '\r']) {
        Some("has a backslash or a line break")
    } else {
        None
    }
}
