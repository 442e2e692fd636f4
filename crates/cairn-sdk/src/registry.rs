//! The registry: names to orchestrator and activity functions.
//!
//! Names are matched exactly. A name that is not registered does not hang an instance: the
//! orchestration fails with `OrchestrationNotFound`, an activity call fails with the
//! non-retriable `ActivityNotFound`, both naming what *is* registered.

use crate::entity::{erase_entity, Entity, EntityFn};
use crate::error::TaskError;
use crate::orchestration::{erase_orchestrator, OrchestrationContext, OrchestratorFn};
use cairn_core::FailureDetails;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// What an activity function sees besides its input.
#[derive(Debug, Clone)]
pub struct ActivityContext {
    pub instance_id: String,
    pub name: String,
    pub task_id: i32,
}

pub type ActivityFn = Arc<
    dyn Fn(
            ActivityContext,
            Option<String>,
        ) -> BoxFuture<'static, Result<Option<String>, FailureDetails>>
        + Send
        + Sync,
>;

#[derive(Clone, Default)]
pub struct Registry {
    orchestrations: BTreeMap<String, OrchestratorFn>,
    activities: BTreeMap<String, ActivityFn>,
    entities: BTreeMap<String, EntityFn>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers an orchestrator: `async fn(OrchestrationContext, I) -> Result<O, TaskError>`.
    pub fn orchestration<F, Fut, I, O>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, TaskError>> + Send + 'static,
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
    {
        self.orchestrations
            .insert(name.to_string(), erase_orchestrator(f));
        self
    }

    /// Registers an activity: `async fn(ActivityContext, I) -> Result<O, TaskError>`.
    pub fn activity<F, Fut, I, O>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, TaskError>> + Send + 'static,
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
    {
        let f = Arc::new(f);
        let erased: ActivityFn = Arc::new(move |ctx: ActivityContext, input: Option<String>| {
            let f = f.clone();
            Box::pin(async move {
                let input: I = crate::error::decode_input(
                    input.as_deref(),
                    &format!("activity '{}'", ctx.name),
                )?;
                let output = f(ctx, input).await.map_err(|e| e.failure)?;
                crate::error::encode_output(&output)
            })
        });
        self.activities.insert(name.to_string(), erased);
        self
    }

    /// Registers an entity type under `name` (matched case-insensitively, as entity ids are).
    pub fn entity<E: Entity>(mut self, name: &str) -> Self {
        self.entities
            .insert(name.to_lowercase(), erase_entity::<E>());
        self
    }

    pub fn get_entity(&self, name: &str) -> Option<&EntityFn> {
        self.entities.get(&name.to_lowercase())
    }

    #[doc(hidden)] // for the engine that runs it, not for users
    pub fn entity_not_found(&self, name: &str) -> FailureDetails {
        FailureDetails::new(
            "EntityNotFound",
            format!(
                "no entity named '{name}' is registered (registered: {})",
                list(self.entities.keys().map(|s| s.as_str()).collect())
            ),
        )
        .non_retriable()
    }

    pub fn get_orchestration(&self, name: &str) -> Option<&OrchestratorFn> {
        self.orchestrations.get(name)
    }

    pub fn get_activity(&self, name: &str) -> Option<&ActivityFn> {
        self.activities.get(name)
    }

    pub fn orchestration_names(&self) -> Vec<&str> {
        self.orchestrations.keys().map(|s| s.as_str()).collect()
    }

    pub fn activity_names(&self) -> Vec<&str> {
        self.activities.keys().map(|s| s.as_str()).collect()
    }

    #[doc(hidden)] // for the engine that runs it, not for users
    pub fn orchestration_not_found(&self, name: &str) -> FailureDetails {
        FailureDetails::new(
            "OrchestrationNotFound",
            format!(
                "no orchestration named '{name}' is registered (registered: {})",
                list(self.orchestration_names())
            ),
        )
        .non_retriable()
    }

    #[doc(hidden)] // for the engine that runs it, not for users
    pub fn activity_not_found(&self, name: &str) -> FailureDetails {
        FailureDetails::new(
            "ActivityNotFound",
            format!(
                "no activity named '{name}' is registered (registered: {})",
                list(self.activity_names())
            ),
        )
        .non_retriable()
    }
}

fn list(names: Vec<&str>) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}
