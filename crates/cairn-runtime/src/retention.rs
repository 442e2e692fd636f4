//! Retention: ended orchestrations older than a policy are purged with their histories, on
//! their own, in bounded batches.
//!
//! A sweep runs every [`EngineConfig::retention_interval`](crate::EngineConfig): for each ended
//! status with an age (hub-wide, or per orchestration name), every partition answers, from its
//! index of ended instances by completion time, the ids completed before `now - age`, and they
//! are purged a batch at a time, each batch one logged purge request. So the decisions are in
//! the log (recovery replays them exactly), and a sweep never holds a partition for more than
//! one small batch. This module never decides what an instance's status is.

use crate::client::Client;
use crate::clock::Clock;
use cairn_core::{Millis, RuntimeStatus};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// How long ended orchestrations are kept after they complete, fail or are terminated (None:
/// forever).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionRule {
    pub completed: Option<Duration>,
    pub failed: Option<Duration>,
    pub terminated: Option<Duration>,
}

impl RetentionRule {
    pub fn age(&self, status: RuntimeStatus) -> Option<Duration> {
        match status {
            RuntimeStatus::Completed => self.completed,
            RuntimeStatus::Failed => self.failed,
            RuntimeStatus::Terminated => self.terminated,
            _ => None,
        }
    }

    pub fn set(&mut self, status: RuntimeStatus, age: Duration) -> Result<(), String> {
        match status {
            RuntimeStatus::Completed => self.completed = Some(age),
            RuntimeStatus::Failed => self.failed = Some(age),
            RuntimeStatus::Terminated => self.terminated = Some(age),
            other => {
                return Err(format!(
                    "only ended statuses are purged (Completed, Failed, Terminated), not {other}"
                ))
            }
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.completed.is_none() && self.failed.is_none() && self.terminated.is_none()
    }
}

/// A hub's retention policy: a rule for every orchestration, and rules for some names that
/// replace it status by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionPolicy {
    pub hub: RetentionRule,
    pub by_name: BTreeMap<String, RetentionRule>,
}

impl RetentionPolicy {
    pub fn is_empty(&self) -> bool {
        self.hub.is_empty() && self.by_name.values().all(RetentionRule::is_empty)
    }

    /// How long instances of `name` with `status` are kept.
    pub fn age(&self, name: &str, status: RuntimeStatus) -> Option<Duration> {
        self.by_name
            .get(name)
            .and_then(|r| r.age(status))
            .or_else(|| self.hub.age(status))
    }
}

const ENDED: [RuntimeStatus; 3] = [
    RuntimeStatus::Completed,
    RuntimeStatus::Failed,
    RuntimeStatus::Terminated,
];

/// One sweep: purges everything the policy says has expired. `names` are the orchestration
/// names the hub has instances of (needed only when some names have their own rules).
pub(crate) async fn sweep(
    client: &Client,
    policy: &RetentionPolicy,
    now: Millis,
    names: BTreeSet<String>,
) -> u64 {
    let mut purged = 0;
    let cutoff = |age: Duration| now.saturating_sub(age.as_millis() as Millis);
    for status in ENDED {
        // Without rules per name one hub-wide sweep of the status does; with them, each name
        // has its own age.
        let sweeps: Vec<(Option<&str>, Duration)> = if policy.by_name.is_empty() {
            policy
                .hub
                .age(status)
                .map(|age| (None, age))
                .into_iter()
                .collect()
        } else {
            names
                .iter()
                .filter_map(|n| policy.age(n, status).map(|age| (Some(n.as_str()), age)))
                .collect()
        };
        for (name, age) in sweeps {
            match client.purge_expired(status, name, cutoff(age)).await {
                Ok(n) => purged += n,
                Err(e) => {
                    tracing::warn!("retention sweep for {status} stopped: {e}");
                    break;
                }
            }
        }
    }
    purged
}

/// Sweeps every `interval` until the task is aborted.
pub(crate) async fn run(
    client: Client,
    policy: RetentionPolicy,
    interval: Duration,
    clock: Arc<dyn Clock>,
    names: impl Fn() -> BTreeSet<String>,
) {
    loop {
        tokio::time::sleep(interval).await;
        let purged = sweep(&client, &policy, clock.now_millis(), names()).await;
        if purged > 0 {
            tracing::info!(purged, "retention purged ended orchestrations");
        }
    }
}
