//! Executing a plan: resolve targets, load and attach one instance per network namespace,
//! then step through the timeline installing rules, renewing their leases and printing
//! progress; revert everything at the end, on SIGINT/SIGTERM, and on error.

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use chaos_ebpf_common::{ProtectedPorts, RuleCounters};
use serde::Serialize;

use crate::{
    bpfsys,
    error::{require_root, Failure},
    lab::{Lab, ProbeCounts},
    loader::Instance,
    netns::NetnsId,
    plan::Plan,
    spec::{format_duration, Cidr},
    state::{self, RuleState, RunState, StateFile},
    target::{self, Resolved},
};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The command line, recorded in the state file for `status`.
    pub command: String,
    /// Print progress lines (to stderr).
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    pub rule_id: u32,
    pub fault: String,
    pub netns: String,
    pub counters: RuleCounters,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    pub seconds: f64,
    pub rules: Vec<RuleReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeCounts>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub seed: u64,
    pub interrupted: bool,
    pub steps: Vec<StepReport>,
    /// Every attachment and program of this run was verified gone after the revert.
    pub clean: bool,
}

struct ActiveRule {
    rule_id: u32,
    fault: String,
    netns: NetnsId,
    slot: u32,
    peers: Vec<Cidr>,
}

/// Runs the plan. Errors before any fault is installed are `Failure`s (exit 2).
pub fn run(plan: &Plan, options: &RunOptions) -> Result<RunReport> {
    require_root("running faults")?;
    let seed = plan.seed_or_random();
    if options.progress {
        eprintln!("chaos-ebpf: scenario {} seed {seed} ({} total)", plan.name, format_duration(plan.total_duration()));
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(signal, interrupted.clone()).context("installing signal handlers")?;
    }
    let mode = plan.attach.resolve()?;

    // Everything that can fail on bad input happens before the first fault.
    let lab = plan.lab.as_ref().map(Lab::create).transpose()?;
    let mut resolved: BTreeMap<String, Vec<Resolved>> = BTreeMap::new();
    for step in &plan.steps {
        for fault in &step.faults {
            let key = resolution_key(&fault.spec);
            if !resolved.contains_key(&key) {
                let mut targets = target::resolve(&fault.spec.target)?;
                if peer_side(&fault.spec) {
                    let mut peers = Vec::new();
                    for t in &targets {
                        peers.extend(target::veth_peers(&fault.spec.target, t)?);
                    }
                    targets = peers;
                }
                resolved.insert(key, targets);
            }
        }
    }
    let protected: Vec<ProtectedPorts> = plan.protect.iter().map(|p| p.entry()).collect();
    let mut instances: BTreeMap<NetnsId, Instance> = BTreeMap::new();
    for (key, targets) in &resolved {
        for r in targets {
            if !instances.contains_key(&r.netns.id) {
                let netns = crate::netns::Netns::open(&r.netns.path)?;
                let instance = Instance::load(netns, mode, &protected).map_err(|e| {
                    Failure::environment(
                        format!("the kernel refused the chaos-ebpf programs: {e:#}"),
                        "check that the kernel has BPF, BTF and clsact/TCX support (docs/building.md lists what is needed)",
                    )
                })?;
                instances.insert(r.netns.id, instance);
            }
            let instance = instances.get_mut(&r.netns.id).expect("inserted above");
            let target_needs_fq = plan
                .steps
                .iter()
                .flat_map(|s| &s.faults)
                .any(|f| f.spec.kind.needs_fq() && resolution_key(&f.spec) == *key);
            if target_needs_fq {
                let interfaces: Vec<_> =
                    r.interfaces.iter().filter(|i| r.ifindex == 0 || i.index == r.ifindex).cloned().collect();
                instance.ensure_fq(&interfaces)?;
            }
            instance.attach(&r.interfaces).map_err(|e| {
                Failure::environment(
                    format!("attaching to {} failed: {e:#}", r.netns.path.display()),
                    "check the interfaces still exist; `--attach netlink` works on kernels without TCX",
                )
            })?;
        }
    }
    let state_file = StateFile::create()?;
    let mut run_state = RunState {
        pid: std::process::id(),
        command: options.command.clone(),
        seed,
        lease_ms: plan.lease.as_millis() as u64,
        instances: instances.values().map(Instance::state).collect::<Result<_>>()?,
        rules: Vec::new(),
    };
    state_file.write(&run_state)?;
    let program_ids: Vec<u32> = run_state.instances.iter().flat_map(|i| i.program_ids.clone()).collect();

    let probe = lab.as_ref().map(Lab::start_probe).transpose()?.flatten();
    let renew_every = plan.lease / 3;
    let tty = std::io::stderr().is_terminal();
    let run_start = Instant::now();
    let mut steps = Vec::new();
    let mut outcome: Result<()> = Ok(());

    'steps: for step in &plan.steps {
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        let mut active = Vec::new();
        let step_start = Instant::now();
        let probe_start = probe.as_ref().map(|p| p.counts());
        for fault in &step.faults {
            for r in &resolved[&resolution_key(&fault.spec)] {
                let instance = instances.get_mut(&r.netns.id).expect("loaded above");
                let mut rule = fault.spec.rule(seed, fault.rule_id, r.ifindex, r.cgroup_id);
                rule.cgroup_level = r.cgroup_level;
                let installed = instance.free_slot().and_then(|slot| {
                    instance.install(slot, &rule, &fault.spec.peers, plan.lease)?;
                    Ok(slot)
                });
                match installed {
                    Ok(slot) => active.push(ActiveRule {
                        rule_id: fault.rule_id,
                        fault: fault.spec.describe(),
                        netns: r.netns.id,
                        slot,
                        peers: fault.spec.peers.clone(),
                    }),
                    Err(e) => {
                        outcome =
                            Err(e.context(format!("installing rule {} ({})", fault.rule_id, fault.spec.describe())));
                        remove_rules(&mut instances, &active);
                        break 'steps;
                    }
                }
            }
        }
        let now_ms = state::unix_ms();
        run_state.rules = active
            .iter()
            .map(|a| RuleState {
                rule_id: a.rule_id,
                slot: a.slot,
                netns_id: a.netns,
                fault: a.fault.clone(),
                started_unix_ms: now_ms,
                ends_unix_ms: now_ms + step.duration.as_millis() as u64,
            })
            .collect();
        state_file.write(&run_state)?;

        let mut last_renew = Instant::now();
        let mut last_progress = Instant::now();
        while step_start.elapsed() < step.duration {
            if interrupted.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50).min(step.duration.saturating_sub(step_start.elapsed())));
            if last_renew.elapsed() >= renew_every {
                for a in &active {
                    if let Err(e) = instances.get_mut(&a.netns).expect("loaded").renew(a.slot, plan.lease) {
                        outcome = Err(e.context("renewing a lease"));
                    }
                }
                last_renew = Instant::now();
            }
            // A terminal line is redrawn in place; a log gets about a hundred lines a run.
            let progress_every = if tty {
                Duration::from_millis(500)
            } else {
                (plan.total_duration() / 100).max(Duration::from_secs(1))
            };
            if options.progress && last_progress.elapsed() >= progress_every {
                let line = progress_line(
                    run_start.elapsed(),
                    plan.total_duration(),
                    &step.name,
                    &active,
                    &instances,
                    probe.as_ref().map(|p| p.counts().since(probe_start.as_ref().unwrap())),
                );
                if tty {
                    eprint!("\r\x1b[2K{line}");
                } else {
                    eprintln!("{line}");
                }
                last_progress = Instant::now();
            }
            if outcome.is_err() {
                break;
            }
        }
        if tty && options.progress {
            eprint!("\r\x1b[2K");
        }
        let rules = active
            .iter()
            .map(|a| RuleReport {
                rule_id: a.rule_id,
                fault: a.fault.clone(),
                netns: instances[&a.netns].netns.path.display().to_string(),
                counters: instances[&a.netns].counters(a.slot).unwrap_or_default(),
            })
            .collect();
        remove_rules(&mut instances, &active);
        let report = StepReport {
            name: step.name.clone(),
            seconds: step_start.elapsed().as_secs_f64(),
            rules,
            probe: probe.as_ref().map(|p| p.counts().since(probe_start.as_ref().unwrap())),
        };
        if options.progress {
            eprintln!("chaos-ebpf: step {} done", report.name);
        }
        steps.push(report);
        if outcome.is_err() {
            break;
        }
    }
    drop(probe);
    let mut revert_errors = Vec::new();
    for (_, mut instance) in std::mem::take(&mut instances) {
        if let Err(e) = instance.shutdown() {
            revert_errors.push(format!("{e:#}"));
        }
    }
    drop(lab);
    let clean = verify_gone(&program_ids);
    drop(state_file);
    let report =
        RunReport { scenario: plan.name.clone(), seed, interrupted: interrupted.load(Ordering::Relaxed), steps, clean };
    outcome?;
    if !revert_errors.is_empty() || !clean {
        return Err(anyhow!(
            "the faults ended but the revert is not verified clean ({}); run `chaos-ebpf cleanup`",
            if revert_errors.is_empty() { "programs still attached".into() } else { revert_errors.join("; ") }
        ));
    }
    Ok(report)
}

/// Whether a fault acts on the far end of the target's veths: departure times for what
/// the target receives (EDT works on egress only).
fn peer_side(spec: &crate::spec::FaultSpec) -> bool {
    spec.acts_on_far_end()
}

/// Faults on the same target share its resolution, except those acting on its far end.
fn resolution_key(spec: &crate::spec::FaultSpec) -> String {
    if peer_side(spec) {
        format!("{} (far end)", spec.target)
    } else {
        spec.target.to_string()
    }
}

fn remove_rules(instances: &mut BTreeMap<NetnsId, Instance>, active: &[ActiveRule]) {
    for a in active {
        if let Some(instance) = instances.get_mut(&a.netns) {
            if let Err(e) = instance.remove(a.slot, &a.peers) {
                eprintln!("chaos-ebpf: removing rule {}: {e:#}", a.rule_id);
            }
        }
    }
}

/// Waits (up to 2 s: program release is RCU-deferred) until no program of this run is
/// loaded or attached any more.
fn verify_gone(program_ids: &[u32]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let alive = bpfsys::our_programs().iter().any(|(id, _)| program_ids.contains(id));
        if !alive {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn progress_line(
    elapsed: Duration,
    total: Duration,
    step: &str,
    active: &[ActiveRule],
    instances: &BTreeMap<NetnsId, Instance>,
    probe: Option<ProbeCounts>,
) -> String {
    let mut line = format!("[{:>6.1}s / {}] {step}", elapsed.as_secs_f64(), format_duration(total));
    for a in active {
        if let Ok(c) = instances[&a.netns].counters(a.slot) {
            line += &format!(" | rule {}: matched {} dropped {}", a.rule_id, c.matched, c.dropped);
        }
    }
    if let Some(p) = probe {
        line += &format!(" | probe {}", probe_summary(&p));
    }
    line
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
}

fn probe_summary(p: &ProbeCounts) -> String {
    format!(
        "sent {} delivered {} ({}) round trips {} ({})",
        p.sent,
        p.delivered,
        percent(p.delivered, p.sent),
        p.echoed,
        percent(p.echoed, p.sent)
    )
}

pub fn render_step(step: &StepReport) -> String {
    let mut out = format!("step {} ({:.1}s)", step.name, step.seconds);
    if step.rules.is_empty() {
        out += ": no fault";
    }
    for r in &step.rules {
        let c = &r.counters;
        out += &format!(
            "\n  rule {} {} [{}]\n    seen {} matched {} dropped {} ({} of matched) passed {} delayed {} errors {} expired {} protected {} unparsed {}",
            r.rule_id,
            r.fault,
            r.netns,
            c.seen,
            c.matched,
            c.dropped,
            percent(c.dropped, c.matched),
            c.passed,
            c.delayed,
            c.errors,
            c.expired,
            c.protected,
            c.unparsed
        );
    }
    if let Some(p) = &step.probe {
        out += &format!("\n  probe: {}", probe_summary(p));
    }
    out
}

pub fn render_report(report: &RunReport) -> String {
    let mut out = format!(
        "scenario {} seed {}: {}",
        report.scenario,
        report.seed,
        if report.interrupted { "interrupted, every fault reverted" } else { "completed" }
    );
    for step in &report.steps {
        out += "\n";
        out += &render_step(step);
    }
    out += &format!("\nrevert verified: {}", if report.clean { "nothing left attached" } else { "NOT clean" });
    out
}
