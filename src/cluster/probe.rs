//! What each node runs: one query per node over its SSH master (the package's version and the
//! `X-Moodle-*` hashes `build` recorded, its apt source, the cluster lock and the roll state kept
//! beside it), read in one round trip, for `roll` and `status` alike.

use serde::Serialize;

use super::lock::{self, Lock};
use crate::config::Config;
use crate::ssh::{quote, Conn, Output, Ssh, SshError};

/// What a node runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Installed {
    pub version: Option<String>,
    pub versions_hash: Option<String>,
    pub db_hash: Option<String>,
    /// The node's apt source for the package, the only one `roll` refreshes:
    /// `/etc/apt/sources.list.d/<package>.list`, else `.sources` (deb822).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apt_source: Option<String>,
    /// The node's config.php requires lib/setup.php relative to its own folder.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub config_php_relative_setup: bool,
    /// The cluster lock, when this node holds it (the first node does while a roll runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<Lock>,
    /// The roll state kept on this node ([`REMOTE_STATE`]), as JSON.
    #[serde(skip)]
    pub state: Option<String>,
    /// The releases layout: every release installed on the node (its version), oldest first;
    /// `version` is then the live one (where `install_dir` points).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<String>,
    /// The releases layout: `install_dir` is a folder with files, not a release's symlink (an
    /// in-place install).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub in_place_dir: bool,
}

impl Installed {
    /// `version`'s code is on the node: installed (in-place), or one of its releases.
    pub fn has(&self, version: &str) -> bool {
        self.version.as_deref() == Some(version) || self.releases.iter().any(|r| r == version)
    }
}

/// What each of `conns` has installed of `pkg`, asked of all at once; results in the same
/// order. Used by roll and by status.
pub fn query_installed(
    ssh: &Ssh,
    cfg: &Config,
    conns: &[&Conn],
) -> Vec<Result<Installed, SshError>> {
    let script = installed_script(cfg);
    let jobs = conns.iter().map(|c| (*c, script.clone())).collect();
    conns
        .iter()
        .zip(ssh.run_all(jobs))
        .map(|(c, r)| installed_answer(&c.node, r))
        .collect()
}

/// Connects to `nodes` and asks each what it has installed in the same round trip (see
/// [`Ssh::connect_all_then`]); results in the same order. Used by roll and by status.
pub fn connect_and_query(
    ssh: &Ssh,
    cfg: &Config,
    nodes: &[(String, String)],
) -> Vec<Result<(Conn, Answer), SshError>> {
    let script = installed_script(cfg);
    ssh.connect_all_then(nodes, Some(&script))
        .into_iter()
        .map(|r| {
            r.map(|(c, out)| {
                let answer = installed_answer(&c.node, out);
                (c, answer)
            })
        })
        .collect()
}

/// What a node answered to [`installed_script`].
type Answer = Result<Installed, SshError>;

/// What dpkg-query says of a package: `Status|Version|X-Moodle-Versions-Hash|X-Moodle-Db-Hash`,
/// the fields `build` records and [`parse_installed`] reads.
const FIELDS: &str = "${Status}|${Version}|${X-Moodle-Versions-Hash}|${X-Moodle-Db-Hash}\\n";

/// The query of what a node has installed of this site's package.
pub fn installed_script(cfg: &Config) -> String {
    let query = installed_query(
        &cfg.site.package.to_string(),
        cfg.site.config_php_target().as_deref(),
    );
    if cfg.site.layout == crate::config::SiteLayout::InPlace {
        return query;
    }
    // The releases layout: the live release is where install_dir points; each release is a
    // package `<package>-release-<version>`.
    let pkg = cfg.site.package.to_string();
    format!(
        "{query}; live=$(readlink {dir} 2>/dev/null || true); \
         [ -n \"$live\" ] && dpkg-query -W -f='{FIELDS}' \"{pkg}-release-${{live##*/}}\" 2>/dev/null | sed 's/^/live /'; \
         dpkg-query -W -f='release ${{Status}}|${{Version}}\\n' {glob} 2>/dev/null; \
         if [ -d {dir} ] && [ ! -L {dir} ] && [ -n \"$(ls -A {dir} 2>/dev/null)\" ]; then echo in-place-dir; fi; true",
        dir = quote(&cfg.site.install_dir.0),
        glob = quote(&format!("{pkg}-release-*")),
    )
}

/// A node's answer to [`installed_script`].
pub fn installed_answer(node: &str, r: Result<Output, SshError>) -> Result<Installed, SshError> {
    let o = r?;
    // The query itself never fails (`|| true`): a failure is the shell's or sudo's, and must
    // not read as "nothing installed".
    if !o.success() {
        return Err(SshError::Run {
            node: node.to_string(),
            command: "dpkg-query".into(),
            message: o.tail(),
        });
    }
    Ok(parse_installed(&o.text()))
}

/// The query whose answer [`parse_installed`] reads.
pub fn installed_query(pkg: &str, config_php: Option<&str>) -> String {
    // A config.php copied from a plain install ends with require_once(__DIR__ .
    // '/lib/setup.php'): from the node's config folder that names a file that does not exist,
    // and every page of the site fails (the packaged stub requires setup.php itself).
    let relative_setup = config_php
        .map(|c| {
            format!(
                "; if grep -Eq \"^[[:space:]]*(require|include)(_once)?[[:space:](]*(__DIR__|dirname[(]__FILE__[)])[[:space:]]*[.][[:space:]]*['\\\"]/lib/setup[.]php\" {} 2>/dev/null; then echo relative-setup; fi",
                quote(c)
            )
        })
        .unwrap_or_default();
    format!(
        "dpkg-query -W -f='{FIELDS}' {q} 2>/dev/null || true; \
         for f in {list} {sources}; do if [ -e \"$f\" ]; then echo \"source $f\"; fi; done{relative_setup}; \
         {lock}; true",
        lock = lock::query(),
        q = quote(pkg),
        list = quote(&format!("/etc/apt/{}", apt_sources(pkg)[0])),
        sources = quote(&format!("/etc/apt/{}", apt_sources(pkg)[1])),
    )
}

/// The package's own apt source on a node, the only one roll refreshes: `<package>.list`, else
/// the deb822 `<package>.sources`. Relative to /etc/apt, as `Dir::Etc::sourcelist` takes it.
pub fn apt_sources(pkg: &str) -> [String; 2] {
    [
        format!("sources.list.d/{pkg}.list"),
        format!("sources.list.d/{pkg}.sources"),
    ]
}

/// `Status|Version|X-Moodle-Versions-Hash|X-Moodle-Db-Hash` from dpkg-query, then a `source
/// PATH` line for each apt source of the package the node has.
pub fn parse_installed(stdout: &str) -> Installed {
    let apt_source = stdout
        .lines()
        .find_map(|l| l.strip_prefix("source "))
        .map(str::to_string);
    let config_php_relative_setup = stdout.lines().any(|l| l == "relative-setup");
    let in_place_dir = stdout.lines().any(|l| l == "in-place-dir");
    let lock = Lock::parse(stdout);
    let state = lock::state_text(stdout).map(str::to_string);
    let mut releases: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("release "))
        .filter_map(|l| l.split_once('|'))
        .filter(|(status, _)| status.ends_with("ok installed"))
        .map(|(_, v)| v.to_string())
        .collect();
    // dpkg lists them by package name ("+10-1" before "+2-1"): by version, oldest first.
    releases.sort_by_cached_key(|v| v.parse::<debversion::Version>().ok());
    // The releases layout answers its live release with a `live ` prefix; the in-place package
    // (the query's first line) is then not installed.
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("live "))
        .or_else(|| {
            stdout
                .lines()
                .find(|l| l.contains('|') && !l.starts_with("release "))
        })
        .unwrap_or("");
    let mut installed = Installed {
        apt_source,
        config_php_relative_setup,
        lock,
        state,
        releases,
        in_place_dir,
        ..Installed::default()
    };
    let parts: Vec<&str> = line.split('|').collect();
    if parts.len() >= 4 && parts[0].ends_with("ok installed") {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        installed.version = opt(parts[1]);
        installed.versions_hash = opt(parts[2]);
        installed.db_hash = opt(parts[3]);
    }
    installed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_query_answer_is_read_whole() {
        let i = parse_installed(
            "install ok installed|4.1.9+2-1|vh|dh\nsource /etc/apt/sources.list.d/m.list\nlock root@ci pid 42 since Mon (target 4.1.9+3-1)\nlock-idle 3\nstate {\"id\":\"1\"}\n",
        );
        assert_eq!(i.version.as_deref(), Some("4.1.9+2-1"));
        assert_eq!(i.db_hash.as_deref(), Some("dh"));
        assert_eq!(
            i.apt_source.as_deref(),
            Some("/etc/apt/sources.list.d/m.list")
        );
        assert_eq!(
            i.lock,
            Some(Lock {
                owner: "root@ci pid 42 since Mon (target 4.1.9+3-1)".into(),
                idle_secs: Some(3)
            })
        );
        assert_eq!(i.state.as_deref(), Some("{\"id\":\"1\"}"));
        // The releases layout: the live one's fields, and every release installed.
        let i = parse_installed(
            "live install ok installed|2-1|vh2|dh2\nrelease install ok installed|1-1\nrelease install ok installed|2-1\nrelease deinstall ok config-files|0-1\n",
        );
        assert_eq!(i.version.as_deref(), Some("2-1"));
        assert_eq!(i.db_hash.as_deref(), Some("dh2"));
        assert_eq!(i.releases, ["1-1", "2-1"]);
        // dpkg lists by package name; the releases are by version.
        let by_name = parse_installed(
            "live install ok installed|1.0+2-1|v|d\nrelease install ok installed|1.0+10-1\nrelease install ok installed|1.0+2-1\n",
        );
        assert_eq!(by_name.releases, ["1.0+2-1", "1.0+10-1"]);
        assert!(i.has("1-1") && i.has("2-1") && !i.has("0-1"));
        // Removed (config files left): nothing installed, and no lock.
        let i = parse_installed("deinstall ok config-files|4.1.9+2-1|vh|dh\n");
        assert_eq!((i.version, i.lock), (None, None));
    }
}
