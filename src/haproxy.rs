//! HAProxy's Runtime API (2.6): the few commands a roll needs, with every answer parsed.
//!
//! The API answers in text and tools like socat exit 0 on errors, so each command is sent after
//! `set severity-output number` and any `[0-3]:` line is an error. `show servers state` gives the
//! admin state bits (drain, maint) and `show stat` the live counters (`scur`, `qcur`) and the
//! health-check result.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::config::{Lb as LbConfig, Socket};

/// A Runtime API connection, unix or TCP.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Talking to one load balancer failed.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("{lb}: cannot reach the Runtime API at {socket}: {message}")]
    Connect {
        lb: String,
        socket: String,
        message: String,
    },
    #[error("{lb}: `{command}` failed: {answer}")]
    Command {
        lb: String,
        command: String,
        answer: String,
    },
    #[error("{lb}: backend `{backend}` has no server `{server}` (servers: {known})")]
    NoServer {
        lb: String,
        backend: String,
        server: String,
        known: String,
    },
    #[error("{lb}: unexpected answer to `{command}`: {answer}")]
    Parse {
        lb: String,
        command: String,
        answer: String,
    },
}

impl HaError {
    /// The LB it is about.
    pub fn lb(&self) -> &str {
        match self {
            HaError::Connect { lb, .. }
            | HaError::Command { lb, .. }
            | HaError::NoServer { lb, .. }
            | HaError::Parse { lb, .. } => lb,
        }
    }
}

/// `name` among `servers` (read from LB `lb`'s `backend`), or an error that lists them.
pub fn find_server<'a>(
    lb: &str,
    backend: &str,
    servers: &'a [Server],
    name: &str,
) -> Result<&'a Server, HaError> {
    servers
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| HaError::NoServer {
            lb: lb.to_string(),
            backend: backend.to_string(),
            server: name.to_string(),
            known: servers
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The admin state a roll sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    Ready,
    Drain,
    Maint,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

/// One server of the backend, as the LB sees it now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Server {
    pub name: String,
    /// Forced drain (admin state bit 0x08).
    pub drain: bool,
    /// Forced maintenance (0x01), or maintenance inherited/configured (0x02, 0x04, 0x10...).
    pub maint: bool,
    /// In-flight sessions.
    pub scur: u64,
    /// Queued requests.
    pub qcur: u64,
    /// `UP`, `DOWN`, `DRAIN`, `MAINT`, `UP 1/2`...
    pub status: String,
    /// `L7OK`, `L7STS`, `L4CON`...
    pub check_status: String,
    /// The server has an agent-check, which can cancel a drain.
    pub agent: bool,
    /// The weight set by the operator (`srv_uweight`).
    pub weight: u32,
}

impl Server {
    /// In rotation: takes new requests.
    pub fn in_rotation(&self) -> bool {
        !self.drain && !self.maint && self.status.starts_with("UP")
    }

    /// The LB's own health check passes now.
    pub fn check_ok(&self) -> bool {
        self.check_status.starts_with("L7OK")
            || self.check_status.starts_with("L6OK")
            || self.check_status.starts_with("L4OK")
    }
}

/// A server's response counters, as `show stat` gives them: cumulative since HAProxy started
/// (or `clear counters`), so a window is the difference of two samples.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub name: String,
    /// HTTP responses of every class (`hrsp_1xx` .. `hrsp_5xx` and `hrsp_other`).
    pub responses: u64,
    /// `hrsp_5xx`: responses with a 5xx status, the server's own and HAProxy's for it (502, 504).
    pub errors_5xx: u64,
    /// `rtime`: average response time (ms) over the last 1024 requests.
    pub rtime_ms: u64,
    /// `ttime`: average total session time (ms) over the last 1024 requests.
    pub ttime_ms: u64,
}

/// A load balancer's Runtime API.
#[derive(Debug, Clone)]
pub struct Lb {
    pub name: String,
    pub socket: Socket,
    pub backend: String,
}

/// `show info`'s identity of the running process: a change means HAProxy was reloaded (and
/// runtime states were lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: String,
    pub uptime_sec: u64,
}

impl Lb {
    pub fn from_config(c: &LbConfig) -> Lb {
        Lb {
            name: c.name.clone(),
            socket: c.socket.clone(),
            backend: c.backend.clone(),
        }
    }

    /// Sends one command, returns the answer (errors already turned into `Err`).
    pub fn send(&self, command: &str) -> Result<String, HaError> {
        let conn_err = |message: String| HaError::Connect {
            lb: self.name.clone(),
            socket: self.socket.to_string(),
            message,
        };
        let line = format!("set severity-output number; {command}\n");
        let timeout = Duration::from_secs(5);
        let mut answer = String::new();
        // One command per connection: HAProxy answers and closes (non-interactive mode).
        let mut exchange = |s: &mut dyn ReadWrite| -> std::io::Result<()> {
            s.write_all(line.as_bytes())?;
            s.read_to_string(&mut answer).map(|_| ())
        };
        match &self.socket {
            Socket::Unix(path) => {
                let mut s = UnixStream::connect(path).map_err(|e| conn_err(e.to_string()))?;
                s.set_read_timeout(Some(timeout)).ok();
                exchange(&mut s).map_err(|e| conn_err(e.to_string()))?;
            }
            Socket::Tcp(host, port) => {
                let addrs: Vec<std::net::SocketAddr> =
                    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), *port))
                        .map_err(|e| conn_err(e.to_string()))?
                        .collect();
                let first = addrs.first().ok_or_else(|| conn_err("no address".into()))?;
                let mut s = TcpStream::connect_timeout(first, timeout)
                    .map_err(|e| conn_err(e.to_string()))?;
                s.set_read_timeout(Some(timeout)).ok();
                exchange(&mut s).map_err(|e| conn_err(e.to_string()))?;
            }
        }
        let errors: Vec<&str> = answer
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                l.starts_with("[0]:")
                    || l.starts_with("[1]:")
                    || l.starts_with("[2]:")
                    || l.starts_with("[3]:")
            })
            .collect();
        if !errors.is_empty()
            || answer.contains("Permission denied")
            || answer.contains("Unknown command")
        {
            let text = if errors.is_empty() {
                answer.trim().to_string()
            } else {
                errors.join(" ")
            };
            return Err(HaError::Command {
                lb: self.name.clone(),
                command: command.to_string(),
                answer: text,
            });
        }
        Ok(answer)
    }

    /// Every server of the backend with its state and counters.
    pub fn servers(&self) -> Result<Vec<Server>, HaError> {
        let cmd = format!("show servers state {}", self.backend);
        let state = self.send(&cmd)?;
        let parse_err = |answer: &str| HaError::Parse {
            lb: self.name.clone(),
            command: cmd.clone(),
            answer: answer.chars().take(200).collect(),
        };
        let mut header: Vec<String> = Vec::new();
        // From `show servers state`: name, admin state bits, agent-check, user weight.
        let mut admin: Vec<(String, u32, bool, u32)> = Vec::new();
        for line in state.lines() {
            let line = line.trim();
            if line.is_empty() || line == "1" {
                continue;
            }
            if let Some(h) = line.strip_prefix('#') {
                header = h.split_whitespace().map(String::from).collect();
                continue;
            }
            let cols: Vec<&str> = line.split_whitespace().collect();
            let col = |name: &str| {
                header
                    .iter()
                    .position(|h| h == name)
                    .and_then(|i| cols.get(i).copied())
            };
            let name = col("srv_name").ok_or_else(|| parse_err(line))?;
            let bits: u32 = col("srv_admin_state")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| parse_err(line))?;
            let agent = col("srv_agent_state")
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
                != 0;
            let weight = col("srv_uweight").and_then(|v| v.parse().ok()).unwrap_or(1);
            admin.push((name.to_string(), bits, agent, weight));
        }
        if header.is_empty() {
            return Err(parse_err(&state));
        }
        let stat_cmd = format!("show stat {} 4 -1", self.backend);
        let stat = self.send(&stat_cmd)?;
        let mut sheader: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for line in stat.lines() {
            if let Some(h) = line.strip_prefix("# ") {
                sheader = h.split(',').map(String::from).collect();
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.split(',').collect();
            let col = |name: &str| {
                sheader
                    .iter()
                    .position(|h| h == name)
                    .and_then(|i| cols.get(i).copied())
                    .unwrap_or("")
            };
            let name = col("svname");
            let Some((_, bits, agent, weight)) = admin.iter().find(|a| a.0 == name) else {
                continue;
            };
            out.push(Server {
                name: name.to_string(),
                drain: bits & 0x08 != 0,
                maint: bits & (0x01 | 0x02 | 0x04 | 0x10 | 0x20) != 0,
                scur: col("scur").parse().unwrap_or(0),
                qcur: col("qcur").parse().unwrap_or(0),
                status: col("status").to_string(),
                check_status: col("check_status").trim_start_matches('*').to_string(),
                agent: *agent,
                weight: *weight,
            });
        }
        Ok(out)
    }

    /// The response counters of every server of the backend: one `show stat` (a few
    /// milliseconds, measured in `scripts/bench-roll`), read by the canary once a second.
    pub fn counters(&self) -> Result<Vec<Counters>, HaError> {
        let cmd = format!("show stat {} 4 -1", self.backend);
        let stat = self.send(&cmd)?;
        let mut header: Vec<&str> = Vec::new();
        let mut out = Vec::new();
        for line in stat.lines() {
            if let Some(h) = line.strip_prefix("# ") {
                header = h.split(',').collect();
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.split(',').collect();
            let num = |name: &str| -> u64 {
                header
                    .iter()
                    .position(|h| *h == name)
                    .and_then(|i| cols.get(i))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            let Some(name) = header
                .iter()
                .position(|h| *h == "svname")
                .and_then(|i| cols.get(i))
            else {
                continue;
            };
            out.push(Counters {
                name: name.to_string(),
                responses: [
                    "hrsp_1xx",
                    "hrsp_2xx",
                    "hrsp_3xx",
                    "hrsp_4xx",
                    "hrsp_5xx",
                    "hrsp_other",
                ]
                .iter()
                .map(|c| num(c))
                .sum(),
                errors_5xx: num("hrsp_5xx"),
                rtime_ms: num("rtime"),
                ttime_ms: num("ttime"),
            });
        }
        if header.is_empty() {
            return Err(HaError::Parse {
                lb: self.name.clone(),
                command: cmd,
                answer: stat.chars().take(200).collect(),
            });
        }
        Ok(out)
    }

    /// `name` among `servers` (read from this LB), or an error that lists them.
    pub fn find<'a>(&self, servers: &'a [Server], name: &str) -> Result<&'a Server, HaError> {
        find_server(&self.name, &self.backend, servers, name)
    }

    /// `set server BACKEND/SERVER state ...`.
    pub fn set_state(&self, server: &str, state: AdminState) -> Result<(), HaError> {
        let cmd = format!(
            "set server {}/{} state {}",
            self.backend,
            server,
            state.as_str()
        );
        let answer = self.send(&cmd)?;
        if answer.trim().is_empty() {
            Ok(())
        } else {
            Err(HaError::Command {
                lb: self.name.clone(),
                command: cmd,
                answer: answer.trim().to_string(),
            })
        }
    }

    /// The running process (to notice reloads).
    pub fn process(&self) -> Result<Process, HaError> {
        let info = self.send("show info")?;
        let get = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(": ")))
                .map(|v| v.trim().to_string())
        };
        Ok(Process {
            pid: get("Pid").unwrap_or_default(),
            uptime_sec: get("Uptime_sec").and_then(|v| v.parse().ok()).unwrap_or(0),
        })
    }
}
