//! The storage seams' conformance suites, run against every implementation in this crate.

use cairn_storage::conformance::{run_all, run_store_checks, LogHarness, StoreHarness};
use cairn_storage::log::LogConfig;
use cairn_storage::seam::{
    CheckpointStore, LocalPartitionLog, MemoryCheckpointStore, MemoryDisk, MemoryPartitionLog,
    OnDurable, OpenedLog,
};
use cairn_storage::store::PartitionStore;
use std::sync::Arc;

struct Local {
    dir: Option<tempfile::TempDir>,
}

impl LogHarness for Local {
    fn fresh(&mut self, min_next: u64, on_durable: OnDurable) -> OpenedLog {
        self.dir = Some(tempfile::tempdir().unwrap());
        self.reopen(min_next, on_durable)
    }
    fn reopen(&mut self, min_next: u64, on_durable: OnDurable) -> OpenedLog {
        let dir = self.dir.as_ref().expect("fresh first").path().join("log");
        let config = LogConfig {
            // Small segments, so truncation has whole segments to drop.
            segment_bytes: 256,
            ..LogConfig::default()
        };
        LocalPartitionLog::open(&dir, config, min_next, on_durable).unwrap()
    }
}

struct Memory {
    disk: MemoryDisk,
    sync_on_append: bool,
}

impl LogHarness for Memory {
    fn fresh(&mut self, min_next: u64, on_durable: OnDurable) -> OpenedLog {
        self.disk = MemoryDisk::new();
        self.reopen(min_next, on_durable)
    }
    fn reopen(&mut self, min_next: u64, on_durable: OnDurable) -> OpenedLog {
        OpenedLog {
            log: Box::new(MemoryPartitionLog::open(
                &self.disk,
                min_next,
                on_durable,
                self.sync_on_append,
            )),
            torn_tail_bytes: 0,
        }
    }
}

#[test]
fn local_segmented_files_conform() {
    run_all(&mut Local { dir: None });
}

#[test]
fn in_memory_log_conforms() {
    for sync_on_append in [false, true] {
        run_all(&mut Memory {
            disk: MemoryDisk::new(),
            sync_on_append,
        });
    }
}

/// The in-memory log's faults: a crash loses exactly what was not synced; a failed sync stops
/// the log and keeps what was durable before it.
#[test]
fn in_memory_faults_lose_only_what_was_not_durable() {
    let disk = MemoryDisk::new();
    let log = MemoryPartitionLog::open(&disk, 1, Box::new(|_| {}), false);
    use cairn_storage::seam::PartitionLog;
    log.append(1, vec![b"a".to_vec(), b"b".to_vec()]).unwrap();
    log.sync().unwrap();
    log.append(3, vec![b"c".to_vec()]).unwrap();
    drop(log); // crash: "c" was never synced
    let log = MemoryPartitionLog::open(&disk, 1, Box::new(|_| {}), false);
    assert_eq!(log.next_position(), 3);
    assert_eq!(
        log.read_from(1).unwrap(),
        vec![(1, b"a".to_vec()), (2, b"b".to_vec())]
    );
    disk.fail_sync_after(1);
    log.append(3, vec![b"d".to_vec()]).unwrap();
    assert!(log.sync().is_err());
    assert!(log.failure().is_some());
    assert!(log.append(4, vec![b"e".to_vec()]).is_err());
    drop(log);
    assert_eq!(disk.durable_records().len(), 2);
}

struct Redb {
    dir: Option<tempfile::TempDir>,
}

impl StoreHarness for Redb {
    fn fresh(&mut self) -> Arc<dyn CheckpointStore> {
        self.dir = Some(tempfile::tempdir().unwrap());
        self.reopen()
    }
    fn reopen(&mut self) -> Arc<dyn CheckpointStore> {
        let path = self
            .dir
            .as_ref()
            .expect("fresh first")
            .path()
            .join("store.redb");
        Arc::new(PartitionStore::open(&path).unwrap())
    }
}

struct InMemoryStore {
    store: MemoryCheckpointStore,
}

impl StoreHarness for InMemoryStore {
    fn fresh(&mut self) -> Arc<dyn CheckpointStore> {
        self.store = MemoryCheckpointStore::new();
        self.reopen()
    }
    fn reopen(&mut self) -> Arc<dyn CheckpointStore> {
        Arc::new(self.store.clone())
    }
}

#[test]
fn redb_checkpoint_store_conforms() {
    run_store_checks(&mut Redb { dir: None });
}

#[test]
fn in_memory_checkpoint_store_conforms() {
    run_store_checks(&mut InMemoryStore {
        store: MemoryCheckpointStore::new(),
    });
}
