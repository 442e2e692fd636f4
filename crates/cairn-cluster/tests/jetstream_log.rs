//! The JetStream partition log against real `nats-server` processes started here: the storage
//! conformance suite (the same checks the local segmented log passes), fencing of a stale
//! owner, and a three-replica log that keeps every acknowledged record through the kill of a
//! NATS server.

use cairn_cluster::frames::{self, Assembler};
use cairn_cluster::log::{stored_at, stream_name, JetStreamLog};
use cairn_cluster::nats_server::NatsCluster;
use cairn_cluster::{ClusterConfig, Nats};
use cairn_storage::conformance::{self, LogHarness};
use cairn_storage::log::LogError;
use cairn_storage::seam::{OnDurable, OpenedLog};
use std::sync::Arc;

fn nats(cluster: &NatsCluster, hub: &str, node: &str, replicas: usize) -> Arc<Nats> {
    let mut config = ClusterConfig::new(cluster.urls(), hub, node);
    config.replicas = replicas;
    Arc::new(Nats::connect(config).expect("connect to the test NATS servers"))
}

fn servers(n: usize) -> NatsCluster {
    NatsCluster::start(n).unwrap_or_else(|e| panic!("starting {n} nats-server(s): {e}"))
}

struct Harness {
    nats: Arc<Nats>,
    partition: u32,
}

impl LogHarness for Harness {
    fn fresh(&mut self, min_next: u64, on_durable: OnDurable) -> OpenedLog {
        // A partition number never used before is fresh, empty storage.
        self.partition += 1;
        self.reopen(min_next, on_durable)
    }
    fn reopen(&mut self, min_next: u64, on_durable: OnDurable) -> OpenedLog {
        JetStreamLog::open(self.nats.clone(), self.partition, min_next, on_durable)
            .expect("open the JetStream log")
    }
}

fn ignore() -> OnDurable {
    Box::new(|_| {})
}

fn records(range: std::ops::RangeInclusive<u64>, tag: &str) -> Vec<Vec<u8>> {
    range.map(|i| format!("{tag} {i}").into_bytes()).collect()
}

/// Every message of a partition's stream, decoded in order through the assembler, which
/// refuses a message of an older owner epoch after a newer one. Returns the records and the
/// epochs seen.
fn audit(nats: &Nats, partition: u32) -> (Vec<(u64, Vec<u8>)>, Vec<u64>) {
    let name = stream_name(&nats.config().hub, partition);
    let js = nats.jetstream().clone();
    nats.run(async move {
        let stream = js.get_stream(&name).await.expect("the stream exists");
        let (mut out, mut epochs, mut assembler) = (Vec::new(), Vec::new(), Assembler::default());
        let mut stream_info = stream.clone();
        let state = stream_info.info().await.expect("stream info").state.clone();
        for sequence in state.first_sequence..=state.last_sequence {
            let message = stream.get_raw_message(sequence).await.expect("message");
            let decoded = frames::decode(&message.payload).expect("a Cairn log message");
            epochs.push(decoded.epoch());
            assembler
                .push(&decoded, 1, &mut out)
                .expect("epochs never go back");
        }
        (out, epochs)
    })
    .expect("runtime")
}

fn stream_leader(nats: &Nats, partition: u32) -> String {
    let name = stream_name(&nats.config().hub, partition);
    let js = nats.jetstream().clone();
    nats.run(async move {
        let mut stream = js.get_stream(&name).await.expect("the stream exists");
        let info = stream.info().await.expect("stream info");
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .expect("a replicated stream has a leader")
    })
    .expect("runtime")
}

#[test]
fn jetstream_logs_pass_the_storage_conformance_suite() {
    let cluster = servers(1);
    let mut harness = Harness {
        nats: nats(&cluster, "conformance", "node-a", 1),
        partition: 0,
    };
    conformance::run_all(&mut harness);
}

#[test]
fn a_stale_owner_is_fenced_and_applies_nothing_more() {
    let cluster = servers(1);
    let a = nats(&cluster, "fencing", "node-a", 1);
    let b = nats(&cluster, "fencing", "node-b", 1);
    let old = JetStreamLog::open(a.clone(), 0, 1, ignore()).unwrap().log;
    old.append(1, records(1..=5, "a")).unwrap();
    assert_eq!(old.flush().unwrap(), 5);

    // Another node takes the partition over (its lease moved while the old owner was frozen).
    let new = JetStreamLog::open(b.clone(), 0, 1, ignore()).unwrap().log;
    assert_eq!(new.next_position(), 6);

    // The old owner does not know yet: its append is taken locally (speculation) but the
    // server refuses it, and the log stops instead of ever reporting it durable.
    assert_eq!(old.append(6, records(6..=7, "a")).unwrap(), 7);
    match old.flush() {
        Err(LogError::Superseded(why)) => assert!(why.contains("another owner"), "{why}"),
        other => panic!("the stale owner's flush should be superseded: {other:?}"),
    }
    assert_eq!(old.durable_position(), 5, "nothing of the refused append");
    assert!(old.failure().is_some());
    assert!(matches!(
        old.append(8, records(8..=8, "a")),
        Err(LogError::Superseded(_))
    ));

    new.append(6, records(6..=7, "b")).unwrap();
    assert_eq!(new.flush().unwrap(), 7);
    let (seen, epochs) = audit(&b, 0);
    let mut want = records(1..=5, "a");
    want.extend(records(6..=7, "b"));
    let want: Vec<(u64, Vec<u8>)> = (1..).zip(want).collect();
    assert_eq!(
        seen, want,
        "only the new owner's records follow the takeover"
    );
    assert!(
        epochs.windows(2).all(|w| w[0] <= w[1]) && epochs.contains(&2),
        "{epochs:?}"
    );
    new.close().unwrap();
}

#[test]
fn three_replicas_keep_every_acknowledged_record_when_a_server_dies() {
    let started = std::time::Instant::now();
    let mut cluster = servers(3);
    let node = nats(&cluster, "replicated", "node-a", 3);
    eprintln!(
        "3 servers up and JetStream ready after {:?}",
        started.elapsed()
    );
    let mut harness = Harness {
        nats: node.clone(),
        partition: 100,
    };
    conformance::positions_are_contiguous_from_one(&mut harness);
    conformance::a_stale_expected_position_is_fenced(&mut harness);

    let log = JetStreamLog::open(node.clone(), 7, 1, ignore())
        .unwrap()
        .log;
    log.append(1, records(1..=200, "r")).unwrap();
    assert_eq!(log.flush().unwrap(), 200);
    eprintln!("200 records durable after {:?}", started.elapsed());
    // Kill the server that leads the stream: the hard case, a leader election under the log.
    let leader = stream_leader(&node, 7);
    let victim = cluster
        .servers
        .iter()
        .position(|s| s.name() == leader)
        .unwrap_or_else(|| panic!("the stream's leader {leader:?} is one of the servers"));
    cluster.servers[victim].kill();
    // Appends go on once the stream has a leader among the two servers left; the client moves
    // to a live server by itself.
    let mut position = 201;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while position <= 300 {
        log.append(position, records(position..=position, "r"))
            .unwrap();
        position += 1;
        if log.failure().is_some() || std::time::Instant::now() > deadline {
            break;
        }
    }
    let durable = log.flush();
    eprintln!(
        "after killing a NATS server: appended up to {}, flush {durable:?}, failure {:?}",
        position - 1,
        log.failure()
    );
    drop(log);
    eprintln!("300 appended after {:?}", started.elapsed());
    cluster.servers[victim].start().unwrap();
    let reopened = JetStreamLog::open(node.clone(), 7, 1, ignore())
        .unwrap()
        .log;
    let got = reopened.read_from(1).unwrap();
    // Everything acknowledged is there, in order; what a failed append left unacknowledged
    // may or may not be.
    let durable = durable.unwrap_or(200);
    assert!(durable >= 200, "{durable}");
    assert!(got.len() as u64 >= durable);
    let want: Vec<(u64, Vec<u8>)> = (1..=got.len() as u64)
        .map(|i| (i, format!("r {i}").into_bytes()))
        .collect();
    assert_eq!(got, want);
    reopened.close().unwrap();
}

/// The writer retries an append JetStream did not answer on the same expected sequence. The
/// server refuses a retry of a message it had stored after all (it checks the sequence before
/// any duplicate detection), so the writer must recognise its own stored message: checked here
/// against the real server, with `stored_at`, the check the writer uses.
#[test]
fn a_refused_retry_is_recognised_as_the_writers_own_message() {
    let cluster = servers(1);
    let node = nats(&cluster, "retry", "node-a", 1);
    let js = node.jetstream().clone();
    let (first, retry, ours, theirs, beyond) = node
        .run(async move {
            use async_nats::jetstream::{message::PublishMessage, stream};
            let stream = js
                .get_or_create_stream(stream::Config {
                    name: "RETRY".into(),
                    subjects: vec!["retry".into()],
                    ..Default::default()
                })
                .await
                .unwrap();
            let send = |body: &'static str, expected: u64| {
                let js = js.clone();
                async move {
                    let message = PublishMessage::build()
                        .payload(body.into())
                        .expected_last_sequence(expected);
                    js.send_publish("retry", message).await.unwrap().await
                }
            };
            let first = send("epoch 1, records 1-3", 0).await.map(|a| a.sequence);
            let retry = send("epoch 1, records 1-3", 0).await.map(|a| a.sequence);
            let ours = stored_at(&stream, 1, b"epoch 1, records 1-3").await;
            let theirs = stored_at(&stream, 1, b"epoch 2, records 1-3").await;
            let beyond = stored_at(&stream, 2, b"epoch 1, records 1-3").await;
            (first, retry, ours, theirs, beyond)
        })
        .unwrap();
    assert_eq!(first.unwrap(), 1);
    assert_eq!(
        retry.map_err(|e| e.kind()),
        Err(async_nats::jetstream::context::PublishErrorKind::WrongLastSequence),
        "the server refuses a retry of a stored message"
    );
    assert_eq!(ours, Ok(true));
    assert_eq!(theirs, Ok(false));
    assert_eq!(beyond, Ok(false));
}
