//! `/metrics` (Prometheus text format) and `/api/stats` (the dashboard's JSON).
//!
//! Partition figures live in [`cairn_runtime::LeaderStats`] (atomics the partitions update
//! anyway); they are copied into the recorder when scraped, so the hot path pays nothing for
//! metrics. The log's commit batch sizes and sync latencies are histograms recorded by the
//! storage layer itself.

use crate::{ApiError, AppState};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;

/// Installs the process-wide recorder with histogram buckets suited to Cairn's figures. Call it
/// once, before the engine opens, so the storage layer's histograms bind to it.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("cairn_log_sync_seconds".into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("cairn_log_batch_records".into()),
                &[
                    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
                ],
            )
        })
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "cairn_instances",
        "Orchestration instances by runtime status"
    );
    describe_gauge!(
        "cairn_instances_by_name",
        "Orchestration instances by orchestration name"
    );
    describe_gauge!(
        "cairn_backlog",
        "Instances with work to run (dispatched, or waiting in the store), by orchestration or entity name"
    );
    describe_gauge!(
        "cairn_scale_recommended_workers",
        "SDK worker processes the hub's work needs now (KEDA: prometheus scaler, threshold 1)"
    );
    describe_gauge!(
        "cairn_scale_recommended_nodes",
        "Cairn nodes the hub needs now: 0 when idle, 2 in cluster mode (one serves, one stands by)"
    );
    describe_gauge!(
        "cairn_scale_backlog",
        "Instances with work plus queued activities, the backlog the worker recommendation follows"
    );
    describe_gauge!(
        "cairn_scale_oldest_wait_seconds",
        Unit::Seconds,
        "How long the oldest work item has waited for a worker"
    );
    describe_gauge!(
        "cairn_timers_armed",
        "Armed durable timers (in memory, or waiting in the store)"
    );
    describe_gauge!(
        "cairn_activity_backlog",
        "Queued activities (running, or waiting in the store for a worker), by activity name"
    );
    describe_counter!(
        "cairn_purged_total",
        "Instances purged with their histories, by request or by the retention policy"
    );
    describe_gauge!(
        "cairn_work_queue_length",
        "Work items waiting for a worker slot or a connected SDK worker"
    );
    describe_gauge!(
        "cairn_work_queue_oldest_seconds",
        Unit::Seconds,
        "Age of the oldest waiting work item"
    );
    describe_counter!(
        "cairn_episodes_total",
        "Orchestration episodes and entity batches run"
    );
    describe_counter!(
        "cairn_replays_total",
        "Episodes that had to replay history (no cached orchestrator)"
    );
    describe_counter!("cairn_activities_total", "Activities started");
    describe_counter!(
        "cairn_log_records_total",
        "Records appended to partition logs"
    );
    describe_counter!(
        "cairn_log_commits_total",
        "Commit batches (group commits) of partition logs"
    );
    describe_counter!("cairn_checkpoints_total", "Checkpoints written");
    describe_gauge!(
        "cairn_cache_instances",
        "Instances held in the instance cache"
    );
    describe_gauge!(
        "cairn_cache_bytes",
        Unit::Bytes,
        "Approximate memory of the instance cache"
    );
    describe_counter!(
        "cairn_cache_lookups_total",
        "Instance lookups by result (hit: in memory, miss: read from the store)"
    );
    describe_gauge!(
        "cairn_cache_hit_ratio",
        "Share of instance lookups answered from memory"
    );
    describe_histogram!(
        "cairn_log_sync_seconds",
        Unit::Seconds,
        "Time to write and fsync one commit batch"
    );
    describe_histogram!("cairn_log_batch_records", "Records per commit batch");
    describe_gauge!(
        "cairn_workers_connected",
        "SDK workers connected (GetWorkItems streams)"
    );
    describe_gauge!(
        "cairn_worker_registrations",
        "Connected workers that run a name, by kind (name \"*\": every name of that kind, a worker without filters)"
    );
    describe_gauge!(
        "cairn_work_unserved",
        "Work items waiting because no connected worker runs their name (and version)"
    );
}

/// One labelled worker gauge: (metric, kind, name).
pub type WorkerGauge = (&'static str, &'static str, String);

/// The worker gauges now: who is connected, what they run, and what nobody runs.
fn worker_gauges(queue: &cairn_runtime::remote::RemoteQueue) -> Vec<(WorkerGauge, f64)> {
    use cairn_runtime::remote::WorkKind;
    let workers = queue.workers();
    let mut out: std::collections::BTreeMap<WorkerGauge, f64> = Default::default();
    for w in &workers {
        for kind in WorkKind::ALL {
            let names = match kind {
                WorkKind::Orchestration => &w.filter.orchestrations,
                WorkKind::Activity => &w.filter.activities,
                WorkKind::Entity => &w.filter.entities,
            };
            let listed: Vec<String> = match names {
                None => vec!["*".to_string()],
                Some(v) => v.iter().map(|n| n.name.clone()).collect(),
            };
            for name in listed {
                *out.entry(("cairn_worker_registrations", kind.as_str(), name))
                    .or_default() += 1.0;
            }
        }
    }
    for u in queue.unserved() {
        *out.entry(("cairn_work_unserved", u.kind.as_str(), u.name))
            .or_default() += u.waiting as f64;
    }
    let mut v: Vec<(WorkerGauge, f64)> = out.into_iter().collect();
    v.push((
        ("cairn_workers_connected", "", String::new()),
        workers.len() as f64,
    ));
    v
}

fn publish_workers(state: &AppState) {
    let Some(queue) = &state.remote else {
        return;
    };
    let now = worker_gauges(queue);
    let mut published = state.published_workers.lock();
    let current: std::collections::HashSet<WorkerGauge> =
        now.iter().map(|(k, _)| k.clone()).collect();
    // Label sets that vanished read zero rather than their last value.
    for gone in published.difference(&current) {
        let (metric, kind, name) = gone.clone();
        gauge!(metric, "kind" => kind, "name" => name).set(0.0);
    }
    for ((metric, kind, name), value) in now {
        if metric == "cairn_workers_connected" {
            gauge!(metric).set(value);
        } else {
            gauge!(metric, "kind" => kind, "name" => name).set(value);
        }
    }
    *published = current;
}

/// `/api/workers`: the connected SDK workers with what they run, and the work no connected
/// worker runs (for the dashboard's "waiting for a worker" notices).
pub async fn workers_json(State(state): State<AppState>) -> Json<Value> {
    match &state.remote {
        None => Json(json!({ "remoteWorkers": false, "workers": [], "unserved": [] })),
        Some(queue) => Json(json!({
            "remoteWorkers": true,
            "workers": queue.workers(),
            "unserved": queue.unserved(),
        })),
    }
}

/// `/api/retention`: how long ended orchestrations are kept (hub-wide and per name; null:
/// forever) and how many were purged through this process.
pub async fn retention_json(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    // Read afresh: in a cluster another node may have changed it.
    let retention = state.retention.clone();
    tokio::task::spawn_blocking(move || retention.reload())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::Internal)?;
    Ok(Json(retention_body(&state)))
}

/// `PUT /api/retention`: replaces the policy (the body has the shape `GET` shows; a missing
/// part has no rules), kept in the hub's directory so that it outlives the process.
pub async fn set_retention(
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let json: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be JSON like {{\"hub\": {{\"completed\": \"7d\"}}, \"byName\": {{}}}}: {e}"
        ))
    })?;
    let policy = cairn_runtime::RetentionPolicy::from_json(&json).map_err(ApiError::BadRequest)?;
    state.retention.set(policy).map_err(ApiError::Internal)?;
    Ok(Json(retention_body(&state)))
}

fn retention_body(state: &AppState) -> Value {
    let mut body = state.retention.policy().to_json();
    body["purged"] = state
        .stats
        .iter()
        .map(|s| s.purged.load(Ordering::Relaxed))
        .sum::<u64>()
        .into();
    body
}

/// Orchestration instances by status, summed over the partitions.
fn instances_by_status(state: &AppState) -> Vec<(cairn_core::RuntimeStatus, u64)> {
    let mut total: Vec<(cairn_core::RuntimeStatus, u64)> =
        cairn_core::RuntimeStatus::ALL.map(|s| (s, 0)).to_vec();
    for s in &state.stats {
        for ((_, sum), (_, n)) in total.iter_mut().zip(s.instances_by_status()) {
            *sum += n;
        }
    }
    total
}

/// A count by name summed over the partitions (kept by the partitions as instances change:
/// no scan): orchestration instances, or the backlog.
fn by_name(
    state: &AppState,
    counts: impl Fn(
        &cairn_runtime::LeaderStats,
    ) -> std::sync::Arc<std::collections::BTreeMap<String, u64>>,
) -> std::collections::BTreeMap<String, u64> {
    let mut total = std::collections::BTreeMap::new();
    for s in &state.stats {
        for (name, n) in counts(s).iter() {
            *total.entry(name.clone()).or_insert(0) += n;
        }
    }
    total
}

fn instances_by_name(state: &AppState) -> std::collections::BTreeMap<String, u64> {
    by_name(state, |s| s.instances_by_name())
}

fn backlog_by_name(state: &AppState) -> std::collections::BTreeMap<String, u64> {
    by_name(state, |s| s.backlog_by_name())
}

fn activity_backlog_by_name(state: &AppState) -> std::collections::BTreeMap<String, u64> {
    by_name(state, |s| s.activity_backlog_by_name())
}

/// Sets gauge `metric` per name, and to zero for names published before that are gone.
fn publish_by_name(
    metric: &'static str,
    counts: std::collections::BTreeMap<String, u64>,
    published: &parking_lot::Mutex<std::collections::BTreeSet<String>>,
) {
    let mut published = published.lock();
    for gone in published.iter().filter(|n| !counts.contains_key(*n)) {
        gauge!(metric, "name" => gone.clone()).set(0.0);
    }
    for (name, n) in &counts {
        gauge!(metric, "name" => name.clone()).set(*n as f64);
    }
    *published = counts.into_keys().collect();
}

/// The figures `/api/scale` decides on, summed over the partitions, with the backlogs by name
/// (instances with work, queued activities) as [`backlog_by_name`] and
/// [`activity_backlog_by_name`] give them.
fn scale_inputs(
    state: &AppState,
    backlog: &std::collections::BTreeMap<String, u64>,
    activity_backlog: &std::collections::BTreeMap<String, u64>,
) -> cairn_runtime::scale::ScaleInputs {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let queues = || {
        state
            .stats
            .iter()
            .flat_map(|s| [&s.orchestrator_queue, &s.activity_queue, &s.entity_queue])
    };
    cairn_runtime::scale::ScaleInputs {
        instances_with_work: backlog.values().sum(),
        activities: activity_backlog.values().sum(),
        waiting: queues().map(|q| q.len() as u64).sum(),
        oldest_wait: queues().map(|q| q.oldest_age()).max().unwrap_or_default(),
        // Other nodes taking work for their workers are not workers of this node.
        connected_workers: state
            .remote
            .as_ref()
            .map_or(0, |q| q.workers().iter().filter(|w| !w.peer).count() as u64),
        timers_armed: state.stats.iter().map(|s| load(&s.timers_armed)).sum(),
        cluster: state.config.cluster.is_some(),
    }
}

/// `GET /api/cluster`: where the hub lives. Embedded: this node and its partitions' queues.
/// Cluster: this node, the hub's serving node, and per partition its log, owner epoch and
/// checkpoint lag, read from JetStream (`cairn cluster status`).
pub async fn cluster_json(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let Some(view) = state.config.cluster.clone() else {
        return Ok(Json(json!({
            "mode": "embedded",
            "partitions": state.stats.len(),
        })));
    };
    let read = view.status.clone();
    // A JetStream that does not answer must not leave the dashboard waiting on every poll.
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::task::spawn_blocking(move || read()),
    )
    .await
    .map_err(|_| {
        ApiError::Unavailable(
            "JetStream did not answer within 5 s: the cluster's status cannot be read now".into(),
        )
    })?
    .map_err(|e| ApiError::Unavailable(format!("reading the cluster's status failed: {e}")))?
    .map_err(|e| {
        ApiError::Unavailable(format!(
            "cannot read the cluster's status from JetStream: {e}"
        ))
    })?;
    let mut body = json!({ "mode": "cluster", "node": view.node });
    if let (Some(body), Some(status)) = (body.as_object_mut(), status.as_object()) {
        body.extend(status.clone());
    }
    Ok(Json(body))
}

/// `GET /api/scale`: how many SDK workers and Cairn nodes the hub needs now, with the figures
/// behind it (see [`cairn_runtime::scale`]). KEDA's metrics-api scaler reads
/// `workers.recommended` or `nodes.recommended` with `targetValue: 1`.
pub async fn scale_json(State(state): State<AppState>) -> Json<Value> {
    let inputs = scale_inputs(
        &state,
        &backlog_by_name(&state),
        &activity_backlog_by_name(&state),
    );
    let policy = &state.config.scale;
    let r = cairn_runtime::scale::recommend(&inputs, policy);
    Json(json!({
        "workers": {
            "recommended": r.workers,
            "connected": inputs.connected_workers,
            "reason": r.workers_reason,
        },
        "nodes": {
            "recommended": r.nodes,
            "reason": r.nodes_reason,
        },
        "idle": r.idle,
        "backlog": {
            "instances": inputs.instances_with_work,
            "activities": inputs.activities,
            "waiting": inputs.waiting,
            "oldestWaitSeconds": inputs.oldest_wait.as_secs_f64(),
        },
        "timersArmed": inputs.timers_armed,
        "policy": {
            "backlogPerWorker": policy.backlog_per_worker,
            "maxWaitSeconds": policy.max_wait.as_secs_f64(),
        },
    }))
}

/// Copies the partitions' figures into the recorder.
fn publish(state: &AppState) {
    publish_workers(state);
    let backlog = backlog_by_name(state);
    let activity_backlog = activity_backlog_by_name(state);
    let scale = scale_inputs(state, &backlog, &activity_backlog);
    let r = cairn_runtime::scale::recommend(&scale, &state.config.scale);
    gauge!("cairn_scale_recommended_workers").set(r.workers as f64);
    gauge!("cairn_scale_recommended_nodes").set(r.nodes as f64);
    gauge!("cairn_scale_backlog").set((scale.instances_with_work + scale.activities) as f64);
    gauge!("cairn_scale_oldest_wait_seconds").set(scale.oldest_wait.as_secs_f64());
    let (mut hits, mut misses) = (0u64, 0u64);
    for (p, s) in state.stats.iter().enumerate() {
        let partition = p.to_string();
        for (kind, q) in [
            ("orchestrator", &s.orchestrator_queue),
            ("activity", &s.activity_queue),
            ("entity", &s.entity_queue),
        ] {
            gauge!("cairn_work_queue_length", "partition" => partition.clone(), "kind" => kind)
                .set(q.len() as f64);
            gauge!("cairn_work_queue_oldest_seconds", "partition" => partition.clone(), "kind" => kind)
                .set(q.oldest_age().as_secs_f64());
        }
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        counter!("cairn_episodes_total", "partition" => partition.clone())
            .absolute(load(&s.episodes));
        counter!("cairn_replays_total", "partition" => partition.clone())
            .absolute(load(&s.replays));
        counter!("cairn_activities_total", "partition" => partition.clone())
            .absolute(load(&s.activities));
        counter!("cairn_log_records_total", "partition" => partition.clone())
            .absolute(load(&s.records));
        counter!("cairn_log_commits_total", "partition" => partition.clone())
            .absolute(load(&s.batches));
        counter!("cairn_checkpoints_total", "partition" => partition.clone())
            .absolute(load(&s.checkpoints));
        gauge!("cairn_cache_instances", "partition" => partition.clone())
            .set(load(&s.cached_instances) as f64);
        gauge!("cairn_cache_bytes", "partition" => partition.clone())
            .set(load(&s.cache_bytes) as f64);
        gauge!("cairn_timers_armed", "partition" => partition.clone())
            .set(load(&s.timers_armed) as f64);
        counter!("cairn_cache_lookups_total", "partition" => partition.clone(), "result" => "hit")
            .absolute(load(&s.cache_hits));
        counter!("cairn_cache_lookups_total", "partition" => partition, "result" => "miss")
            .absolute(load(&s.cache_misses));
        hits += load(&s.cache_hits);
        misses += load(&s.cache_misses);
    }
    for (status, n) in instances_by_status(state) {
        gauge!("cairn_instances", "status" => status.as_str()).set(n as f64);
    }
    let purged: u64 = state
        .stats
        .iter()
        .map(|s| s.purged.load(Ordering::Relaxed))
        .sum();
    counter!("cairn_purged_total").absolute(purged);
    publish_by_name(
        "cairn_instances_by_name",
        instances_by_name(state),
        &state.published_names,
    );
    publish_by_name("cairn_backlog", backlog, &state.published_backlog);
    publish_by_name(
        "cairn_activity_backlog",
        activity_backlog,
        &state.published_activity_backlog,
    );
    if hits + misses > 0 {
        gauge!("cairn_cache_hit_ratio").set(hits as f64 / (hits + misses) as f64);
    }
}

pub async fn prometheus(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(handle) = &state.prometheus else {
        return Err(ApiError::Unavailable(
            "metrics are not enabled in this process (the metrics recorder could not be installed)"
                .into(),
        ));
    };
    describe();
    publish(&state);
    handle.run_upkeep();
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response())
}

pub async fn stats_json(State(state): State<AppState>) -> Json<Value> {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let sum = |f: &dyn Fn(&cairn_runtime::LeaderStats) -> u64| -> u64 {
        state.stats.iter().map(|s| f(s)).sum()
    };
    let by_status: Map<String, Value> = instances_by_status(&state)
        .into_iter()
        .map(|(status, n)| (status.as_str().to_string(), json!(n)))
        .collect();
    let queues: Vec<Value> = state
        .stats
        .iter()
        .enumerate()
        .map(|(p, s)| {
            let oldest = [&s.orchestrator_queue, &s.activity_queue, &s.entity_queue]
                .iter()
                .map(|q| q.oldest_age().as_secs_f64())
                .fold(0.0, f64::max);
            json!({
                "partition": p,
                "orchestrators": s.orchestrator_queue.len(),
                "activities": s.activity_queue.len(),
                "entities": s.entity_queue.len(),
                "oldestSeconds": oldest,
            })
        })
        .collect();
    Json(json!({
        "partitions": state.stats.len(),
        "uptimeSeconds": state.started.elapsed().as_secs_f64(),
        "totals": {
            "episodes": sum(&|s| load(&s.episodes)),
            "activities": sum(&|s| load(&s.activities)),
            "records": sum(&|s| load(&s.records)),
            "batches": sum(&|s| load(&s.batches)),
        },
        "instancesByStatus": by_status,
        "instancesByName": instances_by_name(&state),
        "backlogByName": backlog_by_name(&state),
        "activityBacklogByName": activity_backlog_by_name(&state),
        "dispatched": sum(&|s| load(&s.dispatched)),
        "timersArmed": sum(&|s| load(&s.timers_armed)),
        "queues": queues,
        "cache": {
            "instances": sum(&|s| load(&s.cached_instances)),
            "bytes": sum(&|s| load(&s.cache_bytes)),
            "hits": sum(&|s| load(&s.cache_hits)),
            "misses": sum(&|s| load(&s.cache_misses)),
        },
    }))
}
