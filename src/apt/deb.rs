//! Reading what `publish` needs from a `.deb`: its control stanza, size and hashes.

use std::io::Read;
use std::path::{Path, PathBuf};

use md5::Md5;
use sha2::{Digest, Sha256};

use super::stanza::{self, Stanza};
use super::AptError;

/// A package file, read and hashed.
pub struct DebInfo {
    pub control: Stanza,
    pub size: u64,
    pub md5: String,
    pub sha256: String,
}

/// Reads `path`: an `ar` archive starting with `debian-binary`, then `control.tar[.gz|.xz|.zst]`.
pub fn read(path: &Path) -> Result<DebInfo, AptError> {
    let bad = |message: String| AptError::BadDeb {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|source| AptError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !bytes.starts_with(b"!<arch>\n") {
        return Err(bad("not a Debian package (no ar archive header)".into()));
    }
    let mut pos = 8;
    let mut members = Vec::new();
    while pos + 60 <= bytes.len() && members.len() < 3 {
        let h = &bytes[pos..pos + 60];
        let name = String::from_utf8_lossy(&h[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: usize = String::from_utf8_lossy(&h[48..58])
            .trim()
            .parse()
            .map_err(|_| bad(format!("ar member `{name}` has a bad size")))?;
        let start = pos + 60;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| bad("truncated archive".into()))?;
        members.push((name, start, end));
        pos = end + (size % 2);
    }
    if members.first().map(|m| m.0.as_str()) != Some("debian-binary")
        || &bytes[members[0].1..members[0].2] != b"2.0\n"
    {
        return Err(bad(
            "not a Debian package (the first member is not debian-binary 2.0)".into(),
        ));
    }
    let (name, start, end) = members
        .iter()
        .find(|m| m.0.starts_with("control.tar"))
        .ok_or_else(|| bad("no control.tar member".into()))?;
    let data = &bytes[*start..*end];
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
    let text = control.ok_or_else(|| bad(format!("{name} holds no control file")))?;
    let control = stanza::parse(&text).map_err(|m| bad(format!("malformed control file: {m}")))?;
    for field in ["Package", "Version", "Architecture"] {
        if control.get(field).is_none_or(|v| v.is_empty()) {
            return Err(bad(format!("malformed control file: no {field} field")));
        }
    }
    Ok(DebInfo {
        control,
        size: bytes.len() as u64,
        md5: hex::encode(Md5::digest(&bytes)),
        sha256: hex::encode(Sha256::digest(&bytes)),
    })
}
