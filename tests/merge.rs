//! `moodle-release merge` on real git repositories: upstream, plugins and patch branches made
//! with git in temporary folders.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Upstream, two plugin repositories and a site repository whose config names them.
struct Lab {
    site: Site,
}

impl Lab {
    fn new() -> Lab {
        let site = Site::empty();
        let up = site.dir().join("upstream");
        fs::create_dir_all(&up).unwrap();
        run(git(&up).args(["init", "-q", "-b", "MOODLE_401_STABLE"]));
        moodle_tree(&up, "2022112809.00", "4.1.9 (Build: 20240212)");
        write(
            &up.join("lib/components.json"),
            r#"{"plugintypes": {"mod": "mod", "block": "blocks", "tool": "admin\/tool", "local": "local"}}"#,
        );
        write(
            &up.join("mod/assign/version.php"),
            &plugin_version_php("mod_assign", "2022112800"),
        );
        write(
            &up.join("mod/assign/db/subplugins.json"),
            r#"{"plugintypes": {"assignsubmission": "mod\/assign\/submission", "assignfeedback": "mod\/assign\/feedback"}}"#,
        );
        run(git(&up).args(["add", "-A"]));
        run(git(&up).args(["commit", "-q", "-m", "4.1.9"]));
        let lab = Lab { site };
        lab.plugin("mod_demo", "2024010100", &[]);
        lab.plugin("assignsubmission_extra", "2024010100", &[]);
        // The site repository's own branch (main), beside the deployment branch merge writes.
        run(git(&lab.site.repo()).args(["symbolic-ref", "HEAD", "refs/heads/main"]));
        write(&lab.site.repo().join("README"), "site\n");
        lab.site.commit("site");
        lab.config("");
        lab
    }

    fn upstream(&self) -> PathBuf {
        self.site.dir().join("upstream")
    }

    fn plugin_dir(&self, component: &str) -> PathBuf {
        self.site.dir().join("plugins").join(component)
    }

    /// Makes (or adds a commit to) a plugin repository; `extra` files are (path, content).
    fn plugin(&self, component: &str, version: &str, extra: &[(&str, &str)]) {
        let dir = self.plugin_dir(component);
        if !dir.exists() {
            fs::create_dir_all(&dir).unwrap();
            run(git(&dir).args(["init", "-q", "-b", "main"]));
        }
        write(
            &dir.join("version.php"),
            &plugin_version_php(component, version),
        );
        write(
            &dir.join("lib.php"),
            &format!("<?php\n// {component} {version}\n"),
        );
        for (p, c) in extra {
            write(&dir.join(p), c);
        }
        run(git(&dir).args(["add", "-A"]));
        run(git(&dir).args(["commit", "-q", "-m", &format!("{component} {version}")]));
    }

    /// The config: upstream branch, both plugins, plus `extra` TOML in [deploy] or after.
    fn config(&self, deploy_extra: &str) {
        self.config_with(deploy_extra, "");
    }

    fn config_with(&self, deploy_extra: &str, plugins_extra: &str) {
        let text = format!(
            r#"[site]
package = "moodle-test"
maintainer = "Moodle Team <moodle-admins@example.edu>"
description = "Moodle code for the tests"
install_dir = "/srv/moodle-test/html"

[upstream]
url = "upstream"
ref = "MOODLE_401_STABLE"

[[plugins]]
component = "mod_demo"
url = "file://{demo}"
ref = "main"

[[plugins]]
component = "assignsubmission_extra"
url = "plugins/assignsubmission_extra"
ref = "main"
{plugins_extra}
[deploy]
repo = "repo"
branch = "deploy"
{deploy_extra}
"#,
            demo = self.plugin_dir("mod_demo").display()
        );
        fs::write(self.site.config_path(), text).unwrap();
    }

    /// A branch `local-fixes` off `deploy` with one commit that sets mod/demo/lib.php to `text`.
    fn patch_branch(&self, text: &str, message: &str) {
        run(git(&self.site.repo()).args(["branch", "local-fixes", "deploy"]));
        let wt = self.site.dir().join("wt");
        run(git(&self.site.repo())
            .args(["worktree", "add", "-q"])
            .arg(&wt)
            .arg("local-fixes"));
        write(&wt.join("mod/demo/lib.php"), text);
        run(git(&wt).args(["commit", "-q", "-am", message]));
    }

    /// Replaces mod_demo's version.php with `text` in a new commit.
    fn demo_version_php(&self, text: &str) {
        write(&self.plugin_dir("mod_demo").join("version.php"), text);
        run(git(&self.plugin_dir("mod_demo")).args(["commit", "-q", "-am", "version.php"]));
    }

    fn merge(&self, args: &[&str]) -> serde_json::Value {
        let out = run(self.site.cmd().arg("--json").arg("merge").args(args));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn merge_fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.site.cmd().arg("merge").args(args).output().unwrap();
        assert!(
            !out.status.success(),
            "merge should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        (out.status.code().unwrap_or(-1), err)
    }

    fn show(&self, rev_path: &str) -> String {
        stdout(git(&self.site.repo()).args(["show", rev_path]))
    }

    fn rev(&self, rev: &str) -> String {
        stdout(git(&self.site.repo()).args(["rev-parse", rev]))
            .trim()
            .to_string()
    }

    /// Neither the deployment branch nor the lock exists.
    fn assert_wrote_nothing(&self) {
        assert!(
            !self.site.dir().join("moodle-release.lock").exists(),
            "the lock was written"
        );
        let out = git(&self.site.repo())
            .args(["rev-parse", "--verify", "-q", "deploy"])
            .output()
            .unwrap();
        assert!(out.stdout.is_empty(), "the deployment branch was written");
    }

    fn lock(&self) -> String {
        fs::read_to_string(self.site.dir().join("moodle-release.lock")).unwrap()
    }
}

fn upstream_commit(up: &Path, version: &str, release: &str) {
    write(
        &up.join("version.php"),
        &core_version_php(version, release, "401"),
    );
    run(git(up).args(["commit", "-q", "-am", release]));
}

#[test]
fn grafts_plugins_at_their_paths_and_writes_the_lock() {
    let lab = Lab::new();
    let v = lab.merge(&[]);
    assert_eq!(v["changed"], true);
    let commit = v["commit"].as_str().unwrap();
    assert_eq!(lab.rev("deploy"), commit);
    // Upstream's files, each plugin at its derived path (a subplugin through its parent's
    // db/subplugins.json), and nothing of the site repository's own branch.
    assert!(lab.show("deploy:version.php").contains("4.1.9"));
    assert!(lab
        .show("deploy:mod/demo/version.php")
        .contains("'mod_demo'"));
    assert!(lab
        .show("deploy:mod/assign/submission/extra/version.php")
        .contains("assignsubmission_extra"));
    assert!(lab
        .show("deploy:mod/assign/version.php")
        .contains("mod_assign"));
    // Parents: upstream and both plugin commits; pins in the trailers.
    let parents = stdout(git(&lab.site.repo()).args(["log", "-1", "--format=%P", "deploy"]));
    assert_eq!(parents.split_whitespace().count(), 3, "{parents}");
    let up = stdout(git(&lab.upstream()).args(["rev-parse", "HEAD"]));
    assert!(parents.contains(up.trim()));
    let msg = stdout(git(&lab.site.repo()).args(["log", "-1", "--format=%B", "deploy"]));
    assert!(
        msg.contains(&format!(
            "Moodle-Release-Upstream: upstream MOODLE_401_STABLE {}",
            up.trim()
        )),
        "{msg}"
    );
    assert!(msg.contains("Moodle-Release-Plugin: mod_demo"), "{msg}");
    let lock = lab.lock();
    assert!(
        lock.contains(&format!("commit = \"{}\"", up.trim())),
        "{lock}"
    );
    assert!(
        lock.contains("path = \"mod/assign/submission/extra\""),
        "{lock}"
    );
    assert!(lock.contains("version = \"2024010100\""), "{lock}");

    // Again: nothing changed, no new commit, and it says so.
    let again = lab.merge(&[]);
    assert_eq!(again["changed"], false);
    assert_eq!(lab.rev("deploy"), commit);
    let text = String::from_utf8(run(lab.site.cmd().arg("merge")).stdout).unwrap();
    assert!(text.contains("up to date"), "{text}");

    // build packages the merged branch.
    let deb = lab.site.build(&[]);
    let rows = deb_contents(&deb);
    assert!(rows
        .iter()
        .any(|r| r.2 == "./srv/moodle-test/html/mod/assign/submission/extra/version.php"));
}

#[test]
fn pins_hold_until_update_and_locked_rebuilds_the_same_tree() {
    let lab = Lab::new();
    lab.merge(&[]);
    let first_tree = lab.rev("deploy^{tree}");
    upstream_commit(&lab.upstream(), "2022112810.00", "4.1.10 (Build: 20240422)");
    lab.plugin("mod_demo", "2024030100", &[]);

    // The refs moved, the lock did not: nothing changes.
    let v = lab.merge(&[]);
    assert_eq!(v["changed"], false);
    // Only mod_demo moves.
    let v = lab.merge(&["--update", "mod_demo"]);
    assert_eq!(v["changed"], true);
    assert!(lab
        .show("deploy:mod/demo/version.php")
        .contains("2024030100"));
    assert!(lab.show("deploy:version.php").contains("4.1.9"));
    let demo = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["component"] == "mod_demo")
        .unwrap()
        .clone();
    assert_eq!(demo["from"], "2024010100");
    assert_eq!(demo["to"], "2024030100");
    // Everything moves; the summary names the core change.
    let out = run(lab
        .site
        .cmd()
        .args(["merge", "--update", "--notes", "notes.md"]));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("core: 4.1.9 (Build: 20240212) (2022112809.00) -> 4.1.10 (Build: 20240422) (2022112810.00)"), "{text}");
    let notes = fs::read_to_string(lab.site.dir().join("notes.md")).unwrap();
    assert!(
        notes.contains("## Moodle 4.1.10") && notes.contains("-> 4.1.10"),
        "{notes}"
    );
    assert_ne!(lab.rev("deploy^{tree}"), first_tree);
    let deploy_tree = lab.rev("deploy^{tree}");

    // --locked in a fresh deployment repository (a CI runner): the same tree, bit for bit.
    let ci = tempfile::tempdir().unwrap();
    let ci_repo = ci.path().join("repo");
    run(Command::new("git")
        .args(["init", "-q", "-b", "main"])
        .arg(&ci_repo));
    // The same config, with the same relative paths to the sources.
    fs::copy(
        lab.site.config_path(),
        ci.path().join("moodle-release.toml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(lab.upstream(), ci.path().join("upstream")).unwrap();
    std::os::unix::fs::symlink(lab.site.dir().join("plugins"), ci.path().join("plugins")).unwrap();
    fs::copy(
        lab.site.dir().join("moodle-release.lock"),
        ci.path().join("moodle-release.lock"),
    )
    .unwrap();
    // Upstream moves on meanwhile: --locked must not follow it.
    upstream_commit(
        &lab.upstream(),
        "2022112810.01",
        "4.1.10+ (Build: 20240426)",
    );
    let out = run(Command::new(env!("CARGO_BIN_EXE_moodle-release"))
        .current_dir(ci.path())
        .args(["--no-progress", "merge", "--locked"]));
    assert!(out.status.success());
    let tree = stdout(git(&ci_repo).args(["rev-parse", "deploy^{tree}"]));
    assert_eq!(tree.trim(), deploy_tree);
    assert_eq!(
        fs::read_to_string(ci.path().join("moodle-release.lock")).unwrap(),
        lab.lock()
    );

    // --locked refuses a config that no longer matches the lock (exit 2), and writes nothing.
    lab.config_with(
        "",
        "[[plugins]]\ncomponent = \"local_new\"\nurl = \"upstream\"\nref = \"MOODLE_401_STABLE\"\n",
    );
    let before = lab.lock();
    let (code, err) = lab.merge_fails(&["--locked"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("local_new"), "{err}");
    assert_eq!(lab.lock(), before);
}

#[test]
fn patches_are_merged_and_survive_later_merges() {
    let lab = Lab::new();
    lab.merge(&[]);
    // A local fix, branched off the deployment branch, touching a plugin's file.
    lab.patch_branch("<?php\n// mod_demo 2024010100\n// local fix\n", "local fix");
    lab.config("patches = [\"local-fixes\"]");
    let v = lab.merge(&[]);
    assert_eq!(v["changed"], true);
    assert_eq!(v["patches"][0]["branch"], "local-fixes");
    assert!(lab.show("deploy:mod/demo/lib.php").contains("local fix"));

    // Upstream and the plugin move on (the plugin in another file); the fix must still be there.
    upstream_commit(&lab.upstream(), "2022112810.00", "4.1.10 (Build: 20240422)");
    lab.plugin("mod_demo", "2024010100", &[("lang/en/demo.php", "<?php\n")]);
    // (same version: lib.php is rewritten identically, only a new file)
    lab.merge(&["--update"]);
    assert!(lab.show("deploy:version.php").contains("4.1.10"));
    assert!(
        lab.show("deploy:mod/demo/lib.php").contains("local fix"),
        "the patch was dropped"
    );
    assert!(lab
        .show("deploy:mod/demo/lang/en/demo.php")
        .contains("<?php"));
    let again = lab.merge(&[]);
    assert_eq!(again["changed"], false);
}

#[test]
fn a_conflicting_patch_names_the_files_and_changes_nothing() {
    let lab = Lab::new();
    lab.merge(&[]);
    lab.patch_branch("<?php\n// our version of the line\n", "local change");
    lab.config("patches = [\"local-fixes\"]");
    lab.merge(&[]);
    let deploy = lab.rev("deploy");
    let lock = lab.lock();
    // The plugin changes the same line.
    lab.plugin("mod_demo", "2024030100", &[]);
    let (code, err) = lab.merge_fails(&["--update"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("local-fixes") && err.contains("mod/demo/lib.php"),
        "{err}"
    );
    assert_eq!(lab.rev("deploy"), deploy, "the branch moved");
    assert_eq!(lab.lock(), lock, "the lock changed");
}

#[test]
fn unrelated_patch_histories_are_refused() {
    let lab = Lab::new();
    lab.merge(&[]);
    run(git(&lab.site.repo()).args(["checkout", "-q", "--orphan", "stray"]));
    write(&lab.site.repo().join("stray.txt"), "x");
    run(git(&lab.site.repo()).args(["add", "stray.txt"]));
    run(git(&lab.site.repo()).args(["commit", "-q", "-m", "stray"]));
    lab.config("patches = [\"stray\"]");
    let (code, err) = lab.merge_fails(&[]);
    assert_eq!(code, 1);
    assert!(err.contains("stray") && err.contains("unrelated"), "{err}");
    lab.config("patches = [\"no-such-branch\"]");
    let (_, err) = lab.merge_fails(&[]);
    assert!(err.contains("no-such-branch"), "{err}");
}

#[test]
fn moodle_checks_refuse_bad_plugins() {
    // (what to break, what the error must say)
    type Breaker = Box<dyn Fn(&Lab)>;
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "not a plugin",
            Box::new(|l: &Lab| {
                let d = l.plugin_dir("mod_demo");
                run(git(&d).args(["rm", "-q", "version.php"]));
                run(git(&d).args(["commit", "-q", "-m", "no version.php"]));
            }),
            "not a Moodle plugin",
        ),
        (
            "wrong component",
            Box::new(|l: &Lab| {
                l.demo_version_php(&plugin_version_php("mod_other", "2024010100"));
            }),
            "mod_other",
        ),
        (
            "requires a newer Moodle",
            Box::new(|l: &Lab| {
                let text = plugin_version_php("mod_demo", "2024010100")
                    .replace("2022112800;", "2024100700;");
                l.demo_version_php(&text);
            }),
            "2024100700",
        ),
        (
            "missing dependency",
            Box::new(|l: &Lab| {
                let text = plugin_version_php("mod_demo", "2024010100")
                    + "$plugin->dependencies = ['local_missing' => ANY_VERSION];\n";
                l.demo_version_php(&text);
            }),
            "local_missing",
        ),
        (
            "dependency too old",
            Box::new(|l: &Lab| {
                let text = plugin_version_php("mod_demo", "2024010100")
                    + "$plugin->dependencies = array('mod_forum' => 2099010100);\n";
                l.demo_version_php(&text);
            }),
            "2099010100",
        ),
        (
            "incompatible",
            Box::new(|l: &Lab| {
                let text =
                    plugin_version_php("mod_demo", "2024010100") + "$plugin->incompatible = 401;\n";
                l.demo_version_php(&text);
            }),
            "incompatible",
        ),
        (
            "downgrade",
            Box::new(|l: &Lab| {
                l.plugin("mod_demo", "2023010100", &[]);
            }),
            "downgrade",
        ),
    ];
    for (name, breaker, needle) in cases {
        let lab = Lab::new();
        lab.merge(&[]);
        let deploy = lab.rev("deploy");
        let lock = lab.lock();
        breaker(&lab);
        let (code, err) = lab.merge_fails(&["--update"]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
        assert!(err.contains("mod_demo"), "{name}: {err}");
        assert_eq!(lab.rev("deploy"), deploy, "{name}: the branch moved");
        assert_eq!(lab.lock(), lock, "{name}: the lock changed");
    }
}

#[test]
fn a_core_plugin_path_needs_replace() {
    let lab = Lab::new();
    lab.plugin("mod_forum", "2024010100", &[("local.txt", "ours\n")]);
    let forum = format!(
        "[[plugins]]\ncomponent = \"mod_forum\"\nurl = \"{}\"\nref = \"main\"\n",
        lab.plugin_dir("mod_forum").display()
    );
    lab.config_with("", &forum);
    let (code, err) = lab.merge_fails(&[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("mod/forum") && err.contains("replace = true"),
        "{err}"
    );
    lab.config_with("", &format!("{forum}replace = true\n"));
    lab.merge(&[]);
    assert_eq!(lab.show("deploy:mod/forum/local.txt"), "ours\n");
    // The plugin replaced the folder: core's files of it are gone.
    let out = git(&lab.site.repo())
        .args(["show", "deploy:mod/forum/lang/en/forum.php"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn unsupported_branch_warns_and_strict_refuses() {
    let lab = Lab::new();
    lab.demo_version_php(
        &(plugin_version_php("mod_demo", "2024010100") + "$plugin->supported = [402, 405];\n"),
    );
    let (code, err) = lab.merge_fails(&["--strict"]);
    assert_eq!(code, 1);
    assert!(err.contains("402") && err.contains("401"), "{err}");
    let out = run(lab.site.cmd().arg("merge"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("402"), "no warning: {err}");
}

#[test]
fn a_running_merge_makes_a_second_one_refuse() {
    let lab = Lab::new();
    // A merge in progress holds the lock with its pid: this test's own (alive) process.
    let lock = lab.site.repo().join(".git/moodle-release-merge.lock");
    fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
    let (code, err) = lab.merge_fails(&[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("another merge is running"), "{err}");
    // A lock left by a dead process is taken over.
    fs::write(&lock, "999999999\n").unwrap();
    lab.merge(&[]);
    assert!(!lock.exists());
}

#[test]
fn libgit2_backend_gives_the_same_tree() {
    let lab = Lab::new();
    lab.merge(&[]);
    let cli_tree = lab.rev("deploy^{tree}");
    let other = Lab::new();
    other.config("fetch = \"libgit2\"");
    other.merge(&[]);
    assert_eq!(other.rev("deploy^{tree}"), cli_tree);
}

#[test]
fn unreachable_sources_name_the_source() {
    let lab = Lab::new();
    let text = fs::read_to_string(lab.site.config_path())
        .unwrap()
        .replace("ref = \"MOODLE_401_STABLE\"", "ref = \"MOODLE_999_STABLE\"");
    fs::write(lab.site.config_path(), text).unwrap();
    let (code, err) = lab.merge_fails(&[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("upstream") && err.contains("MOODLE_999_STABLE"),
        "{err}"
    );
    lab.assert_wrote_nothing();
}

/// Many plugins are fetched several at a time: each lands at its own path with its own content
/// (no mix-up between fetches that end in another order), and when some cannot be fetched the
/// first of them in the config is named, with nothing written.
#[test]
fn many_plugins_fetched_at_once_each_at_its_path() {
    let lab = Lab::new();
    let n = 3 * moodle_release::merge::fetch::JOBS + 1;
    for i in 0..n {
        lab.plugin(&format!("local_p{i}"), "2024010100", &[]);
    }
    let entries = |broken: &[usize]| {
        (0..n)
            .map(|i| {
                let c = format!("local_p{i}");
                let url = if broken.contains(&i) {
                    format!("plugins/{c}-missing")
                } else {
                    format!("plugins/{c}")
                };
                format!("\n[[plugins]]\ncomponent = \"{c}\"\nurl = \"{url}\"\nref = \"main\"\n")
            })
            .collect::<String>()
    };
    lab.config_with("", &entries(&[5, 17]));
    let (code, err) = lab.merge_fails(&[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("fetching local_p5 (")
            && err.contains("local_p5-missing' does not appear to be a git repository"),
        "{err}"
    );
    lab.assert_wrote_nothing();

    lab.config_with("", &entries(&[]));
    lab.merge(&[]);
    for i in 0..n {
        let lib = lab.show(&format!("deploy:local/p{i}/lib.php"));
        assert_eq!(lib, format!("<?php\n// local_p{i} 2024010100\n"));
    }

    // The same with libgit2 into a new repository: its fetches at once (into one repository,
    // each locking its `shallow` file) come to the same tree.
    run(Command::new("git")
        .args(["init", "-q", "-b", "main"])
        .arg(lab.site.dir().join("repo2")));
    lab.config_with("fetch = \"libgit2\"", &entries(&[]));
    let text = fs::read_to_string(lab.site.config_path()).unwrap();
    fs::write(
        lab.site.config_path(),
        text.replace("repo = \"repo\"", "repo = \"repo2\""),
    )
    .unwrap();
    lab.merge(&[]);
    assert_eq!(
        lab.rev("deploy^{tree}"),
        String::from_utf8_lossy(
            &run(git(&lab.site.dir().join("repo2")).args(["rev-parse", "deploy^{tree}"])).stdout
        )
        .trim()
    );
}

/// A plugin fetched over ssh from a real sshd on loopback, with the host key checked: an unknown
/// key is refused, never accepted.
#[test]
fn fetches_over_ssh_and_checks_the_host_key() {
    let lab = Lab::new();
    let sshd = Sshd::start();
    let url = format!(
        "ssh://root@127.0.0.1:{}{}",
        sshd.port,
        lab.plugin_dir("mod_demo").display()
    );
    let text = fs::read_to_string(lab.site.config_path()).unwrap();
    let demo_url = format!("url = \"file://{}\"", lab.plugin_dir("mod_demo").display());
    assert!(text.contains(&demo_url));
    let with_ssh = text.replace(&demo_url, &format!("url = \"{url}\""))
        + &format!(
            "\n[ssh]\nconfig = \"{}\"\nknown_hosts = \"{}\"\n",
            sshd.config().display(),
            sshd.known_hosts().display()
        );
    fs::write(lab.site.config_path(), &with_ssh).unwrap();
    let v = lab.merge(&[]);
    assert_eq!(v["changed"], true);
    assert!(lab.show("deploy:mod/demo/version.php").contains("mod_demo"));
    assert!(lab.lock().contains(&url));

    // The same with a known_hosts that does not know the key: refused.
    let empty = lab.site.dir().join("empty_known_hosts");
    fs::write(&empty, "").unwrap();
    let other = lab.site.dir().join("repo2");
    run(Command::new("git")
        .args(["init", "-q", "-b", "main"])
        .arg(&other));
    let refused = with_ssh
        .replace(
            &sshd.known_hosts().display().to_string(),
            &empty.display().to_string(),
        )
        .replace("repo = \"repo\"", "repo = \"repo2\"");
    fs::write(lab.site.config_path(), refused).unwrap();
    fs::remove_file(lab.site.dir().join("moodle-release.lock")).unwrap();
    let (code, err) = lab.merge_fails(&[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("mod_demo") && err.contains("Host key verification failed"),
        "{err}"
    );
}

#[test]
fn import_submodules_writes_plugin_entries() {
    let lab = Lab::new();
    let repo = lab.site.repo();
    run(git(&repo)
        .args([
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            "-b",
            "main",
        ])
        .arg(lab.plugin_dir("mod_demo"))
        .arg("mod/demo"));
    run(git(&repo)
        .args(["-c", "protocol.file.allow=always", "submodule", "add", "-q"])
        .arg(lab.plugin_dir("assignsubmission_extra"))
        .arg("mod/assign/submission/extra"));
    run(git(&repo).args(["commit", "-q", "-m", "submodules"]));
    let pinned = stdout(git(&lab.plugin_dir("assignsubmission_extra")).args(["rev-parse", "HEAD"]));
    let out = run(lab
        .site
        .cmd()
        .args(["import-submodules", "--repo"])
        .arg(&repo));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("component = \"mod_demo\"") && text.contains("ref = \"main\""),
        "{text}"
    );
    assert!(
        text.contains("component = \"assignsubmission_extra\""),
        "{text}"
    );
    assert!(
        text.contains(&format!("ref = \"{}\"", pinned.trim())),
        "{text}"
    );
    // What it printed is a valid part of a config.
    let parsed: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(parsed["plugins"].as_array().unwrap().len(), 2);
}

#[test]
fn dry_run_writes_nothing() {
    let lab = Lab::new();
    let v = lab.merge(&["--dry-run"]);
    assert_eq!(v["changed"], true);
    assert_eq!(v["dry_run"], true);
    lab.assert_wrote_nothing();
    lab.merge(&[]);
    let deploy = lab.rev("deploy");
    let lock = lab.lock();
    lab.plugin("mod_demo", "2024030100", &[]);
    let v = lab.merge(&["--dry-run", "--update"]);
    assert_eq!(v["changed"], true);
    assert_eq!(lab.rev("deploy"), deploy);
    assert_eq!(lab.lock(), lock);
}

/// Moodle 5.1+ keeps its web code under public/: plugins go there, build packages it.
#[test]
fn moodle_51_public_layout() {
    let site = Site::empty();
    let up = site.dir().join("upstream");
    fs::create_dir_all(&up).unwrap();
    run(git(&up).args(["init", "-q", "-b", "main"]));
    moodle_tree(&up.join("public"), "2025100600.00", "5.1 (Build: 20251006)");
    fs::remove_file(up.join("public/config.php")).unwrap();
    write(&up.join("config-dist.php"), "<?php\n");
    write(&up.join("composer.json"), "{}\n");
    write(
        &up.join("public/lib/components.json"),
        r#"{"plugintypes": {"mod": "mod", "block": "public\/blocks"}}"#,
    );
    run(git(&up).args(["add", "-A"]));
    run(git(&up).args(["commit", "-q", "-m", "5.1"]));
    let demo = site.dir().join("plugins/mod_demo");
    fs::create_dir_all(&demo).unwrap();
    run(git(&demo).args(["init", "-q", "-b", "main"]));
    write(
        &demo.join("version.php"),
        &plugin_version_php("mod_demo", "2025010100"),
    );
    run(git(&demo).args(["add", "-A"]));
    run(git(&demo).args(["commit", "-q", "-m", "demo"]));
    site.config("\n[upstream]\nurl = \"upstream\"\nref = \"main\"\n\n[[plugins]]\ncomponent = \"mod_demo\"\nurl = \"plugins/mod_demo\"\nref = \"main\"\n");
    let text = fs::read_to_string(site.config_path()).unwrap();
    // [upstream] and [[plugins]] must come before [deploy]'s keys end: move them to the top.
    let (head, tail) = text.split_at(text.find("[deploy]").unwrap());
    let (deploy, extra) = tail.split_at(tail.find("\n[upstream]").unwrap());
    fs::write(site.config_path(), format!("{head}{extra}\n{deploy}")).unwrap();
    run(site.cmd().arg("merge"));
    let show = |p: &str| stdout(git(&site.repo()).args(["show", &format!("deploy:{p}")]));
    assert!(show("public/mod/demo/version.php").contains("mod_demo"));
    assert!(show("public/version.php").contains("5.1"));
    let deb = site.build(&[]);
    assert!(
        deb.file_name()
            .unwrap()
            .to_string_lossy()
            .contains("5.1.0+"),
        "{deb:?}"
    );
    let rows = deb_contents(&deb);
    assert!(
        rows.iter()
            .any(|r| r.2 == "./srv/moodle-test/html/public/mod/demo/version.php"),
        "{rows:#?}"
    );
    // The release probe is served from the web root, which is public/ in 5.1.
    assert!(
        rows.iter()
            .any(|r| r.2 == "./srv/moodle-test/html/public/moodle-release-probe.php"),
        "{rows:#?}"
    );
}
