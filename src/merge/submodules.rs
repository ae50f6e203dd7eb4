//! `moodle-release import-submodules`: turns a site repository that pulls plugins in with
//! `git submodule add` (the common practice before this tool) into `[[plugins]]` entries.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use git2::Repository;

use crate::moodle::PLUGIN_TYPES;

/// One submodule, as a plugin entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Imported {
    pub component: Option<String>,
    pub path: String,
    pub url: String,
    /// The submodule's branch when `.gitmodules` names one, else the commit the tree pins.
    pub reference: String,
}

/// Why the submodules of a repository cannot be read (each names the repository).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {}", repo.display(), source.message())]
    Open { repo: PathBuf, source: git2::Error },
    #[error("{}: no HEAD tree: {}", repo.display(), source.message())]
    NoHead { repo: PathBuf, source: git2::Error },
    #[error("{}: HEAD has no .gitmodules", repo.display())]
    NoGitmodules { repo: PathBuf },
    #[error("{}: .gitmodules cannot be read: {}", repo.display(), source.message())]
    Gitmodules { repo: PathBuf, source: git2::Error },
    #[error("{}: a temporary copy of .gitmodules: {source}", repo.display())]
    Temp {
        repo: PathBuf,
        source: std::io::Error,
    },
}

/// Reads the submodules of `repo` (its HEAD tree and `.gitmodules`).
pub fn import(repo_path: &Path) -> Result<Vec<Imported>, ImportError> {
    let repo_buf = || repo_path.to_path_buf();
    let repo = Repository::open(repo_path).map_err(|source| ImportError::Open {
        repo: repo_buf(),
        source,
    })?;
    let head = repo
        .head()
        .and_then(|h| h.peel_to_tree())
        .map_err(|source| ImportError::NoHead {
            repo: repo_buf(),
            source,
        })?;
    let entry = head
        .get_path(Path::new(".gitmodules"))
        .map_err(|_| ImportError::NoGitmodules { repo: repo_buf() })?;
    let gitmodules = |source| ImportError::Gitmodules {
        repo: repo_buf(),
        source,
    };
    let blob = repo.find_blob(entry.id()).map_err(gitmodules)?;
    // .gitmodules is git-config syntax: let git2 parse it from a temporary file.
    let temp = |source| ImportError::Temp {
        repo: repo_buf(),
        source,
    };
    let tmp = tempfile::NamedTempFile::new().map_err(temp)?;
    std::fs::write(tmp.path(), blob.content()).map_err(temp)?;
    let cfg = git2::Config::open(tmp.path()).map_err(gitmodules)?;
    let mut names = Vec::new();
    let mut entries = cfg
        .entries(Some(r"submodule\..*\.path"))
        .map_err(gitmodules)?;
    while let Some(Ok(e)) = entries.next() {
        if let Ok(name) = e.name() {
            let sub = name
                .trim_start_matches("submodule.")
                .trim_end_matches(".path")
                .to_string();
            names.push((sub, e.value().unwrap_or_default().to_string()));
        }
    }
    let mut out = Vec::new();
    for (name, path) in names {
        let url = cfg
            .get_string(&format!("submodule.{name}.url"))
            .unwrap_or_default();
        let reference = match cfg.get_string(&format!("submodule.{name}.branch")) {
            Ok(b) if b != "." => b,
            _ => head
                .get_path(Path::new(&path))
                .map(|e| e.id().to_string())
                .unwrap_or_else(|_| "HEAD".into()),
        };
        out.push(Imported {
            component: component_for(&path),
            path,
            url,
            reference,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// `mod/customcert` -> `mod_customcert`, `admin/tool/heartbeat` -> `tool_heartbeat`: the type
/// whose folder is the longest prefix of the path.
fn component_for(path: &str) -> Option<String> {
    let path = path.trim_start_matches("public/").trim_matches('/');
    let (dir, name) = path.rsplit_once('/')?;
    PLUGIN_TYPES
        .iter()
        .find(|(_, d)| *d == dir)
        .map(|(t, _)| format!("{t}_{name}"))
}

/// The entries as TOML for moodle-release.toml.
pub fn to_toml(items: &[Imported]) -> String {
    let mut s = String::from("# [[plugins]] imported from .gitmodules by `moodle-release import-submodules`.\n# Check each ref: a commit id pins the exact commit the submodule used; a branch follows it.\n");
    for i in items {
        let _ = writeln!(s, "\n[[plugins]]");
        match &i.component {
            Some(c) => {
                let _ = writeln!(s, "component = \"{c}\"");
            }
            None => {
                let _ = writeln!(
                    s,
                    "component = \"FIXME\"  # could not derive the component from {}",
                    i.path
                );
                let _ = writeln!(s, "path = \"{}\"", i.path);
            }
        }
        let _ = writeln!(s, "url = \"{}\"", i.url);
        let _ = writeln!(s, "ref = \"{}\"", i.reference);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::component_for;

    #[test]
    fn components_from_paths() {
        assert_eq!(
            component_for("mod/customcert").as_deref(),
            Some("mod_customcert")
        );
        assert_eq!(
            component_for("admin/tool/heartbeat").as_deref(),
            Some("tool_heartbeat")
        );
        assert_eq!(
            component_for("public/blocks/xp").as_deref(),
            Some("block_xp")
        );
        assert_eq!(
            component_for("mod/assign/submission/x").as_deref(),
            Some("assignsubmission_x")
        );
        assert_eq!(component_for("weird/place/x"), None);
    }
}
