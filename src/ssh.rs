//! Running commands on the nodes over SSH: the system's ssh through the openssh crate, one
//! multiplexed master connection per node, `[ssh] config` and `known_hosts`, host keys always
//! checked (`StrictHostKeyChecking=yes`: an unknown or changed key is an error, never a prompt),
//! and `sudo -n` when the login user is not root. Each command is a session opened on the
//! master's control socket itself (openssh's native mux): no `ssh` process per command, which
//! halves a 20-node `roll --plan` whose masters are up.
//!
//! The crate is async; the rest of the tool is not. A small tokio runtime lives here and the
//! API is blocking, with [`Ssh::run_all`] for running one command on several nodes at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openssh::{KnownHosts, Session, SessionBuilder};

/// An SSH failure, naming the node.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{node}: cannot connect over ssh to `{dest}`: {message}")]
    Connect {
        node: String,
        dest: String,
        message: String,
    },
    #[error("{node}: running `{command}` failed: {message}")]
    Run {
        node: String,
        command: String,
        message: String,
    },
}

/// What a remote command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: Option<i32>,
    /// As bytes: it can be a tar stream. [`Output::text`] for text.
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl From<std::process::Output> for Output {
    fn from(o: std::process::Output) -> Output {
        Output {
            code: o.status.code(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            stdout: o.stdout,
        }
    }
}

impl Output {
    /// stdout as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// `exit 100`, or `no exit status` when ssh lost the command (a signal, a dropped link).
    pub fn status(&self) -> String {
        match self.code {
            Some(c) => format!("exit {c}"),
            None => "no exit status".into(),
        }
    }

    /// The last lines of stderr (or stdout), for an error message.
    pub fn tail(&self) -> String {
        let stdout = self.text();
        let text = if self.stderr.trim().is_empty() {
            &stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    }
}

/// A connection to one node.
pub struct Conn {
    pub node: String,
    session: Arc<Session>,
    /// Commands are wrapped in `sudo -n` when the login user is not root.
    sudo: bool,
}

/// The SSH layer: settings and the runtime.
pub struct Ssh {
    rt: tokio::runtime::Runtime,
    builder: SessionBuilder,
    /// Where the control sockets of persistent masters are remembered (`None`: masters end with
    /// this process).
    masters: Option<PathBuf>,
    /// The settings a remembered master was made with: another config or known_hosts file
    /// means a new connection.
    identity: String,
}

fn expand(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

impl Ssh {
    /// The SSH layer; with `masters` (a file in the state folder), master connections persist
    /// for `[ssh] persist` (see [`crate::config::Ssh::persist`]) and are reused by the next run.
    pub fn with_masters(
        cfg: &crate::config::Ssh,
        masters: Option<PathBuf>,
    ) -> Result<Ssh, SshError> {
        let mut ssh = Ssh::new(cfg)?;
        let persist = usize::try_from(cfg.persist().as_secs())
            .ok()
            .and_then(std::num::NonZeroUsize::new);
        if let (Some(secs), Some(_)) = (persist, &masters) {
            ssh.builder
                .control_persist(openssh::ControlPersist::IdleFor(secs));
            ssh.masters = masters;
        }
        Ok(ssh)
    }

    pub fn new(cfg: &crate::config::Ssh) -> Result<Ssh, SshError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| SshError::Connect {
                node: "-".into(),
                dest: "-".into(),
                message: e.to_string(),
            })?;
        let mut builder = SessionBuilder::default();
        builder.known_hosts_check(KnownHosts::Strict);
        builder.connect_timeout(Duration::from_secs(10));
        builder.server_alive_interval(Duration::from_secs(15));
        if let Some(c) = &cfg.config {
            let p = expand(c);
            if p.is_file() {
                builder.config_file(p);
            }
        }
        if let Some(k) = &cfg.known_hosts {
            builder.user_known_hosts_file(expand(k));
        }
        let identity = format!("{:?}|{:?}", cfg.config, cfg.known_hosts);
        Ok(Ssh {
            rt,
            builder,
            masters: None,
            identity,
        })
    }

    /// Opens the master connection to `dest` (`[user@]host[:port]`, resolved through the ssh
    /// config) and finds out whether commands need sudo.
    pub fn connect(&self, node: &str, dest: &str) -> Result<Conn, SshError> {
        self.connect_all(&[(node.to_string(), dest.to_string())])
            .pop()
            .unwrap_or_else(|| {
                Err(SshError::Connect {
                    node: node.to_string(),
                    dest: dest.to_string(),
                    message: "no connection".into(),
                })
            })
    }

    /// Connects to several nodes at once; results in the same order. New connections cost
    /// the client CPU, not round trips: OpenSSH 9.2's default key exchange (sntrup761x25519)
    /// takes about 0.1 s of it per connection (docs/benchmarks.md, "The first plan").
    pub fn connect_all(&self, nodes: &[(String, String)]) -> Vec<Result<Conn, SshError>> {
        self.connect_all_then(nodes, None)
            .into_iter()
            .map(|r| r.map(|(c, _)| c))
            .collect()
    }

    /// [`Self::connect_all`], and `query` (a shell script, under `sudo -n` when the login user
    /// is not root) in the same round trip as the login check: one session per node instead
    /// of two, which is a tenth of a second on a 20-node plan. Its output comes back with each
    /// connection (empty without a query).
    pub fn connect_all_then(
        &self,
        nodes: &[(String, String)],
        query: Option<&str>,
    ) -> Vec<Result<Connected, SshError>> {
        let conns = self.open_all(nodes);
        // One round trip per node: who logs in, and, when it is not root, whether passwordless
        // sudo works. Finding out now gives one clear error instead of every command failing
        // (a failed query would read as "nothing installed").
        let mut script =
            format!(r#"u=$(id -u); echo "$u"; [ "$u" = 0 ] || sudo -n true || exit {REFUSED}"#);
        if let Some(q) = query {
            script.push_str(&format!(
                r#"; if [ "$u" = 0 ]; then ( {q}
); else sudo -n sh -c {}; fi"#,
                quote(q)
            ));
        }
        let jobs = conns
            .iter()
            .flatten()
            .map(|c| (c, script.clone()))
            .collect();
        // One answer per connection that is up, in order.
        let mut answers = self.run_all(jobs).into_iter();
        conns
            .into_iter()
            .zip(nodes)
            .map(|(c, (node, dest))| {
                let mut c = c?;
                let r = answers.next().unwrap_or_else(|| {
                    Err(SshError::Run {
                        node: node.clone(),
                        command: "id -u".into(),
                        message: "no answer".into(),
                    })
                });
                // The first line is the login's uid; unknown (the command failed to run) counts
                // as not root.
                let first_line = |o: &Output| o.stdout.iter().position(|&b| b == b'\n');
                c.sudo = match &r {
                    Ok(o) => o.stdout[..first_line(o).unwrap_or(o.stdout.len())] != *b"0",
                    Err(_) => true,
                };
                match r {
                    // Not root, and `sudo -n` fails.
                    Ok(o) if o.code == Some(REFUSED) => Err(SshError::Connect {
                        node: node.clone(),
                        dest: dest.clone(),
                        message: format!("the login user is not root and `sudo -n` fails ({}): give it passwordless sudo, or log in as root", o.tail()),
                    }),
                    // The query's own answer: what follows the first line.
                    r => Ok((
                        c,
                        r.map(|mut o| {
                            let rest = first_line(&o).map_or(o.stdout.len(), |p| p + 1);
                            o.stdout.drain(..rest);
                            o
                        }),
                    )),
                }
            })
            .collect()
    }

    /// Opens a master connection to every node at once (reusing the ones a run before left
    /// up, from the `masters` file, and remembering the new ones there).
    fn open_all(&self, nodes: &[(String, String)]) -> Vec<Result<Conn, SshError>> {
        let remembered: BTreeMap<String, PathBuf> = self
            .masters
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let persist = self.masters.is_some();
        let sessions = self.rt.block_on(async {
            let handles: Vec<_> = nodes
                .iter()
                .map(|(_, dest)| {
                    let b = self.builder.clone();
                    let d = ssh_destination(dest);
                    let known = remembered.get(&format!("{}|{d}", self.identity)).cloned();
                    tokio::spawn(async move { open(b, d, known, persist).await })
                })
                .collect();
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await);
            }
            out
        });
        if let Some(path) = &self.masters {
            let mut map = remembered.clone();
            for ((_, dest), r) in nodes.iter().zip(&sessions) {
                if let Ok(Ok((_, Some(ctl)))) = r {
                    map.insert(
                        format!("{}|{}", self.identity, ssh_destination(dest)),
                        ctl.clone(),
                    );
                }
            }
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(path, serde_json::to_vec_pretty(&map).unwrap_or_default());
        }
        let sessions: Vec<_> = sessions
            .into_iter()
            .map(|r| r.map(|x| x.map(|(s, _)| s)))
            .collect();
        nodes
            .iter()
            .zip(sessions)
            .map(|((node, dest), r)| {
                let err = |message: String| SshError::Connect {
                    node: node.clone(),
                    dest: dest.clone(),
                    message,
                };
                match r {
                    Ok(Ok(session)) => Ok(Conn {
                        node: node.clone(),
                        session: Arc::new(session),
                        sudo: false,
                    }),
                    Ok(Err(e)) => Err(err(describe(&e))),
                    Err(e) => Err(err(e.to_string())),
                }
            })
            .collect()
    }

    /// Runs a shell command with `input` streamed to its stdin.
    pub fn run_with_input(
        &self,
        conn: &Conn,
        script: &str,
        mut input: impl std::io::Read,
    ) -> Result<Output, SshError> {
        let session = conn.session.clone();
        let node = conn.node.clone();
        let sudo = conn.sudo;
        let script = script.to_string();
        self.rt.block_on(async move {
            use tokio::io::AsyncWriteExt;
            let err = |message: String| SshError::Run {
                node: node.clone(),
                command: script.clone(),
                message,
            };
            let mut cmd = shell_command(session.clone(), sudo, &script);
            cmd.stdin(openssh::Stdio::piped())
                .stdout(openssh::Stdio::piped())
                .stderr(openssh::Stdio::piped());
            let mut child = cmd.spawn().await.map_err(|e| err(describe(&e)))?;
            if let Some(mut stdin) = child.stdin().take() {
                // Streamed a MiB at a time: the input can be a package of hundreds of MB.
                // (The blocking read holds only this thread; the runtime's workers drive ssh.)
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = input.read(&mut buf).map_err(|e| err(e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    stdin
                        .write_all(&buf[..n])
                        .await
                        .map_err(|e| err(e.to_string()))?;
                }
                stdin.shutdown().await.map_err(|e| err(e.to_string()))?;
                drop(stdin);
            }
            let out = child
                .wait_with_output()
                .await
                .map_err(|e| err(describe(&e)))?;
            Ok(out.into())
        })
    }

    /// Runs a shell command on a node: a query, which must answer within [`QUERY_TIMEOUT`].
    pub fn run(&self, conn: &Conn, script: &str) -> Result<Output, SshError> {
        self.run_for(conn, script, Some(QUERY_TIMEOUT))
    }

    /// Runs a shell command that may take long (an install, a database upgrade): no timeout.
    pub fn run_long(&self, conn: &Conn, script: &str) -> Result<Output, SshError> {
        self.run_for(conn, script, None)
    }

    fn run_for(
        &self,
        conn: &Conn,
        script: &str,
        timeout: Option<Duration>,
    ) -> Result<Output, SshError> {
        self.rt.block_on(run_on(
            conn.session.clone(),
            conn.node.clone(),
            conn.sudo,
            script.to_string(),
            timeout,
            |_| {},
        ))
    }

    /// Runs `script` on `conn`'s node every `period` in the background (on this layer's runtime,
    /// whatever the caller is doing) until the returned [`Heartbeat`] is dropped. Failures are
    /// ignored: a beat that does not get through is the next one's job.
    pub fn every(&self, conn: &Conn, period: Duration, script: &str) -> Heartbeat {
        let session = conn.session.clone();
        let sudo = conn.sudo;
        let script = script.to_string();
        Heartbeat(self.rt.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let run = streamed(session.clone(), sudo, &script, |_| {});
                let _ = tokio::time::timeout(QUERY_TIMEOUT, run).await;
            }
        }))
    }

    /// Runs the same query on several nodes at once; results in the same order.
    pub fn run_all(&self, jobs: Vec<(&Conn, String)>) -> Vec<Result<Output, SshError>> {
        self.run_all_for(jobs, Some(QUERY_TIMEOUT), |_, _| {})
    }

    /// Runs long commands (installs, downloads; no timeout) on several nodes at once, for
    /// commands that say what they wait for: each stderr line that starts with [`NOTE`] is
    /// handed to `on_note` (job index, the rest of the line) on this thread as soon as it
    /// comes, while the commands run. The lines stay in the output. Results in the same order.
    pub fn run_all_long_noting(
        &self,
        jobs: Vec<(&Conn, String)>,
        on_note: impl FnMut(usize, &str),
    ) -> Vec<Result<Output, SshError>> {
        self.run_all_for(jobs, None, on_note)
    }

    fn run_all_for(
        &self,
        jobs: Vec<(&Conn, String)>,
        timeout: Option<Duration>,
        mut on_note: impl FnMut(usize, &str),
    ) -> Vec<Result<Output, SshError>> {
        self.rt.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
            let handles: Vec<_> = jobs
                .into_iter()
                .enumerate()
                .map(|(i, (c, s))| {
                    let tx = tx.clone();
                    tokio::spawn(run_on(
                        c.session.clone(),
                        c.node.clone(),
                        c.sudo,
                        s,
                        timeout,
                        move |note| {
                            let _ = tx.send((i, note));
                        },
                    ))
                })
                .collect();
            drop(tx);
            // Ends when every command has ended (each holds a sender until then).
            while let Some((i, note)) = rx.recv().await {
                on_note(i, &note);
            }
            let mut out = Vec::new();
            for h in handles {
                out.push(match h.await {
                    Ok(r) => r,
                    Err(e) => Err(SshError::Run {
                        node: "-".into(),
                        command: "-".into(),
                        message: e.to_string(),
                    }),
                });
            }
            out
        })
    }
}

/// A command repeated in the background by [`Ssh::every`]; it stops when this is dropped.
pub struct Heartbeat(tokio::task::JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection, with the answer to the query asked in its first round trip (see
/// [`Ssh::connect_all_then`]).
pub type Connected = (Conn, Result<Output, SshError>);

/// The exit status of the login check when the user is not root and `sudo -n` fails.
const REFUSED: i32 = 97;

/// How long a query (`id`, `dpkg-query`, a lock) may take before the node counts as hung.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `script` on a node, within `timeout` if there is one. Its stderr is read line by line
/// as it comes, and `note` gets the rest of each [`NOTE`] line.
async fn run_on(
    session: Arc<Session>,
    node: String,
    sudo: bool,
    script: String,
    timeout: Option<Duration>,
    note: impl Fn(String),
) -> Result<Output, SshError> {
    let err = |message: String| SshError::Run {
        node: node.clone(),
        command: script.clone(),
        message,
    };
    // A command with no time limit changes the node: it must not die with its connection.
    let wrapped = match timeout {
        Some(_) => None,
        None => Some(detached(&script)),
    };
    let run = streamed(session, sudo, wrapped.as_deref().unwrap_or(&script), note);
    let out = match timeout {
        Some(t) => match tokio::time::timeout(t, run).await {
            Ok(r) => r,
            Err(_) => {
                return Err(err(format!(
                    "no answer within {}s: the node hangs",
                    t.as_secs()
                )))
            }
        },
        None => run.await,
    };
    out.map_err(|e| err(describe(&e)))
}

/// The start of a line a remote command prints on stderr to say what it waits for (see
/// [`Ssh::run_all_long_noting`]).
pub const NOTE: &str = "moodle-release-note: ";

/// Runs `script`, reading its stderr line by line as it comes and calling `note` with the rest
/// of each [`NOTE`] line.
async fn streamed(
    session: Arc<Session>,
    sudo: bool,
    script: &str,
    note: impl Fn(String),
) -> Result<Output, openssh::Error> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut cmd = shell_command(session, sudo, script);
    // No command reads stdin: an inherited one would hand the terminal to the master.
    cmd.stdin(openssh::Stdio::null())
        .stdout(openssh::Stdio::piped())
        .stderr(openssh::Stdio::piped());
    let mut child = cmd.spawn().await?;
    let stdout = child.stdout().take();
    let stderr = child.stderr().take();
    // stdout is drained beside stderr, or a full pipe would stall the command.
    let stdout = tokio::spawn(async move {
        let mut v = Vec::new();
        if let Some(mut o) = stdout {
            let _ = o.read_to_end(&mut v).await;
        }
        v
    });
    let mut err = Vec::new();
    if let Some(e) = stderr {
        let mut lines = tokio::io::BufReader::new(e);
        let mut line = Vec::new();
        while lines.read_until(b'\n', &mut line).await.unwrap_or(0) > 0 {
            if let Some(rest) = line.strip_prefix(NOTE.as_bytes()) {
                note(String::from_utf8_lossy(rest).trim_end().to_string());
            }
            err.append(&mut line);
        }
    }
    let status = child.wait().await?;
    Ok(Output {
        code: status.code(),
        stdout: stdout.await.unwrap_or_default(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
    })
}

/// A session to `dest`: the remembered master when it still answers, else a new connection
/// (host key checked). With `persist`, the new master outlives this process and its control
/// socket is returned to be remembered.
async fn open(
    builder: SessionBuilder,
    dest: String,
    known: Option<PathBuf>,
    persist: bool,
) -> Result<(Session, Option<PathBuf>), openssh::Error> {
    if let Some(ctl) = known {
        if ctl.exists() {
            let s = Session::resume_mux(ctl.clone().into_boxed_path(), None);
            if s.check().await.is_ok() {
                return Ok((s, Some(ctl)));
            }
        }
    }
    let s = builder.connect_mux(&dest).await?;
    if !persist {
        return Ok((s, None));
    }
    let (ctl, log) = s.detach();
    let path = PathBuf::from(&*ctl);
    Ok((Session::resume_mux(ctl, log), Some(path)))
}

/// `sh -c SCRIPT` on the node, under `sudo -n` when the login user is not root.
fn shell_command(
    session: Arc<Session>,
    sudo: bool,
    script: &str,
) -> openssh::OwningCommand<Arc<Session>> {
    let mut c = Session::to_command(session, if sudo { "sudo" } else { "sh" });
    if sudo {
        c.arg("-n").arg("sh");
    }
    // openssh reports a remote exit status of 127 as an error of its own ("remote command
    // not found"), which would lose the command's stderr (`sh: 1: phpp: not found`, a typo in a
    // configured command): every command remaps it to 125 and says so.
    c.arg("-c").arg(format!(
        "( {script}\n) ; rc=$?; if [ $rc -eq 127 ]; then echo '(exit status 127, reported as 125)' >&2; exit 125; fi; exit $rc"
    ));
    c
}

/// `script` wrapped to run to its end on the node even when its connection does not: the tool
/// killed (a CI job cancelled, `kill -9`), an engineer's network gone mid-roll. Unwrapped, a
/// command that writes to the dead channel gets SIGPIPE and stops half-way: a site's upgrade
/// wrapper that echoes between its steps, say, leaves a half-done database upgrade. (The
/// install was safe by chance, as `apt_install` captures apt's output, and so is PHP, which
/// ignores SIGPIPE; with the wrapper no command depends on such luck.)
///
/// sshd sends no SIGHUP to a session without a terminal, so the command only has to keep off the
/// channel: its stdout goes to a file on the node, printed once it ends, and its stderr through
/// `tee -p`, which passes each line on as it comes (the [`NOTE`] lines) and, once the channel is
/// gone, goes on writing to a file alone instead of dying. The exit status comes from a file.
/// A re-run finds a command that outlived its connection through apt's and dpkg's locks, which
/// installs wait for.
fn detached(script: &str) -> String {
    format!(
        "f=$(mktemp /tmp/moodle-release.XXXXXX) || exit 125\n\
         {{ ( {script}\n) ; echo $? >\"$f.rc\"; }} </dev/null 2>&1 >\"$f\" | tee -p -a \"$f.err\" >&2\n\
         cat \"$f\"; rc=$(cat \"$f.rc\" 2>/dev/null || echo 125); rm -f \"$f\" \"$f.rc\" \"$f.err\"; exit $rc"
    )
}

/// `user@host:port` as ssh takes it (`ssh://user@host:port`).
fn ssh_destination(dest: &str) -> String {
    match dest.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("ssh://{host}:{port}")
        }
        _ => dest.to_string(),
    }
}

/// openssh's errors, with the part a user acts on first (host key failures especially).
fn describe(e: &openssh::Error) -> String {
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    if text.contains("Host key verification failed")
        || text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || text.contains("No ED25519 host key is known")
        || text.contains("host key")
    {
        text.push_str(" (the node's host key is not in [ssh] known_hosts, or it changed: check it and add it with ssh-keyscan; moodle-release never accepts unknown keys)");
    }
    text
}

/// Shell-quotes `s` for a remote `sh -c` line.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
