//! `moodle-release.lock`: the exact commit of upstream and of every plugin that the deployment
//! branch was made of, beside the config file, for the site repository to commit.
//!
//! Like `Cargo.lock`: a merge without `--update` keeps every pin whose source (URL and ref) did
//! not change in the config; `--locked` refuses to move any.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The lock file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid lock file: {message}; delete it and run `moodle-release merge` to write a new one")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One pinned source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub url: String,
    #[serde(rename = "ref")]
    pub reference: String,
    /// The commit id, 40 hex digits.
    pub commit: String,
    /// Moodle's `$version` (core) or `$plugin->version`, as written: to refuse downgrades.
    pub version: String,
    /// Core's `$release`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

/// A pinned plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginPin {
    pub component: String,
    pub path: String,
    #[serde(flatten)]
    pub pin: Pin,
}

/// The whole lock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub upstream: Option<Pin>,
    #[serde(default)]
    pub plugins: Vec<PluginPin>,
}

impl Lock {
    /// The lock beside `config`: `moodle-release.lock` in the same folder.
    pub fn path_for(config: &Path) -> PathBuf {
        config.with_file_name("moodle-release.lock")
    }

    /// Reads the lock; `None` when there is none yet.
    pub fn read(path: &Path) -> Result<Option<Lock>, LockError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LockError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        toml::from_str(&text)
            .map(Some)
            .map_err(|e| LockError::Parse {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            })
    }

    pub fn plugin(&self, component: &str) -> Option<&PluginPin> {
        self.plugins.iter().find(|p| p.component == component)
    }

    pub fn to_text(&self) -> String {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        format!(
            "# Written by `moodle-release merge`: the exact commits the deployment branch is made of.\n# Commit it with the config. `merge --locked` rebuilds exactly this; `merge --update` moves the pins.\n\n{body}"
        )
    }

    /// Writes the lock atomically (a temporary file renamed over the old one).
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let err = |source| LockError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".moodle-release.lock.")
            .tempfile_in(dir)
            .map_err(err)?;
        std::io::Write::write_all(&mut tmp, self.to_text().as_bytes()).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(path).map_err(|e| err(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let lock = Lock {
            upstream: Some(Pin {
                url: "https://x".into(),
                reference: "MOODLE_401_STABLE".into(),
                commit: "a".repeat(40),
                version: "2022112810.00".into(),
                release: Some("4.1.10".into()),
            }),
            plugins: vec![PluginPin {
                component: "mod_x".into(),
                path: "mod/x".into(),
                pin: Pin {
                    url: "u".into(),
                    reference: "main".into(),
                    commit: "b".repeat(40),
                    version: "2024010100".into(),
                    release: None,
                },
            }],
        };
        let back: Lock = toml::from_str(&lock.to_text()).unwrap();
        assert_eq!(back, lock);
    }
}
