//! The steady-state hypothesis and the abort guards of a v1 scenario on real traffic:
//! probes before, during and after the faults; a guard that fires reverts every fault
//! at once (and says how long that took); a run whose steady state does not hold
//! changes nothing.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use crate::support::*;

pub const TESTS: &[Test] = tests![
    hypothesis_holds_and_recovers,
    error_rate_guard_aborts_and_reverts,
    latency_guard_aborts_on_slow_checks,
    prometheus_guard_aborts_on_the_runs_own_metrics,
    wall_clock_guard_ends_a_long_run,
    no_steady_state_no_faults,
];

/// A scenario around a ping probe from side a of `pair` to side b, every 200 ms.
fn scenario(pair: &Pair, probe_to: &str, abort: &str, steps: &str) -> String {
    format!(
        "apiVersion: chaos-ebpf/v1
name: guarded
seed: 3
targets:
  a: netns:{a}
hypothesis:
  interval: 200ms
  steady-within: 3s
  recovery: 5s
  probes:
    - name: ping
      timeout: 1s
      command: {{run: [ip, netns, exec, {a}, ping, -n, -c1, -W1, {probe_to}]}}
{abort}steps:
{steps}",
        a = pair.a
    )
}

/// Runs a scenario text; returns (exit code, report JSON, stderr, seconds it took, run dir files).
fn run(name: &str, text: &str) -> (i32, serde_json::Value, String, f64, Vec<String>) {
    run_with(name, text, &["--metrics-addr", "off"])
}

fn run_with(name: &str, text: &str, extra: &[&str]) -> (i32, serde_json::Value, String, f64, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("chaos-hypothesis-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("scenario.yaml");
    std::fs::write(&file, text).unwrap();
    let run_dir = dir.join("run");
    let started = Instant::now();
    let mut args = vec!["run", file.to_str().unwrap(), "--output", "json", "--run-dir", run_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, out, err) = chaos_run(&args);
    let seconds = started.elapsed().as_secs_f64();
    let files = std::fs::read_dir(&run_dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let spans = std::fs::read_to_string(run_dir.join("spans.jsonl")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let report = serde_json::from_str(&out).unwrap_or_else(|_| serde_json::json!({ "stdout": out, "spans": spans }));
    let mut report = report;
    report["spans_jsonl"] = serde_json::Value::String(spans);
    (code, report, err, seconds, files)
}

fn samples<'a>(report: &'a serde_json::Value, phase: &str) -> Vec<&'a serde_json::Value> {
    report["hypothesis"]["samples"].as_array().map_or(Vec::new(), |s| s.iter().filter(|s| s["phase"] == phase).collect())
}

/// A fault the probe does not see (UDP port 9): steady before, passing during, recovered
/// after; verdict passed, exit 0, probe spans recorded.
fn hypothesis_holds_and_recovers() {
    require_root();
    let pair = Pair::new("hyp");
    let text = scenario(
        &pair,
        "192.0.2.2",
        "",
        "  - {name: quiet, fault: blackhole, target: a, proto: udp, ports: '9', duration: 2s}\n",
    );
    let (code, report, err, _, _) = run("holds", &text);
    assert_eq!(code, 0, "{err}\n{report}");
    let h = &report["hypothesis"];
    assert_eq!(h["verdict"], "passed", "{h}");
    assert_eq!(h["steady_before"], true);
    for phase in ["before", "during", "after"] {
        let s = samples(&report, phase);
        assert!(!s.is_empty(), "no {phase} samples: {h}");
        assert!(s.iter().all(|s| s["ok"] == true), "a {phase} check failed: {h}");
    }
    // 2 s at 200 ms: about 10 checks during the faults.
    let during = samples(&report, "during").len();
    assert!((6..=14).contains(&during), "{during} checks during 2 s at 200 ms");
    assert!(report["spans_jsonl"].as_str().unwrap().contains("\"probe\""), "no probe spans");
    assert_nothing_left();
}

/// A partition the probe sees: its error rate passes 0.5 over 1 s, the guard fires, every
/// fault is reverted at once (measured), the run exits 1 with the reason, the probe
/// recovers after.
fn error_rate_guard_aborts_and_reverts() {
    require_root();
    let pair = Pair::new("abrt");
    let text = scenario(
        &pair,
        "192.0.2.2",
        "abort:\n  - error-rate: {probe: ping, above: 0.5, for: 1s}\n",
        "  - {name: cut, fault: partition, target: a, duration: 30s}\n",
    );
    let (code, report, err, seconds, _) = run("abort", &text);
    assert_eq!(code, 1, "{err}\n{report}");
    assert!(err.contains("aborted") && err.contains("error-rate"), "{err}");
    let abort = &report["abort"];
    assert_eq!(abort["guard"], "error-rate", "{report}");
    let fired = abort["fired_s"].as_f64().unwrap();
    let revert_ms = abort["revert_ms"].as_f64().unwrap();
    println!("REPORT|abort_error_rate|fired_s={fired:.2}|revert_ms={revert_ms:.1}|run_s={seconds:.1}");
    assert!((1.0..6.0).contains(&fired), "the guard fired at {fired} s");
    assert!(revert_ms < 2000.0, "the revert after the abort took {revert_ms} ms");
    assert!(seconds < 20.0, "the run went on for {seconds} s after a guard fired");
    let step = &report["steps"][0];
    assert_eq!(step["ran_its_course"], false, "{step}");
    assert!(report["hypothesis"]["recovered_after_s"].as_f64().is_some(), "{}", report["hypothesis"]);
    let spans = report["spans_jsonl"].as_str().unwrap();
    assert!(spans.contains("\"abort\"") && spans.contains("\"revert\""), "no abort or revert span");
    assert!(pair.ping(&pair.a, "192.0.2.2", 1, Duration::from_secs(1)) == 1, "traffic not back after the abort");
    assert_nothing_left();
}

/// A wall-clock cap of 2 s on a 30 s step: the run ends at about 2 s, exit 1.
fn wall_clock_guard_ends_a_long_run() {
    require_root();
    let pair = Pair::new("wall");
    let text = format!(
        "apiVersion: chaos-ebpf/v1\nname: capped\ntargets: {{a: netns:{}}}\nabort:\n  - wall-clock: 2s\nsteps:\n  - {{name: long, fault: blackhole, target: a, proto: udp, ports: '9', duration: 30s}}\n",
        pair.a
    );
    let (code, report, err, seconds, _) = run("wall", &text);
    assert_eq!(code, 1, "{err}\n{report}");
    assert_eq!(report["abort"]["guard"], "wall-clock", "{report}");
    let fired = report["abort"]["fired_s"].as_f64().unwrap();
    println!("REPORT|abort_wall_clock|fired_s={fired:.3}|run_s={seconds:.1}");
    assert!(seconds < 15.0, "{seconds}");
    assert_nothing_left();
}

/// A probe that never passes (no host at 192.0.2.99): no steady state, so no fault is
/// installed, the run exits 1 saying so, and nothing is left.
fn no_steady_state_no_faults() {
    require_root();
    let pair = Pair::new("nost");
    let text = scenario(
        &pair,
        "192.0.2.99",
        "",
        "  - {name: cut, fault: partition, target: a, duration: 5s}\n",
    );
    let (code, report, err, seconds, _) = run("nosteady", &text);
    assert_eq!(code, 1, "{err}\n{report}");
    assert!(err.contains("steady"), "{err}");
    assert!(seconds < 15.0, "{seconds}");
    assert_eq!(report["hypothesis"]["steady_before"], false, "{report}");
    let rules = report["steps"][0]["rules"].as_array().map_or(0, Vec::len);
    assert_eq!(rules, 0, "a fault was installed without a steady state: {report}");
    assert_nothing_left();
}

/// A partition makes each ping wait out its 1 s timeout: the probe's p95 over 1 s rises
/// far above its baseline (5 checks before the faults), the latency guard fires and the
/// run is reverted.
fn latency_guard_aborts_on_slow_checks() {
    require_root();
    let pair = Pair::new("slow");
    let text = scenario(
        &pair,
        "192.0.2.2",
        "abort:\n  - latency: {probe: ping, p95-above-baseline: 200%, for: 1s}\n",
        "  - {name: cut, fault: partition, target: a, duration: 30s}\n",
    );
    let (code, report, err, seconds, _) = run("latency", &text);
    assert_eq!(code, 1, "{err}\n{report}");
    assert_eq!(report["abort"]["guard"], "latency", "{report}");
    let before = samples(&report, "before").len();
    assert!(before >= 5, "{before} baseline checks");
    let revert_ms = report["abort"]["revert_ms"].as_f64().unwrap();
    println!(
        "REPORT|abort_latency|fired_s={:.2}|revert_ms={revert_ms:.1}|run_s={seconds:.1}",
        report["abort"]["fired_s"].as_f64().unwrap()
    );
    assert!(seconds < 20.0, "{seconds}");
    assert_nothing_left();
}

/// The run's own metrics, scraped by a real Prometheus, stop it: the guard's expression
/// (packets dropped by the run's rules) holds for 1 s once the partition drops the
/// probe's pings.
fn prometheus_guard_aborts_on_the_runs_own_metrics() {
    require_root();
    if Command::new("prometheus").arg("--version").output().is_err() {
        skip("no `prometheus` binary (Debian's prometheus package; scripts/setup.sh installs it)");
    }
    let pair = Pair::new("promg");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let prometheus = Prometheus::start(metrics);
    let text = scenario(
        &pair,
        "192.0.2.2",
        &format!(
            "abort:\n  - prometheus: {{url: 'http://{}', query: 'sum(chaos_ebpf_packets_dropped_total) > 2', for: 1s}}\n",
            prometheus.web
        ),
        "  - {name: cut, fault: partition, target: a, duration: 60s}\n",
    );
    let (code, report, err, seconds, _) = run_with("prometheus", &text, &["--metrics-addr", &metrics.to_string()]);
    let log = prometheus.log();
    drop(prometheus);
    assert_eq!(code, 1, "{err}\n{report}\n{log}");
    assert_eq!(report["abort"]["guard"], "prometheus", "{report}");
    println!(
        "REPORT|abort_prometheus|fired_s={:.2}|revert_ms={:.1}|run_s={seconds:.1}",
        report["abort"]["fired_s"].as_f64().unwrap(),
        report["abort"]["revert_ms"].as_f64().unwrap()
    );
    assert!(seconds < 40.0, "{seconds}");
    assert_nothing_left();
}
