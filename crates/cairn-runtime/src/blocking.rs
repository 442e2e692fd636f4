//! Blocking calls from inside the engine's tasks (log flushes, checkpoint writes, joins).
//!
//! On a multi-threaded runtime (every real deployment) a blocking call moves the task off its
//! worker so others keep running. On a current-thread runtime (the deterministic simulator)
//! there is no other worker to protect and `block_in_place` would panic, so the call simply
//! runs: the simulator's seams never block.

/// Runs `f`, which may block, from inside a Tokio task.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Frees `value` on the blocking pool when `large` (thousands of rows or ids: freeing them is
/// no work for a partition's task), here otherwise or on a current-thread runtime.
pub(crate) fn drop_off_task<T: Send + 'static>(value: T, large: bool) {
    if large && !single_threaded() {
        tokio::task::spawn_blocking(move || drop(value));
    }
}

/// True on a current-thread runtime, where the engine keeps all its work on the one thread
/// (no writer threads, no blocking pool) so that a run is reproducible.
pub(crate) fn single_threaded() -> bool {
    matches!(
        tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread)
    )
}
