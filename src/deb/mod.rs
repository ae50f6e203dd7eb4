//! Writing `.deb` files: the `ar` container, GNU tar members, compression, control data.
//!
//! The module layout follows the format itself. [`assemble`] puts the members together;
//! `crate::build` decides what goes in them.

pub mod ar;
pub mod compress;
pub mod control;
pub mod data;
pub mod md5cache;
pub mod tar;

use std::io::{self, Read, Seek, SeekFrom, Write};

pub use compress::Compression;

/// Writes the `.deb` to `out`: `debian-binary`, the compressed control.tar, then the compressed
/// data.tar copied from `data` (a file written beforehand, since control needs its md5sums).
/// Returns the package's SHA-256 and size, once `out` is synced to disk.
///
/// The data is copied by the kernel (`io::copy` between files uses `copy_file_range`) and synced
/// while another thread hashes it from the page cache: neither waits for the other.
pub fn assemble(
    out: &mut std::fs::File,
    control_tar: &[u8],
    data: &mut std::fs::File,
    compression: Compression,
    mtime: u64,
) -> io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::FileExt;
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
    // ar pads odd-sized members with a newline.
    let tail: &[u8] = if data_len % 2 == 1 { b"\n" } else { b"" };
    let hashed = data.try_clone()?;
    let head = &head;
    std::thread::scope(|s| -> io::Result<(String, u64)> {
        let hasher = s.spawn(move || -> io::Result<String> {
            let mut h = Sha256::new();
            h.update(head);
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0u64;
            while at < data_len {
                let want = buf.len().min((data_len - at) as usize);
                let n = hashed.read_at(&mut buf[..want], at)?;
                if n == 0 {
                    return Err(shrank());
                }
                h.update(&buf[..n]);
                at += n as u64;
            }
            h.update(tail);
            Ok(hex::encode(h.finalize()))
        });
        out.write_all(head)?;
        let copied = io::copy(&mut Read::by_ref(data).take(data_len), out)?;
        if copied != data_len {
            return Err(shrank());
        }
        out.write_all(tail)?;
        // On disk before it gets its final name; the hashing goes on meanwhile.
        out.sync_all()?;
        let sha256 = hasher
            .join()
            .map_err(|_| io::Error::other("the hashing thread stopped unexpectedly"))??;
        Ok((sha256, head.len() as u64 + data_len + tail.len() as u64))
    })
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "data.tar shrank while being copied",
    )
}
