//! Small file operations several modules share.

use std::io::{self, Write};
use std::path::Path;

/// Writes `data` to `path` through a temporary file in the same folder, then renamed: a reader
/// sees the old file or the new one, never a part. The file is made `0644` (a temporary file
/// starts `0600`). No fsync: durability is the caller's choice (a publish syncs once per stage).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp.").tempfile_in(dir)?;
    tmp.write_all(data)?;
    set_mode_0644(tmp.path())?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// `chmod 0644`: readable by all, like the rest of a repository or a package folder.
pub fn set_mode_0644(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))
}

/// Turns `O_DIRECT` on or off for `file`; false when the file system refuses it.
pub fn set_direct(file: &std::fs::File, on: bool) -> bool {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a file descriptor this File owns, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return false;
        }
        let flags = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        libc::fcntl(fd, libc::F_SETFL, flags) == 0
    }
}

/// This machine's name (`/etc/hostname`), for the owner lines of locks; empty if unknown.
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}
