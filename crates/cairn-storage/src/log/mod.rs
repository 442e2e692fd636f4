//! # The per-partition segmented write-ahead log
//!
//! This module owns the bytes of a partition's log on disk: framing, segment files, crash
//! recovery of the tail, retention (truncation after a checkpoint), and the group-commit writer
//! thread. It must never interpret a record's payload, never reorder or renumber records, and
//! never report an LSN as durable before an `fdatasync` covering it has returned.
//!
//! ## Layout
//!
//! A log is a directory of segment files named `<first_lsn:020>.seg` (the LSN of the first record
//! the segment holds, zero-padded so that lexical order is LSN order). Records carry log sequence
//! numbers (LSNs) that start at 1 and are contiguous across segments; the writer rolls to a new
//! segment once the current one has reached [`LogConfig::segment_bytes`]. Only the last segment
//! is ever written to (the *active* segment).
//!
//! Each segment starts with a 12-byte header:
//!
//! | bytes | field                                  |
//! |-------|----------------------------------------|
//! | 0..8  | magic `CAIRNLOG`                       |
//! | 8..12 | format version, `u32` little-endian (1) |
//!
//! followed by frames, back to back:
//!
//! | bytes        | field                                                      |
//! |--------------|------------------------------------------------------------|
//! | 0..4         | `len`: payload length, `u32` LE                            |
//! | 4..8         | `crc32c`, `u32` LE, over the LSN's 8 LE bytes ++ payload   |
//! | 8..16        | `lsn`, `u64` LE                                            |
//! | 16..16 + len | payload                                                    |
//!
//! The checksum covers the LSN so that a frame copied to the wrong place, or a stale frame, is
//! caught; it does not cover `len`, but a damaged `len` makes the checksum land on the wrong bytes.
//!
//! ## Recovery rules (see [`SegmentedLog::open`])
//!
//! A crash can only damage what was written after the last successful sync, which is always at
//! the end of the last segment. So a bad or incomplete frame at the end of the last segment is a
//! *torn tail* and is cut off (with a warning saying how many bytes). A bad frame anywhere else —
//! in a segment that is not the last, or followed by a valid frame, or an LSN gap between frames
//! or segments — cannot be explained by a crash and is reported as [`LogError::Corrupt`]: the log
//! refuses to start rather than silently drop acknowledged records. A last segment whose header
//! is incomplete (a prefix of it, then nothing or zeros) was never synced and is reset to empty;
//! any other unexpected header is [`LogError::BadHeader`].
//!
//! Known limit of this rule: if the OS wrote back the pages of an *unsynced* batch out of order
//! and the machine crashed, the tail can hold a hole followed by valid frames. That is reported
//! as corruption (and needs an operator) even though none of those records was acknowledged.
//!
//! ## Durability ordering
//!
//! * Before a new segment is created, the previous one is synced, so a crash can never leave a
//!   torn tail in a segment that is not the last.
//! * After a segment file is created, the directory is synced (at the next [`SegmentedLog::sync`])
//!   before anything in it is reported durable.
//! * Segments are deleted oldest first, syncing the directory after each deletion, so a crash in
//!   the middle of a truncation leaves a contiguous suffix of the log, never a gap.

mod format;
mod group;
mod reader;
mod segmented;

use std::path::{Path, PathBuf};

pub use group::{DurableWatch, GroupCommitLog};
pub use reader::LogReader;
pub use segmented::SegmentedLog;

/// Largest payload a single record may carry (the frame's length field is a `u32`).
pub const MAX_RECORD_BYTES: usize = u32::MAX as usize;

/// Tuning of a [`SegmentedLog`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment once the active one holds at least this many bytes. Default 64 MiB.
    /// Smaller segments let truncation reclaim space sooner; larger ones mean fewer files.
    pub segment_bytes: u64,
    /// Call `fdatasync` in [`SegmentedLog::sync`] (and sync the directory after creating or
    /// deleting segments). Default `true`. Turning it off keeps data safe across a process crash
    /// but not across a power loss or kernel crash: only for tests and throw-away benchmarks.
    pub fsync: bool,
    /// Fault injection: pretend every sync takes this long (a slow disk). Lets tests observe that
    /// nothing is released before it is durable. `None` in production.
    pub sync_delay: Option<std::time::Duration>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 * 1024 * 1024,
            fsync: true,
            sync_delay: None,
        }
    }
}

/// Counters of work done by a log writer. Cumulative since the log was opened or started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Number of batches made durable: [`SegmentedLog::sync`] calls that had something to write,
    /// or group-commit batches. Each batch costs one `fdatasync` (when `fsync` is on).
    pub batches: u64,
    /// Number of records appended.
    pub records: u64,
    /// Number of frame bytes appended (headers included, segment headers excluded).
    pub bytes: u64,
}

/// Everything that can go wrong with a log. Messages say what is wrong and what to do about it.
#[derive(thiserror::Error, Debug)]
pub enum LogError {
    /// An operating-system level I/O error on `path`.
    #[error("{}", describe_io(path, source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The log is damaged somewhere a crash cannot explain (not at the tail of the last segment).
    #[error(
        "log segment {} is corrupt at byte offset {offset}: {reason}. This is not a torn tail \
         from a crash (acknowledged records could be lost), so refusing to start the partition: \
         restore the log directory from backup or remove the file if its records are covered by \
         a checkpoint",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A segment file does not start with a Cairn log header of a version this build reads.
    #[error(
        "{} is not a readable Cairn log segment: {reason}. Move foreign files out of the log \
         directory, or open this log with the Cairn version that wrote it",
        path.display()
    )]
    BadHeader { path: PathBuf, reason: String },
    /// The group-commit writer thread is gone (it stopped after an error or was shut down).
    #[error(
        "the log writer thread has stopped (after an earlier error or a shutdown); restart the \
         partition to reopen the log"
    )]
    Closed,
    /// An earlier write failed; the log accepts no more writes until it is reopened.
    #[error(
        "the log stopped accepting writes after an earlier failure: {0}. Records acknowledged as \
         durable before the failure are safe; fix the cause and restart the partition"
    )]
    Failed(String),
    /// A payload larger than a frame can describe.
    #[error("a log record of {len} bytes exceeds the maximum of {max} bytes; split the record")]
    RecordTooLarge { len: usize, max: usize },
    /// `read_from` asked for records that truncation already deleted.
    #[error(
        "log records before lsn {first_lsn} were truncated, so reading from lsn {requested} is \
         impossible; recover from a checkpoint at position >= {} or restore the log from backup",
        first_lsn.saturating_sub(1)
    )]
    Truncated { requested: u64, first_lsn: u64 },
    /// `set_next_lsn` would move the LSN backwards over records the log still holds.
    #[error(
        "cannot continue the log at lsn {requested}: it still holds records up to lsn {} and \
         LSNs never go backwards; only move the log forward (>= {next_lsn}) or empty it first",
        next_lsn.saturating_sub(1)
    )]
    InvalidNextLsn { requested: u64, next_lsn: u64 },
    /// An append expected the log's next position to be `expected`, but it is `actual`: another
    /// writer appended, or this one's view of the log is stale. Nothing was appended. This is
    /// the fencing that stops two owners of a partition from both committing.
    #[error(
        "append refused: it expected the log's next position to be {expected}, but it is \
         {actual} (another writer appended, or this writer's view is stale); nothing was appended"
    )]
    Fenced { expected: u64, actual: u64 },
    /// The service a remote log lives in (a JetStream stream) failed or could not be reached.
    #[error(
        "the partition log's service failed: {0}. Records acknowledged as durable are safe; \
         check that the service is reachable, then restart the partition"
    )]
    Remote(String),
    /// Another owner of the partition appended to a remote log after this one opened it: this
    /// writer is stale and must step down without applying anything more.
    #[error(
        "another owner took over this partition's log ({0}); this node stopped writing to it \
         and must not apply anything more"
    )]
    Superseded(String),
}

/// ENOSPC on Linux and the other Unixes Cairn runs on.
const ENOSPC: i32 = 28;

fn describe_io(path: &Path, err: &std::io::Error) -> String {
    if err.raw_os_error() == Some(ENOSPC) {
        format!(
            "disk full while writing the log at {}: {err}. Records acknowledged as durable are \
             safe; the partition stops accepting writes until space is freed and it is restarted",
            path.display()
        )
    } else {
        format!(
            "I/O error on the log at {}: {err}. Check that the path exists, is writable and the \
             disk is healthy, then restart the partition",
            path.display()
        )
    }
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> LogError {
        LogError::Io {
            path: path.into(),
            source,
        }
    }
}
