//! The crash test of the cluster mode's storage: the crash workload keeps its task hub in NATS
//! JetStream (a real `nats-server` started here) and is killed with SIGKILL at random moments,
//! each time restarted as a node with a new, empty data directory, so everything it recovers
//! comes from JetStream. Once, the NATS server itself is killed with SIGKILL and restarted
//! under the running workload. At the end every acknowledged start must complete with the right
//! output, and every activity, sub-orchestration, timer result and entity signal must have been
//! applied exactly once.

use rand::Rng;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use cairn_cluster::nats_server::NatsCluster;
use common::{check_after_kills, finish, kill_times, ledger_lines, run_then_kill};

fn ledger_starts(ledger: &Path) -> usize {
    ledger_lines(ledger, "started ")
}

#[test]
fn sigkill_of_nodes_and_of_nats_loses_nothing_the_hub_lives_in_jetstream() {
    let mut nats = NatsCluster::single().unwrap_or_else(|e| panic!("starting nats-server: {e}"));
    let url = nats.urls().join(",");
    let args = [
        "--partitions",
        "4",
        // Frequent checkpoints and snapshots, so that snapshots and the purge of the deltas
        // they cover happen under the kills too, however slow the machine.
        "--checkpoint-every",
        "150",
        "--snapshot-every",
        "4",
        "--cluster",
        url.as_str(),
        "--hub",
        "crash",
    ];
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let mut rng = kill_times("cluster crash test");
    let kills = 12;
    let nats_round = rng.random_range(3..kills - 2);
    let mut progressed = 0;
    for round in 0..kills {
        let before = ledger_starts(&ledger);
        let delay = Duration::from_millis(rng.random_range(300..1500));
        // A node that never ran here: no cache, no local state.
        let data = dir.path().join(format!("node-{round}"));
        let started = Instant::now();
        let mut nats_killed = false;
        run_then_kill(
            &data,
            &ledger,
            &args,
            round,
            delay,
            Duration::from_millis(5),
            |_| {
                if round == nats_round && !nats_killed && started.elapsed() > delay / 2 {
                    nats.servers[0].kill();
                    nats.servers[0].start().expect("nats-server starts again");
                    nats_killed = true;
                }
            },
        );
        if ledger_starts(&ledger) > before {
            progressed += 1;
        }
    }
    let acknowledged = ledger_starts(&ledger);
    let summary = finish(&dir.path().join("verifier"), &ledger, &args);
    check_after_kills(&summary, kills, progressed, acknowledged, 50, 20);
    // Snapshots were taken (and the deltas under them purged) during the run, so recoveries
    // went through them.
    let client = auditor(&nats.urls(), "crash");
    let js = client.jetstream().clone();
    let snapshots = client
        .run(async move {
            let Ok(store) = js
                .get_object_store(cairn_cluster::checkpoint::snapshot_bucket("crash"))
                .await
            else {
                return 0;
            };
            let mut found = 0;
            for p in 0..4 {
                if store.info(format!("p{p:03}")).await.is_ok() {
                    found += 1;
                }
            }
            found
        })
        .expect("runtime");
    assert!(snapshots >= 1, "no partition was ever snapshotted");
    eprintln!(
        "after {kills} kills (NATS killed in round {nats_round}), {snapshots} of 4 partitions \
         snapshotted: {summary}"
    );
}

/// A connection to hub `hub` that only reads (status, logs).
fn auditor(urls: &[String], hub: &str) -> cairn_cluster::Nats {
    cairn_cluster::Nats::connect(cairn_cluster::ClusterConfig::new(
        urls.to_vec(),
        hub,
        "auditor",
    ))
    .expect("connect")
}

/// A node of the shared hub: the crash workload with `--share`, its stderr in a file.
struct SharingNode {
    child: std::process::Child,
    log: std::path::PathBuf,
}

fn start_sharing_node(dir: &Path, node: usize, round: u32, args: &[&str]) -> SharingNode {
    let data = dir.join(format!("node-{node}-{round}"));
    let ledger = dir.join(format!("ledger-{node}"));
    let log_path = dir.join(format!("node-{node}-{round}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let child = common::workload(&data, &ledger, args)
        .args(["--share", "--node-id", &format!("n{node}")])
        .env("RUST_LOG", "warn,cairn_cluster::ownership=info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the workload starts");
    SharingNode {
        child,
        log: log_path,
    }
}

/// Which node runs each partition of hub `hub` now (empty names for none).
fn owners(urls: &[String], hub: &str) -> Vec<String> {
    cairn_cluster::status::hub_status(&auditor(urls, hub))
        .map(|s| {
            s.partition_status
                .into_iter()
                .map(|p| p.owner.unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// Three crash-workload processes share one hub's partitions (`--share`, as `cairn serve
/// --cluster` nodes do): each starts work, and every request, message between partitions and
/// completion may cross nodes. Random nodes are killed with SIGKILL 21 times (each restarted
/// at once with an empty data directory), and one NATS server of a three-server cluster once.
/// Then a fresh node alone finishes and verifies everything the three acknowledged: every start
/// completed with the right output, every activity, sub-orchestration, timer and event result
/// applied once, every entity signal applied exactly once, and no partition's log was ever
/// written by two owners in turn (its epochs never go back).
#[test]
fn three_nodes_share_the_hub_and_sigkill_of_random_nodes_loses_nothing() {
    let mut nats = NatsCluster::start(3).unwrap_or_else(|e| panic!("starting nats-server: {e}"));
    let urls = nats.urls();
    let url = urls.join(",");
    let args = [
        "--partitions",
        "6",
        "--checkpoint-every",
        "300",
        "--workers",
        "2",
        "--cluster",
        url.as_str(),
        "--hub",
        "shared",
        "--lease",
        "1s",
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut rng = kill_times("shared hub crash test");
    let mut nodes: Vec<SharingNode> = (0..3)
        .map(|n| start_sharing_node(dir.path(), n, 0, &args))
        .collect();
    let ledgers: Vec<std::path::PathBuf> = (0..3)
        .map(|n| dir.path().join(format!("ledger-{n}")))
        .collect();
    let starts = |ledgers: &[std::path::PathBuf]| -> usize {
        ledgers.iter().map(|l| ledger_starts(l)).sum()
    };
    let kills = 21;
    let nats_round = rng.random_range(3..kills - 3);
    let mut progressed = 0;
    let mut spread = 0;
    for round in 1..=kills {
        let before = starts(&ledgers);
        std::thread::sleep(Duration::from_millis(rng.random_range(700..2200)));
        let current = owners(&urls, "shared");
        let distinct: std::collections::BTreeSet<&String> =
            current.iter().filter(|o| !o.is_empty()).collect();
        spread = spread.max(distinct.len());
        let victim = rng.random_range(0..3usize);
        for (n, node) in nodes.iter_mut().enumerate() {
            if let Some(status) = node.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                panic!("round {round}: node {n} exited on its own ({status}):\n{log}");
            }
        }
        nodes[victim].child.kill().expect("SIGKILL");
        nodes[victim].child.wait().unwrap();
        if round == nats_round {
            nats.servers[1].kill();
            nats.servers[1].start().expect("nats-server starts again");
        }
        nodes[victim] = start_sharing_node(dir.path(), victim, round, &args);
        let now = starts(&ledgers);
        if now > before {
            progressed += 1;
        }
        eprintln!(
            "round {round}: killed node {victim}{}; {now} starts acknowledged; owners {:?}",
            if round == nats_round {
                " and a NATS server"
            } else {
                ""
            },
            current
        );
    }
    for node in &mut nodes {
        node.child.kill().expect("SIGKILL");
        node.child.wait().unwrap();
    }
    assert!(
        spread >= 2,
        "the partitions were never spread over two nodes or more"
    );
    // One ledger for the verifier: every start, raise and signal the three acknowledged.
    let merged = dir.path().join("ledger");
    let mut all = String::new();
    for l in &ledgers {
        let text = std::fs::read_to_string(l).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        all.push_str(complete);
    }
    std::fs::write(&merged, all).unwrap();
    let acknowledged = ledger_starts(&merged);
    let mut verify_args = args.to_vec();
    verify_args.extend(["--share", "--node-id", "verifier"]);
    let summary = finish(&dir.path().join("verifier"), &merged, &verify_args);
    check_after_kills(&summary, kills, progressed, acknowledged, 50, 20);
    let nats_client = auditor(&urls, "shared");
    for p in 0..6 {
        cairn_cluster::log::read_without_owning(&nats_client, p)
            .unwrap_or_else(|e| panic!("partition {p}: {e}"));
    }
    eprintln!(
        "after {kills} kills of random nodes (a NATS server killed in round {nats_round}), \
         partitions spread over up to {spread} nodes: {summary}"
    );
}
