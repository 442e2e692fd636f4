//! Client requests: start (with the id-reuse policy), raise event, terminate, suspend, resume,
//! rewind, entity signals and purge, each answered by a response the shell releases once durable.

use super::*;

impl PartitionState {
    pub(super) fn client_request(
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
                let response = self.with_instance(instance_id, cx, src, |this, inst, cx| {
                    let status = inst.state.status;
                    if status.is_terminal() {
                        return Ok(ClientResponse::WrongStatus { status });
                    }
                    inst.state.pending.push(HistoryEvent::new(
                        cx.now,
                        EventKind::EventRaised {
                            name: name.clone(),
                            input: input.clone(),
                        },
                    ));
                    this.run_if_runnable(inst, cx);
                    Ok(ClientResponse::Ok)
                })?;
                respond(cx, response);
            }
            ClientRequestKind::Terminate {
                instance_id,
                reason,
                recursive,
            } => {
                let response = self.with_instance(instance_id, cx, src, |this, inst, cx| {
                    let status = inst.state.status;
                    if status.is_terminal() {
                        return Ok(ClientResponse::WrongStatus { status });
                    }
                    this.terminate(inst, reason.clone(), *recursive, cx);
                    Ok(ClientResponse::Ok)
                })?;
                respond(cx, response);
            }
            ClientRequestKind::Suspend {
                instance_id,
                reason,
            } => {
                let response = self.with_instance(instance_id, cx, src, |_, inst, cx| {
                    Ok(match inst.state.status {
                        RuntimeStatus::Running | RuntimeStatus::Pending => {
                            inst.state.status = RuntimeStatus::Suspended;
                            inst.state.last_updated_at = cx.now;
                            inst.state.pending.push(HistoryEvent::new(
                                cx.now,
                                EventKind::ExecutionSuspended {
                                    reason: reason.clone(),
                                },
                            ));
                            cx.effects
                                .push(Effect::InstanceChanged(instance_id.clone()));
                            ClientResponse::Ok
                        }
                        RuntimeStatus::Suspended => ClientResponse::Ok,
                        status => ClientResponse::WrongStatus { status },
                    })
                })?;
                respond(cx, response);
            }
            ClientRequestKind::Resume {
                instance_id,
                reason,
            } => {
                let response = self.with_instance(instance_id, cx, src, |this, inst, cx| {
                    Ok(match inst.state.status {
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
                            this.run_if_runnable(inst, cx);
                            cx.effects
                                .push(Effect::InstanceChanged(instance_id.clone()));
                            ClientResponse::Ok
                        }
                        RuntimeStatus::Running | RuntimeStatus::Pending => ClientResponse::Ok,
                        status => ClientResponse::WrongStatus { status },
                    })
                })?;
                respond(cx, response);
            }
            ClientRequestKind::Rewind {
                instance_id,
                reason,
            } => {
                let response = self.with_instance(instance_id, cx, src, |this, inst, cx| {
                    let status = inst.state.status;
                    if status != RuntimeStatus::Failed || inst.state.entity.is_some() {
                        return Ok(ClientResponse::WrongStatus { status });
                    }
                    Ok(match this.rewind(inst, reason.clone(), cx, src)? {
                        None => ClientResponse::Ok,
                        Some(reason) => ClientResponse::Refused { reason },
                    })
                })?;
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
                            self.mark_gone(id);
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

    /// Applies a command `f` to an existing instance: `NotFound` when there is none; the
    /// instance is put back changed, or unchanged when `f` fails.
    fn with_instance(
        &mut self,
        instance_id: &str,
        cx: &mut Apply,
        src: &dyn InstanceSource,
        f: impl FnOnce(&mut Self, &mut Instance, &mut Apply) -> Result<ClientResponse, SourceError>,
    ) -> Result<ClientResponse, SourceError> {
        let Some(mut inst) = self.take(instance_id, src)? else {
            return Ok(ClientResponse::NotFound);
        };
        match f(self, &mut inst, cx) {
            Ok(response) => {
                self.put(inst);
                Ok(response)
            }
            Err(e) => {
                self.put_clean(inst);
                Err(e)
            }
        }
    }

    /// Creates (or, per policy, restarts) an instance. Used by client starts and sub-orchestrations.
    pub(super) fn start_instance(
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
            // Timers of the old execution stay armed: when they fire, their execution id
            // no longer matches and they change nothing.
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
        self.run_if_runnable(&inst, cx);
        cx.effects
            .push(Effect::InstanceChanged(start.instance_id.clone()));
        self.put(inst);
        Ok(ClientResponse::Started {
            execution_id: start.execution_id.clone(),
        })
    }
}
