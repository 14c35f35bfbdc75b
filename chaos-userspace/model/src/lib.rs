//! chaos-model: what the user asked for, and nothing of the kernel. Fault and target
//! specs with their values (spec.rs), scenario documents with positions for every error
//! (scenario.rs, locate.rs), and the plan a scenario or an `inject` command becomes
//! (plan.rs): the timeline of steps, each fault encoded as the datapath's rule.
//! `validate` and `plan` run on this alone: no root, no kernel, no IO beyond reading
//! the scenario file.

pub mod expect;
pub mod hypothesis;
#[cfg(feature = "clap")]
pub mod inject;
pub mod lab;
pub mod locate;
pub mod plan;
pub mod problem;
pub mod scenario;
pub mod spec;

pub use scenario::json_schema;

pub use problem::Problem;
