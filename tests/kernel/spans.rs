//! A run's record: the spans it writes to its run directory (run > step > inject, a
//! revert per rule and one for the whole run), also when it is interrupted or a fault
//! is cut short, its report.json, and `verify` checking expectations against them.

use std::{
    path::Path,
    time::Duration,
};

use serde_json::Value;

use crate::support::*;

pub const TESTS: &[Test] =
    tests![spans_of_interrupted_run_and_verify, spans_of_cut_short_run_have_its_revert, spans_of_cleanup_after_sigkill];

fn spans_of(run_dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run_dir.join("spans.jsonl")).expect("the run wrote spans.jsonl");
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad span line {l}: {e}"))).collect()
}

/// The one span named `name` whose parent is `parent` (None: a root span).
fn the<'a>(spans: &'a [Value], name: &str, parent: Option<&Value>) -> &'a Value {
    let found: Vec<&Value> =
        spans.iter().filter(|s| s["name"] == name && s.get("parent_id") == parent.map(|p| &p["id"])).collect();
    assert_eq!(found.len(), 1, "spans named {name} under {:?}: {spans:#?}", parent.map(|p| &p["name"]));
    found[0]
}

fn verify(run_dir: &Path, expect: &Path) -> (i32, String, String) {
    chaos_run(&["verify", run_dir.to_str().unwrap(), "--expect", expect.to_str().unwrap()])
}

/// A loss run interrupted by SIGINT: spans.jsonl has run > step > inject with the rule's
/// counters, a revert under the step and one under the run, statuses that say it was
/// interrupted; report.json is written. `verify` passes a correct expectation file (0),
/// fails naming a span that never happened and a revert span removed from the record
/// (1), and refuses a bad file or run directory (2).
fn spans_of_interrupted_run_and_verify() {
    let pair = Pair::new("spans");
    let target = pair.target();
    let tmp = TempDir::new("spans-int");
    let run_dir = tmp.join("run");
    let chaos = Chaos::start(&[
        "inject",
        "loss",
        "--target",
        &target,
        "--probability",
        "0.5",
        "--duration",
        "5m",
        "--seed",
        "7",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    let replies = pair.ping(&pair.a, "192.0.2.2", 20, Duration::from_millis(200));
    assert!(replies < 20, "no ping was lost under 50% loss");
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "an interrupted run: {out}{err}");
    assert_nothing_left();

    let spans = spans_of(&run_dir);
    let run = the(&spans, "run", None);
    assert_eq!(run["attributes"]["seed"], 7, "{run}");
    assert_eq!((run["status"].as_str(), run["status_message"].as_str()), (Some("error"), Some("interrupted")), "{run}");
    assert_eq!(run["attributes"]["clean"], true, "{run}");
    let step = the(&spans, "step", Some(run));
    assert_eq!(step["attributes"]["ended"], "interrupted", "{step}");
    let inject = the(&spans, "inject", Some(step));
    assert_eq!(inject["attributes"]["target"], target.as_str(), "{inject}");
    assert_eq!(inject["attributes"]["ran_its_course"], false, "{inject}");
    assert_eq!(inject["status"], "ok", "{inject}");
    let dropped = inject["attributes"]["dropped"].as_u64().expect("the rule's counters on its span");
    assert!(dropped >= 1 && dropped <= inject["attributes"]["matched"].as_u64().unwrap(), "{inject}");
    let rule_revert = the(&spans, "revert", Some(step));
    assert_eq!(rule_revert["status"], "ok", "{rule_revert}");
    assert!(inject["end_unix_ns"].as_u64() <= rule_revert["start_unix_ns"].as_u64(), "{inject} {rule_revert}");
    let run_revert = the(&spans, "revert", Some(run));
    assert_eq!(run_revert["attributes"]["clean"], true, "{run_revert}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["interrupted"], true, "{report}");
    assert_eq!(report["steps"][0]["rules"][0]["counters"]["dropped"], dropped, "report and span agree: {report}");

    let expect = tmp.join("expect.yaml");
    std::fs::write(
        &expect,
        format!(
            "spans:
  - {{ name: run, count: 1, status: error, attributes: {{ seed: 7, clean: true }} }}
  - {{ name: step, parent: run, attributes: {{ ended: interrupted }} }}
  - {{ name: inject, parent: step, status: ok, attributes: {{ target: \"{target}\", dropped: {{ min: 1 }} }} }}
  - {{ name: revert, parent: step, status: ok, attributes: {{ target: \"{target}\" }} }}
  - {{ name: revert, parent: run, status: ok, attributes: {{ clean: true }} }}
order:
  - {{ before: inject, after: {{ name: revert, parent: step }} }}
"
        ),
    )
    .unwrap();
    let (code, out, err) = verify(&run_dir, &expect);
    assert_eq!(code, 0, "a correct expectation file: {out}{err}");
    assert!(out.contains("all 6 expectations hold"), "{out}");

    // A span that never happens.
    let never = tmp.join("never.yaml");
    std::fs::write(&never, "spans:\n  - name: run\n  - name: abort\n    parent: run\n").unwrap();
    let (code, out, err) = verify(&run_dir, &never);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("never.yaml:3:5: expected") && out.contains("span 'abort' under 'run', found 0"), "{out}");
    assert_eq!(out.lines().count(), 2, "one line per failed expectation and the total: {out}");

    // The same run without its rule's revert span: the correct file now fails, naming it.
    let cut = tmp.join("cut");
    std::fs::create_dir(&cut).unwrap();
    let kept: String = std::fs::read_to_string(run_dir.join("spans.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).unwrap()["id"] != rule_revert["id"])
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(cut.join("spans.jsonl"), kept).unwrap();
    let (code, out, err) = verify(&cut, &expect);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("expect.yaml:5:") && out.contains("span 'revert' under 'step'"), "{out}");
    assert!(out.contains("order: no span 'revert' under 'step' was recorded"), "{out}");
    assert!(out.contains("2 of 6 expectations failed"), "{out}");

    // Bad input: exit 2, with the position.
    let bad = tmp.join("bad.yaml");
    std::fs::write(&bad, "spans:\n  - name: run\n    colour: red\n").unwrap();
    let (code, out, err) = verify(&run_dir, &bad);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("bad.yaml:3:") && err.contains("unknown field `colour`"), "{err}");
    let (code, out, err) = verify(&tmp.join("nowhere"), &expect);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("not a directory"), "{err}");
    let (code, out, err) = verify(&tmp.0, &expect);
    assert_eq!(code, 2, "a directory without spans.jsonl: {out}{err}");
    assert!(err.contains("spans.jsonl") && err.contains("cannot open"), "{err}");
    // Bad input creates no run directory.
    let unused = tmp.join("unused");
    let (code, out, err) = chaos_run(&[
        "inject",
        "loss",
        "--target",
        "netns:cet-spans-nowhere",
        "--probability",
        "0.5",
        "--duration",
        "1s",
        "--run-dir",
        unused.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(!unused.exists(), "a refused run created its run directory");
    // A run directory that is in use is refused before anything changes.
    let (code, out, err) = chaos_run(&[
        "inject",
        "loss",
        "--target",
        &target,
        "--probability",
        "0.5",
        "--duration",
        "1s",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("not empty"), "{err}");
    assert_nothing_left();
}

/// A fault cut short (its lease lapsed while chaos-ebpf was stopped, as in lifecycle.rs):
/// the step says why and is an error, and the rule's revert span is there.
fn spans_of_cut_short_run_have_its_revert() {
    let pair = Pair::new("spancut");
    let target = pair.target();
    let tmp = TempDir::new("spans-cut");
    let run_dir = tmp.join("run");
    let chaos = Chaos::start(&[
        "inject",
        "partition",
        "--target",
        &target,
        "--duration",
        "6s",
        "--lease",
        "1s",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    chaos.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(2000));
    chaos.signal(libc::SIGCONT);
    let (code, out, err) = chaos.finish(Duration::from_secs(15));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("leases lapsed"), "{out}");
    assert_nothing_left();

    let spans = spans_of(&run_dir);
    let run = the(&spans, "run", None);
    let step = the(&spans, "step", Some(run));
    assert_eq!(step["status"], "error", "{step}");
    assert!(step["status_message"].as_str().unwrap_or("").contains("leases lapsed"), "{step}");
    let revert = the(&spans, "revert", Some(step));
    assert_eq!(revert["status"], "ok", "{revert}");
    the(&spans, "revert", Some(run));
    let inject = the(&spans, "inject", Some(step));
    assert!(inject["attributes"]["matched"].is_u64(), "the counters close the inject span: {inject}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("report.json")).unwrap()).unwrap();
    assert!(report["failed"].as_str().unwrap_or("").contains("leases lapsed"), "{report}");

    let expect = tmp.join("expect.yaml");
    std::fs::write(
        &expect,
        "spans:
  - { name: step, parent: run, status: error }
  - { name: inject, parent: step, attributes: { ran_its_course: false } }
  - { name: revert, parent: step, status: ok, count: 1 }
order:
  - { before: inject, after: revert }
",
    )
    .unwrap();
    let (code, out, err) = verify(&run_dir, &expect);
    assert_eq!(code, 0, "{out}{err}");
}

/// `cleanup --run-dir` after a SIGKILLed run: a `cleanup` span that says what it removed
/// (the dead run's record at least) and that all is clean; a run's own sweep of dead
/// runs is a `cleanup` span under its `run`.
fn spans_of_cleanup_after_sigkill() {
    let pair = Pair::new("spanclean");
    let target = pair.target();
    let tmp = TempDir::new("spans-clean");
    let chaos = Chaos::start(&["inject", "partition", "--target", &target, "--duration", "5m", "--lease", "1s"]);
    chaos.signal(libc::SIGKILL);
    let (code, _, _) = chaos.finish(Duration::from_secs(5));
    assert_eq!(code, -1, "killed by a signal");
    let run_dir = tmp.join("cleanup");
    let (code, out, err) = chaos_run(&["cleanup", "--run-dir", run_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_nothing_left();
    let spans = spans_of(&run_dir);
    let cleanup = the(&spans, "cleanup", None);
    assert_eq!((cleanup["status"].as_str(), cleanup["attributes"]["clean"].as_bool()), (Some("ok"), Some(true)));
    assert!(cleanup["attributes"]["removed"].as_u64().unwrap() >= 1, "{cleanup}");
    let expect = tmp.join("expect.yaml");
    std::fs::write(&expect, "spans:\n  - { name: cleanup, count: 1, status: ok, attributes: { removed: { min: 1 } } }\n")
        .unwrap();
    let (code, out, err) = verify(&run_dir, &expect);
    assert_eq!(code, 0, "{out}{err}");

    let run_dir = tmp.join("run");
    let (code, out, err) = chaos_run(&[
        "inject",
        "loss",
        "--target",
        &target,
        "--probability",
        "0.1",
        "--duration",
        "1s",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let spans = spans_of(&run_dir);
    let run = the(&spans, "run", None);
    assert_eq!(run["status"], "ok", "{run}");
    assert_eq!(the(&spans, "cleanup", Some(run))["status"], "ok");
    assert_eq!(the(&spans, "step", Some(run))["attributes"]["ended"], "completed");
    assert_nothing_left();
}
