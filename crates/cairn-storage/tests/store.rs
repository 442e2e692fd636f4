//! Tests of the redb checkpoint store that only it has (damaged files, a second open,
//! concurrency); what every checkpoint store must do is in the conformance suite.

use std::sync::Arc;

use cairn_storage::seam::StoreReads;
use cairn_storage::store::{CheckpointBatch, PartitionStore, StoreError};

#[test]
fn reads_run_concurrently_with_checkpoints() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PartitionStore>();

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PartitionStore::open(&dir.path().join("s.redb")).unwrap());
    let writer = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            for pos in 1..=50u64 {
                store
                    .write_checkpoint(&CheckpointBatch {
                        position: pos,
                        globals: pos.to_le_bytes().to_vec(),
                        instance_puts: vec![(format!("i{pos:03}"), pos.to_le_bytes().to_vec())],
                        ..Default::default()
                    })
                    .unwrap();
            }
        })
    };
    let mut last = 0;
    while last < 50 {
        let pos = store.checkpoint_position().unwrap();
        assert!(pos >= last, "positions never go backwards");
        last = pos;
        // Every read transaction sees a whole checkpoint: never fewer instances than position
        // of the checkpoint it read before.
        assert!(store.instance_count().unwrap() >= pos);
    }
    writer.join().unwrap();
    assert_eq!(store.instance_count().unwrap(), 50);
    assert_eq!(
        store.load_globals().unwrap(),
        Some(50u64.to_le_bytes().to_vec())
    );
}

#[test]
fn garbage_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.redb");
    let garbage: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    match PartitionStore::open(&path) {
        Err(e @ StoreError::Open { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("restore it from backup"), "{msg}");
        }
        Err(e) => panic!("expected StoreError::Open, got {e}"),
        Ok(_) => panic!("a garbage file must not open"),
    }

    // A short text file too.
    let path = dir.path().join("notes.redb");
    std::fs::write(&path, b"hello").unwrap();
    assert!(PartitionStore::open(&path).is_err());

    // A directory where the file should be.
    let path = dir.path().join("a-dir");
    std::fs::create_dir(&path).unwrap();
    assert!(PartitionStore::open(&path).is_err());
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let _first = PartitionStore::open(&path).unwrap();
    match PartitionStore::open(&path) {
        Err(e @ StoreError::Open { .. }) => {
            let msg = e.to_string();
            // Says who holds it, not that the file may be damaged; one full stop per sentence.
            assert!(msg.contains("Another `cairn serve`"), "{msg}");
            assert!(!msg.contains("damaged"), "{msg}");
            assert!(!msg.contains(".."), "{msg}");
        }
        other => panic!("expected Open error, got {other:?}"),
    }
}
