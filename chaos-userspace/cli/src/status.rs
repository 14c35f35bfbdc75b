//! `chaos-ebpf status`: running experiments (from their state files), their rules with
//! live counters read from the kernel maps, and any chaos-ebpf attachment no running
//! experiment accounts for.

use anyhow::Result;
use chaos_ebpf_common::RuleCounters;
use serde::Serialize;

use chaos_datapath::{
    bpfsys::{self, read_counters, OurLink},
    error::require_root,
    ledger::{self as state, ProcessState, RunState},
    sweep as cleanup,
};

use chaos_engine::container_undo;

use crate::output;

#[derive(Debug, Serialize)]
struct RuleStatus {
    rule_id: u32,
    fault: String,
    netns: String,
    remaining_s: f64,
    counters: Option<RuleCounters>,
}

#[derive(Debug, Serialize)]
struct RunStatus {
    pid: u32,
    process: ProcessState,
    command: String,
    seed: u64,
    lease_s: f64,
    attachments: Vec<String>,
    rules: Vec<RuleStatus>,
    /// Container actions in force that the run will undo (its container record).
    container_undos: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Status {
    runs: Vec<RunStatus>,
    /// Runs found dead (their lock was free): what they had left was removed now.
    dead: Vec<cleanup::DeadRun>,
    /// What could not be removed of dead runs.
    problems: Vec<String>,
    /// TCX links running chaos-ebpf programs that no live run holds.
    stray_links: Vec<OurLink>,
}

fn run_status(state: &RunState, process: ProcessState) -> RunStatus {
    let now = state::unix_ms();
    let rules = state
        .rules
        .iter()
        .map(|r| {
            let instance = state.instances.iter().find(|i| i.netns_id == r.netns_id);
            RuleStatus {
                rule_id: r.rule_id,
                fault: r.fault.clone(),
                netns: instance.map(|i| i.netns.display().to_string()).unwrap_or_default(),
                remaining_s: r.ends_unix_ms.saturating_sub(now) as f64 / 1000.0,
                counters: instance.and_then(|i| i.program_ids.first()).and_then(|id| read_counters(*id, r.slot)),
            }
        })
        .collect();
    let attachments = state
        .instances
        .iter()
        .map(|i| {
            format!(
                "{} {:?} on {} ({})",
                i.netns.display(),
                i.mode,
                i.interfaces.join(","),
                if i.clsact_added.is_empty() { "no qdisc added" } else { "clsact added" }
            )
        })
        .collect();
    RunStatus {
        pid: state.pid,
        process,
        command: state.command.clone(),
        seed: state.seed,
        lease_s: state.lease_ms as f64 / 1000.0,
        attachments,
        rules,
        container_undos: container_undo::pending_of(state.pid).iter().map(|p| p.describe()).collect(),
    }
}

pub fn run(json: bool) -> Result<i32> {
    require_root("status")?;
    let mut problems = Vec::new();
    // Dead runs are collected first: their leftovers removed, their records forgotten.
    let dead = cleanup::collect_dead(&mut problems);
    // Containers a dead run left paused or killed: `cleanup` puts them back (it needs the
    // Docker daemon, which status does not ask).
    for pid in container_undo::dead_runs_with_undos() {
        problems.push(format!("containers left paused or killed by dead run {pid}"));
    }
    let mut runs = Vec::new();
    for (pid, path, state) in state::read_all() {
        match state {
            Ok(state) => {
                let (process, _) = state::liveness(pid);
                if process != ProcessState::Dead {
                    runs.push(run_status(&state, process));
                }
            }
            Err(e) => output::err(&format!("chaos-ebpf: skipping {}: {e:#}", path.display())),
        }
    }
    let links = bpfsys::our_links();
    let holders = bpfsys::holders();
    let stray_links =
        links.into_iter().filter(|l| !cleanup::held_by_live_run(holders.links.get(&l.link_id), false)).collect();
    let status = Status { runs, dead, problems, stray_links };
    if json {
        output::out(&serde_json::to_string_pretty(&status)?);
        return Ok(0);
    }
    if status.runs.is_empty() {
        output::out("no chaos-ebpf experiment is running");
    }
    for d in &status.dead {
        let seen = if d.last_seen_unix_ms == 0 { "unknown".into() } else { state::clock(d.last_seen_unix_ms) };
        if d.pid == 0 {
            output::out(&format!("leftovers of dead runs removed: {}", d.leftovers.join("; ")));
        } else if d.leftovers.is_empty() {
            output::out(&format!("pid {}: dead (last seen {seen}), leftovers: none ({})", d.pid, d.command));
        } else {
            output::out(&format!(
                "pid {}: dead (last seen {seen}), leftovers removed: {} ({})",
                d.pid,
                d.leftovers.join("; "),
                d.command
            ));
        }
    }
    for p in &status.problems {
        output::out(&format!("NOT removed: {p} (run `chaos-ebpf cleanup`)"));
    }
    for run in &status.runs {
        let process = match run.process {
            ProcessState::Stopped => "alive, STOPPED: its faults lapse when the lease runs out",
            _ => "running",
        };
        output::out(&format!("pid {} ({process}) seed {} lease {}s: {}", run.pid, run.seed, run.lease_s, run.command));
        for a in &run.attachments {
            output::out(&format!("  attached: {a}"));
        }
        for c in &run.container_undos {
            output::out(&format!("  undone when its step ends: {c}"));
        }
        if run.rules.is_empty() {
            output::out("  no rule active (between steps)");
        }
        for r in &run.rules {
            let head = format!("  rule {} {} [{}] {:.1}s left", r.rule_id, r.fault, r.netns, r.remaining_s);
            match &r.counters {
                Some(c) => output::out(&format!("{head}\n    {}", crate::render::counters(c))),
                None => output::out(&format!("{head} (counters unavailable)")),
            }
        }
    }
    for l in &status.stray_links {
        output::out(&format!(
            "stray TCX link {} running {} (program {}): remove with `chaos-ebpf cleanup`",
            l.link_id, l.program, l.program_id
        ));
    }
    Ok(0)
}
