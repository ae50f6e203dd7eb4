//! The `ar` container of a `.deb`: a magic line and three members.
//!
//! dpkg reads only the common ar format with exactly `debian-binary`, `control.tar.*`,
//! `data.tar.*` in that order. Every header field is fixed (mtime = the build's epoch,
//! uid/gid 0, mode 100644) so the bytes depend on the content alone.

use std::io::{self, Write};

/// The global header of an ar archive.
pub const MAGIC: &[u8; 8] = b"!<arch>\n";

/// The 60-byte header of a member named `name` of `size` bytes.
pub fn member_header(name: &str, size: u64, mtime: u64) -> io::Result<[u8; 60]> {
    if name.len() > 16 || !name.is_ascii() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ar member name `{name}` is too long"),
        ));
    }
    let text = format!(
        "{name:<16}{mtime:<12}{:<6}{:<6}{:<8}{size:<10}`\n",
        0, 0, 100644
    );
    let mut h = [0u8; 60];
    if text.len() != 60 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "ar header field overflow",
        ));
    }
    h.copy_from_slice(text.as_bytes());
    Ok(h)
}

/// Writes a whole member held in memory, with its padding byte.
pub fn write_member(w: &mut impl Write, name: &str, data: &[u8], mtime: u64) -> io::Result<()> {
    w.write_all(&member_header(name, data.len() as u64, mtime)?)?;
    w.write_all(data)?;
    if data.len() % 2 == 1 {
        w.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let h = member_header("debian-binary", 4, 1_700_000_000).unwrap();
        assert_eq!(
            &h[..],
            b"debian-binary   1700000000  0     0     100644  4         `\n"
        );
        assert!(member_header("a-name-longer-than-16", 1, 0).is_err());
    }

    #[test]
    fn odd_members_are_padded() {
        let mut v = Vec::new();
        write_member(&mut v, "x", b"abc", 0).unwrap();
        assert_eq!(v.len(), 60 + 4);
        assert_eq!(v[63], b'\n');
    }
}
