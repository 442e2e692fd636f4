//! # Pending work in the checkpoint store
//!
//! Activities that wait for a worker live in the store's `work` table, not in the partition's
//! memory: a million queued activities cost disk, and only the window the shell dispatches
//! costs memory. This module owns the keys (the store treats them as opaque bytes); the state
//! machine decides what is put and deleted ([`crate::partition::CheckpointData`]).
//!
//! Each queued activity is filed under three keys, all ending with its activity id as 8
//! big-endian bytes (ids grow, so each prefix lists its activities oldest first):
//!
//! | key | value | read by |
//! |---|---|---|
//! | `a` id | the [`ActivityWorkItem`](crate::ActivityWorkItem) | its completion (by id) |
//! | `n` len name id | empty | the dispatch window, a name at a time |
//! | `i` len instance id | empty | a rewind (is an attempt still in flight?) |
//!
//! Each armed durable timer likewise:
//!
//! | key | value | read by |
//! |---|---|---|
//! | `t` id | the [`TimerEntry`](crate::TimerEntry) | its firing (by id) |
//! | `d` due id | empty | the shell's timer wheel, soonest first |
//! | `k` len instance id | empty | a rewind (is the timer still armed?) |
//!
//! Work that is added and taken between two checkpoints never reaches the store. Changing any
//! of this is a change of the on-disk format.

use crate::index::push_name;
use crate::{ActivityWorkItem, Millis, TimerEntry};

/// Changes to the `work` table: (key, bytes) to put, then keys to delete.
pub type WorkChanges = (Vec<(Vec<u8>, Vec<u8>)>, Vec<Vec<u8>>);

const ITEM: u8 = b'a';
const BY_NAME: u8 = b'n';
const BY_INSTANCE: u8 = b'i';
const TIMER: u8 = b't';
const TIMER_DUE: u8 = b'd';
const TIMER_BY_INSTANCE: u8 = b'k';

/// `tag` followed by `id`: the key that holds one piece of work.
fn id_key(tag: u8, id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(tag);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// `tag` followed by `name` (length-prefixed): the prefix of a list, ids to follow.
fn list_prefix(tag: u8, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + name.len() + 8);
    key.push(tag);
    push_name(&mut key, name);
    key
}

/// `prefix` followed by `id`: an entry of a list.
fn listed(mut prefix: Vec<u8>, id: u64) -> Vec<u8> {
    prefix.extend_from_slice(&id.to_be_bytes());
    prefix
}

/// The key that holds activity `id`'s work item.
pub fn activity_key(id: u64) -> Vec<u8> {
    id_key(ITEM, id)
}

/// The prefix of the queued activities of `name`, oldest first.
pub fn activity_name_prefix(name: &str) -> Vec<u8> {
    list_prefix(BY_NAME, name)
}

/// The prefix of the queued activities of instance `instance_id`.
pub fn activity_instance_prefix(instance_id: &str) -> Vec<u8> {
    list_prefix(BY_INSTANCE, instance_id)
}

/// Every key activity `id` is filed under, the work item's own first.
pub fn activity_keys(id: u64, item: &ActivityWorkItem) -> [Vec<u8>; 3] {
    [
        activity_key(id),
        listed(activity_name_prefix(&item.name), id),
        listed(activity_instance_prefix(&item.instance_id), id),
    ]
}

/// The key that holds timer `id`'s entry.
pub fn timer_key(id: u64) -> Vec<u8> {
    id_key(TIMER, id)
}

/// The prefix of every armed timer by due time, soonest first.
pub fn timer_due_prefix() -> Vec<u8> {
    vec![TIMER_DUE]
}

/// The key of timer `id`, due at `due`, in [`timer_due_prefix`].
pub fn timer_due_key(due: Millis, id: u64) -> Vec<u8> {
    listed(id_key(TIMER_DUE, due), id)
}

/// (due, id) of a key of [`timer_due_prefix`].
pub fn timer_due_of(key: &[u8]) -> Option<(Millis, u64)> {
    let rest = key.strip_prefix(&[TIMER_DUE])?;
    let due = Millis::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let id = u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?);
    Some((due, id))
}

/// The prefix of the armed timers of instance `instance_id`.
pub fn timer_instance_prefix(instance_id: &str) -> Vec<u8> {
    list_prefix(TIMER_BY_INSTANCE, instance_id)
}

/// Every key timer `id` is filed under, the entry's own first.
pub fn timer_keys(id: u64, timer: &TimerEntry) -> [Vec<u8>; 3] {
    [
        timer_key(id),
        timer_due_key(timer.due, id),
        listed(timer_instance_prefix(&timer.instance_id), id),
    ]
}

/// The id (of an activity or a timer) a work key ends with; None for a key too short to be
/// one.
pub fn id_of(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8).map(|at| &key[at..])?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, instance: &str) -> ActivityWorkItem {
        ActivityWorkItem {
            instance_id: instance.into(),
            execution_id: "e".into(),
            task_id: 0,
            name: name.into(),
            version: None,
            input: None,
        }
    }

    #[test]
    fn keys_sort_by_id_within_a_name_and_names_never_overlap() {
        let a = activity_keys(2, &item("a", "x"));
        let a_later = activity_keys(300, &item("a", "y"));
        let ab = activity_keys(1, &item("ab", "x"));
        assert!(a[1] < a_later[1]);
        assert!(a[1].starts_with(&activity_name_prefix("a")));
        assert!(!ab[1].starts_with(&activity_name_prefix("a")));
        assert!(a[2].starts_with(&activity_instance_prefix("x")));
        for k in a.iter().chain(&a_later).chain(&ab) {
            assert!(id_of(k).is_some());
        }
        assert_eq!(id_of(&a_later[0]), Some(300));
        assert_eq!(id_of(&a_later[1]), Some(300));
        assert_eq!(id_of(&ab[2]), Some(1));
        assert_eq!(id_of(b"short"), None);
    }
}
