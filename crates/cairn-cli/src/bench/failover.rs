//! `cairn bench failover`: how long a cluster hub's partitions stop answering when the node
//! that runs them is killed. Two `cairn serve --cluster` processes of this binary share a hub
//! in JetStream, each running half its partitions; one gets `kill -9`, and the clock runs until
//! the other answers a status request for every instance started before the kill (over real
//! HTTP), half of which live on the dead node's partitions. The killed node comes back and
//! takes its share again, and the next kill hits the other node. Reported: the time to answer
//! again, p50 and p99 over the kills, and that every instance acknowledged before a kill is
//! still there after it.

use super::large_hub::{free_port, http};
use super::{finish, histogram, record, BenchResult, Scenario};
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const API: &str = "/runtime/webhooks/durabletask";

/// One `cairn serve --cluster` process.
struct Node {
    name: String,
    http: u16,
    child: Child,
    /// Lines of its log, read off its stderr.
    log: std::sync::mpsc::Receiver<String>,
}

impl Node {
    fn spawn(urls: &str, hub: &str, name: &str, data: &Path, settings: &Settings) -> Result<Node> {
        let http = free_port()?;
        let mut child = Command::new(std::env::current_exe().context("finding this binary")?)
            .args(["serve", "--cluster", urls, "--hub", hub, "--node-id", name])
            .arg("--data")
            .arg(data)
            .args([
                "--grpc",
                "127.0.0.1:0",
                "--http",
                &format!("127.0.0.1:{http}"),
            ])
            .args(["--partitions", &settings.partitions.to_string()])
            .args(["--lease", &format!("{}ms", settings.lease.as_millis())])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting cairn serve")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Ok(Node {
            name: name.to_string(),
            http,
            child,
            log,
        })
    }

    /// Waits for a log line containing `text`.
    fn wait_for(&mut self, text: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.log.recv_timeout(left).map_err(|_| {
                anyhow::anyhow!("node {} did not log {text:?} within {within:?}", self.name)
            })?;
            if line.contains("Error:") {
                anyhow::bail!("node {} failed: {line}", self.name);
            }
            if line.contains(text) {
                return Ok(());
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How the nodes run.
pub struct Settings {
    pub partitions: u32,
    /// How long a node's silence means it is gone (`--lease`).
    pub lease: Duration,
}

/// Runs `kills` failovers on the NATS servers at `urls`.
pub fn run(
    urls: &str,
    settings: &Settings,
    kills: u64,
    base: &Path,
    json: bool,
) -> Result<BenchResult> {
    let partitions = settings.partitions;
    let hub = format!("bench-{}-failover", std::process::id());
    let dir: PathBuf = base.join(format!("cairn-bench-{}-failover", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = |name: &str| dir.join(name);
    let mut victim = Node::spawn(urls, &hub, "a", &data("a"), settings)?;
    victim.wait_for("took partitions over", Duration::from_secs(60))?;
    // The survivor of each kill: it runs the other half of the partitions.
    let mut survivor = Node::spawn(urls, &hub, "b", &data("b"), settings)?;
    survivor.wait_for("took partitions over", Duration::from_secs(60))?;
    let mut ids: Vec<String> = Vec::new();
    let mut h = histogram();
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    for kill in 0..kills {
        // A few more instances acknowledged before each kill (they wait for a worker: none
        // runs them, so they stay and must be found after every failover).
        for i in 0..partitions.max(4) {
            let id = format!("k{kill}-{i}");
            let code = http(
                victim.http,
                "POST",
                &format!("{API}/orchestrators/Probe/{id}"),
                "",
            )
            .unwrap_or(0);
            anyhow::ensure!(
                code == 202,
                "starting {id} on node {} answered {code}",
                victim.name
            );
            ids.push(id);
        }
        victim.kill();
        let killed_at = Instant::now();
        // Answering again: every instance acknowledged so far has a status on the survivor.
        let mut pending: Vec<&String> = ids.iter().collect();
        while !pending.is_empty() {
            anyhow::ensure!(
                killed_at.elapsed() < Duration::from_secs(60),
                "node {} did not answer for {} instances within 60 s of the kill",
                survivor.name,
                pending.len()
            );
            // The dead node's partitions answer nothing (404, 5xx) until they move.
            pending.retain(|id| {
                http(survivor.http, "GET", &format!("{API}/instances/{id}"), "").unwrap_or(0) != 202
            });
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let took = killed_at.elapsed();
        record(&mut h, took);
        worst = worst.max(took);
        if !json {
            eprintln!(
                "kill {}/{kills}: node {} killed, node {} answered for all {} instances after {:.2} s",
                kill + 1,
                victim.name,
                survivor.name,
                ids.len(),
                took.as_secs_f64()
            );
        }
        // The killed node comes back (on its old directory) and takes its share again; the
        // next kill hits the other node.
        let name = victim.name.clone();
        let back = Node::spawn(urls, &hub, &name, &data(&name), settings)?;
        victim = std::mem::replace(&mut survivor, back);
        survivor.wait_for("took partitions over", Duration::from_secs(60))?;
    }
    let elapsed = started.elapsed();
    drop(victim);
    drop(survivor);
    let _ = std::fs::remove_dir_all(&dir);
    if !json {
        println!(
            "failover: {kills} kill -9 of a node running half the partitions (lease {:?}); the \
             other node answered for every acknowledged instance after p50 {:.2} s, p99 {:.2} s, max {:.2} s",
            settings.lease,
            h.value_at_quantile(0.5) as f64 / 1e6,
            h.value_at_quantile(0.99) as f64 / 1e6,
            worst.as_secs_f64()
        );
    }
    Ok(finish(Scenario::Failover, kills, elapsed, &h, "failovers"))
}
