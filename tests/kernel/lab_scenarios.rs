//! The sample scenarios of scenarios/etcd-*.yaml, end to end against a real cluster lab
//! (`chaos-ebpf lab up`: etcd members with TLS, the workload nodes, Prometheus), each
//! with its hypothesis, producing a bundle; `replay` of a bundle; and the actions on a
//! plain process (kill, pause) without a lab. Every test holds a `LabDown` guard and
//! checks that nothing is left. Traffic goes only to the lab's members on its bridge.

use crate::{lab_cluster::*, support::*};

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

pub const TESTS: &[Test] = tests![
    lab_scenario_game_day,
    lab_scenario_leader_kill_and_replay,
    lab_scenario_split_brain,
    lab_scenario_member_loss,
    lab_scenario_surge,
    lab_scenario_cert_expiry,
    lab_scenario_transport_downgrade,
    lab_scenario_quic_downgrade,
    lab_scenario_wrong_hypothesis_fails,
    lab_scenario_needs_a_lab,
    action_pause_and_kill_a_process,
];

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios").join(name)
}

/// A fresh directory for run directories, removed when dropped.
struct Runs(PathBuf);

impl Runs {
    fn new(test: &str) -> Runs {
        let dir = std::env::temp_dir().join(format!("chaos-scenario-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Runs(dir)
    }
}

impl Drop for Runs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `chaos-ebpf ARGS` with chaos-ebpf's directory first on PATH (the scenarios' command
/// probes run `chaos-ebpf lab verify`), bounded.
fn chaos_with_path(args: &[&str]) -> (i32, String, String) {
    let dir = Path::new(bin()).parent().unwrap();
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new(bin());
    cmd.args(args).env("PATH", path).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn chaos-ebpf");
    Chaos { child }.finish(Duration::from_secs(180))
}

/// Runs a sample scenario into `runs/<name>`; returns the exit code, stderr and the report.
fn run_sample(runs: &Runs, file: &str, name: &str) -> (i32, String, serde_json::Value) {
    let dir = runs.0.join(name);
    let (code, out, err) = chaos_with_path(&["run", scenario(file).to_str().unwrap(), "--run-dir", dir.to_str().unwrap()]);
    let report = fs::read_to_string(dir.join("report.json"))
        .unwrap_or_else(|e| panic!("{file}: no report.json ({e}): exit {code}\n{out}\n{err}"));
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(runs.0.join(format!("{name}.tar.gz")).is_file(), "{file}: no bundle");
    assert_eq!(report["clean"], true, "{file}: revert not clean\n{err}");
    (code, format!("{out}\n{err}"), report)
}

fn step<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no step {name}"))
}

fn assert_passed(file: &str, code: i32, text: &str, report: &serde_json::Value) {
    assert_eq!(code, 0, "{file}: exit {code}\n{text}");
    assert_eq!(report["hypothesis"]["verdict"], "passed", "{file}\n{text}");
    for s in report["steps"].as_array().unwrap() {
        assert_eq!(s["ran_its_course"], true, "{file}: step {} did not run its course\n{text}", s["name"]);
    }
}

/// Each workload node's longest gap between acknowledged writes during the run (from
/// its journal), printed for the closing note; the largest is returned.
fn write_gaps(file: &str, report: &serde_json::Value) -> f64 {
    let from = report["faults_start_unix_ms"].as_u64().unwrap();
    let to = report["ended_unix_ms"].as_u64().unwrap();
    let mut worst = 0.0f64;
    for node in ["n1", "n2", "n3"] {
        let journal = fs::read_to_string(format!("{STATE}/{node}/journal.jsonl")).unwrap_or_default();
        let mut acked: Vec<u64> = journal
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["acked_unix_ms"].as_u64())
            .filter(|t| (from..=to).contains(t))
            .collect();
        acked.sort_unstable();
        let gap = acked.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0) as f64;
        println!("REPORT|write_gap|scenario={file}|node={node}|ms={gap:.0}|writes={}", acked.len());
        worst = worst.max(gap);
    }
    worst
}

const STATE: &str = "/run/chaos-ebpf/lab";

/// A 3-member lab with its workload, under a guard.
fn lab3() -> LabDown {
    require_lab_programs();
    let guard = LabDown;
    lab_up(3, &[]);
    guard
}

fn finish_lab() {
    lab_down(3);
    assert_no_lab_left();
}

/// The README's main job without its setup: scripts/game-day.sh runs this scenario on a
/// fresh 3-member lab.
fn lab_scenario_game_day() {
    let _guard = lab3();
    let runs = Runs::new("game-day");
    let file = "etcd-game-day.yaml";
    let (code, text, report) = run_sample(&runs, file, "run");
    assert_passed(file, code, &text, &report);
    let kill = &step(&report, "kill-the-leader")["action"];
    println!("REPORT|leader_election|scenario={file}|ms={:.0}", kill["leader_elected_ms"].as_f64().unwrap());
    let lossy = &step(&report, "lossy-n3")["rules"][0]["counters"];
    assert!(lossy["dropped"].as_u64().unwrap() > 0, "{lossy:#}");
    assert!(step(&report, "split-brain")["rules"][0]["counters"]["dropped"].as_u64().unwrap() > 0);
    assert_eq!(step(&report, "join-storm")["action"]["surge"]["completed"], true);
    let md = fs::read_to_string(runs.0.join("run/report.md")).unwrap();
    assert!(md.contains("| verdict | **passed** |"), "{md}");
    write_gaps(file, &report);
    finish_lab();
}

fn lab_scenario_leader_kill_and_replay() {
    let _guard = lab3();
    let runs = Runs::new("leader-kill");
    let file = "etcd-leader-kill.yaml";
    let (code, text, report) = run_sample(&runs, file, "first");
    assert_passed(file, code, &text, &report);
    let kill = &step(&report, "kill-the-leader")["action"];
    let killed = kill["resolved"][0].as_str().unwrap().to_owned();
    let elected = kill["leader_elected_ms"].as_f64().unwrap();
    assert!(elected < 5000.0, "{kill:#}");
    assert_ne!(kill["new_leader"].as_str(), Some(killed.as_str()), "{kill:#}");
    let events: Vec<&str> = kill["events"].as_array().unwrap().iter().map(|e| e["what"].as_str().unwrap()).collect();
    assert!(events.iter().any(|e| e.starts_with(&format!("killed {killed}"))), "{events:?}");
    assert!(events.iter().any(|e| e.starts_with(&format!("restarted {killed}"))), "{events:?}");
    println!("REPORT|leader_election|scenario={file}|ms={elected:.0}");
    write_gaps(file, &report);
    // The span of the action: apply then revert, under the step.
    let spans = fs::read_to_string(runs.0.join("first/spans.jsonl")).unwrap();
    assert!(spans.contains("\"phase\":\"apply\"") && spans.contains("\"phase\":\"revert\""), "no action spans");
    // Every member healthy again, all three nodes writing.
    assert_healthy(3);

    // Replay: the same scenario and seed on this lab (of the same shape).
    let bundle = runs.0.join("first.tar.gz");
    let second = runs.0.join("second");
    let (code, out, err) = chaos_with_path(&[
        "replay",
        bundle.to_str().unwrap(),
        "--run-dir",
        second.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "replay:\n{out}\n{err}");
    let json_start = out.rfind("\n{").map_or(0, |i| i + 1);
    let comparison: serde_json::Value = serde_json::from_str(&out[json_start..]).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(comparison["same_outcome"], true, "{comparison:#}");
    assert_eq!(comparison["seed"], 1, "{comparison:#}");
    assert!(second.join("digest.txt").is_file());
    println!("REPORT|replay|same_outcome=true|same_digest={}", comparison["same_digest"]);
    // A bundle that is not one, and a lab of another shape: exit 2.
    let (code, _, err) = chaos_with_path(&["replay", "/etc/hostname"]);
    assert_eq!(code, 2, "{err}");
    finish_lab();
    let (code, _, err) = chaos_with_path(&["replay", bundle.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("lab up --nodes 3"), "{err}");
}

fn lab_scenario_split_brain() {
    let _guard = lab3();
    let runs = Runs::new("split-brain");
    let file = "etcd-split-brain.yaml";
    let (code, text, report) = run_sample(&runs, file, "run");
    assert_passed(file, code, &text, &report);
    // The minority (the leader at the start) was cut from the majority's two addresses.
    let split = step(&report, "split");
    let rules = split["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{split:#}");
    assert!(rules[0]["fault"].as_str().unwrap().contains("peers=198.51.100."), "{split:#}");
    assert!(rules[0]["counters"]["dropped"].as_u64().unwrap() > 0, "{split:#}");
    assert!(text.contains("lab: step split: minority = "), "{text}");
    write_gaps(file, &report);
    finish_lab();
}

fn lab_scenario_member_loss() {
    let _guard = lab3();
    let runs = Runs::new("member-loss");
    let file = "etcd-member-loss.yaml";
    let (code, text, report) = run_sample(&runs, file, "run");
    assert_passed(file, code, &text, &report);
    let rules = step(&report, "lossy-n3")["rules"].as_array().unwrap().clone();
    assert!(rules[0]["netns"].as_str().unwrap().ends_with("chaos-cluster-n3"), "{rules:?}");
    let c = &rules[0]["counters"];
    let (matched, dropped) = (c["matched"].as_f64().unwrap(), c["dropped"].as_f64().unwrap());
    assert!(matched > 50.0 && (0.15..0.45).contains(&(dropped / matched)), "{c:#}");
    write_gaps(file, &report);
    finish_lab();
}

fn lab_scenario_surge() {
    let _guard = lab3();
    let runs = Runs::new("surge");
    let file = "etcd-surge.yaml";
    let (code, text, report) = run_sample(&runs, file, "run");
    assert_passed(file, code, &text, &report);
    let surge = &step(&report, "join-storm")["action"]["surge"];
    assert_eq!(surge["completed"], true, "{surge:#}");
    let joins = surge["join_converged_ms"].as_array().unwrap();
    assert_eq!(joins.len(), 2, "{surge:#}");
    for (j, l) in joins.iter().zip(surge["leave_converged_ms"].as_array().unwrap()) {
        assert!(j.as_f64().unwrap() < 10_000.0 && l.as_f64().unwrap() < 10_000.0, "{surge:#}");
    }
    println!("REPORT|surge|join_ms={joins:?}|leave_ms={:?}", surge["leave_converged_ms"]);
    write_gaps(file, &report);
    finish_lab();
}

fn lab_scenario_cert_expiry() {
    let _guard = lab3();
    let runs = Runs::new("cert-expiry");
    let file = "etcd-cert-expiry.yaml";
    let (code, text, report) = run_sample(&runs, file, "run");
    assert_passed(file, code, &text, &report);
    let action = &step(&report, "expired-cert-on-n3")["action"];
    let events: Vec<&str> = action["events"].as_array().unwrap().iter().map(|e| e["what"].as_str().unwrap()).collect();
    assert!(events.iter().any(|e| e.contains("expired certificate")), "{events:?}");
    assert!(events.iter().any(|e| e.contains("original certificate")), "{events:?}");
    // Restored: n3's certificate is the one lab up minted, and n3 is healthy.
    assert_healthy(3);
    write_gaps(file, &report);
    finish_lab();
}

/// tls-refuse of h2 on every member's client port: etcdctl (gRPC, h2 only), polled from
/// the host during the run, is refused and works again after it; `lab verify` (the
/// project's etcd client: h2, then HTTP/1.1) falls back and still reads every write, so
/// the hypothesis holds; the members counted the refused ClientHellos.
fn lab_scenario_transport_downgrade() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let _guard = lab3();
    let lab = assert_healthy(3);
    let runs = Runs::new("transport-downgrade");
    let file = "etcd-transport-downgrade.yaml";
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (stop, lab) = (stop.clone(), lab.clone());
        std::thread::spawn(move || {
            // (etcdctl succeeded, `lab verify` output taken right after a refusal)
            let (mut seen, mut verify_during) = (Vec::new(), None);
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(150) {
                let out = crate::lab_control::etcdctl_one(&lab, "n2", &["endpoint", "health"]);
                seen.push(out.status.success());
                if !out.status.success() && verify_during.is_none() {
                    verify_during = Some(chaos_with_path(&["lab", "verify"]));
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            (seen, verify_during)
        })
    };
    let (code, text, report) = run_sample(&runs, file, "run");
    stop.store(true, Ordering::Relaxed);
    let (seen, verify_during) = poller.join().expect("poller");
    assert_passed(file, code, &text, &report);
    let refused = seen.iter().filter(|ok| !**ok).count();
    assert!(refused > 0, "etcdctl was never refused during the run: {seen:?}");
    let after = crate::lab_control::etcdctl_one(&lab, "n2", &["endpoint", "health"]);
    assert!(after.status.success(), "etcdctl after the run: {}", crate::lab_control::text(&after));
    // During the refusal `lab verify` fell back to HTTP/1.1 and read every write.
    let (verify_code, out, err) = verify_during.expect("no lab verify during a refusal");
    assert_eq!(verify_code, 0, "{out}\n{err}");
    assert!(out.contains("fallbacks from h2") && !out.contains(" 0 fallbacks from h2"), "{out}");
    assert!(out.contains("every acknowledged write is readable"), "{out}");
    let rules = step(&report, "refuse-h2")["rules"].as_array().unwrap().clone();
    assert_eq!(rules.len(), 3, "one rule per member");
    let dropped: u64 = rules.iter().map(|r| r["counters"]["dropped"].as_u64().unwrap()).sum();
    let errors: u64 = rules.iter().map(|r| r["counters"]["errors"].as_u64().unwrap()).sum();
    assert!(dropped > 0, "no ClientHello refused: {rules:#?}");
    assert_eq!(errors, 0, "{rules:#?}");
    println!("REPORT|transport_downgrade|etcdctl_refused={refused}/{}|refused_hellos={dropped}", seen.len());
    write_gaps(file, &report);
    finish_lab();
}

/// `chaos-lab-node get URL --cacert CA` from the host across the lab bridge: (exit code,
/// its stderr line).
fn node_get(ca: &str, url: &str) -> (i32, String) {
    let node = Path::new(bin()).parent().unwrap().join("chaos-lab-node");
    let out = Command::new(node)
        .args(["get", url, "--cacert", ca])
        .stdin(Stdio::null())
        .output()
        .expect("run chaos-lab-node get");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

/// blackhole of UDP 9100 on n2, where its workload node serves HTTP/3: `chaos-lab-node
/// get` (QUIC, then TCP), the sample's probe and polled from the host here, answers via h3
/// before, via HTTP/1.1 over TCP during (QUIC gave no answer), via h3 after; the
/// hypothesis holds through the fallback; the rule dropped UDP packets.
fn lab_scenario_quic_downgrade() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let _guard = lab3();
    let (_, lab) = status_json();
    let ca = lab["lab"]["ca"].as_str().expect("the lab's CA in lab status").to_owned();
    let url = "http://198.51.100.2:9100/health";
    let (code, before) = node_get(&ca, url);
    assert_eq!(code, 0, "{before}");
    assert!(before.contains("via h3 over QUIC (200"), "before the run: {before}");
    let runs = Runs::new("quic-downgrade");
    let file = "etcd-quic-downgrade.yaml";
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (stop, ca) = (stop.clone(), ca.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(150) {
                seen.push(node_get(&ca, url));
                std::thread::sleep(Duration::from_millis(300));
            }
            seen
        })
    };
    let (code, text, report) = run_sample(&runs, file, "run");
    stop.store(true, Ordering::Relaxed);
    let seen = poller.join().expect("poller");
    assert_passed(file, code, &text, &report);
    assert!(seen.iter().all(|(code, _)| *code == 0), "a GET failed on both transports: {seen:#?}");
    let via_tcp: Vec<&String> =
        seen.iter().map(|(_, line)| line).filter(|line| line.contains("via http/1.1 over TCP")).collect();
    assert!(!via_tcp.is_empty(), "no GET fell back to TCP during the run: {seen:#?}");
    for line in &via_tcp {
        assert!(line.contains("QUIC gave no answer within 1 s"), "{line}");
    }
    let first_tcp = seen.iter().position(|(_, line)| line.contains("via http/1.1")).unwrap();
    let last_tcp = seen.iter().rposition(|(_, line)| line.contains("via http/1.1")).unwrap();
    assert!(seen[..first_tcp].iter().any(|(_, line)| line.contains("via h3 over QUIC")), "{seen:#?}");
    assert!(seen[last_tcp..].iter().any(|(_, line)| line.contains("via h3 over QUIC")), "{seen:#?}");
    let (code, after) = node_get(&ca, url);
    assert_eq!(code, 0, "{after}");
    assert!(after.contains("via h3 over QUIC (200"), "after the run: {after}");
    let rules = step(&report, "block-quic")["rules"].as_array().unwrap().clone();
    let dropped: u64 = rules.iter().map(|r| r["counters"]["dropped"].as_u64().unwrap()).sum();
    assert!(dropped > 0, "no UDP packet dropped: {rules:#?}");
    // The fallback's time: the number in `via http/1.1 over TCP (200 in MS ms)`.
    let fallback_ms: Vec<u64> = via_tcp
        .iter()
        .filter_map(|line| line.split(" in ").nth(1)?.split(" ms").next()?.parse().ok())
        .collect();
    println!(
        "REPORT|quic_downgrade|gets={}|via_tcp={}|fallback_ms_min={}|fallback_ms_max={}|dropped_udp={dropped}",
        seen.len(),
        via_tcp.len(),
        fallback_ms.iter().min().unwrap_or(&0),
        fallback_ms.iter().max().unwrap_or(&0)
    );
    write_gaps(file, &report);
    finish_lab();
}

fn lab_scenario_wrong_hypothesis_fails() {
    let _guard = lab3();
    let runs = Runs::new("wrong");
    let file = "etcd-wrong-hypothesis.yaml";
    let (code, text, report) = run_sample(&runs, file, "run");
    assert_eq!(code, 1, "{text}");
    assert_eq!(report["abort"]["guard"], "error-rate", "{text}");
    assert!(text.contains("aborted: the error-rate guard fired"), "{text}");
    assert_eq!(report["hypothesis"]["verdict"], "failed", "{text}");
    // The observation: n1's writes failed while it was cut off.
    let outage = report["hypothesis"]["outages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["probe"] == "writes-n1")
        .unwrap_or_else(|| panic!("no outage of writes-n1: {:#}", report["hypothesis"]));
    assert!(outage["failed_checks"].as_u64().unwrap() >= 3, "{outage:#}");
    println!("REPORT|wrong_hypothesis|fired_s={}|revert_ms={}", report["abort"]["fired_s"], report["abort"]["revert_ms"]);
    finish_lab();
}

fn lab_scenario_needs_a_lab() {
    require_root();
    if Path::new(STATE).exists() {
        panic!("a lab is already up on this machine ({STATE}): `chaos-ebpf lab down` first");
    }
    let (code, _, err) = chaos_run(&["run", scenario("etcd-leader-kill.yaml").to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no cluster lab is up") && err.contains("sudo chaos-ebpf lab up"), "{err}");
    let (code, _, err) = chaos_run(&["run", scenario("etcd-split-brain.yaml").to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("lab up"), "{err}");
}

/// The state letter of /proc/PID/stat.
fn state_of(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next())
}

fn action_pause_and_kill_a_process() {
    require_root();
    /// Killed and reaped when dropped, after a failure too.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut sleeper = Reap(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = sleeper.0.id();
    let runs = Runs::new("process");
    let file = runs.0.join("process.yaml");
    fs::write(
        &file,
        format!(
            "apiVersion: chaos-ebpf/v1\nname: process-actions\nsteps:\n  - {{name: freeze, action: pause, target: pid:{pid}, duration: 2s}}\n  - {{name: end, action: kill, target: pid:{pid}, grace: 1s, duration: 1s}}\n"
        ),
    )
    .unwrap();
    let dir = runs.0.join("run");
    let mut cmd = Command::new(bin());
    cmd.args(["run", file.to_str().unwrap(), "--run-dir", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let chaos = Chaos { child: cmd.spawn().unwrap() };
    // Stopped (T) while the pause is in force.
    let deadline = Instant::now() + Duration::from_secs(5);
    while state_of(pid) != Some('T') {
        assert!(Instant::now() < deadline, "process {pid} never stopped: {:?}", state_of(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, out, err) = chaos.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{out}\n{err}");
    // sleep exits on SIGTERM: it is our child, so a zombie until reaped.
    let status = sleeper.0.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    let report: serde_json::Value = serde_json::from_str(&fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let events = |s: &str| -> Vec<String> {
        step(&report, s)["action"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["what"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(events("freeze"), [format!("process {pid} stopped (SIGSTOP)"), format!("process {pid} continued (SIGCONT)")]);
    assert!(events("end")[0].starts_with(&format!("process {pid} exited on SIGTERM")), "{:?}", events("end"));
    // A process that is gone: exit 2 before anything changes.
    let (code, _, err) = chaos_run(&["run", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("process {pid} does not exist")), "{err}");
}
