//! Durable entities: operations one at a time, batched, exactly once, with per-operation
//! rollback; signals and calls from clients and orchestrations.
mod common;
use cairn_runtime::*;
use common::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

#[derive(Default, Clone, Serialize, Deserialize)]
struct Counter {
    value: i64,
}

impl Entity for Counter {
    fn operation(&mut self, ctx: &mut EntityContext, operation: &str) -> Result<Value, TaskError> {
        match operation {
            "add" => {
                let by: i64 = ctx.input()?;
                self.value += by;
                Ok(json!(self.value))
            }
            "add_then_fail" => {
                // The change is rolled back with the failure.
                self.value += 1000;
                Err(TaskError::new("Refused", "add_then_fail always fails"))
            }
            "get" => Ok(json!(self.value)),
            "set" => {
                self.value = ctx.input()?;
                Ok(Value::Null)
            }
            "forward" => {
                // Signals another counter; only sent if this operation succeeds.
                let to: String = ctx.input()?;
                ctx.signal_entity("counter", &to, "add", &self.value)?;
                Ok(Value::Null)
            }
            "delete" => {
                ctx.delete_state();
                Ok(Value::Null)
            }
            other => Err(TaskError::non_retriable(
                "UnknownOperation",
                format!("no operation '{other}'"),
            )),
        }
    }
}

fn registry_with_entities() -> Registry {
    registry()
        .entity::<Counter>("counter")
        .orchestration("transfer", |ctx: OrchestrationContext, (a, b): (String, String)| async move {
            // Read-modify-write on two counters: without the lock, concurrent transfers would
            // overwrite each other's updates.
            let section = ctx.lock_entities(&[("counter", a.as_str()), ("counter", b.as_str())]).await?;
            let va: i64 = ctx.call_entity("counter", &a, "get", ()).await?;
            let vb: i64 = ctx.call_entity("counter", &b, "get", ()).await?;
            ctx.call_entity::<_, ()>("counter", &a, "set", va + 1).await?;
            ctx.call_entity::<_, ()>("counter", &b, "set", vb + 1).await?;
            section.release();
            Ok(())
        })
        .orchestration("strays", |ctx: OrchestrationContext, _: ()| async move {
            let _section = ctx.lock_entities(&[("counter", "held")]).await?;
            // Not in the locked set: refused, clearly.
            let err = ctx.call_entity::<_, i64>("counter", "other", "get", ()).await.unwrap_err();
            Ok(err.failure.error_type)
            // The guard drops here and releases the lock.
        })
        .orchestration("fails_holding_a_lock", |ctx: OrchestrationContext, key: String| async move {
            let _section = ctx.lock_entities(&[("counter", key.as_str())]).await?;
            ctx.call_activity::<_, ()>("fail", "inside the critical section").await?;
            Ok(())
        })
        .orchestration("uses_counter", |ctx: OrchestrationContext, key: String| async move {
            ctx.signal_entity("counter", &key, "add", 5);
            let after: i64 = ctx.call_entity("counter", &key, "add", 10).await?;
            let failed = ctx.call_entity::<_, i64>("counter", &key, "add_then_fail", ()).await;
            let now: i64 = ctx.call_entity("counter", &key, "get", ()).await?;
            Ok(json!({"after": after, "failed": failed.err().map(|e| e.failure.error_type), "now": now}))
        })
}

async fn open_engine(dir: &std::path::Path) -> Engine {
    Engine::open(config(dir), registry_with_entities())
        .await
        .unwrap()
}

async fn entity_value(c: &Client, key: &str) -> Option<i64> {
    // An entity whose first operations are still queued exists but has no state yet.
    c.get_entity("counter", key)
        .await
        .unwrap()
        .filter(|e| e.state.is_some())
        .map(|e| e.state::<Counter>().unwrap().value)
}

async fn wait_for_value(c: &Client, key: &str, want: i64) {
    for _ in 0..500 {
        if entity_value(c, key).await == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "counter {key} never reached {want}: {:?}",
        entity_value(c, key).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_signals_are_applied_exactly_once_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path()).await;
    let c = engine.client();
    assert!(
        c.get_entity("counter", "a").await.unwrap().is_none(),
        "no entity before its first operation"
    );
    let before: u64 = engine
        .stats()
        .iter()
        .map(|s| s.episodes.load(Ordering::Relaxed))
        .sum();
    let signals = (0..2000).map(|_| c.signal_entity("counter", "a", "add", &1, None));
    for r in futures::future::join_all(signals).await {
        r.unwrap();
    }
    wait_for_value(&c, "a", 2000).await;
    let batches: u64 = engine
        .stats()
        .iter()
        .map(|s| s.episodes.load(Ordering::Relaxed))
        .sum::<u64>()
        - before;
    assert!(
        batches < 1000,
        "{batches} batches for 2000 operations: operations were not batched"
    );
    let e = c.get_entity("counter", "a").await.unwrap().unwrap();
    assert_eq!(
        (e.name.as_str(), e.key.as_str(), e.queued),
        ("counter", "a", 0)
    );
    // Entities are not orchestrations: queries do not list them.
    let page = c.query(&InstanceQuery::default()).await.unwrap();
    assert!(page
        .instances
        .iter()
        .all(|s| !s.instance_id.starts_with('@')));
    engine.shutdown().await.unwrap();
    // The state is durable.
    let engine = open_engine(dir.path()).await;
    assert_eq!(entity_value(&engine.client(), "a").await, Some(2000));
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrations_signal_and_call_entities_and_failures_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path()).await;
    let c = engine.client();
    let id = c.start("uses_counter", &"b").await.unwrap();
    let s = c.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(s.status, RuntimeStatus::Completed, "{s:?}");
    // The signal (5) is processed before the call (+10) from the same sender; the failing
    // operation's +1000 is rolled back and its error reaches the caller.
    assert_eq!(
        s.output::<Value>().unwrap(),
        json!({"after": 15, "failed": "Refused", "now": 15})
    );
    let h = c
        .get_status(&id, true)
        .await
        .unwrap()
        .unwrap()
        .history
        .unwrap();
    assert!(h
        .iter()
        .any(|e| matches!(e.kind, EventKind::EntityOperationSignaled { .. })));
    assert_eq!(
        h.iter()
            .filter(|e| matches!(e.kind, EventKind::EntityOperationCompleted { .. }))
            .count(),
        2
    );
    assert_eq!(
        h.iter()
            .filter(|e| matches!(e.kind, EventKind::EntityOperationFailed { .. }))
            .count(),
        1
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_signals_scheduling_and_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path()).await;
    let c = engine.client();
    c.signal_entity("counter", "src", "add", &7, None)
        .await
        .unwrap();
    c.signal_entity("counter", "src", "forward", &"dst", None)
        .await
        .unwrap();
    wait_for_value(&c, "dst", 7).await;
    // A scheduled signal waits for its time.
    c.signal_entity(
        "counter",
        "later",
        "add",
        &1,
        Some(SystemTime::now() + Duration::from_millis(400)),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(entity_value(&c, "later").await, None);
    wait_for_value(&c, "later", 1).await;
    // Deleting the state deletes the entity.
    c.signal_entity("counter", "src", "delete", &(), None)
        .await
        .unwrap();
    for _ in 0..500 {
        if c.get_entity("counter", "src").await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(c.get_entity("counter", "src").await.unwrap().is_none());
    // Bad input.
    assert!(c.signal_entity("", "k", "add", &1, None).await.is_err());
    assert!(c.signal_entity("counter", "k", "", &1, None).await.is_err());
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_unknown_entities_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry_with_entities().orchestration(
        "calls_ghost",
        |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_entity::<_, i64>("ghost", "x", "get", ()).await
        },
    );
    let engine = Engine::open(config(dir.path()), registry).await.unwrap();
    let c = engine.client();
    let id = c.start("calls_ghost", &()).await.unwrap();
    let s = c.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(s.status, RuntimeStatus::Failed);
    let f = s.failure.unwrap();
    assert_eq!(f.error_type, "EntityNotFound");
    assert!(
        f.message.contains("ghost") && f.message.contains("counter"),
        "{}",
        f.message
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_sections_never_deadlock_and_never_lose_updates() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path()).await;
    let c = engine.client();
    let keys = ["w", "x", "y", "z"];
    let mut ids = Vec::new();
    let mut expected = std::collections::HashMap::new();
    for i in 0..40usize {
        // Overlapping pairs in both orders: (w,x), (x,w), (x,y), ... a classic deadlock recipe
        // without a global lock order.
        let (a, b) = if i % 2 == 0 {
            (keys[i % 4], keys[(i + 1) % 4])
        } else {
            (keys[(i + 1) % 4], keys[i % 4])
        };
        *expected.entry(a).or_insert(0i64) += 1;
        *expected.entry(b).or_insert(0i64) += 1;
        ids.push(c.start("transfer", &(a, b)).await.unwrap());
    }
    for id in &ids {
        let s = c.wait_for_completion(id, WAIT).await.unwrap();
        assert_eq!(s.status, RuntimeStatus::Completed, "{s:?}");
    }
    for (k, want) in expected {
        assert_eq!(entity_value(&c, k).await, Some(want), "lost update on {k}");
        assert_eq!(
            c.get_entity("counter", k).await.unwrap().unwrap().locked_by,
            None,
            "{k} still locked"
        );
    }
    let s = c
        .wait_for_completion(&c.start("strays", &()).await.unwrap(), WAIT)
        .await
        .unwrap();
    assert_eq!(s.output::<String>().unwrap(), "EntityNotLocked");
    // The lock was released when the guard dropped at the end of the orchestration.
    for _ in 0..200 {
        if c.get_entity("counter", "held")
            .await
            .unwrap()
            .is_none_or(|e| e.locked_by.is_none())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(c
        .get_entity("counter", "held")
        .await
        .unwrap()
        .is_none_or(|e| e.locked_by.is_none()));
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_are_queried_by_name_and_key_prefix_with_paging() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path()).await;
    let c = engine.client();
    for i in 0..25 {
        c.signal_entity("counter", &format!("user-{i:02}"), "add", &i, None)
            .await
            .unwrap();
    }
    c.signal_entity("counter", "admin", "add", &1, None)
        .await
        .unwrap();
    wait_for_value(&c, "user-24", 24).await;
    wait_for_value(&c, "admin", 1).await;
    engine.checkpoint().await.unwrap(); // half from the store, half from memory is fine too
    let mut query = EntityQuery {
        name: Some("counter".into()),
        key_prefix: Some("user-".into()),
        page_size: 10,
        ..EntityQuery::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = c.query_entities(&query).await.unwrap();
        assert!(page.entities.len() <= 10);
        for e in &page.entities {
            assert!(e.state.is_some());
            seen.push(e.key.clone());
        }
        match page.continuation_token {
            Some(t) => query.continuation_token = Some(t),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..25).map(|i| format!("user-{i:02}")).collect::<Vec<_>>()
    );
    let all = c
        .query_entities(&EntityQuery {
            include_state: false,
            page_size: 1000,
            ..EntityQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(all.entities.len(), 26);
    assert!(all.entities.iter().all(|e| e.state.is_none()));
    assert!(c
        .query_entities(&EntityQuery {
            key_prefix: Some("x".into()),
            ..EntityQuery::default()
        })
        .await
        .is_err());
    // Nothing holds a lock, so nothing is orphaned.
    assert_eq!(c.clean_entities().await.unwrap().orphaned_locks_released, 0);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_is_refused_when_the_failure_left_a_critical_section_open() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path()).await;
    let c = engine.client();
    let id = c.start("fails_holding_a_lock", &"rw-lock").await.unwrap();
    let s = c.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(s.status, RuntimeStatus::Failed);
    // Its lock was released when it failed: replaying into the section would run unlocked.
    let err = c.rewind(&id, None).await.unwrap_err();
    assert!(matches!(err, EngineError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("critical sections"), "{err}");
    let s = c.get_status(&id, false).await.unwrap().unwrap();
    assert_eq!(s.status, RuntimeStatus::Failed);
    // The entity is free for others.
    let other = c
        .start(
            "transfer",
            &("rw-lock".to_string(), "rw-lock-2".to_string()),
        )
        .await
        .unwrap();
    assert_eq!(
        c.wait_for_completion(&other, WAIT).await.unwrap().status,
        RuntimeStatus::Completed
    );
    engine.shutdown().await.unwrap();
}
