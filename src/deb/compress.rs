//! The compressors a `.deb` member may use.
//!
//! gzip: each piece of data.tar is compressed on its own (see `deb::data`) in one [`compress`]
//! call; dpkg reads concatenated gzip members as one stream. control.tar is one [`compress`]
//! call too.
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

/// One compressed stream written on several threads by the compression library itself.
pub enum StreamEncoder<W: Write> {
    Zstd(ZstdStream<W>),
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
            Compression::Zstd => StreamEncoder::Zstd(ZstdStream::new(out, self.level(), threads)?),
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

/// libzstd's multithreaded streaming compressor, driven through zstd-sys.
///
/// Not the zstd crate's `Encoder`: it cannot set `ZSTD_c_blockSplitterLevel`. zstd 1.5.7's
/// automatic pre-splitter of blocks costs 17% of the compression's CPU at level 3 for 0.002% of
/// size on the 45,697-file bench tree (measured: 1.70-1.91 s against 1.38-1.51 s of CPU, 168,848,113
/// against 168,850,810 bytes); level 1 turns it off, as in zstd 1.5.4, the one dpkg-deb links.
pub struct ZstdStream<W: Write> {
    cctx: ZstdCtx,
    out: W,
    buf: Vec<u8>,
}

/// A libzstd compression context, freed on drop (which waits for its worker threads).
struct ZstdCtx(std::ptr::NonNull<zstd_sys::ZSTD_CCtx>);

impl ZstdCtx {
    fn as_ptr(&self) -> *mut zstd_sys::ZSTD_CCtx {
        self.0.as_ptr()
    }
}

impl Drop for ZstdCtx {
    fn drop(&mut self) {
        // SAFETY: created by ZSTD_createCCtx, freed once, here.
        unsafe { zstd_sys::ZSTD_freeCCtx(self.0.as_ptr()) };
    }
}

impl<W: Write> ZstdStream<W> {
    /// A frame with a checksum, compressed at `level` by `threads` workers in 4 MiB jobs (half
    /// zstd's 8 MiB at this level: half the buffers, the same speed, 0.2% larger, measured on
    /// the bench tree). Its bytes depend on the input and the level, not on `threads`.
    pub fn new(out: W, level: u32, threads: u32) -> io::Result<Self> {
        use zstd_sys::ZSTD_cParameter as P;
        // SAFETY: ZSTD_createCCtx returns a new context or null.
        let cctx = std::ptr::NonNull::new(unsafe { zstd_sys::ZSTD_createCCtx() })
            .ok_or_else(|| io::Error::other("zstd: cannot allocate a compression context"))?;
        let stream = ZstdStream {
            cctx: ZstdCtx(cctx),
            out,
            // SAFETY: a pure function of the library.
            buf: Vec::with_capacity(unsafe { zstd_sys::ZSTD_CStreamOutSize() }),
        };
        for (param, value) in [
            (P::ZSTD_c_compressionLevel, level as i32),
            (P::ZSTD_c_checksumFlag, 1),
            (P::ZSTD_c_nbWorkers, threads as i32),
            (P::ZSTD_c_jobSize, 4 << 20),
            // ZSTD_c_blockSplitterLevel: 1 = no pre-splitting.
            (P::ZSTD_c_experimentalParam20, 1),
        ] {
            // SAFETY: the context is valid; a bad value is reported as an error code.
            check(unsafe { zstd_sys::ZSTD_CCtx_setParameter(stream.cctx.as_ptr(), param, value) })?;
        }
        Ok(stream)
    }

    /// Feeds `input` (all of it, or none for `end`) and writes out what the library produced.
    /// Returns what `ZSTD_compressStream2` returns: for `ZSTD_e_end`, 0 once the frame is done.
    fn step(
        &mut self,
        input: &[u8],
        end: zstd_sys::ZSTD_EndDirective,
    ) -> io::Result<(usize, usize)> {
        let mut inb = zstd_sys::ZSTD_inBuffer {
            src: input.as_ptr().cast(),
            size: input.len(),
            pos: 0,
        };
        let mut outb = zstd_sys::ZSTD_outBuffer {
            dst: self.buf.as_mut_ptr().cast(),
            size: self.buf.capacity(),
            pos: 0,
        };
        // SAFETY: both buffers point to memory valid for their sizes during the call; without
        // ZSTD_c_stableInBuffer the library copies what it keeps of the input.
        let left = check(unsafe {
            zstd_sys::ZSTD_compressStream2(self.cctx.as_ptr(), &mut outb, &mut inb, end)
        })?;
        // SAFETY: the library wrote `outb.pos` bytes at the start of the buffer.
        unsafe { self.buf.set_len(outb.pos) };
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok((inb.pos, left))
    }

    /// Ends the frame and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        while self.step(&[], zstd_sys::ZSTD_EndDirective::ZSTD_e_end)?.1 != 0 {}
        Ok(self.out)
    }
}

impl<W: Write> Write for ZstdStream<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let (used, _) = self.step(buf, zstd_sys::ZSTD_EndDirective::ZSTD_e_continue)?;
            if used > 0 {
                return Ok(used);
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A libzstd result, or its error as an io::Error.
fn check(code: usize) -> io::Result<usize> {
    // SAFETY: pure functions of the code; the name is a static C string.
    unsafe {
        if zstd_sys::ZSTD_isError(code) != 0 {
            let name = std::ffi::CStr::from_ptr(zstd_sys::ZSTD_getErrorName(code));
            return Err(io::Error::other(format!(
                "zstd: {}",
                name.to_string_lossy()
            )));
        }
    }
    Ok(code)
}

/// Compresses `data` in one go: a gzip piece of data.tar, or a control.tar.
pub fn compress(c: Compression, data: &[u8]) -> io::Result<Vec<u8>> {
    match c {
        Compression::Gzip => {
            let mut e = flate2::GzBuilder::new()
                .mtime(0)
                .operating_system(3)
                .write(Vec::new(), flate2::Compression::new(c.level()));
            e.write_all(data)?;
            e.finish()
        }
        Compression::Zstd => {
            let mut e = zstd::stream::Encoder::new(Vec::new(), c.level() as i32)?;
            e.include_checksum(true)?;
            e.write_all(data)?;
            e.finish()
        }
        Compression::Xz => {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), c.level());
            e.write_all(data)?;
            e.finish()
        }
    }
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

    #[test]
    fn the_zstd_stream_reads_back_and_its_bytes_do_not_depend_on_threads() {
        // 12 MiB of mixed text and noise: several 4 MiB jobs, so the workers do share the work.
        let mut data = Vec::new();
        let mut x: u32 = 1;
        while data.len() < 12 << 20 {
            data.extend_from_slice(b"<?php // a line of Moodle code\n");
            for _ in 0..16 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                data.push((x >> 24) as u8);
            }
        }
        let frame = |threads: u32| {
            let mut e = ZstdStream::new(Vec::new(), Compression::Zstd.level(), threads).unwrap();
            for chunk in data.chunks(100_003) {
                e.write_all(chunk).unwrap();
            }
            e.finish().unwrap()
        };
        let one = frame(1);
        assert_eq!(one, frame(2), "1 and 2 threads");
        assert_eq!(one, frame(4), "1 and 4 threads");
        assert!(
            one.len() < data.len() / 2,
            "compressed: {} bytes",
            one.len()
        );
        let mut back = Vec::new();
        zstd::stream::Decoder::new(&one[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data, "the frame decodes to the input");
        // Dropped half-way (an error elsewhere): the workers stop, nothing is written after.
        let mut e = ZstdStream::new(Vec::new(), 3, 2).unwrap();
        e.write_all(&data[..5 << 20]).unwrap();
        drop(e);
    }
}
