//! Who may call what. A caller is a credential: the admin key's (`admin`, may do
//! everything), the agent key's (`agent`, the data API on every key), or one of a credentials
//! file ([`credentials`]: a role, and for an agent the key prefixes it may read and write).
//! Tokens are compared in constant time (as SHA-256 digests, so their length leaks nothing
//! either) and never logged.

pub mod credentials;
pub mod key_files;

use std::num::NonZeroU32;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;

use sha2::Digest;
use sha2::Sha256;
use subtle::ConditionallySelectable;
use subtle::ConstantTimeEq;

use self::credentials::CredentialsError;
use self::credentials::Table;
use crate::locks::RESERVED_PREFIX;
use crate::quota::Quotas;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Agent,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }
}

/// Why a request's key was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization: Bearer <key> header")]
    Missing,
    #[error("Authorization header must be 'Bearer <key>'")]
    NotBearer,
    #[error("the key is not valid")]
    Invalid,
}

/// The keys an agent credential may read and write. Write implies read. A key under a lock's
/// or an election's queue (`_concordance/lock/<name>/...`) counts as `<name>/...`, so a
/// credential that may use a lock may watch its queue.
#[derive(Debug, PartialEq, Eq)]
pub struct Access {
    everything: bool,
    read: Vec<String>,
    write: Vec<String>,
}

impl Access {
    pub fn everything() -> Self {
        Self {
            everything: true,
            read: Vec::new(),
            write: Vec::new(),
        }
    }

    pub fn prefixes(read: Vec<String>, write: Vec<String>) -> Self {
        Self {
            everything: false,
            read,
            write,
        }
    }

    fn allows(&self, action: Action, subject: Option<&str>) -> bool {
        let rules = match action {
            Action::Read => self.read.iter().chain(&self.write),
            Action::Write => self.write.iter().chain([].iter()),
        };
        self.everything
            || rules
                .into_iter()
                .any(|rule| subject.map_or(rule.is_empty(), |s| s.starts_with(rule.as_str())))
    }
}

/// What a key means to the prefix rules: itself, or for a key under a lock's or an
/// election's queue, its name onwards. `None`: a reserved key of no queue, which only a
/// credential of every key reaches.
fn subject(key: &str) -> Option<&str> {
    let Some(rest) = key.strip_prefix(RESERVED_PREFIX) else {
        return Some(key);
    };
    ["lock/", "election/"]
        .iter()
        .find_map(|queue| rest.strip_prefix(queue))
}

/// The same for a prefix: one that the reserved prefix starts with (`""`, `"_con"`) reaches
/// every queue, so only a credential of every key may use it.
fn prefix_subject(prefix: &str) -> Option<&str> {
    if RESERVED_PREFIX.starts_with(prefix) {
        None
    } else {
        subject(prefix)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
}

/// A request that its credential's rules do not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {credential} credential may not {action} {target}")]
pub struct AccessDenied {
    pub credential: Arc<str>,
    pub action: &'static str,
    pub target: String,
}

/// A credential's request rate on this member: a GCRA bucket of `burst` requests refilled
/// at `per_second`. Kept across reloads of the file while the numbers stay the same.
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
    limiter: governor::DefaultDirectRateLimiter,
}

impl RateLimit {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = governor::Quota::per_second(per_second).allow_burst(burst);
        Self {
            per_second,
            burst,
            limiter: governor::RateLimiter::direct(quota),
        }
    }
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .finish()
    }
}

/// A request over its credential's rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {credential} credential is over its rate of {per_second} requests per second (burst \
     {burst}) on this member: retry in {} ms",
    retry_in.as_millis()
)]
pub struct RateLimited {
    pub credential: Arc<str>,
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
    pub retry_in: std::time::Duration,
}

/// Who a request is: its credential's name, role, rules and request rate.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    pub role: Role,
    access: Arc<Access>,
    rate: Option<Arc<RateLimit>>,
}

impl Caller {
    fn builtin(role: Role) -> Self {
        let access = match role {
            Role::Admin => Access::everything(),
            Role::Agent => Access::prefixes(vec![String::new()], vec![String::new()]),
        };
        Self {
            name: Arc::from(role.name()),
            role,
            access: Arc::new(access),
            rate: None,
        }
    }

    /// Counts one request against the credential's rate on this member.
    pub fn admit(&self) -> Result<(), RateLimited> {
        use governor::clock::Clock;
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        rate.limiter.check().map_err(|not_until| RateLimited {
            credential: self.name.clone(),
            per_second: rate.per_second,
            burst: rate.burst,
            retry_in: not_until.wait_time_from(governor::clock::DefaultClock::default().now()),
        })
    }

    /// Whoever calls a node without keys (loopback only).
    pub fn open() -> Self {
        Self::builtin(Role::Admin)
    }

    fn check(
        &self,
        action: Action,
        subject: Option<&str>,
        target: impl FnOnce() -> String,
    ) -> Result<(), AccessDenied> {
        if self.role == Role::Admin || self.access.allows(action, subject) {
            return Ok(());
        }
        Err(AccessDenied {
            credential: self.name.clone(),
            action: match action {
                Action::Read => "read",
                Action::Write => "write",
            },
            target: target(),
        })
    }

    pub fn may_read(&self, key: &str) -> Result<(), AccessDenied> {
        self.check(Action::Read, subject(key), || format!("key {key:?}"))
    }

    pub fn may_write(&self, key: &str) -> Result<(), AccessDenied> {
        self.check(Action::Write, subject(key), || format!("key {key:?}"))
    }

    /// Every key under `prefix`.
    pub fn may_read_prefix(&self, prefix: &str) -> Result<(), AccessDenied> {
        self.check(Action::Read, prefix_subject(prefix), || {
            format!("the keys under {prefix:?}")
        })
    }

    pub fn may_write_prefix(&self, prefix: &str) -> Result<(), AccessDenied> {
        self.check(Action::Write, prefix_subject(prefix), || {
            format!("the keys under {prefix:?}")
        })
    }

    /// Locks and elections go by their names' rules: taking, releasing, campaigning and
    /// resigning write the name; asking for the leader reads it.
    pub fn may_use_name(&self, action: Action, kind: &str, name: &str) -> Result<(), AccessDenied> {
        self.check(action, Some(name), || format!("{kind} {name:?}"))
    }

    /// May write every key that is not reserved: revoking any lease can delete no key it
    /// could not delete itself.
    pub fn writes_every_key(&self) -> bool {
        self.role == Role::Admin || self.access.allows(Action::Write, Some(""))
    }

    pub fn reads_every_key(&self) -> bool {
        self.role == Role::Admin || self.access.allows(Action::Read, Some(""))
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The credentials a node accepts: the admin and agent keys' (from flags, or key files read
/// again when they change), and those of the credentials file, read again when it changes
/// ([`Keys::reload`]).
#[derive(Clone)]
pub struct Keys {
    open: bool,
    /// The keys' credentials as the flags give them.
    flags: Arc<Table>,
    admin_keys_file: Option<PathBuf>,
    agent_keys_file: Option<PathBuf>,
    file: Option<PathBuf>,
    /// The keys' credentials in force, and the credentials file's.
    builtin: Arc<RwLock<Arc<Table>>>,
    from_file: Arc<RwLock<Arc<Table>>>,
    table: Arc<RwLock<Arc<Table>>>,
    /// The credentials file's text last taken or refused, so that a change is handled once.
    last_text: Arc<std::sync::Mutex<Option<String>>>,
    /// The key files' keys (or why they were refused) last seen, likewise.
    last_keys: Arc<std::sync::Mutex<Option<String>>>,
    /// The file's storage quotas, which the leader checks writes against.
    quotas: Arc<Quotas>,
    /// How this node calls its peers: given the first admin key of its file when it changes.
    peers: Arc<std::sync::Mutex<Option<crate::raft::client::PeerContext>>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("open", &self.open)
            .field("credentials", &self.names())
            .field("file", &self.file)
            .field("admin_keys_file", &self.admin_keys_file)
            .field("agent_keys_file", &self.agent_keys_file)
            .finish()
    }
}

/// Where a node reads its keys and credentials from, besides the flags.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    pub admin_keys_file: Option<PathBuf>,
    pub agent_keys_file: Option<PathBuf>,
    pub credentials_file: Option<PathBuf>,
}

/// Why keys or credentials were not taken.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    KeyFile(#[from] key_files::KeyFileError),
    #[error("a key is both in the admin key file and in the agent key file (or the flags)")]
    KeyInBoth,
}

impl Keys {
    pub fn new(admin: Option<&str>, agent: Option<&str>) -> Self {
        let flags: Table = [(admin, Role::Admin), (agent, Role::Agent)]
            .into_iter()
            .filter_map(|(key, role)| Some((digest(key?), Caller::builtin(role))))
            .collect();
        let flags = Arc::new(flags);
        Self {
            open: admin.is_none() && agent.is_none(),
            table: Arc::new(RwLock::new(flags.clone())),
            builtin: Arc::new(RwLock::new(flags.clone())),
            from_file: Arc::default(),
            flags,
            admin_keys_file: None,
            agent_keys_file: None,
            file: None,
            last_text: Arc::default(),
            last_keys: Arc::default(),
            quotas: Arc::default(),
            peers: Arc::default(),
        }
    }

    /// The keys' credentials and those of `file`; refused if the file is not valid.
    pub fn with_file(
        admin: Option<&str>,
        agent: Option<&str>,
        file: &Path,
    ) -> Result<Self, KeysError> {
        Self::with_sources(
            admin,
            agent,
            KeySources {
                credentials_file: Some(file.to_path_buf()),
                ..KeySources::default()
            },
        )
    }

    /// The keys of the flags or the key files, and the credentials of the credentials file;
    /// refused if a file is not valid.
    pub fn with_sources(
        admin: Option<&str>,
        agent: Option<&str>,
        sources: KeySources,
    ) -> Result<Self, KeysError> {
        let mut keys = Self::new(admin, agent);
        keys.open = keys.open
            && sources.admin_keys_file.is_none()
            && sources.agent_keys_file.is_none()
            && sources.credentials_file.is_none();
        keys.admin_keys_file = sources.admin_keys_file;
        keys.agent_keys_file = sources.agent_keys_file;
        keys.file = sources.credentials_file;
        keys.reload_keys()?;
        keys.reload()?;
        Ok(keys)
    }

    /// From now on, a change of the admin key file changes the key `peers` calls with.
    pub fn update_peer_key(&self, peers: crate::raft::client::PeerContext) {
        *self.peers.lock().unwrap_or_else(|p| p.into_inner()) = Some(peers);
    }

    /// The storage quotas of the file, as it is read again.
    pub fn quotas(&self) -> Arc<Quotas> {
        self.quotas.clone()
    }

    /// No keys at all: the node serves loopback only, and every caller is an admin.
    pub fn open(&self) -> bool {
        self.open
    }

    /// The credentials' names, each once, in order.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (_, caller) in self.current().iter() {
            if !names.iter().any(|n| **n == *caller.name) {
                names.push(caller.name.to_string());
            }
        }
        names
    }

    fn current(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The keys' credentials and the file's, as one table.
    fn publish(&self) {
        let mut table = (**self.builtin.read().unwrap_or_else(|p| p.into_inner())).clone();
        table.extend(
            self.from_file
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    /// Reads the key files again; `Ok(true)` if they changed and were taken. A file that is
    /// not valid is refused: the keys before it stay.
    pub fn reload_keys(&self) -> Result<bool, KeysError> {
        if self.admin_keys_file.is_none() && self.agent_keys_file.is_none() {
            return Ok(false);
        }
        let read = |file: &Option<PathBuf>| file.as_deref().map(key_files::read).transpose();
        let (admin, agent) = (read(&self.admin_keys_file), read(&self.agent_keys_file));
        // What was read, as digests (or why it was refused): a change is handled once.
        type Read = Result<Option<Vec<String>>, key_files::KeyFileError>;
        let fingerprint = |read: &Read| -> String {
            match read {
                Ok(keys) => format!(
                    "{:?}",
                    keys.as_ref()
                        .map(|k| k.iter().map(|k| digest(k)).collect::<Vec<_>>())
                ),
                Err(e) => e.to_string(),
            }
        };
        let seen = format!("{}|{}", fingerprint(&admin), fingerprint(&agent));
        let mut last = self.last_keys.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(seen.as_str()) {
            return Ok(false);
        }
        *last = Some(seen);
        drop(last);
        let (admin, agent) = (admin?, agent?);
        let from_flags = |role: Role| {
            self.flags
                .iter()
                .filter(move |(_, c)| c.role == role)
                .cloned()
        };
        let mut table = Table::new();
        match &admin {
            Some(keys) => table.extend(
                keys.iter()
                    .map(|k| (digest(k), Caller::builtin(Role::Admin))),
            ),
            None => table.extend(from_flags(Role::Admin)),
        }
        match &agent {
            Some(keys) => table.extend(
                keys.iter()
                    .map(|k| (digest(k), Caller::builtin(Role::Agent))),
            ),
            None => table.extend(from_flags(Role::Agent)),
        }
        let mut digests: Vec<[u8; 32]> = table.iter().map(|(d, _)| *d).collect();
        digests.sort_unstable();
        digests.dedup();
        if digests.len() != table.len() {
            return Err(KeysError::KeyInBoth);
        }
        *self.builtin.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.publish();
        if let (Some(first), Some(peers)) = (
            admin.as_ref().and_then(|k| k.first()),
            self.peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref(),
        ) {
            peers.set_key(first.clone());
        }
        Ok(true)
    }

    /// Reads the credentials file again; `Ok(true)` if it changed and was taken. A file that
    /// is not valid is refused whole: the credentials before it stay.
    pub fn reload(&self) -> Result<bool, CredentialsError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut last = self.last_text.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        *last = Some(text.clone());
        drop(last);
        let builtin = self
            .builtin
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let taken: Vec<&str> = builtin.iter().map(|(_, c)| &*c.name).collect();
        let credentials::Parsed {
            table: mut from_file,
            quotas,
        } = credentials::parse(&shown, &text, &taken)?;
        // A credential whose rate did not change keeps its bucket: a reload is no reset.
        let before = self.current();
        for (_, caller) in &mut from_file {
            let kept = before.iter().find_map(|(_, old)| {
                let (Some(old_rate), Some(new_rate)) = (&old.rate, &caller.rate) else {
                    return None;
                };
                (old.name == caller.name
                    && old_rate.per_second == new_rate.per_second
                    && old_rate.burst == new_rate.burst)
                    .then(|| old_rate.clone())
            });
            if kept.is_some() {
                caller.rate = kept;
            }
        }
        *self.from_file.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(from_file);
        self.publish();
        self.quotas.set(quotas);
        Ok(true)
    }

    /// Reads the key files and the credentials file every two seconds, and logs what changed
    /// or why a change was not taken (once per change; what was in force before it stays).
    pub fn spawn_reload(&self, stopping: tokio_util::sync::CancellationToken) {
        if self.file.is_none() && self.admin_keys_file.is_none() && self.agent_keys_file.is_none() {
            return;
        }
        let keys = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(crate::tls::RELOAD_EVERY) => {}
                    _ = stopping.cancelled() => return,
                }
                let k = keys.clone();
                let reloaded =
                    tokio::task::spawn_blocking(move || (k.reload_keys(), k.reload())).await;
                let Ok((key_files, credentials)) = reloaded else {
                    tracing::warn!("reading the key and credentials files failed");
                    continue;
                };
                match key_files {
                    Ok(true) => tracing::info!("the key files changed: their keys are taken"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        error = %e,
                        "the key files changed but are not valid: the keys before them stay"
                    ),
                }
                match credentials {
                    Ok(true) => tracing::info!(
                        credentials = ?keys.names(),
                        "the credentials file changed: its credentials are taken"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        error = %e,
                        "the credentials file changed but is not valid: the credentials before it stay"
                    ),
                }
            }
        });
    }

    /// The credential a bearer token is, if any. Every digest is compared, so timing does not
    /// tell which matched.
    pub fn caller_of(&self, token: &str) -> Option<Caller> {
        let probe = digest(token);
        let table = self.current();
        let mut found = u64::MAX;
        for (i, (d, _)) in table.iter().enumerate() {
            found = u64::conditional_select(&found, &(i as u64), d.ct_eq(&probe));
        }
        usize::try_from(found)
            .ok()
            .and_then(|i| table.get(i))
            .map(|(_, c)| c.clone())
    }

    /// The role a bearer token grants, if any.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        self.caller_of(token).map(|c| c.role)
    }

    /// Authenticates a request's `Authorization: Bearer` header.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, AuthError> {
        if self.open() {
            return Ok(Caller::open());
        }
        let h = header.ok_or(AuthError::Missing)?;
        let token = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or(AuthError::NotBearer)?;
        self.caller_of(token.trim()).ok_or(AuthError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_from_keys() {
        let k = Keys::new(Some("admin-secret"), Some("agent-secret"));
        assert_eq!(k.role_of("admin-secret"), Some(Role::Admin));
        assert_eq!(k.role_of("agent-secret"), Some(Role::Agent));
        assert_eq!(k.role_of("admin-secre"), None);
        assert_eq!(k.role_of(""), None);
        assert!(k.authenticate(None).is_err());
        assert!(k.authenticate(Some("Basic admin-secret")).is_err());
        assert_eq!(
            k.authenticate(Some("Bearer admin-secret")).unwrap().role,
            Role::Admin
        );
    }

    #[test]
    fn open_mode_grants_admin_and_debug_hides_keys() {
        let k = Keys::new(None, None);
        assert_eq!(k.authenticate(None).unwrap().role, Role::Admin);
        let shown = format!("{:?}", Keys::new(Some("s3cr3t"), None));
        assert!(!shown.contains("s3cr3t"));
    }

    fn agent(read: &[&str], write: &[&str]) -> Caller {
        Caller {
            name: Arc::from("a17"),
            role: Role::Agent,
            access: Arc::new(Access::prefixes(
                read.iter().map(|s| s.to_string()).collect(),
                write.iter().map(|s| s.to_string()).collect(),
            )),
            rate: None,
        }
    }

    #[test]
    fn prefix_rules_for_keys_prefixes_and_queues() {
        let a17 = agent(&["shared/"], &["agents/a17/"]);
        assert!(a17.may_read("shared/config").is_ok());
        assert!(a17.may_read("agents/a17/x").is_ok(), "write implies read");
        assert!(a17.may_write("agents/a17/x").is_ok());
        let denied = a17.may_write("shared/config").unwrap_err();
        assert_eq!(
            denied.to_string(),
            "the a17 credential may not write key \"shared/config\""
        );
        assert!(a17.may_read("agents/a18/x").is_err());
        assert!(a17.may_read_prefix("agents/a17/").is_ok());
        assert!(a17.may_read_prefix("agents/a17/sub/").is_ok());
        assert!(
            a17.may_read_prefix("agents/").is_err(),
            "wider than its rule"
        );
        assert!(a17.may_read_prefix("").is_err());
        // A queue's keys go by the lock's name.
        assert!(
            a17.may_read("_concordance/lock/agents/a17/job/0001")
                .is_ok()
        );
        assert!(
            a17.may_read("_concordance/lock/agents/a18/job/0001")
                .is_err()
        );
        assert!(
            a17.may_read_prefix("_concordance/election/shared/leader/")
                .is_ok()
        );
        assert!(a17.may_read_prefix("_concordance/").is_err());
        assert!(a17.may_read_prefix("_con").is_err(), "reaches every queue");
        assert!(a17.may_read("_concordance/other").is_err());
        assert!(
            a17.may_use_name(Action::Write, "lock", "agents/a17/job")
                .is_ok()
        );
        assert!(
            a17.may_use_name(Action::Write, "lock", "shared/job")
                .is_err()
        );
        assert!(
            a17.may_use_name(Action::Read, "election", "shared/job")
                .is_ok()
        );
        assert!(!a17.writes_every_key());

        let everything = agent(&[], &[""]);
        assert!(everything.may_read_prefix("").is_ok());
        assert!(everything.may_read_prefix("_con").is_ok());
        assert!(everything.writes_every_key());
        let builtin = Caller::builtin(Role::Agent);
        assert!(builtin.writes_every_key());
        assert!(builtin.may_read_prefix("").is_ok());
    }

    #[test]
    fn a_credentials_file_adds_named_credentials_and_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials.yaml");
        let write = |tokens: &str| {
            std::fs::write(
                &file,
                format!(
                    "credentials:\n- name: a17\n  role: agent\n  tokens: [{tokens}]\n  write: [agents/a17/]\n"
                ),
            )
            .unwrap()
        };
        write("first-token-0123456789");
        let keys = Keys::with_file(Some("admin-secret"), None, &file).unwrap();
        assert!(!keys.open());
        assert_eq!(keys.names(), ["admin", "a17"]);
        let a17 = keys.caller_of("first-token-0123456789").unwrap();
        assert_eq!(&*a17.name, "a17");
        assert_eq!(keys.role_of("admin-secret"), Some(Role::Admin));
        assert!(!keys.reload().unwrap(), "unchanged");
        // Rotation: both tokens, then only the new one.
        write("first-token-0123456789, second-token-0123456789");
        assert!(keys.reload().unwrap());
        assert!(keys.caller_of("first-token-0123456789").is_some());
        assert!(keys.caller_of("second-token-0123456789").is_some());
        write("second-token-0123456789");
        assert!(keys.reload().unwrap());
        assert!(keys.caller_of("first-token-0123456789").is_none());
        // A bad file is refused whole; the credentials before it stay.
        write("short");
        assert!(keys.reload().is_err());
        assert!(keys.caller_of("second-token-0123456789").is_some());
        assert!(!keys.reload().unwrap(), "a refused change is reported once");
        let shown = format!("{keys:?}");
        assert!(!shown.contains("second-token"), "{shown}");
        assert!(!shown.contains("admin-secret"), "{shown}");
    }

    #[test]
    fn a_rate_limited_credential_keeps_its_bucket_across_a_reload_of_the_same_rate() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials.yaml");
        let write = |token: &str, rate: u32| {
            std::fs::write(
                &file,
                format!(
                    "credentials:\n- name: slow\n  role: agent\n  tokens: [{token}]\n  read: [\"\"]\n  requestsPerSecond: {rate}\n  burst: 2\n"
                ),
            )
            .unwrap()
        };
        write("slow-token-0123456789", 1);
        let keys = Keys::with_file(Some("admin-secret"), None, &file).unwrap();
        let slow = keys.caller_of("slow-token-0123456789").unwrap();
        slow.admit().unwrap();
        slow.admit().unwrap();
        let over = slow.admit().unwrap_err();
        assert!(over.retry_in > std::time::Duration::ZERO, "{over:?}");
        assert!(
            over.to_string().starts_with(
                "the slow credential is over its rate of 1 requests per second (burst 2)"
            ),
            "{over}"
        );
        // Another token, the same rate: the same bucket, still empty.
        write("slow-token-9876543210", 1);
        assert!(keys.reload().unwrap());
        let again = keys.caller_of("slow-token-9876543210").unwrap();
        assert!(again.admit().is_err(), "a reload is no reset");
        // A new rate: a new bucket.
        write("slow-token-9876543210", 5);
        assert!(keys.reload().unwrap());
        keys.caller_of("slow-token-9876543210")
            .unwrap()
            .admit()
            .unwrap();
        // Admins of the keys have no rate.
        let admin = keys.caller_of("admin-secret").unwrap();
        for _ in 0..100 {
            admin.admit().unwrap();
        }
    }
}
