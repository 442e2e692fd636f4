//! Waiters: clients waiting for an instance to start or finish, answered when it does.

use super::*;

impl Leader {
    pub(super) fn register_waiter(
        &mut self,
        instance_id: String,
        until: WaitFor,
        reply: Reply<InstanceStatus>,
    ) {
        if let Some(status) = self.snapshot(&instance_id) {
            if until.satisfied_by(status.status) {
                self.hold(Held::Status(reply, status));
                return;
            }
        }
        self.waiters
            .entry(instance_id)
            .or_default()
            .push(Waiter { until, reply });
    }

    pub(super) fn notify_waiters(&mut self, status: InstanceStatus) {
        let Some(list) = self.waiters.remove(&status.instance_id) else {
            return;
        };
        let mut keep = Vec::new();
        for w in list {
            if w.reply.is_closed() {
                continue;
            }
            if w.until.satisfied_by(status.status) {
                let _ = w.reply.send(Ok(status.clone()));
            } else {
                keep.push(w);
            }
        }
        if !keep.is_empty() {
            self.waiters.insert(status.instance_id.clone(), keep);
        }
    }
}
