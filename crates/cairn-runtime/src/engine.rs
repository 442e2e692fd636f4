//! The engine: opens a task hub (a data directory, see [`crate::hub`]), recovers its
//! partitions and runs them.
//!
//! This module owns configuration and the wiring between partition leaders;
//! the state machine lives in `cairn-core`, the per-partition shell in [`crate::leader`].

use crate::client::Client;
use crate::error::EngineError;
use crate::inbox::Input;
use crate::leader::{self, LeaderStats};
use crate::registry::Registry;
use crate::remote::RemoteQueue;
use crate::router::Routers;
use crate::shared::Shared;
use futures::FutureExt;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};

pub use crate::hub::{HubMeta, DEFAULT_PARTITIONS, MAX_PARTITIONS};

pub use crate::config::EngineConfig;
pub use crate::leader::RecoveryReport;

/// A running Cairn engine on one data directory.
pub struct Engine {
    shared: Arc<Shared>,
    leaders: Vec<tokio::task::JoinHandle<()>>,
    /// The retention policy in force (changeable while running) and its sweeper.
    retention: crate::retention::Retention,
    sweeper: tokio::task::JoinHandle<()>,
    pub recovery: Vec<RecoveryReport>,
    pub hub: HubMeta,
    /// True when this open created the task hub (the directory had none).
    pub created: bool,
    /// The hub directory, held (locked) for the engine's life.
    _hub: crate::hub::OpenedHub,
}

impl Engine {
    /// Opens (or creates) the task hub in `config.data_dir`, recovers every partition from its
    /// checkpoint and log, and starts processing. Must be called inside a Tokio runtime: a
    /// multi-threaded one in every real use; on a current-thread one (the deterministic
    /// simulator) the engine keeps all its work on that one thread.
    pub async fn open(config: EngineConfig, registry: Registry) -> Result<Engine, EngineError> {
        let dir = config.data_dir.clone();
        let opened = crate::hub::open(&dir, config.partitions)?;
        let hub = opened.meta.clone();
        let settings = config.settings.clone().unwrap_or_else(|| {
            Arc::new(cairn_storage::settings::FileSettings::new(&dir))
                as Arc<dyn cairn_storage::settings::HubSettings>
        });
        let retention = crate::retention::Retention::open(settings, &config.retention)
            .map_err(|e| crate::hub::data_dir_error(&dir, e))?;
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
        let clock = config
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(crate::clock::SystemClock));
        let ids = config
            .ids
            .clone()
            .unwrap_or_else(|| Arc::new(crate::clock::RandomIds));
        let checkpoints: Arc<dyn cairn_storage::seam::CheckpointStores> = match &config.checkpoints
        {
            Some(c) => c.clone(),
            None => Arc::new(cairn_storage::seam::LocalCheckpointStores {
                data_dir: dir.clone(),
                cache_bytes: (config.store_cache_mb * 1024 * 1024 / count as usize)
                    .max(1024 * 1024),
            }),
        };
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
        let local = crate::router::LocalPartitions::new(senders.clone());
        let router = match &config.router {
            Some(r) => r.open(local),
            None => crate::router::InProcessRouters.open(local),
        };
        let shared = Arc::new(Shared {
            orchestration_permits: Arc::new(Semaphore::new(
                config.max_concurrent_orchestrations.max(1),
            )),
            activity_permits: Arc::new(Semaphore::new(config.max_concurrent_activities.max(1))),
            // Reads decoding rows off the partitions' tasks: one per core, so that a query's
            // parts on different partitions run in parallel, while a burst of large queries
            // queues instead of crowding out the partitions.
            read_permits: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            config,
            registry,
            partition_count: count,
            partitions: senders,
            client_inbox: inboxes,
            stats,
            remote: config_remote.then(RemoteQueue::default),
            logs,
            checkpoints,
            clock,
            ids,
            router,
        });
        // Recover partitions in parallel on blocking threads (disk reads), then start leaders.
        // On a current-thread runtime (the simulator) one after the other, on this thread.
        let inline = crate::blocking::single_threaded();
        let mut recovering = Vec::new();
        for (p, rx) in receivers.into_iter().enumerate() {
            let shared = shared.clone();
            let recover = move || leader::Leader::recover(p as u32, shared, rx.0, rx.1);
            recovering.push(if inline {
                futures::future::ready(Ok(recover())).boxed()
            } else {
                tokio::task::spawn_blocking(recover).boxed()
            });
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
        let stats = shared.stats.clone();
        let sweeper = tokio::spawn(crate::retention::run(
            Client::new(shared.clone()),
            retention.clone(),
            shared.config.retention_interval,
            shared.clock.clone(),
            move || {
                stats
                    .iter()
                    .flat_map(|s| s.instances_by_name().keys().cloned().collect::<Vec<_>>())
                    .collect()
            },
        ));
        Ok(Engine {
            shared,
            leaders: handles,
            retention,
            sweeper,
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

    /// The retention policy in force: [`Retention::set`](crate::retention::Retention::set)
    /// changes it while the engine runs and keeps it in the hub's directory.
    pub fn retention(&self) -> &crate::retention::Retention {
        &self.retention
    }

    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Counters of each partition (commits, batches, episodes, ...).
    pub fn stats(&self) -> Vec<Arc<LeaderStats>> {
        self.shared.stats.clone()
    }

    /// The partitions that stopped accepting writes, and why.
    pub fn partition_failures(&self) -> Vec<(u32, String)> {
        self.shared
            .stats
            .iter()
            .enumerate()
            .filter_map(|(p, s)| s.failure.lock().clone().map(|why| (p as u32, why)))
            .collect()
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
        self.sweeper.abort();
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
        if let Some(queue) = &self.shared.remote {
            queue.clear();
        }
        Ok(())
    }
}
