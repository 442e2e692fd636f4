//! The shell's only reads of the wall clock and draws of random ids. The state machine sees
//! neither: time enters through log records, ids through the records that carry them. (These
//! become the `Clock` and `IdGen` seams of the simulator.)

use cairn_core::Millis;
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// A fresh 32-hex-digit execution id.
pub(crate) fn new_execution_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
