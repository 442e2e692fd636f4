//! The timer wheel: which armed durable timers a partition holds in memory.
//!
//! Armed timers live in the store's `work` table ([`cairn_core::work`]), filed by due time, or,
//! until the next checkpoint, in the state machine's memory. A hub of a million orchestrations
//! each waiting on a timer must not hold a million timers in memory, so the wheel holds the
//! soonest `timer_window` of them and a horizon: every armed timer due at or before the horizon is
//! in the wheel, none after it is. When the wheel runs low the leader reads the next ones
//! from the store and from memory; a timer armed beyond the horizon is left for that read.
//!
//! This module only decides when timers fire; the state machine decides what firing does (a
//! timer fired twice, or fired after its execution ended, changes nothing).

use super::*;

/// The soonest armed timers, and how far they reach.
pub(super) struct TimerWheel {
    /// (due, id), soonest first.
    due: BTreeSet<(Millis, u64)>,
    /// Every armed timer at or before this (due, id) is in `due`; None: every armed timer is.
    horizon: Option<(Millis, u64)>,
    /// How many the wheel holds at most.
    size: usize,
}

impl TimerWheel {
    /// A wheel of `size` timers that knows nothing yet: the first fill reads from the start.
    pub(super) fn new(size: usize) -> Self {
        TimerWheel {
            due: BTreeSet::new(),
            horizon: Some((0, 0)),
            size: size.max(1),
        }
    }

    /// The soonest due time, if any timer is in the wheel.
    pub(super) fn next_due(&self) -> Option<Millis> {
        self.due.first().map(|(due, _)| *due)
    }

    /// A timer was armed: in the wheel if it falls within the horizon. A full wheel gives up
    /// its latest timers and pulls the horizon in.
    pub(super) fn armed(&mut self, due: Millis, id: u64) {
        if self.horizon.is_some_and(|h| (due, id) > h) {
            return;
        }
        self.due.insert((due, id));
        if self.due.len() > self.size {
            while self.due.len() > self.size {
                self.due.pop_last();
            }
            self.horizon = self.due.last().copied();
        }
    }

    /// Takes the timers due at `now` or before.
    fn take_due(&mut self, now: Millis) -> Vec<u64> {
        let mut ids = Vec::new();
        while let Some(&(due, id)) = self.due.first() {
            if due > now {
                break;
            }
            self.due.pop_first();
            ids.push(id);
        }
        ids
    }

    fn wants_more(&self) -> bool {
        self.horizon.is_some() && self.due.len() <= self.size / 2
    }
}

impl Leader {
    /// Timers due by `now` that may still fire (not fired since the checkpoint).
    pub(super) fn due_timers(&mut self, now: Millis) -> Vec<u64> {
        let ids = self.timers.take_due(now);
        self.fill_timers();
        ids.into_iter()
            .filter(|id| !self.state.timer_fired(*id))
            .collect()
    }

    /// Reads the next armed timers beyond the horizon, from the store (with a checkpoint
    /// being written overlaid) and from memory, if the wheel runs low.
    pub(super) fn fill_timers(&mut self) {
        if !self.timers.wants_more() || self.failed.is_some() {
            return;
        }
        let Some(after) = self.timers.horizon else {
            return;
        };
        let want = self.timers.size - self.timers.due.len();
        let mut stored = Vec::with_capacity(want);
        let mut store_more = false;
        let r = self.store.scan_work(
            &cairn_core::work::timer_due_prefix(),
            Some(&cairn_core::work::timer_due_key(after.0, after.1)),
            &mut |key, _| {
                let Some(timer) = cairn_core::work::timer_due_of(key) else {
                    return true;
                };
                if self.state.timer_fired(timer.1) {
                    return true;
                }
                if stored.len() == want {
                    store_more = true;
                    return false;
                }
                stored.push(timer);
                true
            },
        );
        if let Err(e) = r {
            self.fail(format!("reading the armed timers failed: {e}"));
            return;
        }
        // Beyond the last stored one read, the store may hold more: nothing past it counts.
        let limit = if store_more {
            stored.last().copied()
        } else {
            None
        };
        let mut candidates: BTreeSet<(Millis, u64)> = stored.into_iter().collect();
        candidates.extend(
            self.state
                .timers_armed()
                .map(|(id, t)| (t.due, id))
                .filter(|k| *k > after && limit.is_none_or(|l| *k <= l)),
        );
        let complete = !store_more && candidates.len() <= want;
        let taken: Vec<(Millis, u64)> = candidates.into_iter().take(want).collect();
        self.timers.horizon = match (complete, taken.last()) {
            (true, _) => None,
            (false, Some(last)) => Some(*last),
            (false, None) => Some(after),
        };
        self.timers.due.extend(taken);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_wheel_keeps_the_soonest_and_pulls_its_horizon_in() {
        const WHEEL: usize = 64;
        let mut w = TimerWheel::new(WHEEL);
        w.horizon = None;
        for id in 0..(WHEEL as u64 + 10) {
            w.armed(1_000_000 - id, id);
        }
        assert_eq!(w.due.len(), WHEEL);
        let h = w.horizon.expect("a horizon once full");
        assert!(w.due.iter().all(|k| *k <= h));
        // Beyond the horizon: left for a fill.
        w.armed(h.0 + 1, 1);
        assert_eq!(w.due.len(), WHEEL);
        assert_eq!(w.next_due(), Some(1_000_000 - (WHEEL as u64 + 9)));
        let fired = w.take_due(1_000_000 - (WHEEL as u64 + 8));
        assert_eq!(fired.len(), 2);
        assert!(!w.wants_more(), "still more than half full");
    }
}
