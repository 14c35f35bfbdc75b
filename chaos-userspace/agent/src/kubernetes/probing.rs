//! An experiment's hypothesis and abort guards on one node: the engine's [`Checker`]
//! (the same probes, guards and verdict as `chaos-ebpf run`) on a thread of its own,
//! because its steady-state and recovery phases block. The controller's pass only looks
//! at where it is ([`Probing::stage`]) and tells it when the faults are gone
//! ([`Probing::reverted`]); the thread wakes the controller on each change.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use chaos_engine::hypothesis::{Checker, HypothesisReport, Verdict};
use chaos_model::hypothesis::{Guard, Hypothesis};
use tokio::sync::Notify;

use super::crd::{HypothesisStatus, ProbeStatus};

/// How often the thread asks the guards while the faults are in force.
const GUARD_POLL: Duration = Duration::from_millis(100);

/// Where the check is.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Before the faults: every probe must pass once; nothing may be injected yet.
    Steady,
    /// The steady state was not reached (why): nothing may be injected.
    SteadyFailed(String),
    /// Faults may be in force; the guards watch.
    During,
    /// The faults are gone: the probes must pass again.
    Recovery,
    Done,
}

struct Shared {
    stage: Mutex<Stage>,
    /// The guard that fired and what it saw.
    aborted: Mutex<Option<String>>,
    report: Mutex<Option<HypothesisReport>>,
    /// The faults are reverted: recovery may start.
    reverted: AtomicBool,
    /// The experiment is gone: stop at once.
    stop: AtomicBool,
    wake: Arc<Notify>,
}

impl Shared {
    fn set(&self, stage: Stage) {
        *lock(&self.stage) = stage;
        self.wake.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic on the thread leaves the value as it was: still readable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The check of one experiment on this node; stops its thread when dropped.
pub struct Probing {
    shared: Arc<Shared>,
}

impl Probing {
    /// Starts checking the steady state at once.
    pub fn start(name: String, hypothesis: Option<Hypothesis>, guards: Vec<Guard>, wake: Arc<Notify>) -> Probing {
        let shared = Arc::new(Shared {
            stage: Mutex::new(Stage::Steady),
            aborted: Mutex::new(None),
            report: Mutex::new(None),
            reverted: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake,
        });
        let mine = shared.clone();
        let spawned = thread::Builder::new()
            .name("chaos-hypothesis".into())
            .spawn(move || check(&name, hypothesis.as_ref(), &guards, &mine));
        if let Err(e) = spawned {
            *lock(&shared.stage) = Stage::SteadyFailed(format!("cannot start the thread of the probes: {e}"));
        }
        Probing { shared }
    }

    pub fn stage(&self) -> Stage {
        lock(&self.shared.stage).clone()
    }

    /// The guard that fired and what it saw.
    pub fn aborted(&self) -> Option<String> {
        lock(&self.shared.aborted).clone()
    }

    /// Every fault of the experiment on this node is gone: the recovery check starts.
    pub fn reverted(&self) {
        self.shared.reverted.store(true, Ordering::SeqCst);
    }

    /// What the status says of it.
    pub fn status(&self) -> HypothesisStatus {
        let stage = self.stage();
        let report = lock(&self.shared.report).clone();
        let (verdict, mut reason) = match &report {
            Some(r) => (Some(verdict_text(r.verdict).to_owned()), r.reason.clone()),
            None => (None, None),
        };
        let stage_text = match &stage {
            Stage::Steady => "Steady",
            Stage::SteadyFailed(why) => {
                reason = Some(why.clone());
                "SteadyFailed"
            }
            Stage::During => "During",
            Stage::Recovery => "Recovery",
            Stage::Done => "Done",
        };
        let probes = report
            .iter()
            .flat_map(|r| r.probes.iter())
            .map(|p| ProbeStatus {
                name: p.probe.clone(),
                phase: format!("{:?}", p.phase),
                checks: p.checks as u32,
                failures: p.failures as u32,
                p50_ms: (p.checks > 0).then_some(round(p.p50_ms)),
                p95_ms: (p.checks > 0).then_some(round(p.p95_ms)),
            })
            .collect();
        HypothesisStatus { stage: stage_text.into(), verdict, reason, aborted: self.aborted(), probes }
    }
}

impl Drop for Probing {
    fn drop(&mut self) {
        // The thread ends within its poll (the Checker's own drop bounds its runtime's).
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn round(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Passed => "passed",
        Verdict::Failed => "failed",
        Verdict::NotJudged => "not judged",
    }
}

/// The thread: steady state, then the guards until the faults are reverted, then
/// recovery and the verdict.
fn check(name: &str, hypothesis: Option<&Hypothesis>, guards: &[Guard], shared: &Shared) {
    let mut checker = match Checker::new(name, hypothesis, guards, Instant::now(), &tracing::Span::none()) {
        Ok(checker) => checker,
        Err(e) => return shared.set(Stage::SteadyFailed(format!("{e:#}"))),
    };
    if let Err(why) = checker.steady_state(&shared.stop, &mut |_| {}) {
        return shared.set(Stage::SteadyFailed(format!("the steady state was not reached: {why}")));
    }
    shared.set(Stage::During);
    checker.start_during();
    while !shared.reverted.load(Ordering::SeqCst) {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if let Some(fired) = checker.fired() {
            *lock(&shared.aborted) = Some(format!("{} guard: {}", fired.guard, fired.reason));
            shared.wake.notify_one();
        }
        thread::sleep(GUARD_POLL);
    }
    shared.set(Stage::Recovery);
    checker.recovery(&shared.stop, &mut |_| {});
    if shared.stop.load(Ordering::SeqCst) {
        return;
    }
    *lock(&shared.report) = checker.finish();
    shared.set(Stage::Done);
}
