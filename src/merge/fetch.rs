//! Fetching one source (upstream or a plugin) into the deployment repository, under its own ref
//! namespace (`refs/moodle-release/...`), with the git CLI or libgit2.
//!
//! Only the one ref asked for is fetched (`--no-tags`, a narrow refspec), and nothing at all when
//! the pinned commit is already in the object database: a re-run of `merge` does no network I/O.

use std::path::{Path, PathBuf};
use std::process::Command;

use git2::{Oid, Repository};

use crate::config::{FetchBackend, Ssh};
use crate::report::Reporter;

/// A fetch failed: which source, which URL and ref, and what git said.
#[derive(Debug, thiserror::Error)]
#[error("fetching {source_name} ({url}, ref `{reference}`) failed: {detail}")]
pub struct FetchError {
    pub source_name: String,
    pub url: String,
    pub reference: String,
    pub detail: FetchFailure,
}

/// What went wrong fetching one source.
#[derive(Debug, thiserror::Error)]
pub enum FetchFailure {
    /// The git CLI failed: what it said, its lines joined.
    #[error("{0}")]
    Git(String),
    #[error("cannot run git: {0} (install git, or set [deploy] fetch = \"libgit2\")")]
    NoGit(std::io::Error),
    #[error("{}", .0.message())]
    Libgit2(git2::Error),
    #[error("`{reference}` is not a commit: {}", source.message())]
    NotACommit {
        reference: String,
        source: git2::Error,
    },
    #[error("the lock pins {0}, which the source no longer has")]
    PinGone(Oid),
    #[error("the fetch did not run")]
    DidNotRun,
}

/// What to fetch.
pub struct Request<'a> {
    /// `upstream`, `mod_customcert`...: for messages.
    pub name: &'a str,
    /// As git takes it (see [`normalize_url`]).
    pub url: String,
    pub reference: &'a str,
    /// The ref this source is kept under, `refs/moodle-release/...`.
    pub local_ref: String,
    /// The commit the lock pins, when there is one: fetched only if missing.
    pub pinned: Option<Oid>,
}

/// Turns a config URL into what git understands: local paths are made absolute against the
/// config file's folder; URLs (`scheme://`, `user@host:path`) are kept as written.
pub fn normalize_url(url: &str, base_dir: &Path) -> String {
    let is_url = url.contains("://") || {
        // scp-like `host:path`: a colon before the first slash.
        match (url.find(':'), url.find('/')) {
            (Some(c), Some(s)) => c < s && c > 1,
            (Some(c), None) => c > 1,
            _ => false,
        }
    };
    if is_url {
        url.to_string()
    } else {
        let p = PathBuf::from(shellexpand_home(url));
        let p = if p.is_absolute() { p } else { base_dir.join(p) };
        p.to_string_lossy().into_owned()
    }
}

fn shellexpand_home(p: &str) -> String {
    match (p.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => p.to_string(),
    }
}

/// How many sources are fetched at once. A fetch mostly waits (TLS or SSH handshakes, ref
/// advertisement, the server packing): a site with a hundred plugins on GitHub fetches them
/// in a tenth of the time of one after another.
pub const JOBS: usize = 8;

/// Fetches every request whose pin is not already present, [`JOBS`] at a time, as one step
/// of `reporter` with its progress. Returns, in the requests' order, the commit each source is
/// at.
pub fn fetch_all(
    repo: &Repository,
    reqs: &[Request],
    backend: FetchBackend,
    ssh: &Ssh,
    reporter: &dyn Reporter,
) -> Vec<Result<Oid, FetchError>> {
    let err = |req: &Request, detail: FetchFailure| FetchError {
        source_name: req.name.to_string(),
        url: req.url.clone(),
        reference: req.reference.to_string(),
        detail,
    };
    // 1. Pinned commits already here: no network at all.
    let here: Vec<Option<Result<Oid, FetchError>>> = reqs
        .iter()
        .map(|req| {
            let pin = req.pinned.filter(|&p| repo.find_commit(p).is_ok())?;
            Some(
                repo.reference(&req.local_ref, pin, true, "moodle-release: pinned")
                    .map(|_| pin)
                    .map_err(|e| err(req, FetchFailure::Libgit2(e))),
            )
        })
        .collect();
    // 2. The others, each into a temporary ref of its own, several at once: git writes objects
    // and refs safely side by side (each under its own name).
    let todo: Vec<&Request> = reqs
        .iter()
        .zip(&here)
        .filter(|(_, h)| h.is_none())
        .map(|(r, _)| r)
        .collect();
    reporter.step(&if todo.is_empty() {
        format!("using the locked commits of {} sources", reqs.len())
    } else {
        format!(
            "fetching {} of {} sources ({} at a time)",
            todo.len(),
            reqs.len(),
            JOBS.min(todo.len())
        )
    });
    let git_dir = repo.path().to_path_buf();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let ended = std::sync::atomic::AtomicUsize::new(0);
    let transfers: Vec<std::sync::Mutex<Option<Result<(), FetchFailure>>>> =
        todo.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..JOBS.min(todo.len()) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(req) = todo.get(k) else { break };
                let refspec = format!("+{}:{}", wanted(req), tmp_ref(req));
                let r = match backend {
                    FetchBackend::Git => fetch_cli(&git_dir, &req.url, &refspec, ssh),
                    FetchBackend::Libgit2 => Repository::open(&git_dir)
                        .map_err(FetchFailure::Libgit2)
                        .and_then(|r| fetch_libgit2(&r, &req.url, &refspec)),
                };
                *transfers[k].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                let n = ended.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                reporter.progress(n as u64, todo.len() as u64);
            });
        }
    });
    reporter.step_done();
    // 3. In the requests' order: where each fetch ended, checked against its pin, under its
    // own ref. The k-th request not already here is the k-th transfer.
    let mut transfers = transfers
        .into_iter()
        .map(|t| t.into_inner().unwrap_or_else(|e| e.into_inner()));
    reqs.iter()
        .zip(here)
        .map(|(req, h)| {
            h.unwrap_or_else(|| {
                transfers
                    .next()
                    .flatten()
                    .unwrap_or(Err(FetchFailure::DidNotRun))
                    .and_then(|()| settle(repo, req))
                    .map_err(|detail| err(req, detail))
            })
        })
        .collect()
}

/// What is fetched: the pin's commit when there is one (the ref may have moved since).
fn wanted(req: &Request) -> String {
    match req.pinned {
        Some(pin) => pin.to_string(),
        None => req.reference.to_string(),
    }
}

fn tmp_ref(req: &Request) -> String {
    format!("{}-fetching", req.local_ref)
}

/// After a fetch: the commit it brought, checked against the pin and kept under the source's
/// ref; the temporary ref is removed.
fn settle(repo: &Repository, req: &Request) -> Result<Oid, FetchFailure> {
    let tmp = tmp_ref(req);
    let commit = (|| -> Result<Oid, git2::Error> {
        let r = repo.find_reference(&tmp)?;
        let c = r.peel_to_commit()?;
        Ok(c.id())
    })()
    .map_err(|source| FetchFailure::NotACommit {
        reference: req.reference.to_string(),
        source,
    })?;
    if let Some(pin) = req.pinned {
        if pin != commit {
            return Err(FetchFailure::PinGone(pin));
        }
    }
    repo.reference(&req.local_ref, commit, true, "moodle-release: fetched")
        .map_err(FetchFailure::Libgit2)?;
    if let Ok(mut r) = repo.find_reference(&tmp) {
        let _ = r.delete();
    }
    Ok(commit)
}

/// The git CLI: honours `~/.ssh/config` (or `[ssh] config`), checks host keys against
/// `[ssh] known_hosts`, never prompts.
fn fetch_cli(git_dir: &Path, url: &str, refspec: &str, ssh: &Ssh) -> Result<(), FetchFailure> {
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir")
        .arg(git_dir)
        .args(["fetch", "--no-tags", "--quiet", "--no-write-fetch-head"])
        .arg(url)
        .arg(refspec)
        .env("GIT_TERMINAL_PROMPT", "0");
    if std::env::var_os("GIT_SSH_COMMAND").is_none() {
        let mut ssh_cmd = String::from("ssh -o BatchMode=yes -o StrictHostKeyChecking=yes");
        if let Some(cfg) = &ssh.config {
            let cfg = PathBuf::from(shellexpand_home(cfg));
            if cfg.is_file() {
                ssh_cmd.push_str(&format!(" -F '{}'", cfg.display()));
            }
        }
        if let Some(kh) = &ssh.known_hosts {
            let kh = PathBuf::from(shellexpand_home(kh));
            ssh_cmd.push_str(&format!(" -o UserKnownHostsFile='{}'", kh.display()));
        }
        cmd.env("GIT_SSH_COMMAND", ssh_cmd);
    }
    let out = cmd.output().map_err(FetchFailure::NoGit)?;
    if out.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        Err(FetchFailure::Git(lines.join("; ")))
    }
}

/// libgit2: in process, tried again while another fetch holds `shallow.lock`.
///
/// libgit2 (1.9) rewrites `.git/shallow` after every pack it downloads, shallow repository or
/// not, under a lock it does not wait for: two fetches into one repository at once (see
/// [`JOBS`]) can fail on it. That happens once the pack is in, so the next try finds every
/// object here and downloads nothing.
fn fetch_libgit2(repo: &Repository, url: &str, refspec: &str) -> Result<(), FetchFailure> {
    let mut tries = 0;
    loop {
        match fetch_libgit2_once(repo, url, refspec) {
            Err(e) if e.message().contains("shallow.lock") && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10 * tries));
            }
            r => return r.map_err(FetchFailure::Libgit2),
        }
    }
}

/// One libgit2 fetch. Credentials come from ssh-agent, then the usual key files, a bounded
/// number of times (libgit2 calls the callback again after every refusal).
fn fetch_libgit2_once(repo: &Repository, url: &str, refspec: &str) -> Result<(), git2::Error> {
    let mut attempts = 0;
    let mut cb = git2::RemoteCallbacks::new();
    cb.credentials(move |_url, user, allowed| {
        attempts += 1;
        if attempts > 4 {
            return Err(git2::Error::from_str(
                "authentication failed (no key was accepted)",
            ));
        }
        let user = user.unwrap_or("git");
        if allowed.contains(git2::CredentialType::SSH_KEY) {
            if attempts == 1 {
                return git2::Cred::ssh_key_from_agent(user);
            }
            let home = std::env::var("HOME").unwrap_or_default();
            let names = ["id_ed25519", "id_ecdsa", "id_rsa"];
            if let Some(key) = names
                .iter()
                .map(|n| PathBuf::from(&home).join(".ssh").join(n))
                .filter(|p| p.is_file())
                .nth(attempts - 2)
            {
                return git2::Cred::ssh_key(user, None, &key, None);
            }
        }
        if allowed.contains(git2::CredentialType::DEFAULT) {
            return git2::Cred::default();
        }
        Err(git2::Error::from_str(
            "authentication failed (no usable credentials)",
        ))
    });
    let mut opts = git2::FetchOptions::new();
    opts.remote_callbacks(cb)
        .download_tags(git2::AutotagOption::None)
        .update_fetchhead(false);
    let mut remote = repo.remote_anonymous(url)?;
    remote.fetch(&[refspec], Some(&mut opts), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths() {
        let base = Path::new("/site");
        assert_eq!(normalize_url("https://h/x.git", base), "https://h/x.git");
        assert_eq!(
            normalize_url("git@github.com:a/b.git", base),
            "git@github.com:a/b.git"
        );
        assert_eq!(normalize_url("file:///x", base), "file:///x");
        assert_eq!(normalize_url("../up", base), "/site/../up");
        assert_eq!(normalize_url("/abs/up", base), "/abs/up");
    }
}
