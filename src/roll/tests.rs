//! The executor on a fake cluster ([`super::fake`]): each way a roll goes on or stops, each
//! asserting that the journal follows the plan it walked, what the LBs were left with and what
//! the state says. The lab tests (tests/roll.rs, tests/canary.rs) run the same against the real
//! HAProxy, sshd and dpkg.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ctx::Ctx;
use super::execute::{run_plan, Walked};
use super::fake::{Fake, FakeNodes};
use super::notice::Known;
use super::plan::make_plan;
use super::step::Step;
use super::target::Chosen;
use super::{Plan, RollError, RollOptions};
use crate::cluster::probe::Installed;
use crate::config::Config;
use crate::journal::{Entry, RollState, RollStatus, StepResult};
use crate::report::Silent;

const WEBS: [&str; 4] = ["web1", "web2", "web3", "web4"];
const LBS: [&str; 2] = ["lb1", "lb2"];

/// A site of 4 web nodes and a cron node behind two LBs, all on version 1; version 2 in the
/// repository (same hashes: the code-only path), with a release probe.
struct Site {
    tmp: tempfile::TempDir,
    cfg: Config,
    fake: Fake,
}

impl Site {
    fn new(roll: &str) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let mut text = format!(
            "[site]\npackage = \"moodle-site\"\nmaintainer = \"M <m@example.edu>\"\ndescription = \"d\"\ninstall_dir = \"/srv/moodle\"\n[deploy]\nrepo = \".\"\nbranch = \"deploy\"\n[roll]\ndrain_timeout = \"1s\"\nhealth_timeout = \"1s\"\nstate_dir = \"state\"\n{roll}\n"
        );
        for lb in LBS {
            text.push_str(&format!(
                "[[lb]]\nname = \"{lb}\"\nsocket = \"unix:/nonexistent/{lb}.sock\"\nbackend = \"moodle\"\n"
            ));
        }
        for n in WEBS {
            text.push_str(&format!(
                "[[nodes]]\nname = \"{n}\"\nssh = \"{n}\"\nhttp = \"http://{n}\"\n"
            ));
        }
        text.push_str("[[nodes]]\nname = \"cron1\"\nssh = \"cron1\"\nrole = \"cron\"\n");
        let cfg = Config::parse(&text, &tmp.path().join("moodle-release.toml")).unwrap();
        let fake = Fake::new(&LBS, &WEBS, &["cron1"], "1");
        Site { tmp, cfg, fake }
    }

    /// What every node runs now, as the preflight would read it.
    fn installed(&self) -> BTreeMap<String, Installed> {
        let w = self.fake.world();
        w.installed
            .iter()
            .map(|(n, v)| {
                let i = Installed {
                    version: Some(v.clone()),
                    versions_hash: Some("v".into()),
                    db_hash: Some("d".into()),
                    ..Installed::default()
                };
                (n.clone(), i)
            })
            .collect()
    }

    /// The plan to version 2 with `opts` and `batch`.
    fn plan(&self, opts: &RollOptions, batch: usize) -> Plan {
        let listed = crate::apt::Listed::sample("2", "v", "d");
        // Versions 1 and 2 in the repository, each with a release probe.
        let repo = ["1", "2"]
            .into_iter()
            .map(|v| (v.to_string(), crate::apt::Listed::sample(v, "v", "d")))
            .collect();
        let chosen = Chosen {
            version: "2".into(),
            listed,
            why: "the newest in the repository".into(),
            repo,
        };
        make_plan(
            &self.cfg,
            opts,
            batch,
            &chosen,
            &self.installed(),
            None,
            None,
        )
        .unwrap()
    }

    /// The plan to version 2 with `opts` and `batch`, and its walk on the fake cluster.
    fn rolled(&self, opts: &RollOptions, batch: usize) -> (Plan, Walk) {
        let plan = self.plan(opts, batch);
        let walk = self.walk(&plan, opts);
        (plan, walk)
    }

    /// Walks `plan` on the fake cluster: its result, the journal, the state it left.
    fn walk(&self, plan: &Plan, opts: &RollOptions) -> Walk {
        let installed = self.installed();
        let nodes = Box::new(FakeNodes {
            fake: self.fake.clone(),
            package: "moodle-site".into(),
            reload_command: self.cfg.roll.reload_command.clone(),
        });
        let mut ctx = Ctx::new(
            &self.cfg,
            opts,
            &Silent,
            self.tmp.path().join("state"),
            Vec::new(),
            Instant::now(),
            self.fake.balancers(),
            nodes,
            self.fake.processes(),
        );
        let result = run_plan(&mut ctx, plan, &installed, None, opts, &Known::default());
        Walk {
            result,
            journal: ctx.journal_entries().to_vec(),
            state: RollState::read(&self.tmp.path().join("state"))
                .unwrap()
                .unwrap(),
        }
    }

    fn installed_on(&self, node: &str) -> String {
        self.fake.world().installed[node].clone()
    }

    /// A server's state on every LB (the same on each, or a panic naming both).
    fn state(&self, server: &str) -> &'static str {
        let states: Vec<&str> = LBS.iter().map(|lb| self.fake.state(lb, server)).collect();
        assert!(
            states.windows(2).all(|w| w[0] == w[1]),
            "{server}: {states:?}"
        );
        states[0]
    }
}

struct Walk {
    result: Result<Walked, RollError>,
    journal: Vec<Entry>,
    state: RollState,
}

impl Walk {
    /// Why the roll stopped (a panic with the journal if it did not).
    fn err(&self) -> &RollError {
        match &self.result {
            Ok(_) => panic!("the roll did not stop: {:#?}", self.journal),
            Err(e) => e,
        }
    }

    fn error(&self) -> String {
        self.err().to_string()
    }

    fn actions(&self, action: &str) -> Vec<&Entry> {
        self.journal.iter().filter(|e| e.action == action).collect()
    }

    /// The journal's last line: what stopped the roll.
    fn last(&self) -> &Entry {
        self.journal.last().unwrap()
    }
}

/// Every step of `steps` is in the journal, in order, under its action and node, not failed
/// (once per LB for the steps done on every LB).
fn follows<'a>(steps: impl IntoIterator<Item = &'a Step>, journal: &[Entry]) {
    let mut at = 0;
    for s in steps {
        let node = s.node().map(String::from);
        let found = journal[at..].iter().position(|e| {
            e.action == s.action() && e.node == node && e.result != StepResult::Failed
        });
        let Some(i) = found else {
            panic!("planned {s:?} not in the journal after entry {at}: {journal:#?}");
        };
        at += i + 1;
    }
}

#[test]
fn a_roll_walks_its_plan_on_the_fake_cluster() {
    let site = Site::new("");
    let opts = RollOptions::default();
    let (plan, w) = site.rolled(&opts, 2);
    let walked = w.result.as_ref().unwrap();
    follows(plan.steps(), &w.journal);
    for n in WEBS.iter().chain(&["cron1"]) {
        assert_eq!(site.installed_on(n), "2", "{n}");
    }
    assert!(WEBS.iter().all(|n| site.state(n) == "ready"));
    assert_eq!(site.fake.world().most_out, 2);
    assert_eq!(walked.upgraded.len(), 5, "{:?}", walked.upgraded);
    assert_eq!(
        w.state.status,
        RollStatus::Running,
        "run_plan leaves Done to its caller"
    );
    assert_eq!(w.actions("guard").len(), 2);
    assert_eq!(w.actions("release probe").len(), 4);
}

#[test]
fn sessions_past_the_drain_timeout_put_the_batch_back_and_stop() {
    let site = Site::new("");
    site.fake.world().busy.insert("web1".into());
    let opts = RollOptions::default();
    let (plan, w) = site.rolled(&opts, 2);
    let err = w.error();
    assert!(
        err.contains("sessions did not end within drain_timeout 1s")
            && err.contains("--force-drain"),
        "{err}"
    );
    assert!(WEBS.iter().all(|n| site.state(n) == "ready"));
    assert!(WEBS.iter().all(|n| site.installed_on(n) == "1"));
    match w.err() {
        RollError::DrainTimeout { busy, .. } => {
            assert_eq!(
                busy,
                &[
                    "web1 on lb1 (1 sessions, 0 queued)",
                    "web1 on lb2 (1 sessions, 0 queued)"
                ]
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(w.last().action, "stop", "{:#?}", w.journal);
    assert_eq!(w.state.status, RollStatus::Failed);
    // The plan up to the drain, then the stop.
    let until: Vec<&Step> = plan
        .steps()
        .take_while(|s| !matches!(s, Step::WaitIdle { .. }))
        .collect();
    follows(until, &w.journal);
}

#[test]
fn force_drain_sends_a_busy_batch_to_maint_and_goes_on() {
    let site = Site::new("");
    site.fake.world().busy.insert("web1".into());
    let opts = RollOptions {
        force_drain: true,
        ..RollOptions::default()
    };
    let (plan, w) = site.rolled(&opts, 2);
    assert!(w.result.is_ok(), "{}", w.error());
    assert_eq!(w.actions("drain timeout").len(), 1);
    assert!(w.actions("state maint").len() >= 2 * LBS.len());
    assert!(WEBS.iter().all(|n| site.state(n) == "ready"));
    // Every step but the busy batch's wait, which ended in the timeout's maint.
    let busy =
        |s: &&Step| matches!(s, Step::WaitIdle { nodes } if nodes.contains(&"web1".to_string()));
    follows(plan.steps().filter(|s| !busy(s)), &w.journal);
}

#[test]
fn a_failure_within_the_budget_leaves_the_node_out_and_the_rest_is_replanned() {
    let site = Site::new("max_failed_nodes = 1");
    site.fake.world().fail_install.insert("web2".into());
    let opts = RollOptions::default();
    let (_, w) = site.rolled(&opts, 2);
    let walked = w.result.as_ref().unwrap();
    assert_eq!(walked.failed.len(), 1);
    assert_eq!(walked.failed[0].node, "web2");
    assert!(walked.failed[0]
        .reason
        .contains("apt-get install moodle-site=2 failed"));
    assert_eq!(site.state("web2"), "maint");
    for n in ["web1", "web3", "web4"] {
        assert_eq!(site.state(n), "ready", "{n}");
        assert_eq!(site.installed_on(n), "2", "{n}");
    }
    // The rest went one at a time, beside web2 out: never more than the batch out.
    assert_eq!(site.fake.world().most_out, 2);
    assert_eq!(w.actions("replanned").len(), 1);
    assert_eq!(w.actions("failure budget").len(), 1);
    assert_eq!(w.state.failed_nodes, ["web2"]);
}

#[test]
fn a_failed_node_that_fills_the_batch_leaves_no_room_and_stops_the_roll() {
    let site = Site::new("max_failed_nodes = 1");
    site.fake.world().fail_install.insert("web1".into());
    let opts = RollOptions::default();
    let (_, w) = site.rolled(&opts, 1);
    match w.err() {
        RollError::BudgetSpent { failed, batch, .. } => {
            assert_eq!((failed.as_slice(), *batch), (&["web1".to_string()][..], 1));
        }
        other => panic!("{other}"),
    }
    assert_eq!(site.state("web1"), "maint");
    assert!(["web2", "web3", "web4"]
        .iter()
        .all(|n| site.state(n) == "ready" && site.installed_on(n) == "1"));
    assert_eq!(site.fake.world().most_out, 1);
    assert_eq!(w.last().action, "stop");
    assert_eq!(w.state.status, RollStatus::Failed);
}

#[test]
fn a_failure_beyond_the_budget_stops_with_the_node_out() {
    let site = Site::new("");
    site.fake.world().fail_install.insert("web2".into());
    let opts = RollOptions::default();
    let (_, w) = site.rolled(&opts, 2);
    let err = w.error();
    assert!(
        err.contains("web2: apt-get install moodle-site=2 failed")
            && err.contains("web2 stays out of rotation (maint)"),
        "{err}"
    );
    assert_eq!(site.state("web2"), "maint");
    assert_eq!(site.state("web1"), "ready");
    assert_eq!(site.installed_on("web3"), "1");
    assert!(matches!(w.result, Err(RollError::NodeFailed { .. })));
    assert_eq!(w.last().action, "stop");
    assert_eq!(w.last().node.as_deref(), Some("web2"));
    assert!(
        w.last()
            .detail
            .starts_with("at install: web2: apt-get install"),
        "{:?}",
        w.last()
    );
    assert_eq!(w.state.status, RollStatus::Failed);
    assert_eq!(w.state.failed_node.as_deref(), Some("web2"));
}

#[test]
fn a_stale_php_fails_the_node_unless_reload_command_reloads_it() {
    let site = Site::new("");
    site.fake.world().stale.insert("web1".into());
    let opts = RollOptions::default();
    let (_, w) = site.rolled(&opts, 1);
    let err = w.error();
    assert!(
        err.contains("its PHP runs 1, not 2") && err.contains("stale opcode cache"),
        "{err}"
    );
    assert_eq!(site.state("web1"), "maint");
    assert_eq!(site.installed_on("web2"), "1");

    let site = Site::new("reload_command = \"systemctl reload php8.2-fpm\"");
    site.fake.world().stale.insert("web1".into());
    let (plan, w) = site.rolled(&opts, 1);
    assert!(w.result.is_ok(), "{}", w.error());
    follows(plan.steps(), &w.journal);
    assert_eq!(w.actions("reload").len(), 4);
    assert!(WEBS.iter().all(|n| site.fake.world().php[*n] == "2"));
}

#[test]
fn a_canary_that_serves_errors_is_sent_back_and_the_roll_stops() {
    let site = Site::new("canary_min_requests = 10");
    site.fake.world().broken.insert("web1".into());
    let opts = RollOptions {
        canary: Some(Some(Duration::from_secs(5))),
        ..RollOptions::default()
    };
    let (_, w) = site.rolled(&opts, 2);
    let err = w.error();
    assert!(
        err.contains("the canary failed") && err.contains("back on its previous version: web1 (1)"),
        "{err}"
    );
    assert_eq!(site.installed_on("web1"), "1");
    assert!(WEBS.iter().all(|n| site.state(n) == "ready"));
    assert!(["web2", "web3", "web4"]
        .iter()
        .all(|n| site.installed_on(n) == "1"));
    assert_eq!(w.actions("canary failed").len(), 1);
    assert_eq!(w.last().action, "stop");
    assert_eq!(w.state.status, RollStatus::Failed);
    assert_eq!(w.state.failed_node.as_deref(), Some("web1"));
}

#[test]
fn auto_rollback_sends_the_upgraded_nodes_back() {
    let site = Site::new("");
    site.fake.world().fail_install.insert("web3".into());
    let opts = RollOptions {
        auto_rollback: true,
        ..RollOptions::default()
    };
    let (_, w) = site.rolled(&opts, 2);
    let err = w.error();
    assert!(
        err.contains("--auto-rollback: back on their previous version: web1 (1), web2 (1)"),
        "{err}"
    );
    assert!(WEBS.iter().all(|n| site.installed_on(n) == "1"));
    assert_eq!(site.state("web3"), "maint");
    assert_eq!(w.actions("auto-rollback").len(), 1);
    assert_eq!(w.last().action, "stop");
}

#[test]
fn ctrl_c_stops_between_batches_with_every_node_in_rotation() {
    let site = Site::new("");
    let stop = Arc::new(AtomicBool::new(false));
    site.fake.world().ctrl_c_after_install = Some(("web1".into(), stop.clone()));
    let opts = RollOptions {
        stop,
        ..RollOptions::default()
    };
    let (plan, w) = site.rolled(&opts, 1);
    assert!(
        matches!(w.result, Err(RollError::Interrupted { .. })),
        "{}",
        w.error()
    );
    assert!(opts.stop.load(Ordering::SeqCst));
    assert_eq!(site.installed_on("web1"), "2");
    assert_eq!(site.installed_on("web2"), "1");
    assert!(WEBS.iter().all(|n| site.state(n) == "ready"));
    assert_eq!(w.last().action, "interrupt");
    assert_eq!(w.state.status, RollStatus::Interrupted);
    // The first batch whole, as planned.
    let first: Vec<&Step> = plan
        .program
        .iter()
        .filter(|g| g.batch == Some(0))
        .flat_map(|g| &g.steps)
        .collect();
    follows(first, &w.journal);
}

#[test]
fn a_haproxy_reload_mid_roll_is_noticed_and_its_states_set_again() {
    let site = Site::new("");
    // lb2 reloads right after web1 was drained on both LBs.
    site.fake.world().reload_after = Some(("lb2".into(), 2));
    let opts = RollOptions::default();
    let (plan, w) = site.rolled(&opts, 1);
    assert!(w.result.is_ok(), "{}", w.error());
    assert_eq!(w.actions("reload detected").len(), 1, "{:#?}", w.journal);
    assert!(!w.actions("state drain (again)").is_empty());
    assert!(WEBS.iter().all(|n| site.state(n) == "ready"));
    follows(plan.steps(), &w.journal);
}
