//! digest.txt: SHA-256 of the run's normalised trace, the same for every run of one
//! scenario with one seed, and different when the scenario or the seed differ.
//!
//! The normalised trace (written as digest-input.json, to see why two digests differ) is
//! the plan as run (targets, faults, steps, windows and their planned times, the seed),
//! each step's seed, and the span tree of spans.jsonl: each span's name and attributes
//! and its children. Left out is whatever a run measures or the machine assigns: span
//! ids, times, statuses and status messages, the counters, durations and latencies
//! (attributes named in [`MEASURED`], or ending in `_ms`, `_ns` or `_s` unless they start
//! with `planned`), and pids (`/proc/<pid>/` in any text becomes `/proc/PID/`). Children are sorted (parallel steps close in either order)
//! and identical siblings collapse into one, so that how many probe checks fit into a
//! phase does not change the digest.

use anyhow::Result;
use chaos_engine::report::RunReport;
use chaos_model::{expect::SpanRecord, plan::Plan};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

/// Attributes whose values a run measures (or the machine assigns).
pub const MEASURED: &[&str] = &[
    // A rule's counters.
    "seen",
    "matched",
    "dropped",
    "passed",
    "delayed",
    "errors",
    "expired",
    "protected",
    "unparsed",
    // Probe checks: their outcome and what failed.
    "ok",
    "detail",
    "reason",
    "value",
    // Durations.
    "seconds",
    "duration",
    // Machine state: what dead runs left, ids of processes and runs.
    "dead_runs",
    "pid",
    "run_id",
    "id",
];

pub struct Digest {
    /// Lowercase hex.
    pub sha256: String,
    pub input: Value,
}

fn measured(key: &str) -> bool {
    MEASURED.contains(&key)
        || (!key.starts_with("planned") && (key.ends_with("_ms") || key.ends_with("_ns") || key.ends_with("_s")))
}

/// `text` with every `/proc/<pid>/` as `/proc/PID/`: a cgroup's or a process's namespace
/// is found through one of its processes, another one each run.
fn without_pids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("/proc/") {
        out.push_str(&rest[..at + "/proc/".len()]);
        rest = &rest[at + "/proc/".len()..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 && rest[digits..].starts_with('/') {
            out.push_str("PID");
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

/// A span and its descendants, normalised. Its status is left out: whether a check
/// passed is measured, and how a step or the run ended is in their attributes (`ended`,
/// `ran_its_course`, `interrupted`, `clean`).
fn node(span: &SpanRecord, children_of: &dyn Fn(u64) -> Vec<Value>) -> Value {
    let attributes: Map<String, Value> = span
        .attributes
        .iter()
        .filter(|(k, _)| !measured(k))
        .map(|(k, v)| match v {
            Value::String(text) => (k.clone(), Value::String(without_pids(text))),
            v => (k.clone(), v.clone()),
        })
        .collect();
    let mut children = children_of(span.id);
    // Sorted by their text, then identical ones collapse.
    children.sort_by_cached_key(Value::to_string);
    children.dedup();
    json!({ "name": span.name, "attributes": attributes, "children": children })
}

/// The normalised span tree of `spans_jsonl`: its roots (spans without a parent in the
/// file), sorted and collapsed like children.
pub fn span_tree(spans_jsonl: &str) -> Result<Vec<Value>> {
    let spans = chaos_model::expect::parse_spans("spans.jsonl", spans_jsonl)?;
    let ids: std::collections::HashSet<u64> = spans.iter().map(|s| s.id).collect();
    fn children(spans: &[SpanRecord], parent: Option<u64>, ids: &std::collections::HashSet<u64>) -> Vec<Value> {
        spans
            .iter()
            .filter(|s| match parent {
                Some(p) => s.parent_id == Some(p),
                None => s.parent_id.is_none_or(|p| !ids.contains(&p)),
            })
            .map(|s| node(s, &|id| children(spans, Some(id), ids)))
            .collect()
    }
    let mut roots = children(&spans, None, &ids);
    roots.sort_by_cached_key(Value::to_string);
    roots.dedup();
    Ok(roots)
}

/// The digest of a run: its spans (the text of spans.jsonl), plan and report.
pub fn digest(spans_jsonl: &str, plan: &Plan, report: &RunReport) -> Result<Digest> {
    let mut plan = serde_json::to_value(plan)?;
    plan["seed"] = json!(report.seed);
    let steps: Vec<Value> = report
        .steps
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "seed": s.seed,
                "planned_start_s": s.planned_start_s,
                "planned_end_s": s.planned_end_s,
                "windows": s.windows.iter().map(|w| json!([w.planned_start_s, w.planned_end_s, w.intensity])).collect::<Vec<_>>(),
            })
        })
        .collect();
    let input = json!({
        "scenario": report.scenario,
        "seed": report.seed,
        "plan": plan,
        "steps": steps,
        "spans": span_tree(spans_jsonl)?,
    });
    // serde_json's maps are sorted by key: one text for one value.
    let sha256 = Sha256::digest(serde_json::to_vec(&input)?);
    let sha256 = sha256.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Digest { sha256, input })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    fn of(report: &RunReport, plan: &Plan) -> String {
        digest(&fixtures::spans_jsonl(report), plan, report).unwrap().sha256
    }

    #[test]
    fn the_same_run_gives_the_same_digest() {
        let report = fixtures::rich_report();
        let first = of(&report, &fixtures::plan());
        assert_eq!(first.len(), 64);
        assert_eq!(first, of(&report, &fixtures::plan()));
    }

    /// Counters, latencies, revert times, stamps, span ids and order, and how many probe
    /// checks ran: none of them change the digest.
    #[test]
    fn measured_values_do_not_change_it() {
        let report = fixtures::rich_report();
        let plan = fixtures::plan();
        let first = of(&report, &plan);
        let mut measured = report.clone();
        fixtures::change_measured_values(&mut measured);
        assert_eq!(first, of(&measured, &plan), "changed counters, latencies, stamps, probe check count");
        // The same spans in another order with other ids (parallel steps close in
        // either order).
        let spans = fixtures::spans_jsonl(&report);
        let mut lines: Vec<String> = spans.lines().map(str::to_owned).collect();
        lines.reverse();
        let renumbered: Vec<String> = lines
            .iter()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v["id"] = json!(v["id"].as_u64().unwrap() + 5000);
                if let Some(p) = v["parent_id"].as_u64() {
                    v["parent_id"] = json!(p + 5000);
                }
                v.to_string()
            })
            .collect();
        let reordered = digest(&(renumbered.join("\n") + "\n"), &plan, &report).unwrap().sha256;
        assert_eq!(first, reordered);
        // A probe check that failed this time (status and attributes) and a namespace
        // found through another process.
        let other: Vec<String> = spans
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                if v["name"] == "probe" && v["attributes"]["probe"] == "db" {
                    v["status"] = json!("error");
                    v["status_message"] = json!("timed out");
                    v["attributes"]["ok"] = json!(false);
                }
                v.to_string()
            })
            .collect();
        assert_eq!(first, digest(&(other.join("\n") + "\n"), &plan, &report).unwrap().sha256);
        let mut pid_target = report.clone();
        pid_target.steps[0].rules[0].netns = "/proc/4242/ns/net".into();
        let with_pid = of(&pid_target, &plan);
        pid_target.steps[0].rules[0].netns = "/proc/77/ns/net".into();
        assert_eq!(with_pid, of(&pid_target, &plan));
        assert_eq!(without_pids("/proc/12/ns/net /proc/self/ns /proc/1x/"), "/proc/PID/ns/net /proc/self/ns /proc/1x/");
    }

    /// A changed seed, scenario name, step seed, planned time, window or fault: another
    /// digest.
    #[test]
    fn a_changed_scenario_or_seed_changes_it() {
        let report = fixtures::rich_report();
        let plan = fixtures::plan();
        let first = of(&report, &plan);
        let mut seed = report.clone();
        seed.seed = 43;
        assert_ne!(first, of(&seed, &plan), "seed");
        let mut step_seed = report.clone();
        step_seed.steps[1].seed = 78;
        assert_ne!(first, of(&step_seed, &plan), "step seed");
        let mut name = report.clone();
        name.scenario = "rich2".into();
        assert_ne!(first, of(&name, &plan), "scenario name");
        let mut planned = plan.clone();
        planned.steps[1].start = std::time::Duration::from_secs_f64(2.5);
        assert_ne!(first, of(&report, &planned), "planned start");
        let mut window = plan.clone();
        window.steps[0].windows[1].intensity = 0.5;
        assert_ne!(first, of(&report, &window), "window intensity");
        let other = chaos_model::scenario::parse("rich.yaml", &fixtures::SCENARIO.replace("0.3", "0.35")).unwrap();
        assert_ne!(first, of(&report, &other), "fault");
        let mut outcome = report.clone();
        outcome.steps[0].rules[0].ended = "interrupted".into();
        assert_ne!(first, of(&outcome, &plan), "how a rule ended");
    }

    #[test]
    fn measured_attribute_names() {
        for key in ["matched", "latency_ms", "revert_ms", "fired_s", "start_unix_ns", "ok", "dead_runs"] {
            assert!(measured(key), "{key}");
        }
        for key in ["planned_ms", "step", "seed", "target", "rule_id", "ended", "clean", "phase"] {
            assert!(!measured(key), "{key}");
        }
    }
}
