//! From Moodle's `$release` to a Debian version that dpkg orders right.
//!
//! Raw release strings sort wrongly in dpkg (`4.5dev` after `4.5beta`, `4.5rc1` after `4.5`,
//! `4.4+` before `4.4.0`), so we map them to
//!
//! ```text
//! X.Y.Z[~~dev|~betaN|~rcN][+DATE]+BUILD-1
//! ```
//!
//! where `~` sorts before anything (so pre-releases come before the release), `+DATE` is the
//! weekly build date of a `4.1.9+ (Build: 20240412)` release (weeklies follow their release), and
//! `BUILD` is a number that strictly increases along the deployment branch (its first-parent
//! commit count), so every build of the branch is ordered, across Moodle releases too.
//! `BUILD` stays far below any date, so `4.1.10+58-1` < `4.1.10+20240425+59-1`.

use std::fmt;

/// A parsed `$release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub pre: Option<Pre>,
    /// `Some` for a weekly (`+`) release: its build date, when it gave one.
    pub weekly: Option<Option<u32>>,
    /// The `(Build: YYYYMMDD)` date, weekly or not.
    pub build_date: Option<u32>,
}

/// A pre-release stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pre {
    Dev,
    Beta(Option<u32>),
    Rc(Option<u32>),
}

/// `$release` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the Moodle release `{release}`: {why}; expected a form such as '4.1.10 (Build: 20240422)', '4.5.3+', '4.6dev' or '4.5rc2'")]
pub struct ReleaseError {
    pub release: String,
    pub why: &'static str,
}

impl Release {
    /// Parses `'4.1.10 (Build: 20240422)'`, `'4.1.9+ (Build: 20240412)'`, `'4.5dev'`, `'4.5beta2'`,
    /// `'4.5rc1'`, `'4.5'`...
    pub fn parse(s: &str) -> Result<Release, ReleaseError> {
        let err = |why| ReleaseError {
            release: s.to_string(),
            why,
        };
        let lower = s.trim().to_ascii_lowercase();
        let (head, build) = match lower.split_once('(') {
            Some((h, b)) => (h.trim(), Some(b)),
            None => (lower.as_str(), None),
        };
        let build_date = match build {
            Some(b) => {
                let digits: String = b
                    .trim_start_matches(|c: char| !c.is_ascii_digit())
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if digits.len() != 8 {
                    return Err(err("the (Build: ...) part has no YYYYMMDD date"));
                }
                Some(digits.parse::<u32>().map_err(|_| err("bad build date"))?)
            }
            None => None,
        };
        let (head, plus) = match head.strip_suffix('+') {
            Some(h) => (h.trim_end(), true),
            None => (head, false),
        };
        let num_end = head
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(head.len());
        let (nums, rest) = head.split_at(num_end);
        let parts: Vec<&str> = nums.split('.').collect();
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(err("it does not start with a version number X.Y or X.Y.Z"));
        }
        let n = |p: &str| {
            p.parse::<u32>()
                .map_err(|_| err("a version part is too large"))
        };
        let (major, minor) = (n(parts[0])?, n(parts[1])?);
        let patch = if parts.len() == 3 { n(parts[2])? } else { 0 };
        let rest = rest.trim().trim_start_matches(['-', ' ']);
        let number = |t: &str| -> Result<Option<u32>, ReleaseError> {
            let t = t.trim();
            if t.is_empty() {
                Ok(None)
            } else {
                t.parse::<u32>()
                    .map(Some)
                    .map_err(|_| err("unknown text after the version"))
            }
        };
        let pre = if rest.is_empty() {
            None
        } else if rest == "dev" {
            Some(Pre::Dev)
        } else if let Some(t) = rest.strip_prefix("beta") {
            Some(Pre::Beta(number(t)?))
        } else if let Some(t) = rest.strip_prefix("rc") {
            Some(Pre::Rc(number(t)?))
        } else {
            return Err(err("unknown text after the version"));
        };
        Ok(Release {
            major,
            minor,
            patch,
            pre,
            weekly: plus.then_some(build_date),
            build_date,
        })
    }

    /// The build number of a Debian version that [`Release::debian_version`] made (its last
    /// `+N-1`), what builds that version again; `None` for another form.
    pub fn build_of(debian_version: &str) -> Option<u64> {
        debian_version
            .rsplit_once('+')
            .and_then(|(_, b)| b.strip_suffix("-1"))
            .and_then(|b| b.parse().ok())
    }

    /// The Debian version of build number `build` of this release. `fallback_date` (YYYYMMDD)
    /// stands in for a weekly release that gave no build date.
    pub fn debian_version(&self, build: u64, fallback_date: u32) -> String {
        let mut v = format!("{}.{}.{}", self.major, self.minor, self.patch);
        match &self.pre {
            None => {}
            Some(Pre::Dev) => v.push_str("~~dev"),
            Some(Pre::Beta(n)) => v.push_str(&format!(
                "~beta{}",
                n.map(|n| n.to_string()).unwrap_or_default()
            )),
            Some(Pre::Rc(n)) => v.push_str(&format!(
                "~rc{}",
                n.map(|n| n.to_string()).unwrap_or_default()
            )),
        }
        if let Some(date) = self.weekly {
            v.push_str(&format!("+{}", date.unwrap_or(fallback_date)));
        }
        v.push_str(&format!("+{build}-1"));
        v
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        match &self.pre {
            None => {}
            Some(Pre::Dev) => f.write_str("dev")?,
            Some(Pre::Beta(n)) => {
                write!(f, "beta{}", n.map(|n| n.to_string()).unwrap_or_default())?
            }
            Some(Pre::Rc(n)) => write!(f, "rc{}", n.map(|n| n.to_string()).unwrap_or_default())?,
        }
        if self.weekly.is_some() {
            f.write_str("+")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb(s: &str, build: u64) -> String {
        Release::parse(s).unwrap().debian_version(build, 20240101)
    }

    #[test]
    fn maps_release_forms() {
        assert_eq!(deb("4.1.10 (Build: 20240422)", 58), "4.1.10+58-1");
        assert_eq!(deb("4.1.9+ (Build: 20240412)", 57), "4.1.9+20240412+57-1");
        assert_eq!(deb("4.5", 3), "4.5.0+3-1");
        assert_eq!(deb("4.5dev", 3), "4.5.0~~dev+3-1");
        assert_eq!(
            deb("4.6dev+ (Build: 20250101)", 3),
            "4.6.0~~dev+20250101+3-1"
        );
        assert_eq!(deb("4.5beta", 3), "4.5.0~beta+3-1");
        assert_eq!(deb("4.5rc2", 3), "4.5.0~rc2+3-1");
        assert_eq!(deb("4.5RC1", 3), "4.5.0~rc1+3-1");
        assert_eq!(deb("4.4+", 3), "4.4.0+20240101+3-1");
        assert_eq!(deb("3.11.18 (Build: 20231211)", 1), "3.11.18+1-1");
    }

    #[test]
    fn reads_the_build_number_back() {
        for (s, build) in [
            ("4.1.10 (Build: 20240422)", 58),
            ("4.1.9+ (Build: 20240412)", 57),
            ("4.6dev+ (Build: 20250101)", 3),
        ] {
            assert_eq!(Release::build_of(&deb(s, build)), Some(build), "{s}");
        }
        assert_eq!(Release::build_of("1.0-1"), None);
        assert_eq!(Release::build_of("4.1.9+x-1"), None);
    }

    #[test]
    fn refuses_garbage() {
        for s in [
            "",
            "banana",
            "4",
            "4.1.x",
            "4.1 (Build: 2024)",
            "4.5gamma",
            "4..1",
        ] {
            assert!(Release::parse(s).is_err(), "{s}");
        }
    }
}
