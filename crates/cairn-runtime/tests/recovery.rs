//! Restart, replay and cache behaviour.
mod common;
use cairn_runtime::*;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_in_flight_continues_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let c = engine.client();
    let waiting = c
        .start_with("approval", &3_600_000u64, StartOptions::with_id("waiting"))
        .await
        .unwrap();
    let timed = c
        .start_with("approval", &1_500u64, StartOptions::with_id("timed"))
        .await
        .unwrap();
    let done = c
        .start_with("chain", &3, StartOptions::with_id("done"))
        .await
        .unwrap();
    c.wait_for_completion(&done, WAIT).await.unwrap();
    c.wait_for_start(&waiting, WAIT).await.unwrap();
    c.wait_for_start(&timed, WAIT).await.unwrap();
    engine.shutdown().await.unwrap();

    let engine = open(dir.path()).await;
    let c = engine.client();
    assert_eq!(
        c.get_status("done", false)
            .await
            .unwrap()
            .unwrap()
            .output::<i64>()
            .unwrap(),
        3
    );
    c.raise_event("waiting", "approve", &"bob").await.unwrap();
    let s = c.wait_for_completion("waiting", WAIT).await.unwrap();
    assert_eq!(s.output::<String>().unwrap(), "approved by bob");
    let s = c.wait_for_completion("timed", WAIT).await.unwrap();
    assert_eq!(
        s.output::<String>().unwrap(),
        "timed out",
        "the durable timer survived the restart"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_code_is_reported_as_non_determinism() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = Registry::new()
        .activity("a", |_c, _: ()| async { Ok::<_, TaskError>(1) })
        .activity("b", |_c, _: ()| async { Ok::<_, TaskError>(2) })
        .orchestration("flow", |ctx: OrchestrationContext, _: ()| async move {
            let x: i32 = ctx.call_activity("a", ()).await?;
            let y: i32 = ctx.wait_for_event("go").await?;
            Ok(x + y)
        });
    let engine = Engine::open(config(dir.path()), v1).await.unwrap();
    let c = engine.client();
    c.start_with("flow", &(), StartOptions::with_id("flow-1"))
        .await
        .unwrap();
    // Wait until the activity result is in history.
    for _ in 0..100 {
        let h = c
            .get_status("flow-1", true)
            .await
            .unwrap()
            .unwrap()
            .history
            .unwrap();
        if h.iter()
            .any(|e| matches!(e.kind, EventKind::TaskCompleted { .. }))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.shutdown().await.unwrap();

    let v2 = Registry::new()
        .activity("a", |_c, _: ()| async { Ok::<_, TaskError>(1) })
        .activity("b", |_c, _: ()| async { Ok::<_, TaskError>(2) })
        .orchestration("flow", |ctx: OrchestrationContext, _: ()| async move {
            let x: i32 = ctx.call_activity("b", ()).await?; // changed!
            let y: i32 = ctx.wait_for_event("go").await?;
            Ok(x + y)
        });
    let engine = Engine::open(config(dir.path()), v2).await.unwrap();
    let c = engine.client();
    c.raise_event("flow-1", "go", &1).await.unwrap();
    let s = c.wait_for_completion("flow-1", WAIT).await.unwrap();
    assert_eq!(s.status, RuntimeStatus::Failed);
    let f = s.failure.unwrap();
    assert_eq!(f.error_type, "NonDeterminismError");
    assert!(
        f.message.contains("step 0") && f.message.contains("'a'") && f.message.contains("'b'"),
        "{}",
        f.message
    );
    engine.shutdown().await.unwrap();
}

/// Runs a mixed workload and returns, per instance, its output and the shape of its history.
async fn workload(
    cfg: EngineConfig,
) -> (Vec<(String, Option<String>, Vec<(i32, &'static str)>)>, u64) {
    let engine = Engine::open(cfg, registry()).await.unwrap();
    let c = engine.client();
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(
            c.start_with(
                "chain",
                &(i + 3),
                StartOptions::with_id(format!("chain-{i}")),
            )
            .await
            .unwrap(),
        );
        ids.push(
            c.start_with(
                "fan_out",
                &(i * 10 + 1),
                StartOptions::with_id(format!("fan-{i}")),
            )
            .await
            .unwrap(),
        );
        ids.push(
            c.start_with(
                "parent",
                &(i + 1),
                StartOptions::with_id(format!("parent-{i}")),
            )
            .await
            .unwrap(),
        );
        ids.push(
            c.start_with(
                "counter",
                &(0u32, i as u32),
                StartOptions::with_id(format!("can-{i}")),
            )
            .await
            .unwrap(),
        );
        ids.push(
            c.start_with("events", &3u32, StartOptions::with_id(format!("ev-{i}")))
                .await
                .unwrap(),
        );
    }
    for i in 0..8 {
        for v in 1..=3i64 {
            c.raise_event(&format!("ev-{i}"), "value", &(v * i))
                .await
                .unwrap();
        }
    }
    let mut out = Vec::new();
    for id in ids {
        let s = c.wait_for_completion(&id, WAIT).await.unwrap();
        let h = c
            .get_status(&id, true)
            .await
            .unwrap()
            .unwrap()
            .history
            .unwrap();
        // Episode boundaries depend on timing (how many results one episode picks up); what
        // the code scheduled, in order, and what it produced must not.
        let steps = h
            .iter()
            .filter(|e| e.event_id >= 0 || matches!(e.kind, EventKind::ExecutionCompleted { .. }))
            .map(|e| (e.event_id, e.kind.name()))
            .collect();
        out.push((id, s.output, steps));
    }
    let replays = engine
        .stats()
        .iter()
        .map(|s| s.replays.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    engine.shutdown().await.unwrap();
    (out, replays)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_cursors_and_full_replay_give_identical_results() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let cached = EngineConfig {
        cache_orchestrators: true,
        ..config(a.path())
    };
    let replaying = EngineConfig {
        cache_orchestrators: false,
        // A tiny cache and frequent checkpoints also force instances out of memory.
        instance_cache_mb: 0,
        checkpoint_every_records: 50,
        ..config(b.path())
    };
    let (with_cache, cached_replays) = workload(cached).await;
    let (without_cache, replays) = workload(replaying).await;
    assert_eq!(with_cache, without_cache);
    // The cache really was used in one run and not in the other.
    assert!(
        replays > cached_replays * 2,
        "replays: cached {cached_replays}, uncached {replays}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directory_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    engine.shutdown().await.unwrap();
    // Another partition count.
    let err = Engine::open(
        EngineConfig {
            partitions: Some(8),
            ..config(dir.path())
        },
        registry(),
    )
    .await
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("4 partitions but 8 were requested"),
        "{err}"
    );
    // Omitting the count accepts the hub's.
    let engine = Engine::open(
        EngineConfig {
            partitions: None,
            ..config(dir.path())
        },
        registry(),
    )
    .await
    .unwrap();
    assert_eq!(engine.partition_count(), 4);
    engine.shutdown().await.unwrap();
    // Another format version.
    let hub = dir.path().join("hub.json");
    let text = std::fs::read_to_string(&hub).unwrap().replace(
        &format!("\"format_version\": {}", cairn_core::LOG_FORMAT_VERSION),
        "\"format_version\": 99",
    );
    std::fs::write(&hub, text).unwrap();
    let err = Engine::open(config(dir.path()), registry())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("format version 99"), "{err}");
    // A directory that is not a hub.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("notes.txt"), "hello").unwrap();
    let err = Engine::open(config(other.path()), registry())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a Cairn task hub"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_bounded_by_the_cache_not_by_instance_count() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        instance_cache_mb: 0,
        checkpoint_every_records: 200,
        ..config(dir.path())
    };
    let engine = Engine::open(cfg, registry()).await.unwrap();
    let c = engine.client();
    let mut ids = Vec::new();
    for i in 0..400 {
        ids.push(
            c.start_with("chain", &2, StartOptions::with_id(format!("m-{i:03}")))
                .await
                .unwrap(),
        );
    }
    for id in &ids {
        c.wait_for_completion(id, WAIT).await.unwrap();
    }
    engine.checkpoint().await.unwrap();
    let cached: u64 = engine
        .stats()
        .iter()
        .map(|s| {
            s.cached_instances
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert!(
        cached < 40,
        "{cached} instances still in memory with a zero-size cache"
    );
    // ... and everything is still readable from the store.
    let s = c.get_status("m-123", true).await.unwrap().unwrap();
    assert_eq!(s.output::<i64>().unwrap(), 2);
    assert_eq!(s.history.unwrap().len(), 12);
    let page = c
        .query(&InstanceQuery {
            page_size: 1000,
            ..InstanceQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.instances.len(), 400);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_the_middle_of_the_log_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        partitions: Some(1),
        ..config(dir.path())
    };
    let engine = Engine::open(cfg.clone(), registry()).await.unwrap();
    let c = engine.client();
    for i in 0..20 {
        let id = c
            .start_with("chain", &2, StartOptions::with_id(format!("c-{i}")))
            .await
            .unwrap();
        c.wait_for_completion(&id, WAIT).await.unwrap();
    }
    engine.shutdown().await.unwrap();
    let log_dir = dir.path().join("partitions/p00/log");
    let segment = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    assert!(
        bytes.len() > 2000,
        "the segment holds the records written since the checkpoint"
    );
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let err = Engine::open(cfg, registry())
        .await
        .err()
        .expect("a corrupt log must not open");
    let msg = err.to_string();
    assert!(msg.contains("corrupt") && msg.contains(".seg"), "{msg}");
}
