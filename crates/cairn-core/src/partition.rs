//! The partition state machine: `apply(state, record) -> effects`.
//!
//! A partition owns a set of instances (those whose id hashes to it) and the global tables that
//! drive them: the activity queue, durable timers, the outbox towards other partitions, the
//! dedup positions of messages received, and the set of instances with work to do.
//!
//! **Purity.** Nothing here performs I/O, reads a clock or draws randomness. Instances that are
//! not in memory are read through [`InstanceSource`], a read-only view of the last checkpoint:
//! the logical state is "checkpoint overlaid with what was applied since", and the source only
//! lets the state machine keep the cold part of it on disk. State after position `n` is a pure
//! function of the log prefix (and that checkpoint, which was itself produced by this code).
//!
//! **Memory.** Only the global tables (bounded by in-flight work) are always in memory. Instances
//! are loaded on demand and may be evicted once clean (written by a checkpoint). A loaded
//! instance keeps only the *tail* of its history that is not yet in the checkpoint store.

use crate::event::*;
use crate::history::*;
use crate::ids::partition_of;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

/// Read-only access to instances as of the last checkpoint.
pub trait InstanceSource {
    fn load(&self, instance_id: &str) -> Result<Option<InstanceState>, SourceError>;
    /// The history rows of the instance's current execution as of the checkpoint (only a
    /// rewind, which rewrites history, needs more than the in-memory tail).
    fn load_history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>, SourceError>;
}

/// The checkpoint store could not be read; the partition cannot make progress.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading instance state from the checkpoint store failed: {0}")]
pub struct SourceError(pub String);

/// A source with nothing in it: a partition that was never checkpointed.
pub struct EmptySource;

impl InstanceSource for EmptySource {
    fn load(&self, _: &str) -> Result<Option<InstanceState>, SourceError> {
        Ok(None)
    }
    fn load_history(&self, _: &str) -> Result<Vec<HistoryEvent>, SourceError> {
        Ok(Vec::new())
    }
}

/// Everything Cairn keeps about an instance except its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceState {
    pub instance_id: String,
    pub name: String,
    pub version: Option<String>,
    pub execution_id: String,
    pub status: RuntimeStatus,
    pub input: Option<String>,
    pub output: Option<String>,
    pub failure: Option<FailureDetails>,
    pub custom_status: Option<String>,
    pub created_at: Millis,
    pub last_updated_at: Millis,
    pub completed_at: Option<Millis>,
    pub scheduled_start: Option<Millis>,
    pub tags: BTreeMap<String, String>,
    pub parent: Option<ParentInstance>,
    /// Messages that arrived and wait for the next episode.
    pub pending: Vec<HistoryEvent>,
    /// Length of the current execution's history.
    pub history_len: u32,
    /// Running sub-orchestrations (task id -> instance id), for recursive terminate.
    pub children: BTreeMap<i32, String>,
    /// Set while a scheduled start time has not come yet.
    pub not_before: Option<Millis>,
    /// Present for entities (instance id `@name@key`): their state and queued operations.
    pub entity: Option<EntityRecord>,
    /// Critical sections this orchestration holds (id -> locked entities), released when it ends.
    pub held_locks: BTreeMap<String, Vec<String>>,
}

/// What an entity keeps: its state and the operations waiting for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityRecord {
    /// Serialized state; None when the entity has no state.
    pub state: Option<String>,
    /// Operations in arrival order (per sender, the order they were sent).
    pub queue: VecDeque<EntityOperation>,
    pub last_modified: Millis,
    /// (critical section, holding orchestration) while the entity is locked.
    pub locked_by: Option<(String, String)>,
}

impl EntityRecord {
    /// The operations that may run now, in order: while locked, only the holder's; otherwise
    /// those queued before the first lock request.
    pub fn eligible(&self, max: usize) -> Vec<EntityOperation> {
        match &self.locked_by {
            Some((_, holder)) => self
                .queue
                .iter()
                .filter(|op| {
                    op.kind == EntityRequestKind::Operation
                        && op.sender.as_deref() == Some(holder.as_str())
                })
                .take(max)
                .cloned()
                .collect(),
            None => self
                .queue
                .iter()
                .take_while(|op| op.kind == EntityRequestKind::Operation)
                .take(max)
                .cloned()
                .collect(),
        }
    }
}

/// The entity name of an entity instance id `@name@key`.
pub fn entity_name(entity_id: &str) -> Option<&str> {
    let rest = entity_id.strip_prefix('@')?;
    rest.split_once('@').map(|(name, _)| name)
}

impl InstanceState {
    pub fn encode(&self) -> Result<Vec<u8>, crate::EncodeError> {
        crate::encode("an instance's state", self)
    }
    pub fn decode(bytes: &[u8]) -> Result<InstanceState, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// A loaded instance: its state plus the part of its history not yet checkpointed.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub state: InstanceState,
    /// History events `[history_len - tail.len(), history_len)`; earlier ones are in the store.
    pub tail: Vec<HistoryEvent>,
    /// The store still holds rows of an older execution that the next checkpoint must delete.
    pub reset: bool,
}

impl Instance {
    /// Number of history events of the current execution that are in the checkpoint store.
    pub fn persisted_len(&self) -> u32 {
        self.state.history_len - self.tail.len() as u32
    }

    fn push(&mut self, event: HistoryEvent) {
        self.tail.push(event);
        self.state.history_len += 1;
    }

    fn approx_size(&self) -> usize {
        let s = &self.state;
        256 + s.instance_id.len()
            + s.input.as_ref().map_or(0, |x| x.len())
            + s.output.as_ref().map_or(0, |x| x.len())
            + s.pending.iter().map(|e| e.approx_size()).sum::<usize>()
            + self.tail.iter().map(|e| e.approx_size()).sum::<usize>()
    }
}

enum Slot {
    Live(Box<Instance>),
    /// Known not to exist (checked against the source, or deleted since).
    Absent,
}

/// The tables every partition keeps in memory, checkpointed as one blob.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Globals {
    pub partition: u32,
    pub partition_count: u32,
    /// Position of the last applied record.
    pub position: u64,
    pub activities: BTreeMap<u64, ActivityWorkItem>,
    pub next_activity_id: u64,
    pub timers: BTreeMap<u64, TimerEntry>,
    pub next_timer_id: u64,
    pub outbox: BTreeMap<u32, VecDeque<(MessageId, Message)>>,
    pub dedup: BTreeMap<u32, MessageId>,
    /// Instances with pending messages that may run an episode now.
    pub runnable: BTreeSet<String>,
    /// Orchestration instances (not entities) by runtime status, kept as instances change so
    /// metrics never scan the store.
    pub status_counts: BTreeMap<RuntimeStatus, u64>,
}

/// What a checkpoint writes to the store (byte-encoded).
#[derive(Debug, Default)]
pub struct CheckpointData {
    pub position: u64,
    pub globals: Vec<u8>,
    pub puts: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
    pub history_resets: Vec<String>,
    pub history_appends: Vec<(String, u32, Vec<u8>)>,
}

pub struct PartitionState {
    globals: Globals,
    instances: HashMap<String, Slot>,
    /// Instances changed (or deleted) since the last checkpoint.
    dirty: HashSet<String>,
    /// Lookups answered from memory / from the source (observability only; not state).
    cache_hits: u64,
    cache_misses: u64,
}

/// Per-apply scratch: effects produced, messages to deliver locally, message numbering.
struct Apply {
    position: u64,
    now: Millis,
    effects: Vec<Effect>,
    local: VecDeque<Message>,
    next_index: u32,
}

impl PartitionState {
    pub fn new(partition: u32, partition_count: u32) -> Self {
        PartitionState {
            globals: Globals {
                partition,
                partition_count,
                next_activity_id: 1,
                next_timer_id: 1,
                ..Globals::default()
            },
            instances: HashMap::new(),
            dirty: HashSet::new(),
            cache_hits: 0,
            cache_misses: 0,
        }
    }

    /// Rebuilds the in-memory part from a checkpoint's globals blob.
    pub fn recover(globals: &[u8]) -> Result<Self, postcard::Error> {
        Ok(PartitionState {
            globals: postcard::from_bytes(globals)?,
            instances: HashMap::new(),
            dirty: HashSet::new(),
            cache_hits: 0,
            cache_misses: 0,
        })
    }

    pub fn globals(&self) -> &Globals {
        &self.globals
    }

    pub fn position(&self) -> u64 {
        self.globals.position
    }

    pub fn partition(&self) -> u32 {
        self.globals.partition
    }

    pub fn activity(&self, id: u64) -> Option<&ActivityWorkItem> {
        self.globals.activities.get(&id)
    }

    pub fn timer(&self, id: u64) -> Option<&TimerEntry> {
        self.globals.timers.get(&id)
    }

    pub fn outbox(&self, to: u32) -> impl Iterator<Item = &(MessageId, Message)> {
        self.globals.outbox.get(&to).into_iter().flatten()
    }

    pub fn outbox_destinations(&self) -> Vec<u32> {
        self.globals
            .outbox
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect()
    }

    /// A loaded instance (None if not in memory or absent).
    pub fn loaded(&self, id: &str) -> Option<&Instance> {
        match self.instances.get(id) {
            Some(Slot::Live(i)) => Some(i),
            _ => None,
        }
    }

    /// Whether the state machine knows the instance's current state without the source.
    pub fn is_resident(&self, id: &str) -> bool {
        self.instances.contains_key(id)
    }

    /// The instance as the state machine sees it, loading it from the source if needed.
    pub fn get(
        &mut self,
        id: &str,
        src: &dyn InstanceSource,
    ) -> Result<Option<&Instance>, SourceError> {
        self.ensure(id, src)?;
        Ok(self.loaded(id))
    }

    /// Instances held in memory (including ones known absent).
    pub fn loaded_count(&self) -> usize {
        self.instances.len()
    }

    pub fn loaded_ids(&self) -> impl Iterator<Item = &String> {
        self.instances.keys()
    }

    pub fn is_dirty(&self, id: &str) -> bool {
        self.dirty.contains(id)
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    /// (lookups answered from memory, lookups that went to the source) since this state was
    /// created.
    pub fn cache_counters(&self) -> (u64, u64) {
        (self.cache_hits, self.cache_misses)
    }

    /// Rough memory footprint of a loaded instance (for the instance cache).
    pub fn footprint(&self, id: &str) -> usize {
        self.loaded(id).map_or(0, |i| i.approx_size())
    }

    /// Drops a clean instance from memory; returns false if it has unsaved changes.
    pub fn evict(&mut self, id: &str) -> bool {
        if self.dirty.contains(id) {
            return false;
        }
        self.instances.remove(id);
        true
    }

    fn ensure(&mut self, id: &str, src: &dyn InstanceSource) -> Result<(), SourceError> {
        if self.instances.contains_key(id) {
            self.cache_hits += 1;
        } else {
            self.cache_misses += 1;
            let slot = match src.load(id)? {
                Some(state) => Slot::Live(Box::new(Instance {
                    state,
                    tail: Vec::new(),
                    reset: false,
                })),
                None => Slot::Absent,
            };
            self.instances.insert(id.to_string(), slot);
        }
        Ok(())
    }

    fn take(
        &mut self,
        id: &str,
        src: &dyn InstanceSource,
    ) -> Result<Option<Box<Instance>>, SourceError> {
        self.ensure(id, src)?;
        match self.instances.insert(id.to_string(), Slot::Absent) {
            Some(Slot::Live(inst)) => {
                // Taken out: it no longer counts until it is put back (a purge never is).
                self.count_status(&inst.state, false);
                Ok(Some(inst))
            }
            _ => Ok(None),
        }
    }

    fn put(&mut self, inst: Box<Instance>) {
        let id = inst.state.instance_id.clone();
        self.dirty.insert(id.clone());
        self.count_status(&inst.state, true);
        self.instances.insert(id, Slot::Live(inst));
    }

    /// Puts back an instance that was only inspected, not changed.
    fn put_clean(&mut self, inst: Box<Instance>) {
        let id = inst.state.instance_id.clone();
        self.count_status(&inst.state, true);
        self.instances.insert(id, Slot::Live(inst));
    }

    /// Every change of an instance goes through `take` and `put`, so counting there keeps
    /// `status_counts` exact without a scan.
    fn count_status(&mut self, s: &InstanceState, add: bool) {
        if s.entity.is_some() {
            return;
        }
        let n = self.globals.status_counts.entry(s.status).or_insert(0);
        if add {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.globals.status_counts.remove(&s.status);
            }
        }
    }

    /// Applies the record at `position`. Positions must increase by one per record.
    pub fn apply(
        &mut self,
        position: u64,
        record: &LogRecord,
        src: &dyn InstanceSource,
    ) -> Result<Vec<Effect>, SourceError> {
        let mut cx = Apply {
            position,
            now: record.timestamp,
            effects: Vec::new(),
            local: VecDeque::new(),
            next_index: 0,
        };
        match &record.event {
            PartitionEvent::Client(req) => self.client_request(req, &mut cx, src)?,
            PartitionEvent::Messages { from, batch } => {
                let mut last = self.globals.dedup.get(from).copied();
                for (id, msg) in batch {
                    if last.is_some_and(|l| *id <= l) {
                        continue; // already applied: a re-send after recovery
                    }
                    last = Some(*id);
                    self.message(msg.clone(), &mut cx, src)?;
                }
                if let Some(last) = last {
                    self.globals.dedup.insert(*from, last);
                    cx.effects.push(Effect::AckMessages {
                        to: *from,
                        up_to: last,
                    });
                }
            }
            PartitionEvent::EpisodeCompleted(result) => {
                self.episode_completed(result, &mut cx, src)?
            }
            PartitionEvent::EntityBatchCompleted(result) => {
                self.entity_batch_completed(result, &mut cx, src)?
            }
            PartitionEvent::ActivityCompleted {
                activity_id,
                result,
            } => {
                if let Some(item) = self.globals.activities.remove(activity_id) {
                    let kind = match result {
                        Ok(r) => EventKind::TaskCompleted {
                            task_scheduled_id: item.task_id,
                            result: r.clone(),
                        },
                        Err(f) => EventKind::TaskFailed {
                            task_scheduled_id: item.task_id,
                            failure: f.clone(),
                        },
                    };
                    self.deliver(
                        &item.instance_id,
                        Some(&item.execution_id),
                        kind,
                        &mut cx,
                        src,
                    )?;
                }
            }
            PartitionEvent::TimerFired { timer_id } => {
                if let Some(timer) = self.globals.timers.remove(timer_id) {
                    match timer.kind {
                        TimerKind::Orchestration { task_id, fire_at } => {
                            let kind = EventKind::TimerFired {
                                timer_id: task_id,
                                fire_at,
                            };
                            self.deliver(
                                &timer.instance_id,
                                Some(&timer.execution_id),
                                kind,
                                &mut cx,
                                src,
                            )?;
                        }
                        TimerKind::EntityOperation(op) => {
                            self.entity_operation(&timer.instance_id, *op, &mut cx, src)?;
                        }
                        TimerKind::ScheduledStart => {
                            if let Some(mut inst) = self.take(&timer.instance_id, src)? {
                                if inst.state.execution_id == timer.execution_id {
                                    inst.state.not_before = None;
                                    self.make_runnable(&inst, &mut cx);
                                }
                                self.put(inst);
                            }
                        }
                    }
                }
            }
            PartitionEvent::OutboxAck { to, up_to } => {
                if let Some(q) = self.globals.outbox.get_mut(to) {
                    while q.front().is_some_and(|(id, _)| id <= up_to) {
                        q.pop_front();
                    }
                    if q.is_empty() {
                        self.globals.outbox.remove(to);
                    }
                }
            }
        }
        // Messages to instances of this same partition are applied at once, in order.
        while let Some(msg) = cx.local.pop_front() {
            self.message(msg, &mut cx, src)?;
        }
        self.globals.position = position;
        Ok(cx.effects)
    }

    fn client_request(
        &mut self,
        req: &ClientRequest,
        cx: &mut Apply,
        src: &dyn InstanceSource,
    ) -> Result<(), SourceError> {
        let respond = |cx: &mut Apply, response| {
            cx.effects.push(Effect::Respond {
                request_id: req.request_id,
                response,
            })
        };
        match &req.kind {
            ClientRequestKind::Start(start) => {
                let response = self.start_instance(start, None, cx, src)?;
                respond(cx, response);
            }
            ClientRequestKind::RaiseEvent {
                instance_id,
                name,
                input,
            } => {
                let response = match self.take(instance_id, src)? {
                    None => ClientResponse::NotFound,
                    Some(mut inst) => {
                        let status = inst.state.status;
                        let r = if status.is_terminal() {
                            ClientResponse::WrongStatus { status }
                        } else {
                            let ev = HistoryEvent::new(
                                cx.now,
                                EventKind::EventRaised {
                                    name: name.clone(),
                                    input: input.clone(),
                                },
                            );
                            inst.state.pending.push(ev);
                            self.make_runnable(&inst, cx);
                            ClientResponse::Ok
                        };
                        self.put(inst);
                        r
                    }
                };
                respond(cx, response);
            }
            ClientRequestKind::Terminate {
                instance_id,
                reason,
                recursive,
            } => {
                let response = match self.take(instance_id, src)? {
                    None => ClientResponse::NotFound,
                    Some(mut inst) => {
                        let status = inst.state.status;
                        let r = if status.is_terminal() {
                            ClientResponse::WrongStatus { status }
                        } else {
                            self.terminate(&mut inst, reason.clone(), *recursive, cx);
                            ClientResponse::Ok
                        };
                        self.put(inst);
                        r
                    }
                };
                respond(cx, response);
            }
            ClientRequestKind::Suspend {
                instance_id,
                reason,
            } => {
                let response = match self.take(instance_id, src)? {
                    None => ClientResponse::NotFound,
                    Some(mut inst) => {
                        let status = inst.state.status;
                        let r = match status {
                            RuntimeStatus::Running | RuntimeStatus::Pending => {
                                inst.state.status = RuntimeStatus::Suspended;
                                inst.state.last_updated_at = cx.now;
                                inst.state.pending.push(HistoryEvent::new(
                                    cx.now,
                                    EventKind::ExecutionSuspended {
                                        reason: reason.clone(),
                                    },
                                ));
                                self.globals.runnable.remove(instance_id);
                                cx.effects
                                    .push(Effect::InstanceChanged(instance_id.clone()));
                                ClientResponse::Ok
                            }
                            RuntimeStatus::Suspended => ClientResponse::Ok,
                            _ => ClientResponse::WrongStatus { status },
                        };
                        self.put(inst);
                        r
                    }
                };
                respond(cx, response);
            }
            ClientRequestKind::Resume {
                instance_id,
                reason,
            } => {
                let response = match self.take(instance_id, src)? {
                    None => ClientResponse::NotFound,
                    Some(mut inst) => {
                        let status = inst.state.status;
                        let r = match status {
                            RuntimeStatus::Suspended => {
                                inst.state.status = if inst.state.history_len > 0 {
                                    RuntimeStatus::Running
                                } else {
                                    RuntimeStatus::Pending
                                };
                                inst.state.last_updated_at = cx.now;
                                inst.state.pending.push(HistoryEvent::new(
                                    cx.now,
                                    EventKind::ExecutionResumed {
                                        reason: reason.clone(),
                                    },
                                ));
                                self.make_runnable(&inst, cx);
                                cx.effects
                                    .push(Effect::InstanceChanged(instance_id.clone()));
                                ClientResponse::Ok
                            }
                            RuntimeStatus::Running | RuntimeStatus::Pending => ClientResponse::Ok,
                            _ => ClientResponse::WrongStatus { status },
                        };
                        self.put(inst);
                        r
                    }
                };
                respond(cx, response);
            }
            ClientRequestKind::Rewind {
                instance_id,
                reason,
            } => {
                let response = match self.take(instance_id, src)? {
                    None => ClientResponse::NotFound,
                    Some(mut inst) => {
                        let status = inst.state.status;
                        let r = if status == RuntimeStatus::Failed && inst.state.entity.is_none() {
                            match self.rewind(&mut inst, reason.clone(), cx, src) {
                                Ok(None) => ClientResponse::Ok,
                                Ok(Some(reason)) => ClientResponse::Refused { reason },
                                Err(e) => {
                                    self.put_clean(inst);
                                    return Err(e);
                                }
                            }
                        } else {
                            ClientResponse::WrongStatus { status }
                        };
                        self.put(inst);
                        r
                    }
                };
                respond(cx, response);
            }
            ClientRequestKind::SignalEntity {
                entity_id,
                operation,
            } => {
                self.entity_operation(entity_id, operation.clone(), cx, src)?;
                respond(cx, ClientResponse::Ok);
            }
            ClientRequestKind::Purge { instance_ids } => {
                let mut count = 0;
                for id in instance_ids {
                    if let Some(inst) = self.take(id, src)? {
                        if inst.state.status.is_terminal() {
                            // The slot is now Absent; mark dirty so the checkpoint deletes it.
                            self.dirty.insert(id.clone());
                            count += 1;
                            cx.effects.push(Effect::InstanceChanged(id.clone()));
                        } else {
                            self.put_clean(inst);
                        }
                    }
                }
                respond(cx, ClientResponse::Purged { count });
            }
        }
        Ok(())
    }

    /// Creates (or, per policy, restarts) an instance. Used by client starts and sub-orchestrations.
    fn start_instance(
        &mut self,
        start: &StartRequest,
        parent: Option<ParentInstance>,
        cx: &mut Apply,
        src: &dyn InstanceSource,
    ) -> Result<ClientResponse, SourceError> {
        let existing = self.take(&start.instance_id, src)?;
        // A purge not yet checkpointed leaves the old rows in the store: they must go too.
        let mut replaced = existing.is_none() && self.dirty.contains(&start.instance_id);
        if let Some(mut inst) = existing {
            let status = inst.state.status;
            let replace = match &start.if_exists {
                ExistingPolicy::ReplaceIf(statuses) => statuses.contains(&status),
                ExistingPolicy::TerminateAndRestart => true,
                ExistingPolicy::ReturnExisting | ExistingPolicy::Fail => status.is_terminal(),
            };
            if !replace {
                let response = ClientResponse::AlreadyExists {
                    execution_id: inst.state.execution_id.clone(),
                    status,
                    rejected: start.if_exists != ExistingPolicy::ReturnExisting,
                };
                self.put_clean(inst);
                return Ok(response);
            }
            if !status.is_terminal() {
                self.terminate(&mut inst, Some("restarted".into()), false, cx);
            }
            // Timers of the old execution must not fire into the new one (they are also
            // filtered by execution id, this just frees them).
            self.globals
                .timers
                .retain(|_, t| t.instance_id != start.instance_id);
            replaced = true;
        }
        let ev = HistoryEvent::new(
            cx.now,
            EventKind::ExecutionStarted {
                name: start.name.clone(),
                version: start.version.clone(),
                input: start.input.clone(),
                execution_id: start.execution_id.clone(),
                parent: parent.clone(),
                scheduled_start: start.scheduled_start,
                tags: start.tags.clone(),
            },
        );
        let not_before = start.scheduled_start.filter(|t| *t > cx.now);
        let inst = Box::new(Instance {
            state: InstanceState {
                instance_id: start.instance_id.clone(),
                name: start.name.clone(),
                version: start.version.clone(),
                execution_id: start.execution_id.clone(),
                status: RuntimeStatus::Pending,
                input: start.input.clone(),
                output: None,
                failure: None,
                custom_status: None,
                created_at: cx.now,
                last_updated_at: cx.now,
                completed_at: None,
                scheduled_start: start.scheduled_start,
                tags: start.tags.clone(),
                parent,
                pending: vec![ev],
                history_len: 0,
                children: BTreeMap::new(),
                not_before,
                entity: None,
                held_locks: BTreeMap::new(),
            },
            tail: Vec::new(),
            reset: replaced,
        });
        if let Some(due) = not_before {
            self.arm_timer(
                TimerEntry {
                    instance_id: start.instance_id.clone(),
                    execution_id: start.execution_id.clone(),
                    due,
                    kind: TimerKind::ScheduledStart,
                },
                cx,
            );
        }
        self.make_runnable(&inst, cx);
        cx.effects
            .push(Effect::InstanceChanged(start.instance_id.clone()));
        self.put(inst);
        Ok(ClientResponse::Started {
            execution_id: start.execution_id.clone(),
        })
    }

    fn message(
        &mut self,
        msg: Message,
        cx: &mut Apply,
        src: &dyn InstanceSource,
    ) -> Result<(), SourceError> {
        match msg {
            Message::StartSubOrchestration {
                parent,
                instance_id,
                name,
                version,
                input,
                execution_id,
            } => {
                let start = StartRequest::sub_orchestration(
                    instance_id.clone(),
                    name,
                    version,
                    input,
                    execution_id,
                );
                let response = self.start_instance(&start, Some(parent.clone()), cx, src)?;
                if let ClientResponse::AlreadyExists { status, .. } = response {
                    let failure = FailureDetails::new(
                        "InstanceIdInUse",
                        format!(
                            "cannot start sub-orchestration: instance id '{instance_id}' is already in use (status {status})"
                        ),
                    )
                    .non_retriable();
                    self.send(
                        Message::SubOrchestrationCompleted {
                            parent_instance_id: parent.instance_id,
                            parent_execution_id: parent.execution_id,
                            task_id: parent.task_id,
                            result: Err(failure),
                        },
                        cx,
                    );
                }
            }
            Message::SubOrchestrationCompleted {
                parent_instance_id,
                parent_execution_id,
                task_id,
                result,
            } => {
                let kind = match result {
                    Ok(result) => EventKind::SubOrchestrationCompleted {
                        task_scheduled_id: task_id,
                        result,
                    },
                    Err(failure) => EventKind::SubOrchestrationFailed {
                        task_scheduled_id: task_id,
                        failure,
                    },
                };
                // Only an outcome the parent still waits for counts: after a rewind a child
                // that was still running may report twice (once when it ends, once answering
                // the rewind), and the second must not become a second result.
                let mut expected = false;
                if let Some(mut inst) = self.take(&parent_instance_id, src)? {
                    expected = inst.state.children.remove(&task_id).is_some();
                    self.put(inst);
                }
                if expected {
                    self.deliver(
                        &parent_instance_id,
                        Some(&parent_execution_id),
                        kind,
                        cx,
                        src,
                    )?;
                }
            }
            Message::RaiseEvent {
                instance_id,
                name,
                input,
            } => {
                self.deliver(
                    &instance_id,
                    None,
                    EventKind::EventRaised { name, input },
                    cx,
                    src,
                )?;
            }
            Message::EntityOperation {
                entity_id,
                operation,
            } => self.entity_operation(&entity_id, operation, cx, src)?,
            Message::EntityResult {
                instance_id,
                execution_id,
                task_id,
                request_id,
                result,
            } => {
                let kind = match result {
                    Ok(result) => EventKind::EntityOperationCompleted {
                        task_scheduled_id: task_id,
                        request_id,
                        result,
                    },
                    Err(failure) => EventKind::EntityOperationFailed {
                        task_scheduled_id: task_id,
                        request_id,
                        failure,
                    },
                };
                self.deliver(&instance_id, Some(&execution_id), kind, cx, src)?;
            }
            Message::EntityLockGranted {
                instance_id,
                execution_id,
                task_id,
                critical_section,
            } => {
                let kind = EventKind::EntityLockGranted {
                    task_scheduled_id: task_id,
                    critical_section,
                };
                self.deliver(&instance_id, Some(&execution_id), kind, cx, src)?;
            }
            Message::StartOrchestration(start) => {
                self.start_instance(&start, None, cx, src)?;
            }
            Message::Terminate {
                instance_id,
                reason,
                recursive,
            } => {
                if let Some(mut inst) = self.take(&instance_id, src)? {
                    if !inst.state.status.is_terminal() {
                        self.terminate(&mut inst, reason, recursive, cx);
                    }
                    self.put(inst);
                }
            }
            Message::Rewind {
                instance_id,
                reason,
                parent,
            } => self.rewind_child(&instance_id, reason, parent, None, cx, src)?,
            Message::RewindSubOrchestration {
                instance_id,
                reason,
                parent,
                name,
                version,
                input,
                execution_id,
            } => {
                let recorded = StartRequest::sub_orchestration(
                    instance_id.clone(),
                    name,
                    version,
                    input,
                    execution_id,
                );
                self.rewind_child(&instance_id, reason, parent, Some(recorded), cx, src)?
            }
        }
        Ok(())
    }

    /// Queues an event for an instance's next episode (dropped if the instance is gone, terminal,
    /// or on another execution than the one the event belongs to).
    fn deliver(
        &mut self,
        instance_id: &str,
        execution_id: Option<&str>,
        kind: EventKind,
        cx: &mut Apply,
        src: &dyn InstanceSource,
    ) -> Result<(), SourceError> {
        let Some(mut inst) = self.take(instance_id, src)? else {
            return Ok(());
        };
        let current = execution_id.is_none_or(|e| e == inst.state.execution_id);
        if current && !inst.state.status.is_terminal() {
            inst.state.pending.push(HistoryEvent::new(cx.now, kind));
            self.make_runnable(&inst, cx);
            self.put(inst);
        } else {
            self.put_clean(inst);
        }
        Ok(())
    }

    fn make_runnable(&mut self, inst: &Instance, cx: &mut Apply) {
        let s = &inst.state;
        let has_work = match &s.entity {
            Some(e) => !e.eligible(1).is_empty(),
            None => !s.pending.is_empty(),
        };
        if has_work
            && s.not_before.is_none()
            && s.status != RuntimeStatus::Suspended
            && !s.status.is_terminal()
        {
            if self.globals.runnable.insert(s.instance_id.clone()) {
                cx.effects.push(Effect::RunEpisode(s.instance_id.clone()));
            }
        } else {
            self.globals.runnable.remove(&s.instance_id);
        }
    }

    /// Routes a message: applied within this same record if the target is local, else outbox.
    fn send(&mut self, msg: Message, cx: &mut Apply) {
        let to = partition_of(msg.target(), self.globals.partition_count);
        if to == self.globals.partition {
            cx.local.push_back(msg);
            return;
        }
        let id = MessageId {
            position: cx.position,
            index: cx.next_index,
        };
        cx.next_index += 1;
        self.globals
            .outbox
            .entry(to)
            .or_default()
            .push_back((id, msg));
        if !cx.effects.contains(&Effect::SendMessages { to }) {
            cx.effects.push(Effect::SendMessages { to });
        }
    }

    fn terminate(
        &mut self,
        inst: &mut Instance,
        reason: Option<String>,
        recursive: bool,
        cx: &mut Apply,
    ) {
        inst.push(HistoryEvent::new(
            cx.now,
            EventKind::ExecutionTerminated {
                reason: reason.clone(),
            },
        ));
        // The reason is the termination output (a payload, JSON by convention).
        let output = reason.clone();
        self.finish(inst, RuntimeStatus::Terminated, output, None, cx);
        let children = std::mem::take(&mut inst.state.children);
        if recursive {
            for child in children.into_values() {
                self.send(
                    Message::Terminate {
                        instance_id: child,
                        reason: reason.clone(),
                        recursive: true,
                    },
                    cx,
                );
            }
        }
    }

    /// Queues an activity and asks the shell to start it.
    fn queue_activity(&mut self, item: ActivityWorkItem, cx: &mut Apply) {
        let activity_id = self.globals.next_activity_id;
        self.globals.next_activity_id += 1;
        self.globals.activities.insert(activity_id, item);
        cx.effects.push(Effect::StartActivity(activity_id));
    }

    /// Registers a durable timer and asks the shell to arm it.
    fn arm_timer(&mut self, entry: TimerEntry, cx: &mut Apply) {
        let timer_id = self.globals.next_timer_id;
        self.globals.next_timer_id += 1;
        let due = entry.due;
        self.globals.timers.insert(timer_id, entry);
        cx.effects.push(Effect::ScheduleTimer { timer_id, due });
    }

    /// Puts a Failed instance back to Running.
    ///
    /// The failures delivered in the final episode (the ones the orchestration did not survive)
    /// are removed from history together with the completion event; failures handled in earlier
    /// episodes stay, so replay takes the same path up to the failure. Every scheduled step
    /// left without an outcome is set going again: activities are queued, timers re-armed, and
    /// sub-orchestrations asked to rewind (or to report again if they finished meanwhile).
    ///
    /// Returns why, changing nothing, when a rewind could not replay faithfully: the failing
    /// episode also scheduled work (that code path will not run again, so replay would not
    /// match it), the orchestration used critical sections (its locks were released when it
    /// failed), or an entity call is unanswered (the answer was dropped).
    fn rewind(
        &mut self,
        inst: &mut Instance,
        reason: Option<String>,
        cx: &mut Apply,
        src: &dyn InstanceSource,
    ) -> Result<Option<String>, SourceError> {
        let id = inst.state.instance_id.clone();
        let execution = inst.state.execution_id.clone();
        let persisted = inst.persisted_len() as usize;
        let mut history = Vec::with_capacity(inst.state.history_len as usize);
        if persisted > 0 {
            let rows = src.load_history(&id)?;
            if rows.len() < persisted {
                return Err(SourceError(format!(
                    "instance '{id}' has {} history rows in the store, expected {persisted}",
                    rows.len()
                )));
            }
            history.extend(rows.into_iter().take(persisted));
        }
        history.extend(inst.tail.iter().cloned());
        let last_episode = history
            .iter()
            .rposition(|e| matches!(e.kind, EventKind::OrchestratorStarted))
            .unwrap_or(0);
        if let Some(why) = cannot_rewind(&history, last_episode) {
            return Ok(Some(why));
        }
        inst.tail.clear();
        let kept: Vec<HistoryEvent> = history
            .into_iter()
            .enumerate()
            .filter(|(i, e)| match &e.kind {
                EventKind::ExecutionCompleted { .. } => false,
                EventKind::TaskFailed { .. } | EventKind::SubOrchestrationFailed { .. } => {
                    *i < last_episode
                }
                _ => true,
            })
            .map(|(_, e)| e)
            .collect();
        let done: HashSet<i32> = kept.iter().filter_map(|e| e.kind.completes()).collect();
        for e in kept.iter().filter(|e| !done.contains(&e.event_id)) {
            let task_id = e.event_id;
            match &e.kind {
                EventKind::TaskScheduled {
                    name,
                    version,
                    input,
                } => {
                    // An attempt may still be in flight from before the failure: its result
                    // is now welcome, so it is not queued twice.
                    let in_flight = self.globals.activities.values().any(|a| {
                        a.instance_id == id && a.execution_id == execution && a.task_id == task_id
                    });
                    if !in_flight {
                        self.queue_activity(
                            ActivityWorkItem {
                                instance_id: id.clone(),
                                execution_id: execution.clone(),
                                task_id,
                                name: name.clone(),
                                version: version.clone(),
                                input: input.clone(),
                            },
                            cx,
                        );
                    }
                }
                EventKind::TimerCreated { fire_at } => self.arm_timer(
                    TimerEntry {
                        instance_id: id.clone(),
                        execution_id: execution.clone(),
                        due: *fire_at,
                        kind: TimerKind::Orchestration {
                            task_id,
                            fire_at: *fire_at,
                        },
                    },
                    cx,
                ),
                EventKind::SubOrchestrationCreated {
                    instance_id: child,
                    name,
                    version,
                    input,
                } => {
                    inst.state.children.insert(task_id, child.clone());
                    self.send(
                        Message::RewindSubOrchestration {
                            instance_id: child.clone(),
                            reason: reason.clone(),
                            parent: ParentInstance {
                                instance_id: id.clone(),
                                execution_id: execution.clone(),
                                name: inst.state.name.clone(),
                                task_id,
                            },
                            name: name.clone(),
                            version: version.clone(),
                            input: input.clone(),
                            execution_id: derived_execution_id(&execution, cx.position, task_id),
                        },
                        cx,
                    );
                }
                _ => {}
            }
        }
        let s = &mut inst.state;
        s.history_len = kept.len() as u32;
        inst.tail = kept;
        inst.reset = true;
        s.status = RuntimeStatus::Running;
        s.output = None;
        s.failure = None;
        s.completed_at = None;
        s.last_updated_at = cx.now;
        // The marker wakes the orchestration: with nothing to wait for (a bug fixed in new
        // code), the next episode simply runs it again.
        s.pending.push(HistoryEvent::new(
            cx.now,
            EventKind::ExecutionRewound { reason },
        ));
        self.make_runnable(inst, cx);
        cx.effects.push(Effect::InstanceChanged(id));
        Ok(None)
    }

    /// Rewinds a sub-orchestration on behalf of its rewound parent. A child that failed is
    /// rewound in turn; one that ended otherwise, or cannot be rewound, reports its outcome to
    /// the parent again (the parent dropped it while failed); one that was purged is started
    /// afresh from `recorded`, the parent's record of it, when the message carries one.
    fn rewind_child(
        &mut self,
        instance_id: &str,
        reason: Option<String>,
        parent: ParentInstance,
        recorded: Option<StartRequest>,
        cx: &mut Apply,
        src: &dyn InstanceSource,
    ) -> Result<(), SourceError> {
        let outcome = match self.take(instance_id, src)? {
            // Purged: started afresh from what the parent's history recorded.
            None => match recorded {
                Some(start) => {
                    self.start_instance(&start, Some(parent), cx, src)?;
                    return Ok(());
                }
                None => Some(Err(FailureDetails::new(
                    "RewindFailed",
                    format!(
                        "sub-orchestration '{instance_id}' no longer exists, so it cannot be rewound"
                    ),
                )
                .non_retriable())),
            },
            Some(mut inst) => {
                let s = &inst.state;
                let ours = s.parent.as_ref().is_some_and(|p| {
                    p.instance_id == parent.instance_id && p.task_id == parent.task_id
                });
                let outcome = match s.status {
                    _ if !ours => Some(Err(FailureDetails::new(
                        "RewindFailed",
                        format!(
                            "instance '{instance_id}' was restarted by another parent and cannot be rewound"
                        ),
                    )
                    .non_retriable())),
                    RuntimeStatus::Failed => {
                        // If it cannot be rewound, the parent fails again rather than waits.
                        self.rewind(&mut inst, reason, cx, src)?.map(|why| {
                            Err(FailureDetails::new(
                                "RewindFailed",
                                format!("sub-orchestration '{instance_id}' {why}"),
                            )
                            .non_retriable())
                        })
                    }
                    // It finished after its parent failed: the parent dropped the
                    // outcome then, so it is told again.
                    RuntimeStatus::Completed => Some(Ok(s.output.clone())),
                    RuntimeStatus::Terminated => Some(Err(FailureDetails::new(
                        "Terminated",
                        format!("sub-orchestration '{instance_id}' was terminated"),
                    )
                    .non_retriable())),
                    // Still running: it reports when it ends.
                    _ => None,
                };
                self.put(inst);
                outcome
            }
        };
        if let Some(result) = outcome {
            self.send(
                Message::SubOrchestrationCompleted {
                    parent_instance_id: parent.instance_id,
                    parent_execution_id: parent.execution_id,
                    task_id: parent.task_id,
                    result,
                },
                cx,
            );
        }
        Ok(())
    }

    /// Moves an instance to a terminal status and tells its parent.
    fn finish(
        &mut self,
        inst: &mut Instance,
        status: RuntimeStatus,
        output: Option<String>,
        failure: Option<FailureDetails>,
        cx: &mut Apply,
    ) {
        // Locks die with the orchestration that held them.
        self.release_locks(inst, cx);
        inst.push(HistoryEvent::new(
            cx.now,
            EventKind::ExecutionCompleted {
                status,
                result: output.clone(),
                failure: failure.clone(),
            },
        ));
        let s = &mut inst.state;
        s.status = status;
        s.output = output.clone();
        s.failure = failure.clone();
        s.completed_at = Some(cx.now);
        s.last_updated_at = cx.now;
        s.pending.clear();
        s.not_before = None;
        let id = s.instance_id.clone();
        let execution = s.execution_id.clone();
        self.globals.runnable.remove(&id);
        self.globals
            .timers
            .retain(|_, t| !(t.instance_id == id && t.execution_id == execution));
        cx.effects.push(Effect::InstanceChanged(id));
        if let Some(parent) = inst.state.parent.clone() {
            let result = match status {
                RuntimeStatus::Completed => Ok(output),
                _ => Err(failure.unwrap_or_else(|| {
                    FailureDetails::new(
                        status.as_str(),
                        format!(
                            "sub-orchestration '{}' was {}",
                            inst.state.instance_id, status
                        ),
                    )
                    .non_retriable()
                })),
            };
            self.send(
                Message::SubOrchestrationCompleted {
                    parent_instance_id: parent.instance_id,
                    parent_execution_id: parent.execution_id,
                    task_id: parent.task_id,
                    result,
                },
                cx,
            );
        }
    }

    fn episode_completed(
        &mut self,
        r: &EpisodeResult,
        cx: &mut Apply,
        src: &dyn InstanceSource,
    ) -> Result<(), SourceError> {
        let Some(mut inst) = self.take(&r.instance_id, src)? else {
            return Ok(());
        };
        let s = &inst.state;
        let valid = s.entity.is_none()
            && s.execution_id == r.execution_id
            && s.history_len == r.history_len
            && !s.status.is_terminal()
            && (r.consumed as usize) <= s.pending.len();
        if !valid {
            // Stale: the instance moved on (terminated, restarted) while the episode ran.
            // If it still has work, the shell must run a fresh episode.
            let runnable = self.globals.runnable.contains(&r.instance_id);
            self.put_clean(inst);
            if runnable {
                cx.effects.push(Effect::RunEpisode(r.instance_id.clone()));
            }
            return Ok(());
        }
        // The episode is done: whether the instance runs again depends only on what is left.
        self.globals.runnable.remove(&r.instance_id);
        let now = cx.now;
        let old_status = inst.state.status;
        let old_custom = inst.state.custom_status.clone();
        inst.push(HistoryEvent::new(
            r.started_at,
            EventKind::OrchestratorStarted,
        ));
        let consumed: Vec<HistoryEvent> = inst.state.pending.drain(..r.consumed as usize).collect();
        for ev in consumed {
            if matches!(ev.kind, EventKind::ExecutionStarted { .. })
                && inst.state.status == RuntimeStatus::Pending
            {
                inst.state.status = RuntimeStatus::Running;
            }
            inst.push(ev);
        }
        let mut completion = None;
        for action in &r.actions {
            match action {
                Action::ScheduleTask {
                    id,
                    name,
                    version,
                    input,
                } => {
                    inst.push(HistoryEvent::scheduled(
                        *id,
                        now,
                        EventKind::TaskScheduled {
                            name: name.clone(),
                            version: version.clone(),
                            input: input.clone(),
                        },
                    ));
                    self.queue_activity(
                        ActivityWorkItem {
                            instance_id: r.instance_id.clone(),
                            execution_id: r.execution_id.clone(),
                            task_id: *id,
                            name: name.clone(),
                            version: version.clone(),
                            input: input.clone(),
                        },
                        cx,
                    );
                }
                Action::CreateTimer { id, fire_at } => {
                    inst.push(HistoryEvent::scheduled(
                        *id,
                        now,
                        EventKind::TimerCreated { fire_at: *fire_at },
                    ));
                    self.arm_timer(
                        TimerEntry {
                            instance_id: r.instance_id.clone(),
                            execution_id: r.execution_id.clone(),
                            due: *fire_at,
                            kind: TimerKind::Orchestration {
                                task_id: *id,
                                fire_at: *fire_at,
                            },
                        },
                        cx,
                    );
                }
                Action::CreateSubOrchestration {
                    id,
                    instance_id,
                    name,
                    version,
                    input,
                    execution_id,
                } => {
                    inst.push(HistoryEvent::scheduled(
                        *id,
                        now,
                        EventKind::SubOrchestrationCreated {
                            name: name.clone(),
                            version: version.clone(),
                            instance_id: instance_id.clone(),
                            input: input.clone(),
                        },
                    ));
                    inst.state.children.insert(*id, instance_id.clone());
                    self.send(
                        Message::StartSubOrchestration {
                            parent: ParentInstance {
                                instance_id: r.instance_id.clone(),
                                execution_id: r.execution_id.clone(),
                                name: inst.state.name.clone(),
                                task_id: *id,
                            },
                            instance_id: instance_id.clone(),
                            name: name.clone(),
                            version: version.clone(),
                            input: input.clone(),
                            execution_id: execution_id.clone(),
                        },
                        cx,
                    );
                }
                Action::SendEvent {
                    id,
                    instance_id,
                    name,
                    input,
                } => {
                    inst.push(HistoryEvent::scheduled(
                        *id,
                        now,
                        EventKind::EventSent {
                            instance_id: instance_id.clone(),
                            name: name.clone(),
                            input: input.clone(),
                        },
                    ));
                    self.send(
                        Message::RaiseEvent {
                            instance_id: instance_id.clone(),
                            name: name.clone(),
                            input: input.clone(),
                        },
                        cx,
                    );
                }
                Action::CallEntity {
                    id,
                    entity_id,
                    operation,
                    input,
                    request_id,
                } => {
                    inst.push(HistoryEvent::scheduled(
                        *id,
                        now,
                        EventKind::EntityOperationCalled {
                            request_id: request_id.clone(),
                            target_instance_id: entity_id.clone(),
                            operation: operation.clone(),
                            input: input.clone(),
                        },
                    ));
                    self.send(
                        Message::EntityOperation {
                            entity_id: entity_id.clone(),
                            operation: EntityOperation {
                                request_id: request_id.clone(),
                                operation: operation.clone(),
                                input: input.clone(),
                                caller: Some(EntityCaller {
                                    instance_id: r.instance_id.clone(),
                                    execution_id: r.execution_id.clone(),
                                    task_id: *id,
                                }),
                                scheduled_time: None,
                                sender: Some(r.instance_id.clone()),
                                kind: EntityRequestKind::Operation,
                            },
                        },
                        cx,
                    );
                }
                Action::SignalEntity {
                    id,
                    entity_id,
                    operation,
                    input,
                    scheduled_time,
                    request_id,
                } => {
                    inst.push(HistoryEvent::scheduled(
                        *id,
                        now,
                        EventKind::EntityOperationSignaled {
                            request_id: request_id.clone(),
                            target_instance_id: entity_id.clone(),
                            operation: operation.clone(),
                            input: input.clone(),
                            scheduled_time: *scheduled_time,
                        },
                    ));
                    self.send(
                        Message::EntityOperation {
                            entity_id: entity_id.clone(),
                            operation: EntityOperation {
                                request_id: request_id.clone(),
                                operation: operation.clone(),
                                input: input.clone(),
                                caller: None,
                                scheduled_time: *scheduled_time,
                                sender: Some(r.instance_id.clone()),
                                kind: EntityRequestKind::Operation,
                            },
                        },
                        cx,
                    );
                }
                Action::LockEntities {
                    id,
                    critical_section,
                    lock_set,
                } => {
                    inst.push(HistoryEvent::scheduled(
                        *id,
                        now,
                        EventKind::EntityLockRequested {
                            critical_section: critical_section.clone(),
                            lock_set: lock_set.clone(),
                        },
                    ));
                    inst.state
                        .held_locks
                        .insert(critical_section.clone(), lock_set.clone());
                    if let Some(first) = lock_set.first() {
                        self.send(
                            Message::EntityOperation {
                                entity_id: first.clone(),
                                operation: EntityOperation {
                                    request_id: format!("{critical_section}:lock"),
                                    operation: String::new(),
                                    input: None,
                                    caller: Some(EntityCaller {
                                        instance_id: r.instance_id.clone(),
                                        execution_id: r.execution_id.clone(),
                                        task_id: *id,
                                    }),
                                    scheduled_time: None,
                                    sender: Some(r.instance_id.clone()),
                                    kind: EntityRequestKind::Lock {
                                        critical_section: critical_section.clone(),
                                        lock_set: lock_set.clone(),
                                        position: 0,
                                    },
                                },
                            },
                            cx,
                        );
                    }
                }
                Action::UnlockEntities {
                    id,
                    critical_section,
                    lock_set,
                } => {
                    inst.push(HistoryEvent::scheduled(
                        *id,
                        now,
                        EventKind::EntityUnlockSent {
                            critical_section: critical_section.clone(),
                            lock_set: lock_set.clone(),
                        },
                    ));
                    inst.state.held_locks.remove(critical_section);
                    let sender = r.instance_id.clone();
                    self.send_unlocks(&sender, critical_section, lock_set, cx);
                }
                Action::Complete(c) => completion = Some(c),
            }
        }
        inst.push(HistoryEvent::new(now, EventKind::OrchestratorCompleted));
        inst.state.custom_status = r.custom_status.clone();
        inst.state.last_updated_at = now;
        match completion {
            None => self.make_runnable(&inst, cx),
            Some(Completion::Completed { result }) => {
                self.finish(
                    &mut inst,
                    RuntimeStatus::Completed,
                    result.clone(),
                    None,
                    cx,
                );
            }
            Some(Completion::Failed { failure }) => {
                self.finish(
                    &mut inst,
                    RuntimeStatus::Failed,
                    None,
                    Some(failure.clone()),
                    cx,
                );
            }
            Some(Completion::ContinuedAsNew {
                input,
                version,
                carryover,
                new_execution_id,
            }) => {
                self.release_locks(&mut inst, cx);
                let old_execution = inst.state.execution_id.clone();
                let id = r.instance_id.clone();
                self.globals
                    .timers
                    .retain(|_, t| !(t.instance_id == id && t.execution_id == old_execution));
                let s = &mut inst.state;
                let mut pending = vec![HistoryEvent::new(
                    now,
                    EventKind::ExecutionStarted {
                        name: s.name.clone(),
                        version: version.clone().or_else(|| s.version.clone()),
                        input: input.clone(),
                        execution_id: new_execution_id.clone(),
                        parent: s.parent.clone(),
                        scheduled_start: None,
                        tags: s.tags.clone(),
                    },
                )];
                pending.extend(carryover.iter().cloned());
                // Messages that arrived while the last episode ran belong to the new execution.
                pending.append(&mut s.pending);
                s.pending = pending;
                s.execution_id = new_execution_id.clone();
                s.input = input.clone();
                if version.is_some() {
                    s.version = version.clone();
                }
                s.output = None;
                s.status = RuntimeStatus::Running;
                s.history_len = 0;
                s.children.clear();
                inst.tail.clear();
                inst.reset = true;
                self.make_runnable(&inst, cx);
                cx.effects.push(Effect::InstanceChanged(id));
            }
        }
        if completion.is_none()
            && (inst.state.status != old_status || inst.state.custom_status != old_custom)
        {
            cx.effects
                .push(Effect::InstanceChanged(r.instance_id.clone()));
        }
        self.put(inst);
        Ok(())
    }

    /// Queues an operation on an entity, creating the entity on its first operation. A
    /// scheduled operation waits in the timer table until it is due; an unlock is applied at
    /// once.
    fn entity_operation(
        &mut self,
        entity_id: &str,
        op: EntityOperation,
        cx: &mut Apply,
        src: &dyn InstanceSource,
    ) -> Result<(), SourceError> {
        if let Some(due) = op.scheduled_time.filter(|t| *t > cx.now) {
            self.arm_timer(
                TimerEntry {
                    instance_id: entity_id.to_string(),
                    execution_id: String::new(),
                    due,
                    kind: TimerKind::EntityOperation(Box::new(EntityOperation {
                        scheduled_time: None,
                        ..op
                    })),
                },
                cx,
            );
            return Ok(());
        }
        if let EntityRequestKind::Unlock { critical_section } = &op.kind {
            if let Some(mut inst) = self.take(entity_id, src)? {
                let holds = inst
                    .state
                    .entity
                    .as_ref()
                    .and_then(|e| e.locked_by.as_ref())
                    .is_some_and(|(cs, _)| cs == critical_section);
                if holds {
                    if let Some(e) = inst.state.entity.as_mut() {
                        e.locked_by = None;
                    }
                    self.pump_locks(&mut inst, cx);
                    self.globals.runnable.remove(entity_id);
                    self.make_runnable(&inst, cx);
                    self.put_entity(inst);
                } else {
                    self.put_clean(inst);
                }
            }
            return Ok(());
        }
        let mut inst = match self.take(entity_id, src)? {
            Some(inst) if inst.state.entity.is_some() => inst,
            Some(inst) => {
                // An orchestration holds this id: the operation cannot be delivered.
                self.put_clean(inst);
                self.fail_entity_call(
                    entity_id,
                    &op,
                    "the id belongs to an orchestration, not an entity",
                    cx,
                );
                return Ok(());
            }
            None => Box::new(Instance {
                state: InstanceState {
                    instance_id: entity_id.to_string(),
                    name: entity_name(entity_id).unwrap_or_default().to_string(),
                    version: None,
                    execution_id: String::new(),
                    status: RuntimeStatus::Running,
                    input: None,
                    output: None,
                    failure: None,
                    custom_status: None,
                    created_at: cx.now,
                    last_updated_at: cx.now,
                    completed_at: None,
                    scheduled_start: None,
                    tags: BTreeMap::new(),
                    parent: None,
                    pending: Vec::new(),
                    history_len: 0,
                    children: BTreeMap::new(),
                    not_before: None,
                    entity: Some(EntityRecord {
                        state: None,
                        queue: VecDeque::new(),
                        last_modified: cx.now,
                        locked_by: None,
                    }),
                    held_locks: BTreeMap::new(),
                },
                tail: Vec::new(),
                reset: self.dirty.contains(entity_id),
            }),
        };
        if let Some(e) = inst.state.entity.as_mut() {
            e.queue.push_back(op);
        }
        self.pump_locks(&mut inst, cx);
        self.make_runnable(&inst, cx);
        self.put(inst);
        Ok(())
    }

    /// Grants lock requests at the head of an unlocked entity's queue: the entity is locked,
    /// and the request travels on to the next entity of the (sorted) set; from the last one,
    /// the orchestration learns that it holds every lock.
    fn pump_locks(&mut self, inst: &mut Instance, cx: &mut Apply) {
        loop {
            let Some(e) = inst.state.entity.as_mut() else {
                return;
            };
            if e.locked_by.is_some()
                || !e
                    .queue
                    .front()
                    .is_some_and(|op| matches!(op.kind, EntityRequestKind::Lock { .. }))
            {
                return;
            }
            let Some(op) = e.queue.pop_front() else {
                return;
            };
            let EntityRequestKind::Lock {
                critical_section,
                lock_set,
                position,
            } = op.kind.clone()
            else {
                return;
            };
            let holder = op
                .caller
                .as_ref()
                .map(|c| c.instance_id.clone())
                .unwrap_or_default();
            e.locked_by = Some((critical_section.clone(), holder));
            let next = position as usize + 1;
            if let Some(next_id) = lock_set.get(next) {
                self.send(
                    Message::EntityOperation {
                        entity_id: next_id.clone(),
                        operation: EntityOperation {
                            kind: EntityRequestKind::Lock {
                                critical_section,
                                lock_set: lock_set.clone(),
                                position: next as u32,
                            },
                            ..op
                        },
                    },
                    cx,
                );
            } else if let Some(caller) = op.caller {
                self.send(
                    Message::EntityLockGranted {
                        instance_id: caller.instance_id,
                        execution_id: caller.execution_id,
                        task_id: caller.task_id,
                        critical_section,
                    },
                    cx,
                );
            }
        }
    }

    /// Puts back an entity, deleting it if it has neither state, work nor a lock.
    fn put_entity(&mut self, inst: Box<Instance>) {
        let empty = inst
            .state
            .entity
            .as_ref()
            .is_some_and(|e| e.state.is_none() && e.queue.is_empty() && e.locked_by.is_none());
        if empty {
            let id = inst.state.instance_id.clone();
            self.dirty.insert(id.clone());
            self.instances.insert(id, Slot::Absent);
        } else {
            self.put(inst);
        }
    }

    /// Releases every critical section an orchestration still holds (it ended).
    fn release_locks(&mut self, inst: &mut Instance, cx: &mut Apply) {
        let held = std::mem::take(&mut inst.state.held_locks);
        for (critical_section, lock_set) in held {
            self.send_unlocks(&inst.state.instance_id, &critical_section, &lock_set, cx);
        }
    }

    fn send_unlocks(
        &mut self,
        sender: &str,
        critical_section: &str,
        lock_set: &[String],
        cx: &mut Apply,
    ) {
        for entity_id in lock_set {
            self.send(
                Message::EntityOperation {
                    entity_id: entity_id.clone(),
                    operation: EntityOperation {
                        request_id: format!("{critical_section}:unlock"),
                        operation: String::new(),
                        input: None,
                        caller: None,
                        scheduled_time: None,
                        sender: Some(sender.to_string()),
                        kind: EntityRequestKind::Unlock {
                            critical_section: critical_section.to_string(),
                        },
                    },
                },
                cx,
            );
        }
    }

    /// Answers a caller whose entity operation cannot be delivered.
    fn fail_entity_call(
        &mut self,
        entity_id: &str,
        op: &EntityOperation,
        why: &str,
        cx: &mut Apply,
    ) {
        if let Some(caller) = &op.caller {
            let failure = FailureDetails::new(
                "EntityOperationFailed",
                format!(
                    "operation '{}' on '{entity_id}' failed: {why}",
                    op.operation
                ),
            )
            .non_retriable();
            self.send(
                Message::EntityResult {
                    instance_id: caller.instance_id.clone(),
                    execution_id: caller.execution_id.clone(),
                    task_id: caller.task_id,
                    request_id: op.request_id.clone(),
                    result: Err(failure),
                },
                cx,
            );
        }
    }

    fn entity_batch_completed(
        &mut self,
        r: &EntityBatchResult,
        cx: &mut Apply,
        src: &dyn InstanceSource,
    ) -> Result<(), SourceError> {
        let Some(mut inst) = self.take(&r.entity_id, src)? else {
            return Ok(());
        };
        // One pass over the queue (batches are large: no per-id scans).
        let wanted: HashSet<&str> = r.processed.iter().map(|s| s.as_str()).collect();
        let all_queued = wanted.len() == r.processed.len()
            && inst.state.entity.as_ref().is_some_and(|e| {
                e.queue
                    .iter()
                    .filter(|op| {
                        op.kind == EntityRequestKind::Operation
                            && wanted.contains(op.request_id.as_str())
                    })
                    .count()
                    == wanted.len()
            });
        if !all_queued || r.results.len() != r.processed.len() {
            // Stale: the batch does not match what is queued any more.
            let runnable = self.globals.runnable.contains(&r.entity_id);
            self.put_clean(inst);
            if runnable {
                cx.effects.push(Effect::RunEpisode(r.entity_id.clone()));
            }
            return Ok(());
        }
        self.globals.runnable.remove(&r.entity_id);
        let mut done: Vec<EntityOperation> = Vec::with_capacity(r.processed.len());
        if let Some(e) = inst.state.entity.as_mut() {
            e.state = r.state.clone();
            e.last_modified = cx.now;
            let processed: HashSet<&String> = r.processed.iter().collect();
            let mut by_id: HashMap<String, EntityOperation> = HashMap::new();
            e.queue.retain(|op| {
                let hit =
                    op.kind == EntityRequestKind::Operation && processed.contains(&op.request_id);
                if hit {
                    by_id.insert(op.request_id.clone(), op.clone());
                }
                !hit
            });
            for id in &r.processed {
                if let Some(op) = by_id.remove(id) {
                    done.push(op);
                }
            }
        }
        inst.state.last_updated_at = cx.now;
        for (op, result) in done.iter().zip(&r.results) {
            if let Some(caller) = &op.caller {
                self.send(
                    Message::EntityResult {
                        instance_id: caller.instance_id.clone(),
                        execution_id: caller.execution_id.clone(),
                        task_id: caller.task_id,
                        request_id: op.request_id.clone(),
                        result: result.clone(),
                    },
                    cx,
                );
            }
        }
        for action in &r.actions {
            match action {
                EntityAction::Signal {
                    entity_id,
                    operation,
                    input,
                    scheduled_time,
                    request_id,
                } => self.send(
                    Message::EntityOperation {
                        entity_id: entity_id.clone(),
                        operation: EntityOperation {
                            request_id: request_id.clone(),
                            operation: operation.clone(),
                            input: input.clone(),
                            caller: None,
                            scheduled_time: *scheduled_time,
                            sender: None,
                            kind: EntityRequestKind::Operation,
                        },
                    },
                    cx,
                ),
                EntityAction::StartOrchestration {
                    instance_id,
                    name,
                    input,
                    execution_id,
                } => self.send(
                    Message::StartOrchestration(StartRequest {
                        instance_id: instance_id.clone(),
                        name: name.clone(),
                        version: None,
                        input: input.clone(),
                        scheduled_start: None,
                        tags: BTreeMap::new(),
                        execution_id: execution_id.clone(),
                        if_exists: ExistingPolicy::ReturnExisting,
                    }),
                    cx,
                ),
            }
        }
        cx.effects
            .push(Effect::InstanceChanged(r.entity_id.clone()));
        self.pump_locks(&mut inst, cx);
        self.make_runnable(&inst, cx);
        // An entity without state, work or lock does not exist: it is deleted.
        self.put_entity(inst);
        Ok(())
    }

    /// Collects everything changed since the last checkpoint and marks it clean. An encoding
    /// failure is returned before anything of the instance it concerns is marked clean; the
    /// shell then stops the partition (recovery replays the log), writing nothing.
    pub fn checkpoint(&mut self) -> Result<CheckpointData, crate::EncodeError> {
        let mut data = CheckpointData {
            position: self.globals.position,
            globals: crate::encode("the partition's globals", &self.globals)?,
            ..CheckpointData::default()
        };
        let mut dirty: Vec<String> = self.dirty.drain().collect();
        dirty.sort();
        for id in dirty {
            match self.instances.get_mut(&id) {
                Some(Slot::Live(inst)) => {
                    let base = inst.persisted_len();
                    let mut appends = Vec::with_capacity(inst.tail.len());
                    for (i, ev) in inst.tail.iter().enumerate() {
                        let bytes = crate::encode("a history event", ev)?;
                        appends.push((id.clone(), base + i as u32, bytes));
                    }
                    let state = inst.state.encode()?;
                    if inst.reset {
                        data.history_resets.push(id.clone());
                        inst.reset = false;
                    }
                    inst.tail.clear();
                    data.history_appends.extend(appends);
                    data.puts.push((id.clone(), state));
                }
                _ => {
                    data.history_resets.push(id.clone());
                    data.deletes.push(id);
                }
            }
        }
        Ok(data)
    }
}

/// Why a failed execution cannot be rewound faithfully, if it cannot (see `rewind`);
/// `last_episode` is where its failing episode starts.
fn cannot_rewind(history: &[HistoryEvent], last_episode: usize) -> Option<String> {
    let is_scheduling = |k: &EventKind| {
        matches!(
            k,
            EventKind::TaskScheduled { .. }
                | EventKind::SubOrchestrationCreated { .. }
                | EventKind::TimerCreated { .. }
                | EventKind::EventSent { .. }
                | EventKind::EntityOperationCalled { .. }
                | EventKind::EntityOperationSignaled { .. }
                | EventKind::EntityLockRequested { .. }
                | EventKind::EntityUnlockSent { .. }
        )
    };
    if history
        .iter()
        .any(|e| matches!(e.kind, EventKind::EntityLockRequested { .. }))
    {
        return Some(
            "cannot be rewound: it used critical sections, whose locks were released when it failed"
                .into(),
        );
    }
    let answered: HashSet<i32> = history.iter().filter_map(|e| e.kind.completes()).collect();
    if history.iter().any(|e| {
        matches!(e.kind, EventKind::EntityOperationCalled { .. }) && !answered.contains(&e.event_id)
    }) {
        return Some(
            "cannot be rewound: an entity call was still unanswered when it failed".into(),
        );
    }
    if history[last_episode..]
        .iter()
        .any(|e| is_scheduling(&e.kind))
    {
        return Some(
            "cannot be rewound: the step that failed it also scheduled new work, which a replay would not repeat"
                .into(),
        );
    }
    None
}

/// Decodes a history row written by [`PartitionState::checkpoint`].
pub fn decode_history_event(bytes: &[u8]) -> Result<HistoryEvent, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
#[path = "partition_tests.rs"]
mod tests;

/// An execution id for a sub-orchestration the state machine starts again by itself (a rewind
/// of a parent whose failed child was purged). The core draws no randomness, so the id is
/// derived from the parent's execution, the log position of the rewind and the task: the same
/// on every replay, and distinct from any other (FNV-1a, two halves with different seeds).
fn derived_execution_id(parent_execution: &str, position: u64, task_id: i32) -> String {
    let hash = |seed: u64| {
        let mut h = seed;
        let bytes = parent_execution
            .bytes()
            .chain(position.to_le_bytes())
            .chain(task_id.to_le_bytes());
        for b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    format!(
        "{:016x}{:016x}",
        hash(0xcbf2_9ce4_8422_2325),
        hash(0x6c62_272e_07bb_0142)
    )
}
