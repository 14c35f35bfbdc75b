//! Text for people: run reports, and the progress a run prints while it goes (an
//! observer of the engine's events).

use std::{io::IsTerminal, time::Duration};

use chaos_datapath::ledger;
use chaos_ebpf_common::RuleCounters;
use chaos_engine::run::{Event, Observer, ProbeCounts, RunReport, StepReport};
use chaos_model::spec::format_duration;

use crate::output;

/// Prints the engine's events to stderr: notices as `chaos-ebpf: ...` lines, progress
/// redrawn in place on a terminal, or about a hundred lines a run into a log.
pub struct Progress {
    tty: bool,
}

impl Progress {
    pub fn new() -> Self {
        Progress { tty: std::io::stderr().is_terminal() }
    }
}

impl Observer for Progress {
    fn progress_every(&self, total: Duration) -> Option<Duration> {
        Some(if self.tty { Duration::from_millis(500) } else { (total / 100).max(Duration::from_secs(1)) })
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Started { scenario, seed, total } => {
                output::err(&format!("chaos-ebpf: scenario {scenario} seed {seed} ({} total)", format_duration(total)))
            }
            Event::Notice(line) => output::err(&format!("chaos-ebpf: {line}")),
            Event::Warning(line) => output::err(&format!("chaos-ebpf: {line}")),
            Event::Progress(p) => {
                let mut line = format!("[{:>6.1}s / {}] {}", p.elapsed.as_secs_f64(), format_duration(p.total), p.step);
                for r in &p.rules {
                    line += &format!(
                        " | rule {}: matched {} dropped {}",
                        r.rule_id, r.counters.matched, r.counters.dropped
                    );
                }
                if let Some(probe) = p.probe {
                    line += &format!(" | probe {}", probe_summary(&probe));
                }
                if self.tty {
                    output::err_raw(&format!("\r\x1b[2K{line}"));
                } else {
                    output::err(&line);
                }
            }
            Event::ProgressEnd => {
                if self.tty {
                    output::err_raw("\r\x1b[2K");
                }
            }
            // The report says how each step and the revert went.
            Event::RulesInstalled { .. }
            | Event::StepEnded(_)
            | Event::Aborted { .. }
            | Event::Reverted { .. }
            | Event::ProbeChecked(_)
            | Event::PhaseStarted { .. }
            | Event::PhaseEnded { .. } => {}
        }
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
}

fn probe_summary(p: &ProbeCounts) -> String {
    format!(
        "sent {} delivered {} ({}) round trips {} ({})",
        p.sent,
        p.delivered,
        percent(p.delivered, p.sent),
        p.echoed,
        percent(p.echoed, p.sent)
    )
}

/// A rule's counters on one line, the same in reports and `status`.
pub fn counters(c: &RuleCounters) -> String {
    format!(
        "seen {} matched {} dropped {} ({} of matched) passed {} delayed {} errors {} expired {} protected {} unparsed {}",
        c.seen,
        c.matched,
        c.dropped,
        percent(c.dropped, c.matched),
        c.passed,
        c.delayed,
        c.errors,
        c.expired,
        c.protected,
        c.unparsed
    )
}

/// One step of a run report.
pub fn step(step: &StepReport) -> String {
    let mut out = format!("step {} ({:.1}s)", step.name, step.seconds);
    if step.rules.is_empty() {
        out += ": no fault";
    }
    for r in &step.rules {
        out += &format!("\n  rule {} {} [{}]\n    {}", r.rule_id, r.fault, r.netns, counters(&r.counters));
        out += &format!(
            "\n    in force {} to {} ({:.1}s): {}",
            ledger::clock(r.active_from_unix_ms),
            ledger::clock(r.active_to_unix_ms),
            r.active_to_unix_ms.saturating_sub(r.active_from_unix_ms) as f64 / 1000.0,
            r.ended
        );
    }
    if let Some(p) = &step.probe {
        out += &format!("\n  probe: {}", probe_summary(p));
    }
    out
}

/// A run report, as text.
pub fn report(report: &RunReport) -> String {
    let status = match (&report.failed, report.interrupted) {
        (Some(reason), _) => format!("FAILED, a fault did not run its course: {reason}"),
        (None, true) => "interrupted, every fault reverted".into(),
        (None, false) => "completed".into(),
    };
    let mut out = format!("scenario {} seed {}: {status}", report.scenario, report.seed);
    for step in &report.steps {
        out += "\n";
        out += &self::step(step);
    }
    out += &format!(
        "\nrevert verified: {} (revert took {:.1} ms)",
        if report.clean { "nothing left attached" } else { "NOT clean" },
        report.revert_ms
    );
    out
}
