//! Value types of the config, each parsed and checked once, when the file is read: a package
//! name, a maintainer, a folder, a frankenstyle component, a Runtime API socket.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// A config value written as one string: read with its `FromStr` (whose error is the
/// message, with file, line and key added by the config), written back with its `Display`.
macro_rules! as_text {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(de::Error::custom)
            }
        }

        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}

as_text!(Socket, WebhookUrl, HttpBase, AptRepo);

/// Where an HAProxy Runtime API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socket {
    Unix(PathBuf),
    Tcp(String, u16),
}

impl fmt::Display for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Socket::Unix(p) => write!(f, "unix:{}", p.display()),
            // An IPv6 address keeps its brackets: `tcp:[::1]:9999`.
            Socket::Tcp(h, p) if h.contains(':') => write!(f, "tcp:[{h}]:{p}"),
            Socket::Tcp(h, p) => write!(f, "tcp:{h}:{p}"),
        }
    }
}

impl std::str::FromStr for Socket {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}` is not a socket; write `unix:/run/haproxy/admin.sock` or `tcp:127.0.0.1:9999`")
        };
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(bad());
            }
            Ok(Socket::Unix(PathBuf::from(p)))
        } else if let Some(hp) = s.strip_prefix("tcp:") {
            let (h, p) = hp.rsplit_once(':').ok_or_else(bad)?;
            let port = p.parse::<u16>().map_err(|_| bad())?;
            let h = h.trim_start_matches('[').trim_end_matches(']');
            if h.is_empty() {
                return Err(bad());
            }
            Ok(Socket::Tcp(h.to_string(), port))
        } else {
            Err(bad())
        }
    }
}

/// A Debian package name (`[a-z0-9][a-z0-9+.-]+`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageName(pub String);

impl fmt::Display for PackageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PackageName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = s.len() >= 2
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
        if ok {
            Ok(PackageName(s))
        } else {
            Err(de::Error::custom(format!(
                "`{s}` is not a Debian package name; use lowercase letters, digits, `+`, `-` and `.`, e.g. \"moodle-site\""
            )))
        }
    }
}

/// `Name <email>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Maintainer(pub String);

impl fmt::Display for Maintainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Maintainer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = s.trim();
        let ok = t.ends_with('>')
            && t.find('<').is_some_and(|i| i > 0 && t[i..].contains('@'))
            && !t.contains('\n');
        if ok {
            Ok(Maintainer(t.to_string()))
        } else {
            Err(de::Error::custom(format!(
                "`{s}` is not a maintainer; write `Name <email>`, e.g. \"Moodle Team <moodle-admins@example.edu>\""
            )))
        }
    }
}

/// An absolute, normalised install path (no `.`/`..`, not `/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstallDir(pub String);

impl InstallDir {
    /// The path without its leading `/`, as it appears in data.tar (`srv/moodle/html`).
    pub fn relative(&self) -> &str {
        self.0.trim_start_matches('/')
    }
}

impl fmt::Display for InstallDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for InstallDir {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let trimmed = s.trim_end_matches('/');
        let parts: Vec<&str> = trimmed.split('/').skip(1).collect();
        let ok = s.starts_with('/')
            && !parts.is_empty()
            && parts
                .iter()
                .all(|p| !p.is_empty() && *p != "." && *p != "..")
            && !s.contains(['\n', '\\', '"', '\'', '$', '`', ' ']);
        if ok {
            Ok(InstallDir(trimmed.to_string()))
        } else {
            Err(de::Error::custom(format!(
                "`{s}` is not an install directory; give an absolute path without `..` or spaces, e.g. \"/srv/moodle/html\""
            )))
        }
    }
}

/// A frankenstyle component name (`type_name`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Component(pub String);

impl Component {
    /// Plugin type and name: `mod_customcert` -> (`mod`, `customcert`).
    pub fn split(&self) -> (&str, &str) {
        self.0.split_once('_').unwrap_or((&self.0, ""))
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Component {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = match s.split_once('_') {
            Some((t, n)) => {
                !t.is_empty()
                    && !n.is_empty()
                    && t.bytes().all(|b| b.is_ascii_lowercase())
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            }
            None => false,
        };
        if ok {
            Ok(Component(s))
        } else {
            Err(de::Error::custom(format!(
                "`{s}` is not a frankenstyle component; write `type_name`, e.g. \"mod_customcert\""
            )))
        }
    }
}

/// A webhook URL. Its path or query is often the secret (Slack, Teams and Mattermost put the
/// token there), so it is shown as `https://hooks.slack.com/…` and serialized the same way:
/// only [`WebhookUrl::expose`] gives the whole URL, to the HTTP client.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    /// The whole URL, secret included.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The scheme, and the authority without its `user:password@` (a secret too).
    fn parts(&self) -> (&str, &str) {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", ""));
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        (
            scheme,
            authority.rsplit_once('@').map_or(authority, |(_, h)| h),
        )
    }

    /// The host (without port) of the URL, `""` if none.
    pub fn host(&self) -> &str {
        let (_, authority) = self.parts();
        match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.split(':').next().unwrap_or(""),
        }
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, authority) = self.parts();
        write!(f, "{scheme}://{authority}/…")
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({self})")
    }
}

impl std::str::FromStr for WebhookUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let u = WebhookUrl(s.to_string());
        let ok = (s.starts_with("https://") || s.starts_with("http://"))
            && !u.host().is_empty()
            && !s.contains(|c: char| c.is_whitespace() || c.is_control());
        if !ok {
            // Not echoed: a mistyped URL still holds the token.
            return Err("is not an http(s):// URL (not shown: it may hold a secret)".into());
        }
        Ok(u)
    }
}

/// A percentage: `"1%"`, `"0.5%"`, or a bare number of percent (`1`, `0.5`), 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            I(i64),
            S(String),
        }
        let bad = |s: &str| {
            de::Error::custom(format!(
                "`{s}` is not a percentage; write e.g. \"1%\" or \"0.5%\""
            ))
        };
        let v = match Raw::deserialize(d)? {
            Raw::N(n) => n,
            Raw::I(n) => n as f64,
            Raw::S(s) => s
                .trim()
                .strip_suffix('%')
                .unwrap_or(s.trim())
                .trim()
                .parse::<f64>()
                .map_err(|_| bad(&s))?,
        };
        if !(0.0..=100.0).contains(&v) {
            return Err(de::Error::custom(format!(
                "{v}% is not between 0% and 100%"
            )));
        }
        Ok(Percent(v))
    }
}

impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A node's `http` base (`http://host[:port][/path]`), split once at load so a health check
/// never re-parses it: https is refused (health checks go straight to the node, in plain HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpBase {
    text: String,
    host: String,
    port: u16,
    path: String,
}

impl HttpBase {
    /// The host, without an IPv6 address's brackets.
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// `path` under the base's own path: the request target of a GET.
    pub fn target(&self, path: &str) -> String {
        match format!("{}{}", self.path, path) {
            t if t.starts_with('/') => t,
            t => format!("/{t}"),
        }
    }
    /// The full URL of `path` under the base, for messages.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.text, path)
    }
}

impl fmt::Display for HttpBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for HttpBase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("https://") {
            return Err(format!("`{s}`: health checks go straight to the node over plain HTTP (https is not supported); give the node's http:// address, e.g. \"http://web1.example.edu\""));
        }
        let bad = || format!("`{s}` is not an http:// URL, e.g. \"http://web1.example.edu\"");
        let rest = s.strip_prefix("http://").ok_or_else(bad)?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = authority(hostport).ok_or_else(bad)?;
        if s.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        Ok(HttpBase {
            text: s.trim_end_matches('/').to_string(),
            host: host.to_string(),
            port,
            path: path.trim_end_matches('/').to_string(),
        })
    }
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

/// `[apt] repo`: a local folder (relative to the config's folder) or `ssh://[user@]host[:port]/path`,
/// told apart once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AptRepo {
    Local(PathBuf),
    Ssh {
        /// `[user@]host[:port]`, resolved through `[ssh] config`.
        dest: String,
        /// The repository's folder on that host.
        path: String,
    },
}

impl fmt::Display for AptRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AptRepo::Local(p) => write!(f, "{}", p.display()),
            AptRepo::Ssh { dest, path } => write!(f, "ssh://{dest}{path}"),
        }
    }
}

impl std::str::FromStr for AptRepo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let Some(rest) = s.strip_prefix("ssh://") else {
            if s.is_empty() {
                return Err(
                    "is empty; give a folder, e.g. \"/srv/apt\", or ssh://user@host/srv/apt".into(),
                );
            }
            return Ok(AptRepo::Local(PathBuf::from(s)));
        };
        let bad = || {
            format!("`{s}` is not ssh://[user@]host[:port]/path, e.g. \"ssh://deploy@apt.example.edu/srv/apt\"")
        };
        let slash = rest.find('/').ok_or_else(bad)?;
        let (dest, path) = rest.split_at(slash);
        if dest.is_empty() || path.len() < 2 {
            return Err(bad());
        }
        Ok(AptRepo::Ssh {
            dest: dest.to_string(),
            path: path.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

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

    #[test]
    fn http_bases_keep_their_path_and_refuse_https() {
        let b: HttpBase = "http://[::1]:8080/moodle/".parse().unwrap();
        assert_eq!((b.host(), b.port()), ("::1", 8080));
        assert_eq!(b.target("/login/index.php"), "/moodle/login/index.php");
        assert_eq!(b.url("/x"), "http://[::1]:8080/moodle/x");
        let b: HttpBase = "http://web1".parse().unwrap();
        assert_eq!(
            (b.host(), b.port(), b.target("/")),
            ("web1", 80, "/".into())
        );
        assert!("https://web1"
            .parse::<HttpBase>()
            .unwrap_err()
            .contains("plain HTTP"));
        for bad in ["web1", "http://", "http://web1:x/", "http://we b1/"] {
            assert!(bad.parse::<HttpBase>().is_err(), "{bad}");
        }
    }

    #[test]
    fn webhook_urls_never_show_their_secret() {
        let u: WebhookUrl = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
            .parse()
            .unwrap();
        assert_eq!(u.to_string(), "https://hooks.slack.com/…");
        assert_eq!(format!("{u:?}"), "WebhookUrl(https://hooks.slack.com/…)");
        assert_eq!(u.host(), "hooks.slack.com");
        let u: WebhookUrl = "http://bot:pw@127.0.0.1:8065/hooks/abc?token=1"
            .parse()
            .unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:8065/…");
        assert_eq!(u.host(), "127.0.0.1");
        let e = "hooks.slack.com/services/SECRET"
            .parse::<WebhookUrl>()
            .unwrap_err();
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[test]
    fn percentages() {
        let p = |t: &str| {
            toml::from_str::<BTreeMap<String, Percent>>(&format!("p = {t}")).map(|m| m["p"])
        };
        assert_eq!(p("\"1%\"").unwrap(), Percent(1.0));
        assert_eq!(p("\"0.5 %\"").unwrap(), Percent(0.5));
        assert_eq!(p("2").unwrap(), Percent(2.0));
        assert_eq!(p("0.25").unwrap(), Percent(0.25));
        assert!(p("\"lots\"").is_err());
        assert!(p("\"150%\"").is_err());
    }

    #[test]
    fn apt_repos_are_local_or_ssh() {
        assert_eq!(
            "ssh://deploy@apt.example.edu/srv/apt".parse(),
            Ok(AptRepo::Ssh {
                dest: "deploy@apt.example.edu".into(),
                path: "/srv/apt".into()
            })
        );
        assert_eq!("/srv/apt".parse(), Ok(AptRepo::Local("/srv/apt".into())));
        for bad in ["ssh://h", "ssh:///srv", "ssh://h/", ""] {
            assert!(bad.parse::<AptRepo>().is_err(), "{bad}");
        }
        let r: AptRepo = "ssh://h:2222/srv/apt".parse().unwrap();
        assert_eq!(r.to_string(), "ssh://h:2222/srv/apt");
    }
}
