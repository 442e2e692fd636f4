//! The programming model end to end, against a real engine on a temporary data directory.
mod common;
use cairn_runtime::*;
use common::*;
use std::time::{Duration, SystemTime};

async fn run_to_end(client: &Client, name: &str, input: impl serde::Serialize) -> InstanceStatus {
    let id = client.start(name, &input).await.unwrap();
    client.wait_for_completion(&id, WAIT).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaining_fan_out_and_sub_orchestrations() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let c = engine.client();
    let s = run_to_end(&c, "hello_cities", ()).await;
    assert_eq!(
        s.output::<Vec<String>>().unwrap(),
        vec!["Hello, Tokyo!", "Hello, Seattle!", "Hello, London!"]
    );
    let s = run_to_end(&c, "fan_out", 100).await;
    assert_eq!(s.output::<i64>().unwrap(), (1..=100).sum::<i64>());
    let s = run_to_end(&c, "parent", 10).await;
    assert_eq!(s.status, RuntimeStatus::Completed, "{s:?}");
    assert_eq!(s.output::<i64>().unwrap(), 10 + (1..=10).sum::<i64>());
    // The children exist under derived ids, with the parent recorded.
    let child = c
        .get_status(&format!("{}:0000", s.instance_id), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(child.name, "chain");
    assert_eq!(child.parent.unwrap().instance_id, s.instance_id);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_event_races_a_timer() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let c = engine.client();
    // Event wins.
    let id = c.start("approval", &60_000u64).await.unwrap();
    c.wait_for_start(&id, WAIT).await.unwrap();
    c.raise_event(&id, "approve", &"alice").await.unwrap();
    let s = c.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(s.output::<String>().unwrap(), "approved by alice");
    // Timer wins.
    let s = run_to_end(&c, "approval", 200u64).await;
    assert_eq!(s.output::<String>().unwrap(), "timed out");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_buffered_until_awaited() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let c = engine.client();
    let id = c.start("events", &50u32).await.unwrap();
    for i in 1..=50i64 {
        c.raise_event(&id, "value", &i).await.unwrap();
    }
    let s = c.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(s.output::<i64>().unwrap(), (1..=50).sum::<i64>());
    // Raising to a completed instance is refused with the status.
    let err = c.raise_event(&id, "value", &1).await.unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::WrongStatus {
                status: RuntimeStatus::Completed,
                ..
            }
        ),
        "{err}"
    );
    let err = c
        .raise_event("no-such-instance", "value", &1)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::NotFound(_)), "{err}");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_resets_history_and_keeps_custom_status() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let c = engine.client();
    let s = run_to_end(&c, "counter", (0u32, 5u32)).await;
    assert_eq!(s.status, RuntimeStatus::Completed);
    assert_eq!(s.output::<u32>().unwrap(), 5);
    assert_eq!(s.custom_status::<u32>().unwrap(), 5);
    let with_history = c.get_status(&s.instance_id, true).await.unwrap().unwrap();
    let history = with_history.history.unwrap();
    // Only the last execution's history is kept: start, the completing episode, completion.
    assert!(
        history.len() <= 6,
        "history was not reset: {} events",
        history.len()
    );
    match &history
        .iter()
        .find(|e| matches!(e.kind, EventKind::ExecutionStarted { .. }))
        .unwrap()
        .kind
    {
        EventKind::ExecutionStarted { input, .. } => assert_eq!(input.as_deref(), Some("[5,5]")),
        _ => unreachable!(),
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_carry_type_message_and_details_up_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry().orchestration(
        "calls_failing",
        |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_sub_orchestration::<_, ()>("failing", None, ())
                .await
        },
    );
    let engine = Engine::open(config(dir.path()), registry).await.unwrap();
    let c = engine.client();
    let s = run_to_end(&c, "calls_failing", ()).await;
    assert_eq!(s.status, RuntimeStatus::Failed);
    let f = s.failure.unwrap();
    assert_eq!(f.error_type, "BusinessError");
    assert_eq!(f.message, "boom");
    assert_eq!(f.details.as_deref(), Some("stack: fail()"));
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policy_retries_with_backoff_then_succeeds_or_gives_up() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let calls2 = calls.clone();
    let registry = Registry::new()
        .activity("flaky", move |_ctx, succeed_on: u32| {
            let calls = calls2.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n >= succeed_on {
                    Ok(n)
                } else {
                    Err(TaskError::new("Transient", format!("attempt {n}")))
                }
            }
        })
        .orchestration(
            "retrying",
            |ctx: OrchestrationContext, (succeed_on, attempts): (u32, u32)| async move {
                let policy =
                    RetryPolicy::new(attempts, Duration::from_millis(20)).with_backoff(2.0);
                ctx.call_activity_with_retry::<_, u32>("flaky", succeed_on, &policy)
                    .await
            },
        );
    let engine = Engine::open(config(dir.path()), registry).await.unwrap();
    let c = engine.client();
    let s = run_to_end(&c, "retrying", (3u32, 5u32)).await;
    assert_eq!(s.output::<u32>().unwrap(), 3);
    let history = c
        .get_status(&s.instance_id, true)
        .await
        .unwrap()
        .unwrap()
        .history
        .unwrap();
    let timers = history
        .iter()
        .filter(|e| matches!(e.kind, EventKind::TimerCreated { .. }))
        .count();
    assert_eq!(timers, 2, "two backoff timers between three attempts");
    calls.store(0, Ordering::SeqCst);
    let s = run_to_end(&c, "retrying", (10u32, 2u32)).await;
    assert_eq!(s.status, RuntimeStatus::Failed);
    assert_eq!(s.failure.unwrap().message, "attempt 2");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_and_bad_inputs_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry().orchestration(
        "calls_missing",
        |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_activity::<_, ()>("no_such_activity", ()).await
        },
    );
    let engine = Engine::open(config(dir.path()), registry).await.unwrap();
    let c = engine.client();
    let s = run_to_end(&c, "no_such_orchestration", ()).await;
    assert_eq!(s.status, RuntimeStatus::Failed);
    let f = s.failure.unwrap();
    assert_eq!(f.error_type, "OrchestrationNotFound");
    assert!(
        f.message.contains("no_such_orchestration") && f.message.contains("chain"),
        "{}",
        f.message
    );
    let s = run_to_end(&c, "calls_missing", ()).await;
    assert_eq!(s.failure.unwrap().error_type, "ActivityNotFound");
    // "chain" wants a number.
    let s = run_to_end(&c, "chain", "not a number").await;
    let f = s.failure.unwrap();
    assert_eq!(f.error_type, "InputDeserializationError");
    assert!(f.message.contains("chain"), "{}", f.message);
    // Instance ids.
    let err = c
        .start_with("chain", &1, StartOptions::with_id(""))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("must not be empty"), "{err}");
    let err = c
        .start_with("chain", &1, StartOptions::with_id("x".repeat(1000)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    // Oversized payloads are refused before anything is stored.
    let big = "x".repeat(EngineConfig::default().max_payload_bytes + 1);
    let err = c.start("chain", &big).await.unwrap_err();
    assert!(matches!(err, EngineError::PayloadTooLarge { .. }), "{err}");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_suspend_resume() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let c = engine.client();
    // Recursive terminate reaches the child waiting for an event.
    let registry_parent = c
        .start_with("approval", &3_600_000u64, StartOptions::with_id("lonely"))
        .await
        .unwrap();
    c.wait_for_start(&registry_parent, WAIT).await.unwrap();
    c.terminate("lonely", Some("no longer needed"), false)
        .await
        .unwrap();
    let s = c.wait_for_completion("lonely", WAIT).await.unwrap();
    assert_eq!(s.status, RuntimeStatus::Terminated);
    assert_eq!(s.output.as_deref(), Some("\"no longer needed\""));
    let err = c.terminate("lonely", None, false).await.unwrap_err();
    assert!(matches!(err, EngineError::WrongStatus { .. }));

    // Suspend holds events back; resume delivers them.
    let id = c.start("events", &1u32).await.unwrap();
    c.wait_for_start(&id, WAIT).await.unwrap();
    c.suspend(&id, Some("maintenance")).await.unwrap();
    c.raise_event(&id, "value", &7).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = c.get_status(&id, false).await.unwrap().unwrap();
    assert_eq!(s.status, RuntimeStatus::Suspended);
    c.resume(&id, None).await.unwrap();
    let s = c.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(s.output::<i64>().unwrap(), 7);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_terminate_stops_children() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry().orchestration(
        "waits_on_child",
        |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_sub_orchestration::<_, String>("approval", Some("the-child"), 3_600_000u64)
                .await
        },
    );
    let engine = Engine::open(config(dir.path()), registry).await.unwrap();
    let c = engine.client();
    let id = c.start("waits_on_child", &()).await.unwrap();
    c.wait_for_start("the-child", WAIT).await.unwrap();
    c.terminate(&id, Some("stop all"), true).await.unwrap();
    let child = c.wait_for_completion("the-child", WAIT).await.unwrap();
    assert_eq!(child.status, RuntimeStatus::Terminated);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_is_idempotent_and_scheduled_start_waits() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let c = engine.client();
    let a = c
        .start_with("approval", &3_600_000u64, StartOptions::with_id("same"))
        .await
        .unwrap();
    let first = c.wait_for_start(&a, WAIT).await.unwrap();
    let b = c
        .start_with("approval", &3_600_000u64, StartOptions::with_id("same"))
        .await
        .unwrap();
    assert_eq!(a, b);
    let again = c.get_status("same", false).await.unwrap().unwrap();
    assert_eq!(
        first.execution_id, again.execution_id,
        "idempotent start must not restart"
    );
    let strict = StartOptions {
        if_exists: ExistingPolicy::Fail,
        ..StartOptions::with_id("same")
    };
    assert!(matches!(
        c.start_with("approval", &1u64, strict).await.unwrap_err(),
        EngineError::AlreadyExists { .. }
    ));
    // Execution ids are 32 hex digits.
    assert_eq!(first.execution_id.len(), 32);
    assert!(first.execution_id.chars().all(|ch| ch.is_ascii_hexdigit()));

    let later = StartOptions {
        scheduled_start: Some(SystemTime::now() + Duration::from_millis(400)),
        ..StartOptions::with_id("later")
    };
    c.start_with("chain", &1, later).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        c.get_status("later", false).await.unwrap().unwrap().status,
        RuntimeStatus::Pending
    );
    let s = c.wait_for_completion("later", WAIT).await.unwrap();
    assert_eq!(s.status, RuntimeStatus::Completed);
    assert!(s.completed_at.unwrap() >= s.scheduled_start.unwrap());
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_pages_and_purge_by_filter() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let c = engine.client();
    for i in 0..25 {
        c.start_with("chain", &1, StartOptions::with_id(format!("q-{i:02}")))
            .await
            .unwrap();
    }
    c.start_with(
        "approval",
        &3_600_000u64,
        StartOptions::with_id("q-running"),
    )
    .await
    .unwrap();
    c.start_with("chain", &1, StartOptions::with_id("other"))
        .await
        .unwrap();
    for i in 0..25 {
        c.wait_for_completion(&format!("q-{i:02}"), WAIT)
            .await
            .unwrap();
    }
    c.wait_for_start("q-running", WAIT).await.unwrap();
    let mut query = InstanceQuery {
        filter: QueryFilter {
            instance_id_prefix: Some("q-".into()),
            ..QueryFilter::default()
        },
        page_size: 10,
        ..InstanceQuery::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = c.query(&query).await.unwrap();
        assert!(page.instances.len() <= 10);
        seen.extend(page.instances.into_iter().map(|s| s.instance_id));
        match page.continuation_token {
            Some(t) => query.continuation_token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen.len(), 26);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "ordered, no duplicates"
    );
    // Status filter.
    query.continuation_token = None;
    query.page_size = 100;
    query.filter.statuses = vec![RuntimeStatus::Running];
    let running = c.query(&query).await.unwrap();
    assert_eq!(running.instances.len(), 1);
    assert_eq!(running.instances[0].instance_id, "q-running");
    // Purge: terminal instances with the prefix go, the running one stays.
    engine.checkpoint().await.unwrap(); // exercise purge of checkpointed (store-resident) instances
    let purged = c
        .purge_by_filter(QueryFilter {
            instance_id_prefix: Some("q-".into()),
            ..QueryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(purged, 25);
    assert!(c.get_status("q-03", false).await.unwrap().is_none());
    assert!(c.get_status("q-running", false).await.unwrap().is_some());
    assert_eq!(c.purge("other").await.unwrap(), 1);
    assert_eq!(c.purge("other").await.unwrap(), 0);
    // Time range: everything was created before now.
    let none = c
        .query(&InstanceQuery {
            filter: QueryFilter {
                created_from: Some(u64::MAX / 2),
                ..QueryFilter::default()
            },
            ..InstanceQuery::default()
        })
        .await
        .unwrap();
    assert!(none.instances.is_empty());
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_has_the_durable_task_shape() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path()).await;
    let c = engine.client();
    let s = run_to_end(&c, "chain", 2).await;
    let h = c
        .get_status(&s.instance_id, true)
        .await
        .unwrap()
        .unwrap()
        .history
        .unwrap();
    let names: Vec<&str> = h.iter().map(|e| e.kind.name()).collect();
    assert_eq!(
        names,
        vec![
            "OrchestratorStarted",
            "ExecutionStarted",
            "TaskScheduled",
            "OrchestratorCompleted",
            "OrchestratorStarted",
            "TaskCompleted",
            "TaskScheduled",
            "OrchestratorCompleted",
            "OrchestratorStarted",
            "TaskCompleted",
            "OrchestratorCompleted",
            "ExecutionCompleted",
        ]
    );
    // Scheduled events carry the sequence number; completions point back to it.
    assert_eq!(h[2].event_id, 0);
    assert_eq!(h[6].event_id, 1);
    assert!(matches!(
        h[9].kind,
        EventKind::TaskCompleted {
            task_scheduled_id: 1,
            ..
        }
    ));
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_reruns_only_what_failed_through_sub_orchestrations() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let broken = Arc::new(AtomicBool::new(true));
    let flaky_calls = Arc::new(AtomicU32::new(0));
    let step_calls = Arc::new(AtomicU32::new(0));
    let (b, f, st) = (broken.clone(), flaky_calls.clone(), step_calls.clone());
    let registry = registry()
        .activity("step", move |_ctx, x: i64| {
            st.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, TaskError>(x * 10) }
        })
        .activity("flaky", move |_ctx, x: i64| {
            f.fetch_add(1, Ordering::SeqCst);
            let broken = b.load(Ordering::SeqCst);
            async move {
                if broken {
                    Err(TaskError::new("Outage", "the service is down"))
                } else {
                    Ok(x + 1)
                }
            }
        })
        .orchestration(
            "rewind_child",
            |ctx: OrchestrationContext, x: i64| async move {
                let a: i64 = ctx.call_activity("step", x).await?;
                // A failure handled in an earlier episode stays handled after a rewind.
                let handled = ctx.call_activity::<_, i64>("fail", "ignored").await;
                assert!(handled.is_err());
                let b: i64 = ctx.call_activity("flaky", a).await?;
                Ok(b)
            },
        )
        .orchestration(
            "rewind_parent",
            |ctx: OrchestrationContext, x: i64| async move {
                let first: i64 = ctx.call_activity("step", x).await?;
                let child: i64 = ctx
                    .call_sub_orchestration("rewind_child", Some("rewind-child-1"), first)
                    .await?;
                Ok(child)
            },
        );
    let engine = Engine::open(config(dir.path()), registry).await.unwrap();
    let c = engine.client();
    let id = c
        .start_with(
            "rewind_parent",
            &1i64,
            StartOptions::with_id("rewind-parent-1"),
        )
        .await
        .unwrap();
    let s = c.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(s.status, RuntimeStatus::Failed, "{s:?}");
    assert_eq!(s.failure.as_ref().unwrap().error_type, "Outage");
    let child = c
        .get_status("rewind-child-1", false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(child.status, RuntimeStatus::Failed);
    assert_eq!(
        (
            flaky_calls.load(Ordering::SeqCst),
            step_calls.load(Ordering::SeqCst)
        ),
        (1, 2)
    );
    // History moves to the store, so the rewind must read it back from there.
    engine.checkpoint().await.unwrap();

    // Only Failed instances can be rewound.
    let err = c.rewind("no-such-instance", None).await.unwrap_err();
    assert!(matches!(err, EngineError::NotFound(_)), "{err}");

    broken.store(false, Ordering::SeqCst);
    c.rewind(&id, Some("service is back")).await.unwrap();
    let s = c.wait_for_completion(&id, WAIT).await.unwrap();
    assert_eq!(s.status, RuntimeStatus::Completed, "{s:?}");
    assert_eq!(s.output::<i64>().unwrap(), 101);
    assert!(s.failure.is_none());
    // The failed activity ran again; the steps that had succeeded did not.
    assert_eq!(
        (
            flaky_calls.load(Ordering::SeqCst),
            step_calls.load(Ordering::SeqCst)
        ),
        (2, 2)
    );
    let child = c.get_status("rewind-child-1", true).await.unwrap().unwrap();
    assert_eq!(child.status, RuntimeStatus::Completed);
    let history = child.history.unwrap();
    let names: Vec<&str> = history.iter().map(|e| e.kind.name()).collect();
    assert!(names.contains(&"ExecutionRewound"), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "TaskFailed").count(),
        1,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == "ExecutionCompleted").count(),
        1,
        "{names:?}"
    );

    let err = c.rewind(&id, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::WrongStatus {
                status: RuntimeStatus::Completed,
                ..
            }
        ),
        "{err}"
    );
    // The rewritten history survives a restart.
    engine.shutdown().await.unwrap();
    let engine = Engine::open(config(dir.path()), common::registry())
        .await
        .unwrap();
    let s = engine
        .client()
        .get_status(&id, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.status, RuntimeStatus::Completed);
    assert_eq!(s.output::<i64>().unwrap(), 101);
    engine.shutdown().await.unwrap();
}
