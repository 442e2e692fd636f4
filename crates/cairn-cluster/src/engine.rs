//! # Running the engine on the cluster's storage
//!
//! [`cluster_config`] turns an embedded [`EngineConfig`] into a cluster node's: the partition
//! count comes from the hub record in JetStream, each partition's log is a [`JetStreamLogs`]
//! stream and its checkpoints a [`JetStreamCheckpointStores`] delta stream, the hub's settings
//! (the retention policy) are in its KV bucket, and the engine's data directory holds only
//! caches. Everything else about the engine is unchanged: the same
//! partition state machine, speculation and recovery.
//!
//! A node opens every partition of the hub, once it holds the hub's lease
//! ([`crate::lease::HubLease`]); other nodes wait as standbys. Leases per partition, so that
//! several nodes share the partitions, are not built yet. Should two nodes ever both open the
//! hub, the later one takes every partition over, and the earlier one's partitions stop (their
//! logs refuse its appends).

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
