//! The conformance suite of [`PartitionLog`]: what every implementation must do, checked the
//! same way for each (local files, in memory, JetStream). An implementation's test module
//! provides a [`LogHarness`] and calls [`run_all`]; each check panics with what broke.

use crate::log::LogError;
use crate::seam::{OnDurable, OpenedLog, PartitionLog};
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
