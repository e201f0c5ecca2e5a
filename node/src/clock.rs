//! Time. Wall-clock time as records store it (Unix milliseconds), for what is replicated
//! and shown; every timeout and deadline a member measures is on the monotonic clock, which a
//! wall-clock jump does not move.

use std::sync::LazyLock;
use std::time::Instant;
use std::time::SystemTime;

static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds on the monotonic clock since this process first asked (at least 1, so 0 can
/// mean "never" in an atomic).
pub fn monotonic_ms() -> u64 {
    STARTED.elapsed().as_millis() as u64 + 1
}

/// Now, in Unix milliseconds (0 if the clock reads before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
