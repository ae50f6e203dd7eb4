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

/// The TeX filter's binaries as core Moodle 4.1 ships them in `filter/tex`: `mimetex.linux`, a
/// dynamically linked ELF (a copy of the system's `true`), and `mimetex.freebsd`, the same
/// marked as a FreeBSD binary (ELF OS/ABI 9). lintian draws `missing-dependency-on-libc` and the
/// binary tags on them, as on the real ones.
pub fn tex_filter_binaries(dir: &Path) {
    let tex = dir.join("filter/tex");
    fs::create_dir_all(&tex).unwrap();
    let mut elf = fs::read("/usr/bin/true").unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    fs::write(tex.join("mimetex.linux"), &elf).unwrap();
    elf[7] = 9;
    fs::write(tex.join("mimetex.freebsd"), &elf).unwrap();
    for f in ["mimetex.linux", "mimetex.freebsd"] {
        fs::set_permissions(tex.join(f), fs::Permissions::from_mode(0o755)).unwrap();
    }
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

/// The repository's root (for scripts/).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A lab (scripts/lab) plus a sample site (scripts/make-sample-site) whose config is the site's
/// [site], [upstream], [[plugins]], [deploy] and the lab's half. Stopped on drop.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub env: std::collections::BTreeMap<String, String>,
}

impl Cluster {
    /// `web_nodes` web nodes + 1 cron node, each web node served by nginx + php-fpm with
    /// OPcache and `validate_timestamps=0`, php-fpm as the node's php8.2-fpm service (which a
    /// package's postinst reloads), as on a production node.
    pub fn up(web_nodes: u32) -> Cluster {
        Cluster::up_web(web_nodes, "nginx-fpm")
    }

    /// [`Cluster::up`] with the web nodes served by `web` (`scripts/lab --web`: `nginx-fpm`, or
    /// `php`: `php -S` without OPcache).
    pub fn up_web(web_nodes: u32, web: &str) -> Cluster {
        Cluster::up_with(web_nodes, web, &[])
    }

    /// [`Cluster::up_web`] with `scripts/lab`'s environment `env` (`LAB_FASTCGI_ROOT`...).
    pub fn up_with(web_nodes: u32, web: &str, env: &[(&str, &str)]) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("mr-lab-")
            .tempdir_in("/tmp")
            .unwrap();
        let lab = tmp.path().join("lab");
        run(Command::new(project_root().join("scripts/lab"))
            .arg("up")
            .arg(&lab)
            .args(["--nodes", &web_nodes.to_string(), "--web", web])
            .envs(env.iter().copied()));
        let c = Cluster {
            tmp,
            env: Default::default(),
        };
        let mut c = c;
        for line in fs::read_to_string(lab.join("lab.env")).unwrap().lines() {
            if let Some((k, v)) = line.split_once('=') {
                c.env.insert(k.to_string(), v.to_string());
            }
        }
        run(
            Command::new(project_root().join("scripts/make-sample-site"))
                .arg(c.tmp.path().join("sample")),
        );
        let site_cfg = fs::read_to_string(c.site().join("moodle-release.toml")).unwrap();
        let lab_cfg = fs::read_to_string(lab.join("lab.toml")).unwrap();
        fs::write(c.config_path(), format!("{site_cfg}\n{lab_cfg}")).unwrap();
        c
    }

    pub fn lab(&self) -> PathBuf {
        self.tmp.path().join("lab")
    }

    pub fn site(&self) -> PathBuf {
        self.tmp.path().join("sample/site")
    }

    pub fn config_path(&self) -> PathBuf {
        self.site().join("moodle-release.toml")
    }

    /// The binary, in the site folder, with the lab's gpg home.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_moodle-release"));
        c.current_dir(self.site())
            .arg("--no-progress")
            .env("GNUPGHOME", &self.env["GNUPGHOME"]);
        c
    }

    /// merge, build with build number `n`, publish; returns the version.
    pub fn release(&self, n: u32, merge_args: &[&str]) -> String {
        run(self.cmd().arg("merge").args(merge_args));
        let out =
            run(self
                .cmd()
                .args(["build", "--build-number", &n.to_string(), "--out", "dist"]));
        let deb = last_line(&out);
        run(self.cmd().arg("publish").arg(self.site().join(&deb)));
        stdout(
            Command::new("dpkg-deb")
                .arg("--field")
                .arg(self.site().join(&deb))
                .arg("Version"),
        )
        .trim()
        .to_string()
    }

    /// Runs a command on a node over ssh (as the lab's root).
    pub fn ssh(&self, node: &str, script: &str) -> Output {
        let lab = self.lab();
        Command::new("ssh")
            .arg("-F")
            .arg(lab.join("ssh_config"))
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                lab.join("known_hosts").display()
            ))
            .arg(node)
            .arg(script)
            .output()
            .unwrap()
    }

    /// [`Cluster::ssh`] that must succeed: panics with the command's output otherwise.
    pub fn ssh_ok(&self, node: &str, script: &str) -> Output {
        let out = self.ssh(node, script);
        assert!(out.status.success(), "{node}: {script}: {out:?}");
        out
    }

    pub fn installed(&self, node: &str) -> String {
        String::from_utf8_lossy(
            &self
                .ssh(node, "dpkg-query -W -f='${Version}' moodle-sample")
                .stdout,
        )
        .trim()
        .to_string()
    }

    /// A web node's own HTTP base (`http://127.0.0.1:PORT`), from the lab's config.
    pub fn node_http(&self, node: &str) -> String {
        let cfg: toml::Value =
            toml::from_str(&fs::read_to_string(self.lab().join("lab.toml")).unwrap()).unwrap();
        cfg["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"].as_str() == Some(node))
            .and_then(|n| n["http"].as_str())
            .unwrap_or_else(|| panic!("{node} has no http"))
            .to_string()
    }

    /// Sets `key = value` (`value` as TOML writes it) in the config's `[section]`: the key's
    /// line there is replaced, or the line is added under the section's header.
    pub fn set_config(&self, section: &str, key: &str, value: &str) {
        let path = self.config_path();
        let mut lines: Vec<String> = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let header = format!("[{section}]");
        let start = 1 + lines
            .iter()
            .position(|l| l.trim() == header)
            .unwrap_or_else(|| panic!("no {header} in {}", path.display()));
        let end = lines[start..]
            .iter()
            .position(|l| l.starts_with('['))
            .map_or(lines.len(), |i| start + i);
        let line = format!("{key} = {value}");
        match lines[start..end]
            .iter()
            .position(|l| l.split('=').next().map(str::trim) == Some(key))
        {
            Some(i) => lines[start + i] = line,
            None => lines.insert(start, line),
        }
        fs::write(&path, lines.join("\n") + "\n").unwrap();
    }

    /// `[site] layout = "releases"`.
    pub fn use_releases(&self) {
        self.set_config("site", "layout", "\"releases\"");
    }

    /// `[roll] reload_command`: `command`, or the lab's php-fpm reload (`DIR/reload-php`).
    pub fn set_reload(&self, command: Option<&str>) {
        let lab = self.lab().join("reload-php").display().to_string();
        self.set_config(
            "roll",
            "reload_command",
            &format!("\"{}\"", command.unwrap_or(&lab)),
        );
    }

    /// Runs the binary with `args` (it must succeed) while 4 clients load the front page through
    /// both LBs: its output and what the load saw.
    pub fn under_load(&self, args: &[&str]) -> (Output, Served) {
        let load = Load::start(self.front_pages(), 4, 5000);
        let out = run(self.cmd().args(args));
        (out, load.stop_served())
    }

    /// The site's front page through each LB: what users load.
    pub fn front_pages(&self) -> Vec<String> {
        vec![
            format!("{}/", self.env["LAB_LB1"]),
            format!("{}/", self.env["LAB_LB2"]),
        ]
    }

    /// The servers of the backend on LB 2 (TCP API): (name, status, drain, maint).
    pub fn lb_servers(&self) -> Vec<(String, String)> {
        let addr = &self.env["LAB_LB2_API"];
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut s, b"show stat moodle 4 -1\n").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let cols: Vec<&str> = l.split(',').collect();
                (cols[1].to_string(), cols[17].to_string())
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(project_root().join("scripts/lab"))
            .arg("down")
            .arg(self.lab())
            .output();
    }
}

/// A bounded load: `threads` clients GET `urls` in turn until `stop`, at most `max` requests
/// each. A failure is an answer other than 200, or a front page from a mixed release
/// ([`served_release`]).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<Served>>,
}

/// What a [`Load`] saw: its requests, its failures (`[time_ms] url: answer`, time as the
/// journal's `time_ms`) and the release folders its front pages came from.
#[derive(Default)]
pub struct Served {
    pub requests: u64,
    pub failures: Vec<String>,
    pub releases: std::collections::BTreeSet<String>,
}

impl Served {
    /// Every request answered 200, every front page whole, and from each of `releases` (folders)
    /// and no other.
    pub fn assert_whole(&self, releases: &std::collections::BTreeSet<String>) {
        assert!(self.failures.is_empty(), "{}", self.failed());
        assert_eq!(&self.releases, releases, "the releases the load saw");
    }

    /// How many failed, and the first few: what an assertion shows.
    pub fn failed(&self) -> String {
        format!(
            "{} of {} failed, first: {:#?}",
            self.failures.len(),
            self.requests,
            &self.failures[..self.failures.len().min(3)]
        )
    }
}

impl Load {
    pub fn start(urls: Vec<String>, threads: usize, max: u64) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..threads)
            .map(|t| {
                let stop = stop.clone();
                let urls = urls.clone();
                std::thread::spawn(move || {
                    let mut seen = Served::default();
                    let started = std::time::Instant::now();
                    while seen.requests < max
                        && !stop.load(std::sync::atomic::Ordering::SeqCst)
                        && started.elapsed() < std::time::Duration::from_secs(300)
                    {
                        let url = &urls[(seen.requests as usize + t) % urls.len()];
                        let at = || {
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap()
                                .as_millis()
                        };
                        match http_answer(url, Some("127.0.0.1")) {
                            Ok((200, body)) if body.starts_with("Moodle ") => {
                                match served_release(&body) {
                                    Ok(release) => {
                                        seen.releases.insert(release);
                                    }
                                    Err(e) => seen.failures.push(format!("[{}] {url}: {e}", at())),
                                }
                            }
                            Ok((200, _)) => {}
                            Ok((code, _)) => {
                                seen.failures.push(format!("[{}] {url}: {code}", at()))
                            }
                            Err(e) => seen.failures.push(format!("[{}] {url}: {e}", at())),
                        }
                        seen.requests += 1;
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    seen
                })
            })
            .collect();
        Load { stop, handles }
    }

    /// Stops the clients: (requests, failures).
    pub fn stop(self) -> (u64, Vec<String>) {
        let seen = self.stop_served();
        (seen.requests, seen.failures)
    }

    /// Stops the clients: all they saw.
    pub fn stop_served(self) -> Served {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut all = Served::default();
        for h in self.handles {
            let seen = h.join().unwrap();
            all.requests += seen.requests;
            all.failures.extend(seen.failures);
            all.releases.extend(seen.releases);
        }
        all
    }
}

/// Runs `cmd`, which must exit with `code` (its stderr and stdout in the message if not): its
/// output and stderr.
pub fn exits(cmd: &mut Command, code: i32) -> (Output, String) {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?}: {err}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    (out, err)
}

/// `secs` from now (negative: ago) as an RFC 3339 time, for freeze windows around the test.
pub fn rfc3339_from_now(secs: i64) -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + secs)
        .unwrap()
        .to_string()
}

/// GET `http://host:port/path` → status code.
pub fn http_get(url: &str) -> Result<u16, String> {
    http_answer(url, Some("127.0.0.1")).map(|(code, _)| code)
}

/// GET `url` with HTTP/1.0, with `host` as its Host header (none: as HAProxy's checks): the
/// status and the body.
fn http_answer(url: &str, host: Option<&str>) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = std::net::TcpStream::connect(hostport).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.0\r\n{host}\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad answer {:?}", text.lines().next()))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((code, body.to_string()))
}

/// The release folder that a 200 from the sample site's front page (scripts/make-sample-site)
/// ran, or why the answer is wrong: the folder of its entry script, the one of the code it
/// loaded by `$CFG->dirroot` and (with an alternative component cache) the one its plugins come
/// from are not all one (a response from a mixed release), or it is not that page.
pub fn served_release(body: &str) -> Result<String, String> {
    let line = body.lines().next().unwrap_or("");
    let (_, folders) = line
        .split_once(" from ")
        .ok_or_else(|| format!("not the front page: {line:?}"))?;
    let (entry, rest) = folders
        .split_once(" with ")
        .ok_or_else(|| format!("not the front page: {line:?}"))?;
    let (code, components) = rest
        .split_once(" and components from ")
        .unwrap_or((rest, entry));
    if entry != code || entry != components {
        return Err(format!("a mixed release: {line:?}"));
    }
    Ok(entry.to_string())
}

impl Cluster {
    /// The newest journal of the lab's rolls.
    pub fn newest_journal(&self) -> PathBuf {
        fs::read_dir(self.lab().join("state"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .max()
            .unwrap()
    }
}

/// GET `url` (HTTP/1.0, no Host header, as HAProxy's checks): the status and the body.
pub fn http_body(url: &str) -> Result<(u16, String), String> {
    http_answer(url, None)
}

/// A real sshd on 127.0.0.1 with its own host key, accepting one client key for root; stopped
/// on drop. `config` and `known_hosts` are what `[ssh]` names.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    child: std::process::Child,
    pub port: u16,
}

impl Sshd {
    pub fn start() -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("mr-sshd-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        for (name, comment) in [("host_key", "host"), ("client_key", "client")] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(d.join(name)));
        }
        let port = free_port();
        fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {d}/sshd.pid\nPermitRootLogin prohibit-password\nAuthorizedKeysFile {d}/client_key.pub\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n",
                hk = d.join("host_key").display(),
                d = d.display()
            ),
        )
        .unwrap();
        let host = fs::read_to_string(d.join("host_key.pub")).unwrap();
        let mut parts = host.split_whitespace();
        let (kt, key) = (parts.next().unwrap(), parts.next().unwrap());
        fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {kt} {key}\n"),
        )
        .unwrap();
        fs::write(
            d.join("ssh_config"),
            format!(
                "Host 127.0.0.1\n    User root\n    IdentityFile {}\n    IdentitiesOnly yes\n",
                d.join("client_key").display()
            ),
        )
        .unwrap();
        fs::create_dir_all("/run/sshd").ok();
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Sshd { dir, child, port };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("sshd did not start on {port}");
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `len` incompressible bytes (xorshift), the same for the same seed.
pub fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Stops a test that needs root (mount namespaces, tmpfs, the lab) with a message that says so.
pub fn require_root(why: &str) {
    assert!(
        stdout(Command::new("id").arg("-u")).trim() == "0",
        "this test needs root ({why}): run it as root"
    );
}

/// The last line of a command's stdout (where `build` and `cargo deb` print the package).
pub fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("the command printed nothing")
        .trim()
        .to_string()
}
