//! Tests of the synchronous segmented log: round trips, retention, recovery of torn tails,
//! and refusal to start on real corruption.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_storage::log::{LogConfig, LogError, SegmentedLog};

fn cfg(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        fsync: false,
        sync_delay: None,
    }
}

/// Payload of record `i`: varying length, content tied to `i`.
fn payload(i: u64) -> Vec<u8> {
    let len = (i * 7 % 53) as usize;
    (0..len)
        .map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8))
        .collect()
}

fn read_all(log: &SegmentedLog, from: u64) -> Vec<(u64, Vec<u8>)> {
    log.read_from(from)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn expected(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
    range.map(|i| (i, payload(i))).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn first_lsn_of(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

fn append_range(log: &mut SegmentedLog, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        assert_eq!(log.append(&payload(i)).unwrap(), i);
    }
}

#[test]
fn empty_log_starts_at_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentedLog::open(dir.path(), cfg(1024)).unwrap();
    assert_eq!(log.next_lsn(), 1);
    assert_eq!(log.first_lsn(), 1);
    assert_eq!(read_all(&log, 1), vec![]);
    assert_eq!(read_all(&log, 0), vec![]);
    assert!(
        segment_files(dir.path()).is_empty(),
        "no file before the first append"
    );
}

#[test]
fn round_trip_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SegmentedLog::open(dir.path(), cfg(256)).unwrap();
    append_range(&mut log, 1..=200);
    log.sync().unwrap();
    assert!(log.segment_count() > 5, "small segments must roll");
    assert_eq!(read_all(&log, 1), expected(1..=200));
    assert_eq!(read_all(&log, 0), expected(1..=200));
    assert_eq!(read_all(&log, 57), expected(57..=200));
    assert_eq!(read_all(&log, 200), expected(200..=200));
    assert_eq!(read_all(&log, 201), vec![]);
    drop(log);

    let files = segment_files(dir.path());
    // File names are the first LSN of each segment, contiguous with the previous one.
    assert_eq!(first_lsn_of(&files[0]), 1);
    for f in &files {
        let bytes = fs::read(f).unwrap();
        assert_eq!(&bytes[..8], b"CAIRNLOG");
        assert_eq!(&bytes[8..12], &1u32.to_le_bytes());
    }

    let mut log = SegmentedLog::open(dir.path(), cfg(256)).unwrap();
    assert_eq!(log.next_lsn(), 201);
    assert_eq!(log.first_lsn(), 1);
    assert_eq!(read_all(&log, 1), expected(1..=200));
    // Reading starting in the middle of every segment works.
    for f in &files {
        let first = first_lsn_of(f);
        assert_eq!(read_all(&log, first), expected(first..=200));
        assert_eq!(read_all(&log, first + 1), expected(first + 1..=200));
    }
    append_range(&mut log, 201..=260);
    log.sync().unwrap();
    drop(log);
    let log = SegmentedLog::open(dir.path(), cfg(256)).unwrap();
    assert_eq!(read_all(&log, 1), expected(1..=260));
}

#[test]
fn reads_include_appends_not_yet_synced() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SegmentedLog::open(dir.path(), cfg(300)).unwrap();
    append_range(&mut log, 1..=3);
    // Nothing written out yet: the segment header and frames are still in the buffer.
    assert_eq!(read_all(&log, 1), expected(1..=3));
    log.sync().unwrap();
    append_range(&mut log, 4..=40);
    assert_eq!(read_all(&log, 2), expected(2..=40));
    // A snapshot does not see later appends.
    let reader = log.read_from(1).unwrap();
    append_range(&mut log, 41..=41);
    assert_eq!(reader.count(), 40);
}

#[test]
fn dropping_writes_out_buffered_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SegmentedLog::open(dir.path(), cfg(1 << 20)).unwrap();
    append_range(&mut log, 1..=10);
    drop(log);
    let log = SegmentedLog::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(read_all(&log, 1), expected(1..=10));
}

#[test]
fn fsync_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 512,
        fsync: true,
        sync_delay: None,
    };
    let mut log = SegmentedLog::open(dir.path(), config.clone()).unwrap();
    append_range(&mut log, 1..=50);
    log.sync().unwrap();
    assert_eq!(log.stats().batches, 1);
    assert_eq!(log.stats().records, 50);
    drop(log);
    let log = SegmentedLog::open(dir.path(), config).unwrap();
    assert_eq!(read_all(&log, 1), expected(1..=50));
}

#[test]
fn truncate_before_deletes_exactly_the_covered_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SegmentedLog::open(dir.path(), cfg(200)).unwrap();
    append_range(&mut log, 1..=150);
    log.sync().unwrap();
    let files = segment_files(dir.path());
    assert!(files.len() >= 5);
    let firsts: Vec<u64> = files.iter().map(|f| first_lsn_of(f)).collect();

    // An LSN inside segment 2 (0-based): segments 0 and 1 hold only smaller LSNs.
    let inside = firsts[2] + 1;
    assert_eq!(log.truncate_before(inside).unwrap(), 2);
    assert_eq!(log.first_lsn(), firsts[2]);
    assert_eq!(segment_files(dir.path()), files[2..].to_vec());
    // The boundary itself: segment 2 holds firsts[2] which is not below firsts[2].
    assert_eq!(log.truncate_before(firsts[2]).unwrap(), 0);
    // Exactly the first LSN of segment 3 covers segment 2.
    assert_eq!(log.truncate_before(firsts[3]).unwrap(), 1);
    assert_eq!(log.first_lsn(), firsts[3]);
    assert_eq!(read_all(&log, firsts[3]), expected(firsts[3]..=150));
    assert_eq!(read_all(&log, 140), expected(140..=150));
    match log.read_from(firsts[3] - 1) {
        Err(LogError::Truncated {
            requested,
            first_lsn,
        }) => {
            assert_eq!((requested, first_lsn), (firsts[3] - 1, firsts[3]));
        }
        other => panic!("expected Truncated, got {other:?}"),
    }

    // Everything covered: all but the active segment go.
    let before = log.segment_count();
    assert_eq!(log.truncate_before(u64::MAX).unwrap(), before - 1);
    assert_eq!(log.segment_count(), 1);
    let last_first = *firsts.last().unwrap();
    assert_eq!(log.first_lsn(), last_first);
    append_range(&mut log, 151..=170);
    log.sync().unwrap();
    drop(log);

    let log = SegmentedLog::open(dir.path(), cfg(200)).unwrap();
    assert_eq!(log.first_lsn(), last_first);
    assert_eq!(log.next_lsn(), 171);
    assert_eq!(read_all(&log, last_first), expected(last_first..=170));
}

#[test]
fn set_next_lsn_after_truncation_continues_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SegmentedLog::open(dir.path(), cfg(200)).unwrap();
    append_range(&mut log, 1..=60);
    log.sync().unwrap();
    log.truncate_before(u64::MAX).unwrap();
    // A checkpoint at 99 covers everything (say the records between were lost with the old log
    // directory): continue at 100.
    match log.set_next_lsn(30) {
        Err(LogError::InvalidNextLsn {
            requested: 30,
            next_lsn: 61,
        }) => {}
        other => panic!("moving backwards over records must fail, got {other:?}"),
    }
    log.set_next_lsn(61).unwrap(); // no-op
    assert_eq!(log.next_lsn(), 61);
    log.set_next_lsn(100).unwrap();
    assert_eq!(log.next_lsn(), 100);
    assert_eq!(log.first_lsn(), 100);
    assert_eq!(
        segment_files(dir.path())
            .iter()
            .map(|f| first_lsn_of(f))
            .collect::<Vec<_>>(),
        vec![100]
    );
    assert_eq!(read_all(&log, 100), vec![]);
    assert!(matches!(log.read_from(99), Err(LogError::Truncated { .. })));
    drop(log);

    // The new position survives a reopen even with no record in it.
    let mut log = SegmentedLog::open(dir.path(), cfg(200)).unwrap();
    assert_eq!(log.next_lsn(), 100);
    assert_eq!(log.first_lsn(), 100);
    // Empty log: any position is allowed, even a lower one.
    log.set_next_lsn(90).unwrap();
    assert_eq!(log.next_lsn(), 90);
    append_range(&mut log, 90..=120);
    log.sync().unwrap();
    drop(log);
    let log = SegmentedLog::open(dir.path(), cfg(200)).unwrap();
    assert_eq!(log.first_lsn(), 90);
    assert_eq!(read_all(&log, 90), expected(90..=120));
}

#[test]
fn set_next_lsn_on_a_fresh_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SegmentedLog::open(dir.path(), cfg(200)).unwrap();
    log.set_next_lsn(42).unwrap();
    drop(log);
    let mut log = SegmentedLog::open(dir.path(), cfg(200)).unwrap();
    assert_eq!(log.next_lsn(), 42);
    assert_eq!(log.append(b"x").unwrap(), 42);
    assert!(matches!(
        log.set_next_lsn(0),
        Err(LogError::InvalidNextLsn { .. })
    ));
}

/// Chops the last segment at every byte offset inside its last record and appends various
/// garbage: the reopened log must keep exactly the complete records and accept new appends.
#[test]
fn torn_tail_is_cut_at_every_offset() {
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0u8; 9],
        vec![0xAB; 40],
        (0..37u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    ];
    let src = tempfile::tempdir().unwrap();
    let n = 30u64;
    {
        let mut log = SegmentedLog::open(src.path(), cfg(400)).unwrap();
        append_range(&mut log, 1..=n);
        // A long last record gives many cut points.
        assert_eq!(log.append(&[7u8; 90]).unwrap(), n + 1);
        log.sync().unwrap();
    }
    let files = segment_files(src.path());
    assert!(
        files.len() > 1,
        "the torn segment should not be the only one"
    );
    let last = files.last().unwrap().clone();
    let original = fs::read(&last).unwrap();
    let last_record_start = original.len() - (16 + 90);

    for cut in last_record_start..original.len() {
        for g in &garbage {
            let dir = tempfile::tempdir().unwrap();
            for f in &files {
                fs::copy(f, dir.path().join(f.file_name().unwrap())).unwrap();
            }
            let torn = dir.path().join(last.file_name().unwrap());
            let mut bytes = original[..cut].to_vec();
            bytes.extend_from_slice(g);
            fs::write(&torn, &bytes).unwrap();

            let mut log = SegmentedLog::open(dir.path(), cfg(400))
                .unwrap_or_else(|e| panic!("cut {cut}, garbage {} bytes: {e}", g.len()));
            assert_eq!(log.next_lsn(), n + 1, "cut {cut}");
            assert_eq!(read_all(&log, 1), expected(1..=n), "cut {cut}");
            assert_eq!(
                fs::metadata(&torn).unwrap().len(),
                last_record_start as u64,
                "the tail is cut back to the last complete record"
            );
            assert_eq!(
                log.torn_tail_bytes(),
                (bytes.len() - last_record_start) as u64,
                "the report says how many bytes were cut (cut {cut})"
            );
            assert_eq!(log.append(b"after").unwrap(), n + 1);
            log.sync().unwrap();
            drop(log);
            let log = SegmentedLog::open(dir.path(), cfg(400)).unwrap();
            assert_eq!(log.torn_tail_bytes(), 0, "a clean reopen cuts nothing");
            let mut want = expected(1..=n);
            want.push((n + 1, b"after".to_vec()));
            assert_eq!(read_all(&log, 1), want);
        }
    }
}

#[test]
fn incomplete_header_of_the_last_segment_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SegmentedLog::open(dir.path(), cfg(100)).unwrap();
        append_range(&mut log, 1..=20);
        log.sync().unwrap();
    }
    let files = segment_files(dir.path());
    let last = files.last().unwrap();
    let last_first = first_lsn_of(last);
    // A crash right after the segment file was created: only part of the header made it.
    fs::write(last, b"CAIRN").unwrap();
    let mut log = SegmentedLog::open(dir.path(), cfg(100)).unwrap();
    assert_eq!(log.next_lsn(), last_first);
    assert_eq!(read_all(&log, 1), expected(1..=last_first - 1));
    append_range(&mut log, last_first..=last_first + 3);
    log.sync().unwrap();
    drop(log);
    let log = SegmentedLog::open(dir.path(), cfg(100)).unwrap();
    assert_eq!(read_all(&log, 1), expected(1..=last_first + 3));
}

#[test]
fn a_never_synced_last_segment_full_of_zeros_is_reset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SegmentedLog::open(dir.path(), cfg(100)).unwrap();
        append_range(&mut log, 1..=20);
        log.sync().unwrap();
    }
    let files = segment_files(dir.path());
    let last = files.last().unwrap();
    let last_first = first_lsn_of(last);
    let len = fs::metadata(last).unwrap().len() as usize;
    // The file's size reached the disk but its data blocks did not.
    for content in [vec![0u8; len], [&b"CAIRN"[..], &vec![0u8; len]].concat()] {
        fs::write(last, &content).unwrap();
        let mut log = SegmentedLog::open(dir.path(), cfg(100)).unwrap();
        assert_eq!(log.next_lsn(), last_first);
        assert_eq!(read_all(&log, 1), expected(1..=last_first - 1));
        append_range(&mut log, last_first..=last_first);
        log.sync().unwrap();
    }
    // Zeros in a segment that is not the last are not a crash artefact.
    fs::write(&files[0], vec![0u8; 64]).unwrap();
    assert!(matches!(
        SegmentedLog::open(dir.path(), cfg(100)),
        Err(LogError::BadHeader { .. })
    ));
}

/// Offsets of each frame in a segment file (from the documented layout).
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offs = Vec::new();
    let mut pos = 12;
    while pos < bytes.len() {
        offs.push(pos);
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 16 + len;
    }
    offs
}

fn expect_corrupt(dir: &Path, want_path: &Path, want_offset: u64) {
    match SegmentedLog::open(dir, cfg(1 << 20)) {
        Err(e @ LogError::Corrupt { .. }) => {
            let msg = e.to_string();
            let LogError::Corrupt { path, offset, .. } = e else {
                unreachable!()
            };
            assert_eq!(path, want_path);
            assert_eq!(offset, want_offset);
            assert!(msg.contains(&want_path.display().to_string()), "{msg}");
            assert!(msg.contains("refusing to start"), "{msg}");
            assert!(
                msg.contains("from backup") && msg.contains("remove the file"),
                "{msg}"
            );
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("expected Corrupt, the log opened"),
    }
}

#[test]
fn checksum_flip_in_a_middle_record_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SegmentedLog::open(dir.path(), cfg(1 << 20)).unwrap();
        for i in 1..=10u64 {
            log.append(&[i as u8; 20]).unwrap();
        }
        log.sync().unwrap();
    }
    let seg = segment_files(dir.path())[0].clone();
    let pristine = fs::read(&seg).unwrap();
    let offs = frame_offsets(&pristine);
    assert_eq!(offs.len(), 10);

    // A payload byte of record 5.
    let mut bytes = pristine.clone();
    bytes[offs[4] + 16 + 3] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    expect_corrupt(dir.path(), &seg, offs[4] as u64);

    // The stored checksum itself.
    let mut bytes = pristine.clone();
    bytes[offs[4] + 5] ^= 0x80;
    fs::write(&seg, &bytes).unwrap();
    expect_corrupt(dir.path(), &seg, offs[4] as u64);

    // The length field: the following frames no longer line up, but they are still valid.
    let mut bytes = pristine.clone();
    bytes[offs[4]] ^= 0x04;
    fs::write(&seg, &bytes).unwrap();
    expect_corrupt(dir.path(), &seg, offs[4] as u64);

    // The file is left as it was: corruption is never "repaired" by cutting.
    assert_eq!(fs::read(&seg).unwrap(), bytes);

    // The same damage in the last record is a torn tail, not corruption.
    let mut bytes = pristine.clone();
    bytes[offs[9] + 16 + 3] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();
    let log = SegmentedLog::open(dir.path(), cfg(1 << 20)).unwrap();
    assert_eq!(log.next_lsn(), 10);
}

#[test]
fn damage_in_a_segment_that_is_not_the_last_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SegmentedLog::open(dir.path(), cfg(200)).unwrap();
        append_range(&mut log, 1..=60);
        log.sync().unwrap();
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let seg = files[1].clone();
    let pristine = fs::read(&seg).unwrap();
    let offs = frame_offsets(&pristine);
    let last_off = *offs.last().unwrap();

    // Even the last record of a sealed segment may not be torn: it was synced before the roll.
    let mut bytes = pristine.clone();
    let n = bytes.len();
    bytes[n - 1] ^= 0xFF;
    fs::write(&seg, &bytes).unwrap();
    expect_corrupt(dir.path(), &seg, last_off as u64);

    // A sealed segment cut short.
    fs::write(&seg, &pristine[..pristine.len() - 3]).unwrap();
    expect_corrupt(dir.path(), &seg, last_off as u64);
    fs::write(&seg, &pristine).unwrap();
    SegmentedLog::open(dir.path(), cfg(200)).unwrap();
}

#[test]
fn a_missing_segment_is_an_lsn_gap() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SegmentedLog::open(dir.path(), cfg(200)).unwrap();
        append_range(&mut log, 1..=60);
        log.sync().unwrap();
    }
    let files = segment_files(dir.path());
    fs::remove_file(&files[1]).unwrap();
    expect_corrupt(dir.path(), &files[2], 0);
}

#[test]
fn a_frame_with_the_wrong_lsn_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SegmentedLog::open(dir.path(), cfg(200)).unwrap();
        append_range(&mut log, 1..=60);
        log.sync().unwrap();
    }
    let files = segment_files(dir.path());
    // A segment renamed so that its name no longer matches its records.
    let renamed = dir.path().join("00000000000000000000.seg");
    fs::rename(&files[0], &renamed).unwrap();
    match SegmentedLog::open(dir.path(), cfg(200)) {
        Err(LogError::Corrupt { path, reason, .. }) => {
            assert_eq!(path, renamed);
            assert!(reason.contains("lsn"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn bad_headers_are_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SegmentedLog::open(dir.path(), cfg(200)).unwrap();
        append_range(&mut log, 1..=60);
        log.sync().unwrap();
    }
    let files = segment_files(dir.path());
    let seg = &files[0];
    let pristine = fs::read(seg).unwrap();

    let mut bytes = pristine.clone();
    bytes[..8].copy_from_slice(b"NOTCAIRN");
    fs::write(seg, &bytes).unwrap();
    match SegmentedLog::open(dir.path(), cfg(200)) {
        Err(e @ LogError::BadHeader { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("magic"), "{msg}");
            assert!(msg.contains(&seg.display().to_string()), "{msg}");
        }
        other => panic!("expected BadHeader, got {other:?}"),
    }

    let mut bytes = pristine.clone();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    fs::write(seg, &bytes).unwrap();
    match SegmentedLog::open(dir.path(), cfg(200)) {
        Err(LogError::BadHeader { path, reason }) => {
            assert_eq!(&path, seg);
            assert!(reason.contains("version 2"), "{reason}");
        }
        other => panic!("expected BadHeader, got {other:?}"),
    }

    // A foreign file that happens to carry a segment's name, even as the last segment.
    fs::write(seg, &pristine).unwrap();
    let foreign = dir.path().join("09999999999999999999.seg");
    fs::write(&foreign, b"hello, this is not a log segment").unwrap();
    match SegmentedLog::open(dir.path(), cfg(200)) {
        Err(LogError::BadHeader { path, .. }) => assert_eq!(path, foreign),
        other => panic!("expected BadHeader, got {other:?}"),
    }
    fs::remove_file(&foreign).unwrap();

    // Files that are not named like segments are left alone.
    fs::write(dir.path().join("NOTES.txt"), b"operator notes").unwrap();
    let log = SegmentedLog::open(dir.path(), cfg(200)).unwrap();
    assert_eq!(log.next_lsn(), 61);
}

#[test]
fn io_error_messages_name_the_path_and_explain_disk_full() {
    let e = LogError::Io {
        path: PathBuf::from("/data/p3/log/00000000000000000001.seg"),
        source: std::io::Error::from_raw_os_error(28),
    };
    let msg = e.to_string();
    assert!(
        msg.contains("/data/p3/log/00000000000000000001.seg"),
        "{msg}"
    );
    assert!(msg.contains("disk full"), "{msg}");
    assert!(msg.contains("acknowledged"), "{msg}");
    assert!(
        msg.contains("stops accepting writes until space is freed"),
        "{msg}"
    );

    let e = LogError::Io {
        path: PathBuf::from("/data/p3/log"),
        source: std::io::Error::from_raw_os_error(13),
    };
    let msg = e.to_string();
    assert!(
        msg.contains("/data/p3/log") && !msg.contains("disk full"),
        "{msg}"
    );

    // A sticky failure carries the original message.
    let failed = LogError::Failed(
        LogError::Io {
            path: PathBuf::from("/x"),
            source: std::io::Error::from_raw_os_error(28),
        }
        .to_string(),
    );
    assert!(failed.to_string().contains("disk full"));
}

#[test]
fn open_fails_cleanly_when_the_directory_cannot_be_created() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, b"x").unwrap();
    match SegmentedLog::open(&file.join("log"), cfg(200)) {
        Err(LogError::Io { path, .. }) => assert_eq!(path, file.join("log")),
        other => panic!("expected Io, got {other:?}"),
    }
}
