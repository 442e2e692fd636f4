//! An instance's lifecycle beyond its episodes: terminate (optionally recursive), finish (and
//! tell the parent), and rewind (of a failed instance, through its sub-orchestrations).

use super::*;

impl PartitionState {
    pub(super) fn terminate(
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
    pub(super) fn rewind(
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
                    let in_flight = self.activity_queued_for(&id, &execution, task_id, src)?;
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
                // Timers stay armed when an execution fails: one that has not fired yet still
                // will, and is not armed twice.
                EventKind::TimerCreated { fire_at }
                    if !self.timer_armed_for(&id, &execution, task_id, src)? =>
                {
                    self.arm_timer(
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
                    );
                }
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
        self.run_if_runnable(inst, cx);
        cx.effects.push(Effect::InstanceChanged(id));
        Ok(None)
    }

    /// Rewinds a sub-orchestration on behalf of its rewound parent. A child that failed is
    /// rewound in turn; one that ended otherwise, or cannot be rewound, reports its outcome to
    /// the parent again (the parent dropped it while failed); one that was purged is started
    /// afresh from `recorded`, the parent's record of it, when the message carries one.
    pub(super) fn rewind_child(
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
            self.tell_parent(parent, result, cx);
        }
        Ok(())
    }

    /// Sends a sub-orchestration's outcome to the parent that waits for it.
    pub(super) fn tell_parent(
        &mut self,
        parent: ParentInstance,
        result: TaskResult,
        cx: &mut Apply,
    ) {
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

    /// Moves an instance to a terminal status and tells its parent.
    pub(super) fn finish(
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
        // Its timers stay armed and, when they fire, find it ended and change nothing.
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
            self.tell_parent(parent, result, cx);
        }
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
