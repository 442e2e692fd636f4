//! Checks shared by the crash workload and the simulator.

use cairn_runtime::{Entity, EntityContext, EventKind, HistoryEvent, TaskError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An entity that counts every operation id it is asked to `record`: a lost operation is
/// missing here, one applied twice has a count of 2.
#[derive(Default, Clone, Serialize, Deserialize)]
pub struct Tally {
    pub seen: BTreeMap<String, u32>,
}

impl Entity for Tally {
    fn operation(
        &mut self,
        ctx: &mut EntityContext,
        operation: &str,
    ) -> Result<serde_json::Value, TaskError> {
        if operation == "record" {
            let id: String = ctx.input()?;
            *self.seen.entry(id).or_default() += 1;
        }
        Ok(serde_json::Value::Null)
    }
}

/// Exactly-once in one instance's history: every step (activity, sub-orchestration, timer,
/// entity call) is scheduled once and has exactly one result, and no result belongs to a step
/// that was never scheduled. Returns how many steps were checked and what is wrong.
pub fn history_problems(instance_id: &str, history: &[HistoryEvent]) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut scheduled: BTreeMap<i32, &'static str> = BTreeMap::new();
    let mut results: BTreeMap<i32, usize> = BTreeMap::new();
    for e in history {
        let is_step = matches!(
            e.kind,
            EventKind::TaskScheduled { .. }
                | EventKind::SubOrchestrationCreated { .. }
                | EventKind::TimerCreated { .. }
                | EventKind::EntityOperationCalled { .. }
        );
        if is_step && scheduled.insert(e.event_id, e.kind.name()).is_some() {
            problems.push(format!(
                "{instance_id}: step {} scheduled twice",
                e.event_id
            ));
        }
        if let Some(step) = e.kind.completes() {
            *results.entry(step).or_default() += 1;
        }
    }
    for (step, what) in &scheduled {
        let n = results.get(step).copied().unwrap_or(0);
        if n != 1 {
            problems.push(format!(
                "{instance_id}: {what} {step} has {n} results in history (expected exactly 1)"
            ));
        }
    }
    for (step, n) in &results {
        if !scheduled.contains_key(step) {
            problems.push(format!(
                "{instance_id}: {n} results for step {step} that was never scheduled"
            ));
        }
    }
    (scheduled.len(), problems)
}
