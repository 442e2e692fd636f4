//! What the engine's parts share: configuration, the registry, each partition's input queues
//! (its own, unbounded; client requests, bounded), worker permits, statistics and the remote
//! work queue. The engine builds it; the client and the leaders use it.

use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::inbox::Input;
use crate::registry::Registry;
use crate::remote::RemoteQueue;
use crate::stats::LeaderStats;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

/// State shared by the client and all partition leaders.
pub(crate) struct Shared {
    pub config: EngineConfig,
    pub registry: Registry,
    pub partition_count: u32,
    /// The partitions' own inputs (results of their work, messages between partitions,
    /// durability notices): never refused, since refusing them could stall a partition.
    pub partitions: Vec<mpsc::UnboundedSender<Input>>,
    /// Client requests, bounded per partition ([`EngineConfig::max_queued_requests`]).
    pub client_inbox: Vec<mpsc::Sender<Input>>,
    pub orchestration_permits: Arc<Semaphore>,
    pub activity_permits: Arc<Semaphore>,
    /// Reads running off the partitions' tasks (see `leader::reads`).
    pub read_permits: Arc<Semaphore>,
    pub stats: Vec<Arc<LeaderStats>>,
    pub remote: Option<RemoteQueue>,
    /// Where the partitions' logs live (local segmented files by default).
    pub logs: Arc<dyn cairn_storage::seam::PartitionLogs>,
    /// Where the partitions' checkpoints live (local redb files by default).
    pub checkpoints: Arc<dyn cairn_storage::seam::CheckpointStores>,
    pub clock: Arc<dyn crate::clock::Clock>,
    pub ids: Arc<dyn crate::clock::IdGen>,
    /// How messages and acknowledgements reach other partitions.
    pub router: Arc<dyn crate::router::Router>,
}

impl Shared {
    /// Queues a client request for `partition`: refused with [`EngineError::Busy`] when the
    /// partition's queue is full, or, with `wait`, once there is room.
    pub async fn send_request(
        &self,
        partition: u32,
        input: Input,
        wait: bool,
    ) -> Result<(), EngineError> {
        let inbox = self
            .client_inbox
            .get(partition as usize)
            .ok_or(EngineError::ShuttingDown)?;
        if wait {
            return inbox
                .send(input)
                .await
                .map_err(|_| EngineError::ShuttingDown);
        }
        inbox.try_send(input).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EngineError::Busy {
                partition,
                queued: inbox.max_capacity(),
            },
            mpsc::error::TrySendError::Closed(_) => EngineError::ShuttingDown,
        })
    }

    pub fn send(&self, partition: u32, input: Input) -> Result<(), EngineError> {
        self.partitions
            .get(partition as usize)
            .ok_or(EngineError::ShuttingDown)?
            .send(input)
            .map_err(|_| EngineError::ShuttingDown)
    }
}
