//! events.jsonl: every event the engine sends its observers, one JSON object a line,
//! written as the run goes on (a killed run leaves what it got to). `t_s` is seconds
//! since the observer was created, just before the run started; `event` names the event.
//! The engine's `Event` borrows and holds `Duration`s; [`Record`] is its serializable
//! mirror, kept here so that the engine stays free of the file's format.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
    time::{Duration, Instant},
};

use chaos_ebpf_common::RuleCounters;
use chaos_engine::{
    report::{ProbeCounts, ProbeSample, StepReport},
    run::{Event, Observer, RuleCount},
};
use serde::Serialize;

use crate::output;

/// How often progress (each rule's counters) is recorded.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize)]
pub struct Line<'a> {
    pub t_s: f64,
    #[serde(flatten)]
    pub event: Record<'a>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record<'a> {
    Started {
        scenario: &'a str,
        seed: u64,
        total_s: f64,
    },
    Notice {
        message: &'a str,
    },
    Progress {
        elapsed_s: f64,
        total_s: f64,
        step: &'a str,
        rules: Vec<RuleCountRecord<'a>>,
        probe: Option<ProbeCounts>,
    },
    ProgressEnd,
    Warning {
        message: &'a str,
    },
    RulesInstalled {
        step: &'a str,
        rules: Vec<InForceRecord<'a>>,
    },
    RulesRemoved {
        step: &'a str,
        rules: Vec<RuleCountRecord<'a>>,
    },
    StepEnded {
        step: &'a StepReport,
    },
    Aborted {
        cause: &'static str,
        reason: &'a str,
    },
    Reverted {
        seconds: f64,
        clean: bool,
    },
    ProbeChecked {
        sample: &'a ProbeSample,
    },
    PhaseStarted {
        name: &'a str,
        total_s: Option<f64>,
    },
    PhaseEnded {
        name: &'a str,
    },
}

#[derive(Debug, Serialize)]
pub struct RuleCountRecord<'a> {
    pub step: &'a str,
    pub rule_id: u32,
    pub netns: &'a str,
    pub counters: RuleCounters,
}

impl<'a> RuleCountRecord<'a> {
    fn of(r: &'a RuleCount) -> Self {
        RuleCountRecord { step: &r.step, rule_id: r.rule_id, netns: &r.netns, counters: r.counters }
    }
}

#[derive(Debug, Serialize)]
pub struct InForceRecord<'a> {
    pub rule_id: u32,
    pub kind: &'a str,
    pub netns: &'a str,
}

impl<'a> Record<'a> {
    pub fn of(event: &'a Event<'a>) -> Record<'a> {
        match event {
            Event::Started { scenario, seed, total } => {
                Record::Started { scenario, seed: *seed, total_s: total.as_secs_f64() }
            }
            Event::Notice(message) => Record::Notice { message },
            Event::Progress(p) => Record::Progress {
                elapsed_s: p.elapsed.as_secs_f64(),
                total_s: p.total.as_secs_f64(),
                step: p.step,
                rules: p.rules.iter().map(RuleCountRecord::of).collect(),
                probe: p.probe,
            },
            Event::ProgressEnd => Record::ProgressEnd,
            Event::Warning(message) => Record::Warning { message },
            Event::RulesInstalled { step, rules } => Record::RulesInstalled {
                step,
                rules: rules
                    .iter()
                    .map(|r| InForceRecord { rule_id: r.rule_id, kind: r.kind, netns: &r.netns })
                    .collect(),
            },
            Event::RulesRemoved { step, rules } => {
                Record::RulesRemoved { step, rules: rules.iter().map(RuleCountRecord::of).collect() }
            }
            Event::StepEnded(step) => Record::StepEnded { step },
            Event::Aborted { cause, reason } => Record::Aborted { cause: cause.name(), reason },
            Event::Reverted { seconds, clean } => Record::Reverted { seconds: *seconds, clean: *clean },
            Event::ProbeChecked(sample) => Record::ProbeChecked { sample },
            Event::PhaseStarted { name, total } => {
                Record::PhaseStarted { name, total_s: total.map(|t| t.as_secs_f64()) }
            }
            Event::PhaseEnded { name } => Record::PhaseEnded { name },
        }
    }
}

/// The observer that writes events.jsonl. A file that cannot be created or written is one
/// warning line; the run goes on without it.
pub struct EventFile {
    out: Option<BufWriter<File>>,
    path: String,
    since: Instant,
}

impl EventFile {
    pub fn create(path: &Path) -> EventFile {
        let shown = path.display().to_string();
        let out = match File::options().write(true).create_new(true).open(path) {
            Ok(file) => Some(BufWriter::new(file)),
            Err(e) => {
                output::err(&format!("chaos-ebpf: warning: cannot write {shown}: {e}"));
                None
            }
        };
        EventFile { out, path: shown, since: Instant::now() }
    }
}

impl Observer for EventFile {
    fn progress_every(&self, _total: Duration) -> Option<Duration> {
        self.out.as_ref().map(|_| PROGRESS_EVERY)
    }

    fn event(&mut self, event: Event<'_>) {
        let Some(out) = &mut self.out else { return };
        let line = Line { t_s: self.since.elapsed().as_secs_f64(), event: Record::of(&event) };
        let written = serde_json::to_writer(&mut *out, &line)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            // Line by line on disk, as spans.jsonl: what a killed run got to is there.
            .and_then(|()| out.flush());
        if let Err(e) = written {
            output::err(&format!("chaos-ebpf: warning: cannot write {}: {e}; no more events recorded", self.path));
            self.out = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;
    use chaos_engine::run::{AbortCause, InForce, Progress, RuleCount};
    use serde_json::Value;

    /// Every kind of event becomes one line of its own kind, with its fields.
    #[test]
    fn every_event_is_a_line() {
        let dir = fixtures::TempDir::new("events");
        let path = dir.path().join("events.jsonl");
        let report = fixtures::rich_report();
        let mut file = EventFile::create(&path);
        assert_eq!(file.progress_every(Duration::from_secs(60)), Some(PROGRESS_EVERY));
        let sample = &report.hypothesis.as_ref().unwrap().samples[0];
        let counters = RuleCounters { matched: 5, dropped: 2, ..Default::default() };
        let events = vec![
            Event::Started { scenario: "rich", seed: 42, total: Duration::from_secs(7) },
            Event::PhaseStarted { name: "steady state", total: Some(Duration::from_millis(1500)) },
            Event::ProbeChecked(sample),
            Event::PhaseEnded { name: "steady state" },
            Event::RulesInstalled {
                step: "flaky-link",
                rules: vec![InForce { rule_id: 1, kind: "loss", netns: "/run/netns/a".into() }],
            },
            Event::Progress(Progress {
                elapsed: Duration::from_millis(500),
                total: Duration::from_secs(7),
                step: "flaky-link",
                rules: vec![RuleCount {
                    step: "flaky-link".into(),
                    rule_id: 1,
                    netns: "/run/netns/a".into(),
                    counters,
                }],
                probe: Some(ProbeCounts { sent: 10, delivered: 9, echoed: 9 }),
            }),
            Event::ProgressEnd,
            Event::Notice("step flaky-link ended".into()),
            Event::Warning("a \"quoted\"\nwarning".into()),
            Event::StepEnded(&report.steps[0]),
            Event::Aborted { cause: AbortCause::Guard, reason: "error rate".into() },
            Event::Reverted { seconds: 0.0187, clean: true },
        ];
        let count = events.len();
        for event in events {
            file.event(event);
        }
        drop(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), count, "{text}");
        let kinds: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "started",
                "phase_started",
                "probe_checked",
                "phase_ended",
                "rules_installed",
                "progress",
                "progress_end",
                "notice",
                "warning",
                "step_ended",
                "aborted",
                "reverted"
            ]
        );
        assert_eq!((lines[0]["seed"].as_u64(), lines[0]["total_s"].as_f64()), (Some(42), Some(7.0)));
        assert_eq!(lines[1]["total_s"], 1.5);
        assert_eq!(lines[2]["sample"]["probe"], "api");
        assert_eq!(lines[2]["sample"]["phase"], "before");
        assert_eq!(lines[4]["rules"][0]["kind"], "loss");
        assert_eq!(lines[5]["rules"][0]["counters"]["dropped"], 2);
        assert_eq!(lines[5]["probe"]["delivered"], 9);
        assert_eq!(lines[8]["message"], "a \"quoted\"\nwarning");
        assert_eq!(lines[9]["step"]["name"], "flaky-link");
        assert_eq!(lines[9]["step"]["windows"].as_array().map(Vec::len), Some(3));
        assert_eq!((lines[10]["cause"].as_str(), lines[10]["reason"].as_str()), (Some("guard"), Some("error rate")));
        assert_eq!(lines[11]["clean"], true);
        let times: Vec<f64> = lines.iter().map(|l| l["t_s"].as_f64().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }
}
