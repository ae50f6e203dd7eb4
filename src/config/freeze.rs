//! `[[roll.freeze]]`: windows in which `roll` refuses to start (exams, enrolment week, the
//! weekday business hours of a site that may only change at night). Parsed once at load into
//! instants, weekdays, times and a time zone, so the check at the roll's start cannot fail on
//! input.

use std::fmt;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A freeze window, as the user wrote it (kept for messages and `config check`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeText {
    /// A name for messages and the journal, e.g. "exam week".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// RFC 3339 start of a one-off window, e.g. "2026-12-21T00:00:00+01:00".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// RFC 3339 end (exclusive) of a one-off window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Weekly window: the days it starts on, e.g. ["mon", "tue"] or ["mon..fri"].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// Weekly window: local start time, "08:00".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Weekly window: local end time, "18:00"; at or before `start`, the window ends the next day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Weekly window: IANA time zone of `start`/`end`, e.g. "Europe/Madrid" (default "UTC").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
}

/// A freeze window, checked.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "FreezeText", into = "FreezeText")]
pub struct Freeze {
    text: FreezeText,
    when: When,
}

#[derive(Debug, Clone)]
enum When {
    Once {
        from: Timestamp,
        to: Timestamp,
    },
    Weekly {
        days: Vec<Weekday>,
        start: Time,
        end: Time,
        tz: TimeZone,
    },
}

impl From<Freeze> for FreezeText {
    fn from(f: Freeze) -> FreezeText {
        f.text
    }
}

impl TryFrom<FreezeText> for Freeze {
    type Error = String;
    fn try_from(text: FreezeText) -> Result<Freeze, String> {
        let weekly = !text.days.is_empty() || text.start.is_some() || text.end.is_some();
        let once = text.from.is_some() || text.to.is_some();
        let when = match (once, weekly) {
            (true, true) => return Err("give either `from`/`to` (one window) or `days`/`start`/`end` (every week), not both".into()),
            (false, false) => return Err("give `from` and `to` (RFC 3339, e.g. \"2026-12-21T00:00:00+01:00\"), or `days`, `start` and `end` (e.g. days = [\"mon..fri\"], start = \"08:00\", end = \"18:00\")".into()),
            (true, false) => {
                let instant = |key: &str, v: &Option<String>| -> Result<Timestamp, String> {
                    let v = v.as_deref().ok_or_else(|| format!("`{key}` is missing: a one-off window needs `from` and `to`"))?;
                    v.parse::<Timestamp>().map_err(|e| format!("`{key}` = \"{v}\" is not an RFC 3339 time with an offset, e.g. \"2026-12-21T00:00:00+01:00\" ({e})"))
                };
                let (from, to) = (instant("from", &text.from)?, instant("to", &text.to)?);
                if to <= from {
                    return Err(format!("`to` ({}) is not after `from` ({})", text.to.as_deref().unwrap_or_default(), text.from.as_deref().unwrap_or_default()));
                }
                if text.tz.is_some() {
                    return Err("`tz` is for weekly windows; `from`/`to` carry their own offset".into());
                }
                When::Once { from, to }
            }
            (false, true) => {
                let time = |key: &str, v: &Option<String>| -> Result<Time, String> {
                    let v = v.as_deref().ok_or_else(|| format!("`{key}` is missing: a weekly window needs `days`, `start` and `end`"))?;
                    v.parse::<Time>().map_err(|_| format!("`{key}` = \"{v}\" is not a time of day; write e.g. \"08:00\""))
                };
                let (start, end) = (time("start", &text.start)?, time("end", &text.end)?);
                if text.days.is_empty() {
                    return Err("`days` is missing: e.g. days = [\"mon..fri\"] or [\"sat\", \"sun\"]".into());
                }
                let mut days = Vec::new();
                for d in &text.days {
                    days.extend(parse_days(d)?);
                }
                let zone = text.tz.as_deref().unwrap_or("UTC");
                let tz = TimeZone::get(zone).map_err(|_| format!("`tz` = \"{zone}\" is not a time zone; write an IANA name, e.g. \"Europe/Madrid\""))?;
                When::Weekly { days, start, end, tz }
            }
        };
        Ok(Freeze { text, when })
    }
}

/// `"mon"`, or a range `"mon..fri"` (wrapping: `"fri..mon"` is Friday to Monday).
fn parse_days(s: &str) -> Result<Vec<Weekday>, String> {
    let day = |d: &str| -> Result<Weekday, String> {
        let d = d.trim().to_ascii_lowercase();
        [
            ("monday", Weekday::Monday),
            ("tuesday", Weekday::Tuesday),
            ("wednesday", Weekday::Wednesday),
            ("thursday", Weekday::Thursday),
            ("friday", Weekday::Friday),
            ("saturday", Weekday::Saturday),
            ("sunday", Weekday::Sunday),
        ]
        .into_iter()
        .find(|(name, _)| d.len() >= 3 && name.starts_with(&d))
        .map(|(_, w)| w)
        .ok_or_else(|| {
            format!("`{s}` is not a day; write \"mon\" ... \"sun\", or a range \"mon..fri\"")
        })
    };
    match s.split_once("..") {
        None => Ok(vec![day(s)?]),
        Some((a, b)) => {
            let (mut d, last) = (day(a)?, day(b)?);
            let mut out = vec![d];
            while d != last {
                d = d.next();
                out.push(d);
            }
            Ok(out)
        }
    }
}

impl Freeze {
    /// Whether `now` is inside the window.
    pub fn contains(&self, now: Timestamp) -> bool {
        match &self.when {
            When::Once { from, to } => *from <= now && now < *to,
            When::Weekly {
                days,
                start,
                end,
                tz,
            } => {
                let today = now.to_zoned_datetime(tz.clone()).date();
                // A window that crosses midnight began yesterday.
                [today.yesterday().ok(), Some(today)]
                    .into_iter()
                    .flatten()
                    .filter(|d| days.contains(&d.weekday()))
                    .any(|d| {
                        let begin = d.to_datetime(*start);
                        let finish = if end > start {
                            d.to_datetime(*end)
                        } else {
                            match d.tomorrow() {
                                Ok(t) => t.to_datetime(*end),
                                Err(_) => return false,
                            }
                        };
                        let at =
                            |dt: jiff::civil::DateTime| tz.to_ambiguous_timestamp(dt).compatible();
                        matches!((at(begin), at(finish)), (Ok(b), Ok(f)) if b <= now && now < f)
                    })
            }
        }
    }
}

impl fmt::Display for Freeze {
    /// `"exam week" (2026-12-21T00:00:00+01:00 to 2027-01-08T00:00:00+01:00)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.text;
        if let Some(n) = &t.name {
            write!(f, "\"{n}\" ")?;
        }
        match &self.when {
            When::Once { .. } => write!(
                f,
                "({} to {})",
                t.from.as_deref().unwrap_or_default(),
                t.to.as_deref().unwrap_or_default()
            ),
            When::Weekly { .. } => write!(
                f,
                "({} {} to {} {})",
                t.days.join(", "),
                t.start.as_deref().unwrap_or_default(),
                t.end.as_deref().unwrap_or_default(),
                t.tz.as_deref().unwrap_or("UTC")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weekly(days: &[&str], start: &str, end: &str, tz: &str) -> Freeze {
        Freeze::try_from(FreezeText {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: Some(start.into()),
            end: Some(end.into()),
            tz: Some(tz.into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn weekly_windows_in_their_own_time_zone() {
        let office = weekly(&["mon..fri"], "08:00", "18:00", "Europe/Madrid");
        // Friday 2026-12-04, 09:30 in Madrid (UTC+1).
        assert!(office.contains(at("2026-12-04T08:30:00Z")));
        // 18:00 in Madrid is the end (exclusive); 07:59 is before.
        assert!(!office.contains(at("2026-12-04T17:00:00Z")));
        assert!(!office.contains(at("2026-12-04T06:59:00Z")));
        // Saturday.
        assert!(!office.contains(at("2026-12-05T09:00:00Z")));
        // Summer time: 08:00 in Madrid is 06:00 UTC in July.
        assert!(office.contains(at("2026-07-01T06:00:00Z")));
        assert!(!office.contains(at("2026-07-01T05:59:00Z")));
    }

    #[test]
    fn a_night_window_ends_the_next_day_and_ranges_wrap() {
        let night = weekly(&["fri..sun"], "22:00", "06:00", "UTC");
        // Sunday 22:00 to Monday 06:00 is inside (it began on Sunday).
        assert!(night.contains(at("2026-12-07T05:00:00Z")));
        // Thursday night is not.
        assert!(!night.contains(at("2026-12-03T23:00:00Z")));
        assert!(night.contains(at("2026-12-04T23:00:00Z")));
    }

    #[test]
    fn one_off_windows_and_bad_input() {
        let exams = Freeze::try_from(FreezeText {
            name: Some("exams".into()),
            from: Some("2026-12-14T00:00:00+01:00".into()),
            to: Some("2026-12-19T00:00:00+01:00".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(exams.contains(at("2026-12-13T23:00:00Z")));
        assert!(!exams.contains(at("2026-12-18T23:00:00Z")));
        assert_eq!(
            exams.to_string(),
            "\"exams\" (2026-12-14T00:00:00+01:00 to 2026-12-19T00:00:00+01:00)"
        );
        let bad = |t: FreezeText| Freeze::try_from(t).unwrap_err();
        assert!(bad(FreezeText::default()).contains("give `from` and `to`"));
        assert!(bad(FreezeText {
            from: Some("2026-12-14".into()),
            to: Some("2026-12-19T00:00:00Z".into()),
            ..Default::default()
        })
        .contains("`from` = \"2026-12-14\" is not an RFC 3339 time"));
        assert!(bad(FreezeText {
            days: vec!["mon..fry".into()],
            start: Some("08:00".into()),
            end: Some("18:00".into()),
            ..Default::default()
        })
        .contains("is not a day"));
        assert!(bad(FreezeText {
            days: vec!["mon".into()],
            start: Some("8h".into()),
            end: Some("18:00".into()),
            ..Default::default()
        })
        .contains("not a time of day"));
        assert!(bad(FreezeText {
            days: vec!["mon".into()],
            start: Some("08:00".into()),
            end: Some("18:00".into()),
            tz: Some("Mars/Olympus".into()),
            ..Default::default()
        })
        .contains("not a time zone"));
    }
}
