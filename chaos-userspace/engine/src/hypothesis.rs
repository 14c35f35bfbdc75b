//! The steady-state hypothesis and the abort guards of a run: a [`Checker`] probes the
//! system under test before the faults (steady state), while they are in force (During,
//! judged by the guards) and after the revert (recovery), and gives the verdict.
//!
//! The run loop (run.rs) is synchronous on the thread that enters network namespaces;
//! the probes run on a tokio runtime the Checker owns, on its own worker threads, which
//! are created with the Checker: create it outside `Netns::run`, and the probes run in
//! the namespace of the thread that created it. The run loop only polls:
//!
//! ```text
//! let mut checker = Checker::new(scenario, plan.hypothesis.as_ref(), &plan.guards, run_start, &run_span)?;
//! checker.steady_state(&interrupted, &mut |s| observer.event(ProbeChecked(s)))?; // before the first fault
//! checker.start_during();                                                        // with the first fault
//! loop { for s in checker.drain() { .. }  if let Some(abort) = checker.fired() { revert; break } .. }
//! revert;
//! let recovered = checker.recovery(&interrupted, &mut |s| ..);                   // after the revert
//! report.hypothesis = checker.finish();
//! ```
//!
//! Every check is a `probe` span (a child of the span given to [`Checker::new`]) with
//! the attributes scenario, probe, kind, phase, ok, latency_ms (and detail when there
//! is one) and OpenTelemetry's `otel.status_code`/`otel.status_message`, as run.rs's. A
//! check cut off because its phase ended (a deadline, the revert) has no outcome and no
//! status, only the detail "cancelled: its phase ended first", and no sample.
//!
//! A Checker without a hypothesis and without guards needing one (that is, with none or
//! only a wall-clock guard) starts no thread: the wall-clock guard is judged when
//! [`Checker::fired`] is called.

mod guards;
mod probes;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use chaos_model::hypothesis::{Guard, Hypothesis, ProbeSpec};
use tokio::{task::JoinSet, time::MissedTickBehavior};
use tracing::{field::Empty, info_span, Span};

use self::guards::{fired, one_line_long, Watch};
pub use self::guards::{percentile, BASELINE_CHECKS};
/// One GET on a fresh connection (the cluster of containers asks each etcd who leads).
pub use self::probes::http_get_ok_blocking;
pub use crate::report::{AbortReport, CheckPhase, HypothesisReport, ProbeSample, ProbeSummary, Verdict};

/// How often the caller's thread looks at `interrupted` while it waits in
/// [`Checker::steady_state`] and [`Checker::recovery`].
const POLL: Duration = Duration::from_millis(20);
/// Between two queries of a Prometheus guard when the scenario has no hypothesis (with
/// one, its interval).
const PROMETHEUS_GUARD_EVERY: Duration = Duration::from_secs(1);
/// How long dropping a Checker waits for its runtime's threads (a getaddrinfo of an
/// HTTP probe's host name cannot be cut short).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// The probes and guards of one run. See the module documentation for the order of calls.
pub struct Checker {
    hypothesis: Option<Hypothesis>,
    wall_clock: Option<Duration>,
    /// (url, query, window) of each Prometheus guard.
    prometheus_guards: Vec<(String, String, Duration)>,
    /// None when there is nothing to probe or query: then no thread exists.
    runtime: Option<tokio::runtime::Runtime>,
    context: Arc<Shared>,
    samples: mpsc::Receiver<ProbeSample>,
    /// The periodic checks and the Prometheus guards while the faults are in force.
    during: Option<JoinSet<()>>,
    /// fired() returned the guard that fired already.
    fired_told: bool,
    steady: Option<Outcome>,
    recovery: Option<Outcome>,
}

/// What the checks before or after the faults came to.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Every probe passed; the time from the start of the phase to the last first pass.
    Passed(Duration),
    /// Not every probe passed in time: which and why.
    Failed(String),
    Interrupted,
}

/// What every probe task needs.
struct Shared {
    scenario: String,
    run_start: Instant,
    parent: Span,
    /// The subscriber of the thread that created the Checker: spans made on the
    /// runtime's threads go to it too (the CLI may set it for its thread only).
    dispatch: tracing::Dispatch,
    watch: Mutex<Watch>,
    samples: mpsc::Sender<ProbeSample>,
}

impl Shared {
    fn watch(&self) -> MutexGuard<'_, Watch> {
        // A panic while holding the lock leaves the samples as they were: still usable.
        self.watch.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Checker {
    /// A checker for `hypothesis` and `guards` (validated by the model). Starts the
    /// runtime's worker threads only when there is a hypothesis or a Prometheus guard;
    /// starts no check yet. `run_start`: sample times and the wall-clock guard count
    /// from it. `parent`: the span the `probe` spans are children of.
    pub fn new(
        scenario: &str,
        hypothesis: Option<&Hypothesis>,
        guards: &[Guard],
        run_start: Instant,
        parent: &Span,
    ) -> Result<Checker> {
        let prometheus_guards: Vec<(String, String, Duration)> = guards
            .iter()
            .filter_map(|g| match g {
                Guard::Prometheus { url, query, window } => Some((url.clone(), query.clone(), *window)),
                _ => None,
            })
            .collect();
        let wall_clock = guards.iter().find_map(|g| match g {
            Guard::WallClock { max } => Some(*max),
            _ => None,
        });
        let runtime = if hypothesis.is_some() || !prometheus_guards.is_empty() {
            Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("chaos-probes")
                    .enable_all()
                    .build()
                    .context("starting the runtime of the probes")?,
            )
        } else {
            None
        };
        let (sender, samples) = mpsc::channel();
        let context = Shared {
            scenario: scenario.to_owned(),
            run_start,
            parent: parent.clone(),
            dispatch: tracing::dispatcher::get_default(|d| d.clone()),
            watch: Mutex::new(Watch::new(guards)),
            samples: sender,
        };
        Ok(Checker {
            hypothesis: hypothesis.cloned(),
            wall_clock,
            prometheus_guards,
            runtime,
            context: Arc::new(context),
            samples,
            during: None,
            fired_told: false,
            steady: None,
            recovery: None,
        })
    }

    /// Before the faults: checks every probe at the interval until each has passed once
    /// (a probe a latency guard watches: [`BASELINE_CHECKS`] times, its baseline), or
    /// fails after `steady_within` naming each probe that did not and its last failure.
    /// Blocks the calling thread; returns `Err("interrupted")` within 20 ms of
    /// `interrupted` being set. Calls `on_sample` on the calling thread for each check
    /// (a sample given to `on_sample` is not returned by [`Checker::drain`]). Ok at once
    /// without a hypothesis.
    pub fn steady_state(
        &mut self,
        interrupted: &AtomicBool,
        on_sample: &mut dyn FnMut(&ProbeSample),
    ) -> Result<(), String> {
        let Some(hypothesis) = self.hypothesis.clone() else { return Ok(()) };
        let watched = self.latency_watched();
        let needs =
            hypothesis.probes.iter().map(|p| if watched.contains(&p.name) { BASELINE_CHECKS } else { 1 }).collect();
        let outcome =
            self.until_passed(&hypothesis, CheckPhase::Before, hypothesis.steady_within, needs, interrupted, on_sample);
        let result = match &outcome {
            Outcome::Passed(_) => Ok(()),
            Outcome::Failed(why) => Err(why.clone()),
            Outcome::Interrupted => Err("interrupted".to_owned()),
        };
        self.steady = Some(outcome);
        result
    }

    /// With the first fault: starts checking every probe at the interval (phase During),
    /// judging the error-rate and latency guards on each check, and the Prometheus
    /// guards' queries. Returns at once; a second call does nothing.
    pub fn start_during(&mut self) {
        let Some(runtime) = &self.runtime else { return };
        if self.during.is_some() {
            return;
        }
        self.context.watch().set_baselines();
        let mut during = JoinSet::new();
        let every = self.hypothesis.as_ref().map_or(PROMETHEUS_GUARD_EVERY, |h| h.interval);
        if let Some(hypothesis) = &self.hypothesis {
            for probe in &hypothesis.probes {
                let (context, probe) = (self.context.clone(), probe.clone());
                during.spawn_on(
                    async move {
                        let mut ticker = ticker(every);
                        loop {
                            ticker.tick().await;
                            check_once(&context, &probe, CheckPhase::During).await;
                        }
                    },
                    runtime.handle(),
                );
            }
        }
        for (url, query, window) in &self.prometheus_guards {
            let context = self.context.clone();
            let (url, query, window) = (url.clone(), query.clone(), *window);
            during.spawn_on(prometheus_guard(context, url, query, window, every), runtime.handle());
        }
        self.during = Some(during);
    }

    /// The samples since the last call (or since steady_state or recovery returned), in
    /// the order the checks completed. Never blocks.
    pub fn drain(&mut self) -> Vec<ProbeSample> {
        self.samples.try_iter().collect()
    }

    /// The first guard that fired, with what it saw (`revert_ms` is 0: the engine fills
    /// it in); returned once, None afterwards. Never blocks. The wall-clock guard is
    /// judged here, from `run_start`.
    pub fn fired(&mut self) -> Option<AbortReport> {
        if self.fired_told {
            return None;
        }
        let mut watch = self.context.watch();
        if let (None, Some(max)) = (&watch.fired, self.wall_clock) {
            let lasted = self.context.run_start.elapsed();
            if lasted >= max {
                let guard = Guard::WallClock { max };
                let reason = format!(
                    "the run has lasted {}, the wall-clock limit is {}",
                    probes::secs(lasted),
                    probes::secs(max)
                );
                watch.fire(fired(&guard, lasted.as_secs_f64(), reason));
            }
        }
        let report = watch.fired.clone();
        self.fired_told = report.is_some();
        report
    }

    /// After the revert: stops the During checks and guards, then checks every probe at
    /// the interval until each has passed once, for at most `recovery`. Returns the time
    /// from this call until the last probe passed, or None when not every probe passed
    /// in time, on `interrupted` (within 20 ms), or without a hypothesis. `on_sample` as
    /// in [`Checker::steady_state`] (it also gets the During samples not drained yet).
    pub fn recovery(&mut self, interrupted: &AtomicBool, on_sample: &mut dyn FnMut(&ProbeSample)) -> Option<Duration> {
        if let Some(mut during) = self.during.take() {
            during.abort_all();
        }
        let hypothesis = self.hypothesis.clone()?;
        let needs = vec![1; hypothesis.probes.len()];
        let outcome =
            self.until_passed(&hypothesis, CheckPhase::After, hypothesis.recovery, needs, interrupted, on_sample);
        let recovered = match outcome {
            Outcome::Passed(after) => Some(after),
            _ => None,
        };
        self.recovery = Some(outcome);
        recovered
    }

    /// The hypothesis report: per probe and phase the checks, failures and latency p50
    /// and p95, every sample (by start time), and the verdict: passed when steady before
    /// the faults, recovered after, and no guard fired; failed when a guard other than
    /// the wall-clock one fired or recovery failed; not judged when the steady state
    /// failed or was not checked, the run was interrupted, recovery was not checked, or
    /// only the wall-clock guard cut the run short. None without a hypothesis.
    pub fn finish(mut self) -> Option<HypothesisReport> {
        if let Some(mut during) = self.during.take() {
            during.abort_all();
        }
        let hypothesis = self.hypothesis.take()?;
        let (mut samples, fired) = {
            let watch = self.context.watch();
            (watch.samples.clone(), watch.fired.clone())
        };
        samples.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
        let mut summaries = Vec::new();
        for probe in &hypothesis.probes {
            for phase in [CheckPhase::Before, CheckPhase::During, CheckPhase::After] {
                let mine: Vec<&ProbeSample> =
                    samples.iter().filter(|s| s.probe == probe.name && s.phase == phase).collect();
                if mine.is_empty() {
                    continue;
                }
                let latencies: Vec<f64> = mine.iter().map(|s| s.latency_ms).collect();
                summaries.push(ProbeSummary {
                    probe: probe.name.clone(),
                    kind: probes::kind(&probe.check).to_owned(),
                    phase,
                    checks: mine.len() as u64,
                    failures: mine.iter().filter(|s| !s.ok).count() as u64,
                    p50_ms: percentile(&latencies, 0.5).unwrap_or(0.0),
                    p95_ms: percentile(&latencies, 0.95).unwrap_or(0.0),
                });
            }
        }
        let (verdict, reason) = verdict(self.steady.as_ref(), fired.as_ref(), self.recovery.as_ref());
        Some(HypothesisReport {
            verdict,
            reason,
            steady_before: matches!(self.steady, Some(Outcome::Passed(_))),
            recovered_after_s: match self.recovery {
                Some(Outcome::Passed(after)) => Some(after.as_secs_f64()),
                _ => None,
            },
            probes: summaries,
            outages: HypothesisReport::longest_outages(&samples),
            samples,
        })
    }

    /// The probes a latency guard watches.
    fn latency_watched(&self) -> Vec<String> {
        self.context.watch().latency_probes()
    }

    /// Checks every probe of `hypothesis` at its interval until probe i has passed
    /// `needs[i]` times, for at most `within`, forwarding samples to `on_sample`.
    fn until_passed(
        &mut self,
        hypothesis: &Hypothesis,
        phase: CheckPhase,
        within: Duration,
        needs: Vec<usize>,
        interrupted: &AtomicBool,
        on_sample: &mut dyn FnMut(&ProbeSample),
    ) -> Outcome {
        let runtime = self.runtime.as_ref().expect("a hypothesis starts the runtime");
        let started = Instant::now();
        let (done_sender, mut done) = tokio::sync::oneshot::channel();
        let task = runtime.spawn(until_passed(
            self.context.clone(),
            hypothesis.probes.clone(),
            hypothesis.interval,
            phase,
            needs,
            within,
            done_sender,
        ));
        let outcome = loop {
            if let Ok(sample) = self.samples.recv_timeout(POLL) {
                on_sample(&sample);
            }
            if interrupted.load(Ordering::Relaxed) {
                task.abort();
                break Outcome::Interrupted;
            }
            match done.try_recv() {
                Ok(Ok(passed_at)) => break Outcome::Passed(passed_at.saturating_duration_since(started)),
                Ok(Err(why)) => break Outcome::Failed(why),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    break Outcome::Failed("the probes' task ended without an outcome".to_owned())
                }
            }
        };
        for sample in self.samples.try_iter() {
            on_sample(&sample);
        }
        outcome
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        if let Some(mut during) = self.during.take() {
            during.abort_all();
        }
        // The runtime's tasks are dropped (a command probe's child is killed); a blocking
        // name lookup is waited for only so long.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(SHUTDOWN_WAIT);
        }
    }
}

/// A ticker at `every` whose first tick is now, and which, after a check that took
/// longer than `every`, waits a full `every` again (checks of one probe never overlap
/// or bunch up).
fn ticker(every: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(every.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// One check of `probe` as a `probe` span; its sample recorded (guards judged) and sent
/// to the caller's thread.
async fn check_once(context: &Shared, probe: &ProbeSpec, phase: CheckPhase) -> ProbeSample {
    let kind = probes::kind(&probe.check);
    let span = tracing::dispatcher::with_default(&context.dispatch, || {
        info_span!(
            parent: &context.parent,
            "probe",
            scenario = %context.scenario,
            probe = %probe.name,
            kind,
            phase = phase.name(),
            ok = Empty,
            latency_ms = Empty,
            detail = Empty,
            otel.status_code = Empty,
            otel.status_message = Empty,
        )
    });
    let mut span = Cancellable { span, done: false };
    let started = Instant::now();
    let outcome = probes::check(&probe.check, probe.timeout).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    span.done = true;
    let span = &span.span;
    span.record("ok", outcome.ok);
    span.record("latency_ms", latency_ms);
    if !outcome.detail.is_empty() {
        span.record("detail", outcome.detail.as_str());
    }
    if outcome.ok {
        span.record("otel.status_code", "ok");
    } else {
        span.record("otel.status_code", "error");
        span.record("otel.status_message", outcome.detail.as_str());
    }
    let sample = ProbeSample {
        probe: probe.name.clone(),
        kind: kind.to_owned(),
        phase,
        t_s: started.saturating_duration_since(context.run_start).as_secs_f64(),
        ok: outcome.ok,
        latency_ms,
        detail: outcome.detail,
    };
    context.watch().record(sample.clone());
    // The receiver lives as long as the Checker, which outlives its tasks.
    let _ = context.samples.send(sample.clone());
    sample
}

/// A check's span, which says so when the check is dropped before it ends (its phase
/// ended: the deadline of the steady state or recovery, or the revert): no outcome, no
/// status, no sample.
struct Cancellable {
    span: Span,
    done: bool,
}

impl Drop for Cancellable {
    fn drop(&mut self) {
        if !self.done {
            self.span.record("detail", "cancelled: its phase ended first");
        }
    }
}

/// Where a probe stands in [`until_passed`].
#[derive(Default)]
struct Standing {
    passes: usize,
    last_failure: Option<String>,
}

/// Checks each probe at `interval` until probe i has passed `needs[i]` times (each then
/// stops), or `within` passes. Sends when the last probe got there, or which probes
/// did not and why.
async fn until_passed(
    context: Arc<Shared>,
    probes: Vec<ProbeSpec>,
    interval: Duration,
    phase: CheckPhase,
    needs: Vec<usize>,
    within: Duration,
    done: tokio::sync::oneshot::Sender<Result<Instant, String>>,
) {
    let deadline = Instant::now() + within;
    let standings: Arc<Mutex<Vec<Standing>>> =
        Arc::new(Mutex::new(probes.iter().map(|_| Standing::default()).collect()));
    let mut tasks = JoinSet::new();
    for (i, (probe, need)) in probes.iter().cloned().zip(needs.iter().copied()).enumerate() {
        let (context, standings) = (context.clone(), standings.clone());
        tasks.spawn(async move {
            let mut ticker = ticker(interval);
            loop {
                ticker.tick().await;
                let sample = check_once(&context, &probe, phase).await;
                let mut standings = standings.lock().unwrap_or_else(|p| p.into_inner());
                let standing = &mut standings[i];
                if sample.ok {
                    standing.passes += 1;
                    if standing.passes >= need {
                        return Instant::now();
                    }
                } else {
                    standing.last_failure = Some(sample.detail);
                }
            }
        });
    }
    let all_passed = tokio::time::timeout_at(deadline.into(), async {
        let mut last = Instant::now();
        while let Some(joined) = tasks.join_next().await {
            if let Ok(passed_at) = joined {
                last = last.max(passed_at);
            }
        }
        last
    })
    .await;
    // Dropping `tasks` aborts the checks still running.
    drop(tasks);
    let result = all_passed.map_err(|_| {
        let standings = standings.lock().unwrap_or_else(|p| p.into_inner());
        let problems: Vec<String> = probes
            .iter()
            .zip(standings.iter())
            .zip(&needs)
            .filter(|((_, standing), need)| standing.passes < **need)
            .map(|((probe, standing), need)| {
                let last = standing.last_failure.as_deref().unwrap_or("no check completed");
                if standing.passes == 0 {
                    format!("probe {}: {last}", probe.name)
                } else {
                    format!(
                        "probe {}: {} of the {need} passing checks its latency guard's baseline needs at {} intervals (last failure: {last})",
                        probe.name,
                        standing.passes,
                        probes::secs(interval)
                    )
                }
            })
            .collect();
        let phase_text = match phase {
            CheckPhase::After => "did not recover",
            _ => "not steady",
        };
        one_line_long(&format!("{phase_text} within {}: {}", probes::secs(within), problems.join("; ")))
    });
    let _ = done.send(result);
}

/// A Prometheus guard: queries `query` at `url` every `every`; fires once it has
/// returned a sample at every query for `window`. A failed query counts as no sample
/// (and is warned about once).
async fn prometheus_guard(context: Arc<Shared>, url: String, query: String, window: Duration, every: Duration) {
    let mut ticker = ticker(every);
    let mut true_since: Option<Instant> = None;
    let mut warned = false;
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let wait = every.max(Duration::from_secs(1));
        let answer = tokio::time::timeout(wait, probes::prometheus_query(&url, &query))
            .await
            .unwrap_or_else(|_| Err(format!("query {query:?} at {url}: no reply within {}", probes::secs(wait))));
        match answer {
            Ok(values) if !values.is_empty() => {
                let since = *true_since.get_or_insert(now);
                if now - since >= window {
                    let guard = Guard::Prometheus { url: url.clone(), query: query.clone(), window };
                    let reason = format!(
                        "{query:?} at {url} returned {} sample(s) (first value {}) at every query for {}",
                        values.len(),
                        values[0],
                        probes::secs(now - since)
                    );
                    let at = now.saturating_duration_since(context.run_start).as_secs_f64();
                    context.watch().fire(fired(&guard, at, reason));
                    return;
                }
            }
            Ok(_) => true_since = None,
            Err(e) => {
                true_since = None;
                if !warned {
                    warned = true;
                    tracing::dispatcher::with_default(&context.dispatch, || {
                        tracing::warn!("abort guard prometheus: {}; counted as no sample", probes::one_line(&e));
                    });
                }
            }
        }
    }
}

/// The verdict and why it is not "passed" (see [`Checker::finish`]).
fn verdict(
    steady: Option<&Outcome>,
    fired: Option<&AbortReport>,
    recovery: Option<&Outcome>,
) -> (Verdict, Option<String>) {
    match steady {
        None => return (Verdict::NotJudged, Some("the steady state was not checked".to_owned())),
        Some(Outcome::Interrupted) => {
            return (Verdict::NotJudged, Some("interrupted while checking the steady state".to_owned()))
        }
        Some(Outcome::Failed(why)) => return (Verdict::NotJudged, Some(format!("before the faults: {why}"))),
        Some(Outcome::Passed(_)) => {}
    }
    let mut failures = Vec::new();
    let mut not_judged = Vec::new();
    match fired {
        Some(abort) if abort.guard == "wall-clock" => {
            not_judged.push(format!("the wall-clock guard cut the run short: {}", abort.reason))
        }
        Some(abort) => failures.push(format!("the {} guard fired: {}", abort.guard, abort.reason)),
        None => {}
    }
    match recovery {
        None => not_judged.push("recovery was not checked".to_owned()),
        Some(Outcome::Interrupted) => not_judged.push("interrupted while checking recovery".to_owned()),
        Some(Outcome::Failed(why)) => failures.push(format!("after the revert: {why}")),
        Some(Outcome::Passed(_)) => {}
    }
    if !failures.is_empty() {
        (Verdict::Failed, Some(one_line_long(&failures.join("; "))))
    } else if !not_judged.is_empty() {
        (Verdict::NotJudged, Some(one_line_long(&not_judged.join("; "))))
    } else {
        (Verdict::Passed, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abort(guard: &str) -> AbortReport {
        AbortReport { guard: guard.into(), reason: "what it saw".into(), fired_s: 2.0, revert_ms: 0.0 }
    }

    #[test]
    fn verdicts() {
        let passed = Outcome::Passed(Duration::from_millis(300));
        let failed = |why: &str| Outcome::Failed(why.to_owned());
        assert_eq!(verdict(Some(&passed), None, Some(&passed)), (Verdict::Passed, None));
        // Not steady before: the faults never ran against a steady system.
        let (v, why) = verdict(Some(&failed("not steady within 1 s: probe a: x")), None, None);
        assert_eq!(
            (v, why.unwrap()),
            (Verdict::NotJudged, "before the faults: not steady within 1 s: probe a: x".into())
        );
        assert_eq!(verdict(None, None, None).0, Verdict::NotJudged);
        assert_eq!(verdict(Some(&Outcome::Interrupted), None, None).0, Verdict::NotJudged);
        // A guard on the system's health fails it, even when it recovered.
        let (v, why) = verdict(Some(&passed), Some(&abort("error-rate")), Some(&passed));
        assert_eq!((v, why.unwrap()), (Verdict::Failed, "the error-rate guard fired: what it saw".into()));
        // Both a guard and recovery: both reasons, in that order.
        let (v, why) = verdict(Some(&passed), Some(&abort("latency")), Some(&failed("did not recover within 1 s")));
        assert_eq!(
            (v, why.unwrap()),
            (
                Verdict::Failed,
                "the latency guard fired: what it saw; after the revert: did not recover within 1 s".into()
            )
        );
        // The wall clock cut the run short: not judged, unless something failed.
        assert_eq!(verdict(Some(&passed), Some(&abort("wall-clock")), Some(&passed)).0, Verdict::NotJudged);
        assert_eq!(verdict(Some(&passed), Some(&abort("wall-clock")), Some(&failed("x"))).0, Verdict::Failed);
        // Recovery not checked, or interrupted.
        assert_eq!(verdict(Some(&passed), None, None).0, Verdict::NotJudged);
        assert_eq!(verdict(Some(&passed), None, Some(&Outcome::Interrupted)).0, Verdict::NotJudged);
    }

    /// Without a hypothesis and Prometheus guards, a checker starts no runtime.
    #[test]
    fn nothing_to_check_starts_no_thread() {
        let now = Instant::now();
        for guards in [vec![], vec![Guard::WallClock { max: Duration::from_secs(5) }]] {
            let mut checker = Checker::new("s", None, &guards, now, &Span::none()).unwrap();
            assert!(checker.runtime.is_none());
            checker.start_during();
            assert!(checker.during.is_none() && checker.fired().is_none() && checker.drain().is_empty());
            assert!(checker.finish().is_none());
        }
        let prometheus =
            Guard::Prometheus { url: "http://127.0.0.1:9".into(), query: "up".into(), window: Duration::ZERO };
        assert!(Checker::new("s", None, &[prometheus], now, &Span::none()).unwrap().runtime.is_some());
    }
}
