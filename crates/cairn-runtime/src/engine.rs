//! The engine: opens a task hub (a data directory, see [`crate::hub`]), recovers its
//! partitions and runs them.
//!
//! This module owns configuration and the wiring between partition leaders;
//! the state machine lives in `cairn-core`, the per-partition shell in [`crate::leader`].

use crate::client::Client;
use crate::error::EngineError;
use crate::leader::{self, Input, LeaderStats};
use crate::registry::Registry;
use crate::remote::RemoteQueue;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Engine settings. Defaults suit a single machine; see the README's configuration table.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where the task hub lives (created if missing).
    pub data_dir: PathBuf,
    /// Partition count for a *new* hub (default 12). Opening an existing hub with a different
    /// count is an error; `None` accepts whatever the hub has.
    pub partitions: Option<u32>,
    /// Memory for cached instances and their live orchestrators, in MiB (all partitions).
    pub instance_cache_mb: usize,
    /// Keep live orchestrators (cursors) of cached instances so they continue without replay.
    pub cache_orchestrators: bool,
    /// Orchestration episodes running at once (all partitions).
    pub max_concurrent_orchestrations: usize,
    /// Activities running at once (all partitions).
    pub max_concurrent_activities: usize,
    /// fsync the log on every commit batch. Turning it off trades durability for speed.
    pub fsync: bool,
    /// Checkpoint a partition after this many log records...
    pub checkpoint_every_records: u64,
    /// ...or after this much time with changes.
    pub checkpoint_interval: Duration,
    /// Largest accepted payload (input, event data, activity result), in bytes.
    pub max_payload_bytes: usize,
    /// Size at which a log segment is closed and a new one started.
    pub log_segment_bytes: u64,
    /// Fault injection for tests: every log sync takes at least this long (a slow disk).
    pub log_sync_delay: Option<Duration>,
    /// Most queued operations an entity processes in one batch (one state write per batch).
    pub max_entity_batch: usize,
    /// Hand orchestrations and activities that are not registered in this process to remote
    /// workers (see [`Engine::remote_queue`]) instead of failing them as unknown.
    pub remote_workers: bool,
    /// Client requests (starts, events, reads, waits…) a partition queues before the client is
    /// told it is busy: a flood of requests is pushed back instead of growing memory.
    pub max_queued_requests: usize,
    /// Where the partitions' logs live; `None` is local segmented files in `data_dir` (with
    /// `fsync`, `log_segment_bytes` and `log_sync_delay`). The simulator and the cluster mode
    /// put other implementations of the seam here.
    pub logs: Option<Arc<dyn cairn_storage::seam::PartitionLogs>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("cairn-data"),
            partitions: None,
            instance_cache_mb: 256,
            cache_orchestrators: true,
            max_concurrent_orchestrations: 1000,
            max_concurrent_activities: 1000,
            fsync: true,
            checkpoint_every_records: 100_000,
            checkpoint_interval: Duration::from_secs(30),
            max_payload_bytes: 4 * 1024 * 1024,
            log_segment_bytes: 64 * 1024 * 1024,
            log_sync_delay: None,
            remote_workers: false,
            max_entity_batch: 5000,
            max_queued_requests: 10_000,
            logs: None,
        }
    }
}

pub use crate::hub::{HubMeta, DEFAULT_PARTITIONS, MAX_PARTITIONS};

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
    pub stats: Vec<Arc<LeaderStats>>,
    pub remote: Option<RemoteQueue>,
    /// Where the partitions' logs live (local segmented files by default).
    pub logs: Arc<dyn cairn_storage::seam::PartitionLogs>,
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

/// What recovery found in one partition.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub partition: u32,
    pub checkpoint_position: u64,
    pub replayed_records: u64,
    pub runnable: usize,
    pub activities: usize,
    pub timers: usize,
    pub torn_tail_bytes: u64,
}

/// A running Cairn engine on one data directory.
pub struct Engine {
    shared: Arc<Shared>,
    leaders: Vec<tokio::task::JoinHandle<()>>,
    pub recovery: Vec<RecoveryReport>,
    pub hub: HubMeta,
    /// True when this open created the task hub (the directory had none).
    pub created: bool,
    /// The hub directory, held (locked) for the engine's life.
    _hub: crate::hub::OpenedHub,
}

impl Engine {
    /// Opens (or creates) the task hub in `config.data_dir`, recovers every partition from its
    /// checkpoint and log, and starts processing. Must be called inside a multi-threaded Tokio
    /// runtime.
    pub async fn open(config: EngineConfig, registry: Registry) -> Result<Engine, EngineError> {
        let dir = config.data_dir.clone();
        let opened = crate::hub::open(&dir, config.partitions)?;
        let hub = opened.meta.clone();
        let count = hub.partitions;
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        let mut inboxes = Vec::new();
        let queued = config.max_queued_requests.max(1);
        for _ in 0..count {
            let (tx, rx) = mpsc::unbounded_channel();
            let (inbox, inbox_rx) = mpsc::channel(queued);
            senders.push(tx);
            inboxes.push(inbox);
            receivers.push((rx, inbox_rx));
        }
        let stats: Vec<Arc<LeaderStats>> = (0..count)
            .map(|_| Arc::new(LeaderStats::default()))
            .collect();
        let config_remote = config.remote_workers;
        let logs: Arc<dyn cairn_storage::seam::PartitionLogs> = match &config.logs {
            Some(logs) => logs.clone(),
            None => Arc::new(cairn_storage::seam::LocalPartitionLogs {
                data_dir: dir.clone(),
                config: cairn_storage::log::LogConfig {
                    segment_bytes: config.log_segment_bytes,
                    fsync: config.fsync,
                    sync_delay: config.log_sync_delay,
                },
            }),
        };
        let shared = Arc::new(Shared {
            orchestration_permits: Arc::new(Semaphore::new(
                config.max_concurrent_orchestrations.max(1),
            )),
            activity_permits: Arc::new(Semaphore::new(config.max_concurrent_activities.max(1))),
            config,
            registry,
            partition_count: count,
            partitions: senders,
            client_inbox: inboxes,
            stats,
            remote: config_remote.then(RemoteQueue::default),
            logs,
        });
        // Recover partitions in parallel on blocking threads (disk reads), then start leaders.
        let mut recovering = Vec::new();
        for (p, rx) in receivers.into_iter().enumerate() {
            let shared = shared.clone();
            recovering.push(tokio::task::spawn_blocking(move || {
                leader::Leader::recover(p as u32, shared, rx.0, rx.1)
            }));
        }
        let mut leaders = Vec::new();
        let mut recovery = Vec::new();
        let mut first_error = None;
        for r in recovering {
            match r.await {
                Ok(Ok((leader, report))) => {
                    recovery.push(report);
                    leaders.push(leader);
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(join) => {
                    first_error.get_or_insert(EngineError::Storage {
                        partition: u32::MAX,
                        message: format!("recovery task failed: {join}"),
                    });
                }
            }
        }
        if let Some(e) = first_error {
            for l in leaders {
                l.abandon();
            }
            return Err(e);
        }
        let handles = leaders.into_iter().map(|l| tokio::spawn(l.run())).collect();
        Ok(Engine {
            shared,
            leaders: handles,
            recovery,
            hub,
            created: opened.created,
            _hub: opened,
        })
    }

    pub fn client(&self) -> Client {
        Client::new(self.shared.clone())
    }

    pub fn partition_count(&self) -> u32 {
        self.shared.partition_count
    }

    /// The queue of work for remote workers (with `remote_workers` on).
    pub fn remote_queue(&self) -> Option<RemoteQueue> {
        self.shared.remote.clone()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Counters of each partition (commits, batches, episodes, ...).
    pub fn stats(&self) -> Vec<Arc<LeaderStats>> {
        self.shared.stats.clone()
    }

    /// Forces a checkpoint of every partition (tests, benchmarks, before backups).
    pub async fn checkpoint(&self) -> Result<(), EngineError> {
        for p in 0..self.shared.partition_count {
            let (tx, rx) = oneshot::channel();
            self.shared.send(p, Input::Checkpoint(tx))?;
            rx.await.map_err(|_| EngineError::ShuttingDown)??;
        }
        Ok(())
    }

    /// Flushes and checkpoints every partition, then stops.
    pub async fn shutdown(self) -> Result<(), EngineError> {
        let mut waits = Vec::new();
        for p in 0..self.shared.partition_count {
            let (tx, rx) = oneshot::channel();
            if self.shared.send(p, Input::Shutdown(tx)).is_ok() {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.await;
        }
        for h in self.leaders {
            let _ = h.await;
        }
        Ok(())
    }
}
