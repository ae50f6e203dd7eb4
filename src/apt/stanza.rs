//! Debian control stanzas (`control`, `Packages`): `Field: value` lines, continuation lines
//! starting with a space, stanzas separated by blank lines. Field order is kept.

/// One stanza, fields in their order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stanza {
    fields: Vec<(String, String)>,
}

impl Stanza {
    /// The value of `name` (case-insensitive, as dpkg reads them); multi-line values keep their
    /// continuation lines.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name`, in place if present, else at the end.
    pub fn set(&mut self, name: &str, value: &str) {
        match self
            .fields
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(f) => f.1 = value.to_string(),
            None => self.fields.push((name.to_string(), value.to_string())),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.fields.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// The stanza as text, ending with a newline.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.fields {
            s.push_str(k);
            s.push(':');
            if !v.starts_with('\n') {
                s.push(' ');
            }
            s.push_str(v);
            s.push('\n');
        }
        s
    }
}

/// Why a control file or an index is not RFC 822 stanzas (`line` is 1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StanzaError {
    #[error("no fields")]
    Empty,
    #[error("line {line}: continuation line without a field")]
    Continuation { line: usize },
    #[error("line {line}: `{text}` is not `Field: value`")]
    NotAField { line: usize, text: String },
    #[error("line {line}: `{name}` is not a field name")]
    BadName { line: usize, name: String },
}

/// Parses one stanza (the first of `text`).
pub fn parse(text: &str) -> Result<Stanza, StanzaError> {
    parse_all(text)?
        .into_iter()
        .next()
        .ok_or(StanzaError::Empty)
}

/// Parses every stanza of `text`.
pub fn parse_all(text: &str) -> Result<Vec<Stanza>, StanzaError> {
    let mut out = Vec::new();
    let mut cur = Stanza::default();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            match cur.fields.last_mut() {
                Some((_, v)) => {
                    v.push('\n');
                    v.push_str(line);
                }
                None => return Err(StanzaError::Continuation { line: n + 1 }),
            }
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(StanzaError::NotAField {
                line: n + 1,
                text: line.to_string(),
            });
        };
        let k = k.trim();
        if k.is_empty() || k.contains(' ') {
            return Err(StanzaError::BadName {
                line: n + 1,
                name: k.to_string(),
            });
        }
        cur.fields.push((k.to_string(), v.trim().to_string()));
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_continuations() {
        let text = "Package: x\nVersion: 1.0-1\nDescription: short\n long line\n .\n more\n\nPackage: y\nVersion: 2\n";
        let all = parse_all(text).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[0].get("description"),
            Some("short\n long line\n .\n more")
        );
        assert_eq!(all[0].to_text() + "\n" + &all[1].to_text(), text);
        assert_eq!(
            parse_all("Package: x\nno colon here\n"),
            Err(StanzaError::NotAField {
                line: 2,
                text: "no colon here".into()
            })
        );
        assert_eq!(
            parse_all(" leading continuation\n"),
            Err(StanzaError::Continuation { line: 1 })
        );
        assert_eq!(parse(""), Err(StanzaError::Empty));
    }
}
