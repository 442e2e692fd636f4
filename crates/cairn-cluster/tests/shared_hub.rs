//! A node sharing a hub (`shared_config` + `Ownership`) against a real `nats-server` started
//! here: messages between partitions travel through the hub's input stream, including one
//! larger than the server takes in one message (`max_payload`, 1 MiB by default), which goes
//! as fragments and arrives whole.

use cairn_cluster::nats_server::NatsCluster;
use cairn_cluster::{ClusterConfig, Nats};
use cairn_runtime::{Engine, EngineConfig, OrchestrationContext, Registry, TaskError};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_between_partitions_larger_than_a_nats_message_arrives_whole() {
    let servers = NatsCluster::single().unwrap_or_else(|e| panic!("starting nats-server: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let urls = servers.urls();
    let nats = tokio::task::spawn_blocking(move || {
        Arc::new(Nats::connect(ClusterConfig::new(urls, "big", "n1")).expect("connect"))
    })
    .await
    .unwrap();
    let config = EngineConfig {
        data_dir: dir.path().to_path_buf(),
        partitions: Some(4),
        ..EngineConfig::default()
    };
    let blocking = nats.clone();
    let config =
        tokio::task::spawn_blocking(move || cairn_cluster::cluster_config(blocking, config))
            .await
            .unwrap()
            .expect("the hub in JetStream");
    let (config, routers) = cairn_cluster::shared_config(nats.clone(), config);
    // The parent sends its child a 3 MB input; the child sends back its length and a checksum.
    let registry = Registry::new()
        .orchestration(
            "child",
            |_ctx: OrchestrationContext, text: String| async move {
                let sum: u64 = text.bytes().map(u64::from).sum();
                Ok::<_, TaskError>((text.len(), sum))
            },
        )
        .orchestration("parent", |ctx: OrchestrationContext, n: usize| async move {
            let text: String = (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            // A child id in another partition than the parent's.
            let child = (0..)
                .map(|i| format!("child-{i}"))
                .find(|id| {
                    cairn_core::partition_of(id, 4) != cairn_core::partition_of("parent-1", 4)
                })
                .unwrap_or_default();
            ctx.call_sub_orchestration::<_, (usize, u64)>("child", Some(&child), text)
                .await
        });
    let engine = Engine::open(config, registry).await.expect("open");
    let router = routers
        .router()
        .expect("the engine opened the cluster's router");
    let ownership = cairn_cluster::ownership::Ownership::start(
        nats.clone(),
        engine.partitions(),
        engine.partition_count(),
        router,
        Duration::from_secs(2),
    )
    .await
    .expect("take part");
    let client = engine.client();
    let n = 3_000_000usize;
    let id = client
        .start_with(
            "parent",
            &n,
            cairn_runtime::StartOptions::with_id("parent-1"),
        )
        .await
        .expect("start");
    let done = client
        .wait_for_completion(&id, Duration::from_secs(60))
        .await
        .expect("the parent completes");
    let (len, sum): (usize, u64) = done.output().expect("output");
    let expected: u64 = (0..n).map(|i| u64::from(b'a' + (i % 26) as u8)).sum();
    assert_eq!((len, sum), (n, expected), "the child got its input whole");
    ownership.stop().await;
    engine.shutdown().await.expect("shutdown");
}
