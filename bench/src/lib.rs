//! Load generation and measurements for Concordance, side by side with etcd.
//!
//! - [`load`]: closed-loop workloads (puts, linearizable and serializable gets, a mix) at a
//!   given concurrency against any endpoints, with latency percentiles and server CPU per op.
//! - [`compare`]: local 3-member clusters of both systems, the same workloads, etcd's own gRPC
//!   tool, and a table of ratios.
//! - [`failover`] and [`catchup`]: leader-kill recovery times and snapshot catch-up rate.

pub mod catchup;
pub mod cluster;
pub mod compare;
pub mod cpu;
pub mod driver;
pub mod etcd_tool;
pub mod failover;
pub mod load;
pub mod report;
pub mod tls;
