//! `chaos-ebpf run` and `inject` after their plan is made: the preflight checks shared
//! with `--dry-run`, the lab, the run, and its report and exit code.

use std::path::PathBuf;

use anyhow::Result;
use chaos_engine::run::{self, RunOptions};
use chaos_lab::Lab;
use chaos_model::plan::Plan;

use crate::{clip_lines, exit, output, render, render::Progress, Output};

/// Runs a plan (or only checks it, for a dry run) and reports.
pub fn execute(plan: &Plan, dry_run: bool, output: Output, command: String, run_dir: Option<PathBuf>) -> Result<i32> {
    // The same checks for a dry run and a run: what one accepts, the other does.
    let checked = chaos_engine::preflight::check(plan, dry_run)?;
    if dry_run {
        for (target, resolved) in &checked.resolved {
            for r in resolved {
                let names = chaos_model::spec::list_some(r.interfaces.iter().map(|i| &i.name), 8);
                output::err(&format!("chaos-ebpf: dry run: {target} resolves to {} ({names})", r.netns.path.display()));
            }
        }
        if !checked.missing_privileges.is_empty() {
            output::err(&format!(
                "chaos-ebpf: dry run without privileges ({}): a run would fail with exit 2",
                checked.missing_privileges.join("; ")
            ));
        }
        for what in &checked.unchecked {
            output::err(&format!("chaos-ebpf: dry run: not checked without privileges: {what}"));
        }
        crate::plan::print(plan, output);
        return Ok(0);
    }
    drop(checked);
    // Created once the checks passed, before anything changes: a bad run directory is
    // bad input (exit 2) and changes nothing.
    let run_dir = crate::run_dir::create(run_dir)?;
    output::err(&format!("chaos-ebpf: run directory {}", run_dir.display()));
    // The lab comes first: its namespaces are targets. Its probe measures each step.
    let lab = plan.lab.as_ref().map(Lab::create).transpose()?;
    let probe = lab.as_ref().map(Lab::start_probe).transpose()?.flatten();
    let mut progress = Progress::new();
    let report = run::run(plan, &RunOptions { command }, probe.as_ref().map(|p| p as &dyn run::Probe), &mut progress)?;
    drop(probe);
    drop(lab);
    if let Err(e) = std::fs::write(run_dir.join("report.json"), serde_json::to_string_pretty(&report)? + "\n") {
        output::err(&format!("chaos-ebpf: warning: cannot write {}: {e}", run_dir.join("report.json").display()));
    }
    match output {
        Output::Json => output::out(&serde_json::to_string_pretty(&report)?),
        Output::Text => output::out(&render::report(&report)),
    }
    if !report.clean {
        output::err(&clip_lines(&format!(
            "chaos-ebpf: error: the faults ended but the revert is not verified clean ({}); run `chaos-ebpf cleanup`",
            report.revert_problems.join("; ")
        )));
        return Ok(exit::FAILED);
    }
    if let Some(reason) = &report.failed {
        output::err(&format!("chaos-ebpf: a fault did not run its course: {reason}; every fault was reverted"));
        return Ok(exit::FAILED);
    }
    if report.interrupted {
        output::err("chaos-ebpf: interrupted: every fault was reverted");
        return Ok(exit::FAILED);
    }
    Ok(0)
}
