//! Log records and effects: the inputs and outputs of the partition state machine.
//!
//! A [`LogRecord`] is everything that can change a partition: a client request, a batch of
//! messages from another partition, or the result of work done outside the state machine (an
//! orchestration episode, an activity, a timer). Records are serialized with postcard into the
//! partition log; their encoding is part of the on-disk format ([`LOG_FORMAT_VERSION`]).
//!
//! An [`Effect`] is what applying a record asks the shell to do. Effects are data; the state
//! machine never performs them.

use crate::history::{
    FailureDetails, HistoryEvent, Millis, ParentInstance, RuntimeStatus, TaskResult,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bumped whenever the encoding of log records or checkpoints changes incompatibly.
///
/// Version 3 added the counts by orchestration name to a checkpoint's globals. Version 4 keeps
/// the instances with work in the store's backlog index instead of listing them in the
/// globals, which it tags with their version. Version 5 keeps queued activities in the
/// store's `work` table instead of the globals. Hubs of versions 2 to 4 are upgraded when
/// opened ([`OLDEST_READABLE_FORMAT_VERSION`]).
pub const LOG_FORMAT_VERSION: u32 = 5;

/// The oldest format this version of Cairn opens (and upgrades).
pub const OLDEST_READABLE_FORMAT_VERSION: u32 = 2;

/// One entry of a partition's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Wall-clock time the shell stamped on the record; the only clock the state machine sees.
    pub timestamp: Millis,
    pub event: PartitionEvent,
}

/// A value that could not be encoded for the log or a checkpoint. Nothing is written when this
/// happens: the partition that meets it stops, rather than write an empty or partial record.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {what}: {source}")]
pub struct EncodeError {
    pub what: &'static str,
    #[source]
    pub source: postcard::Error,
}

/// Encodes `value` (a `what`, for the error) in the on-disk format.
pub fn encode<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, EncodeError> {
    postcard::to_stdvec(value).map_err(|source| EncodeError { what, source })
}

impl LogRecord {
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        encode("a log record", self)
    }

    pub fn decode(bytes: &[u8]) -> Result<LogRecord, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PartitionEvent {
    Client(ClientRequest),
    /// Messages from partition `from`, in the sender's order.
    Messages {
        from: u32,
        batch: Vec<(MessageId, Message)>,
    },
    EpisodeCompleted(EpisodeResult),
    /// An entity processed a batch of its queued operations.
    EntityBatchCompleted(EntityBatchResult),
    ActivityCompleted {
        activity_id: u64,
        result: TaskResult,
    },
    TimerFired {
        timer_id: u64,
    },
    /// Partition `to` has made our messages up to `up_to` durable: drop them from the outbox.
    OutboxAck {
        to: u32,
        up_to: MessageId,
    },
}

/// Identity of a message between partitions: the sender's log position and index within it.
/// Receivers keep the highest id seen per sender and drop anything at or below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId {
    pub position: u64,
    pub index: u32,
}

/// A message from one instance to another (possibly in another partition).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    StartSubOrchestration {
        parent: ParentInstance,
        instance_id: String,
        name: String,
        version: Option<String>,
        input: Option<String>,
        execution_id: String,
    },
    SubOrchestrationCompleted {
        parent_instance_id: String,
        parent_execution_id: String,
        task_id: i32,
        result: TaskResult,
    },
    RaiseEvent {
        instance_id: String,
        name: String,
        input: Option<String>,
    },
    Terminate {
        instance_id: String,
        reason: Option<String>,
        recursive: bool,
    },
    /// Rewind a failed sub-orchestration whose parent is being rewound. If the child is no
    /// longer failed, it reports its outcome to `parent` again (the parent dropped it while it
    /// was failed), so the parent never waits forever.
    Rewind {
        instance_id: String,
        reason: Option<String>,
        parent: ParentInstance,
    },
    /// An operation for an entity (a signal, or a call whose result goes back to `caller`).
    EntityOperation {
        entity_id: String,
        operation: EntityOperation,
    },
    /// Start an orchestration on behalf of an entity (no parent waits for it).
    StartOrchestration(StartRequest),
    /// Every entity of a critical section is locked: tell the orchestration.
    EntityLockGranted {
        instance_id: String,
        execution_id: String,
        task_id: i32,
        critical_section: String,
    },
    /// The result of an entity call, for the calling orchestration.
    EntityResult {
        instance_id: String,
        execution_id: String,
        task_id: i32,
        request_id: String,
        result: TaskResult,
    },
    /// [`Message::Rewind`] with what the parent's history recorded of the sub-orchestration:
    /// if it no longer exists (it was purged), it is started afresh from that, with
    /// `execution_id`, as the reference backend does. (A new variant, at the end, so logs
    /// written before it still decode.)
    RewindSubOrchestration {
        instance_id: String,
        reason: Option<String>,
        parent: ParentInstance,
        name: String,
        version: Option<String>,
        input: Option<String>,
        execution_id: String,
    },
}

/// One queued operation of an entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityOperation {
    pub request_id: String,
    pub operation: String,
    pub input: Option<String>,
    /// Who waits for the result; None for a signal.
    pub caller: Option<EntityCaller>,
    /// Do not deliver before this time (scheduled signals).
    pub scheduled_time: Option<Millis>,
    /// The orchestration that sent it, if any: a lock holder's operations pass its lock.
    pub sender: Option<String>,
    pub kind: EntityRequestKind,
}

/// An operation, or a step of the lock protocol of critical sections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum EntityRequestKind {
    #[default]
    Operation,
    /// Lock this entity for `critical_section`, then pass the request on to
    /// `lock_set[position + 1]` (entities are locked in `lock_set` order, which is sorted, so
    /// two critical sections can never wait for each other).
    Lock {
        critical_section: String,
        lock_set: Vec<String>,
        position: u32,
    },
    /// Release the lock of `critical_section`.
    Unlock { critical_section: String },
}

/// The orchestration step waiting for an entity call's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityCaller {
    pub instance_id: String,
    pub execution_id: String,
    pub task_id: i32,
}

/// What running a batch of entity operations decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityBatchResult {
    pub entity_id: String,
    /// Request ids of the queued operations the batch processed, in order.
    pub processed: Vec<String>,
    /// The entity's state after the batch; None means the entity has no state (deleted).
    pub state: Option<String>,
    /// One result per processed operation, in order.
    pub results: Vec<TaskResult>,
    /// Signals to other entities and orchestrations to start, from operations that succeeded.
    pub actions: Vec<EntityAction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EntityAction {
    Signal {
        entity_id: String,
        operation: String,
        input: Option<String>,
        scheduled_time: Option<Millis>,
        request_id: String,
    },
    StartOrchestration {
        instance_id: String,
        name: String,
        input: Option<String>,
        execution_id: String,
    },
}

impl Message {
    /// The instance this message is delivered to.
    pub fn target(&self) -> &str {
        match self {
            Message::StartSubOrchestration { instance_id, .. }
            | Message::RaiseEvent { instance_id, .. }
            | Message::Terminate { instance_id, .. }
            | Message::Rewind { instance_id, .. }
            | Message::RewindSubOrchestration { instance_id, .. } => instance_id,
            Message::SubOrchestrationCompleted {
                parent_instance_id, ..
            } => parent_instance_id,
            Message::EntityOperation { entity_id, .. } => entity_id,
            Message::StartOrchestration(start) => &start.instance_id,
            Message::EntityResult { instance_id, .. }
            | Message::EntityLockGranted { instance_id, .. } => instance_id,
        }
    }
}

/// A client request, logged so its effect is durable before it is acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Chosen by the shell to route the response; not interpreted by the state machine.
    pub request_id: u64,
    pub kind: ClientRequestKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientRequestKind {
    Start(StartRequest),
    RaiseEvent {
        instance_id: String,
        name: String,
        input: Option<String>,
    },
    /// `reason` becomes the instance's output: a payload (JSON by convention).
    Terminate {
        instance_id: String,
        reason: Option<String>,
        recursive: bool,
    },
    Suspend {
        instance_id: String,
        reason: Option<String>,
    },
    Resume {
        instance_id: String,
        reason: Option<String>,
    },
    /// Put a Failed instance back to Running: its last failures are forgotten and the failed
    /// activities and sub-orchestrations run again.
    Rewind {
        instance_id: String,
        reason: Option<String>,
    },
    /// Queue an operation on an entity (created implicitly on its first operation).
    SignalEntity {
        entity_id: String,
        operation: EntityOperation,
    },
    /// Delete terminal instances and their histories. Non-terminal ids are left alone.
    Purge {
        instance_ids: Vec<String>,
    },
}

impl ClientRequestKind {
    pub fn instance_ids(&self) -> Vec<&str> {
        match self {
            ClientRequestKind::Start(s) => vec![&s.instance_id],
            ClientRequestKind::RaiseEvent { instance_id, .. }
            | ClientRequestKind::Terminate { instance_id, .. }
            | ClientRequestKind::Suspend { instance_id, .. }
            | ClientRequestKind::Resume { instance_id, .. }
            | ClientRequestKind::Rewind { instance_id, .. } => vec![instance_id],
            ClientRequestKind::SignalEntity { entity_id, .. } => vec![entity_id],
            ClientRequestKind::Purge { instance_ids } => {
                instance_ids.iter().map(|s| s.as_str()).collect()
            }
        }
    }
}

/// What to do when starting an id that is already Pending/Running/Suspended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ExistingPolicy {
    /// Return the existing instance (idempotent start). The default.
    #[default]
    ReturnExisting,
    /// Fail with [`ClientResponse::AlreadyExists`].
    Fail,
    /// Terminate the running execution and start a new one.
    TerminateAndRestart,
    /// Replace the instance only if its status is one of these (terminating it if it runs);
    /// otherwise fail with [`ClientResponse::AlreadyExists`]. This is the Durable Task
    /// protocol's `OrchestrationIdReusePolicy`; an empty list means "never replace".
    ReplaceIf(Vec<RuntimeStatus>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartRequest {
    pub instance_id: String,
    pub name: String,
    pub version: Option<String>,
    pub input: Option<String>,
    pub scheduled_start: Option<Millis>,
    pub tags: BTreeMap<String, String>,
    /// Fresh 32-hex-digit id, drawn by the shell.
    pub execution_id: String,
    pub if_exists: ExistingPolicy,
}

impl StartRequest {
    /// The start of a sub-orchestration: no schedule, no tags, and an id already in use is an
    /// error (the parent is told).
    pub fn sub_orchestration(
        instance_id: String,
        name: String,
        version: Option<String>,
        input: Option<String>,
        execution_id: String,
    ) -> StartRequest {
        StartRequest {
            instance_id,
            name,
            version,
            input,
            scheduled_start: None,
            tags: BTreeMap::new(),
            execution_id,
            if_exists: ExistingPolicy::Fail,
        }
    }
}

/// The state machine's answer to a client request (released only once durable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientResponse {
    Started {
        execution_id: String,
    },
    /// The id is in use; the existing execution is returned (or rejected, per policy).
    AlreadyExists {
        execution_id: String,
        status: RuntimeStatus,
        rejected: bool,
    },
    Ok,
    NotFound,
    /// The request does not apply to an instance in this status.
    WrongStatus {
        status: RuntimeStatus,
    },
    Purged {
        count: u64,
    },
    /// The request applies to this status but not to this instance, for the reason given.
    Refused {
        reason: String,
    },
}

/// What an orchestration episode decided: produced by running orchestrator code (native Rust
/// replay or a remote SDK worker) over the instance's history and pending messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeResult {
    pub instance_id: String,
    pub execution_id: String,
    /// History length the episode started from; a mismatch means the episode is stale.
    pub history_len: u32,
    /// How many pending messages (a prefix) the episode processed.
    pub consumed: u32,
    /// When the episode started: the orchestration's `current_time`, recorded as the
    /// `OrchestratorStarted` timestamp so replay sees the same time.
    pub started_at: Millis,
    pub actions: Vec<Action>,
    pub custom_status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    ScheduleTask {
        id: i32,
        name: String,
        version: Option<String>,
        input: Option<String>,
    },
    CreateSubOrchestration {
        id: i32,
        instance_id: String,
        name: String,
        version: Option<String>,
        input: Option<String>,
        /// Drawn by the shell before the episode result is logged.
        execution_id: String,
    },
    CreateTimer {
        id: i32,
        fire_at: Millis,
    },
    SendEvent {
        id: i32,
        instance_id: String,
        name: String,
        input: Option<String>,
    },
    /// Call an entity operation; its result arrives as `EntityOperationCompleted/Failed`.
    CallEntity {
        id: i32,
        entity_id: String,
        operation: String,
        input: Option<String>,
        request_id: String,
    },
    /// Signal an entity (one-way).
    SignalEntity {
        id: i32,
        entity_id: String,
        operation: String,
        input: Option<String>,
        scheduled_time: Option<Millis>,
        request_id: String,
    },
    /// Lock a set of entities (a critical section); granted as `EntityLockGranted`.
    LockEntities {
        id: i32,
        critical_section: String,
        /// Sorted, without duplicates.
        lock_set: Vec<String>,
    },
    /// Release a critical section's locks.
    UnlockEntities {
        id: i32,
        critical_section: String,
        lock_set: Vec<String>,
    },
    Complete(Completion),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Completion {
    Completed {
        result: Option<String>,
    },
    Failed {
        failure: FailureDetails,
    },
    ContinuedAsNew {
        input: Option<String>,
        version: Option<String>,
        /// Events the old execution received but did not process, handed to the new one.
        carryover: Vec<HistoryEvent>,
        /// Drawn by the shell.
        new_execution_id: String,
    },
}

/// An activity waiting to run, owned by the partition of its orchestration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityWorkItem {
    pub instance_id: String,
    pub execution_id: String,
    pub task_id: i32,
    pub name: String,
    pub version: Option<String>,
    pub input: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimerKind {
    /// A durable timer of the orchestration (`TimerCreated` with this id).
    Orchestration { task_id: i32, fire_at: Millis },
    /// The scheduled start time of a Pending instance.
    ScheduledStart,
    /// A scheduled entity operation, queued on the entity when due.
    EntityOperation(Box<EntityOperation>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerEntry {
    pub instance_id: String,
    pub execution_id: String,
    pub due: Millis,
    pub kind: TimerKind,
}

/// What applying a record asks the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The instance has messages to process and no episode should be assumed running.
    RunEpisode(String),
    /// An activity was queued (see `PartitionState::activity`).
    StartActivity(u64),
    /// A durable timer was registered.
    ScheduleTimer { timer_id: u64, due: Millis },
    /// The outbox towards partition `to` has new messages: send them once durable.
    SendMessages { to: u32 },
    /// Tell partition `to` we have its messages up to `up_to` (once durable).
    AckMessages { to: u32, up_to: MessageId },
    /// Answer a client (once durable).
    Respond {
        request_id: u64,
        response: ClientResponse,
    },
    /// The instance's status, output or custom status changed (wake waiters once durable).
    InstanceChanged(String),
}
