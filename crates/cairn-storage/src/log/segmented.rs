//! [`SegmentedLog`]: the synchronous, single-writer log over a directory of segments.
//!
//! This module owns the segment files of one log: the recovery scan at open, buffered appends to
//! the active segment, rolling, syncing, truncation and restarting at a new LSN. It must never
//! be written by two owners at once (there is no cross-process lock: the partition that owns the
//! directory is the only writer), and it must never return from `sync` before the data, and the
//! directory entries of new segments, are on stable storage (when `fsync` is on).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::format::{
    check_header, encode_frame, frame_crc, header_bytes, parse_segment_name, segment_path,
    FrameHeader, FRAME_HEADER_LEN, HEADER_LEN,
};
use super::reader::{LogReader, ReadSource};
use super::{LogConfig, LogError, LogStats, MAX_RECORD_BYTES};

/// Appends are buffered in memory and written out once this much has accumulated (or at
/// `sync`). Large enough that a group-commit batch is normally a single `write` syscall.
const FLUSH_THRESHOLD: usize = 4 * 1024 * 1024;

/// Read buffer for the recovery scan.
const SCAN_BUFFER: usize = 1024 * 1024;

/// One retained segment file.
#[derive(Debug)]
struct Segment {
    first_lsn: u64,
    path: PathBuf,
    /// Bytes of the file that are written out (header included). For the active segment the
    /// bytes still in the append buffer come on top.
    len: u64,
}

/// The open handle of the last segment, the only one ever written.
#[derive(Debug)]
struct Active {
    file: File,
    /// Records in the active segment, to avoid rolling an empty segment.
    records: u64,
    /// Bytes were written since the last `fdatasync`.
    dirty: bool,
}

/// Synchronous single-writer log. Used directly in tests and by the group-commit writer.
///
/// Appends are buffered; nothing is durable until [`SegmentedLog::sync`] returns. Dropping the
/// log writes buffered records out to the OS (without syncing), like `BufWriter`.
#[derive(Debug)]
pub struct SegmentedLog {
    dir: PathBuf,
    config: LogConfig,
    /// Retained segments, oldest first. The last one is the active segment.
    segments: VecDeque<Segment>,
    /// Handle of `segments.back()`; `None` only when there are no segments.
    active: Option<Active>,
    /// Encoded frames (and possibly a new segment's header) not yet written to the active file.
    buf: Vec<u8>,
    next_lsn: u64,
    /// A segment was created since the last directory sync.
    dir_dirty: bool,
    /// Records were appended since the last `sync` (for the batch counter).
    unsynced_records: bool,
    /// Sticky: after a failed write the buffer and the file may disagree, so nothing more may be
    /// written through this handle; reopening recovers from what is on disk.
    failed: Option<String>,
    stats: LogStats,
    /// Bytes cut off at open as a torn tail (an incomplete write from a crash).
    torn_tail_bytes: u64,
}

/// What the recovery scan learned about one segment.
struct Scanned {
    /// LSN the next record after this segment must have.
    end_lsn: u64,
    /// Length of the valid part of the file (after cutting a torn tail).
    len: u64,
    records: u64,
    /// Bytes cut off as a torn tail (or an incomplete header) at open.
    torn_bytes: u64,
}

impl SegmentedLog {
    /// Opens (creating if needed) the log in `dir` and recovers it.
    ///
    /// A torn or checksum-bad tail of the last segment is cut off (with a `warn` saying how many
    /// bytes). Corruption anywhere else — a bad frame followed by a valid one, a bad frame in a
    /// segment that is not the last, an LSN gap — is [`LogError::Corrupt`]; a file with the wrong
    /// magic or version is [`LogError::BadHeader`]. Every segment is read once, to verify it.
    pub fn open(dir: &Path, config: LogConfig) -> Result<SegmentedLog, LogError> {
        fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
            let entry = entry.map_err(|e| LogError::io(dir, e))?;
            let name = entry.file_name();
            // Other files (an operator's notes, editor backups) are not ours to judge or delete.
            if let Some(first_lsn) = name.to_str().and_then(parse_segment_name) {
                found.push((first_lsn, entry.path()));
            }
        }
        found.sort_unstable_by_key(|(lsn, _)| *lsn);

        let mut segments = VecDeque::with_capacity(found.len());
        let mut expected: Option<u64> = None;
        let mut last_records = 0;
        let mut torn_tail_bytes = 0;
        let count = found.len();
        for (i, (first_lsn, path)) in found.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let scanned = scan_segment(&path, first_lsn, expected, is_last, config.fsync)?;
            expected = Some(scanned.end_lsn);
            last_records = scanned.records;
            torn_tail_bytes += scanned.torn_bytes;
            segments.push_back(Segment {
                first_lsn,
                path,
                len: scanned.len,
            });
        }

        let active = match segments.back() {
            Some(seg) => Some(Active {
                file: OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(|e| LogError::io(&seg.path, e))?,
                records: last_records,
                dirty: false,
            }),
            None => None,
        };

        Ok(SegmentedLog {
            dir: dir.to_path_buf(),
            config,
            segments,
            active,
            torn_tail_bytes,
            buf: Vec::new(),
            next_lsn: expected.unwrap_or(1),
            dir_dirty: false,
            unsynced_records: false,
            failed: None,
            stats: LogStats::default(),
        })
    }

    /// Bytes cut off when this log was opened: the torn tail an interrupted write left behind
    /// (never acknowledged, since it was never synced). Zero after a clean stop.
    pub fn torn_tail_bytes(&self) -> u64 {
        self.torn_tail_bytes
    }

    /// The LSN the next append gets.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// The oldest retained LSN (`next_lsn()` if the log holds no records).
    pub fn first_lsn(&self) -> u64 {
        self.segments
            .front()
            .map_or(self.next_lsn, |s| s.first_lsn.min(self.next_lsn))
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Number of segment files currently retained.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Work counters since open.
    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// The sticky failure of an earlier write, if any.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Buffers one record and returns its LSN. Not durable until [`SegmentedLog::sync`].
    ///
    /// Rolls to a new segment first if the active one has reached `segment_bytes`.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, LogError> {
        self.check_ok()?;
        if payload.len() > MAX_RECORD_BYTES {
            return Err(LogError::RecordTooLarge {
                len: payload.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        self.prepare_active()?;
        let lsn = self.next_lsn;
        encode_frame(&mut self.buf, lsn, payload);
        if let Some(active) = self.active.as_mut() {
            active.records += 1;
        }
        self.next_lsn += 1;
        self.unsynced_records = true;
        self.stats.records += 1;
        self.stats.bytes += (FRAME_HEADER_LEN + payload.len()) as u64;
        if self.buf.len() >= FLUSH_THRESHOLD {
            self.flush_buf()?;
        }
        Ok(lsn)
    }

    /// Writes buffered records out and, if `fsync` is on, makes them durable with one
    /// `fdatasync` (plus a directory sync if a segment was created since the last sync).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.check_ok()?;
        self.flush_buf()?;
        if let (Some(active), Some(seg)) = (self.active.as_mut(), self.segments.back()) {
            if active.dirty {
                if self.config.fsync {
                    if let Err(e) = active.file.sync_data() {
                        return Err(self.poison(LogError::io(&seg.path, e)));
                    }
                }
                active.dirty = false;
            }
        }
        if self.dir_dirty {
            if self.config.fsync {
                if let Err(e) = sync_dir(&self.dir) {
                    return Err(self.poison(e));
                }
            }
            self.dir_dirty = false;
        }
        if self.unsynced_records {
            self.unsynced_records = false;
            self.stats.batches += 1;
        }
        Ok(())
    }

    /// Streams every retained record with LSN >= `lsn`, in order, including records appended
    /// but not yet synced. Segments are opened one at a time and read through a buffer, so
    /// memory use does not grow with the log.
    ///
    /// `lsn` below [`SegmentedLog::first_lsn`] is [`LogError::Truncated`] (those records are
    /// gone; silently starting later would skip records). `lsn` 0 means "from the start".
    ///
    /// The reader is a snapshot of what exists now: records appended later are not returned,
    /// and segments deleted by a later `truncate_before` make it fail with an I/O error.
    pub fn read_from(&self, lsn: u64) -> Result<LogReader, LogError> {
        self.check_ok()?;
        let start = lsn.max(1);
        let first = self.first_lsn();
        if start < first {
            return Err(LogError::Truncated {
                requested: lsn,
                first_lsn: first,
            });
        }
        if start >= self.next_lsn {
            return Ok(LogReader::empty());
        }
        // Last segment whose first LSN is <= start; exists because segments[0].first <= start.
        let idx = self
            .segments
            .partition_point(|s| s.first_lsn <= start)
            .saturating_sub(1);
        let last = self.segments.len().saturating_sub(1);
        let sources = self
            .segments
            .iter()
            .enumerate()
            .skip(idx)
            .map(|(i, s)| ReadSource {
                path: s.path.clone(),
                first_lsn: s.first_lsn,
                file_len: s.len,
                // Bytes still in the append buffer belong to the active (last) segment.
                pending: if i == last && !self.buf.is_empty() {
                    Some(self.buf.clone())
                } else {
                    None
                },
            })
            .collect();
        Ok(LogReader::new(sources, start, self.next_lsn))
    }

    /// Deletes whole segments whose records are all below `lsn`, oldest first, never the active
    /// segment. Returns how many were deleted.
    pub fn truncate_before(&mut self, lsn: u64) -> Result<usize, LogError> {
        self.check_ok()?;
        let mut deleted = 0;
        // Segment 0 holds only records < lsn iff the segment after it starts at or before lsn.
        while self.segments.len() > 1 && self.segments[1].first_lsn <= lsn {
            let path = self.segments[0].path.clone();
            fs::remove_file(&path).map_err(|e| LogError::io(&path, e))?;
            self.segments.pop_front();
            deleted += 1;
            // One directory sync per deletion: if unlinks could reach the disk out of order, a
            // crash could leave an old segment behind a deleted newer one, which is a gap.
            if self.config.fsync {
                sync_dir(&self.dir)?;
            }
        }
        Ok(deleted)
    }

    /// Continues the log at `lsn`, in a new segment named by it.
    ///
    /// Allowed when the log holds no records (any `lsn` >= 1) or when `lsn >= next_lsn()`. Used
    /// after a checkpoint at position `lsn - 1` covers everything: all retained segments are
    /// deleted first, because a log must stay contiguous (a gap reads as corruption at the next
    /// open). Unsynced appends are discarded with them. The new segment is synced before this
    /// returns, so the new position survives a crash.
    pub fn set_next_lsn(&mut self, lsn: u64) -> Result<(), LogError> {
        self.check_ok()?;
        let empty = self.first_lsn() == self.next_lsn;
        if lsn == self.next_lsn && !self.segments.is_empty() {
            return Ok(());
        }
        if lsn == 0 || (!empty && lsn < self.next_lsn) {
            return Err(LogError::InvalidNextLsn {
                requested: lsn,
                next_lsn: self.next_lsn,
            });
        }
        self.buf.clear();
        self.active = None;
        self.unsynced_records = false;
        while let Some(seg) = self.segments.front() {
            fs::remove_file(&seg.path).map_err(|e| LogError::io(&seg.path, e))?;
            self.segments.pop_front();
            if self.config.fsync {
                sync_dir(&self.dir)?;
            }
        }
        self.next_lsn = lsn;
        self.create_segment()?;
        self.sync()
    }

    fn check_ok(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(msg) => Err(LogError::Failed(msg.clone())),
            None => Ok(()),
        }
    }

    /// Records a write failure as sticky and hands the error back.
    fn poison(&mut self, err: LogError) -> LogError {
        self.failed = Some(err.to_string());
        err
    }

    /// Makes sure there is an active segment with room for another record.
    fn prepare_active(&mut self) -> Result<(), LogError> {
        let Some(active) = self.active.as_ref() else {
            return self.create_segment();
        };
        let size = self.segments.back().map_or(0, |s| s.len) + self.buf.len() as u64;
        if active.records > 0 && size >= self.config.segment_bytes {
            self.roll()?;
        }
        Ok(())
    }

    /// Seals the active segment (written out and synced, so a torn tail can only ever be in the
    /// last segment) and starts a new one at `next_lsn`.
    fn roll(&mut self) -> Result<(), LogError> {
        self.flush_buf()?;
        if let (Some(active), Some(seg)) = (self.active.as_mut(), self.segments.back()) {
            if active.dirty && self.config.fsync {
                if let Err(e) = active.file.sync_data() {
                    return Err(self.poison(LogError::io(&seg.path, e)));
                }
            }
            active.dirty = false;
        }
        self.active = None;
        self.create_segment()
    }

    /// Creates the segment file for `next_lsn` and makes it active. Its header goes into the
    /// append buffer so that it reaches the disk with the first batch, in the same write.
    fn create_segment(&mut self) -> Result<(), LogError> {
        let path = segment_path(&self.dir, self.next_lsn);
        let file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) => return Err(self.poison(LogError::io(&path, e))),
        };
        debug_assert!(
            self.buf.is_empty(),
            "buffer must be flushed before a new segment"
        );
        self.buf.extend_from_slice(&header_bytes());
        self.segments.push_back(Segment {
            first_lsn: self.next_lsn,
            path,
            len: 0,
        });
        self.active = Some(Active {
            file,
            records: 0,
            dirty: false,
        });
        self.dir_dirty = true;
        Ok(())
    }

    /// Writes the append buffer to the active file in one `write_all`.
    fn flush_buf(&mut self) -> Result<(), LogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let (Some(active), Some(seg)) = (self.active.as_mut(), self.segments.back_mut()) else {
            // Unreachable by construction (the buffer only fills after `prepare_active`), but
            // dropping bytes silently would be worse than refusing.
            let err = LogError::Failed("internal error: buffered records without a segment".into());
            return Err(self.poison(err));
        };
        if let Err(e) = active.file.write_all(&self.buf) {
            let err = LogError::io(&seg.path, e);
            return Err(self.poison(err));
        }
        seg.len += self.buf.len() as u64;
        active.dirty = true;
        self.buf.clear();
        Ok(())
    }
}

impl Drop for SegmentedLog {
    fn drop(&mut self) {
        // Like BufWriter: hand buffered records to the OS so a clean drop loses nothing short of
        // a machine crash. After a failure the buffer may duplicate what reached the file.
        if self.failed.is_none() {
            let _ = self.flush_buf();
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, e))
}

/// Reads until `buf` is full or EOF; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Verifies one segment at open; for the last segment, cuts a torn tail.
///
/// `expected` is the LSN the previous segment ended at; it is checked against the name after
/// the header, so that a foreign file is reported as such rather than as a gap.
fn scan_segment(
    path: &Path,
    first_lsn: u64,
    expected: Option<u64>,
    is_last: bool,
    fsync: bool,
) -> Result<Scanned, LogError> {
    let io_err = |e| LogError::io(path, e);
    let mut file = OpenOptions::new()
        .read(true)
        .write(is_last)
        .open(path)
        .map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();

    let gap_check = || match expected {
        Some(exp) if exp != first_lsn => {
            let what = if first_lsn > exp { "gap" } else { "overlap" };
            Err(LogError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                reason: format!(
                    "LSN {what}: the previous segment ends before lsn {exp}, but this segment's \
                     name says it starts at lsn {first_lsn}"
                ),
            })
        }
        _ => Ok(()),
    };

    // The header is written with the segment's first batch and synced with it, so a last
    // segment whose header is incomplete (a prefix, then nothing or zeros) never had a
    // successful sync: nothing in it was acknowledged, and it is reset to empty. Anything else
    // that is not our header is a foreign file.
    let torn_header = |bytes: &[u8]| {
        let expected = header_bytes();
        let same = bytes
            .iter()
            .zip(expected.iter())
            .take_while(|(a, b)| a == b)
            .count();
        bytes[same..].iter().all(|&b| b == 0)
    };
    let reset = |mut file: &File, cut_bytes: u64| -> Result<Scanned, LogError> {
        tracing::warn!(
            path = %path.display(),
            cut_bytes,
            "log segment has an incomplete header (crash before its first sync); resetting it \
             to empty"
        );
        file.set_len(0).map_err(io_err)?;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        file.write_all(&header_bytes()).map_err(io_err)?;
        if fsync {
            file.sync_all().map_err(io_err)?;
        }
        Ok(Scanned {
            end_lsn: first_lsn,
            len: HEADER_LEN,
            records: 0,
            torn_bytes: cut_bytes,
        })
    };

    if file_len < HEADER_LEN {
        let mut got = Vec::new();
        file.read_to_end(&mut got).map_err(io_err)?;
        if is_last && torn_header(&got) {
            gap_check()?;
            return reset(&file, file_len);
        }
        return Err(LogError::BadHeader {
            path: path.to_path_buf(),
            reason: format!("the file is {file_len} bytes, shorter than the 12-byte header"),
        });
    }

    let mut reader = BufReader::with_capacity(SCAN_BUFFER, &file);
    let mut header = [0u8; HEADER_LEN as usize];
    reader.read_exact(&mut header).map_err(io_err)?;
    if let Err(reason) = check_header(&header) {
        if !(is_last && torn_header(&header)) {
            return Err(LogError::BadHeader {
                path: path.to_path_buf(),
                reason,
            });
        }
        drop(reader);
        if let Some((off, lsn)) =
            find_valid_frame(&file, HEADER_LEN, file_len, first_lsn).map_err(io_err)?
        {
            return Err(LogError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                reason: format!(
                    "incomplete segment header, yet a valid record (lsn {lsn}) follows at \
                     offset {off}"
                ),
            });
        }
        gap_check()?;
        return reset(&file, file_len);
    }
    gap_check()?;

    let mut pos = HEADER_LEN;
    let mut expected = first_lsn;
    let mut payload = Vec::new();
    let mut fh = [0u8; FRAME_HEADER_LEN];
    loop {
        if pos == file_len {
            break;
        }
        let remaining = file_len - pos;
        let bad = if remaining < FRAME_HEADER_LEN as u64 {
            format!("incomplete frame header ({remaining} bytes)")
        } else {
            let n = read_full(&mut reader, &mut fh).map_err(io_err)?;
            if n < FRAME_HEADER_LEN {
                // The file shrank under us: someone else is writing this directory.
                format!("incomplete frame header ({n} bytes)")
            } else {
                let h = FrameHeader::parse(&fh);
                if h.frame_len() > remaining {
                    format!(
                        "frame of {} bytes extends past the end of the file ({remaining} bytes left)",
                        h.frame_len()
                    )
                } else {
                    // Bounded by the file size, so a damaged length cannot ask for more.
                    payload.resize(h.len as usize, 0);
                    reader.read_exact(&mut payload).map_err(io_err)?;
                    if frame_crc(h.lsn, &payload) != h.crc {
                        "checksum mismatch".to_string()
                    } else if h.lsn != expected {
                        // The checksum is fine, so this is not a torn write: the frame is in the
                        // wrong place.
                        return Err(LogError::Corrupt {
                            path: path.to_path_buf(),
                            offset: pos,
                            reason: format!(
                                "frame holds lsn {} where lsn {expected} was expected",
                                h.lsn
                            ),
                        });
                    } else {
                        pos += h.frame_len();
                        expected += 1;
                        continue;
                    }
                }
            }
        };

        // A bad frame at `pos`.
        if !is_last {
            return Err(LogError::Corrupt {
                path: path.to_path_buf(),
                offset: pos,
                reason: format!("{bad} in a segment that is not the last"),
            });
        }
        drop(reader);
        if let Some((off, lsn)) =
            find_valid_frame(&file, pos + 1, file_len, expected).map_err(io_err)?
        {
            return Err(LogError::Corrupt {
                path: path.to_path_buf(),
                offset: pos,
                reason: format!("{bad}, yet a valid record (lsn {lsn}) follows at offset {off}"),
            });
        }
        tracing::warn!(
            path = %path.display(),
            offset = pos,
            cut_bytes = file_len - pos,
            reason = %bad,
            "cutting the torn tail of the log (an incomplete write from a crash); records \
             before it are intact"
        );
        file.set_len(pos).map_err(io_err)?;
        if fsync {
            file.sync_all().map_err(io_err)?;
        }
        break;
    }
    Ok(Scanned {
        end_lsn: expected,
        len: pos,
        records: expected - first_lsn,
        torn_bytes: file_len - pos,
    })
}

/// Looks for any checksum-valid frame starting at or after `from` whose LSN is at least
/// `min_lsn` (the one the bad frame should have had). Finding one means the bad frame is not a
/// torn tail. Candidates are filtered by a plausible LSN before any checksum is computed, so
/// scanning a garbage tail costs little more than reading it.
fn find_valid_frame(
    file: &File,
    from: u64,
    file_len: u64,
    min_lsn: u64,
) -> io::Result<Option<(u64, u64)>> {
    const WINDOW: usize = 1024 * 1024;
    let hl = FRAME_HEADER_LEN;
    // At most one frame per header's worth of bytes can follow.
    let max_lsn = min_lsn.saturating_add(file_len.saturating_sub(from) / hl as u64 + 1);
    let mut window = vec![0u8; WINDOW + hl - 1];
    let mut payload = Vec::new();
    let mut off = from;
    let mut f = file;
    while off + hl as u64 <= file_len {
        let n = (file_len - off).min(window.len() as u64) as usize;
        f.seek(SeekFrom::Start(off))?;
        f.read_exact(&mut window[..n])?;
        // Start positions whose whole header lies inside this window.
        let starts = n + 1 - hl;
        for i in 0..starts {
            let Ok(hb) = <&[u8; FRAME_HEADER_LEN]>::try_from(&window[i..i + hl]) else {
                continue;
            };
            let h = FrameHeader::parse(hb);
            let at = off + i as u64;
            if h.lsn < min_lsn || h.lsn > max_lsn || at + h.frame_len() > file_len {
                continue;
            }
            payload.resize(h.len as usize, 0);
            f.seek(SeekFrom::Start(at + hl as u64))?;
            f.read_exact(&mut payload)?;
            if frame_crc(h.lsn, &payload) == h.crc {
                return Ok(Some((at, h.lsn)));
            }
        }
        off += starts as u64;
    }
    Ok(None)
}
