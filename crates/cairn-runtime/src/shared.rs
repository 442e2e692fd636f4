//! What the engine's parts share: configuration, the registry, each partition's input queues
//! (its own, unbounded; client requests, bounded), worker permits, statistics and the remote
//! work queue. The engine builds it; the client and the leaders use it.
//!
//! A partition runs in this process only while its slot holds its queues: the engine opens and
//! closes partitions one by one (a cluster node owns some of a hub's partitions and hands them
//! over as nodes come and go). A client request for a partition that does not run here goes
//! to the [`Forwarder`](crate::forward::Forwarder), when there is one.

use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::inbox::Input;
use crate::registry::Registry;
use crate::remote::RemoteQueue;
use crate::stats::LeaderStats;
use parking_lot::RwLock;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

/// The queues of a partition running in this process.
#[derive(Clone)]
pub(crate) struct PartitionQueues {
    /// Its own inputs (results of its work, messages between partitions, durability
    /// notices): never refused, since refusing them could stall a partition.
    pub input: mpsc::UnboundedSender<Input>,
    /// Client requests, bounded ([`EngineConfig::max_queued_requests`]).
    pub inbox: mpsc::Sender<Input>,
}

/// One slot per partition of the hub: its queues while it runs here.
pub(crate) struct Slots(Vec<RwLock<Option<PartitionQueues>>>);

impl Slots {
    pub fn new(count: u32) -> Slots {
        Slots((0..count).map(|_| RwLock::new(None)).collect())
    }

    pub fn get(&self, partition: u32) -> Option<PartitionQueues> {
        self.0.get(partition as usize)?.read().clone()
    }

    pub fn set(&self, partition: u32, queues: Option<PartitionQueues>) -> Option<PartitionQueues> {
        match self.0.get(partition as usize) {
            Some(slot) => std::mem::replace(&mut *slot.write(), queues),
            None => None,
        }
    }

    /// The partitions running here, in order.
    pub fn running(&self) -> Vec<u32> {
        (0..self.0.len() as u32)
            .filter(|p| self.0[*p as usize].read().is_some())
            .collect()
    }
}

/// State shared by the client and all partition leaders.
pub(crate) struct Shared {
    pub config: EngineConfig,
    pub registry: Registry,
    pub partition_count: u32,
    /// The queues of the partitions running in this process.
    pub slots: Arc<Slots>,
    /// Where requests for partitions that run elsewhere go (cluster mode).
    pub forwarder: Option<Arc<dyn crate::forward::Forwarder>>,
    pub orchestration_permits: Arc<Semaphore>,
    pub activity_permits: Arc<Semaphore>,
    /// Reads running off the partitions' tasks (see `leader::reads`).
    pub read_permits: Arc<Semaphore>,
    /// Background checkpoint writers running at once (see `leader::checkpoints`).
    pub checkpoint_writers: Arc<Semaphore>,
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
    /// partition's queue is full, or, with `wait`, once there is room. A request for a
    /// partition that runs on another node is forwarded there, and answered through the same
    /// reply.
    pub async fn send_request(
        self: &Arc<Self>,
        partition: u32,
        input: Input,
        wait: bool,
    ) -> Result<(), EngineError> {
        if partition >= self.partition_count {
            return Err(EngineError::ShuttingDown);
        }
        let Some(queues) = self.slots.get(partition) else {
            return match &self.forwarder {
                Some(forwarder) => crate::forward::forward(forwarder.clone(), partition, input),
                None => Err(EngineError::ShuttingDown),
            };
        };
        let inbox = queues.inbox;
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

    /// Hands `input` to `partition`'s own queue, if it runs here.
    pub fn send(&self, partition: u32, input: Input) -> Result<(), EngineError> {
        self.slots
            .get(partition)
            .ok_or(EngineError::ShuttingDown)?
            .input
            .send(input)
            .map_err(|_| EngineError::ShuttingDown)
    }
}
