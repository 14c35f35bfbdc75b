//! `chaos-ebpf cleanup`: the datapath's crash sweep, the lab's leftover namespaces (when
//! no run is alive), a verification look, and the report.

use anyhow::Result;
use chaos_datapath::{error::require_root, sweep};

use crate::{exit, output};

pub fn run(force: bool, json: bool) -> Result<i32> {
    require_root("cleanup")?;
    let mut report = sweep::sweep(force);
    if report.live_runs == 0 {
        chaos_lab::remove_leftovers(&mut report.removed, &mut report.remaining);
    }
    sweep::verify(force, &mut report);
    if json {
        output::out(&serde_json::to_string_pretty(&report)?);
    } else {
        if report.removed.is_empty() {
            output::out("nothing to remove");
        }
        for r in &report.removed {
            output::out(&format!("removed {r}"));
        }
        for a in &report.active {
            output::out(&format!("left alone: {a}"));
        }
        for r in &report.remaining {
            output::out(&format!("NOT removed: {r}"));
        }
        output::out(if report.clean { "clean" } else { "NOT clean" });
    }
    Ok(if report.clean { 0 } else { exit::FAILED })
}
