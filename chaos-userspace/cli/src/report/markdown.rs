//! report.md: the run for a person (or a pull request comment): scenario, seed, verdict,
//! the steps as planned and as they ran, the hypothesis per probe and phase, the abort,
//! the revert and the cleanup.

use std::fmt::Write as _;

use chaos_engine::report::{RunReport, StepReport, WindowReport};

use super::{outcome, utc, verdict_name};

/// Text for a table cell: pipes escaped, no line breaks, markup characters kept inert.
pub fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' => out.push_str("\\|"),
            '\n' | '\r' => out.push(' '),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn secs(s: f64) -> String {
    format!("{s:.3} s")
}

/// `1.000–2.000 s`.
fn span(from: f64, to: f64) -> String {
    format!("{from:.3}–{to:.3} s")
}

/// When the step ran: its first window's start to its last window's end, as they ran.
fn actual(step: &StepReport) -> String {
    let started = step.windows.first().and_then(|w| w.started_s);
    let ended = step.windows.last().and_then(|w| w.ended_s);
    match (started, ended) {
        (Some(a), Some(b)) => span(a, b),
        (Some(a), None) => format!("{a:.3} s – (cut short)"),
        _ => "did not start".to_owned(),
    }
}

fn windows(windows: &[WindowReport]) -> String {
    let ran = windows.iter().filter(|w| w.started_s.is_some() && w.ended_s.is_some()).count();
    let list = windows
        .iter()
        .map(|w| {
            let as_run = match (w.started_s, w.ended_s) {
                (Some(a), Some(b)) => format!(" ran {}", span(a, b)),
                (Some(a), None) => format!(" ran from {a:.3} s"),
                _ => " did not run".to_owned(),
            };
            format!("{}{as_run}", span(w.planned_start_s, w.planned_end_s))
        })
        .collect::<Vec<_>>()
        .join("<br>");
    format!("{} ({ran} ran): {list}", windows.len())
}

fn intensities(windows: &[WindowReport]) -> String {
    let mut seen: Vec<String> = Vec::new();
    for w in windows {
        let text = format!("{}", w.intensity);
        if !seen.contains(&text) {
            seen.push(text);
        }
    }
    seen.join(", ")
}

fn rules(step: &StepReport) -> String {
    if let Some(action) = &step.action {
        let on = if action.resolved.is_empty() { &action.targets } else { &action.resolved };
        let mut lines = vec![if on.is_empty() {
            cell(&action.action)
        } else {
            format!("{} on {}", cell(&action.action), cell(&on.join(", ")))
        }];
        lines.extend(action.events.iter().map(|e| format!("{:.3} s: {}", e.t_s, cell(&e.what))));
        if let Some(error) = &action.error {
            lines.push(format!("FAILED: {}", cell(error)));
        }
        return lines.join("<br>");
    }
    if step.rules.is_empty() {
        return "none".into();
    }
    step.rules
        .iter()
        .map(|r| {
            format!(
                "#{} {} in {}: matched {}, dropped {}, delayed {}{}",
                r.rule_id,
                cell(&r.fault),
                cell(&r.netns),
                r.counters.matched,
                r.counters.dropped,
                r.counters.delayed,
                if r.ran_its_course { String::new() } else { format!(" (ended: {})", cell(&r.ended)) }
            )
        })
        .collect::<Vec<_>>()
        .join("<br>")
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub fn render(report: &RunReport) -> String {
    let mut md = String::new();
    let (word, reasons) = outcome(report);
    let _ = writeln!(md, "# chaos-ebpf run: {}\n", cell(&report.scenario));
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| scenario | {} |", cell(&report.scenario));
    let _ = writeln!(md, "| seed | {} |", report.seed);
    let _ = writeln!(
        md,
        "| verdict | **{word}**{} |",
        if reasons.is_empty() { String::new() } else { format!(": {}", cell(&reasons.join("; "))) }
    );
    if let Some(h) = &report.hypothesis {
        let _ = writeln!(md, "| hypothesis | {} |", verdict_name(h.verdict));
    }
    let _ = writeln!(md, "| started | {} |", utc(report.started_unix_ms));
    let _ = writeln!(
        md,
        "| duration | {} |",
        secs(report.ended_unix_ms.saturating_sub(report.started_unix_ms) as f64 / 1000.0)
    );
    let _ = writeln!(md, "| revert | {:.1} ms |", report.revert_ms);
    let _ = writeln!(md, "| clean | {} |", yes_no(report.clean));

    let _ = writeln!(md, "\n## Steps\n");
    if report.steps.is_empty() {
        let _ = writeln!(md, "No step ran.");
    } else {
        let _ = writeln!(
            md,
            "| step | seed | planned | actual | windows | intensity | rules or action | ran its course |\n|---|---|---|---|---|---|---|---|"
        );
        for step in &report.steps {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&step.name),
                step.seed,
                span(step.planned_start_s, step.planned_end_s),
                actual(step),
                windows(&step.windows),
                intensities(&step.windows),
                rules(step),
                yes_no(step.ran_its_course)
            );
        }
    }

    let _ = writeln!(md, "\n## Hypothesis\n");
    match &report.hypothesis {
        None => {
            let _ = writeln!(md, "The scenario has no hypothesis.");
        }
        Some(h) => {
            let _ = writeln!(
                md,
                "Verdict: **{}**{}. Steady before the faults: {}. Recovered {}.\n",
                verdict_name(h.verdict),
                h.reason.as_deref().map(|r| format!(" ({})", cell(r))).unwrap_or_default(),
                yes_no(h.steady_before),
                h.recovered_after_s.map_or_else(
                    || "not within the deadline (or not checked)".to_owned(),
                    |s| format!("{s:.3} s after the revert")
                )
            );
            let _ =
                writeln!(md, "| probe | kind | phase | checks | failures | p50 | p95 |\n|---|---|---|---|---|---|---|");
            for p in &h.probes {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {:.1} ms | {:.1} ms |",
                    cell(&p.probe),
                    cell(&p.kind),
                    p.phase.name(),
                    p.checks,
                    p.failures,
                    p.p50_ms,
                    p.p95_ms
                );
            }
            if !h.outages.is_empty() {
                let _ = writeln!(md, "\nLongest outage per probe:\n\n| probe | from | to | seconds | failed checks |\n|---|---|---|---|---|");
                for o in &h.outages {
                    let _ = writeln!(
                        md,
                        "| {} | {:.3} s | {} | {:.3} | {} |",
                        cell(&o.probe),
                        o.from_s,
                        o.to_s.map_or_else(|| "never passed again".to_owned(), |t| format!("{t:.3} s")),
                        o.seconds,
                        o.failed_checks
                    );
                }
            }
        }
    }

    let _ = writeln!(md, "\n## Abort\n");
    match &report.abort {
        None => {
            let _ = writeln!(md, "No guard fired.");
        }
        Some(a) => {
            let _ = writeln!(
                md,
                "The **{}** guard fired at {}: {}. Every fault was removed {:.1} ms later.",
                cell(&a.guard),
                secs(a.fired_s),
                cell(&a.reason),
                a.revert_ms
            );
        }
    }
    if report.interrupted {
        let _ = writeln!(md, "\nThe run was interrupted (a signal); every fault was reverted.");
    }
    if let Some(failed) = &report.failed {
        let _ = writeln!(md, "\nA fault did not run its course: {}.", cell(failed));
    }

    let _ = writeln!(md, "\n## Revert\n");
    let _ = writeln!(
        md,
        "Revert time: {:.1} ms. Clean: **{}**{}.",
        report.revert_ms,
        yes_no(report.clean),
        if report.clean { " (everything the run created is verified gone)" } else { "; run `chaos-ebpf cleanup`" }
    );
    for problem in &report.revert_problems {
        let _ = writeln!(md, "- {}", cell(problem));
    }
    if !report.cleanup.is_empty() {
        let _ = writeln!(md, "\n| created | what | netns | gone | proof |\n|---|---|---|---|---|");
        for c in &report.cleanup {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                cell(&c.kind),
                cell(&c.what),
                cell(&c.netns),
                yes_no(c.gone),
                cell(&c.proof)
            );
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    #[test]
    fn every_section_of_a_rich_run() {
        let md = render(&fixtures::rich_report());
        for expected in [
            "# chaos-ebpf run: rich",
            "| seed | 42 |",
            "| verdict | **failed**: aborted by the error-rate guard",
            "| hypothesis | failed |",
            "| clean | yes |",
            // The duty cycle: three windows, planned and as run.
            "| flaky-link | 1311768467463790320 | 1.000–6.000 s | 1.003–6.002 s | 3 (3 ran): 1.000–2.000 s ran 1.003–2.004 s<br>3.000–4.000 s",
            "#1 loss on netns:a p=0.3 dir=both in /run/netns/chaos-lab-n1: matched 300, dropped 91, delayed 0",
            // The step the guard cut short.
            "| slow-peer | 77 | 2.000–7.000 s | 2.001–5.500 s | 1 (1 ran)",
            "| 0.5 | #2 loss on netns:b p=0.1 dir=both in /run/netns/chaos-lab-n2: matched 400, dropped 22, delayed 0 (ended: aborted: error-rate guard) | no |",
            "| api | http | before | 4 | 0 | 13.0 ms | 15.0 ms |",
            "| db | tcp | during | 16 | 3 | 16.0 ms | 24.0 ms |",
            "| api | http | after | 4 | 0 | 13.0 ms | 13.0 ms |",
            "Steady before the faults: yes. Recovered 0.400 s after the revert.",
            "The **error-rate** guard fired at 5.500 s: api: 3 of 16 checks failed (19% &gt; 10%). Every fault was removed 14.2 ms later.",
            "Revert time: 18.7 ms. Clean: **yes**",
            "| program | program 812 chaos_egress | /run/netns/chaos-lab-n1 | yes | no program with id 812 in BPF_PROG_GET_NEXT_ID |",
        ] {
            assert!(md.contains(expected), "report.md lacks {expected:?}:\n{md}");
        }
    }

    #[test]
    fn a_passing_run_without_hypothesis_or_abort() {
        let md = render(&fixtures::passing_report());
        assert!(md.contains("| verdict | **passed** |"), "{md}");
        assert!(md.contains("The scenario has no hypothesis."), "{md}");
        assert!(md.contains("No guard fired."), "{md}");
    }

    /// Names that would break the table or inject markup stay inside their cell.
    #[test]
    fn hostile_names_stay_in_their_cell() {
        let mut report = fixtures::rich_report();
        report.steps[0].name = "a|b\n<script>x</script>".into();
        let md = render(&report);
        let row = md.lines().find(|l| l.contains("a\\|b")).expect("the step's row");
        assert!(row.contains("a\\|b &lt;script&gt;x&lt;/script&gt; |"), "{row}");
        assert!(!md.contains("<script>"));
    }
}
