//! Prometheus metrics of a run: an [`Observer`] that turns the engine's events into
//! counters and gauges, and a small HTTP server that serves them at `/metrics` in the
//! text exposition format while the run is up.
//!
//! The packet counters are the kernel's per-CPU counters of each rule (summed over the
//! CPUs by the datapath, the values the report prints), never counted again here: each
//! [`Event::Progress`] and the final [`Event::StepEnded`] carry them, and a Prometheus
//! counter is advanced by what the kernel's grew since the last event. A rule installed
//! in several namespaces is one series, the sum over them.

use std::{
    collections::BTreeMap,
    io,
    net::{SocketAddr, TcpListener},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use chaos_ebpf_common::RuleCounters;
use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::run::{Event, Observer, ProbeCounts};

/// How often the metrics want the rules' counters: a scrape lags the kernel by at most
/// this (plus the engine's 10 ms poll).
pub const REFRESH: Duration = Duration::from_millis(250);

/// The labels of per-rule series.
const RULE_LABELS: &[&str] = &["scenario", "step", "rule", "fault"];

/// The metrics of one run, fed by its events.
pub struct Metrics {
    registry: Registry,
    scenario: String,
    step: String,
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
    /// The rules of the current step, by (rule id, namespace): their fault kind and the
    /// kernel counters last exported.
    rules: BTreeMap<(u32, String), (&'static str, RuleCounters)>,
    /// The probe counts of the current step last exported.
    probe: ProbeCounts,
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
                "Runs stopped early: cause interrupted (a signal), cut_short (a fault could not run its course) or error",
                &["scenario", "cause"],
            ),
            revert_seconds,
            registry,
            scenario: String::new(),
            step: String::new(),
            rules: BTreeMap::new(),
            probe: ProbeCounts::default(),
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

    /// Advances the per-rule counters to the kernel's values of (rule, namespace).
    fn rule_counters(&mut self, rule_id: u32, netns: &str, now: &RuleCounters) {
        let Some((kind, last)) = self.rules.get_mut(&(rule_id, netns.to_owned())) else {
            return;
        };
        let rule = rule_id.to_string();
        let labels = [self.scenario.as_str(), self.step.as_str(), rule.as_str(), *kind];
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

    fn probe_counts(&mut self, now: &ProbeCounts) {
        let labels = [self.scenario.as_str(), self.step.as_str()];
        for (metric, now, last) in [
            (&self.probe_sent, now.sent, self.probe.sent),
            (&self.probe_delivered, now.delivered, self.probe.delivered),
            (&self.probe_echoed, now.echoed, self.probe.echoed),
        ] {
            metric.with_label_values(&labels).inc_by(now.saturating_sub(last));
        }
        self.probe = *now;
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
                self.step = step.to_owned();
                self.rules.clear();
                self.probe = ProbeCounts::default();
                for r in rules {
                    let labels = [self.scenario.as_str(), step, &r.rule_id.to_string(), r.kind];
                    self.injections.with_label_values(&labels).inc();
                    self.active_faults.with_label_values(&labels).inc();
                    self.rules.insert((r.rule_id, r.netns), (r.kind, RuleCounters::default()));
                }
            }
            Event::Progress(progress) => {
                for r in &progress.rules {
                    self.rule_counters(r.rule_id, &r.netns, &r.counters);
                }
                if let Some(probe) = &progress.probe {
                    self.probe_counts(probe);
                }
            }
            Event::StepEnded(step) => {
                for r in &step.rules {
                    self.rule_counters(r.rule_id, &r.netns, &r.counters);
                }
                if let Some(probe) = &step.probe {
                    self.probe_counts(probe);
                }
                for ((rule_id, _), (kind, _)) in std::mem::take(&mut self.rules) {
                    let labels = [self.scenario.as_str(), self.step.as_str(), &rule_id.to_string(), kind];
                    self.active_faults.with_label_values(&labels).dec();
                }
            }
            Event::Aborted { cause, .. } => {
                self.aborts.with_label_values(&[self.scenario.as_str(), cause.name()]).inc();
            }
            Event::Reverted { seconds, .. } => {
                self.revert_seconds.with_label_values(&[self.scenario.as_str()]).set(seconds);
            }
            Event::Notice(_)
            | Event::Warning(_)
            | Event::ProgressEnd
            | Event::ProbeChecked(_)
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
    use crate::run::{AbortCause, InForce, Progress, RuleCount, RuleReport, StepReport};

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
