//! `chaos-ebpf plan`: what a scenario would do, step by step, with the exact map
//! entries, without root and without the kernel.

use std::path::Path;

use anyhow::Result;
use chaos_model::plan::Plan;

use crate::{output, validate, Output};

pub fn run(file: &Path, seed: Option<u64>, output: Output) -> Result<i32> {
    let mut plan = validate::load(file)?;
    if seed.is_some() {
        plan.seed = seed;
    }
    print(&plan, output);
    Ok(0)
}

/// The plan and the map entries it becomes, as text or JSON.
pub fn print(plan: &Plan, output: Output) {
    let seed = plan.seed_or_random();
    match output {
        Output::Json => {
            let value = serde_json::json!({ "plan": plan, "seed": seed, "entries": plan.entries(seed) });
            output::out(&serde_json::to_string_pretty(&value).expect("serialisable"));
        }
        Output::Text => output::out_raw(&plan.render_text(seed, plan.seed.is_some())),
    }
}
