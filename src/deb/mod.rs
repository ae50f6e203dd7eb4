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
/// Returns the package's SHA-256 and size, hashed on the way out: the file is not read again.
pub fn assemble(
    out: &mut std::fs::File,
    control_tar: &[u8],
    data: &mut std::fs::File,
    compression: Compression,
    mtime: u64,
) -> io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    let data_len = data.seek(SeekFrom::End(0))?;
    data.seek(SeekFrom::Start(0))?;
    let mut head = Vec::new();
    head.extend_from_slice(ar::MAGIC);
    ar::write_member(&mut head, "debian-binary", b"2.0\n", mtime)?;
    ar::write_member(
        &mut head,
        &format!("control.tar.{}", compression.extension()),
        control_tar,
        mtime,
    )?;
    head.extend_from_slice(&ar::member_header(
        &format!("data.tar.{}", compression.extension()),
        data_len,
        mtime,
    )?);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut w = io::BufWriter::with_capacity(1 << 20, &mut *out);
    let mut put = |bytes: &[u8], w: &mut io::BufWriter<&mut std::fs::File>| -> io::Result<()> {
        hasher.update(bytes);
        size += bytes.len() as u64;
        w.write_all(bytes)
    };
    put(&head, &mut w)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    while copied < data_len {
        let want = buf.len().min((data_len - copied) as usize);
        let n = data.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "data.tar shrank while being copied",
            ));
        }
        put(&buf[..n], &mut w)?;
        copied += n as u64;
    }
    if data_len % 2 == 1 {
        put(b"\n", &mut w)?;
    }
    w.flush()?;
    drop(w);
    Ok((hex::encode(hasher.finalize()), size))
}
