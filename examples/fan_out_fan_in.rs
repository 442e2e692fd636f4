//! Fan-out/fan-in: run activities in parallel and aggregate their results.
//!
//! `cargo run --release -p cairn-examples --example fan_out_fan_in`

use cairn_runtime::*;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new()
        .activity("list_files", |_ctx, n: u32| async move {
            Ok::<_, TaskError>((0..n).map(|i| format!("file-{i}.txt")).collect::<Vec<_>>())
        })
        .activity("count_bytes", |_ctx, name: String| async move {
            Ok::<_, TaskError>(name.len() as u64 * 100)
        })
        .orchestration("backup", |ctx: OrchestrationContext, n: u32| async move {
            let files: Vec<String> = ctx.call_activity("list_files", n).await?;
            let uploads = files
                .iter()
                .map(|f| ctx.call_activity::<_, u64>("count_bytes", f))
                .collect();
            let mut total = 0;
            for r in ctx.when_all(uploads).await {
                total += r?;
            }
            Ok(total)
        });
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
    let id = client.start("backup", &100u32).await?;
    let status = client
        .wait_for_completion(&id, Duration::from_secs(10))
        .await?;
    println!(
        "{id}: {} -> {} bytes",
        status.status,
        status.output::<u64>()?
    );
    engine.shutdown().await?;
    Ok(())
}
