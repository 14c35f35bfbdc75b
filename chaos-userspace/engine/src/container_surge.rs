//! Membership surge on a cluster of containers (`cluster: {workload: KEY=VALUE}`): cycles
//! of extra workload nodes, clones of a running one (the first by name with the label),
//! that join the discovery plane at a given rate and then leave (SIGTERM, on which a node
//! revokes its lease), and are removed. Every running workload node observes: the time
//! from the last clone's start until its /members view holds every newcomer, and from
//! the stops until it holds none of them (its own `changed_unix_ms`, on the host's
//! clock, which containers share), as the cluster lab's surge measures it.
//!
//! Newcomers are told apart by what they add to each observer's view (a view taken
//! before the cycle), not by their names: the workload names its nodes as it likes.
//! Each clone is recorded in the run's container record (undo: remove) before its
//! create, so a `cleanup` after a crash removes it; a clone carries the
//! label `io.chaos-ebpf.surge=<pid>` and, in a compose project, the service `surge`,
//! which `docker-compose down --remove-orphans` removes too.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Result};
use chaos_datapath::error::Error;

use chaos_model::{action::ActionSpec, lab::ClusterSpec, plan::Plan};

use crate::{
    action::SurgeOutcome,
    container::{self, Change},
    container_undo::{self, Pending},
};

/// How long every observer may take to see a cycle's nodes join, or leave (a node's
/// lease lasts 5 s, so even one that did not revoke it is gone by then).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node stays once every observer sees it, before it is stopped.
const SETTLE: Duration = Duration::from_millis(500);
/// How long one observer may take to answer /members.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(50);
/// The label every clone carries, with the pid of the run that made it.
pub const SURGE_LABEL: &str = "io.chaos-ebpf.surge";

/// The workload nodes of a `cluster:`.
#[derive(Debug, Clone)]
pub struct Workload {
    pub key: String,
    pub value: String,
    /// Where they serve /members.
    pub port: u16,
}

/// A clone while it exists: its name and its entry in the run's container record.
struct Clone {
    name: String,
    pending: Pending,
}

impl Workload {
    /// The workload nodes a scenario's `cluster:` names, if it names them.
    pub fn of(spec: &ClusterSpec) -> Result<Option<Workload>> {
        let label = spec.workload_label().map_err(|p| Error::unsupported(p.problem, p.fix))?;
        Ok(label.map(|(key, value)| Workload {
            key: key.to_owned(),
            value: value.to_owned(),
            port: spec.workload_port(),
        }))
    }

    /// The running workload node clones are made from (the first by name) and all of
    /// them, which observe; exit 2 when there is none.
    fn running(&self) -> Result<(String, Vec<String>)> {
        let running = container::with_label(&self.key, &self.value)?;
        match running.first() {
            Some(template) => Ok((template.clone(), running)),
            None => Err(Error::unsupported(
                format!("surge: no running container has the workload label {}={}", self.key, self.value),
                "start the workload nodes (deploy/compose/stack.sh up), or fix cluster.workload",
            )
            .into()),
        }
    }
}

/// Exit 2 before anything starts when a `surge` step of a `cluster:` scenario needs more
/// clones at once than its network has free addresses for (the stack's dynamic range is
/// 16 addresses, the workload nodes' included), or there is no workload node to clone.
pub fn refuse_unfit(plan: &Plan) -> Result<()> {
    let Some(workload) = plan.cluster.as_ref().map(Workload::of).transpose()?.flatten() else { return Ok(()) };
    let most = plan
        .steps
        .iter()
        .filter_map(|s| match s.action.as_ref().map(|a| &a.spec) {
            Some(ActionSpec::Surge { count, .. }) => Some(*count),
            _ => None,
        })
        .max();
    match most {
        Some(count) => check_room(&workload.running()?.0, count),
        None => Ok(()),
    }
}

/// Exit 2 when `count` clones of `template` cannot all get an address on its network:
/// Docker would refuse the start of the first one too many, in the middle of a cycle.
fn check_room(template: &str, count: u32) -> Result<()> {
    let Some((network, ranges, free)) = container::room_for_clones(template)? else { return Ok(()) };
    if u64::from(count) <= free {
        return Ok(());
    }
    Err(Error::unsupported(
        format!(
            "surge: {count} clones of {template} need {count} addresses on network {network}, and its dynamic range \
             ({ranges}) has {free} free"
        ),
        format!(
            "lower the surge's count to at most {free}, or run fewer workload nodes (the stack's CHAOS_STACK_NODES), \
             or widen the network's ip_range"
        ),
    )
    .into())
}

/// Runs `cycles` cycles of `count` clones started at `rate` per second; see the module
/// documentation. An error removes the clones of the cycle first.
pub fn surge(workload: &Workload, count: u32, rate: f64, cycles: u32, stop: &AtomicBool) -> Result<SurgeOutcome> {
    let (template, running) = workload.running()?;
    // Checked before the run too (refuse_unfit); asked again, as nodes may have come.
    check_room(&template, count)?;
    let mut observers = Vec::new();
    for name in &running {
        let Some(ip) = container::inspect(name)?.ip else {
            bail!("surge: workload node {name} has no IPv4 address to ask for /members");
        };
        observers.push((name.clone(), SocketAddr::new(ip.into(), workload.port)));
    }
    let project = container::label_of(&template, "com.docker.compose.project")?;
    let mut joins = Vec::new();
    let mut leaves = Vec::new();
    for cycle in 1..=cycles {
        let mut clones = Vec::new();
        let result =
            run_cycle(workload, &template, project.as_deref(), &observers, count, rate, cycle, stop, &mut clones);
        // Whatever happened, this cycle's clones go (stopped already when it went well).
        let removed = remove_all(clones);
        let (join, leave) = match (result, removed) {
            (Ok(times), Ok(())) => times,
            (Err(e), Ok(())) => return Err(e),
            (Ok(_), Err(r)) => return Err(r),
            (Err(e), Err(r)) => return Err(e.context(format!("and removing its nodes failed: {r:#}"))),
        };
        joins.push(join);
        leaves.push(leave);
    }
    let ms = |v: &[Option<f64>]| -> String {
        match v.iter().copied().collect::<Option<Vec<f64>>>() {
            Some(all) => format!("{:.0} ms", all.iter().copied().fold(0.0, f64::max)),
            None => "not within 30 s".to_owned(),
        }
    };
    let completed = joins.iter().chain(&leaves).all(Option::is_some);
    Ok(SurgeOutcome {
        summary: format!(
            "surge: {cycles} cycles of {count} clones of {template} seen by {} workload nodes; slowest join {}, slowest leave {}",
            observers.len(),
            ms(&joins),
            ms(&leaves)
        ),
        join_converged_ms: joins,
        leave_converged_ms: leaves,
        completed,
    })
}

/// One cycle: the slowest observer's join and leave times (ms; `None`: not every
/// observer within the bound). Clones are pushed to `clones` as they are created.
#[allow(clippy::too_many_arguments)]
fn run_cycle(
    workload: &Workload,
    template: &str,
    project: Option<&str>,
    observers: &[(String, SocketAddr)],
    count: u32,
    rate: f64,
    cycle: u32,
    stop: &AtomicBool,
    clones: &mut Vec<Clone>,
) -> Result<(Option<f64>, Option<f64>)> {
    let before: Vec<BTreeSet<String>> = observers
        .iter()
        .map(|(name, at)| {
            view_of(*at).map(|(view, _)| view).ok_or_else(|| anyhow::anyhow!("surge: {name} did not answer /members"))
        })
        .collect::<Result<_>>()?;
    let pid = std::process::id();
    let mut labels = vec![(SURGE_LABEL.to_owned(), pid.to_string())];
    if let Some(project) = project {
        labels.push(("com.docker.compose.service".to_owned(), "surge".to_owned()));
        labels.push(("com.docker.compose.project".to_owned(), project.to_owned()));
    }
    let interval = Duration::from_secs_f64(1.0 / rate);
    let first = Instant::now();
    let mut last_start_ms = unix_ms();
    for k in 1..=count {
        sleep_until(first + interval * (k - 1), stop)?;
        let name = format!("{}-surge-{pid}-{cycle}-{k}", project.unwrap_or("chaos-ebpf"));
        let hostname = format!("surge-{cycle}-{k}");
        // Recorded before it exists: a run killed at any moment leaves none unrecorded.
        let pending = container_undo::record_creation(&name, &format!("surge cycle {cycle}"))?;
        clones.push(Clone { name: name.clone(), pending });
        container::create_clone(template, &name, &hostname, &workload.key, &labels)?;
        // From the request: a node may register before the daemon's answer is back.
        last_start_ms = unix_ms();
        container::change(&name, Change::Start)?;
    }
    // Joined: each observer sees `count` names it did not see before the cycle.
    let joined =
        converge(observers, last_start_ms, stop, |i, view| view.difference(&before[i]).count() >= count as usize)?;
    let newcomers: BTreeSet<String> = observers
        .iter()
        .enumerate()
        .filter_map(|(i, (_, at))| {
            view_of(*at).map(|(view, _)| view.difference(&before[i]).cloned().collect::<Vec<_>>())
        })
        .flatten()
        .collect();
    sleep_until(Instant::now() + SETTLE, stop)?;
    // SIGTERM to all at once (a node revokes its lease and exits on it); `docker stop`
    // one after the other would time the daemon. The removal kills what is left.
    let stop_ms = unix_ms();
    for clone in clones.iter() {
        container::change(&clone.name, Change::Kill(libc::SIGTERM))?;
    }
    let left = converge(observers, stop_ms, stop, |_, view| view.is_disjoint(&newcomers))?;
    Ok((slowest(&joined), slowest(&left)))
}

/// Removes every clone (its record entry with it); the first error, after trying all.
fn remove_all(clones: Vec<Clone>) -> Result<()> {
    let socket = container::socket()?;
    let mut first_error = None;
    for clone in clones {
        match container::remove_at(&socket, &clone.name) {
            Ok(_) => container_undo::done(clone.pending),
            // The entry stays: `cleanup` removes it after this run.
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn slowest(times: &[Option<u64>]) -> Option<f64> {
    times.iter().copied().collect::<Option<Vec<u64>>>().and_then(|v| v.into_iter().max()).map(|ms| ms as f64)
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn sleep_until(until: Instant, stop: &AtomicBool) -> Result<()> {
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!("surge stopped; its nodes are removed");
        }
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(POLL));
    }
}

/// A node's view: the names it sees and when that set last changed (its clock, ms).
fn view_of(at: SocketAddr) -> Option<(BTreeSet<String>, u64)> {
    let body = crate::hypothesis::http_get_ok_blocking(&format!("http://{at}/members"), ASK_TIMEOUT)?;
    let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let members = value["members"].as_object()?.keys().cloned().collect();
    Some((members, value["changed_unix_ms"].as_u64().unwrap_or(0)))
}

/// Polls every observer until `done(its index, its view)`, at most CONVERGE_TIMEOUT:
/// per observer the time from `since_ms` to when its view last changed (or to when it
/// was seen done, if it does not say); `None` for one not done in time.
fn converge(
    observers: &[(String, SocketAddr)],
    since_ms: u64,
    stop: &AtomicBool,
    done: impl Fn(usize, &BTreeSet<String>) -> bool,
) -> Result<Vec<Option<u64>>> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let mut results: Vec<Option<u64>> = vec![None; observers.len()];
    while results.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, ((_, at), result)) in observers.iter().zip(results.iter_mut()).enumerate() {
            if result.is_some() {
                continue;
            }
            if let Some((view, changed_ms)) = view_of(*at) {
                if done(i, &view) {
                    let at = if changed_ms > 0 { changed_ms } else { unix_ms() };
                    *result = Some(at.saturating_sub(since_ms));
                }
            }
        }
        sleep_until(Instant::now() + POLL, stop)?;
    }
    Ok(results)
}
