//! Which connections the HTTP listener takes: at most so many in all and per client address,
//! with a reserve only the cluster's own members may use, so a flood of clients cannot lock
//! the peers out and take quorum down with it. What each connection may then do with its
//! time (the header timeout) is set where it is served (`server.rs`).
//!
//! A peer is recognised by its address: the addresses in the Raft membership, resolved again
//! every [`PEER_REFRESH`]. An upgraded peer stream (append, forward) leaves the count when it
//! is upgraded: it is the cluster's own traffic, never a client's.

use std::collections::HashMap;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::time::Duration;

use crate::metrics::Metrics;

/// How often the peers' addresses are resolved again (a member that moved, a pod with a new
/// address).
pub const PEER_REFRESH: Duration = Duration::from_secs(5);

/// The limits, from the command line (`--max-connections`, `--max-connections-per-address`,
/// `--peer-connection-reserve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, from everyone.
    pub total: usize,
    /// Connections open at once from one client address (peers are not held to it).
    pub per_address: usize,
    /// Of `total`, how many only peers may take.
    pub peer_reserve: usize,
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds as many connections as it takes from clients.
    Full,
    /// That address holds as many connections as one address may.
    AddressFull,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::AddressFull => "address_full",
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Counts the open connections and admits or refuses new ones. Shared by every HTTP thread.
pub struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
    peers: RwLock<HashSet<IpAddr>>,
    metrics: Metrics,
}

/// One admitted connection; dropping it frees its place.
pub struct Permit {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl Admission {
    pub fn new(limits: Limits, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::default(),
            peers: RwLock::default(),
            metrics,
        })
    }

    /// Takes a place for a connection from `address`, or says why there is none.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Permit, Refusal> {
        let peer = self.is_peer(address);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let room = if peer {
            self.limits.total
        } else {
            self.limits.total.saturating_sub(self.limits.peer_reserve)
        };
        if counts.total >= room {
            drop(counts);
            self.metrics.connection_refused(Refusal::Full.as_str());
            return Err(Refusal::Full);
        }
        let from_address = counts.by_address.entry(address).or_default();
        if !peer && *from_address >= self.limits.per_address {
            drop(counts);
            self.metrics
                .connection_refused(Refusal::AddressFull.as_str());
            return Err(Refusal::AddressFull);
        }
        *from_address += 1;
        counts.total += 1;
        self.metrics.set_open_connections(counts.total);
        Ok(Permit {
            admission: self.clone(),
            address,
        })
    }

    fn is_peer(&self, address: IpAddr) -> bool {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&address)
    }

    /// The addresses peers connect from, replacing the previous set.
    pub fn set_peers(&self, addresses: HashSet<IpAddr>) {
        *self.peers.write().unwrap_or_else(|p| p.into_inner()) = addresses;
    }

    fn release(&self, address: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&address) {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&address);
            }
        }
        self.metrics.set_open_connections(counts.total);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release(self.address);
    }
}

/// The IP addresses of `members` (`host:port`, as the membership records them); a name that
/// does not resolve now is left out until the next refresh.
pub async fn resolve(members: impl IntoIterator<Item = String>) -> HashSet<IpAddr> {
    let mut addresses = HashSet::new();
    for member in members {
        match tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(&member)).await {
            Ok(Ok(found)) => addresses.extend(found.map(|a| a.ip())),
            Ok(Err(e)) => tracing::debug!(%member, error = %e, "cannot resolve a member's address"),
            Err(_) => tracing::debug!(%member, "resolving a member's address timed out"),
        }
    }
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(total: usize, per_address: usize, peer_reserve: usize) -> Arc<Admission> {
        Admission::new(
            Limits {
                total,
                per_address,
                peer_reserve,
            },
            Metrics::new(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_gets_its_share_and_a_closed_connection_frees_its_place() {
        let a = admission(10, 2, 0);
        let first = a.admit(ip("10.0.0.1")).unwrap();
        let _second = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).err(), Some(Refusal::AddressFull));
        assert!(
            a.admit(ip("10.0.0.2")).is_ok(),
            "another address still gets in"
        );
        drop(first);
        assert!(a.admit(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn the_reserve_is_for_peers_only() {
        let a = admission(4, 10, 2);
        a.set_peers([ip("10.0.0.9")].into());
        let _clients: Vec<_> = (1..=2)
            .map(|i| a.admit(ip(&format!("10.0.0.{i}"))).unwrap())
            .collect();
        assert_eq!(a.admit(ip("10.0.0.3")).err(), Some(Refusal::Full));
        let _peers: Vec<_> = (0..2).map(|_| a.admit(ip("10.0.0.9")).unwrap()).collect();
        assert_eq!(
            a.admit(ip("10.0.0.9")).err(),
            Some(Refusal::Full),
            "the total binds peers too"
        );
    }

    #[test]
    fn peers_are_not_held_to_the_per_address_limit() {
        let a = admission(10, 1, 0);
        a.set_peers([ip("10.0.0.9")].into());
        let _held: Vec<_> = (0..3).map(|_| a.admit(ip("10.0.0.9")).unwrap()).collect();
        let _client = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).err(), Some(Refusal::AddressFull));
    }
}
