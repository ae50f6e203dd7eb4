//! `moodle-release.toml`: how a site is assembled, packaged, published and rolled out.
//!
//! The format is a contract with the sites that use the tool (docs/config.md shows every key), so
//! every key is a typed field with a doc comment, unknown keys are refused with the nearest valid
//! key suggested, and every error names the file, the line and the key. Values are parsed into
//! types here, at the edge (durations, sockets, package names), and never re-parsed inside.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod check;
mod duration;
mod freeze;
mod locate;
mod values;

use duration::{duration_opt, duration_str};
use locate::{describe, error_line, first_line, line_of, nearest, segments, unknown_field};

pub use duration::{format_duration, parse_duration};
pub use freeze::Freeze;
pub use values::{
    AptRepo, Component, HttpBase, InstallDir, Maintainer, PackageName, Percent, Socket, WebhookUrl,
};

/// A config that could not be read or does not make sense. Displayed as
/// `FILE:LINE: [section] key: what is wrong`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{}{}", path.display(), line.map(|l| format!("{l}:")).unwrap_or_default(), if key.is_empty() { format!(" {message}") } else { format!(" {key}: {message}") })]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        key: String,
        message: String,
    },
}

/// The whole file, as written by the user.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Debian package that carries the site's code.
    pub site: Site,
    /// Upstream Moodle (needed by `merge`).
    #[serde(default)]
    pub upstream: Option<Upstream>,
    /// Plugins grafted into the tree by `merge`.
    #[serde(default)]
    pub plugins: Vec<Plugin>,
    /// Where the deployment branch lives.
    #[serde(default)]
    pub deploy: Deploy,
    /// The apt repository that `publish` writes and the nodes install from.
    #[serde(default)]
    pub apt: Option<Apt>,
    /// How the nodes are reached.
    #[serde(default)]
    pub ssh: Ssh,
    /// How `roll` behaves.
    #[serde(default)]
    pub roll: Roll,
    /// Every HAProxy in front of the web nodes.
    #[serde(default)]
    pub lb: Vec<Lb>,
    /// The web and cron nodes.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Webhooks told when a roll starts, ends, or its canary is judged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<Notify>,
    /// The folder that holds the config file; relative paths in it are relative to this.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[[notify]]`: a webhook.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// The webhook URL (its path often is the secret: never printed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<WebhookUrl>,
    /// Or the environment variable that holds it (a masked CI variable), e.g. "SLACK_WEBHOOK_URL".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// `slack`, `teams` (Workflows: an Adaptive Card), `mattermost` or `json` (everything, for a receiver of your own);
    /// default: from the URL's host (Slack, Teams), else `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<NotifyFormat>,
    /// The events to post: `start`, `success`, `failure`, `canary` (default: all).
    #[serde(default = "default_notify_on")]
    pub on: Vec<NotifyEvent>,
}

/// The body a webhook expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    Slack,
    Teams,
    Mattermost,
    Json,
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyEvent {
    /// The roll (or rollback) begins changing the cluster.
    Start,
    /// It finished.
    Success,
    /// It stopped with an error (or was refused by a freeze window).
    Failure,
    /// The canary was judged, passed or failed.
    Canary,
}

impl std::fmt::Display for NotifyEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotifyEvent::Start => "start",
            NotifyEvent::Success => "success",
            NotifyEvent::Failure => "failure",
            NotifyEvent::Canary => "canary",
        })
    }
}

fn default_notify_on() -> Vec<NotifyEvent> {
    vec![
        NotifyEvent::Start,
        NotifyEvent::Success,
        NotifyEvent::Failure,
        NotifyEvent::Canary,
    ]
}

/// `[site]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Debian package name of the site's code.
    pub package: PackageName,
    /// `Name <email>`, the package's Maintainer field.
    pub maintainer: Maintainer,
    /// One-line description of the package.
    pub description: String,
    /// `$CFG->dirroot` on every node: the package installs the tree here.
    pub install_dir: InstallDir,
    /// Extra `Depends:` of the package.
    #[serde(default)]
    pub depends: Vec<String>,
    /// Globs (relative to dirroot) of files never packaged, e.g. `"node_modules/**"`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Where each node keeps the site's real `config.php` (secrets stay out of the package). The
    /// package ships a two-line `config.php` in dirroot that includes it. `""`: ship none.
    #[serde(default)]
    pub config_php: Option<String>,
    /// Debian Section of the package.
    #[serde(default = "default_section")]
    pub section: String,
    /// Debian Priority of the package.
    #[serde(default = "default_priority")]
    pub priority: String,
    /// lintian tags the site's own files draw, each with the reason it is overridden
    /// (`"non-free-flash" = "old player in mod/x, not served"`).
    #[serde(default)]
    pub lintian_overrides: BTreeMap<String, String>,
    /// `in-place` (one package, its tree in `install_dir`) or `releases` (a package per
    /// version, `<package>-release-<version>`, its tree in `releases_dir/<version>/`, installed
    /// side by side; `install_dir` becomes a symlink to the live one).
    #[serde(default)]
    pub layout: SiteLayout,
    /// Where the releases live (`layout = "releases"`); default `releases` beside `install_dir`
    /// (`/srv/moodle/html` -> `/srv/moodle/releases`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub releases_dir: Option<InstallDir>,
}

/// How the site's code is laid out on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteLayout {
    /// One package; `apt-get install` replaces the tree in `install_dir`.
    #[default]
    InPlace,
    /// A package per version, side by side under `releases_dir`; `install_dir` is a symlink.
    Releases,
}

impl Site {
    /// Where the releases live (`layout = "releases"`): `releases_dir`, else `releases` beside
    /// `install_dir`.
    pub fn releases_dir(&self) -> String {
        match &self.releases_dir {
            Some(d) => d.0.clone(),
            None => {
                let parent = self.install_dir.0.rsplit_once('/').map_or("", |(p, _)| p);
                format!("{parent}/releases")
            }
        }
    }

    /// The package of `version` in the releases layout: `<package>-release-<version>`, the
    /// version's characters a package name cannot hold (`:`, `~`, capitals) made `.` or lower.
    pub fn release_package(&self, version: &str) -> String {
        let v: String = version
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '+' | '.' | '-') => c,
                _ => '.',
            })
            .collect();
        format!("{}-release-{v}", self.package)
    }

    /// The node-local config.php the shipped stub includes, if any.
    pub fn config_php_target(&self) -> Option<String> {
        match &self.config_php {
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.clone()),
            None => Some(format!("/etc/{}/config.php", self.package)),
        }
    }
}

fn default_section() -> String {
    "web".into()
}
fn default_priority() -> String {
    "optional".into()
}

/// `[upstream]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Any git URL: https, ssh, file:// or a local path.
    pub url: String,
    /// Branch, tag or commit id.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// `[[plugins]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    /// Frankenstyle name (`mod_customcert`); the path is derived from it.
    pub component: Component,
    /// Any git URL.
    pub url: String,
    /// Branch, tag or commit id.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Path in dirroot, only where the derived one is not wanted.
    #[serde(default)]
    pub path: Option<String>,
    /// Allow this plugin to replace a path upstream (or another plugin) already has.
    #[serde(default)]
    pub replace: bool,
}

/// `[deploy]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// The git repository that holds the deployment branch (relative to the config file).
    #[serde(default = "default_deploy_repo")]
    pub repo: PathBuf,
    /// The branch `merge` writes and `build` reads.
    #[serde(default = "default_deploy_branch")]
    pub branch: String,
    /// Local branches merged on top, three-way, in order.
    #[serde(default)]
    pub patches: Vec<String>,
    /// Fetch backend: the git CLI or libgit2.
    #[serde(default)]
    pub fetch: FetchBackend,
}

impl Default for Deploy {
    fn default() -> Self {
        Deploy {
            repo: default_deploy_repo(),
            branch: default_deploy_branch(),
            patches: Vec::new(),
            fetch: FetchBackend::default(),
        }
    }
}

fn default_deploy_repo() -> PathBuf {
    PathBuf::from(".")
}
fn default_deploy_branch() -> String {
    "deploy".into()
}

/// Which implementation fetches sources.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FetchBackend {
    /// The `git` command: honours `~/.ssh/config`, fastest on big repositories.
    #[default]
    Git,
    /// libgit2, in process.
    Libgit2,
}

/// `[apt]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Apt {
    /// A local folder, or `ssh://user@host/path`.
    pub repo: AptRepo,
    /// Suite and Codename the nodes put in their sources.
    #[serde(default = "default_suite")]
    pub suite: String,
    /// The component.
    #[serde(default = "default_component")]
    pub component: String,
    /// Versions of the package kept for rollback.
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// gpg key that signs InRelease/Release.gpg.
    #[serde(default)]
    pub sign_key: Option<String>,
    /// Architectures the `all` package is listed for.
    #[serde(default = "default_architectures")]
    pub architectures: Vec<String>,
}

fn default_suite() -> String {
    "moodle".into()
}
fn default_component() -> String {
    "main".into()
}
fn default_keep() -> u32 {
    5
}
fn default_architectures() -> Vec<String> {
    vec!["amd64".into(), "arm64".into()]
}

/// What the process environment says over the config file, read once by the command line
/// (`run.rs`) and handed down, so the library itself reads no variable.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `MOODLE_RELEASE_SSH_CONFIG`: a CI job's ssh config (from a File variable), instead of
    /// `[ssh] config`, without editing the site's config or touching the runner's ~/.ssh.
    pub ssh_config: Option<String>,
    /// `MOODLE_RELEASE_KNOWN_HOSTS`: likewise for `[ssh] known_hosts`.
    pub known_hosts: Option<String>,
    /// `CI` is set (GitLab and most CI systems set it): SSH masters end with the run.
    pub ci: bool,
    /// `MOODLE_RELEASE_JOB_URL`, else GitLab's `CI_JOB_URL`: the job a notification links to.
    pub job_url: Option<String>,
    /// Every variable, for `[[notify]] url_env` (a webhook URL kept in a masked CI variable).
    pub vars: BTreeMap<String, String>,
}

impl Environment {
    /// From the process's variables.
    pub fn from_process() -> Environment {
        let var = |k: &str| std::env::var(k).ok();
        Environment {
            ssh_config: var("MOODLE_RELEASE_SSH_CONFIG"),
            known_hosts: var("MOODLE_RELEASE_KNOWN_HOSTS"),
            ci: !matches!(var("CI").as_deref(), None | Some("" | "false" | "0")),
            // A CI variable that refers to an undefined one is left as `$NAME`: not a URL.
            job_url: [var("MOODLE_RELEASE_JOB_URL"), var("CI_JOB_URL")]
                .into_iter()
                .flatten()
                .find(|u| !u.is_empty() && !u.starts_with('$')),
            vars: std::env::vars().collect(),
        }
    }
}

/// `[ssh]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// ssh_config used for every node.
    #[serde(default)]
    pub config: Option<String>,
    /// Host keys are always checked against this file.
    #[serde(default)]
    pub known_hosts: Option<String>,
    /// How long a master connection stays up unused after a run, so that the next `roll`,
    /// `--plan` or `status` connects at once (as `ControlPersist`); "0s": masters end with
    /// each run. Default: 300s, and 0s in a CI job (see [`Ssh::persist`]).
    #[serde(
        default,
        with = "duration_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub persist: Option<Duration>,
    /// This run is a CI job (see [`Environment::ci`]): set at load, not a key of the file.
    #[serde(skip)]
    pub in_ci: bool,
}

impl Ssh {
    /// [`Ssh::persist`] as set, else 300 s, except in a CI job (`CI` set, as GitLab and most CI
    /// systems set it): there masters end with the run. A job's masters would outlive the job
    /// and its key file, and on a shared runner any later job of the same user could run
    /// commands on the nodes through their sockets.
    pub fn persist(&self) -> Duration {
        self.persist.unwrap_or(if self.in_ci {
            Duration::ZERO
        } else {
            Duration::from_secs(300)
        })
    }
}

/// `[roll]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Roll {
    /// Default for `roll --batch`: web nodes out of rotation at once.
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// Longest wait for a drained server's sessions to end.
    #[serde(default = "default_drain_timeout", with = "duration_str")]
    pub drain_timeout: Duration,
    /// GET on each node's http base; 200 means healthy.
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// The Host header of the health check; none by default, as HAProxy's `option httpchk`
    /// (Moodle redirects a Host that is not its wwwroot's). Set it to the site's host name when
    /// the node's web server picks the site by name.
    #[serde(default)]
    pub health_host: Option<String>,
    /// How long a node may take to become healthy after install.
    #[serde(default = "default_health_timeout", with = "duration_str")]
    pub health_timeout: Duration,
    /// How long an install waits for another apt or dpkg on the node to let go of its lock.
    /// Debian's unattended-upgrades runs between 6 and 7 a.m., when rolls happen too.
    #[serde(default = "default_apt_lock_timeout", with = "duration_str")]
    pub apt_lock_timeout: Duration,
    /// Run once, on one node, when the release changes the database.
    #[serde(default = "default_upgrade_command")]
    pub upgrade_command: String,
    /// Puts the site in maintenance mode.
    #[serde(default = "default_maintenance_on")]
    pub maintenance_on: String,
    /// Takes the site out of maintenance mode.
    #[serde(default = "default_maintenance_off")]
    pub maintenance_off: String,
    /// Run once, on one web node, at the end of a code-only roll or rollback: new code with the
    /// old caches (strings, templates, JS, theme) serves stale pages. `upgrade_command` purges
    /// them itself on the database path. `""` skips it.
    #[serde(default = "default_purge_command")]
    pub purge_command: String,
    /// Run on each web node after its install, before its release probe and health checks:
    /// what makes its PHP serve the new code when the package's postinst does not (a php-fpm
    /// under another service name, PHP in a container, a reload that fails; with
    /// `opcache.validate_timestamps=0` only a reload serves new code). Unset: the postinst's
    /// reload of php-fpm or Apache is trusted, and the probe checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_command: Option<String>,
    /// Where the journal and state of rolls are kept (relative to the config file).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// A canary: the first batch is one web node, watched for this long under real traffic
    /// (its 5xx rate on every LB) before the others follow; off unless set (`roll --canary`).
    #[serde(
        default,
        with = "duration_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub canary: Option<Duration>,
    /// The canary fails above this 5xx rate, when the other servers' rate over the same window
    /// is lower (a site-wide outage is not the release's fault).
    #[serde(default = "default_canary_max_5xx")]
    pub canary_max_5xx: Percent,
    /// Fewer requests than this to the canary in its window: not enough traffic to judge
    /// (the canary fails; `--force` accepts it).
    #[serde(default = "default_canary_min_requests")]
    pub canary_min_requests: u64,
    /// Code-only path: web nodes that may fail (left out of rotation, in maint) before the roll
    /// stops. A failed node out of rotation takes a place in the batch.
    #[serde(default)]
    pub max_failed_nodes: u32,
    /// The releases layout: releases each node keeps after a roll (the newest; the live one
    /// and the one before it are never removed), so that a rollback is a switch.
    #[serde(default = "default_keep_releases")]
    pub keep_releases: u32,
    /// Windows in which `roll` refuses to start (exit 3; `--force` overrides). `rollback` is
    /// never frozen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<Freeze>,
}

impl Default for Roll {
    fn default() -> Self {
        Roll {
            batch: default_batch(),
            drain_timeout: default_drain_timeout(),
            health_path: default_health_path(),
            health_host: None,
            health_timeout: default_health_timeout(),
            apt_lock_timeout: default_apt_lock_timeout(),
            upgrade_command: default_upgrade_command(),
            maintenance_on: default_maintenance_on(),
            maintenance_off: default_maintenance_off(),
            purge_command: default_purge_command(),
            reload_command: None,
            state_dir: default_state_dir(),
            canary: None,
            canary_max_5xx: default_canary_max_5xx(),
            canary_min_requests: default_canary_min_requests(),
            max_failed_nodes: 0,
            keep_releases: default_keep_releases(),
            freeze: Vec::new(),
        }
    }
}

fn default_canary_max_5xx() -> Percent {
    Percent(1.0)
}
fn default_canary_min_requests() -> u64 {
    100
}

fn default_batch() -> u32 {
    1
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_health_path() -> String {
    "/admin/tool/heartbeat/index.php".into()
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_apt_lock_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_upgrade_command() -> String {
    "php {install_dir}/admin/cli/upgrade.php --non-interactive".into()
}
fn default_maintenance_on() -> String {
    "php {install_dir}/admin/cli/maintenance.php --enable".into()
}
fn default_keep_releases() -> u32 {
    3
}

fn default_purge_command() -> String {
    "php {install_dir}/admin/cli/purge_caches.php".into()
}
fn default_maintenance_off() -> String {
    "php {install_dir}/admin/cli/maintenance.php --disable".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(".moodle-release")
}

/// `[[lb]]`: one HAProxy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Lb {
    /// A name for messages and the journal.
    pub name: String,
    /// The Runtime API: `unix:PATH` or `tcp:HOST:PORT`.
    pub socket: Socket,
    /// The backend that holds the web nodes.
    pub backend: String,
}

/// `[[nodes]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// A name for messages and the journal.
    pub name: String,
    /// `[user@]host[:port]`, resolved through `[ssh] config`.
    pub ssh: String,
    /// Base URL for the health check, straight to the node (web nodes).
    #[serde(default)]
    pub http: Option<HttpBase>,
    /// The server's name in the HAProxy backend (default: `name`).
    #[serde(default)]
    pub server: Option<String>,
    /// `web` (behind HAProxy) or `cron` (upgraded after the web nodes, never drained).
    #[serde(default)]
    pub role: Role,
}

impl Node {
    /// The server's name in the HAProxy backends.
    pub fn server_name(&self) -> &str {
        self.server.as_deref().unwrap_or(&self.name)
    }
}

/// What a node does.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Web,
    Cron,
}

impl Config {
    /// Reads and checks the config file at `path`, with what `env` says over it.
    pub fn load(path: &Path, env: &Environment) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Config::parse(&text, path)?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        cfg.base_dir = dir.to_path_buf();
        // CI jobs hand in their own ssh files (from File variables) without editing the site's
        // config or touching the runner's ~/.ssh.
        if let Some(v) = &env.ssh_config {
            cfg.ssh.config = Some(v.clone());
        }
        if let Some(v) = &env.known_hosts {
            cfg.ssh.known_hosts = Some(v.clone());
        }
        cfg.ssh.in_ci = env.ci;
        Ok(cfg)
    }

    /// Parses `text` (named `path` in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |line: Option<usize>, key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            key,
            message,
        };
        let de = toml::Deserializer::parse(text).map_err(|e| {
            invalid(
                e.span().map(|s| line_of(text, s.start)),
                String::new(),
                first_line(e.message()),
            )
        })?;
        let mut track = serde_path_to_error::Track::new();
        let cfg = Config::deserialize(serde_path_to_error::Deserializer::new(de, &mut track));
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => {
                let p = track.path();
                let segs = segments(&p);
                let line = e.span().map(|s| line_of(text, s.start));
                let msg = first_line(e.message());
                let (segs, msg) = match unknown_field(&msg) {
                    Some((field, expected)) => {
                        let mut m = format!("unknown key `{field}`");
                        if let Some(best) = nearest(&field, &expected) {
                            m.push_str(&format!("; did you mean `{best}`?"));
                        } else if !expected.is_empty() {
                            m.push_str(&format!("; valid keys: {}", expected.join(", ")));
                        }
                        (segs, m)
                    }
                    None => (segs, msg),
                };
                let line = error_line(text, &segs, line);
                return Err(invalid(line, describe(&segs), msg));
            }
        };
        cfg.check(text, path)?;
        Ok(cfg)
    }

    /// `[deploy] repo`, resolved against the config file's folder.
    pub fn deploy_repo(&self) -> PathBuf {
        self.base_dir.join(&self.deploy.repo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[site]
package = "moodle-site"
maintainer = "Moodle Team <moodle-admins@example.edu>"
description = "Moodle code"
install_dir = "/srv/moodle/html"
"#;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{MIN}{extra}"), Path::new("moodle-release.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_config_fills_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.roll.batch, 1);
        assert_eq!(c.roll.drain_timeout, Duration::from_secs(120));
        assert_eq!(c.deploy.branch, "deploy");
        assert_eq!(
            c.site.config_php_target().as_deref(),
            Some("/etc/moodle-site/config.php")
        );
    }

    #[test]
    fn bad_duration_names_line_and_key() {
        let e = parse("[roll]\nbatch = 2\ndrain_timeout = \"2 minutes\"\n").unwrap_err();
        assert_eq!(
            e,
            "moodle-release.toml:9: [roll] drain_timeout: \"2 minutes\" is not a duration; write e.g. \"120s\""
        );
    }

    #[test]
    fn ssh_persist_when_set_holds_in_ci_too() {
        let c = parse("[ssh]\npersist = \"0s\"\n").unwrap();
        assert_eq!(c.ssh.persist(), Duration::ZERO);
        let c = parse("[ssh]\npersist = \"10m\"\n").unwrap();
        assert_eq!(c.ssh.persist(), Duration::from_secs(600));
        let e = parse("[ssh]\npersist = 300\n").unwrap_err();
        assert!(
            e.starts_with("moodle-release.toml:8: [ssh] persist: 300 is not a duration"),
            "{e}"
        );
    }

    #[test]
    fn durations_accept_units() {
        for (s, secs) in [("90s", 90), ("2m", 120), ("1h", 3600), ("1m30s", 90)] {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_secs(secs), "{s}");
        }
        assert!(parse_duration("90").is_err());
        assert!(parse_duration("2 minutes").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn unknown_key_suggests_nearest() {
        let e = parse("[roll]\ndrain_timout = \"10s\"\n").unwrap_err();
        assert_eq!(e, "moodle-release.toml:8: [roll] drain_timout: unknown key `drain_timout`; did you mean `drain_timeout`?");
        let e = parse("[rol]\nbatch = 1\n").unwrap_err();
        assert!(e.contains("unknown key `rol`; did you mean `roll`?"), "{e}");
    }

    #[test]
    fn array_table_errors_name_the_entry() {
        let e = parse("[[nodes]]\nname = \"web1\"\nssh = \"web1\"\nhttp = \"http://web1\"\n[[nodes]]\nname = \"web2\"\nssh = \"web2\"\nrole = \"db\"\n")
            .unwrap_err();
        assert!(
            e.starts_with("moodle-release.toml:14: [[nodes]] #2 role:"),
            "{e}"
        );
        let e = parse("[[nodes]]\nname = \"web1\"\nssh = \"web1\"\n").unwrap_err();
        assert!(
            e.starts_with("moodle-release.toml:7: [[nodes]] #1: web node `web1` needs `http`"),
            "{e}"
        );
        let e = parse("[roll]\nhealth_host = \"https://moodle.example.edu/\"\n").unwrap_err();
        assert!(
            e.starts_with("moodle-release.toml:8: [roll] health_host: \"https://moodle.example.edu/\" is not a host name"),
            "{e}"
        );
        let e = parse("[[nodes]]\nname = \"web1\"\nssh = \"web1\"\nhttp = \"https://web1\"\n")
            .unwrap_err();
        assert!(
            e.starts_with("moodle-release.toml:10: [[nodes]] #1 http: `https://web1`: health checks go straight to the node over plain HTTP"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse("").is_ok());
        let e = Config::parse(
            &MIN.replace("moodle-site", "Moodle Site"),
            Path::new("m.toml"),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with(
                "m.toml:3: [site] package: `Moodle Site` is not a Debian package name"
            ),
            "{e}"
        );
        let e = Config::parse(
            &MIN.replace("/srv/moodle/html", "srv/../x"),
            Path::new("m.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("[site] install_dir"), "{e}");
        let e =
            parse("[[lb]]\nname = \"lb1\"\nsocket = \"http://x\"\nbackend = \"b\"\n").unwrap_err();
        assert!(
            e.contains("[[lb]] #1 socket: `http://x` is not a socket"),
            "{e}"
        );
        // The apt repository is parsed here, once (a node's http too: see above), not when it is
        // first used.
        // A freeze window names its place among the windows.
        let e = parse("[[roll.freeze]]\nfrom = \"2026-12-14T00:00:00Z\"\nto = \"2026-12-15T00:00:00Z\"\n[[roll.freeze]]\ndays = [\"mon\"]\nstart = \"08:00\"\nend = \"18:00\"\ntz = \"Mars/Olympus\"\n").unwrap_err();
        assert!(
            e.contains(":10: [[roll.freeze]] #2: `tz` = \"Mars/Olympus\" is not a time zone"),
            "{e}"
        );
        // A webhook needs a URL, and a bad one is not echoed (it may hold the token).
        let e = parse("[[notify]]\nurl = \"hooks.slack.com/T0/SECRET\"\n").unwrap_err();
        assert!(
            e.contains("[[notify]] #1 url: is not an http(s):// URL") && !e.contains("SECRET"),
            "{e}"
        );
        let e = parse("[[notify]]\nformat = \"slack\"\n").unwrap_err();
        assert!(e.contains("[[notify]] #1: give `url`"), "{e}");
        let e = parse("[apt]\nrepo = \"ssh://apt.example.edu\"\n").unwrap_err();
        assert!(
            e.starts_with(
                "moodle-release.toml:8: [apt] repo: `ssh://apt.example.edu` is not ssh://"
            ),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_names_line() {
        let e = parse("[roll\nbatch = 2\n").unwrap_err();
        assert!(e.starts_with("moodle-release.toml:7:"), "{e}");
    }

    #[test]
    fn socket_forms() {
        assert_eq!(
            "unix:/run/h.sock".parse::<Socket>().unwrap(),
            Socket::Unix("/run/h.sock".into())
        );
        assert_eq!(
            "tcp:10.0.0.12:9999".parse::<Socket>().unwrap(),
            Socket::Tcp("10.0.0.12".into(), 9999)
        );
        assert!("tcp:host".parse::<Socket>().is_err());
        // IPv6 keeps its brackets when shown, and what is shown parses back to the same socket
        // (the LB client connects to what the config holds, not to its text).
        assert_eq!(
            "tcp:[2001:db8::12]:9999".parse::<Socket>().unwrap(),
            Socket::Tcp("2001:db8::12".into(), 9999)
        );
        for text in [
            "tcp:[::1]:9999",
            "tcp:lb1.example.edu:9999",
            "tcp:10.0.0.12:1",
            "unix:/run/h.sock",
        ] {
            let socket = text.parse::<Socket>().unwrap();
            assert_eq!(socket.to_string(), text);
        }
    }
}
