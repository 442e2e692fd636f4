//! The speculation rule: work proceeds on not-yet-durable state, but nothing reaches a client
//! before the log position it reflects is durable. A slow disk (every sync takes 250 ms) makes
//! both halves observable.
mod common;
use cairn_runtime::*;
use common::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const SYNC: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_visible_before_it_is_durable_and_steps_do_not_wait_for_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        log_sync_delay: Some(SYNC),
        partitions: Some(1),
        ..config(dir.path())
    };
    let engine = Engine::open(cfg, registry()).await.unwrap();
    let c = engine.client();

    // A start is acknowledged only after its record is durable: at least one slow sync.
    let t = Instant::now();
    let id = c
        .start_with("chain", &20, StartOptions::with_id("spec"))
        .await
        .unwrap();
    assert!(
        t.elapsed() >= SYNC,
        "start acknowledged after {:?}, before a sync could finish",
        t.elapsed()
    );

    // 20 steps = 40 records. Without speculation each step would wait for a sync (≥ 10 s).
    let s = c.wait_for_completion(&id, WAIT).await.unwrap();
    let elapsed = t.elapsed();
    assert_eq!(s.output::<i64>().unwrap(), 20);
    assert!(
        elapsed < SYNC * 20,
        "20 steps took {elapsed:?}: steps waited for fsync"
    );
    let batches: u64 = engine
        .stats()
        .iter()
        .map(|s| s.batches.load(Ordering::Relaxed))
        .sum();
    assert!(
        batches >= 40,
        "each step was its own commit batch ({batches})"
    );

    // Reads are answered from durable state only: a status read right after an event waits for
    // the event's record to be durable, and then shows it.
    let id = c
        .start_with("events", &1u32, StartOptions::with_id("spec-ev"))
        .await
        .unwrap();
    c.wait_for_start(&id, WAIT).await.unwrap();
    let raise = {
        let c = c.clone();
        tokio::spawn(async move { c.raise_event("spec-ev", "value", &5).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = Instant::now();
    let status = c.get_status("spec-ev", false).await.unwrap().unwrap();
    assert!(
        t.elapsed() >= SYNC / 2,
        "status answered in {:?}, before the pending sync",
        t.elapsed()
    );
    raise.await.unwrap().unwrap();
    // Whatever it showed was durable; the final state is consistent with it.
    let done = c.wait_for_completion("spec-ev", WAIT).await.unwrap();
    assert!(status.last_updated_at <= done.last_updated_at);
    assert_eq!(done.output::<i64>().unwrap(), 5);
    engine.shutdown().await.unwrap();
}
