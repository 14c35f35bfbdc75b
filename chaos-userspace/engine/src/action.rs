//! Actions beside the packet faults: kill, pause, surge and cert-expiry, on cluster-lab
//! members (through [`Lab`], which the CLI implements with chaos-lab: the engine never
//! imports the lab) or on a process (kill and pause, with signals).
//!
//! Each action step runs on its own thread, so that a slow part (a member that takes
//! seconds to rejoin, a surge that waits for every node to see the newcomers) never
//! holds up the timeline, which keeps renewing the leases of the faults in force beside
//! it. The thread applies the action when the step's window opens, waits for it to
//! close (or for the run to stop), undoes what it did (restart, thaw, the original
//! certificate) and verifies that, then hands back an [`ActionReport`]. Every part is an
//! `action` span (apply, revert) under the step's span.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Result};
use chaos_model::{
    action::{ActionSpec, ActionTarget, LabSelector, PlannedAction},
    plan::{Plan, PlannedFault},
    spec::{Cidr, TargetSpec},
};
use serde::{Deserialize, Serialize};
use tracing::{field::Empty, info_span, Span};

use crate::{
    container,
    container_undo::{self, Pending, UndoKind},
};

/// A member of the cluster lab.
#[derive(Debug, Clone)]
pub struct LabMember {
    pub name: String,
    /// Its network namespace (`ip netns` name).
    pub netns: String,
    pub ip: IpAddr,
}

/// The lab as it is now: its members and who leads.
#[derive(Debug, Clone)]
pub struct LabView {
    pub members: Vec<LabMember>,
    pub leader: Option<String>,
}

impl LabView {
    /// The members a selector names now, in the view's order (the leader first for the
    /// roles that contain it).
    pub fn select(&self, selector: &LabSelector) -> Result<Vec<&LabMember>> {
        let names: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
        let chosen = selector.select(&names, self.leader.as_deref()).map_err(|why| {
            chaos_datapath::error::Error::unsupported(
                format!("lab target {selector}: {why}"),
                "check the lab with `chaos-ebpf lab status` (and `chaos-ebpf lab up` if none is up)",
            )
        })?;
        Ok(chosen.iter().filter_map(|n| self.members.iter().find(|m| &m.name == n)).collect())
    }
}

/// What the engine needs of the cluster lab. Each call is bounded in time by its
/// implementation and returns what it did, in a sentence for the report.
pub trait Lab: Send + Sync {
    /// Members and leader, asked now (the leader through etcd's API).
    fn view(&self) -> Result<LabView>;
    /// Waits (at most `within`) until a member other than `not` leads.
    fn wait_leader(&self, not: Option<&str>, within: Duration) -> Result<Option<(String, Duration)>>;
    /// Sends `signal` (or SIGTERM, then SIGKILL after `grace`) to the member and waits
    /// until it exited. `restart`: [`Lab::restart`] follows at the step's end (a lab
    /// that can record it for `cleanup` does so before the kill).
    fn kill(&self, member: &str, signal: i32, grace: Option<Duration>, restart: bool) -> Result<String>;
    /// Starts a killed member again and waits until it is healthy.
    fn restart(&self, member: &str) -> Result<String>;
    fn pause(&self, member: &str) -> Result<String>;
    /// Thaws a paused member; an error unless it runs again.
    fn resume(&self, member: &str) -> Result<String>;
    fn expire_cert(&self, member: &str, expires_in: Option<Duration>) -> Result<String>;
    /// Puts the original certificate back (and restarts the member on it).
    fn restore_cert(&self, member: &str) -> Result<String>;
    /// Runs a membership surge until done or until `stop` is set; what happened, with
    /// the convergence times.
    fn surge(&self, count: u32, rate: f64, cycles: u32, stop: &AtomicBool) -> Result<SurgeOutcome>;
}

/// A surge's result for the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SurgeOutcome {
    pub summary: String,
    /// Per cycle: the slowest node's time to see every newcomer join, then leave (ms;
    /// None: not every node saw it within the bound).
    pub join_converged_ms: Vec<Option<f64>>,
    pub leave_converged_ms: Vec<Option<f64>>,
    /// Every cycle completed.
    pub completed: bool,
}

/// One thing an action did, at a time from the run's start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionEvent {
    pub t_s: f64,
    pub what: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionReport {
    /// As planned (`kill (SIGKILL), restarted when the step ends`).
    pub action: String,
    /// As written (`leader`) and what it meant when the step fired (`n1`).
    pub targets: Vec<String>,
    pub resolved: Vec<String>,
    pub events: Vec<ActionEvent>,
    /// A kill of the leader: from the kill to another member leading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_elected_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_leader: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surge: Option<SurgeOutcome>,
    /// Applied, undone and verified, without an error.
    pub ran_its_course: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Binds the plan's lab targets to the lab as it is now: a fault on `followers` becomes
/// one fault per follower's namespace (the first keeps the rule id, the others take new
/// ones) and `peers: [majority]` becomes those members' addresses. Returns the bound
/// plan and one line per binding for the run's notices; a plan without lab targets comes
/// back as it is, and the lab is not asked.
pub fn bind_lab_targets(plan: &Plan, lab: Option<&dyn Lab>) -> Result<(Plan, Vec<String>)> {
    if !plan.steps.iter().flat_map(|s| &s.faults).any(PlannedFault::names_lab_members) {
        return Ok((plan.clone(), Vec::new()));
    }
    let lab = lab.ok_or_else(no_lab)?;
    let needs_leader = plan.steps.iter().flat_map(|s| &s.faults).any(|f| {
        matches!(&f.spec.target, TargetSpec::Lab(s) if s.needs_leader()) || f.lab_peers.iter().any(|s| s.needs_leader())
    });
    let (view, waited) = view_with_leader(lab, needs_leader)?;
    let mut next_id = plan.steps.iter().flat_map(|s| s.faults.iter().map(|f| f.rule_id)).max().unwrap_or(0) + 1;
    let mut notes = Vec::new();
    if let Some(waited) = waited {
        notes.push(format!("no leader at first; one after {} ms", waited.as_millis()));
    }
    let mut bound = plan.clone();
    for step in &mut bound.steps {
        let mut faults = Vec::with_capacity(step.faults.len());
        for fault in std::mem::take(&mut step.faults) {
            let mut spec = fault.spec.clone();
            for selector in &fault.lab_peers {
                let members = view.select(selector)?;
                notes.push(format!(
                    "step {}: peers {selector} = {}",
                    step.name,
                    members.iter().map(|m| format!("{} ({})", m.name, m.ip)).collect::<Vec<_>>().join(", ")
                ));
                for m in members {
                    let cidr: Cidr = format!("{}/{}", m.ip, if m.ip.is_ipv4() { 32 } else { 128 })
                        .parse()
                        .map_err(|e: chaos_model::Problem| anyhow!("{}", e.problem))?;
                    if !spec.peers.contains(&cidr) {
                        spec.peers.push(cidr);
                    }
                }
            }
            match &fault.spec.target {
                TargetSpec::Lab(selector) => {
                    let members = view.select(selector)?;
                    notes.push(format!(
                        "step {}: {selector} = {}",
                        step.name,
                        members
                            .iter()
                            .map(|m| format!("{} (netns {})", m.name, m.netns))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    for (k, m) in members.iter().enumerate() {
                        faults.push(PlannedFault {
                            rule_id: expanded_rule_id(k, fault.rule_id, &mut next_id),
                            spec: chaos_model::spec::FaultSpec {
                                target: TargetSpec::Netns(m.netns.clone()),
                                ..spec.clone()
                            },
                            lab_peers: Vec::new(),
                            matrix: None,
                        });
                    }
                }
                _ => faults.push(PlannedFault {
                    rule_id: fault.rule_id,
                    spec,
                    lab_peers: Vec::new(),
                    matrix: fault.matrix.clone(),
                }),
            }
        }
        step.faults = faults;
    }
    Ok((bound, notes))
}

/// The rule id of the `k`th fault one fault expands into (one per lab member or per
/// container): the first keeps the fault's own, the others take `next_id` onwards.
pub(crate) fn expanded_rule_id(k: usize, own: u32, next_id: &mut u32) -> u32 {
    if k == 0 {
        return own;
    }
    *next_id += 1;
    *next_id - 1
}

/// How long a selector that needs a leader waits for one (an election in progress, after
/// an earlier step's fault) before it fails.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// The lab now; when `needs_leader` and nobody leads, after waiting (bounded) for a
/// leader, with how long that took.
fn view_with_leader(lab: &dyn Lab, needs_leader: bool) -> Result<(LabView, Option<Duration>)> {
    let view = lab.view()?;
    if !needs_leader || view.leader.is_some() {
        return Ok((view, None));
    }
    let started = Instant::now();
    lab.wait_leader(None, LEADER_WAIT)?;
    Ok((lab.view()?, Some(started.elapsed())))
}

fn no_lab() -> anyhow::Error {
    chaos_datapath::error::Error::unsupported(
        "the scenario names cluster-lab members, but no lab is up",
        "start one with `sudo chaos-ebpf lab up` (see docs/lab.md)",
    )
    .into()
}

/// Checks before the run that every action can be carried out (a lab for lab targets, a
/// live process for a pid).
pub fn check_actions(plan: &Plan, lab: Option<&dyn Lab>) -> Result<()> {
    for step in &plan.steps {
        let Some(action) = &step.action else { continue };
        if action.needs_lab() && lab.is_none() {
            return Err(no_lab());
        }
        for target in &action.targets {
            if let ActionTarget::Container(name) = target {
                // Exit 2 for a missing daemon, an unknown or a stopped container.
                container::inspect(name)?;
            }
            if let ActionTarget::Pid(pid) = target {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    return Err(chaos_datapath::error::Error::unsupported(
                        format!("step {}: process {pid} does not exist", step.name),
                        "give the pid of a running process (pgrep NAME finds it)",
                    )
                    .into());
                }
            }
        }
    }
    Ok(())
}

/// An action step in progress on its thread.
pub(crate) struct ActionTask {
    close: mpsc::Sender<()>,
    /// Set when the run stops early: a surge ends its cycle at once.
    stop: Arc<AtomicBool>,
    /// Whether the apply failed (checked by the timeline, which then stops the run).
    failed: mpsc::Receiver<String>,
    handle: Option<JoinHandle<ActionReport>>,
}

impl ActionTask {
    pub(crate) fn start(
        action: PlannedAction,
        lab: Option<Arc<dyn Lab>>,
        run_start: Instant,
        parent: Span,
        step: String,
    ) -> Result<ActionTask> {
        let (close_tx, close_rx) = mpsc::channel();
        let (failed_tx, failed_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("action {step}"))
            .spawn(move || {
                let mut run = ActionRun::new(&action, lab, run_start, parent, step);
                run.carry_out(&action, &close_rx, &stop_thread, &failed_tx);
                run.report
            })
            .map_err(|e| anyhow!("starting the thread of action step: {e}"))?;
        Ok(ActionTask { close: close_tx, stop, failed: failed_rx, handle: Some(handle) })
    }

    /// Why the action failed, once it did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failed.try_recv().ok()
    }

    /// The step's window closed: undo the action (on its thread).
    pub(crate) fn close(&self) {
        let _ = self.close.send(());
    }

    /// The run stops early: any surge ends now, then the action is undone.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.close.send(());
    }

    pub(crate) fn finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Waits for the thread (each of its calls is bounded) and returns its report.
    pub(crate) fn join(mut self) -> ActionReport {
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(report)) => report,
            _ => ActionReport {
                action: String::new(),
                targets: Vec::new(),
                resolved: Vec::new(),
                events: Vec::new(),
                leader_elected_ms: None,
                new_leader: None,
                surge: None,
                ran_its_course: false,
                error: Some("the action's thread panicked".to_owned()),
            },
        }
    }
}

/// What one action step did, built up on its thread.
struct ActionRun {
    lab: Option<Arc<dyn Lab>>,
    run_start: Instant,
    parent: Span,
    step: String,
    report: ActionReport,
}

/// What to undo when the window closes.
enum Undo {
    Restart(String),
    Resume(String),
    ResumePid(u32),
    RestoreCert(String),
    /// A killed container started again (`restart: true`). Each container undo has its
    /// entry in the run's container record (container_undo.rs), dropped once it is done.
    StartContainer(String, Pending),
    UnpauseContainer(String, Pending),
}

impl ActionRun {
    fn new(action: &PlannedAction, lab: Option<Arc<dyn Lab>>, run_start: Instant, parent: Span, step: String) -> Self {
        ActionRun {
            lab,
            run_start,
            parent,
            step,
            report: ActionReport {
                action: action.spec.describe(),
                targets: action.targets.iter().map(ToString::to_string).collect(),
                resolved: Vec::new(),
                events: Vec::new(),
                leader_elected_ms: None,
                new_leader: None,
                surge: None,
                ran_its_course: false,
                error: None,
            },
        }
    }

    fn note(&mut self, what: impl Into<String>) {
        self.report.events.push(ActionEvent { t_s: self.run_start.elapsed().as_secs_f64(), what: what.into() });
    }

    fn lab(&self) -> Result<&dyn Lab> {
        self.lab.as_deref().ok_or_else(no_lab)
    }

    fn span(&self, phase: &'static str, action: &str) -> Span {
        info_span!(
            parent: &self.parent,
            "action",
            step = %self.step,
            phase,
            action = %action,
            targets = %self.report.resolved.join(","),
            otel.status_code = Empty,
            otel.status_message = Empty,
        )
    }

    fn carry_out(
        &mut self,
        action: &PlannedAction,
        close: &mpsc::Receiver<()>,
        stop: &AtomicBool,
        failed: &mpsc::Sender<String>,
    ) {
        let mut undo = Vec::new();
        let span = self.span("apply", action.spec.kind().name());
        let applied = self.apply(action, stop, &mut undo);
        crate::run::set_status(&span, applied.as_ref().err().map(|e| format!("{e:#}")).as_deref());
        drop(span);
        if let Err(e) = &applied {
            let why = format!("{e:#}");
            self.report.error = Some(why.clone());
            let _ = failed.send(why);
        }
        // Until the window closes or the run stops (the sender gone is a stop too).
        let _ = close.recv();
        let span = self.span("revert", action.spec.kind().name());
        let mut problems = Vec::new();
        for u in undo.into_iter().rev() {
            if let Err(e) = self.undo(u) {
                problems.push(format!("{e:#}"));
            }
        }
        let reverted = (!problems.is_empty()).then(|| problems.join("; "));
        crate::run::set_status(&span, reverted.as_deref());
        if let Some(p) = reverted {
            self.note(format!("revert failed: {p}"));
            self.report.error.get_or_insert(p);
        }
        self.report.ran_its_course = self.report.error.is_none()
            && self.report.surge.as_ref().is_none_or(|s| s.completed)
            && !stop.load(Ordering::Relaxed);
    }

    fn resolve(&mut self, targets: &[ActionTarget]) -> Result<Vec<ActionTarget>> {
        let lab_view = if targets.iter().any(|t| matches!(t, ActionTarget::Lab(_))) {
            let needs_leader = targets.iter().any(|t| matches!(t, ActionTarget::Lab(s) if s.needs_leader()));
            let (view, waited) = view_with_leader(self.lab()?, needs_leader)?;
            if let Some(waited) = waited {
                self.note(format!("no leader when the step fired; one after {} ms", waited.as_millis()));
            }
            Some(view)
        } else {
            None
        };
        let mut out = Vec::new();
        for t in targets {
            match t {
                ActionTarget::Lab(selector) => {
                    let view = lab_view.as_ref().expect("asked above");
                    for m in view.select(selector)? {
                        let one = ActionTarget::Lab(LabSelector::Node(m.name.clone()));
                        if !out.contains(&one) {
                            out.push(one);
                        }
                    }
                    if *selector == LabSelector::Leader || *selector == LabSelector::Followers {
                        let leader = view.leader.clone().unwrap_or_default();
                        self.note(format!("{selector} resolved with {leader} leading"));
                    }
                }
                ActionTarget::Pid(_) | ActionTarget::Container(_) => out.push(t.clone()),
            }
        }
        self.report.resolved = out.iter().map(|t| t.to_string().trim_start_matches("node:").to_owned()).collect();
        Ok(out)
    }

    fn apply(&mut self, action: &PlannedAction, stop: &AtomicBool, undo: &mut Vec<Undo>) -> Result<()> {
        if let ActionSpec::Surge { count, rate, cycles } = action.spec {
            self.note(format!("surge: {count} nodes at {rate}/s, {cycles} cycles"));
            let outcome = self.lab()?.surge(count, rate, cycles, stop)?;
            self.note(outcome.summary.clone());
            self.report.surge = Some(outcome);
            return Ok(());
        }
        let targets = self.resolve(&action.targets)?;
        let leader_before = if matches!(action.spec, ActionSpec::Kill { .. }) && self.lab.is_some() {
            self.lab()?.view().ok().and_then(|v| v.leader)
        } else {
            None
        };
        for target in targets {
            match (&action.spec, target) {
                (
                    ActionSpec::Kill { signal, grace, restart, leader_within },
                    ActionTarget::Lab(LabSelector::Node(m)),
                ) => {
                    let killed_at = Instant::now();
                    let what = self.lab()?.kill(&m, signal.0, *grace, *restart)?;
                    self.note(what);
                    if *restart {
                        undo.push(Undo::Restart(m.clone()));
                    }
                    if leader_before.as_deref() == Some(m.as_str()) {
                        let within = *leader_within;
                        match self.lab()?.wait_leader(Some(&m), within)? {
                            Some((leader, _)) => {
                                let ms = killed_at.elapsed().as_secs_f64() * 1000.0;
                                self.note(format!("{leader} leads, {ms:.0} ms after the kill of {m}"));
                                self.report.leader_elected_ms = Some(ms);
                                self.report.new_leader = Some(leader);
                            }
                            None => bail!(
                                "no new leader within {} of killing the leader {m}",
                                chaos_model::spec::format_duration(within)
                            ),
                        }
                    }
                }
                (ActionSpec::Kill { signal, grace, .. }, ActionTarget::Pid(pid)) => {
                    let what = kill_pid(pid, signal.0, *grace)?;
                    self.note(what);
                }
                (ActionSpec::Pause, ActionTarget::Lab(LabSelector::Node(m))) => {
                    // Recorded before: a pause that half-happened is still thawed.
                    undo.push(Undo::Resume(m.clone()));
                    let what = self.lab()?.pause(&m)?;
                    self.note(what);
                }
                (ActionSpec::Kill { signal, grace, restart, .. }, ActionTarget::Container(c)) => {
                    if *restart {
                        // Recorded first, here and on disk (for a crash of the run): a
                        // kill that half-happened still ends started.
                        let pending = container_undo::record(&c, UndoKind::Start, &self.step)?;
                        undo.push(Undo::StartContainer(c.clone(), pending));
                    }
                    let what = kill_container(&c, signal.0, *grace)?;
                    self.note(what);
                }
                (ActionSpec::Pause, ActionTarget::Container(c)) => {
                    let pending = container_undo::record(&c, UndoKind::Unpause, &self.step)?;
                    undo.push(Undo::UnpauseContainer(c.clone(), pending));
                    container::change(&c, container::Change::Pause)?;
                    if container::state(&c)? != (true, true) {
                        bail!("container {c} is not paused after the pause");
                    }
                    self.note(format!("container {c} paused (every process frozen)"));
                }
                (ActionSpec::Pause, ActionTarget::Pid(pid)) => {
                    undo.push(Undo::ResumePid(pid));
                    signal_pid(pid, libc::SIGSTOP)?;
                    self.note(format!("process {pid} stopped (SIGSTOP)"));
                }
                (ActionSpec::CertExpiry { expires_in }, ActionTarget::Lab(LabSelector::Node(m))) => {
                    undo.push(Undo::RestoreCert(m.clone()));
                    let what = self.lab()?.expire_cert(&m, *expires_in)?;
                    self.note(what);
                }
                (spec, target) => bail!("{} cannot act on {target}", spec.kind().name()),
            }
        }
        Ok(())
    }

    fn undo(&mut self, undo: Undo) -> Result<()> {
        let what = match undo {
            Undo::Restart(m) => self.lab()?.restart(&m)?,
            Undo::Resume(m) => self.lab()?.resume(&m)?,
            Undo::RestoreCert(m) => self.lab()?.restore_cert(&m)?,
            Undo::ResumePid(pid) => {
                signal_pid(pid, libc::SIGCONT)?;
                if process_state(pid) == Some('T') {
                    bail!("process {pid} is still stopped after SIGCONT");
                }
                format!("process {pid} continued (SIGCONT)")
            }
            Undo::StartContainer(c, pending) => {
                let what = start_container(&c).map_err(left_for_cleanup)?;
                container_undo::done(pending);
                what
            }
            Undo::UnpauseContainer(c, pending) => {
                let what = unpause_container(&c).map_err(left_for_cleanup)?;
                container_undo::done(pending);
                what
            }
        };
        self.note(what);
        Ok(())
    }
}

fn start_container(c: &str) -> Result<String> {
    container::change(c, container::Change::Start)?;
    if !container::state(c)?.0 {
        bail!("container {c} is not running after its start");
    }
    Ok(format!("container {c} started again"))
}

fn unpause_container(c: &str) -> Result<String> {
    Ok(match container::state(c)? {
        (true, true) => {
            container::change(c, container::Change::Unpause)?;
            if container::state(c)?.1 {
                bail!("container {c} is still paused after the unpause");
            }
            format!("container {c} unpaused")
        }
        // Killed while frozen (by another step, or by hand): nothing to thaw.
        (false, _) => format!("container {c} no longer runs: nothing to unpause"),
        (true, false) => format!("container {c} was not paused any more"),
    })
}

/// A container undo that failed stays in the run's record: said, with what to do.
fn left_for_cleanup(e: anyhow::Error) -> anyhow::Error {
    anyhow!(
        "{e:#} (left recorded in {}: `chaos-ebpf cleanup` does it once this run has ended and the daemon answers)",
        chaos_datapath::ledger::STATE_DIR
    )
}

fn signal_pid(pid: u32, signal: i32) -> Result<()> {
    // SAFETY: kill(2) with a pid and a signal number has no memory preconditions.
    if unsafe { libc::kill(pid as i32, signal) } != 0 {
        bail!("signalling process {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The state letter of /proc/PID/stat (R, S, T, Z, ...); None when it is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
}

fn gone(pid: u32) -> bool {
    matches!(process_state(pid), None | Some('Z') | Some('X'))
}

/// Kills a container through the Docker API: `signal` (`docker kill`), or with `grace`
/// SIGTERM then SIGKILL after it (`docker stop -t`, which returns once it stopped); a
/// SIGKILL or SIGTERM is waited for (bounded) until the container no longer runs.
pub(crate) fn kill_container(name: &str, signal: i32, grace: Option<Duration>) -> Result<String> {
    let start = Instant::now();
    if let Some(grace) = grace {
        container::change(name, container::Change::Stop(grace))?;
        if container::state(name)?.0 {
            bail!("container {name} still runs after docker stop with a {} ms grace", grace.as_millis());
        }
        return Ok(format!(
            "container {name} stopped in {} ms (grace {} ms)",
            start.elapsed().as_millis(),
            grace.as_millis()
        ));
    }
    container::change(name, container::Change::Kill(signal))?;
    if signal != libc::SIGKILL && signal != libc::SIGTERM {
        return Ok(format!("container {name} sent signal {signal}"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while container::state(name)?.0 {
        if Instant::now() > deadline {
            bail!("container {name} still runs 5 s after signal {signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(format!("container {name} exited {} ms after signal {signal}", start.elapsed().as_millis()))
}

/// Kills a process (not a lab member): `signal`, or SIGTERM then SIGKILL after `grace`;
/// waits (bounded) until it is gone.
fn kill_pid(pid: u32, signal: i32, grace: Option<Duration>) -> Result<String> {
    let start = Instant::now();
    let first = if grace.is_some() { libc::SIGTERM } else { signal };
    signal_pid(pid, first)?;
    let wait = |limit: Duration| {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if gone(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        gone(pid)
    };
    if let Some(grace) = grace {
        if wait(grace) {
            return Ok(format!("process {pid} exited on SIGTERM after {} ms", start.elapsed().as_millis()));
        }
        signal_pid(pid, libc::SIGKILL)?;
        if wait(Duration::from_secs(5)) {
            return Ok(format!("process {pid} ignored SIGTERM for {} ms; SIGKILL ended it", grace.as_millis()));
        }
    } else if signal != libc::SIGKILL && signal != libc::SIGTERM {
        // A signal that need not end the process (SIGHUP, SIGUSR1): sent is done.
        return Ok(format!("process {pid} sent signal {signal}"));
    } else if wait(Duration::from_secs(5)) {
        return Ok(format!("process {pid} exited {} ms after signal {signal}", start.elapsed().as_millis()));
    }
    Err(anyhow!("process {pid} is still running 5 s after the kill"))
}
