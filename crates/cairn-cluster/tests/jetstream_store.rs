//! The JetStream checkpoint store against a real `nats-server` started here: the storage
//! conformance suite, once reopening with the node's local cache and once with no cache at all
//! (a node taking the partition over rebuilds everything from JetStream), and the fencing of a
//! stale owner's checkpoint; and the hub's settings in its KV bucket.

use cairn_cluster::checkpoint::JetStreamCheckpointStore;
use cairn_cluster::nats_server::NatsCluster;
use cairn_cluster::{ClusterConfig, Nats};
use cairn_storage::conformance::{self, StoreHarness};
use cairn_storage::seam::{CheckpointStore, StoreReads};
use cairn_storage::store::CheckpointBatch;
use std::sync::Arc;

fn nats(cluster: &NatsCluster, hub: &str, node: &str) -> Arc<Nats> {
    Arc::new(
        Nats::connect(ClusterConfig::new(cluster.urls(), hub, node))
            .expect("connect to the test NATS server"),
    )
}

struct Harness {
    nats: Arc<Nats>,
    partition: u32,
    cache: tempfile::TempDir,
    /// Reopen on a new, empty cache directory: everything must come from JetStream.
    forget_cache: bool,
}

impl Harness {
    fn open(&self) -> Arc<dyn CheckpointStore> {
        Arc::new(
            JetStreamCheckpointStore::open(
                self.nats.clone(),
                self.partition,
                self.cache.path(),
                1 << 20,
            )
            .expect("open the JetStream checkpoint store"),
        )
    }
}

impl StoreHarness for Harness {
    fn fresh(&mut self) -> Arc<dyn CheckpointStore> {
        self.partition += 1;
        self.cache = tempfile::tempdir().unwrap();
        self.open()
    }
    fn reopen(&mut self) -> Arc<dyn CheckpointStore> {
        if self.forget_cache {
            self.cache = tempfile::tempdir().unwrap();
        }
        self.open()
    }
}

#[test]
fn jetstream_checkpoints_pass_the_store_conformance_suite_with_and_without_a_cache() {
    let cluster = NatsCluster::single().expect("start nats-server");
    for (hub, forget_cache) in [("cached", false), ("uncached", true)] {
        let mut harness = Harness {
            nats: nats(&cluster, hub, "node-a"),
            partition: 0,
            cache: tempfile::tempdir().unwrap(),
            forget_cache,
        };
        conformance::run_store_checks(&mut harness);
    }
}

fn batch(position: u64, id: &str) -> CheckpointBatch {
    CheckpointBatch {
        position,
        globals: format!("globals at {position}").into_bytes(),
        instance_puts: vec![(id.to_string(), b"state".to_vec())],
        ..Default::default()
    }
}

#[test]
fn a_stale_owners_checkpoint_is_refused_and_the_new_owner_sees_only_its_own() {
    let cluster = NatsCluster::single().expect("start nats-server");
    let (a, b) = (
        nats(&cluster, "ckfence", "node-a"),
        nats(&cluster, "ckfence", "node-b"),
    );
    let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old = JetStreamCheckpointStore::open(a, 3, cache_a.path(), 1 << 20).unwrap();
    old.write_checkpoint(&batch(10, "i1")).unwrap();

    let new = JetStreamCheckpointStore::open(b.clone(), 3, cache_b.path(), 1 << 20).unwrap();
    assert_eq!(new.checkpoint_position().unwrap(), 10);
    assert_eq!(new.get_instance("i1").unwrap(), Some(b"state".to_vec()));

    let refused = old.write_checkpoint(&batch(20, "stale")).unwrap_err();
    assert!(refused.to_string().contains("another owner"), "{refused}");
    new.write_checkpoint(&batch(15, "i2")).unwrap();
    drop((old, new));

    // A third owner, from nothing but JetStream.
    let cache_c = tempfile::tempdir().unwrap();
    let third = JetStreamCheckpointStore::open(b, 3, cache_c.path(), 1 << 20).unwrap();
    assert_eq!(third.checkpoint_position().unwrap(), 15);
    assert!(third.get_instance("i2").unwrap().is_some());
    assert_eq!(
        third.get_instance("stale").unwrap(),
        None,
        "the stale write never landed"
    );
}

#[test]
fn snapshots_bound_the_deltas_a_new_owner_reads_and_lose_nothing() {
    use cairn_cluster::checkpoint::{deltas_stream, SNAPSHOT_EVERY};
    let cluster = NatsCluster::single().expect("start nats-server");
    let node = nats(&cluster, "snap", "node-a");
    let cache = tempfile::tempdir().unwrap();
    let total = SNAPSHOT_EVERY * 2 + 5;
    {
        let store = JetStreamCheckpointStore::open(node.clone(), 0, cache.path(), 1 << 20).unwrap();
        for i in 1..=total {
            let mut b = batch(i * 10, &format!("i{i}"));
            if i > 1 {
                // Each checkpoint also deletes an instance an earlier one wrote.
                b.instance_deletes = vec![format!("i{}", i - 1)];
                b.instance_puts.push((format!("kept{i}"), b"kept".to_vec()));
            }
            store.write_checkpoint(&b).unwrap();
        }
    }
    // The stream holds only the deltas after the last snapshot (and the owners' epoch markers).
    let js = node.jetstream().clone();
    let stream = deltas_stream("snap", 0);
    let messages = node
        .run(async move {
            let mut s = js.get_stream(&stream).await.unwrap();
            s.info().await.unwrap().state.messages
        })
        .unwrap();
    assert!(
        messages <= 5 + 2,
        "{messages} messages left in the delta stream after {total} checkpoints"
    );
    // Whether it starts from nothing or from its own cache, an owner sees the same state.
    let empty = tempfile::tempdir().unwrap();
    for cache_dir in [empty.path(), cache.path()] {
        let store = JetStreamCheckpointStore::open(node.clone(), 0, cache_dir, 1 << 20).unwrap();
        assert_eq!(store.checkpoint_position().unwrap(), total * 10);
        assert_eq!(store.instance_count().unwrap(), total);
        assert!(store.get_instance(&format!("i{total}")).unwrap().is_some());
        assert_eq!(
            store.get_instance(&format!("i{}", total - 1)).unwrap(),
            None
        );
        assert!(store.get_instance("kept2").unwrap().is_some());
    }
}

/// The hub's settings in its KV bucket behave as the file-backed ones do, and a node that
/// connects later (a standby taking over) reads what another node stored.
#[test]
fn kv_settings_pass_the_settings_checks_across_nodes() {
    let cluster = NatsCluster::single().expect("start nats-server");
    let first = nats(&cluster, "settings", "node-a");
    // The bucket is created with the hub record.
    cairn_cluster::hub::partitions(&first, Some(2), 12).unwrap();
    let settings = cairn_cluster::hub::KvSettings::new(first);
    cairn_storage::settings::check_settings(&settings, &|| {
        Box::new(cairn_cluster::hub::KvSettings::new(nats(
            &cluster, "settings", "node-b",
        )))
    });
    use cairn_storage::settings::HubSettings;
    assert!(settings
        .location("retention")
        .contains("settings.retention"));
}
