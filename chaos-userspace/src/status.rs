//! `chaos-ebpf status`: running experiments (from their state files), their rules with
//! live counters read from the kernel maps, and any chaos-ebpf attachment no running
//! experiment accounts for.

use anyhow::Result;
use aya::maps::{MapData, MapInfo, PerCpuArray};
use chaos_ebpf_common::{names, RuleCounters};
use serde::Serialize;

use crate::{
    bpfsys::{self, OurLink},
    error::require_root,
    state::{self, ProcessState, RunState},
};

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
}

#[derive(Debug, Serialize)]
struct Status {
    runs: Vec<RunStatus>,
    /// TCX links running chaos-ebpf programs that belong to no running experiment.
    stray_links: Vec<OurLink>,
}

/// Counters of `slot` in the counters map used by program `program_id`.
fn read_counters(program_id: u32, slot: u32) -> Option<RuleCounters> {
    let info = aya::programs::loaded_programs().flatten().find(|p| p.id() == program_id)?;
    for map_id in info.map_ids().ok()??.into_iter() {
        let map_info = MapInfo::from_id(map_id).ok()?;
        if map_info.name_as_str() == Some(names::COUNTERS) {
            let data = MapData::from_id(map_id).ok()?;
            let map = aya::maps::Map::PerCpuArray(data);
            let counters: PerCpuArray<_, RuleCounters> = PerCpuArray::try_from(map).ok()?;
            let mut total = RuleCounters::default();
            for c in counters.get(&slot, 0).ok()?.iter() {
                total.add(c);
            }
            return Some(total);
        }
    }
    None
}

fn run_status(state: &RunState) -> RunStatus {
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
        process: state::process_state(state.pid),
        command: state.command.clone(),
        seed: state.seed,
        lease_s: state.lease_ms as f64 / 1000.0,
        attachments,
        rules,
    }
}

pub fn run(json: bool) -> Result<i32> {
    require_root("status")?;
    let mut runs = Vec::new();
    // Programs of runs whose process is still there (running or stopped).
    let mut owned: Vec<u32> = Vec::new();
    for (path, state) in state::read_all() {
        match state {
            Ok(state) => {
                let run = run_status(&state);
                if run.process != ProcessState::Gone {
                    owned.extend(state.instances.iter().flat_map(|i| i.program_ids.iter().copied()));
                }
                runs.push(run);
            }
            Err(e) => eprintln!("chaos-ebpf: skipping {}: {e:#}", path.display()),
        }
    }
    let stray_links = bpfsys::our_links().into_iter().filter(|l| !owned.contains(&l.program_id)).collect();
    let status = Status { runs, stray_links };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(0);
    }
    if status.runs.is_empty() {
        println!("no chaos-ebpf experiment is running");
    }
    for run in &status.runs {
        println!("pid {} ({:?}) seed {} lease {}s: {}", run.pid, run.process, run.seed, run.lease_s, run.command);
        for a in &run.attachments {
            println!("  attached: {a}");
        }
        if run.rules.is_empty() {
            println!("  no rule active (between steps)");
        }
        for r in &run.rules {
            print!("  rule {} {} [{}] {:.1}s left", r.rule_id, r.fault, r.netns, r.remaining_s);
            match &r.counters {
                Some(c) => println!(
                    "\n    seen {} matched {} dropped {} passed {} delayed {} errors {} expired {} protected {} unparsed {}",
                    c.seen, c.matched, c.dropped, c.passed, c.delayed, c.errors, c.expired, c.protected, c.unparsed
                ),
                None => println!(" (counters unavailable)"),
            }
        }
    }
    for l in &status.stray_links {
        println!(
            "stray TCX link {} running {} (program {}): remove with `chaos-ebpf cleanup`",
            l.link_id, l.program, l.program_id
        );
    }
    Ok(0)
}
