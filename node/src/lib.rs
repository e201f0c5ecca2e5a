//! Concordance: a Raft-replicated coordination store.
//!
//! Layers, top to bottom, each importing only from those below it: `api` (HTTP routes) ->
//! `membership`, `coordination` -> `service` (what a node does for a request) -> `forward`,
//! `features`, `auth` -> `raft` (settings, wire types, peer network), `error` -> `store`
//! (RocksDB: the Raft type configuration, log, state machine, snapshots) -> `metrics`, `clock`.

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod coordination;
pub mod error;
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
