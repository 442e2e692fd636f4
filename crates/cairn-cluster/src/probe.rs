//! # What JetStream itself does on these servers
//!
//! [`probe`] measures the raw service the cluster mode is built on, with the same client and
//! servers as the run it accompanies: the latency of one fenced publish at a time (what a
//! partition's commit waits for at least), and the rate of pipelined publishes (what group
//! commit can reach). `cairn bench --cluster` prints it beside Cairn's own figures, so the two
//! can be compared within one run on a shared, noisy machine.

use crate::connection::Nats;
use async_nats::jetstream::{message::PublishMessage, stream};
use std::time::{Duration, Instant};

/// JetStream's own figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Probe {
    /// 1 KiB publishes, one at a time, each fenced on the previous sequence.
    pub fenced_p50_ms: f64,
    pub fenced_p99_ms: f64,
    /// 1 KiB publishes, pipelined (as many unacknowledged as a partition's writer allows).
    pub pipelined_per_s: f64,
}

/// Runs the probe on a scratch stream (deleted afterwards) of `replicas` replicas.
pub fn probe(nats: &Nats, replicas: usize) -> Result<Probe, String> {
    let js = nats.jetstream().clone();
    let hub = nats.config().hub.clone();
    nats.run(async move {
        let name = format!("CAIRN_{hub}_PROBE");
        let subject = format!("cairn.{hub}.probe");
        let _ = js.delete_stream(&name).await;
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            num_replicas: replicas.max(1),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("creating the probe stream: {e}"))?;
        let body = bytes::Bytes::from(vec![7u8; 1024]);
        // A freshly created replicated stream may need a moment before it takes publishes.
        let mut last = 0u64;
        for _ in 0..100 {
            let message = PublishMessage::build()
                .payload(body.clone())
                .expected_last_sequence(last);
            if let Ok(Ok(ack)) = async {
                Ok::<_, String>(
                    js.send_publish(subject.clone(), message)
                        .await
                        .map_err(|e| e.to_string())?
                        .await,
                )
            }
            .await
            {
                last = ack.sequence;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut fenced = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let started = Instant::now();
            let message = PublishMessage::build()
                .payload(body.clone())
                .expected_last_sequence(last);
            let ack = js
                .send_publish(subject.clone(), message)
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| format!("a fenced publish: {e}"))?;
            last = ack.sequence;
            fenced.push(started.elapsed());
        }
        fenced.sort();
        let count = 20_000;
        // As many unacknowledged publishes as a partition's writer keeps in flight.
        let window = crate::log::PIPELINE;
        let started = Instant::now();
        let mut acks = std::collections::VecDeque::with_capacity(window);
        for _ in 0..count {
            if acks.len() == window {
                if let Some(ack) = acks.pop_front() {
                    let ack: async_nats::jetstream::context::PublishAckFuture = ack;
                    ack.await.map_err(|e| format!("a pipelined publish: {e}"))?;
                }
            }
            let message = PublishMessage::build().payload(body.clone());
            acks.push_back(
                js.send_publish(subject.clone(), message)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        for ack in acks {
            ack.await.map_err(|e| format!("a pipelined publish: {e}"))?;
        }
        let pipelined_per_s = count as f64 / started.elapsed().as_secs_f64();
        let _ = js.delete_stream(&name).await;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Ok(Probe {
            fenced_p50_ms: ms(fenced[fenced.len() / 2]),
            fenced_p99_ms: ms(fenced[fenced.len() * 99 / 100]),
            pipelined_per_s,
        })
    })
    .ok_or("the NATS client has stopped")?
}
