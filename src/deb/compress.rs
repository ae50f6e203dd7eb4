//! The compressors a `.deb` member may use, behind one `Write`.
//!
//! gzip: each piece of data.tar is compressed on its own (see `deb::data`) by a single-threaded
//! [`Encoder`]; dpkg reads concatenated gzip members as one stream.
//!
//! zstd and xz: dpkg (1.21.22, measured) stops at the end of the first zstd frame or xz stream,
//! so data.tar must be one frame or stream. [`StreamEncoder`] uses the libraries' own
//! multithreaded modes, whose output depends on the input and the level only, not on the number
//! of threads (measured: zstd -T1, -T2 and -T4 give the same bytes; liblzma's threaded encoder
//! cuts blocks at a fixed size). dpkg-deb's zstd output is not reproducible that way: with one
//! thread it uses the single-threaded format.

use std::fmt;
use std::io::{self, Write};

/// A member's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Every dpkg reads it.
    Gzip,
    /// dpkg >= 1.21.18 (Debian 12, Ubuntu 18.04+ with its patch).
    Zstd,
    /// Smallest, slowest.
    Xz,
}

impl Compression {
    /// The file extension (`gz`, `zst`, `xz`).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => "gz",
            Compression::Zstd => "zst",
            Compression::Xz => "xz",
        }
    }

    /// The level used: gzip 6 (dpkg-deb uses 9: 3x the time for ~1% of size), zstd 3 and xz 6
    /// (dpkg-deb's defaults).
    pub fn level(self) -> u32 {
        match self {
            Compression::Gzip => 6,
            Compression::Zstd => 3,
            Compression::Xz => 6,
        }
    }

    /// An encoder writing into `out`.
    pub fn encoder(self, out: Vec<u8>) -> io::Result<Encoder> {
        Ok(match self {
            Compression::Gzip => Encoder::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(3)
                    .write(out, flate2::Compression::new(self.level())),
            ),
            Compression::Zstd => {
                let mut e = zstd::stream::Encoder::new(out, self.level() as i32)?;
                e.include_checksum(true)?;
                Encoder::Zstd(e)
            }
            Compression::Xz => Encoder::Xz(liblzma::write::XzEncoder::new(out, self.level())),
        })
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
        })
    }
}

/// One of the encoders, writing into memory.
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::Encoder<'static, Vec<u8>>),
    Xz(liblzma::write::XzEncoder<Vec<u8>>),
}

impl Encoder {
    /// Ends the stream and returns the compressed bytes.
    pub fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Xz(e) => e.finish(),
        }
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Xz(e) => e.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(buf),
            Encoder::Zstd(e) => e.write_all(buf),
            Encoder::Xz(e) => e.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One compressed stream written on several threads by the compression library itself.
pub enum StreamEncoder<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Xz(liblzma::write::XzEncoder<W>),
}

impl Compression {
    /// Whether data.tar is one stream compressed by a [`StreamEncoder`] (zstd, xz), rather
    /// than pieces compressed apart and concatenated (gzip).
    pub fn one_stream(self) -> bool {
        !matches!(self, Compression::Gzip)
    }

    /// A multithreaded encoder of one stream into `out`, for zstd and xz (see [`one_stream`]).
    ///
    /// [`one_stream`]: Compression::one_stream
    pub fn stream_encoder<W: Write>(self, out: W, threads: usize) -> io::Result<StreamEncoder<W>> {
        // Always the threaded format, even for one thread: its bytes do not depend on the count.
        let threads = threads.clamp(1, 64) as u32;
        Ok(match self {
            Compression::Gzip => {
                return Err(io::Error::other(
                    "gzip data is compressed in pieces, not as one stream",
                ))
            }
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, self.level() as i32)?;
                e.include_checksum(true)?;
                e.multithread(threads)?;
                // 4 MiB jobs instead of zstd's 8 MiB for this level: half the buffers, the
                // same speed, 0.2% larger (measured on the 45,697-file bench tree).
                e.set_parameter(zstd::stream::raw::CParameter::JobSize(4 << 20))?;
                StreamEncoder::Zstd(e)
            }
            Compression::Xz => {
                let stream = liblzma::stream::MtStreamBuilder::new()
                    .threads(threads)
                    .preset(self.level())
                    // 8 MiB blocks instead of 3x the dictionary (24 MiB): more blocks in
                    // parallel on a Moodle-sized member and less memory per thread.
                    .block_size(8 << 20)
                    .check(liblzma::stream::Check::Crc64)
                    .encoder()
                    .map_err(io::Error::other)?;
                StreamEncoder::Xz(liblzma::write::XzEncoder::new_stream(out, stream))
            }
        })
    }
}

impl<W: Write> StreamEncoder<W> {
    /// Ends the stream and returns the writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            StreamEncoder::Zstd(e) => e.finish(),
            StreamEncoder::Xz(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for StreamEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            StreamEncoder::Zstd(e) => e.write(buf),
            StreamEncoder::Xz(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compresses `data` in one go.
pub fn compress(c: Compression, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = c.encoder(Vec::new())?;
    e.write_all(data)?;
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn round_trips_and_concatenated_members_read_back() {
        let a = b"hello ".repeat(1000);
        let b = b"world".repeat(1000);
        for c in [Compression::Gzip, Compression::Zstd, Compression::Xz] {
            let mut both = compress(c, &a).unwrap();
            both.extend(compress(c, &b).unwrap());
            assert_eq!(
                compress(c, &a).unwrap(),
                compress(c, &a).unwrap(),
                "{c} is deterministic"
            );
            let mut out = Vec::new();
            match c {
                Compression::Gzip => flate2::read::MultiGzDecoder::new(&both[..])
                    .read_to_end(&mut out)
                    .unwrap(),
                Compression::Zstd => zstd::stream::Decoder::new(&both[..])
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap(),
                Compression::Xz => liblzma::read::XzDecoder::new_multi_decoder(&both[..])
                    .read_to_end(&mut out)
                    .unwrap(),
            };
            assert_eq!(out, [a.clone(), b.clone()].concat(), "{c}");
        }
    }
}
