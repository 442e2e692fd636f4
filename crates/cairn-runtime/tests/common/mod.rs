//! Shared test fixtures: a registry exercising every feature, and engine helpers.
#![allow(dead_code)]

use cairn_runtime::*;
use std::path::Path;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn config(dir: &Path) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_path_buf(),
        partitions: Some(4),
        ..EngineConfig::default()
    }
}

/// Orchestrations and activities used across the tests.
pub fn registry() -> Registry {
    Registry::new()
        .activity("add_one", |_ctx, x: i64| async move {
            Ok::<_, TaskError>(x + 1)
        })
        .activity("greet", |_ctx, name: String| async move {
            Ok::<_, TaskError>(format!("Hello, {name}!"))
        })
        .activity("fail", |_ctx, msg: String| async move {
            Err::<(), _>(TaskError::new("BusinessError", msg).with_details("stack: fail()"))
        })
        .orchestration("chain", |ctx: OrchestrationContext, n: i64| async move {
            let mut x = 0i64;
            for _ in 0..n {
                x = ctx.call_activity("add_one", x).await?;
            }
            Ok(x)
        })
        .orchestration(
            "hello_cities",
            |ctx: OrchestrationContext, _: ()| async move {
                let mut out = Vec::new();
                for city in ["Tokyo", "Seattle", "London"] {
                    out.push(ctx.call_activity::<_, String>("greet", city).await?);
                }
                Ok(out)
            },
        )
        .orchestration("fan_out", |ctx: OrchestrationContext, n: i64| async move {
            let tasks = (0..n)
                .map(|i| ctx.call_activity::<_, i64>("add_one", i))
                .collect();
            let results = ctx.when_all(tasks).await;
            let mut sum = 0;
            for r in results {
                sum += r?;
            }
            Ok(sum)
        })
        .orchestration("parent", |ctx: OrchestrationContext, n: i64| async move {
            let a = ctx.call_sub_orchestration::<_, i64>("chain", None, n);
            let b = ctx.call_sub_orchestration::<_, i64>("fan_out", None, n);
            let (a, b) = futures::join!(a, b);
            Ok(a? + b?)
        })
        .orchestration(
            "approval",
            |ctx: OrchestrationContext, timeout_ms: u64| async move {
                let event = ctx.wait_for_event::<String>("approve");
                let timer = ctx.sleep(Duration::from_millis(timeout_ms));
                match ctx.when_any2(event, timer).await {
                    Either::Left(answer) => Ok(format!("approved by {}", answer?)),
                    Either::Right(_) => Ok("timed out".to_string()),
                }
            },
        )
        .orchestration(
            "counter",
            |ctx: OrchestrationContext, state: (u32, u32)| async move {
                // (iteration, limit): continue as new until the limit.
                let (i, limit) = state;
                ctx.set_custom_status(&i);
                if i >= limit {
                    return Ok(i);
                }
                ctx.call_activity::<_, i64>("add_one", i as i64).await?;
                ctx.continue_as_new((i + 1, limit), false);
                Ok(i)
            },
        )
        .orchestration("events", |ctx: OrchestrationContext, n: u32| async move {
            let mut sum = 0i64;
            for _ in 0..n {
                sum += ctx.wait_for_event::<i64>("value").await?;
            }
            Ok(sum)
        })
        .orchestration(
            "echo_len",
            |_ctx: OrchestrationContext, s: String| async move { Ok::<_, TaskError>(s.len()) },
        )
        .orchestration("failing", |ctx: OrchestrationContext, _: ()| async move {
            ctx.call_activity::<_, ()>("fail", "boom").await?;
            Ok(())
        })
}

pub async fn open(dir: &Path) -> Engine {
    Engine::open(config(dir), registry())
        .await
        .expect("engine opens")
}

/// Starts a `chain` of `steps` under each of `ids`, all at once, and waits until every one has
/// completed (and checks that it did); returns the ids.
pub async fn run_chains(
    client: &Client,
    steps: i64,
    ids: impl IntoIterator<Item = String>,
) -> Vec<String> {
    let mut started = Vec::new();
    for id in ids {
        let id = client
            .start_with(
                "chain",
                &steps,
                StartOptions {
                    instance_id: Some(id),
                    ..StartOptions::default()
                },
            )
            .await
            .unwrap();
        started.push(id);
    }
    for id in &started {
        let done = client.wait_for_completion(id, WAIT).await.unwrap();
        assert_eq!(done.status, RuntimeStatus::Completed, "{id}");
    }
    started
}
