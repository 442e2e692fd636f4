//! Engine settings ([`EngineConfig`]); the README's configuration table lists them with the
//! `cairn serve` flags that set them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// Memory for the checkpoint stores' page caches, in MiB (all partitions).
    pub store_cache_mb: usize,
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
    /// Episodes (or entity batches) a partition dispatches at once per orchestration or entity
    /// name; the rest of a backlog waits in the checkpoint store, not in memory.
    pub dispatch_window: usize,
    /// Activities a partition dispatches at once per activity name; the rest of the queue
    /// waits in the checkpoint store. Larger than `dispatch_window` because an activity in
    /// flight costs far less than an instance, and a fan-out's throughput needs the room.
    pub activity_window: usize,
    /// Armed durable timers a partition holds in memory (the soonest due); the rest wait in
    /// the checkpoint store and are read as these fire.
    pub timer_window: usize,
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
    /// Where the partitions' checkpoint stores live; `None` is local redb files in `data_dir`.
    pub checkpoints: Option<Arc<dyn cairn_storage::seam::CheckpointStores>>,
    /// Where hub-wide settings changed while running (the retention policy) are kept; `None`
    /// is files in `data_dir`. The cluster keeps them in its KV bucket.
    pub settings: Option<Arc<dyn cairn_storage::settings::HubSettings>>,
    /// The wall clock the shell stamps records with; `None` is the system clock.
    pub clock: Option<Arc<dyn crate::clock::Clock>>,
    /// Where new ids come from; `None` is random.
    pub ids: Option<Arc<dyn crate::clock::IdGen>>,
    /// How messages travel between partitions; `None` is in-process channels.
    pub router: Option<Arc<dyn crate::router::Routers>>,
    /// Where client requests for partitions that do not run in this process go. With one,
    /// the engine opens no partition by itself: its owner (a cluster node) opens and closes
    /// them ([`Engine::open_partitions`](crate::Engine::open_partitions)); `None` opens every
    /// partition of the hub.
    pub forwarder: Option<Arc<dyn crate::forward::Forwarder>>,
    /// Write periodic checkpoints on the partition's own task, stalling it meanwhile, instead
    /// of in the background (for comparison only).
    pub checkpoints_in_place: bool,
    /// Decode the rows of status reads, history reads, queries and scans on the partition's
    /// own task, stalling it meanwhile, instead of off it (for comparison only).
    pub reads_on_loop: bool,
    /// How long ended orchestrations are kept (none: forever).
    pub retention: crate::retention::RetentionPolicy,
    /// How often the retention policy is applied.
    pub retention_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("cairn-data"),
            partitions: None,
            instance_cache_mb: 256,
            store_cache_mb: 128,
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
            dispatch_window: 512,
            activity_window: 2048,
            timer_window: 4096,
            max_queued_requests: 10_000,
            logs: None,
            checkpoints: None,
            settings: None,
            clock: None,
            ids: None,
            router: None,
            forwarder: None,
            checkpoints_in_place: false,
            reads_on_loop: false,
            retention: crate::retention::RetentionPolicy::default(),
            retention_interval: Duration::from_secs(60),
        }
    }
}
