//! Backpressure: a flood of client requests far beyond what a (deliberately slow) disk can
//! commit is pushed back with `Busy` instead of queueing in memory; every start that was
//! acknowledged completes; a client that waits for room is never refused.

mod common;

use cairn_runtime::*;
use common::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_pushed_back_and_everything_acknowledged_completes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(
        EngineConfig {
            partitions: Some(2),
            max_queued_requests: 32,
            // A slow disk: each commit batch takes 50 ms to become durable.
            log_sync_delay: Some(Duration::from_millis(50)),
            ..config(dir.path())
        },
        registry(),
    )
    .await
    .unwrap();
    let client = engine.client();
    // 16 KiB inputs, so that queueing what is offered would show in memory.
    let input = "x".repeat(16 * 1024);
    let offered = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    let rss_before = rss_bytes();
    let deadline = Instant::now() + Duration::from_secs(2);
    // Several clients, each with up to 256 starts in flight, for 2 s.
    let mut flooders = Vec::new();
    for f in 0..8 {
        let (client, input, offered, busy) =
            (client.clone(), input.clone(), offered.clone(), busy.clone());
        flooders.push(tokio::spawn(async move {
            use futures::StreamExt;
            let attempts = futures::stream::iter(0u64..)
                .take_while(|_| std::future::ready(Instant::now() < deadline))
                .map(|n| {
                    let (client, input, offered, busy) =
                        (client.clone(), input.clone(), offered.clone(), busy.clone());
                    async move {
                        offered.fetch_add(1, Ordering::Relaxed);
                        let options = StartOptions {
                            instance_id: Some(format!("flood-{f}-{n}")),
                            ..StartOptions::default()
                        };
                        match client
                            .start_raw("echo_len", Some(format!("\"{input}\"")), options)
                            .await
                        {
                            Ok(id) => Some(id),
                            Err(EngineError::Busy { .. }) => {
                                busy.fetch_add(1, Ordering::Relaxed);
                                // Yield, so the flood cannot starve the engine's own tasks on
                                // this shared runtime (a client elsewhere cannot).
                                tokio::task::yield_now().await;
                                None
                            }
                            Err(e) => panic!("a start failed with something other than busy: {e}"),
                        }
                    }
                })
                .buffer_unordered(256);
            attempts
                .filter_map(std::future::ready)
                .collect::<Vec<String>>()
                .await
        }));
    }
    let mut acknowledged = Vec::new();
    for f in flooders {
        acknowledged.extend(f.await.unwrap());
    }
    let rss_after = rss_bytes();
    let offered = offered.load(Ordering::Relaxed);
    let busy = busy.load(Ordering::Relaxed);
    eprintln!(
        "offered {offered} starts ({} MiB of input), acknowledged {}, busy {busy}; RSS {} -> {} MiB",
        offered * 16 / 1024,
        acknowledged.len(),
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(busy > 0, "nothing was pushed back");
    assert!(!acknowledged.is_empty(), "nothing was acknowledged");
    assert_eq!(offered, busy + acknowledged.len() as u64);
    // Memory follows what was acknowledged (and is now stored), not what was offered.
    let acknowledged_bytes = acknowledged.len() as u64 * 16 * 1024;
    let growth = rss_after.saturating_sub(rss_before);
    assert!(
        growth < 64 * 1024 * 1024 + 4 * acknowledged_bytes,
        "RSS grew {} MiB for {} MiB acknowledged",
        growth >> 20,
        acknowledged_bytes >> 20
    );
    assert!(
        offered * 16 * 1024 > 4 * (growth + acknowledged_bytes),
        "the flood was not well past what the engine takes: offered {offered}"
    );
    // Every acknowledged start completes, with its own input's length.
    let waiting = client.waiting_for_room();
    for id in &acknowledged {
        let done = waiting.wait_for_completion(id, WAIT).await.unwrap();
        assert_eq!(done.status, RuntimeStatus::Completed, "{id}");
        assert_eq!(done.output::<usize>().unwrap(), 16 * 1024, "{id}");
    }
    // A client that waits for room is slowed down, never refused.
    let mut waited = Vec::new();
    for n in 0..64 {
        let waiting = waiting.clone();
        waited.push(tokio::spawn(async move {
            waiting
                .start_with(
                    "echo_len",
                    &"y".to_string(),
                    StartOptions {
                        instance_id: Some(format!("patient-{n}")),
                        ..StartOptions::default()
                    },
                )
                .await
        }));
    }
    for w in waited {
        let id = w.await.unwrap().expect("a waiting client is never refused");
        let done = waiting.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(done.output::<usize>().unwrap(), 1);
    }
    engine.shutdown().await.unwrap();
}
