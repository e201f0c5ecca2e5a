//! Concordance operator: the `ConcordanceCluster` resource and the reconcile decision.

pub mod crd;
pub mod decide;
