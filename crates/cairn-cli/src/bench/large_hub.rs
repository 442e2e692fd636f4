//! `cairn bench large-hub`: a hub of `--hub-size` completed instances (a million by default)
//! plus a few thousand running, failed and suspended ones, and what a user of such a hub feels:
//! how fast it fills, what it costs on disk and in memory, how fast indexed queries, cold status
//! reads and counts answer, how fast a purge by filter goes and what it does to a running chain,
//! and how long a restart takes to answer its first request.

use super::*;
use cairn_runtime::{Client, InstanceQuery, QueryFilter, StartOptions};
use serde_json::{json, Value};

/// Orchestration names the hub's instances are spread over.
const NAMES: u64 = 10;

/// The large hub's orchestrations: `hub_0`..`hub_9` complete at once with their input,
/// `hub_wait` waits for an event, `hub_fail` fails.
pub(super) fn orchestrations(mut registry: Registry) -> Registry {
    for i in 0..NAMES {
        registry = registry.orchestration(&format!("hub_{i}"), |_ctx, n: u64| async move {
            Ok::<_, TaskError>(n)
        });
    }
    registry
        .orchestration("hub_wait", |ctx: OrchestrationContext, _: ()| async move {
            ctx.wait_for_event::<u64>("go").await
        })
        .orchestration("hub_fail", |_ctx, _: ()| async move {
            Err::<(), _>(TaskError::new("HubFailure", "failed on purpose"))
        })
}

fn instance_id(i: u64) -> String {
    format!("i{i:08}")
}

/// Resident set size of this process, in bytes (Linux; 0 elsewhere).
pub(super) fn rss() -> u64 {
    vm_rss("/proc/self/status")
}

fn vm_rss(status_file: &str) -> u64 {
    std::fs::read_to_string(status_file)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub(super) fn count(engine: &Engine, status: RuntimeStatus) -> u64 {
    engine
        .stats()
        .iter()
        .flat_map(|s| s.instances_by_status())
        .filter(|(s, _)| *s == status)
        .map(|(_, n)| n)
        .sum()
}

async fn start(client: &Client, name: &str, id: String, input: u64) -> Result<()> {
    let options = StartOptions {
        instance_id: Some(id),
        ..StartOptions::default()
    };
    match name {
        "hub_wait" | "hub_fail" => client.start_with(name, &(), options).await?,
        _ => client.start_with(name, &input, options).await?,
    };
    Ok(())
}

/// Runs `start(i)` for every `i` below `n`, 2,000 at a time (a start is acknowledged when
/// durable), with a progress bar, which it returns unfinished; a failed start is printed.
pub(super) async fn start_many<Fut>(
    n: u64,
    label: &'static str,
    start: impl Fn(u64) -> Fut,
) -> indicatif::ProgressBar
where
    Fut: std::future::Future<Output = Result<()>>,
{
    let pb = bar(n, label);
    futures::stream::iter(0..n)
        .map(start)
        .buffer_unordered(2000)
        .enumerate()
        .for_each(|(i, r)| {
            if let Err(e) = r {
                pb.println(format!("a start failed: {e}"));
            }
            if i % 1000 == 0 {
                pb.set_position(i as u64);
            }
            futures::future::ready(())
        })
        .await;
    pb
}

/// Latency percentiles (ms) of `samples` runs of `op`.
async fn latency<F, Fut>(samples: u64, mut op: F) -> Result<Value>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut h = histogram();
    for i in 0..samples {
        let t = Instant::now();
        op(i).await?;
        record(&mut h, t.elapsed());
    }
    Ok(json!({
        "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
        "samples": samples,
    }))
}

/// 10-step chains one at a time for `run_for`: p50/p99 ms.
async fn chains(client: &Client, run_for: Duration) -> Result<(Value, u64)> {
    let mut h = histogram();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < run_for || n < 20 {
        record(&mut h, ten_step_chain(client).await?);
        n += 1;
    }
    Ok((chain_figures(&h, n), n))
}

/// Percentiles and count of chain latencies (recorded in µs), as the report prints them.
fn chain_figures(h: &Histogram<u64>, chains: u64) -> Value {
    json!({
        "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
        "p999_ms": h.value_at_quantile(0.999) as f64 / 1000.0,
        "max_ms": h.max() as f64 / 1000.0,
        "chains": chains,
    })
}

/// Runs 10-step chains one at a time until `work` ends (at least 20): their latencies, and what
/// `work` returned.
async fn chains_while<T>(
    client: &Client,
    work: impl std::future::Future<Output = Result<T, cairn_runtime::EngineError>>,
) -> Result<(Value, T)> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chains = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut h = histogram();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 20 {
                record(&mut h, ten_step_chain(&client).await?);
                n += 1;
            }
            anyhow::Ok((h, n))
        })
    };
    let done = work.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (h, n) = chains.await??;
    let done = done?;
    Ok((chain_figures(&h, n), done))
}

pub(super) async fn run(b: Bench, hub_size: u64, json_out: bool) -> Result<(Bench, BenchResult)> {
    let client = b.engine.client().waiting_for_room();
    let rss_empty = rss();
    let others = (hub_size / 500).clamp(10, 3000);

    // Fill: `hub_size` instances that complete at once, spread over the names, 2,000 in flight
    // (a start is acknowledged when durable); then a few thousand others.
    let fill_start = Instant::now();
    let pb = start_many(hub_size, "large-hub fill", |i| {
        let client = client.clone();
        async move { start(&client, &format!("hub_{}", i % NAMES), instance_id(i), i).await }
    })
    .await;
    while count(&b.engine, RuntimeStatus::Completed) < hub_size {
        pb.set_position(count(&b.engine, RuntimeStatus::Completed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fill_seconds = fill_start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    for i in 0..others {
        let id = format!("x{i:06}");
        match i % 4 {
            0 | 1 => start(&client, "hub_wait", id, 0).await?,
            2 => start(&client, "hub_fail", id, 0).await?,
            _ => {
                start(&client, "hub_wait", id.clone(), 0).await?;
                client.wait_for_start(&id, WAIT).await?;
                client.suspend(&id, Some("bench")).await?;
            }
        }
    }
    while count(&b.engine, RuntimeStatus::Failed) < others / 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.engine.checkpoint().await?;
    let disk = dir_bytes(&b.dir);
    let rss_full = rss();
    let cached: u64 = b
        .engine
        .stats()
        .iter()
        .map(|s| s.cached_instances.load(Ordering::Relaxed))
        .sum();

    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let mut random = move |below: u64| {
        // xorshift: a fixed sequence, no dependency.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state % below.max(1)
    };
    let page = |filter: QueryFilter, token: Option<String>| {
        let client = client.clone();
        async move {
            client
                .query(&InstanceQuery {
                    filter,
                    page_size: 100,
                    continuation_token: token,
                    fetch_inputs_and_outputs: false,
                })
                .await
        }
    };
    let samples = 200;
    let running = QueryFilter {
        statuses: vec![RuntimeStatus::Running],
        ..QueryFilter::default()
    };
    let first_running = latency(samples, |_| {
        let f = page(running.clone(), None);
        async move {
            let p = f.await?;
            anyhow::ensure!(!p.instances.is_empty(), "no Running instances found");
            Ok(())
        }
    })
    .await?;
    let by_name = QueryFilter {
        name: Some("hub_3".into()),
        ..QueryFilter::default()
    };
    let first_by_name = latency(samples, |_| {
        let f = page(by_name.clone(), None);
        async move {
            anyhow::ensure!(f.await?.instances.len() == 100, "a short first page");
            Ok(())
        }
    })
    .await?;
    // 100 pages into a walk of the completed instances, newest first.
    let completed = QueryFilter {
        statuses: vec![RuntimeStatus::Completed],
        ..QueryFilter::default()
    };
    let mut token = None;
    let depth = (hub_size / 100 / 2).min(100);
    for _ in 0..depth {
        token = page(completed.clone(), token).await?.continuation_token;
    }
    let deep = latency(samples, |_| {
        let f = page(completed.clone(), token.clone());
        async move {
            anyhow::ensure!(
                f.await?.instances.len() == 100,
                "a short page deep in the walk"
            );
            Ok(())
        }
    })
    .await?;
    // Ids i0000xxxx: a 7-digit prefix names 10 instances.
    let prefixes: Vec<String> = (0..samples)
        .map(|_| format!("i{:07}", random(hub_size / 10)))
        .collect();
    let by_prefix = latency(samples, |i| {
        let f = page(
            QueryFilter {
                instance_id_prefix: Some(prefixes[i as usize].clone()),
                ..QueryFilter::default()
            },
            None,
        );
        async move {
            anyhow::ensure!(!f.await?.instances.is_empty(), "an id prefix found nothing");
            Ok(())
        }
    })
    .await?;
    let ids: Vec<String> = (0..samples)
        .map(|_| instance_id(random(hub_size)))
        .collect();
    let cold_status = latency(samples, |i| {
        let client = client.clone();
        let id = ids[i as usize].clone();
        async move {
            anyhow::ensure!(
                client.get_status(&id, false).await?.is_some(),
                "{id} is missing"
            );
            Ok(())
        }
    })
    .await?;
    let counts = latency(samples, |_| {
        let total: u64 = RuntimeStatus::ALL
            .iter()
            .map(|s| count(&b.engine, *s))
            .sum();
        async move {
            anyhow::ensure!(total > 0, "no instances counted");
            Ok(())
        }
    })
    .await?;

    // Purge half by filter (the older half: created up to the middle instance) while 10-step
    // chains run one at a time; the chains' latency without the purge first.
    let (chain_alone, _) = chains(&client, Duration::from_secs(3)).await?;
    let middle = client
        .get_status(&instance_id(hub_size / 2), false)
        .await?
        .context("the middle instance is missing")?;
    let purge_filter = QueryFilter {
        statuses: vec![RuntimeStatus::Completed],
        created_to: Some(middle.created_at),
        ..QueryFilter::default()
    };
    let purge_start = Instant::now();
    let (chain_during, purged) =
        chains_while(&client, client.purge_by_filter(purge_filter)).await?;
    let purge_seconds = purge_start.elapsed().as_secs_f64();
    // The purge is acknowledged once it is in the log; the checkpoint stores delete the rows,
    // histories and index entries when they next checkpoint (in the background, within
    // `checkpoint_interval`). Chains go on while every partition writes that checkpoint now.
    let written_start = Instant::now();
    let (chain_while_written, ()) =
        chains_while(&client, b.engine.checkpoint_in_background()).await?;
    let written_seconds = written_start.elapsed().as_secs_f64();

    // Restart: a clean shutdown, then open and answer one status read.
    let survivor = instance_id(hub_size - 1);
    let (b, (), reopening) = b.reopen(|_| Ok(())).await?;
    let answered = b.engine.client().get_status(&survivor, false).await?;
    let restart_seconds = reopening.elapsed().as_secs_f64();
    anyhow::ensure!(
        answered.is_some(),
        "{survivor} is missing after the restart"
    );
    let rss_after_restart = rss();
    // The same hub served by `cairn serve`, killed with SIGKILL while it takes starts, started
    // again: time to its first answered status request.
    let (b, (killed, serve_rss, serve_rss_small_cache), _) = b
        .reopen(move |dir| kill_and_restart(&dir, &survivor))
        .await?;

    let report = json!({
        "scenario": "large-hub",
        "hub_size": hub_size,
        "others": others,
        "fill_instances_per_s": hub_size as f64 / fill_seconds,
        "fill_seconds": fill_seconds,
        "disk_bytes": disk,
        "disk_bytes_per_instance": disk as f64 / (hub_size + others) as f64,
        "rss_empty_bytes": rss_empty,
        "rss_full_bytes": rss_full,
        "cached_instances": cached,
        "rss_after_restart_bytes": rss_after_restart,
        "rss_cairn_serve_bytes": serve_rss,
        "rss_cairn_serve_small_store_cache_bytes": serve_rss_small_cache,
        "first_page_running": first_running,
        "first_page_by_name": first_by_name,
        "deep_page": deep,
        "deep_page_depth": depth,
        "id_prefix_page": by_prefix,
        "cold_status": cold_status,
        "counts_by_status": counts,
        "chain_without_purge": chain_alone,
        "chain_during_purge": chain_during,
        "chain_while_purge_is_checkpointed": chain_while_written,
        "purge_checkpoint_seconds": written_seconds,
        "purged": purged,
        "purge_instances_per_s": purged as f64 / purge_seconds,
        "restart_to_first_answer_seconds": restart_seconds,
        "kill_restart_to_first_answer_seconds": killed,
    });
    if json_out {
        println!("{report}");
    } else {
        let ms = |v: &Value| {
            let mut line = format!(
                "p50 {:.3} ms, p99 {:.3} ms",
                v["p50_ms"].as_f64().unwrap_or(0.0),
                v["p99_ms"].as_f64().unwrap_or(0.0)
            );
            if let (Some(p999), Some(max), Some(n)) = (
                v["p999_ms"].as_f64(),
                v["max_ms"].as_f64(),
                v["chains"].as_u64(),
            ) {
                line += &format!(", p99.9 {p999:.3} ms, max {max:.3} ms ({n} chains)");
            }
            line
        };
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!("large-hub: {hub_size} completed instances + {others} others");
        println!(
            "  fill                         {:.0} instances/s ({fill_seconds:.1} s)",
            hub_size as f64 / fill_seconds
        );
        println!(
            "  disk                         {:.1} MiB, {:.0} bytes per instance",
            mib(disk),
            disk as f64 / (hub_size + others) as f64
        );
        println!("  RSS empty / full / restarted {:.0} / {:.0} / {:.0} MiB ({cached} instances in memory when full)", mib(rss_empty), mib(rss_full), mib(rss_after_restart));
        println!(
            "  RSS of cairn serve on it     {:.0} MiB (a fresh process, after its first answer); {:.0} MiB with --store-cache-mb {SMALL_STORE_CACHE_MB}",
            mib(serve_rss),
            mib(serve_rss_small_cache)
        );
        println!(
            "  first page of Running        {}",
            ms(&report["first_page_running"])
        );
        println!(
            "  first page of one name       {}",
            ms(&report["first_page_by_name"])
        );
        println!(
            "  page {depth} of a walk            {}",
            ms(&report["deep_page"])
        );
        println!(
            "  id-prefix page               {}",
            ms(&report["id_prefix_page"])
        );
        println!(
            "  status of a cold instance    {}",
            ms(&report["cold_status"])
        );
        println!(
            "  counts by status             {}",
            ms(&report["counts_by_status"])
        );
        println!(
            "  purge by filter              {purged} instances, {:.0}/s",
            purged as f64 / purge_seconds
        );
        println!(
            "  10-step chain alone          {}",
            ms(&report["chain_without_purge"])
        );
        println!(
            "  10-step chain during purge   {}",
            ms(&report["chain_during_purge"])
        );
        println!(
            "  ...while it is checkpointed  {} ({written_seconds:.2} s)",
            ms(&report["chain_while_purge_is_checkpointed"])
        );
        println!("  restart to first answer      {restart_seconds:.2} s (clean shutdown), {killed:.2} s (kill -9 of cairn serve)");
    }
    let result = finish_summary(
        Scenario::LargeHub,
        hub_size,
        fill_seconds,
        "instances filled into a large hub (details above)",
    );
    Ok((b, result))
}

/// A free loopback port (bound and released; good enough for a benchmark).
pub(super) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One HTTP/1.1 request on a new connection; the status code.
pub(super) fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let text = String::from_utf8_lossy(&head[9..12]).to_string();
    text.parse()
        .map_err(|_| std::io::Error::other(format!("not an HTTP status: {text}")))
}

/// The store cache of the second `cairn serve` whose RSS the benchmarks take: small enough that
/// what remains is what serving the hub needs, not the page cache it may fill up to its bound.
pub(super) const SMALL_STORE_CACHE_MB: &str = "8";

/// `cairn serve` of the hub in `dir`, its HTTP front on `http_port`, with `more` options.
pub(super) fn serve(
    dir: &std::path::Path,
    http_port: u16,
    more: &[&str],
) -> Result<std::process::Child> {
    Ok(std::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--data"])
        .arg(dir)
        .args(more)
        .args(["--grpc", &format!("127.0.0.1:{}", free_port()?)])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?)
}

/// Waits until `cairn serve` (`child`, HTTP on `port`) answers a status request for `id` (200
/// for an ended instance, 202 for one still going).
pub(super) fn answers(port: u16, child: &mut std::process::Child, id: &str) -> Result<()> {
    let status_path = format!("/runtime/webhooks/durabletask/instances/{id}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(200 | 202) = http(port, "GET", &status_path, "") {
            return Ok(());
        }
        if let Some(exit) = child.try_wait()? {
            anyhow::bail!("cairn serve exited ({exit}) before answering");
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "cairn serve did not answer in 120 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Resident set size of process `pid`, in bytes (Linux; 0 elsewhere).
pub(super) fn rss_of(pid: u32) -> u64 {
    vm_rss(&format!("/proc/{pid}/status"))
}

/// Serves the hub in `dir` with `cairn serve`, starts instances through its HTTP API, kills it
/// with SIGKILL mid-way, serves it again and returns the seconds from the new process's start
/// to its first answered status request for `id`, and the new process's RSS.
fn kill_and_restart(dir: &std::path::Path, id: &str) -> Result<(f64, u64, u64)> {
    // Killed if it does not answer: no process is left behind.
    let wait_answer = |port: u16, child: &mut std::process::Child| {
        answers(port, child, id).inspect_err(|_| {
            let _ = child.kill();
            let _ = child.wait();
        })
    };
    let port = free_port()?;
    let mut first = serve(dir, port, &[])?;
    wait_answer(port, &mut first)?;
    // Starts no worker runs (the orchestrations are not registered in `cairn serve`), so they
    // stay in the log and the dirty set, then the kill.
    for i in 0..2000 {
        let code = http(
            port,
            "POST",
            &format!("/runtime/webhooks/durabletask/orchestrators/hub_0/k{i:06}"),
            "1",
        )?;
        anyhow::ensure!(code == 202, "a start through HTTP answered {code}");
    }
    first.kill()?;
    first.wait()?;
    let port = free_port()?;
    let started = Instant::now();
    let mut second = serve(dir, port, &[])?;
    wait_answer(port, &mut second)?;
    let seconds = started.elapsed().as_secs_f64();
    // What serving the hub costs a process that did not build it (this one's RSS also holds
    // what the allocator kept from the fill).
    let serve_rss = settled_rss(port, &mut second)?;
    // Killed again, the same log to replay, with a small store cache: replaying 2,000 starts
    // into a million-instance store touches pages all over its trees, and the default cache
    // keeps up to 128 MiB of them. Without it, what remains is what the hub itself costs.
    let port = free_port()?;
    let mut third = serve(dir, port, &["--store-cache-mb", SMALL_STORE_CACHE_MB])?;
    wait_answer(port, &mut third)?;
    let small_cache_rss = settled_rss(port, &mut third)?;
    Ok((seconds, serve_rss, small_cache_rss))
}

/// The RSS of `cairn serve` (`child`, HTTP on `port`) two seconds after it answers its stats,
/// then kills it (SIGKILL).
fn settled_rss(port: u16, child: &mut std::process::Child) -> Result<u64> {
    let _ = http(port, "GET", "/api/stats", "");
    std::thread::sleep(Duration::from_secs(2));
    let rss = rss_of(child.id());
    child.kill()?;
    child.wait()?;
    Ok(rss)
}
