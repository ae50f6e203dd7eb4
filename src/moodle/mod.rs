//! What a Moodle tree is: its core version, its plugins' versions, and a fingerprint of every
//! `db/` folder.
//!
//! `build` records this inside the package so that `roll` can tell a code-only upgrade (safe
//! to roll node by node) from one that changes the database (needs maintenance mode and
//! `upgrade.php` once), as Moodle 4.2+ itself does for `upgrade.php --is-maintenance-required`.

pub mod release;
pub mod versionphp;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::source::{Entry, Kind, Reader, SourceError};
pub use release::{Release, ReleaseError};
pub use versionphp::VersionPhp;

/// Where the web code sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Web code at the root (Moodle up to 5.0).
    Classic,
    /// Web code under `public/` (Moodle 5.1+).
    Public,
}

/// Core's `version.php`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Core {
    /// `$version`, as written (`2022112810.00`).
    pub version: String,
    /// `$release`.
    pub release: String,
    /// `$branch` (`401`).
    pub branch: String,
    /// `$maturity` (`MATURITY_STABLE`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maturity: Option<String>,
}

/// A plugin found in the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Folder relative to dirroot.
    pub path: String,
    /// `$plugin->version`, as written.
    pub version: String,
    /// `$plugin->release`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

/// What `build` records about a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteInfo {
    pub layout: Layout,
    pub core: Core,
    /// Every plugin by frankenstyle component.
    pub plugins: BTreeMap<String, PluginInfo>,
    /// sha256 over the path and git blob id of every file in a `db/` folder.
    pub db_hash: String,
    /// sha256 over core's and every plugin's version: equal hashes mean no `$version` changed.
    pub versions_hash: String,
}

/// The tree is not a Moodle tree we can package.
#[derive(Debug, thiserror::Error)]
pub enum MoodleError {
    #[error("no `version.php` at the root of the tree (nor `public/version.php`): this is not a Moodle dirroot")]
    NoVersionPhp,
    #[error("`{path}` has no `{key}`: cannot tell which Moodle this is")]
    MissingField { path: String, key: &'static str },
    #[error("`{path}`: {source}")]
    Release { path: String, source: ReleaseError },
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl SiteInfo {
    /// Reads core and plugin versions and the `db/` fingerprint from `entries`.
    pub fn analyze(entries: &[Entry], reader: &Reader) -> Result<SiteInfo, MoodleError> {
        let find = |p: &[u8]| {
            entries
                .iter()
                .find(|e| e.path == p && matches!(e.kind, Kind::File { .. }))
        };
        let (layout, core_entry) = match (find(b"public/version.php"), find(b"version.php")) {
            (Some(e), _) => (Layout::Public, e),
            (None, Some(e)) => (Layout::Classic, e),
            (None, None) => return Err(MoodleError::NoVersionPhp),
        };
        let core_path = String::from_utf8_lossy(&core_entry.path).into_owned();
        let php = VersionPhp::parse(&reader.read(core_entry)?);
        let field = |key: &'static str| {
            php.text(key)
                .map(str::to_string)
                .ok_or(MoodleError::MissingField {
                    path: core_path.clone(),
                    key,
                })
        };
        let core = Core {
            version: field("version")?,
            release: field("release")?,
            branch: field("branch")?,
            maturity: php.text("maturity").map(str::to_string),
        };
        Release::parse(&core.release).map_err(|source| MoodleError::Release {
            path: core_path.clone(),
            source,
        })?;

        let mut plugins = BTreeMap::new();
        let mut db = Sha256::new();
        for e in entries {
            if !matches!(e.kind, Kind::File { .. }) {
                continue;
            }
            if e.path.ends_with(b"/version.php") && e.path != core_entry.path {
                let php = VersionPhp::parse(&reader.read(e)?);
                if let Some(version) = php.plugin("version") {
                    let dir =
                        String::from_utf8_lossy(&e.path[..e.path.len() - b"/version.php".len()])
                            .into_owned();
                    let component = php
                        .plugin("component")
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("unknown:{dir}"));
                    plugins.insert(
                        component,
                        PluginInfo {
                            path: dir,
                            version: version.to_string(),
                            release: php.plugin("release").map(str::to_string),
                        },
                    );
                }
            }
            if in_db_folder(&e.path) {
                db.update(&e.path);
                db.update(b"\0");
                db.update(reader.blob_id(e)?.as_bytes());
            }
        }
        let mut vh = Sha256::new();
        vh.update(format!("core {}\n", core.version));
        for (c, p) in &plugins {
            vh.update(format!("{c} {}\n", p.version));
        }
        Ok(SiteInfo {
            layout,
            core,
            plugins,
            db_hash: hex::encode(db.finalize()),
            versions_hash: hex::encode(vh.finalize()),
        })
    }

    /// The parsed core release (checked in [`SiteInfo::analyze`]).
    pub fn release(&self) -> Release {
        Release::parse(&self.core.release).expect("checked when analysed")
    }
}

/// True for files under a `db/` folder (`lib/db/upgrade.php`, `mod/x/db/install.xml`).
fn in_db_folder(path: &[u8]) -> bool {
    let mut parts = path.split(|&b| b == b'/').collect::<Vec<_>>();
    parts.pop();
    parts.contains(&&b"db"[..])
}

/// Moodle's plugin types and their folders (core's `lib/components.json` and the subplugin
/// types of core plugins), for deriving a plugin's path before any tree is at hand. `merge`
/// reads the tree's own declarations, which win.
pub const PLUGIN_TYPES: &[(&str, &str)] = &[
    ("aiplacement", "ai/placement"),
    ("aiprovider", "ai/provider"),
    ("antivirus", "lib/antivirus"),
    ("assignfeedback", "mod/assign/feedback"),
    ("assignsubmission", "mod/assign/submission"),
    ("atto", "lib/editor/atto/plugins"),
    ("auth", "auth"),
    ("availability", "availability/condition"),
    ("block", "blocks"),
    ("booktool", "mod/book/tool"),
    ("cachelock", "cache/locks"),
    ("cachestore", "cache/stores"),
    ("calendartype", "calendar/type"),
    ("communication", "communication/provider"),
    ("contenttype", "contentbank/contenttype"),
    ("coursereport", "course/report"),
    ("customfield", "customfield/field"),
    ("datafield", "mod/data/field"),
    ("dataformat", "dataformat"),
    ("datapreset", "mod/data/preset"),
    ("editor", "lib/editor"),
    ("enrol", "enrol"),
    ("factor", "admin/tool/mfa/factor"),
    ("fileconverter", "files/converter"),
    ("filter", "filter"),
    ("format", "course/format"),
    ("forumreport", "mod/forum/report"),
    ("gradeexport", "grade/export"),
    ("gradeimport", "grade/import"),
    ("gradereport", "grade/report"),
    ("gradingform", "grade/grading/form"),
    ("h5plib", "h5p/h5plib"),
    ("local", "local"),
    ("logstore", "admin/tool/log/store"),
    ("ltiservice", "mod/lti/service"),
    ("ltisource", "mod/lti/source"),
    ("media", "media/player"),
    ("message", "message/output"),
    ("mlbackend", "lib/mlbackend"),
    ("mnetservice", "mnet/service"),
    ("mod", "mod"),
    ("paygw", "payment/gateway"),
    ("plagiarism", "plagiarism"),
    ("portfolio", "portfolio"),
    ("profilefield", "user/profile/field"),
    ("qbank", "question/bank"),
    ("qbehaviour", "question/behaviour"),
    ("qformat", "question/format"),
    ("qtype", "question/type"),
    ("quiz", "mod/quiz/report"),
    ("quizaccess", "mod/quiz/accessrule"),
    ("report", "report"),
    ("repository", "repository"),
    ("scormreport", "mod/scorm/report"),
    ("search", "search/engine"),
    ("smsgateway", "sms/gateway"),
    ("theme", "theme"),
    ("tiny", "lib/editor/tiny/plugins"),
    ("tool", "admin/tool"),
    ("webservice", "webservice"),
    ("workshopallocation", "mod/workshop/allocation"),
    ("workshopeval", "mod/workshop/eval"),
    ("workshopform", "mod/workshop/form"),
];

/// The usual folder of `component` relative to the web root (`mod_customcert` -> `mod/customcert`),
/// or `type/name` for a type this table does not know.
pub fn default_plugin_path(component: &crate::config::Component) -> String {
    let (t, n) = component.split();
    match PLUGIN_TYPES.iter().find(|(ty, _)| *ty == t) {
        Some((_, dir)) => format!("{dir}/{n}"),
        None => format!("{t}/{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_folders() {
        assert!(in_db_folder(b"lib/db/upgrade.php"));
        assert!(in_db_folder(b"mod/x/db/install.xml"));
        assert!(!in_db_folder(b"db"));
        assert!(!in_db_folder(b"lib/dbx/a.php"));
        assert!(!in_db_folder(b"lib/db"));
    }
}

/// Compares two Moodle version numbers as the decimals they are (`2024100701.05` >
/// `2024100701.5` is false: they are equal; `2024100701.10` > `2024100701.9`), never as floats.
/// Text that is not a number (`ANY_VERSION`) sorts lowest.
pub fn cmp_version(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Option<(u128, String)> {
        let s = s.trim().trim_matches(|c| c == '\'' || c == '"');
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some((int.parse().ok()?, frac.trim_end_matches('0').to_string()))
    }
    match (parts(a), parts(b)) {
        (Some((ia, fa)), Some((ib, fb))) => ia.cmp(&ib).then_with(|| {
            let w = fa.len().max(fb.len());
            format!("{fa:0<w$}").cmp(&format!("{fb:0<w$}"))
        }),
        (Some(_), None) => std::cmp::Ordering::Greater,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

#[cfg(test)]
mod version_tests {
    use super::cmp_version;
    use std::cmp::Ordering::*;

    #[test]
    fn decimal_not_float() {
        assert_eq!(cmp_version("2024100701.05", "2024100701.5"), Less);
        assert_eq!(cmp_version("2024100701.10", "2024100701.9"), Less);
        assert_eq!(cmp_version("2024100701.10", "2024100701.09"), Greater);
        assert_eq!(cmp_version("2024100701.50", "2024100701.5"), Equal);
        assert_eq!(cmp_version("2022112810.00", "2022112810"), Equal);
        assert_eq!(cmp_version("2022112800", "2022112810.00"), Less);
        assert_eq!(cmp_version("ANY_VERSION", "1"), Less);
    }
}
