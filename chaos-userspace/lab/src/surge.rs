//! Membership surge on the cluster lab: cycles of extra workload nodes (`chaos-lab-node`
//! named `surge-<cycle>-<k>`) that join the discovery plane at a given rate and then leave
//! (SIGTERM: each revokes its lease), timing how long every lab node's /members view took
//! to see all of them join, and then all of them leave.
//!
//! Every surge node is recorded in `surge.json` in the lab's state directory before it
//! starts, so `lab down` (and [`stop_surge`]) stops it even if the process that started
//! it died. Every wait is bounded; an interrupt stops what was started.

use std::{
    collections::BTreeSet,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use chaos_datapath::error::Error;
use serde::{Deserialize, Serialize};

use crate::{
    cluster::{self, Proc, State},
    prometheus,
};

/// Surge nodes listen on their member's address from this port up (the lab's own
/// nodes use `cluster::WORKLOAD_PORT`).
pub const SURGE_BASE_PORT: u16 = 9200;
pub const MAX_COUNT: u32 = 50;
pub const MAX_CYCLES: u32 = 100;
pub const MAX_RATE: f64 = 100.0;
pub const MAX_SETTLE: Duration = Duration::from_secs(600);
/// How long every observer may take to see all surge nodes of a cycle join, or leave
/// (a node's lease TTL is 5 s, so even a node killed without leaving is gone by then).
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// SIGTERM, then this long for a surge node to revoke its lease and exit, then SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, PartialEq)]
pub struct SurgeParams {
    /// Extra nodes per cycle.
    pub count: u32,
    /// Nodes started per second.
    pub rate: f64,
    pub cycles: u32,
    /// The member whose namespace they run in (and whose etcd they talk to first);
    /// `None`: spread over the members in turn.
    pub member: Option<String>,
    /// How long they stay once every node sees them all, before they are stopped.
    pub settle: Duration,
}

#[derive(Debug, Clone)]
pub enum SurgeProgress {
    Starting { cycle: u32, nodes: Vec<String> },
    Joined { cycle: u32, max_ms: Option<u64> },
    Left { cycle: u32, max_ms: Option<u64> },
}

/// How long one observing lab node took to see a cycle's change: from the last surge
/// node's start (join) or from the SIGTERMs (leave) until the node's view changed to
/// include all of them (join) or none (leave); `None`: not within `CONVERGE_TIMEOUT`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Convergence {
    pub observer: String,
    pub ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    pub cycle: u32,
    pub nodes: Vec<String>,
    /// From the first start to the last one (the rate's doing).
    pub start_span_ms: u64,
    pub join: Vec<Convergence>,
    /// The slowest observer; `None` when one did not converge.
    pub join_max_ms: Option<u64>,
    pub leave: Vec<Convergence>,
    pub leave_max_ms: Option<u64>,
    /// Surge nodes that did not exit within the grace after SIGTERM and were killed.
    pub killed: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SurgeReport {
    pub count: u32,
    pub rate: f64,
    pub observers: Vec<String>,
    pub cycles: Vec<CycleReport>,
    /// Every observer saw every join and leave within the bound.
    pub converged: bool,
    pub join_max_ms: Option<u64>,
    pub leave_max_ms: Option<u64>,
}

/// A surge node as recorded in surge.json (before it starts; its process once it runs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SurgeNode {
    pub name: String,
    pub netns: String,
    pub listen: SocketAddr,
    pub log: PathBuf,
    pub process: Option<Proc>,
}

fn record_file(state_dir: &Path) -> PathBuf {
    state_dir.join("surge.json")
}

/// The surge nodes recorded in the lab's state directory (none when it has no record).
pub fn recorded(state_dir: &Path) -> Vec<SurgeNode> {
    fs::read(record_file(state_dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn save(state: &State, nodes: &[SurgeNode]) -> Result<()> {
    let path = record_file(&state.dir);
    let tmp = state.dir.join("surge.json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(nodes)?).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    // Prometheus scrapes them while they run.
    let targets: Vec<(String, SocketAddr)> = nodes.iter().map(|n| (n.name.clone(), n.listen)).collect();
    state.write_node_targets(&targets)
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn validate(state: &State, params: &SurgeParams) -> Result<()> {
    let bad = |what: String, fix: &str| -> anyhow::Error { Error::unsupported(what, fix).into() };
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(bad("a surge starts processes in the lab's namespaces: it needs root".into(), "run it as root"));
    }
    if !(1..=MAX_COUNT).contains(&params.count) {
        return Err(bad(
            format!("surge count {}: 1 to {MAX_COUNT} nodes per cycle", params.count),
            "give count: 1..50",
        ));
    }
    if !(params.rate.is_finite() && params.rate > 0.0 && params.rate <= MAX_RATE) {
        return Err(bad(
            format!("surge rate {}: nodes per second above 0, at most {MAX_RATE}", params.rate),
            "give rate: like 5 (nodes/s)",
        ));
    }
    if !(1..=MAX_CYCLES).contains(&params.cycles) {
        return Err(bad(format!("surge cycles {}: 1 to {MAX_CYCLES}", params.cycles), "give cycles: 1..100"));
    }
    if params.settle > MAX_SETTLE {
        return Err(bad(
            format!("surge settle {:?}: at most {} s", params.settle, MAX_SETTLE.as_secs()),
            "give a shorter settle",
        ));
    }
    if let Some(member) = &params.member {
        if !state.members.iter().any(|m| &m.name == member) {
            let names: Vec<&str> = state.members.iter().map(|m| m.name.as_str()).collect();
            return Err(bad(
                format!("surge member {member}: the lab has {}", names.join(", ")),
                "name one of the lab's members",
            ));
        }
    }
    if !state.complete || state.workloads.is_empty() || state.certs.is_none() {
        return Err(bad(
            "surge needs a lab whose `lab up` finished, with its workload nodes".to_owned(),
            "`chaos-ebpf lab up` first (or `lab down` and up again)",
        ));
    }
    let left: Vec<String> =
        recorded(&state.dir).into_iter().filter(|n| n.process.is_some_and(|p| p.alive())).map(|n| n.name).collect();
    if !left.is_empty() {
        return Err(bad(
            format!("surge nodes are still running: {}", cluster::short(&left.join(", "))),
            "wait for the other surge to end, or stop them (chaos_lab::surge::stop_surge; `lab down` does too)",
        ));
    }
    Ok(())
}

/// Runs the surge; see the module documentation. Bad parameters, or a lab that is not
/// up, are refused before anything starts (`chaos_datapath::error::Error`, exit 2).
pub fn surge(
    state: &State,
    params: &SurgeParams,
    interrupted: &AtomicBool,
    progress: &mut dyn FnMut(SurgeProgress),
) -> Result<SurgeReport> {
    validate(state, params)?;
    let binary = cluster::node_binary()?;
    let observers: Vec<(String, SocketAddr)> = state
        .workloads
        .iter()
        .filter(|w| w.process.is_some_and(|p| p.alive()))
        .map(|w| (w.name.clone(), w.listen))
        .collect();
    if observers.is_empty() {
        bail!("no workload node of the lab is running to observe the surge; `lab status` shows them");
    }
    let surge_dir = state.dir.join("surge");
    fs::create_dir_all(&surge_dir).with_context(|| format!("creating {}", surge_dir.display()))?;
    let mut cycles = Vec::new();
    for cycle in 1..=params.cycles {
        let mut started: Vec<SurgeNode> = Vec::new();
        let result =
            run_cycle(state, params, &binary, &surge_dir, cycle, &observers, &mut started, interrupted, progress);
        match result {
            Ok(report) => cycles.push(report),
            Err(e) => {
                let mut killed = Vec::new();
                stop_nodes(&started, &mut killed);
                let cleared = save(state, &[]);
                return Err(match cleared {
                    Ok(()) => e,
                    Err(c) => e.context(format!("and clearing surge.json failed: {c:#}")),
                });
            }
        }
    }
    let all = |f: fn(&CycleReport) -> Option<u64>| -> Option<u64> {
        cycles.iter().map(f).collect::<Option<Vec<u64>>>().and_then(|v| v.into_iter().max())
    };
    let join_max_ms = all(|c| c.join_max_ms);
    let leave_max_ms = all(|c| c.leave_max_ms);
    Ok(SurgeReport {
        count: params.count,
        rate: params.rate,
        observers: observers.into_iter().map(|(name, _)| name).collect(),
        converged: join_max_ms.is_some() && leave_max_ms.is_some(),
        cycles,
        join_max_ms,
        leave_max_ms,
    })
}

fn check(interrupted: &AtomicBool) -> Result<()> {
    if interrupted.load(Ordering::Relaxed) {
        bail!("surge interrupted; its nodes are stopped");
    }
    Ok(())
}

/// Sleeps until `until`, checking for an interrupt every poll.
fn sleep_until(until: Instant, interrupted: &AtomicBool) -> Result<()> {
    loop {
        check(interrupted)?;
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(POLL));
    }
}

#[allow(clippy::too_many_arguments)]
fn run_cycle(
    state: &State,
    params: &SurgeParams,
    binary: &Path,
    surge_dir: &Path,
    cycle: u32,
    observers: &[(String, SocketAddr)],
    started: &mut Vec<SurgeNode>,
    interrupted: &AtomicBool,
    progress: &mut dyn FnMut(SurgeProgress),
) -> Result<CycleReport> {
    let certs = state.certs.as_ref().expect("validated");
    let names: Vec<String> = (1..=params.count).map(|k| format!("surge-{cycle}-{k}")).collect();
    progress(SurgeProgress::Starting { cycle, nodes: names.clone() });
    let interval = Duration::from_secs_f64(1.0 / params.rate);
    let first_start = Instant::now();
    let mut last_start_unix_ms = unix_ms();
    for (k, name) in names.iter().enumerate() {
        sleep_until(first_start + interval * k as u32, interrupted)?;
        let member = match &params.member {
            Some(name) => state.members.iter().find(|m| &m.name == name).expect("validated"),
            None => &state.members[k % state.members.len()],
        };
        // Distinct ports across consecutive cycles: a port is never reused right away.
        let port = SURGE_BASE_PORT + ((cycle - 1) % 10) as u16 * MAX_COUNT as u16 + k as u16;
        let node = SurgeNode {
            name: name.clone(),
            netns: member.netns.clone(),
            listen: SocketAddr::new(member.ip.into(), port),
            log: surge_dir.join(format!("{name}.log")),
            process: None,
        };
        started.push(node.clone());
        save(state, started)?;
        let endpoints = state.endpoints_from(&member.name);
        let mut cmd = cluster::node_command(binary, name, &endpoints, certs, node.listen, None);
        let process = cluster::spawn(&mut cmd, &node.log, Some(&node.netns))?;
        started.last_mut().expect("pushed").process = Some(process);
        save(state, started)?;
        last_start_unix_ms = unix_ms();
    }
    let start_span_ms = first_start.elapsed().as_millis() as u64;

    let expected: BTreeSet<String> = names.iter().cloned().collect();
    let join =
        converge(observers, last_start_unix_ms, interrupted, started.as_slice(), |view| expected.is_subset(view))?;
    let join_max_ms = max_of(&join);
    progress(SurgeProgress::Joined { cycle, max_ms: join_max_ms });
    sleep_until(Instant::now() + params.settle, interrupted)?;

    let stop_unix_ms = unix_ms();
    let mut killed = Vec::new();
    for node in started.iter() {
        if let Some(p) = node.process {
            p.signal(libc::SIGTERM);
        }
    }
    let leave = converge(observers, stop_unix_ms, interrupted, &[], |view| view.is_disjoint(&expected))?;
    let leave_max_ms = max_of(&leave);
    stop_nodes(started, &mut killed);
    started.clear();
    save(state, started)?;
    progress(SurgeProgress::Left { cycle, max_ms: leave_max_ms });
    Ok(CycleReport { cycle, nodes: names, start_span_ms, join, join_max_ms, leave, leave_max_ms, killed })
}

fn max_of(convergences: &[Convergence]) -> Option<u64> {
    convergences.iter().map(|c| c.ms).collect::<Option<Vec<u64>>>().and_then(|v| v.into_iter().max())
}

/// A node's view: the names of the members it sees and when that set last changed.
fn view_of(listen: SocketAddr) -> Option<(BTreeSet<String>, u64)> {
    let (status, body) = prometheus::http_get_at(listen, "/members").ok()?;
    if status != 200 {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(&body).ok()?;
    let members = value["members"].as_object()?.keys().cloned().collect();
    Some((members, value["changed_unix_ms"].as_u64().unwrap_or(0)))
}

/// Polls every observer until its view satisfies `done`, at most `CONVERGE_TIMEOUT`: the
/// time from `since_unix_ms` to when the observer's view last changed (its own clock,
/// which is this machine's), or to when it was seen done if it does not say.
fn converge(
    observers: &[(String, SocketAddr)],
    since_unix_ms: u64,
    interrupted: &AtomicBool,
    must_live: &[SurgeNode],
    done: impl Fn(&BTreeSet<String>) -> bool,
) -> Result<Vec<Convergence>> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let mut results: Vec<Option<Option<u64>>> = vec![None; observers.len()];
    while results.iter().any(Option::is_none) && Instant::now() < deadline {
        check(interrupted)?;
        for node in must_live {
            if !node.process.is_some_and(|p| p.alive()) {
                bail!("surge node {} exited: {}", node.name, last_line(&node.log));
            }
        }
        for ((_, listen), result) in observers.iter().zip(results.iter_mut()) {
            if result.is_some() {
                continue;
            }
            if let Some((view, changed_unix_ms)) = view_of(*listen) {
                if done(&view) {
                    let at = if changed_unix_ms > 0 { changed_unix_ms } else { unix_ms() };
                    *result = Some(Some(at.saturating_sub(since_unix_ms)));
                }
            }
        }
        std::thread::sleep(POLL);
    }
    Ok(observers
        .iter()
        .zip(results)
        .map(|((name, _), result)| Convergence { observer: name.clone(), ms: result.flatten() })
        .collect())
}

fn last_line(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    cluster::short(text.lines().last().unwrap_or("(empty log)"))
}

/// SIGTERM (again, harmless), `GRACE` for them to exit, SIGKILL to the rest; names of
/// the killed ones are added to `killed`.
fn stop_nodes(nodes: &[SurgeNode], killed: &mut Vec<String>) {
    let processes: Vec<(String, Proc)> =
        nodes.iter().filter_map(|n| Some((n.name.clone(), n.process?))).filter(|(_, p)| p.alive()).collect();
    stop_processes(&processes, killed);
}

fn stop_processes(processes: &[(String, Proc)], killed: &mut Vec<String>) {
    for (_, p) in processes {
        p.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    while processes.iter().any(|(_, p)| p.alive()) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    for (name, p) in processes {
        if p.alive() {
            p.signal(libc::SIGKILL);
            killed.push(name.clone());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while processes.iter().any(|(_, p)| p.alive()) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
}

/// Stops every surge node of the lab in `state_dir` that is left (recorded in surge.json,
/// or a `chaos-lab-node` named `surge-*` running on the lab's files) and clears the
/// record: the names stopped. Nothing to do without a lab.
pub fn stop_surge(state_dir: &Path) -> Result<Vec<String>> {
    let mut processes: Vec<(String, Proc)> =
        recorded(state_dir).into_iter().filter_map(|n| Some((n.name, n.process?))).filter(|(_, p)| p.alive()).collect();
    for (name, p) in cluster::node_processes(state_dir) {
        if name.starts_with("surge-") && !processes.iter().any(|(_, q)| q.pid == p.pid) {
            processes.push((name, p));
        }
    }
    let mut killed = Vec::new();
    stop_processes(&processes, &mut killed);
    if let Some(still) = processes.iter().find(|(_, p)| p.alive()) {
        bail!("surge node {} (pid {}) is still running after SIGKILL", still.0, still.1.pid);
    }
    if let Some(state) = cluster::load(state_dir).ok().flatten() {
        save(&state, &[])?;
    }
    Ok(processes.into_iter().map(|(name, _)| name).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_observer_or_none() {
        let c = |ms| Convergence { observer: "n1".into(), ms };
        assert_eq!(max_of(&[c(Some(3)), c(Some(9)), c(Some(1))]), Some(9));
        assert_eq!(max_of(&[c(Some(3)), c(None)]), None);
    }

    #[test]
    fn nothing_recorded_without_a_lab() {
        let dir = std::env::temp_dir().join(format!("chaos-no-surge-{}", std::process::id()));
        assert!(recorded(&dir).is_empty());
        assert!(stop_surge(&dir).unwrap().is_empty());
    }
}
