//! Runs one command line: turns the clap types into plain options, calls the library, and
//! writes the result on stdout (a path, or JSON with `--json`).

use std::io::Write;

use crate::apt;
use crate::build::{self, BuildOptions, Input};
use crate::cli::{Cli, Command, CompressionArg, ConfigCommand, RepoCommand};
use crate::config::Config;
use crate::deb::Compression;
use crate::merge;
use crate::report::Reporter;
use crate::roll;
use crate::Error;

/// Runs `cli`, reporting progress to `reporter` and results to `out`: one line per command,
/// each handled by a function of its own below.
pub fn run(cli: Cli, reporter: &dyn Reporter, out: &mut dyn Write) -> Result<(), Error> {
    let env = crate::config::Environment::from_process();
    let Cli {
        config,
        json,
        command,
        ..
    } = cli;
    let load = || Config::load(&config, &env);
    let out = Out { json, out };
    match command {
        Command::Merge(a) => merge_command(&load()?, a, &config, reporter, out),
        Command::Publish(a) => publish_command(&load()?, a, reporter, out),
        Command::Repo(RepoCommand::List) => repo_list(&load()?, out),
        Command::Roll(a) => {
            let cfg = load()?;
            let opts = roll::RollOptions {
                version: a.version,
                auto_rollback: a.auto_rollback,
                canary: a.canary,
                no_canary: a.no_canary,
                ..roll_options(&cfg, &env, a.common, false)
            };
            report_roll(roll::roll(&cfg, &opts, reporter), out)
        }
        Command::Rollback(a) => {
            let cfg = load()?;
            let opts = roll::RollOptions {
                version: a.to,
                ..roll_options(&cfg, &env, a.common, true)
            };
            report_roll(roll::roll(&cfg, &opts, reporter), out)
        }
        Command::Init {
            dir,
            package,
            force,
        } => init(&dir, &package, force, out.out),
        Command::ImportSubmodules { repo } => {
            let path = repo.unwrap_or_else(|| {
                load()
                    .map(|c| c.deploy_repo())
                    .unwrap_or_else(|_| ".".into())
            });
            let items =
                merge::submodules::import(&path).map_err(|e| Error::Usage(e.to_string()))?;
            out.emit(&items, |o| {
                write!(o, "{}", merge::submodules::to_toml(&items))
            })
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "moodle-release", out.out);
            Ok(())
        }
        Command::Status => {
            let st = crate::status::status(&load()?)?;
            out.emit(&st, |o| crate::render::status(&st, o))
        }
        Command::Config(ConfigCommand::Check) => {
            let cfg = load()?;
            let v = resolved(&cfg);
            let text = toml::to_string_pretty(&v).map_err(|e| Error::Usage(e.to_string()))?;
            out.emit(&v, |o| {
                writeln!(
                    o,
                    "# {}: valid; resolved values, defaults filled in",
                    config.display()
                )?;
                write!(o, "{text}")
            })
        }
        Command::Build(a) => build_command(&load()?, a, reporter, out),
    }
}

/// Where a command's result goes: JSON with `--json`, else its text.
struct Out<'a> {
    json: bool,
    out: &'a mut dyn Write,
}

impl Out<'_> {
    /// `value` as JSON with `--json`, else what `text` writes.
    fn emit<T: serde::Serialize>(
        self,
        value: &T,
        text: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        if self.json {
            serde_json::to_writer_pretty(&mut *self.out, value).map_err(std::io::Error::from)?;
            writeln!(self.out)?;
        } else {
            text(self.out)?;
        }
        Ok(())
    }
}

fn merge_command(
    cfg: &Config,
    a: crate::cli::MergeArgs,
    config_path: &std::path::Path,
    reporter: &dyn Reporter,
    out: Out,
) -> Result<(), Error> {
    let opts = merge::MergeOptions {
        update: a.update,
        locked: a.locked,
        dry_run: a.dry_run,
        strict: a.strict,
        config_path: config_path.to_path_buf(),
    };
    let m = merge::merge(cfg, &opts, reporter)?;
    for w in &m.warnings {
        reporter.warn(w);
    }
    if let Some(path) = &a.notes {
        std::fs::write(path, merge::notes_markdown(&m))?;
    }
    out.emit(&m, |o| crate::render::merge(&m, o))
}

fn publish_command(
    cfg: &Config,
    a: crate::cli::PublishArgs,
    reporter: &dyn Reporter,
    out: Out,
) -> Result<(), Error> {
    let keep = cfg.apt.as_ref().map(|x| x.keep).unwrap_or(0);
    let opts = apt::PublishOptions {
        keep_versions: a.keep_version,
    };
    let p = apt::publish(cfg, &a.debs, &opts, reporter)?;
    out.emit(&p, |o| {
        crate::render::publish(&p, &cfg.site.package.0, keep, o)
    })
}

fn repo_list(cfg: &Config, out: Out) -> Result<(), Error> {
    let (repo, _mirror) = apt::open(cfg)?;
    let list = repo.list()?;
    out.emit(&list, |o| {
        if list.is_empty() {
            return writeln!(
                o,
                "{}: no version of {} yet",
                repo.root.display(),
                cfg.site.package
            );
        }
        for l in &list {
            writeln!(
                o,
                "{:<28} {:>8.1} MB  Moodle {}",
                l.version,
                l.size as f64 / 1e6,
                l.moodle_release.clone().unwrap_or_default()
            )?;
        }
        Ok(())
    })
}

/// `init`: a commented config and the site's pipeline, never over existing files unless
/// `--force`.
fn init(
    dir: &std::path::Path,
    package: &str,
    force: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let files = [
        (
            "moodle-release.toml",
            include_str!("init/site.toml").replace("{{package}}", package),
        ),
        (
            ".gitlab-ci.yml",
            include_str!("../pipelines/moodle-site.gitlab-ci.yml").to_string(),
        ),
    ];
    for (name, _) in &files {
        if dir.join(name).exists() && !force {
            return Err(Error::Usage(format!(
                "{} exists; use --force to overwrite it",
                dir.join(name).display()
            )));
        }
    }
    std::fs::create_dir_all(dir)?;
    for (name, text) in &files {
        std::fs::write(dir.join(name), text)?;
        writeln!(out, "wrote {}", dir.join(name).display())?;
    }
    writeln!(out, "next: edit moodle-release.toml, then `moodle-release config check` and `moodle-release merge`")?;
    Ok(())
}

fn build_command(
    cfg: &Config,
    a: crate::cli::BuildArgs,
    reporter: &dyn Reporter,
    out: Out,
) -> Result<(), Error> {
    let opts = BuildOptions {
        input: match (a.r#ref, a.dir) {
            (Some(r), _) => Input::Ref(r),
            (None, Some(d)) => Input::Dir(d),
            (None, None) => Input::DeployBranch,
        },
        out_dir: a.out,
        compression: match a.compression {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::Xz => Compression::Xz,
        },
        build_number: a.build_number,
        jobs: a.jobs.filter(|&j| j > 0),
        source_date_epoch: build::source_date_epoch_from_env()?,
    };
    let started = std::time::Instant::now();
    let built = build::build(cfg, &opts, reporter)?;
    if out.json {
        // One line: a CI job reads it back with a JSON parser.
        serde_json::to_writer(&mut *out.out, &built).map_err(std::io::Error::from)?;
        writeln!(out.out)?;
        return Ok(());
    }
    crate::render::built(&built, started.elapsed().as_secs_f64(), out.out)?;
    Ok(())
}

/// The config with every derived value spelled out.
fn resolved(cfg: &Config) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(site) = v.get_mut("site").and_then(|s| s.as_object_mut()) {
        site.insert(
            "config_php".into(),
            cfg.site.config_php_target().unwrap_or_default().into(),
        );
    }
    if let Some(plugins) = v.get_mut("plugins").and_then(|p| p.as_array_mut()) {
        for (p, c) in plugins.iter_mut().zip(&cfg.plugins) {
            if let Some(o) = p.as_object_mut() {
                if o.get("path").is_none_or(|x| x.is_null()) {
                    o.insert(
                        "path".into(),
                        crate::moodle::default_plugin_path(&c.component).into(),
                    );
                }
            }
        }
    }
    if let Some(nodes) = v.get_mut("nodes").and_then(|p| p.as_array_mut()) {
        for (n, c) in nodes.iter_mut().zip(&cfg.nodes) {
            if let Some(o) = n.as_object_mut() {
                o.insert("server".into(), c.server_name().into());
            }
        }
    }
    strip_nulls(&mut v);
    v
}

fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            o.retain(|_, x| !x.is_null());
            o.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Prints a roll's plan or outcome: JSON with `--json`; else the plan, the timeline and a summary.
fn report_roll(result: Result<roll::Outcome, roll::RollError>, out: Out) -> Result<(), Error> {
    let Out { json, out } = out;
    let o = match result {
        Ok(o) => o,
        Err(e) => {
            if json {
                let v = serde_json::json!({"ok": false, "error": e.to_string(), "exit_code": e.exit_code(), "journal": e.journal(), "canary": e.canary()});
                writeln!(out, "{v}")?;
            }
            return Err(e.into());
        }
    };
    // The roll said its warnings as they came; `--json` carries them too.
    if json {
        serde_json::to_writer_pretty(&mut *out, &o).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    crate::render::roll(&o, out)?;
    Ok(())
}

fn roll_options(
    cfg: &Config,
    env: &crate::config::Environment,
    c: crate::cli::Rolling,
    rollback: bool,
) -> roll::RollOptions {
    roll::RollOptions {
        notifier: Some(std::sync::Arc::new(crate::notify::Notifier::new(cfg, env))),
        batch: c.batch,
        plan: c.plan,
        force: c.force,
        force_drain: c.force_drain,
        break_lock: c.break_lock,
        resume: c.resume,
        rollback,
        stop: interrupt_flag(),
        ..Default::default()
    }
}

/// Set by Ctrl-C or SIGTERM: a roll stops between batches (the database path runs to its end).
/// The handlers are installed here, by the command line, not by the library.
fn interrupt_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    stop
}
