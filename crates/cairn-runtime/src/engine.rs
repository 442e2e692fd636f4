//! The engine: opens a task hub (a data directory), recovers its partitions and runs them.
//!
//! Layout of a data directory:
//! ```text
//! cairn-data/
//!   hub.json                 format version + partition count (fixed at creation)
//!   partitions/p00/log/      the partition's segmented log
//!   partitions/p00/store.redb  the partition's checkpoint store
//!   ...
//! ```
//! This module owns configuration, the hub metadata and the wiring between partition leaders;
//! the state machine lives in `cairn-core`, the per-partition shell in [`crate::leader`].

use crate::client::Client;
use crate::error::EngineError;
use crate::leader::{self, Input, LeaderStats};
use crate::registry::Registry;
use crate::remote::RemoteQueue;
use cairn_core::LOG_FORMAT_VERSION;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
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
        }
    }
}

pub const DEFAULT_PARTITIONS: u32 = 12;
pub const MAX_PARTITIONS: u32 = 256;

/// `hub.json`: what a data directory holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HubMeta {
    pub format: String,
    pub format_version: u32,
    pub partitions: u32,
}

fn data_dir_error(dir: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::DataDir {
        dir: dir.display().to_string(),
        reason: reason.into(),
    }
}

/// Takes the data directory for this process: an exclusive lock on its `LOCK` file (released
/// when the returned file is dropped or the process dies, even by `kill -9`), so a second
/// `cairn serve` on the same directory is refused with a message that says so, instead of
/// failing deep inside a partition's store.
fn lock_hub(dir: &Path) -> Result<std::fs::File, EngineError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("LOCK");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| data_dir_error(dir, format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            // Who holds it, for the message another process will print.
            let _ = file.set_len(0).and_then(|_| {
                file.rewind()?;
                write!(file, "{}", std::process::id())
            });
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("another process (pid {holder})")
            };
            Err(data_dir_error(
                dir,
                format!(
                    "{who} is using this task hub: another `cairn serve` (or a program embedding Cairn) \
                     has it open. Stop that process first, or give this one its own --data directory"
                ),
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(data_dir_error(
            dir,
            format!("cannot lock {}: {e}", path.display()),
        )),
    }
}

/// Reads or creates `hub.json` in the existing directory `dir`, checking version and partition
/// count. The flag says whether the hub was created now.
pub fn open_hub(dir: &Path, requested: Option<u32>) -> Result<(HubMeta, bool), EngineError> {
    if let Some(p) = requested {
        if p == 0 || p > MAX_PARTITIONS {
            return Err(EngineError::InvalidArgument(format!(
                "partition count must be between 1 and {MAX_PARTITIONS}, got {p}"
            )));
        }
    }
    let meta_path = dir.join("hub.json");
    match std::fs::read(&meta_path) {
        Ok(bytes) => {
            let meta: HubMeta = serde_json::from_slice(&bytes).map_err(|e| {
                data_dir_error(
                    dir,
                    format!(
                        "hub.json is not valid ({e}); it was not written by Cairn or is damaged"
                    ),
                )
            })?;
            if meta.format != "cairn" {
                return Err(data_dir_error(
                    dir,
                    format!("hub.json says format '{}', not 'cairn'", meta.format),
                ));
            }
            if meta.format_version != LOG_FORMAT_VERSION {
                return Err(data_dir_error(
                    dir,
                    format!(
                        "it was written by format version {} and this Cairn reads version {}; \
                         use the Cairn release that created it, or a new data directory",
                        meta.format_version, LOG_FORMAT_VERSION
                    ),
                ));
            }
            if let Some(p) = requested {
                if p != meta.partitions {
                    return Err(data_dir_error(
                        dir,
                        format!(
                            "the task hub has {} partitions but {p} were requested; the partition count \
                             is fixed when a hub is created: omit --partitions or use a new data directory",
                            meta.partitions
                        ),
                    ));
                }
            }
            Ok((meta, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The lock file is ours; anything else means the directory holds something else.
            let non_empty = std::fs::read_dir(dir)
                .map_err(|e| data_dir_error(dir, e.to_string()))?
                .filter_map(|e| e.ok())
                .any(|e| e.file_name() != "LOCK");
            if non_empty {
                return Err(data_dir_error(
                    dir,
                    "it is not empty and has no hub.json, so it is not a Cairn task hub; choose an empty or new directory",
                ));
            }
            let meta = HubMeta {
                format: "cairn".into(),
                format_version: LOG_FORMAT_VERSION,
                partitions: requested.unwrap_or(DEFAULT_PARTITIONS),
            };
            let text = serde_json::to_vec_pretty(&meta)?;
            let tmp = dir.join("hub.json.tmp");
            std::fs::write(&tmp, text)
                .and_then(|_| std::fs::rename(&tmp, &meta_path))
                .map_err(|e| data_dir_error(dir, format!("cannot write hub.json: {e}")))?;
            Ok((meta, true))
        }
        Err(e) => Err(data_dir_error(dir, format!("cannot read hub.json: {e}"))),
    }
}

/// State shared by the client and all partition leaders.
pub(crate) struct Shared {
    pub config: EngineConfig,
    pub registry: Registry,
    pub partition_count: u32,
    pub partitions: Vec<mpsc::UnboundedSender<Input>>,
    pub orchestration_permits: Arc<Semaphore>,
    pub activity_permits: Arc<Semaphore>,
    pub stats: Vec<Arc<LeaderStats>>,
    pub remote: Option<RemoteQueue>,
}

impl Shared {
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
    /// Held for the engine's life: see [`lock_hub`].
    _lock: std::fs::File,
}

impl Engine {
    /// Opens (or creates) the task hub in `config.data_dir`, recovers every partition from its
    /// checkpoint and log, and starts processing. Must be called inside a multi-threaded Tokio
    /// runtime.
    pub async fn open(config: EngineConfig, registry: Registry) -> Result<Engine, EngineError> {
        let dir = config.data_dir.clone();
        if dir.exists() && !dir.is_dir() {
            return Err(data_dir_error(
                &dir,
                "it is a file, not a directory: --data (CAIRN_DATA) names the directory that holds \
                 the task hub, created if missing",
            ));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| data_dir_error(&dir, format!("cannot create it: {e}")))?;
        let lock = lock_hub(&dir)?;
        let (hub, created) = open_hub(&dir, config.partitions)?;
        let count = hub.partitions;
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..count {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            receivers.push(rx);
        }
        let stats: Vec<Arc<LeaderStats>> = (0..count)
            .map(|_| Arc::new(LeaderStats::default()))
            .collect();
        let config_remote = config.remote_workers;
        let shared = Arc::new(Shared {
            orchestration_permits: Arc::new(Semaphore::new(
                config.max_concurrent_orchestrations.max(1),
            )),
            activity_permits: Arc::new(Semaphore::new(config.max_concurrent_activities.max(1))),
            config,
            registry,
            partition_count: count,
            partitions: senders,
            stats,
            remote: config_remote.then(RemoteQueue::default),
        });
        // Recover partitions in parallel on blocking threads (disk reads), then start leaders.
        let mut recovering = Vec::new();
        for (p, rx) in receivers.into_iter().enumerate() {
            let shared = shared.clone();
            recovering.push(tokio::task::spawn_blocking(move || {
                leader::Leader::recover(p as u32, shared, rx)
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
            created,
            _lock: lock,
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
