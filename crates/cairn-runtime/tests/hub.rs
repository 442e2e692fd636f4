//! A hub whose partition directories are missing, swapped, foreign or re-created is refused
//! with what is wrong, instead of starting with that partition's instances gone; restoring the
//! directory brings every instance back.

mod common;

use cairn_runtime::*;
use common::*;
use std::path::{Path, PathBuf};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn pdir(hub: &Path, p: u32) -> PathBuf {
    hub::partition_dir(hub, p)
}

async fn refused(dir: &Path) -> String {
    match Engine::open(config(dir), registry()).await {
        Ok(engine) => {
            engine.shutdown().await.unwrap();
            panic!("the hub in {} opened", dir.display())
        }
        Err(e) => e.to_string(),
    }
}

/// A hub of 4 partitions with 40 completed instances (some in every partition), stopped.
async fn hub_with_data(dir: &Path) -> Vec<String> {
    let engine = open(dir).await;
    let client = engine.client();
    let ids = run_chains(&client, 2, (0..40).map(|i| format!("order-{i}"))).await;
    engine.shutdown().await.unwrap();
    ids
}

async fn all_completed(dir: &Path, ids: &[String]) {
    let engine = open(dir).await;
    let client = engine.client();
    for id in ids {
        let s = client.get_status(id, false).await.unwrap();
        assert_eq!(
            s.map(|s| s.status),
            Some(RuntimeStatus::Completed),
            "instance {id} after the restore"
        );
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_partition_is_refused_and_restoring_it_brings_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    let ids = hub_with_data(dir.path()).await;
    let saved = tempfile::tempdir().unwrap();
    copy_dir(&pdir(dir.path(), 1), saved.path());
    std::fs::remove_dir_all(pdir(dir.path(), 1)).unwrap();
    let err = refused(dir.path()).await;
    assert!(err.contains("partitions/p01 is missing"), "{err}");
    assert!(err.contains("Restore"), "{err}");
    // Refusing created nothing in its place.
    assert!(!pdir(dir.path(), 1).exists());

    // Re-created empty by hand: still refused.
    std::fs::create_dir_all(pdir(dir.path(), 1)).unwrap();
    let err = refused(dir.path()).await;
    assert!(
        err.contains("partitions/p01 has no partition.json"),
        "{err}"
    );
    std::fs::remove_dir_all(pdir(dir.path(), 1)).unwrap();

    copy_dir(saved.path(), &pdir(dir.path(), 1));
    all_completed(dir.path(), &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_foreign_and_emptied_partitions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ids = hub_with_data(dir.path()).await;
    let (p0, p1) = (pdir(dir.path(), 0), pdir(dir.path(), 1));

    // Swapped.
    let tmp = dir.path().join("partitions/tmp");
    std::fs::rename(&p0, &tmp).unwrap();
    std::fs::rename(&p1, &p0).unwrap();
    std::fs::rename(&tmp, &p1).unwrap();
    let err = refused(dir.path()).await;
    assert!(
        err.contains("partitions/p00 holds partition 1 of 4, not partition 0"),
        "{err}"
    );
    std::fs::rename(&p0, &tmp).unwrap();
    std::fs::rename(&p1, &p0).unwrap();
    std::fs::rename(&tmp, &p1).unwrap();

    // Another hub's partition 1 in its place.
    let other = tempfile::tempdir().unwrap();
    hub_with_data(other.path()).await;
    let saved = tempfile::tempdir().unwrap();
    copy_dir(&p1, saved.path());
    std::fs::remove_dir_all(&p1).unwrap();
    copy_dir(&pdir(other.path(), 1), &p1);
    let err = refused(dir.path()).await;
    assert!(
        err.contains("partitions/p01 belongs to another task hub"),
        "{err}"
    );
    std::fs::remove_dir_all(&p1).unwrap();
    copy_dir(saved.path(), &p1);

    // Its store deleted (the identity survived).
    std::fs::rename(p1.join("store.redb"), dir.path().join("store.bak")).unwrap();
    let err = refused(dir.path()).await;
    assert!(
        err.contains("partitions/p01 has lost its checkpoint store"),
        "{err}"
    );
    std::fs::rename(dir.path().join("store.bak"), p1.join("store.redb")).unwrap();

    all_completed(dir.path(), &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_interrupted_before_the_partitions_finishes_on_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    // What a crash right after writing hub.json leaves.
    std::fs::write(
        dir.path().join("hub.json"),
        format!(
            r#"{{"format":"cairn","format_version":{},"partitions":4,"hub_id":"0123","partitions_ready":false}}"#,
            cairn_core::LOG_FORMAT_VERSION
        ),
    )
    .unwrap();
    let ids = hub_with_data(dir.path()).await;
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("hub.json")).unwrap()).unwrap();
    assert_eq!(meta["partitions_ready"], true);
    all_completed(dir.path(), &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_from_before_identities_is_marked_and_then_protected() {
    let dir = tempfile::tempdir().unwrap();
    let ids = hub_with_data(dir.path()).await;
    // Make it look like a hub written before partition identities existed.
    for p in 0..4 {
        std::fs::remove_file(pdir(dir.path(), p).join("partition.json")).unwrap();
    }
    std::fs::write(
        dir.path().join("hub.json"),
        format!(
            r#"{{"format":"cairn","format_version":{},"partitions":4}}"#,
            cairn_core::LOG_FORMAT_VERSION
        ),
    )
    .unwrap();
    all_completed(dir.path(), &ids).await;
    for p in 0..4 {
        assert!(pdir(dir.path(), p).join("partition.json").exists());
    }
    std::fs::remove_dir_all(pdir(dir.path(), 3)).unwrap();
    let err = refused(dir.path()).await;
    assert!(err.contains("partitions/p03 is missing"), "{err}");
}
