//! # The storage seams: the partition log and the checkpoint store
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
use crate::store::{CheckpointBatch, PartitionStore, StoreError};
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

/// Where the local implementations keep partition `p` of the hub in `data_dir`:
/// `partitions/pNN/`, holding [`LOG_DIR`] and [`STORE_FILE`].
pub fn partition_dir(data_dir: &std::path::Path, p: u32) -> PathBuf {
    data_dir.join("partitions").join(format!("p{p:02}"))
}

/// A local partition's log directory, inside its [`partition_dir`].
pub const LOG_DIR: &str = "log";
/// A local partition's checkpoint store, inside its [`partition_dir`].
pub const STORE_FILE: &str = "store.redb";

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
        let dir = partition_dir(&self.data_dir, partition).join(LOG_DIR);
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

    /// The process dies in the middle of a sync: the first `keep` records appended since the
    /// last sync reach the disk (a torn batch: the write got that far), the rest are lost, and
    /// nobody is told. The log accepts nothing afterwards.
    pub fn crash_partway(&self, keep: usize) {
        let mut s = self.state.lock();
        let mut d = self.disk.state.lock();
        let volatile = std::mem::take(&mut s.volatile);
        for (p, r) in volatile.into_iter().take(keep) {
            d.next = d.next.max(p + 1);
            d.durable.insert(p, r);
        }
        s.failed = Some("the process crashed".into());
    }

    /// Records appended and not yet durable.
    pub fn volatile_len(&self) -> usize {
        self.state.lock().volatile.len()
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

// ------------------------------------------------------------------ checkpoint store

/// A partition's checkpoint: the state as of a log position (globals, instances, histories),
/// written in one atomic batch and read by key or in id order. Every implementation must pass
/// [`crate::conformance::run_store_checks`].
///
/// What an implementation promises: a batch is all or nothing (a crash during
/// `write_checkpoint` leaves the previous checkpoint); within a batch, history truncations come
/// before appends and instance deletes after puts; reads see whole batches only.
pub trait CheckpointStore: StoreReads {
    /// A read-only view of the latest checkpoint that checkpoints written later do not change
    /// (the reads a query runs off the partition's task see one checkpoint throughout).
    fn snapshot(&self) -> Result<Box<dyn StoreReads>, StoreError>;
    fn write_checkpoint(&self, batch: &CheckpointBatch) -> Result<(), StoreError>;
}

/// Reads of a checkpoint: of the store's latest one, or of a [`CheckpointStore::snapshot`].
pub trait StoreReads: Send + Sync {
    /// The log position the checkpoint covers (0 when none).
    fn checkpoint_position(&self) -> Result<u64, StoreError>;
    fn load_globals(&self) -> Result<Option<Vec<u8>>, StoreError>;
    fn get_instance(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// An instance's history rows in sequence order.
    fn read_history(&self, id: &str) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Instances in id order, from after `start_after`, with ids starting with `prefix`, until
    /// `f` returns false.
    fn scan_instances(
        &self,
        start_after: Option<&str>,
        prefix: Option<&str>,
        f: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StoreError>;
    fn instance_count(&self) -> Result<u64, StoreError>;
    /// Index entries (key, instance id) whose keys start with `prefix`, in descending key
    /// order, starting just below `below` (or at the prefix's end), until `f` returns false.
    fn scan_index_desc(
        &self,
        prefix: &[u8],
        below: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &str) -> bool,
    ) -> Result<(), StoreError>;
    /// The pending work stored under `key`.
    fn get_work(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Pending work (key, bytes) whose keys start with `prefix`, in ascending key order,
    /// starting just after `after` (or at the prefix), until `f` returns false.
    fn scan_work(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;
}

/// Opens partitions' checkpoint stores.
pub trait CheckpointStores: Send + Sync + std::fmt::Debug {
    fn open(&self, partition: u32) -> Result<Arc<dyn CheckpointStore>, StoreError>;
}

/// Implements [`StoreReads`] for `$t` by reading from `$target` (an expression of `$s`, the
/// value itself, that gives a `&impl StoreReads` and may use `?` on a `StoreError`): for
/// wrappers of a store, and for the redb store, which reads through a fresh
/// [`StoreView`](crate::store::StoreView).
#[macro_export]
macro_rules! forward_store_reads {
    ($t:ty, |$s:ident| $target:expr) => {
        impl $crate::seam::StoreReads for $t {
            fn checkpoint_position(&self) -> Result<u64, $crate::store::StoreError> {
                let $s = self;
                $crate::seam::StoreReads::checkpoint_position($target)
            }
            fn load_globals(&self) -> Result<Option<Vec<u8>>, $crate::store::StoreError> {
                let $s = self;
                $crate::seam::StoreReads::load_globals($target)
            }
            fn get_instance(&self, id: &str) -> Result<Option<Vec<u8>>, $crate::store::StoreError> {
                let $s = self;
                $crate::seam::StoreReads::get_instance($target, id)
            }
            fn read_history(&self, id: &str) -> Result<Vec<Vec<u8>>, $crate::store::StoreError> {
                let $s = self;
                $crate::seam::StoreReads::read_history($target, id)
            }
            fn scan_instances(
                &self,
                start_after: Option<&str>,
                prefix: Option<&str>,
                f: &mut dyn FnMut(&str, &[u8]) -> bool,
            ) -> Result<(), $crate::store::StoreError> {
                let $s = self;
                $crate::seam::StoreReads::scan_instances($target, start_after, prefix, f)
            }
            fn instance_count(&self) -> Result<u64, $crate::store::StoreError> {
                let $s = self;
                $crate::seam::StoreReads::instance_count($target)
            }
            fn scan_index_desc(
                &self,
                prefix: &[u8],
                below: Option<&[u8]>,
                f: &mut dyn FnMut(&[u8], &str) -> bool,
            ) -> Result<(), $crate::store::StoreError> {
                let $s = self;
                $crate::seam::StoreReads::scan_index_desc($target, prefix, below, f)
            }
            fn get_work(&self, key: &[u8]) -> Result<Option<Vec<u8>>, $crate::store::StoreError> {
                let $s = self;
                $crate::seam::StoreReads::get_work($target, key)
            }
            fn scan_work(
                &self,
                prefix: &[u8],
                after: Option<&[u8]>,
                f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
            ) -> Result<(), $crate::store::StoreError> {
                let $s = self;
                $crate::seam::StoreReads::scan_work($target, prefix, after, f)
            }
        }
    };
}

forward_store_reads!(PartitionStore, |s| &s.view()?);

impl CheckpointStore for PartitionStore {
    fn snapshot(&self) -> Result<Box<dyn StoreReads>, StoreError> {
        Ok(Box::new(self.view()?))
    }
    fn write_checkpoint(&self, batch: &CheckpointBatch) -> Result<(), StoreError> {
        PartitionStore::write_checkpoint(self, batch)
    }
}

/// Each partition's redb store in `<data_dir>/partitions/pNN/store.redb` (the embedded default).
#[derive(Debug)]
pub struct LocalCheckpointStores {
    pub data_dir: PathBuf,
    /// Page cache of each store, in bytes ([`crate::store::DEFAULT_CACHE_BYTES`] if 0).
    pub cache_bytes: usize,
}

impl CheckpointStores for LocalCheckpointStores {
    fn open(&self, partition: u32) -> Result<Arc<dyn CheckpointStore>, StoreError> {
        let path = partition_dir(&self.data_dir, partition).join(STORE_FILE);
        let cache = match self.cache_bytes {
            0 => crate::store::DEFAULT_CACHE_BYTES,
            n => n,
        };
        Ok(Arc::new(PartitionStore::open_with_cache(&path, cache)?))
    }
}

/// A checkpoint store in memory (for the simulator and tests): one lock, so every read sees
/// whole batches. Clones share the same contents (a "disk" that survives a simulated crash).
#[derive(Clone, Default)]
pub struct MemoryCheckpointStore {
    state: Arc<Mutex<MemoryCheckpoint>>,
}

#[derive(Default)]
struct MemoryCheckpoint {
    position: u64,
    globals: Option<Vec<u8>>,
    instances: BTreeMap<String, Vec<u8>>,
    history: BTreeMap<(String, u32), Vec<u8>>,
    index: BTreeMap<Vec<u8>, String>,
    index_keys: BTreeMap<String, Vec<Vec<u8>>>,
    work: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemoryCheckpointStore {
    pub fn new() -> MemoryCheckpointStore {
        MemoryCheckpointStore::default()
    }

    /// An independent copy of what this store holds now (clones share contents; this does not).
    pub fn clone_contents(&self) -> MemoryCheckpointStore {
        let s = self.state.lock();
        MemoryCheckpointStore {
            state: Arc::new(Mutex::new(MemoryCheckpoint {
                position: s.position,
                globals: s.globals.clone(),
                instances: s.instances.clone(),
                history: s.history.clone(),
                index: s.index.clone(),
                index_keys: s.index_keys.clone(),
                work: s.work.clone(),
            })),
        }
    }
}

impl StoreReads for MemoryCheckpointStore {
    fn checkpoint_position(&self) -> Result<u64, StoreError> {
        Ok(self.state.lock().position)
    }
    fn load_globals(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state.lock().globals.clone())
    }
    fn get_instance(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state.lock().instances.get(id).cloned())
    }
    fn read_history(&self, id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let s = self.state.lock();
        Ok(s.history
            .range((id.to_string(), 0)..=(id.to_string(), u32::MAX))
            .map(|(_, v)| v.clone())
            .collect())
    }
    fn scan_instances(
        &self,
        start_after: Option<&str>,
        prefix: Option<&str>,
        f: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        use std::ops::Bound;
        let s = self.state.lock();
        let prefix = prefix.unwrap_or("");
        let lower: Bound<String> = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        // Copied out first: `f` may read this store.
        let rows: Vec<(String, Vec<u8>)> = s
            .instances
            .range((lower, Bound::Unbounded))
            .take_while(|(id, _)| id.starts_with(prefix))
            .map(|(id, v)| (id.clone(), v.clone()))
            .collect();
        drop(s);
        for (id, v) in rows {
            if !f(&id, &v) {
                break;
            }
        }
        Ok(())
    }
    fn instance_count(&self) -> Result<u64, StoreError> {
        Ok(self.state.lock().instances.len() as u64)
    }
    fn scan_index_desc(
        &self,
        prefix: &[u8],
        below: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &str) -> bool,
    ) -> Result<(), StoreError> {
        let s = self.state.lock();
        // Copied out first: `f` may read this store (a query reads each instance it finds).
        let entries: Vec<(Vec<u8>, String)> = s
            .index
            .range(crate::store::index_range(prefix, below))
            .rev()
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, id)| (k.clone(), id.clone()))
            .collect();
        drop(s);
        for (k, id) in entries {
            if !f(&k, &id) {
                break;
            }
        }
        Ok(())
    }
    fn get_work(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state.lock().work.get(key).cloned())
    }
    fn scan_work(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        use std::ops::Bound;
        let lower: Bound<Vec<u8>> = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        // Copied out first: `f` may read this store.
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self
            .state
            .lock()
            .work
            .range((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in rows {
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }
}

impl CheckpointStore for MemoryCheckpointStore {
    /// A copy of the contents (O(size): the memory store serves tests and the simulator).
    fn snapshot(&self) -> Result<Box<dyn StoreReads>, StoreError> {
        Ok(Box::new(self.clone_contents()))
    }
    fn write_checkpoint(&self, batch: &CheckpointBatch) -> Result<(), StoreError> {
        let mut s = self.state.lock();
        s.position = batch.position;
        s.globals = Some(batch.globals.clone());
        for id in &batch.history_truncates {
            let rows: Vec<(String, u32)> = s
                .history
                .range((id.clone(), 0)..=(id.clone(), u32::MAX))
                .map(|(k, _)| k.clone())
                .collect();
            for k in rows {
                s.history.remove(&k);
            }
        }
        for (id, seq, bytes) in &batch.history_appends {
            s.history.insert((id.clone(), *seq), bytes.clone());
        }
        for (id, bytes) in &batch.instance_puts {
            s.instances.insert(id.clone(), bytes.clone());
        }
        let unfile = |s: &mut MemoryCheckpoint, id: &str| {
            for key in s.index_keys.remove(id).unwrap_or_default() {
                s.index.remove(&key);
            }
        };
        for (id, keys) in &batch.index_keys {
            unfile(&mut s, id);
            for key in keys {
                s.index.insert(key.clone(), id.clone());
            }
            s.index_keys.insert(id.clone(), keys.clone());
        }
        for id in &batch.instance_deletes {
            s.instances.remove(id);
            unfile(&mut s, id);
        }
        for (key, bytes) in &batch.work_puts {
            s.work.insert(key.clone(), bytes.clone());
        }
        for key in &batch.work_deletes {
            s.work.remove(key);
        }
        Ok(())
    }
}

/// In-memory logs for every partition of a hub, surviving an engine's restart as long as this
/// value lives (the simulator's and tests' "disk"). Durable at each append.
#[derive(Debug, Default, Clone)]
pub struct MemoryPartitionLogs {
    disks: Arc<Mutex<BTreeMap<u32, MemoryDisk>>>,
}

impl std::fmt::Debug for MemoryDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDisk").finish_non_exhaustive()
    }
}

impl MemoryPartitionLogs {
    /// The disk of `partition` (for fault injection and inspection).
    pub fn disk(&self, partition: u32) -> MemoryDisk {
        self.disks.lock().entry(partition).or_default().clone()
    }
}

impl PartitionLogs for MemoryPartitionLogs {
    fn open(
        &self,
        partition: u32,
        min_next: u64,
        on_durable: OnDurable,
    ) -> Result<OpenedLog, LogError> {
        let disk = self.disk(partition);
        Ok(OpenedLog {
            log: Box::new(MemoryPartitionLog::open(&disk, min_next, on_durable, true)),
            torn_tail_bytes: 0,
        })
    }
}

/// In-memory checkpoint stores for every partition of a hub (see [`MemoryPartitionLogs`]).
#[derive(Default, Clone)]
pub struct MemoryCheckpointStores {
    stores: Arc<Mutex<BTreeMap<u32, MemoryCheckpointStore>>>,
}

impl std::fmt::Debug for MemoryCheckpointStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCheckpointStores")
            .finish_non_exhaustive()
    }
}

impl MemoryCheckpointStores {
    /// The store of `partition` (for wrapping and inspection).
    pub fn store(&self, partition: u32) -> MemoryCheckpointStore {
        self.stores.lock().entry(partition).or_default().clone()
    }
}

impl CheckpointStores for MemoryCheckpointStores {
    fn open(&self, partition: u32) -> Result<Arc<dyn CheckpointStore>, StoreError> {
        Ok(Arc::new(self.store(partition)))
    }
}
