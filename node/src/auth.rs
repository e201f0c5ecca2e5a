//! Who may call what. The admin key may do everything; the agent key may use the data API
//! only. Keys are compared in constant time (as SHA-256 digests, so their length leaks
//! nothing either) and never logged.

use sha2::Digest;
use sha2::Sha256;
use subtle::ConstantTimeEq;

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

/// The configured keys, kept only as digests.
#[derive(Clone)]
pub struct Keys {
    admin: Option<[u8; 32]>,
    agent: Option<[u8; 32]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("admin", &self.admin.map(|_| "<set>"))
            .field("agent", &self.agent.map(|_| "<set>"))
            .finish()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Keys {
    pub fn new(admin: Option<&str>, agent: Option<&str>) -> Self {
        Self {
            admin: admin.map(digest),
            agent: agent.map(digest),
        }
    }

    /// No keys at all: the node serves loopback only, and every caller is an admin.
    pub fn open(&self) -> bool {
        self.admin.is_none() && self.agent.is_none()
    }

    /// The role a bearer token grants, if any.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let d = digest(token);
        // Both comparisons always run, so timing does not tell which key matched.
        let is_admin = self.admin.map_or(0u8, |a| a.ct_eq(&d).unwrap_u8());
        let is_agent = self.agent.map_or(0u8, |a| a.ct_eq(&d).unwrap_u8());
        if is_admin == 1 {
            Some(Role::Admin)
        } else if is_agent == 1 {
            Some(Role::Agent)
        } else {
            None
        }
    }

    /// Authenticates a request's `Authorization: Bearer` header.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Role, AuthError> {
        if self.open() {
            return Ok(Role::Admin);
        }
        let h = header.ok_or(AuthError::Missing)?;
        let token = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or(AuthError::NotBearer)?;
        self.role_of(token.trim()).ok_or(AuthError::Invalid)
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
            k.authenticate(Some("Bearer admin-secret")).unwrap(),
            Role::Admin
        );
    }

    #[test]
    fn open_mode_grants_admin_and_debug_hides_keys() {
        let k = Keys::new(None, None);
        assert_eq!(k.authenticate(None).unwrap(), Role::Admin);
        let shown = format!("{:?}", Keys::new(Some("s3cr3t"), None));
        assert!(!shown.contains("s3cr3t"));
    }
}
