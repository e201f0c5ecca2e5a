//! The envelope every stored record is written in.
//!
//! `[format version: u8][record kind: u8][crc32 of body: u32 LE][body: JSON]`
//!
//! The version and kind let a newer binary read older records and make an older binary stop
//! with a clear error on a record it does not know, instead of misreading it. The checksum
//! turns a torn or corrupted record into an error rather than a silently wrong value.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The record format this binary writes and the newest it can read.
pub const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 6;

/// What a stored record holds; part of the envelope so a record is never read as another kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Identity = 1,
    Vote = 2,
    LogEntry = 3,
    LogPointer = 4,
    AppliedState = 5,
    KeyValue = 6,
    Event = 7,
    Lease = 8,
    Idempotency = 9,
    SnapshotMeta = 10,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {len} bytes, shorter than its {HEADER_LEN}-byte header (truncated)")]
    Truncated { len: usize },
    #[error(
        "record format version {found} is newer than this binary understands ({FORMAT_VERSION}); upgrade the binary"
    )]
    UnknownVersion { found: u8 },
    #[error("record format version {0} is not a valid version (corrupted)")]
    BadVersion(u8),
    #[error("expected a {expected:?} record, found kind {found} (corrupted or misplaced)")]
    WrongKind { expected: RecordKind, found: u8 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x} (corrupted)")]
    Checksum { stored: u32, computed: u32 },
    #[error("record body does not parse as {kind:?}: {source}")]
    Body {
        kind: RecordKind,
        source: serde_json::Error,
    },
}

pub fn encode<T: Serialize>(kind: RecordKind, value: &T) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    // Serializing our own plain data types cannot fail (no maps with non-string keys).
    serde_json::to_writer(&mut out, value).expect("record types always serialize");
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[0] = FORMAT_VERSION;
    out[1] = kind as u8;
    out[2..6].copy_from_slice(&crc.to_le_bytes());
    out
}

pub fn decode<T: DeserializeOwned>(kind: RecordKind, bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    match bytes[0] {
        0 => return Err(DecodeError::BadVersion(0)),
        v if v > FORMAT_VERSION => return Err(DecodeError::UnknownVersion { found: v }),
        _ => {}
    }
    if bytes[1] != kind as u8 {
        return Err(DecodeError::WrongKind {
            expected: kind,
            found: bytes[1],
        });
    }
    let stored = u32::from_le_bytes(bytes[2..6].try_into().expect("4 bytes"));
    let body = &bytes[HEADER_LEN..];
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    serde_json::from_slice(body).map_err(|source| DecodeError::Body { kind, source })
}

/// The bytes `value` takes as JSON, without writing it anywhere.
pub fn json_bytes<T: serde::Serialize>(value: &T) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = encode(RecordKind::Vote, &("a", 7u64));
        let back: (String, u64) = decode(RecordKind::Vote, &bytes).unwrap();
        assert_eq!(back, ("a".to_string(), 7));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode(RecordKind::KeyValue, &serde_json::json!({"k": [1, 2, 3]}));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode::<serde_json::Value>(RecordKind::KeyValue, &bad).is_err(),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn truncation_newer_version_and_wrong_kind_are_named() {
        let bytes = encode(RecordKind::Vote, &1u64);
        assert!(matches!(
            decode::<u64>(RecordKind::Vote, &bytes[..3]),
            Err(DecodeError::Truncated { len: 3 })
        ));
        assert!(matches!(
            decode::<u64>(RecordKind::Vote, &bytes[..bytes.len() - 1]),
            Err(DecodeError::Checksum { .. })
        ));
        let mut newer = bytes.clone();
        newer[0] = FORMAT_VERSION + 1;
        let err = decode::<u64>(RecordKind::Vote, &newer).unwrap_err();
        assert!(err.to_string().contains("upgrade the binary"), "{err}");
        assert!(matches!(
            decode::<u64>(RecordKind::LogEntry, &bytes),
            Err(DecodeError::WrongKind { .. })
        ));
    }
}
