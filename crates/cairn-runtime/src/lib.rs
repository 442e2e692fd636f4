//! # cairn-runtime: the engine and its Rust API
//!
//! * [`orchestration`] and [`registry`]: what users write (orchestrators, activities);
//! * [`replay`]: runs orchestrator code over history (with cached live cursors);
//! * [`engine`]: opens a task hub, recovers partitions, wires them together;
//! * [`hub`]: the hub's directory: its lock, `hub.json`, and each partition's identity;
//! * `leader`: the per-partition shell (commit, speculation, effects, checkpoints);
//! * [`client`]: start, query, signal and manage instances;
//! * [`stats`]: what partitions expose for metrics and dashboards.
//!
//! ```no_run
//! use cairn_runtime::{Engine, EngineConfig, Registry, OrchestrationContext, TaskError};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::new()
//!     .activity("greet", |_ctx, name: String| async move { Ok::<_, TaskError>(format!("Hello, {name}!")) })
//!     .orchestration("hello", |ctx: OrchestrationContext, name: String| async move {
//!         ctx.call_activity::<_, String>("greet", name).await
//!     });
//! let engine = Engine::open(EngineConfig::default(), registry).await?;
//! let client = engine.client();
//! let id = client.start("hello", &"Cairn").await?;
//! let done = client.wait_for_completion(&id, std::time::Duration::from_secs(10)).await?;
//! assert_eq!(done.output::<String>()?, "Hello, Cairn!");
//! engine.shutdown().await?;
//! # Ok(()) }
//! ```

pub use cairn_sdk::{entity, orchestration, registry, replay};

pub mod auth;
mod blocking;
pub mod client;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod forward;
pub mod hub;
mod inbox;
mod leader;
pub mod lending;
pub mod remote;
pub mod retention;
pub mod router;
pub mod scale;
mod shared;
pub mod stats;
pub mod status;

pub use cairn_core::{EventKind, ExistingPolicy, FailureDetails, HistoryEvent, RuntimeStatus};
pub use client::{
    CleanResult, Client, EntityPage, EntityQuery, EntityStatus, InstanceQuery, InstanceStatus,
    QueryFilter, QueryPage, StartOptions,
};
pub use engine::{Engine, EngineConfig, Partitions, RecoveryReport};
pub use entity::{Entity, EntityContext};
pub use error::{EngineError, TaskError};
pub use futures::future::Either;
pub use orchestration::{CriticalSection, DurableFuture, OrchestrationContext, RetryPolicy};
pub use registry::{ActivityContext, Registry};
pub use retention::{Retention, RetentionPolicy, RetentionRule};
pub use stats::{LeaderStats, WorkGauge};

/// The README's example, compiled and run as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeExample;
