//! The JSON shapes of the Durable Functions HTTP API, built from Cairn's types.
//!
//! Payloads are stored as JSON text; they are embedded as JSON values (a payload that is not
//! valid JSON, which an SDK may store, is embedded as a string).

use cairn_core::{EventKind, HistoryEvent, Millis};
use cairn_runtime::{EntityStatus, InstanceStatus};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

/// A stored payload as a JSON value.
pub fn payload(p: Option<&str>) -> Value {
    match p {
        None => Value::Null,
        Some(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string())),
    }
}

/// `2026-11-23T13:25:43.123Z`. Durable Functions gives instance times in whole seconds; RFC 3339
/// readers take the fraction as well, and a dashboard's durations need it.
pub fn time_millis(ms: Millis) -> String {
    // RFC 3339 ends at year 9999; a far-future timer is shown there rather than failing.
    const LAST: Millis = 253_402_300_799_999;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.min(LAST))).to_string()
}

/// What to include in a status object.
#[derive(Debug, Clone, Copy)]
pub struct StatusView {
    pub show_input: bool,
    pub show_history_output: bool,
}

/// The status object of `GET /instances/{id}` and of query results.
pub fn status(s: &InstanceStatus, view: StatusView) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), json!(s.name));
    o.insert("instanceId".into(), json!(s.instance_id));
    o.insert("runtimeStatus".into(), json!(s.status.as_str()));
    o.insert(
        "input".into(),
        if view.show_input {
            payload(s.input.as_deref())
        } else {
            Value::Null
        },
    );
    o.insert("customStatus".into(), payload(s.custom_status.as_deref()));
    o.insert("output".into(), payload(s.output.as_deref()));
    o.insert("createdTime".into(), json!(time_millis(s.created_at)));
    o.insert(
        "lastUpdatedTime".into(),
        json!(time_millis(s.last_updated_at)),
    );
    if let Some(f) = &s.failure {
        o.insert(
            "failureDetails".into(),
            json!({
                "errorType": f.error_type,
                "errorMessage": f.message,
                "stackTrace": f.details,
            }),
        );
    }
    if let Some(v) = &s.version {
        o.insert("version".into(), json!(v));
    }
    if !s.tags.is_empty() {
        o.insert("tags".into(), json!(s.tags));
    }
    if let Some(p) = &s.parent {
        o.insert("parentInstanceId".into(), json!(p.instance_id));
    }
    if let Some(history) = &s.history {
        o.insert(
            "historyEvents".into(),
            Value::Array(history_events(history, view)),
        );
    }
    Value::Object(o)
}

/// History in the Durable Functions shape: PascalCase keys, episode markers left out, and each
/// scheduling event folded into its outcome (which gains `FunctionName`, `ScheduledTime` and,
/// with `showInput`, `Input`). A step still in flight keeps its scheduling event, so a timeline
/// can draw it up to now.
pub fn history_events(history: &[HistoryEvent], view: StatusView) -> Vec<Value> {
    // Scheduling events by task id, and which of them have an outcome.
    let mut scheduled: HashMap<i32, &HistoryEvent> = HashMap::new();
    let mut finished: std::collections::HashSet<i32> = Default::default();
    for e in history {
        match &e.kind {
            EventKind::TaskScheduled { .. }
            | EventKind::SubOrchestrationCreated { .. }
            | EventKind::TimerCreated { .. }
            | EventKind::EntityOperationCalled { .. } => {
                scheduled.insert(e.event_id, e);
            }
            _ => {}
        }
        if let Some(id) = e.kind.completes() {
            finished.insert(id);
        }
    }
    let result = |r: &Option<String>| {
        if view.show_history_output {
            payload(r.as_deref())
        } else {
            Value::Null
        }
    };
    let input = |i: &Option<String>| {
        if view.show_input {
            payload(i.as_deref())
        } else {
            Value::Null
        }
    };
    let mut out = Vec::new();
    for e in history {
        let mut o = Map::new();
        o.insert("EventType".into(), json!(e.kind.name()));
        o.insert("Timestamp".into(), json!(time_millis(e.timestamp)));
        if let Some(id) = e.kind.completes() {
            if let Some(s) = scheduled.get(&id) {
                o.insert("ScheduledTime".into(), json!(time_millis(s.timestamp)));
                match &s.kind {
                    EventKind::TaskScheduled { name, input: i, .. }
                    | EventKind::SubOrchestrationCreated { name, input: i, .. } => {
                        o.insert("FunctionName".into(), json!(name));
                        if view.show_input {
                            o.insert("Input".into(), input(i));
                        }
                    }
                    EventKind::EntityOperationCalled {
                        operation,
                        target_instance_id,
                        ..
                    } => {
                        o.insert("Operation".into(), json!(operation));
                        o.insert("EntityId".into(), json!(target_instance_id));
                    }
                    _ => {}
                }
                if let EventKind::SubOrchestrationCreated { instance_id, .. } = &s.kind {
                    o.insert("InstanceId".into(), json!(instance_id));
                }
            }
        }
        match &e.kind {
            EventKind::OrchestratorStarted | EventKind::OrchestratorCompleted => continue,
            EventKind::TaskScheduled { name, input: i, .. } => {
                if finished.contains(&e.event_id) {
                    continue;
                }
                o.insert("Name".into(), json!(name));
                o.insert("Input".into(), input(i));
            }
            EventKind::SubOrchestrationCreated {
                name,
                instance_id,
                input: i,
                ..
            } => {
                if finished.contains(&e.event_id) {
                    continue;
                }
                o.insert("Name".into(), json!(name));
                o.insert("InstanceId".into(), json!(instance_id));
                o.insert("Input".into(), input(i));
            }
            EventKind::EntityOperationCalled {
                operation,
                target_instance_id,
                input: i,
                ..
            } => {
                if finished.contains(&e.event_id) {
                    continue;
                }
                o.insert("Operation".into(), json!(operation));
                o.insert("EntityId".into(), json!(target_instance_id));
                o.insert("Input".into(), input(i));
            }
            EventKind::ExecutionStarted { name, input: i, .. } => {
                o.insert("FunctionName".into(), json!(name));
                o.insert("Input".into(), input(i));
            }
            EventKind::ExecutionCompleted {
                status,
                result: r,
                failure,
            } => {
                o.insert("OrchestrationStatus".into(), json!(status.as_str()));
                o.insert("Result".into(), result(r));
                if let Some(f) = failure {
                    o.insert(
                        "FailureDetails".into(),
                        json!({"ErrorType": f.error_type, "ErrorMessage": f.message, "StackTrace": f.details}),
                    );
                }
            }
            EventKind::ExecutionTerminated { reason }
            | EventKind::ExecutionSuspended { reason }
            | EventKind::ExecutionResumed { reason }
            | EventKind::ExecutionRewound { reason } => {
                o.insert("Reason".into(), payload(reason.as_deref()));
            }
            EventKind::TaskCompleted { result: r, .. }
            | EventKind::SubOrchestrationCompleted { result: r, .. }
            | EventKind::EntityOperationCompleted { result: r, .. } => {
                o.insert("Result".into(), result(r));
            }
            EventKind::TaskFailed { failure, .. }
            | EventKind::SubOrchestrationFailed { failure, .. }
            | EventKind::EntityOperationFailed { failure, .. } => {
                o.insert(
                    "Reason".into(),
                    json!(format!("{}: {}", failure.error_type, failure.message)),
                );
                o.insert("Details".into(), json!(failure.details));
            }
            EventKind::TimerCreated { fire_at } | EventKind::TimerFired { fire_at, .. } => {
                o.insert("FireAt".into(), json!(time_millis(*fire_at)));
            }
            EventKind::EventRaised { name, input: i } => {
                o.insert("Name".into(), json!(name));
                o.insert("Input".into(), input(i));
            }
            EventKind::EventSent {
                instance_id,
                name,
                input: i,
            } => {
                o.insert("Name".into(), json!(name));
                o.insert("InstanceId".into(), json!(instance_id));
                o.insert("Input".into(), input(i));
            }
            EventKind::GenericEvent { data } => {
                o.insert("Data".into(), payload(data.as_deref()));
            }
            EventKind::EntityOperationSignaled {
                operation,
                target_instance_id,
                ..
            } => {
                o.insert("Operation".into(), json!(operation));
                o.insert("EntityId".into(), json!(target_instance_id));
            }
            EventKind::EntityLockRequested {
                critical_section,
                lock_set,
            }
            | EventKind::EntityUnlockSent {
                critical_section,
                lock_set,
            } => {
                o.insert("CriticalSection".into(), json!(critical_section));
                o.insert("LockSet".into(), json!(lock_set));
            }
            EventKind::EntityLockGranted {
                critical_section, ..
            } => {
                o.insert("CriticalSection".into(), json!(critical_section));
            }
        }
        out.push(Value::Object(o));
    }
    out
}

/// An element of the entity list.
pub fn entity(e: &EntityStatus, fetch_state: bool) -> Value {
    let mut o = Map::new();
    o.insert("entityId".into(), json!({"name": e.name, "key": e.key}));
    o.insert(
        "lastOperationTime".into(),
        json!(time_millis(e.last_modified)),
    );
    if fetch_state {
        o.insert("state".into(), payload(e.state.as_deref()));
    }
    if e.queued > 0 {
        o.insert("queuedOperations".into(), json!(e.queued));
    }
    if let Some(holder) = &e.locked_by {
        o.insert("lockedBy".into(), json!(holder));
    }
    Value::Object(o)
}
