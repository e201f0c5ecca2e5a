//! The note a node leaves when it refuses to start (or stops with an error): a
//! [`TerminationMessage`], `{"code", "message"}` as JSON. In a Kubernetes container the kubelet
//! puts the file at the container's `terminationMessagePath` (`/dev/termination-log`) into the
//! pod's status, where the operator reads why a member stopped: `name_in_use` (its data dir was
//! lost and its name is still a member's) or `cluster_mismatch` (it holds another cluster's
//! data). Elsewhere, on a VM, there is no such file and nothing is written.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use concordance_client::TerminationMessage;

/// Where a container's termination message goes unless its spec says otherwise.
pub const DEFAULT_PATH: &str = "/dev/termination-log";

/// Kubernetes keeps at most this many bytes of the message.
const MAX_BYTES: usize = 4096;

/// Where to write, and whether the file may be created there.
struct Destination {
    path: PathBuf,
    create: bool,
}

static DESTINATION: OnceLock<Destination> = OnceLock::new();

/// Writes to `path` (created if need be) from now on; `None` keeps the default, which is
/// written only where it already exists (a container runtime makes it; a VM's `/dev` must not
/// get a stray file). Set once, at start.
pub fn configure(path: Option<PathBuf>) {
    let destination = match path {
        Some(path) => Destination { path, create: true },
        None => Destination {
            path: PathBuf::from(DEFAULT_PATH),
            create: false,
        },
    };
    let _ = DESTINATION.set(destination);
}

/// Leaves `message` for whoever runs this node; silently does nothing where it cannot be
/// written (the log has the same words).
pub fn write(message: &TerminationMessage) {
    let destination = DESTINATION.get_or_init(|| Destination {
        path: PathBuf::from(DEFAULT_PATH),
        create: false,
    });
    let file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(destination.create)
        .open(&destination.path);
    if let Ok(mut file) = file {
        let _ = file.write_all(&encode(message));
    }
}

/// The message as JSON, its text shortened to fit what Kubernetes keeps.
fn encode(message: &TerminationMessage) -> Vec<u8> {
    let mut message = message.clone();
    loop {
        let bytes = serde_json::to_vec(&message).expect("a termination message serializes");
        if bytes.len() <= MAX_BYTES || message.message.is_empty() {
            return bytes;
        }
        let keep = message
            .message
            .len()
            .saturating_sub(bytes.len() - MAX_BYTES + 3);
        let mut cut = keep.min(message.message.len());
        while !message.message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.message.truncate(cut);
        message.message.push_str("...");
    }
}

#[cfg(test)]
mod tests {
    use concordance_client::ErrorCode;

    use super::*;

    #[test]
    fn a_long_message_is_shortened_to_what_kubernetes_keeps() {
        let long = TerminationMessage {
            code: ErrorCode::NameInUse,
            message: "é".repeat(5000),
        };
        let bytes = encode(&long);
        assert!(bytes.len() <= MAX_BYTES, "{}", bytes.len());
        let back: TerminationMessage = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.code, ErrorCode::NameInUse);
        assert!(back.message.ends_with("..."));
        let short = TerminationMessage {
            code: ErrorCode::ClusterMismatch,
            message: "another cluster's data".into(),
        };
        assert_eq!(encode(&short), serde_json::to_vec(&short).unwrap());
    }
}
