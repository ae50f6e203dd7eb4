//! The HTTP requests a roll makes of a node: GET its health URL (the status code) and its
//! release probe (the body). Plain HTTP/1.0 over a socket with timeouts, written by hand rather
//! than with ureq because a health check must be able to send **no** Host header, as HAProxy's
//! `option httpchk` does (see [`get_status`]); the nodes are asked directly, not through the LBs.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::config::HttpBase;

/// Why a node did not answer over HTTP.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{hostport}: {source}")]
    Resolve {
        hostport: String,
        source: std::io::Error,
    },
    #[error("{hostport}: no address")]
    NoAddress { hostport: String },
    /// Connecting, writing or reading failed (refused, reset, timed out).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not an HTTP answer: {first_line:?}")]
    NotHttp { first_line: String },
}

/// GETs `path` on the node at `base` and returns the status code.
///
/// Without `host_header`, the request has no Host header, as HAProxy's `option httpchk` sends it:
/// Moodle redirects (303) a request whose Host is not its wwwroot's, and a node's own name
/// never is; a request with no Host it lets through. With `host_header` (`[roll] health_host`, for
/// a web server that picks the site by name), that Host is sent.
pub fn get_status(
    base: &HttpBase,
    path: &str,
    host_header: Option<&str>,
    timeout: Duration,
) -> Result<u16, HttpError> {
    request(base, path, host_header, timeout, false).map(|(code, _)| code)
}

/// [`get_status`], and the body (at most [`MAX_BODY`] bytes are read).
pub fn get(
    base: &HttpBase,
    path: &str,
    host_header: Option<&str>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), HttpError> {
    request(base, path, host_header, timeout, true)
}

/// The most of a body [`get`] reads: a probe's answer is a hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;

fn request(
    base: &HttpBase,
    path: &str,
    host_header: Option<&str>,
    timeout: Duration,
    body: bool,
) -> Result<(u16, Vec<u8>), HttpError> {
    let hostport = format!("{}:{}", base.host(), base.port());
    let addr = (base.host(), base.port())
        .to_socket_addrs()
        .map_err(|source| HttpError::Resolve {
            hostport: hostport.clone(),
            source,
        })?
        .next()
        .ok_or(HttpError::NoAddress { hostport })?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    // One write: some servers (PHP's built-in one) mishandle a request that arrives in pieces.
    let host_line = host_header
        .map(|h| format!("Host: {h}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.0\r\n{host_line}User-Agent: moodle-release\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let done = |head: &[u8]| {
        if body {
            head.len() >= MAX_BODY + 4096
        } else {
            head.windows(2).any(|w| w == b"\r\n") || head.len() >= 1024
        }
    };
    while !done(&head) {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| HttpError::NotHttp {
            first_line: text.lines().next().unwrap_or("").to_string(),
        })?;
    let content = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| head[i + 4..].iter().take(MAX_BODY).copied().collect())
        .unwrap_or_default();
    Ok((code, content))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on a real socket that answers one request with `answer`; joins to the request.
    fn serve_once(answer: &'static [u8]) -> (u16, std::thread::JoinHandle<String>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = [0u8; 1024];
            let n = s.read(&mut req).unwrap();
            s.write_all(answer).unwrap();
            String::from_utf8_lossy(&req[..n]).into_owned()
        });
        (port, server)
    }

    #[test]
    fn a_status_is_read_from_a_real_socket() {
        let (port, server) = serve_once(b"HTTP/1.0 503 Service Unavailable\r\n\r\n");
        let base: HttpBase = format!("http://127.0.0.1:{port}").parse().unwrap();
        let path = "/admin/tool/heartbeat/index.php";
        assert_eq!(
            get_status(&base, path, None, Duration::from_secs(5)).unwrap(),
            503
        );
        let request = server.join().unwrap();
        assert_eq!(
            request,
            "GET /admin/tool/heartbeat/index.php HTTP/1.0\r\nUser-Agent: moodle-release\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn a_body_is_read_to_the_end() {
        let (port, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"version\":\"2\"}\n",
        );
        let base: HttpBase = format!("http://127.0.0.1:{port}").parse().unwrap();
        let (code, body) = get(&base, "/p.php", None, Duration::from_secs(5)).unwrap();
        assert_eq!(code, 200);
        assert_eq!(body, b"{\"version\":\"2\"}\n");
        server.join().unwrap();
    }

    #[test]
    fn a_health_host_is_sent_as_the_host_header() {
        let (port, server) = serve_once(b"HTTP/1.1 200 OK\r\n\r\n");
        let base: HttpBase = format!("http://127.0.0.1:{port}/").parse().unwrap();
        assert_eq!(
            get_status(
                &base,
                "/",
                Some("moodle.example.edu"),
                Duration::from_secs(5)
            )
            .unwrap(),
            200
        );
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET / HTTP/1.0\r\nHost: moodle.example.edu\r\n"),
            "{request}"
        );
    }
}
