//! # Running the engine on the cluster's storage
//!
//! [`cluster_config`] turns an embedded [`EngineConfig`] into a cluster node's: the partition
//! count comes from the hub record in JetStream, each partition's log is a [`JetStreamLogs`]
//! stream and its checkpoints a [`JetStreamCheckpointStores`] delta stream, the hub's settings
//! (the retention policy) are in its KV bucket, and the engine's data directory holds only
//! caches. Everything else about the engine is unchanged: the same
//! partition state machine, speculation and recovery.
//!
//! [`cluster_config`] alone makes an engine that runs every partition of the hub (a single
//! process on JetStream storage: the crash workload, the bench). [`shared_config`] makes one
//! that shares the hub with other nodes: it opens no partition by itself, messages between
//! partitions go through JetStream ([`crate::routing`]) and requests for partitions that run
//! elsewhere are forwarded ([`crate::forwarding`]); [`crate::ownership::Ownership`] then
//! decides which partitions run here. Should two engines ever run one partition, the later
//! one's epoch marker makes the earlier one's appends fail: it stops without applying them.

use crate::checkpoint::JetStreamCheckpointStores;
use crate::connection::{ClusterError, Nats};
use crate::log::JetStreamLogs;
use cairn_runtime::EngineConfig;
use std::sync::Arc;

/// Where a node keeps its checkpoint caches, inside the engine's data directory.
pub const CACHE_DIR: &str = "cluster-cache";

/// `config`, with the hub's partitions in JetStream.
pub fn cluster_config(nats: Arc<Nats>, config: EngineConfig) -> Result<EngineConfig, ClusterError> {
    let partitions = crate::hub::partitions(
        &nats,
        config.partitions,
        cairn_runtime::hub::DEFAULT_PARTITIONS,
    )?;
    let cache_bytes = (config.store_cache_mb * 1024 * 1024 / partitions as usize).max(1 << 20);
    Ok(EngineConfig {
        partitions: Some(partitions),
        logs: Some(Arc::new(JetStreamLogs::new(nats.clone()))),
        settings: Some(Arc::new(crate::hub::KvSettings::new(nats.clone()))),
        checkpoints: Some(Arc::new(JetStreamCheckpointStores {
            nats,
            cache_dir: config.data_dir.join(CACHE_DIR),
            cache_bytes,
        })),
        ..config
    })
}

/// `config` (a [`cluster_config`]) for a node that shares the hub's partitions with others:
/// the router to hand to [`crate::ownership::Ownership::start`] once the engine is open.
pub fn shared_config(
    nats: Arc<Nats>,
    config: EngineConfig,
) -> (EngineConfig, crate::routing::JetStreamRouters) {
    let routers = crate::routing::JetStreamRouters::new(nats.clone());
    let config = EngineConfig {
        router: Some(Arc::new(routers.clone())),
        forwarder: Some(Arc::new(crate::forwarding::NatsForwarder::new(nats))),
        ..config
    };
    (config, routers)
}
