//! `[site] layout = "releases"` against a lab whose web nodes run nginx (`$realpath_root`) and
//! php-fpm with OPcache on and `opcache.validate_timestamps=0`: each release is installed beside
//! the others while the node serves, `install_dir` is switched to it batch by batch, the node's
//! PHP is reloaded and proven by the release probe, and a rollback to a release still installed
//! is a switch back, with no apt.

mod common;

use common::*;
use std::fs;

/// What `node`'s PHP answers at the release probe: the version it runs.
fn php_runs(c: &Cluster, node: &str) -> String {
    let (code, body) =
        http_body(&format!("{}/moodle-release-probe.php", c.node_http(node))).unwrap();
    assert_eq!(code, 200, "{node}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["version"].as_str().unwrap().to_string()
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

#[test]
fn releases_install_while_serving_switch_per_batch_and_roll_back_without_apt() {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up_web(3, "nginx-fpm");
    let text = fs::read_to_string(c.config_path()).unwrap();
    let text = text
        .replacen(
            "install_dir = \"/srv/moodle/html\"\n",
            "install_dir = \"/srv/moodle/html\"\nlayout = \"releases\"\n",
            1,
        )
        .replacen(
            "[roll]\n",
            &format!(
                "[roll]\nreload_command = \"{}\"\n",
                c.lab().join("reload-php").display()
            ),
            1,
        );
    assert!(text.contains("layout = \"releases\""), "{text}");
    fs::write(c.config_path(), text).unwrap();

    // The first install: every node gets release 1, then switches to it.
    let v1 = c.release(1, &[]);
    run(c.cmd().arg("roll"));
    for n in ["web1", "web2", "web3", "cron1"] {
        let link = c.ssh_ok(n, "readlink /srv/moodle/html");
        assert_eq!(
            String::from_utf8_lossy(&link.stdout).trim(),
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
    let urls = vec![
        format!("{}/", c.env["LAB_LB1"]),
        format!("{}/", c.env["LAB_LB2"]),
    ];
    let load = Load::start(urls.clone(), 4, 5000);
    let out = run(c.cmd().args(["--json", "roll", "--batch", "1"]));
    let (requests, failures) = load.stop();
    assert!(requests > 50, "{requests}");
    assert!(failures.is_empty(), "{failures:?}");
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
    }

    // A rollback to release 1, still installed: a switch back, no apt, under load.
    let load = Load::start(urls, 4, 5000);
    let out = run(c.cmd().args(["--json", "rollback", "--batch", "1"]));
    let (_, failures) = load.stop();
    assert!(failures.is_empty(), "{failures:?}");
    let t = timeline(&out);
    assert!(positions(&t, "install").is_empty(), "{t:#?}");
    assert_eq!(positions(&t, "switch").len(), 4, "{t:#?}");
    for n in ["web1", "web2", "web3"] {
        assert_eq!(php_runs(&c, n), v1, "{n}");
    }
    assert!(c.lb_servers().iter().all(|(_, s)| s.starts_with("UP")));
}
