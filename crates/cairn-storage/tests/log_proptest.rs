//! Model-based property test: random sequences of append / sync / reopen / truncate /
//! set_next_lsn against an in-memory model of what the log must hold.

use cairn_storage::log::{LogConfig, SegmentedLog};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    AppendMany(u8, u8),
    Sync,
    Reopen,
    /// Truncate before `first_lsn + n`.
    Truncate(u16),
    /// If the log is empty, continue it `n` LSNs later.
    SetNextLsn(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 0..80).prop_map(Op::Append),
        2 => (1u8..40, any::<u8>()).prop_map(|(n, b)| Op::AppendMany(n, b)),
        3 => Just(Op::Sync),
        2 => Just(Op::Reopen),
        2 => (0u16..120).prop_map(Op::Truncate),
        1 => (0u16..50).prop_map(Op::SetNextLsn),
    ]
}

fn read_all(log: &SegmentedLog) -> Vec<(u64, Vec<u8>)> {
    log.read_from(log.first_lsn())
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn reopened_content_is_all_synced_appends(
        segment_bytes in 40u64..600,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig { segment_bytes, fsync: false };
        let mut log = SegmentedLog::open(dir.path(), config.clone()).unwrap();
        // What the log must return: every retained record, synced or not.
        let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut next = 1u64;
        // Everything up to here was synced and must survive any reopen.
        let mut synced = 0u64;

        for op in ops {
            match op {
                Op::Append(p) => {
                    prop_assert_eq!(log.append(&p).unwrap(), next);
                    model.push((next, p));
                    next += 1;
                }
                Op::AppendMany(n, b) => {
                    for k in 0..n {
                        let p = vec![b.wrapping_add(k); (k as usize * 3) % 50];
                        prop_assert_eq!(log.append(&p).unwrap(), next);
                        model.push((next, p));
                        next += 1;
                    }
                }
                Op::Sync => {
                    log.sync().unwrap();
                    synced = next - 1;
                }
                Op::Reopen => {
                    let first_before = log.first_lsn();
                    drop(log);
                    log = SegmentedLog::open(dir.path(), config.clone()).unwrap();
                    // Truncation is never undone, and never goes further than asked.
                    prop_assert_eq!(log.first_lsn(), first_before);
                    let got = read_all(&log);
                    // A prefix of what was appended, containing at least everything synced.
                    prop_assert!(got.len() <= model.len());
                    prop_assert_eq!(&got[..], &model[..got.len()]);
                    prop_assert!(log.next_lsn() > synced);
                    model.truncate(got.len());
                    next = log.next_lsn();
                }
                Op::Truncate(n) => {
                    let first_before = log.first_lsn();
                    let lsn = first_before + u64::from(n);
                    let before = log.segment_count();
                    let deleted = log.truncate_before(lsn).unwrap();
                    prop_assert_eq!(log.segment_count(), before - deleted);
                    prop_assert!(log.segment_count() >= 1 || model.is_empty());
                    let first = log.first_lsn();
                    prop_assert!(first >= first_before);
                    // Only records below `lsn` may go.
                    prop_assert!(model.iter().filter(|(l, _)| *l < first).all(|(l, _)| *l < lsn));
                    model.retain(|(l, _)| *l >= first);
                    if let Some((l, _)) = model.first() {
                        prop_assert_eq!(*l, first);
                    }
                }
                Op::SetNextLsn(n) => {
                    if model.is_empty() {
                        let lsn = next + u64::from(n);
                        log.set_next_lsn(lsn).unwrap();
                        next = lsn;
                        synced = lsn - 1;
                        prop_assert_eq!(log.next_lsn(), lsn);
                    }
                }
            }
            prop_assert_eq!(log.next_lsn(), next);
            prop_assert_eq!(&read_all(&log), &model);
        }

        log.sync().unwrap();
        drop(log);
        let log = SegmentedLog::open(dir.path(), config).unwrap();
        prop_assert_eq!(log.next_lsn(), next);
        prop_assert_eq!(&read_all(&log), &model);
    }
}
