//! chaos-agent: the resident node agent. It loads the programs once per network
//! namespace it manages and applies and reverts faults by map writes, so a fault costs
//! milliseconds instead of a program load. A local HTTP/1.1 JSON API on a Unix socket
//! (peer credentials: root or the agent's own uid), leases that the kernel enforces too,
//! Prometheus metrics, and a client (`inject` goes through it when an agent answers).
//! docs/agent.md describes the API.

pub mod api;
pub mod client;
mod core;
pub mod dashboard;
pub mod kubernetes;
pub mod metrics;
pub mod server;

pub use core::set_warnings_only;
pub use dashboard::PrometheusUrl;
pub use server::{run, Options, DEFAULT_METRICS_ADDR, DEFAULT_SOCKET};
