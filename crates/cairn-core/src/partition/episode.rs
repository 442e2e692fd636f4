//! Episode results: the actions an orchestrator decided, applied to its instance and turned into
//! work (activities, timers, sub-orchestrations, events, entity calls and locks, completion).

use super::*;

impl PartitionState {
    pub(super) fn episode_completed(
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
            let runnable = is_runnable(&inst.state);
            self.put_clean(inst);
            if runnable {
                cx.effects.push(Effect::RunEpisode(r.instance_id.clone()));
            }
            return Ok(());
        }
        // The episode is done: whether the instance runs again depends only on what is left.
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
                Action::ScheduleTask { .. } => self.schedule_task(&mut inst, r, action, cx),
                Action::CreateTimer { .. } => self.create_timer(&mut inst, r, action, cx),
                Action::CreateSubOrchestration { .. } => {
                    self.create_sub_orchestration(&mut inst, r, action, cx)
                }
                Action::SendEvent { .. } => self.send_event(&mut inst, action, cx),
                Action::CallEntity { .. } => self.call_entity(&mut inst, r, action, cx),
                Action::SignalEntity { .. } => self.signal_entity(&mut inst, r, action, cx),
                Action::LockEntities { .. } => self.lock_entities(&mut inst, r, action, cx),
                Action::UnlockEntities { .. } => self.unlock_entities(&mut inst, r, action, cx),
                Action::Complete(c) => completion = Some(c),
            }
        }
        inst.push(HistoryEvent::new(now, EventKind::OrchestratorCompleted));
        inst.state.custom_status = r.custom_status.clone();
        inst.state.last_updated_at = now;
        match completion {
            None => self.run_if_runnable(&inst, cx),
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
                self.continue_as_new(
                    &mut inst,
                    r,
                    input,
                    version,
                    carryover,
                    new_execution_id,
                    cx,
                );
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

    /// Records a scheduled activity and queues it.
    fn schedule_task(
        &mut self,
        inst: &mut Instance,
        r: &EpisodeResult,
        action: &Action,
        cx: &mut Apply,
    ) {
        let Action::ScheduleTask {
            id,
            name,
            version,
            input,
        } = action
        else {
            return;
        };
        let now = cx.now;
        inst.push(HistoryEvent::scheduled(
            *id,
            now,
            EventKind::TaskScheduled {
                name: name.to_string(),
                version: version.clone(),
                input: input.clone(),
            },
        ));
        self.queue_activity(
            ActivityWorkItem {
                instance_id: r.instance_id.clone(),
                execution_id: r.execution_id.clone(),
                task_id: *id,
                name: name.to_string(),
                version: version.clone(),
                input: input.clone(),
            },
            cx,
        );
    }

    /// Records a timer and arms it.
    fn create_timer(
        &mut self,
        inst: &mut Instance,
        r: &EpisodeResult,
        action: &Action,
        cx: &mut Apply,
    ) {
        let Action::CreateTimer { id, fire_at } = action else {
            return;
        };
        let now = cx.now;
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

    /// Records a sub-orchestration and asks its partition to start it.
    fn create_sub_orchestration(
        &mut self,
        inst: &mut Instance,
        r: &EpisodeResult,
        action: &Action,
        cx: &mut Apply,
    ) {
        let Action::CreateSubOrchestration {
            id,
            instance_id,
            name,
            version,
            input,
            execution_id,
        } = action
        else {
            return;
        };
        let now = cx.now;
        inst.push(HistoryEvent::scheduled(
            *id,
            now,
            EventKind::SubOrchestrationCreated {
                name: name.to_string(),
                version: version.clone(),
                instance_id: instance_id.to_string(),
                input: input.clone(),
            },
        ));
        inst.state.children.insert(*id, instance_id.to_string());
        self.send(
            Message::StartSubOrchestration {
                parent: ParentInstance {
                    instance_id: r.instance_id.clone(),
                    execution_id: r.execution_id.clone(),
                    name: inst.state.name.clone(),
                    task_id: *id,
                },
                instance_id: instance_id.to_string(),
                name: name.to_string(),
                version: version.clone(),
                input: input.clone(),
                execution_id: execution_id.to_string(),
            },
            cx,
        );
    }

    /// Records an event sent to another instance and sends it.
    fn send_event(&mut self, inst: &mut Instance, action: &Action, cx: &mut Apply) {
        let Action::SendEvent {
            id,
            instance_id,
            name,
            input,
        } = action
        else {
            return;
        };
        let now = cx.now;
        inst.push(HistoryEvent::scheduled(
            *id,
            now,
            EventKind::EventSent {
                instance_id: instance_id.to_string(),
                name: name.to_string(),
                input: input.clone(),
            },
        ));
        self.send(
            Message::RaiseEvent {
                instance_id: instance_id.to_string(),
                name: name.to_string(),
                input: input.clone(),
            },
            cx,
        );
    }

    /// Records an entity call and sends the operation; the result comes back as a message.
    fn call_entity(
        &mut self,
        inst: &mut Instance,
        r: &EpisodeResult,
        action: &Action,
        cx: &mut Apply,
    ) {
        let Action::CallEntity {
            id,
            entity_id,
            operation,
            input,
            request_id,
        } = action
        else {
            return;
        };
        let now = cx.now;
        inst.push(HistoryEvent::scheduled(
            *id,
            now,
            EventKind::EntityOperationCalled {
                request_id: request_id.to_string(),
                target_instance_id: entity_id.to_string(),
                operation: operation.to_string(),
                input: input.clone(),
            },
        ));
        self.send(
            Message::EntityOperation {
                entity_id: entity_id.to_string(),
                operation: EntityOperation {
                    request_id: request_id.to_string(),
                    operation: operation.to_string(),
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

    /// Records a one-way entity signal and sends it.
    fn signal_entity(
        &mut self,
        inst: &mut Instance,
        r: &EpisodeResult,
        action: &Action,
        cx: &mut Apply,
    ) {
        let Action::SignalEntity {
            id,
            entity_id,
            operation,
            input,
            scheduled_time,
            request_id,
        } = action
        else {
            return;
        };
        let now = cx.now;
        inst.push(HistoryEvent::scheduled(
            *id,
            now,
            EventKind::EntityOperationSignaled {
                request_id: request_id.to_string(),
                target_instance_id: entity_id.to_string(),
                operation: operation.to_string(),
                input: input.clone(),
                scheduled_time: *scheduled_time,
            },
        ));
        self.send(
            Message::EntityOperation {
                entity_id: entity_id.to_string(),
                operation: EntityOperation {
                    request_id: request_id.to_string(),
                    operation: operation.to_string(),
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

    /// Records a critical section and asks the first entity of its lock set for its lock.
    fn lock_entities(
        &mut self,
        inst: &mut Instance,
        r: &EpisodeResult,
        action: &Action,
        cx: &mut Apply,
    ) {
        let Action::LockEntities {
            id,
            critical_section,
            lock_set,
        } = action
        else {
            return;
        };
        let now = cx.now;
        inst.push(HistoryEvent::scheduled(
            *id,
            now,
            EventKind::EntityLockRequested {
                critical_section: critical_section.to_string(),
                lock_set: lock_set.to_vec(),
            },
        ));
        inst.state
            .held_locks
            .insert(critical_section.to_string(), lock_set.to_vec());
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
                            critical_section: critical_section.to_string(),
                            lock_set: lock_set.to_vec(),
                            position: 0,
                        },
                    },
                },
                cx,
            );
        }
    }

    /// Records the end of a critical section and releases its locks.
    fn unlock_entities(
        &mut self,
        inst: &mut Instance,
        r: &EpisodeResult,
        action: &Action,
        cx: &mut Apply,
    ) {
        let Action::UnlockEntities {
            id,
            critical_section,
            lock_set,
        } = action
        else {
            return;
        };
        let now = cx.now;
        inst.push(HistoryEvent::scheduled(
            *id,
            now,
            EventKind::EntityUnlockSent {
                critical_section: critical_section.to_string(),
                lock_set: lock_set.to_vec(),
            },
        ));
        inst.state.held_locks.remove(critical_section);
        let sender = r.instance_id.clone();
        self.send_unlocks(&sender, critical_section, lock_set, cx);
    }

    /// Starts the instance's next execution in place: same id, fresh history, the carried-over
    /// events first, and what arrived during the last episode after them.
    #[allow(clippy::too_many_arguments)]
    fn continue_as_new(
        &mut self,
        inst: &mut Instance,
        r: &EpisodeResult,
        input: &Option<String>,
        version: &Option<String>,
        carryover: &[HistoryEvent],
        new_execution_id: &str,
        cx: &mut Apply,
    ) {
        let now = cx.now;
        self.release_locks(inst, cx);
        let id = r.instance_id.clone();
        // The old execution's timers stay armed and, when they fire, change nothing (their
        // execution id is not the new one's): freeing them would mean finding them on disk.
        let s = &mut inst.state;
        let mut pending = vec![HistoryEvent::new(
            now,
            EventKind::ExecutionStarted {
                name: s.name.clone(),
                version: version.clone().or_else(|| s.version.clone()),
                input: input.clone(),
                execution_id: new_execution_id.to_string(),
                parent: s.parent.clone(),
                scheduled_start: None,
                tags: s.tags.clone(),
            },
        )];
        pending.extend(carryover.iter().cloned());
        // Messages that arrived while the last episode ran belong to the new execution.
        pending.append(&mut s.pending);
        s.pending = pending;
        s.execution_id = new_execution_id.to_string();
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
        self.run_if_runnable(inst, cx);
        cx.effects.push(Effect::InstanceChanged(id));
    }
}
