//! Model-based property test: random sequences of append / sync / reopen / truncate /
//! set_next_lsn against an in-memory model of what the log must hold.

use std::path::{Path, PathBuf};

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
    /// Process crash (buffered appends are lost), then the unsynced part of the last segment
    /// is cut at a fraction `cut / 255` of its length and `garbage` bytes are appended.
    Crash {
        cut: u8,
        garbage: Garbage,
    },
}

#[derive(Debug, Clone, Copy)]
enum Garbage {
    None,
    Zeros(u8),
    Pattern(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), 0..80).prop_map(Op::Append),
        2 => (1u8..40, any::<u8>()).prop_map(|(n, b)| Op::AppendMany(n, b)),
        3 => Just(Op::Sync),
        2 => Just(Op::Reopen),
        2 => (0u16..120).prop_map(Op::Truncate),
        1 => (0u16..50).prop_map(Op::SetNextLsn),
        2 => (any::<u8>(), prop_oneof![
            Just(Garbage::None),
            (1u8..40).prop_map(Garbage::Zeros),
            (1u8..40).prop_map(Garbage::Pattern),
        ]).prop_map(|(cut, garbage)| Op::Crash { cut, garbage }),
    ]
}

fn last_segment(dir: &Path) -> Option<(PathBuf, u64)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    let last = files.pop()?;
    let len = std::fs::metadata(&last).unwrap().len();
    Some((last, len))
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
        let config = LogConfig { segment_bytes, fsync: false, sync_delay: None };
        let mut log = SegmentedLog::open(dir.path(), config.clone()).unwrap();
        // What the log must return: every retained record, synced or not.
        let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut next = 1u64;
        // Everything up to here was synced and must survive any reopen.
        let mut synced = 0u64;
        // The last segment and its length at the last sync: a crash only damages what follows.
        let mut synced_tail: Option<(PathBuf, u64)> = None;

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
                    synced_tail = last_segment(dir.path());
                }
                Op::Crash { cut, garbage } => {
                    let first_before = log.first_lsn();
                    // A crash: buffered appends never reach the OS.
                    std::mem::forget(log);
                    if let Some((path, len)) = last_segment(dir.path()) {
                        let base = match &synced_tail {
                            Some((p, l)) if *p == path => *l,
                            _ => 0,
                        };
                        let keep = base + (len - base) * u64::from(cut) / 255;
                        let mut bytes = std::fs::read(&path).unwrap();
                        bytes.truncate(keep as usize);
                        match garbage {
                            Garbage::None => {}
                            Garbage::Zeros(n) => bytes.extend(std::iter::repeat_n(0u8, n.into())),
                            // Filesystems expose zeros, not garbage, in a half-written header.
                            Garbage::Pattern(_) if keep < 12 => {}
                            Garbage::Pattern(n) => {
                                bytes.extend((0..n).map(|i| i.wrapping_mul(151).wrapping_add(7)))
                            }
                        }
                        std::fs::write(&path, &bytes).unwrap();
                    }
                    log = SegmentedLog::open(dir.path(), config.clone()).unwrap();
                    prop_assert_eq!(log.first_lsn(), first_before);
                    let got = read_all(&log);
                    prop_assert!(got.len() <= model.len());
                    prop_assert_eq!(&got[..], &model[..got.len()]);
                    prop_assert!(log.next_lsn() > synced, "lost synced records");
                    model.truncate(got.len());
                    next = log.next_lsn();
                    synced = next - 1;
                    synced_tail = last_segment(dir.path());
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
                    synced = next - 1;
                    synced_tail = last_segment(dir.path());
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
                        synced_tail = last_segment(dir.path());
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
