//! The partition leader: the shell around one partition's state machine.
//!
//! A leader owns its partition's log, checkpoint store, and in-memory state. It turns inputs
//! (client requests, messages, episode/activity/timer results) into log records, applies them to
//! the pure state machine, appends them with group commit, and performs the effects.
//!
//! ## The speculation rule
//! Records are applied to the in-memory state *before* they are durable, and work that stays
//! inside the partition starts at once: episodes run, activities run, timers are armed. A chain
//! of short steps therefore never waits for an fsync. What **leaves** the partition is held
//! until the log position that caused it is durable:
//! * responses to clients (acknowledgements, status reads, query results, completion waits);
//! * messages to other partitions, and acknowledgements of their messages.
//!
//! If the process dies, everything not yet durable is lost *together with* every consequence
//! that could have been observed: nobody outside saw it. Activities that ran speculatively may
//! run again after recovery (activities are at-least-once); their results are applied once,
//! because a result is keyed by an activity id that exists only once in the recovered state.
//!
//! This module never decides *what* happens to an instance: that is the state machine's job.

use crate::error::EngineError;
use crate::inbox::{Input, Reply};
use crate::registry::ActivityContext;
use crate::remote::{
    ActivityWork, Deliver, EntityWork, OrchestratorWork, RemoteQueue, RemoteWork, Responder,
};
use crate::replay::Cursor;
use crate::router::Envelope;
use crate::shared::Shared;
pub use crate::stats::LeaderStats;
use crate::stats::WorkTicket;
use crate::status::{
    EntityStatus, InstanceStatus, QueryFilter, ReadRequest, ReadResponse, WaitFor,
};
use cairn_core::*;
use cairn_storage::seam::CheckpointStore;
use cairn_storage::seam::PartitionLog;
use cairn_storage::store::CheckpointBatch;
use futures::FutureExt;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

mod checkpoints;
mod commit;
mod dispatch;
mod held;
mod overlay;
mod read_ahead;
mod reads;
mod recovery;
mod timers;
mod waiters;
mod work;

pub use recovery::RecoveryReport;

use commit::oversized_action;
use recovery::StoreSource;
use work::read_history;

/// An effect held back until the log position that caused it is durable.
enum Held {
    Respond(Reply<ClientResponse>, ClientResponse),
    Read(Reply<ReadResponse>, ReadResponse),
    Status(Reply<InstanceStatus>, InstanceStatus),
    Changed(InstanceStatus),
    Send { to: u32 },
    Ack { to: u32, up_to: MessageId },
}

struct Waiter {
    until: WaitFor,
    reply: Reply<InstanceStatus>,
}

/// What a changed instance may cost in memory until it is checkpointed, for sizing the dirty
/// set (heaptrack during `cairn bench large-hub`: ~5 KiB for a short orchestration with its
/// unsaved history; rounded up).
const DIRTY_INSTANCE_BYTES: usize = 8192;
/// What a deleted (purged) instance costs in memory until it is checkpointed: its id in the
/// dirty set and in the state machine's set of deleted ids (rounded up).
const DIRTY_GONE_BYTES: usize = 256;
/// Changed instances a partition may always hold before it checkpoints, however small the
/// cache budget (checkpoints of a handful of instances would cost more than they save).
const MIN_DIRTY_LIMIT: usize = 1000;

pub(crate) struct Leader {
    partition: u32,
    shared: Arc<Shared>,
    /// Its own input, for the work it starts to report back on. Each opening of a partition
    /// has its own: work started by an earlier one reports to a closed queue, not to this.
    me: mpsc::UnboundedSender<Input>,
    rx: mpsc::UnboundedReceiver<Input>,
    /// Client requests (bounded: a full queue answers "busy" to the client).
    inbox: mpsc::Receiver<Input>,
    state: PartitionState,
    /// The checkpoint store as reads see it: with a checkpoint being written in the background
    /// overlaid (see `overlay`).
    store: Arc<dyn CheckpointStore>,
    overlay: Arc<overlay::OverlayStore>,
    /// A checkpoint being written in the background: its position and writer thread.
    writing: Option<(u64, checkpoints::Writer)>,
    /// Asked for a background checkpoint that has not started yet...
    checkpoint_asked: Vec<Reply<()>>,
    /// ...and those the checkpoint being written answers.
    checkpoint_promised: Vec<Reply<()>>,
    /// Shared with the checkpoint writer thread, which makes it durable before writing.
    log: Option<Arc<Box<dyn PartitionLog>>>,
    durable: u64,
    held: VecDeque<(u64, Held)>,
    replies: HashMap<u64, Reply<ClientResponse>>,
    next_request: u64,
    dispatch: dispatch::Dispatch<String>,
    activity_dispatch: dispatch::Dispatch<u64>,
    cursors: HashMap<String, Cursor>,
    /// Episodes handed to remote workers and not answered yet, each with the means to withdraw
    /// it: an instance that ends (terminated, purged) while its episode waits for a worker
    /// frees its place in the queue and in the dispatch window.
    remote_episodes: HashMap<String, oneshot::Sender<()>>,
    timers: timers::TimerWheel,
    waiters: HashMap<String, Vec<Waiter>>,
    sent_up_to: HashMap<u32, MessageId>,
    touched: HashMap<String, u64>,
    tick: u64,
    records_since_checkpoint: u64,
    /// When the last checkpoint was taken (by the engine's clock).
    last_checkpoint: Millis,
    failed: Option<String>,
    /// Reads running off the task (they count against the queue bound, like held answers).
    reads_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Work tasks holding the store (see [`StoreLease`]).
    store_users: Arc<std::sync::atomic::AtomicUsize>,
    stats: Arc<LeaderStats>,
}

impl Leader {
    pub(crate) async fn run(mut self) {
        self.resume();
        let mut shutdown: Option<oneshot::Sender<()>> = None;
        let mut batch: Vec<Input> = Vec::with_capacity(1024);
        loop {
            let next_due = self.timers.next_due();
            let sleep_for = next_due
                .map(|due| due.saturating_sub(self.shared.clock.now_millis()))
                .unwrap_or(1000)
                .min(1000);
            // Client requests are taken only while the answers waiting for durability are
            // fewer than the queue bound: a slow disk then pushes back on clients too, instead
            // of the partition accepting work it cannot yet make durable.
            let room = self.held.len() + self.reads_in_flight.load(Ordering::Relaxed)
                < self.shared.config.max_queued_requests.max(1)
                && !self.checkpoint_behind();
            // The partition's own inputs first: they finish work and free room.
            tokio::select! {
                biased;
                input = self.rx.recv() => match input {
                    Some(i) => batch.push(i),
                    None => break,
                },
                Some(i) = self.inbox.recv(), if room => batch.push(i),
                _ = tokio::time::sleep(std::time::Duration::from_millis(sleep_for)) => {}
            }
            while batch.len() < 4096 {
                match self.rx.try_recv() {
                    Ok(i) => batch.push(i),
                    Err(_) => break,
                }
            }
            while room && batch.len() < 4096 {
                match self.inbox.try_recv() {
                    Ok(i) => batch.push(i),
                    Err(_) => break,
                }
            }
            for input in batch.iter_mut() {
                if let Input::Shutdown(_) = input {
                    if let Input::Shutdown(tx) = std::mem::replace(input, Input::Durable(0)) {
                        shutdown = Some(tx);
                    }
                }
            }
            self.process(std::mem::take(&mut batch));
            self.check_log_failure();
            self.release();
            if shutdown.is_some() {
                break;
            }
            // Changed instances stay in memory until a checkpoint has them: a burst of new
            // instances (a million starts) is checkpointed in slices that fit the cache
            // budget rather than held whole.
            let due = !self.checkpoint_asked.is_empty()
                || self.records_since_checkpoint >= self.shared.config.checkpoint_every_records
                || self.dirty_bytes() >= self.dirty_budget()
                || (self.records_since_checkpoint > 0
                    && self
                        .shared
                        .clock
                        .now_millis()
                        .saturating_sub(self.last_checkpoint)
                        >= self.shared.config.checkpoint_interval.as_millis() as Millis);
            if due && self.failed.is_none() && self.writing.is_none() {
                let r = if self.shared.config.checkpoints_in_place {
                    self.checkpoint()
                } else {
                    self.start_background_checkpoint()
                };
                if let Err(e) = r {
                    self.fail(raw_message(e));
                }
            }
        }
        if self.failed.is_none() {
            if let Err(e) = self.checkpoint() {
                tracing::error!(partition = self.partition, "final checkpoint failed: {e}");
            }
        }
        self.release();
        wait_until_none(self.reads_in_flight.clone()).await;
        wait_until_none(self.store_users.clone()).await;
        // A failed partition may still have its checkpoint writer running, holding the log.
        if let Some((_, checkpoints::Writer::Thread(handle))) = self.writing.take() {
            let _ = crate::blocking::blocking(|| handle.join());
        }
        if let Some(log) = self.log.take() {
            if let Err(e) = crate::blocking::blocking(|| close_log(log)) {
                tracing::error!(partition = self.partition, "closing the log failed: {e}");
            }
        }
        if let Some(tx) = shutdown {
            let _ = tx.send(());
        }
    }

    /// What the changes since the last checkpoint may hold before one is due: the partition's
    /// share of the instance cache, and never less than a thousand changed instances.
    fn dirty_budget(&self) -> usize {
        (self.shared.config.instance_cache_mb * 1024 * 1024 / self.shared.partition_count as usize)
            .max(MIN_DIRTY_LIMIT * DIRTY_INSTANCE_BYTES)
    }

    /// Whether the changes since the last checkpoint have reached twice the budget while the
    /// previous checkpoint is still being written (or waits for a writer slot). The partition
    /// then takes no new client requests until the writer is done and it can take the next
    /// batch: a burst faster than the disk waits in the clients, not in memory. Without it,
    /// nothing bounded the changes of a partition whose writer waits for a slot or a slow disk.
    fn checkpoint_behind(&self) -> bool {
        self.writing.is_some() && self.dirty_bytes() >= 2 * self.dirty_budget()
    }

    /// What the changes since the last checkpoint may hold in memory until it is written: a
    /// changed instance its state and unsaved history, a deleted one little more than its id.
    /// A purge of thousands is thus checkpointed like a few dozen changes, not like thousands
    /// of instances (each checkpoint costs the partition's task a pass over its changes).
    fn dirty_bytes(&self) -> usize {
        let live = self.state.dirty_live_count();
        let gone = self.state.dirty_count().saturating_sub(live);
        live * DIRTY_INSTANCE_BYTES + gone * DIRTY_GONE_BYTES
    }

    /// Copies what the state machine knows (status counts, cache lookups) to the stats.
    fn publish_state_stats(&self) {
        let counts = &self.state.globals().status_counts;
        for (slot, status) in self.stats.status_counts.iter().zip(RuntimeStatus::ALL) {
            slot.store(counts.get(&status).copied().unwrap_or(0), Ordering::Relaxed);
        }
        publish_map(&self.stats.name_counts, &self.state.globals().name_counts);
        publish_map(&self.stats.backlog, &self.state.globals().backlog);
        publish_map(
            &self.stats.activity_backlog,
            &self.state.globals().activity_backlog,
        );
        self.stats
            .dispatched
            .store(self.dispatch.running_count() as u64, Ordering::Relaxed);
        self.stats
            .timers_armed
            .store(self.state.globals().timer_count, Ordering::Relaxed);
        self.stats
            .cached_instances
            .store(self.state.loaded_count() as u64, Ordering::Relaxed);
        let (hits, misses) = self.state.cache_counters();
        self.stats.cache_hits.store(hits, Ordering::Relaxed);
        self.stats.cache_misses.store(misses, Ordering::Relaxed);
    }

    fn log(&self) -> &dyn PartitionLog {
        // The log is only taken at shutdown, after the loop ends.
        self.log
            .as_deref()
            .map(|log| log.as_ref())
            .expect("log is open while the leader runs")
    }

    fn storage_error(&self, message: impl Into<String>) -> EngineError {
        EngineError::Storage {
            partition: self.partition,
            message: message.into(),
        }
    }

    fn process(&mut self, inputs: Vec<Input>) {
        let now = self.shared.clock.now_millis();
        let mut records: Vec<LogRecord> = Vec::new();
        let mut reads = Vec::new();
        let mut waits = Vec::new();
        let mut checkpoints = Vec::new();
        // Ordered, so the records they become are the same on every run.
        let mut acks: BTreeMap<u32, MessageId> = BTreeMap::new();
        let mut episodes_to_retry = Vec::new();
        for input in inputs {
            match input {
                Input::Client { kind, reply } => {
                    if let Some((kind, reply)) = self.read_ahead(kind, reply) {
                        self.log_request(kind, reply, now, &mut records);
                    }
                }
                Input::ReadAhead {
                    evictions,
                    instances,
                    kind,
                    reply,
                } => {
                    self.take_read_ahead(evictions, instances);
                    self.log_request(kind, reply, now, &mut records);
                }
                Input::Read { request, reply } => reads.push((request, reply)),
                Input::Wait {
                    instance_id,
                    until,
                    reply,
                } => waits.push((instance_id, until, reply)),
                Input::Routed(Envelope::Messages { from, batch }) => records.push(LogRecord {
                    timestamp: now,
                    event: PartitionEvent::Messages { from, batch },
                }),
                Input::Routed(Envelope::Ack { from, up_to }) => {
                    let e = acks.entry(from).or_insert(up_to);
                    if up_to > *e {
                        *e = up_to;
                    }
                }
                Input::EpisodeDone {
                    instance_id,
                    result,
                    cursor,
                } => {
                    self.dispatch.finished(&instance_id);
                    self.remote_episodes.remove(&instance_id);
                    // A cursor continues an execution; one that ended (completed, failed or
                    // continued as new) never runs again, so it is not worth keeping.
                    let ended = result.as_ref().is_some_and(|r| {
                        r.actions.iter().any(|a| matches!(a, Action::Complete(_)))
                    });
                    if let Some(c) = cursor.filter(|_| !ended) {
                        if self.shared.config.cache_orchestrators {
                            self.cursors.insert(instance_id.clone(), c);
                        }
                    }
                    match result {
                        Some(r) => records.push(LogRecord {
                            timestamp: now,
                            event: PartitionEvent::EpisodeCompleted(r),
                        }),
                        None => episodes_to_retry.push(instance_id),
                    }
                }
                Input::ActivityDone {
                    activity_id,
                    result,
                } => {
                    self.activity_dispatch.finished(&activity_id);
                    records.push(LogRecord {
                        timestamp: now,
                        event: PartitionEvent::ActivityCompleted {
                            activity_id,
                            result,
                        },
                    })
                }
                Input::EntityDone { entity_id, result } => {
                    self.dispatch.finished(&entity_id);
                    records.push(LogRecord {
                        timestamp: now,
                        event: PartitionEvent::EntityBatchCompleted(result),
                    });
                }
                Input::ReadDone {
                    position,
                    reply,
                    result,
                } => self.answer_read(position, reply, result),
                Input::Durable(lsn) => self.durable = self.durable.max(lsn),
                Input::Checkpoint(reply) => checkpoints.push(reply),
                Input::CheckpointInBackground(reply) => match &self.failed {
                    Some(f) => {
                        let _ = reply.send(Err(self.storage_error(f.clone())));
                    }
                    None => self.checkpoint_asked.push(reply),
                },
                Input::CheckpointWritten { position } => self.checkpoint_written(position),
                Input::Shutdown(_) => {}
            }
        }
        for (to, up_to) in acks {
            records.push(LogRecord {
                timestamp: now,
                event: PartitionEvent::OutboxAck { to, up_to },
            });
        }
        for timer_id in self.due_timers(now) {
            records.push(LogRecord {
                timestamp: now,
                event: PartitionEvent::TimerFired { timer_id },
            });
        }
        if !records.is_empty() && self.failed.is_none() {
            self.commit(records);
        }
        for id in episodes_to_retry {
            self.start_episode(&id);
        }
        self.refill();
        for (request, reply) in reads {
            self.read(request, reply);
        }
        for (instance_id, until, reply) in waits {
            self.register_waiter(instance_id, until, reply);
        }
        for reply in checkpoints {
            let r = self.checkpoint();
            if self.failed.is_none() {
                match &r {
                    Err(EngineError::Storage { message, .. }) => self.fail(message.clone()),
                    Err(e) => self.fail(e.to_string()),
                    Ok(()) => {}
                }
            }
            let _ = reply.send(r);
        }
    }

    /// Queues a client request as a record of this batch (or fails it, on a failed partition).
    fn log_request(
        &mut self,
        kind: ClientRequestKind,
        reply: Reply<ClientResponse>,
        now: Millis,
        records: &mut Vec<LogRecord>,
    ) {
        if let Some(f) = &self.failed {
            let _ = reply.send(Err(self.storage_error(f.clone())));
            return;
        }
        let request_id = self.next_request;
        self.next_request += 1;
        self.replies.insert(request_id, reply);
        records.push(LogRecord {
            timestamp: now,
            event: PartitionEvent::Client(ClientRequest { request_id, kind }),
        });
    }

    fn check_log_failure(&mut self) {
        if self.failed.is_none() {
            if let Some(f) = self.log.as_ref().and_then(|l| l.failure()) {
                self.fail(format!("the log cannot be written: {f}"));
            }
        }
    }

    /// Stops accepting writes: answers everything waiting with the error.
    fn fail(&mut self, message: String) {
        let message = if message.contains("another owner took over") {
            format!(
                "{message}. The partition stopped accepting writes on this node: another node \
                 serves it now, with everything acknowledged here"
            )
        } else {
            format!(
                "{message}. The partition stopped accepting writes; acknowledged work is safe in \
                 the log and the last checkpoint: fix the cause (e.g. free disk space) and \
                 restart Cairn"
            )
        };
        tracing::error!(partition = self.partition, "{message}");
        *self.stats.failure.lock() = Some(message.clone());
        self.failed = Some(message.clone());
        for (_, held) in self.held.drain(..) {
            let err = EngineError::Storage {
                partition: self.partition,
                message: message.clone(),
            };
            match held {
                Held::Respond(reply, _) => {
                    let _ = reply.send(Err(err));
                }
                Held::Read(reply, _) => {
                    let _ = reply.send(Err(err));
                }
                Held::Status(reply, _) => {
                    let _ = reply.send(Err(err));
                }
                _ => {}
            }
        }
        for (_, reply) in self.replies.drain() {
            let _ = reply.send(Err(EngineError::Storage {
                partition: self.partition,
                message: message.clone(),
            }));
        }
        for reply in self
            .checkpoint_asked
            .drain(..)
            .chain(self.checkpoint_promised.drain(..))
        {
            let _ = reply.send(Err(EngineError::Storage {
                partition: self.partition,
                message: message.clone(),
            }));
        }
    }
}

/// Replaces a published map if it changed (readers hold the old one as long as they like).
fn publish_map(slot: &parking_lot::Mutex<Arc<BTreeMap<String, u64>>>, map: &BTreeMap<String, u64>) {
    let mut published = slot.lock();
    if **published != *map {
        *published = Arc::new(map.clone());
    }
}

/// One task counted in `in_flight` (a read off the partition's task, an episode holding the
/// store) until the guard is dropped; the leader waits for the count to reach zero
/// ([`wait_until_none`]) before it closes the store.
pub(super) struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    pub(super) fn enter(in_flight: &Arc<std::sync::atomic::AtomicUsize>) -> InFlight {
        in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The store as a task off the partition's holds it (an episode reading its history): counted,
/// so that a leader shutting down waits until no task holds the store. Tasks spawned just
/// before a shutdown may not have run yet; without this, one of them would keep the store open
/// after the engine shut down, and a reopen in the same process would find it locked.
pub(super) struct StoreLease {
    // Declared first, so dropped first: when the count goes down, the store is let go.
    pub(super) store: Arc<dyn CheckpointStore>,
    _counted: InFlight,
}

impl StoreLease {
    pub(super) fn new(
        store: Arc<dyn CheckpointStore>,
        users: &Arc<std::sync::atomic::AtomicUsize>,
    ) -> StoreLease {
        StoreLease {
            store,
            _counted: InFlight::enter(users),
        }
    }
}

/// Lets tasks counted by `in_flight` (reads holding snapshots of the store, episodes holding
/// the store) finish before the store closes.
async fn wait_until_none(in_flight: Arc<std::sync::atomic::AtomicUsize>) {
    while in_flight.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Closes a partition's log once nothing else holds it (the leader has joined its checkpoint
/// writer before).
fn close_log(log: Arc<Box<dyn PartitionLog>>) -> Result<(), cairn_storage::LogError> {
    match Arc::try_unwrap(log) {
        Ok(log) => log.close(),
        // Unreachable by construction; dropping it still hands buffered records to the OS.
        Err(_) => Err(cairn_storage::LogError::Failed(
            "the log is still in use by a checkpoint writer".into(),
        )),
    }
}

/// The message of a storage error without the "storage failure in partition N" prefix, which
/// the error reported to clients adds again.
fn raw_message(e: EngineError) -> String {
    match e {
        EngineError::Storage { message, .. } => message,
        other => other.to_string(),
    }
}
