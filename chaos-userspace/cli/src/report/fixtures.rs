//! Run reports for the renderers' tests, built by hand so that the renderers are tested
//! on every section whatever the engine fills in today: two steps that overlap, a duty
//! cycle of three windows, two probes checked in every phase, an abort by a guard, a
//! revert, the cleanup list and the topology.

use std::path::{Path, PathBuf};

use chaos_ebpf_common::RuleCounters;
use chaos_engine::report::{
    AbortReport, CheckPhase, CounterSample, CreatedObject, HypothesisReport, InterfaceSnapshot, ProbeCounts,
    ProbeSample, ProbeSummary, RuleReport, RunReport, StepReport, TargetSnapshot, Verdict, WindowReport,
};
use chaos_model::plan::{Plan, Window};

pub const START_MS: u64 = 1_795_795_056_000;

pub const SCENARIO: &str = "\
apiVersion: chaos-ebpf/v1
name: rich
seed: 42
targets:
  a: netns:chaos-lab-n1
  b: netns:chaos-lab-n2
steps:
  - name: flaky-link
    fault: loss
    target: a
    probability: 0.3
    duration: 6s
  - name: slow-peer
    fault: loss
    target: b
    probability: 0.1
    duration: 5s
";

/// The scenario's plan, with the two steps overlapping and the first one a duty cycle
/// of three windows (the shapes the engine runs; the file syntax is not needed here).
pub fn plan() -> Plan {
    let mut plan = chaos_model::scenario::parse("rich.yaml", SCENARIO).expect("the fixture scenario is valid");
    let secs = std::time::Duration::from_secs_f64;
    let flaky = &mut plan.steps[0];
    flaky.start = secs(1.0);
    flaky.duration = secs(5.0);
    flaky.windows = vec![
        Window { start: secs(1.0), end: secs(2.0), intensity: 1.0 },
        Window { start: secs(3.0), end: secs(4.0), intensity: 1.0 },
        Window { start: secs(5.0), end: secs(6.0), intensity: 1.0 },
    ];
    let slow = &mut plan.steps[1];
    slow.start = secs(2.0);
    slow.duration = secs(5.0);
    slow.windows = vec![Window { start: secs(2.0), end: secs(7.0), intensity: 0.5 }];
    plan
}

fn counters(matched: u64, dropped: u64) -> RuleCounters {
    RuleCounters { seen: matched + 7, matched, dropped, passed: matched - dropped, ..Default::default() }
}

fn window(start: f64, end: f64, intensity: f64, ran: Option<(f64, f64)>) -> WindowReport {
    WindowReport {
        planned_start_s: start,
        planned_end_s: end,
        intensity,
        started_s: ran.map(|r| r.0),
        ended_s: ran.map(|r| r.1),
    }
}

fn rule(rule_id: u32, fault: &str, target: &str, netns: &str, matched: u64, dropped: u64, ran: bool) -> RuleReport {
    RuleReport {
        rule_id,
        fault: fault.into(),
        target: target.into(),
        netns: netns.into(),
        counters: counters(matched, dropped),
        active_from_unix_ms: START_MS + 1000,
        active_to_unix_ms: START_MS + 6000,
        ended: if ran { "completed".into() } else { "aborted: error-rate guard".into() },
        ran_its_course: ran,
    }
}

fn probe_sample(probe: &str, kind: &str, phase: CheckPhase, t_s: f64, ok: bool, latency_ms: f64) -> ProbeSample {
    ProbeSample {
        probe: probe.into(),
        kind: kind.into(),
        phase,
        t_s,
        ok,
        latency_ms,
        detail: if ok { String::new() } else { "timed out after 500 ms".into() },
    }
}

fn summary(probe: &str, kind: &str, phase: CheckPhase, checks: u64, failures: u64, p50: f64, p95: f64) -> ProbeSummary {
    ProbeSummary { probe: probe.into(), kind: kind.into(), phase, checks, failures, p50_ms: p50, p95_ms: p95 }
}

/// Everything filled in: the second step cut short by an abort guard.
pub fn rich_report() -> RunReport {
    let n1 = "/run/netns/chaos-lab-n1";
    let n2 = "/run/netns/chaos-lab-n2";
    let steps = vec![
        StepReport {
            name: "flaky-link".into(),
            seed: 0x1234_5678_9abc_def0,
            planned_start_s: 1.0,
            planned_end_s: 6.0,
            seconds: 5.01,
            windows: vec![
                window(1.0, 2.0, 1.0, Some((1.003, 2.004))),
                window(3.0, 4.0, 1.0, Some((3.002, 4.001))),
                window(5.0, 6.0, 1.0, Some((5.004, 6.002))),
            ],
            rules: vec![rule(1, "loss on netns:a p=0.3 dir=both", "netns:a", n1, 300, 91, true)],
            probe: Some(ProbeCounts { sent: 1000, delivered: 702, echoed: 690 }),
            action: None,
            ran_its_course: true,
        },
        StepReport {
            name: "slow-peer".into(),
            seed: 77,
            planned_start_s: 2.0,
            planned_end_s: 7.0,
            seconds: 3.5,
            windows: vec![window(2.0, 7.0, 0.5, Some((2.001, 5.5)))],
            rules: vec![rule(2, "loss on netns:b p=0.1 dir=both", "netns:b", n2, 400, 22, false)],
            probe: None,
            action: None,
            ran_its_course: false,
        },
    ];
    let mut samples = Vec::new();
    for i in 0..=14 {
        let t_s = 1.0 + i as f64 * 0.5;
        let k = i as u64;
        samples.push(CounterSample {
            t_s,
            step: "flaky-link".into(),
            rule_id: 1,
            netns: n1.into(),
            seen: 25 * k,
            matched: 20 * k,
            dropped: 6 * k,
            delayed: 0,
        });
        if (2.0..=5.5).contains(&t_s) {
            samples.push(CounterSample {
                t_s,
                step: "slow-peer".into(),
                rule_id: 2,
                netns: n2.into(),
                seen: 60 * k,
                matched: 50 * k,
                dropped: 3 * k,
                delayed: 0,
            });
        }
    }
    let mut probe_samples = Vec::new();
    for (probe, kind, base) in [("api", "http", 12.0), ("db", "tcp", 3.0)] {
        for i in 0..4 {
            probe_samples.push(probe_sample(probe, kind, CheckPhase::Before, i as f64 * 0.25, true, base + i as f64));
        }
        for i in 0..16 {
            let t_s = 1.0 + i as f64 * 0.3;
            let ok = i % 5 != 4;
            probe_samples.push(probe_sample(probe, kind, CheckPhase::During, t_s, ok, base * 3.0 + i as f64));
        }
        for i in 0..4 {
            probe_samples.push(probe_sample(probe, kind, CheckPhase::After, 6.0 + i as f64 * 0.25, true, base + 1.0));
        }
    }
    let mut probes = Vec::new();
    for (probe, kind, base) in [("api", "http", 12.0), ("db", "tcp", 3.0)] {
        probes.push(summary(probe, kind, CheckPhase::Before, 4, 0, base + 1.0, base + 3.0));
        probes.push(summary(probe, kind, CheckPhase::During, 16, 3, base * 3.0 + 7.0, base * 3.0 + 15.0));
        probes.push(summary(probe, kind, CheckPhase::After, 4, 0, base + 1.0, base + 1.0));
    }
    RunReport {
        scenario: "rich".into(),
        seed: 42,
        started_unix_ms: START_MS,
        ended_unix_ms: START_MS + 7_250,
        faults_start_unix_ms: START_MS + 500,
        interrupted: false,
        failed: None,
        abort: Some(AbortReport {
            guard: "error-rate".into(),
            reason: "api: 3 of 16 checks failed (19% > 10%)".into(),
            fired_s: 5.5,
            revert_ms: 14.2,
        }),
        steps,
        hypothesis: Some(HypothesisReport {
            verdict: Verdict::Failed,
            reason: Some("aborted by the error-rate guard".into()),
            steady_before: true,
            recovered_after_s: Some(0.4),
            probes,
            outages: HypothesisReport::longest_outages(&probe_samples),
            samples: probe_samples,
        }),
        samples,
        revert_ms: 18.7,
        clean: true,
        revert_problems: Vec::new(),
        topology: vec![TargetSnapshot {
            target: "netns:a".into(),
            netns: n1.into(),
            interfaces: vec![InterfaceSnapshot {
                name: "eth0".into(),
                ifindex: 2,
                addresses: vec!["192.0.2.1/24".into()],
            }],
            cgroup: None,
        }],
        cleanup: vec![
            CreatedObject {
                kind: "tcx-link".into(),
                what: "link 31 on eth0 egress".into(),
                netns: n1.into(),
                gone: true,
                proof: "no link with id 31 in BPF_LINK_GET_NEXT_ID".into(),
            },
            CreatedObject {
                kind: "program".into(),
                what: "program 812 chaos_egress".into(),
                netns: n1.into(),
                gone: true,
                proof: "no program with id 812 in BPF_PROG_GET_NEXT_ID".into(),
            },
        ],
        qdisc_changes: Vec::new(),
        agent: None,
    }
}

/// One step that ran its course, no hypothesis, no abort.
pub fn passing_report() -> RunReport {
    let mut report = rich_report();
    report.steps.truncate(1);
    report.abort = None;
    report.hypothesis = None;
    report.samples.retain(|s| s.step == "flaky-link");
    report
}

/// What another run of the same scenario and seed measures differently: counters,
/// latencies, probe checks (and how many), revert times, wall-clock stamps.
pub fn change_measured_values(report: &mut RunReport) {
    report.started_unix_ms += 86_400_000;
    report.ended_unix_ms += 86_400_000 + 13;
    report.revert_ms += 3.1;
    for step in &mut report.steps {
        step.seconds += 0.02;
        for rule in &mut step.rules {
            rule.counters.matched += 5;
            rule.counters.dropped += 2;
            rule.counters.seen += 9;
        }
    }
    for sample in &mut report.samples {
        sample.matched += 3;
    }
    if let Some(h) = &mut report.hypothesis {
        for sample in &mut h.samples {
            sample.latency_ms *= 1.5;
        }
        let extra = h.samples[5].clone();
        h.samples.push(extra);
    }
}

/// The spans.jsonl the engine writes for a report like this (the shape of spans.rs's
/// records): run > cleanup, step > inject, revert, probe checks; run > revert. Ids,
/// times and counters come from the report, so changed measured values change them.
pub fn spans_jsonl(report: &RunReport) -> String {
    const RUN_ID: u64 = 1000;
    use serde_json::json;
    let start_ns = report.started_unix_ms * 1_000_000;
    let mut next_id = 1u64;
    let mut lines = Vec::new();
    let mut span = |name: &str, parent: Option<(u64, &str)>, t: (f64, f64), attributes: serde_json::Value| {
        // The run span closes last but is the parent of all: its id is fixed.
        let id = if name == "run" { RUN_ID } else { next_id };
        next_id += 1;
        lines.push(
            json!({
                "name": name,
                "id": id,
                "parent_id": parent.map(|p| p.0),
                "parent": parent.map(|p| p.1),
                "start_unix_ns": start_ns + (t.0 * 1e9) as u64,
                "end_unix_ns": start_ns + (t.1 * 1e9) as u64,
                "status": "ok",
                "attributes": attributes,
            })
            .to_string(),
        );
        id
    };
    let run = RUN_ID;
    span("cleanup", Some((run, "run")), (0.0, 0.01), json!({"dead_runs": 0}));
    for step in &report.steps {
        let id = span(
            "step",
            Some((run, "run")),
            (step.planned_start_s, step.planned_end_s),
            json!({"scenario": report.scenario, "step": step.name, "seed": step.seed,
                   "planned_ms": (step.planned_end_s - step.planned_start_s) * 1000.0, "ended": "completed"}),
        );
        for rule in &step.rules {
            let c = &rule.counters;
            span(
                "inject",
                Some((id, "step")),
                (step.planned_start_s, step.planned_end_s),
                json!({"scenario": report.scenario, "step": step.name, "fault": rule.fault, "target": rule.target,
                       "netns": rule.netns, "rule_id": rule.rule_id, "seed": step.seed, "ended": rule.ended,
                       "ran_its_course": rule.ran_its_course, "seen": c.seen, "matched": c.matched,
                       "dropped": c.dropped, "passed": c.passed, "delayed": c.delayed, "errors": c.errors,
                       "expired": c.expired, "protected": c.protected, "unparsed": c.unparsed}),
            );
            span(
                "revert",
                Some((id, "step")),
                (step.planned_end_s, step.planned_end_s + 0.01),
                json!({"scenario": report.scenario, "step": step.name, "fault": rule.fault,
                       "target": rule.target, "rule_id": rule.rule_id, "seed": step.seed}),
            );
        }
    }
    for sample in report.hypothesis.iter().flat_map(|h| &h.samples) {
        span(
            "probe",
            Some((run, "run")),
            (sample.t_s, sample.t_s + sample.latency_ms / 1000.0),
            json!({"probe": sample.probe, "phase": sample.phase.name(), "ok": true, "latency_ms": sample.latency_ms}),
        );
    }
    span(
        "revert",
        Some((run, "run")),
        (7.0, 7.0 + report.revert_ms / 1000.0),
        json!({"instances": 2, "devices": 0, "revert_ms": report.revert_ms, "clean": report.clean}),
    );
    span(
        "run",
        None,
        (0.0, (report.ended_unix_ms - report.started_unix_ms) as f64 / 1000.0),
        json!({"scenario": report.scenario, "seed": report.seed, "steps": report.steps.len(),
               "interrupted": report.interrupted, "clean": report.clean, "revert_ms": report.revert_ms}),
    );
    lines.join("\n") + "\n"
}

/// A directory under the system's temporary one, removed on drop (also after a failed
/// assertion).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("chaos-report-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
