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

type Leaders = Arc<parking_lot::Mutex<std::collections::HashMap<u32, tokio::task::JoinHandle<()>>>>;

/// The partitions of an engine, to open and close one by one (see [`Engine::partitions`]).
#[derive(Clone)]
pub struct Partitions {
    shared: Arc<Shared>,
    leaders: Leaders,
}

impl Partitions {
    /// Recovers `partitions` from their checkpoints and logs (in parallel, on blocking
    /// threads) and starts running them here. Either all open or none does: on an error the
    /// ones already recovered are closed again without running. Partitions that already run
    /// here are left as they are.
    pub async fn open(&self, partitions: &[u32]) -> Result<Vec<RecoveryReport>, EngineError> {
        let queued = self.shared.config.max_queued_requests.max(1);
        // On a current-thread runtime (the simulator) one after the other, on this thread.
        let inline = crate::blocking::single_threaded();
        let mut recovering = Vec::new();
        for &p in partitions {
            if p >= self.shared.partition_count || self.shared.slots.get(p).is_some() {
                continue;
            }
            let (input, rx) = mpsc::unbounded_channel();
            let (inbox, inbox_rx) = mpsc::channel(queued);
            let queues = crate::shared::PartitionQueues {
                input: input.clone(),
                inbox,
            };
            let shared = self.shared.clone();
            let recover = move || leader::Leader::recover(p, shared, input, rx, inbox_rx);
            let recovery = if inline {
                futures::future::ready(Ok(recover())).boxed()
            } else {
                tokio::task::spawn_blocking(recover).boxed()
            };
            recovering.push((p, queues, recovery));
        }
        let mut leaders = Vec::new();
        let mut reports = Vec::new();
        let mut first_error = None;
        for (p, queues, recovery) in recovering {
            match recovery.await {
                Ok(Ok((leader, report))) => {
                    reports.push(report);
                    leaders.push((p, queues, leader));
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(join) => {
                    first_error.get_or_insert(EngineError::Storage {
                        partition: p,
                        message: format!("recovery task failed: {join}"),
                    });
                }
            }
        }
        if let Some(e) = first_error {
            for (_, _, l) in leaders {
                l.abandon();
            }
            return Err(e);
        }
        // Every slot is filled before any leader runs: a leader's first act is to send its
        // unacknowledged outbox, and in-process delivery to a partition whose slot is still
        // empty would drop it.
        for (p, queues, _) in &leaders {
            self.shared.stats[*p as usize].failure.lock().take();
            self.shared.slots.set(*p, Some(queues.clone()));
        }
        let mut running = self.leaders.lock();
        for (p, _, leader) in leaders {
            running.insert(p, tokio::spawn(leader.run()));
        }
        Ok(reports)
    }

    /// Stops running `partition` here, cleanly: what it holds is made durable and
    /// checkpointed, so that the node that runs it next recovers it quickly. Requests for it
    /// are forwarded from the moment this is called.
    pub async fn close(&self, partition: u32) {
        let Some(queues) = self.shared.slots.set(partition, None) else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        if queues.input.send(Input::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
        let handle = self.leaders.lock().remove(&partition);
        if let Some(h) = handle {
            let _ = h.await;
        }
        self.forget(partition);
        // Its activities in the remote queue are abandoned now that its task is gone.
        if let Some(queue) = &self.shared.remote {
            queue.shed_abandoned();
        }
    }

    /// Stops running `partition` here at once, writing nothing more: another node owns it now
    /// (its log refuses this node's appends anyway).
    pub fn abandon(&self, partition: u32) {
        self.shared.slots.set(partition, None);
        if let Some(h) = self.leaders.lock().remove(&partition) {
            h.abort();
            // Its activities in the remote queue are abandoned once the aborted task is gone
            // (a caller outside any runtime leaves them to be shed as workers meet them).
            if let (Some(queue), Ok(rt)) = (
                self.shared.remote.clone(),
                tokio::runtime::Handle::try_current(),
            ) {
                rt.spawn(async move {
                    let _ = h.await;
                    queue.shed_abandoned();
                });
            }
        }
        self.forget(partition);
    }

    /// What this node published about a partition that no longer runs here. (Its activities
    /// waiting for remote workers are shed once its task is gone: their answers would go
    /// nowhere, and its next owner hands them out again. Episodes and entity batches it handed
    /// out stay queued until taken or withdrawn: a worker may still run one, and its answer
    /// goes nowhere.)
    fn forget(&self, partition: u32) {
        if let Some(stats) = self.shared.stats.get(partition as usize) {
            stats.clear();
        }
    }

    /// The partitions running here that stopped accepting writes, and why.
    pub fn failures(&self) -> Vec<(u32, String)> {
        self.running()
            .into_iter()
            .filter_map(|p| {
                let why = self.shared.stats.get(p as usize)?.failure.lock().clone()?;
                Some((p, why))
            })
            .collect()
    }

    /// The partitions running in this process.
    pub fn running(&self) -> Vec<u32> {
        self.shared.slots.running()
    }

    /// Answers a client request another node forwarded to `partition` (see
    /// [`crate::forward`]): the bytes to send back.
    pub async fn answer(&self, partition: u32, request: &[u8]) -> Vec<u8> {
        crate::forward::answer(&self.shared, partition, request).await
    }
}

/// A running Cairn engine on one data directory.
pub struct Engine {
    shared: Arc<Shared>,
    /// The leaders of the partitions running here.
    leaders: Leaders,
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
        let slots = Arc::new(crate::shared::Slots::new(count));
        let stats: Vec<Arc<LeaderStats>> = (0..count)
            .map(|_| Arc::new(LeaderStats::default()))
            .collect();
        let config_remote = config.remote_workers;
        let config_forwarder = config.forwarder.clone();
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
        let local = crate::router::LocalPartitions::new(slots.clone());
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
            // Checkpoint writes are background work that can take a core for a second (a
            // purge's deletions): half the cores at most, so foreground work always has some.
            checkpoint_writers: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            )),
            config,
            registry,
            partition_count: count,
            slots,
            forwarder: config_forwarder,
            stats,
            remote: config_remote.then(RemoteQueue::default),
            logs,
            checkpoints,
            clock,
            ids,
            router,
        });
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
        let mut engine = Engine {
            shared,
            leaders: Leaders::default(),
            retention,
            sweeper,
            recovery: Vec::new(),
            hub,
            created: opened.created,
            _hub: opened,
        };
        // Embedded, every partition runs here; in a cluster, the node decides which do.
        if engine.shared.forwarder.is_none() {
            let all: Vec<u32> = (0..count).collect();
            match engine.open_partitions(&all).await {
                Ok(reports) => engine.recovery = reports,
                Err(e) => {
                    engine.sweeper.abort();
                    return Err(e);
                }
            }
        }
        Ok(engine)
    }

    /// Opens, closes and answers for single partitions: what a cluster node uses to run its
    /// share of the hub.
    pub fn partitions(&self) -> Partitions {
        Partitions {
            shared: self.shared.clone(),
            leaders: self.leaders.clone(),
        }
    }

    /// See [`Partitions::open`].
    pub async fn open_partitions(
        &self,
        partitions: &[u32],
    ) -> Result<Vec<RecoveryReport>, EngineError> {
        self.partitions().open(partitions).await
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

    /// Forces a checkpoint of every partition running here (tests, benchmarks, before
    /// backups).
    pub async fn checkpoint(&self) -> Result<(), EngineError> {
        self.checkpoint_each(Input::Checkpoint).await
    }

    /// Checkpoints every partition running here the way the periodic checkpoints are taken,
    /// written in the background while the partition goes on, one partition after another (so
    /// that only one at a time pauses to take its batch). Returns when all are in the store:
    /// everything acknowledged before the call is then in the checkpoint stores, and the logs
    /// below it are dropped. [`Engine::checkpoint`] is the same written in place.
    pub async fn checkpoint_in_background(&self) -> Result<(), EngineError> {
        self.checkpoint_each(Input::CheckpointInBackground).await
    }

    /// Asks every partition running here for a checkpoint (`ask`), one after another.
    async fn checkpoint_each(
        &self,
        ask: fn(oneshot::Sender<Result<(), EngineError>>) -> Input,
    ) -> Result<(), EngineError> {
        for p in self.shared.slots.running() {
            let (tx, rx) = oneshot::channel();
            self.shared.send(p, ask(tx))?;
            rx.await.map_err(|_| EngineError::ShuttingDown)??;
        }
        Ok(())
    }

    /// Flushes and checkpoints every partition, then stops.
    pub async fn shutdown(self) -> Result<(), EngineError> {
        self.sweeper.abort();
        let mut waits = Vec::new();
        for p in self.shared.slots.running() {
            let (tx, rx) = oneshot::channel();
            if self.shared.send(p, Input::Shutdown(tx)).is_ok() {
                waits.push(rx);
            }
            self.shared.slots.set(p, None);
        }
        for w in waits {
            let _ = w.await;
        }
        let handles: Vec<_> = self.leaders.lock().drain().map(|(_, h)| h).collect();
        for h in handles {
            let _ = h.await;
        }
        if let Some(queue) = &self.shared.remote {
            queue.clear();
        }
        Ok(())
    }
}
