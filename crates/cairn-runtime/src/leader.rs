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

use crate::client::{
    EntityStatus, InstanceStatus, QueryFilter, ReadRequest, ReadResponse, WaitFor,
};
use crate::engine::{RecoveryReport, Shared};
use crate::error::EngineError;
use crate::registry::ActivityContext;
use crate::remote::{ActivityWork, EntityWork, OrchestratorWork, RemoteQueue, RemoteWork};
use crate::replay::Cursor;
pub use crate::stats::LeaderStats;
use crate::stats::WorkTicket;
use cairn_core::*;
use cairn_storage::seam::PartitionLog;
use cairn_storage::store::{CheckpointBatch, PartitionStore};
use futures::FutureExt;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// Everything a leader reacts to.
pub(crate) enum Input {
    Client {
        kind: ClientRequestKind,
        reply: Reply<ClientResponse>,
    },
    Read {
        request: ReadRequest,
        reply: Reply<ReadResponse>,
    },
    Wait {
        instance_id: String,
        until: WaitFor,
        reply: Reply<InstanceStatus>,
    },
    Messages {
        from: u32,
        batch: Vec<(MessageId, Message)>,
    },
    Ack {
        from: u32,
        up_to: MessageId,
    },
    EpisodeDone {
        instance_id: String,
        result: Option<EpisodeResult>,
        cursor: Option<Cursor>,
    },
    ActivityDone {
        activity_id: u64,
        result: TaskResult,
    },
    EntityDone {
        entity_id: String,
        result: EntityBatchResult,
    },
    Durable(u64),
    Checkpoint(Reply<()>),
    Shutdown(oneshot::Sender<()>),
}

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

/// The checkpoint store seen as the state machine's instance source.
struct StoreSource<'a>(&'a PartitionStore);

impl InstanceSource for StoreSource<'_> {
    fn load(&self, id: &str) -> Result<Option<InstanceState>, SourceError> {
        match self.0.get_instance(id) {
            Ok(Some(bytes)) => InstanceState::decode(&bytes).map(Some).map_err(|e| {
                SourceError(format!(
                    "instance '{id}' in the checkpoint store is unreadable: {e}"
                ))
            }),
            Ok(None) => Ok(None),
            Err(e) => Err(SourceError(e.to_string())),
        }
    }

    fn load_history(&self, id: &str) -> Result<Vec<HistoryEvent>, SourceError> {
        let rows = self
            .0
            .read_history(id)
            .map_err(|e| SourceError(e.to_string()))?;
        rows.iter()
            .map(|row| {
                cairn_core::partition::decode_history_event(row).map_err(|e| {
                    SourceError(format!(
                        "history of instance '{id}' in the checkpoint store is unreadable: {e}"
                    ))
                })
            })
            .collect()
    }
}

pub(crate) fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// A fresh 32-hex-digit execution id.
pub(crate) fn new_execution_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

pub(crate) struct Leader {
    partition: u32,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Input>,
    /// Client requests (bounded: a full queue answers "busy" to the client).
    inbox: mpsc::Receiver<Input>,
    state: PartitionState,
    store: Arc<PartitionStore>,
    log: Option<Box<dyn PartitionLog>>,
    durable: u64,
    held: VecDeque<(u64, Held)>,
    replies: HashMap<u64, Reply<ClientResponse>>,
    next_request: u64,
    running: HashSet<String>,
    cursors: HashMap<String, Cursor>,
    timers: BTreeSet<(Millis, u64)>,
    waiters: HashMap<String, Vec<Waiter>>,
    sent_up_to: HashMap<u32, MessageId>,
    touched: HashMap<String, u64>,
    tick: u64,
    records_since_checkpoint: u64,
    last_checkpoint: Instant,
    failed: Option<String>,
    stats: Arc<LeaderStats>,
}

impl Leader {
    /// Loads the last checkpoint and replays the log after it. Blocking (disk reads).
    pub(crate) fn recover(
        partition: u32,
        shared: Arc<Shared>,
        rx: mpsc::UnboundedReceiver<Input>,
        inbox: mpsc::Receiver<Input>,
    ) -> Result<(Leader, RecoveryReport), EngineError> {
        let storage_err = |message: String| EngineError::Storage { partition, message };
        let dir = crate::hub::partition_dir(&shared.config.data_dir, partition);
        std::fs::create_dir_all(&dir)
            .map_err(|e| storage_err(format!("cannot create {}: {e}", dir.display())))?;
        let store = Arc::new(
            PartitionStore::open(&dir.join("store.redb"))
                .map_err(|e| storage_err(e.to_string()))?,
        );
        let checkpoint = store
            .checkpoint_position()
            .map_err(|e| storage_err(e.to_string()))?;
        let mut state = match store
            .load_globals()
            .map_err(|e| storage_err(e.to_string()))?
        {
            Some(bytes) => PartitionState::recover(&bytes)
                .map_err(|e| storage_err(format!("checkpoint globals are unreadable: {e}")))?,
            None => PartitionState::new(partition, shared.partition_count),
        };
        let tx = shared.partitions[partition as usize].clone();
        let opened = shared
            .logs
            .open(
                partition,
                checkpoint + 1,
                Box::new(move |lsn| {
                    let _ = tx.send(Input::Durable(lsn));
                }),
            )
            .map_err(|e| storage_err(e.to_string()))?;
        let torn_tail_bytes = opened.torn_tail_bytes;
        let log = opened.log;
        let mut replayed = 0u64;
        {
            let source = StoreSource(&store);
            let records = log
                .read_from(checkpoint + 1)
                .map_err(|e| storage_err(e.to_string()))?;
            for (lsn, bytes) in records {
                let record = LogRecord::decode(&bytes).map_err(|e| {
                    storage_err(format!(
                        "log record {lsn} cannot be decoded ({e}); it was written by another Cairn version or is damaged"
                    ))
                })?;
                state
                    .apply(lsn, &record, &source)
                    .map_err(|e| storage_err(e.to_string()))?;
                replayed += 1;
            }
        }
        let durable = log.next_position() - 1;
        let stats = shared.stats[partition as usize].clone();
        let g = state.globals();
        let report = RecoveryReport {
            partition,
            checkpoint_position: checkpoint,
            replayed_records: replayed,
            runnable: g.runnable.len(),
            activities: g.activities.len(),
            timers: g.timers.len(),
            torn_tail_bytes,
        };
        let leader = Leader {
            partition,
            shared,
            rx,
            inbox,
            state,
            store,
            log: Some(log),
            durable,
            held: VecDeque::new(),
            replies: HashMap::new(),
            next_request: 1,
            running: HashSet::new(),
            cursors: HashMap::new(),
            timers: BTreeSet::new(),
            waiters: HashMap::new(),
            sent_up_to: HashMap::new(),
            touched: HashMap::new(),
            tick: 0,
            records_since_checkpoint: replayed,
            last_checkpoint: Instant::now(),
            failed: None,
            stats,
        };
        Ok((leader, report))
    }

    /// Stops the log writer of a leader that will never run (another partition failed to open).
    pub(crate) fn abandon(mut self) {
        if let Some(log) = self.log.take() {
            let _ = log.close();
        }
    }

    /// Restarts the work the recovered state says is outstanding.
    fn resume(&mut self) {
        // Counts are known from the checkpoint; an idle partition must not read as empty.
        self.publish_state_stats();
        let g = self.state.globals();
        let runnable: Vec<String> = g.runnable.iter().cloned().collect();
        let activities: Vec<u64> = g.activities.keys().copied().collect();
        let timers: Vec<(Millis, u64)> = g.timers.iter().map(|(id, t)| (t.due, *id)).collect();
        let destinations = self.state.outbox_destinations();
        for id in runnable {
            self.start_episode(&id);
        }
        for a in activities {
            self.start_activity(a);
        }
        self.timers.extend(timers);
        for to in destinations {
            self.send_outbox(to);
        }
    }

    pub(crate) async fn run(mut self) {
        self.resume();
        let mut shutdown: Option<oneshot::Sender<()>> = None;
        let mut batch: Vec<Input> = Vec::with_capacity(1024);
        loop {
            let next_due = self.timers.first().map(|(due, _)| *due);
            let sleep_for = next_due
                .map(|due| due.saturating_sub(now_millis()))
                .unwrap_or(1000)
                .min(1000);
            // The partition's own inputs first: they finish work and free room.
            tokio::select! {
                biased;
                input = self.rx.recv() => match input {
                    Some(i) => batch.push(i),
                    None => break,
                },
                Some(i) = self.inbox.recv() => batch.push(i),
                _ = tokio::time::sleep(std::time::Duration::from_millis(sleep_for)) => {}
            }
            while batch.len() < 4096 {
                match self.rx.try_recv() {
                    Ok(i) => batch.push(i),
                    Err(_) => break,
                }
            }
            while batch.len() < 4096 {
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
            let due = self.records_since_checkpoint >= self.shared.config.checkpoint_every_records
                || (self.records_since_checkpoint > 0
                    && self.last_checkpoint.elapsed() >= self.shared.config.checkpoint_interval);
            if due && self.failed.is_none() {
                if let Err(e) = self.checkpoint() {
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
        if let Some(log) = self.log.take() {
            if let Err(e) = tokio::task::block_in_place(|| log.close()) {
                tracing::error!(partition = self.partition, "closing the log failed: {e}");
            }
        }
        if let Some(tx) = shutdown {
            let _ = tx.send(());
        }
    }

    /// Copies what the state machine knows (status counts, cache lookups) to the stats.
    fn publish_state_stats(&self) {
        let counts = &self.state.globals().status_counts;
        for (slot, status) in self.stats.status_counts.iter().zip(RuntimeStatus::ALL) {
            slot.store(counts.get(&status).copied().unwrap_or(0), Ordering::Relaxed);
        }
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
            .expect("log is open while the leader runs")
    }

    fn storage_error(&self, message: impl Into<String>) -> EngineError {
        EngineError::Storage {
            partition: self.partition,
            message: message.into(),
        }
    }

    fn process(&mut self, inputs: Vec<Input>) {
        let now = now_millis();
        let mut records: Vec<LogRecord> = Vec::new();
        let mut reads = Vec::new();
        let mut waits = Vec::new();
        let mut checkpoints = Vec::new();
        let mut acks: HashMap<u32, MessageId> = HashMap::new();
        let mut episodes_to_retry = Vec::new();
        for input in inputs {
            match input {
                Input::Client { kind, reply } => {
                    if let Some(f) = &self.failed {
                        let _ = reply.send(Err(self.storage_error(f.clone())));
                        continue;
                    }
                    let request_id = self.next_request;
                    self.next_request += 1;
                    self.replies.insert(request_id, reply);
                    records.push(LogRecord {
                        timestamp: now,
                        event: PartitionEvent::Client(ClientRequest { request_id, kind }),
                    });
                }
                Input::Read { request, reply } => reads.push((request, reply)),
                Input::Wait {
                    instance_id,
                    until,
                    reply,
                } => waits.push((instance_id, until, reply)),
                Input::Messages { from, batch } => records.push(LogRecord {
                    timestamp: now,
                    event: PartitionEvent::Messages { from, batch },
                }),
                Input::Ack { from, up_to } => {
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
                    self.running.remove(&instance_id);
                    if let Some(c) = cursor {
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
                } => records.push(LogRecord {
                    timestamp: now,
                    event: PartitionEvent::ActivityCompleted {
                        activity_id,
                        result,
                    },
                }),
                Input::EntityDone { entity_id, result } => {
                    self.running.remove(&entity_id);
                    records.push(LogRecord {
                        timestamp: now,
                        event: PartitionEvent::EntityBatchCompleted(result),
                    });
                }
                Input::Durable(lsn) => self.durable = self.durable.max(lsn),
                Input::Checkpoint(reply) => checkpoints.push(reply),
                Input::Shutdown(_) => {}
            }
        }
        for (to, up_to) in acks {
            records.push(LogRecord {
                timestamp: now,
                event: PartitionEvent::OutboxAck { to, up_to },
            });
        }
        while let Some(&(due, timer_id)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            if self.state.timer(timer_id).is_some() {
                records.push(LogRecord {
                    timestamp: now,
                    event: PartitionEvent::TimerFired { timer_id },
                });
            }
        }
        if !records.is_empty() && self.failed.is_none() {
            self.commit(records);
        }
        for id in episodes_to_retry {
            self.start_episode(&id);
        }
        for (request, reply) in reads {
            let result = self.read(request);
            match result {
                Ok(r) => self.hold(Held::Read(reply, r)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
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

    /// Applies records to the state machine, appends them to the log, performs effects.
    fn commit(&mut self, records: Vec<LogRecord>) {
        let base = self.log().next_position();
        // Every record is encoded before any is applied or appended: an encoding failure stops
        // the partition with nothing written (never an empty or partial record in the log).
        let mut payloads = Vec::with_capacity(records.len());
        for record in &records {
            match record.encode() {
                Ok(bytes) => payloads.push(bytes),
                Err(e) => {
                    self.fail(format!("{e}; nothing of this batch was applied or written"));
                    return;
                }
            }
        }
        let mut effects = Vec::new();
        let store = self.store.clone();
        let source = StoreSource(&store);
        for (i, record) in records.iter().enumerate() {
            let position = base + i as u64;
            match self.state.apply(position, record, &source) {
                Ok(e) => effects.push((position, e)),
                Err(e) => {
                    self.fail(format!("applying record {position} failed: {e}"));
                    return;
                }
            }
        }
        let count = payloads.len() as u64;
        if let Err(e) = self.log().append(base, payloads) {
            self.fail(format!("appending to the log failed: {e}"));
            return;
        }
        self.records_since_checkpoint += count;
        self.stats.records.fetch_add(count, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.publish_state_stats();
        // Effects run after the whole batch is applied, so snapshots taken for waiters reflect the
        // batch's last position: hold them until that position is durable.
        let last = base + count - 1;
        for (position, effects) in effects {
            for effect in effects {
                self.effect(position, last, effect);
            }
        }
    }

    fn effect(&mut self, position: u64, batch_end: u64, effect: Effect) {
        match effect {
            Effect::RunEpisode(id) => self.start_episode(&id),
            Effect::StartActivity(a) => self.start_activity(a),
            Effect::ScheduleTimer { timer_id, due } => {
                self.timers.insert((due, timer_id));
            }
            Effect::SendMessages { to } => self.held.push_back((position, Held::Send { to })),
            Effect::AckMessages { to, up_to } => {
                self.held.push_back((position, Held::Ack { to, up_to }))
            }
            Effect::Respond {
                request_id,
                response,
            } => {
                if let Some(reply) = self.replies.remove(&request_id) {
                    self.held
                        .push_back((position, Held::Respond(reply, response)));
                }
            }
            Effect::InstanceChanged(id) => {
                if self.waiters.contains_key(&id) {
                    if let Some(status) = self.snapshot(&id, false) {
                        self.held.push_back((batch_end, Held::Changed(status)));
                    }
                }
            }
        }
    }

    /// Holds an answer until everything applied so far is durable.
    fn hold(&mut self, held: Held) {
        let position = self.state.position();
        self.held.push_back((position, held));
    }

    /// Releases held effects whose position is durable.
    fn release(&mut self) {
        while let Some((position, _)) = self.held.front() {
            if *position > self.durable {
                break;
            }
            let Some((_, held)) = self.held.pop_front() else {
                break;
            };
            match held {
                Held::Respond(reply, response) => {
                    let _ = reply.send(Ok(response));
                }
                Held::Read(reply, response) => {
                    let _ = reply.send(Ok(response));
                }
                Held::Status(reply, status) => {
                    let _ = reply.send(Ok(status));
                }
                Held::Changed(status) => self.notify_waiters(status),
                Held::Send { to } => self.send_outbox(to),
                Held::Ack { to, up_to } => {
                    let _ = self.shared.send(
                        to,
                        Input::Ack {
                            from: self.partition,
                            up_to,
                        },
                    );
                }
            }
        }
    }

    /// Sends durable, not-yet-sent outbox messages to partition `to`.
    fn send_outbox(&mut self, to: u32) {
        let after = self.sent_up_to.get(&to).copied();
        let durable = self.durable;
        let batch: Vec<(MessageId, Message)> = self
            .state
            .outbox(to)
            .filter(|(id, _)| after.is_none_or(|a| *id > a) && id.position <= durable)
            .cloned()
            .collect();
        if let Some((last, _)) = batch.last() {
            self.sent_up_to.insert(to, *last);
            let _ = self.shared.send(
                to,
                Input::Messages {
                    from: self.partition,
                    batch,
                },
            );
        }
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
        let message = format!(
            "{message}. The partition stopped accepting writes; acknowledged work is safe in the log \
             and the last checkpoint: fix the cause (e.g. free disk space) and restart Cairn"
        );
        tracing::error!(partition = self.partition, "{message}");
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
    }

    fn start_episode(&mut self, id: &str) {
        if self.running.contains(id) || self.failed.is_some() {
            return;
        }
        if !self.state.globals().runnable.contains(id) {
            return;
        }
        let store = self.store.clone();
        let inst = match self.state.get(id, &StoreSource(&store)) {
            Ok(Some(i)) => i,
            Ok(None) => return,
            Err(e) => {
                self.fail(e.to_string());
                return;
            }
        };
        if let Some(entity) = &inst.state.entity {
            let name = inst.state.name.clone();
            let state = entity.state.clone();
            let ops: Vec<EntityOperation> =
                entity.eligible(self.shared.config.max_entity_batch.max(1));
            self.running.insert(id.to_string());
            self.stats.episodes.fetch_add(1, Ordering::Relaxed);
            let shared = self.shared.clone();
            let tx = self.shared.partitions[self.partition as usize].clone();
            let entity_id = id.to_string();
            let ticket = self.stats.entity_queue.enter();
            tokio::spawn(async move {
                let local = shared.registry.get_entity(&name);
                // Permits bound the work this process runs; remote work is bounded by the
                // workers' own concurrency limits, and must not hold permits while it waits for
                // a worker (work no connected worker runs would starve everything else).
                let _permit = match local {
                    Some(_) => Some(shared.orchestration_permits.clone().acquire_owned().await),
                    None => None,
                };
                // Local work starts now; remote work waits on until a worker takes it.
                let ticket = (local.is_none() && shared.remote.is_some()).then_some(ticket);
                let out = match local {
                    Some(run) => run(&entity_id, state, &ops),
                    None if shared.remote.is_some() => {
                        let (reply, answer) = oneshot::channel();
                        if let Some(queue) = &shared.remote {
                            queue.push(
                                RemoteWork::Entity(EntityWork {
                                    entity_id: entity_id.clone(),
                                    name: name.clone(),
                                    state,
                                    operations: ops.clone(),
                                    reply,
                                }),
                                ticket,
                            );
                        }
                        match answer.await {
                            Ok(out) => crate::entity::BatchOutput {
                                state: out.state,
                                results: out.results,
                                actions: out.actions,
                            },
                            Err(_) => {
                                let _ = tx.send(Input::EpisodeDone {
                                    instance_id: entity_id,
                                    result: None,
                                    cursor: None,
                                });
                                return;
                            }
                        }
                    }
                    None => {
                        let f = shared.registry.entity_not_found(&name);
                        crate::entity::BatchOutput {
                            state,
                            results: ops.iter().map(|_| Err(f.clone())).collect(),
                            actions: Vec::new(),
                        }
                    }
                };
                let result = EntityBatchResult {
                    entity_id: entity_id.clone(),
                    processed: ops.iter().map(|op| op.request_id.clone()).collect(),
                    state: out.state,
                    results: out.results,
                    actions: out.actions,
                };
                let _ = tx.send(Input::EntityDone { entity_id, result });
            });
            return;
        }
        let s = &inst.state;
        let execution_id = s.execution_id.clone();
        let name = s.name.clone();
        let version = s.version.clone();
        let history_len = s.history_len;
        let persisted = inst.persisted_len();
        let new_events = s.pending.clone();
        // Orchestrations not registered here run on remote workers (when a front serves them):
        // they always get the full history, as the Durable Task protocol expects.
        let remote = match self.shared.registry.get_orchestration(&name) {
            Some(_) => None,
            None => self.shared.remote.clone(),
        };
        // A rewind rewrites history: a live orchestrator would be out of step with it.
        let rewound = new_events
            .iter()
            .any(|e| matches!(e.kind, EventKind::ExecutionRewound { .. }));
        let cursor = self.cursors.remove(id).filter(|c| {
            remote.is_none()
                && !rewound
                && c.execution_id == execution_id
                && c.history_len == history_len
        });
        // The history is only needed to rebuild a cursor; a cached cursor continues without it.
        let tail = if cursor.is_none() {
            inst.tail.clone()
        } else {
            Vec::new()
        };
        self.running.insert(id.to_string());
        self.tick += 1;
        self.touched.insert(id.to_string(), self.tick);
        if cursor.is_none() {
            self.stats.replays.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.episodes.fetch_add(1, Ordering::Relaxed);
        let work = EpisodeWork {
            shared: self.shared.clone(),
            store,
            tx: self.shared.partitions[self.partition as usize].clone(),
            instance_id: id.to_string(),
            execution_id,
            name,
            version,
            history_len,
            persisted,
            tail,
            new_events,
        };
        let ticket = self.stats.orchestrator_queue.enter();
        tokio::spawn(work.run(cursor, remote, ticket));
    }

    fn start_activity(&mut self, activity_id: u64) {
        let Some(item) = self.state.activity(activity_id).cloned() else {
            return;
        };
        self.stats.activities.fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.clone();
        let tx = self.shared.partitions[self.partition as usize].clone();
        let ticket = self.stats.activity_queue.enter();
        tokio::spawn(async move {
            let local = shared.registry.get_activity(&item.name);
            // Only local work takes a permit (see the entity case above).
            let _permit = match local {
                Some(_) => Some(shared.activity_permits.clone().acquire_owned().await),
                None => None,
            };
            // Local work starts now; remote work waits on until a worker takes it.
            let ticket = (local.is_none() && shared.remote.is_some()).then_some(ticket);
            let result = match local {
                None if shared.remote.is_some() => {
                    let (reply, answer) = oneshot::channel();
                    if let Some(queue) = &shared.remote {
                        queue.push(
                            RemoteWork::Activity(ActivityWork {
                                instance_id: item.instance_id.clone(),
                                execution_id: item.execution_id.clone(),
                                name: item.name.clone(),
                                version: item.version.clone(),
                                task_id: item.task_id,
                                input: item.input.clone(),
                                reply,
                            }),
                            ticket,
                        );
                    }
                    match answer.await {
                        Ok(r) => r,
                        // The queue dropped it (shutdown): recovery will run it again.
                        Err(_) => return,
                    }
                }
                None => Err(shared.registry.activity_not_found(&item.name)),
                Some(f) => {
                    let ctx = ActivityContext {
                        instance_id: item.instance_id.clone(),
                        name: item.name.clone(),
                        task_id: item.task_id,
                    };
                    match AssertUnwindSafe(f(ctx, item.input.clone()))
                        .catch_unwind()
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(FailureDetails::new(
                            "Panic",
                            format!("activity '{}' panicked", item.name),
                        )),
                    }
                }
            };
            let limit = shared.config.max_payload_bytes;
            let result = match result {
                Ok(Some(s)) if s.len() > limit => Err(FailureDetails::new(
                    "PayloadTooLarge",
                    format!(
                        "activity '{}' returned {} bytes; the limit is {limit} bytes (max_payload_bytes)",
                        item.name,
                        s.len()
                    ),
                )
                .non_retriable()),
                r => r,
            };
            let _ = tx.send(Input::ActivityDone {
                activity_id,
                result,
            });
        });
    }

    /// A status snapshot of an instance as the state machine sees it now.
    fn snapshot(&mut self, id: &str, with_history: bool) -> Option<InstanceStatus> {
        let store = self.store.clone();
        let inst = self.state.get(id, &StoreSource(&store)).ok()??;
        let mut status = InstanceStatus::from_state(&inst.state);
        if with_history {
            status.history = read_history(&store, id, inst.persisted_len(), inst.tail.clone());
        }
        Some(status)
    }

    fn read(&mut self, request: ReadRequest) -> Result<ReadResponse, EngineError> {
        match request {
            ReadRequest::Status {
                instance_id,
                with_history,
            } => {
                let found = self.snapshot(&instance_id, with_history);
                self.tick += 1;
                if found.is_some() {
                    self.touched.insert(instance_id, self.tick);
                }
                Ok(ReadResponse::Status(found.map(Box::new)))
            }
            ReadRequest::Query {
                filter,
                after,
                limit,
            } => self.query(&filter, after.as_deref(), limit),
            ReadRequest::Entities {
                prefix,
                after,
                limit,
                include_state,
            } => {
                let page = self.scan(Some(&prefix), after.as_deref(), limit, |s| {
                    EntityStatus::from_state(s).map(|mut e| {
                        if !include_state {
                            e.state = None;
                        }
                        e
                    })
                })?;
                Ok(ReadResponse::Entities(
                    page.into_iter().map(|(_, e)| e).collect(),
                ))
            }
            ReadRequest::Entity { entity_id } => {
                let store = self.store.clone();
                let partition = self.partition;
                let inst = self
                    .state
                    .get(&entity_id, &StoreSource(&store))
                    .map_err(|e| EngineError::Storage {
                        partition,
                        message: e.to_string(),
                    })?;
                Ok(ReadResponse::Entity(
                    inst.and_then(|i| EntityStatus::from_state(&i.state)),
                ))
            }
        }
    }

    fn query(
        &mut self,
        filter: &QueryFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ReadResponse, EngineError> {
        let page = self.scan(filter.instance_id_prefix.as_deref(), after, limit, |s| {
            filter.matches(s).then(|| InstanceStatus::from_state(s))
        })?;
        Ok(ReadResponse::Page(
            page.into_iter().map(|(_, s)| s).collect(),
        ))
    }

    /// Instances (store overlaid with memory) with ids after `after` and starting with
    /// `prefix`, that `select` keeps, ordered by id; at most `limit`.
    fn scan<T>(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: usize,
        select: impl Fn(&InstanceState) -> Option<T>,
    ) -> Result<Vec<(String, T)>, EngineError> {
        let mut found: Vec<(String, T)> = Vec::new();
        let state = &self.state;
        let mut scan_error = None;
        let mut visit = |id: &str, bytes: &[u8]| -> bool {
            if state.is_resident(id) {
                return true; // memory has the current version
            }
            match InstanceState::decode(bytes) {
                Ok(s) => {
                    if let Some(t) = select(&s) {
                        found.push((id.to_string(), t));
                    }
                }
                Err(e) => {
                    scan_error = Some(format!("instance '{id}' in the store is unreadable: {e}"));
                    return false;
                }
            }
            found.len() < limit
        };
        self.store
            .scan_instances(after, prefix, &mut visit)
            .map_err(|e| self.storage_error(e.to_string()))?;
        if let Some(e) = scan_error {
            return Err(self.storage_error(e));
        }
        for id in self.state.loaded_ids() {
            if after.is_some_and(|a| id.as_str() <= a) || prefix.is_some_and(|p| !id.starts_with(p))
            {
                continue;
            }
            if let Some(t) = self.state.loaded(id).and_then(|inst| select(&inst.state)) {
                found.push((id.clone(), t));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.truncate(limit);
        Ok(found)
    }

    fn register_waiter(
        &mut self,
        instance_id: String,
        until: WaitFor,
        reply: Reply<InstanceStatus>,
    ) {
        if let Some(status) = self.snapshot(&instance_id, false) {
            if until.satisfied_by(status.status) {
                self.hold(Held::Status(reply, status));
                return;
            }
        }
        self.waiters
            .entry(instance_id)
            .or_default()
            .push(Waiter { until, reply });
    }

    fn notify_waiters(&mut self, status: InstanceStatus) {
        let Some(list) = self.waiters.remove(&status.instance_id) else {
            return;
        };
        let mut keep = Vec::new();
        for w in list {
            if w.reply.is_closed() {
                continue;
            }
            if w.until.satisfied_by(status.status) {
                let _ = w.reply.send(Ok(status.clone()));
            } else {
                keep.push(w);
            }
        }
        if !keep.is_empty() {
            self.waiters.insert(status.instance_id.clone(), keep);
        }
    }

    /// Writes everything changed since the last checkpoint to the store, then truncates the
    /// log segments the checkpoint covers and trims the instance cache.
    fn checkpoint(&mut self) -> Result<(), EngineError> {
        if let Some(f) = &self.failed {
            return Err(self.storage_error(f.clone()));
        }
        let log = self.log.as_ref().ok_or(EngineError::ShuttingDown)?;
        let durable = tokio::task::block_in_place(|| log.flush())
            .map_err(|e| self.storage_error(e.to_string()))?;
        self.durable = self.durable.max(durable);
        let data = self
            .state
            .checkpoint()
            .map_err(|e| self.storage_error(e.to_string()))?;
        let position = data.position;
        let batch = CheckpointBatch {
            position,
            globals: data.globals,
            instance_puts: data.puts,
            instance_deletes: data.deletes,
            history_truncates: data.history_resets,
            history_appends: data.history_appends,
        };
        tokio::task::block_in_place(|| self.store.write_checkpoint(&batch))
            .map_err(|e| self.storage_error(e.to_string()))?;
        if let Some(log) = self.log.as_ref() {
            if let Err(e) = tokio::task::block_in_place(|| log.truncate_below(position + 1)) {
                tracing::warn!(
                    partition = self.partition,
                    "log truncation failed (will retry next checkpoint): {e}"
                );
            }
        }
        self.records_since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.trim_cache();
        Ok(())
    }

    /// Evicts least recently used clean instances (and their cursors) beyond the cache budget.
    fn trim_cache(&mut self) {
        let budget = self.shared.config.instance_cache_mb * 1024 * 1024
            / self.shared.partition_count as usize;
        let ids: Vec<String> = self.state.loaded_ids().cloned().collect();
        let mut total = 0usize;
        let mut candidates = Vec::new();
        for id in ids {
            let size = self.state.footprint(&id)
                + if self.cursors.contains_key(&id) {
                    4096
                } else {
                    0
                };
            total += size;
            let busy = self.running.contains(&id)
                || self.state.globals().runnable.contains(&id)
                || self.state.is_dirty(&id);
            if !busy {
                candidates.push((self.touched.get(&id).copied().unwrap_or(0), size, id));
            }
        }
        if total > budget {
            candidates.sort();
            for (_, size, id) in candidates {
                if total <= budget * 8 / 10 {
                    break;
                }
                if self.state.evict(&id) {
                    self.cursors.remove(&id);
                    self.touched.remove(&id);
                    total = total.saturating_sub(size);
                }
            }
        }
        self.stats
            .cache_bytes
            .store(total as u64, Ordering::Relaxed);
        // Instances known absent are cheap but unbounded in number: forget them too.
        self.stats
            .cached_instances
            .store(self.state.loaded_count() as u64, Ordering::Relaxed);
    }
}

/// Everything an episode needs, moved onto a worker task.
struct EpisodeWork {
    shared: Arc<Shared>,
    store: Arc<PartitionStore>,
    tx: mpsc::UnboundedSender<Input>,
    instance_id: String,
    execution_id: String,
    name: String,
    version: Option<String>,
    history_len: u32,
    persisted: u32,
    tail: Vec<HistoryEvent>,
    new_events: Vec<HistoryEvent>,
}

impl EpisodeWork {
    /// Runs the episode (locally with a cursor, or on a remote worker) and reports the result
    /// to the leader.
    async fn run(self, cursor: Option<Cursor>, remote: Option<RemoteQueue>, ticket: WorkTicket) {
        let fail = |f: FailureDetails| vec![Action::Complete(Completion::Failed { failure: f })];
        let retry_later = |tx: &mpsc::UnboundedSender<Input>, instance_id: String| {
            let _ = tx.send(Input::EpisodeDone {
                instance_id,
                result: None,
                cursor: None,
            });
        };
        let mut episode = EpisodeResult {
            instance_id: self.instance_id.clone(),
            execution_id: self.execution_id.clone(),
            history_len: self.history_len,
            consumed: self.new_events.len() as u32,
            started_at: 0,
            actions: Vec::new(),
            custom_status: None,
        };
        let mut cursor_out = None;
        let past = if cursor.is_none() {
            match read_history(&self.store, &self.instance_id, self.persisted, self.tail) {
                Some(p) => p,
                // The instance changed under us; let the leader look again.
                None => return retry_later(&self.tx, self.instance_id),
            }
        } else {
            Vec::new()
        };
        if let Some(queue) = remote {
            let started_at = now_millis();
            episode.started_at = started_at;
            let mut new_events = Vec::with_capacity(self.new_events.len() + 1);
            new_events.push(HistoryEvent::new(
                started_at,
                EventKind::OrchestratorStarted,
            ));
            new_events.extend(self.new_events);
            let (reply, answer) = oneshot::channel();
            queue.push(
                RemoteWork::Orchestrator(OrchestratorWork {
                    instance_id: self.instance_id.clone(),
                    execution_id: self.execution_id.clone(),
                    name: self.name.clone(),
                    version: self.version.clone(),
                    past_events: past,
                    new_events,
                    reply,
                }),
                Some(ticket),
            );
            match answer.await {
                Ok(out) => {
                    episode.actions = out.actions;
                    episode.custom_status = out.custom_status;
                }
                Err(_) => return retry_later(&self.tx, self.instance_id),
            }
        } else {
            let _permit = self
                .shared
                .orchestration_permits
                .clone()
                .acquire_owned()
                .await;
            drop(ticket);
            let started_at = now_millis();
            episode.started_at = started_at;
            match self.shared.registry.get_orchestration(&self.name) {
                None => {
                    episode.actions = fail(self.shared.registry.orchestration_not_found(&self.name))
                }
                Some(func) => {
                    let cursor = match cursor {
                        Some(c) => Ok(c),
                        None => Cursor::rebuild(
                            func.clone(),
                            &self.instance_id,
                            &self.execution_id,
                            &self.name,
                            &past,
                        ),
                    };
                    match cursor {
                        Ok(mut cursor) => {
                            let out = cursor.run_episode(&self.new_events, started_at);
                            episode.actions = out.actions;
                            episode.custom_status = out.custom_status;
                            if !cursor.is_finished() {
                                cursor_out = Some(cursor);
                            }
                        }
                        Err(f) => episode.actions = fail(f),
                    }
                }
            }
        }
        for action in episode.actions.iter_mut() {
            match action {
                Action::CreateSubOrchestration { execution_id, .. } => {
                    *execution_id = new_execution_id()
                }
                Action::Complete(Completion::ContinuedAsNew {
                    new_execution_id: e,
                    ..
                }) => *e = new_execution_id(),
                _ => {}
            }
        }
        if let Some(f) = oversized_action(&episode.actions, self.shared.config.max_payload_bytes) {
            episode.actions = fail(f);
            cursor_out = None;
        }
        let _ = self.tx.send(Input::EpisodeDone {
            instance_id: self.instance_id,
            result: Some(episode),
            cursor: cursor_out,
        });
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

/// Reads the first `persisted` history rows from the store and appends the in-memory tail.
/// None if the store no longer has them (the instance was restarted or purged meanwhile).
fn read_history(
    store: &PartitionStore,
    id: &str,
    persisted: u32,
    tail: Vec<HistoryEvent>,
) -> Option<Vec<HistoryEvent>> {
    let mut events = Vec::with_capacity(persisted as usize + tail.len());
    if persisted > 0 {
        let rows = store.read_history(id).ok()?;
        if rows.len() < persisted as usize {
            return None;
        }
        for row in rows.iter().take(persisted as usize) {
            events.push(cairn_core::partition::decode_history_event(row).ok()?);
        }
    }
    events.extend(tail);
    Some(events)
}

/// A failure if an action carries a payload over the limit.
fn oversized_action(actions: &[Action], limit: usize) -> Option<FailureDetails> {
    for a in actions {
        let (what, len) = match a {
            Action::ScheduleTask { input, name, .. } => (
                format!("input of activity '{name}'"),
                input.as_ref().map_or(0, |s| s.len()),
            ),
            Action::CreateSubOrchestration { input, name, .. } => (
                format!("input of sub-orchestration '{name}'"),
                input.as_ref().map_or(0, |s| s.len()),
            ),
            Action::SendEvent { input, name, .. } => (
                format!("data of event '{name}'"),
                input.as_ref().map_or(0, |s| s.len()),
            ),
            Action::Complete(Completion::Completed { result }) => (
                "orchestration output".to_string(),
                result.as_ref().map_or(0, |s| s.len()),
            ),
            Action::Complete(Completion::ContinuedAsNew { input, .. }) => (
                "continue-as-new input".to_string(),
                input.as_ref().map_or(0, |s| s.len()),
            ),
            _ => continue,
        };
        if len > limit {
            return Some(
                FailureDetails::new(
                    "PayloadTooLarge",
                    format!(
                        "{what} is {len} bytes; the limit is {limit} bytes (max_payload_bytes)"
                    ),
                )
                .non_retriable(),
            );
        }
    }
    None
}
