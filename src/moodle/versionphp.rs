//! A small, tolerant reader of Moodle's `version.php` files.
//!
//! We never run PHP to learn a version: the build machine may have none, and running a plugin's
//! code is not something a packaging step should do. `version.php` files are plain assignments
//! (`$version = 2022112810.00;`, `$plugin->component = 'mod_x';`), so a tiny lexer that knows
//! comments, both quote styles, numbers, constants and array literals reads every real one.
//! Numbers are kept as the exact text written: `2024100701.05` is not a float.

use std::collections::BTreeMap;

/// A PHP literal as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A number, exactly as written (`2024100701.05`).
    Number(String),
    /// A quoted string, unescaped.
    Str(String),
    /// A bare constant (`MATURITY_STABLE`, `ANY_VERSION`, `true`).
    Const(String),
    /// `[a, b]`, `array('k' => v)`: keys are `None` for list items.
    Array(Vec<(Option<Value>, Value)>),
}

impl Value {
    /// The value as text, for numbers, strings and constants.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Number(s) | Value::Str(s) | Value::Const(s) => Some(s),
            Value::Array(_) => None,
        }
    }
}

/// Every `$name = value;` and `$obj->prop = value;` of a file, by `name` or `obj->prop`.
#[derive(Debug, Default, Clone)]
pub struct VersionPhp {
    pub values: BTreeMap<String, Value>,
}

impl VersionPhp {
    /// Reads `src`; statements it does not understand are skipped, never an error.
    pub fn parse(src: &[u8]) -> VersionPhp {
        let toks = lex(&String::from_utf8_lossy(src));
        let mut values = BTreeMap::new();
        let mut i = 0;
        while i < toks.len() {
            if let Tok::Var(name) = &toks[i] {
                let mut key = name.clone();
                let mut j = i + 1;
                if toks.get(j) == Some(&Tok::Arrow) {
                    if let Some(Tok::Ident(prop)) = toks.get(j + 1) {
                        key = format!("{name}->{prop}");
                        j += 2;
                    }
                }
                if toks.get(j) == Some(&Tok::Punct('=')) {
                    let mut k = j + 1;
                    if let Some(v) = parse_value(&toks, &mut k) {
                        if toks.get(k) == Some(&Tok::Punct(';')) {
                            values.insert(key, v);
                            i = k + 1;
                            continue;
                        }
                    }
                }
            }
            i += 1;
        }
        VersionPhp { values }
    }

    /// The text of `$key` (`version`, `plugin->component`...).
    pub fn text(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(Value::as_text)
    }

    /// `$plugin->...` or `$module->...` (old activity modules used `$module`).
    pub fn plugin(&self, prop: &str) -> Option<&str> {
        self.text(&format!("plugin->{prop}"))
            .or_else(|| self.text(&format!("module->{prop}")))
    }

    /// `$plugin->dependencies` as component -> required version text (`ANY_VERSION` kept as is).
    pub fn dependencies(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(Value::Array(items)) = self.values.get("plugin->dependencies") {
            for (k, v) in items {
                if let (Some(k), Some(v)) = (k.as_ref().and_then(Value::as_text), v.as_text()) {
                    out.insert(k.to_string(), v.to_string());
                }
            }
        }
        out
    }

    /// `$plugin->supported = [lo, hi]`.
    pub fn supported(&self) -> Option<(String, String)> {
        match self.values.get("plugin->supported") {
            Some(Value::Array(items)) if items.len() == 2 => Some((
                items[0].1.as_text()?.to_string(),
                items[1].1.as_text()?.to_string(),
            )),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Var(String),
    Ident(String),
    Number(String),
    Str(String),
    Arrow,
    DoubleArrow,
    Punct(char),
}

/// The tokens of a version.php. Long for a reason: a lexer is one loop with one arm per kind of
/// token (comments, strings, numbers, names, arrows), and reads best whole.
fn lex(s: &str) -> Vec<Tok> {
    let c: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == '\\';
    while i < c.len() {
        let ch = c[i];
        match ch {
            _ if ch.is_whitespace() => i += 1,
            '#' => {
                while i < c.len() && c[i] != '\n' {
                    i += 1
                }
            }
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1
                }
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                i += 2;
                while i < c.len() && !(c[i] == '*' && c.get(i + 1) == Some(&'/')) {
                    i += 1
                }
                i += 2;
            }
            '<' if c.get(i + 1) == Some(&'?') => {
                i += 2;
                while i < c.len() && c[i].is_ascii_alphabetic() {
                    i += 1
                }
            }
            '$' => {
                let st = i + 1;
                i += 1;
                while i < c.len() && ident(c[i]) {
                    i += 1
                }
                out.push(Tok::Var(c[st..i].iter().collect()));
            }
            '\'' | '"' => {
                let q = ch;
                let mut v = String::new();
                i += 1;
                while i < c.len() && c[i] != q {
                    if c[i] == '\\' && i + 1 < c.len() {
                        let n = c[i + 1];
                        if n == q || n == '\\' {
                            v.push(n);
                            i += 2;
                            continue;
                        }
                    }
                    v.push(c[i]);
                    i += 1;
                }
                i += 1;
                out.push(Tok::Str(v));
            }
            '-' if c.get(i + 1) == Some(&'>') => {
                out.push(Tok::Arrow);
                i += 2;
            }
            '=' if c.get(i + 1) == Some(&'>') => {
                out.push(Tok::DoubleArrow);
                i += 2;
            }
            _ if ch.is_ascii_digit()
                || (ch == '-' && c.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let st = i;
                i += 1;
                while i < c.len() && (c[i].is_ascii_digit() || c[i] == '.' || c[i] == '_') {
                    i += 1
                }
                out.push(Tok::Number(
                    c[st..i].iter().filter(|&&d| d != '_').collect(),
                ));
            }
            _ if ident(ch) => {
                let st = i;
                while i < c.len() && ident(c[i]) {
                    i += 1
                }
                out.push(Tok::Ident(c[st..i].iter().collect()));
            }
            _ => {
                out.push(Tok::Punct(ch));
                i += 1;
            }
        }
    }
    out
}

fn parse_value(t: &[Tok], i: &mut usize) -> Option<Value> {
    let v = match t.get(*i)? {
        Tok::Number(n) => Value::Number(n.clone()),
        Tok::Str(s) => Value::Str(s.clone()),
        Tok::Ident(id)
            if id.eq_ignore_ascii_case("array") && t.get(*i + 1) == Some(&Tok::Punct('(')) =>
        {
            *i += 2;
            return parse_items(t, i, ')');
        }
        Tok::Ident(id) => Value::Const(id.clone()),
        Tok::Punct('[') => {
            *i += 1;
            return parse_items(t, i, ']');
        }
        _ => return None,
    };
    *i += 1;
    Some(v)
}

fn parse_items(t: &[Tok], i: &mut usize, close: char) -> Option<Value> {
    let mut items = Vec::new();
    loop {
        if t.get(*i) == Some(&Tok::Punct(close)) {
            *i += 1;
            return Some(Value::Array(items));
        }
        let first = parse_value(t, i)?;
        if t.get(*i) == Some(&Tok::DoubleArrow) {
            *i += 1;
            let v = parse_value(t, i)?;
            items.push((Some(first), v));
        } else {
            items.push((None, first));
        }
        match t.get(*i)? {
            Tok::Punct(',') => *i += 1,
            Tok::Punct(c) if *c == close => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_version_php() {
        let src = br#"<?php
// This file is part of Moodle - https://moodle.org/
defined('MOODLE_INTERNAL') || die();
/* $version = 1; in a comment */
$version  = 2022112810.00;              // 20221128      = branching date YYYYMMDD - do not modify!
$release  = '4.1.10 (Build: 20240422)'; // Human-friendly version name
$branch   = '401';                      # this version's branch
$maturity = MATURITY_STABLE;             // This version's maturity level.
"#;
        let v = VersionPhp::parse(src);
        assert_eq!(v.text("version"), Some("2022112810.00"));
        assert_eq!(v.text("release"), Some("4.1.10 (Build: 20240422)"));
        assert_eq!(v.text("branch"), Some("401"));
        assert_eq!(v.text("maturity"), Some("MATURITY_STABLE"));
    }

    #[test]
    fn plugin_version_php() {
        let src = br#"<?php
$plugin->version   = 2024042200.01;
$plugin->requires  = 2022112800;
$plugin->component = "mod_customcert";
$plugin->release = "4.1 \"x\"";
$plugin->supported = [401, 405];
$plugin->incompatible = 500;
$plugin->dependencies = array(
    'mod_quiz' => 2022112800,
    'tool_x' => ANY_VERSION,   // any
);
"#;
        let v = VersionPhp::parse(src);
        assert_eq!(v.plugin("version"), Some("2024042200.01"));
        assert_eq!(v.plugin("component"), Some("mod_customcert"));
        assert_eq!(v.plugin("release"), Some("4.1 \"x\""));
        assert_eq!(v.supported(), Some(("401".into(), "405".into())));
        let d = v.dependencies();
        assert_eq!(d.get("mod_quiz").map(String::as_str), Some("2022112800"));
        assert_eq!(d.get("tool_x").map(String::as_str), Some("ANY_VERSION"));
    }

    #[test]
    fn garbage_is_not_an_error() {
        let v = VersionPhp::parse(b"<?php $x = ; $y = foo(1); $z = [1, ; \xff\xfe");
        assert!(v.values.is_empty());
    }
}
