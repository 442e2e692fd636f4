//! Tests of the group-commit writer: LSN assignment under concurrency, batching (few syncs for
//! many appends), durability notifications, truncation through the writer, sticky failure.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use cairn_storage::log::{GroupCommitLog, LogConfig, LogError, SegmentedLog};

fn open(dir: &std::path::Path, segment_bytes: u64, fsync: bool) -> SegmentedLog {
    SegmentedLog::open(
        dir,
        LogConfig {
            segment_bytes,
            fsync,
            sync_delay: None,
        },
    )
    .unwrap()
}

fn read_all(log: &SegmentedLog) -> Vec<(u64, Vec<u8>)> {
    log.read_from(0)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn handles_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<GroupCommitLog>();
    assert_send_sync::<cairn_storage::log::DurableWatch>();
    assert_send::<SegmentedLog>();
    assert_send::<cairn_storage::log::LogReader>();
}

#[test]
fn unsynced_appends_are_synced_before_being_reported_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 1 << 20, true);
    log.append(b"a").unwrap();
    log.append(b"b").unwrap();
    let gc = GroupCommitLog::start(log);
    assert_eq!(gc.durable_lsn(), 2);
    assert_eq!(gc.stats().batches, 0, "only group batches are counted here");
    gc.append(b"c".to_vec()).unwrap();
    gc.flush_blocking().unwrap();
    assert_eq!(gc.stats().batches, 1);
    assert_eq!(gc.stats().records, 1);
    gc.shutdown().unwrap();
    let log = open(dir.path(), 1 << 20, true);
    assert_eq!(read_all(&log).len(), 3);
}

#[test]
fn concurrent_appends_get_contiguous_lsns_and_share_syncs() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let gc = Arc::new(GroupCommitLog::start(open(dir.path(), 64 * 1024, true)));
    assert_eq!(gc.durable_lsn(), 0);
    assert_eq!(gc.next_lsn(), 1);

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let gc = Arc::clone(&gc);
            std::thread::spawn(move || {
                let mut mine = Vec::with_capacity(PER_THREAD as usize);
                for i in 0..PER_THREAD {
                    let payload = format!("t{t}-r{i}").into_bytes();
                    let lsn = gc.append(payload.clone()).unwrap();
                    mine.push((lsn, payload));
                }
                mine
            })
        })
        .collect();
    let mut by_lsn = BTreeMap::new();
    for h in handles {
        let mine = h.join().unwrap();
        // Each thread sees its own LSNs increasing.
        assert!(mine.windows(2).all(|w| w[0].0 < w[1].0));
        for (lsn, p) in mine {
            assert!(by_lsn.insert(lsn, p).is_none(), "lsn {lsn} given out twice");
        }
    }
    let total = THREADS * PER_THREAD;
    assert_eq!(
        by_lsn.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );

    assert_eq!(gc.flush_blocking().unwrap(), total);
    assert_eq!(gc.durable_lsn(), total);
    let stats = gc.stats();
    assert_eq!(stats.records, total);
    assert!(stats.bytes > 0);
    eprintln!(
        "{} records in {} batches ({:.1} records per sync)",
        stats.records,
        stats.batches,
        stats.records as f64 / stats.batches as f64
    );
    assert!(
        stats.batches * 4 <= stats.records,
        "group commit should share syncs: {stats:?}"
    );

    let gc = Arc::into_inner(gc).unwrap();
    gc.shutdown().unwrap();
    let log = open(dir.path(), 64 * 1024, true);
    let got = read_all(&log);
    assert_eq!(got.len() as u64, total);
    for (lsn, payload) in got {
        assert_eq!(by_lsn[&lsn], payload, "lsn {lsn}");
    }
}

#[test]
fn one_append_batch_is_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    let gc = GroupCommitLog::start(open(dir.path(), 1 << 20, true));
    let payloads: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_le_bytes().to_vec()).collect();
    assert_eq!(gc.append_batch(payloads).unwrap(), 1000);
    assert_eq!(gc.append_batch(Vec::new()).unwrap(), 1000);
    assert_eq!(gc.flush_blocking().unwrap(), 1000);
    assert_eq!(gc.stats().batches, 1);
    assert_eq!(gc.stats().records, 1000);
    assert_eq!(gc.append(b"x".to_vec()).unwrap(), 1001);
    gc.shutdown().unwrap();
    let log = open(dir.path(), 1 << 20, true);
    let got = read_all(&log);
    assert_eq!(got.len(), 1001);
    assert_eq!(got[999], (1000, 999u32.to_le_bytes().to_vec()));
    assert_eq!(got[1000], (1001, b"x".to_vec()));
}

#[test]
fn notify_reports_each_durable_batch_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel();
    let gc = GroupCommitLog::start_with_notify(
        open(dir.path(), 4096, false),
        Box::new(move |lsn| {
            let _ = tx.send(lsn);
        }),
    );
    let watch = gc.subscribe();
    let waiter = {
        let watch = watch.clone();
        std::thread::spawn(move || watch.wait_for(500))
    };
    let mut last = 0;
    for i in 0..500u32 {
        last = gc.append(i.to_le_bytes().to_vec()).unwrap();
    }
    assert_eq!(last, 500);
    waiter.join().unwrap().unwrap();
    assert!(watch.current().unwrap() >= 500);
    assert!(watch
        .wait_for_timeout(500, Duration::from_millis(1))
        .unwrap());
    // Nothing will ever append 501 here.
    assert!(!watch
        .wait_for_timeout(501, Duration::from_millis(20))
        .unwrap());
    gc.shutdown().unwrap();

    let seen: Vec<u64> = rx.iter().collect();
    assert!(!seen.is_empty());
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(*seen.last().unwrap(), 500);
    // After shutdown, waiting for more is an error, not a hang.
    assert!(matches!(watch.wait_for(501), Err(LogError::Closed)));
}

#[test]
fn starting_on_an_existing_log_continues_its_lsns() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = open(dir.path(), 1 << 20, false);
        for _ in 0..10 {
            log.append(b"old").unwrap();
        }
        log.sync().unwrap();
    }
    let gc = GroupCommitLog::start(open(dir.path(), 1 << 20, false));
    assert_eq!(gc.durable_lsn(), 10);
    assert_eq!(gc.subscribe().current().unwrap(), 10);
    assert_eq!(gc.next_lsn(), 11);
    assert_eq!(gc.append(b"new".to_vec()).unwrap(), 11);
    // Dropping without shutdown still writes everything out.
    drop(gc);
    let log = open(dir.path(), 1 << 20, false);
    assert_eq!(log.next_lsn(), 12);
    assert_eq!(read_all(&log)[10], (11, b"new".to_vec()));
}

#[test]
fn truncate_before_runs_on_the_writer_thread() {
    let dir = tempfile::tempdir().unwrap();
    let gc = GroupCommitLog::start(open(dir.path(), 256, false));
    for i in 0..300u32 {
        gc.append(vec![i as u8; 20]).unwrap();
    }
    gc.flush_blocking().unwrap();
    let deleted = gc.truncate_before(150).unwrap();
    assert!(deleted > 0);
    // Appends keep working, and a second truncation finds nothing more below 150.
    gc.append(b"later".to_vec()).unwrap();
    assert_eq!(gc.truncate_before(150).unwrap(), 0);
    gc.shutdown().unwrap();
    let log = open(dir.path(), 256, false);
    assert!(log.first_lsn() <= 150 && log.first_lsn() > 1);
    let got = log
        .read_from(log.first_lsn())
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(got.last().unwrap(), &(301, b"later".to_vec()));
    assert_eq!(got.len() as u64, 302 - log.first_lsn());
}

#[test]
fn an_io_error_makes_the_writer_fail_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let (tx, rx) = mpsc::channel();
    // Tiny segments: every batch rolls to a new segment file.
    let gc = GroupCommitLog::start_with_notify(
        open(&log_dir, 1, false),
        Box::new(move |lsn| {
            let _ = tx.send(lsn);
        }),
    );
    gc.append(b"one".to_vec()).unwrap();
    assert_eq!(gc.flush_blocking().unwrap(), 1);
    assert_eq!(gc.failure(), None);

    // Creating the next segment now fails.
    std::fs::remove_dir_all(&log_dir).unwrap();
    let lsn = gc.append(b"two".to_vec()).unwrap();
    assert_eq!(lsn, 2);
    let watch = gc.subscribe();
    match gc.flush_blocking() {
        Err(LogError::Failed(msg)) => assert!(msg.contains("log"), "{msg}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    let msg = gc.failure().expect("the failure is sticky");
    assert!(msg.contains(&log_dir.display().to_string()), "{msg}");
    assert!(matches!(
        gc.append(b"three".to_vec()),
        Err(LogError::Failed(_))
    ));
    assert!(matches!(
        gc.append_batch(vec![vec![1]]),
        Err(LogError::Failed(_))
    ));
    assert!(matches!(gc.truncate_before(10), Err(LogError::Failed(_))));
    assert!(matches!(watch.current(), Err(LogError::Failed(_))));
    assert!(matches!(watch.wait_for(2), Err(LogError::Failed(_))));
    // What was durable stays durable.
    assert!(watch.wait_for(1).is_ok());
    assert_eq!(gc.durable_lsn(), 1);
    assert!(matches!(gc.shutdown(), Err(LogError::Failed(_))));
    // The closure heard about lsn 1 only, never about the lost record.
    assert_eq!(rx.iter().collect::<Vec<_>>(), vec![1]);
}

/// Throughput smoke check (run with `--ignored --nocapture`, ideally `--release`).
#[test]
#[ignore]
fn throughput() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let gc = Arc::new(GroupCommitLog::start(open(dir.path(), 64 << 20, true)));
    let start = std::time::Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let gc = Arc::clone(&gc);
            std::thread::spawn(move || {
                for _ in 0..PER_THREAD {
                    gc.append(vec![42u8; 100]).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    gc.flush_blocking().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let stats = gc.stats();
    eprintln!(
        "{} records in {secs:.2}s = {:.0} records/s, {} syncs",
        stats.records,
        stats.records as f64 / secs,
        stats.batches
    );
}
