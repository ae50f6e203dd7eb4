//! The cluster lock and the copy of the roll's state on the lock node (the first node), which
//! every machine that runs the tool reaches over SSH: a CI runner, an engineer's laptop.
//!
//! The lock is a directory (`mkdir` is atomic) holding the owner's line and an `alive` file
//! that the running roll touches every [`HEARTBEAT`]. Its age, measured with the node's own
//! clock, tells a dead roll's lock from a busy one's even when the roll ran on another machine
//! (a CI job cancelled or timed out), where its pid cannot be checked.

use std::time::Duration;

use serde::Serialize;

use crate::journal::{now_ms, RollState, StateError};
use crate::ssh::{quote, Conn, Heartbeat, Ssh, SshError};

const DIR: &str = "/var/lib/moodle-release";
const LOCK_DIR: &str = "/var/lib/moodle-release/roll.lock";

/// The copy of the last roll's state on the lock node, beside the lock: a CI job starts from a
/// fresh checkout with no state folder, and an engineer's laptop does not see a CI job's. With
/// it, a run from anywhere knows which servers an earlier roll took out of rotation and whether
/// its database upgrade is left to finish, and `status` shows it.
pub const REMOTE_STATE: &str = "/var/lib/moodle-release/state.json";

/// How often a running roll shows its lock it is alive, also while an install or a database
/// upgrade runs for an hour.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// A lock not refreshed for this long belongs to a dead roll (four heartbeats missed).
pub const STALE: Duration = Duration::from_secs(120);

/// The cluster lock, as the lock node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lock {
    /// `user@host pid N since TIME (target V)`.
    pub owner: String,
    /// Seconds since its roll last refreshed it, by the node's clock.
    pub idle_secs: Option<u64>,
}

impl Lock {
    /// The lock from the lines `lock OWNER` and `lock-idle SECONDS` that [`query`] prints.
    pub fn parse(text: &str) -> Option<Lock> {
        let owner = text.lines().find_map(|l| l.strip_prefix("lock "))?;
        Some(Lock {
            owner: owner.trim().to_string(),
            idle_secs: text
                .lines()
                .find_map(|l| l.strip_prefix("lock-idle "))
                .and_then(|s| s.trim().parse().ok()),
        })
    }

    /// Its roll is known dead: its process was on this machine and is gone, or it has not
    /// refreshed the lock for [`STALE`].
    pub fn dead(&self) -> bool {
        self.process_gone() || self.stale()
    }

    fn stale(&self) -> bool {
        self.idle_secs.is_some_and(|s| s >= STALE.as_secs())
    }

    /// The owner line names a process of this machine that no longer runs.
    fn process_gone(&self) -> bool {
        let mut words = self.owner.split_whitespace();
        let (Some(who), Some("pid"), Some(pid)) = (words.next(), words.next(), words.next()) else {
            return false;
        };
        let here = crate::fsutil::hostname();
        !here.is_empty()
            && who.rsplit_once('@').map(|(_, h)| h) == Some(here.as_str())
            && pid.parse::<u32>().is_ok()
            && !std::path::Path::new("/proc").join(pid).exists()
    }

    /// What the messages that name this lock add: how its roll is known dead, if it is.
    pub fn note(&self) -> String {
        let then = "and --break-lock goes on from where it stopped";
        if self.process_gone() {
            format!("; that process no longer runs on this machine: the roll was killed, {then}")
        } else if self.stale() {
            format!(
                "; it has shown no sign of life for {} (a running roll refreshes its lock every {}): the roll was most likely killed, {then}",
                // In whole minutes: it is at least STALE.
                crate::config::format_duration(Duration::from_secs(
                    self.idle_secs.unwrap_or(0) / 60 * 60
                )),
                crate::config::format_duration(HEARTBEAT)
            )
        } else {
            String::new()
        }
    }
}

impl std::fmt::Display for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}{}", self.owner, self.note())
    }
}

/// The shell lines that print the lock ([`Lock::parse`]) and the remote state (`state JSON`),
/// for the query every node answers before a roll and for `status`.
pub fn query() -> String {
    format!(
        "if [ -d {LOCK_DIR} ]; then {}; fi; \
         if [ -f {REMOTE_STATE} ]; then printf 'state '; tr -d '\\n' <{REMOTE_STATE}; echo; fi",
        print_lock()
    )
}

/// The shell lines that print a lock that exists, as [`Lock::parse`] reads them; its idle time
/// from `alive`, else from the lock itself (a lock older than the heartbeat).
fn print_lock() -> String {
    format!(
        "echo \"lock $(cat {LOCK_DIR}/owner 2>/dev/null)\"; \
         echo \"lock-idle $(( $(date +%s) - $(stat -c %Y {LOCK_DIR}/alive 2>/dev/null || stat -c %Y {LOCK_DIR}) ))\""
    )
}

/// The remote state's JSON from an answer to [`query`].
pub fn state_text(answer: &str) -> Option<&str> {
    answer.lines().find_map(|l| l.strip_prefix("state "))
}

/// The state the lock node keeps, from its answer to [`query`].
pub fn remote_state(node: &str, text: Option<&str>) -> Result<Option<RollState>, StateError> {
    let Some(text) = text else {
        return Ok(None);
    };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|source| StateError::Damaged {
            at: format!("{node}:{REMOTE_STATE}"),
            source,
            remedy: "remove it",
        })
}

/// The shell line that writes `state` on the lock node, atomically.
pub fn write_state(state: &RollState) -> String {
    format!(
        "mkdir -p {DIR} && printf '%s\\n' {} >{REMOTE_STATE}.new && mv {REMOTE_STATE}.new {REMOTE_STATE}",
        quote(&serde_json::to_string(state).unwrap_or_default())
    )
}

/// The shell line that removes the lock, whoever holds it.
pub fn remove() -> String {
    format!("rm -rf {LOCK_DIR}")
}

/// The later of two rolls' states (by id, the roll's start in ms); `here` on a tie, as this
/// machine's copy is never behind the lock node's for a roll it ran.
pub fn newer(here: Option<RollState>, there: Option<RollState>) -> Option<RollState> {
    let id = |s: &RollState| s.id.parse::<u128>().unwrap_or(0);
    match (here, there) {
        (Some(h), Some(t)) if id(&t) > id(&h) => Some(t),
        (Some(h), _) => Some(h),
        (None, t) => t,
    }
}

/// Who runs the roll, for the lock's owner line: `$USER` (`$LOGNAME`), else the name of the
/// process's uid in /etc/passwd (cron, systemd units and some CI runners set neither).
fn user(env: impl Fn(&str) -> Option<String>) -> String {
    if let Some(u) = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| env(v).filter(|u| !u.is_empty()))
    {
        return u;
    }
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "?".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The lock, held: refreshed every [`HEARTBEAT`] until dropped. Dropping it does not remove
/// it (see [`Held::release`]): a roll that stops on an error still releases it, one killed
/// outright cannot, and its lock then goes stale.
pub struct Held {
    _heartbeat: Heartbeat,
}

/// Why the lock could not be taken.
pub enum TakeError {
    /// Another roll holds it.
    Held(Lock),
    Ssh(SshError),
    /// The node refused (a full disk, a read-only /var): its stderr.
    Failed(String),
}

impl From<SshError> for TakeError {
    fn from(e: SshError) -> Self {
        TakeError::Ssh(e)
    }
}

/// Takes the lock on `conn`'s node for a roll to `target`, first removing whatever holds it
/// with `break_lock`.
pub fn take(ssh: &Ssh, conn: &Conn, target: &str, break_lock: bool) -> Result<Held, TakeError> {
    let who = format!(
        "{}@{} pid {} since {} (target {target})",
        user(|v| std::env::var(v).ok()),
        crate::fsutil::hostname(),
        std::process::id(),
        crate::time::rfc2822((now_ms() / 1000) as i64)
    );
    if break_lock {
        ssh.run(conn, &remove())?;
    }
    let script = format!(
        "mkdir -p {DIR} && if mkdir {LOCK_DIR} 2>/dev/null; then echo {who} > {LOCK_DIR}/owner && touch {LOCK_DIR}/alive; \
         else {print}; exit 3; fi",
        who = quote(&who),
        print = print_lock()
    );
    let out = ssh.run(conn, &script)?;
    match out.code {
        Some(0) => {}
        Some(3) => {
            return Err(TakeError::Held(Lock::parse(&out.text()).unwrap_or(Lock {
                owner: "(no owner line)".into(),
                idle_secs: None,
            })))
        }
        _ => return Err(TakeError::Failed(out.tail())),
    }
    // Only this roll's own lock is refreshed: after a --break-lock by someone else, another
    // roll's lock is none of its business.
    let beat = format!(
        "grep -qxF {} {LOCK_DIR}/owner 2>/dev/null && touch {LOCK_DIR}/alive",
        quote(&who)
    );
    Ok(Held {
        _heartbeat: ssh.every(conn, HEARTBEAT, &beat),
    })
}

impl Held {
    /// Stops the heartbeat and removes the lock by `run`ning the script that does on the lock
    /// node (a failure leaves a lock the next roll names as dead).
    pub fn release(self, run: impl FnOnce(&str)) {
        drop(self);
        run(&remove());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::RollStatus;

    #[test]
    fn the_owner_is_named_without_user_in_the_environment() {
        let whoami = std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap();
        assert_eq!(
            user(|_| None),
            String::from_utf8_lossy(&whoami.stdout).trim()
        );
        assert_eq!(user(|v| (v == "LOGNAME").then(|| "ops".into())), "ops");
    }

    #[test]
    fn a_lock_is_read_from_its_lines() {
        let l = Lock::parse("x\nlock root@ci pid 42 since Mon (target 1)\nlock-idle 7\n").unwrap();
        assert_eq!(l.owner, "root@ci pid 42 since Mon (target 1)");
        assert_eq!(l.idle_secs, Some(7));
        assert!(!l.dead(), "another machine's lock refreshed 7 s ago");
        assert_eq!(l.to_string(), "root@ci pid 42 since Mon (target 1)");
        assert_eq!(Lock::parse("state {}\n"), None);
    }

    #[test]
    fn a_lock_is_dead_when_stale_or_its_process_here_is_gone() {
        let here = crate::fsutil::hostname();
        assert!(!here.is_empty(), "no /etc/hostname");
        let me = std::process::id();
        // Beyond any pid_max (at most 2^22).
        let gone = 4_000_000_000u32;
        let lock = |owner: String, idle: u64| Lock {
            owner,
            idle_secs: Some(idle),
        };
        let dead_here = lock(format!("root@{here} pid {gone} since Mon (target 1)"), 1);
        assert!(dead_here.dead());
        assert!(dead_here.note().contains("no longer runs on this machine"));
        assert!(!lock(format!("root@{here} pid {me} since Mon (target 1)"), 1).dead());
        assert!(!lock(format!("root@elsewhere-{here} pid {gone} since x"), 1).dead());
        assert!(!lock(format!("root@{here} pid x{gone} since x"), 1).dead());
        let stale = lock("gitlab-runner@runner-7 pid 4242 since x".into(), 600);
        assert!(stale.dead());
        assert!(
            stale.note().contains("no sign of life for 10m"),
            "{}",
            stale.note()
        );
        assert!(!lock("gitlab-runner@runner-7 pid 4242 since x".into(), 119).dead());
        assert_eq!(lock(String::new(), 5).note(), "");
    }

    #[test]
    fn the_later_roll_state_wins_and_this_machines_on_a_tie() {
        let st = |id: &str, status: RollStatus| {
            Some(RollState {
                id: id.into(),
                status,
                ..RollState::default()
            })
        };
        let status = |s: Option<RollState>| s.map(|s| s.status.to_string());
        let (here, there) = (
            st("1795421359151", RollStatus::Done),
            st("1795421400000", RollStatus::Failed),
        );
        assert_eq!(
            status(newer(here.clone(), there.clone())).as_deref(),
            Some("failed")
        );
        assert_eq!(
            status(newer(there.clone(), here.clone())).as_deref(),
            Some("failed")
        );
        assert_eq!(
            status(newer(None, there.clone())).as_deref(),
            Some("failed")
        );
        assert_eq!(status(newer(here.clone(), None)).as_deref(), Some("done"));
        let lagging = st("1795421359151", RollStatus::Running);
        assert_eq!(status(newer(here, lagging)).as_deref(), Some("done"));
        assert!(newer(None, None).is_none());
    }
}
