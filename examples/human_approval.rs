//! Human interaction: wait for an approval event, or escalate when a durable timer fires first.
//!
//! `cargo run --release -p cairn-examples --example human_approval`

use cairn_runtime::*;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new()
        .activity("escalate", |_ctx, id: String| async move {
            Ok::<_, TaskError>(format!("escalated {id}"))
        })
        .orchestration(
            "approval",
            |ctx: OrchestrationContext, timeout_ms: u64| async move {
                ctx.set_custom_status(&"waiting for approval");
                let approval = ctx.wait_for_event::<bool>("approval");
                let deadline = ctx.sleep(Duration::from_millis(timeout_ms));
                match ctx.when_any2(approval, deadline).await {
                    Either::Left(approved) => Ok(if approved? {
                        "approved".to_string()
                    } else {
                        "rejected".to_string()
                    }),
                    Either::Right(_) => ctx.call_activity("escalate", ctx.instance_id()).await,
                }
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

    let answered = client.start("approval", &60_000u64).await?;
    client
        .wait_for_start(&answered, Duration::from_secs(10))
        .await?;
    client.raise_event(&answered, "approval", &true).await?;
    let ignored = client.start("approval", &300u64).await?;

    for id in [answered, ignored] {
        let status = client
            .wait_for_completion(&id, Duration::from_secs(10))
            .await?;
        println!("{id}: {}", status.output::<String>()?);
    }
    engine.shutdown().await?;
    Ok(())
}
