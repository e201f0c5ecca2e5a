//! Concordance operator: the `ConcordanceCluster` resource, the reconcile decision and the
//! controller that carries it out.

pub mod controller;
pub mod crd;
pub mod decide;
pub mod error;
pub mod keys;
pub mod lease;
pub mod metrics;
pub mod observe;
pub mod pki;
pub mod placement;
pub mod resources;
