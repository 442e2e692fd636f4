//! On-disk format of log segments: header, frame encoding and file naming.
//!
//! This module owns the byte layout described in the parent module's docs and nothing else: it
//! does no I/O beyond parsing what it is handed, so the writer, the reader and the recovery scan
//! all agree on the format by construction.

use std::path::{Path, PathBuf};

/// First bytes of every segment file.
pub(crate) const MAGIC: &[u8; 8] = b"CAIRNLOG";
/// Format version written by, and the only one readable by, this build.
pub(crate) const VERSION: u32 = 1;
/// Size of the segment header: magic + version.
pub(crate) const HEADER_LEN: u64 = 12;
/// Size of a frame header: len + crc + lsn.
pub(crate) const FRAME_HEADER_LEN: usize = 16;

const SEGMENT_SUFFIX: &str = ".seg";
const SEGMENT_DIGITS: usize = 20;

/// The 12 header bytes every segment starts with.
pub(crate) fn header_bytes() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Checks a complete header; `Err` carries a human-readable reason.
pub(crate) fn check_header(bytes: &[u8; HEADER_LEN as usize]) -> Result<(), String> {
    if &bytes[..8] != MAGIC {
        return Err(format!(
            "the file starts with {:?} instead of the magic bytes \"CAIRNLOG\"",
            String::from_utf8_lossy(&bytes[..8])
        ));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&bytes[8..12]);
    let version = u32::from_le_bytes(v);
    if version != VERSION {
        return Err(format!(
            "segment format version {version}, but this build only reads version {VERSION}"
        ));
    }
    Ok(())
}

/// Checksum of a frame: crc32c over the LSN's little-endian bytes followed by the payload.
#[inline]
pub(crate) fn frame_crc(lsn: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&lsn.to_le_bytes()), payload)
}

/// Appends one encoded frame to `buf`. The caller has checked `payload.len()` fits in a `u32`.
#[inline]
pub(crate) fn encode_frame(buf: &mut Vec<u8>, lsn: u64, payload: &[u8]) {
    let len = payload.len() as u32;
    buf.reserve(FRAME_HEADER_LEN + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&frame_crc(lsn, payload).to_le_bytes());
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameHeader {
    pub len: u32,
    pub crc: u32,
    pub lsn: u64,
}

impl FrameHeader {
    #[inline]
    pub(crate) fn parse(b: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
        let mut len = [0u8; 4];
        let mut crc = [0u8; 4];
        let mut lsn = [0u8; 8];
        len.copy_from_slice(&b[0..4]);
        crc.copy_from_slice(&b[4..8]);
        lsn.copy_from_slice(&b[8..16]);
        FrameHeader {
            len: u32::from_le_bytes(len),
            crc: u32::from_le_bytes(crc),
            lsn: u64::from_le_bytes(lsn),
        }
    }

    /// Total bytes of the frame on disk.
    #[inline]
    pub(crate) fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.len)
    }
}

/// Path of the segment whose first record is `first_lsn`.
pub(crate) fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!(
        "{first_lsn:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_DIGITS
    ))
}

/// The first LSN encoded in a segment file name, or `None` if the name is not a segment's.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_lsn() {
        let dir = Path::new("/x");
        let p = segment_path(dir, 42);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000042.seg");
        assert_eq!(parse_segment_name(name), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.tmp"), None);
        let max = segment_path(dir, u64::MAX);
        let max_name = max.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_segment_name(max_name), Some(u64::MAX));
    }

    #[test]
    fn header_checks_magic_and_version() {
        assert!(check_header(&header_bytes()).is_ok());
        let mut h = header_bytes();
        h[0] = b'X';
        assert!(check_header(&h).unwrap_err().contains("magic"));
        let mut h = header_bytes();
        h[8] = 9;
        assert!(check_header(&h).unwrap_err().contains("version 9"));
    }

    #[test]
    fn frame_encoding_is_the_documented_layout() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, b"abc");
        assert_eq!(buf.len(), FRAME_HEADER_LEN + 3);
        assert_eq!(&buf[0..4], &3u32.to_le_bytes());
        let mut expected = 7u64.to_le_bytes().to_vec();
        expected.extend_from_slice(b"abc");
        assert_eq!(&buf[4..8], &crc32c::crc32c(&expected).to_le_bytes());
        assert_eq!(&buf[8..16], &7u64.to_le_bytes());
        assert_eq!(&buf[16..], b"abc");
        let h = FrameHeader::parse(buf[..16].try_into().unwrap());
        assert_eq!((h.len, h.lsn, h.frame_len()), (3, 7, 19));
    }
}
