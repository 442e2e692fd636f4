//! The engine runs on any implementation of its storage seams: here the in-memory log and
//! checkpoint store, through a restart, with checkpoints in between.

mod common;

use cairn_runtime::*;
use cairn_storage::seam::{MemoryCheckpointStores, MemoryPartitionLogs};
use common::*;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_runs_and_recovers_on_in_memory_seams() {
    let dir = tempfile::tempdir().unwrap();
    let logs = MemoryPartitionLogs::default();
    let stores = MemoryCheckpointStores::default();
    let config = || EngineConfig {
        logs: Some(Arc::new(logs.clone())),
        checkpoints: Some(Arc::new(stores.clone())),
        checkpoint_every_records: 50,
        ..config(dir.path())
    };
    let engine = Engine::open(config(), registry()).await.unwrap();
    let client = engine.client();
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            client
                .start_with(
                    "chain",
                    &5i64,
                    StartOptions {
                        instance_id: Some(format!("mem-{i}")),
                        ..StartOptions::default()
                    },
                )
                .await
                .unwrap(),
        );
    }
    for id in &ids[..20] {
        client.wait_for_completion(id, WAIT).await.unwrap();
    }
    engine.checkpoint().await.unwrap();
    engine.shutdown().await.unwrap();
    // Nothing of this run is in the data directory's partition logs: it all went to memory.
    for p in 0..4 {
        let log = hub::partition_dir(dir.path(), p).join("log");
        let segments = std::fs::read_dir(&log).map(|d| d.count()).unwrap_or(0);
        assert_eq!(segments, 0, "partition {p} wrote to {}", log.display());
    }
    // The checkpoints went to the in-memory stores (and covered the logs, which were trimmed).
    use cairn_storage::seam::CheckpointStores;
    let mut stored = 0;
    for p in 0..4 {
        let store = stores.open(p).unwrap();
        stored += store.instance_count().unwrap();
        assert!(
            store.checkpoint_position().unwrap() > 0,
            "partition {p} never checkpointed"
        );
    }
    assert_eq!(stored, 40);

    // A restart on the same in-memory "disks" recovers everything and finishes the rest.
    let engine = Engine::open(config(), registry()).await.unwrap();
    let client = engine.client();
    for id in &ids {
        let done = client.wait_for_completion(id, WAIT).await.unwrap();
        assert_eq!(done.output::<i64>().unwrap(), 5, "{id}");
    }
    engine.shutdown().await.unwrap();
}

/// With a seeded id source and in-memory seams, the ids an engine generates (instance and
/// execution ids) are the same on every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_engine_generates_the_same_ids() {
    async fn run() -> Vec<(String, String)> {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(
            EngineConfig {
                logs: Some(Arc::new(MemoryPartitionLogs::default())),
                checkpoints: Some(Arc::new(MemoryCheckpointStores::default())),
                ids: Some(Arc::new(cairn_runtime::clock::SeededIds::new(42))),
                ..config(dir.path())
            },
            registry(),
        )
        .await
        .unwrap();
        let client = engine.client();
        let mut out = Vec::new();
        for _ in 0..5 {
            // One at a time, so the order ids are drawn in is fixed.
            let id = client.start("chain", &1i64).await.unwrap();
            let done = client.wait_for_completion(&id, WAIT).await.unwrap();
            out.push((id, done.execution_id));
        }
        engine.shutdown().await.unwrap();
        out
    }
    let first = run().await;
    assert_eq!(first, run().await);
    assert_ne!(first[0].0, first[1].0);
}
