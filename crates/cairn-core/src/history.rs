//! History events: the append-only record an orchestration is rebuilt from.
//!
//! The shapes follow the Durable Task Framework so that SDKs speaking the sidecar protocol can
//! replay against them unchanged: scheduling events carry the orchestrator's sequence number as
//! their `event_id`, and completion events point back at it with `task_scheduled_id`.
//! Payloads are opaque strings (JSON by convention); Cairn never interprets them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Milliseconds since the Unix epoch. All time in Cairn's model is carried in log records.
pub type Millis = u64;

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum RuntimeStatus {
    Pending,
    Running,
    Completed,
    ContinuedAsNew,
    Failed,
    Terminated,
    Suspended,
}

impl RuntimeStatus {
    pub const ALL: [RuntimeStatus; 7] = [
        RuntimeStatus::Pending,
        RuntimeStatus::Running,
        RuntimeStatus::Completed,
        RuntimeStatus::ContinuedAsNew,
        RuntimeStatus::Failed,
        RuntimeStatus::Terminated,
        RuntimeStatus::Suspended,
    ];

    /// A terminal instance does no more work until it is started again or purged.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RuntimeStatus::Completed | RuntimeStatus::Failed | RuntimeStatus::Terminated
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeStatus::Pending => "Pending",
            RuntimeStatus::Running => "Running",
            RuntimeStatus::Completed => "Completed",
            RuntimeStatus::ContinuedAsNew => "ContinuedAsNew",
            RuntimeStatus::Failed => "Failed",
            RuntimeStatus::Terminated => "Terminated",
            RuntimeStatus::Suspended => "Suspended",
        }
    }

    /// The status named `s` (case-insensitive).
    pub fn parse(s: &str) -> Option<RuntimeStatus> {
        RuntimeStatus::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for RuntimeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why something failed: carried from an activity or sub-orchestration up the call chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetails {
    pub error_type: String,
    pub message: String,
    pub details: Option<String>,
    pub inner: Option<Box<FailureDetails>>,
    /// False for failures that retrying cannot fix (e.g. an unknown function name).
    pub retriable: bool,
}

impl FailureDetails {
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        FailureDetails {
            error_type: error_type.into(),
            message: message.into(),
            details: None,
            inner: None,
            retriable: true,
        }
    }

    pub fn non_retriable(mut self) -> Self {
        self.retriable = false;
        self
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    pub fn with_inner(mut self, inner: FailureDetails) -> Self {
        self.inner = Some(Box::new(inner));
        self
    }
}

impl std::fmt::Display for FailureDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)?;
        if let Some(inner) = &self.inner {
            write!(f, " (caused by {inner})")?;
        }
        Ok(())
    }
}

/// Result of an activity or sub-orchestration: a payload or a failure.
pub type TaskResult = Result<Option<String>, FailureDetails>;

/// The parent of a sub-orchestration, so its completion can be reported back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentInstance {
    pub instance_id: String,
    pub execution_id: String,
    pub name: String,
    /// The parent's sequence number of the `SubOrchestrationCreated` event.
    pub task_id: i32,
}

/// One entry of an instance's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// For scheduling events: the orchestrator's sequence number. Otherwise -1.
    pub event_id: i32,
    pub timestamp: Millis,
    pub kind: EventKind,
}

impl HistoryEvent {
    pub fn new(timestamp: Millis, kind: EventKind) -> Self {
        HistoryEvent {
            event_id: -1,
            timestamp,
            kind,
        }
    }

    pub fn scheduled(event_id: i32, timestamp: Millis, kind: EventKind) -> Self {
        HistoryEvent {
            event_id,
            timestamp,
            kind,
        }
    }

    /// Rough in-memory footprint, used by the instance cache's size accounting.
    pub fn approx_size(&self) -> usize {
        let payload = match &self.kind {
            EventKind::ExecutionStarted { input, name, .. } => {
                name.len() + input.as_ref().map_or(0, |s| s.len())
            }
            EventKind::TaskScheduled { input, name, .. } => {
                name.len() + input.as_ref().map_or(0, |s| s.len())
            }
            EventKind::TaskCompleted { result, .. }
            | EventKind::SubOrchestrationCompleted { result, .. } => {
                result.as_ref().map_or(0, |s| s.len())
            }
            EventKind::EventRaised { input, name } | EventKind::EventSent { input, name, .. } => {
                name.len() + input.as_ref().map_or(0, |s| s.len())
            }
            EventKind::SubOrchestrationCreated { input, name, .. } => {
                name.len() + input.as_ref().map_or(0, |s| s.len())
            }
            EventKind::ExecutionCompleted { result, .. } => result.as_ref().map_or(0, |s| s.len()),
            EventKind::TaskFailed { failure, .. }
            | EventKind::SubOrchestrationFailed { failure, .. } => {
                failure.message.len() + failure.details.as_ref().map_or(0, |s| s.len())
            }
            _ => 0,
        };
        64 + payload
    }
}

/// What happened. Variant names follow the Durable Task history event names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    ExecutionStarted {
        name: String,
        version: Option<String>,
        input: Option<String>,
        execution_id: String,
        parent: Option<ParentInstance>,
        scheduled_start: Option<Millis>,
        tags: BTreeMap<String, String>,
    },
    ExecutionCompleted {
        status: RuntimeStatus,
        result: Option<String>,
        failure: Option<FailureDetails>,
    },
    ExecutionTerminated {
        reason: Option<String>,
    },
    ExecutionSuspended {
        reason: Option<String>,
    },
    ExecutionResumed {
        reason: Option<String>,
    },
    /// A Failed execution was put back to Running (wakes the orchestration; no other effect
    /// on replay).
    ExecutionRewound {
        reason: Option<String>,
    },
    TaskScheduled {
        name: String,
        version: Option<String>,
        input: Option<String>,
    },
    TaskCompleted {
        task_scheduled_id: i32,
        result: Option<String>,
    },
    TaskFailed {
        task_scheduled_id: i32,
        failure: FailureDetails,
    },
    SubOrchestrationCreated {
        name: String,
        version: Option<String>,
        instance_id: String,
        input: Option<String>,
    },
    SubOrchestrationCompleted {
        task_scheduled_id: i32,
        result: Option<String>,
    },
    SubOrchestrationFailed {
        task_scheduled_id: i32,
        failure: FailureDetails,
    },
    TimerCreated {
        fire_at: Millis,
    },
    TimerFired {
        timer_id: i32,
        fire_at: Millis,
    },
    /// Marks the start of an episode; its timestamp is the orchestration's `current_time`.
    OrchestratorStarted,
    OrchestratorCompleted,
    EventSent {
        instance_id: String,
        name: String,
        input: Option<String>,
    },
    EventRaised {
        name: String,
        input: Option<String>,
    },
    /// Anything else an SDK may record; opaque to Cairn.
    GenericEvent {
        data: Option<String>,
    },
    /// The orchestration called an entity operation (a scheduling event: `event_id` is the step).
    EntityOperationCalled {
        request_id: String,
        target_instance_id: String,
        operation: String,
        input: Option<String>,
    },
    /// The orchestration signaled an entity (one-way; a scheduling event).
    EntityOperationSignaled {
        request_id: String,
        target_instance_id: String,
        operation: String,
        input: Option<String>,
        scheduled_time: Option<Millis>,
    },
    EntityOperationCompleted {
        task_scheduled_id: i32,
        request_id: String,
        result: Option<String>,
    },
    EntityOperationFailed {
        task_scheduled_id: i32,
        request_id: String,
        failure: FailureDetails,
    },
    /// The orchestration asked to lock entities (a scheduling event).
    EntityLockRequested {
        critical_section: String,
        lock_set: Vec<String>,
    },
    EntityLockGranted {
        task_scheduled_id: i32,
        critical_section: String,
    },
    /// The orchestration released a critical section (a scheduling event).
    EntityUnlockSent {
        critical_section: String,
        lock_set: Vec<String>,
    },
}

impl EventKind {
    /// The scheduling step (`event_id` of its `TaskScheduled`, `SubOrchestrationCreated`,
    /// `TimerCreated` or `EntityOperationCalled`) this event is the outcome of, if it is one.
    pub fn completes(&self) -> Option<i32> {
        match self {
            EventKind::TaskCompleted {
                task_scheduled_id, ..
            }
            | EventKind::TaskFailed {
                task_scheduled_id, ..
            }
            | EventKind::SubOrchestrationCompleted {
                task_scheduled_id, ..
            }
            | EventKind::SubOrchestrationFailed {
                task_scheduled_id, ..
            }
            | EventKind::EntityOperationCompleted {
                task_scheduled_id, ..
            }
            | EventKind::EntityOperationFailed {
                task_scheduled_id, ..
            } => Some(*task_scheduled_id),
            EventKind::TimerFired { timer_id, .. } => Some(*timer_id),
            _ => None,
        }
    }

    /// Short name for messages and dashboards.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::ExecutionStarted { .. } => "ExecutionStarted",
            EventKind::ExecutionCompleted { .. } => "ExecutionCompleted",
            EventKind::ExecutionTerminated { .. } => "ExecutionTerminated",
            EventKind::ExecutionSuspended { .. } => "ExecutionSuspended",
            EventKind::ExecutionResumed { .. } => "ExecutionResumed",
            EventKind::ExecutionRewound { .. } => "ExecutionRewound",
            EventKind::TaskScheduled { .. } => "TaskScheduled",
            EventKind::TaskCompleted { .. } => "TaskCompleted",
            EventKind::TaskFailed { .. } => "TaskFailed",
            EventKind::SubOrchestrationCreated { .. } => "SubOrchestrationInstanceCreated",
            EventKind::SubOrchestrationCompleted { .. } => "SubOrchestrationInstanceCompleted",
            EventKind::SubOrchestrationFailed { .. } => "SubOrchestrationInstanceFailed",
            EventKind::TimerCreated { .. } => "TimerCreated",
            EventKind::TimerFired { .. } => "TimerFired",
            EventKind::OrchestratorStarted => "OrchestratorStarted",
            EventKind::OrchestratorCompleted => "OrchestratorCompleted",
            EventKind::EventSent { .. } => "EventSent",
            EventKind::EventRaised { .. } => "EventRaised",
            EventKind::GenericEvent { .. } => "GenericEvent",
            EventKind::EntityOperationCalled { .. } => "EntityOperationCalled",
            EventKind::EntityOperationSignaled { .. } => "EntityOperationSignaled",
            EventKind::EntityOperationCompleted { .. } => "EntityOperationCompleted",
            EventKind::EntityOperationFailed { .. } => "EntityOperationFailed",
            EventKind::EntityLockRequested { .. } => "EntityLockRequested",
            EventKind::EntityLockGranted { .. } => "EntityLockGranted",
            EventKind::EntityUnlockSent { .. } => "EntityUnlockSent",
        }
    }
}
