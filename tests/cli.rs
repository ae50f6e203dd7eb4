//! The command line: config errors, `config check`, and verbs that are not there yet.

mod common;

use common::*;
use std::fs;

fn stderr_of(site: &Site, args: &[&str]) -> (Option<i32>, String) {
    let out = site.cmd().args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_name_file_line_and_key() {
    let site = Site::new();
    site.config("\n[roll]\nbatch = 2\ndrain_timeout = \"2 minutes\"\n");
    let (code, err) = stderr_of(&site, &["config", "check"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("moodle-release.toml:13: [roll] drain_timeout"),
        "{err}"
    );
    assert!(err.contains("\"2 minutes\" is not a duration"), "{err}");
    assert!(err.contains("120s"), "{err}");
    assert!(!err.contains("panicked"));
}

/// A plugin path that is absolute or climbs out of dirroot would be grafted outside the site:
/// a config error with file, line and key, before anything is fetched.
#[test]
fn plugin_paths_outside_dirroot_are_config_errors() {
    let site = Site::new();
    for (path, why) in [
        ("../../etc", "leaves the Moodle tree"),
        ("mod/../../etc", "leaves the Moodle tree"),
        ("/etc/cron.d", "is absolute"),
        ("mod//x", "empty or `.` part"),
    ] {
        site.config(&format!(
            "\n[[plugins]]\ncomponent = \"mod_x\"\nurl = \"https://git.example.edu/x.git\"\nref = \"main\"\npath = \"{path}\"\n"
        ));
        let (code, err) = stderr_of(&site, &["config", "check"]);
        assert_eq!(code, Some(2), "{path}: {err}");
        assert!(
            err.contains("moodle-release.toml:15: [[plugins]] #1 path: "),
            "{path}: {err}"
        );
        assert!(err.contains(why) && err.contains(path), "{path}: {err}");
    }
    site.config("\n[[plugins]]\ncomponent = \"mod_x\"\nurl = \"https://git.example.edu/x.git\"\nref = \"main\"\npath = \"mod/x\"\n");
    assert_eq!(stderr_of(&site, &["config", "check"]).0, Some(0));
}

/// `--batch 0` would take no node at a time: refused by the command line (exit 2), as
/// `batch = 0` is by the config.
#[test]
fn batch_zero_is_refused() {
    let site = Site::new();
    for args in [
        &["roll", "--batch", "0"][..],
        &["rollback", "--batch", "0", "--plan"],
    ] {
        let (code, err) = stderr_of(&site, args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains("--batch") && err.contains("0"),
            "{args:?}: {err}"
        );
    }
}

/// The help of the commands an engineer reads before a release, as printed.
#[test]
fn help_as_printed() {
    let site = Site::new();
    for cmd in ["roll", "rollback"] {
        let out = run(site.cmd().args([cmd, "--help"]));
        insta::assert_snapshot!(format!("{cmd}_help"), String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn unknown_keys_suggest_the_nearest() {
    let site = Site::new();
    site.config("\n[roll]\nbacth = 2\n");
    let (code, err) = stderr_of(&site, &["config", "check"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(":12: [roll] bacth"), "{err}");
    assert!(err.contains("batch"), "{err}");
}

#[test]
fn the_shipped_example_config_is_accepted() {
    // The contract: every key of the example, with its meaning. The example lives in
    // ../shared for the tests; the binary never reads it on its own.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/examples/moodle-release.toml");
    let Ok(text) = fs::read_to_string(&example) else {
        eprintln!("skipped: {} not present", example.display());
        return;
    };
    let site = Site::new();
    fs::write(site.config_path(), text).unwrap();
    let out = run(site.cmd().args(["--json", "config", "check"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["site"]["package"], "moodle-site");
    assert_eq!(v["plugins"][0]["path"], "mod/customcert");
    assert_eq!(v["plugins"][1]["path"], "admin/tool/heartbeat");
    assert_eq!(v["roll"]["drain_timeout"], "2m");
    assert_eq!(v["lb"][1]["socket"], "tcp:10.0.0.12:9999");
    assert_eq!(v["nodes"][1]["server"], "web2");
}

#[test]
fn a_missing_config_says_where_it_looked() {
    let site = Site::new();
    fs::remove_file(site.config_path()).unwrap();
    let (code, err) = stderr_of(&site, &["build"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("moodle-release.toml"), "{err}");
}

#[test]
fn roll_and_publish_without_their_sections_are_config_errors() {
    let site = Site::new();
    let (code, err) = stderr_of(&site, &["roll", "--plan"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("[[nodes]]"), "{err}");
    let (code, err) = stderr_of(&site, &["publish", "x.deb"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("[apt]"), "{err}");
    let (code, err) = stderr_of(&site, &["merge"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("[upstream]"), "{err}");
}

#[test]
fn completions_are_generated() {
    let site = Site::new();
    let out = run(site.cmd().args(["completions", "bash"]));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("moodle-release") && text.contains("rollback"),
        "{}",
        &text[..200.min(text.len())]
    );
}

#[test]
fn init_writes_a_config_that_checks_and_a_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_moodle-release");
    run(std::process::Command::new(bin)
        .arg("init")
        .arg(dir.path())
        .args(["--package", "moodle-example"]));
    let out = run(std::process::Command::new(bin)
        .arg("--config")
        .arg(dir.path().join("moodle-release.toml"))
        .args(["--json", "config", "check"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["site"]["package"], "moodle-example");
    assert_eq!(v["plugins"][0]["path"], "admin/tool/heartbeat");
    // A new site gets the releases layout; existing ones keep in-place (the default).
    assert_eq!(v["site"]["layout"], "releases");
    let ci = fs::read_to_string(dir.path().join(".gitlab-ci.yml")).unwrap();
    assert!(ci.contains("resource_group") && ci.contains("merge --locked"));
    // A second init does not overwrite.
    let again = std::process::Command::new(bin)
        .arg("init")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}

/// `[site] layout = "releases"`: `config check` shows it; a `releases_dir` inside
/// `install_dir` (or the other way round) is a config error.
#[test]
fn the_releases_layout_is_checked() {
    let site = Site::new();
    let with = |site_keys: &str| {
        let text = format!(
            "[site]\npackage = \"moodle-test\"\nmaintainer = \"M <m@example.edu>\"\ndescription = \"d\"\ninstall_dir = \"/srv/moodle-test/html\"\n{site_keys}\n[deploy]\nrepo = \"repo\"\nbranch = \"deploy\"\n[[lb]]\nname = \"lb1\"\nsocket = \"unix:/nonexistent.sock\"\nbackend = \"moodle\"\n[[nodes]]\nname = \"web1\"\nssh = \"web1\"\nhttp = \"http://127.0.0.1:1\"\n"
        );
        fs::write(site.config_path(), text).unwrap();
    };
    with("layout = \"releases\"\n");
    let out = run(site.cmd().args(["config", "check"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("layout = \"releases\""), "{text}");
    with("layout = \"releases\"\nconfig_php = \"\"\n");
    let (code, err) = stderr_of(&site, &["config", "check"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("[site] config_php") && err.contains("ships no config.php stub"),
        "{err}"
    );
    with("layout = \"releases\"\nreleases_dir = \"/srv/moodle-test/html/releases\"\n");
    let (code, err) = stderr_of(&site, &["config", "check"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("[site] releases_dir") && err.contains("must not hold one another"),
        "{err}"
    );
}
