//! `[site] layout = "releases"` against a lab whose web nodes run nginx (`$realpath_root`) and
//! php-fpm with OPcache on and `opcache.validate_timestamps=0`: each release is installed beside
//! the others while the node serves, `install_dir` is switched to it batch by batch, the node's
//! PHP is reloaded and proven by the release probe, and a rollback to a release still installed
//! is a switch back, with no apt.

mod common;

use common::*;

/// What `node`'s PHP answers at the release probe: the version it runs.
fn php_runs(c: &Cluster, node: &str) -> String {
    let (code, body) =
        http_body(&format!("{}/moodle-release-probe.php", c.node_http(node))).unwrap();
    assert_eq!(code, 200, "{node}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["version"].as_str().unwrap().to_string()
}

/// Where `node`'s install_dir points: its live release's folder.
fn live_release(c: &Cluster, node: &str) -> String {
    let link = c.ssh_ok(node, "readlink /srv/moodle/html");
    String::from_utf8_lossy(&link.stdout).trim().to_string()
}

/// The folders of releases `versions` on a lab node.
fn release_folders(versions: &[&str]) -> std::collections::BTreeSet<String> {
    versions
        .iter()
        .map(|v| format!("/srv/moodle/releases/{v}"))
        .collect()
}

/// The load's check of "no response from a mixed release" can fail: a front page whose entry
/// script and `$CFG->dirroot` code come from two releases is refused, one release is read.
#[test]
fn a_front_page_from_a_mixed_release_is_caught() {
    let one = "Moodle 4.1.9 on web1 from /srv/moodle/releases/1-1 with /srv/moodle/releases/1-1\n";
    assert_eq!(served_release(one).unwrap(), "/srv/moodle/releases/1-1");
    let mixed =
        "Moodle 4.1.9 on web1 from /srv/moodle/releases/2-1 with /srv/moodle/releases/1-1\n";
    assert!(served_release(mixed)
        .unwrap_err()
        .contains("a mixed release"));
    let stale = "Moodle 4.1.9 on web1 from /r/2-1 with /r/2-1 and components from /r/1-1\n";
    assert!(served_release(stale)
        .unwrap_err()
        .contains("a mixed release"));
    let whole = "Moodle 4.1.9 on web1 from /r/2-1 with /r/2-1 and components from /r/2-1\n";
    assert_eq!(served_release(whole).unwrap(), "/r/2-1");
    assert!(served_release("Moodle under maintenance\n").is_err());
}

/// The journal's entries of a `--json` roll or rollback.
fn timeline(out: &std::process::Output) -> Vec<serde_json::Value> {
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    o["timeline"].as_array().unwrap().clone()
}

fn positions(t: &[serde_json::Value], action: &str) -> Vec<usize> {
    t.iter()
        .enumerate()
        .filter(|(_, e)| e["action"] == action)
        .map(|(i, _)| i)
        .collect()
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario on one lab, in the order a release engineer lives it: split, the order would be lost"
)]
#[test]
fn releases_install_while_serving_switch_per_batch_and_roll_back_without_apt() {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up_web(3, "nginx-fpm");
    c.use_releases();
    c.set_reload(None);
    c.set_config("roll", "keep_releases", "2");

    // The first install: every node gets release 1, then switches to it.
    let v1 = c.release(1, &[]);
    run(c.cmd().arg("roll"));
    for n in ["web1", "web2", "web3", "cron1"] {
        assert_eq!(
            live_release(&c, n),
            format!("/srv/moodle/releases/{v1}"),
            "{n}"
        );
    }
    for n in ["web1", "web2", "web3"] {
        assert_eq!(php_runs(&c, n), v1, "{n}");
    }

    // Release 2, code-only, under load through both LBs: installed on every node while they
    // all serve, then each batch switched, reloaded, proven, put back.
    let v2 = c.release(2, &[]);
    let (out, served) = c.under_load(&["--json", "roll", "--batch", "1"]);
    assert!(served.requests > 50, "{}", served.requests);
    // Every front page came whole from release 1 or release 2, and the load saw both.
    served.assert_whole(&release_folders(&[&v1, &v2]));
    let t = timeline(&out);
    let installs = positions(&t, "install");
    let drains = positions(&t, "state drain");
    assert_eq!(installs.len(), 4, "{t:#?}");
    assert!(
        installs.iter().all(|i| *i < drains[0]),
        "every release installed before any node left rotation: {t:#?}"
    );
    assert_eq!(positions(&t, "switch").len(), 4, "{t:#?}");
    assert_eq!(positions(&t, "release probe").len(), 3, "{t:#?}");
    for n in ["web1", "web2", "web3"] {
        assert_eq!(php_runs(&c, n), v2, "{n}");
    }
    // Both releases are on every node: dpkg knows each.
    let listed = c.ssh_ok(
        "web2",
        "dpkg-query -W -f='${Package}\\n' 'moodle-sample-release-*'",
    );
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&format!("moodle-sample-release-{v1}"))
            && listed.contains(&format!("moodle-sample-release-{v2}")),
        "{listed}"
    );
    let st: serde_json::Value =
        serde_json::from_slice(&run(c.cmd().args(["--json", "status"])).stdout).unwrap();
    for node in st["nodes"].as_array().unwrap() {
        assert_eq!(node["version"], v2.as_str(), "{st}");
        assert_eq!(node["releases"], serde_json::json!([v1, v2]), "{st}");
    }
    // status says which releases a rollback can switch to.
    let text = stdout(c.cmd().arg("status"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("web2 ") && l.contains(&format!("(also installed: {v1})"))),
        "{text}"
    );

    // A rollback to release 1, still installed: a switch back, no apt, under load.
    let (out, served) = c.under_load(&["--json", "rollback", "--batch", "1"]);
    served.assert_whole(&release_folders(&[&v1, &v2]));
    let t = timeline(&out);
    assert!(positions(&t, "install").is_empty(), "{t:#?}");
    assert_eq!(positions(&t, "switch").len(), 4, "{t:#?}");
    for n in ["web1", "web2", "web3"] {
        assert_eq!(php_runs(&c, n), v1, "{n}");
    }
    assert!(c.lb_servers().iter().all(|(_, s)| s.starts_with("UP")));

    // A release that changes $version and db/: installed while the site serves, then inside the
    // maintenance window only the switch, the reload, the probe and the upgrade.
    c.set_config("upstream", "ref", "\"v4.1.10\"");
    let v3 = c.release(3, &["--update", "upstream"]);
    let out = run(c.cmd().args(["--json", "roll", "--batch", "2"]));
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o["plan"]["path"], "database", "{o}");
    let t = timeline(&out);
    let on = positions(&t, "maintenance on")[0];
    assert!(
        positions(&t, "install").iter().all(|i| *i < on),
        "installed before the window: {t:#?}"
    );
    assert!(positions(&t, "switch").iter().all(|i| *i > on));
    let window = o["maintenance_secs"].as_f64().unwrap();
    let upgrade = t[positions(&t, "upgrade")[0]]["duration_ms"]
        .as_f64()
        .unwrap()
        / 1000.0;
    eprintln!("database window {window:.2}s, of which upgrade_command {upgrade:.2}s");
    assert!(window > 0.0 && window < upgrade + 5.0, "{window} {upgrade}");
    for n in ["web1", "web2", "web3"] {
        assert_eq!(php_runs(&c, n), v3, "{n}");
    }

    // keep_releases = 2: after the roll to release 4, each node keeps 4 and 3 (the live one and
    // the one a rollback goes back to); 1 and 2 are removed.
    let v4 = c.release(4, &[]);
    let out = run(c.cmd().args(["--json", "roll", "--batch", "2"]));
    let t = timeline(&out);
    assert_eq!(positions(&t, "remove old releases").len(), 4, "{t:#?}");
    for n in ["web1", "cron1"] {
        let listed = c.ssh_ok(
            n,
            "dpkg-query -W -f='${Version} ${Status}\\n' 'moodle-sample-release-*' | grep 'ok installed' | cut -d' ' -f1 | sort",
        );
        assert_eq!(
            String::from_utf8_lossy(&listed.stdout).trim(),
            format!("{v3}\n{v4}"),
            "{n}"
        );
    }
    assert_eq!(php_runs(&c, "web2"), v4);
}

/// A web server that passes PHP the symlinked path (`$document_root`, not `$realpath_root`):
/// PHP's realpath cache keeps resolving install_dir to the old release for a while. Without a
/// reload the release probe catches it, and the node stays out of rotation; a reload that fails
/// keeps it out too; with the reload it goes through.
#[test]
fn a_switch_that_php_does_not_see_keeps_the_node_out() {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up_with(2, "nginx-fpm", &[("LAB_FASTCGI_ROOT", "$document_root")]);
    c.use_releases();
    c.set_reload(None);
    let v1 = c.release(1, &[]);
    run(c.cmd().arg("roll"));
    // Warm every worker's realpath cache on release 1.
    for _ in 0..40 {
        assert_eq!(php_runs(&c, "web1"), v1);
    }
    let v2 = c.release(2, &[]);
    c.set_reload(Some("true"));
    let (_, err) = exits(c.cmd().args(["roll", "--batch", "1"]), 1);
    assert!(
        err.contains(&format!("its PHP runs {v1}, not {v2}")),
        "the stale path must be caught: {err}"
    );
    let web1 = c
        .lb_servers()
        .into_iter()
        .find(|(n, _)| n == "web1")
        .unwrap();
    assert!(web1.1.starts_with("MAINT"), "{web1:?}");
    // A reload that fails (php-fpm not running, a typo) keeps the node out the same way.
    c.set_reload(Some("false"));
    let (_, err) = exits(c.cmd().args(["roll", "--resume", "--batch", "1"]), 1);
    assert!(
        err.contains("reload_command `false` failed"),
        "a failed reload must stop the roll: {err}"
    );
    let servers = c.lb_servers();
    assert!(
        servers
            .iter()
            .any(|(n, s)| n == "web1" && s.starts_with("MAINT")),
        "{servers:?}"
    );
    assert!(
        servers
            .iter()
            .any(|(n, s)| n == "web2" && s.starts_with("UP")),
        "{servers:?}"
    );
    c.set_reload(None);
    run(c.cmd().args(["roll", "--resume", "--batch", "1"]));
    for n in ["web1", "web2"] {
        assert_eq!(php_runs(&c, n), v2, "{n}");
    }
}

/// An in-place site moves to the releases layout in one roll, under load: each node's first
/// switch sets the in-place folder aside and purges the in-place package before the symlink
/// exists (so dpkg cannot reach the release's files through it); the folder goes at the end.
/// The way back to the in-place version goes through that version rebuilt as a release.
#[test]
fn an_in_place_site_moves_to_releases_in_one_roll() {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up_web(3, "nginx-fpm");
    c.set_reload(None);
    let v1 = c.release(1, &[]);
    run(c.cmd().arg("roll"));
    c.ssh_ok("web1", "test -d /srv/moodle/html -a ! -L /srv/moodle/html");
    assert_eq!(php_runs(&c, "web1"), v1);

    c.use_releases();
    let v2 = c.release(2, &[]);
    let (out, served) = c.under_load(&["--json", "roll", "--batch", "1"]);
    assert!(served.requests > 50);
    // Front pages from the in-place folder, then from release 2: never both in one.
    let mut both = release_folders(&[&v2]);
    both.insert("/srv/moodle/html".to_string());
    served.assert_whole(&both);
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o["plan"]["path"], "code-only", "{o}");
    for n in ["web1", "web2", "web3", "cron1"] {
        assert_eq!(
            live_release(&c, n),
            format!("/srv/moodle/releases/{v2}"),
            "{n}"
        );
        let left = c.ssh(
            n,
            "dpkg-query -W -f='${Status}' moodle-sample 2>/dev/null | grep -q 'ok installed' || test -e /srv/moodle/html.in-place",
        );
        assert!(
            !left.status.success(),
            "{n}: the in-place package or its folder is still there"
        );
        // The release's files are whole: dpkg did not remove them through the symlink.
        c.ssh_ok(n, &format!("dpkg --verify moodle-sample-release-{v2}"));
    }
    for n in ["web1", "web2", "web3"] {
        assert_eq!(php_runs(&c, n), v2, "{n}");
    }

    // The way back to release 1, published only as the in-place package: refused before
    // anything changes, with the commands that build that version as a release. Run as said,
    // the release takes the in-place package's place in the repository and the rollback goes.
    let (_, err) = exits(c.cmd().arg("rollback"), 1);
    assert!(
        err.contains(&format!(
            "version {v1} is in the apt repository only as moodle-sample, the in-place layout's package"
        )),
        "{err}"
    );
    for n in ["web1", "web2", "web3"] {
        assert_eq!(php_runs(&c, n), v2, "{n}");
    }
    assert!(c.lb_servers().iter().all(|(_, s)| s.starts_with("UP")));
    let rebuild = err
        .split("`moodle-release ")
        .nth(1)
        .and_then(|r| r.split('`').next())
        .unwrap_or_else(|| panic!("no command in: {err}"));
    let deb = last_line(&run(c
        .cmd()
        .args(rebuild.split_whitespace())
        .args(["--out", "dist"])));
    assert!(
        deb.contains(&format!("moodle-sample-release-{v1}_")),
        "{rebuild}: {deb}"
    );
    let published = stdout(c.cmd().arg("publish").arg(c.site().join(&deb)));
    assert!(
        published.contains(&format!("the release of {v1} replaces moodle-sample {v1}")),
        "{published}"
    );
    let listed = stdout(c.cmd().args(["repo", "list"]));
    assert_eq!(
        listed.matches(&v1).count(),
        1,
        "one entry for {v1}: {listed}"
    );
    let (_, served) = c.under_load(&["rollback", "--batch", "1"]);
    served.assert_whole(&release_folders(&[&v1, &v2]));
    for n in ["web1", "web2", "web3"] {
        assert_eq!(php_runs(&c, n), v1, "{n}");
    }
}

/// A site with `$CFG->alternative_component_cache` (a file of each node's own, from which Moodle
/// takes its plugins' folders, however stale): each switch rebuilds it from the new release
/// before the link moves, and PHP is reloaded (here by the default reload, no `reload_command`),
/// so no page loads its plugins from the release before.
#[test]
fn the_component_cache_is_rebuilt_at_each_switch() {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up(2);
    c.use_releases();
    let cache = "/var/cache/moodle-sample/core_component.php";
    for n in ["web1", "web2", "cron1"] {
        c.ssh_ok(
            n,
            &format!(
                "mkdir -p -m 777 /var/cache/moodle-sample && printf '%s\\n' '$CFG->alternative_component_cache = \"{cache}\";' >>/etc/moodle-sample/config.php"
            ),
        );
    }
    let cached = |n: &str| {
        String::from_utf8_lossy(&c.ssh_ok(n, &format!("cat {cache}")).stdout).into_owned()
    };
    let v1 = c.release(1, &[]);
    run(c.cmd().arg("roll"));
    assert!(
        cached("web1").contains(&format!("/srv/moodle/releases/{v1}")),
        "{}",
        cached("web1")
    );

    let v2 = c.release(2, &[]);
    let (_, served) = c.under_load(&["roll", "--batch", "1"]);
    served.assert_whole(&release_folders(&[&v1, &v2]));
    for n in ["web1", "web2", "cron1"] {
        assert!(
            cached(n).contains(&format!("/srv/moodle/releases/{v2}")),
            "{n}: {}",
            cached(n)
        );
    }

    // The check sees a stale cache on a real node: web1's put back to release 1's folders (as a
    // switch without the rebuild would leave it) makes its front page a mixed release.
    c.ssh_ok(
        "web1",
        &format!(
            "sed -i 's#/srv/moodle/releases/{v2}#/srv/moodle/releases/{v1}#' {cache} && {}",
            c.lab().join("reload-php").display()
        ),
    );
    let (code, body) = http_body(&format!("{}/", c.node_http("web1"))).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        served_release(&body).is_err_and(|e| e.contains("a mixed release")),
        "{body}"
    );
}
