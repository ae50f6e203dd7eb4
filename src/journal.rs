//! The roll journal: one JSON line per step (time, node, LB, action, result, duration), kept
//! under `[roll] state_dir`, and `state.json` there: the roll in progress or stopped, which
//! `--resume`, `rollback` and `status` read.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Unix time in milliseconds.
    pub time_ms: u128,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<String>,
    pub action: String,
    pub result: StepResult,
    #[serde(default)]
    pub duration_ms: u128,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What became of a journalled step. Written as the lowercase word (`"ok"`, `"failed"`, ...),
/// so a journal reads the same to `jq` as before it was typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepResult {
    /// The step did what the plan said.
    Ok,
    /// The step failed: the detail says why.
    Failed,
    /// Not needed here (maintenance on a node with no code yet).
    Skipped,
    /// Done, with something the engineer should know (a reload, a drain timeout, the budget).
    Warning,
    /// A fact about the roll, not a step (its start, a replan, an interrupt).
    Info,
    /// Waiting on something outside the roll (another apt's lock).
    Waiting,
}

impl std::fmt::Display for StepResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepResult::Ok => "ok",
            StepResult::Failed => "failed",
            StepResult::Skipped => "skipped",
            StepResult::Warning => "warning",
            StepResult::Info => "info",
            StepResult::Waiting => "waiting",
        })
    }
}

/// `roll` or `rollback`: the command a state belongs to, and the one that resumes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RollKind {
    #[default]
    Roll,
    Rollback,
}

impl std::fmt::Display for RollKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RollKind::Roll => "roll",
            RollKind::Rollback => "rollback",
        })
    }
}

/// Where a roll is: written at each change, so a killed roll's state still says `running`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RollStatus {
    #[default]
    Running,
    Done,
    Failed,
    Interrupted,
}

impl std::fmt::Display for RollStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RollStatus::Running => "running",
            RollStatus::Done => "done",
            RollStatus::Failed => "failed",
            RollStatus::Interrupted => "interrupted",
        })
    }
}

/// Why the state of the last roll cannot be read. It may hold the only record of a stopped roll
/// (which servers it took out, an upgrade left to finish), so it is never taken for "no roll".
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not the JSON a roll writes (`at`: the file, or `node:path` for the lock node's copy).
    #[error("{at}: damaged ({source}); it records the last roll (servers it took out, an upgrade left to finish): check it by hand, or {remedy} to start afresh")]
    Damaged {
        at: String,
        source: serde_json::Error,
        remedy: &'static str,
    },
}

/// What a roll left behind, for `--resume` and `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RollState {
    pub id: String,
    pub kind: RollKind,
    pub target: String,
    /// Version each node ran before the roll.
    pub previous: std::collections::BTreeMap<String, String>,
    pub status: RollStatus,
    pub journal: PathBuf,
    /// Nodes this roll drained or put in maint (so a re-run knows they are its own).
    #[serde(default)]
    pub out_of_rotation: Vec<String>,
    #[serde(default)]
    pub failed_node: Option<String>,
    /// Web nodes that failed within `[roll] max_failed_nodes`, left out of rotation (maint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_nodes: Vec<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// The database path turned maintenance mode on and has not turned it off yet: the
    /// database upgrade may not have run. The next run, whatever its target, takes the
    /// database path, so the upgrade runs and the site leaves maintenance.
    #[serde(default)]
    pub upgrade_pending: bool,
}

impl RollState {
    /// Still running, or stopped (failed, interrupted): what it recorded still matters.
    pub fn unfinished(&self) -> bool {
        self.status != RollStatus::Done
    }

    /// The servers this roll left out of rotation that are still its own: all of them while it
    /// is unfinished; once done, those that failed within `max_failed_nodes`.
    pub fn left_out(&self) -> Vec<String> {
        self.out_of_rotation
            .iter()
            .filter(|n| self.unfinished() || self.failed_nodes.contains(n))
            .cloned()
            .collect()
    }

    /// An unfinished database path left the site in maintenance with its upgrade to run.
    pub fn upgrade_left(&self) -> bool {
        self.unfinished() && self.upgrade_pending
    }

    /// The command that finishes this roll when it stopped: `moodle-release roll --resume` (or
    /// `rollback --resume`), which goes on to the same target.
    pub fn resume_command(&self) -> String {
        format!("moodle-release {} --resume", self.kind)
    }

    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("state.json")
    }

    /// The state an earlier roll left, `None` when there is none. A file that cannot be read
    /// or parsed is an error naming it: it may hold the only record of a stopped roll (which
    /// servers it took out, an upgrade left to finish), so it is never taken for "no roll".
    pub fn read(state_dir: &Path) -> Result<Option<RollState>, StateError> {
        let path = Self::path(state_dir);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Damaged {
                at: path.display().to_string(),
                source,
                remedy: "move it away",
            })
    }

    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        crate::fsutil::write_atomic(
            &Self::path(state_dir),
            &serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )
    }
}

pub fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// An open journal.
pub struct Journal {
    pub path: PathBuf,
    file: File,
    pub entries: Vec<Entry>,
}

impl Journal {
    /// A new journal `roll-<id>.jsonl` in `state_dir`.
    pub fn create(state_dir: &Path, id: &str) -> std::io::Result<Journal> {
        fs::create_dir_all(state_dir)?;
        let path = state_dir.join(format!("roll-{id}.jsonl"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Journal {
            path,
            file,
            entries: Vec::new(),
        })
    }

    /// Appends a step; each line is written and flushed at once, so a killed roll leaves a
    /// journal that says how far it got. The entry is kept in memory (for the summary) even
    /// when the write fails; the error is the caller's to say.
    pub fn log(&mut self, e: Entry) -> std::io::Result<()> {
        let line = serde_json::to_string(&e).map_err(std::io::Error::other);
        self.entries.push(e);
        let line = line?;
        writeln!(self.file, "{line}")?;
        self.file.flush()
    }
}
