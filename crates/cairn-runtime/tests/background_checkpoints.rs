//! Checkpoints written in the background and reads run off the partition's task, slowly, while
//! the partitions go on: reads, episodes and recovery all see exactly what they would with
//! everything on the task, and a slow query does not stall its partition.

mod common;

use cairn_runtime::*;
use cairn_storage::seam::{CheckpointStore, CheckpointStores, LocalCheckpointStores, StoreReads};
use cairn_storage::store::{CheckpointBatch, StoreError};
use common::*;
use std::sync::Arc;
use std::time::Duration;

/// Local stores whose checkpoint writes take 30 ms longer (a slow disk under a big dirty set).
#[derive(Debug)]
struct SlowStores(LocalCheckpointStores);

struct Slow(Arc<dyn CheckpointStore>);

cairn_storage::forward_store_reads!(Slow, |s| &*s.0);

impl CheckpointStore for Slow {
    fn snapshot(&self) -> Result<Box<dyn StoreReads>, StoreError> {
        self.0.snapshot()
    }
    fn write_checkpoint(&self, batch: &CheckpointBatch) -> Result<(), StoreError> {
        std::thread::sleep(Duration::from_millis(30));
        self.0.write_checkpoint(batch)
    }
}

impl CheckpointStores for SlowStores {
    fn open(&self, partition: u32) -> Result<Arc<dyn CheckpointStore>, StoreError> {
        Ok(Arc::new(Slow(self.0.open(partition)?)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_background_checkpoints_change_nothing_readers_or_recovery_see() {
    let dir = tempfile::tempdir().unwrap();
    let config = || EngineConfig {
        checkpoints: Some(Arc::new(SlowStores(LocalCheckpointStores {
            data_dir: dir.path().to_path_buf(),
            cache_bytes: 0,
        }))),
        // A checkpoint every few records: most of the run has one in flight.
        checkpoint_every_records: 8,
        // Evict freely, so reads go to the store (and its overlay) rather than memory.
        instance_cache_mb: 0,
        ..common::config(dir.path())
    };
    let engine = Engine::open(config(), registry()).await.unwrap();
    let client = engine.client();
    let mut ids = Vec::new();
    for i in 0..40 {
        let (name, input) = if i % 4 == 0 {
            ("fan_out", 6i64)
        } else {
            ("chain", 5i64)
        };
        let id = client
            .start_with(
                name,
                &input,
                StartOptions {
                    instance_id: Some(format!("bg-{i:02}")),
                    ..StartOptions::default()
                },
            )
            .await
            .unwrap();
        ids.push((id, name, input));
    }
    // Read while they run: statuses with history, and query pages over every partition.
    let mut histories = std::collections::HashMap::new();
    for _ in 0..20 {
        for (id, _, _) in &ids {
            if let Some(s) = client.get_status(id, true).await.unwrap() {
                let len = s.history.as_ref().map_or(0, Vec::len);
                // A history never shrinks under a reader (rows are never missing).
                let seen = histories.entry(id.clone()).or_insert(0);
                assert!(
                    len >= *seen,
                    "{id}: history went from {seen} to {len} events"
                );
                *seen = len;
            }
        }
        let page = client
            .query(&InstanceQuery {
                page_size: 100,
                ..InstanceQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(
            page.instances.len(),
            ids.len(),
            "a query page lost instances"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut finished = Vec::new();
    for (id, name, input) in &ids {
        let done = client.wait_for_completion(id, WAIT).await.unwrap();
        let want = if *name == "fan_out" {
            *input * (*input + 1) / 2
        } else {
            *input
        };
        assert_eq!(done.output::<i64>().unwrap(), want, "{id}");
        let history = client
            .get_status(id, true)
            .await
            .unwrap()
            .unwrap()
            .history
            .unwrap();
        finished.push((id.clone(), history));
    }
    engine.shutdown().await.unwrap();
    // Recovery from those checkpoints gives the same histories.
    let engine = Engine::open(config(), registry()).await.unwrap();
    let client = engine.client();
    for (id, history) in &finished {
        let again = client
            .get_status(id, true)
            .await
            .unwrap()
            .unwrap()
            .history
            .unwrap();
        assert_eq!(&again, history, "{id} after recovery");
    }
    engine.shutdown().await.unwrap();
}

/// Local stores whose snapshot scans take two seconds (a query decoding a big table).
#[derive(Debug)]
struct SlowScanStores(LocalCheckpointStores);

struct SlowScans(Arc<dyn CheckpointStore>);

struct SlowScanSnapshot(Box<dyn StoreReads>);

cairn_storage::forward_store_reads!(SlowScans, |s| &*s.0);

impl CheckpointStore for SlowScans {
    fn snapshot(&self) -> Result<Box<dyn StoreReads>, StoreError> {
        Ok(Box::new(SlowScanSnapshot(self.0.snapshot()?)))
    }
    fn write_checkpoint(&self, batch: &CheckpointBatch) -> Result<(), StoreError> {
        self.0.write_checkpoint(batch)
    }
}

impl StoreReads for SlowScanSnapshot {
    fn checkpoint_position(&self) -> Result<u64, StoreError> {
        self.0.checkpoint_position()
    }
    fn load_globals(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.load_globals()
    }
    fn get_instance(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get_instance(id)
    }
    fn read_history(&self, id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.0.read_history(id)
    }
    fn scan_instances(
        &self,
        start_after: Option<&str>,
        prefix: Option<&str>,
        f: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        std::thread::sleep(SLOW_SCAN);
        self.0.scan_instances(start_after, prefix, f)
    }
    fn instance_count(&self) -> Result<u64, StoreError> {
        self.0.instance_count()
    }
    fn scan_index_desc(
        &self,
        prefix: &[u8],
        below: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &str) -> bool,
    ) -> Result<(), StoreError> {
        std::thread::sleep(SLOW_SCAN);
        self.0.scan_index_desc(prefix, below, f)
    }
    fn get_work(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get_work(key)
    }
    fn scan_work(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.0.scan_work(prefix, after, f)
    }
}

const SLOW_SCAN: Duration = Duration::from_secs(2);

impl CheckpointStores for SlowScanStores {
    fn open(&self, partition: u32) -> Result<Arc<dyn CheckpointStore>, StoreError> {
        Ok(Arc::new(SlowScans(self.0.open(partition)?)))
    }
}

/// A query that takes seconds to decode its rows does not stall the partition it reads: a
/// chain on that partition starts, runs and completes while the query is still scanning, and
/// the query's page is the partition as it was when the query came in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_query_does_not_stall_its_partition() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        partitions: Some(1),
        checkpoints: Some(Arc::new(SlowScanStores(LocalCheckpointStores {
            data_dir: dir.path().to_path_buf(),
            cache_bytes: 0,
        }))),
        ..common::config(dir.path())
    };
    let engine = Engine::open(config, registry()).await.unwrap();
    let client = engine.client();
    for i in 0..5 {
        let id = client
            .start_with(
                "chain",
                &2i64,
                StartOptions {
                    instance_id: Some(format!("before-{i}")),
                    ..StartOptions::default()
                },
            )
            .await
            .unwrap();
        client.wait_for_completion(&id, WAIT).await.unwrap();
    }
    engine.checkpoint().await.unwrap();
    let query = {
        let client = client.clone();
        tokio::spawn(async move { client.query(&InstanceQuery::default()).await })
    };
    // Let the query reach the partition and start scanning.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let id = client
        .start_with(
            "chain",
            &5i64,
            StartOptions {
                instance_id: Some("during".into()),
                ..StartOptions::default()
            },
        )
        .await
        .unwrap();
    let done = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(done.output::<i64>().unwrap(), 5);
    let took = started.elapsed();
    assert!(
        took < SLOW_SCAN / 2,
        "a 5-step chain took {took:?} while a query scanned its partition"
    );
    assert!(
        !query.is_finished(),
        "the query finished before the chain (the chain took {took:?}): it did not run long \
         enough to show anything"
    );
    let page = query.await.unwrap().unwrap();
    let ids: Vec<&str> = page
        .instances
        .iter()
        .map(|s| s.instance_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["before-4", "before-3", "before-2", "before-1", "before-0"],
        "newest first"
    );
    engine.shutdown().await.unwrap();
}

/// Slow stores that keep what they opened, so the test can read what is in them.
struct WatchedStores {
    slow: SlowStores,
    opened: parking_lot::Mutex<Vec<Arc<dyn CheckpointStore>>>,
}

impl std::fmt::Debug for WatchedStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watched({:?})", self.slow)
    }
}

impl CheckpointStores for WatchedStores {
    fn open(&self, partition: u32) -> Result<Arc<dyn CheckpointStore>, StoreError> {
        let store = self.slow.open(partition)?;
        self.opened.lock().push(store.clone());
        Ok(store)
    }
}

/// A purge of thousands is not checkpointed like thousands of changed instances (a deleted
/// instance holds little memory): no checkpoint starts during it. `checkpoint_in_background`
/// then writes it like a periodic checkpoint and answers only once the store has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_waits_for_its_checkpoint_and_checkpoint_in_background_answers_once_written() {
    let dir = tempfile::tempdir().unwrap();
    let stores = Arc::new(WatchedStores {
        slow: SlowStores(LocalCheckpointStores {
            data_dir: dir.path().to_path_buf(),
            cache_bytes: 0,
        }),
        opened: Default::default(),
    });
    let config = EngineConfig {
        partitions: Some(1),
        checkpoints: Some(stores.clone()),
        // The smallest budget: 1,000 changed instances at most between checkpoints.
        instance_cache_mb: 0,
        ..common::config(dir.path())
    };
    let engine = Engine::open(config, registry()).await.unwrap();
    let client = engine.client().waiting_for_room();
    let count = 2500;
    let ids = run_chains(&client, 0, (0..count).map(|i| format!("purged-{i:04}"))).await;
    engine.checkpoint().await.unwrap();
    let checkpoints = || {
        engine.stats()[0]
            .checkpoints
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = checkpoints();
    let purged = client
        .purge_by_filter(QueryFilter {
            instance_id_prefix: Some("purged-".into()),
            ..QueryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, count);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        checkpoints(),
        before,
        "{count} deletions started a checkpoint, like {count} changed instances would"
    );
    let store = stores.opened.lock()[0].clone();
    let stored = |id: &str| {
        store
            .snapshot()
            .unwrap()
            .get_instance(id)
            .unwrap()
            .is_some()
    };
    assert!(stored(&ids[0]), "not checkpointed yet: still in the store");
    assert!(client.get_status(&ids[0], false).await.unwrap().is_none());

    engine.checkpoint_in_background().await.unwrap();
    assert_eq!(checkpoints(), before + 1);
    for id in &ids {
        assert!(
            !stored(id),
            "{id} is still in the store after the checkpoint"
        );
    }
    engine.shutdown().await.unwrap();
}

/// Local stores whose checkpoint writes wait until the test opens the gate (a disk that has
/// stopped keeping up).
#[derive(Debug)]
struct GatedStores {
    local: LocalCheckpointStores,
    open: Arc<std::sync::atomic::AtomicBool>,
}

struct Gated(Arc<dyn CheckpointStore>, Arc<std::sync::atomic::AtomicBool>);

cairn_storage::forward_store_reads!(Gated, |s| &*s.0);

impl CheckpointStore for Gated {
    fn snapshot(&self) -> Result<Box<dyn StoreReads>, StoreError> {
        self.0.snapshot()
    }
    fn write_checkpoint(&self, batch: &CheckpointBatch) -> Result<(), StoreError> {
        while !self.1.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.0.write_checkpoint(batch)
    }
}

impl CheckpointStores for GatedStores {
    fn open(&self, partition: u32) -> Result<Arc<dyn CheckpointStore>, StoreError> {
        Ok(Arc::new(Gated(
            self.local.open(partition)?,
            self.open.clone(),
        )))
    }
}

/// While a checkpoint cannot be written, a partition takes new work only until its changes
/// reach twice the checkpoint budget: a burst of starts then waits in the clients instead of
/// piling up in memory. Once the disk keeps up again, every start goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_checkpoint_is_behind_stops_taking_new_work() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let config = EngineConfig {
        partitions: Some(1),
        checkpoints: Some(Arc::new(GatedStores {
            local: LocalCheckpointStores {
                data_dir: dir.path().to_path_buf(),
                cache_bytes: 0,
            },
            open: gate.clone(),
        })),
        // The smallest budget: a checkpoint is due at 1,000 changed instances.
        instance_cache_mb: 0,
        ..common::config(dir.path())
    };
    let engine = Engine::open(config, registry()).await.unwrap();
    let client = engine.client().waiting_for_room();
    let starts = 12_000;
    let acknowledged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (client, acknowledged) = (client.clone(), acknowledged.clone());
        tasks.push(tokio::spawn(async move {
            for i in (task..starts).step_by(8) {
                client
                    .start_with(
                        "events",
                        &1u32,
                        StartOptions {
                            instance_id: Some(format!("burst-{i:05}")),
                            ..StartOptions::default()
                        },
                    )
                    .await
                    .unwrap();
                acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    // Let the burst run into the stalled checkpoint, until acknowledgements stop.
    let mut last = usize::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    let while_stalled = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
    // Due at 1,000, held at 2,000, plus what one loop of the partition took in at once.
    assert!(
        (1_000..=6_500).contains(&while_stalled),
        "{while_stalled} of {starts} starts were taken while the checkpoint could not be written"
    );
    gate.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        acknowledged.load(std::sync::atomic::Ordering::SeqCst),
        starts
    );
    for i in [0, starts / 2, starts - 1] {
        let id = format!("burst-{i:05}");
        let status = client.get_status(&id, false).await.unwrap();
        assert!(
            status.is_some_and(|s| s.status == RuntimeStatus::Running),
            "{id}"
        );
    }
    engine.shutdown().await.unwrap();
}

/// Instances purged before any checkpoint had them (they ended and went at once) leave nothing
/// behind in the partition: no replay cursor, no last-use time. A deleted instance holds no
/// cache slot, so the trim that drops those with the slot never meets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_purged_before_their_checkpoint_leave_no_cursor_or_recency_behind() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(common::config(dir.path()), registry())
        .await
        .unwrap();
    let client = engine.client();
    let tracked = |engine: &Engine| -> u64 {
        engine
            .stats()
            .iter()
            .map(|s| s.tracked_ids.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    let ids = run_chains(&client, 3, (0..40).map(|i| format!("gone-{i:02}"))).await;
    // Every episode left a last-use time; none of them has been checkpointed yet.
    for id in &ids {
        assert_eq!(client.purge(id).await.unwrap(), 1, "{id}");
    }
    engine.checkpoint().await.unwrap();
    assert_eq!(
        tracked(&engine),
        0,
        "purged instances left cursors or last-use times"
    );
    engine.shutdown().await.unwrap();
}
