//! Retention: ended orchestrations are purged when their age passes the policy (per status,
//! per name), across a restart, and nothing else is.

mod common;

use cairn_runtime::clock::ManualClock;
use cairn_runtime::*;
use common::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
/// How often the engine sweeps, in real time; the hub's clock moves only when a test says.
const SWEEP: Duration = Duration::from_millis(10);

fn registry_with_endings() -> Registry {
    registry()
        .orchestration("boom", |_ctx: OrchestrationContext, _: ()| async move {
            Err::<(), _>(TaskError::new("Boom", "failed on purpose"))
        })
        .orchestration("waits", |ctx: OrchestrationContext, _: ()| async move {
            ctx.wait_for_event::<i64>("go").await
        })
}

async fn exists(client: &Client, id: &str) -> bool {
    client.get_status(id, false).await.unwrap().is_some()
}

async fn start(client: &Client, name: &str, id: &str) {
    let options = StartOptions {
        instance_id: Some(id.to_string()),
        ..StartOptions::default()
    };
    match name {
        "boom" | "waits" => client.start_with(name, &(), options).await.unwrap(),
        _ => client.start_with(name, &2i64, options).await.unwrap(),
    };
}

/// Lets `by` pass on the hub's clock, then waits (in real time) until a sweep that started
/// after the move has finished.
async fn pass(engine: &Engine, clock: &ManualClock, by: Duration) {
    clock.advance(by);
    let retention = engine.retention();
    let seen = retention.sweeps();
    let deadline = std::time::Instant::now() + WAIT;
    while retention.sweeps() < seen + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no retention sweep ran: {} since {seen}",
            retention.sweeps()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn purged(engine: &Engine) -> u64 {
    engine
        .stats()
        .iter()
        .map(|s| s.purged.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

#[tokio::test]
async fn retention_purges_exactly_what_the_policy_names_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::starting_at(1_700_000_000_000));
    let policy = RetentionPolicy {
        hub: RetentionRule {
            completed: Some(60 * MINUTE),
            failed: Some(120 * MINUTE),
            terminated: None,
        },
        by_name: BTreeMap::from([(
            "fan_out".to_string(),
            RetentionRule {
                completed: Some(10 * MINUTE),
                ..RetentionRule::default()
            },
        )]),
    };
    let config = || EngineConfig {
        clock: Some(clock.clone()),
        retention: policy.clone(),
        retention_interval: SWEEP,
        ..common::config(dir.path())
    };
    let engine = Engine::open(config(), registry_with_endings())
        .await
        .unwrap();
    let client = engine.client();
    for (name, id) in [
        ("chain", "c1"),
        ("chain", "c2"),
        ("fan_out", "f1"),
        ("fan_out", "f2"),
        ("boom", "b1"),
        ("waits", "t1"),
        ("waits", "w1"),
    ] {
        start(&client, name, id).await;
    }
    for id in ["c1", "c2", "f1", "f2", "b1"] {
        client.wait_for_completion(id, WAIT).await.unwrap();
    }
    client.wait_for_start("t1", WAIT).await.unwrap();
    client.terminate("t1", Some("stop"), false).await.unwrap();
    client.wait_for_completion("t1", WAIT).await.unwrap();
    client.wait_for_start("w1", WAIT).await.unwrap();

    // 11 minutes: only the fan-outs (their own rule: 10 minutes) are gone.
    pass(&engine, &clock, 11 * MINUTE).await;
    for (id, kept) in [
        ("f1", false),
        ("f2", false),
        ("c1", true),
        ("c2", true),
        ("b1", true),
        ("t1", true),
        ("w1", true),
    ] {
        assert_eq!(exists(&client, id).await, kept, "{id} at 11 minutes");
    }
    assert_eq!(purged(&engine), 2);
    engine.shutdown().await.unwrap();

    // After a restart, the same policy goes on: the chains at an hour, the failure at two.
    let engine = Engine::open(config(), registry_with_endings())
        .await
        .unwrap();
    let client = engine.client();
    pass(&engine, &clock, 50 * MINUTE).await;
    for (id, kept) in [("c1", false), ("c2", false), ("b1", true), ("t1", true)] {
        assert_eq!(exists(&client, id).await, kept, "{id} at 61 minutes");
    }
    pass(&engine, &clock, 60 * MINUTE).await;
    assert!(!exists(&client, "b1").await, "b1 at 121 minutes");
    // No rule for terminated instances, and running ones are never purged.
    pass(&engine, &clock, 24 * 60 * MINUTE).await;
    assert!(exists(&client, "t1").await);
    assert!(exists(&client, "w1").await);
    assert_eq!(purged(&engine), 3);
    // The histories went with them.
    let page = client
        .query(&InstanceQuery {
            filter: QueryFilter {
                instance_id_prefix: Some(String::new()),
                ..QueryFilter::default()
            },
            ..InstanceQuery::default()
        })
        .await
        .unwrap();
    let left: Vec<&str> = page
        .instances
        .iter()
        .map(|s| s.instance_id.as_str())
        .collect();
    assert_eq!(left, ["t1", "w1"]);
    client.raise_event("w1", "go", &1i64).await.unwrap();
    engine.shutdown().await.unwrap();
}

/// A policy changed while the engine runs is in force from the next sweep and outlives the
/// process; a policy given at a later start replaces it.
#[tokio::test]
async fn a_policy_set_while_running_is_kept_until_a_start_gives_another() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::starting_at(1_700_000_000_000));
    let config = |retention: RetentionPolicy| EngineConfig {
        clock: Some(clock.clone()),
        retention,
        retention_interval: SWEEP,
        ..common::config(dir.path())
    };
    let engine = Engine::open(config(RetentionPolicy::default()), registry_with_endings())
        .await
        .unwrap();
    let client = engine.client();
    for id in ["c1", "c2"] {
        start(&client, "chain", id).await;
    }
    for id in ["c1", "c2"] {
        client.wait_for_completion(id, WAIT).await.unwrap();
    }
    // No policy: kept.
    pass(&engine, &clock, 30 * MINUTE).await;
    assert!(exists(&client, "c1").await);
    let mut policy = RetentionPolicy::default();
    policy.hub.completed = Some(20 * MINUTE);
    engine.retention().set(policy.clone()).unwrap();
    pass(&engine, &clock, 2 * MINUTE).await;
    assert!(!exists(&client, "c1").await, "purged under the new policy");
    assert!(!exists(&client, "c2").await);
    start(&client, "chain", "c3").await;
    client.wait_for_completion("c3", WAIT).await.unwrap();
    engine.shutdown().await.unwrap();

    // A start without a policy keeps the one set while running.
    let engine = Engine::open(config(RetentionPolicy::default()), registry_with_endings())
        .await
        .unwrap();
    assert_eq!(*engine.retention().policy(), policy);
    let client = engine.client();
    pass(&engine, &clock, 22 * MINUTE).await;
    assert!(!exists(&client, "c3").await, "purged after the restart");
    start(&client, "chain", "c4").await;
    client.wait_for_completion("c4", WAIT).await.unwrap();
    engine.shutdown().await.unwrap();

    // A start with a policy replaces it (and keeps the new one).
    let mut longer = RetentionPolicy::default();
    longer.hub.completed = Some(600 * MINUTE);
    let engine = Engine::open(config(longer.clone()), registry_with_endings())
        .await
        .unwrap();
    let client = engine.client();
    pass(&engine, &clock, 60 * MINUTE).await;
    assert!(
        exists(&client, "c4").await,
        "kept under the policy given at start"
    );
    engine.shutdown().await.unwrap();
    let engine = Engine::open(config(RetentionPolicy::default()), registry_with_endings())
        .await
        .unwrap();
    assert_eq!(*engine.retention().policy(), longer);
    engine.shutdown().await.unwrap();
}
