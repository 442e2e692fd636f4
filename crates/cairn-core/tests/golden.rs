//! Golden files of Cairn's on-disk encodings: log records, and the checkpoint's globals,
//! instance states and history events.
//!
//! `tests/golden/format-v<LOG_FORMAT_VERSION>.txt` holds, one per line, a label and the hex of
//! an encoded value, written by this test from fixed samples. Every run checks that
//!
//! * each sample log record still encodes to exactly the bytes on file, and those bytes decode
//!   back to the sample: the log's format did not move;
//! * each checkpoint value on file (produced by the state machine from those records when the
//!   file was written) still decodes with today's types and re-encodes to the same bytes, so a
//!   checkpoint written by this format version stays readable, whatever the state machine's
//!   behaviour since.
//!
//! A change that fails this is a change of the on-disk format: bump `LOG_FORMAT_VERSION` (old
//! hubs are then refused with a clear message instead of misread), and write the new file with
//! `CAIRN_BLESS=1 cargo test -p cairn-core --test golden`.

use cairn_core::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("format-v{LOG_FORMAT_VERSION}.txt"))
}

fn record(timestamp: Millis, event: PartitionEvent) -> LogRecord {
    LogRecord { timestamp, event }
}

fn client(request_id: u64, kind: ClientRequestKind) -> PartitionEvent {
    PartitionEvent::Client(ClientRequest { request_id, kind })
}

fn failure() -> FailureDetails {
    FailureDetails {
        error_type: "ValueError".into(),
        message: "bad input".into(),
        details: Some("at line 3".into()),
        inner: Some(Box::new(FailureDetails::new("Inner", "cause"))),
        retriable: true,
    }
}

fn parent() -> ParentInstance {
    ParentInstance {
        instance_id: "order-1".into(),
        execution_id: "e1".into(),
        name: "chain".into(),
        task_id: 2,
    }
}

fn operation(request_id: &str) -> EntityOperation {
    EntityOperation {
        request_id: request_id.into(),
        operation: "add".into(),
        input: Some("5".into()),
        caller: Some(EntityCaller {
            instance_id: "order-1".into(),
            execution_id: "e1".into(),
            task_id: 3,
        }),
        scheduled_time: Some(1_700_000_000_500),
        sender: Some("order-1".into()),
        kind: EntityRequestKind::Operation,
    }
}

/// Fixed samples covering every kind of log record and the variants inside them.
fn sample_records() -> Vec<(&'static str, LogRecord)> {
    let t = 1_700_000_000_000;
    let start = StartRequest {
        instance_id: "order-1".into(),
        name: "chain".into(),
        version: Some("2".into()),
        input: Some("1".into()),
        scheduled_start: None,
        tags: BTreeMap::from([("team".to_string(), "a".to_string())]),
        execution_id: "e1".into(),
        if_exists: ExistingPolicy::ReplaceIf(vec![RuntimeStatus::Completed]),
    };
    let episode = EpisodeResult {
        instance_id: "order-1".into(),
        execution_id: "e1".into(),
        history_len: 0,
        consumed: 1,
        started_at: t + 10,
        actions: vec![
            Action::ScheduleTask {
                id: 0,
                name: "greet".into(),
                version: None,
                input: Some("\"x\"".into()),
            },
            Action::CreateTimer {
                id: 1,
                fire_at: t + 60_000,
            },
            Action::CreateSubOrchestration {
                id: 2,
                instance_id: "order-1-child".into(),
                name: "child".into(),
                version: None,
                input: None,
                execution_id: "e2".into(),
            },
            Action::CallEntity {
                id: 3,
                entity_id: "@counter@k".into(),
                operation: "add".into(),
                input: Some("5".into()),
                request_id: "r1".into(),
            },
            Action::SendEvent {
                id: 4,
                instance_id: "other".into(),
                name: "ping".into(),
                input: None,
            },
            Action::SignalEntity {
                id: 5,
                entity_id: "@counter@k".into(),
                operation: "reset".into(),
                input: None,
                scheduled_time: Some(t + 5),
                request_id: "r2".into(),
            },
            Action::LockEntities {
                id: 6,
                critical_section: "cs1".into(),
                lock_set: vec!["@counter@k".into()],
            },
            Action::UnlockEntities {
                id: 7,
                critical_section: "cs1".into(),
                lock_set: vec!["@counter@k".into()],
            },
        ],
        custom_status: Some("\"step 1\"".into()),
    };
    let finish = EpisodeResult {
        instance_id: "order-2".into(),
        execution_id: "e3".into(),
        history_len: 0,
        consumed: 1,
        started_at: t + 20,
        actions: vec![Action::Complete(Completion::Failed { failure: failure() })],
        custom_status: None,
    };
    let messages = vec![
        (
            MessageId {
                position: 7,
                index: 0,
            },
            Message::StartSubOrchestration {
                parent: parent(),
                instance_id: "order-1-child".into(),
                name: "child".into(),
                version: None,
                input: Some("{}".into()),
                execution_id: "e2".into(),
            },
        ),
        (
            MessageId {
                position: 7,
                index: 1,
            },
            Message::SubOrchestrationCompleted {
                parent_instance_id: "order-9".into(),
                parent_execution_id: "e9".into(),
                task_id: 1,
                result: Err(failure()),
            },
        ),
        (
            MessageId {
                position: 8,
                index: 0,
            },
            Message::RaiseEvent {
                instance_id: "order-1".into(),
                name: "approval".into(),
                input: Some("\"alice\"".into()),
            },
        ),
        (
            MessageId {
                position: 8,
                index: 1,
            },
            Message::Terminate {
                instance_id: "order-3".into(),
                reason: Some("\"stop\"".into()),
                recursive: true,
            },
        ),
        (
            MessageId {
                position: 8,
                index: 2,
            },
            Message::Rewind {
                instance_id: "order-4".into(),
                reason: None,
                parent: parent(),
            },
        ),
        (
            MessageId {
                position: 8,
                index: 3,
            },
            Message::EntityOperation {
                entity_id: "@counter@k".into(),
                operation: EntityOperation {
                    kind: EntityRequestKind::Lock {
                        critical_section: "cs1".into(),
                        lock_set: vec!["@counter@k".into()],
                        position: 0,
                    },
                    ..operation("r3")
                },
            },
        ),
        (
            MessageId {
                position: 8,
                index: 4,
            },
            Message::StartOrchestration(StartRequest::sub_orchestration(
                "started-by-entity".into(),
                "chain".into(),
                None,
                None,
                "e5".into(),
            )),
        ),
        (
            MessageId {
                position: 8,
                index: 5,
            },
            Message::EntityLockGranted {
                instance_id: "order-1".into(),
                execution_id: "e1".into(),
                task_id: 6,
                critical_section: "cs1".into(),
            },
        ),
        (
            MessageId {
                position: 8,
                index: 6,
            },
            Message::EntityResult {
                instance_id: "order-1".into(),
                execution_id: "e1".into(),
                task_id: 3,
                request_id: "r1".into(),
                result: Ok(Some("5".into())),
            },
        ),
        (
            MessageId {
                position: 9,
                index: 0,
            },
            Message::RewindSubOrchestration {
                instance_id: "order-5-child".into(),
                reason: Some("fixed".into()),
                parent: parent(),
                name: "child".into(),
                version: Some("1".into()),
                input: Some("7".into()),
                execution_id: "e6".into(),
            },
        ),
    ];
    vec![
        (
            "start",
            record(t, client(1, ClientRequestKind::Start(start))),
        ),
        (
            "start-order-2",
            record(
                t,
                client(
                    2,
                    ClientRequestKind::Start(StartRequest {
                        instance_id: "order-2".into(),
                        name: "fails".into(),
                        version: None,
                        input: None,
                        scheduled_start: Some(t + 1),
                        tags: BTreeMap::new(),
                        execution_id: "e3".into(),
                        if_exists: ExistingPolicy::Fail,
                    }),
                ),
            ),
        ),
        (
            "episode",
            record(t + 11, PartitionEvent::EpisodeCompleted(episode)),
        ),
        (
            "episode-fails",
            record(t + 21, PartitionEvent::EpisodeCompleted(finish)),
        ),
        (
            "activity",
            record(
                t + 30,
                PartitionEvent::ActivityCompleted {
                    activity_id: 1,
                    result: Ok(Some("\"hi\"".into())),
                },
            ),
        ),
        (
            "activity-failed",
            record(
                t + 31,
                PartitionEvent::ActivityCompleted {
                    activity_id: 99,
                    result: Err(failure()),
                },
            ),
        ),
        (
            "timer",
            record(t + 60_000, PartitionEvent::TimerFired { timer_id: 1 }),
        ),
        (
            "messages",
            record(
                t + 40,
                PartitionEvent::Messages {
                    from: 3,
                    batch: messages,
                },
            ),
        ),
        (
            "entity-batch",
            record(
                t + 50,
                PartitionEvent::EntityBatchCompleted(EntityBatchResult {
                    entity_id: "@counter@k".into(),
                    processed: vec!["r1".into()],
                    state: Some("5".into()),
                    results: vec![Ok(Some("5".into()))],
                    actions: vec![],
                }),
            ),
        ),
        (
            "outbox-ack",
            record(
                t + 60,
                PartitionEvent::OutboxAck {
                    to: 2,
                    up_to: MessageId {
                        position: 12,
                        index: 3,
                    },
                },
            ),
        ),
        (
            "raise",
            record(
                t + 70,
                client(
                    3,
                    ClientRequestKind::RaiseEvent {
                        instance_id: "order-1".into(),
                        name: "approval".into(),
                        input: Some("\"bob\"".into()),
                    },
                ),
            ),
        ),
        (
            "suspend",
            record(
                t + 71,
                client(
                    4,
                    ClientRequestKind::Suspend {
                        instance_id: "order-1".into(),
                        reason: Some("pause".into()),
                    },
                ),
            ),
        ),
        (
            "resume",
            record(
                t + 72,
                client(
                    5,
                    ClientRequestKind::Resume {
                        instance_id: "order-1".into(),
                        reason: None,
                    },
                ),
            ),
        ),
        (
            "signal",
            record(
                t + 73,
                client(
                    6,
                    ClientRequestKind::SignalEntity {
                        entity_id: "@counter@k".into(),
                        operation: operation("r4"),
                    },
                ),
            ),
        ),
        (
            "rewind",
            record(
                t + 74,
                client(
                    7,
                    ClientRequestKind::Rewind {
                        instance_id: "order-2".into(),
                        reason: Some("fixed".into()),
                    },
                ),
            ),
        ),
        (
            "terminate",
            record(
                t + 75,
                client(
                    8,
                    ClientRequestKind::Terminate {
                        instance_id: "order-1".into(),
                        reason: Some("\"done\"".into()),
                        recursive: true,
                    },
                ),
            ),
        ),
        (
            "purge",
            record(
                t + 76,
                client(
                    9,
                    ClientRequestKind::Purge {
                        instance_ids: vec!["order-2".into(), "missing".into()],
                    },
                ),
            ),
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex in the golden file"))
        .collect()
}

/// The file's content for today's code: the records, then what the state machine checkpoints
/// after applying them all.
/// A store with nothing but queued work in it.
struct WorkOnly(BTreeMap<Vec<u8>, Vec<u8>>);

impl InstanceSource for WorkOnly {
    fn load(&self, _: &str) -> Result<Option<InstanceState>, SourceError> {
        Ok(None)
    }
    fn load_history(&self, _: &str) -> Result<Vec<HistoryEvent>, SourceError> {
        Ok(Vec::new())
    }
    fn load_activity(&self, id: u64) -> Result<Option<ActivityWorkItem>, SourceError> {
        Ok(self
            .0
            .get(&cairn_core::work::activity_key(id))
            .map(|b| postcard::from_bytes(b).expect("work items decode")))
    }
    fn activities_of(&self, _: &str) -> Result<Vec<(u64, ActivityWorkItem)>, SourceError> {
        Ok(Vec::new())
    }
    fn load_timer(&self, id: u64) -> Result<Option<TimerEntry>, SourceError> {
        Ok(self
            .0
            .get(&cairn_core::work::timer_key(id))
            .map(|b| postcard::from_bytes(b).expect("timers decode")))
    }
    fn timers_of(&self, _: &str) -> Result<Vec<(u64, TimerEntry)>, SourceError> {
        Ok(Vec::new())
    }
}

fn render() -> String {
    let mut out = format!(
        "# Cairn on-disk format v{LOG_FORMAT_VERSION}: label, then hex. Written by \
         crates/cairn-core/tests/golden.rs (CAIRN_BLESS=1); never edit by hand.\n"
    );
    let mut state = PartitionState::new(0, 4);
    let records = sample_records();
    let mut checkpoints: Vec<CheckpointData> = Vec::new();
    for (i, (label, r)) in records.iter().enumerate() {
        let bytes = r.encode().expect("samples encode");
        let _ = writeln!(out, "record {label} {}", hex(&bytes));
        // What the checkpoints filed as work is all the state reads back from the store (its
        // instances stay in memory).
        let filed = WorkOnly(
            checkpoints
                .iter()
                .flat_map(|c| c.work_puts.clone())
                .collect(),
        );
        state
            .apply(i as u64 + 1, r, &filed)
            .expect("the samples apply");
        // A checkpoint while an activity is queued files it in the store's work table.
        if *label == "episode" {
            checkpoints.push(state.checkpoint().expect("checkpoint encodes"));
        }
    }
    checkpoints.push(state.checkpoint().expect("checkpoint encodes"));
    for (n, c) in checkpoints.iter().enumerate() {
        let _ = writeln!(out, "globals {n} {}", hex(&c.globals));
        for (id, bytes) in &c.puts {
            let _ = writeln!(out, "instance {n}:{id} {}", hex(bytes));
        }
        for (id, seq, bytes) in &c.history_appends {
            let _ = writeln!(out, "history {n}:{id}:{seq} {}", hex(bytes));
        }
        for (id, keys) in &c.index_keys {
            for (k, key) in keys.iter().enumerate() {
                let _ = writeln!(out, "index {n}:{id}:{k} {}", hex(key));
            }
        }
        for (key, bytes) in &c.work_puts {
            let _ = writeln!(out, "work {n}:{} {}", hex(key), hex(bytes));
        }
    }
    out
}

#[test]
fn on_disk_encodings_match_the_golden_file() {
    let path = golden_path();
    if std::env::var_os("CAIRN_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, render()).unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "no golden file {} ({e}): LOG_FORMAT_VERSION changed, or the file is missing. Write it \
             with CAIRN_BLESS=1 cargo test -p cairn-core --test golden, and keep the old one",
            path.display()
        )
    });
    let fix = "the on-disk format changed: if that is deliberate, bump LOG_FORMAT_VERSION and \
               write a new golden file with CAIRN_BLESS=1 cargo test -p cairn-core --test golden";
    let samples: BTreeMap<&str, LogRecord> = sample_records().into_iter().collect();
    let mut seen_records = 0;
    let mut seen = BTreeMap::<&str, usize>::new();
    let mut instances = BTreeMap::<String, InstanceState>::new();
    let mut work = BTreeMap::<(String, Vec<u8>), Vec<u8>>::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut parts = line.splitn(3, ' ');
        let (kind, label, bytes) = match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(l), Some(h)) => (k, l, unhex(h)),
            _ => panic!("malformed golden line: {line}"),
        };
        *seen.entry(kind).or_default() += 1;
        match kind {
            "record" => {
                let sample = samples
                    .get(label)
                    .unwrap_or_else(|| panic!("golden record {label} has no sample: {fix}"));
                assert_eq!(
                    hex(&sample.encode().unwrap()),
                    hex(&bytes),
                    "log record {label} encodes differently: {fix}"
                );
                let decoded = LogRecord::decode(&bytes).unwrap_or_else(|e| {
                    panic!("golden record {label} no longer decodes ({e}): {fix}")
                });
                assert_eq!(
                    &decoded, sample,
                    "golden record {label} decodes differently: {fix}"
                );
                seen_records += 1;
            }
            "globals" => {
                let state = PartitionState::recover(&bytes).unwrap_or_else(|e| {
                    panic!("golden globals {label} no longer decode ({e}): {fix}")
                });
                assert!(
                    state.upgrade().is_none(),
                    "golden globals {label} read as an older format"
                );
                assert_eq!(
                    hex(&state.globals().encode().unwrap()),
                    hex(&bytes),
                    "golden globals {label} re-encode differently: {fix}"
                );
            }
            "instance" => {
                let s = InstanceState::decode(&bytes).unwrap_or_else(|e| {
                    panic!("golden instance state {label} no longer decodes ({e}): {fix}")
                });
                assert_eq!(
                    hex(&s.encode().unwrap()),
                    hex(&bytes),
                    "golden instance state {label} re-encodes differently: {fix}"
                );
                instances.insert(label.to_string(), s);
            }
            "index" => {
                let (instance, k) = label.rsplit_once(':').expect("index label n:id:k");
                let state = instances
                    .get(instance)
                    .unwrap_or_else(|| panic!("golden index key {label} of no instance: {fix}"));
                let keys = cairn_core::index::keys(state);
                let k: usize = k.parse().expect("index label n:id:k");
                assert_eq!(
                    keys.get(k).map(|key| hex(key)),
                    Some(hex(&bytes)),
                    "golden index key {label} is encoded differently now: {fix}"
                );
            }
            "history" => {
                let e: HistoryEvent = postcard::from_bytes(&bytes).unwrap_or_else(|e| {
                    panic!("golden history event {label} no longer decodes ({e}): {fix}")
                });
                assert_eq!(
                    hex(&encode("event", &e).unwrap()),
                    hex(&bytes),
                    "golden history event {label} re-encodes differently: {fix}"
                );
            }
            "work" => {
                let (n, key) = label.split_once(':').expect("work label n:key");
                work.insert((n.to_string(), unhex(key)), bytes);
            }
            other => panic!("unknown golden line kind {other}"),
        }
    }
    assert_eq!(
        seen_records,
        samples.len(),
        "the golden file lacks some sample records (added since it was written?): {fix}"
    );
    // Each queued activity's item decodes and re-encodes the same, and is filed under exactly
    // the keys the format says.
    let mut items = 0;
    let mut timers = 0;
    for ((n, key), bytes) in &work {
        if let Some(id) = key
            .strip_prefix(b"t")
            .and_then(|id| Some(u64::from_be_bytes(id.try_into().ok()?)))
        {
            let timer: TimerEntry = postcard::from_bytes(bytes)
                .unwrap_or_else(|e| panic!("golden timer {n}:{id} no longer decodes ({e}): {fix}"));
            assert_eq!(
                hex(&encode("timer", &timer).unwrap()),
                hex(bytes),
                "timer {id}: {fix}"
            );
            for k in cairn_core::work::timer_keys(id, &timer) {
                assert!(
                    work.contains_key(&(n.clone(), k.clone())),
                    "work key {} of timer {id} is missing or encoded differently now: {fix}",
                    hex(&k)
                );
            }
            timers += 1;
            continue;
        }
        let Some(id) = key
            .strip_prefix(b"a")
            .and_then(|id| Some(u64::from_be_bytes(id.try_into().ok()?)))
        else {
            assert!(
                bytes.is_empty(),
                "golden secondary work key {n}:{} has a value",
                hex(key)
            );
            continue;
        };
        let item: ActivityWorkItem = postcard::from_bytes(bytes)
            .unwrap_or_else(|e| panic!("golden work item {n}:{id} no longer decodes ({e}): {fix}"));
        assert_eq!(
            hex(&encode("item", &item).unwrap()),
            hex(bytes),
            "work item {id}: {fix}"
        );
        for k in cairn_core::work::activity_keys(id, &item) {
            assert!(
                work.contains_key(&(n.clone(), k.clone())),
                "work key {} of activity {id} is missing or encoded differently now: {fix}",
                hex(&k)
            );
        }
        items += 1;
    }
    assert!(items > 0, "the golden file has no queued activity");
    assert!(timers > 0, "the golden file has no armed timer");
    for kind in ["globals", "instance", "history", "work"] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) > 0,
            "the golden file has no {kind} lines"
        );
    }
}

/// Hubs of older formats are upgraded when opened: their checkpoint globals still read, and
/// say what the shell must rebuild from the store (format 2: the name counts; formats 2 and 3:
/// the backlog, which they listed in the globals).
#[test]
fn older_globals_still_read_for_the_upgrade() {
    for (version, counts_names) in [(2, true), (3, false)] {
        let path = golden_path().with_file_name(format!("format-v{version}.txt"));
        let text = std::fs::read_to_string(&path).expect("older golden files are kept");
        let mut seen = 0;
        for line in text.lines().filter(|l| l.starts_with("globals ")) {
            let bytes = unhex(line.rsplit(' ').next().expect("hex"));
            let state = PartitionState::recover(&bytes)
                .unwrap_or_else(|e| panic!("format-{version} globals no longer read: {e}"));
            let upgrade = state.upgrade().expect("older globals ask for an upgrade");
            assert_eq!(upgrade.count_names, counts_names, "format {version}");
            assert_eq!(state.globals().name_counts.is_empty(), counts_names);
            assert!(!state.globals().status_counts.is_empty());
            // The samples leave instances with work: the older formats listed them.
            assert!(!upgrade.runnable.is_empty(), "format {version}");
            assert!(state.globals().backlog.is_empty());
            seen += 1;
        }
        assert!(seen > 0, "no globals in {}", path.display());
    }
    // Format 4 kept queued activities in the globals: they read as queued since the
    // checkpoint, for the next one to file in the store, and nothing else needs rebuilding.
    let path = golden_path().with_file_name("format-v4.txt");
    let text = std::fs::read_to_string(&path).expect("older golden files are kept");
    for line in text.lines().filter(|l| l.starts_with("globals ")) {
        let bytes = unhex(line.rsplit(' ').next().expect("hex"));
        let state = PartitionState::recover(&bytes).expect("format-4 globals read");
        assert!(state.upgrade().is_none());
        assert!(!state.globals().backlog.is_empty());
    }
    // Today's globals are read as such.
    let text = std::fs::read_to_string(golden_path()).expect("the golden file");
    let mut backlogs = 0;
    for line in text.lines().filter(|l| l.starts_with("globals ")) {
        let bytes = unhex(line.rsplit(' ').next().expect("hex"));
        let state = PartitionState::recover(&bytes).expect("globals read");
        assert!(state.upgrade().is_none());
        backlogs += usize::from(!state.globals().backlog.is_empty());
    }
    assert!(backlogs > 0, "the samples leave a backlog");
}
