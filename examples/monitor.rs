//! Monitor: poll something on a schedule with `continue_as_new`, so history stays small however
//! long the monitor runs.
//!
//! `cargo run --release -p cairn-examples --example monitor`

use cairn_runtime::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize, Clone)]
struct Watch {
    job: String,
    checks: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new()
        .activity("job_finished", |_ctx, checks: u32| async move {
            Ok::<_, TaskError>(checks >= 4)
        })
        .orchestration(
            "monitor",
            |ctx: OrchestrationContext, watch: Watch| async move {
                let done: bool = ctx.call_activity("job_finished", watch.checks).await?;
                ctx.set_custom_status(&format!("check {} of job {}", watch.checks, watch.job));
                if done {
                    return Ok(format!(
                        "job {} finished after {} checks",
                        watch.job, watch.checks
                    ));
                }
                ctx.sleep(Duration::from_millis(100)).await?;
                ctx.continue_as_new(
                    Watch {
                        checks: watch.checks + 1,
                        ..watch
                    },
                    true,
                );
                Ok(String::new())
            },
        );
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(
        EngineConfig {
            data_dir: dir.path().into(),
            ..Default::default()
        },
        registry,
    )
    .await?;
    let client = engine.client();
    let id = client
        .start(
            "monitor",
            &Watch {
                job: "nightly-etl".into(),
                checks: 0,
            },
        )
        .await?;
    let status = client
        .wait_for_completion(&id, Duration::from_secs(10))
        .await?;
    let history = client
        .get_status(&id, true)
        .await?
        .and_then(|s| s.history)
        .unwrap_or_default();
    println!(
        "{id}: {} ({} history events in the last execution)",
        status.output::<String>()?,
        history.len()
    );
    engine.shutdown().await?;
    Ok(())
}
