//! Commit: encode a batch of records, apply them to the state machine, append them to the log,
//! and perform their effects (held back per the speculation rule where they leave the partition).

use super::*;

impl Leader {
    /// Applies records to the state machine, appends them to the log, performs effects.
    pub(super) fn commit(&mut self, records: Vec<LogRecord>) {
        let base = self.log().next_position();
        // Every record is encoded before any is applied or appended: an encoding failure stops
        // the partition with nothing written (never an empty or partial record in the log).
        let mut payloads = Vec::with_capacity(records.len());
        for record in &records {
            match record.encode() {
                Ok(bytes) => payloads.push(bytes),
                Err(e) => {
                    self.fail(format!("{e}; nothing of this batch was applied or written"));
                    return;
                }
            }
        }
        let mut effects = Vec::new();
        let store = self.store.clone();
        let source = StoreSource(&*store);
        for (i, record) in records.iter().enumerate() {
            let position = base + i as u64;
            match self.state.apply(position, record, &source) {
                Ok(e) => effects.push((position, e)),
                Err(e) => {
                    self.fail(format!("applying record {position} failed: {e}"));
                    return;
                }
            }
        }
        let count = payloads.len() as u64;
        if let Err(e) = self.log().append(base, payloads) {
            self.fail(format!("appending to the log failed: {e}"));
            return;
        }
        self.records_since_checkpoint += count;
        self.stats.records.fetch_add(count, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.publish_state_stats();
        // Effects run after the whole batch is applied, so snapshots taken for waiters reflect the
        // batch's last position: hold them until that position is durable.
        let last = base + count - 1;
        for (position, effects) in effects {
            for effect in effects {
                self.effect(position, last, effect);
            }
        }
    }

    pub(super) fn effect(&mut self, position: u64, batch_end: u64, effect: Effect) {
        match effect {
            Effect::RunEpisode(id) => {
                self.start_episode(&id);
            }
            Effect::StartActivity(a) => {
                self.start_activity(a);
            }
            Effect::ScheduleTimer { timer_id, due } => {
                self.timers.armed(due, timer_id);
            }
            Effect::SendMessages { to } => self.held.push_back((position, Held::Send { to })),
            Effect::AckMessages { to, up_to } => {
                self.held.push_back((position, Held::Ack { to, up_to }))
            }
            Effect::Respond {
                request_id,
                response,
            } => {
                if let Some(reply) = self.replies.remove(&request_id) {
                    if cairn_core::mutation::active(cairn_core::mutation::Mutation::EarlyAnswers) {
                        let _ = reply.send(Ok(response));
                    } else {
                        self.held
                            .push_back((position, Held::Respond(reply, response)));
                    }
                }
            }
            Effect::InstanceChanged(id) => {
                self.withdraw_if_ended(&id);
                // Deleted (purged, or an entity emptied): it holds no cache slot, so no trim
                // would find its cursor or its last-use time to drop them with it.
                if self.state.loaded(&id).is_none() {
                    self.cursors.remove(&id);
                    self.touched.remove(&id);
                }
                if self.waiters.contains_key(&id) {
                    if let Some(status) = self.snapshot(&id) {
                        self.held.push_back((batch_end, Held::Changed(status)));
                    }
                }
            }
        }
    }
}

/// A failure if an action carries a payload over the limit.
pub(super) fn oversized_action(actions: &[Action], limit: usize) -> Option<FailureDetails> {
    for a in actions {
        let (what, len) = match a {
            Action::ScheduleTask { input, name, .. } => (
                format!("input of activity '{name}'"),
                input.as_ref().map_or(0, |s| s.len()),
            ),
            Action::CreateSubOrchestration { input, name, .. } => (
                format!("input of sub-orchestration '{name}'"),
                input.as_ref().map_or(0, |s| s.len()),
            ),
            Action::SendEvent { input, name, .. } => (
                format!("data of event '{name}'"),
                input.as_ref().map_or(0, |s| s.len()),
            ),
            Action::Complete(Completion::Completed { result }) => (
                "orchestration output".to_string(),
                result.as_ref().map_or(0, |s| s.len()),
            ),
            Action::Complete(Completion::ContinuedAsNew { input, .. }) => (
                "continue-as-new input".to_string(),
                input.as_ref().map_or(0, |s| s.len()),
            ),
            _ => continue,
        };
        if len > limit {
            return Some(
                FailureDetails::new(
                    "PayloadTooLarge",
                    format!(
                        "{what} is {len} bytes; the limit is {limit} bytes (max_payload_bytes)"
                    ),
                )
                .non_retriable(),
            );
        }
    }
    None
}
