//! `cairn bench backlog`: `--hub-size` starts (a million by default) of an orchestration that no
//! connected worker runs, and what a user of such a backlog feels: how fast the starts are
//! taken, what the waiting backlog costs in memory (before and after a restart), and how fast
//! it drains once a worker connects. Run it at two sizes to see that memory does not grow with
//! the backlog: only a dispatch window per partition is in memory.
//!
//! `cairn bench activity-backlog` does the same for activities: orchestrations that run here
//! fan out `--hub-size` activities of a name only a remote worker runs, and none is connected.

use super::large_hub::{
    answers, count, free_port, rss, rss_of, serve, start_many, SMALL_STORE_CACHE_MB,
};
use super::*;
use cairn_core::{Action, Completion, EventKind};
use cairn_runtime::remote::{RemoteEpisode, RemoteWork, Room, WorkFilter};
use cairn_runtime::StartOptions;
use serde_json::json;

/// The orchestration of the backlog: nothing in this process runs it.
const NAME: &str = "backlog_job";

/// The orchestration of the activity backlog (it runs here), and its activity (it does not).
const ALBUM: &str = "resize_album";
const RESIZE: &str = "resize";
/// Activities each album fans out.
const PHOTOS_PER_ALBUM: u64 = 1000;

/// The timer backlog's orchestration: waits `minutes`, then answers them.
const REMINDER: &str = "remind_later";
const DAY_MINUTES: u64 = 24 * 60;

/// The activity backlog's orchestration (resizes `n` photos at once and sums the results) and
/// the timer backlog's.
pub(super) fn orchestrations(registry: Registry) -> Registry {
    let registry = registry.orchestration(
        REMINDER,
        |ctx: OrchestrationContext, minutes: u64| async move {
            ctx.sleep(Duration::from_secs(minutes * 60)).await?;
            Ok::<_, TaskError>(minutes)
        },
    );
    registry.orchestration(ALBUM, |ctx: OrchestrationContext, n: u64| async move {
        let tasks = (0..n)
            .map(|i| ctx.call_activity::<_, u64>(RESIZE, i))
            .collect();
        let mut sum = 0u64;
        for r in ctx.when_all(tasks).await {
            sum += r?;
        }
        Ok::<_, TaskError>(sum)
    })
}

pub(super) async fn run_timers(
    b: Bench,
    clock: Arc<cairn_runtime::clock::ManualClock>,
    size: u64,
    json_out: bool,
) -> Result<(Bench, BenchResult)> {
    let client = b.engine.client().waiting_for_room();
    let rss_empty = rss();
    let armed = |engine: &Engine| sum(engine, |s| s.timers_armed.load(Ordering::Relaxed));
    let fill_start = Instant::now();
    let pb = start_many(size, "reminders", |i| {
        let client = client.clone();
        async move {
            let options = StartOptions {
                instance_id: Some(format!("r{i:08}")),
                ..StartOptions::default()
            };
            client.start_with(REMINDER, &DAY_MINUTES, options).await?;
            Ok(())
        }
    })
    .await;
    pb.finish_and_clear();
    let deadline = Instant::now() + Duration::from_secs(1800);
    while armed(&b.engine) < size {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the reminders did not all arm a timer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fill_seconds = fill_start.elapsed().as_secs_f64();
    b.engine.checkpoint().await?;
    let rss_full = rss();

    // A fresh `cairn serve` (its clock is the system's: none is due) holds its wheels.
    let (b, (serve_rss, serve_rss_small_cache), restart_seconds) =
        serve_then_restart(b, "r00000000").await?;
    anyhow::ensure!(
        armed(&b.engine) == size,
        "{} timers armed after the restart, not {size}",
        armed(&b.engine)
    );

    // The day passes: every timer fires and every reminder completes.
    clock.advance(Duration::from_secs((DAY_MINUTES + 1) * 60));
    let fire_start = Instant::now();
    let pb = bar(size, "timers firing");
    while count(&b.engine, RuntimeStatus::Completed) < size {
        pb.set_position(count(&b.engine, RuntimeStatus::Completed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pb.finish_and_clear();
    let fire_seconds = fire_start.elapsed().as_secs_f64();
    anyhow::ensure!(
        armed(&b.engine) == 0,
        "timers left armed after they all fired"
    );

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let report = json!({
        "scenario": "timer-backlog",
        "timers": size,
        "armed_per_s": size as f64 / fill_seconds,
        "rss_empty_bytes": rss_empty,
        "rss_waiting_bytes": rss_full,
        "rss_cairn_serve_bytes": serve_rss,
        "rss_cairn_serve_small_store_cache_bytes": serve_rss_small_cache,
        "restart_to_first_answer_seconds": restart_seconds,
        "fired_per_s": size as f64 / fire_seconds,
    });
    if json_out {
        println!("{report}");
    } else {
        println!("timer-backlog: {size} orchestrations each waiting on a day-long timer");
        println!(
            "  started and armed            {:.0}/s ({fill_seconds:.1} s)",
            size as f64 / fill_seconds
        );
        println!(
            "  RSS empty / waiting          {:.0} / {:.0} MiB (this process)",
            mib(rss_empty),
            mib(rss_full)
        );
        println!(
            "  RSS of cairn serve with them {:.0} MiB (a fresh process, its wheels full); {:.0} MiB with --store-cache-mb {SMALL_STORE_CACHE_MB}",
            mib(serve_rss),
            mib(serve_rss_small_cache)
        );
        println!("  restart to first answer      {restart_seconds:.2} s");
        println!(
            "  the day passes: fired and completed {:.0}/s ({fire_seconds:.1} s)",
            size as f64 / fire_seconds
        );
    }
    let result = finish_summary(
        Scenario::TimerBacklog,
        size,
        fire_seconds,
        "timers fired and their orchestrations completed (details above)",
    );
    Ok((b, result))
}

pub(super) async fn run_activities(
    b: Bench,
    size: u64,
    json_out: bool,
) -> Result<(Bench, BenchResult)> {
    let client = b.engine.client().waiting_for_room();
    let rss_empty = rss();
    let albums = size.div_ceil(PHOTOS_PER_ALBUM);
    let queued = |engine: &Engine| {
        sum(engine, |s| {
            s.activity_backlog_by_name()
                .get(RESIZE)
                .copied()
                .unwrap_or(0)
        })
    };
    let fill_start = Instant::now();
    let pb = start_many(albums, "albums fanning out", |i| {
        let client = client.clone();
        async move {
            let photos = PHOTOS_PER_ALBUM.min(size - i * PHOTOS_PER_ALBUM);
            let options = StartOptions {
                instance_id: Some(format!("album{i:06}")),
                ..StartOptions::default()
            };
            client.start_with(ALBUM, &photos, options).await?;
            Ok(())
        }
    })
    .await;
    pb.finish_and_clear();
    let pb = bar(size, "activities queued");
    let deadline = Instant::now() + Duration::from_secs(1800);
    while queued(&b.engine) < size {
        anyhow::ensure!(Instant::now() < deadline, "the fan-outs did not finish");
        pb.set_position(queued(&b.engine));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pb.finish_and_clear();
    let fill_seconds = fill_start.elapsed().as_secs_f64();
    b.engine.checkpoint().await?;
    let rss_full = rss();
    let cached = sum(&b.engine, |s| s.cached_instances.load(Ordering::Relaxed));

    // A fresh `cairn serve` on the hub: it hands out its windows of activities to its (absent)
    // workers and holds the rest on disk.
    let (b, (serve_rss, serve_rss_small_cache), restart_seconds) =
        serve_then_restart(b, "album000000").await?;
    anyhow::ensure!(
        queued(&b.engine) == size,
        "{} activities queued after the restart, not {size}",
        queued(&b.engine)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_restarted = rss();

    // A worker connects and returns each photo's number.
    let queue = b
        .engine
        .remote_queue()
        .context("the activity-backlog scenario needs remote workers enabled")?;
    let worker = queue.connect("bench worker", WorkFilter::everything());
    let drain_start = Instant::now();
    let serving = tokio::spawn(async move {
        loop {
            let taken = worker.recv(Room::ALL).await;
            if let RemoteWork::Activity(work) = taken.work {
                let _ = work.reply.send(Ok(work.input));
            }
        }
    });
    let pb = bar(albums, "albums completing");
    while count(&b.engine, RuntimeStatus::Completed) < albums {
        pb.set_position(count(&b.engine, RuntimeStatus::Completed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pb.finish_and_clear();
    let drain_seconds = drain_start.elapsed().as_secs_f64();
    serving.abort();
    anyhow::ensure!(queued(&b.engine) == 0, "activities left after the drain");

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let report = json!({
        "scenario": "activity-backlog",
        "activities": size,
        "orchestrations": albums,
        "queued_per_s": size as f64 / fill_seconds,
        "rss_empty_bytes": rss_empty,
        "rss_waiting_bytes": rss_full,
        "rss_restarted_bytes": rss_restarted,
        "rss_cairn_serve_bytes": serve_rss,
        "rss_cairn_serve_small_store_cache_bytes": serve_rss_small_cache,
        "cached_instances_while_waiting": cached,
        "restart_to_first_answer_seconds": restart_seconds,
        "drain_activities_per_s": size as f64 / drain_seconds,
    });
    if json_out {
        println!("{report}");
    } else {
        println!(
            "activity-backlog: {size} activities ({albums} fan-outs) of a name no connected worker runs"
        );
        println!(
            "  queued                       {:.0}/s ({fill_seconds:.1} s)",
            size as f64 / fill_seconds
        );
        println!(
            "  RSS empty / waiting / restarted {:.0} / {:.0} / {:.0} MiB ({cached} instances in memory while waiting)",
            mib(rss_empty),
            mib(rss_full),
            mib(rss_restarted)
        );
        println!(
            "  RSS of cairn serve with it   {:.0} MiB (a fresh process, windows handed out); {:.0} MiB with --store-cache-mb {SMALL_STORE_CACHE_MB}",
            mib(serve_rss),
            mib(serve_rss_small_cache)
        );
        println!("  restart to first answer      {restart_seconds:.2} s");
        println!(
            "  drain once a worker connects {:.0} activities/s ({drain_seconds:.1} s)",
            size as f64 / drain_seconds
        );
    }
    let result = finish_summary(
        Scenario::ActivityBacklog,
        size,
        drain_seconds,
        "queued activities drained by a worker (details above)",
    );
    Ok((b, result))
}

/// Opens the hub in a fresh `cairn serve` (what a user runs; its memory owes nothing to this
/// process's history) and takes its RSS three seconds after it first answers for `first_id`,
/// its windows handed out; the same again with a small store cache (what remains is what the
/// backlog costs, not pages cached up to the cache's bound); then reopens the hub here and
/// times the first answer for `first_id`. Returns (the reopened bench, those two RSS, seconds
/// to the first answer).
async fn serve_then_restart(b: Bench, first_id: &'static str) -> Result<(Bench, (u64, u64), f64)> {
    let (b, serve_rss, _) = b
        .reopen(move |dir| {
            let rss_with = |more: &[&str]| {
                let port = free_port()?;
                let mut child = serve(&dir, port, more)?;
                let answered = answers(port, &mut child, first_id);
                std::thread::sleep(Duration::from_secs(3));
                let rss = rss_of(child.id());
                child.kill()?;
                child.wait()?;
                answered.map(|()| rss)
            };
            Ok((
                rss_with(&[])?,
                rss_with(&["--store-cache-mb", SMALL_STORE_CACHE_MB])?,
            ))
        })
        .await?;
    let (b, (), reopening) = b.reopen(|_| Ok(())).await?;
    let first = b.engine.client().get_status(first_id, false).await?;
    let restart_seconds = reopening.elapsed().as_secs_f64();
    anyhow::ensure!(first.is_some(), "{first_id} is missing after the restart");
    Ok((b, serve_rss, restart_seconds))
}

fn sum(engine: &Engine, f: impl Fn(&cairn_runtime::LeaderStats) -> u64) -> u64 {
    engine.stats().iter().map(|s| f(s)).sum()
}

pub(super) async fn run(b: Bench, size: u64, json_out: bool) -> Result<(Bench, BenchResult)> {
    let client = b.engine.client().waiting_for_room();
    let rss_empty = rss();
    let fill_start = Instant::now();
    let pb = start_many(size, "backlog starts", |i| {
        let client = client.clone();
        async move {
            let options = StartOptions {
                instance_id: Some(format!("b{i:08}")),
                ..StartOptions::default()
            };
            client.start_with(NAME, &i, options).await?;
            Ok(())
        }
    })
    .await;
    let fill_seconds = fill_start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    b.engine.checkpoint().await?;
    let waiting = |engine: &Engine| {
        sum(engine, |s| {
            s.backlog_by_name().get(NAME).copied().unwrap_or(0)
        })
    };
    let backlog = waiting(&b.engine);
    anyhow::ensure!(
        backlog == size,
        "{backlog} instances wait, not the {size} started"
    );
    let rss_full = rss();
    let dispatched = sum(&b.engine, |s| s.dispatched.load(Ordering::Relaxed));
    let cached = sum(&b.engine, |s| s.cached_instances.load(Ordering::Relaxed));

    // The same backlog served by a fresh `cairn serve` (what a user runs; its RSS owes nothing
    // to this process's history): its memory once it has handed out its windows.
    let (b, (serve_rss, serve_rss_small_cache), restart_seconds) =
        serve_then_restart(b, "b00000000").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_restarted = rss();

    // A worker connects and completes each instance with its input.
    let queue = b
        .engine
        .remote_queue()
        .context("the backlog scenario needs remote workers enabled")?;
    let worker = queue.connect("bench worker", WorkFilter::everything());
    let drain_start = Instant::now();
    let serving = tokio::spawn(async move {
        loop {
            let taken = worker.recv(Room::ALL).await;
            if let RemoteWork::Orchestrator(work) = taken.work {
                let input = work.new_events.iter().find_map(|e| match &e.kind {
                    EventKind::ExecutionStarted { input, .. } => input.clone(),
                    _ => None,
                });
                let _ = work.reply.send(RemoteEpisode {
                    actions: vec![Action::Complete(Completion::Completed { result: input })],
                    custom_status: None,
                });
            }
        }
    });
    let pb = bar(size, "backlog drain");
    while count(&b.engine, RuntimeStatus::Completed) < size {
        pb.set_position(count(&b.engine, RuntimeStatus::Completed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pb.finish_and_clear();
    let drain_seconds = drain_start.elapsed().as_secs_f64();
    serving.abort();

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let report = json!({
        "scenario": "backlog",
        "backlog": size,
        "starts_per_s": size as f64 / fill_seconds,
        "rss_empty_bytes": rss_empty,
        "rss_waiting_bytes": rss_full,
        "rss_restarted_bytes": rss_restarted,
        "rss_cairn_serve_bytes": serve_rss,
        "rss_cairn_serve_small_store_cache_bytes": serve_rss_small_cache,
        "dispatched_while_waiting": dispatched,
        "cached_instances_while_waiting": cached,
        "restart_to_first_answer_seconds": restart_seconds,
        "drain_instances_per_s": size as f64 / drain_seconds,
    });
    if json_out {
        println!("{report}");
    } else {
        println!("backlog: {size} starts of an orchestration no connected worker runs");
        println!(
            "  starts                       {:.0}/s ({fill_seconds:.1} s)",
            size as f64 / fill_seconds
        );
        println!(
            "  RSS empty / waiting / restarted {:.0} / {:.0} / {:.0} MiB ({dispatched} dispatched, {cached} instances in memory while waiting)",
            mib(rss_empty),
            mib(rss_full),
            mib(rss_restarted)
        );
        println!(
            "  RSS of cairn serve with it   {:.0} MiB (a fresh process, windows handed out); {:.0} MiB with --store-cache-mb {SMALL_STORE_CACHE_MB}",
            mib(serve_rss),
            mib(serve_rss_small_cache)
        );
        println!("  restart to first answer      {restart_seconds:.2} s");
        println!(
            "  drain once a worker connects {:.0} instances/s ({drain_seconds:.1} s)",
            size as f64 / drain_seconds
        );
    }
    let result = finish_summary(
        Scenario::Backlog,
        size,
        drain_seconds,
        "backlog instances drained by a worker (details above)",
    );
    Ok((b, result))
}
