//! A node goes back into rotation only when its PHP runs the new release: each package carries
//! a release probe, and `roll` asks it on every web node before the node is back. Against a
//! lab whose web nodes run nginx + php-fpm with OPcache on and `opcache.validate_timestamps=0`
//! (production tuning), whose php-fpm the package's postinst does not reload (`LAB_FPM=private`:
//! it runs under a pid file of the lab's own, as a pool under another service name would).

mod common;

use common::*;
use std::fs;

/// What `node`'s PHP answers at the release probe: the version it runs.
fn php_runs(c: &Cluster, node: &str) -> String {
    let (code, body) =
        http_body(&format!("{}/moodle-release-probe.php", c.node_http(node))).unwrap();
    assert_eq!(code, 200, "{node}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["package"], "moodle-sample");
    v["version"].as_str().unwrap().to_string()
}

#[test]
fn a_node_whose_php_runs_the_old_release_stays_out_until_php_is_reloaded() {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up_with(3, "nginx-fpm", &[("LAB_FPM", "private")]);
    let v1 = c.release(1, &[]);
    run(c.cmd().arg("roll"));
    for n in ["web1", "web2", "web3"] {
        assert_eq!(php_runs(&c, n), v1, "{n}");
    }
    // A new build of the same code: the code-only path.
    let v2 = c.release(2, &[]);

    // --plan shows the probe for each web node, before it goes back.
    let plan: serde_json::Value =
        serde_json::from_slice(&run(c.cmd().args(["--json", "roll", "--plan"])).stdout).unwrap();
    let probes: Vec<&str> = plan["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step"] == "probe")
        .map(|s| s["node"].as_str().unwrap())
        .collect();
    assert_eq!(probes, ["web1", "web2", "web3"], "{plan}");
    assert_eq!(plan["plan"]["probe"], "/moodle-release-probe.php");

    // No reload: the package is installed, but web1's PHP still runs v1 from its opcode cache.
    // The roll stops there, web1 out of rotation, and says why.
    let (_, err) = exits(c.cmd().args(["roll", "--batch", "1"]), 1);
    assert!(
        err.contains(&format!("its PHP runs {v1}, not {v2}")) && err.contains("stale opcode cache"),
        "{err}"
    );
    assert!(err.contains("reload_command"), "{err}");
    assert_eq!(c.installed("web1"), v2);
    assert_eq!(
        php_runs(&c, "web1"),
        v1,
        "the lab's PHP was reloaded after all"
    );
    let servers = c.lb_servers();
    let web1 = servers.iter().find(|(n, _)| n == "web1").unwrap();
    assert!(
        web1.1.starts_with("MAINT"),
        "web1 must stay out: {servers:?}"
    );
    assert_eq!(c.installed("web2"), v1, "the roll went on after web1");
    // status: the release web1's PHP runs, beside the package installed.
    let st: serde_json::Value =
        serde_json::from_slice(&c.cmd().args(["--json", "status"]).output().unwrap().stdout)
            .unwrap();
    let node = |n: &str| {
        st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(node("web1")["version"], v2.as_str(), "{st}");
    assert_eq!(node("web1")["php"], v1.as_str(), "{st}");
    assert_eq!(node("web2")["php"], v1.as_str(), "{st}");
    let text = stdout(c.cmd().arg("status"));
    assert!(text.contains(&format!("php STALE {v1}")), "{text}");
    // The journal: the probe's step failed, with the reason.
    let journal = c.newest_journal();
    let failed_probe = fs::read_to_string(journal).unwrap().lines().any(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        v["action"] == "release probe" && v["result"] == "failed" && v["node"] == "web1"
    });
    assert!(failed_probe, "no failed release probe journalled");

    // With reload_command, --resume reloads web1's PHP, proves it, puts it back, and finishes:
    // every node's PHP runs v2, every server UP.
    c.set_reload(None);
    let out = run(c.cmd().args(["--json", "roll", "--resume", "--batch", "1"]));
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o["plan"]["target"], v2.as_str(), "{o}");
    for n in ["web1", "web2", "web3"] {
        assert_eq!(c.installed(n), v2, "{n}");
        assert_eq!(php_runs(&c, n), v2, "{n}");
    }
    assert!(c.lb_servers().iter().all(|(_, s)| s.starts_with("UP")));
    let actions: Vec<String> = o["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "reload" || e["action"] == "release probe")
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            format!("{} {} {}", s("node"), s("action"), s("result"))
        })
        .collect();
    // web1's reload and probe before it is put back, then web2's and web3's after their install.
    assert_eq!(
        actions,
        [
            "web1 reload ok",
            "web1 release probe ok",
            "web2 reload ok",
            "web2 release probe ok",
            "web3 reload ok",
            "web3 release probe ok"
        ]
    );

    // A rollback the same way: every node's PHP answers v1 before it is back.
    run(c.cmd().args(["rollback", "--batch", "1"]));
    for n in ["web1", "web2", "web3"] {
        assert_eq!(c.installed(n), v1, "{n}");
        assert_eq!(php_runs(&c, n), v1, "{n}");
    }
    assert!(c.lb_servers().iter().all(|(_, s)| s.starts_with("UP")));
}
