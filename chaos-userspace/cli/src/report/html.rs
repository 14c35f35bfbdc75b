//! report.html: one self-contained page (inline CSS, inline SVG, no script, nothing
//! fetched) with the run's summary and charts: each probe's latency and success over
//! time, and each rule's matched and dropped packets over time, with the fault windows
//! shaded (as they ran, or as planned when a window did not run).
//!
//! Charts are drawn by plotters' SVG backend; each is a `<figure class="chart"
//! data-chart="...">` holding one `<svg>`.

use std::fmt::Write as _;

use anyhow::Result;
use chaos_engine::report::{ProbeSample, RunReport, StepReport};
use plotters::prelude::*;

use super::{outcome, utc, verdict_name};

const WIDTH: u32 = 900;
const HEIGHT: u32 = 300;
/// At most this many rule charts (one per rule and namespace); the rest are named.
const MAX_RULE_CHARTS: usize = 32;

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(127, 127, 127),
];
const WINDOW: RGBColor = RGBColor(255, 140, 0);
const FAILED: RGBColor = RGBColor(214, 39, 40);

/// At most this many points per series: a long run's samples are thinned (below) so that
/// the page stays small.
const MAX_POINTS: usize = 2000;

/// `points` (in time order) thinned to at most `max`: in each of `max / 2` runs of
/// consecutive points, the lowest and the highest (in time order), so that spikes stay.
fn thin(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points;
    }
    let per_bucket = points.len().div_ceil(max / 2);
    let mut out = Vec::with_capacity(max);
    for bucket in points.chunks(per_bucket) {
        let by_y = |a: &&(f64, f64), b: &&(f64, f64)| a.1.total_cmp(&b.1);
        let (lo, hi) = (bucket.iter().min_by(by_y), bucket.iter().max_by(by_y));
        if let (Some(&lo), Some(&hi)) = (lo, hi) {
            if lo == hi {
                out.push(lo);
            } else if lo.0 <= hi.0 {
                out.extend([lo, hi]);
            } else {
                out.extend([hi, lo]);
            }
        }
    }
    out
}

/// Text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A step's windows, as they ran (or as planned when one did not run), in seconds from
/// the run's start.
fn windows_of(step: &StepReport) -> Vec<(f64, f64)> {
    step.windows
        .iter()
        .map(|w| match (w.started_s, w.ended_s) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) => (a, w.planned_end_s),
            _ => (w.planned_start_s, w.planned_end_s),
        })
        .collect()
}

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
}

struct Chart<'a> {
    title: &'a str,
    y_label: &'a str,
    x_max: f64,
    y_range: (f64, f64),
    windows: &'a [(f64, f64)],
    series: Vec<Series>,
    /// Points marked with a red cross (failed checks).
    marks: Vec<(f64, f64)>,
}

impl Chart<'_> {
    fn svg(&self) -> Result<String> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
            root.fill(&WHITE)?;
            let (y_min, y_max) = self.y_range;
            let mut chart = ChartBuilder::on(&root)
                .caption(self.title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..self.x_max, y_min..y_max)?;
            chart
                .configure_mesh()
                .x_desc("seconds from the start of the run")
                .y_desc(self.y_label)
                .light_line_style(RGBColor(240, 240, 240))
                // One light line between bold ones: a thin grid, and a smaller page.
                .max_light_lines(1)
                .draw()?;
            chart
                .draw_series(
                    self.windows
                        .iter()
                        .map(|&(a, b)| Rectangle::new([(a, y_min), (b, y_max)], WINDOW.mix(0.18).filled())),
                )?
                .label("fault window")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], WINDOW.mix(0.18).filled()));
            for series in &self.series {
                let color = series.color;
                chart
                    .draw_series(LineSeries::new(thin(series.points.clone(), MAX_POINTS), color.stroke_width(2)))?
                    .label(series.name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            }
            if !self.marks.is_empty() {
                chart
                    // Every n-th mark of a long run's failures, as many as a series has points.
                    .draw_series(
                        self.marks
                            .iter()
                            .step_by(self.marks.len().div_ceil(MAX_POINTS))
                            .map(|&p| Cross::new(p, 4, FAILED.stroke_width(2))),
                    )?
                    .label("failed check")
                    .legend(|(x, y)| Cross::new((x + 8, y), 4, FAILED.stroke_width(2)));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .draw()?;
            root.present()?;
        }
        Ok(svg)
    }
}

fn figure(html: &mut String, kind: &str, chart: &Chart<'_>, caption: &str) -> Result<()> {
    let _ = writeln!(
        html,
        "<figure class=\"chart\" data-chart=\"{}\">\n{}\n<figcaption>{}</figcaption>\n</figure>",
        esc(kind),
        chart.svg()?,
        esc(caption)
    );
    Ok(())
}

/// The end of the x axis: the run, its samples and its windows all fit.
fn x_max(report: &RunReport) -> f64 {
    let run = report.ended_unix_ms.saturating_sub(report.started_unix_ms) as f64 / 1000.0;
    let samples = report.samples.iter().map(|s| s.t_s);
    let checks = report.hypothesis.iter().flat_map(|h| &h.samples).map(|s| s.t_s);
    let windows = report.steps.iter().flat_map(windows_of).map(|w| w.1);
    let max = samples.chain(checks).chain(windows).fold(run, f64::max);
    if max > 0.0 {
        max * 1.02
    } else {
        1.0
    }
}

fn probe_charts(html: &mut String, report: &RunReport, x_max: f64) -> Result<()> {
    let samples = report.hypothesis.as_ref().map(|h| h.samples.as_slice()).unwrap_or_default();
    if samples.is_empty() {
        let _ = writeln!(html, "<p class=\"empty\">No probe checks were recorded.</p>");
        return Ok(());
    }
    let mut probes: Vec<&str> = Vec::new();
    for s in samples {
        if !probes.contains(&s.probe.as_str()) {
            probes.push(&s.probe);
        }
    }
    // Only steps that put rules in force: a pause step's windows are no fault.
    let windows: Vec<(f64, f64)> = report.steps.iter().filter(|s| !s.rules.is_empty()).flat_map(windows_of).collect();
    fn of<'a>(samples: &'a [ProbeSample], probe: &'a str) -> impl Iterator<Item = &'a ProbeSample> {
        samples.iter().filter(move |s| s.probe == probe)
    }
    let latency_max = samples.iter().map(|s| s.latency_ms).fold(1.0, f64::max) * 1.1;
    let latency = Chart {
        title: "Probe latency",
        y_label: "latency (ms)",
        x_max,
        y_range: (0.0, latency_max),
        windows: &windows,
        series: probes
            .iter()
            .enumerate()
            .map(|(i, p)| Series {
                name: (*p).to_owned(),
                points: of(samples, p).map(|s| (s.t_s, s.latency_ms)).collect(),
                color: PALETTE[i % PALETTE.len()],
            })
            .collect(),
        marks: samples.iter().filter(|s| !s.ok).map(|s| (s.t_s, s.latency_ms)).collect(),
    };
    figure(html, "probe-latency", &latency, "Each probe check's latency; red crosses are failed checks.")?;
    let success = Chart {
        title: "Probe success",
        y_label: "check passed (1) or failed (0)",
        x_max,
        y_range: (-0.1, 1.1),
        windows: &windows,
        series: probes
            .iter()
            .enumerate()
            .map(|(i, p)| Series {
                name: (*p).to_owned(),
                points: of(samples, p).map(|s| (s.t_s, if s.ok { 1.0 } else { 0.0 })).collect(),
                color: PALETTE[i % PALETTE.len()],
            })
            .collect(),
        marks: Vec::new(),
    };
    figure(html, "probe-success", &success, "Each probe check: 1 when it passed, 0 when it failed.")
}

fn rule_charts(html: &mut String, report: &RunReport, x_max: f64) -> Result<()> {
    let mut rules: Vec<(&str, u32, &str)> = Vec::new();
    for s in &report.samples {
        let key = (s.step.as_str(), s.rule_id, s.netns.as_str());
        if !rules.contains(&key) {
            rules.push(key);
        }
    }
    if rules.is_empty() {
        let _ = writeln!(html, "<p class=\"empty\">No counter samples were recorded.</p>");
        return Ok(());
    }
    for &(step, rule_id, netns) in rules.iter().take(MAX_RULE_CHARTS) {
        let samples: Vec<_> =
            report.samples.iter().filter(|s| s.step == step && s.rule_id == rule_id && s.netns == netns).collect();
        let windows: Vec<(f64, f64)> = report.steps.iter().filter(|s| s.name == step).flat_map(windows_of).collect();
        let fault = report
            .steps
            .iter()
            .filter(|s| s.name == step)
            .flat_map(|s| &s.rules)
            .find(|r| r.rule_id == rule_id && r.netns == netns)
            .map(|r| r.fault.as_str())
            .unwrap_or("");
        let y_max = samples.iter().map(|s| s.matched.max(s.dropped) as f64).fold(1.0, f64::max) * 1.1;
        let title = format!("{step}: rule {rule_id} in {netns}");
        let chart = Chart {
            title: &title,
            y_label: "packets (as counted)",
            x_max,
            y_range: (0.0, y_max),
            windows: &windows,
            series: vec![
                Series {
                    name: "matched".into(),
                    points: samples.iter().map(|s| (s.t_s, s.matched as f64)).collect(),
                    color: PALETTE[0],
                },
                Series {
                    name: "dropped".into(),
                    points: samples.iter().map(|s| (s.t_s, s.dropped as f64)).collect(),
                    color: FAILED,
                },
            ],
            marks: Vec::new(),
        };
        figure(
            html,
            "rule",
            &chart,
            &format!("Rule {rule_id} ({fault}) of step {step} in {netns}: the kernel's counters as sampled."),
        )?;
    }
    if rules.len() > MAX_RULE_CHARTS {
        let rest: Vec<String> =
            rules[MAX_RULE_CHARTS..].iter().map(|(s, r, n)| format!("{s} rule {r} in {n}")).collect();
        let _ = writeln!(
            html,
            "<p class=\"empty\">Not charted (report.json has their samples): {}</p>",
            esc(&rest.join(", "))
        );
    }
    Ok(())
}

fn row(html: &mut String, cells: &[String]) {
    html.push_str("<tr>");
    for c in cells {
        let _ = write!(html, "<td>{c}</td>");
    }
    html.push_str("</tr>\n");
}

fn head(html: &mut String, names: &[&str]) {
    html.push_str("<table>\n<tr>");
    for n in names {
        let _ = write!(html, "<th>{n}</th>");
    }
    html.push_str("</tr>\n");
}

const STYLE: &str = "\
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.verdict { font-size: 1.2em; font-weight: bold; padding: 0.4em 0.6em; display: inline-block; border-radius: 4px; }
.verdict.passed { background: #e3f4e1; color: #1d6b1a; } .verdict.failed { background: #fbe3e3; color: #a11; }
figure.chart { margin: 1em 0; } figure.chart svg { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; } .empty { color: #777; font-style: italic; }
";

pub fn render(report: &RunReport) -> Result<String> {
    let mut html = String::new();
    let (word, reasons) = outcome(report);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>chaos-ebpf run: {}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n",
        esc(&report.scenario)
    );
    let _ = writeln!(html, "<h1>chaos-ebpf run: {}</h1>", esc(&report.scenario));
    let _ = writeln!(
        html,
        "<p class=\"verdict {word}\">{word}{}</p>",
        if reasons.is_empty() { String::new() } else { format!(": {}", esc(&reasons.join("; "))) }
    );
    html.push_str("<table class=\"summary\">\n");
    let duration = report.ended_unix_ms.saturating_sub(report.started_unix_ms) as f64 / 1000.0;
    for (k, v) in [
        ("scenario", esc(&report.scenario)),
        ("seed", report.seed.to_string()),
        ("hypothesis", report.hypothesis.as_ref().map_or("none".into(), |h| verdict_name(h.verdict).to_owned())),
        ("started", utc(report.started_unix_ms)),
        ("duration", format!("{duration:.3} s")),
        ("revert", format!("{:.1} ms", report.revert_ms)),
        ("clean", if report.clean { "yes".into() } else { "no".into() }),
    ] {
        row(&mut html, &[k.to_owned(), v]);
    }
    html.push_str("</table>\n");

    let x_max = x_max(report);
    html.push_str("<h2>Probes</h2>\n");
    probe_charts(&mut html, report, x_max)?;
    html.push_str("<h2>Rules</h2>\n");
    rule_charts(&mut html, report, x_max)?;

    html.push_str("<h2>Steps</h2>\n");
    head(&mut html, &["step", "seed", "planned", "windows (planned → as run, intensity)", "rules", "ran its course"]);
    for step in &report.steps {
        let windows = step
            .windows
            .iter()
            .map(|w| {
                let ran = match (w.started_s, w.ended_s) {
                    (Some(a), Some(b)) => format!("{a:.3}–{b:.3} s"),
                    (Some(a), None) => format!("from {a:.3} s"),
                    _ => "did not run".into(),
                };
                format!("{:.3}–{:.3} s → {ran}, {}", w.planned_start_s, w.planned_end_s, w.intensity)
            })
            .collect::<Vec<_>>()
            .join("<br>");
        let rules = step
            .rules
            .iter()
            .map(|r| {
                esc(&format!(
                    "#{} {} in {}: matched {}, dropped {}, delayed {}, ended {}",
                    r.rule_id, r.fault, r.netns, r.counters.matched, r.counters.dropped, r.counters.delayed, r.ended
                ))
            })
            .collect::<Vec<_>>()
            .join("<br>");
        row(
            &mut html,
            &[
                esc(&step.name),
                step.seed.to_string(),
                format!("{:.3}–{:.3} s", step.planned_start_s, step.planned_end_s),
                windows,
                rules,
                if step.ran_its_course { "yes".into() } else { "no".into() },
            ],
        );
    }
    html.push_str("</table>\n");

    html.push_str("<h2>Hypothesis</h2>\n");
    match &report.hypothesis {
        None => html.push_str("<p class=\"empty\">The scenario has no hypothesis.</p>\n"),
        Some(h) => {
            let _ = writeln!(
                html,
                "<p>Verdict: <b>{}</b>{}. Steady before the faults: {}. Recovered: {}.</p>",
                verdict_name(h.verdict),
                h.reason.as_deref().map(|r| format!(" ({})", esc(r))).unwrap_or_default(),
                if h.steady_before { "yes" } else { "no" },
                h.recovered_after_s.map_or("no (or not checked)".into(), |s| format!("{s:.3} s after the revert"))
            );
            head(&mut html, &["probe", "kind", "phase", "checks", "failures", "p50", "p95"]);
            for p in &h.probes {
                row(
                    &mut html,
                    &[
                        esc(&p.probe),
                        esc(&p.kind),
                        p.phase.name().into(),
                        p.checks.to_string(),
                        p.failures.to_string(),
                        format!("{:.1} ms", p.p50_ms),
                        format!("{:.1} ms", p.p95_ms),
                    ],
                );
            }
            html.push_str("</table>\n");
        }
    }

    html.push_str("<h2>Abort</h2>\n");
    match &report.abort {
        None => html.push_str("<p class=\"empty\">No guard fired.</p>\n"),
        Some(a) => {
            let _ = writeln!(
                html,
                "<p>The <b>{}</b> guard fired at {:.3} s: {}. Every fault was removed {:.1} ms later.</p>",
                esc(&a.guard),
                a.fired_s,
                esc(&a.reason),
                a.revert_ms
            );
        }
    }

    html.push_str("<h2>Revert and cleanup</h2>\n");
    let _ = writeln!(
        html,
        "<p>Revert time: {:.1} ms. Clean: <b>{}</b>.</p>",
        report.revert_ms,
        if report.clean { "yes" } else { "no: run chaos-ebpf cleanup" }
    );
    if !report.revert_problems.is_empty() {
        html.push_str("<ul>\n");
        for p in &report.revert_problems {
            let _ = writeln!(html, "<li>{}</li>", esc(p));
        }
        html.push_str("</ul>\n");
    }
    if !report.cleanup.is_empty() {
        head(&mut html, &["created", "what", "netns", "gone", "proof"]);
        for c in &report.cleanup {
            row(
                &mut html,
                &[
                    esc(&c.kind),
                    esc(&c.what),
                    esc(&c.netns),
                    if c.gone { "yes".into() } else { "no".into() },
                    esc(&c.proof),
                ],
            );
        }
        html.push_str("</table>\n");
    }
    html.push_str("</body>\n</html>\n");
    Ok(html)
}

#[cfg(test)]
mod tests {
    use super::*;
    // The report module's fixtures (tests/report_html.rs compiles this file too, with
    // the fixtures beside it).
    use super::super::fixtures;

    /// The charts are there with their data (the browser test in tests/report_html.rs
    /// checks them after a real browser loaded the page).
    #[test]
    fn charts_for_probes_and_rules() {
        let html = render(&fixtures::rich_report()).unwrap();
        assert_eq!(html.matches("<figure class=\"chart\"").count(), 4, "2 probe charts, 2 rule charts");
        assert_eq!(html.matches("<svg").count(), 4);
        assert!(html.contains("data-chart=\"probe-latency\"") && html.contains("data-chart=\"probe-success\""));
        assert_eq!(html.matches("data-chart=\"rule\"").count(), 2);
        assert!(html.contains("<polyline"), "series are polylines");
        // Nothing to fetch: no external scripts, styles, images or fonts.
        for fetch in ["<script", "<link", "src=", "url(", "@import", "https:"] {
            assert!(!html.contains(fetch), "report.html contains {fetch}");
        }
    }

    /// A long series keeps at most MAX_POINTS points, in time order, with its extremes.
    #[test]
    fn long_series_are_thinned_keeping_spikes() {
        let mut points: Vec<(f64, f64)> = (0..100_000).map(|i| (i as f64, (i % 7) as f64)).collect();
        points[54_321].1 = 1000.0;
        let thinned = thin(points.clone(), MAX_POINTS);
        assert!(thinned.len() <= MAX_POINTS && thinned.len() > MAX_POINTS / 2, "{}", thinned.len());
        assert!(thinned.windows(2).all(|w| w[0].0 < w[1].0), "in time order");
        assert!(thinned.contains(&(54_321.0, 1000.0)), "the spike");
        assert_eq!(thin(points[..10].to_vec(), MAX_POINTS), points[..10].to_vec());
    }

    #[test]
    fn a_run_without_samples_says_so() {
        let mut report = fixtures::passing_report();
        report.samples.clear();
        let html = render(&report).unwrap();
        assert!(html.contains("No probe checks were recorded."));
        assert!(html.contains("No counter samples were recorded."));
        assert!(!html.contains("<svg"));
    }

    #[test]
    fn hostile_names_are_escaped() {
        let mut report = fixtures::rich_report();
        report.scenario = "<script>alert(1)</script>".into();
        report.steps[0].name = "a\"><img src=x onerror=alert(1)>".into();
        for s in report.samples.iter_mut().filter(|s| s.step == "flaky-link") {
            s.step = report.steps[0].name.clone();
        }
        let html = render(&report).unwrap();
        assert!(!html.contains("<script>") && !html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }
}
