//! # Secondary indexes of a partition's instances
//!
//! The keys under which the checkpoint store files each instance besides its id, so that a
//! query by status, orchestration name or creation time reads only the instances it returns,
//! newest first. This module owns the key encoding; the store treats keys as opaque bytes (it
//! keeps, per instance, the keys it was last given, and replaces them on the next checkpoint).
//!
//! Keys are derived from an instance's state alone, so they are deterministic and recovered with
//! the checkpoint like the state itself. Every key ends with the creation time (or, for
//! entities, the last operation time) as 8 big-endian bytes followed by the instance id, so that
//! within one prefix the keys sort by time and then id: a scan in descending key order is
//! "newest first", and a position in it is `(time, id)`, which stays valid however many
//! instances are created or purged around it.
//!
//! | kind | key |
//! |---|---|
//! | all orchestrations by creation | `c` time id |
//! | by runtime status | `s` status time id |
//! | by orchestration name | `n` len name time id |
//! | by name and status | `m` len name status time id |
//! | entities by name and last operation | `e` len name time id |
//! | ended orchestrations by status and completion (retention) | `f` status time id |
//! | the same within a name | `g` len name status time id |
//! | runnable instances (the backlog) by name | `w` len name (MAX − creation time) id |
//!
//! The backlog key counts time down, so that its descending scan (the only direction the store
//! scans) meets the oldest instance first: the shell dispatches a backlog in creation order,
//! a window at a time, instead of holding it all in memory.
//!
//! Changing any of this is a change of the on-disk format.

use crate::history::RuntimeStatus;
use crate::partition::{entity_name, is_runnable, InstanceState};
use crate::Millis;

const ALL: u8 = b'c';
const STATUS: u8 = b's';
const NAME: u8 = b'n';
const NAME_STATUS: u8 = b'm';
const ENTITY: u8 = b'e';
const ENDED: u8 = b'f';
const NAME_ENDED: u8 = b'g';
const BACKLOG: u8 = b'w';

/// A stable one-byte code per status (never reuse or renumber one).
pub fn status_code(s: RuntimeStatus) -> u8 {
    match s {
        RuntimeStatus::Pending => 0,
        RuntimeStatus::Running => 1,
        RuntimeStatus::Completed => 2,
        RuntimeStatus::ContinuedAsNew => 3,
        RuntimeStatus::Failed => 4,
        RuntimeStatus::Terminated => 5,
        RuntimeStatus::Suspended => 6,
    }
}

pub(crate) fn push_name(key: &mut Vec<u8>, name: &str) {
    // Length-prefixed, so one name's keys never share a prefix with a longer name's.
    let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(&name.as_bytes()[..len as usize]);
}

/// The prefix of the index a query reads: by name and status, by name, by status, or all
/// orchestrations.
pub fn orchestration_prefix(name: Option<&str>, status: Option<RuntimeStatus>) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    match (name, status) {
        (Some(n), Some(s)) => {
            key.push(NAME_STATUS);
            push_name(&mut key, n);
            key.push(status_code(s));
        }
        (Some(n), None) => {
            key.push(NAME);
            push_name(&mut key, n);
        }
        (None, Some(s)) => {
            key.push(STATUS);
            key.push(status_code(s));
        }
        (None, None) => key.push(ALL),
    }
    key
}

/// The prefix of ended orchestrations (of one name, or all) with status `status`, keyed by
/// completion time: what a retention policy reads.
pub fn ended_prefix(name: Option<&str>, status: RuntimeStatus) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    match name {
        Some(n) => {
            key.push(NAME_ENDED);
            push_name(&mut key, n);
        }
        None => key.push(ENDED),
    }
    key.push(status_code(status));
    key
}

/// The prefix of the entities of one name.
pub fn entity_prefix(name: &str) -> Vec<u8> {
    let mut key = vec![ENTITY];
    push_name(&mut key, name);
    key
}

/// The prefix of the runnable instances of one orchestration or entity name.
pub fn backlog_prefix(name: &str) -> Vec<u8> {
    let mut key = vec![BACKLOG];
    push_name(&mut key, name);
    key
}

/// The key at position `(time, id)` under `prefix`.
pub fn key_at(prefix: &[u8], time: Millis, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8 + id.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(&time.to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// The first key past every key under `prefix` at times up to and including `time`: an
/// exclusive upper bound for a newest-first scan that starts at `time`.
pub fn after_time(prefix: &[u8], time: Millis) -> Vec<u8> {
    match time.checked_add(1) {
        Some(t) => key_at(prefix, t, ""),
        None => {
            let mut key = prefix.to_vec();
            key.extend_from_slice(&[0xff; 9]);
            key
        }
    }
}

/// The time of a key under a prefix of `prefix_len` bytes (None if the key is too short).
pub fn time_of(key: &[u8], prefix_len: usize) -> Option<Millis> {
    let bytes: [u8; 8] = key.get(prefix_len..prefix_len + 8)?.try_into().ok()?;
    Some(Millis::from_be_bytes(bytes))
}

/// Every index key of an instance.
pub fn keys(state: &InstanceState) -> Vec<Vec<u8>> {
    let id = state.instance_id.as_str();
    let backlog = is_runnable(state).then(|| {
        key_at(
            &backlog_prefix(&state.name),
            Millis::MAX - state.created_at,
            id,
        )
    });
    if let Some(entity) = &state.entity {
        let name = entity_name(id).unwrap_or("");
        let mut keys = vec![key_at(&entity_prefix(name), entity.last_modified, id)];
        keys.extend(backlog);
        return keys;
    }
    let created = state.created_at;
    let name = Some(state.name.as_str());
    let status = Some(state.status);
    let mut keys = vec![
        key_at(&orchestration_prefix(None, None), created, id),
        key_at(&orchestration_prefix(None, status), created, id),
        key_at(&orchestration_prefix(name, None), created, id),
        key_at(&orchestration_prefix(name, status), created, id),
    ];
    if let Some(completed) = state.completed_at.filter(|_| state.status.is_terminal()) {
        keys.push(key_at(&ended_prefix(None, state.status), completed, id));
        keys.push(key_at(&ended_prefix(name, state.status), completed, id));
    }
    keys.extend(backlog);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_time_then_id_within_a_prefix_and_names_do_not_overlap() {
        let p = orchestration_prefix(Some("a"), None);
        assert!(key_at(&p, 5, "z") < key_at(&p, 6, "a"));
        assert!(key_at(&p, 6, "a") < key_at(&p, 6, "b"));
        assert!(key_at(&p, Millis::MAX, "zzz") < after_time(&p, Millis::MAX));
        assert!(key_at(&p, 6, "zzz") < after_time(&p, 6));
        assert!(after_time(&p, 6) <= key_at(&p, 7, ""));
        // "a" and "ab": one is not a prefix of the other's keys.
        let ab = orchestration_prefix(Some("ab"), None);
        assert!(!key_at(&ab, 1, "x").starts_with(&p));
        assert_eq!(time_of(&key_at(&p, 42, "x"), p.len()), Some(42));
        // Every status has its own code.
        let codes: std::collections::BTreeSet<u8> =
            RuntimeStatus::ALL.iter().map(|s| status_code(*s)).collect();
        assert_eq!(codes.len(), RuntimeStatus::ALL.len());
    }
}
