//! Function chaining: call activities one after another, each using the previous result.
//!
//! `cargo run --release -p cairn-examples --example function_chaining`

use cairn_runtime::*;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new()
        .activity("greet", |_ctx, city: String| async move {
            Ok::<_, TaskError>(format!("Hello, {city}!"))
        })
        .orchestration(
            "hello_cities",
            |ctx: OrchestrationContext, _: ()| async move {
                let mut greetings = Vec::new();
                for city in ["Tokyo", "Seattle", "London"] {
                    greetings.push(ctx.call_activity::<_, String>("greet", city).await?);
                }
                Ok(greetings)
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
    let id = client.start("hello_cities", &()).await?;
    let status = client
        .wait_for_completion(&id, Duration::from_secs(10))
        .await?;
    println!(
        "{id}: {} -> {:?}",
        status.status,
        status.output::<Vec<String>>()?
    );
    engine.shutdown().await?;
    Ok(())
}
