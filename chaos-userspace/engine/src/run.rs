//! Executing a plan: record the run in the ledger, resolve targets, load and attach one
//! instance per network namespace, then step through the timeline installing rules,
//! renewing their leases, checking that every attachment and target is still there,
//! and telling an [`Observer`] what happens; revert everything at the end, on
//! SIGINT/SIGTERM, on error, and when a fault can no longer run its course.
//!
//! Each run is traced as `tracing` spans (the CLI writes them to the run directory):
//! `run` > `step` > `inject` (a rule in force on one target, its final counters as
//! attributes) and `revert` (that rule removed), and `run` > `revert` (everything the run
//! created removed); `run` > `cleanup` is what dead runs left, removed before the run
//! starts. Spans are never entered, their parents are explicit: the datapath's
//! warnings print as before. Outcomes are `otel.status_code` ("ok"/"error") and
//! `otel.status_message`, the fields OpenTelemetry bridges read.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use chaos_ebpf_common::{ProtectedPorts, Rule, RuleCounters};
use tracing::{field::Empty, info_span, Span};

pub use crate::report::{
    AbortReport, CheckPhase, CounterSample, CreatedObject, HypothesisReport, InterfaceSnapshot, ProbeCounts,
    ProbeSample, QdiscChangeReport, RuleReport, RunReport, StepReport, TargetSnapshot, WindowReport,
};
use crate::{
    action::{ActionReport, ActionTask, Lab},
    hypothesis::Checker,
    network::{self, resolution_key, HeldDevice},
    remote::{RemoteRule, RemoteRules},
};
use chaos_datapath::{
    bpfsys, devices,
    error::{require_root, Error},
    instance::{Capacity, Instance, QdiscChanges},
    ledger::{self as state, Phase, RuleState, RunRecord, RunState},
    netns::{Netns, NetnsId},
    resolve::{self as target, Resolved, Target},
    sweep as cleanup, AttachMode,
};
use chaos_model::{
    plan::{Attach, Plan, PlannedFault, PlannedStep},
    spec::{format_duration, FaultSpec, TargetSpec},
};

/// Traffic the caller measures while the run goes on (the lab's probe); its counts are
/// reported per step.
pub trait Probe {
    fn counts(&self) -> ProbeCounts;
}

/// What the engine tells its observers (the CLI prints them; reports, metrics and
/// traces are observers too). The engine itself prints nothing.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// The run has started (its seed is known).
    Started {
        scenario: &'a str,
        seed: u64,
        total: Duration,
    },
    /// Something worth a line: what a dead run left and was removed, a step that ended.
    Notice(String),
    /// Where a step is, at the interval the observer asked for.
    Progress(Progress<'a>),
    /// Progress of the current step stops (it ended).
    ProgressEnd,
    /// A problem that does not stop the run (a rule that could not be removed).
    Warning(String),
    /// A step's rules are in force: installed, and recorded in the ledger.
    RulesInstalled {
        step: &'a str,
        rules: Vec<InForce>,
    },
    /// A window of a step closed: its rules were removed, with these final counters (a
    /// duty cycle installs them again, from zero, at its next window).
    RulesRemoved {
        step: &'a str,
        rules: Vec<RuleCount>,
    },
    /// A step ended and its rules were removed; its report has their final counters.
    StepEnded(&'a StepReport),
    /// The run stops before its timeline ended, or was interrupted; the revert follows.
    Aborted {
        cause: AbortCause,
        reason: String,
    },
    /// The revert is done: how long it took, and whether everything is verified gone.
    Reverted {
        seconds: f64,
        clean: bool,
    },
    /// A probe of the hypothesis was checked.
    ProbeChecked(&'a ProbeSample),
    /// A long phase begins (loading programs, waiting for the steady state): a terminal
    /// shows a spinner or bar until `PhaseEnded`; `total` when its length is known.
    PhaseStarted {
        name: &'a str,
        total: Option<Duration>,
    },
    PhaseEnded {
        name: &'a str,
    },
}

/// One rule installed in one namespace.
#[derive(Debug, Clone)]
pub struct InForce {
    pub rule_id: u32,
    /// The fault kind (`loss`, `partition`, ...).
    pub kind: &'static str,
    /// The namespace it is installed in (its path, as in the report).
    pub netns: String,
}

/// Why a run stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortCause {
    /// SIGINT, SIGTERM or SIGHUP.
    Interrupted,
    /// A fault could not run its course (a lapsed lease, a detached program, a vanished
    /// target): `RunReport::failed`.
    CutShort,
    /// An error while rules were in force (renewing a lease, installing a rule).
    Error,
    /// An abort guard of the scenario fired: `RunReport::abort`.
    Guard,
}

impl AbortCause {
    pub fn name(self) -> &'static str {
        match self {
            AbortCause::Interrupted => "interrupted",
            AbortCause::CutShort => "cut_short",
            AbortCause::Error => "error",
            AbortCause::Guard => "guard",
        }
    }
}

/// A step in progress.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    pub elapsed: Duration,
    pub total: Duration,
    pub step: &'a str,
    /// The counters of each rule in force (whose counters could be read).
    pub rules: Vec<RuleCount>,
    /// The probe since the step's rules were first in force.
    pub probe: Option<ProbeCounts>,
}

/// A rule's counters in one namespace, read from the kernel's per-CPU counters.
#[derive(Debug, Clone)]
pub struct RuleCount {
    /// The step the rule belongs to.
    pub step: String,
    pub rule_id: u32,
    pub netns: String,
    pub counters: RuleCounters,
}

pub trait Observer {
    /// How often to send [`Event::Progress`] in a run of `total` (None: never).
    fn progress_every(&self, _total: Duration) -> Option<Duration> {
        None
    }
    fn event(&mut self, event: Event<'_>);
}

/// Several observers as one (the CLI's progress printer and the metrics): each gets
/// every event, and progress at its own interval.
pub struct Fanout<'a> {
    observers: Vec<(&'a mut dyn Observer, Option<Duration>, Option<Instant>)>,
}

impl<'a> Fanout<'a> {
    pub fn new(observers: Vec<&'a mut dyn Observer>) -> Self {
        Fanout { observers: observers.into_iter().map(|o| (o, None, None)).collect() }
    }
}

impl Observer for Fanout<'_> {
    fn progress_every(&self, total: Duration) -> Option<Duration> {
        self.observers.iter().filter_map(|(o, _, _)| o.progress_every(total)).min()
    }

    fn event(&mut self, event: Event<'_>) {
        if let Event::Started { total, .. } = &event {
            for (observer, every, _) in &mut self.observers {
                *every = observer.progress_every(*total);
            }
        }
        for (observer, every, last) in &mut self.observers {
            match &event {
                Event::Progress(_) => {
                    // The engine sends progress at the shortest interval asked for; a
                    // slower observer gets it once its own interval has passed (within
                    // the engine's poll, so an interval is never skipped for 10 ms).
                    let Some(every) = *every else { continue };
                    if last.is_some_and(|l| l.elapsed() + POLL < every) {
                        continue;
                    }
                    *last = Some(Instant::now());
                }
                Event::ProgressEnd => {
                    if every.is_none() {
                        continue;
                    }
                    *last = None;
                }
                _ => {}
            }
            observer.event(event.clone());
        }
    }
}

/// An observer that wants nothing.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&mut self, _event: Event<'_>) {}
}

/// How often the step loop looks at the signal flag: Ctrl-C acts within this (plus the
/// revert itself).
const POLL: Duration = Duration::from_millis(10);

#[derive(Clone, Default)]
pub struct RunOptions {
    /// The command line, recorded in the ledger for `status`.
    pub command: String,
    /// The cluster lab, for lab targets and actions (None: no lab is up).
    pub lab: Option<std::sync::Arc<dyn Lab>>,
    /// The agent that holds the faults' rules (None: the run loads its own programs).
    /// Only for plans `remote::why_not_remote` accepts.
    pub remote: Option<std::sync::Arc<dyn RemoteRules>>,
}

/// The run was interrupted before any fault was in force: nothing was changed.
#[derive(Debug)]
pub struct InterruptedBeforeStart;

impl std::fmt::Display for InterruptedBeforeStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted before any fault was in force; nothing was changed")
    }
}

impl std::error::Error for InterruptedBeforeStart {}

struct ActiveRule {
    rule_id: u32,
    kind: &'static str,
    fault: String,
    target: String,
    /// Which of its fault's resolved targets it is installed on.
    target_index: usize,
    /// The `inject` span, open while the rule is in force.
    span: Span,
    place: Place,
    from_unix_ms: u64,
}

/// Where a rule in force is held.
enum Place {
    /// A slot of an instance the run loaded.
    Slot { netns: NetnsId, slot: u32 },
    /// A fault of the agent (its rules in these namespaces).
    Remote { id: u64, netns: String },
}

/// The namespaces of a remote fault's rules, as the report names them.
fn remote_netns(rules: &[RemoteRule]) -> String {
    rules.iter().map(|r| r.netns.as_str()).collect::<Vec<_>>().join(", ")
}

fn remote_sum(rules: &[RemoteRule]) -> RuleCounters {
    let mut total = RuleCounters::default();
    for r in rules {
        total.add(&r.counters);
    }
    total
}

/// A target whose identity is checked at every lease renewal: a namespace or cgroup
/// removed (or re-created at the same path, which makes a new one) ends the fault.
struct Identity {
    what: String,
    path: PathBuf,
    ino: u64,
}

impl Identity {
    fn check(&self) -> Result<(), String> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.ino() == self.ino => Ok(()),
            Ok(_) => Err(format!("{} was removed (the one now at {} is a new target)", self.what, self.path.display())),
            Err(_) => Err(format!("{} is gone ({} no longer exists)", self.what, self.path.display())),
        }
    }
}

/// Set by the signal handler; a run checks it at every stage.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The write end of a pipe the signal handler writes a byte to, and its read end, which
/// the run's loop polls while it waits for the next edge: a signal ends the wait at
/// once instead of at the next tick.
static WAKE_WRITE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
static WAKE_READ: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(_signal: libc::c_int) {
    // An atomic store and write(2): both async-signal-safe.
    INTERRUPTED.store(true, Ordering::Relaxed);
    let fd = WAKE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: a one-byte write from a static; a full pipe (EAGAIN) is fine: the
        // byte before it wakes the loop already.
        unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    }
}

/// Sleeps up to `timeout`, or until a signal of install_signal_handlers arrives.
fn wait_for_signal(timeout: Duration) {
    let fd = WAKE_READ.load(Ordering::Relaxed);
    if fd < 0 {
        std::thread::sleep(timeout);
        return;
    }
    let mut pollfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd. The byte stays in the pipe: once interrupted, every
    // later wait returns at once, and the run is on its way out.
    unsafe { libc::poll(&mut pollfd, 1, ms) };
}

/// Catches SIGINT, SIGTERM and SIGHUP from now on: a run checks the flag at every stage
/// and reverts. Called first thing for `run` and `inject`, so a signal that arrives
/// while the command line is still being read is not lost. sigaction installs the
/// handler and its action in one step, so no signal can fall between the two.
pub fn install_signal_handlers() -> Result<&'static AtomicBool> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    if WAKE_WRITE.load(Ordering::Relaxed) < 0 {
        let mut fds = [-1; 2];
        // SAFETY: a valid array of two fds for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } == 0 {
            WAKE_READ.store(fds[0], Ordering::Relaxed);
            WAKE_WRITE.store(fds[1], Ordering::Relaxed);
        }
    }
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("installing the {signal} handler"))?;
    }
    Ok(&INTERRUPTED)
}

fn interrupted_now(flag: &AtomicBool) -> Result<()> {
    if flag.load(Ordering::Relaxed) {
        return Err(InterruptedBeforeStart.into());
    }
    Ok(())
}

/// The datapath's attach mode for the plan's.
fn attach_mode(attach: Attach) -> AttachMode {
    match attach {
        Attach::Auto => AttachMode::Auto,
        Attach::Tcx => AttachMode::Tcx,
        Attach::Netlink => AttachMode::Netlink,
    }
}

/// The datapath's target for a target spec; lab members are bound to their namespaces
/// first (`action::bind_lab_targets`).
pub fn target_of(spec: &TargetSpec) -> Result<Target> {
    Ok(match spec {
        TargetSpec::Iface(v) => Target::Iface(v.clone()),
        TargetSpec::Netns(v) => Target::Netns(v.clone()),
        TargetSpec::Cgroup(v) => Target::Cgroup(v.clone()),
        TargetSpec::Pid(v) => Target::Pid(*v),
        TargetSpec::Container(name) => Target::Netns(crate::container::inspect(name)?.netns_path()),
        TargetSpec::ContainerLabel { .. } => {
            return Err(Error::unsupported(
                format!("the target {spec} names containers by label"),
                "use it with `inject` or `run` without the agent (they bind it to the containers when they start)",
            )
            .into())
        }
        TargetSpec::Lab(s) => {
            return Err(Error::unsupported(
                format!("the lab target {s} names cluster-lab members"),
                "use it in a scenario run with `chaos-ebpf lab up` running (the run binds it to their namespaces)",
            )
            .into())
        }
    })
}

/// Runs the plan; `probe` (the lab's traffic) is counted per step. Errors before any
/// fault is installed are datapath `Error::Unsupported`s or model `Problem`s (exit 2)
/// or `InterruptedBeforeStart` (exit 1); none leaves anything behind.
pub fn run(
    plan: &Plan,
    options: &RunOptions,
    probe: Option<&dyn Probe>,
    observer: &mut dyn Observer,
) -> Result<RunReport> {
    let span = info_span!(
        "run",
        scenario = %plan.name,
        seed = Empty,
        steps = plan.steps.len() as u64,
        interrupted = Empty,
        clean = Empty,
        revert_ms = Empty,
        otel.status_code = Empty,
        otel.status_message = Empty,
    );
    let result = run_traced(plan, options, probe, observer, &span);
    match &result {
        Ok(report) => {
            span.record("interrupted", report.interrupted);
            span.record("clean", report.clean);
            span.record("revert_ms", report.revert_ms);
            let error = match (&report.failed, report.interrupted, report.clean) {
                (Some(reason), _, _) => Some(format!("a fault did not run its course: {reason}")),
                (None, true, _) => Some("interrupted".to_owned()),
                (None, false, false) => Some("the revert is not verified clean".to_owned()),
                (None, false, true) => None,
            };
            set_status(&span, error.as_deref());
        }
        Err(e) => set_status(&span, Some(&format!("{e:#}"))),
    }
    result
}

/// Records a span's outcome as OpenTelemetry's status fields.
pub(crate) fn set_status(span: &Span, error: Option<&str>) {
    match error {
        None => {
            span.record("otel.status_code", "ok");
        }
        Some(message) => {
            span.record("otel.status_code", "error");
            span.record("otel.status_message", message);
        }
    }
}

fn run_traced(
    plan: &Plan,
    options: &RunOptions,
    probe: Option<&dyn Probe>,
    observer: &mut dyn Observer,
    run_span: &Span,
) -> Result<RunReport> {
    require_root("running faults")?;
    let seed = plan.seed_or_random();
    run_span.record("seed", seed);
    observer.event(Event::Started { scenario: &plan.name, seed, total: plan.total_duration() });
    let interrupted = install_signal_handlers()?;
    interrupted_now(interrupted)?;
    let mode = attach_mode(plan.attach).resolve()?;
    crate::action::check_actions(plan, options.lab.as_deref())?;

    // Dead runs' leftovers first: their device records and qdiscs would confuse ours.
    let sweep_span = info_span!(
        parent: run_span,
        "cleanup",
        dead_runs = Empty,
        otel.status_code = Empty,
        otel.status_message = Empty,
    );
    let mut sweep_problems = Vec::new();
    let dead_runs = cleanup::collect_dead(&mut sweep_problems);
    sweep_span.record("dead_runs", dead_runs.len() as u64);
    set_status(&sweep_span, (!sweep_problems.is_empty()).then(|| sweep_problems.join("; ")).as_deref());
    drop(sweep_span);
    for dead in dead_runs {
        if !dead.leftovers.is_empty() {
            observer.event(Event::Notice(format!(
                "removed what a dead run (pid {}) left: {}",
                dead.pid,
                dead.leftovers.join("; ")
            )));
        }
    }
    // The ledger record exists before anything this run creates.
    let mut run_state = RunState {
        pid: std::process::id(),
        command: options.command.clone(),
        seed,
        lease_ms: plan.lease.as_millis() as u64,
        phase: Phase::Starting,
        started_unix_ms: state::unix_ms(),
        renewed_unix_ms: state::unix_ms(),
        instances: Vec::new(),
        rules: Vec::new(),
        judge_bit: None,
    };
    let record = RunRecord::create(&run_state)?;
    interrupted_now(interrupted)?;

    // Everything that can fail on bad input happens before the first fault.
    let mut resolved: BTreeMap<String, Vec<Resolved>> = BTreeMap::new();
    let mut identities: Vec<Identity> = Vec::new();
    for step in &plan.steps {
        for fault in &step.faults {
            if let std::collections::btree_map::Entry::Vacant(slot) = resolved.entry(resolution_key(&fault.spec)) {
                let target = target_of(&fault.spec.target)?;
                let targets = target::resolve(&target)?;
                identities.extend(identities_of(&fault.spec.target, &target, &targets)?);
                slot.insert(network::acting_targets(&fault.spec, &target, targets)?);
            }
            interrupted_now(interrupted)?;
        }
    }

    let topology = topology_of(&resolved);

    // The steady state before anything changes in the kernel: a run whose hypothesis does
    // not hold now would measure nothing, so it installs nothing.
    let checker_start = Instant::now();
    let mut checker = Checker::new(&plan.name, plan.hypothesis.as_ref(), &plan.abort, checker_start, run_span)?;
    if plan.hypothesis.is_some() {
        observer.event(Event::PhaseStarted {
            name: "waiting for the steady state",
            total: plan.hypothesis.as_ref().map(|h| h.steady_within),
        });
        let steady = checker.steady_state(interrupted, &mut |sample| observer.event(Event::ProbeChecked(sample)));
        observer.event(Event::PhaseEnded { name: "waiting for the steady state" });
        if let Err(why) = steady {
            interrupted_now(interrupted)?;
            let mut hypothesis = checker.finish();
            if let Some(h) = &mut hypothesis {
                h.verdict = crate::report::Verdict::Failed;
                h.reason = Some(format!("no steady state before the faults, so none was installed: {why}"));
            }
            shift_samples(hypothesis.as_mut(), checker_start, Instant::now());
            drop(record);
            let now = state::unix_ms();
            return Ok(RunReport {
                scenario: plan.name.clone(),
                seed,
                started_unix_ms: run_state.started_unix_ms,
                ended_unix_ms: now,
                faults_start_unix_ms: now,
                interrupted: false,
                failed: None,
                abort: None,
                steps: plan.steps.iter().map(|s| StepRun::new(s, seed).report()).collect(),
                hypothesis,
                samples: Vec::new(),
                revert_ms: 0.0,
                clean: true,
                revert_problems: Vec::new(),
                topology,
                cleanup: Vec::new(),
                qdisc_changes: Vec::new(),
                agent: options.remote.as_ref().map(|r| r.describe()),
            });
        }
    }
    let mut instances = match &options.remote {
        Some(remote) => {
            if let Some(why) = crate::remote::why_not_remote(plan) {
                return Err(anyhow!("this scenario cannot go through the agent: {why}"));
            }
            observer
                .event(Event::Notice(format!("the faults go through {}: no programs loaded here", remote.describe())));
            // The agent loads its programs into a namespace it has not held yet at the
            // first apply there (about a second): asked now, the windows open on time.
            observer.event(Event::PhaseStarted { name: "preparing the agent", total: None });
            let mut targets: Vec<&TargetSpec> = Vec::new();
            for fault in plan.steps.iter().flat_map(|s| &s.faults) {
                if !targets.contains(&&fault.spec.target) {
                    targets.push(&fault.spec.target);
                }
            }
            let prepared = targets.iter().try_for_each(|t| remote.prepare(t));
            observer.event(Event::PhaseEnded { name: "preparing the agent" });
            prepared?;
            BTreeMap::new()
        }
        None => {
            let protected: Vec<ProtectedPorts> = plan.protect.iter().map(|p| p.entry()).collect();
            let judge_bit = devices::with_ledger_lock(|| {
                let bit = state::free_judge_bit();
                run_state.judge_bit = Some(bit);
                record.write(&run_state)?;
                Ok(bit)
            })?;
            observer.event(Event::PhaseStarted { name: "loading programs", total: None });
            let capacities = capacities(plan, &resolved);
            let auto = plan.attach == Attach::Auto;
            let loaded = load_instances(&resolved, &capacities, mode, auto, &protected, judge_bit, interrupted);
            observer.event(Event::PhaseEnded { name: "loading programs" });
            loaded?
        }
    };
    run_state.instances = instances.values().map(Instance::state).collect::<Result<_>>()?;
    run_state.phase = Phase::Running;
    record.write(&run_state)?;
    let program_ids: Vec<u32> = run_state.instances.iter().flat_map(|i| i.program_ids.clone()).collect();

    // From here on the run changes the system: every error reverts what it did.
    let mut held: Vec<HeldDevice> = Vec::new();
    // The agent prepares the devices of its faults itself.
    let prepared = match options.remote {
        Some(_) => Ok(()),
        None => prepare(plan, &resolved, &mut instances, &mut held, interrupted),
    };
    let mut qdisc_changes: Vec<QdiscChangeReport> =
        instances.values().filter_map(|i| qdisc_change_report(i, "added", i.qdisc_changes().0)).collect();
    for change in &qdisc_changes {
        observer.event(Event::Notice(change.line()));
    }
    run_state.instances = instances.values().map(Instance::state).collect::<Result<_>>()?;
    record.write(&run_state)?;
    if let Err(e) = prepared {
        let (_, reverted, _) = revert(&mut instances, &mut held, &program_ids, run_span);
        if let Err(r) = reverted {
            return Err(e.context(format!("and the revert is incomplete: {r:#}; run `chaos-ebpf cleanup`")));
        }
        return Err(e);
    }

    let run_start = Instant::now();
    let faults_start_unix_ms = state::unix_ms();
    checker.start_during();
    let mut running = Running {
        checker: &mut checker,
        checker_start,
        plan,
        resolved: &resolved,
        identities: &identities,
        instances: &mut instances,
        record: &record,
        run_state: &mut run_state,
        probe,
        progress_every: observer.progress_every(plan.total_duration()),
        observer,
        interrupted,
        run_start,
        last_renew: Instant::now(),
        steps: plan.steps.iter().map(|s| StepRun::new(s, seed)).collect(),
        samples: Vec::new(),
        run_span,
        lab: options.lab.clone(),
        remote: options.remote.clone(),
        remote_ids: Vec::new(),
    };
    let stop = running.run_timeline();
    let mut fired: Option<(AbortReport, Instant, Span)> = None;
    let (failed, outcome, abort) = match stop {
        Stop::Completed => (None, Ok(()), None),
        Stop::Guard(mut report) => {
            report.fired_s -= run_start.duration_since(checker_start).as_secs_f64();
            let reason = format!("the {} guard fired: {}", report.guard, report.reason);
            let span = info_span!(
                parent: run_span,
                "abort",
                scenario = %plan.name,
                guard = %report.guard,
                reason = %report.reason,
                fired_s = report.fired_s,
                revert_ms = Empty,
                otel.status_code = "error",
                otel.status_message = %reason,
            );
            fired = Some((report, Instant::now(), span));
            (None, Ok(()), Some((AbortCause::Guard, reason)))
        }
        Stop::Interrupted => (None, Ok(()), Some((AbortCause::Interrupted, "interrupted by a signal".to_owned()))),
        Stop::CutShort(reason) => (Some(reason.clone()), Ok(()), Some((AbortCause::CutShort, reason))),
        Stop::Error(e) => {
            let reason = format!("{e:#}");
            (None, Err(e), Some((AbortCause::Error, reason)))
        }
    };
    let ended = match (&failed, &outcome, &abort) {
        (Some(reason), _, _) => reason.clone(),
        (None, Err(e), _) => format!("{e:#}"),
        (None, Ok(()), Some((AbortCause::Guard, reason))) => format!("aborted: {reason}"),
        (None, Ok(()), Some(_)) => "interrupted".to_owned(),
        (None, Ok(()), None) => "completed".to_owned(),
    };
    // Every step still in force ends now, its rules removed; steps that never began are
    // reported as such.
    running.close_all(&ended);
    let samples = std::mem::take(&mut running.samples);
    let steps: Vec<StepReport> = running.steps.iter().map(StepRun::report).collect();
    let remote_ids = std::mem::take(&mut running.remote_ids);
    drop(running);
    if let Some((cause, reason)) = abort {
        observer.event(Event::Aborted { cause, reason });
    }
    run_state.phase = Phase::Reverting;
    run_state.rules.clear();
    let _ = record.write(&run_state);
    let created = created_objects(&run_state, &held);
    let (revert_ms, reverted, deleted) = revert(&mut instances, &mut held, &program_ids, run_span);
    let reverted = match (&options.remote, reverted) {
        (Some(remote), Ok(())) => crate::remote::verify_reverted(remote.as_ref(), &remote_ids),
        (_, reverted) => reverted,
    };
    for change in &deleted {
        observer.event(Event::Notice(change.line()));
    }
    qdisc_changes.extend(deleted);
    let clean = reverted.is_ok();
    observer.event(Event::Reverted { seconds: revert_ms / 1000.0, clean });
    let record_path = record.path().to_path_buf();
    drop(record);
    let cleanup = verify_created(created, &program_ids, clean, &record_path);
    // Every fault off and everything removed: the revert an abort asked for, measured
    // from the moment the guard was seen.
    let abort = fired.map(|(mut report, seen, span)| {
        report.revert_ms = seen.elapsed().as_secs_f64() * 1000.0;
        span.record("revert_ms", report.revert_ms);
        report
    });
    // Recovery after the revert (not after a signal: the user wants out).
    if !interrupted.load(Ordering::Relaxed) && plan.hypothesis.is_some() {
        observer.event(Event::PhaseStarted {
            name: "waiting for recovery",
            total: plan.hypothesis.as_ref().map(|h| h.recovery),
        });
        let offset = run_start.duration_since(checker_start);
        checker.recovery(interrupted, &mut |sample| {
            let mut sample = sample.clone();
            sample.t_s -= offset.as_secs_f64();
            observer.event(Event::ProbeChecked(&sample))
        });
        observer.event(Event::PhaseEnded { name: "waiting for recovery" });
    }
    let mut hypothesis = checker.finish();
    shift_samples(hypothesis.as_mut(), checker_start, run_start);
    let report = RunReport {
        scenario: plan.name.clone(),
        seed,
        started_unix_ms: run_state.started_unix_ms,
        ended_unix_ms: state::unix_ms(),
        faults_start_unix_ms,
        abort,
        hypothesis,
        samples,
        interrupted: interrupted.load(Ordering::Relaxed),
        failed,
        steps,
        revert_ms,
        clean,
        revert_problems: reverted.err().map(|e| vec![format!("{e:#}")]).unwrap_or_default(),
        topology,
        cleanup,
        qdisc_changes,
        agent: options.remote.as_ref().map(|r| r.describe()),
    };
    outcome?;
    Ok(report)
}

/// Report times count from the faults' start; the checker's from its own creation,
/// before the steady state: its samples move by the difference (those before the faults
/// are negative).
fn shift_samples(hypothesis: Option<&mut HypothesisReport>, checker_start: Instant, zero: Instant) {
    let offset = zero.saturating_duration_since(checker_start).as_secs_f64();
    if let Some(h) = hypothesis {
        for s in &mut h.samples {
            s.t_s -= offset;
        }
        for o in &mut h.outages {
            o.from_s -= offset;
            if let Some(to) = &mut o.to_s {
                *to -= offset;
            }
        }
    }
}

/// Why the timeline stopped.
enum Stop {
    /// Every window of every step ran.
    Completed,
    /// An abort guard fired (times from the checker's start).
    Guard(AbortReport),
    Interrupted,
    /// A fault could not run its course (a lapsed lease, a detached program, a vanished
    /// target).
    CutShort(String),
    /// An error while rules were in force (installing, renewing, writing the ledger).
    Error(anyhow::Error),
}

/// One edge of a step's window on the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Edge {
    // Closes sort first: a window that ends when another begins frees its slots first.
    Close,
    Open,
}

/// Every window edge of the plan, in time order (closes before opens at one instant, then
/// in file order).
fn timeline(plan: &Plan) -> Vec<(Duration, Edge, usize, usize)> {
    let mut edges = Vec::new();
    for (i, step) in plan.steps.iter().enumerate() {
        for (j, w) in step.windows.iter().enumerate() {
            edges.push((w.start, Edge::Open, i, j));
            edges.push((w.end, Edge::Close, i, j));
        }
    }
    edges.sort();
    edges
}

/// A step as the timeline runs it.
struct StepRun {
    name: String,
    seed: u64,
    /// Open from its first window's start to its last window's end.
    span: Option<Span>,
    /// Its rules while a window is in force.
    active: Vec<ActiveRule>,
    windows: Vec<WindowReport>,
    /// Per rule and namespace, counters summed over the windows that ended.
    rules: Vec<RuleReport>,
    probe_start: Option<ProbeCounts>,
    probe: Option<ProbeCounts>,
    started: Option<Instant>,
    seconds: f64,
    /// Whether its last window closed as planned.
    finished: bool,
    /// Every window opened and closed as planned (false once one was cut).
    whole: bool,
    /// An action step's action while it runs, then its report.
    task: Option<ActionTask>,
    action: Option<ActionReport>,
}

impl StepRun {
    fn new(step: &PlannedStep, run_seed: u64) -> StepRun {
        StepRun {
            name: step.name.clone(),
            seed: step.seed(run_seed),
            span: None,
            active: Vec::new(),
            windows: step
                .windows
                .iter()
                .map(|w| WindowReport {
                    planned_start_s: w.start.as_secs_f64(),
                    planned_end_s: w.end.as_secs_f64(),
                    intensity: w.intensity,
                    started_s: None,
                    ended_s: None,
                })
                .collect(),
            rules: Vec::new(),
            probe_start: None,
            probe: None,
            started: None,
            seconds: 0.0,
            finished: false,
            whole: true,
            task: None,
            action: None,
        }
    }

    fn report(&self) -> StepReport {
        let (planned_start_s, planned_end_s) = match (self.windows.first(), self.windows.last()) {
            (Some(first), Some(last)) => (first.planned_start_s, last.planned_end_s),
            _ => (0.0, 0.0),
        };
        StepReport {
            name: self.name.clone(),
            seed: self.seed,
            planned_start_s,
            planned_end_s,
            seconds: self.seconds,
            windows: self.windows.clone(),
            rules: self.rules.clone(),
            probe: self.probe,
            action: self.action.clone(),
            ran_its_course: self.finished && self.whole && self.action.as_ref().is_none_or(|a| a.ran_its_course),
        }
    }
}

/// A run between its preparation and its revert: what the timeline works on.
struct Running<'a> {
    /// The hypothesis' checks and the abort guards.
    checker: &'a mut Checker,
    /// Where the checker's sample times count from.
    checker_start: Instant,
    plan: &'a Plan,
    resolved: &'a BTreeMap<String, Vec<Resolved>>,
    identities: &'a [Identity],
    instances: &'a mut BTreeMap<NetnsId, Instance>,
    record: &'a RunRecord,
    run_state: &'a mut RunState,
    probe: Option<&'a dyn Probe>,
    observer: &'a mut dyn Observer,
    progress_every: Option<Duration>,
    interrupted: &'static AtomicBool,
    /// Time zero of the plan's timeline.
    run_start: Instant,
    /// When the leases were last set: by an install before the ledger says the rules are
    /// in force (from then on a stopped process lets them lapse), then by each renewal.
    last_renew: Instant,
    steps: Vec<StepRun>,
    samples: Vec<CounterSample>,
    run_span: &'a Span,
    lab: Option<std::sync::Arc<dyn Lab>>,
    remote: Option<std::sync::Arc<dyn RemoteRules>>,
    /// Every fault the agent applied for this run (checked gone after the revert).
    remote_ids: Vec<u64>,
}

impl Running<'_> {
    fn now_s(&self) -> f64 {
        self.run_start.elapsed().as_secs_f64()
    }

    /// Opens and closes windows at their planned times; between edges renews the leases,
    /// checks that everything is in place, reports progress and samples the counters.
    fn run_timeline(&mut self) -> Stop {
        let plan = self.plan;
        let edges = timeline(plan);
        let renew_every = plan.lease / 3;
        let sample_every = (plan.total_duration() / 2000).max(Duration::from_millis(250));
        let mut next = 0;
        let mut last_progress = Instant::now();
        let mut last_sample = Instant::now();
        loop {
            while next < edges.len() && edges[next].0 <= self.run_start.elapsed() {
                let (_, edge, i, j) = edges[next];
                let done = match edge {
                    Edge::Open => self.open_window(i, j),
                    Edge::Close => self.close_window(i, j),
                };
                if let Err(e) = done {
                    return Stop::Error(e);
                }
                next += 1;
            }
            if let Some(why) = self.finish_actions() {
                return Stop::CutShort(why);
            }
            if next == edges.len() && self.steps.iter().all(|s| s.task.is_none()) {
                return Stop::Completed;
            }
            if self.interrupted.load(Ordering::Relaxed) {
                return Stop::Interrupted;
            }
            let offset = self.run_start.duration_since(self.checker_start).as_secs_f64();
            for mut sample in self.checker.drain() {
                sample.t_s -= offset;
                self.observer.event(Event::ProbeChecked(&sample));
            }
            if let Some(abort) = self.checker.fired() {
                return Stop::Guard(abort);
            }
            if self.last_renew.elapsed() >= renew_every {
                // A renewal later than the lease means the rules lapsed in between (the
                // process was stopped or starved): the faults did not run their course.
                let since = self.last_renew.elapsed();
                let any_active = self.steps.iter().any(|s| !s.active.is_empty());
                if since > plan.lease && any_active {
                    let lapsed_at = state::unix_ms().saturating_sub((since - plan.lease).as_millis() as u64);
                    return Stop::CutShort(format!(
                        "the leases lapsed at {}: chaos-ebpf did not run for {} (stopped or starved), longer than the {} lease, so the faults were off meanwhile",
                        state::clock(lapsed_at),
                        format_duration(since),
                        format_duration(plan.lease)
                    ));
                }
                if let Err(reason) = check_in_place(self.instances, self.identities) {
                    return Stop::CutShort(reason);
                }
                for a in self.steps.iter().flat_map(|s| &s.active) {
                    let renewed = match &a.place {
                        Place::Slot { netns, slot } => {
                            self.instances.get_mut(netns).expect("loaded").renew(*slot, plan.lease)
                        }
                        Place::Remote { id, .. } => self.remote().renew(*id, plan.lease),
                    };
                    if let Err(e) = renewed {
                        return Stop::Error(e.context("renewing a lease"));
                    }
                }
                self.last_renew = Instant::now();
                self.run_state.renewed_unix_ms = state::unix_ms();
                let _ = self.record.write(self.run_state);
            }
            if last_sample.elapsed() >= sample_every {
                self.sample_counters();
                last_sample = Instant::now();
            }
            if self.progress_every.is_some_and(|every| last_progress.elapsed() >= every) {
                self.progress();
                last_progress = Instant::now();
            }
            // Sleep to the next edge, but no longer than the poll interval.
            let to_next = edges.get(next).map_or(POLL, |e| e.0.saturating_sub(self.run_start.elapsed()));
            wait_for_signal(POLL.min(to_next));
        }
    }

    /// Opens window `j` of step `i`: the step's rules installed at the window's
    /// intensity, or, when the window continues the one before without a gap (a ramp),
    /// the rules in force rewritten in place.
    fn open_window(&mut self, i: usize, j: usize) -> Result<()> {
        let step = &self.plan.steps[i];
        let window = step.windows[j];
        if j == 0 {
            let span = info_span!(
                parent: self.run_span,
                "step",
                scenario = %self.plan.name,
                step = %step.name,
                seed = self.steps[i].seed,
                planned_start_ms = step.start.as_millis() as u64,
                planned_ms = step.duration.as_millis() as u64,
                windows = step.windows.len() as u64,
                ended = Empty,
                otel.status_code = Empty,
                otel.status_message = Empty,
            );
            if let Some(action) = &step.action {
                self.steps[i].task = Some(ActionTask::start(
                    action.clone(),
                    self.lab.clone(),
                    self.run_start,
                    span.clone(),
                    step.name.clone(),
                )?);
            }
            self.steps[i].span = Some(span);
            self.steps[i].started = Some(Instant::now());
        }
        if self.steps[i].active.is_empty() {
            self.install(i, window.intensity)?;
        } else {
            // A ramp: the next intensity, written over the rules in force.
            let seed = self.steps[i].seed;
            for a in &self.steps[i].active {
                let fault = step.faults.iter().find(|f| f.rule_id == a.rule_id).expect("a rule of this step");
                let r = &self.resolved[&resolution_key(&fault.spec)][a.target_index];
                let rule = network::rule_for(&fault.spec.at_intensity(window.intensity), seed, fault.rule_id, r);
                let Place::Slot { netns, slot } = &a.place else {
                    return Err(anyhow!("a ramp's rules cannot change in place through the agent"));
                };
                self.instances.get_mut(netns).expect("loaded").update_rule(*slot, &rule)?;
                a.span.record("intensity", window.intensity);
            }
        }
        // The probe counts from the moment the rules are in force: a packet sent while
        // they were being installed (tens of ms under emulation) met no fault yet.
        if self.steps[i].probe_start.is_none() {
            self.steps[i].probe_start = self.probe.map(|p| p.counts());
        }
        self.steps[i].windows[j].started_s = Some(self.now_s());
        Ok(())
    }

    /// Closes window `j` of step `i` as planned: unless the next window continues it (a
    /// ramp), the rules are removed and their counters added to the step's. The last
    /// window ends the step. (A run that stops early ends its steps in `close_all`.)
    fn close_window(&mut self, i: usize, j: usize) -> Result<()> {
        let step = &self.plan.steps[i];
        let continues = step.windows.get(j + 1).is_some_and(|next| next.start == step.windows[j].end);
        self.steps[i].windows[j].ended_s = Some(self.now_s());
        if !continues {
            let active = std::mem::take(&mut self.steps[i].active);
            self.remove_rules(i, active, "completed", true);
            self.ledger_rules()?;
        }
        if j + 1 == step.windows.len() {
            match &self.steps[i].task {
                // Undone on its thread; the step ends when that is done (finish_actions).
                Some(task) => task.close(),
                None => self.end_step(i, "completed", true),
            }
        }
        Ok(())
    }

    /// Ends the action steps whose thread is done; the first action that failed, if any
    /// (the run stops: a fault that did not run its course is not a success).
    fn finish_actions(&mut self) -> Option<String> {
        let mut failed = None;
        for i in 0..self.steps.len() {
            let Some(task) = &self.steps[i].task else { continue };
            if let Some(why) = task.failure() {
                failed.get_or_insert(format!("step {}: {why}", self.steps[i].name));
            }
            let closed = self.steps[i].windows.last().is_some_and(|w| w.ended_s.is_some());
            if closed && task.finished() {
                let report = self.steps[i].task.take().expect("checked").join();
                let ok = report.ran_its_course;
                let why = report.error.clone().unwrap_or_else(|| "the action did not run its course".to_owned());
                self.steps[i].action = Some(report);
                if ok {
                    self.end_step(i, "completed", true);
                } else {
                    self.end_step(i, &why, false);
                    failed.get_or_insert(format!("step {}: {why}", self.steps[i].name));
                }
            }
        }
        failed
    }

    /// The step's report is final: its span ends, observers hear of it.
    fn end_step(&mut self, i: usize, ended: &str, completed: bool) {
        if self.progress_every.is_some() {
            // The progress line gives way to the step's notice.
            self.observer.event(Event::ProgressEnd);
        }
        let run = &mut self.steps[i];
        run.finished = completed;
        if !completed {
            run.whole = false;
        }
        run.seconds = run.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        if let (Some(probe), Some(start)) = (self.probe, run.probe_start.as_ref()) {
            run.probe = Some(probe.counts().since(start));
        }
        if let Some(span) = run.span.take() {
            span.record("ended", ended);
            set_status(&span, if completed { None } else { Some(ended) });
        }
        let report = run.report();
        self.observer.event(Event::StepEnded(&report));
        self.observer.event(Event::Notice(format!(
            "step {} {}",
            report.name,
            if completed { "done" } else { "cut short" }
        )));
    }

    /// Ends every step still open (the run stopped early), with why.
    fn close_all(&mut self, ended: &str) {
        for i in 0..self.steps.len() {
            if let Some(task) = self.steps[i].task.take() {
                // Undone now, on its thread (each of its calls is bounded).
                task.stop();
                self.steps[i].action = Some(task.join());
            }
            if self.steps[i].span.is_some() {
                let active = std::mem::take(&mut self.steps[i].active);
                let now = self.now_s();
                for w in &mut self.steps[i].windows {
                    if w.started_s.is_some() && w.ended_s.is_none() {
                        w.ended_s = Some(now);
                    }
                }
                self.remove_rules(i, active, ended, false);
                self.end_step(i, ended, false);
            } else if !self.steps[i].finished {
                self.steps[i].whole = false;
            }
        }
        let _ = self.ledger_rules();
    }

    /// Installs the rules of step `i` on every target at `intensity`, as the step's rules
    /// in force; on an error, those already installed are removed again. Through the
    /// agent, each fault is one apply (the agent resolves its targets).
    fn install(&mut self, i: usize, intensity: f64) -> Result<()> {
        let step = &self.plan.steps[i];
        let seed = self.steps[i].seed;
        let step_span = self.steps[i].span.clone().unwrap_or_else(Span::none);
        let mut active = Vec::new();
        for fault in &step.faults {
            let spec = fault.spec.at_intensity(intensity);
            let new_rule = |target_index: usize, span: Span, place: Place| ActiveRule {
                rule_id: fault.rule_id,
                kind: fault.spec.kind.name(),
                // As written: a ramp's windows give its intensities.
                fault: fault.matrix.as_ref().map_or_else(|| fault.spec.describe(), |m| m.summary.clone()),
                target: fault.spec.target.to_string(),
                target_index,
                span,
                place,
                from_unix_ms: state::unix_ms(),
            };
            let mut installed = Vec::new();
            if let Some(remote) = self.remote.clone() {
                let span = self.inject_span(&step_span, step, &spec, fault, &remote.describe(), seed, intensity);
                let applied = remote.apply(&spec, seed, fault.rule_id, self.plan.lease);
                if let Ok(a) = &applied {
                    self.remote_ids.push(a.id);
                }
                installed.push(
                    applied
                        .map(|a| new_rule(0, span.clone(), Place::Remote { id: a.id, netns: remote_netns(&a.rules) }))
                        .map_err(|e| (e, span)),
                );
            } else {
                for (target_index, r) in self.resolved[&resolution_key(&fault.spec)].iter().enumerate() {
                    let netns = r.netns.path.display().to_string();
                    let span = self.inject_span(&step_span, step, &spec, fault, &netns, seed, intensity);
                    let instance = self.instances.get_mut(&r.netns.id).expect("loaded above");
                    let rule = network::rule_for(&spec, seed, fault.rule_id, r);
                    let slot = instance.free_slot().and_then(|slot| {
                        match &fault.matrix {
                            Some(m) => {
                                let groups: Vec<Vec<_>> =
                                    m.groups.iter().map(|g| g.iter().map(|p| p.prefix()).collect()).collect();
                                instance.install_matrix(slot, &rule, &groups, &m.cuts, self.plan.lease)?
                            }
                            None => {
                                instance.install(slot, &rule, &network::peer_entries(&fault.spec), self.plan.lease)?
                            }
                        }
                        Ok(slot)
                    });
                    let failed = slot.is_err();
                    installed.push(
                        slot.map(|slot| new_rule(target_index, span.clone(), Place::Slot { netns: r.netns.id, slot }))
                            .map_err(|e| (e, span)),
                    );
                    if failed {
                        break;
                    }
                }
            }
            for result in installed {
                match result {
                    Ok(rule) => {
                        set_status(&rule.span, None);
                        active.push(rule);
                    }
                    Err((e, span)) => {
                        set_status(&span, Some(&format!("{e:#}")));
                        drop(span);
                        self.remove_rules(i, active, "not installed", false);
                        return Err(e.context(format!("installing rule {} ({})", fault.rule_id, spec.describe())));
                    }
                }
            }
        }
        self.last_renew = Instant::now();
        let installed: Vec<InForce> = active
            .iter()
            .map(|a| InForce { rule_id: a.rule_id, kind: a.kind, netns: self.place_netns(&a.place) })
            .collect();
        self.steps[i].active = active;
        if let Err(e) = self.ledger_rules() {
            let active = std::mem::take(&mut self.steps[i].active);
            self.remove_rules(i, active, "not recorded", false);
            return Err(e);
        }
        // Also for a pause (no rules): observers learn that the step began.
        self.observer.event(Event::RulesInstalled { step: &step.name, rules: installed });
        Ok(())
    }

    /// Writes the rules in force (of every step) to the ledger.
    fn ledger_rules(&mut self) -> Result<()> {
        let now_ms = state::unix_ms();
        let mut rules = Vec::new();
        for (run, step) in self.steps.iter().zip(&self.plan.steps) {
            let ends = now_ms.saturating_add(step.end().saturating_sub(self.run_start.elapsed()).as_millis() as u64);
            // The agent's own ledger record holds its rules.
            for (a, netns, slot) in run.active.iter().filter_map(|a| match a.place {
                Place::Slot { netns, slot } => Some((a, netns, slot)),
                Place::Remote { .. } => None,
            }) {
                rules.push(RuleState {
                    rule_id: a.rule_id,
                    slot,
                    netns_id: netns,
                    fault: a.fault.clone(),
                    started_unix_ms: a.from_unix_ms,
                    ends_unix_ms: ends,
                });
            }
        }
        self.run_state.rules = rules;
        self.run_state.renewed_unix_ms = now_ms;
        self.record.write(self.run_state)
    }

    /// Removes rules of step `i`: each one's counters end its `inject` span and are added
    /// to the step's, then a `revert` span covers its removal.
    fn remove_rules(&mut self, i: usize, active: Vec<ActiveRule>, ended: &str, ran_its_course: bool) {
        let step_span = self.steps[i].span.clone().unwrap_or_else(Span::none);
        let to_ms = state::unix_ms();
        let mut removed_counts = Vec::new();
        for a in active {
            // The agent's revert answers with the final counters.
            let (counters, reverted) = match &a.place {
                Place::Slot { netns, slot } => {
                    (self.instances.get(netns).and_then(|i| i.counters(*slot).ok()).unwrap_or_default(), None)
                }
                Place::Remote { id, .. } => match self.remote().revert(*id) {
                    Ok(rules) => (remote_sum(&rules), Some(Ok(()))),
                    Err(e) => (RuleCounters::default(), Some(Err(e))),
                },
            };
            record_counters(&a.span, &counters);
            a.span.record("ended", ended);
            a.span.record("ran_its_course", ran_its_course);
            drop(a.span);
            let netns = self.place_netns(&a.place);
            removed_counts.push(RuleCount {
                step: self.plan.steps[i].name.clone(),
                rule_id: a.rule_id,
                netns: netns.clone(),
                counters,
            });
            let rules = &mut self.steps[i].rules;
            match rules.iter_mut().find(|r| r.rule_id == a.rule_id && r.netns == netns) {
                Some(r) => {
                    r.counters.add(&counters);
                    r.active_to_unix_ms = to_ms;
                    r.ended = ended.to_owned();
                    r.ran_its_course &= ran_its_course;
                }
                None => rules.push(RuleReport {
                    rule_id: a.rule_id,
                    fault: a.fault.clone(),
                    target: a.target.clone(),
                    netns,
                    counters,
                    active_from_unix_ms: a.from_unix_ms,
                    active_to_unix_ms: to_ms,
                    ended: ended.to_owned(),
                    ran_its_course,
                }),
            }
            let span = info_span!(
                parent: &step_span,
                "revert",
                scenario = %self.plan.name,
                step = %self.plan.steps[i].name,
                fault = %a.fault,
                target = %a.target,
                rule_id = a.rule_id,
                seed = self.steps[i].seed,
                otel.status_code = Empty,
                otel.status_message = Empty,
            );
            let removed = match (&a.place, reverted) {
                (_, Some(reverted)) => reverted,
                (Place::Slot { netns, slot }, None) => match self.instances.get_mut(netns) {
                    Some(instance) => instance.remove(*slot),
                    // Its instance is gone already, and its rules with it.
                    None => Ok(()),
                },
                (Place::Remote { .. }, None) => unreachable!("reverted above"),
            };
            match removed {
                Ok(()) => set_status(&span, None),
                Err(e) => {
                    let message = format!("removing rule {}: {e:#}", a.rule_id);
                    set_status(&span, Some(&message));
                    self.observer.event(Event::Warning(message));
                }
            }
        }
        if !removed_counts.is_empty() {
            let step = &self.plan.steps[i].name;
            self.observer.event(Event::RulesRemoved { step, rules: removed_counts });
        }
    }

    /// The counters of every rule in force, now.
    fn rule_counts(&self) -> Vec<RuleCount> {
        self.steps
            .iter()
            .flat_map(|s| s.active.iter().map(move |a| (s, a)))
            .filter_map(|(s, a)| {
                let counters = match &a.place {
                    Place::Slot { netns, slot } => self.instances[netns].counters(*slot).ok()?,
                    Place::Remote { id, .. } => remote_sum(&self.remote().counters(*id).ok()?),
                };
                Some(RuleCount {
                    step: s.name.clone(),
                    rule_id: a.rule_id,
                    netns: self.place_netns(&a.place),
                    counters,
                })
            })
            .collect()
    }

    /// The agent; only rules placed there call this.
    fn remote(&self) -> &dyn RemoteRules {
        self.remote.as_deref().expect("a remote rule comes from the agent")
    }

    /// The namespace a rule acts in, as the report names it.
    fn place_netns(&self, place: &Place) -> String {
        match place {
            Place::Slot { netns, .. } => {
                self.instances.get(netns).map(|i| i.netns.path.display().to_string()).unwrap_or_default()
            }
            Place::Remote { netns, .. } => netns.clone(),
        }
    }

    /// The `inject` span of one rule (`netns`: where it acts).
    #[allow(clippy::too_many_arguments)]
    fn inject_span(
        &self,
        step_span: &Span,
        step: &PlannedStep,
        spec: &FaultSpec,
        fault: &PlannedFault,
        netns: &str,
        seed: u64,
        intensity: f64,
    ) -> Span {
        info_span!(
            parent: step_span,
            "inject",
            scenario = %self.plan.name,
            step = %step.name,
            fault = %spec.describe(),
            target = %fault.spec.target,
            netns = %netns,
            rule_id = fault.rule_id,
            seed,
            intensity,
            ended = Empty,
            ran_its_course = Empty,
            seen = Empty,
            matched = Empty,
            dropped = Empty,
            passed = Empty,
            delayed = Empty,
            errors = Empty,
            expired = Empty,
            protected = Empty,
            unparsed = Empty,
            otel.status_code = Empty,
            otel.status_message = Empty,
        )
    }

    fn sample_counters(&mut self) {
        let t_s = self.now_s();
        for r in self.rule_counts() {
            self.samples.push(CounterSample {
                t_s,
                step: r.step,
                rule_id: r.rule_id,
                netns: r.netns,
                seen: r.counters.seen,
                matched: r.counters.matched,
                dropped: r.counters.dropped,
                delayed: r.counters.delayed,
            });
        }
    }

    fn progress(&mut self) {
        let open: Vec<&str> = self.steps.iter().filter(|s| s.span.is_some()).map(|s| s.name.as_str()).collect();
        let step = if open.is_empty() { "-".to_owned() } else { open.join(" + ") };
        // The probe since the earliest open step began.
        let probe_start = self.steps.iter().filter(|s| s.span.is_some()).find_map(|s| s.probe_start);
        let probe = match (self.probe, probe_start) {
            (Some(p), Some(start)) => Some(p.counts().since(&start)),
            _ => None,
        };
        let rules = self.rule_counts();
        self.observer.event(Event::Progress(Progress {
            elapsed: self.run_start.elapsed(),
            total: self.plan.total_duration(),
            step: &step,
            rules,
            probe,
        }));
    }
}

/// A rule's counters as attributes of its span.
fn record_counters(span: &Span, c: &RuleCounters) {
    span.record("seen", c.seen);
    span.record("matched", c.matched);
    span.record("dropped", c.dropped);
    span.record("passed", c.passed);
    span.record("delayed", c.delayed);
    span.record("errors", c.errors);
    span.record("expired", c.expired);
    span.record("protected", c.protected);
    span.record("unparsed", c.unparsed);
}

/// Above this many interfaces in one namespace, `attach: auto` uses netlink filters
/// there: each TCX attach and detach waits for an RCU grace period under the kernel's
/// rtnl lock (threads do not help). Measured on the 1,024 bridge ports of a light-node
/// lab: 19 s to attach and 19 s to detach with TCX, 0.7 s and 0.1 s with netlink.
const MANY_INTERFACES: usize = 64;

/// Loads one instance per namespace on a worker thread, so that Ctrl-C acts at once even
/// while the verifier works (seconds under emulation): an interrupted run exits without
/// waiting, and the programs it was loading go with the process. A load failure's
/// verifier log goes to a file, not the terminal. With `auto`, a namespace with more
/// than MANY_INTERFACES interfaces attaches with netlink.
fn load_instances(
    resolved: &BTreeMap<String, Vec<Resolved>>,
    capacities: &BTreeMap<NetnsId, Capacity>,
    mode: AttachMode,
    auto: bool,
    protected: &[ProtectedPorts],
    judge_bit: u32,
    interrupted: &AtomicBool,
) -> Result<BTreeMap<NetnsId, Instance>> {
    let mut paths: BTreeMap<NetnsId, PathBuf> = BTreeMap::new();
    let mut interfaces: BTreeMap<NetnsId, std::collections::BTreeSet<u32>> = BTreeMap::new();
    for r in resolved.values().flatten() {
        paths.entry(r.netns.id).or_insert_with(|| r.netns.path.clone());
        interfaces.entry(r.netns.id).or_default().extend(r.interfaces.iter().map(|i| i.index));
    }
    let protected = protected.to_vec();
    let capacities = capacities.clone();
    let worker = std::thread::spawn(move || -> Result<BTreeMap<NetnsId, Instance>> {
        let mut instances = BTreeMap::new();
        for (id, path) in paths {
            let capacity = capacities.get(&id).copied().unwrap_or_default();
            let many = interfaces.get(&id).map_or(0, |i| i.len()) > MANY_INTERFACES;
            let mode = if many && auto { AttachMode::Netlink } else { mode };
            let instance = network::load_instance(&path, id, mode, &protected, judge_bit, capacity)?;
            instances.insert(id, instance);
        }
        Ok(instances)
    });
    while !worker.is_finished() {
        if interrupted.load(Ordering::Relaxed) {
            // The worker's programs are only file descriptors: they go when we exit.
            return Err(InterruptedBeforeStart.into());
        }
        wait_for_signal(POLL);
    }
    let instances = worker.join().map_err(|_| anyhow!("the program loader thread panicked"))??;
    interrupted_now(interrupted)?;
    Ok(instances)
}

/// The map sizes each namespace's instance needs for the plan's faults: room for every
/// peer prefix in both roles (a fault in both directions uses its peers as destinations
/// and as sources), and a flow table only where a rule keeps per-flow state.
fn capacities(plan: &Plan, resolved: &BTreeMap<String, Vec<Resolved>>) -> BTreeMap<NetnsId, Capacity> {
    let mut needs: BTreeMap<NetnsId, (usize, Vec<Rule>)> = BTreeMap::new();
    for fault in plan.steps.iter().flat_map(|s| &s.faults) {
        let rule = fault.spec.rule(0, fault.rule_id, 0, 0);
        for r in &resolved[&resolution_key(&fault.spec)] {
            let need = needs.entry(r.netns.id).or_default();
            need.0 += 2 * (fault.spec.peers.len() + fault.matrix.as_ref().map_or(0, |m| m.prefixes()));
            need.1.push(rule);
        }
    }
    needs.into_iter().map(|(id, (peers, rules))| (id, Capacity::for_rules(&rules, peers))).collect()
}

/// Device settings, then attachments; stops at the first error (the caller reverts).
fn prepare(
    plan: &Plan,
    resolved: &BTreeMap<String, Vec<Resolved>>,
    instances: &mut BTreeMap<NetnsId, Instance>,
    held: &mut Vec<HeldDevice>,
    interrupted: &AtomicBool,
) -> Result<()> {
    for r in resolved.values().flatten() {
        instances.get(&r.netns.id).expect("loaded above").check_room(&r.interfaces)?;
    }
    // A matrix drops whole packets by address, which every segment of a buffer shares:
    // its bridge ports keep their settings.
    for fault in plan.steps.iter().flat_map(|s| &s.faults).filter(|f| f.matrix.is_none()) {
        for r in &resolved[&resolution_key(&fault.spec)] {
            network::hold_fault_devices(held, &fault.spec, r)?;
            interrupted_now(interrupted)?;
        }
    }
    for targets in resolved.values() {
        for r in targets {
            let instance = instances.get_mut(&r.netns.id).expect("loaded above");
            network::attach_target(instance, r, held)?;
            interrupted_now(interrupted)?;
        }
    }
    Ok(())
}

/// Removes everything: attachments and programs, then device settings. Returns the time
/// it took (ms), whether all of it is verified gone, and the clsact qdiscs it deleted
/// (netlink attach).
fn revert(
    instances: &mut BTreeMap<NetnsId, Instance>,
    held: &mut Vec<HeldDevice>,
    program_ids: &[u32],
    run_span: &Span,
) -> (f64, Result<()>, Vec<QdiscChangeReport>) {
    let span = info_span!(
        parent: run_span,
        "revert",
        instances = instances.len() as u64,
        devices = held.len() as u64,
        revert_ms = Empty,
        clean = Empty,
        otel.status_code = Empty,
        otel.status_message = Empty,
    );
    let started = Instant::now();
    let mut errors = Vec::new();
    let mut deleted = Vec::new();
    for (_, mut instance) in std::mem::take(instances) {
        if let Err(e) = instance.shutdown() {
            errors.push(format!("{e:#}"));
        }
        deleted.extend(qdisc_change_report(&instance, "deleted", instance.qdisc_changes().1));
    }
    for h in held.drain(..) {
        if let Err(e) = network::release_device(&h) {
            errors.push(format!("{e:#}"));
        }
    }
    if !verify_gone(program_ids) {
        errors.push("programs still attached".into());
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    span.record("revert_ms", ms);
    span.record("clean", errors.is_empty());
    let outcome = if errors.is_empty() { Ok(()) } else { Err(anyhow!("{}", errors.join("; "))) };
    set_status(&span, outcome.as_ref().err().map(|e| e.to_string()).as_deref());
    (ms, outcome, deleted)
}

/// The report of the clsact qdiscs `instance` `change`d, when there were any.
fn qdisc_change_report(instance: &Instance, change: &str, changes: QdiscChanges) -> Option<QdiscChangeReport> {
    (changes.devices > 0).then(|| QdiscChangeReport {
        netns: instance.netns.path.display().to_string(),
        change: change.to_owned(),
        devices: changes.devices,
        longest_ms: changes.longest_ms,
        tx_dropped: changes.tx_dropped,
    })
}

/// The targets as resolved, with each interface's addresses (read in its namespace).
fn topology_of(resolved: &BTreeMap<String, Vec<Resolved>>) -> Vec<TargetSnapshot> {
    resolved
        .iter()
        .flat_map(|(target, list)| list.iter().map(move |r| (target, r)))
        .map(|(target, r)| {
            let addresses = |index: u32| {
                r.netns.run(|| chaos_datapath::netlink::addresses(index)).ok().and_then(|a| a.ok()).unwrap_or_default()
            };
            TargetSnapshot {
                target: target.clone(),
                netns: r.netns.path.display().to_string(),
                interfaces: r
                    .interfaces
                    .iter()
                    .map(|i| InterfaceSnapshot {
                        name: i.name.clone(),
                        ifindex: i.index,
                        addresses: addresses(i.index),
                    })
                    .collect(),
                cgroup: (r.cgroup_id != 0).then(|| format!("cgroup id {} (level {})", r.cgroup_id, r.cgroup_level)),
            }
        })
        .collect()
}

/// How a created object is checked after the revert.
enum Check {
    /// Its id is absent from the loaded BPF programs.
    Program(u32),
    /// An attachment holds its program: gone when none of the run's programs is loaded.
    Attachment,
    /// The outer end of a segmenter pair is absent from its namespace's interfaces.
    Segmenter(String),
    /// Restored by the revert (clsact qdiscs, device settings): its outcome says.
    Reverted,
}

/// What the run created, before the revert: programs and their attachments, the clsact
/// qdiscs it added, device settings and segmenter pairs; each with how to check it.
fn created_objects(run_state: &RunState, held: &[HeldDevice]) -> Vec<(CreatedObject, Check)> {
    let object = |kind: &str, what: String, netns: String| CreatedObject {
        kind: kind.into(),
        what,
        netns,
        gone: false,
        proof: String::new(),
    };
    let mut out = Vec::new();
    for i in &run_state.instances {
        let netns = i.netns.display().to_string();
        for id in &i.program_ids {
            out.push((object("program", format!("program id {id}"), netns.clone()), Check::Program(*id)));
        }
        let attachment = match i.mode {
            AttachMode::Netlink => "tc-filter",
            _ => "tcx-link",
        };
        for iface in &i.interfaces {
            out.push((object(attachment, format!("{iface} ingress and egress"), netns.clone()), Check::Attachment));
        }
        for iface in &i.clsact_added {
            out.push((object("clsact-qdisc", iface.clone(), netns.clone()), Check::Reverted));
        }
    }
    for h in held {
        let netns = h.netns.path.display().to_string();
        out.push((object("device-setting", h.iface.name.clone(), netns.clone()), Check::Reverted));
        if let Some(segmenter) = &h.segmenter {
            let what = format!("{} / {}", segmenter.outer, segmenter.inner);
            out.push((object("segmenter-pair", what, netns), Check::Segmenter(segmenter.outer.clone())));
        }
    }
    out
}

/// Checks each created object after the revert (and the run's ledger record), with how.
fn verify_created(
    created: Vec<(CreatedObject, Check)>,
    program_ids: &[u32],
    clean: bool,
    record: &std::path::Path,
) -> Vec<CreatedObject> {
    let alive: Vec<u32> = bpfsys::our_programs().into_iter().map(|(id, _)| id).collect();
    let programs_gone = program_ids.iter().all(|id| !alive.contains(id));
    let still = |gone: bool, absent: &'static str| if gone { absent } else { "STILL" };
    let mut out: Vec<CreatedObject> = created
        .into_iter()
        .map(|(mut o, check)| {
            (o.gone, o.proof) = match check {
                Check::Program(id) => {
                    let gone = !alive.contains(&id);
                    (gone, format!("program id {id} {} among the loaded BPF programs", still(gone, "absent")))
                }
                Check::Attachment => (
                    programs_gone,
                    "each attachment holds its program; none of this run's programs is loaded any more".into(),
                ),
                Check::Segmenter(outer) => {
                    let listed = Netns::open(std::path::Path::new(&o.netns))
                        .map_err(anyhow::Error::from)
                        .and_then(|n| n.run(chaos_datapath::netns::interfaces)?);
                    match listed {
                        Ok(list) => {
                            let gone = !list.iter().any(|i| i.name == outer);
                            (gone, format!("{outer} {} in the namespace's interfaces", still(gone, "absent")))
                        }
                        // The namespace itself is gone (a lab removed after the run): so is the pair.
                        Err(_) => (true, "its namespace no longer exists".into()),
                    }
                }
                Check::Reverted => (
                    clean,
                    format!(
                        "the revert {} it without error",
                        if clean { "restored or removed" } else { "could not verify" }
                    ),
                ),
            };
            o
        })
        .collect();
    let gone = !record.exists();
    out.push(CreatedObject {
        kind: "ledger-record".into(),
        what: record.display().to_string(),
        netns: String::new(),
        gone,
        proof: format!("{} {}", record.display(), if gone { "no longer exists" } else { "STILL exists" }),
    });
    out
}

/// Every attachment still in place and every target still the one we started with.
fn check_in_place(instances: &BTreeMap<NetnsId, Instance>, identities: &[Identity]) -> Result<(), String> {
    for identity in identities {
        identity.check()?;
    }
    for instance in instances.values() {
        instance.check_attachments()?;
    }
    Ok(())
}

/// The namespaces and cgroups a target names, to check at each renewal.
/// `written`: the target as the user wrote it (`container:web` for the namespace it
/// resolved to), for the message when it is gone.
fn identities_of(written: &TargetSpec, spec: &Target, targets: &[Resolved]) -> Result<Vec<Identity>> {
    let mut out = Vec::new();
    match spec {
        Target::Netns(_) | Target::Pid(_) => {
            for t in targets {
                out.push(Identity { what: format!("{written}"), path: t.netns.path.clone(), ino: t.netns.id.ino });
            }
        }
        Target::Cgroup(_) | Target::Iface(_) => {}
    }
    let cgroup = match spec {
        Target::Cgroup(path) => Some(target::Cgroup::find(path)?),
        Target::Pid(pid) => Some(target::Cgroup::of_pid(*pid)?),
        _ => None,
    };
    if let Some(cgroup) = cgroup {
        out.push(Identity { what: format!("the cgroup of {written}"), path: cgroup.dir, ino: cgroup.id });
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the progress events it gets; asks for them every `every`.
    struct Counting {
        every: Option<Duration>,
        progress: usize,
        others: usize,
    }

    impl Observer for Counting {
        fn progress_every(&self, _total: Duration) -> Option<Duration> {
            self.every
        }
        fn event(&mut self, event: Event<'_>) {
            match event {
                Event::Progress(_) => self.progress += 1,
                _ => self.others += 1,
            }
        }
    }

    /// The fan-out asks for the shortest interval, gives each observer progress at its
    /// own interval (none to one that wants none), and every other event to all.
    #[test]
    fn fanout_gives_each_observer_its_own_interval() {
        let mut fast = Counting { every: Some(Duration::from_millis(20)), progress: 0, others: 0 };
        let mut slow = Counting { every: Some(Duration::from_millis(100)), progress: 0, others: 0 };
        let mut none = Counting { every: None, progress: 0, others: 0 };
        let total = Duration::from_secs(1);
        let mut fanout = Fanout::new(vec![&mut fast, &mut slow, &mut none]);
        assert_eq!(fanout.progress_every(total), Some(Duration::from_millis(20)));
        fanout.event(Event::Started { scenario: "s", seed: 1, total });
        let started = Instant::now();
        // The engine's loop: progress every 20 ms for 400 ms.
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(20));
            let rules = Vec::new();
            fanout.event(Event::Progress(Progress {
                elapsed: started.elapsed(),
                total,
                step: "x",
                rules,
                probe: None,
            }));
        }
        fanout.event(Event::Notice("done".into()));
        let elapsed_ms = started.elapsed().as_millis() as usize;
        drop(fanout);
        assert_eq!(fast.progress, 20);
        // One at once, then one per 100 ms (less the 10 ms poll tolerance) of the 400 ms
        // or more the loop took (longer on a loaded machine).
        let most = elapsed_ms / 90 + 1;
        assert!(
            (4..=most).contains(&slow.progress),
            "slow observer got {} progress events in {elapsed_ms} ms",
            slow.progress
        );
        assert_eq!(none.progress, 0);
        assert_eq!((fast.others, slow.others, none.others), (2, 2, 2));
    }
}
