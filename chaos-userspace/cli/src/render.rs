//! Text for people: run reports, and the progress a run prints while it goes (an
//! observer of the engine's events).

use std::{io::IsTerminal, time::Duration};

use chaos_datapath::ledger;
use chaos_ebpf_common::RuleCounters;
use chaos_engine::{
    report::Verdict,
    run::{self, Event, Observer, ProbeCounts, RunReport, StepReport},
};
use chaos_model::spec::format_duration;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::output;

/// Prints the engine's events to stderr: notices as `chaos-ebpf: ...` lines, and progress
/// as bars and spinners on a terminal, or as about a hundred plain lines a run into a log
/// or with `--output json` (no escape codes there).
pub struct Progress {
    draw: Draw,
}

enum Draw {
    /// One line per progress event.
    Lines,
    /// indicatif's bars: the run's progress while a step is up, a spinner per long phase.
    Bars { bars: MultiProgress, run: Option<ProgressBar>, phases: Vec<(String, ProgressBar)> },
}

/// How often spinners and phase bars are redrawn.
const TICK: Duration = Duration::from_millis(100);

impl Progress {
    /// Bars when stderr is a terminal and the output is text; plain lines otherwise.
    pub fn new(json: bool) -> Self {
        if std::io::stderr().is_terminal() && !json {
            Self::bars(ProgressDrawTarget::stderr())
        } else {
            Progress { draw: Draw::Lines }
        }
    }

    fn bars(target: ProgressDrawTarget) -> Self {
        Progress { draw: Draw::Bars { bars: MultiProgress::with_draw_target(target), run: None, phases: Vec::new() } }
    }

    /// A line on stderr, above the bars when there are any.
    fn line(&self, line: &str) {
        match &self.draw {
            Draw::Lines => output::err(line),
            Draw::Bars { bars, .. } => bars.suspend(|| output::err(line)),
        }
    }
}

/// The progress of a run in words: time, step, each rule's counters, the probe.
fn progress_line(p: &run::Progress<'_>) -> String {
    let mut line = format!("[{:>6.1}s / {}] {}", p.elapsed.as_secs_f64(), format_duration(p.total), p.step);
    for r in &p.rules {
        line += &format!(" | rule {}: matched {} dropped {}", r.rule_id, r.counters.matched, r.counters.dropped);
    }
    if let Some(probe) = p.probe {
        line += &format!(" | probe {}", probe_summary(&probe));
    }
    line
}

/// A spinner for a phase of unknown length; with a length, a bar that fills with time.
fn phase_bar(name: &str, total: Option<Duration>) -> ProgressBar {
    let style = match total {
        None => ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a valid template"),
        Some(total) => ProgressStyle::with_template("{spinner} {msg} [{time_bar}] {elapsed} of at most {limit}")
            .expect("a valid template")
            .with_key("limit", move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}", format_duration(total));
            })
            .with_key("time_bar", move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                const WIDTH: usize = 20;
                let done = state.elapsed().as_secs_f64() / total.as_secs_f64().max(f64::EPSILON);
                let filled = ((done.min(1.0)) * WIDTH as f64) as usize;
                let _ = write!(w, "{}{}", "#".repeat(filled), "-".repeat(WIDTH - filled));
            }),
    };
    let bar = ProgressBar::new_spinner().with_style(style).with_message(name.to_owned());
    bar.enable_steady_tick(TICK);
    bar
}

impl Observer for Progress {
    fn progress_every(&self, total: Duration) -> Option<Duration> {
        Some(match self.draw {
            Draw::Bars { .. } => Duration::from_millis(500),
            Draw::Lines => (total / 100).max(Duration::from_secs(1)),
        })
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Started { scenario, seed, total } => {
                self.line(&format!("chaos-ebpf: scenario {scenario} seed {seed} ({} total)", format_duration(total)))
            }
            Event::Notice(line) => self.line(&format!("chaos-ebpf: {line}")),
            Event::Warning(line) => self.line(&format!("chaos-ebpf: {line}")),
            Event::Progress(p) => match &mut self.draw {
                Draw::Lines => output::err(&progress_line(&p)),
                Draw::Bars { bars, run, .. } => {
                    let (total, line) = (p.total.as_millis() as u64, progress_line(&p));
                    let position = (p.elapsed.as_millis() as u64).min(total);
                    let bar = run.get_or_insert_with(|| {
                        let style = ProgressStyle::with_template("{bar:24} {msg}").expect("a valid template");
                        // Complete before it is first drawn.
                        let bar = ProgressBar::new(total).with_style(style).with_position(position);
                        bars.add(bar.with_message(line.clone()))
                    });
                    bar.set_length(total);
                    bar.set_position(position);
                    bar.set_message(line);
                }
            },
            Event::ProgressEnd => {
                if let Draw::Bars { bars, run, .. } = &mut self.draw {
                    if let Some(bar) = run.take() {
                        bar.finish_and_clear();
                        bars.remove(&bar);
                    }
                }
            }
            Event::PhaseStarted { name, total } => {
                if let Draw::Bars { bars, phases, .. } = &mut self.draw {
                    phases.push((name.to_owned(), bars.add(phase_bar(name, total))));
                }
            }
            Event::PhaseEnded { name } => {
                if let Draw::Bars { bars, phases, .. } = &mut self.draw {
                    if let Some(at) = phases.iter().position(|(n, _)| n == name) {
                        let (_, bar) = phases.remove(at);
                        bar.finish_and_clear();
                        bars.remove(&bar);
                    }
                }
            }
            // The report says how each step and the revert went.
            Event::RulesInstalled { .. }
            | Event::RulesRemoved { .. }
            | Event::StepEnded(_)
            | Event::Aborted { .. }
            | Event::Reverted { .. }
            | Event::ProbeChecked(_) => {}
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
    let mut out = format!(
        "step {} ({:.1}s, planned {:.3}s..{:.3}s)",
        step.name, step.seconds, step.planned_start_s, step.planned_end_s
    );
    match &step.action {
        Some(action) => {
            out += &format!(": {}", action.action);
            let on = if action.resolved.is_empty() { &action.targets } else { &action.resolved };
            if !on.is_empty() {
                out += &format!(" on {}", on.join(", "));
            }
            for e in &action.events {
                out += &format!("\n  {:>8.3}s {}", e.t_s, e.what);
            }
            if let Some(error) = &action.error {
                out += &format!("\n  FAILED: {error}");
            }
        }
        None if step.rules.is_empty() => out += ": no fault",
        None => {}
    }
    if step.windows.len() > 1 || step.windows.iter().any(|w| w.intensity != 1.0) {
        let windows: Vec<String> = step
            .windows
            .iter()
            .map(|w| {
                let ran = match (w.started_s, w.ended_s) {
                    (Some(from), Some(to)) => format!("ran {from:.3}..{to:.3}"),
                    (Some(from), None) => format!("ran from {from:.3}"),
                    _ => "did not run".into(),
                };
                format!("{:.3}..{:.3}s x{} ({ran})", w.planned_start_s, w.planned_end_s, w.intensity)
            })
            .collect();
        out += &format!(
            "
  windows: {}",
            windows.join(", ")
        );
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
    let status = match &report.abort {
        Some(a) => format!("ABORTED by the {} guard at {:.1}s: {}", a.guard, a.fired_s, a.reason),
        None => status,
    };
    let mut out = format!("scenario {} seed {}: {status}", report.scenario, report.seed);
    for step in &report.steps {
        out += "\n";
        out += &self::step(step);
    }
    if let Some(h) = &report.hypothesis {
        let verdict = match h.verdict {
            Verdict::Passed => "passed",
            Verdict::Failed => "FAILED",
            Verdict::NotJudged => "not judged",
        };
        out += &format!("\nhypothesis {verdict}");
        if let Some(reason) = &h.reason {
            out += &format!(": {reason}");
        }
        if let Some(after) = h.recovered_after_s {
            out += &format!(" (recovered {after:.3}s after the revert)");
        }
        for p in &h.probes {
            out += &format!(
                "\n  probe {} {}: {} checks, {} failed, p50 {:.1} ms, p95 {:.1} ms",
                p.probe,
                p.phase.name(),
                p.checks,
                p.failures,
                p.p50_ms,
                p.p95_ms
            );
        }
    }
    if let Some(a) = &report.abort {
        out += &format!("\nabort: every fault reverted {:.1} ms after the guard fired", a.revert_ms);
    }
    out += &format!(
        "\nrevert verified: {} (revert took {:.1} ms)",
        if report.clean { "nothing left attached" } else { "NOT clean" },
        report.revert_ms
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaos_engine::run::RuleCount;
    use indicatif::InMemoryTerm;

    fn progress(elapsed: u64) -> Event<'static> {
        Event::Progress(run::Progress {
            elapsed: Duration::from_secs(elapsed),
            total: Duration::from_secs(10),
            step: "loss",
            rules: vec![RuleCount {
                step: "loss".into(),
                rule_id: 1,
                netns: "/a".into(),
                counters: RuleCounters { matched: 40, dropped: 12, ..RuleCounters::default() },
            }],
            probe: None,
        })
    }

    /// On a terminal: a phase is a spinner with its time bar until it ends; a step's
    /// progress is a bar over the run's total with the progress line; both are cleared
    /// when they end.
    #[test]
    fn bars_for_phases_and_steps() {
        let term = InMemoryTerm::new(10, 160);
        let mut p = Progress::bars(ProgressDrawTarget::term_like(Box::new(term.clone())));
        p.event(Event::PhaseStarted { name: "waiting for the steady state", total: Some(Duration::from_secs(30)) });
        std::thread::sleep(Duration::from_millis(250));
        let screen = term.contents();
        assert!(screen.contains("waiting for the steady state ["), "{screen}");
        assert!(screen.contains("of at most 30s"), "{screen}");
        p.event(Event::PhaseStarted { name: "loading programs", total: None });
        std::thread::sleep(Duration::from_millis(250));
        assert!(term.contents().contains("loading programs"), "{}", term.contents());
        p.event(Event::PhaseEnded { name: "waiting for the steady state" });
        p.event(Event::PhaseEnded { name: "loading programs" });
        assert_eq!(term.contents().trim(), "", "phases cleared");
        p.event(progress(5));
        std::thread::sleep(Duration::from_millis(100));
        p.event(progress(5));
        let screen = term.contents();
        assert!(screen.contains("[   5.0s / 10s] loss | rule 1: matched 40 dropped 12"), "{screen}");
        let bar = screen.lines().next().unwrap_or_default();
        assert_eq!(bar.chars().take(24).filter(|c| *c == '█').count(), 12, "half of the bar: {screen}");
        p.event(Event::ProgressEnd);
        assert_eq!(term.contents().trim(), "", "the bar is cleared when the step ends");
        match &p.draw {
            Draw::Bars { run, phases, .. } => assert!(run.is_none() && phases.is_empty()),
            Draw::Lines => unreachable!(),
        }
    }

    /// Plain lines, as in logs: the line a progress event prints.
    #[test]
    fn plain_progress_line() {
        let Event::Progress(p) = progress(5) else { unreachable!() };
        assert_eq!(progress_line(&p), "[   5.0s / 10s] loss | rule 1: matched 40 dropped 12");
        assert_eq!(
            Progress { draw: Draw::Lines }.progress_every(Duration::from_secs(300)),
            Some(Duration::from_secs(3))
        );
    }
}
