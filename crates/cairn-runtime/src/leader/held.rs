//! Held effects: what leaves the partition (client answers, messages to other partitions and
//! their acknowledgements) waits here until the log position that caused it is durable.

use super::*;

impl Leader {
    /// Holds an answer until everything applied so far is durable.
    pub(super) fn hold(&mut self, held: Held) {
        let position = self.state.position();
        self.held.push_back((position, held));
    }

    /// Releases held effects whose position is durable.
    pub(super) fn release(&mut self) {
        while let Some((position, _)) = self.held.front() {
            if *position > self.durable {
                break;
            }
            let Some((_, held)) = self.held.pop_front() else {
                break;
            };
            match held {
                Held::Respond(reply, response) => {
                    let _ = reply.send(Ok(response));
                }
                Held::Read(reply, response) => {
                    let _ = reply.send(Ok(response));
                }
                Held::Status(reply, status) => {
                    let _ = reply.send(Ok(status));
                }
                Held::Changed(status) => self.notify_waiters(status),
                Held::Send { to } => self.send_outbox(to),
                Held::Ack { to, up_to } => {
                    self.shared.router.send(
                        to,
                        Envelope::Ack {
                            from: self.partition,
                            up_to,
                        },
                    );
                }
            }
        }
    }

    /// Sends durable, not-yet-sent outbox messages to partition `to`.
    pub(super) fn send_outbox(&mut self, to: u32) {
        let after = self.sent_up_to.get(&to).copied();
        let durable = self.durable;
        let batch: Vec<(MessageId, Message)> = self
            .state
            .outbox(to)
            .filter(|(id, _)| after.is_none_or(|a| *id > a) && id.position <= durable)
            .cloned()
            .collect();
        if let Some((last, _)) = batch.last() {
            self.sent_up_to.insert(to, *last);
            self.shared.router.send(
                to,
                Envelope::Messages {
                    from: self.partition,
                    batch,
                },
            );
        }
    }
}
