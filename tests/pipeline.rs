//! The GitLab CI template (pipelines/moodle-site.gitlab-ci.yml), run for real by gitlab-ci-local
//! with the shell executor on a site repository made in the test; the deploy job rolls the
//! local lab. And the tool's own .deb (cargo deb), installed in a node.

mod common;

use common::*;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

fn gitlab_ci_local() -> PathBuf {
    for p in [
        std::env::var("GITLAB_CI_LOCAL").unwrap_or_default(),
        "/opt/gitlab-ci-local/node_modules/.bin/gitlab-ci-local".into(),
    ] {
        if !p.is_empty() && std::path::Path::new(&p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("gitlab-ci-local is not installed: run scripts/install-deps (npm install --prefix /opt/gitlab-ci-local gitlab-ci-local@4.60.0)");
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario on one lab, in the order a release engineer lives it: split, the order would be lost"
)]
#[test]
fn the_site_pipeline_merges_builds_tests_publishes_and_deploys() {
    require_root("the pipeline test deploys to the lab, which needs root");
    let gcl = gitlab_ci_local();
    let c = Cluster::up(2);
    let site = c.site();
    fs::copy(
        project_root().join("pipelines/moodle-site.gitlab-ci.yml"),
        site.join("moodle-site.gitlab-ci.yml"),
    )
    .unwrap();
    fs::write(
        site.join(".gitlab-ci.yml"),
        "include:\n  - local: moodle-site.gitlab-ci.yml\n",
    )
    .unwrap();
    fs::write(
        site.join(".gitignore"),
        ".gitlab-ci-local/\n.gnupg/\n.ci-ssh/\nci-out/\ndist/\nbuild.env\n",
    )
    .unwrap();
    // The site's first merge writes the lock the pipeline builds from (--locked).
    run(c.cmd().arg("merge"));
    run(git(&site).args(["add", "-A"]));
    run(git(&site).args(["commit", "-q", "-m", "CI"]));
    let secret = c.tmp.path().join("secret.asc");
    let key = run(Command::new("gpg")
        .env("GNUPGHOME", &c.env["GNUPGHOME"])
        .args(["--batch", "--armor", "--export-secret-keys"]))
    .stdout;
    fs::write(&secret, key).unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_moodle-release"));
    let path = format!(
        "PATH={}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        bin.parent().unwrap().display()
    );
    let gcl_cmd = || {
        let mut cmd = Command::new(&gcl);
        cmd.current_dir(&site)
            .arg("--force-shell-executor")
            .args(["--variable", &path])
            .args(["--variable", &format!("MR_GPG_KEY={}", secret.display())])
            .args([
                "--variable",
                &format!("MR_KNOWN_HOSTS={}", c.lab().join("known_hosts").display()),
            ])
            .env_remove("GNUPGHOME");
        cmd
    };
    let out = gcl_cmd()
        .args(["merge", "build", "test", "publish"])
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    for job in ["merge", "build", "test", "publish"] {
        assert!(
            log.contains(&format!("PASS  {job}")),
            "{job} did not pass:\n{log}"
        );
    }
    // The build job exported the version; the package reached the signed repository.
    let list: serde_json::Value =
        serde_json::from_slice(&run(c.cmd().args(["--json", "repo", "list"])).stdout).unwrap();
    let version = list[0]["version"].as_str().unwrap().to_string();
    assert!(
        log.contains(&format!("MOODLE_RELEASE_VERSION={version}")),
        "{log}"
    );
    assert!(c.lab().join("apt/dists/moodle/InRelease").is_file());
    // Nothing secret in the log.
    let secret_text = fs::read_to_string(&secret).unwrap();
    let secret_line = secret_text.lines().nth(3).unwrap();
    assert!(
        !log.contains(secret_line),
        "the job log shows the secret key"
    );

    // The manual deploy job rolls the lab to that version. A deploy job cancelled on another
    // runner 10 minutes ago left its lock (not refreshed since): the plan says it is most likely
    // dead, and the job is run with MR_ROLL_ARGS=--break-lock, as an engineer sets it for a
    // manual job.
    c.ssh_ok(
        "web1",
        "mkdir -p /var/lib/moodle-release/roll.lock && cd /var/lib/moodle-release/roll.lock && echo 'gitlab-runner@runner-7 pid 4242 since Mon, 23 Nov 2026 06:58:01 +0000 (target 0)' >owner && touch -d '10 minutes ago' alive",
    );
    // Inside a freeze window the deploy job is refused when it runs (exit 3, naming the
    // window), not when the pipeline was made; nothing changes.
    let config = fs::read_to_string(c.config_path()).unwrap();
    // The manual deploy job, with MR_ROLL_ARGS=--break-lock: whether it passed, and its log.
    let deploy = || {
        let out = gcl_cmd()
            .args(["--variable", "MR_ROLL_ARGS=--break-lock"])
            .args(["--manual", "deploy", "deploy"])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), log)
    };
    fs::write(
        c.config_path(),
        format!(
            "{config}\n[[roll.freeze]]\nname = \"enrolment week\"\nfrom = \"{}\"\nto = \"{}\"\n",
            rfc3339_from_now(-3600),
            rfc3339_from_now(3600)
        ),
    )
    .unwrap();
    run(git(&site).args(["commit", "-qam", "freeze"]));
    let (passed, log) = deploy();
    assert!(!passed, "{log}");
    assert!(
        log.contains("inside the freeze window \"enrolment week\"") && log.contains("FAIL  deploy"),
        "{log}"
    );
    let refused: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(site.join("ci-out/roll.json")).unwrap()).unwrap();
    assert_eq!(refused["exit_code"], 3, "{refused}");
    assert_ne!(c.installed("web1"), version);
    fs::write(c.config_path(), config).unwrap();
    run(git(&site).args(["commit", "-qam", "thaw"]));

    let (passed, log) = deploy();
    assert!(passed && log.contains("PASS  deploy"), "{log}");
    assert!(
        log.contains("it has shown no sign of life for 10m")
            && log.contains("--break-lock would remove it")
            && log.contains(
                "--break-lock: removing the cluster lock on web1, held by gitlab-runner@runner-7 pid 4242"
            ),
        "{log}"
    );
    for n in ["web1", "web2", "cron1"] {
        assert_eq!(c.installed(n), version, "{n}");
    }
    let roll: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(site.join("ci-out/roll.json")).unwrap()).unwrap();
    assert_eq!(roll["plan"]["target"], version.as_str());
}

/// `cargo deb` packages the tool; installed in a node (its own dpkg database), it runs.
#[test]
fn the_tools_own_package_installs_and_runs() {
    require_root("the package test installs into a lab node, which needs root");
    let root = project_root();
    let assets = root.join("target/assets");
    fs::create_dir_all(&assets).unwrap();
    let bin = env!("CARGO_BIN_EXE_moodle-release");
    fs::write(
        assets.join("moodle-release.bash"),
        run(Command::new(bin).args(["completions", "bash"])).stdout,
    )
    .unwrap();
    fs::write(
        assets.join("moodle-release.help"),
        run(Command::new(bin).arg("--help")).stdout,
    )
    .unwrap();
    // The binary under test, packaged as CI packages the release one (no second build here).
    let out_dir = tempfile::tempdir_in(root.join("target")).unwrap();
    let out = Command::new("cargo")
        .current_dir(&root)
        .args([
            "deb",
            "--profile",
            "dev",
            "--no-build",
            "--no-strip",
            "--locked",
            "-o",
        ])
        .arg(out_dir.path())
        .output()
        .expect("cargo-deb: run scripts/install-deps");
    assert!(
        out.status.success(),
        "cargo deb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = last_line(&out);
    assert!(deb.ends_with("_amd64.deb"), "{deb}");
    let c = Cluster::up(1);
    // Into the lab's folder, which every node sees (the checkout may be somewhere a node does not,
    // such as /tmp, which nodes have of their own).
    let in_lab = c.lab().join("moodle-release.deb");
    fs::copy(&deb, &in_lab).unwrap();
    let deb = in_lab.display();
    let o = c.ssh("web1", &format!("dpkg -i {deb} >/dev/null && moodle-release --version && test -f /usr/share/bash-completion/completions/moodle-release"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("moodle-release "),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // Installed in the node only: the machine itself does not have it.
    assert!(Command::new("dpkg-query")
        .args(["-W", "moodle-release"])
        .output()
        .unwrap()
        .stdout
        .is_empty());
}
