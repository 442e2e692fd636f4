//! [`LogReader`]: a streaming iterator over a snapshot of the log.
//!
//! This module owns sequential reading and verification of frames for replay. It must never
//! load more than one segment's read buffer (plus one payload) into memory, never return a
//! record whose checksum or LSN does not check out, and never write to the log.

use std::fs::File;
use std::io::{self, BufReader, Chain, Cursor, Read, Take};
use std::path::PathBuf;

use super::format::{check_header, frame_crc, FrameHeader, FRAME_HEADER_LEN, HEADER_LEN};
use super::LogError;

const READ_BUFFER: usize = 256 * 1024;

/// One segment to read: the first `file_len` bytes of the file, then `pending` (the active
/// segment's bytes that are still in the writer's buffer when the snapshot was taken).
#[derive(Debug)]
pub(crate) struct ReadSource {
    pub path: PathBuf,
    pub first_lsn: u64,
    pub file_len: u64,
    pub pending: Option<Vec<u8>>,
}

type Stream = Chain<Take<BufReader<File>>, Cursor<Vec<u8>>>;

struct Current {
    stream: Stream,
    offset: u64,
    total: u64,
}

/// Iterator over `(lsn, payload)` for the records of a [`super::SegmentedLog::read_from`]
/// snapshot, in LSN order. After the first error it yields nothing more.
pub struct LogReader {
    sources: std::vec::IntoIter<ReadSource>,
    current: Option<Current>,
    /// Records below this are read (and verified) but not returned.
    start_lsn: u64,
    /// LSN the next frame must carry.
    expected_lsn: u64,
    /// Exclusive end of the snapshot.
    end_lsn: u64,
    last_path: PathBuf,
    scratch: Vec<u8>,
    done: bool,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("expected_lsn", &self.expected_lsn)
            .field("end_lsn", &self.end_lsn)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl LogReader {
    pub(crate) fn new(sources: Vec<ReadSource>, start_lsn: u64, end_lsn: u64) -> LogReader {
        let expected_lsn = sources.first().map_or(end_lsn, |s| s.first_lsn);
        LogReader {
            sources: sources.into_iter(),
            current: None,
            start_lsn,
            expected_lsn,
            end_lsn,
            last_path: PathBuf::new(),
            scratch: Vec::new(),
            done: false,
        }
    }

    pub(crate) fn empty() -> LogReader {
        LogReader::new(Vec::new(), 0, 0)
    }

    fn corrupt(&self, offset: u64, reason: String) -> LogError {
        LogError::Corrupt {
            path: self.last_path.clone(),
            offset,
            reason,
        }
    }

    fn open_next(&mut self) -> Result<(), LogError> {
        let Some(src) = self.sources.next() else {
            let offset = self.current.as_ref().map_or(0, |c| c.offset);
            return Err(self.corrupt(
                offset,
                format!(
                    "the log ends before lsn {} although it held records up to lsn {} when \
                     reading started (was the directory modified by something else?)",
                    self.expected_lsn,
                    self.end_lsn - 1
                ),
            ));
        };
        self.last_path = src.path.clone();
        if src.first_lsn != self.expected_lsn {
            return Err(self.corrupt(
                0,
                format!(
                    "segment starts at lsn {} where lsn {} was expected",
                    src.first_lsn, self.expected_lsn
                ),
            ));
        }
        let file = File::open(&src.path).map_err(|e| LogError::io(&src.path, e))?;
        let pending = src.pending.unwrap_or_default();
        let total = src.file_len + pending.len() as u64;
        let mut stream = BufReader::with_capacity(READ_BUFFER, file)
            .take(src.file_len)
            .chain(Cursor::new(pending));
        let mut header = [0u8; HEADER_LEN as usize];
        if total < HEADER_LEN {
            return Err(LogError::BadHeader {
                path: src.path,
                reason: format!("the segment is {total} bytes, shorter than its header"),
            });
        }
        stream
            .read_exact(&mut header)
            .map_err(|e| self.read_error(0, e))?;
        check_header(&header).map_err(|reason| LogError::BadHeader {
            path: src.path.clone(),
            reason,
        })?;
        self.current = Some(Current {
            stream,
            offset: HEADER_LEN,
            total,
        });
        Ok(())
    }

    fn read_error(&self, offset: u64, e: io::Error) -> LogError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            self.corrupt(
                offset,
                "the segment is shorter than when reading started (was it modified by something \
                 else?)"
                    .into(),
            )
        } else {
            LogError::io(&self.last_path, e)
        }
    }

    fn step(&mut self) -> Result<Option<(u64, Vec<u8>)>, LogError> {
        loop {
            if self.expected_lsn >= self.end_lsn {
                return Ok(None);
            }
            let exhausted = match &self.current {
                None => true,
                Some(c) => c.offset >= c.total,
            };
            if exhausted {
                self.open_next()?;
                continue;
            }
            let Some(cur) = self.current.as_mut() else {
                continue;
            };
            let offset = cur.offset;
            let remaining = cur.total - offset;
            if remaining < FRAME_HEADER_LEN as u64 {
                return Err(self.corrupt(offset, "incomplete frame header".into()));
            }
            let mut fh = [0u8; FRAME_HEADER_LEN];
            if let Err(e) = cur.stream.read_exact(&mut fh) {
                return Err(self.read_error(offset, e));
            }
            let h = FrameHeader::parse(&fh);
            if h.frame_len() > remaining {
                return Err(self.corrupt(
                    offset,
                    format!(
                        "frame of {} bytes extends past the segment end",
                        h.frame_len()
                    ),
                ));
            }
            let wanted = h.lsn >= self.start_lsn;
            let mut payload = if wanted {
                vec![0u8; h.len as usize]
            } else {
                std::mem::take(&mut self.scratch)
            };
            if !wanted {
                payload.resize(h.len as usize, 0);
            }
            let read = cur.stream.read_exact(&mut payload);
            cur.offset += h.frame_len();
            if let Err(e) = read {
                return Err(self.read_error(offset, e));
            }
            if frame_crc(h.lsn, &payload) != h.crc {
                return Err(self.corrupt(offset, "checksum mismatch".into()));
            }
            if h.lsn != self.expected_lsn {
                return Err(self.corrupt(
                    offset,
                    format!(
                        "frame holds lsn {} where lsn {} was expected",
                        h.lsn, self.expected_lsn
                    ),
                ));
            }
            self.expected_lsn += 1;
            if wanted {
                return Ok(Some((h.lsn, payload)));
            }
            self.scratch = payload;
        }
    }
}

impl Iterator for LogReader {
    type Item = Result<(u64, Vec<u8>), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(rec)) => Some(Ok(rec)),
            Ok(None) => {
                self.done = true;
                // Drop the open file now rather than when the reader is dropped.
                self.current = None;
                None
            }
            Err(e) => {
                self.done = true;
                self.current = None;
                Some(Err(e))
            }
        }
    }
}
