//! Entities: queued operations, batches and their results, and the lock protocol of critical
//! sections (locks taken in one global order, released when the holder ends).

use super::*;

impl PartitionState {
    /// Queues an operation on an entity, creating the entity on its first operation. A
    /// scheduled operation waits in the timer table until it is due; an unlock is applied at
    /// once.
    pub(super) fn entity_operation(
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
                    self.run_if_runnable(&inst, cx);
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
        self.run_if_runnable(&inst, cx);
        self.put(inst);
        Ok(())
    }

    /// Grants lock requests at the head of an unlocked entity's queue: the entity is locked,
    /// and the request travels on to the next entity of the (sorted) set; from the last one,
    /// the orchestration learns that it holds every lock.
    pub(super) fn pump_locks(&mut self, inst: &mut Instance, cx: &mut Apply) {
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
    pub(super) fn put_entity(&mut self, inst: Box<Instance>) {
        let empty = inst
            .state
            .entity
            .as_ref()
            .is_some_and(|e| e.state.is_none() && e.queue.is_empty() && e.locked_by.is_none());
        if empty {
            let id = inst.state.instance_id.clone();
            self.mark_gone(&id);
        } else {
            self.put(inst);
        }
    }

    /// Releases every critical section an orchestration still holds (it ended).
    pub(super) fn release_locks(&mut self, inst: &mut Instance, cx: &mut Apply) {
        let held = std::mem::take(&mut inst.state.held_locks);
        for (critical_section, lock_set) in held {
            self.send_unlocks(&inst.state.instance_id, &critical_section, &lock_set, cx);
        }
    }

    pub(super) fn send_unlocks(
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
    pub(super) fn fail_entity_call(
        &mut self,
        entity_id: &str,
        op: &EntityOperation,
        why: &str,
        cx: &mut Apply,
    ) {
        let failure = FailureDetails::new(
            "EntityOperationFailed",
            format!(
                "operation '{}' on '{entity_id}' failed: {why}",
                op.operation
            ),
        )
        .non_retriable();
        self.answer_caller(op, Err(failure), cx);
    }

    /// Sends an operation's result to the orchestration that called it (signals have no caller).
    fn answer_caller(&mut self, op: &EntityOperation, result: TaskResult, cx: &mut Apply) {
        if let Some(caller) = &op.caller {
            self.send(
                Message::EntityResult {
                    instance_id: caller.instance_id.clone(),
                    execution_id: caller.execution_id.clone(),
                    task_id: caller.task_id,
                    request_id: op.request_id.clone(),
                    result,
                },
                cx,
            );
        }
    }

    pub(super) fn entity_batch_completed(
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
            let runnable = is_runnable(&inst.state);
            self.put_clean(inst);
            if runnable {
                cx.effects.push(Effect::RunEpisode(r.entity_id.clone()));
            }
            return Ok(());
        }
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
            self.answer_caller(op, result.clone(), cx);
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
        self.run_if_runnable(&inst, cx);
        // An entity without state, work or lock does not exist: it is deleted.
        self.put_entity(inst);
        Ok(())
    }
}
