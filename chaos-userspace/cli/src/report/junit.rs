//! junit.xml: the run as one JUnit test suite, for CI systems that show test results.
//! One test case per probe and phase of the hypothesis (`hypothesis.<probe>` /
//! `before`, `during`, `after`) and one per step (`steps` / the step's name).
//!
//! When a case fails:
//! - `before`: any check failed (the steady state did not hold before the faults);
//! - `during`: a guard aborted the run (the guards judge the checks during the faults;
//!   failed checks alone are what faults are for);
//! - `after`: any check failed and the probes did not recover within the deadline;
//! - a step: it did not run its course.
//!
//! A phase with no checks is `skipped`. quick-xml escapes every name; characters XML
//! 1.0 cannot hold at all (control characters) become U+FFFD.

use anyhow::Result;
use chaos_engine::report::{CheckPhase, ProbeSummary, RunReport};
use quick_xml::{
    events::{BytesDecl, BytesText, Event},
    Writer,
};

/// Text XML 1.0 can carry: no control characters but tab, newline and carriage return.
fn xml_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => '\u{fffd}',
            c => c,
        })
        .collect()
}

struct Case {
    classname: String,
    name: String,
    seconds: f64,
    /// (message, details)
    failure: Option<(String, String)>,
    skipped: Option<String>,
    out: String,
}

fn probe_case(report: &RunReport, p: &ProbeSummary) -> Case {
    let h = report.hypothesis.as_ref();
    let stats = format!("{} checks, {} failed, p50 {:.1} ms, p95 {:.1} ms", p.checks, p.failures, p.p50_ms, p.p95_ms);
    let failure = match p.phase {
        CheckPhase::Before if p.failures > 0 => {
            Some(format!("{} of {} checks failed before the faults: no steady state", p.failures, p.checks))
        }
        CheckPhase::During => report
            .abort
            .as_ref()
            .map(|a| format!("the {} guard aborted the run at {:.3} s: {}", a.guard, a.fired_s, a.reason)),
        CheckPhase::After if p.failures > 0 && h.is_some_and(|h| h.recovered_after_s.is_none()) => Some(format!(
            "{} of {} checks failed after the revert and the probes did not recover",
            p.failures, p.checks
        )),
        _ => None,
    };
    let failed_checks = h
        .map(|h| {
            h.samples
                .iter()
                .filter(|s| s.probe == p.probe && s.phase == p.phase && !s.ok)
                .map(|s| format!("{:.3} s: {:.1} ms {}", s.t_s, s.latency_ms, s.detail))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    Case {
        classname: format!("{}.hypothesis.{}", report.scenario, p.probe),
        name: p.phase.name().to_owned(),
        seconds: 0.0,
        failure: failure.map(|m| (m, format!("{stats}\n{failed_checks}"))),
        skipped: (p.checks == 0).then(|| "no checks in this phase".to_owned()),
        out: format!("{} probe {}: {stats}", p.kind, p.probe),
    }
}

fn cases(report: &RunReport) -> Vec<Case> {
    let mut cases: Vec<Case> =
        report.hypothesis.iter().flat_map(|h| &h.probes).map(|p| probe_case(report, p)).collect();
    for step in &report.steps {
        let rules = step
            .rules
            .iter()
            .map(|r| {
                format!(
                    "rule {} {} in {}: matched {}, dropped {}, delayed {}, ended {}",
                    r.rule_id, r.fault, r.netns, r.counters.matched, r.counters.dropped, r.counters.delayed, r.ended
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let failure = (!step.ran_its_course).then(|| {
            let why = step.rules.iter().find(|r| !r.ran_its_course).map(|r| r.ended.as_str()).unwrap_or("cut short");
            (
                format!(
                    "step {} did not run its course ({why}): planned {:.3}-{:.3} s, ran {:.3} s",
                    step.name, step.planned_start_s, step.planned_end_s, step.seconds
                ),
                rules.clone(),
            )
        });
        cases.push(Case {
            classname: format!("{}.steps", report.scenario),
            name: step.name.clone(),
            seconds: step.seconds,
            failure,
            skipped: None,
            out: format!("seed {}\n{rules}", step.seed),
        });
    }
    cases
}

pub fn render(report: &RunReport) -> Result<Vec<u8>> {
    let cases = cases(report);
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let skipped = cases.iter().filter(|c| c.skipped.is_some()).count();
    let seconds = report.ended_unix_ms.saturating_sub(report.started_unix_ms) as f64 / 1000.0;
    let tests = cases.len().to_string();
    let failures = failures.to_string();
    let skipped = skipped.to_string();
    let time = format!("{seconds:.3}");
    let timestamp = super::utc(report.started_unix_ms);
    let timestamp = timestamp.trim_end_matches('Z');
    let scenario = xml_text(&report.scenario);
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.create_element("testsuites")
        .with_attributes([
            ("name", scenario.as_str()),
            ("tests", &tests),
            ("failures", &failures),
            ("skipped", &skipped),
            ("time", &time),
        ])
        .write_inner_content(|w| {
            w.create_element("testsuite")
                .with_attributes([
                    ("name", scenario.as_str()),
                    ("tests", &tests),
                    ("failures", &failures),
                    ("errors", "0"),
                    ("skipped", &skipped),
                    ("time", &time),
                    ("timestamp", timestamp),
                ])
                .write_inner_content(|w| {
                    let seed = report.seed.to_string();
                    let clean = report.clean.to_string();
                    w.create_element("properties").write_inner_content(|w| {
                        for (name, value) in [("seed", seed.as_str()), ("clean", &clean)] {
                            w.create_element("property")
                                .with_attributes([("name", name), ("value", value)])
                                .write_empty()?;
                        }
                        Ok(())
                    })?;
                    for case in &cases {
                        let classname = xml_text(&case.classname);
                        let name = xml_text(&case.name);
                        let time = format!("{:.3}", case.seconds);
                        w.create_element("testcase")
                            .with_attributes([("classname", classname.as_str()), ("name", &name), ("time", &time)])
                            .write_inner_content(|w| {
                                if let Some((message, details)) = &case.failure {
                                    w.create_element("failure")
                                        .with_attributes([("message", xml_text(message).as_str()), ("type", "chaos")])
                                        .write_text_content(BytesText::new(&xml_text(details)))?;
                                }
                                if let Some(why) = &case.skipped {
                                    w.create_element("skipped")
                                        .with_attribute(("message", xml_text(why).as_str()))
                                        .write_empty()?;
                                }
                                w.create_element("system-out")
                                    .write_text_content(BytesText::new(&xml_text(&case.out)))?;
                                Ok(())
                            })?;
                    }
                    Ok(())
                })?;
            Ok(())
        })?;
    let mut xml = w.into_inner();
    xml.push(b'\n');
    Ok(xml)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;
    use quick_xml::{events::Event, Reader};

    /// A test case as read back: classname, name, failure message, skipped.
    #[derive(Debug, PartialEq)]
    struct ReadCase {
        classname: String,
        name: String,
        failure: Option<String>,
        skipped: bool,
    }

    /// Parses the file back with quick-xml's reader (which fails on malformed XML:
    /// unbalanced tags, bad escapes) and collects the test cases.
    fn parse(xml: &[u8]) -> (Vec<ReadCase>, Vec<(String, String)>) {
        let mut reader = Reader::from_reader(xml);
        reader.config_mut().check_end_names = true;
        let mut cases = Vec::new();
        let mut suite_attributes = Vec::new();
        let mut buf = Vec::new();
        let mut depth = 0i32;
        loop {
            let event = reader.read_event_into(&mut buf).unwrap_or_else(|e| panic!("malformed junit.xml: {e}"));
            let (start, empty) = match &event {
                Event::Start(s) => (Some(s.clone()), false),
                Event::Empty(s) => (Some(s.clone()), true),
                Event::End(_) => {
                    depth -= 1;
                    (None, false)
                }
                Event::Eof => break,
                _ => (None, false),
            };
            if let Some(start) = start {
                if !empty {
                    depth += 1;
                }
                let attributes: Vec<(String, String)> = start
                    .attributes()
                    .map(|a| {
                        let a = a.expect("a well-formed attribute");
                        let value = a.unescape_value().expect("a well-escaped attribute").into_owned();
                        (String::from_utf8(a.key.as_ref().to_vec()).unwrap(), value)
                    })
                    .collect();
                let get = |k: &str| attributes.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                match start.name().as_ref() {
                    b"testsuite" => suite_attributes = attributes.clone(),
                    b"testcase" => cases.push(ReadCase {
                        classname: get("classname").unwrap(),
                        name: get("name").unwrap(),
                        failure: None,
                        skipped: false,
                    }),
                    b"failure" => cases.last_mut().unwrap().failure = get("message"),
                    b"skipped" => cases.last_mut().unwrap().skipped = true,
                    _ => {}
                }
            }
            buf.clear();
        }
        assert_eq!(depth, 0, "unbalanced elements");
        (cases, suite_attributes)
    }

    #[test]
    fn a_case_per_probe_phase_and_per_step() {
        let xml = render(&fixtures::rich_report()).unwrap();
        let (cases, suite) = parse(&xml);
        assert_eq!(cases.len(), 2 * 3 + 2, "{cases:?}");
        assert!(suite.contains(&("tests".into(), "8".into())), "{suite:?}");
        // during: the guard fired (for both probes); the guard cut slow-peer short.
        assert!(suite.contains(&("failures".into(), "3".into())), "{suite:?}");
        let case = |classname: &str, name: &str| {
            cases.iter().find(|c| c.classname == classname && c.name == name).unwrap_or_else(|| panic!("{cases:?}"))
        };
        assert_eq!(case("rich.hypothesis.api", "before").failure, None);
        let during = case("rich.hypothesis.db", "during").failure.clone().unwrap();
        assert!(during.contains("error-rate guard aborted the run at 5.500 s"), "{during}");
        assert_eq!(case("rich.hypothesis.api", "after").failure, None);
        assert_eq!(case("rich.steps", "flaky-link").failure, None);
        let step = case("rich.steps", "slow-peer").failure.clone().unwrap();
        assert!(step.contains("did not run its course (aborted: error-rate guard)"), "{step}");
    }

    #[test]
    fn failed_steady_state_and_recovery_and_skipped_phases() {
        let mut report = fixtures::rich_report();
        report.abort = None;
        let h = report.hypothesis.as_mut().unwrap();
        h.recovered_after_s = None;
        h.probes[0].failures = 1; // api before
        h.probes[2].failures = 2; // api after
        h.probes[3].checks = 0; // db before
        h.probes[3].failures = 0;
        let (cases, _) = parse(&render(&report).unwrap());
        let failure = |classname: &str, name: &str| {
            cases.iter().find(|c| c.classname == classname && c.name == name).and_then(|c| c.failure.clone())
        };
        assert!(failure("rich.hypothesis.api", "before").unwrap().contains("1 of 4 checks failed before the faults"));
        assert!(failure("rich.hypothesis.api", "after").unwrap().contains("did not recover"));
        assert_eq!(failure("rich.hypothesis.api", "during"), None, "no guard fired");
        let db_before = cases.iter().find(|c| c.classname == "rich.hypothesis.db" && c.name == "before").unwrap();
        assert!(db_before.skipped && db_before.failure.is_none());
    }

    /// Names with markup, quotes, entities, a CDATA end and control characters: the file
    /// stays well-formed and the names read back as they were (controls as U+FFFD).
    #[test]
    fn hostile_names_are_escaped() {
        let mut report = fixtures::rich_report();
        let hostile = "<x a=\"1\" b='2'>&amp; ]]> \u{1}\u{1b}[31m</x>";
        report.scenario = hostile.into();
        report.steps[1].name = hostile.into();
        report.steps[1].rules[0].ended = hostile.into();
        report.hypothesis.as_mut().unwrap().probes[0].probe = hostile.into();
        report.hypothesis.as_mut().unwrap().samples[0].detail = hostile.into();
        let xml = render(&report).unwrap();
        let text = String::from_utf8(xml.clone()).unwrap();
        assert!(!text.contains("<x a="), "{text}");
        let (cases, suite) = parse(&xml);
        let readable = "<x a=\"1\" b='2'>&amp; ]]> \u{fffd}\u{fffd}[31m</x>";
        assert!(suite.contains(&("name".into(), readable.into())), "{suite:?}");
        let step = cases.iter().find(|c| c.name == readable).unwrap_or_else(|| panic!("{cases:?}"));
        assert!(step.failure.as_deref().unwrap().contains(readable));
        assert!(cases.iter().any(|c| c.classname == format!("{readable}.hypothesis.{readable}")));
    }
}
