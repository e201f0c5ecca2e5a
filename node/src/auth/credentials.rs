//! Named credentials from a file (`--credentials-file`, YAML or JSON): each has a role, one
//! or more tokens (several at once while one rotates), and, for an agent, the key prefixes it
//! may read and write. The file may also hold storage quotas per key prefix
//! ([`crate::quota`]).
//!
//! ```yaml
//! credentials:
//!   - name: agent-a17
//!     role: agent
//!     tokens: ["<at least 16 characters>"]
//!     read: ["shared/"]
//!     write: ["agents/a17/"]
//! quotas:
//!   - prefix: agents/a17/
//!     maxBytes: 64MiB
//!     maxKeys: 10000
//! ```

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;

use serde::Deserialize;

use super::Access;
use super::Caller;
use super::RateLimit;
use super::Role;
use super::digest;
use crate::quota::Quota;

/// The shortest token taken from a credentials file.
pub const MIN_TOKEN_BYTES: usize = 16;
/// The longest credential name (it names metrics and audit lines).
const MAX_NAME_BYTES: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    credentials: Vec<Entry>,
    /// Storage quotas per key prefix, whoever writes the keys.
    #[serde(default)]
    quotas: Vec<QuotaEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct QuotaEntry {
    prefix: String,
    /// Bytes of names and values (as JSON): a number, or with KiB, MiB or GiB.
    max_bytes: Option<ByteCount>,
    max_keys: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ByteCount {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    name: String,
    role: FileRole,
    /// The tokens themselves.
    #[serde(default)]
    tokens: Vec<String>,
    /// Or their SHA-256 digests (hex), so the file need not hold the secrets.
    #[serde(default)]
    token_sha256: Vec<String>,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
    /// Requests per second it may make on each member (none: no limit).
    requests_per_second: Option<u32>,
    /// Requests it may make at once beyond that rate (default: one second's worth).
    burst: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FileRole {
    Admin,
    Agent,
}

/// Why a credentials file was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the credentials file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the credentials file {path} is not valid YAML or JSON of credentials: {message}")]
    Parse { path: String, message: String },
    #[error("the credentials file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// One credential's token digests and what it grants.
pub(super) type Table = Vec<([u8; 32], Caller)>;

/// A credentials file, parsed: its credentials and its storage quotas.
pub(super) struct Parsed {
    pub table: Table,
    pub quotas: Vec<Quota>,
}

/// Parses and checks a credentials file; `taken` are the names already in use (the built-in
/// credentials of the admin and agent keys).
pub(super) fn parse(path: &str, text: &str, taken: &[&str]) -> Result<Parsed, CredentialsError> {
    let file: CredentialsFile =
        serde_yaml::from_str(text).map_err(|e| CredentialsError::Parse {
            path: path.to_string(),
            message: without_values(&e.to_string()),
        })?;
    let invalid = |message: String| CredentialsError::Invalid {
        path: path.to_string(),
        message,
    };
    let mut names: HashSet<&str> = taken.iter().copied().collect();
    let mut digests: HashSet<[u8; 32]> = HashSet::new();
    let mut table = Table::new();
    for entry in &file.credentials {
        let name = entry.name.as_str();
        check_name(name).map_err(|why| invalid(format!("credential {name:?}: {why}")))?;
        if !names.insert(name) {
            return Err(invalid(format!(
                "the name {name:?} is used twice (`admin` and `agent` are the keys' own \
                 credentials when --api-key and --agent-key are set)"
            )));
        }
        let mut own = Vec::new();
        for token in &entry.tokens {
            if token.len() < MIN_TOKEN_BYTES || token.chars().any(char::is_whitespace) {
                return Err(invalid(format!(
                    "credential {name:?}: a token must be at least {MIN_TOKEN_BYTES} characters \
                     with no spaces"
                )));
            }
            own.push(digest(token));
        }
        for hex in &entry.token_sha256 {
            own.push(parse_digest(hex).ok_or_else(|| {
                invalid(format!(
                    "credential {name:?}: tokenSha256 takes SHA-256 digests as 64 hex digits"
                ))
            })?);
        }
        if own.is_empty() {
            return Err(invalid(format!(
                "credential {name:?} has no token (tokens or tokenSha256)"
            )));
        }
        for prefix in entry.read.iter().chain(&entry.write) {
            if !valid_prefix(prefix) {
                return Err(invalid(format!(
                    "credential {name:?}: the prefix {prefix:?} is not a valid key prefix"
                )));
            }
        }
        let (role, access) = match entry.role {
            FileRole::Admin if !entry.read.is_empty() || !entry.write.is_empty() => {
                return Err(invalid(format!(
                    "credential {name:?} is an admin, which may do everything: read and write \
                     are for agents"
                )));
            }
            FileRole::Admin => (Role::Admin, Access::everything()),
            FileRole::Agent if entry.read.is_empty() && entry.write.is_empty() => {
                return Err(invalid(format!(
                    "credential {name:?} grants nothing: give the prefixes it may read and \
                     write (\"\" for every key)"
                )));
            }
            FileRole::Agent => (
                Role::Agent,
                Access::prefixes(entry.read.clone(), entry.write.clone()),
            ),
        };
        let rate = match (entry.requests_per_second, entry.burst) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(invalid(format!(
                    "credential {name:?}: burst needs requestsPerSecond"
                )));
            }
            (Some(per_second), burst) => {
                let per_second = NonZeroU32::new(per_second).ok_or_else(|| {
                    invalid(format!(
                        "credential {name:?}: requestsPerSecond is at least 1"
                    ))
                })?;
                let burst = match burst {
                    None => per_second,
                    Some(b) => NonZeroU32::new(b).ok_or_else(|| {
                        invalid(format!("credential {name:?}: burst is at least 1"))
                    })?,
                };
                Some(Arc::new(RateLimit::new(per_second, burst)))
            }
        };
        let caller = Caller {
            name: Arc::from(name),
            role,
            access: Arc::new(access),
            rate,
        };
        for d in own {
            // One token, one credential: otherwise which one a request is would depend on
            // the order of the file.
            if !digests.insert(d) {
                return Err(invalid(format!(
                    "a token of credential {name:?} is also another credential's (or the \
                     same one's twice)"
                )));
            }
            table.push((d, caller.clone()));
        }
    }
    let quotas = quotas(&file.quotas).map_err(invalid)?;
    Ok(Parsed { table, quotas })
}

fn valid_prefix(prefix: &str) -> bool {
    prefix.len() <= crate::api::validate::MAX_KEY_BYTES && !prefix.chars().any(char::is_control)
}

fn quotas(entries: &[QuotaEntry]) -> Result<Vec<Quota>, String> {
    let mut out: Vec<Quota> = Vec::new();
    for entry in entries {
        let prefix = &entry.prefix;
        if !valid_prefix(prefix) {
            return Err(format!(
                "the quota of {prefix:?}: it is not a valid key prefix"
            ));
        }
        if out.iter().any(|q| q.prefix == *prefix) {
            return Err(format!("the prefix {prefix:?} has two quotas"));
        }
        let max_bytes = match &entry.max_bytes {
            None => None,
            Some(ByteCount::Bytes(n)) => Some(*n),
            Some(ByteCount::Text(text)) => Some(
                crate::config::parse_bytes(text)
                    .map_err(|e| format!("the quota of {prefix:?}: maxBytes: {e}"))?,
            ),
        };
        if max_bytes.is_none() && entry.max_keys.is_none() {
            return Err(format!(
                "the quota of {prefix:?} bounds nothing: give maxBytes, maxKeys or both"
            ));
        }
        out.push(Quota {
            prefix: prefix.clone(),
            max_bytes,
            max_keys: entry.max_keys,
        });
    }
    Ok(out)
}

/// A parser's message with the values it quotes (between backticks) left out: a misplaced
/// token must not reach the log.
fn without_values(message: &str) -> String {
    message
        .split('`')
        .enumerate()
        .map(|(i, part)| if i % 2 == 1 { "…" } else { part })
        .collect::<Vec<_>>()
        .join("`")
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err("a name is 1 to 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("a name takes letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "a17-token-0123456789";

    fn parsed(text: &str) -> Result<Table, String> {
        parse("creds.yaml", text, &["admin", "agent"])
            .map(|p| p.table)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_file_of_named_credentials_with_prefixes_and_digests() {
        let digest_hex: String = digest("ops-token-0123456789")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let table = parsed(&format!(
            "credentials:\n\
             - name: agent-a17\n  role: agent\n  tokens: [{TOKEN}, a17-next-token-0123]\n  \
             read: [shared/]\n  write: [agents/a17/]\n\
             - name: ops\n  role: admin\n  tokenSha256: [\"{digest_hex}\"]\n"
        ))
        .unwrap();
        assert_eq!(table.len(), 3, "two tokens of agent-a17 and one of ops");
        let a17 = &table[0].1;
        assert_eq!(&*a17.name, "agent-a17");
        assert_eq!(a17.role, Role::Agent);
        assert_eq!(table[2].0, digest("ops-token-0123456789"));
        assert_eq!(table[2].1.role, Role::Admin);
        // JSON is YAML too.
        let json = format!(
            r#"{{"credentials":[{{"name":"b","role":"agent","tokens":["{TOKEN}"],"read":[""]}}]}}"#
        );
        assert_eq!(parsed(&json).unwrap().len(), 1);
    }

    #[test]
    fn quotas_per_prefix_in_bytes_with_units_and_keys() {
        let text = format!(
            "credentials:\n- name: a\n  role: agent\n  tokens: [{TOKEN}]\n  write: [a/]\n\
             quotas:\n- prefix: a/\n  maxBytes: 64MiB\n  maxKeys: 100\n\
             - prefix: \"\"\n  maxBytes: 1000\n"
        );
        let quotas = parse("creds.yaml", &text, &[]).unwrap().quotas;
        assert_eq!(
            quotas,
            vec![
                Quota {
                    prefix: "a/".into(),
                    max_bytes: Some(64 << 20),
                    max_keys: Some(100),
                },
                Quota {
                    prefix: String::new(),
                    max_bytes: Some(1000),
                    max_keys: None,
                },
            ]
        );
        let base =
            format!("credentials:\n- name: a\n  role: agent\n  tokens: [{TOKEN}]\n  read: [x/]\n");
        for (quotas, expected) in [
            ("- prefix: a/\n", "bounds nothing"),
            (
                "- prefix: a/\n  maxKeys: 1\n- prefix: a/\n  maxKeys: 2\n",
                "two quotas",
            ),
            ("- prefix: a/\n  maxBytes: 5 parsecs\n", "maxBytes"),
            ("- prefix: a/\n  maxKeys: -1\n", "expected u64"),
            ("- prefix: a/\n  maxkeys: 1\n", "unknown field"),
        ] {
            let e = parsed(&format!("{base}quotas:\n{quotas}")).unwrap_err();
            assert!(e.contains(expected), "{quotas}: {e}");
        }
    }

    #[test]
    fn a_bad_file_is_refused_with_what_is_wrong() {
        let cases = [
            ("credentials: []\nextra: 1\n", "unknown field"),
            (
                "credentials:\n- name: a\n  role: agent\n  tokens: [short]\n  read: [x/]\n",
                "at least 16",
            ),
            (
                "credentials:\n- name: a\n  role: agent\n  read: [x/]\n",
                "has no token",
            ),
            (
                &format!("credentials:\n- name: admin\n  role: admin\n  tokens: [{TOKEN}]\n"),
                "used twice",
            ),
            (
                &format!(
                    "credentials:\n- name: a\n  role: agent\n  tokens: [{TOKEN}]\n  read: [x/]\n\
                     - name: b\n  role: agent\n  tokens: [{TOKEN}]\n  read: [x/]\n"
                ),
                "also another credential's",
            ),
            (
                &format!(
                    "credentials:\n- name: a\n  role: admin\n  tokens: [{TOKEN}]\n  read: [x/]\n"
                ),
                "read and write are for agents",
            ),
            (
                &format!("credentials:\n- name: a\n  role: agent\n  tokens: [{TOKEN}]\n"),
                "grants nothing",
            ),
            (
                &format!(
                    "credentials:\n- name: a b\n  role: agent\n  tokens: [{TOKEN}]\n  read: [x/]\n"
                ),
                "letters, digits",
            ),
            (
                "credentials:\n- name: a\n  role: agent\n  tokenSha256: [abc]\n  read: [x/]\n",
                "64 hex digits",
            ),
            (
                &format!(
                    "credentials:\n- name: a\n  role: agent\n  tokens: [{TOKEN}]\n  read: [x/]\n  burst: 5\n"
                ),
                "burst needs requestsPerSecond",
            ),
            (
                &format!(
                    "credentials:\n- name: a\n  role: agent\n  tokens: [{TOKEN}]\n  read: [x/]\n  requestsPerSecond: 0\n"
                ),
                "at least 1",
            ),
            (
                &format!("credentials:\n- name: a\n  role: root\n  tokens: [{TOKEN}]\n"),
                "unknown variant",
            ),
        ];
        for (text, expected) in cases {
            let e = parsed(text).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
            assert!(!e.contains(TOKEN), "an error never shows a token: {e}");
        }
    }

    #[test]
    fn a_parse_error_does_not_quote_the_value_it_stumbled_on() {
        let e = parsed("credentials:\n- name: a\n  role: agent\n  tokens: 98765432109876543210\n")
            .unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        assert!(!e.contains("98765432109876543210"), "{e}");
    }
}
