//! `roll`, `rollback` and `status` against a real lab on loopback (scripts/lab): two HAProxy
//! 2.6, web and cron nodes as overlay chroots with sshd and php, a signed apt repository over
//! HTTP. Needs root (mount namespaces), like the nodes of a real cluster need it.

mod common;

use common::*;
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every web server is UP on LB 2.
fn assert_all_up(c: &Cluster) {
    let servers = c.lb_servers();
    assert!(
        servers.iter().all(|(_, s)| s.starts_with("UP")),
        "{servers:?}"
    );
}

/// Each of `nodes` has `version` installed.
fn assert_on(c: &Cluster, nodes: &[&str], version: &str) {
    for n in nodes {
        assert_eq!(c.installed(n), version, "{n}");
    }
}

fn journal_actions(c: &Cluster, action: &str) -> usize {
    journal_actions_result(c, action, "ok")
}

/// Journal lines of `action` with `result`, over every roll of the lab.
fn journal_actions_result(c: &Cluster, action: &str, result: &str) -> usize {
    let state = c.lab().join("state");
    let mut n = 0;
    for e in fs::read_dir(state).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".jsonl") {
            for line in fs::read_to_string(e.path()).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                if v["action"] == action && v["result"] == result {
                    n += 1;
                }
            }
        }
    }
    n
}

/// Starts `roll ARGS` in the background and returns once its new journal has a line for which
/// `seen` holds (bounded: 60 s). The caller waits for the child; a panic here ends the test.
#[allow(clippy::zombie_processes)]
fn roll_until(
    c: &Cluster,
    args: &[&str],
    what: &str,
    seen: impl Fn(&str) -> bool,
) -> std::process::Child {
    let state = c.lab().join("state");
    fs::create_dir_all(&state).unwrap();
    let before: Vec<_> = fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    // In a process group of its own, as a terminal runs a command: [`interrupt`] signals the
    // group, as Ctrl-C does, so that whatever the tool spawned gets the signal too.
    let mut child = c
        .cmd()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the roll never got to: {what}");
        }
        for e in fs::read_dir(&state).unwrap().flatten() {
            if before.contains(&e.path()) || !e.file_name().to_string_lossy().ends_with(".jsonl") {
                continue;
            }
            if fs::read_to_string(e.path()).unwrap().lines().any(&seen) {
                return child;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ctrl-C for a roll started by [`roll_until`]: SIGINT to its whole process group, as a
/// terminal sends it. Waits for it: its exit status and stderr.
fn interrupt(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    run(Command::new("kill").args(["-INT", "--", &format!("-{}", child.id())]));
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status, err)
}

/// A lab of 3 web nodes and a cron node on release 1 (rolled), with release 2 published.
fn installed_cluster() -> (Cluster, String, String) {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up(3);
    let v1 = c.release(1, &[]);
    run(c.cmd().arg("roll"));
    let v2 = c.release(2, &[]);
    (c, v1, v2)
}

/// Samples LB 2 every 20 ms: the most servers seen out of rotation at once.
fn sample_out_of_rotation(c: &Cluster, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    sample_lb2(c, stop, "show stat moodle 4 -1", |text| {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter(|l| !l.split(',').nth(17).unwrap_or("").starts_with("UP"))
            .count()
    })
}

/// The most servers the tool took out (drain or maint: admin state bits set) at any sample,
/// whatever their health: during maintenance mode every health check fails.
fn sample_taken_out(c: &Cluster, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    sample_lb2(c, stop, "show servers state moodle", |text| {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 6)
            .filter(|l| l.split_whitespace().nth(6) != Some("0"))
            .count()
    })
}

/// Asks lb2's Runtime API `cmd` every 20 ms until `stop` (at most 5 minutes), returns the
/// largest `count` of the answers.
fn sample_lb2(
    c: &Cluster,
    stop: Arc<AtomicBool>,
    cmd: &'static str,
    count: fn(&str) -> usize,
) -> std::thread::JoinHandle<usize> {
    let addr = c.env["LAB_LB2_API"].clone();
    std::thread::spawn(move || {
        let mut max = 0;
        let started = std::time::Instant::now();
        while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(300) {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                let _ = std::io::Write::write_all(&mut s, format!("{cmd}\n").as_bytes());
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut s, &mut text);
                max = max.max(count(&text));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        max
    })
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario on one lab, in the order a release engineer lives it: split, the order would be lost"
)]
#[test]
fn first_install_code_only_roll_under_load_rollback_and_database_upgrade() {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up(3);
    // 1. First install: nothing on the nodes, so the database path, upgrade once.
    let v1 = c.release(1, &[]);
    let plan = run(c.cmd().args(["roll", "--plan"]));
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains("database path") && text.contains("nothing was changed"),
        "{text}"
    );
    assert_eq!(c.installed("web1"), "", "--plan installed something");
    // Run with a stdin that stays open, as a terminal's does: no node command may read it
    // (upgrade.php reads its stdin to the end, and would wait for ever).
    let log = c.lab().join("roll1.err");
    let mut roll = c
        .cmd()
        .arg("roll")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _terminal = roll.stdin.take();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = roll.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = roll.kill();
            panic!(
                "the roll hung for 2 minutes (did a node command read the terminal?):\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert_on(&c, &["web1", "web2", "web3", "cron1"], &v1);
    assert_eq!(journal_actions(&c, "upgrade"), 1);
    // upgrade.php purges Moodle's caches itself: purge_command is for the code-only path.
    let purged = || fs::read_to_string(c.lab().join("moodledata/purged")).unwrap_or_default();
    assert_eq!(purged(), "");
    assert_eq!(
        fs::read_to_string(c.lab().join("moodledata/dbversion"))
            .unwrap()
            .trim(),
        "2022112809"
    );

    // web1's php-fpm is the node's php8.2-fpm service (scripts/lab): the package's postinst
    // reloads it, so that its opcode cache drops the old code.
    // How many times `line` is in the log `path` on `node`.
    let in_log = |node: &str, path: &str, line: &str| {
        let log = c.ssh(node, &format!("cat {path}"));
        String::from_utf8_lossy(&log.stdout).matches(line).count()
    };
    let reloads = || in_log("web1", "/run/php-lab/fpm.log", "Reloading in progress");
    // Counted from here: a log the node's overlay shows from the host may have lines already.
    let reloads_before = reloads();
    // web2 serves PHP through Apache's mod_php: reloaded (gracefully) the same way.
    c.ssh_ok(
        "web2",
        &format!(
            "rm -f /usr/sbin/policy-rc.d && mkdir -p /run/lock && sed -i 's/^Listen 80$/Listen 127.0.0.1:{}/' /etc/apache2/ports.conf && /etc/init.d/apache2 start >/dev/null && pgrep -c apache2",
            free_port()
        ),
    );
    let graceful = || {
        in_log(
            "web2",
            "/var/log/apache2/error.log",
            "Graceful restart requested",
        )
    };
    let graceful_before = graceful();

    // 2. Same code, new build: code-only, batch 1, under load through both LBs.
    let v2 = c.release(2, &[]);
    let urls = c.front_pages();
    let load = Load::start(urls.clone(), 4, 5000);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_out_of_rotation(&c, stop.clone());
    let out = run(c.cmd().args(["--json", "roll", "--batch", "1"]));
    stop.store(true, Ordering::SeqCst);
    let max_out = sampler.join().unwrap();
    let (requests, failures) = load.stop();
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o["plan"]["path"], "code-only", "{o}");
    assert_journal_follows_plan(&o);
    assert!(requests > 50, "only {requests} requests during the roll");
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        max_out <= 1,
        "{max_out} servers were out of rotation at once with --batch 1"
    );
    assert_on(&c, &["web1", "web2", "web3", "cron1"], &v2);
    assert_eq!(
        journal_actions(&c, "upgrade"),
        1,
        "a code-only roll ran the upgrade"
    );
    assert_eq!(
        reloads(),
        reloads_before + 1,
        "web1's php-fpm was not reloaded by the install"
    );
    assert_eq!(
        graceful(),
        graceful_before + 1,
        "web2's Apache was not reloaded by the install"
    );
    // Caches purged once, for the whole cluster, with every node on the new code.
    assert_eq!(purged().lines().count(), 1, "{}", purged());
    assert_eq!(journal_actions(&c, "purge caches"), 1);
    assert!(
        c.lb_servers().iter().all(|(_, st)| st.starts_with("UP")),
        "{:?}",
        c.lb_servers()
    );

    // 3. status says the same.
    let st: serde_json::Value =
        serde_json::from_slice(&run(c.cmd().args(["--json", "status"])).stdout).unwrap();
    assert_eq!(st["newest"], v2.as_str());
    for n in st["nodes"].as_array().unwrap() {
        assert_eq!(n["version"], v2.as_str(), "{n}");
    }

    // 4. rollback: back to v1 with the same care (same code hashes: allowed).
    run(c.cmd().arg("rollback"));
    assert_eq!(c.installed("web2"), v1);
    assert_eq!(purged().lines().count(), 2, "{}", purged());

    // 5. A release that changes $version and db/: the database path, upgrade once more.
    let cfg = fs::read_to_string(c.config_path())
        .unwrap()
        .replace("ref = \"v4.1.9\"", "ref = \"v4.1.10\"");
    fs::write(c.config_path(), cfg).unwrap();
    let v3 = c.release(3, &["--update", "upstream"]);
    let drains_before = journal_actions(&c, "state drain");
    let load = Load::start(urls, 2, 5000);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_taken_out(&c, stop.clone());
    let out = run(c.cmd().args(["--json", "roll", "--batch", "2"]));
    stop.store(true, Ordering::SeqCst);
    let max_out = sampler.join().unwrap();
    let (_, failures) = load.stop();
    // Each web node left rotation on both LBs while its files were swapped, never more than 2.
    assert_eq!(journal_actions(&c, "state drain") - drains_before, 3 * 2);
    assert!(
        max_out <= 2,
        "{max_out} servers out of rotation at once with --batch 2"
    );
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o["plan"]["path"], "database", "{o}");
    assert_journal_follows_plan(&o);
    assert!(o["maintenance_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(journal_actions(&c, "upgrade"), 2);
    assert_eq!(
        fs::read_to_string(c.lab().join("moodledata/dbversion"))
            .unwrap()
            .trim(),
        "2022112810"
    );
    assert_on(&c, &["web1", "web2", "web3", "cron1"], &v3);
    assert_eq!(
        purged().lines().count(),
        2,
        "the database path ran purge_command"
    );
    // During maintenance the site answers 503 (Moodle's maintenance page), never a connection error.
    assert!(
        failures.iter().all(|f| f.ends_with(": 503")),
        "{failures:?}"
    );
    assert_eq!(http_get(&format!("{}/", c.env["LAB_LB1"])), Ok(200));

    // 6. Rolling back across a database upgrade is refused (exit 3).
    let (_, err) = exits(c.cmd().args(["rollback", "--to", &v1]), 3);
    assert!(err.contains("cannot downgrade a database"), "{err}");
    assert_eq!(c.installed("web1"), v3);
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario on one lab, in the order a release engineer lives it: split, the order would be lost"
)]
#[test]
fn failures_stop_the_roll_safely_and_resume_finishes_it() {
    let (c, v1, v2) = installed_cluster();

    // apt breaks on web2: the roll stops with web2 out of rotation (maint), the site serving.
    let broken = c.ssh("web2", "mv /usr/bin/dpkg /usr/bin/dpkg.off");
    assert!(broken.status.success());
    let (_, err) = exits(c.cmd().args(["roll", "--batch", "1"]), 1);
    assert!(err.contains("web2") && err.contains("journal"), "{err}");
    let servers = c.lb_servers();
    let web2 = servers.iter().find(|(n, _)| n == "web2").unwrap();
    assert_eq!(web2.1, "MAINT", "{servers:?}");
    assert!(
        servers
            .iter()
            .filter(|(n, _)| n != "web2")
            .all(|(_, s)| s.starts_with("UP")),
        "{servers:?}"
    );
    assert_eq!(c.installed("web1"), v2);
    assert_eq!(c.installed("web3"), v1, "the roll went on after a failure");
    for _ in 0..10 {
        assert_eq!(http_get(&format!("{}/", c.env["LAB_LB1"])), Ok(200));
    }
    let st: serde_json::Value =
        serde_json::from_slice(&run(c.cmd().args(["--json", "status"])).stdout).unwrap();
    assert_eq!(st["roll"]["status"], "failed");
    assert_eq!(st["roll"]["failed_node"], "web2");

    // A plain re-run refuses? No: the servers out of rotation are this tool's own, so --resume goes on.
    c.ssh_ok("web2", "mv /usr/bin/dpkg.off /usr/bin/dpkg");
    run(c.cmd().args(["roll", "--resume", "--batch", "1"]));
    assert_on(&c, &["web1", "web2", "web3", "cron1"], &v2);
    assert_all_up(&c);

    // A server out of rotation that the tool did not take out stops a roll before anything.
    let v3 = c.release(3, &[]);
    let mut s = std::net::TcpStream::connect(&c.env["LAB_LB2_API"]).unwrap();
    std::io::Write::write_all(&mut s, b"set server moodle/web3 state maint\n").unwrap();
    drop(s);
    let out = c.cmd().arg("roll").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not by this tool"));
    let mut s = std::net::TcpStream::connect(&c.env["LAB_LB2_API"]).unwrap();
    std::io::Write::write_all(&mut s, b"set server moodle/web3 state ready\n").unwrap();
    drop(s);

    // A second roll while one holds the cluster lock: refused (exit 3) and says who holds it.
    c.ssh_ok("web1", "mkdir -p /var/lib/moodle-release/roll.lock && echo 'ops@elsewhere pid 42' > /var/lib/moodle-release/roll.lock/owner");
    let (_, err) = exits(c.cmd().arg("roll"), 3);
    assert!(err.contains("ops@elsewhere"), "{err}");
    assert_eq!(c.installed("web1"), v2);
    // Another apt on web1 (unattended-upgrades at 7 a.m.) holds the lists lock for 3 s, dpkg's
    // for 6 s and the archives' for 8 s: the install waits for them instead of failing the node.
    c.ssh_ok(
        "web1",
        "(python3 -c \"import fcntl,time\na=open('/var/lib/apt/lists/lock','w'); fcntl.lockf(a,fcntl.LOCK_EX)\nd=open('/var/lib/dpkg/lock-frontend','w'); fcntl.lockf(d,fcntl.LOCK_EX)\nc=open('/var/cache/apt/archives/lock','w'); fcntl.lockf(c,fcntl.LOCK_EX)\nprint('held',flush=True)\ntime.sleep(3); a.close(); time.sleep(3); d.close(); time.sleep(2); print('released',flush=True)\" >/tmp/apt-hold.out 2>&1 &) ; \
         for i in $(seq 50); do grep -q held /tmp/apt-hold.out && exit 0; sleep 0.1; done; cat /tmp/apt-hold.out; exit 1",
    );
    let out = run(c.cmd().args(["--json", "roll", "--break-lock"]));
    assert_eq!(c.installed("web1"), v3);
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let journal = fs::read_to_string(o["journal"].as_str().unwrap()).unwrap();
    let waited = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["action"] == "install" && v["node"] == "web1")
        .and_then(|v| v["duration_ms"].as_u64());
    assert!(waited >= Some(5000), "web1's install took {waited:?} ms");
    // It said so while it waited, on screen and in the journal, naming each lock and who held it.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web1: waiting up to") && err.contains("It is held by process"),
        "{err}"
    );
    let notes: Vec<String> = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["action"] == "apt lock" && v["node"] == "web1" && v["result"] == "waiting")
        .map(|v| v["detail"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("/var/lib/apt/lists/lock"))
            && notes
                .iter()
                .any(|n| n.contains("/var/lib/dpkg/lock") || n.contains("archives/lock")),
        "{notes:?}"
    );
    let held = c.ssh("web1", "cat /tmp/apt-hold.out");
    assert_eq!(String::from_utf8_lossy(&held.stdout), "held\nreleased\n");

    // An unknown host key: refused before anything, never accepted.
    let cfg_path = c.config_path();
    let cfg = fs::read_to_string(&cfg_path).unwrap();
    fs::write(c.tmp.path().join("empty_known_hosts"), "").unwrap();
    let bad = cfg.replace(
        &format!(
            "known_hosts = \"{}\"",
            c.lab().join("known_hosts").display()
        ),
        &format!(
            "known_hosts = \"{}\"",
            c.tmp.path().join("empty_known_hosts").display()
        ),
    );
    assert_ne!(bad, cfg);
    fs::write(&cfg_path, &bad).unwrap();
    let (_, err) = exits(c.cmd().args(["roll", "--plan"]), 1);
    assert!(err.contains("host key"), "{err}");

    // An unreachable LB: refused before anything.
    let bad = cfg.replace(
        &format!("socket = \"tcp:{}\"", c.env["LAB_LB2_API"]),
        "socket = \"tcp:127.0.0.1:1\"",
    );
    assert_ne!(bad, cfg);
    fs::write(&cfg_path, &bad).unwrap();
    let (_, err) = exits(c.cmd().arg("roll"), 1);
    assert!(
        err.contains("lb2") && err.contains("before changing anything"),
        "{err}"
    );
    fs::write(&cfg_path, &cfg).unwrap();
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario on one lab, in the order a release engineer lives it: split, the order would be lost"
)]
#[test]
fn ctrl_c_stops_between_batches_and_a_failing_health_check_keeps_the_node_out() {
    let (c, v1, v2) = installed_cluster();

    // Ctrl-C once web1 is drained, as its install starts: the batch finishes (the install in
    // flight is not cut), the next does not start, exit 130.
    let child = roll_until(&c, &["roll", "--batch", "1"], "web1 drained", |l| {
        l.contains("\"action\":\"drained web1\",\"result\":\"ok\"")
    });
    let (status, err) = interrupt(child);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("--resume"),
        "{err}"
    );
    assert_eq!(c.installed("web1"), v2);
    assert_eq!(c.installed("web3"), v1);
    assert!(
        c.lb_servers().iter().all(|(_, s)| s.starts_with("UP")),
        "a node was left out: {:?}",
        c.lb_servers()
    );
    run(c.cmd().args(["roll", "--resume", "--batch", "1"]));
    assert_on(&c, &["web1", "web2", "web3", "cron1"], &v2);

    // web3's health check fails after the install: it stays out (maint), the roll stops (exit 1).
    let v3 = c.release(3, &[]);
    let cfg = fs::read_to_string(c.config_path())
        .unwrap()
        .replace("health_timeout = \"30s\"", "health_timeout = \"3s\"");
    fs::write(c.config_path(), cfg).unwrap();
    c.ssh_ok(
        "web3",
        "sed -i 's#/srv/moodledata#/nonexistent#' /etc/moodle-sample/config.php",
    );
    // While the tool waits for web3, lb1 is reloaded (runtime states lost): it notices and sets
    // web3's state again.
    let child = roll_until(&c, &["roll", "--batch", "1"], "the install on web3", |l| {
        l.contains("\"node\":\"web3\"") && l.contains("\"action\":\"install\"")
    });
    let lab = c.lab();
    let pid = fs::read_to_string(lab.join("lb1.pid"))
        .unwrap()
        .trim()
        .to_string();
    run(Command::new("haproxy")
        .arg("-f")
        .arg(lab.join("lb1.cfg"))
        .arg("-D")
        .arg("-sf")
        .arg(&pid));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("web3") && err.contains("not healthy"), "{err}");
    assert!(
        err.contains("lb1 was reloaded"),
        "the reload went unnoticed: {err}"
    );
    let mut s = std::os::unix::net::UnixStream::connect(lab.join("lb1.sock")).unwrap();
    std::io::Write::write_all(&mut s, b"show stat moodle 4 -1\n").unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text).unwrap();
    let web3 = text
        .lines()
        .find(|l| l.starts_with("moodle,web3,"))
        .unwrap();
    assert_eq!(web3.split(',').nth(17), Some("MAINT"), "{web3}");
    let servers = c.lb_servers();
    assert_eq!(
        servers.iter().find(|(n, _)| n == "web3").unwrap().1,
        "MAINT",
        "{servers:?}"
    );
    assert_eq!(c.installed("web1"), v3);
    assert_eq!(c.installed("web2"), v3);
    for _ in 0..10 {
        assert_eq!(http_get(&format!("{}/", c.env["LAB_LB2"])), Ok(200));
    }

    // From another machine (a CI job's fresh checkout: no state folder), status shows the
    // stopped roll and a re-run knows web3 is its own, from the copy on the lock node.
    fs::remove_file(c.lab().join("state/state.json")).unwrap();
    let st: serde_json::Value =
        serde_json::from_str(&stdout(c.cmd().args(["--json", "status"]))).unwrap();
    assert_eq!(st["roll"]["status"], "failed", "{st}");
    assert_eq!(st["roll"]["failed_node"], "web3", "{st}");
    assert_eq!(st["roll"]["target"], v3.as_str(), "{st}");

    // A re-run while web3 is still broken stops (exit 1) and leaves it out, saying why.
    let (_, err) = exits(c.cmd().args(["roll", "--resume", "--batch", "1"]), 1);
    assert!(
        err.contains("web3 is on 4.1.9+3-1 but not healthy (")
            && err.contains("answered 503); it stays out of rotation"),
        "{err}"
    );
    assert_eq!(
        c.lb_servers().iter().find(|(n, _)| n == "web3").unwrap().1,
        "MAINT"
    );
    // Fixed, and php-fpm reloaded (its OPcache does not look at files again,
    // validate_timestamps=0, as in production), it is put back.
    c.ssh_ok(
        "web3",
        &format!(
            "sed -i 's#/nonexistent#/srv/moodledata#' /etc/moodle-sample/config.php && {}",
            c.lab().join("reload-php").display()
        ),
    );
    let out = run(c.cmd().args(["roll", "--resume", "--batch", "1"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("web3: on 4.1.9+3-1 and healthy, left out of rotation by an earlier run: putting it back"), "{err}");

    // The lab's Moodle redirects (303) a Host that is not its wwwroot's, as Moodle does: the
    // health check sends none by default (as HAProxy's does), and a wrong `health_host` is
    // named in the error; the right one works.
    assert_all_up(&c);
    let cfg = fs::read_to_string(c.config_path()).unwrap();
    let with_host = |h: &str| {
        cfg.replace(
            "health_timeout = \"3s\"",
            &format!("health_timeout = \"3s\"\nhealth_host = \"{h}\""),
        )
    };
    fs::write(c.config_path(), with_host("web1.internal")).unwrap();
    let v4 = c.release(4, &[]);
    let (_, err) = exits(c.cmd().args(["roll", "--batch", "1"]), 1);
    assert!(
        err.contains("answered 303, a redirect") && err.contains("health_host"),
        "{err}"
    );
    fs::write(c.config_path(), with_host("moodle.lab")).unwrap();
    run(c.cmd().args(["roll", "--resume", "--batch", "1"]));
    assert_on(&c, &["web1", "web2", "web3", "cron1"], &v4);
    assert_all_up(&c);
}

/// Every step the plan printed (`--json`'s `plan.steps`) is in the journal, in the plan's
/// order, under the same action and node (once per LB for the steps done on every LB).
fn assert_journal_follows_plan(o: &serde_json::Value) {
    let steps = o["plan"]["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{o}");
    let timeline = o["timeline"].as_array().unwrap();
    let mut at = 0;
    for s in steps {
        let found = timeline[at..].iter().position(|e| {
            e["action"] == s["action"] && e["node"] == s["node"] && e["result"] != "failed"
        });
        let Some(i) = found else {
            panic!("planned {s} not in the journal after entry {at}: {timeline:#?}");
        };
        at += i + 1;
    }
}

/// `--resume` finishes the stopped roll to its own target, never the repository's newest: with
/// four versions published, a roll to v2 stopped by apt on web3 is resumed to v2; another
/// version, the other command or nothing to resume are refused (exit 2). The same for a
/// rollback.
#[test]
fn resume_finishes_the_stopped_roll_to_its_own_target() {
    let (c, v1, v2) = installed_cluster();
    let all = ["web1", "web2", "web3", "cron1"];
    let v3 = c.release(3, &[]);
    let v4 = c.release(4, &[]);

    // Nothing stopped: --resume says so and starts nothing.
    let (_, err) = exits(c.cmd().args(["roll", "--resume"]), 2);
    assert!(
        err.contains("no stopped roll to resume") && err.contains("is done"),
        "{err}"
    );
    assert_on(&c, &all, &v1);

    // A roll to v2 stops on web3's apt: web3 out of rotation.
    c.ssh_ok("web3", "mv /usr/bin/dpkg /usr/bin/dpkg.off");
    let (_, err) = exits(c.cmd().args(["roll", "--batch", "2", "--version", &v2]), 1);
    assert!(
        err.contains("web3") && err.contains("roll --resume"),
        "{err}"
    );
    assert_on(&c, &["web1", "web2"], &v2);
    assert_on(&c, &["web3", "cron1"], &v1);
    c.ssh_ok("web3", "mv /usr/bin/dpkg.off /usr/bin/dpkg");

    // Another version, or the other command: refused before anything, naming both.
    let (_, err) = exits(c.cmd().args(["roll", "--resume", "--version", &v4]), 2);
    assert!(err.contains(&v2) && err.contains(&v4), "{err}");
    let (_, err) = exits(c.cmd().args(["rollback", "--resume"]), 2);
    assert!(err.contains("`moodle-release roll --resume`"), "{err}");
    assert_eq!(c.installed("web3"), v1);

    // The plan says the target and why, in text and JSON.
    let plan = stdout(c.cmd().args(["roll", "--plan", "--resume", "--batch", "2"]));
    assert!(
        plan.contains(&format!("roll to {v2}:"))
            && plan.contains(&format!("--resume: the roll to {v2} that failed on web3")),
        "{plan}"
    );
    let p: serde_json::Value = serde_json::from_str(&stdout(
        c.cmd().args(["--json", "roll", "--plan", "--resume"]),
    ))
    .unwrap();
    assert_eq!(p["plan"]["target"], v2.as_str(), "{p}");

    // From a fresh checkout (no local state): the lock node's copy gives the target.
    fs::remove_file(c.lab().join("state/state.json")).unwrap();
    let out = run(c.cmd().args(["--json", "roll", "--resume", "--batch", "2"]));
    assert_journal_follows_plan(&serde_json::from_slice(&out.stdout).unwrap());
    assert_on(&c, &all, &v2);
    assert_all_up(&c);
    let (_, err) = exits(c.cmd().args(["roll", "--resume"]), 2);
    assert!(err.contains(&format!("(to {v2}) is done")), "{err}");

    // A rollback to v1 stops on web1's apt; resumed, it goes back to v1, not to v3 or v4.
    c.ssh_ok("web1", "mv /usr/bin/dpkg /usr/bin/dpkg.off");
    let (_, err) = exits(c.cmd().args(["rollback", "--batch", "1"]), 1);
    assert!(err.contains("rollback --resume"), "{err}");
    c.ssh_ok("web1", "mv /usr/bin/dpkg.off /usr/bin/dpkg");
    let (_, err) = exits(c.cmd().args(["roll", "--resume"]), 2);
    assert!(err.contains("`moodle-release rollback --resume`"), "{err}");
    let (_, err) = exits(c.cmd().args(["rollback", "--resume", "--to", &v3]), 2);
    assert!(err.contains(&v1) && err.contains(&v3), "{err}");
    run(c.cmd().args(["rollback", "--resume", "--batch", "1"]));
    assert_on(&c, &all, &v1);
    assert_all_up(&c);
}

/// Requests that do not end (an upload whose body never comes: HAProxy has handed it to a
/// server, so the server's `scur` stays 1) on every web server of LB 2.
fn hold_sessions(c: &Cluster) -> Vec<std::net::TcpStream> {
    let addr = c.env["LAB_LB2"].trim_start_matches("http://").to_string();
    let held: Vec<std::net::TcpStream> = (0..6)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            std::io::Write::write_all(
                &mut s,
                b"POST /index.php HTTP/1.1\r\nHost: lab\r\nContent-Length: 100000\r\n\r\npart",
            )
            .unwrap();
            // Round robin: one after the other, so each server gets its share.
            std::thread::sleep(Duration::from_millis(50));
            s
        })
        .collect();
    let busy = |text: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter(|l| l.split(',').nth(4).is_some_and(|scur| scur != "0"))
            .count()
    };
    for _ in 0..50 {
        let mut s = std::net::TcpStream::connect(&c.env["LAB_LB2_API"]).unwrap();
        std::io::Write::write_all(&mut s, b"show stat moodle 4 -1\n").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).unwrap();
        if busy(&text) >= 3 {
            return held;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the held requests did not reach every web server");
}

/// Sessions that outlast `drain_timeout`: the roll stops with the nodes back in rotation and
/// says so; with `--force-drain` they go to maint and the roll finishes.
#[test]
fn sessions_that_outlast_the_drain_timeout_stop_the_roll_or_force_drain_goes_on() {
    let (c, v1, v2) = installed_cluster();
    let cfg = fs::read_to_string(c.config_path())
        .unwrap()
        .replace("drain_timeout = \"20s\"", "drain_timeout = \"1s\"");
    fs::write(c.config_path(), cfg).unwrap();

    let held = hold_sessions(&c);
    let (_, err) = exits(c.cmd().args(["roll", "--batch", "1"]), 1);
    assert!(
        err.contains("sessions did not end within drain_timeout 1s")
            && err.contains("back in rotation")
            && err.contains("--force-drain"),
        "{err}"
    );
    assert_on(&c, &["web1", "web2", "web3"], &v1);
    assert_all_up(&c);

    let out = c
        .cmd()
        .args(["roll", "--resume", "--batch", "1", "--force-drain"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(held);
    assert_on(&c, &["web1", "web2", "web3", "cron1"], &v2);
    assert!(journal_actions_result(&c, "drain timeout", "warning") >= 1);
    assert_all_up(&c);
}

/// `--auto-rollback`: when a node fails, the nodes this roll already upgraded go back to the
/// version they ran; the failed node stays out of rotation with the reason.
#[test]
fn auto_rollback_puts_the_upgraded_nodes_back() {
    let (c, v1, _v2) = installed_cluster();
    c.ssh_ok("web2", "mv /usr/bin/dpkg /usr/bin/dpkg.off");
    let (_, err) = exits(c.cmd().args(["roll", "--batch", "1", "--auto-rollback"]), 1);
    assert!(
        err.contains("--auto-rollback: back on their previous version: web1"),
        "{err}"
    );
    assert_on(&c, &["web1", "web3", "cron1"], &v1);
    let servers = c.lb_servers();
    assert!(
        servers.iter().all(|(n, s)| if n == "web2" {
            s == "MAINT"
        } else {
            s.starts_with("UP")
        }),
        "{servers:?}"
    );
    assert_eq!(http_get(&format!("{}/", c.env["LAB_LB1"])), Ok(200));
}

/// A batch as large as the pool would take every server out: refused before any change, by
/// `--plan` too (exit 3, refused for safety).
#[test]
fn a_batch_that_would_empty_the_pool_or_a_damaged_state_is_refused() {
    let (c, v1, _v2) = installed_cluster();
    let drains = journal_actions(&c, "state drain");
    for args in [
        &["roll", "--plan", "--batch", "3"][..],
        &["roll", "--batch", "3"],
    ] {
        let out = c.cmd().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.contains("--batch 3 would take all 3 web servers out of rotation at once: use --batch 2 or less"),
            "{err}"
        );
    }
    assert_on(&c, &["web1", "web2", "web3"], &v1);
    assert_all_up(&c);
    assert_eq!(journal_actions(&c, "state drain"), drains);

    // A damaged state.json is never read as "no roll": roll refuses, status says so.
    let state = c.lab().join("state/state.json");
    let good = fs::read(&state).unwrap();
    fs::write(&state, &good[..good.len() / 2]).unwrap();
    let (_, err) = exits(c.cmd().args(["roll", "--plan"]), 1);
    assert!(err.contains("state.json: damaged"), "{err}");
    let st = stdout(c.cmd().arg("status"));
    assert!(st.contains("last roll: unknown:"), "{st}");
    fs::write(&state, good).unwrap();
    run(c.cmd().args(["roll", "--plan"]));

    // A config.php copied from a plain install, which requires lib/setup.php from its own
    // folder: refused before anything, naming the node and the line to delete (a commented-out
    // one is fine).
    let cfg_php = "/etc/moodle-sample/config.php";
    c.ssh_ok(
        "web1",
        &format!("echo \"// require_once(__DIR__ . '/lib/setup.php');\" >> {cfg_php}"),
    );
    c.ssh_ok("web3", &format!("cp {cfg_php} /tmp/config.php && echo \"require_once(__DIR__ . '/lib/setup.php');\" >> {cfg_php}"));
    let (_, err) = exits(c.cmd().args(["roll", "--plan"]), 1);
    assert!(
        err.contains(&format!(
            "before changing anything: web3: {cfg_php} requires lib/setup.php from its own folder"
        )),
        "{err}"
    );
    c.ssh_ok("web3", &format!("cp /tmp/config.php {cfg_php}"));
    // A node without the package's apt source: refused before anything, naming the node (apt
    // would refresh nothing and fail once the node is drained).
    let list = "/etc/apt/sources.list.d/moodle-sample.list";
    c.ssh_ok("web2", &format!("mv {list} /tmp/moodle-sample.list"));
    let (_, err) = exits(c.cmd().args(["roll", "--plan"]), 1);
    assert!(
        err.contains("before changing anything: web2: no apt source for moodle-sample"),
        "{err}"
    );
    // The same source in deb822 form (`.sources`) is used as it is.
    let deb822 = "line=$(cat /tmp/moodle-sample.list); key=${line#*signed-by=}; key=${key%%]*}; \
        set -- ${line#*]}; \
        printf 'Types: deb\\nURIs: %s\\nSuites: %s\\nComponents: %s\\nSigned-By: %s\\n' $1 $2 $3 $key \
        > /etc/apt/sources.list.d/moodle-sample.sources && cat /etc/apt/sources.list.d/moodle-sample.sources";
    c.ssh_ok("web2", deb822);
    let v3 = c.release(3, &[]);
    run(c.cmd().args(["roll", "--batch", "2"]));
    assert_on(&c, &["web1", "web2", "web3"], &v3);
    assert_all_up(&c);
}

/// A deploy user that is not root: every command goes through `sudo -n`; a node where sudo
/// asks for a password is refused at connection, in one clear error, before any change.
#[test]
fn a_deploy_user_with_passwordless_sudo_rolls_and_one_without_is_refused() {
    let (c, v1, v2) = installed_cluster();
    for n in ["web1", "web2", "web3", "cron1"] {
        let o = c.ssh(
            n,
            "useradd -m -p '*' -s /bin/bash deploy && printf '# lab node\\n' >/home/deploy/.bashrc && echo 'deploy ALL=(ALL) NOPASSWD: ALL' >/etc/sudoers.d/deploy && chmod 440 /etc/sudoers.d/deploy",
        );
        assert!(
            o.status.success(),
            "{n}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let mut cfg = fs::read_to_string(c.config_path()).unwrap();
    for n in ["web1", "web2", "web3", "cron1"] {
        cfg = cfg.replace(&format!("ssh = \"{n}\""), &format!("ssh = \"deploy@{n}\""));
    }
    fs::write(c.config_path(), cfg).unwrap();
    run(c.cmd().args(["roll", "--batch", "1"]));
    assert_on(&c, &["web1", "web2", "web3", "cron1"], &v2);

    // web3's sudo now wants a password: refused before anything, saying so.
    c.ssh_ok("web3", "rm /etc/sudoers.d/deploy");
    let out = c
        .cmd()
        .args(["rollback", "--to", &v1, "--batch", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("web3")
            && err.contains("`sudo -n` fails")
            && err.contains("passwordless sudo"),
        "{err}"
    );
    assert_on(&c, &["web1", "web2", "web3"], &v2);
}

/// A server with an agent-check (whose "ready" can cancel a drain set through the Runtime API):
/// the plan warns about it, and the roll still drains, upgrades and brings it back.
#[test]
fn an_agent_check_is_warned_about_and_the_roll_still_finishes() {
    let (c, _v1, v2) = installed_cluster();
    // An agent that always answers "ready".
    let agent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = agent.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    agent.set_nonblocking(true).unwrap();
    let thread = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        while !stopped.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(300) {
            match agent.accept() {
                Ok((mut s, _)) => {
                    let _ = std::io::Write::write_all(&mut s, b"ready\n");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let cfg_path = c.lab().join("lb1.cfg");
    let cfg = fs::read_to_string(&cfg_path).unwrap();
    let line = cfg
        .lines()
        .find(|l| l.trim_start().starts_with("server web1 "))
        .unwrap()
        .to_string();
    let cfg = cfg.replace(
        &line,
        &format!("{line} agent-check agent-port {port} agent-inter 200ms"),
    );
    fs::write(&cfg_path, cfg).unwrap();
    let pid = fs::read_to_string(c.lab().join("lb1.pid")).unwrap();
    run(Command::new("kill").arg(pid.trim()));
    std::thread::sleep(Duration::from_millis(300));
    run(Command::new("haproxy").arg("-f").arg(&cfg_path).arg("-D"));

    let plan = run(c.cmd().args(["roll", "--plan", "--batch", "1"]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );
    assert!(
        text.contains("lb1: web1 has an agent-check, which can cancel a drain"),
        "{text}"
    );
    assert!(
        text.contains("then purge_command on web1 (Moodle's caches)"),
        "{text}"
    );
    // A purge_command that fails after every node is on the target: a warning, not a failure
    // (the new code serves; its caches are stale until the purge is run by hand).
    let moodledata = c.lab().join("moodledata");
    fs::write(moodledata.join("purge-fails"), "").unwrap();
    let out = run(c.cmd().args(["roll", "--batch", "1"]));
    stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();
    assert_on(&c, &["web1", "web2", "web3", "cron1"], &v2);
    assert_all_up(&c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web1: purge_command failed: Cache store redis is not ready")
            && err.contains("caches are stale until `php /srv/"),
        "{err}"
    );
    assert_eq!(journal_actions_result(&c, "purge caches", "failed"), 1);
    assert!(!moodledata.join("purged").exists());
}

/// A database upgrade whose `upgrade_command` fails leaves the site in maintenance. Once the
/// cause is fixed, `roll --resume` has no node left to install, yet runs the upgrade and ends
/// maintenance. A forced rollback across the upgrade runs the old code's upgrade, which (like
/// Moodle's) refuses a newer database: the re-run finishes once the database is restored.
#[test]
fn a_failed_database_upgrade_is_finished_by_resume_and_a_forced_rollback_needs_the_old_database() {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up(3);
    let all = ["web1", "web2", "web3", "cron1"];
    let v1 = c.release(1, &[]);
    run(c.cmd().arg("roll"));
    let cfg = fs::read_to_string(c.config_path())
        .unwrap()
        .replace("ref = \"v4.1.9\"", "ref = \"v4.1.10\"");
    fs::write(c.config_path(), cfg).unwrap();
    let v2 = c.release(2, &["--update", "upstream"]);
    let moodledata = c.lab().join("moodledata");
    let dbversion = || {
        fs::read_to_string(moodledata.join("dbversion"))
            .unwrap()
            .trim()
            .to_string()
    };
    let site = format!("{}/", c.env["LAB_LB1"]);

    // 1. The upgrade fails after every node got the code: exit 1, the site in maintenance.
    // --auto-rollback cannot apply (the database cannot go back): said up front, and the
    // warning is not lost when the roll fails.
    fs::write(moodledata.join("upgrade-fails"), "").unwrap();
    let (out, err) = exits(c.cmd().args(["--json", "roll", "--auto-rollback"]), 1);
    // For CI: what failed, the exit status and the journal to keep, as JSON.
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&o["ok"], &o["exit_code"]),
        (&false.into(), &1.into()),
        "{o}"
    );
    let journal = fs::read_to_string(o["journal"].as_str().unwrap()).unwrap();
    assert!(journal.contains("upgrade_command failed"), "{journal}");
    assert!(
        err.contains("upgrade_command failed") && err.contains("--resume"),
        "{err}"
    );
    assert!(
        err.contains("--auto-rollback does not apply to the database path"),
        "{err}"
    );
    assert_on(&c, &all, &v2);
    assert_eq!(dbversion(), "2022112809");
    assert_eq!(http_get(&site), Ok(503));
    let st = stdout(c.cmd().arg("status"));
    assert!(st.contains("database upgrade pending"), "{st}");

    // 1b. A re-run that fails before its own maintenance step does not claim that nothing is
    // changed: the site is still in maintenance from the first run.
    let upgrades = journal_actions(&c, "upgrade");
    let cfg = fs::read_to_string(c.config_path()).unwrap();
    let on = cfg
        .lines()
        .find(|l| l.starts_with("maintenance_on = "))
        .unwrap();
    // A typo in the command: the shell's own "not found" is what the engineer reads.
    fs::write(
        c.config_path(),
        cfg.replace(on, &on.replacen("php ", "phpp ", 1)),
    )
    .unwrap();
    let (_, err) = exits(c.cmd().args(["roll", "--resume"]), 1);
    assert!(
        err.contains("maintenance_on failed")
            && err.contains("phpp: not found")
            && err.contains("still in maintenance mode from the earlier roll"),
        "{err}"
    );
    assert_eq!(journal_actions(&c, "upgrade"), upgrades);
    assert_eq!(http_get(&site), Ok(503));
    fs::write(c.config_path(), &cfg).unwrap();

    // 2. Fixed: --resume runs the upgrade once more and ends maintenance.
    fs::remove_file(moodledata.join("upgrade-fails")).unwrap();
    let out = run(c.cmd().args(["--json", "roll", "--resume"]));
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o["plan"]["path"], "database", "{o}");
    assert_journal_follows_plan(&o);
    assert!(
        o["plan"]["why"]
            .as_str()
            .unwrap()
            .contains("stopped before its database upgrade finished"),
        "{o}"
    );
    assert_eq!(journal_actions(&c, "upgrade"), upgrades + 1);
    assert_eq!(dbversion(), "2022112810");
    assert_eq!(http_get(&site), Ok(200));
    assert_all_up(&c);
    let st = stdout(c.cmd().arg("status"));
    assert!(!st.contains("database upgrade pending"), "{st}");

    // 3. A forced rollback to v1 with the upgraded database: the old code's upgrade refuses, the
    // site stays in maintenance on v1's code.
    let (_, err) = exits(c.cmd().args(["rollback", "--to", &v1, "--force"]), 1);
    assert!(err.contains("Cannot downgrade"), "{err}");
    assert_on(&c, &all, &v1);
    assert_eq!(http_get(&site), Ok(503));

    // 4. The database restored from before the upgrade: rolling back again finishes. Every node
    // already runs v1, so only the pending upgrade is left: no downgrade, no --force needed.
    fs::write(moodledata.join("dbversion"), "2022112809\n").unwrap();
    run(c.cmd().args(["rollback", "--to", &v1]));
    assert_eq!(journal_actions(&c, "upgrade"), upgrades + 2);
    assert_eq!(dbversion(), "2022112809");
    assert_eq!(http_get(&site), Ok(200));
    assert_all_up(&c);
    assert_on(&c, &all, &v1);
}

/// SIGINT during the database path (here a first install) does not stop it halfway: stopping
/// would leave the site in maintenance, or its code ahead of its database. It runs to its end and
/// says so.
#[test]
fn ctrl_c_during_the_database_path_finishes_it() {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up(2);
    let v1 = c.release(1, &[]);
    let child = roll_until(&c, &["roll"], "maintenance mode", |l| {
        l.contains("\"action\":\"maintenance on\"")
    });
    let (status, err) = interrupt(child);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("it was finished rather than leave the site in maintenance"),
        "{err}"
    );
    assert_on(&c, &["web1", "web2", "cron1"], &v1);
    assert_eq!(journal_actions(&c, "upgrade"), 1);
    assert_eq!(journal_actions(&c, "maintenance off"), 1);
    assert_eq!(http_get(&format!("{}/", c.env["LAB_LB1"])), Ok(200));
}

/// Polls `done` every 200 ms for up to 60 s: whether it came true.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..300 {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// `kill -9` to the process group of a roll started by [`roll_until`] (a CI job cancelled, a
/// laptop's network gone: the tool is gone with no chance to clean up).
fn kill_hard(mut child: std::process::Child) {
    run(Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]));
    let _ = child.wait();
}

/// A roll killed outright while a command runs on a node: the command still runs to its end,
/// no half-done database upgrade, no half-configured package; a re-run (after --break-lock, the
/// dead roll's lock being left) finishes the roll. While the roll runs, its lock is refreshed,
/// also during a long command.
#[expect(
    clippy::too_many_lines,
    reason = "one scenario on one lab, in the order a release engineer lives it: split, the order would be lost"
)]
#[test]
fn a_killed_roll_does_not_cut_the_command_in_flight() {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up(2);
    let moodledata = c.lab().join("moodledata");
    // The upgrade command is a site's wrapper that says what it does as it goes, as Moodle's
    // upgrade does: a command that writes to a dead connection gets SIGPIPE. It takes 36 s,
    // longer than the lock's heartbeat.
    let cfg = fs::read_to_string(c.config_path()).unwrap().replace(
        "upgrade_command = \"php",
        "upgrade_command = \"touch /srv/moodledata/upgrade-started; for i in $(seq 180); do echo pre-upgrade step $i; sleep 0.2; done; php",
    );
    fs::write(c.config_path(), cfg).unwrap();
    let v1 = c.release(1, &[]);
    let child = roll_until(&c, &["roll"], "the upgrade", |l| {
        l.contains("\"action\":\"maintenance on\"")
    });
    assert!(
        eventually(|| moodledata.join("upgrade-started").exists()),
        "the upgrade never started"
    );
    // The lock's `alive` was touched again well after the lock was taken, while the upgrade ran.
    let refreshed = || {
        let out = c.ssh(
            "web1",
            "cd /var/lib/moodle-release/roll.lock && echo $(( $(stat -c %Y alive) - $(stat -c %Y owner) ))",
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<i64>()
            .unwrap_or(0)
            >= 20
    };
    assert!(eventually(refreshed), "the lock was not refreshed");
    kill_hard(child);
    // Nothing speaks to the nodes any more: the upgrade goes on alone.
    assert!(
        eventually(|| fs::read_to_string(moodledata.join("dbversion")).is_ok()),
        "the upgrade was cut when the roll was killed"
    );
    // The dead roll's lock is left: status says so, a re-run is refused and says how to go on;
    // with
    // --break-lock it finishes the database path (the site is still in maintenance).
    let text = stdout(c.cmd().arg("status"));
    assert!(
        text.contains("cluster lock on web1: ") && text.contains("the roll was killed"),
        "{text}"
    );
    let st: serde_json::Value =
        serde_json::from_str(&stdout(c.cmd().args(["--json", "status"]))).unwrap();
    assert_eq!(st["lock"]["dead"], true, "{st}");
    let (_, err) = exits(c.cmd().args(["roll", "--plan"]), 0);
    assert!(
        err.contains("another roll holds the cluster lock on web1")
            && err.contains("this roll would be refused"),
        "{err}"
    );
    let (_, err) = exits(c.cmd().arg("roll"), 3);
    assert!(
        err.contains("no longer runs on this machine: the roll was killed")
            && err.contains("--break-lock"),
        "{err}"
    );
    run(c.cmd().args(["roll", "--break-lock"]));
    assert_on(&c, &["web1", "web2", "cron1"], &v1);
    assert_eq!(http_get(&format!("{}/", c.env["LAB_LB1"])), Ok(200));
    let st: serde_json::Value =
        serde_json::from_str(&stdout(c.cmd().args(["--json", "status"]))).unwrap();
    assert_eq!(st["lock"], serde_json::Value::Null, "{st}");

    // Killed during an install (web1's dpkg runs take 3 s, printing all the while).
    c.ssh_ok(
        "web1",
        "echo 'DPkg::Pre-Invoke { \"touch /tmp/dpkg-slow; for i in $(seq 15); do echo slow dpkg $i; sleep 0.2; done\"; };' >/etc/apt/apt.conf.d/99slow",
    );
    let v2 = c.release(2, &[]);
    let child = roll_until(&c, &["roll", "--batch", "1"], "web1 drained", |l| {
        l.contains("\"action\":\"drained web1\",\"result\":\"ok\"")
    });
    assert!(
        eventually(|| c.ssh("web1", "test -e /tmp/dpkg-slow").status.success()),
        "web1's install never got to dpkg"
    );
    kill_hard(child);
    let want = format!("install ok installed {v2}");
    let mut status = String::new();
    let finished = eventually(|| {
        let out = c.ssh(
            "web1",
            "dpkg-query -W -f='${Status} ${Version}' moodle-sample; pgrep -x apt-get >/dev/null && echo ' (apt-get runs)'",
        );
        status = String::from_utf8_lossy(&out.stdout).into_owned();
        status == want
    });
    assert!(finished, "web1's install did not finish: {status}");
    let audit = c.ssh_ok("web1", "dpkg --audit");
    assert!(audit.stdout.is_empty(), "{audit:?}");
    assert_eq!(c.installed("web2"), v1);
    // web1, on the target, healthy and left drained, is put back first.
    let out = run(c
        .cmd()
        .args(["roll", "--resume", "--batch", "1", "--break-lock"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web1: on ") && err.contains("putting it back"),
        "{err}"
    );
    assert_on(&c, &["web1", "web2", "cron1"], &v2);
    assert_all_up(&c);

    // A live lock on web2, taken by a roll whose config lists web2 first (from a laptop): this
    // roll is refused, --plan says why, --break-lock removes it.
    c.ssh_ok(
        "web2",
        "mkdir -p /var/lib/moodle-release/roll.lock && cd /var/lib/moodle-release/roll.lock && echo 'ops@laptop pid 77 since Mon, 23 Nov 2026 07:00:00 +0000 (target 9)' >owner && touch alive",
    );
    let (_, err) = exits(c.cmd().arg("roll"), 3);
    assert!(
        err.contains("on web2: ops@laptop pid 77") && err.contains("lists web2 first"),
        "{err}"
    );
    let (_, err) = exits(c.cmd().args(["roll", "--plan"]), 0);
    assert!(err.contains("a cluster lock is held on web2"), "{err}");
    let (_, err) = exits(c.cmd().args(["roll", "--break-lock"]), 0);
    assert!(
        err.contains("--break-lock: removing the cluster lock on web2"),
        "{err}"
    );
    assert!(!c
        .ssh("web2", "test -e /var/lib/moodle-release/roll.lock")
        .status
        .success());
}

/// The ssh master processes (`ssh ... -M ...`) of this lab's nodes that are running.
fn masters(c: &Cluster) -> Vec<u32> {
    let config = c.lab().join("ssh_config").display().to_string();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let args = fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = args.split(|b| *b == 0).collect();
            let is_master = args.first().is_some_and(|a| a.ends_with(b"ssh"))
                && args.contains(&&b"-M"[..])
                && args.contains(&config.as_bytes());
            is_master.then_some(pid)
        })
        .collect()
}

/// Masters outlive a run for `[ssh] persist` (300 s by default), so that the next one connects
/// at once; in a CI job (`CI` set) they end with the run, and `persist = "0s"` ends them always.
#[test]
fn ssh_masters_persist_except_in_ci_or_when_told_not_to() {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up(1);
    let end_masters = || {
        for pid in masters(&c) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        assert!(
            eventually(|| masters(&c).is_empty()),
            "masters still up: {:?}",
            masters(&c)
        );
    };
    run(c.cmd().arg("status").env_remove("CI"));
    assert_eq!(masters(&c).len(), 2, "one master per node, web1 and cron1");
    end_masters();
    run(c.cmd().arg("status").env("CI", "true"));
    assert_eq!(masters(&c), Vec::<u32>::new(), "a CI job left masters");
    let cfg = fs::read_to_string(c.config_path()).unwrap();
    assert!(cfg.contains("\n[ssh]\n"), "{cfg}");
    fs::write(
        c.config_path(),
        cfg.replace("\n[ssh]\n", "\n[ssh]\npersist = \"0s\"\n"),
    )
    .unwrap();
    run(c.cmd().arg("status").env_remove("CI"));
    assert_eq!(
        masters(&c),
        Vec::<u32>::new(),
        "persist = \"0s\" left masters"
    );
}

/// An LB whose Runtime API listens on IPv6 (`tcp:[::1]:PORT`): status reads its servers. A real
/// HAProxy, in a network namespace of the test's own (only its loopback), with no node
/// reachable: status still reports each LB's view.
#[test]
fn an_lb_on_ipv6_is_reached() {
    require_root("a network namespace of its own");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(
        d.join("lb.cfg"),
        format!(
            "global\n    stats socket ipv6@[::1]:9999 level admin\n    pidfile {pid}\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\
             backend moodle\n    server web1 127.0.0.1:1 disabled\n",
            pid = d.join("lb.pid").display()
        ),
    )
    .unwrap();
    fs::write(
        d.join("moodle-release.toml"),
        "[site]\npackage = \"moodle-test\"\nmaintainer = \"T <t@example.edu>\"\n\
         description = \"t\"\ninstall_dir = \"/srv/moodle/html\"\n\
         [deploy]\nrepo = \".\"\nbranch = \"deploy\"\n\
         [apt]\nrepo = \"apt\"\n\
         [ssh]\nconfig = \"ssh_config\"\nknown_hosts = \"known_hosts\"\n\
         [roll]\nstate_dir = \"state\"\n\
         [[lb]]\nname = \"lb6\"\nsocket = \"tcp:[::1]:9999\"\nbackend = \"moodle\"\n\
         [[nodes]]\nname = \"web1\"\nssh = \"web1\"\nhttp = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    fs::write(
        d.join("ssh_config"),
        "Host web1\n    HostName 127.0.0.1\n    Port 1\n    BatchMode yes\n",
    )
    .unwrap();
    fs::write(d.join("known_hosts"), "").unwrap();
    let script = format!(
        "set -e; ip link set lo up; haproxy -f lb.cfg -D; \
         {bin} --config moodle-release.toml --no-progress --json status; \
         kill $(cat lb.pid)",
        bin = env!("CARGO_BIN_EXE_moodle-release")
    );
    let out = run(Command::new("timeout")
        .args(["60", "unshare", "-n", "bash", "-c", &script])
        .current_dir(d));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lb = st["nodes"][0]["lbs"]["lb6"].as_str().unwrap_or_default();
    assert!(lb.starts_with("MAINT"), "{st}");
    assert!(
        st["nodes"][0]["error"].is_string(),
        "web1 is unreachable: {st}"
    );
}

/// The last line of the newest journal of the lab, as JSON.
fn last_journal_line(c: &Cluster) -> serde_json::Value {
    let text = fs::read_to_string(c.newest_journal()).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

/// Tried as a new user would: 4 web nodes, `--batch 1`, lb2 killed right after web1 is back in
/// rotation. The roll stops at once (no hang) with exit 1 naming the LB; the site keeps serving
/// through lb1 with no failed request; the journal's last line says at which step, on which
/// node and LB, and why; the state says `failed` (not `running`), and `status` says so; once lb2
/// is back, `--resume` finishes the roll.
#[test]
fn an_lb_killed_mid_roll_stops_it_with_the_journal_and_state_saying_why() {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up(4);
    c.release(1, &[]);
    run(c.cmd().arg("roll"));
    let v2 = c.release(2, &[]);
    let load = Load::start(vec![format!("{}/", c.env["LAB_LB1"])], 2, 5000);
    let child = roll_until(
        &c,
        &["roll", "--batch", "1"],
        "web1 back in rotation on lb2",
        |l| l.contains(r#""node":"web1","lb":"lb2","action":"state ready""#),
    );
    let lb2 = fs::read_to_string(c.lab().join("lb2.pid")).unwrap();
    run(Command::new("kill").args(["-9", lb2.trim()]));
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "the roll hung after lb2 died"
    );
    assert!(
        err.contains("the roll stopped at web2: ")
            && err.contains("lb2: cannot reach the Runtime API"),
        "{err}"
    );
    assert!(err.contains("journal: "), "{err}");
    let (requests, failures) = load.stop();
    assert!(requests > 0);
    assert!(failures.is_empty(), "lb1 kept serving: {failures:?}");

    let last = last_journal_line(&c);
    assert_eq!(last["action"], "stop", "{last}");
    assert_eq!(last["result"], "failed", "{last}");
    assert_eq!(last["node"], "web2", "{last}");
    assert_eq!(last["lb"], "lb2", "{last}");
    let detail = last["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("at ") && detail.contains("cannot reach the Runtime API"),
        "{detail}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(c.lab().join("state/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["status"], "failed", "{state}");
    assert_eq!(state["failed_node"], "web2", "{state}");
    assert!(state["reason"].as_str().unwrap().contains("lb2"), "{state}");
    let st: serde_json::Value =
        serde_json::from_slice(&c.cmd().args(["--json", "status"]).output().unwrap().stdout)
            .unwrap();
    assert_eq!(st["roll"]["status"], "failed", "{st}");
    assert_eq!(c.installed("web1"), v2);

    // lb2 back (a fresh process: every server ready, as its config says): --resume finishes.
    run(Command::new("haproxy")
        .arg("-f")
        .arg(c.lab().join("lb2.cfg"))
        .arg("-D"));
    assert!(eventually(|| c
        .lb_servers()
        .iter()
        .all(|(_, s)| s.starts_with("UP"))));
    run(c.cmd().args(["roll", "--resume", "--batch", "1"]));
    assert_on(&c, &["web1", "web2", "web3", "web4", "cron1"], &v2);
    assert_all_up(&c);
}
