//! Fixtures shared by the integration tests: real git repositories made with the real `git`,
//! Moodle-shaped trees small enough to build in a fraction of a second, and helpers to run the
//! binary and the Debian tools on what it makes.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs a command and panics with its output when it fails: a fixture that cannot be made is a
/// broken test, not a result.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// `git` with a fixed identity and dates, so that the fixtures' commits are the same at every run.
pub fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.edu")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.edu")
        .env("GIT_AUTHOR_DATE", "2024-04-22T10:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-04-22T10:00:00Z")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir);
    c
}

pub fn write(path: &Path, content: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

pub fn core_version_php(version: &str, release: &str, branch: &str) -> String {
    format!(
        "<?php\ndefined('MOODLE_INTERNAL') || die();\n\n$version  = {version};\n$release  = '{release}';\n$branch   = '{branch}';\n$maturity = MATURITY_STABLE;\n"
    )
}

pub fn plugin_version_php(component: &str, version: &str) -> String {
    format!(
        "<?php\ndefined('MOODLE_INTERNAL') || die();\n\n$plugin->component = '{component}';\n$plugin->version = {version};\n$plugin->requires = 2022112800;\n"
    )
}

/// Writes a small Moodle-shaped tree into `dir`: core version.php, two plugins, db/ folders, an
/// executable CLI script, a symlink inside the tree, a `.gitignore` and a root `config.php`
/// (which must never be packaged).
pub fn moodle_tree(dir: &Path, version: &str, release: &str) {
    write(
        &dir.join("version.php"),
        &core_version_php(version, release, "401"),
    );
    write(
        &dir.join("index.php"),
        "<?php\nrequire_once('config.php');\necho 'Moodle';\n",
    );
    write(&dir.join("config.php"), "<?php\n$CFG->dbpass = 'secret';\n");
    write(&dir.join(".gitignore"), "/config.php\n");
    write(&dir.join("lib/setup.php"), "<?php\n// setup\n");
    write(&dir.join("lib/db/install.xml"), "<XMLDB/>\n");
    write(
        &dir.join("lib/components.json"),
        "{\"plugintypes\": {\"mod\": \"mod\", \"block\": \"blocks\"}}\n",
    );
    write(
        &dir.join("mod/forum/version.php"),
        &plugin_version_php("mod_forum", "2022112800"),
    );
    write(&dir.join("mod/forum/db/install.xml"), "<XMLDB forum/>\n");
    write(
        &dir.join("mod/forum/lang/en/forum.php"),
        "<?php\n$string['pluginname'] = 'Forum';\n",
    );
    write(
        &dir.join("blocks/html/version.php"),
        &plugin_version_php("block_html", "2022112801"),
    );
    write(
        &dir.join("admin/cli/upgrade.php"),
        "#!/usr/bin/env php\n<?php\necho \"upgraded\\n\";\n",
    );
    fs::set_permissions(
        dir.join("admin/cli/upgrade.php"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let link = dir.join("theme/boost/pix/logo.png");
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    write(&dir.join("pix/moodlelogo.png"), "PNG");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink("../../../pix/moodlelogo.png", &link).unwrap();
}

/// A site: a temporary folder with a git repository (`repo/`) on branch `deploy` and a config
/// file (`moodle-release.toml`) pointing at it.
pub struct Site {
    pub tmp: tempfile::TempDir,
}

impl Site {
    /// A site whose deployment branch holds one commit of [`moodle_tree`] (Moodle 4.1.10).
    pub fn new() -> Site {
        let site = Site::empty();
        moodle_tree(&site.repo(), "2022112810.00", "4.1.10 (Build: 20240422)");
        site.commit("Moodle 4.1.10");
        site
    }

    /// A site with an empty repository (branch `deploy`, no commit) and the default config.
    pub fn empty() -> Site {
        let tmp = tempfile::Builder::new()
            .prefix("mr-test-")
            .tempdir()
            .unwrap();
        let site = Site { tmp };
        fs::create_dir_all(site.repo()).unwrap();
        run(git(&site.repo()).args(["init", "-q", "-b", "deploy"]));
        site.config("");
        site
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn repo(&self) -> PathBuf {
        self.tmp.path().join("repo")
    }

    pub fn config_path(&self) -> PathBuf {
        self.tmp.path().join("moodle-release.toml")
    }

    /// Writes the config: a `[site]` and `[deploy]` of the test, plus `extra` TOML at the end.
    pub fn config(&self, extra: &str) {
        let text = format!(
            "[site]\npackage = \"moodle-test\"\nmaintainer = \"Moodle Team <moodle-admins@example.edu>\"\ndescription = \"Moodle code for the tests\"\ninstall_dir = \"/srv/moodle-test/html\"\n\n[deploy]\nrepo = \"repo\"\nbranch = \"deploy\"\n{extra}"
        );
        fs::write(self.config_path(), text).unwrap();
    }

    /// Commits everything in the work tree, returns the commit id.
    pub fn commit(&self, msg: &str) -> String {
        run(git(&self.repo()).args(["add", "-A"]));
        run(git(&self.repo()).args(["commit", "-q", "-m", msg]));
        stdout(git(&self.repo()).args(["rev-parse", "HEAD"]))
            .trim()
            .to_string()
    }

    /// The binary, run in the site's folder with its config, without progress bars.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_moodle-release"));
        c.current_dir(self.dir())
            .arg("--config")
            .arg(self.config_path())
            .arg("--no-progress");
        c.env_remove("SOURCE_DATE_EPOCH");
        c
    }

    /// `moodle-release build ARGS`; returns the path of the package (the last line of stdout).
    pub fn build(&self, args: &[&str]) -> PathBuf {
        let out = run(self.cmd().arg("build").args(args));
        let text = String::from_utf8(out.stdout).unwrap();
        self.dir()
            .join(text.lines().last().expect("build printed nothing").trim())
    }
}

pub fn deb_field(deb: &Path, field: &str) -> String {
    stdout(Command::new("dpkg-deb").arg("--field").arg(deb).arg(field))
        .trim()
        .to_string()
}

/// `dpkg-deb --contents` as (mode string, owner, path, link target) rows.
pub fn deb_contents(deb: &Path) -> Vec<(String, String, String, String)> {
    stdout(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let (path, target) = match cols.iter().position(|c| *c == "->") {
                Some(i) => (cols[5..i].join(" "), cols[i + 1..].join(" ")),
                None => (cols[5..].join(" "), String::new()),
            };
            (cols[0].to_string(), cols[1].to_string(), path, target)
        })
        .collect()
}

/// An empty dpkg database under `root`, for `dpkg --root`.
pub fn dpkg_root(root: &Path) {
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
        fs::write(root.join(f), "").unwrap();
    }
}

/// `dpkg --root ROOT ARGS`: maintainer scripts run outside the chroot (the root holds no shell),
/// which the scripts allow: they only touch the install folder and reload a running php-fpm.
pub fn dpkg(root: &Path) -> Command {
    let mut c = Command::new("dpkg");
    c.arg("--root")
        .arg(root)
        .arg("--force-script-chrootless")
        .arg("--force-not-root");
    c.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    c
}

/// A gpg home with one signing key (no passphrase), for signed repositories.
pub struct Gpg {
    pub home: tempfile::TempDir,
    pub fingerprint: String,
}

impl Gpg {
    pub fn new() -> Gpg {
        // gpg-agent's socket path must be short: keep the home under /tmp.
        let home = tempfile::Builder::new()
            .prefix("mr-gpg-")
            .tempdir_in("/tmp")
            .unwrap();
        fs::set_permissions(home.path(), fs::Permissions::from_mode(0o700)).unwrap();
        run(Command::new("gpg").env("GNUPGHOME", home.path()).args([
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "Test Repo <repo@example.edu>",
            "ed25519",
            "sign",
            "never",
        ]));
        let list = stdout(Command::new("gpg").env("GNUPGHOME", home.path()).args([
            "--batch",
            "--with-colons",
            "--list-keys",
        ]));
        let fingerprint = list
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .unwrap()
            .split(':')
            .nth(9)
            .unwrap()
            .to_string();
        Gpg { home, fingerprint }
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A static HTTP server on 127.0.0.1 for `dir` (python3's http.server), stopped on drop.
pub struct Http {
    child: std::process::Child,
    pub port: u16,
}

impl Http {
    pub fn serve(dir: &Path) -> Http {
        let port = free_port();
        fs::create_dir_all(dir).unwrap();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Http { child, port };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("http.server did not start on {port}");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An apt and dpkg root of its own: `apt-get update/install` against one source, with
/// signatures checked through `signed-by=`, touching nothing of the machine's.
pub struct AptRoot {
    pub dir: tempfile::TempDir,
}

impl AptRoot {
    /// `source` is the whole `deb [signed-by=...] URL SUITE COMPONENT` line.
    pub fn new(source: &str) -> AptRoot {
        let dir = tempfile::Builder::new()
            .prefix("mr-apt-")
            .tempdir()
            .unwrap();
        let r = dir.path();
        for d in [
            "etc/apt/sources.list.d",
            "etc/apt/preferences.d",
            "etc/apt/apt.conf.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/log/apt",
        ] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        dpkg_root(r);
        fs::write(r.join("etc/apt/sources.list"), format!("{source}\n")).unwrap();
        AptRoot { dir }
    }

    fn opts(&self, c: &mut Command) {
        let r = self.dir.path().display().to_string();
        for o in [
            format!("Dir={r}"),
            format!("Dir::State::status={r}/var/lib/dpkg/status"),
            format!("Dir::Etc::sourceparts={r}/etc/apt/sources.list.d"),
            "Dir::Etc::trusted=/dev/null".into(),
            "Dir::Etc::trustedparts=/dev/null".into(),
            "APT::Sandbox::User=root".into(),
            "Debug::NoLocking=1".into(),
            format!("DPkg::Options::=--root={r}"),
            "DPkg::Options::=--force-script-chrootless".into(),
            "Acquire::Retries=0".into(),
        ] {
            c.arg("-o").arg(o);
        }
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }

    pub fn apt_get(&self) -> Command {
        let mut c = Command::new("apt-get");
        self.opts(&mut c);
        c
    }

    pub fn apt_cache(&self) -> Command {
        let mut c = Command::new("apt-cache");
        self.opts(&mut c);
        c
    }

    pub fn installed(&self, package: &str) -> Option<String> {
        let out = Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}/var/lib/dpkg",
                self.dir.path().display()
            ))
            .args(["-W", "-f=${Status} ${Version}", package])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.strip_prefix("install ok installed ").map(String::from)
    }
}
