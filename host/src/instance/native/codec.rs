//! WAL compression in the formats barman 3.19.1 writes and reads (`barman/compression.py`),
//! streamed: a reader in, a writer out, a few buffers in between.
//!
//! | algorithm | barman (Python)                      | here                          | level |
//! |-----------|--------------------------------------|-------------------------------|-------|
//! | gzip      | `gzip.GzipFile`                      | `flate2` gzip member          | 6     |
//! | bzip2     | `bz2.compress`                       | `bzip2` stream                | 5     |
//! | snappy    | python-snappy `stream_compress`      | `snap` framing format         | -     |
//! | lz4       | `lz4.frame.compress`                 | `lz4_flex` LZ4 frame          | -     |
//! | xz        | `lzma.compress` (xz, CRC64)          | `liblzma` xz stream, CRC64    | 3     |
//! | zstd      | `zstandard` `copy_stream` (a frame)  | `zstd` frame with its size    | 4     |
//!
//! The levels are barman's "medium", the default of barman-cloud-wal-archive; any level
//! reads back the same. Decoding accepts what barman's readers accept: several gzip members
//! or bzip2 streams, several xz streams, a zstd frame with or without its content size.

use std::io::{self, Read, Write};

use pgwarden_crds::WalCompression;

/// Compresses all of `input` into `output` with `c` (`None`: copies it); returns the
/// number of bytes read from `input`.
pub fn compress<W: Write>(
    c: Option<WalCompression>,
    input: &mut impl Read,
    size_hint: Option<u64>,
    output: W,
) -> io::Result<u64> {
    match c {
        None => copy_into(input, output),
        Some(WalCompression::Gzip) => {
            let mut enc = flate2::write::GzEncoder::new(output, flate2::Compression::new(6));
            let n = io::copy(input, &mut enc)?;
            enc.finish()?.flush()?;
            Ok(n)
        }
        Some(WalCompression::Bzip2) => {
            let mut enc = bzip2::write::BzEncoder::new(output, bzip2::Compression::new(5));
            let n = io::copy(input, &mut enc)?;
            enc.finish()?.flush()?;
            Ok(n)
        }
        Some(WalCompression::Snappy) => {
            let mut enc = snap::write::FrameEncoder::new(output);
            let n = io::copy(input, &mut enc)?;
            enc.into_inner().map_err(|e| e.into_error())?.flush()?;
            Ok(n)
        }
        Some(WalCompression::Lz4) => {
            let mut enc = lz4_flex::frame::FrameEncoder::new(output);
            let n = io::copy(input, &mut enc)?;
            enc.finish().map_err(io::Error::other)?.flush()?;
            Ok(n)
        }
        Some(WalCompression::Xz) => {
            let mut enc = liblzma::write::XzEncoder::new(output, 3);
            let n = io::copy(input, &mut enc)?;
            enc.finish()?.flush()?;
            Ok(n)
        }
        Some(WalCompression::Zstd) => {
            let mut enc = zstd::stream::write::Encoder::new(output, 4)?;
            // The size in the frame header lets one-shot decoders (zstandard's
            // `decompress`) read the object too, not only streaming ones.
            enc.include_contentsize(true)?;
            enc.set_pledged_src_size(size_hint)?;
            let n = io::copy(input, &mut enc)?;
            enc.finish()?.flush()?;
            Ok(n)
        }
    }
}

/// Decompresses all of `input` (compressed with `c`) into `output`; returns the number of
/// bytes written.
pub fn decompress<W: Write>(
    c: Option<WalCompression>,
    input: impl Read,
    output: W,
) -> io::Result<u64> {
    let mut input = io::BufReader::with_capacity(64 * 1024, input);
    match c {
        None => copy_into(&mut input, output),
        Some(WalCompression::Gzip) => {
            copy_into(&mut flate2::bufread::MultiGzDecoder::new(input), output)
        }
        Some(WalCompression::Bzip2) => {
            copy_into(&mut bzip2::bufread::MultiBzDecoder::new(input), output)
        }
        Some(WalCompression::Snappy) => {
            copy_into(&mut snap::read::FrameDecoder::new(input), output)
        }
        Some(WalCompression::Lz4) => {
            copy_into(&mut lz4_flex::frame::FrameDecoder::new(input), output)
        }
        Some(WalCompression::Xz) => copy_into(
            &mut liblzma::bufread::XzDecoder::new_multi_decoder(input),
            output,
        ),
        Some(WalCompression::Zstd) => copy_into(
            &mut zstd::stream::read::Decoder::with_buffer(input)?,
            output,
        ),
    }
}

fn copy_into<W: Write>(input: &mut impl Read, mut output: W) -> io::Result<u64> {
    let n = io::copy(input, &mut output)?;
    output.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::instance::native::key::COMPRESSIONS;

    /// Half repetitive, half noise: a page of WAL looks like that.
    fn sample() -> Vec<u8> {
        let mut v: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut x = 0x2545_f491_u32;
        v.extend((0..300_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        }));
        v
    }

    #[test]
    fn every_compression_round_trips() {
        let data = sample();
        for c in COMPRESSIONS {
            let mut packed = Vec::new();
            let n = compress(c, &mut &data[..], Some(data.len() as u64), &mut packed).unwrap();
            assert_eq!(n, data.len() as u64, "{c:?}");
            let mut back = Vec::new();
            decompress(c, &packed[..], &mut back).unwrap();
            assert!(back == data, "{c:?} did not round-trip");
        }
    }

    #[test]
    fn the_formats_start_with_barmans_magic_numbers() {
        // barman/compression.py identifies a compressed file by these (its MAGIC constants).
        let magic = [
            (WalCompression::Gzip, &b"\x1f\x8b\x08"[..]),
            (WalCompression::Bzip2, b"BZh"),
            (WalCompression::Snappy, b"\xff\x06\x00\x00sNaPpY"),
            (WalCompression::Lz4, b"\x04\x22\x4d\x18"),
            (WalCompression::Xz, b"\xfd7zXZ\x00"),
            (WalCompression::Zstd, b"(\xb5/\xfd"),
        ];
        for (c, m) in magic {
            let mut packed = Vec::new();
            compress(Some(c), &mut &b"wal"[..], None, &mut packed).unwrap();
            assert!(packed.starts_with(m), "{c:?}: {:02x?}", &packed[..8]);
        }
    }

    #[test]
    fn corrupt_input_is_an_error_not_short_output() {
        let data = sample();
        for c in &COMPRESSIONS[1..] {
            let mut packed = Vec::new();
            compress(*c, &mut &data[..], None, &mut packed).unwrap();
            packed.truncate(packed.len() / 2);
            let mut back = Vec::new();
            assert!(decompress(*c, &packed[..], &mut back).is_err(), "{c:?}");
        }
    }
}
