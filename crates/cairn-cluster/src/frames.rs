//! # How log records are packed into JetStream messages
//!
//! A partition's log is one JetStream stream. Each message of the stream carries a run of
//! records (group commit: one message per batch, not one per record), and records larger than a
//! message may hold are split into fragments over several messages. Every message says the
//! absolute position of its first fragment's record and the owner epoch that wrote it, so a
//! reader can start at any message and never counts from the beginning of the stream.
//!
//! ```text
//! u8  version (1)
//! u8  kind: 0 records, 1 epoch marker (written by a new owner when it opens the log)
//! u64 first position (records: of the first fragment's record; epoch: the log's next position)
//! u64 epoch of the owner that wrote the message
//! records: frames of  u8 flags (1 = starts a record, 2 = ends it) · u32 length · bytes
//! epoch:   u16 length · the owner's name
//! ```
//! (little-endian). This module is pure: it encodes and decodes bytes and assembles fragments,
//! and never talks to NATS. A fragment run that never ends (its owner died between messages of
//! one large record) is a torn tail: the assembler drops it, and the next owner writes the same
//! position again.

use std::fmt;

const VERSION: u8 = 1;
const KIND_RECORDS: u8 = 0;
const KIND_EPOCH: u8 = 1;
const FIRST: u8 = 1;
const LAST: u8 = 2;
/// Bytes before the first frame.
pub const HEADER_LEN: usize = 1 + 1 + 8 + 8;
/// Bytes of a frame's header.
pub const FRAME_HEADER_LEN: usize = 1 + 4;

/// A stream message that cannot be a Cairn log message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMessage(pub String);

impl fmt::Display for BadMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One fragment of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub starts: bool,
    pub ends: bool,
    pub bytes: &'a [u8],
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    Records {
        first_position: u64,
        epoch: u64,
        frames: Vec<Frame<'a>>,
    },
    Epoch {
        next_position: u64,
        epoch: u64,
        owner: String,
    },
}

impl Decoded<'_> {
    pub fn epoch(&self) -> u64 {
        match self {
            Decoded::Records { epoch, .. } | Decoded::Epoch { epoch, .. } => *epoch,
        }
    }

    /// The log's next position if this is the stream's last message, and the bytes of a record
    /// it leaves unfinished (a torn tail).
    pub fn next_after(&self) -> (u64, u64) {
        match self {
            Decoded::Epoch { next_position, .. } => (*next_position, 0),
            Decoded::Records {
                first_position,
                frames,
                ..
            } => {
                let mut position = *first_position;
                let mut open = 0u64;
                for frame in frames {
                    if frame.starts {
                        open = 0;
                    }
                    open += frame.bytes.len() as u64;
                    if frame.ends {
                        position += 1;
                        open = 0;
                    }
                }
                (position, open)
            }
        }
    }
}

fn header(kind: u8, position: u64, epoch: u64, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out
}

/// The marker a new owner writes when it opens the log.
pub fn encode_epoch(next_position: u64, epoch: u64, owner: &str) -> Vec<u8> {
    let name = &owner.as_bytes()[..owner.len().min(u16::MAX as usize)];
    let mut out = header(
        KIND_EPOCH,
        next_position,
        epoch,
        HEADER_LEN + 2 + name.len(),
    );
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
    out
}

/// Packs `records` (at positions `first, first + 1, …`) into messages of at most `max_len`
/// bytes each. Returns each message with the last position it completes (`None` when it ends
/// inside a record), in order.
pub fn encode_records(
    first: u64,
    records: &[Vec<u8>],
    epoch: u64,
    max_len: usize,
) -> Vec<(Vec<u8>, Option<u64>)> {
    // At least one byte of payload per frame, or nothing would ever progress.
    let max_len = max_len.max(HEADER_LEN + FRAME_HEADER_LEN + 1);
    let mut messages = Vec::new();
    let mut position = first;
    let mut current = header(KIND_RECORDS, position, epoch, max_len.min(1 << 16));
    let mut completed: Option<u64> = None;
    for record in records {
        let mut offset = 0;
        loop {
            let room = max_len - current.len();
            if room <= FRAME_HEADER_LEN {
                let full = std::mem::replace(
                    &mut current,
                    header(KIND_RECORDS, position, epoch, max_len.min(1 << 16)),
                );
                messages.push((full, completed.take()));
                continue;
            }
            let take = (record.len() - offset).min(room - FRAME_HEADER_LEN);
            let starts = offset == 0;
            let ends = offset + take == record.len();
            let flags = if starts { FIRST } else { 0 } | if ends { LAST } else { 0 };
            current.push(flags);
            current.extend_from_slice(&(take as u32).to_le_bytes());
            current.extend_from_slice(&record[offset..offset + take]);
            offset += take;
            if ends {
                completed = Some(position);
                position += 1;
                break;
            }
        }
    }
    if current.len() > HEADER_LEN {
        messages.push((current, completed));
    }
    messages
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Decodes one message of a partition's stream.
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, BadMessage> {
    if bytes.len() < HEADER_LEN {
        return Err(BadMessage(format!(
            "a message of {} bytes is shorter than a log message header",
            bytes.len()
        )));
    }
    if bytes[0] != VERSION {
        return Err(BadMessage(format!(
            "log message version {} is not one this build reads (it reads {VERSION})",
            bytes[0]
        )));
    }
    let position = u64_at(bytes, 2);
    let epoch = u64_at(bytes, 10);
    let mut rest = &bytes[HEADER_LEN..];
    match bytes[1] {
        KIND_EPOCH => {
            if rest.len() < 2 {
                return Err(BadMessage("an epoch marker without its owner".into()));
            }
            let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            let name = rest
                .get(2..2 + len)
                .ok_or_else(|| BadMessage("an epoch marker's owner is cut short".into()))?;
            Ok(Decoded::Epoch {
                next_position: position,
                epoch,
                owner: String::from_utf8_lossy(name).into_owned(),
            })
        }
        KIND_RECORDS => {
            let mut frames = Vec::new();
            while !rest.is_empty() {
                if rest.len() < FRAME_HEADER_LEN {
                    return Err(BadMessage("a frame header is cut short".into()));
                }
                let flags = rest[0];
                let len = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                let body = rest
                    .get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len)
                    .ok_or_else(|| {
                        BadMessage(format!(
                            "a frame of {len} bytes runs past the message's end"
                        ))
                    })?;
                frames.push(Frame {
                    starts: flags & FIRST != 0,
                    ends: flags & LAST != 0,
                    bytes: body,
                });
                rest = &rest[FRAME_HEADER_LEN + len..];
            }
            Ok(Decoded::Records {
                first_position: position,
                epoch,
                frames,
            })
        }
        other => Err(BadMessage(format!("unknown log message kind {other}"))),
    }
}

/// Turns decoded messages, in stream order, back into records.
#[derive(Default)]
pub struct Assembler {
    partial: Option<(u64, Vec<u8>)>,
    /// The epoch of the last message seen: a message of a lower epoch after it means two owners
    /// interleaved, which fencing must make impossible.
    epoch: u64,
}

impl Assembler {
    /// Feeds the next message; complete records at or after `from` go to `out`.
    pub fn push(
        &mut self,
        message: &Decoded<'_>,
        from: u64,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<(), BadMessage> {
        if message.epoch() < self.epoch {
            return Err(BadMessage(format!(
                "a message of owner epoch {} follows one of epoch {}: two owners wrote this log",
                message.epoch(),
                self.epoch
            )));
        }
        self.epoch = message.epoch();
        let (first_position, frames) = match message {
            Decoded::Epoch { .. } => {
                // Whatever record was unfinished belonged to an owner that is gone.
                self.partial = None;
                return Ok(());
            }
            Decoded::Records {
                first_position,
                frames,
                ..
            } => (*first_position, frames),
        };
        let mut position = first_position;
        for frame in frames {
            if frame.starts {
                self.partial = Some((position, Vec::new()));
            }
            match &mut self.partial {
                Some((at, bytes)) if *at == position => bytes.extend_from_slice(frame.bytes),
                // The rest of a record whose beginning was truncated away, or never written.
                _ => {
                    if frame.ends {
                        position += 1;
                    }
                    continue;
                }
            }
            if frame.ends {
                if let Some((at, bytes)) = self.partial.take() {
                    if at >= from {
                        out.push((at, bytes));
                    }
                }
                position += 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(first: u64, records: &[Vec<u8>], max_len: usize) -> Vec<(u64, Vec<u8>)> {
        let messages = encode_records(first, records, 7, max_len);
        let mut out = Vec::new();
        let mut asm = Assembler::default();
        for (bytes, _) in &messages {
            assert!(bytes.len() <= max_len.max(HEADER_LEN + FRAME_HEADER_LEN + 1));
            asm.push(&decode(bytes).unwrap(), 0, &mut out).unwrap();
        }
        out
    }

    proptest! {
        #[test]
        fn records_survive_any_packing(
            first in 1u64..1000,
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            max_len in 20usize..400,
        ) {
            let want: Vec<(u64, Vec<u8>)> =
                records.iter().cloned().enumerate().map(|(i, r)| (first + i as u64, r)).collect();
            prop_assert_eq!(roundtrip(first, &records, max_len), want);
        }

        #[test]
        fn the_last_message_tells_the_next_position(
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20),
            max_len in 20usize..400,
        ) {
            let messages = encode_records(5, &records, 1, max_len);
            let (last, completes) = messages.last().unwrap();
            let (next, torn) = decode(last).unwrap().next_after();
            prop_assert_eq!(next, 5 + records.len() as u64);
            prop_assert_eq!(torn, 0);
            prop_assert_eq!(*completes, Some(4 + records.len() as u64));
        }
    }

    #[test]
    fn a_torn_record_is_dropped_and_its_position_written_again() {
        let big = vec![9u8; 100];
        let first = encode_records(1, &[b"a".to_vec(), big.clone()], 1, 60);
        assert!(first.len() >= 2, "the big record spans messages");
        // The owner died after the first message: the big record is torn.
        let torn = &first[0].0;
        let (next, torn_bytes) = decode(torn).unwrap().next_after();
        assert_eq!(next, 2);
        assert!(torn_bytes > 0);
        let marker = encode_epoch(next, 2, "node-b");
        let again = encode_records(2, &[b"b".to_vec()], 2, 60);
        let mut out = Vec::new();
        let mut asm = Assembler::default();
        for bytes in [torn, &marker, &again[0].0] {
            asm.push(&decode(bytes).unwrap(), 1, &mut out).unwrap();
        }
        assert_eq!(out, vec![(1, b"a".to_vec()), (2, b"b".to_vec())]);
    }

    #[test]
    fn an_older_epoch_after_a_newer_one_is_refused() {
        let new = encode_records(1, &[b"a".to_vec()], 3, 100);
        let old = encode_records(2, &[b"b".to_vec()], 2, 100);
        let mut asm = Assembler::default();
        let mut out = Vec::new();
        asm.push(&decode(&new[0].0).unwrap(), 1, &mut out).unwrap();
        let err = asm
            .push(&decode(&old[0].0).unwrap(), 1, &mut out)
            .unwrap_err();
        assert!(err.0.contains("two owners"), "{err}");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert!(decode(b"xy").unwrap_err().0.contains("shorter"));
        let mut bad = encode_records(1, &[b"abc".to_vec()], 1, 100).remove(0).0;
        bad.truncate(bad.len() - 1);
        assert!(decode(&bad)
            .unwrap_err()
            .0
            .contains("past the message's end"));
        bad[0] = 9;
        assert!(decode(&bad).unwrap_err().0.contains("version 9"));
    }
}
