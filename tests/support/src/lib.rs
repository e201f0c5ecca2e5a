//! What the workspace's integration tests share: finding the `concordance` binary from
//! another package's tests, and waiting for a condition with a deadline.

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

/// The `concordance` node binary: `CONCORDANCE_BIN`, or next to the running test's own target
/// folder (`<target>/release/deps/<test>` -> `<target>/release/concordance`), which
/// `cargo test --workspace` builds. Tests of the node's own package use
/// `env!("CARGO_BIN_EXE_concordance")` instead.
pub fn concordance_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CONCORDANCE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target folder")
        .join("concordance");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build --release -p concordance` (or set CONCORDANCE_BIN)",
        bin.display()
    );
    bin
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
