//! The `Clock` and `IdGen` seams: the shell's only reads of wall-clock time and draws of random
//! ids. The state machine sees neither (time enters through log records, ids through the
//! records that carry them), so swapping these makes a whole engine deterministic: the
//! simulator uses [`TokioClock`] on a paused runtime and [`SeededIds`].

use cairn_core::Millis;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as the shell stamps records and times episodes.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_millis(&self) -> Millis;
}

/// The system's wall clock (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> Millis {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0)
    }
}

/// Time from Tokio's clock, starting at `base`: on a runtime with paused time it advances only
/// as the runtime's timers do, in step with the leader's own sleeps.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base: Millis,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `base` now.
    pub fn starting_at(base: Millis) -> TokioClock {
        TokioClock {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_millis(&self) -> Millis {
        self.base + self.start.elapsed().as_millis() as Millis
    }
}

/// A clock that stands still until it is moved: for tests (and simulations) that need days to
/// pass in an instant while everything else (files, sockets, the runtime's timers) runs in real
/// time.
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock that reads `now` until it is moved.
    pub fn starting_at(now: Millis) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicU64::new(now))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(
            by.as_millis() as Millis,
            std::sync::atomic::Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> Millis {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// New ids: execution ids, generated instance ids, request ids (32 hex digits).
pub trait IdGen: Send + Sync + std::fmt::Debug {
    fn next_id(&self) -> String;
}

/// 128 random bits per id (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomIds;

impl IdGen for RandomIds {
    fn next_id(&self) -> String {
        format!("{:032x}", rand::random::<u128>())
    }
}

/// Ids from a seeded generator: the same seed gives the same ids in the same order.
#[derive(Debug)]
pub struct SeededIds(Mutex<rand::rngs::StdRng>);

impl SeededIds {
    pub fn new(seed: u64) -> SeededIds {
        SeededIds(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)))
    }
}

impl IdGen for SeededIds {
    fn next_id(&self) -> String {
        format!("{:032x}", self.0.lock().random::<u128>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_repeat_and_differ() {
        let (a, b) = (SeededIds::new(7), SeededIds::new(7));
        let first: Vec<String> = (0..5).map(|_| a.next_id()).collect();
        let again: Vec<String> = (0..5).map(|_| b.next_id()).collect();
        assert_eq!(first, again);
        assert_ne!(first[0], first[1]);
        assert_ne!(
            first,
            (0..5)
                .map(|_| SeededIds::new(8).next_id())
                .collect::<Vec<_>>()
        );
        assert_eq!(first[0].len(), 32);
    }

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let c = ManualClock::starting_at(1_000);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(c.now_millis(), 1_000);
        c.advance(std::time::Duration::from_secs(2));
        assert_eq!(c.now_millis(), 3_000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let c = TokioClock::starting_at(1_000);
        assert_eq!(c.now_millis(), 1_000);
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        assert_eq!(c.now_millis(), 6_000);
    }
}
