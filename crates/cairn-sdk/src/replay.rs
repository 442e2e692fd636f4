//! The replay executor: runs orchestrator code over history, one episode at a time.
//!
//! A [`Cursor`] is a live orchestrator: the user's future plus its context. Running an episode
//! feeds the episode's new events into the context, polls the future once, and collects the
//! work it scheduled. A cursor kept in the instance cache continues with the next episode
//! directly; otherwise [`Cursor::rebuild`] replays the whole history first, episode by episode
//! (history is split at `OrchestratorStarted` markers, whose timestamps are the `current_time`
//! the code saw), and checks that the code schedules exactly what history recorded.
//!
//! Both paths run the same code over the same events in the same batches, which is why they give
//! identical results; `tests/cache_equivalence.rs` checks it.

use crate::orchestration::{
    CtxState, OrchestrationContext, OrchestratorFn, OrchestratorFuture, ScheduledStep, Slot,
};
use cairn_core::{Action, Completion, EventKind, FailureDetails, HistoryEvent, Millis};
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

/// What one episode decided.
pub struct EpisodeOutput {
    pub actions: Vec<Action>,
    pub custom_status: Option<String>,
}

pub struct Cursor {
    ctx: OrchestrationContext,
    func: OrchestratorFn,
    future: Option<OrchestratorFuture>,
    pub execution_id: String,
    /// History length of the instance once the last episode's result is applied.
    pub history_len: u32,
    finished: bool,
}

fn non_determinism(message: String) -> FailureDetails {
    FailureDetails::new("NonDeterminismError", message).non_retriable()
}

impl Cursor {
    pub fn new(func: OrchestratorFn, instance_id: &str, execution_id: &str, name: &str) -> Cursor {
        Cursor {
            ctx: OrchestrationContext::new(instance_id, execution_id, name),
            func,
            future: None,
            execution_id: execution_id.to_string(),
            history_len: 0,
            finished: false,
        }
    }

    /// Rebuilds a cursor by replaying `past` (the instance's history so far).
    pub fn rebuild(
        func: OrchestratorFn,
        instance_id: &str,
        execution_id: &str,
        name: &str,
        past: &[HistoryEvent],
    ) -> Result<Cursor, FailureDetails> {
        let mut cursor = Cursor::new(func, instance_id, execution_id, name);
        let mut start = 0;
        let mut episode = 0;
        while start < past.len() {
            let end = past[start + 1..]
                .iter()
                .position(|e| matches!(e.kind, EventKind::OrchestratorStarted))
                .map_or(past.len(), |p| start + 1 + p);
            episode += 1;
            cursor.replay_episode(episode, &past[start..end])?;
            start = end;
        }
        cursor.history_len = past.len() as u32;
        Ok(cursor)
    }

    fn replay_episode(
        &mut self,
        episode: usize,
        events: &[HistoryEvent],
    ) -> Result<(), FailureDetails> {
        let mut expected = Vec::new();
        {
            let mut s = self.ctx.inner.lock();
            s.is_replaying = true;
        }
        for ev in events {
            if let Some(step) = ScheduledStep::of_event(ev) {
                expected.push(step);
            } else {
                self.apply(ev)?;
            }
        }
        let done = self.poll();
        let produced: Vec<(i32, ScheduledStep)> = {
            let mut s = self.ctx.inner.lock();
            std::mem::take(&mut s.actions)
                .iter()
                .filter_map(ScheduledStep::of_action)
                .collect()
        };
        for i in 0..expected.len().max(produced.len()) {
            match (expected.get(i), produced.get(i)) {
                (Some((eid, e)), Some((pid, p))) if eid != pid || e != p => {
                    return Err(non_determinism(format!(
                        "step {eid} (episode {episode}): history recorded {e} but the code now schedules {p}; \
                         orchestrator code must be deterministic: deploy changes under a new orchestration name or version"
                    )));
                }
                (Some((eid, e)), None) => {
                    return Err(non_determinism(format!(
                        "step {eid} (episode {episode}): history recorded {e} but the code no longer schedules it"
                    )));
                }
                (None, Some((pid, p))) => {
                    return Err(non_determinism(format!(
                        "step {pid} (episode {episode}): the code schedules {p}, which history does not have"
                    )));
                }
                _ => {}
            }
        }
        if done.is_some() {
            return Err(non_determinism(format!(
                "the orchestration completed while replaying episode {episode}, but history continues"
            )));
        }
        Ok(())
    }

    /// Feeds one non-scheduling history event into the context.
    fn apply(&mut self, ev: &HistoryEvent) -> Result<(), FailureDetails> {
        match &ev.kind {
            EventKind::OrchestratorStarted => self.ctx.inner.lock().current_time = ev.timestamp,
            EventKind::ExecutionStarted { input, .. } if self.future.is_none() => {
                self.future = Some((self.func)(self.ctx.clone(), input.clone()));
            }
            EventKind::TaskCompleted {
                task_scheduled_id,
                result,
            }
            | EventKind::SubOrchestrationCompleted {
                task_scheduled_id,
                result,
            } => self.with_state(|s| s.deliver(Slot::Task(*task_scheduled_id), Ok(result.clone()))),
            EventKind::TaskFailed {
                task_scheduled_id,
                failure,
            }
            | EventKind::SubOrchestrationFailed {
                task_scheduled_id,
                failure,
            } => {
                self.with_state(|s| s.deliver(Slot::Task(*task_scheduled_id), Err(failure.clone())))
            }
            EventKind::EntityOperationCompleted {
                task_scheduled_id,
                result,
                ..
            } => self.with_state(|s| s.deliver(Slot::Task(*task_scheduled_id), Ok(result.clone()))),
            EventKind::EntityOperationFailed {
                task_scheduled_id,
                failure,
                ..
            } => {
                self.with_state(|s| s.deliver(Slot::Task(*task_scheduled_id), Err(failure.clone())))
            }
            EventKind::EntityLockGranted {
                task_scheduled_id, ..
            } => self.with_state(|s| s.deliver(Slot::Task(*task_scheduled_id), Ok(None))),
            EventKind::TimerFired { timer_id, .. } => {
                self.with_state(|s| s.deliver(Slot::Task(*timer_id), Ok(None)))
            }
            EventKind::EventRaised { name, input } => {
                self.with_state(|s| s.deliver_event(name, input.clone()))
            }
            _ => {}
        }
        Ok(())
    }

    fn with_state(&self, f: impl FnOnce(&mut CtxState)) {
        f(&mut self.ctx.inner.lock())
    }

    /// Polls the orchestrator once. Some(result) when it finished.
    fn poll(&mut self) -> Option<Result<Option<String>, FailureDetails>> {
        let fut = self.future.as_mut()?;
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        // Polling again while the orchestrator makes progress without new events (e.g. a wait
        // satisfied from the event buffer) is unnecessary: such futures resolve in the same poll.
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
            Ok(Poll::Ready(r)) => Some(r),
            Ok(Poll::Pending) => None,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "orchestrator panicked".to_string());
                Some(Err(FailureDetails::new("Panic", msg).non_retriable()))
            }
        }
    }

    /// Runs the live episode over `new_events`, starting at `started_at`.
    pub fn run_episode(
        &mut self,
        new_events: &[HistoryEvent],
        started_at: Millis,
    ) -> EpisodeOutput {
        {
            let mut s = self.ctx.inner.lock();
            s.is_replaying = false;
            s.current_time = started_at;
        }
        for ev in new_events {
            let _ = self.apply(ev);
        }
        let done = if self.finished { None } else { self.poll() };
        let mut s = self.ctx.inner.lock();
        let mut actions = std::mem::take(&mut s.actions);
        let scheduled = actions.len() as u32;
        let completion = match (s.fatal.take(), done) {
            (Some(f), _) => Some(Completion::Failed { failure: f }),
            (None, None) if self.future.is_none() => Some(Completion::Failed {
                failure: FailureDetails::new(
                    "InvalidHistory",
                    "the orchestration has no ExecutionStarted event to start from",
                )
                .non_retriable(),
            }),
            (None, None) => None,
            (None, Some(Err(f))) => Some(Completion::Failed { failure: f }),
            (None, Some(Ok(output))) => Some(match s.continue_as_new.take() {
                Some((input, keep)) => {
                    let mut carryover = Vec::new();
                    if keep {
                        let mut buffered: Vec<(u64, String, Option<String>)> = s
                            .event_buffer
                            .drain()
                            .flat_map(|(name, q)| {
                                q.into_iter().map(move |(o, i)| (o, name.clone(), i))
                            })
                            .collect();
                        buffered.sort_by_key(|(o, _, _)| *o);
                        carryover = buffered
                            .into_iter()
                            .map(|(_, name, input)| {
                                HistoryEvent::new(
                                    started_at,
                                    EventKind::EventRaised { name, input },
                                )
                            })
                            .collect();
                    }
                    Completion::ContinuedAsNew {
                        input,
                        version: None,
                        carryover,
                        new_execution_id: String::new(),
                    }
                }
                None => Completion::Completed { result: output },
            }),
        };
        let custom_status = s.custom_status.clone();
        drop(s);
        // OrchestratorStarted + consumed events + one event per scheduled action + OrchestratorCompleted
        self.history_len += 2 + new_events.len() as u32 + scheduled;
        if let Some(c) = completion {
            self.finished = true;
            actions.push(Action::Complete(c));
        }
        EpisodeOutput {
            actions,
            custom_status,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }
}
