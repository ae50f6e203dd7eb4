//! `moodle-release publish` and `repo list`, checked by the real apt: the repository is served
//! over HTTP on 127.0.0.1 and read by apt-get/apt-cache with signature checking on.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A site with a signed repository in `apt/`, keeping `keep` versions.
struct Lab {
    site: Site,
    gpg: Gpg,
}

impl Lab {
    fn new(keep: u32) -> Lab {
        let site = Site::new();
        let gpg = Gpg::new();
        site.config(&format!(
            "\n[apt]\nrepo = \"apt\"\nsuite = \"moodle\"\ncomponent = \"main\"\nkeep = {keep}\nsign_key = \"{}\"\narchitectures = [\"amd64\", \"arm64\"]\n",
            gpg.fingerprint
        ));
        Lab { site, gpg }
    }

    fn repo(&self) -> PathBuf {
        self.site.dir().join("apt")
    }

    fn cmd(&self) -> Command {
        let mut c = self.site.cmd();
        c.env("GNUPGHOME", self.gpg.home.path());
        c
    }

    /// Builds the site with build number `n` (a new version each time).
    fn build(&self, n: u32) -> PathBuf {
        self.build_with(n, &format!("{n}\n"))
    }

    fn build_with(&self, n: u32, content: &str) -> PathBuf {
        write(&self.site.repo().join("local/build.txt"), content);
        self.site.commit(&format!("build {n}"));
        self.site.build(&[
            "--out",
            &format!("dist{n}-{}", content.len()),
            "--build-number",
            &n.to_string(),
        ])
    }

    /// `repo list --json`: the versions, newest first.
    fn listed(&self) -> Vec<String> {
        let list: serde_json::Value =
            serde_json::from_slice(&run(self.cmd().args(["--json", "repo", "list"])).stdout)
                .unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_str().unwrap().to_string())
            .collect()
    }

    fn publish(&self, debs: &[&Path], extra: &[&str]) -> serde_json::Value {
        let out = run(self
            .cmd()
            .args(["--json", "publish"])
            .args(debs)
            .args(extra));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn publish_fails(&self, debs: &[&Path]) -> (i32, String) {
        let out = self.cmd().arg("publish").args(debs).output().unwrap();
        assert!(
            !out.status.success(),
            "publish should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        (out.status.code().unwrap_or(-1), err)
    }

    /// Every file of the repository with its bytes, to check that a refused publish changed nothing.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![self.repo()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.file_name().is_some_and(|n| n == "lock") {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((p.clone(), fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    fn apt_root(&self, http: &Http) -> AptRoot {
        AptRoot::new(&format!(
            "deb [signed-by={}] {} moodle main",
            self.repo().join("moodle.asc").display(),
            http.url()
        ))
    }
}

fn version(n: u32) -> String {
    format!("4.1.10+{n}-1")
}

#[test]
fn apt_sees_every_kept_version_and_installs_an_old_one() {
    let lab = Lab::new(3);
    let debs: Vec<PathBuf> = (1..=4).map(|n| lab.build(n)).collect();
    for d in &debs {
        lab.publish(&[d], &[]);
    }
    // keep = 3: the oldest left.
    let versions = lab.listed();
    assert_eq!(versions, [version(4), version(3), version(2)]);

    let release = fs::read_to_string(lab.repo().join("dists/moodle/Release")).unwrap();
    for field in [
        "Origin: ",
        "Label: ",
        "Suite: moodle",
        "Codename: moodle",
        "Date: ",
        "Architectures: amd64 arm64",
        "Components: main",
        "Acquire-By-Hash: yes",
        "MD5Sum:",
        "SHA256:",
        "main/binary-arm64/Packages.xz",
    ] {
        assert!(release.contains(field), "Release lacks {field}:\n{release}");
    }
    assert!(lab.repo().join("dists/moodle/InRelease").is_file());
    assert!(lab.repo().join("dists/moodle/Release.gpg").is_file());

    let http = Http::serve(&lab.repo());
    let apt = lab.apt_root(&http);
    run(apt.apt_get().arg("update"));
    let policy = stdout(apt.apt_cache().args(["policy", "moodle-test"]));
    for n in 2..=4 {
        assert!(
            policy.contains(&version(n)),
            "{} missing:\n{policy}",
            version(n)
        );
    }
    assert!(!policy.contains(&version(1)), "{policy}");

    run(apt.apt_get().args(["install", "-y", "moodle-test"]));
    assert_eq!(
        apt.installed("moodle-test").as_deref(),
        Some(version(4).as_str())
    );
    run(apt.apt_get().args([
        "install",
        "-y",
        "--allow-downgrades",
        &format!("moodle-test={}", version(2)),
    ]));
    assert_eq!(
        apt.installed("moodle-test").as_deref(),
        Some(version(2).as_str())
    );
    assert!(apt
        .dir
        .path()
        .join("srv/moodle-test/html/local/build.txt")
        .is_file());
    assert_eq!(
        fs::read_to_string(apt.dir.path().join("srv/moodle-test/html/local/build.txt")).unwrap(),
        "2\n"
    );
}

#[test]
fn a_bad_signature_is_refused_by_apt() {
    let lab = Lab::new(2);
    let deb = lab.build(1);
    lab.publish(&[&deb], &[]);
    let http = Http::serve(&lab.repo());
    // Another key than the one that signed: apt must refuse the repository.
    let other = Gpg::new();
    let wrong = lab.site.dir().join("other.asc");
    let key = run(Command::new("gpg")
        .env("GNUPGHOME", other.home.path())
        .args(["--batch", "--armor", "--export", &other.fingerprint]))
    .stdout;
    fs::write(&wrong, key).unwrap();
    let apt = AptRoot::new(&format!(
        "deb [signed-by={}] {} moodle main",
        wrong.display(),
        http.url()
    ));
    let out = apt.apt_get().arg("update").output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("NO_PUBKEY") || text.contains("not signed") || text.contains("signature"),
        "{text}"
    );
    let policy = stdout(apt.apt_cache().args(["policy", "moodle-test"]));
    assert!(
        !policy.contains("4.1.10"),
        "apt used an unverified repository:\n{policy}"
    );
}

#[test]
fn versions_are_immutable() {
    let lab = Lab::new(5);
    let deb = lab.build(7);
    let first = lab.publish(&[&deb], &[]);
    assert_eq!(first["added"][0], version(7));
    // The same bytes again: nothing to do.
    let again = lab.publish(&[&deb], &[]);
    assert_eq!(again["added"].as_array().unwrap().len(), 0);
    assert_eq!(again["unchanged"][0], version(7));
    // The same version with other bytes: refused, the repository untouched.
    let before = lab.snapshot();
    let other = lab.build_with(7, "other content\n");
    assert!(
        fs::read(&other).unwrap() != fs::read(&deb).unwrap(),
        "the two builds are the same"
    );
    let (code, err) = lab.publish_fails(&[&other]);
    assert_eq!(code, 1);
    assert!(
        err.contains("immutable") && err.contains(&version(7)),
        "{err}"
    );
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn bad_input_leaves_the_repository_as_it_was() {
    let lab = Lab::new(5);
    let deb = lab.build(1);
    lab.publish(&[&deb], &[]);
    let before = lab.snapshot();
    let dir = lab.site.dir();

    fs::write(dir.join("notes.deb"), "just text").unwrap();
    let (_, err) = lab.publish_fails(&[&dir.join("notes.deb")]);
    assert!(
        err.contains("notes.deb") && err.contains("not a Debian package"),
        "{err}"
    );

    // A package of another name.
    let other = dir.join("other");
    fs::create_dir_all(other.join("DEBIAN")).unwrap();
    fs::write(
        other.join("DEBIAN/control"),
        "Package: not-moodle\nVersion: 1\nArchitecture: all\nMaintainer: x <x@y>\nDescription: x\n",
    )
    .unwrap();
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&other)
        .arg(dir.join("other.deb")));
    let (_, err) = lab.publish_fails(&[&dir.join("other.deb")]);
    assert!(err.contains("not-moodle"), "{err}");

    // A malformed control file (no Version), made by hand since dpkg-deb would refuse it.
    let bad = dir.join("bad");
    fs::create_dir_all(&bad).unwrap();
    fs::write(
        bad.join("control"),
        "Package: moodle-test\nArchitecture: all\n",
    )
    .unwrap();
    fs::write(bad.join("debian-binary"), "2.0\n").unwrap();
    run(Command::new("tar")
        .current_dir(&bad)
        .args(["-czf", "control.tar.gz", "./control"]));
    run(Command::new("tar")
        .current_dir(&bad)
        .args(["-czf", "data.tar.gz", "-T", "/dev/null"]));
    run(Command::new("ar").current_dir(&bad).args([
        "rc",
        "bad.deb",
        "debian-binary",
        "control.tar.gz",
        "data.tar.gz",
    ]));
    let (_, err) = lab.publish_fails(&[&bad.join("bad.deb")]);
    assert!(
        err.contains("malformed control") && err.contains("Version"),
        "{err}"
    );

    // A good package with a bad one: nothing of either goes in.
    let good = lab.build(2);
    let (_, _) = lab.publish_fails(&[&good, &dir.join("notes.deb")]);
    assert_eq!(lab.snapshot(), before);

    // A key that cannot sign.
    let text = fs::read_to_string(lab.site.config_path()).unwrap().replace(
        &lab.gpg.fingerprint,
        "0000000000000000000000000000000000000000",
    );
    fs::write(lab.site.config_path(), text).unwrap();
    let (_, err) = lab.publish_fails(&[&good]);
    assert!(err.contains("signing with gpg key 0000"), "{err}");
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn a_folder_that_holds_something_else_is_refused() {
    let lab = Lab::new(5);
    fs::create_dir_all(lab.repo()).unwrap();
    fs::write(lab.repo().join("thesis.tex"), "important").unwrap();
    let deb = lab.build(1);
    let (code, err) = lab.publish_fails(&[&deb]);
    assert_eq!(code, 1);
    assert!(
        err.contains("something other than an apt repository"),
        "{err}"
    );
    assert_eq!(fs::read_dir(lab.repo()).unwrap().count(), 1);
}

#[test]
fn keep_version_pins_and_old_files_go_after_the_grace_period() {
    let lab = Lab::new(2);
    let debs: Vec<PathBuf> = (1..=3).map(|n| lab.build(n)).collect();
    lab.publish(&[&debs[0]], &[]);
    lab.publish(&[&debs[1]], &[]);
    let v = lab.publish(&[&debs[2]], &["--keep-version", &version(1)]);
    let versions: Vec<&str> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(versions, [version(3), version(2), version(1)]);
    // Without the pin, 1 leaves the index, but its file stays for clients that read the old index.
    let deb4 = lab.build(4);
    let v = lab.publish(&[&deb4], &[]);
    assert_eq!(v["removed"].as_array().unwrap().len(), 2, "{v}");
    let pool = lab.repo().join("pool/main/m/moodle-test");
    assert!(pool
        .join(format!("moodle-test_{}_all.deb", version(1)))
        .is_file());
    let by_hash = lab
        .repo()
        .join("dists/moodle/main/binary-amd64/by-hash/SHA256");
    let hashes_before = fs::read_dir(&by_hash).unwrap().count();
    // Two hours later, the next publish collects them.
    let later = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 7200)
        .to_string();
    let deb5 = lab.build(5);
    run(lab
        .cmd()
        .env("MOODLE_RELEASE_NOW", &later)
        .arg("publish")
        .arg(&deb5));
    assert!(!pool
        .join(format!("moodle-test_{}_all.deb", version(1)))
        .exists());
    assert!(!pool
        .join(format!("moodle-test_{}_all.deb", version(2)))
        .exists());
    assert!(pool
        .join(format!("moodle-test_{}_all.deb", version(4)))
        .exists());
    let hashes_after = fs::read_dir(&by_hash).unwrap().count();
    assert!(
        hashes_after < hashes_before,
        "{hashes_before} -> {hashes_after}"
    );
}

/// apt-get update in a bounded loop while 20 publishes happen: no update may fail.
#[test]
fn apt_get_update_never_fails_during_publishes() {
    let lab = Lab::new(3);
    let debs: Vec<PathBuf> = (1..=20).map(|n| lab.build(n)).collect();
    lab.publish(&[&debs[0]], &[]);
    let http = Http::serve(&lab.repo());
    let apt = lab.apt_root(&http);
    run(apt.apt_get().arg("update"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let updater = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut runs = 0;
        let mut failures = Vec::new();
        // Bounded: at most 400 updates or 120 s.
        while runs < 400 && started.elapsed() < std::time::Duration::from_secs(120) {
            let out = apt.apt_get().arg("update").output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            if !out.status.success()
                || text.contains("E:")
                || text.contains("W:")
                || text.contains("Hash Sum mismatch")
            {
                failures.push(text);
            }
            runs += 1;
            if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
        }
        (runs, failures)
    });
    for d in &debs[1..] {
        lab.publish(&[d], &[]);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (runs, failures) = updater.join().unwrap();
    assert!(runs >= 2, "only {runs} updates ran");
    assert!(
        failures.is_empty(),
        "{} of {runs} updates failed; first:\n{}",
        failures.len(),
        failures[0]
    );
}

/// `[apt] repo = "ssh://..."`: the same repository, written over ssh (host key checked) in the
/// reader-safe order, read by apt over HTTP.
#[test]
fn publishes_over_ssh() {
    let lab = Lab::new(2);
    let sshd = Sshd::start();
    let remote_dir = lab.site.dir().join("remote-apt");
    let url = format!("ssh://root@127.0.0.1:{}{}", sshd.port, remote_dir.display());
    let text = fs::read_to_string(lab.site.config_path())
        .unwrap()
        .replace("repo = \"apt\"", &format!("repo = \"{url}\""))
        + &format!(
            "\n[ssh]\nconfig = \"{}\"\nknown_hosts = \"{}\"\n",
            sshd.config().display(),
            sshd.known_hosts().display()
        );
    fs::write(lab.site.config_path(), text).unwrap();
    let debs: Vec<PathBuf> = (1..=3).map(|n| lab.build(n)).collect();
    for d in &debs {
        let v = lab.publish(&[d], &[]);
        assert_eq!(v["added"].as_array().unwrap().len(), 1, "{v}");
    }
    assert!(remote_dir.join("dists/moodle/InRelease").is_file());
    assert!(remote_dir.join("moodle.asc").is_file());
    assert!(
        !remote_dir.join(".moodle-release/remote.lock").exists(),
        "the lock was left behind"
    );
    let versions = lab.listed();
    assert_eq!(versions, [version(3), version(2)]);
    // Immutable over ssh too.
    let other = lab.build_with(3, "different\n");
    let (code, err) = lab.publish_fails(&[&other]);
    assert_eq!(code, 1);
    assert!(err.contains("immutable"), "{err}");

    let http = Http::serve(&remote_dir);
    let apt = AptRoot::new(&format!(
        "deb [signed-by={}] {} moodle main",
        remote_dir.join("moodle.asc").display(),
        http.url()
    ));
    run(apt.apt_get().arg("update"));
    let policy = stdout(apt.apt_cache().args(["policy", "moodle-test"]));
    assert!(
        policy.contains(&version(3)) && policy.contains(&version(2)),
        "{policy}"
    );
    run(apt
        .apt_get()
        .args(["install", "-y", &format!("moodle-test={}", version(2))]));
    assert_eq!(
        apt.installed("moodle-test").as_deref(),
        Some(version(2).as_str())
    );

    // An unknown host key: refused, nothing written.
    let empty = lab.site.dir().join("empty_known_hosts");
    fs::write(&empty, "").unwrap();
    let text = fs::read_to_string(lab.site.config_path()).unwrap().replace(
        &sshd.known_hosts().display().to_string(),
        &empty.display().to_string(),
    );
    fs::write(lab.site.config_path(), text).unwrap();
    let deb4 = lab.build(4);
    let (code, err) = lab.publish_fails(&[&deb4]);
    assert_eq!(code, 1);
    assert!(err.contains("host key"), "{err}");
}

/// A full disk during a publish: a clear error and the repository exactly as it was.
#[test]
fn a_full_disk_leaves_the_repository_as_it_was() {
    require_root("it mounts a small tmpfs");
    let lab = Lab::new(5);
    fs::create_dir_all(lab.repo()).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(lab.repo()));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(lab.repo());
    let small = lab.build(1);
    lab.publish(&[&small], &[]);
    let before = lab.snapshot();
    // Incompressible content: the package is bigger than what is left.
    fs::write(lab.site.repo().join("lib/random.bin"), noise(400_000, 7)).unwrap();
    let big = lab.build(2);
    let (code, err) = lab.publish_fails(&[&big]);
    assert_eq!(code, 1);
    assert!(err.contains("No space left"), "{err}");
    assert_eq!(lab.snapshot(), before, "the repository changed");
    let stray: Vec<_> = fs::read_dir(lab.repo().join("pool/main/m/moodle-test"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(stray.len(), 1, "{stray:?}");
}

/// `[site] layout = "releases"`: each version is a package of its own
/// (`moodle-test-release-<version>`) whose tree is in `releases_dir/<version>/`, with its own
/// config.php stub (lib/setup.php by the release's own path) and release probe, and a postinst
/// that leaves PHP alone (the release is not live yet). Two releases publish to one repository,
/// `repo list` shows both, a package of the other layout is refused, and the real dpkg installs
/// both side by side.
#[test]
fn releases_are_packages_of_their_own_installed_side_by_side() {
    let lab = Lab::new(5);
    let text = fs::read_to_string(lab.site.config_path()).unwrap().replace(
        "install_dir = \"/srv/moodle-test/html\"\n",
        "install_dir = \"/srv/moodle-test/html\"\nlayout = \"releases\"\n",
    );
    fs::write(lab.site.config_path(), text).unwrap();
    let one = lab.build(1);
    let two = lab.build(2);
    assert_eq!(
        one.file_name().unwrap(),
        "moodle-test-release-4.1.10+1-1_4.1.10+1-1_all.deb"
    );
    assert_eq!(deb_field(&two, "Package"), "moodle-test-release-4.1.10+2-1");
    assert_eq!(deb_field(&two, "Version"), "4.1.10+2-1");
    let rows = deb_contents(&two);
    let root = "./srv/moodle-test/releases/4.1.10+2-1/";
    for f in ["index.php", "moodle-release-probe.php", "config.php"] {
        assert!(
            rows.iter().any(|r| r.2 == format!("{root}{f}")),
            "{f}: {rows:#?}"
        );
    }
    assert!(
        !rows
            .iter()
            .any(|r| r.2.starts_with("./srv/moodle-test/html")),
        "nothing in install_dir, which becomes the symlink: {rows:#?}"
    );
    let stub = stdout(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile {} | tar -xOf - {root}config.php",
        two.display()
    )));
    assert!(
        stub.contains("/srv/moodle-test/releases/4.1.10+2-1/lib/setup.php")
            && stub.contains("require('/etc/moodle-test/config.php')"),
        "the site's config.php, whatever the release's package is called: {stub}"
    );
    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&two)
        .arg(control.path()));
    let postinst = fs::read_to_string(control.path().join("postinst")).unwrap();
    assert!(
        postinst.contains(": # a release: roll reloads PHP"),
        "{postinst}"
    );

    lab.publish(&[&one, &two], &[]);
    assert_eq!(lab.listed(), ["4.1.10+2-1", "4.1.10+1-1"]);
    // A package of the in-place layout is not one of this site's releases.
    fs::write(
        lab.site.config_path(),
        fs::read_to_string(lab.site.config_path())
            .unwrap()
            .replace("layout = \"releases\"\n", ""),
    )
    .unwrap();
    let in_place = lab.build(3);
    fs::write(
        lab.site.config_path(),
        fs::read_to_string(lab.site.config_path()).unwrap().replace(
            "install_dir = \"/srv/moodle-test/html\"\n",
            "install_dir = \"/srv/moodle-test/html\"\nlayout = \"releases\"\n",
        ),
    )
    .unwrap();
    let (_, err) = lab.publish_fails(&[&in_place]);
    assert!(err.contains("moodle-test-release-4.1.10+3-1"), "{err}");

    // Both installed at once: dpkg knows each release.
    let node = tempfile::tempdir().unwrap();
    dpkg_root(node.path());
    run(dpkg(node.path()).arg("-i").arg(&one).arg(&two));
    let status = fs::read_to_string(node.path().join("var/lib/dpkg/status")).unwrap();
    for v in ["4.1.10+1-1", "4.1.10+2-1"] {
        assert!(
            status.contains(&format!(
                "Package: moodle-test-release-{v}\nStatus: install ok installed"
            )),
            "{status}"
        );
        let probe = node.path().join(format!(
            "srv/moodle-test/releases/{v}/moodle-release-probe.php"
        ));
        assert!(fs::read_to_string(probe).unwrap().contains(v));
    }
}
