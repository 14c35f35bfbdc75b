//! Prometheus metrics of a run: an [`Observer`] that turns the engine's events into
//! counters, gauges and histograms, a small HTTP server that serves them at `/metrics` in
//! the text exposition format while the run is up, and snapshots of them in the run
//! directory (before the faults, at the middle of the run, after the revert).
//!
//! The packet counters are the kernel's per-CPU counters of each rule (summed over the
//! CPUs by the datapath, the values the report prints), never counted again here: each
//! [`Event::Progress`] and the final [`Event::StepEnded`] carry them, and a Prometheus
//! counter is advanced by what the kernel's grew since the last event. A rule installed
//! in several namespaces is one series, the sum over them. Steps may overlap: a rule's
//! series carry the step it belongs to, from its own events, never a "current" step.

use std::{
    collections::BTreeMap,
    io,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use chaos_ebpf_common::RuleCounters;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::{
    report::ProbeSample,
    run::{Event, Observer, ProbeCounts},
};

/// How often the metrics want the rules' counters: a scrape lags the kernel by at most
/// this (plus the engine's 10 ms poll).
pub const REFRESH: Duration = Duration::from_millis(250);

/// The labels of per-rule series.
const RULE_LABELS: &[&str] = &["scenario", "step", "rule", "fault"];

/// The snapshots of the metrics in the run directory, in the text exposition format: when
/// the first rules are about to be installed (after the steady-state checks), at the
/// first progress at or after half of the run's total, and after the revert. A run that
/// ends before one of the first two writes it at its revert, so all three exist.
pub const SNAPSHOT_BEFORE: &str = "metrics-before.prom";
pub const SNAPSHOT_DURING: &str = "metrics-during.prom";
pub const SNAPSHOT_AFTER: &str = "metrics-after.prom";

/// A rule in one namespace: (its step, rule id, namespace).
type RuleKey = (String, u32, String);

/// Where the snapshots go, and which are written.
struct Snapshots {
    dir: PathBuf,
    before: bool,
    during: bool,
    problems: Vec<String>,
}

/// The metrics of one run, fed by its events.
pub struct Metrics {
    registry: Registry,
    scenario: String,
    injections: IntCounterVec,
    active_faults: IntGaugeVec,
    seen: IntCounterVec,
    matched: IntCounterVec,
    dropped: IntCounterVec,
    delayed: IntCounterVec,
    probe_sent: IntCounterVec,
    probe_delivered: IntCounterVec,
    probe_echoed: IntCounterVec,
    aborts: IntCounterVec,
    revert_seconds: GaugeVec,
    probe_checks: IntCounterVec,
    probe_latency: HistogramVec,
    /// The rules in force, of every step that is up: their fault kind and the kernel
    /// counters last exported.
    rules: BTreeMap<RuleKey, (&'static str, RuleCounters)>,
    /// The lab probe's counts last exported, by step.
    probes: BTreeMap<String, ProbeCounts>,
    snapshots: Option<Snapshots>,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name and labels");
    registry.register(Box::new(metric.clone())).expect("each metric is registered once");
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let active_faults = IntGaugeVec::new(
            Opts::new("chaos_ebpf_active_faults", "Rules in force now (one per fault and target namespace)"),
            RULE_LABELS,
        )
        .expect("valid metric");
        registry.register(Box::new(active_faults.clone())).expect("registered once");
        let revert_seconds = GaugeVec::new(
            Opts::new("chaos_ebpf_revert_duration_seconds", "Time from the end of the faults to everything removed"),
            &["scenario"],
        )
        .expect("valid metric");
        registry.register(Box::new(revert_seconds.clone())).expect("registered once");
        let probe_latency = HistogramVec::new(
            HistogramOpts::new("chaos_ebpf_probe_latency_seconds", "Time one check of a hypothesis probe took"),
            &["scenario", "probe", "kind"],
        )
        .expect("valid metric");
        registry.register(Box::new(probe_latency.clone())).expect("registered once");
        let step_labels = &["scenario", "step"];
        Metrics {
            injections: counter(
                r,
                "chaos_ebpf_injections_total",
                "Rules installed (one per fault, target namespace and step)",
                RULE_LABELS,
            ),
            active_faults,
            seen: counter(r, "chaos_ebpf_packets_seen_total", "Packets the rule's classifiers looked at", RULE_LABELS),
            matched: counter(
                r,
                "chaos_ebpf_packets_matched_total",
                "Packets that matched the rule's target and peers",
                RULE_LABELS,
            ),
            dropped: counter(r, "chaos_ebpf_packets_dropped_total", "Packets the rule dropped", RULE_LABELS),
            delayed: counter(
                r,
                "chaos_ebpf_packets_delayed_total",
                "Packets the rule gave a later departure time",
                RULE_LABELS,
            ),
            probe_sent: counter(r, "chaos_ebpf_probe_packets_sent_total", "Lab probe packets sent", step_labels),
            probe_delivered: counter(
                r,
                "chaos_ebpf_probe_packets_delivered_total",
                "Lab probe packets that reached the far node",
                step_labels,
            ),
            probe_echoed: counter(
                r,
                "chaos_ebpf_probe_packets_echoed_total",
                "Lab probe packets echoed back to the sender",
                step_labels,
            ),
            aborts: counter(
                r,
                "chaos_ebpf_aborts_total",
                "Runs stopped early: cause interrupted (a signal), cut_short (a fault could not run its course), \
                 guard (an abort guard of the scenario fired) or error",
                &["scenario", "cause"],
            ),
            probe_checks: counter(
                r,
                "chaos_ebpf_probe_checks_total",
                "Checks of the hypothesis' probes, by phase (before, during, after) and result (ok, failed)",
                &["scenario", "probe", "kind", "phase", "result"],
            ),
            probe_latency,
            revert_seconds,
            registry,
            scenario: String::new(),
            rules: BTreeMap::new(),
            probes: BTreeMap::new(),
            snapshots: None,
        }
    }

    /// Also writes the snapshots ([`SNAPSHOT_BEFORE`], ...) to `dir`, the run directory.
    pub fn with_snapshots(mut self, dir: &Path) -> Self {
        self.snapshots = Some(Snapshots { dir: dir.to_owned(), before: false, during: false, problems: Vec::new() });
        self
    }

    /// Snapshots that could not be written (the run goes on without them): one line each.
    pub fn snapshot_problems(&self) -> &[String] {
        self.snapshots.as_ref().map_or(&[], |s| &s.problems)
    }

    fn snapshot(&mut self, name: &str) {
        let text = self.text();
        let Some(snapshots) = &mut self.snapshots else { return };
        let path = snapshots.dir.join(name);
        if let Err(e) = std::fs::write(&path, text) {
            snapshots.problems.push(format!("cannot write {}: {e}", path.display()));
        }
    }

    /// The "before" snapshot, once.
    fn snapshot_before(&mut self) {
        if self.snapshots.as_ref().is_some_and(|s| !s.before) {
            self.snapshot(SNAPSHOT_BEFORE);
            self.snapshots.as_mut().expect("checked above").before = true;
        }
    }

    /// The "during" snapshot, once.
    fn snapshot_during(&mut self) {
        if self.snapshots.as_ref().is_some_and(|s| !s.during) {
            self.snapshot(SNAPSHOT_DURING);
            self.snapshots.as_mut().expect("checked above").during = true;
        }
    }

    /// The registry the server gathers from.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The metrics in the text exposition format, as `/metrics` serves them.
    pub fn text(&self) -> String {
        encode(&self.registry)
    }

    /// Advances the per-rule counters to the kernel's values of (step, rule, namespace).
    fn rule_counters(&mut self, step: &str, rule_id: u32, netns: &str, now: &RuleCounters) {
        let Some((kind, last)) = self.rules.get_mut(&(step.to_owned(), rule_id, netns.to_owned())) else {
            return;
        };
        let rule = rule_id.to_string();
        let labels = [self.scenario.as_str(), step, rule.as_str(), *kind];
        // The kernel's counters only grow while a rule is installed (install zeroes them).
        for (metric, now, last) in [
            (&self.seen, now.seen, last.seen),
            (&self.matched, now.matched, last.matched),
            (&self.dropped, now.dropped, last.dropped),
            (&self.delayed, now.delayed, last.delayed),
        ] {
            metric.with_label_values(&labels).inc_by(now.saturating_sub(last));
        }
        *last = *now;
    }

    /// Advances the lab probe's counters of `step` to its counts since the step started.
    fn probe_counts(&mut self, step: &str, now: &ProbeCounts) {
        let labels = [self.scenario.as_str(), step];
        let last = self.probes.entry(step.to_owned()).or_default();
        for (metric, now, last) in [
            (&self.probe_sent, now.sent, last.sent),
            (&self.probe_delivered, now.delivered, last.delivered),
            (&self.probe_echoed, now.echoed, last.echoed),
        ] {
            metric.with_label_values(&labels).inc_by(now.saturating_sub(last));
        }
        *last = *now;
    }

    fn probe_checked(&mut self, sample: &ProbeSample) {
        let result = if sample.ok { "ok" } else { "failed" };
        let (scenario, probe, kind) = (self.scenario.as_str(), sample.probe.as_str(), sample.kind.as_str());
        self.probe_checks.with_label_values(&[scenario, probe, kind, sample.phase.name(), result]).inc();
        self.probe_latency.with_label_values(&[scenario, probe, kind]).observe(sample.latency_ms.max(0.0) / 1000.0);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Observer for Metrics {
    fn progress_every(&self, _total: Duration) -> Option<Duration> {
        Some(REFRESH)
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Started { scenario, .. } => self.scenario = scenario.to_owned(),
            Event::RulesInstalled { step, rules } => {
                // The state before the first fault (after the steady-state checks).
                self.snapshot_before();
                for r in rules {
                    let labels = [self.scenario.as_str(), step, &r.rule_id.to_string(), r.kind];
                    self.injections.with_label_values(&labels).inc();
                    // Installing zeroes the kernel's counters; a rule installed again
                    // (a new window of its step) is still one rule in force.
                    let key = (step.to_owned(), r.rule_id, r.netns);
                    if self.rules.insert(key, (r.kind, RuleCounters::default())).is_none() {
                        self.active_faults.with_label_values(&labels).inc();
                    }
                }
            }
            Event::Progress(progress) => {
                for r in &progress.rules {
                    self.rule_counters(&r.step, r.rule_id, &r.netns, &r.counters);
                }
                if let Some(probe) = &progress.probe {
                    self.probe_counts(progress.step, probe);
                }
                if progress.elapsed >= progress.total / 2 {
                    self.snapshot_during();
                }
            }
            Event::RulesRemoved { step, rules } => {
                // A window's final counters; the rule is out of force until (and unless)
                // its next window installs it again from zero.
                for r in &rules {
                    self.rule_counters(step, r.rule_id, &r.netns, &r.counters);
                    if let Some((kind, _)) = self.rules.remove(&(step.to_owned(), r.rule_id, r.netns.clone())) {
                        let labels = [self.scenario.as_str(), step, &r.rule_id.to_string(), kind];
                        self.active_faults.with_label_values(&labels).dec();
                    }
                }
            }
            Event::StepEnded(step) => {
                for r in &step.rules {
                    self.rule_counters(&step.name, r.rule_id, &r.netns, &r.counters);
                }
                if let Some(probe) = &step.probe {
                    self.probe_counts(&step.name, probe);
                }
                self.probes.remove(&step.name);
                let ended: Vec<RuleKey> = self.rules.keys().filter(|(s, _, _)| *s == step.name).cloned().collect();
                for key in ended {
                    let (kind, _) = self.rules.remove(&key).expect("listed above");
                    let labels = [self.scenario.as_str(), step.name.as_str(), &key.1.to_string(), kind];
                    self.active_faults.with_label_values(&labels).dec();
                }
            }
            Event::ProbeChecked(sample) => self.probe_checked(sample),
            Event::Aborted { cause, .. } => {
                self.aborts.with_label_values(&[self.scenario.as_str(), cause.name()]).inc();
            }
            Event::Reverted { seconds, .. } => {
                self.revert_seconds.with_label_values(&[self.scenario.as_str()]).set(seconds);
                // A run that stopped before its first fault or its middle still has all
                // three snapshots.
                self.snapshot_before();
                self.snapshot_during();
                self.snapshot(SNAPSHOT_AFTER);
            }
            Event::Notice(_)
            | Event::Warning(_)
            | Event::ProgressEnd
            | Event::PhaseStarted { .. }
            | Event::PhaseEnded { .. } => {}
        }
    }
}

fn encode(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    // Encoding a gathered registry into memory cannot fail for valid metric families.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buffer);
    String::from_utf8(buffer).unwrap_or_default()
}

/// The HTTP endpoint: `GET /metrics` on its own thread, until dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Listens on `addr` and serves `registry`. The bind error is returned as it is
    /// (`AddrInUse` for a port in use), before anything else happens.
    pub fn start(addr: SocketAddr, registry: &Registry) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let server = Arc::new(tiny_http::Server::from_listener(listener, None).map_err(io::Error::other)?);
        let (serving, registry) = (server.clone(), registry.clone());
        let thread = std::thread::Builder::new().name("metrics".into()).spawn(move || {
            // Ends when `unblock` is called (the iterator then returns None).
            for request in serving.incoming_requests() {
                let response = if request.url() == "/metrics" || request.url().starts_with("/metrics?") {
                    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], TextEncoder::new().format_type())
                        .expect("a valid header");
                    tiny_http::Response::from_string(encode(&registry)).with_header(header)
                } else {
                    tiny_http::Response::from_string("not found: metrics are at /metrics\n").with_status_code(404)
                };
                let _ = request.respond(response);
            }
        })?;
        Ok(MetricsServer { server, thread: Some(thread), addr })
    }

    /// The address it listens on (the port the kernel chose for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    /// Stops serving: the thread ends, and the listening socket is closed with the last
    /// reference to the server.
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        report::CheckPhase,
        run::{AbortCause, InForce, Progress, RuleCount, RuleReport, StepReport},
    };

    fn counters(matched: u64, dropped: u64) -> RuleCounters {
        RuleCounters { seen: matched + 5, matched, dropped, ..RuleCounters::default() }
    }

    /// The value of the series of `name` whose labels include each of `labels`.
    fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| labels.iter().all(|label| l.contains(label)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    fn rule_report(rule_id: u32, netns: &str, c: RuleCounters) -> RuleReport {
        RuleReport {
            rule_id,
            fault: "loss on netns:a p=0.3".into(),
            target: "netns:a".into(),
            netns: netns.into(),
            counters: c,
            active_from_unix_ms: 0,
            active_to_unix_ms: 0,
            ended: "completed".into(),
            ran_its_course: true,
        }
    }

    fn step_report(name: &str, rules: Vec<RuleReport>, probe: Option<ProbeCounts>) -> StepReport {
        StepReport {
            name: name.into(),
            seed: 1,
            planned_start_s: 0.0,
            planned_end_s: 1.0,
            seconds: 1.0,
            windows: Vec::new(),
            rules,
            probe,
            action: None,
            ran_its_course: true,
        }
    }

    /// A step's events: the counters follow the kernel's values (summed over the
    /// namespaces of a rule), end at the report's, and the gauges go back to 0.
    #[test]
    fn counters_follow_the_kernel_values_and_end_at_the_report() {
        let mut m = Metrics::new();
        m.event(Event::Started { scenario: "inject loss", seed: 1, total: Duration::from_secs(10) });
        let in_force = |netns: &str| InForce { rule_id: 1, kind: "loss", netns: netns.into() };
        m.event(Event::RulesInstalled { step: "loss", rules: vec![in_force("/a"), in_force("/b")] });
        let rule = ["scenario=\"inject loss\"", "step=\"loss\"", "rule=\"1\"", "fault=\"loss\""];
        assert_eq!(value(&m.text(), "chaos_ebpf_injections_total", &rule), Some(2.0));
        assert_eq!(value(&m.text(), "chaos_ebpf_active_faults", &rule), Some(2.0));
        let progress = |a: RuleCounters, b: RuleCounters| {
            Event::Progress(Progress {
                elapsed: Duration::from_secs(1),
                total: Duration::from_secs(10),
                step: "loss",
                rules: vec![
                    RuleCount { step: "loss".into(), rule_id: 1, netns: "/a".into(), counters: a },
                    RuleCount { step: "loss".into(), rule_id: 1, netns: "/b".into(), counters: b },
                ],
                probe: Some(ProbeCounts { sent: 10, delivered: 7, echoed: 5 }),
            })
        };
        m.event(progress(counters(100, 30), counters(10, 3)));
        assert_eq!(value(&m.text(), "chaos_ebpf_packets_dropped_total", &rule), Some(33.0));
        assert_eq!(value(&m.text(), "chaos_ebpf_packets_matched_total", &rule), Some(110.0));
        m.event(progress(counters(200, 61), counters(10, 3)));
        assert_eq!(value(&m.text(), "chaos_ebpf_packets_dropped_total", &rule), Some(64.0));
        assert_eq!(value(&m.text(), "chaos_ebpf_packets_seen_total", &rule), Some(220.0));
        let step = step_report(
            "loss",
            vec![rule_report(1, "/a", counters(250, 77)), rule_report(1, "/b", counters(12, 4))],
            Some(ProbeCounts { sent: 20, delivered: 14, echoed: 9 }),
        );
        m.event(Event::StepEnded(&step));
        let text = m.text();
        assert_eq!(value(&text, "chaos_ebpf_packets_dropped_total", &rule), Some(81.0));
        assert_eq!(value(&text, "chaos_ebpf_active_faults", &rule), Some(0.0));
        let step_labels = ["scenario=\"inject loss\"", "step=\"loss\""];
        assert_eq!(value(&text, "chaos_ebpf_probe_packets_sent_total", &step_labels), Some(20.0));
        assert_eq!(value(&text, "chaos_ebpf_probe_packets_echoed_total", &step_labels), Some(9.0));
        m.event(Event::Aborted { cause: AbortCause::Interrupted, reason: "signal".into() });
        m.event(Event::Reverted { seconds: 0.0125, clean: true });
        let text = m.text();
        assert_eq!(value(&text, "chaos_ebpf_aborts_total", &["cause=\"interrupted\""]), Some(1.0));
        assert_eq!(value(&text, "chaos_ebpf_revert_duration_seconds", &["scenario=\"inject loss\""]), Some(0.0125));
        assert!(text.contains("# TYPE chaos_ebpf_packets_dropped_total counter"), "{text}");
    }

    /// A second step with the same rule starts from the kernel's zeroed counters: the
    /// series of each step counts its own packets.
    #[test]
    fn each_step_has_its_own_series() {
        let mut m = Metrics::new();
        m.event(Event::Started { scenario: "s", seed: 1, total: Duration::from_secs(10) });
        for (step, dropped) in [("one", 40), ("two", 7)] {
            m.event(Event::RulesInstalled {
                step,
                rules: vec![InForce { rule_id: 3, kind: "partition", netns: "/a".into() }],
            });
            let report = step_report(step, vec![rule_report(3, "/a", counters(50, dropped))], None);
            m.event(Event::StepEnded(&report));
        }
        let text = m.text();
        assert_eq!(value(&text, "chaos_ebpf_packets_dropped_total", &["step=\"one\""]), Some(40.0));
        assert_eq!(value(&text, "chaos_ebpf_packets_dropped_total", &["step=\"two\""]), Some(7.0));
    }

    fn progress_event<'a>(elapsed: u64, step: &'a str, rules: Vec<RuleCount>, probe: Option<ProbeCounts>) -> Event<'a> {
        Event::Progress(Progress {
            elapsed: Duration::from_secs(elapsed),
            total: Duration::from_secs(10),
            step,
            rules,
            probe,
        })
    }

    fn count(step: &str, rule_id: u32, c: RuleCounters) -> RuleCount {
        RuleCount { step: step.into(), rule_id, netns: "/a".into(), counters: c }
    }

    /// A duty cycle: each window installs the rule from zero and removes it with its
    /// final counters; the series count every window once (also when the step's report
    /// then gives the sum), and the rule is out of force between windows.
    #[test]
    fn duty_cycle_windows_count_once() {
        let mut m = Metrics::new();
        m.event(Event::Started { scenario: "s", seed: 1, total: Duration::from_secs(10) });
        let labels = ["step=\"flap\"", "rule=\"4\""];
        let count = |dropped| RuleCount {
            step: "flap".into(),
            rule_id: 4,
            netns: "/a".into(),
            counters: counters(200, dropped),
        };
        for (mid, last) in [(100, 120), (30, 50)] {
            m.event(Event::RulesInstalled {
                step: "flap",
                rules: vec![InForce { rule_id: 4, kind: "partition", netns: "/a".into() }],
            });
            assert_eq!(value(&m.text(), "chaos_ebpf_active_faults", &labels), Some(1.0));
            m.event(Event::Progress(Progress {
                elapsed: Duration::from_secs(1),
                total: Duration::from_secs(10),
                step: "flap",
                rules: vec![count(mid)],
                probe: None,
            }));
            m.event(Event::RulesRemoved { step: "flap", rules: vec![count(last)] });
            assert_eq!(value(&m.text(), "chaos_ebpf_active_faults", &labels), Some(0.0));
        }
        m.event(Event::StepEnded(&step_report("flap", vec![rule_report(4, "/a", counters(400, 170))], None)));
        assert_eq!(value(&m.text(), "chaos_ebpf_packets_dropped_total", &labels), Some(170.0));
        assert_eq!(value(&m.text(), "chaos_ebpf_injections_total", &labels), Some(2.0));
    }

    /// Two steps up at once, the same rule id in both: each rule's counters go to its own
    /// step's series (from its own events), and the end of one step ends only its rules.
    #[test]
    fn overlapping_steps_keep_their_own_series() {
        let mut m = Metrics::new();
        m.event(Event::Started { scenario: "s", seed: 1, total: Duration::from_secs(10) });
        let rule = |kind| vec![InForce { rule_id: 1, kind, netns: "/a".into() }];
        m.event(Event::RulesInstalled { step: "loss", rules: rule("loss") });
        m.event(Event::RulesInstalled { step: "slow", rules: rule("delay") });
        let loss = ["step=\"loss\"", "fault=\"loss\""];
        let slow = ["step=\"slow\"", "fault=\"delay\""];
        let both = vec![count("loss", 1, counters(100, 30)), count("slow", 1, counters(40, 0))];
        m.event(progress_event(2, "slow", both, Some(ProbeCounts { sent: 4, delivered: 4, echoed: 4 })));
        let text = m.text();
        assert_eq!(value(&text, "chaos_ebpf_packets_dropped_total", &loss), Some(30.0), "{text}");
        assert_eq!(value(&text, "chaos_ebpf_packets_matched_total", &slow), Some(40.0), "{text}");
        assert_eq!(value(&text, "chaos_ebpf_active_faults", &loss), Some(1.0));
        assert_eq!(value(&text, "chaos_ebpf_active_faults", &slow), Some(1.0));
        let ended = step_report("loss", vec![rule_report(1, "/a", counters(120, 35))], None);
        m.event(Event::StepEnded(&ended));
        m.event(progress_event(3, "slow", vec![count("slow", 1, counters(90, 0))], None));
        // A late count of the ended step's rule is not counted again.
        m.event(progress_event(3, "slow", vec![count("loss", 1, counters(500, 200))], None));
        let text = m.text();
        assert_eq!(value(&text, "chaos_ebpf_packets_dropped_total", &loss), Some(35.0), "{text}");
        assert_eq!(value(&text, "chaos_ebpf_active_faults", &loss), Some(0.0));
        assert_eq!(value(&text, "chaos_ebpf_active_faults", &slow), Some(1.0));
        assert_eq!(value(&text, "chaos_ebpf_packets_matched_total", &slow), Some(90.0), "{text}");
        assert_eq!(value(&text, "chaos_ebpf_probe_packets_sent_total", &["step=\"slow\""]), Some(4.0));
        let ended = step_report("slow", vec![rule_report(1, "/a", counters(95, 0))], None);
        m.event(Event::StepEnded(&ended));
        let text = m.text();
        assert_eq!(value(&text, "chaos_ebpf_active_faults", &slow), Some(0.0));
        assert_eq!(value(&text, "chaos_ebpf_packets_matched_total", &slow), Some(95.0));
        assert!(m.rules.is_empty() && m.probes.is_empty());
    }

    fn sample(probe: &str, phase: CheckPhase, ok: bool, latency_ms: f64) -> ProbeSample {
        ProbeSample { probe: probe.into(), kind: "http".into(), phase, t_s: 0.0, ok, latency_ms, detail: String::new() }
    }

    /// Probe checks are counted by phase and result, their latency observed in seconds;
    /// a guard's abort is counted with cause "guard".
    #[test]
    fn probe_checks_and_guard_aborts() {
        let mut m = Metrics::new();
        m.event(Event::Started { scenario: "s", seed: 1, total: Duration::from_secs(10) });
        for s in [
            sample("web", CheckPhase::Before, true, 20.0),
            sample("web", CheckPhase::During, true, 40.0),
            sample("web", CheckPhase::During, false, 2000.0),
            sample("web", CheckPhase::During, false, 3000.0),
        ] {
            m.event(Event::ProbeChecked(&s));
        }
        m.event(Event::Aborted { cause: AbortCause::Guard, reason: "web failed twice".into() });
        let text = m.text();
        let checks = |phase: &str, result: &str| {
            value(
                &text,
                "chaos_ebpf_probe_checks_total",
                &["probe=\"web\"", "kind=\"http\"", &format!("phase=\"{phase}\""), &format!("result=\"{result}\"")],
            )
        };
        assert_eq!(
            (checks("before", "ok"), checks("during", "ok"), checks("during", "failed")),
            (Some(1.0), Some(1.0), Some(2.0))
        );
        assert_eq!(checks("before", "failed"), None);
        let latency = |suffix: &str, extra: &[&str]| {
            let labels: Vec<&str> =
                ["scenario=\"s\"", "probe=\"web\"", "kind=\"http\""].iter().chain(extra).copied().collect();
            value(&text, &format!("chaos_ebpf_probe_latency_seconds{suffix}"), &labels)
        };
        assert_eq!(latency("_count", &[]), Some(4.0), "{text}");
        assert!((latency("_sum", &[]).unwrap() - 5.06).abs() < 1e-9, "{text}");
        assert_eq!(latency("_bucket", &["le=\"0.05\""]), Some(2.0), "{text}");
        assert!(text.contains("# TYPE chaos_ebpf_probe_latency_seconds histogram"), "{text}");
        assert_eq!(value(&text, "chaos_ebpf_aborts_total", &["cause=\"guard\""]), Some(1.0), "{text}");
    }

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("chaos-metrics-unit-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn read(&self, name: &str) -> String {
            std::fs::read_to_string(self.0.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Before: written as the first rules are installed, without them; during: at the first
    /// progress at half of the total; after: at the revert, with the final counters.
    #[test]
    fn snapshots_before_during_and_after() {
        let dir = TempDir::new("snap");
        let mut m = Metrics::new().with_snapshots(&dir.0);
        m.event(Event::Started { scenario: "s", seed: 1, total: Duration::from_secs(10) });
        let steady = sample("web", CheckPhase::Before, true, 5.0);
        m.event(Event::ProbeChecked(&steady));
        m.event(Event::RulesInstalled {
            step: "loss",
            rules: vec![InForce { rule_id: 1, kind: "loss", netns: "/a".into() }],
        });
        assert!(!dir.0.join(SNAPSHOT_DURING).exists());
        m.event(progress_event(4, "loss", vec![count("loss", 1, counters(10, 2))], None));
        assert!(!dir.0.join(SNAPSHOT_DURING).exists(), "4 s of 10 is before the middle");
        m.event(progress_event(5, "loss", vec![count("loss", 1, counters(50, 20))], None));
        m.event(progress_event(8, "loss", vec![count("loss", 1, counters(80, 30))], None));
        let ended = step_report("loss", vec![rule_report(1, "/a", counters(100, 40))], None);
        m.event(Event::StepEnded(&ended));
        m.event(Event::Reverted { seconds: 0.01, clean: true });
        let dropped = "chaos_ebpf_packets_dropped_total";
        let before = dir.read(SNAPSHOT_BEFORE);
        assert_eq!(value(&before, "chaos_ebpf_probe_checks_total", &["phase=\"before\""]), Some(1.0), "{before}");
        assert_eq!(value(&before, "chaos_ebpf_injections_total", &[]), None, "{before}");
        let during = dir.read(SNAPSHOT_DURING);
        assert_eq!(value(&during, dropped, &["step=\"loss\""]), Some(20.0), "{during}");
        assert_eq!(value(&during, "chaos_ebpf_active_faults", &[]), Some(1.0), "{during}");
        let after = dir.read(SNAPSHOT_AFTER);
        assert_eq!(value(&after, dropped, &["step=\"loss\""]), Some(40.0), "{after}");
        assert_eq!(value(&after, "chaos_ebpf_revert_duration_seconds", &[]), Some(0.01), "{after}");
        assert!(m.snapshot_problems().is_empty());
    }

    /// A run interrupted before its first fault still gets all three snapshots; a
    /// directory that cannot be written is a problem listed, not a failed run.
    #[test]
    fn snapshots_of_a_run_stopped_early() {
        let dir = TempDir::new("early");
        let mut m = Metrics::new().with_snapshots(&dir.0);
        m.event(Event::Started { scenario: "s", seed: 1, total: Duration::from_secs(10) });
        m.event(Event::Aborted { cause: AbortCause::Interrupted, reason: "signal".into() });
        m.event(Event::Reverted { seconds: 0.0, clean: true });
        for name in [SNAPSHOT_BEFORE, SNAPSHOT_DURING, SNAPSHOT_AFTER] {
            assert!(dir.read(name).contains("chaos_ebpf_aborts_total"), "{name}");
        }
        let mut m = Metrics::new().with_snapshots(&dir.0.join("missing"));
        m.event(Event::Reverted { seconds: 0.0, clean: true });
        assert_eq!(m.snapshot_problems().len(), 3, "{:?}", m.snapshot_problems());
        assert!(m.snapshot_problems()[0].contains("metrics-before.prom"), "{:?}", m.snapshot_problems());
    }

    /// The server answers /metrics with the text format, 404 elsewhere, and is gone
    /// (connection refused) once dropped.
    #[test]
    fn server_serves_until_dropped() {
        use std::io::{Read, Write};
        let mut m = Metrics::new();
        m.event(Event::Started { scenario: "s", seed: 1, total: Duration::from_secs(1) });
        m.event(Event::Aborted { cause: AbortCause::CutShort, reason: "lease".into() });
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), m.registry()).expect("bind");
        let addr = server.addr();
        let get = |path: &str| -> io::Result<String> {
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        };
        let page = get("/metrics").expect("scrape");
        assert!(page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.contains("text/plain; version=0.0.4"), "{page}");
        assert!(page.contains("chaos_ebpf_aborts_total{cause=\"cut_short\",scenario=\"s\"} 1"), "{page}");
        assert!(get("/").expect("404 page").contains(" 404 "));
        let busy = MetricsServer::start(addr, m.registry()).err().expect("a second server on the same port");
        assert_eq!(busy.kind(), io::ErrorKind::AddrInUse);
        drop(server);
        assert!(get("/metrics").is_err(), "the server is gone after drop");
    }
}
