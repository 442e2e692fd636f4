//! `max_concurrent_activities` and `max_concurrent_orchestrations` bound the work in flight.
mod common;
use cairn_runtime::*;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_concurrency_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let registry = Registry::new()
        .activity("slow", move |_ctx, _: ()| {
            let (r, p) = (r.clone(), p.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, TaskError>(())
            }
        })
        .orchestration("fan", |ctx: OrchestrationContext, n: usize| async move {
            let tasks = (0..n)
                .map(|_| ctx.call_activity::<_, ()>("slow", ()))
                .collect();
            for r in ctx.when_all(tasks).await {
                r?;
            }
            Ok(n)
        });
    let cfg = EngineConfig {
        max_concurrent_activities: 3,
        max_concurrent_orchestrations: 1,
        ..config(dir.path())
    };
    let engine = Engine::open(cfg, registry).await.unwrap();
    let c = engine.client();
    let ids: Vec<String> = futures_ids(&c, 4).await;
    for id in ids {
        let s = c.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(s.output::<usize>().unwrap(), 12);
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "{peak} activities ran at once with a limit of 3");
    assert!(
        peak >= 2,
        "the limit was never reached ({peak}): the test did not exercise it"
    );
    engine.shutdown().await.unwrap();
}

async fn futures_ids(c: &Client, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            c.start_with("fan", &12usize, StartOptions::with_id(format!("fan-{i}")))
                .await
                .unwrap(),
        );
    }
    ids
}
