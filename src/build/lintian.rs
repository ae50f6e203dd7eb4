//! The lintian overrides every package carries: the tags this tool's own choices draw (where
//! the code lives, its php, its control fields, its changelog, zstd members) and the ones a stock
//! Moodle tree draws, pointed at exactly the files that draw them, each with its reason.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;
use crate::deb::Compression;
use crate::source::{Entry, Kind, Reader};

/// Lintian tags that a stock Moodle tree, or this tool's own choices, draw on every site, each
/// with its reason. The tree-based ones are pointed at the files that draw them and written only
/// when such files are there, so that a real problem elsewhere still fails a `lintian --fail-on
/// error` job. Checked with Debian 12's lintian 2.116.
pub(super) fn lintian_overrides(
    cfg: &Config,
    tree: &[Entry],
    reader: &Reader,
    compression: Compression,
) -> String {
    let pkg = &cfg.site.package;
    let mut all = site_overrides(cfg, compression);
    all.extend(tree_overrides(cfg, tree, reader));
    all.extend(
        cfg.site
            .lintian_overrides
            .iter()
            .map(|(tag, reason)| (reason.clone(), tag.clone())),
    );
    all.iter()
        .map(|(reason, tag)| format!("# {}\n{pkg}: {tag}\n", reason.replace('\n', " ")))
        .collect()
}

/// The overrides every site draws from this tool's choices: where the code lives, its php, its
/// own control fields, its changelog, zstd members. (reason, tag) pairs.
fn site_overrides(cfg: &Config, compression: Compression) -> Vec<(String, String)> {
    let dir = &cfg.site.install_dir.0;
    let mut out = Vec::new();
    let mut add = |reason: &str, tag: &str| out.push((reason.to_string(), tag.to_string()));
    let tag = if dir == "/srv" || dir.starts_with("/srv/") {
        Some("dir-or-file-in-srv")
    } else if dir == "/var/www" || dir.starts_with("/var/www/") {
        Some("dir-or-file-in-var-www")
    } else if dir.starts_with("/opt/") {
        Some("dir-or-file-in-opt")
    } else {
        None
    };
    if let Some(tag) = tag {
        add(
            &format!("The package is this site's code: it lives in {dir}, the web server's document tree, on purpose."),
            tag,
        );
    }
    let php_cli = cfg
        .site
        .depends
        .iter()
        .any(|d| d.contains("php") && d.contains("cli"));
    if !php_cli
        && !cfg
            .site
            .lintian_overrides
            .contains_key("php-script-but-no-php-cli-dep")
    {
        add(
            "Moodle's CLI scripts run with the PHP the node already has for the site; name a php-cli in [site] depends to drop this.",
            "php-script-but-no-php-cli-dep",
        );
    }
    add(
        "moodle-release's own fields: roll reads them to tell a code-only upgrade from one that changes the database.",
        "unknown-field X-Moodle-*",
    );
    add(
        "A site package is never uploaded to Debian: its changelog has no bug to close.",
        "initial-upload-closes-no-bugs",
    );
    if compression == Compression::Zstd {
        add(
            "zstd members are read by dpkg since 1.21.18 (Debian 12); this lintian does not know them yet.",
            "malformed-deb-archive *member *.tar.zst not *",
        );
    }
    out
}

/// The overrides a stock Moodle tree draws, pointed at exactly the files that draw them (ESLint
/// settings, the TeX filter's mimetex binaries), so a real problem elsewhere still shows.
fn tree_overrides(cfg: &Config, tree: &[Entry], reader: &Reader) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |reason: &str, tag: &str| out.push((reason.to_string(), tag.to_string()));
    let rel = cfg.site.install_dir.relative();
    let mut mimetex_dirs = BTreeSet::new();
    let mut mimetex = Vec::new();
    for e in tree.iter().filter(|e| e.kind != Kind::Dir) {
        let path = String::from_utf8_lossy(&e.path);
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
        if name.starts_with(".eslintrc") && !path.contains(['[', ']', '\n']) {
            add(
                "Moodle and its plugins ship their ESLint settings with their code; nothing reads them on a node.",
                &format!("package-contains-eslint-config-file [{rel}/{path}]"),
            );
        }
        if name.starts_with("mimetex.")
            && (parent == "filter/tex" || parent.ends_with("/filter/tex"))
        {
            mimetex_dirs.insert(parent.to_string());
            mimetex.push(e);
        }
    }
    const MIMETEX: &str =
        "Moodle's TeX filter ships mimetex built for each OS and runs the one that matches the node's.";
    for parent in mimetex_dirs {
        for tag in [
            "arch-independent-package-contains-binary-or-object",
            "statically-linked-binary",
            "unstripped-binary-or-object",
            "shared-library-lacks-prerequisites",
        ] {
            add(MIMETEX, &format!("{tag} [{rel}/{parent}/mimetex.*]"));
        }
        add(
            MIMETEX,
            &format!("undeclared-elf-prerequisites * [{rel}/{parent}/mimetex.*]"),
        );
    }
    // lintian names one file per libc and counts the others ("needed by A and 2 others"), so
    // the override spells out exactly the mimetex binaries: one more binary that needs the same
    // libc anywhere in the package changes the count, and the error shows again.
    if !cfg.site.depends.is_empty() {
        let needs = libc_needs(mimetex.iter().filter_map(|e| {
            let path = format!("{rel}/{}", String::from_utf8_lossy(&e.path));
            reader.read(e).ok().map(|bytes| (path, bytes))
        }));
        for files in needs.values() {
            let others = match files.len() {
                1 => String::new(),
                n => format!(" and {} others", n - 1),
            };
            add(
                &format!("{MIMETEX} Each runs only on its own OS, with that OS's libc; no Debian libc package is needed."),
                &format!("missing-dependency-on-libc needed by {}{others}", files[0]),
            );
        }
    }
    out
}

/// The libc packages that dynamically linked ELF binaries need, by the rule of lintian's
/// `missing-dependency-on-libc` (`NEEDED libc.so.6` means `libc6`): package -> files, sorted.
/// Files that are not ELF (Mach-O, PE) or need no libc are left out.
fn libc_needs(files: impl Iterator<Item = (String, Vec<u8>)>) -> BTreeMap<String, Vec<String>> {
    let mut needs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, bytes) in files {
        let Ok(elf) = goblin::elf::Elf::parse(&bytes) else {
            continue;
        };
        for lib in &elf.libraries {
            if let Some(v) = lib
                .strip_prefix("libc.so.")
                .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
            {
                needs
                    .entry(format!("libc{v}"))
                    .or_default()
                    .push(path.clone());
            }
        }
    }
    for files in needs.values_mut() {
        files.sort();
        files.dedup();
    }
    needs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libc_needs_groups_elf_binaries_by_libc_package() {
        let elf = std::fs::read("/usr/bin/true").unwrap();
        let needs = libc_needs(
            [
                ("b/mimetex.linux".to_string(), elf.clone()),
                ("a/mimetex.freebsd".to_string(), elf),
                ("a/mimetex.exe".to_string(), b"MZ\x90\x00".to_vec()),
                ("a/mimetex.darwin".to_string(), b"\xcf\xfa\xed\xfe".to_vec()),
            ]
            .into_iter(),
        );
        assert_eq!(
            needs.into_iter().collect::<Vec<_>>(),
            [(
                "libc6".to_string(),
                vec![
                    "a/mimetex.freebsd".to_string(),
                    "b/mimetex.linux".to_string()
                ]
            )]
        );
    }
}
