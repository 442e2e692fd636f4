//! The conformance suites of the storage seams: what every [`PartitionLog`] and every
//! [`CheckpointStore`] must do, checked the same way for each implementation (local files, in
//! memory, JetStream). An implementation's test provides a [`LogHarness`] or a [`StoreHarness`]
//! and calls [`run_all`] or [`run_store_checks`]; each check panics with what broke.

use crate::log::LogError;
use crate::seam::{CheckpointStore, OnDurable, OpenedLog, PartitionLog, StoreReads};
use crate::store::CheckpointBatch;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How the suite gets logs from the implementation under test.
pub trait LogHarness {
    /// A log over fresh, empty storage (forgetting any earlier one).
    fn fresh(&mut self, min_next: u64, on_durable: OnDurable) -> OpenedLog;
    /// The log over the same storage as the last one opened, after that one was closed or
    /// dropped (a restart).
    fn reopen(&mut self, min_next: u64, on_durable: OnDurable) -> OpenedLog;
}

fn ignore() -> OnDurable {
    Box::new(|_| {})
}

fn payloads(range: std::ops::RangeInclusive<u64>) -> Vec<Vec<u8>> {
    range.map(|i| format!("record {i}").into_bytes()).collect()
}

fn expect(log: &dyn PartitionLog, from: u64, range: std::ops::RangeInclusive<u64>) {
    let got = log.read_from(from).expect("read_from");
    let want: Vec<(u64, Vec<u8>)> = range
        .clone()
        .map(|i| (i, format!("record {i}").into_bytes()))
        .collect();
    assert_eq!(got, want, "read_from({from})");
}

/// Runs every check.
pub fn run_all(h: &mut dyn LogHarness) {
    positions_are_contiguous_from_one(h);
    a_stale_expected_position_is_fenced(h);
    durability_is_reported_in_order(h);
    reopening_keeps_every_flushed_record(h);
    truncation_keeps_what_is_not_covered(h);
    min_next_moves_an_empty_log_forward(h);
    empty_and_large_records_round_trip(h);
}

pub fn positions_are_contiguous_from_one(h: &mut dyn LogHarness) {
    let log = h.fresh(1, ignore()).log;
    assert_eq!(log.next_position(), 1);
    assert_eq!(log.append(1, payloads(1..=3)).unwrap(), 3);
    assert_eq!(log.append(4, payloads(4..=4)).unwrap(), 4);
    assert_eq!(log.next_position(), 5);
    expect(&*log, 1, 1..=4);
    expect(&*log, 3, 3..=4);
    assert_eq!(log.read_from(5).unwrap(), vec![]);
    log.close().unwrap();
}

pub fn a_stale_expected_position_is_fenced(h: &mut dyn LogHarness) {
    let log = h.fresh(1, ignore()).log;
    log.append(1, payloads(1..=2)).unwrap();
    for stale in [1, 2, 4, 100] {
        match log.append(stale, payloads(9..=9)) {
            Err(LogError::Fenced { expected, actual }) => {
                assert_eq!((expected, actual), (stale, 3));
            }
            other => panic!("append at {stale} with the tail at 3: {other:?}"),
        }
    }
    // Nothing of the refused appends is in the log.
    assert_eq!(log.next_position(), 3);
    log.flush().unwrap();
    expect(&*log, 1, 1..=2);
    log.close().unwrap();
}

pub fn durability_is_reported_in_order(h: &mut dyn LogHarness) {
    let seen = Arc::new(AtomicU64::new(0));
    let ordered = Arc::new(AtomicU64::new(1));
    let (s, o) = (seen.clone(), ordered.clone());
    let log = h
        .fresh(
            1,
            Box::new(move |p| {
                if p < s.load(Ordering::SeqCst) {
                    o.store(0, Ordering::SeqCst);
                }
                s.store(p, Ordering::SeqCst);
            }),
        )
        .log;
    for i in 1..=50u64 {
        log.append(i, payloads(i..=i)).unwrap();
    }
    assert_eq!(log.flush().unwrap(), 50);
    assert_eq!(log.durable_position(), 50);
    // The callback runs on the writer's side and may trail `flush`'s return by a moment (the
    // seam promises it, not when): wait for it, boundedly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while seen.load(Ordering::SeqCst) < 50 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(seen.load(Ordering::SeqCst), 50, "the callback saw the end");
    assert_eq!(
        ordered.load(Ordering::SeqCst),
        1,
        "durability went backwards"
    );
    log.close().unwrap();
}

pub fn reopening_keeps_every_flushed_record(h: &mut dyn LogHarness) {
    let log = h.fresh(1, ignore()).log;
    log.append(1, payloads(1..=10)).unwrap();
    log.flush().unwrap();
    log.close().unwrap();
    let opened = h.reopen(1, ignore());
    assert_eq!(
        opened.torn_tail_bytes, 0,
        "a clean close leaves no torn tail"
    );
    let log = opened.log;
    assert_eq!(log.next_position(), 11);
    assert_eq!(log.durable_position(), 10);
    expect(&*log, 1, 1..=10);
    log.append(11, payloads(11..=12)).unwrap();
    log.flush().unwrap();
    // Dropped without closing: what was flushed survives.
    drop(log);
    let log = h.reopen(1, ignore()).log;
    expect(&*log, 1, 1..=12);
    log.close().unwrap();
}

pub fn truncation_keeps_what_is_not_covered(h: &mut dyn LogHarness) {
    let log = h.fresh(1, ignore()).log;
    log.append(1, payloads(1..=30)).unwrap();
    log.flush().unwrap();
    log.truncate_below(21).unwrap();
    expect(&*log, 21, 21..=30);
    // Below the truncation point an implementation may still hold records (it drops whole
    // segments, say) or refuse; it never returns a wrong or partial prefix.
    match log.read_from(1) {
        Ok(got) => {
            let first = got.first().map(|(p, _)| *p).unwrap_or(31);
            assert!(
                first <= 21,
                "records at or above the truncation point were dropped"
            );
            let want: Vec<(u64, Vec<u8>)> = (first..=30)
                .map(|i| (i, format!("record {i}").into_bytes()))
                .collect();
            assert_eq!(got, want);
        }
        Err(LogError::Truncated { .. }) => {}
        Err(e) => panic!("reading below a truncation: {e}"),
    }
    log.append(31, payloads(31..=31)).unwrap();
    log.close().unwrap();
    let log = h.reopen(1, ignore()).log;
    expect(&*log, 21, 21..=31);
    log.close().unwrap();
}

pub fn min_next_moves_an_empty_log_forward(h: &mut dyn LogHarness) {
    let log = h.fresh(500, ignore()).log;
    assert_eq!(log.next_position(), 500);
    assert!(matches!(
        log.append(1, payloads(1..=1)),
        Err(LogError::Fenced { .. })
    ));
    log.append(500, payloads(500..=501)).unwrap();
    log.close().unwrap();
    // A min_next below the tail never moves it back.
    let log = h.reopen(10, ignore()).log;
    assert_eq!(log.next_position(), 502);
    expect(&*log, 500, 500..=501);
    log.close().unwrap();
}

pub fn empty_and_large_records_round_trip(h: &mut dyn LogHarness) {
    let log = h.fresh(1, ignore()).log;
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    log.append(1, vec![Vec::new(), big.clone(), vec![0]])
        .unwrap();
    log.close().unwrap();
    let log = h.reopen(1, ignore()).log;
    assert_eq!(
        log.read_from(1).unwrap(),
        vec![(1, Vec::new()), (2, big), (3, vec![0])]
    );
    log.close().unwrap();
}

// ------------------------------------------------------------------ checkpoint stores

/// How the store suite gets stores from the implementation under test.
pub trait StoreHarness {
    /// A store over fresh, empty storage.
    fn fresh(&mut self) -> Arc<dyn CheckpointStore>;
    /// The store over the same storage as the last one, after that one was dropped.
    fn reopen(&mut self) -> Arc<dyn CheckpointStore>;
}

fn scan(store: &dyn StoreReads, after: Option<&str>, prefix: Option<&str>) -> Vec<String> {
    let mut ids = Vec::new();
    store
        .scan_instances(after, prefix, &mut |id, _| {
            ids.push(id.to_string());
            true
        })
        .unwrap();
    ids
}

fn index(store: &dyn StoreReads, prefix: &[u8], below: Option<&[u8]>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    store
        .scan_index_desc(prefix, below, &mut |k, id| {
            out.push((String::from_utf8_lossy(k).into_owned(), id.to_string()));
            true
        })
        .unwrap();
    out
}

fn work(store: &dyn StoreReads, prefix: &[u8], after: Option<&[u8]>) -> Vec<String> {
    let mut keys = Vec::new();
    store
        .scan_work(prefix, after, &mut |k, _| {
            keys.push(String::from_utf8_lossy(k).into_owned());
            true
        })
        .unwrap();
    keys
}

/// Runs every store check.
pub fn run_store_checks(h: &mut dyn StoreHarness) {
    fresh_store_is_empty(h);
    checkpoint_round_trip_and_reopen(h);
    history_truncate_applies_before_appends_in_one_batch(h);
    instance_put_and_delete_of_the_same_id_ends_deleted(h);
    scan_with_prefix_and_start_after(h);
    a_snapshot_is_unchanged_by_later_checkpoints(h);
    index_scans_run_newest_first_within_a_prefix(h);
    work_scans_run_in_key_order_from_a_cursor(h);
}

pub fn fresh_store_is_empty(h: &mut dyn StoreHarness) {
    let store = h.fresh();
    assert_eq!(store.checkpoint_position().unwrap(), 0);
    assert_eq!(store.load_globals().unwrap(), None);
    assert_eq!(store.get_instance("a").unwrap(), None);
    assert_eq!(store.read_history("a").unwrap(), Vec::<Vec<u8>>::new());
    assert_eq!(store.instance_count().unwrap(), 0);
    assert!(scan(&*store, None, None).is_empty());
}

pub fn checkpoint_round_trip_and_reopen(h: &mut dyn StoreHarness) {
    {
        let store = h.fresh();
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
                index_keys: vec![
                    (
                        "order-1".into(),
                        vec![b"s1-order-1".to_vec(), b"all-1".to_vec()],
                    ),
                    (
                        "order-2".into(),
                        vec![b"s1-order-2".to_vec(), b"all-2".to_vec()],
                    ),
                ],
                work_puts: vec![
                    (b"a1".to_vec(), b"item-1".to_vec()),
                    (b"a2".to_vec(), b"item-2".to_vec()),
                ],
                work_deletes: vec![],
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
                index_keys: vec![(
                    "order-1".into(),
                    vec![b"s2-order-1".to_vec(), b"all-1".to_vec()],
                )],
                work_puts: vec![(b"a3".to_vec(), b"item-3".to_vec())],
                work_deletes: vec![b"a1".to_vec()],
            })
            .unwrap();
    }
    let store = h.reopen();
    assert_eq!(store.checkpoint_position().unwrap(), 50);
    assert_eq!(store.get_work(b"a1").unwrap(), None);
    assert_eq!(store.get_work(b"a2").unwrap(), Some(b"item-2".to_vec()));
    assert_eq!(work(&*store, b"a", None), ["a2", "a3"]);
    // Order-1 is filed under its new keys only; deleted order-2 under none.
    assert_eq!(
        index(&*store, b"", None),
        [
            ("s2-order-1".to_string(), "order-1".to_string()),
            ("all-1".to_string(), "order-1".to_string())
        ]
    );
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

pub fn history_truncate_applies_before_appends_in_one_batch(h: &mut dyn StoreHarness) {
    let store = h.fresh();
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

pub fn instance_put_and_delete_of_the_same_id_ends_deleted(h: &mut dyn StoreHarness) {
    let store = h.fresh();
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

pub fn scan_with_prefix_and_start_after(h: &mut dyn StoreHarness) {
    let store = h.fresh();
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
        scan(&*store, None, None),
        vec!["a", "b", "b-1", "b-2", "b-3", "ba", "c"]
    );
    assert_eq!(scan(&*store, None, Some("b-")), vec!["b-1", "b-2", "b-3"]);
    assert_eq!(scan(&*store, Some("b-1"), Some("b-")), vec!["b-2", "b-3"]);
    // start_after before the prefix range: the prefix bound wins.
    assert_eq!(
        scan(&*store, Some("a"), Some("b-")),
        vec!["b-1", "b-2", "b-3"]
    );
    // start_after past the prefix range: nothing.
    assert!(scan(&*store, Some("b-9"), Some("b-")).is_empty());
    assert_eq!(scan(&*store, Some("b-3"), None), vec!["ba", "c"]);
    assert_eq!(
        scan(&*store, None, Some("b")),
        vec!["b", "b-1", "b-2", "b-3", "ba"]
    );
    assert!(scan(&*store, None, Some("z")).is_empty());

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

pub fn a_snapshot_is_unchanged_by_later_checkpoints(h: &mut dyn StoreHarness) {
    let store = h.fresh();
    store
        .write_checkpoint(&CheckpointBatch {
            position: 5,
            globals: b"g5".to_vec(),
            instance_puts: vec![
                ("a".into(), b"a at 5".to_vec()),
                ("b".into(), b"b at 5".to_vec()),
            ],
            history_appends: vec![("a".into(), 0, b"a0".to_vec())],
            ..Default::default()
        })
        .unwrap();
    let snapshot = store.snapshot().expect("snapshot");
    store
        .write_checkpoint(&CheckpointBatch {
            position: 9,
            globals: b"g9".to_vec(),
            instance_puts: vec![
                ("a".into(), b"a at 9".to_vec()),
                ("c".into(), b"c at 9".to_vec()),
            ],
            instance_deletes: vec!["b".into()],
            history_truncates: vec!["a".into()],
            history_appends: vec![("a".into(), 0, b"new a0".to_vec())],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(snapshot.checkpoint_position().unwrap(), 5);
    assert_eq!(snapshot.load_globals().unwrap(), Some(b"g5".to_vec()));
    assert_eq!(
        snapshot.get_instance("a").unwrap(),
        Some(b"a at 5".to_vec())
    );
    assert_eq!(
        snapshot.get_instance("b").unwrap(),
        Some(b"b at 5".to_vec())
    );
    assert_eq!(snapshot.get_instance("c").unwrap(), None);
    assert_eq!(snapshot.read_history("a").unwrap(), vec![b"a0".to_vec()]);
    assert_eq!(scan(&*snapshot, None, None), ["a", "b"]);
    assert_eq!(snapshot.instance_count().unwrap(), 2);
    // The store itself moved on.
    assert_eq!(store.checkpoint_position().unwrap(), 9);
    assert_eq!(scan(&*store, None, None), ["a", "c"]);
    assert_eq!(store.read_history("a").unwrap(), vec![b"new a0".to_vec()]);
}

pub fn index_scans_run_newest_first_within_a_prefix(h: &mut dyn StoreHarness) {
    let store = h.fresh();
    let keys = |id: &str, keys: &[&[u8]]| -> (String, Vec<Vec<u8>>) {
        (id.to_string(), keys.iter().map(|k| k.to_vec()).collect())
    };
    store
        .write_checkpoint(&CheckpointBatch {
            position: 1,
            instance_puts: ["a", "b", "c", "d"]
                .iter()
                .map(|id| (id.to_string(), b"x".to_vec()))
                .collect(),
            index_keys: vec![
                keys("a", &[b"r1a", b"xa"]),
                keys("b", &[b"r3b", b"xb"]),
                keys("c", &[b"r2c", b"xc"]),
                keys("d", &[b"q9d", b"r\xffd"]),
            ],
            ..Default::default()
        })
        .unwrap();
    let ids = |prefix: &str, below: Option<&str>| -> Vec<String> {
        index(&*store, prefix.as_bytes(), below.map(str::as_bytes))
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    };
    assert_eq!(ids("r", None), ["d", "b", "c", "a"]);
    assert_eq!(ids("r", Some("r3b")), ["c", "a"]);
    assert_eq!(ids("r", Some("r2")), ["a"]);
    assert_eq!(ids("r2", None), ["c"]);
    assert_eq!(ids("x", Some("xc")), ["b", "a"]);
    assert_eq!(ids("s", None), Vec::<String>::new());
    // An early stop stops.
    let mut seen = 0;
    store
        .scan_index_desc(b"r", None, &mut |_, _| {
            seen += 1;
            seen < 2
        })
        .unwrap();
    assert_eq!(seen, 2);
    // A put replaces all of an instance's keys, a delete drops them.
    store
        .write_checkpoint(&CheckpointBatch {
            position: 2,
            instance_puts: vec![("a".into(), b"y".to_vec())],
            index_keys: vec![keys("a", &[b"r4a"])],
            instance_deletes: vec!["b".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ids("r", None), ["d", "a", "c"]);
    assert_eq!(ids("x", None), ["c"]);
}

pub fn work_scans_run_in_key_order_from_a_cursor(h: &mut dyn StoreHarness) {
    let store = h.fresh();
    assert_eq!(store.get_work(b"a1").unwrap(), None);
    store
        .write_checkpoint(&CheckpointBatch {
            position: 1,
            work_puts: ["n-b-2", "n-a-3", "n-a-1", "n-a-2", "i-x-1", "nz"]
                .iter()
                .map(|k| (k.as_bytes().to_vec(), k.as_bytes().to_vec()))
                .collect(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(work(&*store, b"n-a-", None), ["n-a-1", "n-a-2", "n-a-3"]);
    assert_eq!(work(&*store, b"n-a-", Some(b"n-a-1")), ["n-a-2", "n-a-3"]);
    // A cursor before the prefix starts at the prefix; one past it finds nothing.
    assert_eq!(work(&*store, b"n-b-", Some(b"n-a-3")), ["n-b-2"]);
    assert_eq!(work(&*store, b"n-a-", Some(b"n-z")), Vec::<String>::new());
    let mut seen = 0;
    store
        .scan_work(b"n", None, &mut |_, _| {
            seen += 1;
            seen < 2
        })
        .unwrap();
    assert_eq!(seen, 2, "an early stop stops");
    // A put replaces, a delete removes; the rest stay.
    store
        .write_checkpoint(&CheckpointBatch {
            position: 2,
            work_puts: vec![(b"n-a-2".to_vec(), b"again".to_vec())],
            work_deletes: vec![b"n-a-1".to_vec(), b"missing".to_vec()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(store.get_work(b"n-a-2").unwrap(), Some(b"again".to_vec()));
    assert_eq!(work(&*store, b"n-a-", None), ["n-a-2", "n-a-3"]);
    assert_eq!(work(&*store, b"i-", None), ["i-x-1"]);
}
