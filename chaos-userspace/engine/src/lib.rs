//! chaos-engine: runs a plan on the datapath. The timeline of steps, lease renewal,
//! checks that every attachment and target is still in place, cancel on a signal, and
//! the revert that verifies nothing is left (run.rs); what the kernel must offer before
//! anything changes (preflight.rs); partition matrices bound to the lab's nodes (matrix.rs). It prints nothing: what happens is told to an
//! [`run::Observer`] as events, and the run's outcome is returned as a report; the
//! Prometheus metrics of a run are such an observer, with their HTTP endpoint (metrics.rs).

pub mod action;
pub mod container;
pub mod container_cluster;
pub mod container_surge;
pub mod container_undo;
pub mod hypothesis;
pub mod matrix;
pub mod metrics;
pub mod network;
pub mod preflight;
pub mod remote;
pub mod report;
pub mod run;
