//! Wall-clock time as records store it and nodes compare it: Unix milliseconds.

use std::time::SystemTime;

/// Now, in Unix milliseconds (0 if the clock reads before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
