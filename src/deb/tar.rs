//! GNU tar headers as dpkg wants them.
//!
//! dpkg rejects PAX headers, so names longer than the 100-byte field go through GNU's
//! `././@LongLink` entries. Every name starts with `./` and directories end with `/`, as
//! dpkg-deb writes them; owners are root:root (uid/gid 0) and every mtime is the build's epoch,
//! so the bytes depend on the content alone. The `tar` crate lays out and checksums each
//! 512-byte header; this module only decides what goes in it.

use std::io::{self, Write};

use tar::{EntryType, Header};

/// What a tar entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind<'a> {
    Dir,
    File,
    Symlink(&'a [u8]),
}

/// Writes one entry's header(s) for `path` (relative, no `./`; empty for the root); the caller
/// then writes `size` bytes of content and [`padding`].
pub fn write_header(
    w: &mut impl Write,
    path: &[u8],
    kind: EntryKind,
    mode: u32,
    size: u64,
    mtime: u64,
) -> io::Result<()> {
    let mut name = Vec::with_capacity(path.len() + 3);
    name.extend_from_slice(b"./");
    name.extend_from_slice(path);
    if kind == EntryKind::Dir && !path.is_empty() {
        name.push(b'/');
    }
    if name.len() > 100 {
        long_link(w, EntryType::GNULongName, &name)?;
    }
    let link = match kind {
        EntryKind::Symlink(t) => {
            if t.len() > 100 {
                long_link(w, EntryType::GNULongLink, t)?;
            }
            Some(t)
        }
        _ => None,
    };
    let mut h = Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().expect("a GNU header");
        let n = name.len().min(100);
        gnu.name[..n].copy_from_slice(&name[..n]);
        if let Some(t) = link {
            let n = t.len().min(100);
            gnu.linkname[..n].copy_from_slice(&t[..n]);
        }
    }
    h.set_entry_type(match kind {
        EntryKind::Dir => EntryType::Directory,
        EntryKind::File => EntryType::Regular,
        EntryKind::Symlink(_) => EntryType::Symlink,
    });
    h.set_mode(mode);
    h.set_size(if matches!(kind, EntryKind::File) {
        size
    } else {
        0
    });
    fill_common(&mut h, mtime)?;
    w.write_all(h.as_bytes())
}

/// Zero bytes that pad `size` bytes of content to a 512-byte block.
pub fn padding(size: u64) -> &'static [u8] {
    static ZEROS: [u8; 512] = [0; 512];
    let rem = (size % 512) as usize;
    if rem == 0 {
        &[]
    } else {
        &ZEROS[..512 - rem]
    }
}

/// The end-of-archive marker: two zero blocks.
pub const END: [u8; 1024] = [0; 1024];

fn long_link(w: &mut impl Write, kind: EntryType, value: &[u8]) -> io::Result<()> {
    let mut h = Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().expect("a GNU header");
        let n = b"././@LongLink";
        gnu.name[..n.len()].copy_from_slice(n);
    }
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(value.len() as u64 + 1);
    fill_common(&mut h, 0)?;
    w.write_all(h.as_bytes())?;
    w.write_all(value)?;
    w.write_all(&[0])?;
    w.write_all(padding(value.len() as u64 + 1))
}

fn fill_common(h: &mut Header, mtime: u64) -> io::Result<()> {
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_username("root")?;
    h.set_groupname("root")?;
    h.set_cksum();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn entry(out: &mut Vec<u8>, path: &[u8], kind: EntryKind, data: &[u8]) {
        let mode = if kind == EntryKind::File {
            0o644
        } else {
            0o755
        };
        write_header(out, path, kind, mode, data.len() as u64, 1_700_000_000).unwrap();
        out.extend_from_slice(data);
        out.extend_from_slice(padding(data.len() as u64));
    }

    #[test]
    fn reads_back_with_long_names_and_links() {
        let long = format!("srv/{}/file.php", "d".repeat(150));
        let target = "x/".repeat(70);
        let mut v = Vec::new();
        entry(&mut v, b"", EntryKind::Dir, b"");
        entry(&mut v, b"srv", EntryKind::Dir, b"");
        entry(&mut v, long.as_bytes(), EntryKind::File, b"<?php echo 1;\n");
        entry(&mut v, b"srv/l", EntryKind::Symlink(target.as_bytes()), b"");
        v.extend_from_slice(&END);
        let mut a = tar::Archive::new(&v[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let p = String::from_utf8(e.path_bytes().to_vec()).unwrap();
            let link = e
                .link_name_bytes()
                .map(|l| String::from_utf8(l.to_vec()).unwrap());
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            assert_eq!(e.header().mtime().unwrap(), 1_700_000_000);
            assert_eq!(e.header().username().unwrap(), Some("root"));
            seen.push((p, link, s));
        }
        assert_eq!(seen[0].0, "./");
        assert_eq!(seen[1].0, "./srv/");
        assert_eq!(seen[2].0, format!("./{long}"));
        assert_eq!(seen[2].2, "<?php echo 1;\n");
        assert_eq!(seen[3].1.as_deref(), Some(target.as_str()));
    }
}
