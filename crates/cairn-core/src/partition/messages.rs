//! Messages between instances (and partitions): delivery into an instance's pending events, the
//! outbox, and queueing the work they make runnable (episodes, activities, timers).

use super::*;

impl PartitionState {
    pub(super) fn message(
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
                    self.tell_parent(parent, Err(failure), cx);
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
    pub(super) fn deliver(
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
            self.run_if_runnable(&inst, cx);
            self.put(inst);
        } else {
            self.put_clean(inst);
        }
        Ok(())
    }

    /// Asks the shell to run an episode of `inst` if it has work it may run now. Whether it
    /// has is a function of its state alone ([`is_runnable`]): the shell runs one episode at a
    /// time per instance and ignores the request while one runs, and the episode's result
    /// asks again if work is left.
    pub(super) fn run_if_runnable(&mut self, inst: &Instance, cx: &mut Apply) {
        if is_runnable(&inst.state) {
            cx.effects
                .push(Effect::RunEpisode(inst.state.instance_id.clone()));
        }
    }

    /// Routes a message: applied within this same record if the target is local, else outbox.
    pub(super) fn send(&mut self, msg: Message, cx: &mut Apply) {
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

    /// Queues an activity and asks the shell to start it.
    pub(super) fn queue_activity(&mut self, item: ActivityWorkItem, cx: &mut Apply) {
        let activity_id = self.globals.next_activity_id;
        self.globals.next_activity_id += 1;
        super::instances::count(&mut self.globals.activity_backlog, &item.name, true);
        self.activities.queued.insert(activity_id, item);
        cx.effects.push(Effect::StartActivity(activity_id));
    }

    /// Registers a durable timer and asks the shell to arm it.
    pub(super) fn arm_timer(&mut self, entry: TimerEntry, cx: &mut Apply) {
        let timer_id = self.globals.next_timer_id;
        self.globals.next_timer_id += 1;
        let due = entry.due;
        self.globals.timer_count += 1;
        self.timers.queued.insert(timer_id, entry);
        cx.effects.push(Effect::ScheduleTimer { timer_id, due });
    }
}
