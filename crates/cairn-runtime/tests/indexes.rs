//! Queries served from the indexes: newest first across partitions, with tokens that stay right
//! while instances are created and purged between pages; counts by name; and hubs written by
//! older formats upgraded when opened.

mod common;

use cairn_runtime::*;
use cairn_storage::seam::StoreReads;
use cairn_storage::store::{CheckpointBatch, PartitionStore};
use common::*;
use std::collections::BTreeMap;

async fn start(client: &Client, name: &str, id: &str) {
    let id = client
        .start_with(
            name,
            &1i64,
            StartOptions {
                instance_id: Some(id.to_string()),
                ..StartOptions::default()
            },
        )
        .await
        .unwrap();
    client.wait_for_completion(&id, WAIT).await.unwrap();
}

async fn all_pages(client: &Client, filter: QueryFilter, page_size: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .query(&InstanceQuery {
                filter: filter.clone(),
                page_size,
                continuation_token: token,
                fetch_inputs_and_outputs: false,
            })
            .await
            .unwrap();
        ids.extend(page.instances.into_iter().map(|s| s.instance_id));
        token = page.continuation_token;
        if token.is_none() {
            return ids;
        }
    }
}

fn name_counts(engine: &Engine) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for s in engine.stats() {
        for (name, n) in s.instances_by_name().iter() {
            *total.entry(name.clone()).or_insert(0) += n;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_run_newest_first_and_tokens_survive_creates_and_purges() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(common::config(dir.path()), registry())
        .await
        .unwrap();
    let client = engine.client();
    // Created one after another (1 ms apart, so creation times differ), over 4 partitions.
    let mut made = Vec::new();
    for i in 0..12 {
        let (name, id) = if i % 3 == 0 {
            ("fan_out", format!("f-{i:02}"))
        } else {
            ("chain", format!("c-{i:02}"))
        };
        start(&client, name, &id).await;
        made.push(id);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        if i == 5 {
            // Half in the checkpoint (read from the index), half only in memory.
            engine.checkpoint().await.unwrap();
        }
    }
    let newest_first: Vec<String> = made.iter().rev().cloned().collect();
    assert_eq!(
        all_pages(&client, QueryFilter::default(), 5).await,
        newest_first
    );
    let chains: Vec<String> = newest_first
        .iter()
        .filter(|id| id.starts_with("c-"))
        .cloned()
        .collect();
    let by_name = QueryFilter {
        name: Some("chain".into()),
        statuses: vec![RuntimeStatus::Completed],
        ..QueryFilter::default()
    };
    assert_eq!(all_pages(&client, by_name.clone(), 3).await, chains);

    // A walk with instances created and purged between its pages: nothing it had not reached
    // yet is skipped or repeated, and what was created after it began does not appear.
    let mut seen = Vec::new();
    let first = client
        .query(&InstanceQuery {
            page_size: 4,
            ..InstanceQuery::default()
        })
        .await
        .unwrap();
    seen.extend(first.instances.iter().map(|s| s.instance_id.clone()));
    start(&client, "chain", "c-new").await;
    client.purge(&made[11]).await.unwrap(); // already seen
    client.purge(&made[3]).await.unwrap(); // not reached yet
    let mut token = first.continuation_token;
    while let Some(t) = token {
        let page = client
            .query(&InstanceQuery {
                page_size: 4,
                continuation_token: Some(t),
                ..InstanceQuery::default()
            })
            .await
            .unwrap();
        seen.extend(page.instances.iter().map(|s| s.instance_id.clone()));
        token = page.continuation_token;
    }
    let want: Vec<String> = newest_first
        .iter()
        .filter(|id| *id != &made[3])
        .cloned()
        .collect();
    assert_eq!(seen, want);

    // Counts by name follow starts and purges.
    assert_eq!(
        name_counts(&engine),
        BTreeMap::from([("chain".to_string(), 8), ("fan_out".to_string(), 3)])
    );
    // A token from another kind of query is refused, not misread.
    let bad = client
        .query(&InstanceQuery {
            filter: QueryFilter {
                instance_id_prefix: Some("c-".into()),
                ..QueryFilter::default()
            },
            continuation_token: Some("n.5.c-01".into()),
            ..InstanceQuery::default()
        })
        .await;
    assert!(
        matches!(bad, Err(EngineError::InvalidArgument(_))),
        "{bad:?}"
    );
    engine.shutdown().await.unwrap();
}

/// Tokens are plain ASCII (they travel in an HTTP header) whatever the ids hold, and walk
/// every page of ids with spaces, accents and emoji.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_ascii_for_any_instance_id() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(common::config(dir.path()), registry())
        .await
        .unwrap();
    let client = engine.client();
    let ids = ["über 1", "über 2", "naïve%3", "🦀 4", "plain-5", "a.b.c 6"];
    for id in ids {
        start(&client, "chain", id).await;
    }
    for filter in [
        QueryFilter::default(),
        QueryFilter {
            instance_id_prefix: Some(String::new()),
            ..QueryFilter::default()
        },
    ] {
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let page = client
                .query(&InstanceQuery {
                    filter: filter.clone(),
                    page_size: 2,
                    continuation_token: token,
                    fetch_inputs_and_outputs: false,
                })
                .await
                .unwrap();
            seen.extend(page.instances.into_iter().map(|s| s.instance_id));
            token = page.continuation_token;
            if let Some(t) = &token {
                assert!(
                    t.bytes().all(|b| b.is_ascii_graphic()),
                    "token {t:?} does not fit an HTTP header"
                );
            } else {
                break;
            }
        }
        seen.sort();
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(seen, want, "{filter:?}");
    }
    engine.shutdown().await.unwrap();
}

/// Hubs written by format 2 (no index entries, no name counts, the runnable instances listed
/// in the checkpoint's globals) and by format 3 (index entries and name counts, but the same
/// runnable list) open: what the format lacks is rebuilt from the store once, the listed
/// runnable instances go into the backlog index and run, and hub.json says today's format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_of_formats_2_and_3_are_upgraded_when_opened() {
    for version in [2u32, 3] {
        upgrade_from(version).await;
    }
}

async fn upgrade_from(version: u32) {
    let dir = tempfile::tempdir().unwrap();
    let config = || EngineConfig {
        partitions: Some(2),
        remote_workers: true,
        ..common::config(dir.path())
    };
    {
        let engine = Engine::open(config(), registry()).await.unwrap();
        let client = engine.client();
        for i in 0..6 {
            let name = if i % 2 == 0 { "chain" } else { "fan_out" };
            start(&client, name, &format!("old-{i}")).await;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        // Instances no worker runs yet: runnable when the hub closes.
        for i in 0..5 {
            client
                .start_with(
                    "later",
                    &i,
                    StartOptions {
                        instance_id: Some(format!("later-{i}")),
                        ..StartOptions::default()
                    },
                )
                .await
                .unwrap();
        }
        engine.shutdown().await.unwrap();
    }
    // Turn each partition's checkpoint into what the old format wrote.
    let mut listed = 0;
    for p in 0..2 {
        let path = dir.path().join(format!("partitions/p{p:02}/store.redb"));
        let store = PartitionStore::open(&path).unwrap();
        let state =
            cairn_core::PartitionState::recover(&store.load_globals().unwrap().unwrap()).unwrap();
        let mut files = Vec::new();
        let mut runnable = std::collections::BTreeSet::new();
        store
            .scan_instances(None, None, &mut |id, bytes| {
                let s = cairn_core::InstanceState::decode(bytes).unwrap();
                if cairn_core::is_runnable(&s) {
                    runnable.insert(id.to_string());
                }
                // Format 2 had no index; format 3 had every key but the backlog's.
                let keys: Vec<Vec<u8>> = match version {
                    2 => Vec::new(),
                    _ => cairn_core::index::keys(&s)
                        .into_iter()
                        .filter(|k| !k.starts_with(b"w"))
                        .collect(),
                };
                files.push((id.to_string(), keys));
                true
            })
            .unwrap();
        listed += runnable.len();
        let g = state.globals();
        // Embedded, activities never wait for a worker: none are queued; nor is a timer armed.
        assert!(g.activity_backlog.is_empty());
        assert_eq!(g.timer_count, 0);
        let activities = std::collections::BTreeMap::<u64, cairn_core::ActivityWorkItem>::new();
        let timers = std::collections::BTreeMap::<u64, cairn_core::TimerEntry>::new();
        let v2 = (
            g.partition,
            g.partition_count,
            g.position,
            &activities,
            g.next_activity_id,
            &timers,
            g.next_timer_id,
            &g.outbox,
            &g.dedup,
            &runnable,
            &g.status_counts,
        );
        let globals = match version {
            2 => postcard::to_allocvec(&v2).unwrap(),
            _ => postcard::to_allocvec(&(v2, &g.name_counts)).unwrap(),
        };
        store
            .write_checkpoint(&CheckpointBatch {
                position: store.checkpoint_position().unwrap(),
                globals,
                index_keys: files,
                ..CheckpointBatch::default()
            })
            .unwrap();
        let mut backlog_keys = 0;
        store
            .scan_index_desc(b"w", None, &mut |_, _| {
                backlog_keys += 1;
                true
            })
            .unwrap();
        assert_eq!(backlog_keys, 0);
    }
    assert_eq!(listed, 5, "the five 'later' instances are runnable");
    let meta_path = dir.path().join("hub.json");
    let meta = std::fs::read_to_string(&meta_path).unwrap();
    let today = format!("\"format_version\": {}", cairn_core::LOG_FORMAT_VERSION);
    assert!(meta.contains(&today), "{meta}");
    std::fs::write(
        &meta_path,
        meta.replace(&today, &format!("\"format_version\": {version}")),
    )
    .unwrap();

    // Reopened by a process that runs "later": the listed instances were found and run.
    let registry = registry()
        .orchestration("later", |_ctx: OrchestrationContext, x: i64| async move {
            Ok::<_, TaskError>(x * 10)
        });
    let engine = Engine::open(config(), registry).await.unwrap();
    let client = engine.client();
    for i in 0..5i64 {
        let s = client
            .wait_for_completion(&format!("later-{i}"), WAIT)
            .await
            .unwrap();
        assert_eq!(
            s.output.as_deref(),
            Some(format!("{}", i * 10).as_str()),
            "format {version}"
        );
    }
    let mut all = all_pages(&client, QueryFilter::default(), 4).await;
    all.retain(|id| id.starts_with("old-"));
    assert_eq!(
        all,
        ["old-5", "old-4", "old-3", "old-2", "old-1", "old-0"],
        "format {version}"
    );
    assert_eq!(
        all_pages(
            &client,
            QueryFilter {
                name: Some("fan_out".into()),
                ..QueryFilter::default()
            },
            2
        )
        .await,
        ["old-5", "old-3", "old-1"]
    );
    assert_eq!(
        name_counts(&engine),
        BTreeMap::from([
            ("chain".to_string(), 3),
            ("fan_out".to_string(), 3),
            ("later".to_string(), 5)
        ]),
        "format {version}"
    );
    assert!(std::fs::read_to_string(&meta_path)
        .unwrap()
        .contains(&today));
    engine.shutdown().await.unwrap();
}
