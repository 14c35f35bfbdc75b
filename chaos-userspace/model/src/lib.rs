//! chaos-model: what the user asked for, and nothing of the kernel. Fault and target
//! specs with their values (spec.rs), scenario documents with positions for every error
//! (scenario.rs, locate.rs), and the plan a scenario or an `inject` command becomes
//! (plan.rs): the timeline of steps, each fault encoded as the datapath's rule.
//! `validate` and `plan` run on this alone: no root, no kernel, no IO beyond reading
//! the scenario file.

pub mod action;
pub mod expect;
pub mod hypothesis;
#[cfg(feature = "clap")]
pub mod inject;
pub mod lab;
pub mod locate;
pub mod matrix;
pub mod plan;
pub mod problem;
pub mod scenario;
pub mod spec;

pub use scenario::json_schema;

pub use problem::Problem;

#[cfg(test)]
mod tests {
    /// Editors validate against the checked-in schema: it must be what the parser takes.
    #[test]
    fn checked_in_schema_is_fresh() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios/chaos-ebpf.schema.json");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == crate::json_schema(),
            "scenarios/chaos-ebpf.schema.json is not the schema of the parser's types: run `cargo xtask schema` to regenerate it"
        );
    }
}
