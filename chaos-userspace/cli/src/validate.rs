//! `chaos-ebpf validate`: a scenario checked without root and without the kernel.

use std::path::Path;

use anyhow::Result;
use chaos_model::{plan::Plan, scenario, spec};

use crate::output;

/// Reads and validates a scenario; its problem (exit 2) says file:line:column.
pub fn load(file: &Path) -> Result<Plan> {
    Ok(scenario::load(file)?)
}

pub fn run(file: &Path) -> Result<i32> {
    let plan = load(file)?;
    let matrices = plan.steps.iter().filter(|s| s.matrix.is_some()).count();
    output::out(&format!(
        "{}: valid: {} steps, {} faults{}, {} in all",
        file.display(),
        plan.steps.len(),
        plan.steps.iter().map(|s| s.faults.len()).sum::<usize>(),
        if matrices > 0 { format!(", {matrices} partition matrices") } else { String::new() },
        spec::format_duration(plan.total_duration())
    ));
    Ok(0)
}
