//! Concordance operator: the `ConcordanceCluster` resource and the reconcile decision.

pub mod controller;
pub mod crd;
pub mod decide;
