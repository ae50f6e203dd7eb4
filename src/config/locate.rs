//! Where in the file an error is: the key path serde reports, written as `[roll] batch` or
//! `[[nodes]] #2 ssh`, and the line it is on, found in the document's spans.

/// A step in a key path.
#[derive(Debug, Clone)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

pub(super) fn segments(p: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    p.iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

/// `[roll] drain_timeout`, `[[nodes]] #2 ssh`, `[site]`.
pub(super) fn describe(segs: &[Seg]) -> String {
    let mut out = String::new();
    let mut rest = segs;
    if let Some((name, i, after)) = nested_item(segs) {
        out = format!("[[{name}]] #{}", i + 1);
        rest = after;
    } else if let Some(Seg::Key(table)) = segs.first() {
        match segs.get(1) {
            Some(Seg::Index(i)) => {
                out = format!("[[{table}]] #{}", i + 1);
                rest = &segs[2..];
            }
            _ if segs.len() > 1
                || matches!(
                    table.as_str(),
                    "site" | "upstream" | "deploy" | "apt" | "ssh" | "roll"
                ) =>
            {
                out = format!("[{table}]");
                rest = &segs[1..];
            }
            _ => {}
        }
    }
    let mut tail = String::new();
    for s in rest {
        match s {
            Seg::Key(k) => {
                if !tail.is_empty() {
                    tail.push('.');
                }
                tail.push_str(k);
            }
            Seg::Index(i) => tail.push_str(&format!("[{i}]")),
        }
    }
    match (out.is_empty(), tail.is_empty()) {
        (true, _) => tail,
        (false, true) => out,
        (false, false) => format!("{out} {tail}"),
    }
}

/// The arrays of tables inside a table (the schema's `[[roll.freeze]]`). The document's spans
/// cover such an array whole, not each item; a path into one is written with its header.
const NESTED_TABLE_ARRAYS: &[(&str, &str)] = &[("roll", "freeze")];

/// `roll.freeze[1].tz` -> (`roll.freeze`, 1, the rest), when `segs` points into a nested array
/// of tables.
fn nested_item(segs: &[Seg]) -> Option<(String, usize, &[Seg])> {
    match segs {
        [Seg::Key(a), Seg::Key(b), Seg::Index(i), rest @ ..]
            if NESTED_TABLE_ARRAYS.contains(&(a.as_str(), b.as_str())) =>
        {
            Some((format!("{a}.{b}"), *i, rest))
        }
        _ => None,
    }
}

/// The line an error at `segs` is reported on: the parser's own (`span_line`) when it has one,
/// else found in the document; an item of a nested array of tables by counting its headers,
/// since the parser's span covers the whole array.
pub(super) fn error_line(text: &str, segs: &[Seg], span_line: Option<usize>) -> Option<usize> {
    match nested_item(segs) {
        Some((name, i, _)) => {
            let header = format!("[[{name}]]");
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.trim_start().starts_with(&header))
                .nth(i)
                .map(|(n, _)| n + 1)
        }
        None => span_line.or_else(|| locate(text, segs)),
    }
}

/// The line of the value (or, failing that, the key) at `segs`, found in the document's spans.
pub(super) fn locate(text: &str, segs: &[Seg]) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut last_line = None;
    let mut value: Option<&toml::Spanned<toml::de::DeValue>> = None;
    for s in segs {
        let next = match (s, value) {
            (Seg::Key(k), None) => {
                table
                    .iter()
                    .find(|(key, _)| key.get_ref() == k)
                    .map(|(key, v)| {
                        last_line = Some(line_of(text, key.span().start));
                        v
                    })
            }
            (seg, Some(v)) => {
                let got = match seg {
                    Seg::Key(k) => v.get_ref().get(k.as_str()),
                    Seg::Index(i) => v.get_ref().get(*i),
                };
                if let Some(g) = got {
                    last_line = Some(line_of(text, g.span().start));
                }
                got
            }
            (Seg::Index(_), None) => None,
        };
        match next {
            Some(v) => value = Some(v),
            None => return last_line,
        }
        let _ = &mut table;
    }
    value.map(|v| line_of(text, v.span().start)).or(last_line)
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

pub(super) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// Picks apart serde's "unknown field `x`, expected one of `a`, `b`" message.
pub(super) fn unknown_field(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (field, tail) = rest.split_once('`')?;
    let expected = tail
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((field.to_string(), expected))
}

/// The valid key closest to a misspelt one, when it is close enough to be a likely typo.
pub(super) fn nearest(field: &str, expected: &[String]) -> Option<String> {
    expected
        .iter()
        .map(|e| (strsim::damerau_levenshtein(field, e), e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e.clone())
}
