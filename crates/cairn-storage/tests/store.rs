//! Tests of the redb checkpoint store.

use std::sync::Arc;

use cairn_storage::store::{CheckpointBatch, PartitionStore, StoreError};

fn scan(store: &PartitionStore, after: Option<&str>, prefix: Option<&str>) -> Vec<String> {
    let mut ids = Vec::new();
    store
        .scan_instances(after, prefix, &mut |id, _| {
            ids.push(id.to_string());
            true
        })
        .unwrap();
    ids
}

#[test]
fn fresh_store_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = PartitionStore::open(&dir.path().join("p0").join("store.redb")).unwrap();
    assert_eq!(store.checkpoint_position().unwrap(), 0);
    assert_eq!(store.load_globals().unwrap(), None);
    assert_eq!(store.get_instance("a").unwrap(), None);
    assert_eq!(store.read_history("a").unwrap(), Vec::<Vec<u8>>::new());
    assert_eq!(store.instance_count().unwrap(), 0);
    assert!(scan(&store, None, None).is_empty());
}

#[test]
fn checkpoint_round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let store = PartitionStore::open(&path).unwrap();
        store
            .write_checkpoint(&CheckpointBatch {
                position: 42,
                globals: b"globals-v1".to_vec(),
                instance_puts: vec![
                    ("order-1".into(), b"state-1".to_vec()),
                    ("order-2".into(), b"state-2".to_vec()),
                ],
                instance_deletes: vec![],
                history_truncates: vec![],
                history_appends: vec![
                    ("order-1".into(), 0, b"e0".to_vec()),
                    ("order-1".into(), 2, b"e2".to_vec()),
                    ("order-1".into(), 1, b"e1".to_vec()),
                    ("order-2".into(), 0, b"x0".to_vec()),
                ],
            })
            .unwrap();
        assert_eq!(store.checkpoint_position().unwrap(), 42);
        store
            .write_checkpoint(&CheckpointBatch {
                position: 50,
                globals: b"globals-v2".to_vec(),
                instance_puts: vec![("order-1".into(), b"state-1b".to_vec())],
                instance_deletes: vec!["order-2".into()],
                history_truncates: vec!["order-2".into()],
                history_appends: vec![("order-1".into(), 3, b"e3".to_vec())],
            })
            .unwrap();
    }
    let store = PartitionStore::open(&path).unwrap();
    assert_eq!(store.checkpoint_position().unwrap(), 50);
    assert_eq!(store.load_globals().unwrap(), Some(b"globals-v2".to_vec()));
    assert_eq!(
        store.get_instance("order-1").unwrap(),
        Some(b"state-1b".to_vec())
    );
    assert_eq!(store.get_instance("order-2").unwrap(), None);
    assert_eq!(store.instance_count().unwrap(), 1);
    assert_eq!(
        store.read_history("order-1").unwrap(),
        vec![
            b"e0".to_vec(),
            b"e1".to_vec(),
            b"e2".to_vec(),
            b"e3".to_vec()
        ]
    );
    assert!(store.read_history("order-2").unwrap().is_empty());
}

#[test]
fn history_truncate_applies_before_appends_in_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = PartitionStore::open(&dir.path().join("s.redb")).unwrap();
    let old: Vec<_> = (0..5u32)
        .map(|s| ("wf".to_string(), s, format!("old{s}").into_bytes()))
        .collect();
    store
        .write_checkpoint(&CheckpointBatch {
            position: 1,
            history_appends: old,
            // A neighbour whose id extends "wf" must not be touched by truncating "wf".
            instance_puts: vec![("wf".into(), b"s".to_vec())],
            ..Default::default()
        })
        .unwrap();
    store
        .write_checkpoint(&CheckpointBatch {
            position: 2,
            history_appends: vec![("wf2".into(), 0, b"other".to_vec())],
            ..Default::default()
        })
        .unwrap();
    // Continue-as-new: reset the history and start over, in one checkpoint.
    store
        .write_checkpoint(&CheckpointBatch {
            position: 3,
            history_truncates: vec!["wf".into()],
            history_appends: vec![
                ("wf".into(), 0, b"new0".to_vec()),
                ("wf".into(), 1, b"new1".to_vec()),
            ],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        store.read_history("wf").unwrap(),
        vec![b"new0".to_vec(), b"new1".to_vec()]
    );
    assert_eq!(store.read_history("wf2").unwrap(), vec![b"other".to_vec()]);
    assert_eq!(store.read_history("w").unwrap(), Vec::<Vec<u8>>::new());
}

#[test]
fn instance_put_and_delete_of_the_same_id_ends_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = PartitionStore::open(&dir.path().join("s.redb")).unwrap();
    store
        .write_checkpoint(&CheckpointBatch {
            position: 1,
            instance_puts: vec![("a".into(), b"1".to_vec())],
            instance_deletes: vec!["a".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(store.get_instance("a").unwrap(), None);
}

#[test]
fn scan_with_prefix_and_start_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = PartitionStore::open(&dir.path().join("s.redb")).unwrap();
    let ids = ["a", "b-1", "b-2", "b-3", "ba", "c", "b"];
    store
        .write_checkpoint(&CheckpointBatch {
            position: 7,
            instance_puts: ids
                .iter()
                .map(|id| (id.to_string(), format!("state of {id}").into_bytes()))
                .collect(),
            ..Default::default()
        })
        .unwrap();

    assert_eq!(
        scan(&store, None, None),
        vec!["a", "b", "b-1", "b-2", "b-3", "ba", "c"]
    );
    assert_eq!(scan(&store, None, Some("b-")), vec!["b-1", "b-2", "b-3"]);
    assert_eq!(scan(&store, Some("b-1"), Some("b-")), vec!["b-2", "b-3"]);
    // start_after before the prefix range: the prefix bound wins.
    assert_eq!(
        scan(&store, Some("a"), Some("b-")),
        vec!["b-1", "b-2", "b-3"]
    );
    // start_after past the prefix range: nothing.
    assert!(scan(&store, Some("b-9"), Some("b-")).is_empty());
    assert_eq!(scan(&store, Some("b-3"), None), vec!["ba", "c"]);
    assert_eq!(
        scan(&store, None, Some("b")),
        vec!["b", "b-1", "b-2", "b-3", "ba"]
    );
    assert!(scan(&store, None, Some("z")).is_empty());

    // Early stop, and the values are passed along.
    let mut seen = Vec::new();
    store
        .scan_instances(None, None, &mut |id, state| {
            seen.push((id.to_string(), state.to_vec()));
            seen.len() < 2
        })
        .unwrap();
    assert_eq!(
        seen,
        vec![
            ("a".to_string(), b"state of a".to_vec()),
            ("b".to_string(), b"state of b".to_vec())
        ]
    );
}

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
