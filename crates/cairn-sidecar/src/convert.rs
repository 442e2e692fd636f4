//! Conversions between Cairn's model (`cairn-core`) and the Durable Task protocol messages.
//!
//! History events keep the exact shape SDKs replay against: scheduling events carry the
//! orchestrator's action id as `eventId`, completions point back with `taskScheduledId`,
//! `ExecutionStarted` carries the instance and execution ids, and timestamps come from Cairn's
//! log (the `OrchestratorStarted` timestamp is the orchestration's current time).

use crate::proto as pb;
use cairn_core::{
    Action, Completion, EntityAction, EntityOperation, EventKind, FailureDetails, HistoryEvent,
    Millis, RuntimeStatus, TaskResult,
};
use cairn_runtime::InstanceStatus;
use pb::history_event::EventType;

pub fn timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub fn millis(t: &prost_types::Timestamp) -> Millis {
    if t.seconds < 0 {
        return 0;
    }
    t.seconds as Millis * 1000 + (t.nanos.max(0) as Millis) / 1_000_000
}

pub fn status_to_proto(s: RuntimeStatus) -> pb::OrchestrationStatus {
    match s {
        RuntimeStatus::Pending => pb::OrchestrationStatus::Pending,
        RuntimeStatus::Running => pb::OrchestrationStatus::Running,
        RuntimeStatus::Completed => pb::OrchestrationStatus::Completed,
        RuntimeStatus::ContinuedAsNew => pb::OrchestrationStatus::ContinuedAsNew,
        RuntimeStatus::Failed => pb::OrchestrationStatus::Failed,
        RuntimeStatus::Terminated => pb::OrchestrationStatus::Terminated,
        RuntimeStatus::Suspended => pb::OrchestrationStatus::Suspended,
    }
}

/// A protocol status as a Cairn status; `Canceled` (never produced by Cairn) has none.
pub fn status_from_proto(v: i32) -> Option<RuntimeStatus> {
    match pb::OrchestrationStatus::try_from(v).ok()? {
        pb::OrchestrationStatus::Pending => Some(RuntimeStatus::Pending),
        pb::OrchestrationStatus::Running => Some(RuntimeStatus::Running),
        pb::OrchestrationStatus::Completed => Some(RuntimeStatus::Completed),
        pb::OrchestrationStatus::ContinuedAsNew => Some(RuntimeStatus::ContinuedAsNew),
        pb::OrchestrationStatus::Failed => Some(RuntimeStatus::Failed),
        pb::OrchestrationStatus::Terminated => Some(RuntimeStatus::Terminated),
        pb::OrchestrationStatus::Suspended => Some(RuntimeStatus::Suspended),
        pb::OrchestrationStatus::Canceled => None,
    }
}

pub fn failure_to_proto(f: &FailureDetails) -> pb::TaskFailureDetails {
    pb::TaskFailureDetails {
        error_type: f.error_type.clone(),
        error_message: f.message.clone(),
        stack_trace: f.details.clone(),
        inner_failure: f.inner.as_ref().map(|i| Box::new(failure_to_proto(i))),
        is_non_retriable: !f.retriable,
        ..Default::default()
    }
}

pub fn failure_from_proto(f: &pb::TaskFailureDetails) -> FailureDetails {
    FailureDetails {
        error_type: f.error_type.clone(),
        message: f.error_message.clone(),
        details: f.stack_trace.clone(),
        inner: f
            .inner_failure
            .as_ref()
            .map(|i| Box::new(failure_from_proto(i))),
        retriable: !f.is_non_retriable,
    }
}

fn instance(id: &str, execution_id: &str) -> pb::OrchestrationInstance {
    pb::OrchestrationInstance {
        instance_id: id.to_string(),
        execution_id: Some(execution_id.to_string()),
    }
}

/// A Cairn history event as the protocol's `HistoryEvent`.
pub fn event_to_proto(instance_id: &str, e: &HistoryEvent) -> pb::HistoryEvent {
    let event_type = match &e.kind {
        EventKind::ExecutionStarted {
            name,
            version,
            input,
            execution_id,
            parent,
            scheduled_start,
            tags,
        } => EventType::ExecutionStarted(pb::ExecutionStartedEvent {
            name: name.clone(),
            version: version.clone(),
            input: input.clone(),
            orchestration_instance: Some(instance(instance_id, execution_id)),
            parent_instance: parent.as_ref().map(|p| pb::ParentInstanceInfo {
                task_scheduled_id: p.task_id,
                name: Some(p.name.clone()),
                version: None,
                orchestration_instance: Some(instance(&p.instance_id, &p.execution_id)),
            }),
            scheduled_start_timestamp: scheduled_start.map(timestamp),
            tags: tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ..Default::default()
        }),
        EventKind::ExecutionCompleted {
            status,
            result,
            failure,
        } => EventType::ExecutionCompleted(pb::ExecutionCompletedEvent {
            orchestration_status: status_to_proto(*status) as i32,
            result: result.clone(),
            failure_details: failure.as_ref().map(failure_to_proto),
        }),
        EventKind::ExecutionTerminated { reason } => {
            EventType::ExecutionTerminated(pb::ExecutionTerminatedEvent {
                input: reason.clone(),
                recurse: false,
            })
        }
        EventKind::ExecutionSuspended { reason } => {
            EventType::ExecutionSuspended(pb::ExecutionSuspendedEvent {
                input: reason.clone(),
            })
        }
        EventKind::ExecutionResumed { reason } => {
            EventType::ExecutionResumed(pb::ExecutionResumedEvent {
                input: reason.clone(),
            })
        }
        // Cairn rewrites history itself, so the SDK only sees the marker in new events, after
        // the completion is gone: it replays normally (its "jump-start" case).
        EventKind::ExecutionRewound { reason } => {
            EventType::ExecutionRewound(pb::ExecutionRewoundEvent {
                reason: reason.clone(),
                ..Default::default()
            })
        }
        EventKind::TaskScheduled {
            name,
            version,
            input,
        } => EventType::TaskScheduled(pb::TaskScheduledEvent {
            name: name.clone(),
            version: version.clone(),
            input: input.clone(),
            ..Default::default()
        }),
        EventKind::TaskCompleted {
            task_scheduled_id,
            result,
        } => EventType::TaskCompleted(pb::TaskCompletedEvent {
            task_scheduled_id: *task_scheduled_id,
            result: result.clone(),
        }),
        EventKind::TaskFailed {
            task_scheduled_id,
            failure,
        } => EventType::TaskFailed(pb::TaskFailedEvent {
            task_scheduled_id: *task_scheduled_id,
            failure_details: Some(failure_to_proto(failure)),
        }),
        EventKind::SubOrchestrationCreated {
            name,
            version,
            instance_id,
            input,
        } => EventType::SubOrchestrationInstanceCreated(pb::SubOrchestrationInstanceCreatedEvent {
            instance_id: instance_id.clone(),
            name: name.clone(),
            version: version.clone(),
            input: input.clone(),
            ..Default::default()
        }),
        EventKind::SubOrchestrationCompleted {
            task_scheduled_id,
            result,
        } => EventType::SubOrchestrationInstanceCompleted(
            pb::SubOrchestrationInstanceCompletedEvent {
                task_scheduled_id: *task_scheduled_id,
                result: result.clone(),
            },
        ),
        EventKind::SubOrchestrationFailed {
            task_scheduled_id,
            failure,
        } => EventType::SubOrchestrationInstanceFailed(pb::SubOrchestrationInstanceFailedEvent {
            task_scheduled_id: *task_scheduled_id,
            failure_details: Some(failure_to_proto(failure)),
        }),
        EventKind::TimerCreated { fire_at } => EventType::TimerCreated(pb::TimerCreatedEvent {
            fire_at: Some(timestamp(*fire_at)),
        }),
        EventKind::TimerFired { timer_id, fire_at } => EventType::TimerFired(pb::TimerFiredEvent {
            fire_at: Some(timestamp(*fire_at)),
            timer_id: *timer_id,
        }),
        EventKind::OrchestratorStarted => {
            EventType::OrchestratorStarted(pb::OrchestratorStartedEvent::default())
        }
        EventKind::OrchestratorCompleted => {
            EventType::OrchestratorCompleted(pb::OrchestratorCompletedEvent::default())
        }
        EventKind::EventSent {
            instance_id,
            name,
            input,
        } => EventType::EventSent(pb::EventSentEvent {
            instance_id: instance_id.clone(),
            name: name.clone(),
            input: input.clone(),
        }),
        EventKind::EventRaised { name, input } => EventType::EventRaised(pb::EventRaisedEvent {
            name: name.clone(),
            input: input.clone(),
        }),
        EventKind::GenericEvent { data } => {
            EventType::GenericEvent(pb::GenericEvent { data: data.clone() })
        }
        EventKind::EntityOperationCalled {
            request_id,
            target_instance_id,
            operation,
            input,
        } => EventType::EntityOperationCalled(pb::EntityOperationCalledEvent {
            request_id: request_id.clone(),
            operation: operation.clone(),
            input: input.clone(),
            parent_instance_id: Some(instance_id.to_string()),
            target_instance_id: Some(target_instance_id.clone()),
            ..Default::default()
        }),
        EventKind::EntityOperationSignaled {
            request_id,
            target_instance_id,
            operation,
            input,
            scheduled_time,
        } => EventType::EntityOperationSignaled(pb::EntityOperationSignaledEvent {
            request_id: request_id.clone(),
            operation: operation.clone(),
            scheduled_time: scheduled_time.map(timestamp),
            input: input.clone(),
            target_instance_id: Some(target_instance_id.clone()),
        }),
        EventKind::EntityOperationCompleted {
            request_id, result, ..
        } => EventType::EntityOperationCompleted(pb::EntityOperationCompletedEvent {
            request_id: request_id.clone(),
            output: result.clone(),
        }),
        EventKind::EntityOperationFailed {
            request_id,
            failure,
            ..
        } => EventType::EntityOperationFailed(pb::EntityOperationFailedEvent {
            request_id: request_id.clone(),
            failure_details: Some(failure_to_proto(failure)),
        }),
        EventKind::EntityLockRequested {
            critical_section,
            lock_set,
        } => EventType::EntityLockRequested(pb::EntityLockRequestedEvent {
            critical_section_id: critical_section.clone(),
            lock_set: lock_set.clone(),
            position: 0,
            parent_instance_id: Some(instance_id.to_string()),
        }),
        EventKind::EntityLockGranted {
            critical_section, ..
        } => EventType::EntityLockGranted(pb::EntityLockGrantedEvent {
            critical_section_id: critical_section.clone(),
        }),
        EventKind::EntityUnlockSent {
            critical_section,
            lock_set,
        } => EventType::EntityUnlockSent(pb::EntityUnlockSentEvent {
            critical_section_id: critical_section.clone(),
            parent_instance_id: Some(instance_id.to_string()),
            target_instance_id: lock_set.first().cloned(),
        }),
    };
    pb::HistoryEvent {
        event_id: e.event_id,
        timestamp: Some(timestamp(e.timestamp)),
        event_type: Some(event_type),
    }
}

/// A protocol action that Cairn cannot carry out (yet), or one that is malformed.
#[derive(Debug, thiserror::Error)]
#[error("action {id}: {reason}")]
pub struct BadAction {
    pub id: i32,
    pub reason: String,
}

/// The actions of an `OrchestratorResponse` as Cairn actions.
pub fn actions_from_proto(
    instance_id: &str,
    actions: &[pb::OrchestratorAction],
) -> Result<Vec<Action>, BadAction> {
    use pb::orchestrator_action::OrchestratorActionType as T;
    let mut out = Vec::with_capacity(actions.len());
    for a in actions {
        let id = a.id;
        let bad = |reason: &str| BadAction {
            id,
            reason: reason.to_string(),
        };
        let Some(kind) = &a.orchestrator_action_type else {
            return Err(bad("no action type is set"));
        };
        out.push(match kind {
            T::ScheduleTask(t) => {
                if t.name.is_empty() {
                    return Err(bad("scheduleTask has an empty activity name"));
                }
                Action::ScheduleTask {
                    id,
                    name: t.name.clone(),
                    version: t.version.clone(),
                    input: t.input.clone(),
                }
            }
            T::CreateSubOrchestration(c) => {
                if c.name.is_empty() {
                    return Err(bad(
                        "createSubOrchestration has an empty orchestration name",
                    ));
                }
                let child = if c.instance_id.is_empty() {
                    format!("{instance_id}:{id:04x}")
                } else {
                    c.instance_id.clone()
                };
                cairn_core::validate_instance_id(&child).map_err(|e| bad(&e.to_string()))?;
                Action::CreateSubOrchestration {
                    id,
                    instance_id: child,
                    name: c.name.clone(),
                    version: c.version.clone(),
                    input: c.input.clone(),
                    execution_id: String::new(),
                }
            }
            T::CreateTimer(t) => Action::CreateTimer {
                id,
                fire_at: t.fire_at.as_ref().map(millis).unwrap_or(0),
            },
            T::SendEvent(e) => {
                let target = e
                    .instance
                    .as_ref()
                    .map(|i| i.instance_id.clone())
                    .unwrap_or_default();
                cairn_core::validate_instance_id(&target)
                    .map_err(|err| bad(&format!("sendEvent target: {err}")))?;
                Action::SendEvent {
                    id,
                    instance_id: target,
                    name: e.name.clone(),
                    input: e.data.clone(),
                }
            }
            T::CompleteOrchestration(c) => {
                let status =
                    pb::OrchestrationStatus::try_from(c.orchestration_status).map_err(|_| {
                        bad(&format!(
                            "unknown orchestration status {}",
                            c.orchestration_status
                        ))
                    })?;
                Action::Complete(match status {
                    pb::OrchestrationStatus::Completed => Completion::Completed {
                        result: c.result.clone(),
                    },
                    pb::OrchestrationStatus::ContinuedAsNew => Completion::ContinuedAsNew {
                        input: c.result.clone(),
                        version: c.new_version.clone(),
                        carryover: c
                            .carryover_events
                            .iter()
                            .filter_map(carryover_event)
                            .collect(),
                        new_execution_id: String::new(),
                    },
                    pb::OrchestrationStatus::Failed => Completion::Failed {
                        failure: c
                            .failure_details
                            .as_ref()
                            .map(failure_from_proto)
                            .unwrap_or_else(|| {
                                FailureDetails::new(
                                    "OrchestrationFailed",
                                    "the orchestration failed without details",
                                )
                            }),
                    },
                    pb::OrchestrationStatus::Terminated => Completion::Failed {
                        failure: FailureDetails::new(
                            "Terminated",
                            c.result.clone().unwrap_or_default(),
                        )
                        .non_retriable(),
                    },
                    other => {
                        return Err(bad(&format!(
                            "an orchestration cannot complete as {}",
                            other.as_str_name()
                        )))
                    }
                })
            }
            T::TerminateOrchestration(_) => return Err(bad(
                "terminateOrchestration actions are not supported; terminate through the client",
            )),
            T::SendEntityMessage(m) => {
                use pb::send_entity_message_action::EntityMessageType as M;
                let target = |t: &Option<String>| -> Result<String, BadAction> {
                    let t = t.clone().unwrap_or_default();
                    cairn_core::validate_instance_id(&t)
                        .map_err(|e| bad(&format!("entity target: {e}")))?;
                    if cairn_core::entity_name(&t).is_none() {
                        return Err(bad(&format!(
                            "entity target {t:?} is not of the form @name@key"
                        )));
                    }
                    Ok(t)
                };
                match &m.entity_message_type {
                    Some(M::EntityOperationSignaled(e)) => Action::SignalEntity {
                        id,
                        entity_id: target(&e.target_instance_id)?,
                        operation: e.operation.clone(),
                        input: e.input.clone(),
                        scheduled_time: e.scheduled_time.as_ref().map(millis),
                        request_id: e.request_id.clone(),
                    },
                    Some(M::EntityOperationCalled(e)) => Action::CallEntity {
                        id,
                        entity_id: target(&e.target_instance_id)?,
                        operation: e.operation.clone(),
                        input: e.input.clone(),
                        request_id: e.request_id.clone(),
                    },
                    Some(M::EntityLockRequested(e)) => {
                        let mut lock_set = e.lock_set.clone();
                        lock_set.sort();
                        lock_set.dedup();
                        for t in &lock_set {
                            target(&Some(t.clone()))?;
                        }
                        Action::LockEntities {
                            id,
                            critical_section: e.critical_section_id.clone(),
                            lock_set,
                        }
                    }
                    Some(M::EntityUnlockSent(e)) => Action::UnlockEntities {
                        id,
                        critical_section: e.critical_section_id.clone(),
                        lock_set: vec![target(&e.target_instance_id)?],
                    },
                    None => return Err(bad("sendEntityMessage has no message")),
                }
            }
            T::RewindOrchestration(_) => return Err(bad("rewind is not supported yet")),
        });
    }
    Ok(out)
}

/// A queued entity operation as the protocol's operation request event.
pub fn entity_operation_to_proto(entity_id: &str, op: &EntityOperation) -> pb::HistoryEvent {
    let event_type = match &op.caller {
        Some(caller) => EventType::EntityOperationCalled(pb::EntityOperationCalledEvent {
            request_id: op.request_id.clone(),
            operation: op.operation.clone(),
            input: op.input.clone(),
            parent_instance_id: Some(caller.instance_id.clone()),
            parent_execution_id: Some(caller.execution_id.clone()),
            target_instance_id: Some(entity_id.to_string()),
            ..Default::default()
        }),
        None => EventType::EntityOperationSignaled(pb::EntityOperationSignaledEvent {
            request_id: op.request_id.clone(),
            operation: op.operation.clone(),
            input: op.input.clone(),
            target_instance_id: Some(entity_id.to_string()),
            ..Default::default()
        }),
    };
    pb::HistoryEvent {
        event_id: -1,
        timestamp: None,
        event_type: Some(event_type),
    }
}

/// An SDK's `EntityBatchResult` for `operations` as Cairn's batch output. A whole-batch failure
/// or a result count that does not match fails every operation and keeps the old state.
pub fn entity_batch_from_proto(
    r: &pb::EntityBatchResult,
    operations: usize,
    old_state: Option<String>,
) -> cairn_runtime::remote::EntityBatchOutput {
    use pb::operation_action::OperationActionType as A;
    use pb::operation_result::ResultType as R;
    let whole_batch = match (&r.failure_details, r.results.len() == operations) {
        (Some(f), _) => Some(failure_from_proto(f)),
        (None, false) => Some(FailureDetails::new(
            "InvalidEntityBatchResult",
            format!(
                "the worker returned {} results for {operations} operations",
                r.results.len()
            ),
        )),
        (None, true) => None,
    };
    if let Some(f) = whole_batch {
        return cairn_runtime::remote::EntityBatchOutput {
            state: old_state,
            results: (0..operations).map(|_| Err(f.clone())).collect(),
            actions: Vec::new(),
        };
    }
    let results: Vec<TaskResult> = r
        .results
        .iter()
        .map(|res| match &res.result_type {
            Some(R::Success(s)) => Ok(s.result.clone()),
            Some(R::Failure(f)) => Err(f
                .failure_details
                .as_ref()
                .map(failure_from_proto)
                .unwrap_or_else(|| {
                    FailureDetails::new(
                        "EntityOperationFailed",
                        "the operation failed without details",
                    )
                })),
            None => Err(FailureDetails::new(
                "InvalidEntityBatchResult",
                "an operation result has no outcome",
            )),
        })
        .collect();
    let actions = r
        .actions
        .iter()
        .filter_map(|a| match &a.operation_action_type {
            Some(A::SendSignal(s)) => Some(EntityAction::Signal {
                entity_id: s.instance_id.clone(),
                operation: s.name.clone(),
                input: s.input.clone(),
                scheduled_time: s.scheduled_time.as_ref().map(millis),
                request_id: format!("{:032x}", rand::random::<u128>()),
            }),
            Some(A::StartNewOrchestration(o)) => Some(EntityAction::StartOrchestration {
                instance_id: if o.instance_id.is_empty() {
                    format!("{:032x}", rand::random::<u128>())
                } else {
                    o.instance_id.clone()
                },
                name: o.name.clone(),
                input: o.input.clone(),
                execution_id: format!("{:032x}", rand::random::<u128>()),
            }),
            None => None,
        })
        .collect();
    cairn_runtime::remote::EntityBatchOutput {
        state: r.entity_state.clone(),
        results,
        actions,
    }
}

/// Carry-over events of continue-as-new: Cairn keeps unprocessed external events.
fn carryover_event(e: &pb::HistoryEvent) -> Option<HistoryEvent> {
    let ts = e.timestamp.as_ref().map(millis).unwrap_or(0);
    match &e.event_type {
        Some(EventType::EventRaised(r)) => Some(HistoryEvent::new(
            ts,
            EventKind::EventRaised {
                name: r.name.clone(),
                input: r.input.clone(),
            },
        )),
        _ => None,
    }
}

/// An instance's status as the protocol's `OrchestrationState`.
pub fn state_to_proto(s: &InstanceStatus, with_payloads: bool) -> pb::OrchestrationState {
    pb::OrchestrationState {
        instance_id: s.instance_id.clone(),
        name: s.name.clone(),
        version: s.version.clone(),
        orchestration_status: status_to_proto(s.status) as i32,
        scheduled_start_timestamp: s.scheduled_start.map(timestamp),
        created_timestamp: Some(timestamp(s.created_at)),
        last_updated_timestamp: Some(timestamp(s.last_updated_at)),
        input: if with_payloads { s.input.clone() } else { None },
        output: if with_payloads {
            s.output.clone()
        } else {
            None
        },
        custom_status: s.custom_status.clone(),
        // Only failed instances carry failure details (the JS client treats presence as failure).
        failure_details: match s.status {
            RuntimeStatus::Failed => s.failure.as_ref().map(failure_to_proto),
            _ => None,
        },
        execution_id: Some(s.execution_id.clone()),
        completed_timestamp: s.completed_at.map(timestamp),
        parent_instance_id: s.parent.as_ref().map(|p| p.instance_id.clone()),
        tags: s.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_at_millisecond_precision() {
        for ms in [0u64, 1, 999, 1_000, 1_700_000_000_123] {
            assert_eq!(millis(&timestamp(ms)), ms);
        }
    }

    #[test]
    fn statuses_round_trip_and_canceled_has_no_equivalent() {
        for s in RuntimeStatus::ALL {
            assert_eq!(status_from_proto(status_to_proto(s) as i32), Some(s));
        }
        assert_eq!(
            status_from_proto(pb::OrchestrationStatus::Canceled as i32),
            None
        );
        assert_eq!(pb::OrchestrationStatus::Pending as i32, 6);
    }

    #[test]
    fn sub_orchestration_ids_default_like_the_python_sdk() {
        use pb::orchestrator_action::OrchestratorActionType as T;
        let a = pb::OrchestratorAction {
            id: 3,
            orchestrator_action_type: Some(T::CreateSubOrchestration(
                pb::CreateSubOrchestrationAction {
                    name: "child".into(),
                    ..Default::default()
                },
            )),
        };
        match &actions_from_proto("parent", &[a]).unwrap()[0] {
            Action::CreateSubOrchestration { instance_id, .. } => {
                assert_eq!(instance_id, "parent:0003")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_actions_are_reported() {
        use pb::orchestrator_action::OrchestratorActionType as T;
        let a = pb::OrchestratorAction {
            id: 1,
            orchestrator_action_type: Some(T::SendEntityMessage(Default::default())),
        };
        let err = actions_from_proto("x", &[a]).unwrap_err();
        assert!(err.to_string().contains("no message"), "{err}");
    }
}
