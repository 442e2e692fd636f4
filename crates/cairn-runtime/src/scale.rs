//! The scale recommendation an autoscaler (KEDA, an HPA, a script) reads from `/api/scale`:
//! how many SDK worker processes the hub's work needs now, and how many Cairn nodes.
//!
//! Compute lives in the SDK workers, not in Cairn: a worker process runs the orchestrations,
//! activities and entities a partition hands out. So the worker count follows the backlog
//! (instances with work, queued activities) and how long work has waited for a worker; the
//! node count follows whether the hub needs a node at all, and in cluster mode keeps two, so
//! that either takes the other's partitions over if it dies.
//!
//! Pure: [`recommend`] turns figures the partitions already keep ([`ScaleInputs`]) into a
//! [`Recommendation`]. It reads no clock and owns no state, so the same figures always give
//! the same answer; the autoscaler's own windows smooth it over time.

use std::time::Duration;

/// How much work one worker process is expected to carry.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePolicy {
    /// Backlog items (instances with work plus queued activities) per worker process.
    pub backlog_per_worker: u64,
    /// Work that has waited longer than this for a worker means the workers present are
    /// saturated: one more is recommended even if the backlog alone would not ask for it.
    pub max_wait: Duration,
}

impl Default for ScalePolicy {
    fn default() -> Self {
        ScalePolicy {
            backlog_per_worker: 100,
            max_wait: Duration::from_secs(5),
        }
    }
}

/// The hub's figures at one moment, summed over its partitions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaleInputs {
    /// Orchestration and entity instances with work to run (running, or waiting for a worker).
    pub instances_with_work: u64,
    /// Activities queued or running.
    pub activities: u64,
    /// Work items waiting for a worker (or a local slot) right now.
    pub waiting: u64,
    /// How long the oldest of them has waited.
    pub oldest_wait: Duration,
    /// SDK worker streams connected to this node.
    pub connected_workers: u64,
    /// Armed durable timers: the hub needs a node to fire them even with nothing else to do.
    pub timers_armed: u64,
    /// Whether this node is one of a cluster's (a second node is then worth keeping).
    pub cluster: bool,
}

/// What to run now, with the reasons, for people reading the JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub workers: u64,
    pub workers_reason: String,
    pub nodes: u64,
    pub nodes_reason: String,
    /// Nothing to run and no timer armed: the hub may stop entirely (its state stays in the
    /// store, or in JetStream in cluster mode).
    pub idle: bool,
}

/// The recommendation for `inputs` under `policy`.
pub fn recommend(inputs: &ScaleInputs, policy: &ScalePolicy) -> Recommendation {
    let backlog = inputs.instances_with_work + inputs.activities;
    let per_worker = policy.backlog_per_worker.max(1);
    // The backlog is the partitions' own count; `waiting` counts queued work items, which can
    // outlive their reason (an instance terminated before a worker took its episode), so it
    // only ever adds to a non-zero backlog.
    let (workers, workers_reason) = if backlog == 0 {
        (0, "no work to run".to_string())
    } else {
        let by_backlog = backlog.div_ceil(per_worker).max(1);
        let saturated = inputs.waiting > 0
            && inputs.connected_workers > 0
            && inputs.oldest_wait > policy.max_wait
            && by_backlog <= inputs.connected_workers;
        if saturated {
            (
                inputs.connected_workers + 1,
                format!(
                    "work has waited {:.1}s for a worker (more than {:.1}s): the {} connected are saturated",
                    inputs.oldest_wait.as_secs_f64(),
                    policy.max_wait.as_secs_f64(),
                    inputs.connected_workers
                ),
            )
        } else {
            (
                by_backlog,
                format!("a backlog of {backlog} at {per_worker} per worker"),
            )
        }
    };
    let idle = backlog == 0 && inputs.timers_armed == 0;
    let (nodes, nodes_reason) = if idle {
        (
            0,
            "idle: no work and no timer armed; a node is needed again when a request arrives"
                .to_string(),
        )
    } else if inputs.cluster {
        (
            2,
            "two nodes share the hub's partitions: either takes the other's over within seconds \
             if it dies"
                .to_string(),
        )
    } else {
        (
            1,
            "an embedded hub is served by one node (a cluster keeps two)".to_string(),
        )
    };
    Recommendation {
        workers,
        workers_reason,
        nodes,
        nodes_reason,
        idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> ScaleInputs {
        ScaleInputs::default()
    }

    #[test]
    fn an_empty_hub_needs_nothing() {
        let r = recommend(&inputs(), &ScalePolicy::default());
        assert_eq!((r.workers, r.nodes, r.idle), (0, 0, true));
    }

    #[test]
    fn queued_items_without_a_backlog_ask_for_nothing() {
        let r = recommend(
            &ScaleInputs {
                waiting: 100,
                oldest_wait: Duration::from_secs(60),
                connected_workers: 1,
                ..inputs()
            },
            &ScalePolicy::default(),
        );
        assert_eq!((r.workers, r.nodes, r.idle), (0, 0, true), "{r:?}");
    }

    #[test]
    fn an_armed_timer_keeps_a_node_but_no_worker() {
        let r = recommend(
            &ScaleInputs {
                timers_armed: 1,
                ..inputs()
            },
            &ScalePolicy::default(),
        );
        assert_eq!((r.workers, r.nodes, r.idle), (0, 1, false));
        let r = recommend(
            &ScaleInputs {
                timers_armed: 1,
                cluster: true,
                ..inputs()
            },
            &ScalePolicy::default(),
        );
        assert_eq!(r.nodes, 2, "a cluster keeps a second node");
    }

    #[test]
    fn workers_follow_the_backlog() {
        let policy = ScalePolicy::default();
        for (instances, activities, expected) in [
            (1, 0, 1),
            (0, 100, 1),
            (60, 41, 2),
            (1000, 0, 10),
            (0, 1_000_001, 10_001),
        ] {
            let r = recommend(
                &ScaleInputs {
                    instances_with_work: instances,
                    activities,
                    ..inputs()
                },
                &policy,
            );
            assert_eq!(r.workers, expected, "{instances} + {activities}: {r:?}");
            assert!(r.workers_reason.contains("per worker"), "{r:?}");
        }
    }

    #[test]
    fn work_that_waits_too_long_asks_for_one_more_worker() {
        let policy = ScalePolicy::default();
        let busy = ScaleInputs {
            instances_with_work: 10,
            waiting: 4,
            connected_workers: 3,
            oldest_wait: Duration::from_secs(6),
            ..inputs()
        };
        let r = recommend(&busy, &policy);
        assert_eq!(r.workers, 4, "{r:?}");
        assert!(r.workers_reason.contains("saturated"), "{r:?}");
        // Within the limit, the backlog decides.
        let r = recommend(
            &ScaleInputs {
                oldest_wait: Duration::from_secs(4),
                ..busy.clone()
            },
            &policy,
        );
        assert_eq!(r.workers, 1, "{r:?}");
        // Nobody connected: the backlog asks for the first one already.
        let r = recommend(
            &ScaleInputs {
                connected_workers: 0,
                ..busy
            },
            &policy,
        );
        assert_eq!(r.workers, 1, "{r:?}");
    }
}
