//! The agent's Prometheus metrics: faults in force, applies, reverts and lapses, apply
//! latency, programs and namespaces, and each fault's kernel counters (read from the
//! kernel thread at scrape time, so a scrape never lags).

use std::time::Duration;

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::api::FaultList;

pub struct AgentMetrics {
    registry: Registry,
    faults_active: IntGauge,
    applies: IntCounter,
    apply_failures: IntCounter,
    reverts: IntCounter,
    lapses: IntCounter,
    apply_seconds: Histogram,
    programs_loaded: IntGauge,
    namespaces: IntGauge,
    fault_packets: IntGaugeVec,
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let metrics = AgentMetrics {
            faults_active: gauge("chaos_agent_faults_active", "Faults the agent holds in force"),
            applies: counter("chaos_agent_applies_total", "Faults applied"),
            apply_failures: counter("chaos_agent_apply_failures_total", "Applies refused or failed"),
            reverts: counter("chaos_agent_reverts_total", "Faults reverted by a client or at the agent's stop"),
            lapses: counter("chaos_agent_lapses_total", "Faults whose lease lapsed (their client stopped renewing)"),
            apply_seconds: Histogram::with_opts(
                HistogramOpts::new("chaos_agent_apply_seconds", "Time from a request's arrival to its rules in force")
                    .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            )
            .expect("valid metric"),
            programs_loaded: gauge("chaos_agent_programs_loaded", "BPF programs the agent holds loaded"),
            namespaces: gauge("chaos_agent_namespaces", "Network namespaces the agent manages (one instance each)"),
            fault_packets: IntGaugeVec::new(
                Opts::new("chaos_agent_fault_packets", "Packets of a fault in force, by kernel counter"),
                &["fault", "kind", "target", "counter"],
            )
            .expect("valid metric"),
            registry,
        };
        for c in [&metrics.applies, &metrics.apply_failures, &metrics.reverts, &metrics.lapses] {
            metrics.registry.register(Box::new(c.clone())).expect("registered once");
        }
        for g in [&metrics.faults_active, &metrics.programs_loaded, &metrics.namespaces] {
            metrics.registry.register(Box::new(g.clone())).expect("registered once");
        }
        metrics.registry.register(Box::new(metrics.apply_seconds.clone())).expect("registered once");
        metrics.registry.register(Box::new(metrics.fault_packets.clone())).expect("registered once");
        metrics
    }

    pub fn applied(&self, took: Duration, active: usize) {
        self.applies.inc();
        self.apply_seconds.observe(took.as_secs_f64());
        self.faults_active.set(active as i64);
    }

    pub fn apply_failed(&self) {
        self.apply_failures.inc();
    }

    pub fn reverted(&self, lapsed: bool, active: usize) {
        if lapsed { &self.lapses } else { &self.reverts }.inc();
        self.faults_active.set(active as i64);
    }

    pub fn instances(&self, count: usize) {
        self.namespaces.set(count as i64);
        self.programs_loaded.set((count * chaos_ebpf_common::names::PROGRAMS.len()) as i64);
    }

    /// The text exposition, with the per-fault series of `faults` (the faults now).
    pub fn render(&self, faults: &FaultList) -> String {
        self.fault_packets.reset();
        for f in &faults.faults {
            let id = f.id.to_string();
            for (counter, value) in [
                ("seen", f.counters.seen),
                ("matched", f.counters.matched),
                ("dropped", f.counters.dropped),
                ("delayed", f.counters.delayed),
            ] {
                self.fault_packets.with_label_values(&[id.as_str(), &f.kind, &f.target, counter]).set(value as i64);
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}
