//! Runnable examples of Cairn's Rust API (the patterns of the Durable Functions docs):
//!
//! | example | pattern |
//! |---|---|
//! | `function_chaining` | activities in sequence |
//! | `fan_out_fan_in` | parallel activities, aggregated |
//! | `human_approval` | an external event racing a durable timer |
//! | `monitor` | a polling loop with `continue_as_new` |
//!
//! Run one with `cargo run --release -p cairn-examples --example NAME`.
