//! Durability beyond SIGKILL. A SIGKILLed process loses nothing the kernel already has (the
//! page cache survives it), so killing nodes alone never tests fsync. Here every node runs
//! with an `LD_PRELOAD` shim (`lose_unsynced/lose_unsynced.c`) that keeps writes to RocksDB's
//! write-ahead logs (`*.log`) in the process's memory until the file is fsynced: a SIGKILL
//! then loses the unsynced tail exactly as a power cut would.
//!
//! - The shim is shown to bite on a real node: after a write and a SIGKILL, the node's data
//!   dir holds its log entry (synced before the answer) but not the state machine's apply of
//!   it (never synced by itself), where without the shim both are there.
//! - A whole cluster loses power repeatedly under load (every node SIGKILLed at once, every
//!   unsynced tail gone): every acknowledged write must be there after the restart, and the
//!   history must stay linearizable. A node that acknowledged before its log was fsynced on
//!   a quorum would lose acknowledged writes here.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Builds the shim once per test run; returns the shared object's path.
pub fn shim() -> PathBuf {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| build_shim("lose_unsynced")).clone()
}

/// Builds `tests/reliability/<name>/<name>.c` into a shared object to preload.
pub fn build_shim(name: &str) -> PathBuf {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/reliability/{name}/{name}.c"));
    let out =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}.so", std::process::id()));
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .args(["-ldl", "-lpthread"])
        .status()
        .expect("run cc (a C compiler builds the test's preloaded shims)");
    assert!(status.success(), "building {} failed", src.display());
    out
}

/// What `concordance inspect --json` says about a stopped node's data dir.
pub fn inspect(data_dir: &Path) -> serde_json::Value {
    let out = crate::common::run_bin(
        &[
            "inspect",
            &format!("--data-dir={}", data_dir.display()),
            "--json",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
