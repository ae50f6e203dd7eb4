//! The control member: `control`, `md5sums` and the maintainer scripts.
//!
//! Maintainer scripts are templates in `debian-skel/` (compiled into the binary, so a user needs
//! nothing beside it), rendered with the site's values. Control members are `u+rw,go=rX`:
//! 0644 for data, 0755 for scripts.

use std::io::Write;

use super::compress::{compress, Compression};
use super::tar::{padding, write_header, EntryKind, END};

/// A template of `debian-skel/`.
pub struct Template {
    pub name: &'static str,
    pub text: &'static str,
}

/// The maintainer scripts, in control.tar order.
pub const SCRIPTS: [Template; 2] = [
    Template {
        name: "postinst",
        text: include_str!("../../debian-skel/postinst"),
    },
    Template {
        name: "postrm",
        text: include_str!("../../debian-skel/postrm"),
    },
];

/// The sh functions that reload the PHP serving the site (`reload_php_fpm`,
/// `reload_apache_mod_php`): the postinst's (`{{reload_php}}`), and what `roll` runs after a
/// switch when `[roll] reload_command` is not set.
pub const RELOAD_PHP: &str = include_str!("../../debian-skel/reload-php.sh");

/// The `config.php` stub shipped in dirroot.
pub const CONFIG_PHP: &str = include_str!("../../debian-skel/config.php");
/// The release probe shipped in the web root (see [`PROBE_PATH`]).
pub const PROBE_PHP: &str = include_str!("../../debian-skel/probe.php");
/// The probe's path under the web root (dirroot, or its `public/` in Moodle 5.1+ trees), and so
/// its URL path on a node. No Moodle file or plugin folder is named so (frankenstyle names have
/// no `-`); a tree that has one is refused by `build` as a duplicate path.
pub const PROBE_PATH: &str = "moodle-release-probe.php";
/// `/usr/share/doc/<package>/copyright`.
pub const COPYRIGHT: &str = include_str!("../../debian-skel/copyright");

/// Replaces every `{{name}}` of `text` with its value.
pub fn render(text: &str, vars: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

/// The fields of `control`, in the order written.
#[derive(Debug, Clone)]
pub struct Control {
    pub fields: Vec<(String, String)>,
}

impl Control {
    /// Text of the control file: `Field: value`, continuation lines indented by one space,
    /// empty continuation lines written as ` .`.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.fields {
            s.push_str(k);
            s.push(':');
            for (i, line) in v.lines().enumerate() {
                if i == 0 {
                    s.push(' ');
                    s.push_str(line);
                } else if line.trim().is_empty() {
                    s.push_str("\n .");
                } else {
                    s.push_str("\n ");
                    s.push_str(line);
                }
            }
            s.push('\n');
        }
        s
    }
}

/// Builds the compressed control.tar from the control text, md5sums and rendered scripts.
pub fn control_tar(
    control: &str,
    md5sums: &[u8],
    scripts: &[(&str, String)],
    compression: Compression,
    mtime: u64,
) -> std::io::Result<Vec<u8>> {
    let mut members: Vec<(&str, &[u8], u32)> = vec![
        ("control", control.as_bytes(), 0o644),
        ("md5sums", md5sums, 0o644),
    ];
    for (name, text) in scripts {
        members.push((name, text.as_bytes(), 0o755));
    }
    members.sort_by(|a, b| a.0.cmp(b.0));
    let mut tar = Vec::new();
    write_header(&mut tar, b"", EntryKind::Dir, 0o755, 0, mtime)?;
    for (name, data, mode) in members {
        write_header(
            &mut tar,
            name.as_bytes(),
            EntryKind::File,
            mode,
            data.len() as u64,
            mtime,
        )?;
        tar.write_all(data)?;
        tar.write_all(padding(data.len() as u64))?;
    }
    tar.write_all(&END)?;
    compress(compression, &tar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_placeholder() {
        let vars = [
            ("package", "moodle-site"),
            ("version", "1"),
            ("install_dir", "/srv/m"),
            ("config_php", "/etc/m.php"),
            ("reload", "reload_php_fpm; reload_apache_mod_php"),
            ("reload_php", RELOAD_PHP),
        ];
        for t in &SCRIPTS {
            let r = render(t.text, &vars);
            assert!(!r.contains("{{"), "{} keeps a placeholder", t.name);
            assert!(r.starts_with("#!/bin/sh\n"), "{}", t.name);
        }
    }

    #[test]
    fn multi_line_fields() {
        let c = Control {
            fields: vec![
                ("Package".into(), "x".into()),
                ("Description".into(), "short\nlong one\n\nafter".into()),
            ],
        };
        assert_eq!(
            c.to_text(),
            "Package: x\nDescription: short\n long one\n .\n after\n"
        );
    }
}
