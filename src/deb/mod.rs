//! Writing `.deb` files: the `ar` container, GNU tar members, compression, control data.
//!
//! The module layout follows the format itself. [`assemble`] puts the members together;
//! `crate::build` decides what goes in them.

pub mod ar;
pub mod compress;
pub mod control;
pub mod data;
pub mod tar;

use std::io::{self, Read, Seek, SeekFrom, Write};

pub use compress::Compression;

/// Writes the `.deb` to `out`: `debian-binary`, the compressed control.tar, then the compressed
/// data.tar copied from `data` (a file written beforehand, since control needs its md5sums).
pub fn assemble(
    out: &mut std::fs::File,
    control_tar: &[u8],
    data: &mut std::fs::File,
    compression: Compression,
    mtime: u64,
) -> io::Result<()> {
    let data_len = data.seek(SeekFrom::End(0))?;
    data.seek(SeekFrom::Start(0))?;
    let mut w = io::BufWriter::with_capacity(1 << 20, &mut *out);
    w.write_all(ar::MAGIC)?;
    ar::write_member(&mut w, "debian-binary", b"2.0\n", mtime)?;
    ar::write_member(
        &mut w,
        &format!("control.tar.{}", compression.extension()),
        control_tar,
        mtime,
    )?;
    w.write_all(&ar::member_header(
        &format!("data.tar.{}", compression.extension()),
        data_len,
        mtime,
    )?)?;
    w.flush()?;
    drop(w);
    let copied = io::copy(&mut (&mut *data).take(data_len), out)?;
    if copied != data_len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "data.tar shrank while being copied",
        ));
    }
    if data_len % 2 == 1 {
        out.write_all(b"\n")?;
    }
    out.flush()
}
