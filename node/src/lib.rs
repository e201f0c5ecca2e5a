//! Concordance: a Raft-replicated coordination store.
//!
//! Layers, top to bottom: `api` (HTTP routes) -> `service` (what a node does for a request)
//! -> `raft` (consensus types, network) -> `store` (RocksDB: log, state machine, snapshots).

pub mod api;
pub mod auth;
pub mod config;
pub mod coordination;
pub mod features;
pub mod forward;
pub mod inspect;
pub mod join;
pub mod membership;
pub mod metrics;
pub mod offline;
pub mod raft;
pub mod server;
pub mod service;
pub mod store;
