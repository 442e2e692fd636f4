//! # The embedded checkpoint store
//!
//! One redb database file per partition holds the partition's checkpoint: its state as of a log
//! position. This module owns that file's schema and the atomicity of a checkpoint; it deals in
//! bytes only (the runtime serializes its own types) and must never be written except through
//! [`PartitionStore::write_checkpoint`], so that the state on disk is always exactly the state
//! after some log position.
//!
//! ## Schema
//!
//! | table       | key                | value                                   |
//! |-------------|--------------------|-----------------------------------------|
//! | `instances` | `&str` instance id | instance state blob                     |
//! | `history`   | `(&str, u32)`      | history event bytes, by (id, seq)       |
//! | `meta`      | `&str`             | `position` (u64 LE), `globals` (blob)   |
//! | `index`     | `&[u8]` index key  | instance id                             |
//! | `index_keys`| `&str` instance id | the instance's index keys (u32 LE length + bytes, each) |
//! | `work`      | `&[u8]` work key   | work item bytes (empty for a work item's secondary keys) |
//!
//! Index keys are opaque here (`cairn_core::index` makes them): the store files each instance
//! under the keys of its last put and drops them when it is deleted, in the same transaction.
//! Work keys are opaque too (`cairn_core::work` makes them): pending work that waits for a
//! worker, put and deleted key by key.
//!
//! Reads run in their own read transactions (redb MVCC), so they proceed while a checkpoint is
//! being written and see either the old or the new checkpoint, never a mix.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};

const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
const HISTORY: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("history");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const INDEX: TableDefinition<&[u8], &str> = TableDefinition::new("index");
const INDEX_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("index_keys");
const WORK: TableDefinition<&[u8], &[u8]> = TableDefinition::new("work");

const META_POSITION: &str = "position";
const META_GLOBALS: &str = "globals";

/// Page cache of a store opened without a size (redb's own default is 1 GiB per database,
/// which, per partition, would let memory grow with the hub).
pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// ENOSPC on Linux and the other Unixes Cairn runs on.
const ENOSPC: i32 = 28;

/// What to do about a store that would not open: a store in use is not a damaged one.
fn open_advice(e: &redb::DatabaseError) -> &'static str {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            "Another `cairn serve` (or another program using Cairn) holds this data directory: \
             stop it, or give this process its own --data directory"
        }
        _ => {
            "If the file is not a Cairn checkpoint store or is damaged, move it away and restore \
             it from backup"
        }
    }
}

/// Everything that can go wrong with the checkpoint store.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error(
        "cannot open the checkpoint store {}: {}. {}",
        path.display(),
        source.to_string().trim_end_matches('.'),
        open_advice(source)
    )]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    /// A read or write failed at the storage level.
    #[error("{0}")]
    Io(String),
    /// The store's content is damaged or not what this version of Cairn wrote.
    #[error("{0}")]
    Corrupt(String),
}

/// A checkpoint to write atomically: everything the partition changed since the previous one.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointBatch {
    /// Log position the checkpoint covers (records up to and including it are applied).
    pub position: u64,
    /// The partition's global state blob (replaces the previous one).
    pub globals: Vec<u8>,
    /// Instance states to write (insert or replace).
    pub instance_puts: Vec<(String, Vec<u8>)>,
    /// Instances to delete; applied after the puts, so an id in both ends up deleted. Their
    /// history is only deleted if the id is also in `history_truncates`.
    pub instance_deletes: Vec<String>,
    /// Instances whose whole history is deleted; applied before `history_appends`.
    pub history_truncates: Vec<String>,
    /// History rows `(instance id, seq, event bytes)` to write.
    pub history_appends: Vec<(String, u32, Vec<u8>)>,
    /// Instances' index keys, each replacing all the keys the instance had; applied after the
    /// puts. A deleted instance loses its keys.
    pub index_keys: Vec<(String, Vec<Vec<u8>>)>,
    /// Pending work to keep: (work key, bytes), inserted or replaced.
    pub work_puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Pending work that is done: keys to delete, applied after `work_puts`.
    pub work_deletes: Vec<Vec<u8>>,
}

/// The checkpoint store of one partition. `Send + Sync`: share it with an `Arc`.
pub struct PartitionStore {
    db: Database,
    path: Arc<Path>,
}

impl std::fmt::Debug for PartitionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PartitionStore {
    /// Opens the store at `path`, creating it (and its tables) if missing. A file that is not a
    /// redb database, or is damaged, is a [`StoreError`], never a panic.
    pub fn open(path: &Path) -> Result<PartitionStore, StoreError> {
        PartitionStore::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// [`PartitionStore::open`] with `cache_bytes` of memory for the store's page cache.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<PartitionStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Io(format!(
                    "cannot create the directory {} for the checkpoint store: {e}",
                    parent.display()
                ))
            })?;
        }
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let store = PartitionStore {
            db,
            path: Arc::from(path),
        };
        // Create the tables once so that readers never meet a missing table.
        let txn = store
            .db
            .begin_write()
            .map_err(|e| store.err("creating the tables", e))?;
        {
            txn.open_table(INSTANCES)
                .map_err(|e| store.err("creating the tables", e))?;
            txn.open_table(HISTORY)
                .map_err(|e| store.err("creating the tables", e))?;
            txn.open_table(META)
                .map_err(|e| store.err("creating the tables", e))?;
            txn.open_table(INDEX)
                .map_err(|e| store.err("creating the tables", e))?;
            txn.open_table(INDEX_KEYS)
                .map_err(|e| store.err("creating the tables", e))?;
            txn.open_table(WORK)
                .map_err(|e| store.err("creating the tables", e))?;
        }
        txn.commit()
            .map_err(|e| store.err("creating the tables", e))?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A view of the store as of now: one read transaction (redb MVCC), which checkpoints
    /// written later do not change. Reads that run off the partition's task use one.
    pub fn view(&self) -> Result<StoreView, StoreError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| store_error(&self.path, "starting a read", e))?;
        Ok(StoreView {
            txn,
            instances: std::sync::OnceLock::new(),
            path: self.path.clone(),
        })
    }

    /// Writes `batch` in ONE write transaction with a durable commit: either all of it is in
    /// the store after a crash, or none of it. Order inside the transaction: position, globals,
    /// history truncates, history appends, instance puts, instance deletes.
    pub fn write_checkpoint(&self, batch: &CheckpointBatch) -> Result<(), StoreError> {
        let ctx = "writing a checkpoint";
        let txn = self.db.begin_write().map_err(|e| self.err(ctx, e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err(ctx, e))?;
            meta.insert(META_POSITION, batch.position.to_le_bytes().as_slice())
                .map_err(|e| self.err(ctx, e))?;
            meta.insert(META_GLOBALS, batch.globals.as_slice())
                .map_err(|e| self.err(ctx, e))?;

            let mut history = txn.open_table(HISTORY).map_err(|e| self.err(ctx, e))?;
            // Truncates first: a history that is reset and restarted in the same checkpoint
            // (continue-as-new) must keep its new rows.
            for id in &batch.history_truncates {
                let id = id.as_str();
                history
                    .retain_in((id, 0u32)..=(id, u32::MAX), |_, _| false)
                    .map_err(|e| self.err(ctx, e))?;
            }
            for (id, seq, event) in &batch.history_appends {
                history
                    .insert((id.as_str(), *seq), event.as_slice())
                    .map_err(|e| self.err(ctx, e))?;
            }

            let mut instances = txn.open_table(INSTANCES).map_err(|e| self.err(ctx, e))?;
            for (id, state) in &batch.instance_puts {
                instances
                    .insert(id.as_str(), state.as_slice())
                    .map_err(|e| self.err(ctx, e))?;
            }
            let mut index = txn.open_table(INDEX).map_err(|e| self.err(ctx, e))?;
            let mut index_keys = txn.open_table(INDEX_KEYS).map_err(|e| self.err(ctx, e))?;
            for (id, keys) in &batch.index_keys {
                unfile(&mut index, &mut index_keys, id).map_err(|e| self.err(ctx, e))?;
                for key in keys {
                    index
                        .insert(key.as_slice(), id.as_str())
                        .map_err(|e| self.err(ctx, e))?;
                }
                index_keys
                    .insert(id.as_str(), encode_keys(keys).as_slice())
                    .map_err(|e| self.err(ctx, e))?;
            }
            for id in &batch.instance_deletes {
                instances
                    .remove(id.as_str())
                    .map_err(|e| self.err(ctx, e))?;
                unfile(&mut index, &mut index_keys, id).map_err(|e| self.err(ctx, e))?;
            }
            let mut work = txn.open_table(WORK).map_err(|e| self.err(ctx, e))?;
            for (key, bytes) in &batch.work_puts {
                work.insert(key.as_slice(), bytes.as_slice())
                    .map_err(|e| self.err(ctx, e))?;
            }
            for key in &batch.work_deletes {
                work.remove(key.as_slice()).map_err(|e| self.err(ctx, e))?;
            }
        }
        // Durability defaults to Immediate: commit returns after the data is synced.
        txn.commit().map_err(|e| self.err(ctx, e))
    }

    fn err(&self, ctx: &str, e: impl Into<redb::Error>) -> StoreError {
        store_error(&self.path, ctx, e)
    }
}

/// One read transaction of a [`PartitionStore`]: the checkpoint as it was when the view was
/// taken, unchanged by checkpoints written after (redb MVCC). `Send + Sync`, so a read can take
/// it to another thread.
pub struct StoreView {
    txn: redb::ReadTransaction,
    /// The instance table, opened on first use (a page of a query reads many rows).
    instances: std::sync::OnceLock<redb::ReadOnlyTable<&'static str, &'static [u8]>>,
    path: Arc<Path>,
}

impl crate::seam::StoreReads for StoreView {
    /// Log position of the last checkpoint; 0 if there was none.
    fn checkpoint_position(&self) -> Result<u64, StoreError> {
        let ctx = "reading the checkpoint position";
        let meta = self.txn.open_table(META).map_err(|e| self.err(ctx, e))?;
        let Some(v) = meta.get(META_POSITION).map_err(|e| self.err(ctx, e))? else {
            return Ok(0);
        };
        let bytes: [u8; 8] = v.value().try_into().map_err(|_| {
            StoreError::Corrupt(format!(
                "checkpoint store {}: the stored position is {} bytes instead of 8; the file is \
                 damaged or was not written by Cairn: restore it from backup",
                self.path.display(),
                v.value().len()
            ))
        })?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// The partition's global state blob from the last checkpoint.
    fn load_globals(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let ctx = "reading the global state";
        let meta = self.txn.open_table(META).map_err(|e| self.err(ctx, e))?;
        let v = meta.get(META_GLOBALS).map_err(|e| self.err(ctx, e))?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    /// The state blob of instance `id`.
    fn get_instance(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let ctx = "reading an instance";
        let t = match self.instances.get() {
            Some(t) => t,
            None => {
                let t = self
                    .txn
                    .open_table(INSTANCES)
                    .map_err(|e| self.err(ctx, e))?;
                self.instances.get_or_init(move || t)
            }
        };
        let v = t.get(id).map_err(|e| self.err(ctx, e))?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    /// All history rows of `id`, ordered by seq.
    fn read_history(&self, id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let ctx = "reading a history";
        let t = self.txn.open_table(HISTORY).map_err(|e| self.err(ctx, e))?;
        let mut out = Vec::new();
        for row in t
            .range((id, 0u32)..=(id, u32::MAX))
            .map_err(|e| self.err(ctx, e))?
        {
            let (_, v) = row.map_err(|e| self.err(ctx, e))?;
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    /// Calls `f(id, state)` for instances in ascending id order, starting after `start_after`
    /// (exclusive) and restricted to ids starting with `prefix`, until `f` returns `false`.
    /// Runs in one read transaction, so it sees one consistent checkpoint.
    fn scan_instances(
        &self,
        start_after: Option<&str>,
        prefix: Option<&str>,
        f: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let ctx = "scanning instances";
        let t = self
            .txn
            .open_table(INSTANCES)
            .map_err(|e| self.err(ctx, e))?;
        let prefix = prefix.unwrap_or("");
        // Start at whichever is later: just after `start_after`, or at the prefix.
        let lower: Bound<&str> = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let range = t
            .range::<&str>((lower, Bound::Unbounded))
            .map_err(|e| self.err(ctx, e))?;
        for row in range {
            let (k, v) = row.map_err(|e| self.err(ctx, e))?;
            let id = k.value();
            // Keys are sorted, so the first one without the prefix ends the prefix's range.
            if !id.starts_with(prefix) {
                break;
            }
            if !f(id, v.value()) {
                break;
            }
        }
        Ok(())
    }

    fn scan_index_desc(
        &self,
        prefix: &[u8],
        below: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &str) -> bool,
    ) -> Result<(), StoreError> {
        let ctx = "scanning an index";
        let t = self.txn.open_table(INDEX).map_err(|e| self.err(ctx, e))?;
        let (start, end) = index_range(prefix, below);
        let range = t
            .range::<&[u8]>((
                start.as_ref().map(Vec::as_slice),
                end.as_ref().map(Vec::as_slice),
            ))
            .map_err(|e| self.err(ctx, e))?;
        for row in range.rev() {
            let (k, v) = row.map_err(|e| self.err(ctx, e))?;
            if !k.value().starts_with(prefix) || !f(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }

    fn get_work(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let ctx = "reading pending work";
        let t = self.txn.open_table(WORK).map_err(|e| self.err(ctx, e))?;
        let v = t.get(key).map_err(|e| self.err(ctx, e))?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    fn scan_work(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let ctx = "scanning pending work";
        let t = self.txn.open_table(WORK).map_err(|e| self.err(ctx, e))?;
        let lower: Bound<&[u8]> = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let range = t
            .range::<&[u8]>((lower, Bound::Unbounded))
            .map_err(|e| self.err(ctx, e))?;
        for row in range {
            let (k, v) = row.map_err(|e| self.err(ctx, e))?;
            if !k.value().starts_with(prefix) || !f(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }

    /// Number of instances in the last checkpoint.
    fn instance_count(&self) -> Result<u64, StoreError> {
        let ctx = "counting instances";
        let t = self
            .txn
            .open_table(INSTANCES)
            .map_err(|e| self.err(ctx, e))?;
        t.len().map_err(|e| self.err(ctx, e))
    }
}

impl StoreView {
    fn err(&self, ctx: &str, e: impl Into<redb::Error>) -> StoreError {
        store_error(&self.path, ctx, e)
    }
}

/// The key range of [`StoreReads::scan_index_desc`](crate::seam::StoreReads::scan_index_desc):
/// from `prefix` up to `below` (exclusive), or to the end of the keys starting with `prefix`.
/// Every implementation of the seam scans this range, in descending order.
pub fn index_range(prefix: &[u8], below: Option<&[u8]>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let end = match below {
        Some(b) => Bound::Excluded(b.to_vec()),
        None => prefix_end(prefix).map_or(Bound::Unbounded, Bound::Excluded),
    };
    (Bound::Included(prefix.to_vec()), end)
}

/// The smallest key greater than every key starting with `prefix` (None: there is none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Drops the index entries of instance `id`.
fn unfile(
    index: &mut redb::Table<&[u8], &str>,
    index_keys: &mut redb::Table<&str, &[u8]>,
    id: &str,
) -> Result<(), redb::StorageError> {
    let old = index_keys.remove(id)?.map(|v| v.value().to_vec());
    if let Some(old) = old {
        for key in decode_keys(&old) {
            index.remove(key)?;
        }
    }
    Ok(())
}

fn encode_keys(keys: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys.iter().map(|k| k.len() + 4).sum());
    for k in keys {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
    }
    out
}

fn decode_keys(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut keys = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let Some(key) = bytes.get(4..4 + len) else {
            break;
        };
        keys.push(key);
        bytes = &bytes[4 + len..];
    }
    keys
}

/// Maps a redb error to a [`StoreError`] that names the file and the operation.
fn store_error(path: &Path, ctx: &str, e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    let path = path.display();
    match e {
        redb::Error::Corrupted(msg) => StoreError::Corrupt(format!(
            "checkpoint store {path} is corrupt ({ctx}): {msg}. Restore it from backup"
        )),
        redb::Error::Io(io) if io.raw_os_error() == Some(ENOSPC) => StoreError::Io(format!(
            "disk full while {ctx} in checkpoint store {path}: {io}. The previous checkpoint \
             is intact; free space, then checkpointing can resume"
        )),
        redb::Error::Io(io) => StoreError::Io(format!(
            "I/O error while {ctx} in checkpoint store {path}: {io}. Check the disk and \
             permissions, then restart the partition"
        )),
        other => StoreError::Io(format!(
            "checkpoint store {path} failed while {ctx}: {other}"
        )),
    }
}
