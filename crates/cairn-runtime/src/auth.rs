//! The bearer token both fronts check (`cairn serve --auth-token`): HTTP's `Authorization`
//! header and the gRPC front's `authorization` metadata carry it the same way. This module
//! only reads and compares the token; each front decides what to answer without one.

/// The token of an `authorization` value `Bearer <token>`, the scheme in any case (RFC 7235),
/// as it follows the first space; `None` for another scheme or no token at all.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let at = value.iter().position(|b| *b == b' ')?;
    value[..at]
        .eq_ignore_ascii_case(b"bearer")
        .then(|| &value[at + 1..])
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ (a wrong
/// token must not tell an attacker how much of it was right).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_bearer_in_any_case() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bEaReR abc def"), Some(&b"abc def"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
