//! Moodle's rules for the plugins a merge grafts: each plugin's version.php against upstream
//! (component, version, `requires`, `incompatible`, `supported`), their dependencies on each
//! other, and where each plugin type lives (core's `lib/components.json` and the
//! `db/subplugins.json` files).

use std::collections::BTreeMap;
use std::path::Path;

use git2::{ObjectType, Repository, Tree};

use super::lock::Lock;
use super::{Core, Grafted, MergeError, MergeOptions, Source};
use crate::moodle::versionphp::VersionPhp;
use crate::moodle::{cmp_version, PLUGIN_TYPES};

/// Moodle's rules for one plugin against upstream: a version.php whose component matches,
/// a `$plugin->version` not below the locked one, `requires` met, not `incompatible`, and
/// `supported` (outside it a warning, an error with `--strict`). Returns its version and its
/// version.php.
pub(super) fn check_plugin(
    repo: &Repository,
    core: &Core,
    s: &Source,
    ptree: &Tree,
    old_lock: Option<&Lock>,
    opts: &MergeOptions,
    warnings: &mut Vec<String>,
) -> Result<(String, VersionPhp), MergeError> {
    let (core_version, core_branch) = (&core.version, &core.branch);
    let what = format!("{} ({} {})", s.component, s.url, s.reference);
    let v = read_version_php(repo, ptree, "version.php").ok_or_else(|| {
        MergeError::Moodle(format!(
            "{what}: no version.php at the top of the repository: not a Moodle plugin"
        ))
    })?;
    let comp = v.plugin("component").unwrap_or("");
    if comp != s.component {
        return Err(MergeError::Moodle(format!(
            "{what}: its version.php says $plugin->component = '{comp}', not '{}'",
            s.component
        )));
    }
    let version = v.plugin("version").unwrap_or("").to_string();
    if version.is_empty() {
        return Err(MergeError::Moodle(format!(
            "{what}: version.php sets no $plugin->version"
        )));
    }
    if let Some(req) = v.plugin("requires") {
        if cmp_version(req, core_version).is_gt() {
            return Err(MergeError::Moodle(format!(
                "{what}: requires Moodle {req}, newer than upstream's $version {core_version}"
            )));
        }
    }
    if let Some(inc) = v.plugin("incompatible") {
        if cmp_version(core_branch, inc).is_ge() {
            return Err(MergeError::Moodle(format!(
                "{what}: declares itself incompatible with Moodle branch {inc} and later; upstream is branch {core_branch}"
            )));
        }
    }
    if let Some((lo, hi)) = v.supported() {
        if cmp_version(core_branch, &lo).is_lt() || cmp_version(core_branch, &hi).is_gt() {
            let msg = format!(
                "{what}: supports Moodle branches {lo} to {hi}; upstream is branch {core_branch}"
            );
            if opts.strict {
                return Err(MergeError::Moodle(msg));
            }
            warnings.push(msg);
        }
    }
    if let Some(old) = old_lock.and_then(|l| l.plugin(&s.component)) {
        if cmp_version(&version, &old.pin.version).is_lt() {
            return Err(MergeError::Moodle(format!(
                "{what}: $plugin->version {version} is lower than the locked {}: Moodle refuses to downgrade a plugin",
                old.pin.version
            )));
        }
    }
    Ok((version, v))
}

/// Every plugin's `$plugin->dependencies`, against the grafted tree: present (among the
/// plugins, else in upstream) and at the version asked for.
pub(super) fn check_dependencies(
    repo: &Repository,
    core: &Core,
    grafted: &Grafted,
    types: &BTreeMap<String, String>,
) -> Result<(), MergeError> {
    let prefix = core.prefix;
    let tree = repo.find_tree(grafted.tree)?;
    let version_of = |component: &str| -> Option<String> {
        if let Some(v) = grafted.versions.get(component) {
            return Some(v.clone());
        }
        let (t, n) = component.split_once('_')?;
        let dir = types.get(t)?;
        read_version_php(repo, &tree, &format!("{prefix}{dir}/{n}/version.php"))?
            .plugin("version")
            .map(String::from)
    };
    for (component, v) in &grafted.php {
        for (dep, need) in v.dependencies() {
            match version_of(&dep) {
                None => {
                    return Err(MergeError::Moodle(format!(
                    "{component} needs {dep}, which is neither in upstream nor among the plugins"
                )))
                }
                Some(have) if need != "ANY_VERSION" && cmp_version(&have, &need).is_lt() => {
                    return Err(MergeError::Moodle(format!(
                        "{component} needs {dep} {need} or later; the tree has {have}"
                    )))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Reads `path` of `tree` as a version.php.
pub(super) fn read_version_php(repo: &Repository, tree: &Tree, path: &str) -> Option<VersionPhp> {
    let entry = tree.get_path(Path::new(path)).ok()?;
    if entry.kind() != Some(ObjectType::Blob) {
        return None;
    }
    let blob = repo.find_blob(entry.id()).ok()?;
    Some(VersionPhp::parse(blob.content()))
}

fn read_json(repo: &Repository, tree: &Tree, path: &str) -> Option<serde_json::Value> {
    let entry = tree.get_path(Path::new(path)).ok()?;
    let blob = repo.find_blob(entry.id()).ok()?;
    serde_json::from_slice(blob.content()).ok()
}

/// Plugin type -> folder (relative to the web root), as upstream declares them: core's
/// `lib/components.json`, the `db/subplugins.json` of core plugins that have one and of the
/// configured plugins; the built-in table fills what is missing. Over the mark for a reason:
/// the three sources are read in the order that lets a later one override, in one place.
pub(super) fn plugin_types(
    repo: &Repository,
    up: &Tree,
    prefix: &str,
    sources: &[Source],
) -> Result<BTreeMap<String, String>, MergeError> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    if let Some(j) = read_json(repo, up, &format!("{prefix}lib/components.json")) {
        if let Some(m) = j.get("plugintypes").and_then(|m| m.as_object()) {
            for (k, v) in m {
                if let Some(v) = v.as_str() {
                    // Folders are relative to the web root; tolerate a `public/` prefix too.
                    let v = v.trim_matches('/');
                    let v = if prefix.is_empty() {
                        v
                    } else {
                        v.strip_prefix(prefix).unwrap_or(v)
                    };
                    types.insert(k.clone(), v.to_string());
                }
            }
        }
    }
    let subplugins =
        |json: serde_json::Value, plugin_dir: &str, types: &mut BTreeMap<String, String>| {
            if let Some(m) = json.get("plugintypes").and_then(|m| m.as_object()) {
                for (k, v) in m {
                    if let Some(v) = v.as_str() {
                        types
                            .entry(k.clone())
                            .or_insert_with(|| v.trim_matches('/').to_string());
                    }
                }
            }
            if let Some(m) = json.get("subplugintypes").and_then(|m| m.as_object()) {
                for (k, v) in m {
                    if let Some(v) = v.as_str() {
                        types
                            .entry(k.clone())
                            .or_insert_with(|| format!("{plugin_dir}/{}", v.trim_matches('/')));
                    }
                }
            }
        };
    let missing = |types: &BTreeMap<String, String>| {
        sources
            .iter()
            .any(|s| !types.contains_key(s.component.split_once('_').map(|x| x.0).unwrap_or("")))
    };
    // Configured plugins can declare subplugin types (their own children come after them).
    for s in sources {
        let (t, n) = s.component.split_once('_').unwrap_or(("", ""));
        let tree = repo.find_commit(s.commit)?.tree()?;
        if let (Some(json), Some(dir)) = (
            read_json(repo, &tree, "db/subplugins.json"),
            types.get(t).cloned(),
        ) {
            subplugins(json, &format!("{dir}/{n}"), &mut types);
        }
    }
    if missing(&types) {
        // Core plugins with subplugins (mod_assign, tool_log, editor_tiny...).
        let dirs: Vec<String> = types.values().cloned().collect();
        for dir in dirs {
            let Ok(entry) = up.get_path(Path::new(&format!("{prefix}{dir}"))) else {
                continue;
            };
            let Ok(t) = repo.find_tree(entry.id()) else {
                continue;
            };
            for child in t.iter() {
                if child.kind() != Some(ObjectType::Tree) {
                    continue;
                }
                let name = child.name().unwrap_or("");
                let path = format!("{prefix}{dir}/{name}/db/subplugins.json");
                if let Some(json) = read_json(repo, up, &path) {
                    subplugins(json, &format!("{dir}/{name}"), &mut types);
                }
            }
        }
    }
    for (t, dir) in PLUGIN_TYPES {
        types
            .entry(t.to_string())
            .or_insert_with(|| dir.to_string());
    }
    Ok(types)
}
