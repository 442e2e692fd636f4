//! Instance ids and the partition hash.
//!
//! The hash that places an instance in a partition is part of Cairn's on-disk format: changing
//! it would strand every existing instance. It is **FNV-1a, 32 bit**, over the UTF-8 bytes of
//! the instance id (for entities: of `@name@key`), reduced `mod partition_count`. Never replace
//! it with a randomly seeded hasher.

use thiserror::Error;

/// Longest instance id Cairn accepts, in bytes (the Durable Functions limit is 100 characters for
/// Azure Storage; Cairn is more generous but still bounded so ids stay cheap keys).
pub const MAX_INSTANCE_ID_BYTES: usize = 256;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdError {
    #[error("instance id must not be empty")]
    Empty,
    #[error("instance id is {len} bytes long; the limit is {MAX_INSTANCE_ID_BYTES} bytes")]
    TooLong { len: usize },
    #[error("instance id {id:?} contains a control character; use printable characters only")]
    ControlCharacter { id: String },
}

/// Checks an instance id supplied by a user.
pub fn validate_instance_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_INSTANCE_ID_BYTES {
        return Err(IdError::TooLong { len: id.len() });
    }
    if id.chars().any(|c| c.is_control()) {
        return Err(IdError::ControlCharacter { id: id.to_string() });
    }
    Ok(())
}

/// FNV-1a 32-bit hash of `bytes` (stable across versions, platforms and processes).
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The partition an instance (or entity, via its `@name@key` id) lives in.
pub fn partition_of(instance_id: &str, partition_count: u32) -> u32 {
    fnv1a32(instance_id.as_bytes()) % partition_count.max(1)
}

/// The instance id of an entity: `@name@key` (the Durable Functions convention).
pub fn entity_instance_id(name: &str, key: &str) -> String {
    format!("@{}@{}", name.to_lowercase(), key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        // Published FNV-1a 32-bit test vectors.
        assert_eq!(fnv1a32(b""), 0x811c9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9cf968);
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        assert_eq!(partition_of("foobar", 12), 0xbf9cf968 % 12);
        for i in 0..1000 {
            assert!(partition_of(&format!("id-{i}"), 12) < 12);
        }
    }

    #[test]
    fn ids_are_validated() {
        assert_eq!(validate_instance_id(""), Err(IdError::Empty));
        assert!(matches!(
            validate_instance_id(&"x".repeat(300)),
            Err(IdError::TooLong { len: 300 })
        ));
        assert!(validate_instance_id("a\nb").is_err());
        assert!(validate_instance_id("order-42").is_ok());
    }
}
