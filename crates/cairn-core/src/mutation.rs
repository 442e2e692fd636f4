//! Deliberate bugs, switched on per thread, that prove the deterministic simulator catches
//! what it claims to: each must turn a simulation red within the seeds CI runs.
//!
//! Compiled in only with the `mutations` feature (the simulator's crate enables it); without
//! it [`active`] is a constant `false` and [`set`] refuses, so a release build carries none of
//! this and a simulator run that asks for a mutation it cannot have fails loudly.

/// A deliberate bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mutation {
    /// Apply every message of a batch, even ones already applied (breaks exactly-once).
    SkipDedup,
    /// Answer clients as soon as a request is applied, before it is durable (breaks "nothing
    /// acknowledged is lost").
    EarlyAnswers,
}

impl std::str::FromStr for Mutation {
    type Err = String;
    fn from_str(s: &str) -> Result<Mutation, String> {
        match s {
            "skip-dedup" => Ok(Mutation::SkipDedup),
            "early-answers" => Ok(Mutation::EarlyAnswers),
            other => Err(format!(
                "unknown mutation '{other}' (known: skip-dedup, early-answers)"
            )),
        }
    }
}

#[cfg(feature = "mutations")]
thread_local! {
    static ACTIVE: std::cell::Cell<Option<Mutation>> = const { std::cell::Cell::new(None) };
}

/// Switches `mutation` on (or all off, with `None`) for code running on this thread.
#[cfg(feature = "mutations")]
pub fn set(mutation: Option<Mutation>) -> Result<(), String> {
    ACTIVE.with(|a| a.set(mutation));
    Ok(())
}

/// Without the `mutations` feature nothing can be switched on.
#[cfg(not(feature = "mutations"))]
pub fn set(mutation: Option<Mutation>) -> Result<(), String> {
    match mutation {
        None => Ok(()),
        Some(m) => Err(format!(
            "mutation {m:?} is not compiled in (build cairn-core with the `mutations` feature)"
        )),
    }
}

/// Whether `mutation` is switched on for this thread.
#[inline]
pub fn active(mutation: Mutation) -> bool {
    #[cfg(feature = "mutations")]
    {
        ACTIVE.with(|a| a.get() == Some(mutation))
    }
    #[cfg(not(feature = "mutations"))]
    {
        let _ = mutation;
        false
    }
}
