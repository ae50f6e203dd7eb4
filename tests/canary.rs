//! A release safer than its health URL: the canary judged by HAProxy's own counters, the
//! failure budget, freeze windows and notifications, against the real lab (scripts/lab: two
//! HAProxy 2.6, nodes as overlay chroots with sshd and php). Needs root, as tests/roll.rs.

mod common;

use common::*;
use std::fs;

/// Sets `key = value` in the config's `[roll]` table.
fn set_roll(c: &Cluster, line: &str) {
    let path = c.config_path();
    let text = fs::read_to_string(&path).unwrap();
    fs::write(
        &path,
        text.replacen("[roll]\n", &format!("[roll]\n{line}\n"), 1),
    )
    .unwrap();
}

/// Points mod_demo at `git_ref` in the site's config.
fn demo_ref(c: &Cluster, from: &str, to: &str) {
    let path = c.config_path();
    let text = fs::read_to_string(&path).unwrap();
    let old = format!(
        "component = \"mod_demo\"\nurl = \"file://{}\"\nref = \"{from}\"",
        demo_repo(c).display()
    );
    assert!(text.contains(&old), "{text}");
    let new = old.replace(&format!("ref = \"{from}\""), &format!("ref = \"{to}\""));
    fs::write(&path, text.replace(&old, &new)).unwrap();
}

fn demo_repo(c: &Cluster) -> std::path::PathBuf {
    c.tmp.path().join("sample/plugins/mod_demo")
}

/// A branch `broken` of mod_demo from v1 whose view.php answers 500 (a PHP fatal in a page
/// the health URL does not load); its $version is v1's, so the roll is code-only.
fn break_demo(c: &Cluster) {
    let repo = demo_repo(c);
    run(git(&repo).args(["checkout", "-q", "-b", "broken", "v1"]));
    write(
        &repo.join("view.php"),
        "<?php\nhttp_response_code(500);\necho \"PHP Fatal error: Class 'mod_demo\\\\renderer' not found\\n\";\n",
    );
    run(git(&repo).args(["commit", "-qam", "view.php: a fatal error"]));
    run(git(&repo).args(["checkout", "-q", "main"]));
}

fn json(s: impl AsRef<[u8]>) -> serde_json::Value {
    let s = s.as_ref();
    serde_json::from_slice(s).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(s)))
}

/// Load through both LBs on the front page and the demo activity's page.
fn load(c: &Cluster) -> Load {
    let mut urls = Vec::new();
    for lb in ["LAB_LB1", "LAB_LB2"] {
        urls.push(format!("{}/", c.env[lb]));
        urls.push(format!("{}/mod/demo/view.php", c.env[lb]));
    }
    Load::start(urls, 4, 20_000)
}

/// A release whose second page answers 500 while its health URL is fine is caught on the
/// canary under load through both LBs, sent back, and the roll stops (exit 1) with the figures;
/// the users saw only the errors the canary served in its window. A good release passes the
/// canary and finishes; with too little traffic the canary is refused unless `--force`.
#[expect(
    clippy::too_many_lines,
    reason = "one scenario on one lab, in the order a release engineer lives it: split, the order would be lost"
)]
#[test]
fn a_broken_page_is_caught_on_the_canary_and_a_good_release_passes() {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up(3);
    let v1 = c.release(1, &[]);
    run(c.cmd().arg("roll"));
    set_roll(&c, "canary_min_requests = 20");

    // 1. The broken release: the canary fails, early, and goes back to v1.
    break_demo(&c);
    demo_ref(&c, "v1", "broken");
    let v2 = c.release(2, &[]);
    let plan = run(c.cmd().args(["roll", "--plan", "--canary", "30s"]));
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains("batch 1: web1\n")
            && text.contains("web1: canary: watch its 5xx rate on every LB for 30s")
            && text.contains("canary web1: watched 30s under real traffic; fails above 1% 5xx"),
        "{text}"
    );
    let l = load(&c);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (out, err) = exits(c.cmd().args(["--json", "roll", "--canary", "30s"]), 1);
    let (requests, failures) = l.stop();
    let o = json(&out.stdout);
    let v = &o["canary"];
    assert_eq!(v["passed"], false, "{o}");
    assert_eq!(v["node"], "web1");
    let errors = v["errors_5xx"].as_u64().unwrap();
    let served = v["requests"].as_u64().unwrap();
    assert!(served >= 20 && errors > 0 && errors <= served, "{v}");
    assert!(v["rate_5xx"].as_f64().unwrap() > 1.0, "{v}");
    assert_eq!(v["others_5xx"], 0, "{v}");
    // Judged early: as soon as it had served enough requests, not after the 30 s window.
    assert!(v["watched_secs"].as_f64().unwrap() < 15.0, "{v}");
    assert!(
        err.contains("the canary failed: web1:")
            && err.contains("back on its previous version: web1"),
        "{err}"
    );
    // Users saw only the canary's broken page, and about as many errors as its counters say
    // (a few more: requests in flight when the verdict was read).
    assert!(requests > 100, "{requests}");
    assert!(
        failures
            .iter()
            .all(|f| f.ends_with("/mod/demo/view.php: 500")),
        "{failures:?}"
    );
    let seen = failures.len() as u64;
    assert!(
        seen >= errors && seen <= errors + 8,
        "users saw {seen}, the canary's counters {errors}"
    );
    for n in ["web1", "web2", "web3", "cron1"] {
        assert_eq!(c.installed(n), v1, "{n}");
    }
    assert!(
        c.lb_servers().iter().all(|(_, s)| s == "UP"),
        "{:?}",
        c.lb_servers()
    );
    // The journal has the verdict with its figures.
    let journal = fs::read_to_string(o["journal"].as_str().unwrap()).unwrap();
    let line = journal
        .lines()
        .map(json)
        .find(|e| e["action"] == "canary")
        .unwrap();
    assert_eq!(line["result"], "failed");
    assert_eq!(json(line["detail"].as_str().unwrap())["errors_5xx"], errors);

    // 2. A good release (build 3, the page fixed) passes the canary and finishes, batch 2.
    demo_ref(&c, "broken", "v1");
    let v3 = c.release(3, &[]);
    assert_ne!(v2, v3);
    let l = load(&c);
    let (out, _) = exits(
        c.cmd()
            .args(["--json", "roll", "--canary", "6s", "--batch", "2"]),
        0,
    );
    let (_, failures) = l.stop();
    let o = json(&out.stdout);
    assert!(failures.is_empty(), "{failures:?}\n{:#}", o["timeline"]);
    assert_eq!(o["canary"]["passed"], true, "{o}");
    assert!(o["canary"]["requests"].as_u64().unwrap() >= 20, "{o}");
    assert_eq!(
        o["plan"]["batches"],
        serde_json::json!([["web1"], ["web2", "web3"]])
    );
    for n in ["web1", "web2", "web3", "cron1"] {
        assert_eq!(c.installed(n), v3, "{n}");
    }

    // 3. No traffic: not enough to judge, the canary goes back; --force accepts it.
    let v4 = c.release(4, &[]);
    let (_, err) = exits(c.cmd().args(["roll", "--canary", "2s"]), 1);
    assert!(
        err.contains(
            "not enough traffic to judge: 0 requests in 2s, fewer than canary_min_requests = 20"
        ),
        "{err}"
    );
    assert_eq!(c.installed("web1"), v3);
    let (out, err) = exits(
        c.cmd()
            .args(["--json", "roll", "--canary", "2s", "--force"]),
        0,
    );
    assert!(
        err.contains("--force: accepted with too little traffic"),
        "{err}"
    );
    assert_eq!(json(&out.stdout)["canary"]["forced"], true);
    for n in ["web1", "web2", "web3", "cron1"] {
        assert_eq!(c.installed(n), v4, "{n}");
    }
}

/// A webhook receiver on loopback: every POST's path and JSON body, until dropped (bounded:
/// 5 minutes, 100 requests).
struct Receiver {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        use std::io::{BufRead, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            let mut n = 0;
            while !s.load(std::sync::atomic::Ordering::SeqCst)
                && t0.elapsed() < std::time::Duration::from_secs(300)
                && n < 100
            {
                let Ok((stream, _)) = l.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                n += 1;
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                let mut r = std::io::BufReader::new(stream);
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let mut stream = r.into_inner();
                stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .unwrap();
                let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                g.lock().unwrap().push((path, v));
            }
        });
        Receiver { port, got, stop }
    }

    fn take(&self) -> Vec<(String, serde_json::Value)> {
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A freeze window refuses a roll (exit 3, naming it) and tells the webhooks; `rollback` is not
/// frozen; `--force` goes through and is journalled. Under a failure budget of one, a roll whose
/// second node cannot install finishes, leaves that node out of rotation (never more than the
/// batch out) and says so; the next roll puts it back. The webhooks get start and end as JSON
/// (generic) and as Slack's `text`, with the job's URL, never showing their secret.
#[expect(
    clippy::too_many_lines,
    reason = "one scenario on one lab, in the order a release engineer lives it: split, the order would be lost"
)]
#[test]
fn freeze_windows_the_failure_budget_and_notifications() {
    require_root("scripts/lab uses mount namespaces");
    let c = Cluster::up(3);
    let v1 = c.release(1, &[]);
    run(c.cmd().arg("roll"));
    let hooks = Receiver::start();
    set_roll(&c, "max_failed_nodes = 1");
    let mut cfg = fs::read_to_string(c.config_path()).unwrap();
    cfg.push_str(&format!(
        "\n[[roll.freeze]]\nname = \"exam week\"\nfrom = \"{}\"\nto = \"{}\"\n\n[[notify]]\nurl = \"http://127.0.0.1:{}/hooks/SECRET-ONE\"\n\n[[notify]]\nurl_env = \"MR_TEST_SLACK_HOOK\"\nformat = \"slack\"\non = [\"success\", \"failure\"]\n",
        rfc3339_from_now(-3600),
        rfc3339_from_now(3600),
        hooks.port
    ));
    fs::write(c.config_path(), cfg).unwrap();
    let slack = format!("http://127.0.0.1:{}/services/T0/B0/SECRET-TWO", hooks.port);
    let job = "https://gitlab.example.edu/site/-/jobs/4242";
    let cmd = || {
        let mut cmd = c.cmd();
        cmd.env("MR_TEST_SLACK_HOOK", &slack)
            .env("MOODLE_RELEASE_JOB_URL", job);
        cmd
    };
    let v2 = c.release(2, &[]);

    // 1. Frozen: refused before anything, exit 3, naming the window; the webhooks hear of it.
    let (_, err) = exits(cmd().arg("roll"), 3);
    assert!(
        err.contains("inside the freeze window \"exam week\""),
        "{err}"
    );
    assert_eq!(c.installed("web1"), v1);
    let got = hooks.take();
    assert_eq!(got.len(), 2, "{got:?}");
    let generic = &got
        .iter()
        .find(|(p, _)| p == "/hooks/SECRET-ONE")
        .unwrap()
        .1;
    assert_eq!(generic["event"], "failure", "{generic}");
    assert!(
        generic["reason"]
            .as_str()
            .unwrap()
            .contains("freeze window"),
        "{generic}"
    );
    assert_eq!(generic["job_url"], job);
    let st = run(cmd().arg("status"));
    let st = String::from_utf8_lossy(&st.stdout);
    assert!(
        st.contains("inside the freeze window \"exam week\""),
        "{st}"
    );
    // A rollback is never frozen.
    let (out, err) = exits(cmd().args(["rollback", "--plan", "--to", &v1]), 0);
    assert!(
        !err.contains("freeze") && !String::from_utf8_lossy(&out.stdout).contains("freeze"),
        "{err}{out:?}"
    );

    // 2. --force in the window, with web2 unable to install: within the budget of one, the
    //    roll finishes with web2 out of rotation, never more than 2 out.
    c.ssh_ok("web2", "mv /usr/bin/dpkg /usr/bin/dpkg.off");
    let (out, err) = exits(cmd().args(["--json", "roll", "--batch", "2", "--force"]), 0);
    let o = json(&out.stdout);
    assert_eq!(o["failed"][0]["node"], "web2", "{o}");
    assert!(
        err.contains("failure budget: 1 of max_failed_nodes = 1 used"),
        "{err}"
    );
    for n in ["web1", "web3", "cron1"] {
        assert_eq!(c.installed(n), v2, "{n}");
    }
    assert_eq!(c.installed("web2"), v1);
    let servers = c.lb_servers();
    assert!(
        servers.contains(&("web2".into(), "MAINT".into())),
        "{servers:?}"
    );
    let actions: Vec<String> = o["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert!(
        actions.contains(&"freeze overridden".to_string()),
        "{actions:?}"
    );
    assert!(actions.contains(&"replanned".to_string()), "{actions:?}");
    // Never more than the batch out of rotation: web2 (maint) and at most one more.
    let mut out_now = std::collections::BTreeSet::new();
    let mut most = 0;
    for e in o["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["lb"] == "lb1")
    {
        let node = e["node"].as_str().unwrap().to_string();
        match e["action"].as_str().unwrap() {
            "state drain" | "state maint" => {
                out_now.insert(node);
            }
            "state ready" => {
                out_now.remove(&node);
            }
            _ => {}
        }
        most = most.max(out_now.len());
    }
    assert!(most <= 2, "{most} out at once");
    let got = hooks.take();
    let events: Vec<(&str, &str)> = got
        .iter()
        .map(|(p, v)| (p.as_str(), v["event"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        events
            .iter()
            .filter(|(p, _)| *p == "/hooks/SECRET-ONE")
            .map(|(_, e)| *e)
            .collect::<Vec<_>>(),
        ["start", "success"],
        "{got:?}"
    );
    let success = &got.iter().find(|(_, v)| v["event"] == "success").unwrap().1;
    assert_eq!(success["target"], v2.as_str());
    assert_eq!(success["path"], "code-only");
    assert_eq!(success["failed_nodes"], serde_json::json!(["web2"]));
    assert_eq!(success["changed"], true);
    assert_eq!(success["from"]["web1"], v1.as_str());
    let text = &got
        .iter()
        .find(|(p, _)| p.ends_with("SECRET-TWO"))
        .unwrap()
        .1;
    let line = text["text"].as_str().unwrap();
    assert!(
        line.starts_with(&format!(
            "[moodle-sample] roll to {v2} (code-only path) done in"
        )) && line.contains("failed, left out of rotation: web2")
            && line.ends_with(&format!("(job: {job})")),
        "{line}"
    );
    assert!(!err.contains("SECRET") && !String::from_utf8_lossy(&out.stdout).contains("SECRET"));

    // 3. Fixed, the next roll takes web2 first and puts it back.
    c.ssh_ok("web2", "mv /usr/bin/dpkg.off /usr/bin/dpkg");
    let (_, err) = exits(cmd().args(["roll", "--force"]), 0);
    assert_eq!(c.installed("web2"), v2, "{err}");
    assert!(
        c.lb_servers().iter().all(|(_, s)| s == "UP"),
        "{:?}",
        c.lb_servers()
    );
    // A webhook that does not answer is a warning, never a failed roll, and never shows its secret.
    drop(hooks);
    let (_, err) = exits(cmd().args(["rollback", "--to", &v1]), 0);
    assert!(
        err.contains("notify http://127.0.0.1:") && err.contains("not sent"),
        "{err}"
    );
    assert!(!err.contains("SECRET"), "{err}");
    assert_eq!(c.installed("web1"), v1);
}
