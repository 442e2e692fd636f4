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
    let client = cairn_cluster::Nats::connect(cairn_cluster::ClusterConfig::new(
        nats.urls(),
        "crash",
        "auditor",
    ))
    .expect("connect");
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
