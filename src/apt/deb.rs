//! Reading what `publish` needs from a `.deb`: its control stanza, size and hashes.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::stanza::{self, Stanza};
use super::AptError;

/// A package file's control data.
pub struct DebInfo {
    pub control: Stanza,
}

/// Reads the control stanza of `path`: an `ar` archive starting with `debian-binary`, then
/// `control.tar[.gz|.xz|.zst]`. Only the archive's head is read, never the data member.
pub fn read(path: &Path) -> Result<DebInfo, AptError> {
    let bad = |message: String| AptError::BadDeb {
        path: path.to_path_buf(),
        message,
    };
    let io = |source| AptError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut magic = [0u8; 8];
    if len < 8 || f.read_exact(&mut magic).is_err() || &magic != b"!<arch>\n" {
        return Err(bad("not a Debian package (no ar archive header)".into()));
    }
    let mut pos: u64 = 8;
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    while pos + 60 <= len && members.len() < 2 {
        let mut h = [0u8; 60];
        f.seek(SeekFrom::Start(pos)).map_err(io)?;
        f.read_exact(&mut h).map_err(io)?;
        let name = String::from_utf8_lossy(&h[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: u64 = String::from_utf8_lossy(&h[48..58])
            .trim()
            .parse()
            .map_err(|_| bad(format!("ar member `{name}` has a bad size")))?;
        if pos + 60 + size > len {
            return Err(bad("truncated archive".into()));
        }
        if size > 256 << 20 {
            return Err(bad(format!(
                "ar member `{name}` is implausibly large for a control member"
            )));
        }
        let mut content = vec![0u8; size as usize];
        f.read_exact(&mut content).map_err(io)?;
        members.push((name, content));
        pos += 60 + size + (size % 2);
    }
    if members.first().map(|m| (m.0.as_str(), &m.1[..])) != Some(("debian-binary", &b"2.0\n"[..])) {
        return Err(bad(
            "not a Debian package (the first member is not debian-binary 2.0)".into(),
        ));
    }
    let text = {
        let (name, data) = members
            .get(1)
            .filter(|m| m.0.starts_with("control.tar"))
            .ok_or_else(|| bad("no control.tar member after debian-binary".into()))?;
        let data = &data[..];
        let reader: Box<dyn Read> = match name.as_str() {
            "control.tar" => Box::new(data),
            "control.tar.gz" => Box::new(flate2::read::MultiGzDecoder::new(data)),
            "control.tar.xz" => Box::new(liblzma::read::XzDecoder::new_multi_decoder(data)),
            "control.tar.zst" => {
                Box::new(zstd::stream::Decoder::new(data).map_err(|e| bad(e.to_string()))?)
            }
            other => return Err(bad(format!("unknown control member `{other}`"))),
        };
        let mut archive = tar::Archive::new(reader);
        let mut control = None;
        for entry in archive.entries().map_err(|e| bad(format!("{name}: {e}")))? {
            let mut entry = entry.map_err(|e| bad(format!("{name}: {e}")))?;
            let p: PathBuf = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
            if p == Path::new("./control") || p == Path::new("control") {
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .map_err(|e| bad(format!("control: {e}")))?;
                control = Some(text);
                break;
            }
        }
        control.ok_or_else(|| bad(format!("{name} holds no control file")))?
    };
    let control = stanza::parse(&text).map_err(|m| bad(format!("malformed control file: {m}")))?;
    for field in ["Package", "Version", "Architecture"] {
        if control.get(field).is_none_or(|v| v.is_empty()) {
            return Err(bad(format!("malformed control file: no {field} field")));
        }
    }
    Ok(DebInfo { control })
}

/// Copies `from` into a new temporary file in `dir`, hashing it on the way: one read of the
/// package, 1 MiB at a time. Returns the temporary file (persisted by the caller once the
/// version is known to be new), the size and the SHA-256.
pub fn copy_hashing(
    from: &Path,
    dir: &Path,
) -> Result<(tempfile::NamedTempFile, u64, String), AptError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| AptError::Io {
            path: p.clone(),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut src = std::fs::File::open(from).map_err(io(from))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp.")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(io(from))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n]).map_err(io(tmp.path()))?;
        size += n as u64;
    }
    Ok((tmp, size, hex::encode(hasher.finalize())))
}
