//! The command line, as clap types. Nothing else sees these: [`crate::run`] turns them into the
//! plain option structs of each module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Takes a Moodle site from git to production: merge, build a .deb, publish it to apt, roll it
/// out through HAProxy.
#[derive(Debug, Parser)]
#[command(name = "moodle-release", version, about, max_term_width = 100)]
pub struct Cli {
    /// The config file.
    #[arg(
        long,
        global = true,
        default_value = "moodle-release.toml",
        value_name = "PATH"
    )]
    pub config: PathBuf,
    /// Print the result as JSON on stdout (for CI jobs).
    #[arg(long, global = true)]
    pub json: bool,
    /// More detail on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Never show progress bars, even on a terminal.
    #[arg(long, global = true)]
    pub no_progress: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Assemble upstream Moodle, the plugins and local patches into the deployment branch.
    Merge(MergeArgs),
    /// Build the site's .deb from the deployment branch (or another ref, or a folder).
    Build(BuildArgs),
    /// Add built packages to the apt repository.
    Publish(PublishArgs),
    /// Upgrade the web nodes, a batch at a time, through HAProxy.
    Roll(RollArgs),
    /// Go back to an earlier version, with the same care.
    Rollback(RollbackArgs),
    /// Each node's version and state, and the repository's newest version.
    Status,
    /// Check the config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Look into the apt repository.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Write a starting moodle-release.toml and the site's .gitlab-ci.yml (with comments).
    Init {
        /// The folder of the site repository.
        #[arg(default_value = ".")]
        dir: std::path::PathBuf,
        /// The Debian package name of the site.
        #[arg(long, default_value = "moodle-site")]
        package: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Print `[[plugins]]` entries for the submodules of a site repository (`.gitmodules`).
    ImportSubmodules {
        /// The repository; default `[deploy] repo`, or `.` without a config.
        #[arg(long, value_name = "DIR")]
        repo: Option<std::path::PathBuf>,
    },
    /// Print shell completions (bash, zsh, fish, ...) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What `roll` and `rollback` share.
#[derive(Debug, Args)]
pub struct Rolling {
    /// Web nodes upgraded (and out of rotation) at once, at least 1; default `[roll] batch`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: Option<u32>,
    /// Print the plan and stop: nothing is changed.
    #[arg(long, alias = "dry-run")]
    pub plan: bool,
    /// Go on although servers are out of rotation that this tool did not take out, inside a
    /// freeze window, or with a canary that saw too little traffic to judge (roll); or although
    /// the database was upgraded, after restoring it (rollback).
    #[arg(long)]
    pub force: bool,
    /// When sessions do not end within drain_timeout, switch the nodes to maint instead of stopping.
    #[arg(long)]
    pub force_drain: bool,
    /// Remove a cluster lock left by a roll that died (with a warning).
    #[arg(long)]
    pub break_lock: bool,
    /// Finish the roll (or rollback) that stopped (a failed node, an interruption) to its own
    /// target, read from its state; refused when there is none, or with another version.
    #[arg(long)]
    pub resume: bool,
}

/// `roll`
#[derive(Debug, Args)]
pub struct RollArgs {
    /// The version to install; default: the newest in the apt repository.
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// On a failure, put the nodes this roll upgraded back on their previous version.
    #[arg(long)]
    pub auto_rollback: bool,
    /// Upgrade one web node first and watch its 5xx rate on every LB for DURATION (default
    /// `[roll] canary`, else 2m) before the others; if it fails, it goes back and the roll stops.
    #[arg(
        long,
        value_name = "DURATION",
        num_args = 0..=1,
        value_parser = canary_duration,
        conflicts_with = "no_canary"
    )]
    pub canary: Option<Option<std::time::Duration>>,
    /// No canary, although `[roll] canary` is set.
    #[arg(long)]
    pub no_canary: bool,
    #[command(flatten)]
    pub common: Rolling,
}

/// `--canary 90s`: a duration above zero.
fn canary_duration(s: &str) -> Result<std::time::Duration, String> {
    match crate::config::parse_duration(s)? {
        d if d.is_zero() => {
            Err("a canary needs a window above 0s; use --no-canary for none".into())
        }
        d => Ok(d),
    }
}

/// `rollback`
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The version to go back to; default: the one before the current one.
    #[arg(long, value_name = "V")]
    pub to: Option<String>,
    #[command(flatten)]
    pub common: Rolling,
}

/// `publish`
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The packages to add.
    #[arg(required = true, value_name = "DEB")]
    pub debs: Vec<std::path::PathBuf>,
    /// A version that must stay in the repository whatever `[apt] keep` says (repeatable).
    #[arg(long, value_name = "VERSION")]
    pub keep_version: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// The versions of the package in the repository, newest first.
    List,
}

/// `merge`
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Move the pins of the lock to what the refs point at now: all of them, or only the named
    /// components (`upstream` for Moodle itself).
    #[arg(long, num_args = 0.., value_name = "COMPONENT")]
    pub update: Option<Vec<String>>,
    /// Build exactly what the lock pins; fail if the lock would change (for CI).
    #[arg(long, conflicts_with = "update")]
    pub locked: bool,
    /// Show what would change; write no commit and no lock.
    #[arg(long)]
    pub dry_run: bool,
    /// Treat warnings of the Moodle checks (e.g. `$plugin->supported`) as errors.
    #[arg(long)]
    pub strict: bool,
    /// Also write the change summary as Markdown to FILE (for the changelog or a CI page).
    #[arg(long, value_name = "FILE")]
    pub notes: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config file and print the resolved values (defaults filled in).
    Check,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build this ref or commit of [deploy] repo instead of [deploy] branch.
    #[arg(long, value_name = "REF", conflicts_with = "dir")]
    pub r#ref: Option<String>,
    /// Package a plain folder instead of a git ref.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Where the .deb is written.
    #[arg(long, value_name = "DIR", default_value = "dist")]
    pub out: PathBuf,
    /// Compression of the package's members.
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip)]
    pub compression: CompressionArg,
    /// The build part of the version (default: the commit's first-parent count; 0 for --dir).
    #[arg(long, value_name = "N")]
    pub build_number: Option<u64>,
    /// Worker threads (default: one per core). The output does not depend on it.
    #[arg(long, short, value_name = "N")]
    pub jobs: Option<usize>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompressionArg {
    /// Every dpkg reads it.
    Gzip,
    /// Fast; needs dpkg >= 1.21.18 (Debian 12, Ubuntu 18.04+).
    Zstd,
    /// Smallest, slowest.
    Xz,
}
