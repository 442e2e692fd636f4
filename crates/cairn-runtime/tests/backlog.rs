//! Backlogs live on disk: a partition hands out at most its dispatch window of episodes per
//! name, the rest of a backlog waits in the checkpoint store (not in memory), another name's
//! work is not held up by it, a restart keeps it, and it drains once a worker comes.

mod common;

use cairn_core::{Action, Completion, EventKind};
use cairn_runtime::remote::{RemoteEpisode, RemoteWork, Room, WorkFilter};
use cairn_runtime::*;
use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

const PARTITIONS: u32 = 2;
const WINDOW: usize = 8;
const BACKLOG: usize = 400;

fn backlog(engine: &Engine) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for s in engine.stats() {
        for (name, n) in s.backlog_by_name().iter() {
            *total.entry(name.clone()).or_insert(0) += n;
        }
    }
    total
}

fn cached(engine: &Engine) -> u64 {
    engine
        .stats()
        .iter()
        .map(|s| {
            s.cached_instances
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum()
}

/// Waits until the remote queue holds `n` items (it fills as partitions dispatch).
async fn queue_settles_at(queue: &remote::RemoteQueue, n: usize) {
    for _ in 0..200 {
        if queue.len() == n {
            // And stays there: nothing more is dispatched.
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(queue.len(), n);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the remote queue holds {} items, not {n}", queue.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_waits_on_disk_and_drains_when_a_worker_comes() {
    let dir = tempfile::tempdir().unwrap();
    let config = || EngineConfig {
        partitions: Some(PARTITIONS),
        remote_workers: true,
        dispatch_window: WINDOW,
        // Every clean instance that is not running leaves memory at a checkpoint.
        instance_cache_mb: 0,
        ..common::config(dir.path())
    };
    {
        let engine = Engine::open(config(), registry()).await.unwrap();
        let client = engine.client();
        for i in 0..BACKLOG {
            client
                .start_with(
                    "nightly_report",
                    &i,
                    StartOptions {
                        instance_id: Some(format!("report-{i:04}")),
                        ..StartOptions::default()
                    },
                )
                .await
                .unwrap();
        }
        let queue = engine.remote_queue().unwrap();
        // One window per partition is handed out; the rest waits.
        queue_settles_at(&queue, WINDOW * PARTITIONS as usize).await;
        assert_eq!(
            backlog(&engine),
            BTreeMap::from([("nightly_report".to_string(), BACKLOG as u64)])
        );
        // Work of another name runs meanwhile.
        let id = client.start("chain", &3i64).await.unwrap();
        let done = client.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(done.status, RuntimeStatus::Completed);
        // After a checkpoint, memory holds the dispatched window, not the backlog.
        engine.checkpoint().await.unwrap();
        let resident = cached(&engine);
        assert!(
            resident <= (WINDOW * PARTITIONS as usize) as u64 + 4,
            "{resident} instances stay in memory with a backlog of {BACKLOG}"
        );
        engine.shutdown().await.unwrap();
    }

    // After a restart the backlog is still there, and still handed out a window at a time.
    let engine = Engine::open(config(), registry()).await.unwrap();
    let client = engine.client();
    let queue = engine.remote_queue().unwrap();
    queue_settles_at(&queue, WINDOW * PARTITIONS as usize).await;
    assert_eq!(backlog(&engine)["nightly_report"], BACKLOG as u64);

    // A worker comes: it gets every instance, each once, oldest first within a partition.
    let worker = queue.connect("test worker", WorkFilter::everything());
    let runs = tokio::spawn(async move {
        let mut runs: BTreeMap<String, usize> = BTreeMap::new();
        let mut order: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        while runs.len() < BACKLOG {
            let taken = worker.recv(Room::ALL).await;
            let RemoteWork::Orchestrator(work) = taken.work else {
                panic!("only orchestrations wait");
            };
            let input = work
                .new_events
                .iter()
                .find_map(|e| match &e.kind {
                    EventKind::ExecutionStarted { input, .. } => input.clone(),
                    _ => None,
                })
                .expect("the first episode has the start");
            *runs.entry(work.instance_id.clone()).or_default() += 1;
            order
                .entry(cairn_core::partition_of(&work.instance_id, PARTITIONS))
                .or_default()
                .push(work.instance_id.clone());
            let _ = work.reply.send(RemoteEpisode {
                actions: vec![Action::Complete(Completion::Completed {
                    result: Some(input),
                })],
                custom_status: None,
            });
        }
        (runs, order)
    });
    let mut created = BTreeMap::new();
    for i in 0..BACKLOG {
        let s = client
            .wait_for_completion(&format!("report-{i:04}"), WAIT)
            .await
            .unwrap();
        assert_eq!(s.status, RuntimeStatus::Completed);
        assert_eq!(s.output.as_deref(), Some(i.to_string().as_str()));
        created.insert(s.instance_id, s.created_at);
    }
    let (runs, order) = runs.await.unwrap();
    assert_eq!(runs.len(), BACKLOG);
    assert!(runs.values().all(|n| *n == 1), "an episode ran twice");
    // What each partition handed out first after the restart was its oldest backlog: the
    // worker took those first (the queue is first in, first out).
    for (p, ids) in order {
        let (first, rest) = ids.split_at(WINDOW);
        let newest_first = first.iter().map(|id| created[id]).max().unwrap();
        let oldest_rest = rest.iter().map(|id| created[id]).min().unwrap();
        assert!(
            newest_first <= oldest_rest,
            "partition {p} handed out {first:?} before older instances"
        );
    }
    assert!(backlog(&engine).is_empty());
    engine.shutdown().await.unwrap();
}

fn activity_backlog(engine: &Engine) -> u64 {
    engine
        .stats()
        .iter()
        .flat_map(|s| {
            s.activity_backlog_by_name()
                .values()
                .copied()
                .collect::<Vec<_>>()
        })
        .sum()
}

/// An orchestration, run here, that resizes `n` photos with the activity "resize", which only a
/// remote worker runs, and returns the sum of the results.
fn resize_album() -> Registry {
    registry().orchestration(
        "resize_album",
        |ctx: OrchestrationContext, n: i64| async move {
            let tasks = (0..n)
                .map(|i| ctx.call_activity::<_, i64>("resize", i))
                .collect();
            let mut sum = 0;
            for r in ctx.when_all(tasks).await {
                sum += r?;
            }
            Ok(sum)
        },
    )
}

/// A queued activity handed out to the remote queue is its item and nothing more: no task
/// awaits each one (a task per activity was ~1 KB, paid for every activity of every window a
/// process hands out). Its answer still reaches its orchestration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_handed_out_to_remote_workers_hold_no_task_each() {
    const PHOTOS: i64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        partitions: Some(1),
        remote_workers: true,
        activity_window: PHOTOS as usize,
        ..common::config(dir.path())
    };
    let engine = Engine::open(config, resize_album()).await.unwrap();
    let client = engine.client();
    let id = client.start("resize_album", &PHOTOS).await.unwrap();
    let queue = engine.remote_queue().unwrap();
    queue_settles_at(&queue, PHOTOS as usize).await;
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert!(
        tasks < 100,
        "{tasks} tasks are alive while {PHOTOS} activities wait for a worker"
    );

    let worker = queue.connect("resizer", WorkFilter::everything());
    for _ in 0..PHOTOS {
        let RemoteWork::Activity(work) = worker.recv(Room::ALL).await.work else {
            panic!("only activities wait");
        };
        let x: i64 = work.input.as_deref().unwrap().parse().unwrap();
        work.reply.send(Ok(Some((x * 10).to_string()))).unwrap();
    }
    let s = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(s.status, RuntimeStatus::Completed, "{:?}", s.failure);
    let expected: i64 = (0..PHOTOS).map(|i| i * 10).sum();
    assert_eq!(s.output.as_deref(), Some(expected.to_string().as_str()));
    engine.shutdown().await.unwrap();
}

/// A partition that stops here (closed, as when another node takes it over) leaves none of its
/// activities in the remote queue: their answers would go nowhere, and its next owner hands
/// them out again. Aborted (`abandon`, the owner lost its lease) likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_partition_leaves_no_activity_in_the_remote_queue() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        partitions: Some(2),
        remote_workers: true,
        ..common::config(dir.path())
    };
    let engine = Engine::open(config, resize_album()).await.unwrap();
    let client = engine.client();
    let ids: Vec<String> = (0..40).map(|i| format!("album-{i}")).collect();
    for id in &ids {
        let options = StartOptions {
            instance_id: Some(id.clone()),
            ..StartOptions::default()
        };
        client
            .start_with("resize_album", &5i64, options)
            .await
            .unwrap();
    }
    let queue = engine.remote_queue().unwrap();
    queue_settles_at(&queue, 200).await;
    let on = |p: u32| {
        ids.iter()
            .filter(|id| cairn_core::partition_of(id, 2) == p)
            .count()
            * 5
    };
    engine.partitions().close(0).await;
    assert_eq!(queue.len(), on(1), "partition 0 closed");
    engine.partitions().abandon(1);
    let deadline = std::time::Instant::now() + WAIT;
    while !queue.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} activities of an abandoned partition are still queued",
            queue.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Activities that wait for a worker wait in the store: a partition hands out a window of
/// them per activity name, a restart keeps all of them, and when a worker comes each runs
/// exactly once and every orchestration gets all its results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_activities_wait_on_disk_and_each_runs_once_when_a_worker_comes() {
    const ALBUMS: usize = 4;
    const PHOTOS: i64 = 60;
    let dir = tempfile::tempdir().unwrap();
    let config = || EngineConfig {
        partitions: Some(PARTITIONS),
        remote_workers: true,
        activity_window: WINDOW,
        ..common::config(dir.path())
    };
    let registry = resize_album;
    let albums: Vec<String> = (0..ALBUMS).map(|i| format!("album-{i}")).collect();
    let partitions_used: std::collections::BTreeSet<u32> = albums
        .iter()
        .map(|id| cairn_core::partition_of(id, PARTITIONS))
        .collect();
    let window_total = WINDOW * partitions_used.len();
    let queued = ALBUMS as u64 * PHOTOS as u64;
    {
        let engine = Engine::open(config(), registry()).await.unwrap();
        let client = engine.client();
        for id in &albums {
            client
                .start_with(
                    "resize_album",
                    &PHOTOS,
                    StartOptions {
                        instance_id: Some(id.clone()),
                        ..StartOptions::default()
                    },
                )
                .await
                .unwrap();
        }
        let queue = engine.remote_queue().unwrap();
        queue_settles_at(&queue, window_total).await;
        assert_eq!(activity_backlog(&engine), queued);
        // A checkpoint files them in the store; a second one finds nothing more to file.
        engine.checkpoint().await.unwrap();
        engine.checkpoint().await.unwrap();
        assert_eq!(activity_backlog(&engine), queued);
        engine.shutdown().await.unwrap();
    }

    let engine = Engine::open(config(), registry()).await.unwrap();
    let client = engine.client();
    let queue = engine.remote_queue().unwrap();
    queue_settles_at(&queue, window_total).await;
    assert_eq!(activity_backlog(&engine), queued);

    let worker = queue.connect("resizer", WorkFilter::everything());
    let runs = tokio::spawn(async move {
        let mut runs: BTreeMap<(String, i32), usize> = BTreeMap::new();
        while runs.values().sum::<usize>() < queued as usize {
            let taken = worker.recv(Room::ALL).await;
            let RemoteWork::Activity(work) = taken.work else {
                panic!("only activities wait");
            };
            *runs
                .entry((work.instance_id.clone(), work.task_id))
                .or_default() += 1;
            let x: i64 = work.input.as_deref().unwrap().parse().unwrap();
            let _ = work.reply.send(Ok(Some((x * 10).to_string())));
        }
        runs
    });
    let expected: i64 = (0..PHOTOS).map(|i| i * 10).sum();
    for id in &albums {
        let s = client.wait_for_completion(id, WAIT).await.unwrap();
        assert_eq!(s.status, RuntimeStatus::Completed, "{id}: {:?}", s.failure);
        assert_eq!(
            s.output.as_deref(),
            Some(expected.to_string().as_str()),
            "{id}"
        );
    }
    let runs = runs.await.unwrap();
    assert_eq!(runs.len(), queued as usize);
    assert!(runs.values().all(|n| *n == 1), "an activity ran twice");
    assert_eq!(activity_backlog(&engine), 0);
    assert!(queue.is_empty());
    engine.shutdown().await.unwrap();
}

/// Armed durable timers wait in the store: a partition holds only `timer_window` of them in
/// memory, the soonest, and reads the next ones as those fire; a restart keeps every one, and
/// each fires once, in time, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn armed_timers_wait_on_disk_and_each_fires_once_in_time() {
    const REMINDERS: u64 = 120;
    const MINUTE: u64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(cairn_runtime::clock::ManualClock::starting_at(
        1_700_000_000_000,
    ));
    let config = || EngineConfig {
        partitions: Some(PARTITIONS),
        timer_window: 8,
        clock: Some(clock.clone()),
        ..common::config(dir.path())
    };
    let registry = || {
        registry().orchestration(
            "reminder",
            |ctx: OrchestrationContext, minutes: u64| async move {
                ctx.sleep(Duration::from_millis(minutes * MINUTE)).await?;
                Ok::<_, TaskError>(minutes)
            },
        )
    };
    // Due times interleave across ids, so the soonest are spread over both partitions.
    let minutes = |i: u64| (i * 37) % REMINDERS + 1;
    {
        let engine = Engine::open(config(), registry()).await.unwrap();
        let client = engine.client();
        for i in 0..REMINDERS {
            client
                .start_with(
                    "reminder",
                    &minutes(i),
                    StartOptions {
                        instance_id: Some(format!("remind-{i:03}")),
                        ..StartOptions::default()
                    },
                )
                .await
                .unwrap();
        }
        for i in 0..REMINDERS {
            let id = format!("remind-{i:03}");
            for _ in 0..500 {
                let s = client.get_status(&id, true).await.unwrap().unwrap();
                let armed = s
                    .history
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|e| matches!(e.kind, cairn_core::EventKind::TimerCreated { .. }));
                if armed {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        engine.checkpoint().await.unwrap();
        engine.shutdown().await.unwrap();
    }

    let engine = Engine::open(config(), registry()).await.unwrap();
    let client = engine.client();
    let ended = |engine: &Engine| -> u64 {
        engine
            .stats()
            .iter()
            .map(|s| s.status_counts[2].load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    // Half the time passes: the first half fire, and only they.
    clock.advance(Duration::from_millis(REMINDERS / 2 * MINUTE));
    let deadline = std::time::Instant::now() + WAIT;
    while ended(&engine) < REMINDERS / 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of the first half fired",
            ended(&engine)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..REMINDERS {
        let s = client
            .get_status(&format!("remind-{i:03}"), false)
            .await
            .unwrap()
            .unwrap();
        let due_yet = minutes(i) <= REMINDERS / 2;
        assert_eq!(
            s.status == RuntimeStatus::Completed,
            due_yet,
            "remind-{i:03} (due at minute {}) is {:?} at minute {}",
            minutes(i),
            s.status,
            REMINDERS / 2
        );
    }
    // The rest, after another restart.
    engine.shutdown().await.unwrap();
    let engine = Engine::open(config(), registry()).await.unwrap();
    let client = engine.client();
    clock.advance(Duration::from_millis(REMINDERS * MINUTE));
    for i in 0..REMINDERS {
        let id = format!("remind-{i:03}");
        let s = client.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(s.output.as_deref(), Some(minutes(i).to_string().as_str()));
        let history = client
            .get_status(&id, true)
            .await
            .unwrap()
            .unwrap()
            .history
            .unwrap();
        let fired = history
            .iter()
            .filter(|e| matches!(e.kind, cairn_core::EventKind::TimerFired { .. }))
            .count();
        assert_eq!(fired, 1, "{id} saw its timer fire {fired} times");
    }
    engine.shutdown().await.unwrap();
}
