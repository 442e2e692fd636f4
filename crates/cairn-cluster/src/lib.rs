//! # Cairn's cluster mode on NATS JetStream
//!
//! In cluster mode several `cairn serve` nodes share one task hub, and everything durable lives
//! in JetStream, so any node can take over any partition (DESIGN §5). The partition state
//! machine, the dedup/outbox protocol and speculation are the embedded engine's; this crate only
//! provides other implementations behind the storage seams of `cairn-storage`:
//!
//! * [`connection`]: a node's NATS connection and the runtime its tasks run on;
//! * [`log`]: a partition's log as a JetStream stream, fenced so that two owners can never
//!   both commit ([`log::JetStreamLog`]);
//! * [`checkpoint`]: a partition's checkpoints as a fenced stream of deltas in JetStream, with
//!   a local cache for reads ([`checkpoint::JetStreamCheckpointStore`]);
//! * [`frames`]: how records are packed into the stream's messages (pure);
//! * [`hub`]: the hub's partition count, fixed in a JetStream KV bucket;
//! * [`ownership`]: which node runs which partition (keys in the hub's KV bucket, balanced over
//!   the live nodes);
//! * [`routing`]: messages between partitions, through the hub's input stream;
//! * [`forwarding`]: client requests for partitions another node runs, as NATS requests;
//! * [`work_sharing`]: SDK workers connected to one node run work queued on the others;
//! * [`engine`]: an engine configuration whose partitions live in JetStream;
//! * [`probe`]: JetStream's own latency and rate on the servers, for the benchmarks;
//! * [`status`]: what `cairn cluster status` shows (read-only);
//! * [`nats_server`]: local `nats-server` processes for the tests and benches.
//!
//! It must never hold partition state of its own: what a partition knows is in its log and
//! checkpoints, so a node can die at any moment and lose nothing.

pub mod checkpoint;
pub mod connection;
pub mod engine;
pub mod forwarding;
pub mod frames;
pub mod hub;
pub mod log;
pub mod nats_server;
pub mod nodes;
pub mod ownership;
pub mod probe;
pub mod routing;
pub mod status;
pub mod work_sharing;

pub use checkpoint::{JetStreamCheckpointStore, JetStreamCheckpointStores};
pub use connection::{ClusterConfig, ClusterError, Nats};
pub use engine::{cluster_config, shared_config};
pub use log::{JetStreamLog, JetStreamLogs};
