//! The one HTTP request a roll makes: GET a node's health URL and read the status code. Plain
//! HTTP/1.0 over a socket with timeouts; the nodes are checked directly, not through the LBs.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// GETs `url` (`http://host[:port]/path`) and returns the status code.
///
/// Without `host_header`, the request has no Host header, as HAProxy's `option httpchk` sends it:
/// Moodle redirects (303) a request whose Host is not its wwwroot's, and a node's own name
/// never is; a request with no Host it lets through. With `host_header` (`[roll] health_host`, for
/// a web server that picks the site by name), that Host is sent.
pub fn get_status(url: &str, host_header: Option<&str>, timeout: Duration) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// health URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = authority(hostport).ok_or_else(|| format!("{url}: not host[:port]"))?;
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    // One write: some servers (PHP's built-in one) mishandle a request that arrives in pieces.
    let host_line = host_header
        .map(|h| format!("Host: {h}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.0\r\n{host_line}User-Agent: moodle-release\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or("")
            )
        })
}

/// The host (without an IPv6 address's brackets) and port (default 80) of `host[:port]`,
/// `[v6]` or `[v6]:port`.
fn authority(hostport: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => 80,
    };
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_with_and_without_ports_and_ipv6() {
        assert_eq!(
            authority("web1.example.edu"),
            Some(("web1.example.edu", 80))
        );
        assert_eq!(authority("10.0.0.21:8080"), Some(("10.0.0.21", 8080)));
        assert_eq!(authority("[::1]:8080"), Some(("::1", 8080)));
        assert_eq!(authority("[2001:db8::21]"), Some(("2001:db8::21", 80)));
        for bad in ["", ":80", "web1:http", "[::1", "[::1]8080", "web1:99999"] {
            assert_eq!(authority(bad), None, "{bad}");
        }
    }

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
        let url = format!("http://127.0.0.1:{port}/admin/tool/heartbeat/index.php");
        assert_eq!(get_status(&url, None, Duration::from_secs(5)), Ok(503));
        let request = server.join().unwrap();
        assert_eq!(
            request,
            "GET /admin/tool/heartbeat/index.php HTTP/1.0\r\nUser-Agent: moodle-release\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn a_health_host_is_sent_as_the_host_header() {
        let (port, server) = serve_once(b"HTTP/1.1 200 OK\r\n\r\n");
        let url = format!("http://127.0.0.1:{port}/");
        assert_eq!(
            get_status(&url, Some("moodle.example.edu"), Duration::from_secs(5)),
            Ok(200)
        );
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET / HTTP/1.0\r\nHost: moodle.example.edu\r\n"),
            "{request}"
        );
    }
}
