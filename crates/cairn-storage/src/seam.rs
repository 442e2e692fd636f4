//! # The partition-log seam
//!
//! [`PartitionLog`] is everything a partition leader needs from its durable log, and nothing
//! about where it lives: local segmented files ([`LocalPartitionLog`], the embedded default), an
//! in-memory log with fault injection for the simulator ([`MemoryPartitionLog`]), and next a
//! JetStream stream. [`PartitionLogs`] opens one per partition. Every implementation must pass
//! [`crate::conformance`].
//!
//! What an implementation promises:
//! * positions start at 1 and are contiguous; an append names the position it expects its first
//!   record to get, and is refused ([`LogError::Fenced`]) with nothing appended when that is not
//!   the log's next position. That is the fencing that stops a second writer (a stale owner);
//! * an append returns at once; records become durable in order, and the durable position is
//!   reported through the callback given at open and [`PartitionLog::durable_position`]. Nothing
//!   is reported durable before it would survive a crash of the process (and, for local files,
//!   of the machine);
//! * after a crash, reopening yields every durable record, byte for byte, and nothing after a
//!   gap;
//! * `truncate_below(p)` may drop records below `p`, never at or above it.
//!
//! It must never interpret a record's bytes.

use crate::log::{GroupCommitLog, LogConfig, LogError, SegmentedLog};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Called with the new durable position after each durable batch. Must be quick and must not
/// call back into the log.
pub type OnDurable = Box<dyn Fn(u64) + Send + 'static>;

/// A partition's durable, ordered, single-writer log (see the module doc for the contract).
pub trait PartitionLog: Send + Sync {
    /// The position the next appended record gets.
    fn next_position(&self) -> u64;
    /// The highest position known durable (0 when none).
    fn durable_position(&self) -> u64;
    /// Appends `records` at positions `expected, expected + 1, …` and returns the last one;
    /// [`LogError::Fenced`] (nothing appended) if `expected` is not the next position.
    fn append(&self, expected: u64, records: Vec<Vec<u8>>) -> Result<u64, LogError>;
    /// Waits until everything appended is durable; returns the durable position.
    fn flush(&self) -> Result<u64, LogError>;
    /// Every record from `position` on, in order (appended ones included).
    fn read_from(&self, position: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError>;
    /// Records below `position` are covered by a checkpoint and may be dropped.
    fn truncate_below(&self, position: u64) -> Result<(), LogError>;
    /// Why the log stopped accepting writes, once it has.
    fn failure(&self) -> Option<String>;
    /// Makes everything appended durable and stops.
    fn close(self: Box<Self>) -> Result<(), LogError>;
}

/// An opened log and what opening it found.
pub struct OpenedLog {
    pub log: Box<dyn PartitionLog>,
    /// Bytes of a torn tail cut off at open (an interrupted, never acknowledged write).
    pub torn_tail_bytes: u64,
}

/// Opens partitions' logs: where they live is the implementation's business.
pub trait PartitionLogs: Send + Sync + std::fmt::Debug {
    /// Opens partition `partition`'s log so that its next position is at least `min_next` (a
    /// checkpoint may cover positions whose records were already dropped).
    fn open(
        &self,
        partition: u32,
        min_next: u64,
        on_durable: OnDurable,
    ) -> Result<OpenedLog, LogError>;
}

// ------------------------------------------------------------------ local files

/// The embedded default: a [`SegmentedLog`] in a directory, written by a [`GroupCommitLog`].
pub struct LocalPartitionLog {
    inner: GroupCommitLog,
}

impl LocalPartitionLog {
    /// Opens (creating if missing) the log in `dir`; see [`PartitionLogs::open`].
    pub fn open(
        dir: &std::path::Path,
        config: LogConfig,
        min_next: u64,
        on_durable: OnDurable,
    ) -> Result<OpenedLog, LogError> {
        let mut log = SegmentedLog::open(dir, config)?;
        let torn_tail_bytes = log.torn_tail_bytes();
        if log.next_lsn() < min_next {
            log.set_next_lsn(min_next)?;
        }
        Ok(OpenedLog {
            log: Box::new(LocalPartitionLog {
                inner: GroupCommitLog::start_with_notify(log, on_durable),
            }),
            torn_tail_bytes,
        })
    }
}

impl PartitionLog for LocalPartitionLog {
    fn next_position(&self) -> u64 {
        self.inner.next_lsn()
    }
    fn durable_position(&self) -> u64 {
        self.inner.durable_lsn()
    }
    fn append(&self, expected: u64, records: Vec<Vec<u8>>) -> Result<u64, LogError> {
        self.inner.append_batch_at(expected, records)
    }
    fn flush(&self) -> Result<u64, LogError> {
        self.inner.flush_blocking()
    }
    fn read_from(&self, position: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        self.inner.read_from_blocking(position)
    }
    fn truncate_below(&self, position: u64) -> Result<(), LogError> {
        self.inner.truncate_before(position).map(drop)
    }
    fn failure(&self) -> Option<String> {
        self.inner.failure()
    }
    fn close(self: Box<Self>) -> Result<(), LogError> {
        self.inner.shutdown()
    }
}

/// Each partition's log in `<data_dir>/partitions/pNN/log`.
#[derive(Debug)]
pub struct LocalPartitionLogs {
    pub data_dir: PathBuf,
    pub config: LogConfig,
}

impl PartitionLogs for LocalPartitionLogs {
    fn open(
        &self,
        partition: u32,
        min_next: u64,
        on_durable: OnDurable,
    ) -> Result<OpenedLog, LogError> {
        let dir = self
            .data_dir
            .join("partitions")
            .join(format!("p{partition:02}"))
            .join("log");
        LocalPartitionLog::open(&dir, self.config.clone(), min_next, on_durable)
    }
}

// ------------------------------------------------------------------ in memory

/// What survives a simulated crash: the durable records of one log.
#[derive(Clone, Default)]
pub struct MemoryDisk {
    state: Arc<Mutex<DiskState>>,
}

#[derive(Default)]
struct DiskState {
    /// Durable records by position.
    durable: BTreeMap<u64, Vec<u8>>,
    /// Next position after the durable ones (moved forward by `min_next` at open).
    next: u64,
    /// Oldest position still retained (raised by truncation).
    first: u64,
    /// Syncs so far, and the ones the fault injector makes fail (by number).
    syncs: u64,
    fail_syncs: Vec<u64>,
}

impl MemoryDisk {
    pub fn new() -> MemoryDisk {
        MemoryDisk::default()
    }

    /// Makes the `n`th sync from now on fail (the log then stops, as after an fsync error).
    pub fn fail_sync_after(&self, n: u64) {
        let mut d = self.state.lock();
        let at = d.syncs + n;
        d.fail_syncs.push(at);
    }

    /// Durable records now (what a crash would leave).
    pub fn durable_records(&self) -> Vec<(u64, Vec<u8>)> {
        self.state
            .lock()
            .durable
            .iter()
            .map(|(p, r)| (*p, r.clone()))
            .collect()
    }
}

/// An in-memory log over a [`MemoryDisk`]: appends are volatile until [`MemoryPartitionLog::sync`]
/// (or at once, with `sync_on_append`), so a simulator decides when durability happens and can
/// crash in between; dropping the log without closing it is the crash.
pub struct MemoryPartitionLog {
    disk: MemoryDisk,
    state: Mutex<MemState>,
    /// Behind a mutex only to be `Sync`; called with no other lock held.
    on_durable: Mutex<OnDurable>,
    sync_on_append: bool,
}

struct MemState {
    /// Appended, not yet durable.
    volatile: Vec<(u64, Vec<u8>)>,
    next: u64,
    durable: u64,
    failed: Option<String>,
}

impl MemoryPartitionLog {
    /// Opens the log on `disk` (everything durable there is kept).
    pub fn open(
        disk: &MemoryDisk,
        min_next: u64,
        on_durable: OnDurable,
        sync_on_append: bool,
    ) -> MemoryPartitionLog {
        let (next, durable) = {
            let mut d = disk.state.lock();
            let last = d.durable.keys().next_back().copied().unwrap_or(0);
            d.next = d.next.max(last + 1).max(min_next).max(1);
            (d.next, d.next - 1)
        };
        MemoryPartitionLog {
            disk: disk.clone(),
            state: Mutex::new(MemState {
                volatile: Vec::new(),
                next,
                durable,
                failed: None,
            }),
            on_durable: Mutex::new(on_durable),
            sync_on_append,
        }
    }

    /// Makes everything appended durable (one "fsync"), unless the fault injector fails it.
    pub fn sync(&self) -> Result<u64, LogError> {
        let mut s = self.state.lock();
        if let Some(f) = &s.failed {
            return Err(LogError::Failed(f.clone()));
        }
        let durable = {
            let mut d = self.disk.state.lock();
            d.syncs += 1;
            if d.fail_syncs.contains(&d.syncs) {
                let msg = format!("injected fsync failure (sync {})", d.syncs);
                s.failed = Some(msg.clone());
                s.volatile.clear();
                return Err(LogError::Failed(msg));
            }
            for (p, r) in s.volatile.drain(..) {
                d.durable.insert(p, r);
            }
            d.next = s.next;
            s.next - 1
        };
        let advanced = durable > s.durable;
        s.durable = durable;
        drop(s);
        if advanced {
            (self.on_durable.lock())(durable);
        }
        Ok(durable)
    }
}

impl PartitionLog for MemoryPartitionLog {
    fn next_position(&self) -> u64 {
        self.state.lock().next
    }
    fn durable_position(&self) -> u64 {
        self.state.lock().durable
    }
    fn append(&self, expected: u64, records: Vec<Vec<u8>>) -> Result<u64, LogError> {
        let last = {
            let mut s = self.state.lock();
            if let Some(f) = &s.failed {
                return Err(LogError::Failed(f.clone()));
            }
            if s.next != expected {
                return Err(LogError::Fenced {
                    expected,
                    actual: s.next,
                });
            }
            for r in records {
                let p = s.next;
                s.volatile.push((p, r));
                s.next += 1;
            }
            s.next - 1
        };
        if self.sync_on_append {
            self.sync()?;
        }
        Ok(last)
    }
    fn flush(&self) -> Result<u64, LogError> {
        self.sync()
    }
    fn read_from(&self, position: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let s = self.state.lock();
        let d = self.disk.state.lock();
        if position < d.first.max(1) {
            return Err(LogError::Truncated {
                requested: position,
                first_lsn: d.first,
            });
        }
        let mut out: Vec<(u64, Vec<u8>)> = d
            .durable
            .range(position..)
            .map(|(p, r)| (*p, r.clone()))
            .collect();
        out.extend(s.volatile.iter().filter(|(p, _)| *p >= position).cloned());
        Ok(out)
    }
    fn truncate_below(&self, position: u64) -> Result<(), LogError> {
        let mut d = self.disk.state.lock();
        let keep = d.durable.split_off(&position);
        d.durable = keep;
        d.first = d.first.max(position);
        Ok(())
    }
    fn failure(&self) -> Option<String> {
        self.state.lock().failed.clone()
    }
    fn close(self: Box<Self>) -> Result<(), LogError> {
        self.sync().map(drop)
    }
}
