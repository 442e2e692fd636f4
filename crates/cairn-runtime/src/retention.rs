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
use cairn_storage::settings::HubSettings;
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

/// Sweeps every `interval`, with the policy in force at the time, until the task is aborted.
pub(crate) async fn run(
    client: Client,
    retention: Retention,
    interval: Duration,
    clock: Arc<dyn Clock>,
    names: impl Fn() -> BTreeSet<String>,
) {
    loop {
        tokio::time::sleep(interval).await;
        let policy = match crate::blocking::blocking(|| retention.reload()) {
            Ok(policy) => policy,
            Err(e) => {
                tracing::warn!("cannot read the retention policy (the last one read applies): {e}");
                retention.policy()
            }
        };
        if !policy.is_empty() {
            let purged = sweep(&client, &policy, clock.now_millis(), names()).await;
            if purged > 0 {
                tracing::info!(purged, "retention purged ended orchestrations");
            }
        }
        retention
            .sweeps
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// The key the policy is kept under in the hub's settings (`retention.json` in a hub's
/// directory; the cluster's KV bucket in cluster mode).
const POLICY_KEY: &str = "retention";

/// The policy in force, changeable while Cairn runs ([`crate::Engine::retention`]) and kept in
/// the hub's settings ([`HubSettings`]) so that it outlives the process, and in cluster mode the
/// node. A policy given in the configuration (`cairn serve --retain-…`) replaces the kept one
/// when the engine opens.
#[derive(Clone)]
pub struct Retention {
    policy: Arc<parking_lot::Mutex<Arc<RetentionPolicy>>>,
    settings: Arc<dyn HubSettings>,
    sweeps: Arc<std::sync::atomic::AtomicU64>,
}

impl Retention {
    /// The policy for the hub whose settings are `settings`: `configured` if it says anything
    /// (and then kept), else the one kept there, else none.
    pub(crate) fn open(
        settings: Arc<dyn HubSettings>,
        configured: &RetentionPolicy,
    ) -> Result<Retention, String> {
        let retention = Retention {
            policy: Arc::default(),
            settings,
            sweeps: Arc::default(),
        };
        if !configured.is_empty() {
            retention.set(configured.clone())?;
            return Ok(retention);
        }
        retention.reload()?;
        Ok(retention)
    }

    /// Makes the policy kept in the hub's settings the one in force (in a cluster, another
    /// node may have changed it) and returns it. Blocking: it reads the settings.
    pub fn reload(&self) -> Result<Arc<RetentionPolicy>, String> {
        if let Some(bytes) = self.settings.load(POLICY_KEY)? {
            let place = self.settings.location(POLICY_KEY);
            let json: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{place} is not valid JSON ({e}); fix or delete it"))?;
            let policy = RetentionPolicy::from_json(&json)
                .map_err(|e| format!("{place}: {e}; fix or delete it"))?;
            *self.policy.lock() = Arc::new(policy);
        }
        Ok(self.policy())
    }

    /// How many sweeps have finished since the engine opened (one that starts after a change,
    /// of the clock or of the policy, has seen it once this has grown by two).
    pub fn sweeps(&self) -> u64 {
        self.sweeps.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<RetentionPolicy> {
        self.policy.lock().clone()
    }

    /// Replaces the policy: kept in the hub's settings first, then in force from the next
    /// sweep.
    pub fn set(&self, policy: RetentionPolicy) -> Result<(), String> {
        let text = serde_json::to_string_pretty(&policy.to_json())
            .map_err(|e| format!("cannot encode the retention policy: {e}"))?;
        self.settings
            .store(POLICY_KEY, text.as_bytes())
            .map_err(|e| format!("cannot keep the retention policy: {e}"))?;
        *self.policy.lock() = Arc::new(policy);
        Ok(())
    }
}

/// An age as people write it for `--retain-…` (`7d`, `12h`, `90m`, `45s`): the largest unit
/// that divides it, so it reads back exactly.
fn age_text(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 {
        return humantime::format_duration(d).to_string();
    }
    match s {
        0 => "0s".to_string(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

impl RetentionRule {
    fn to_json(&self) -> serde_json::Value {
        let age = |d: Option<Duration>| {
            d.map(|d| serde_json::Value::from(age_text(d)))
                .unwrap_or(serde_json::Value::Null)
        };
        serde_json::json!({
            "completed": age(self.completed),
            "failed": age(self.failed),
            "terminated": age(self.terminated),
        })
    }

    fn from_json(json: &serde_json::Value, at: &str) -> Result<RetentionRule, String> {
        let obj = json
            .as_object()
            .ok_or_else(|| format!("{at} must be an object like {{\"completed\": \"7d\"}}"))?;
        let mut rule = RetentionRule::default();
        for (key, value) in obj {
            let status = match key.as_str() {
                "completed" => RuntimeStatus::Completed,
                "failed" => RuntimeStatus::Failed,
                "terminated" => RuntimeStatus::Terminated,
                other => {
                    return Err(format!(
                    "{at} has '{other}'; the ended statuses are completed, failed and terminated"
                ))
                }
            };
            match value {
                serde_json::Value::Null => {}
                serde_json::Value::String(s) => {
                    let age = humantime::parse_duration(s).map_err(|e| {
                        format!("{at}.{key} is '{s}', not an age like 7d or 12h: {e}")
                    })?;
                    rule.set(status, age)?;
                }
                other => {
                    return Err(format!(
                        "{at}.{key} is {other}, not an age like \"7d\" (or null: keep forever)"
                    ))
                }
            }
        }
        Ok(rule)
    }
}

impl RetentionPolicy {
    /// The policy as `/api/retention` shows it and `retention.json` keeps it:
    /// `{"hub": {"completed": "7d", "failed": null, …}, "byName": {"name": {…}}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let by_name: serde_json::Map<String, serde_json::Value> = self
            .by_name
            .iter()
            .map(|(name, r)| (name.clone(), r.to_json()))
            .collect();
        serde_json::json!({ "hub": self.hub.to_json(), "byName": by_name })
    }

    /// Reads what [`Self::to_json`] writes (either part may be missing: no rules); an error
    /// says what is wrong.
    pub fn from_json(json: &serde_json::Value) -> Result<RetentionPolicy, String> {
        let obj = json
            .as_object()
            .ok_or("a retention policy is an object with \"hub\" and \"byName\"")?;
        let mut policy = RetentionPolicy::default();
        for (key, value) in obj {
            match key.as_str() {
                "hub" => policy.hub = RetentionRule::from_json(value, "hub")?,
                "byName" => {
                    let names = value
                        .as_object()
                        .ok_or("byName must be an object of orchestration name -> rule")?;
                    for (name, rule) in names {
                        let rule = RetentionRule::from_json(rule, &format!("byName.{name}"))?;
                        policy.by_name.insert(name.clone(), rule);
                    }
                }
                // Shown by the API next to the policy; not part of it.
                "purged" => {}
                other => {
                    return Err(format!(
                        "a retention policy has \"hub\" and \"byName\", not \"{other}\""
                    ))
                }
            }
        }
        Ok(policy)
    }
}
