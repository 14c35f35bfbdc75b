//! A real run's artifacts (chaos-userspace/cli/src/report/): every file of the run
//! directory and the bundle beside it, stamps frozen by --freeze-clock, and the digest:
//! the same for two runs of one scenario and seed, another for another seed.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::*;

pub const TESTS: &[Test] = tests![
    game_day_sample_runs_with_every_artifact,
    reports_of_lab_runs_and_their_digests,
];

/// 2000-01-01T00:00:00Z in ms: where --freeze-clock starts a run.
const FROZEN_EPOCH_MS: u64 = 946_684_800_000;

const SCENARIO: &str = "\
apiVersion: chaos-ebpf/v1
name: reports
seed: 7
lab:
  nodes: 2
  traffic: { from: n1, to: n2, rate: 100 }
targets:
  n1: netns:chaos-lab-n1
steps:
  - name: lossy
    fault: loss
    target: n1
    probability: 0.3
    duration: 1s
  - name: cut
    fault: partition
    target: n1
    peers: [192.0.2.2/32]
    mode: both
    duration: 1s
";

const FILES: &[&str] = &[
    "spans.jsonl",
    "events.jsonl",
    "run.log",
    "report.json",
    "report.md",
    "junit.xml",
    "report.html",
    "cleanup.json",
    "topology.json",
    "plan.json",
    "scenario.yaml",
    "digest.txt",
    "meta.json",
];

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs the scenario into `dir/name` with `args`; returns the run directory.
fn run(dir: &Path, scenario: &Path, name: &str, args: &[&str]) -> PathBuf {
    let run_dir = dir.join(name);
    let mut all = vec!["run", scenario.to_str().unwrap(), "--run-dir", run_dir.to_str().unwrap()];
    all.extend_from_slice(&["--metrics-addr", "off"]);
    all.extend_from_slice(args);
    let (code, _, err) = chaos_run(&all);
    assert_eq!(code, 0, "{err}");
    run_dir
}

fn reports_of_lab_runs_and_their_digests() {
    require_root();
    let dir = TempDir::new("reports");
    let scenario = dir.0.join("reports.yaml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let first = run(&dir.0, &scenario, "first", &["--freeze-clock"]);
    let second = run(&dir.0, &scenario, "second", &["--freeze-clock"]);
    let other_seed = run(&dir.0, &scenario, "other-seed", &["--seed", "8"]);
    assert_nothing_left();

    for file in FILES {
        let len = std::fs::metadata(first.join(file)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{file} is missing or empty in {}", first.display());
    }
    let digest = |run_dir: &Path| std::fs::read_to_string(run_dir.join("digest.txt")).unwrap().trim().to_owned();
    assert_eq!(digest(&first).len(), 64);
    // Counters and times differ between the runs (the probe's packets are not the same
    // number); the digest does not.
    assert_eq!(digest(&first), digest(&second), "one scenario and seed, two digests");
    assert_ne!(digest(&first), digest(&other_seed), "another seed, the same digest");

    // Frozen stamps, everywhere the directory records one.
    let meta = json(&first.join("meta.json"));
    assert_eq!(meta["started_unix_ms"], FROZEN_EPOCH_MS);
    assert_eq!(meta["started"], "2000-01-01T00:00:00.000Z");
    assert_eq!((meta["scenario"].as_str(), meta["seed"].as_u64()), (Some("reports"), Some(7)));
    assert_eq!(meta["digest"], digest(&first));
    assert_eq!(meta["kernel"], String::from_utf8_lossy(&sh("uname", &["-r"]).stdout).trim());
    let report = json(&first.join("report.json"));
    assert_eq!(report["started_unix_ms"], FROZEN_EPOCH_MS);
    let ended = report["ended_unix_ms"].as_u64().unwrap();
    assert!(ended > FROZEN_EPOCH_MS + 2000 && ended < FROZEN_EPOCH_MS + 60_000, "{ended}");
    let spans = std::fs::read_to_string(first.join("spans.jsonl")).unwrap();
    for line in spans.lines() {
        let span: Value = serde_json::from_str(line).unwrap();
        let start_ms = span["start_unix_ns"].as_u64().unwrap() / 1_000_000;
        assert!(start_ms.abs_diff(FROZEN_EPOCH_MS) < 60_000, "not frozen: {line}");
    }
    let other_meta = json(&other_seed.join("meta.json"));
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(other_meta["started_unix_ms"].as_u64().unwrap().abs_diff(now_ms) < 600_000, "{other_meta}");

    // The events as the engine sent them.
    let events: Vec<Value> = std::fs::read_to_string(first.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "started");
    let kinds = |kind: &str| events.iter().filter(|e| e["event"] == kind).count();
    assert_eq!((kinds("rules_installed"), kinds("step_ended"), kinds("reverted")), (2, 2, 1), "{events:#?}");

    // What the reports say.
    let md = std::fs::read_to_string(first.join("report.md")).unwrap();
    for expected in ["| scenario | reports |", "| seed | 7 |", "| verdict | **passed** |", "| lossy |", "| cut |"] {
        assert!(md.contains(expected), "report.md lacks {expected}:\n{md}");
    }
    let junit = std::fs::read_to_string(first.join("junit.xml")).unwrap();
    assert!(junit.contains("tests=\"2\" failures=\"0\""), "{junit}");
    assert!(junit.contains("<testcase classname=\"reports.steps\" name=\"lossy\""), "{junit}");
    let html = std::fs::read_to_string(first.join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("chaos-ebpf run: reports"));
    assert_eq!(json(&first.join("plan.json"))["seed"], 7);
    assert_eq!(json(&other_seed.join("plan.json"))["seed"], 8);
    assert_eq!(std::fs::read_to_string(first.join("scenario.yaml")).unwrap(), SCENARIO);
    assert_eq!(json(&first.join("cleanup.json"))["clean"], true);

    // The bundle: every file, under the directory's name, stamped from 2000.
    let bundle = dir.0.join("first.tar.gz");
    let listing = sh("tar", &["tzvf", bundle.to_str().unwrap()]);
    assert!(listing.status.success(), "tar tzvf {}", bundle.display());
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    for file in FILES {
        assert!(listing.contains(&format!(" first/{file}\n")), "{file} not in the bundle:\n{listing}");
    }
    assert!(listing.lines().all(|l| l.contains(" 2000-01-01 ")), "{listing}");
}

/// The README's sample: scenarios/game-day.yaml on the embedded lab (a hypothesis, two
/// parallel faults on two targets, a duty cycle, a ramp, abort guards) passes, runs
/// every window, and writes every artifact and the bundle.
fn game_day_sample_runs_with_every_artifact() {
    require_root();
    let dir = TempDir::new("game-day");
    let scenario = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios/game-day.yaml"));
    let run_dir = run(&dir.0, scenario, "game-day", &[]);
    for file in FILES.iter().chain(&["metrics-before.prom", "metrics-during.prom", "metrics-after.prom"]) {
        assert!(run_dir.join(file).is_file(), "{file} missing from the run directory");
    }
    assert!(run_dir.with_extension("tar.gz").is_file(), "no bundle beside the run directory");
    let report = json(&run_dir.join("report.json"));
    assert_eq!(report["hypothesis"]["verdict"], "passed", "{}", report["hypothesis"]);
    assert!(report["abort"].is_null(), "{}", report["abort"]);
    let step = |name: &str| {
        report["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no step {name}"))
    };
    for s in report["steps"].as_array().unwrap() {
        assert_eq!(s["ran_its_course"], true, "{s}");
    }
    // The two parallel steps started together, on their two targets.
    let started = |name: &str| step(name)["windows"][0]["started_s"].as_f64().unwrap();
    let apart = (started("n1-lossy") - started("n2-lossy")).abs();
    assert!(apart < timing_bound().as_secs_f64(), "the parallel steps started {apart} s apart");
    assert_eq!(step("flapping-link")["windows"].as_array().unwrap().len(), 4);
    let intensities: Vec<f64> =
        step("loss-ramp")["windows"].as_array().unwrap().iter().map(|w| w["intensity"].as_f64().unwrap()).collect();
    assert_eq!(intensities, [0.1, 0.4, 0.7, 1.0]);
    assert_eq!(step("loss-ramp")["rules"].as_array().unwrap().len(), 2, "the ramp is on both targets");
    // The partition's windows cut n2's pings to n1: the probe saw it.
    let during = report["hypothesis"]["probes"].as_array().unwrap().iter().find(|p| p["phase"] == "during").unwrap();
    assert!(during["failures"].as_u64().unwrap() > 0, "{during}");
    let cleanup = json(&run_dir.join("cleanup.json"));
    let text = cleanup.to_string();
    assert!(!text.contains("\"gone\":false"), "{text}");
    assert_eq!(json(&run_dir.join("topology.json")).as_array().map(Vec::len), Some(2));
    assert_nothing_left();
}
