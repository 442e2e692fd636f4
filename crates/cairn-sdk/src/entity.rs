//! Durable entities in Rust: small stateful objects addressed by `(name, key)`.
//!
//! An entity type implements [`Entity`]: one method that applies an operation to `&mut self`.
//! Cairn keeps the state (serde), queues operations per entity, and runs them one at a time in
//! batches with one state write per batch. An operation that fails (returns an error or
//! panics) rolls back its own state change and its own signals only, and its error goes to the
//! caller. This module runs a batch; it does no I/O.

use crate::error::TaskError;
use cairn_core::{entity_instance_id, EntityAction, EntityOperation, FailureDetails, TaskResult};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// A durable entity type.
pub trait Entity: Default + Clone + Serialize + DeserializeOwned + Send + 'static {
    /// Applies `operation` (its input is `ctx.input()`) and returns the result for a caller.
    fn operation(
        &mut self,
        ctx: &mut EntityContext,
        operation: &str,
    ) -> Result<serde_json::Value, TaskError>;
}

/// What an entity operation sees besides its state.
pub struct EntityContext {
    entity_id: String,
    input: Option<String>,
    actions: Vec<EntityAction>,
    delete: bool,
    request_id: String,
    counter: u32,
}

impl EntityContext {
    /// The entity's instance id, `@name@key`.
    pub fn entity_id(&self) -> &str {
        &self.entity_id
    }

    /// The entity's key.
    pub fn key(&self) -> &str {
        self.entity_id.splitn(3, '@').nth(2).unwrap_or_default()
    }

    /// The operation's input, deserialized.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, TaskError> {
        crate::error::decode_input(
            self.input.as_deref(),
            &format!("an operation on {}", self.entity_id),
        )
        .map_err(TaskError::from)
    }

    fn next_id(&mut self) -> String {
        self.counter += 1;
        format!("{}:{}", self.request_id, self.counter)
    }

    /// Sends a one-way operation to another entity (sent only if this operation succeeds).
    pub fn signal_entity<I: Serialize>(
        &mut self,
        name: &str,
        key: &str,
        operation: &str,
        input: &I,
    ) -> Result<(), TaskError> {
        let request_id = self.next_id();
        self.actions.push(EntityAction::Signal {
            entity_id: entity_instance_id(name, key),
            operation: operation.to_string(),
            input: Some(serde_json::to_string(input)?),
            scheduled_time: None,
            request_id,
        });
        Ok(())
    }

    /// Starts an orchestration (only if this operation succeeds); returns its instance id.
    pub fn start_orchestration<I: Serialize>(
        &mut self,
        name: &str,
        input: &I,
    ) -> Result<String, TaskError> {
        let instance_id = format!("{:032x}", rand::random::<u128>());
        self.actions.push(EntityAction::StartOrchestration {
            instance_id: instance_id.clone(),
            name: name.to_string(),
            input: Some(serde_json::to_string(input)?),
            execution_id: format!("{:032x}", rand::random::<u128>()),
        });
        Ok(instance_id)
    }

    /// Deletes the entity's state once this operation completes.
    pub fn delete_state(&mut self) {
        self.delete = true;
    }
}

/// What running a batch produced: state after it, one result per operation, actions.
pub struct BatchOutput {
    pub state: Option<String>,
    pub results: Vec<TaskResult>,
    pub actions: Vec<EntityAction>,
}

/// Type-erased batch runner stored in the registry.
pub type EntityFn =
    Arc<dyn Fn(&str, Option<String>, &[EntityOperation]) -> BatchOutput + Send + Sync>;

#[doc(hidden)] // for the engine that runs it, not for users
pub fn erase_entity<E: Entity>() -> EntityFn {
    Arc::new(
        |entity_id: &str, state: Option<String>, ops: &[EntityOperation]| {
            run_batch::<E>(entity_id, state, ops)
        },
    )
}

fn run_batch<E: Entity>(
    entity_id: &str,
    state: Option<String>,
    ops: &[EntityOperation],
) -> BatchOutput {
    let mut results = Vec::with_capacity(ops.len());
    let mut actions = Vec::new();
    let mut current: Option<E> = match state.as_deref().map(serde_json::from_str::<E>) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            // The stored state no longer fits the type: refuse every operation, keep the state.
            let f = FailureDetails::new(
                "EntityStateDeserializationError",
                format!(
                    "the state of {entity_id} cannot be read as the registered entity type: {e}"
                ),
            )
            .non_retriable();
            return BatchOutput {
                state,
                results: ops.iter().map(|_| Err(f.clone())).collect(),
                actions,
            };
        }
    };
    for op in ops {
        let before = current.clone();
        let mut value = current.take().unwrap_or_default();
        let mut ctx = EntityContext {
            entity_id: entity_id.to_string(),
            input: op.input.clone(),
            actions: Vec::new(),
            delete: false,
            request_id: op.request_id.clone(),
            counter: 0,
        };
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            value.operation(&mut ctx, &op.operation)
        }));
        match outcome {
            Ok(Ok(v)) => {
                results.push(Ok(if v.is_null() {
                    None
                } else {
                    Some(v.to_string())
                }));
                current = if ctx.delete { None } else { Some(value) };
                actions.extend(ctx.actions);
            }
            Ok(Err(e)) => {
                results.push(Err(e.failure));
                current = before;
            }
            Err(_) => {
                results.push(Err(FailureDetails::new(
                    "Panic",
                    format!("operation '{}' on {entity_id} panicked", op.operation),
                )));
                current = before;
            }
        }
    }
    let state = current.and_then(|s| serde_json::to_string(&s).ok());
    BatchOutput {
        state,
        results,
        actions,
    }
}
