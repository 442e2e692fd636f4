mod common;
use cairn_runtime::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_completes_with_output() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let client = engine.client();
    let id = client.start("chain", &5).await.unwrap();
    let status = client.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(status.status, RuntimeStatus::Completed, "{status:?}");
    assert_eq!(status.output::<i64>().unwrap(), 5);
    engine.shutdown().await.unwrap();
}
