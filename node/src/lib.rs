//! Concordance: a Raft-replicated coordination store.
//!
//! Layers, top to bottom, each importing only from those below it: `api` (HTTP: routes,
//! request validation, and the only place an error becomes a status) -> `membership`,
//! `coordination`, `integrity` (state checks and the fence), `data` (keys, transactions, leases in the API's types), `locks` (the lock and
//! election queue) -> `service` (what a node does for a request: propose, forward, linearize
//! reads) -> `forward`, `features`, `auth`, `quota` (storage quotas per prefix), `change_feed` (one history read per applied batch for every
//! watch) -> `raft` (settings, wire types, the peer client and
//! network) and `error` (typed errors, no HTTP) -> `store` (RocksDB: the Raft type configuration,
//! the log, the state machine's apply, reader and openraft glue, snapshots) -> `metrics`,
//! `clock`. Beside them: `server` (the composition root), `config`, `join`, `offline`,
//! `inspect` and `termination` (the note a node leaves when it refuses to start).

pub mod api;
pub mod audit;
pub mod auth;
pub mod certs;
pub mod change_feed;
pub mod clock;
pub mod config;
pub mod connections;
pub mod coordination;
pub mod data;
pub mod error;
pub mod features;
pub mod forward;
pub mod inspect;
pub mod integrity;
pub mod join;
pub mod lease_clock;
pub mod locks;
pub mod membership;
pub mod metrics;
pub mod offline;
pub mod quota;
pub mod raft;
pub mod server;
pub mod service;
pub mod space;
pub mod store;
pub mod termination;
pub mod tls;

#[cfg(test)]
mod fuzz;
