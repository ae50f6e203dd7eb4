//! `moodle-release build` on real git repositories, checked with the real dpkg-deb, dpkg and
//! lintian.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

#[test]
fn package_from_git_is_read_by_dpkg_deb() {
    let site = Site::new();
    let deb = site.build(&[]);
    assert_eq!(deb.file_name().unwrap(), "moodle-test_4.1.10+1-1_all.deb");
    assert!(deb.starts_with(site.dir().join("dist")), "{deb:?}");

    assert_eq!(deb_field(&deb, "Package"), "moodle-test");
    assert_eq!(deb_field(&deb, "Version"), "4.1.10+1-1");
    assert_eq!(deb_field(&deb, "Architecture"), "all");
    assert_eq!(
        deb_field(&deb, "X-Moodle-Release"),
        "4.1.10 (Build: 20240422)"
    );
    assert_eq!(deb_field(&deb, "X-Moodle-Version"), "2022112810.00");
    assert_eq!(deb_field(&deb, "X-Moodle-Branch"), "401");
    let head = stdout(git(&site.repo()).args(["rev-parse", "deploy"]));
    assert_eq!(deb_field(&deb, "X-Moodle-Source-Commit"), head.trim());
    assert_eq!(deb_field(&deb, "X-Moodle-Db-Hash").len(), 64);

    let rows = deb_contents(&deb);
    let find = |p: &str| {
        rows.iter()
            .find(|r| r.2 == p)
            .unwrap_or_else(|| panic!("{p} not in {rows:#?}"))
    };
    let root = "./srv/moodle-test/html/";
    assert_eq!(find(&format!("{root}index.php")).0, "-rw-r--r--");
    assert_eq!(
        find(&format!("{root}admin/cli/upgrade.php")).0,
        "-rwxr-xr-x"
    );
    assert_eq!(find(&format!("{root}mod/forum/")).0, "drwxr-xr-x");
    let link = find(&format!("{root}theme/boost/pix/logo.png"));
    assert!(link.0.starts_with('l'), "{link:?}");
    assert_eq!(link.3, "../../../pix/moodlelogo.png");
    assert!(rows.iter().all(|r| r.1 == "root/root"), "owners: {rows:#?}");
    assert!(
        !rows.iter().any(|r| r.2.contains(".gitignore")),
        "git metadata packaged"
    );
    // The root config.php is the package's stub, never the repository's (which holds secrets).
    let stub = stdout(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile {} | tar -xOf - {root}config.php",
        deb.display()
    )));
    assert!(
        stub.contains("require('/etc/moodle-test/config.php')"),
        "{stub}"
    );
    assert!(!stub.contains("dbpass"));

    // The release probe, in the web root: run by the real PHP, it answers for this package.
    assert_eq!(
        deb_field(&deb, "X-Moodle-Release-Probe"),
        "/moodle-release-probe.php"
    );
    assert_eq!(
        find(&format!("{root}moodle-release-probe.php")).0,
        "-rw-r--r--"
    );
    let answer = stdout(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile {} | tar -xOf - {root}moodle-release-probe.php | php",
        deb.display()
    )));
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"package": "moodle-test", "version": "4.1.10+1-1", "commit": head.trim()})
    );

    // The metadata roll reads: core and every plugin's version.
    let meta = stdout(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile {} | tar -xOf - ./usr/share/moodle-test/moodle-release.json",
        deb.display()
    )));
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["moodle"]["core"]["version"], "2022112810.00");
    let plugins = &meta["moodle"]["plugins"];
    assert_eq!(plugins["mod_forum"]["version"], "2022112800");
    assert_eq!(plugins["mod_forum"]["path"], "mod/forum");
    assert_eq!(plugins["block_html"]["version"], "2022112801");

    // md5sums lists every regular file, and the sums are right.
    let dir = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("--raw-extract")
        .arg(&deb)
        .arg(dir.path()));
    let sums = fs::read_to_string(dir.path().join("DEBIAN/md5sums")).unwrap();
    let files = rows.iter().filter(|r| r.0.starts_with('-')).count();
    assert_eq!(sums.lines().count(), files);
    run(Command::new("md5sum")
        .arg("--check")
        .arg("--quiet")
        .arg(dir.path().join("DEBIAN/md5sums"))
        .current_dir(dir.path()));
    for script in ["postinst", "postrm"] {
        let mode = fs::metadata(dir.path().join("DEBIAN").join(script))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{script}");
        run(Command::new("sh")
            .arg("-n")
            .arg(dir.path().join("DEBIAN").join(script)));
    }
}

#[test]
fn json_output_describes_the_package() {
    let site = Site::new();
    let out = run(site.cmd().args(["--json", "build", "--out", "out"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let path = &site.dir().join(v["path"].as_str().unwrap());
    let bytes = fs::read(path).unwrap();
    assert_eq!(v["size"].as_u64().unwrap(), bytes.len() as u64);
    assert_eq!(v["package"], "moodle-test");
    assert_eq!(v["version"], "4.1.10+1-1");
    let sum = stdout(Command::new("sha256sum").arg(path));
    assert_eq!(
        v["sha256"].as_str().unwrap(),
        sum.split_whitespace().next().unwrap()
    );
    assert!(v["files"].as_u64().unwrap() >= 10);
}

#[test]
fn builds_are_byte_identical_whatever_the_threads_and_compression_is_readable() {
    let site = Site::new();
    let a = fs::read(site.build(&["--out", "a", "--jobs", "1"])).unwrap();
    let b = fs::read(site.build(&["--out", "b", "--jobs", "2"])).unwrap();
    let c = fs::read(site.build(&["--out", "c"])).unwrap();
    assert!(a == b && b == c, "builds differ");
    for comp in ["zstd", "xz"] {
        let deb1 = site.build(&[
            "--out",
            &format!("{comp}1"),
            "--compression",
            comp,
            "--jobs",
            "1",
        ]);
        let deb2 = site.build(&[
            "--out",
            &format!("{comp}2"),
            "--compression",
            comp,
            "--jobs",
            "2",
        ]);
        assert_eq!(
            fs::read(&deb1).unwrap(),
            fs::read(&deb2).unwrap(),
            "{comp} builds differ"
        );
        let members = stdout(Command::new("ar").arg("t").arg(&deb1));
        let ext = if comp == "zstd" { "zst" } else { "xz" };
        assert_eq!(
            members,
            format!("debian-binary\ncontrol.tar.{ext}\ndata.tar.{ext}\n")
        );
        assert!(deb_contents(&deb1).len() > 10);
    }
    let gz = site.build(&["--out", "gz"]);
    assert_eq!(
        stdout(Command::new("ar").arg("t").arg(&gz)),
        "debian-binary\ncontrol.tar.gz\ndata.tar.gz\n"
    );
    // ar headers: mtime is the commit time, owner 0/0, mode 100644.
    let bytes = fs::read(&gz).unwrap();
    let header = std::str::from_utf8(&bytes[8..68]).unwrap();
    assert!(
        header.starts_with("debian-binary   1713780000  0     0     100644  4         `\n"),
        "{header:?}"
    );
}

/// A tree larger than one piece of data.tar (4 MiB or 2048 entries): dpkg 1.21.22 reads only
/// the first frame of a zstd member and the first stream of an xz member, so a package written
/// in pieces must still be read whole by dpkg-deb and installed whole by dpkg.
#[test]
fn large_trees_are_read_whole_by_dpkg_with_every_compression() {
    let site = Site::new();
    let repo = site.repo();
    for i in 0..2600 {
        write(
            &repo.join(format!("lib/many/d{:02}/f{i:04}.php", i % 40)),
            &format!("<?php // file {i}\n"),
        );
    }
    fs::write(repo.join("lib/big.bin"), noise(1 << 20, 7)).unwrap();
    site.commit("many files");
    let files = stdout(git(&repo).args(["ls-tree", "-r", "--name-only", "HEAD"]))
        .lines()
        .filter(|l| *l != "config.php")
        .count();
    for comp in ["gzip", "zstd", "xz"] {
        let one = site.build(&[
            "--out",
            &format!("{comp}-1"),
            "--compression",
            comp,
            "--jobs",
            "1",
        ]);
        let two = site.build(&[
            "--out",
            &format!("{comp}-2"),
            "--compression",
            comp,
            "--jobs",
            "2",
        ]);
        assert_eq!(
            fs::read(&one).unwrap(),
            fs::read(&two).unwrap(),
            "{comp}: builds differ"
        );
        let listed = deb_contents(&one);
        let in_site = listed
            .iter()
            .filter(|(perm, _, path, _)| {
                !perm.starts_with('d')
                    && path.starts_with("./srv/moodle-test/html/")
                    && path != "./srv/moodle-test/html/moodle-release-probe.php"
            })
            .count();
        assert_eq!(
            in_site, files,
            "{comp}: dpkg-deb lists every file of the tree"
        );
        assert!(
            listed
                .iter()
                .any(|(_, _, p, _)| p.starts_with("./usr/share/")),
            "{comp}: the generated files after the tree are there too"
        );
    }
}

/// The MD5s of the last build's blobs are kept in `.git/moodle-release/md5.cache`: the next build
/// hashes only changed files and gives the same bytes as a build without the cache; a damaged
/// cache is ignored with a warning.
#[test]
fn rebuilds_reuse_md5s_and_give_the_same_package() {
    let site = Site::new();
    let json = |out: &str| -> serde_json::Value {
        let o = run(site.cmd().args(["--json", "build", "--out", out]));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let first = json("a");
    assert_eq!(first["md5_reused"], 0);
    let cache = site.repo().join(".git/moodle-release/md5.cache");
    assert!(cache.is_file());

    write(&site.repo().join("lib/changed.php"), "<?php // changed\n");
    site.commit("one more file");
    let second = json("b");
    let files = second["files"].as_u64().unwrap();
    // Everything but the new file and the generated ones (changelog, copyright, metadata...).
    let reused = second["md5_reused"].as_u64().unwrap();
    assert!(reused > 0 && reused < files, "{second}");
    assert_eq!(reused, first_git_files(&site));

    fs::remove_file(&cache).unwrap();
    let cold = json("c");
    assert_eq!(cold["md5_reused"], 0);
    assert_eq!(
        cold["sha256"], second["sha256"],
        "the cache changed the package"
    );

    fs::write(&cache, b"MRMD5v1\nnot a cache").unwrap();
    let o = run(site.cmd().args(["--json", "build", "--out", "d"]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("damaged"));
    let damaged: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(damaged["md5_reused"], 0);
    assert_eq!(damaged["sha256"], second["sha256"]);
    assert_eq!(json("e")["md5_reused"].as_u64().unwrap(), reused + 1);
}

/// Regular files of the deployment branch's previous commit that the package carries (not
/// symlinks, `.git*` files or the root config.php).
fn first_git_files(site: &Site) -> u64 {
    stdout(git(&site.repo()).args(["ls-tree", "-r", "HEAD~1"]))
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(meta, path)| {
            let name = path.rsplit('/').next().unwrap_or(path);
            !meta.starts_with("120000") && !name.starts_with(".git") && *path != "config.php"
        })
        .count() as u64
}

#[test]
fn a_plain_directory_gives_the_same_files_as_git() {
    let site = Site::new();
    let from_git = site.build(&["--out", "git"]);
    let tree = site.dir().join("export");
    fs::create_dir_all(&tree).unwrap();
    run(Command::new("sh").arg("-c").arg(format!(
        "git -C {} archive deploy | tar -x -C {}",
        site.repo().display(),
        tree.display()
    )));
    let mut cmd = site.cmd();
    cmd.env("SOURCE_DATE_EPOCH", "1713780000").args([
        "build",
        "--dir",
        "export",
        "--out",
        "dir",
        "--build-number",
        "1",
    ]);
    let out = String::from_utf8(run(&mut cmd).stdout).unwrap();
    let from_dir = site.dir().join(out.lines().last().unwrap().trim());
    assert_eq!(from_dir.file_name(), from_git.file_name());
    let list = |deb: &Path| {
        deb_contents(deb)
            .into_iter()
            .filter(|r| r.2.starts_with("./srv/"))
            .map(|r| format!("{} {} {}", r.0, r.2, r.3))
            .collect::<Vec<_>>()
    };
    assert_eq!(list(&from_git), list(&from_dir));
    let sums = |deb: &Path| {
        let d = tempfile::tempdir().unwrap();
        run(Command::new("dpkg-deb")
            .arg("--control")
            .arg(deb)
            .arg(d.path()));
        // The package records where it came from (commit id in the changelog, the metadata and
        // the release probe), so only the site's files are compared.
        let all = fs::read_to_string(d.path().join("md5sums")).unwrap();
        all.lines()
            .filter(|l| l.contains(" srv/") && !l.ends_with("/moodle-release-probe.php"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(sums(&from_git), sums(&from_dir));
}

#[test]
fn excluded_globs_are_not_packaged() {
    let site = Site::new();
    write(&site.repo().join("mod/forum/tests/fixtures/big.bin"), "x");
    write(&site.repo().join("node_modules/x/index.js"), "x");
    site.commit("tests and node_modules");
    let text = fs::read_to_string(site.config_path()).unwrap();
    fs::write(
        site.config_path(),
        text.replace(
            "[deploy]",
            "exclude = [\"**/tests/fixtures\", \"node_modules\"]\n\n[deploy]",
        ),
    )
    .unwrap();
    let deb = site.build(&[]);
    let rows = deb_contents(&deb);
    assert!(
        !rows
            .iter()
            .any(|r| r.2.contains("fixtures") || r.2.contains("node_modules")),
        "{rows:#?}"
    );
    assert!(rows.iter().any(|r| r.2.ends_with("mod/forum/version.php")));
}

/// Versions of successive builds along the branch, across Moodle releases, sort as dpkg sorts.
#[test]
fn versions_increase_along_the_branch() {
    let site = Site::empty();
    let releases = [
        ("2022112809.00", "4.1.9 (Build: 20240212)"),
        ("2022112809.05", "4.1.9+ (Build: 20240412)"),
        ("2022112809.05", "4.1.9+ (Build: 20240412)"),
        ("2022112810.00", "4.1.10 (Build: 20240422)"),
        ("2022112810.01", "4.1.10+ (Build: 20240426)"),
    ];
    let mut versions = Vec::new();
    for (i, (v, r)) in releases.iter().enumerate() {
        moodle_tree(&site.repo(), v, r);
        write(
            &site.repo().join("local/readme.txt"),
            &format!("build {i}\n"),
        );
        site.commit(r);
        let deb = site.build(&["--out", &format!("out{i}")]);
        versions.push(deb_field(&deb, "Version"));
    }
    for pair in versions.windows(2) {
        let ok = Command::new("dpkg")
            .args(["--compare-versions", &pair[0], "lt", &pair[1]])
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "{} should sort before {} (all: {versions:?})",
            pair[0],
            pair[1]
        );
    }
    // --build-number replaces the commit count.
    let deb = site.build(&["--out", "ci", "--build-number", "417"]);
    assert_eq!(deb_field(&deb, "Version"), "4.1.10+20240426+417-1");
}

/// The build part is the commit count along first parents, as `git rev-list --first-parent`
/// counts it: a merged side branch adds one (the merge), not its own commits. A shallow clone,
/// whose count would be too small, needs `--build-number`.
#[test]
fn the_build_part_counts_first_parents_and_a_shallow_clone_needs_a_build_number() {
    let site = Site::new();
    let repo = site.repo();
    run(git(&repo).args(["checkout", "-q", "-b", "side"]));
    for i in 0..3 {
        write(&repo.join(format!("local/side{i}.txt")), "side\n");
        site.commit(&format!("side {i}"));
    }
    run(git(&repo).args(["checkout", "-q", "deploy"]));
    write(&repo.join("local/main.txt"), "main\n");
    site.commit("main");
    run(git(&repo).args(["merge", "-q", "--no-ff", "-m", "merge side", "side"]));
    let count = stdout(git(&repo).args(["rev-list", "--count", "--first-parent", "deploy"]));
    let all = stdout(git(&repo).args(["rev-list", "--count", "deploy"]));
    assert_eq!((count.trim(), all.trim()), ("3", "6"));
    let deb = site.build(&["--out", "full"]);
    assert_eq!(deb_field(&deb, "Version"), "4.1.10+3-1");

    // A clone of depth 1: refused without --build-number, built with it.
    let shallow = site.dir().join("shallow");
    run(Command::new("git").args([
        "clone",
        "-q",
        "--depth",
        "1",
        "--branch",
        "deploy",
        &format!("file://{}", repo.display()),
        shallow.to_str().unwrap(),
    ]));
    site.config("");
    let cfg = fs::read_to_string(site.config_path())
        .unwrap()
        .replace("repo = \"repo\"", "repo = \"shallow\"");
    fs::write(site.config_path(), cfg).unwrap();
    let out = site.cmd().args(["build", "--out", "s"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("shallow clone") && err.contains("--build-number"),
        "{err}"
    );
    let left = fs::read_dir(site.dir().join("s"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "nothing is written");
    let deb = site.build(&["--out", "s", "--build-number", "12"]);
    assert_eq!(deb_field(&deb, "Version"), "4.1.10+12-1");
}

#[test]
fn dpkg_installs_upgrades_and_purges_it() {
    let site = Site::new();
    let first = site.build(&["--out", "one"]);
    fs::remove_file(site.repo().join("mod/forum/lang/en/forum.php")).unwrap();
    write(&site.repo().join("mod/forum/lib.php"), "<?php\n");
    site.commit("drop forum lang");
    let second = site.build(&["--out", "two"]);

    let root = tempfile::tempdir().unwrap();
    dpkg_root(root.path());
    let html = root.path().join("srv/moodle-test/html");
    run(dpkg(root.path()).arg("--install").arg(&first));
    assert!(html.join("mod/forum/lang/en/forum.php").is_file());
    let status = stdout(dpkg(root.path()).args(["--status", "moodle-test"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(
        status.contains("X-Moodle-Release: 4.1.10 (Build: 20240422)"),
        "{status}"
    );

    run(dpkg(root.path()).arg("--install").arg(&second));
    assert!(
        !html.join("mod/forum/lang/en/forum.php").exists(),
        "a file deleted upstream stayed"
    );
    assert!(html.join("mod/forum/lib.php").is_file());
    assert!(fs::symlink_metadata(html.join("theme/boost/pix/logo.png"))
        .unwrap()
        .file_type()
        .is_symlink());

    run(dpkg(root.path()).args(["--purge", "moodle-test"]));
    assert!(
        !root.path().join("srv").exists(),
        "purge left the install folder behind"
    );
    let status = Command::new("dpkg")
        .arg("--root")
        .arg(root.path())
        .args(["--status", "moodle-test"])
        .output()
        .unwrap();
    assert!(
        !status.status.success() || !String::from_utf8_lossy(&status.stdout).contains("installed")
    );
}

/// Runs lintian on `deb`; returns its output.
fn lintian(deb: &Path) -> String {
    if Command::new("lintian").arg("--version").output().is_err() {
        panic!("lintian is not installed: .ci/run installs it");
    }
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A stock Moodle tree draws lintian errors on every site (its root `.eslintrc`, the TeX filter's
/// mimetex binaries) and a zstd package draws one on Debian 12's lintian: the package carries
/// pointed overrides for them, so a `lintian --fail-on error` job passes, while the same tag on a
/// file of the site's own still fails it.
#[test]
fn lintian_reports_no_errors() {
    let site = Site::new();
    let repo = site.repo();
    write(&repo.join(".eslintrc"), "{}\n");
    write(&repo.join("mod/forum/.eslintrc.json"), "{}\n");
    // The TeX filter's binaries as core Moodle ships them: dynamically linked ELF for Linux and
    // FreeBSD, and a static one.
    tex_filter_binaries(&repo);
    fs::copy("/sbin/ldconfig", repo.join("filter/tex/mimetex.static")).unwrap();
    site.commit("lint bait");
    // A package with Depends, as every real site's: lintian then checks that one of them is the
    // libc its ELF binaries need (`missing-dependency-on-libc`, an error).
    let cfg = fs::read_to_string(site.config_path()).unwrap();
    fs::write(
        site.config_path(),
        cfg.replace(
            "[deploy]",
            "depends = [\"php8.2-fpm | php-fpm\"]\n\n[deploy]",
        ),
    )
    .unwrap();
    for compression in ["gzip", "zstd"] {
        let deb = site.build(&["--compression", compression, "--out", compression]);
        let text = lintian(&deb);
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
        assert!(
            errors.is_empty(),
            "lintian errors ({compression}):\n{}",
            errors.join("\n")
        );
        // The warnings we fixed stay fixed.
        for tag in [
            "extended-description-line-too-long",
            "maintainer-script-empty",
            "debian-changelog-line-too-long",
            "dir-or-file-in-srv",
            "copyright-without-copyright-notice",
            "initial-upload-closes-no-bugs",
            "unknown-field",
            "mismatched-override",
        ] {
            assert!(
                !text.contains(tag),
                "lintian ({compression}): {tag}\n{text}"
            );
        }
    }
    // The same binaries anywhere else are still errors: the overrides point at Moodle's files.
    fs::create_dir_all(repo.join("local/tool/bin")).unwrap();
    fs::copy("/sbin/ldconfig", repo.join("local/tool/bin/helper")).unwrap();
    fs::copy(
        repo.join("filter/tex/mimetex.linux"),
        repo.join("local/tool/bin/dynamic"),
    )
    .unwrap();
    site.commit("binaries of the site's own");
    let text = lintian(&site.build(&["--compression", "zstd", "--out", "own"]));
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
    // lintian names the first file that needs libc6 and counts the others: one more than the
    // TeX filter's two.
    for needle in [
        "arch-independent-package-contains-binary-or-object [srv/moodle-test/html/local/tool/bin/helper]",
        "arch-independent-package-contains-binary-or-object [srv/moodle-test/html/local/tool/bin/dynamic]",
        "missing-dependency-on-libc needed by srv/moodle-test/html/filter/tex/mimetex.freebsd and 2 others",
    ] {
        assert!(errors.iter().any(|l| l.contains(needle)), "{needle}:\n{text}");
    }
    assert!(
        errors
            .iter()
            .all(|l| l.contains("local/tool/bin/") || l.contains("missing-dependency-on-libc")),
        "{text}"
    );
}

/// Each bad input: one clear error, exit status 1, and no .deb left under the final name.
#[test]
fn bad_trees_are_refused_with_a_clear_error() {
    type Breaker = fn(&Path);
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "no version.php",
            |r| fs::remove_file(r.join("version.php")).unwrap(),
            "version.php",
        ),
        (
            "bad release",
            |r| {
                write(
                    &r.join("version.php"),
                    &core_version_php("2022112810.00", "four point one", "401"),
                )
            },
            "four point one",
        ),
        (
            "symlink escape",
            |r| {
                std::os::unix::fs::symlink("../../../../etc/shadow", r.join("mod/forum/evil"))
                    .unwrap()
            },
            "outside",
        ),
        (
            "newline in a name",
            |r| write(&r.join("mod/forum/bad\nname.php"), "x"),
            "line break",
        ),
    ];
    for (name, breaker, needle) in cases {
        let site = Site::new();
        breaker(&site.repo());
        site.commit(name);
        let out = site.cmd().arg("build").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("error:") && err.contains(needle),
            "{name}: {err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
        let left: Vec<_> = fs::read_dir(site.dir().join("dist"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{name}: left {left:?}");
    }
}

#[test]
fn bad_ref_and_output_folder_are_refused() {
    let site = Site::new();
    let out = site
        .cmd()
        .args(["build", "--ref", "no-such-branch"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no-such-branch"), "{err}");

    fs::write(site.dir().join("blocked"), "a file, not a folder").unwrap();
    let out = site
        .cmd()
        .args(["build", "--out", "blocked"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("blocked"), "{err}");
    assert_eq!(
        fs::read_to_string(site.dir().join("blocked")).unwrap(),
        "a file, not a folder"
    );
}

/// A full disk mid-build: the error names it and no .deb is left under the final name.
#[test]
fn a_full_disk_leaves_no_package() {
    require_root("it mounts a small tmpfs");
    let site = Site::new();
    // Enough incompressible data to overflow a 64 KiB filesystem.
    fs::write(site.repo().join("lib/random.bin"), noise(200_000, 1)).unwrap();
    site.commit("random data");
    let mnt = site.dir().join("small");
    fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt));
    // Each compression's encoder meets the full disk in its own way (gzip pieces, the zstd and
    // xz streams).
    let mut results = Vec::new();
    for compression in ["gzip", "zstd", "xz"] {
        let out = site
            .cmd()
            .args(["build", "--out", "small", "--compression", compression])
            .output()
            .unwrap();
        let left: Vec<_> = fs::read_dir(&mnt)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        results.push((compression, out, left));
    }
    run(Command::new("umount").arg(&mnt));
    for (compression, out, left) in results {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{compression}: {err}");
        assert!(err.contains("No space left"), "{compression}: {err}");
        assert!(left.is_empty(), "{compression}: left behind: {left:?}");
    }
}
