//! `cairn bench backlog`: `--hub-size` starts (a million by default) of an orchestration that no
//! connected worker runs, and what a user of such a backlog feels: how fast the starts are
//! taken, what the waiting backlog costs in memory (before and after a restart), and how fast
//! it drains once a worker connects. Run it at two sizes to see that memory does not grow with
//! the backlog: only a dispatch window per partition is in memory.

use super::large_hub::{answers, count, free_port, rss, rss_of, serve, start_many};
use super::*;
use cairn_core::{Action, Completion, EventKind};
use cairn_runtime::remote::{RemoteEpisode, RemoteWork, Room, WorkFilter};
use cairn_runtime::StartOptions;
use serde_json::json;

/// The orchestration of the backlog: nothing in this process runs it.
const NAME: &str = "backlog_job";

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
    let (b, serve_rss, _) = b
        .reopen(|dir| {
            let port = free_port()?;
            let mut child = serve(&dir, port)?;
            let answered = answers(port, &mut child, "b00000000");
            std::thread::sleep(Duration::from_secs(3));
            let rss = rss_of(child.id());
            child.kill()?;
            child.wait()?;
            answered.map(|()| rss)
        })
        .await?;

    // Restart with the backlog waiting: time to the first answered status read.
    let (b, (), reopening) = b.reopen(|_| Ok(())).await?;
    let first = b.engine.client().get_status("b00000000", false).await?;
    let restart_seconds = reopening.elapsed().as_secs_f64();
    anyhow::ensure!(first.is_some(), "b00000000 is missing after the restart");
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
            "  RSS of cairn serve with it   {:.0} MiB (a fresh process, windows handed out)",
            mib(serve_rss)
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
