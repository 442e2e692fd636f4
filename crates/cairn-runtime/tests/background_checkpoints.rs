//! Checkpoints written in the background, slowly, while the partitions go on: reads, episodes
//! and recovery all see exactly what they would with checkpoints written in place.

mod common;

use cairn_runtime::*;
use cairn_storage::seam::{CheckpointStore, CheckpointStores, LocalCheckpointStores};
use cairn_storage::store::{CheckpointBatch, StoreError};
use common::*;
use std::sync::Arc;
use std::time::Duration;

/// Local stores whose checkpoint writes take 30 ms longer (a slow disk under a big dirty set).
#[derive(Debug)]
struct SlowStores(LocalCheckpointStores);

struct Slow(Arc<dyn CheckpointStore>);

impl CheckpointStore for Slow {
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
        self.0.scan_instances(start_after, prefix, f)
    }
    fn instance_count(&self) -> Result<u64, StoreError> {
        self.0.instance_count()
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
