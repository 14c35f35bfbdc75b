//! The cluster lab (`chaos-ebpf lab up/status/down/surge`): real etcd members with TLS in
//! namespaces on a bridge, a workload node (chaos-lab-node) beside each, Prometheus
//! scraping them; membership surges; refusals that change nothing; and `lab down` leaving
//! nothing, also after a failure (every test holds a `LabDown` guard). Traffic goes only
//! to the lab's own members and nodes on its bridge and to Prometheus on loopback.

use crate::support::*;

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

pub const TESTS: &[Test] = tests![
    lab_cluster_three_members_tls_prometheus_and_down,
    lab_cluster_one_member,
    lab_cluster_refuses_a_range_in_use,
    lab_cluster_refuses_missing_programs,
    lab_cluster_refuses_a_missing_workload_binary,
    lab_cluster_interrupted_up_removes_what_it_created,
    lab_cluster_killed_up_is_reported_and_cleaned_by_down,
    lab_cluster_surge_joins_and_leaves,
    lab_cluster_surge_interrupted_or_killed_leaves_no_node,
];

pub const STATE_DIR: &str = "/run/chaos-ebpf/lab";
const NETNS_PREFIX: &str = "chaos-cluster-";
const BRIDGE: &str = "chaos-lab-br0";

/// Skips unless Debian's etcd and Prometheus are installed (scripts/setup.sh installs them).
pub fn require_lab_programs() {
    require_root();
    for program in ["etcd", "etcdctl", "prometheus"] {
        if !Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success()) {
            skip(&format!("{program} is not installed here (bash scripts/setup.sh installs it)"));
        }
    }
    if Path::new(STATE_DIR).exists() {
        panic!("a lab is already up on this machine ({STATE_DIR}): `chaos-ebpf lab down` first");
    }
    // Built by the same cargo build as chaos-ebpf (`cargo build --release` builds both);
    // a missing one is a build step left out, not a machine without the lab.
    let node = Path::new(bin()).with_file_name("chaos-lab-node");
    assert!(node.is_file(), "{} is missing: cargo build (same profile) -p chaos-lab --bin chaos-lab-node", node.display());
}

/// Running chaos-lab-node processes of the lab (command line naming the state directory).
fn node_processes(name_prefix: &str) -> Vec<String> {
    lab_processes()
        .into_iter()
        .filter(|p| p.contains("chaos-lab-node") && p.contains(&format!("--name {name_prefix}")))
        .collect()
}

/// A workload node's endpoint, from the root namespace through the bridge.
fn node_get(listen: &str, path: &str) -> (u16, serde_json::Value) {
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let (code, body) = http_get(addr, path).unwrap_or_else(|e| panic!("GET {listen}{path}: {e}"));
    (code, serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {listen}{path}: {e}: {body}")))
}

/// Runs `lab down` when dropped: after a failed assertion too.
pub struct LabDown;

impl Drop for LabDown {
    fn drop(&mut self) {
        if Path::new(STATE_DIR).exists() {
            let (code, out, err) = chaos_run(&["lab", "down"]);
            if code != 0 {
                eprintln!("lab down after the test: exit {code}\n{out}{err}");
            }
        }
    }
}

/// Processes of the lab still alive: any whose command line names the state directory.
fn lab_processes() -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let state = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = state.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if text.contains(STATE_DIR) && !zombie {
            found.push(format!("{pid}: {}", text.trim()));
        }
    }
    found
}

fn lab_namespaces() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(NETNS_PREFIX))
        .collect()
}

fn bridge_exists() -> bool {
    Path::new("/sys/class/net").join(BRIDGE).exists()
}

/// Nothing of a lab is left: no process, namespace, bridge or state directory (bounded
/// wait for exiting processes to be reaped).
pub fn assert_no_lab_left() {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let processes = lab_processes();
        let namespaces = lab_namespaces();
        let dir = Path::new(STATE_DIR).exists();
        if processes.is_empty() && namespaces.is_empty() && !bridge_exists() && !dir {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: processes {processes:?}, namespaces {namespaces:?}, bridge {}, state dir {dir}",
            bridge_exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `lab up --nodes N` (plus `extra` arguments): the seconds it took (to healthy).
pub fn lab_up(nodes: u32, extra: &[&str]) -> f64 {
    let nodes_arg = nodes.to_string();
    let mut args = vec!["lab", "up", "--nodes", &nodes_arg];
    args.extend_from_slice(extra);
    let start = Instant::now();
    let (code, out, err) = chaos_run(&args);
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(code, 0, "lab up --nodes {nodes}:\n{out}{err}");
    assert!(err.contains(&format!("{nodes}/{nodes} members healthy")), "progress lines expected:\n{err}");
    assert!(err.contains(&format!("{nodes}/{nodes} workload nodes healthy")), "progress lines expected:\n{err}");
    println!("REPORT|lab_up|nodes={nodes}|seconds={seconds:.2}");
    seconds
}

/// `lab down` of a lab of `nodes` members (0: a lab whose up did not finish, not timed).
pub fn lab_down(nodes: u32) -> String {
    let start = Instant::now();
    let (code, out, err) = chaos_run(&["lab", "down"]);
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(code, 0, "lab down:\n{out}{err}");
    assert!(out.contains("verified, nothing is left"), "{out}");
    if nodes > 0 {
        println!("REPORT|lab_down|nodes={nodes}|seconds={seconds:.2}");
    }
    assert_no_lab_left();
    out
}

pub fn status_json() -> (i32, serde_json::Value) {
    let (code, out, err) = chaos_run(&["lab", "status", "--output", "json"]);
    let value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("lab status JSON: {e}\n{out}{err}"));
    (code, value)
}

fn etcdctl(lab: &serde_json::Value, with_cert: bool, args: &[&str]) -> std::process::Output {
    let endpoints: Vec<&str> =
        lab["members"].as_array().unwrap().iter().map(|m| m["client_url"].as_str().unwrap()).collect();
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg(format!("--cacert={}", lab["ca"].as_str().unwrap()))
        .args(["--dial-timeout=2s", "--command-timeout=3s"])
        .stdin(Stdio::null());
    if with_cert {
        cmd.arg(format!("--cert={}", lab["client_cert"].as_str().unwrap()));
        cmd.arg(format!("--key={}", lab["client_key"].as_str().unwrap()));
    }
    cmd.args(args).output().expect("running etcdctl")
}

/// The result of a Prometheus instant query (bounded HTTP).
fn prometheus_query(url: &str, expr: &str) -> Vec<serde_json::Value> {
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let encoded: String = expr
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    let Ok((200, body)) = http_get(sock([127, 0, 0, 1].into(), port), &format!("/api/v1/query?query={encoded}")) else {
        return Vec::new();
    };
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    reply["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Status of a lab of `nodes` healthy members with one leader.
pub fn assert_healthy(nodes: usize) -> serde_json::Value {
    let (code, status) = status_json();
    assert_eq!(code, 0, "lab status: {status:#}");
    let lab = status["lab"].clone();
    let members = lab["members"].as_array().unwrap();
    assert_eq!(members.len(), nodes, "{lab:#}");
    assert!(members.iter().all(|m| m["healthy"] == true && m["alive"] == true), "{lab:#}");
    assert_eq!(members.iter().filter(|m| m["leader"] == true).count(), 1, "one leader: {lab:#}");
    assert!(lab["leader"].is_string() && lab["raft_term"].as_u64().unwrap() >= 1, "{lab:#}");
    assert_eq!(lab["prometheus_ready"], true, "{lab:#}");
    // Every workload node healthy, under load (20 writes/s configured), without errors.
    let workloads = lab["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), nodes, "{lab:#}");
    for w in workloads {
        assert!(w["alive"] == true && w["healthy"] == true, "{w:#}");
        let rate = w["writes_per_s"].as_f64().unwrap();
        assert!((10.0..=30.0).contains(&rate), "load rate {rate}/s for 20/s: {w:#}");
        assert_eq!(w["errors_per_s"].as_f64(), Some(0.0), "{w:#}");
        assert_eq!(w["members_seen"].as_u64(), Some(nodes as u64), "{w:#}");
    }
    lab
}

fn lab_cluster_three_members_tls_prometheus_and_down() {
    require_lab_programs();
    let _guard = LabDown;
    lab_up(3, &[]);
    let (_, table, _) = chaos_run(&["lab", "status"]);
    assert!(table.contains("leader") && table.contains("n3"), "{table}");
    assert!(table.contains("WRITES/S") && table.contains("198.51.100.3:9100"), "{table}");
    let lab = assert_healthy(3);

    // Each node sees all three (asked from the root namespace through the bridge), and
    // etcd's leader.
    for w in lab["workloads"].as_array().unwrap() {
        let (code, view) = node_get(w["listen"].as_str().unwrap(), "/members");
        assert_eq!(code, 200, "{view}");
        let names: Vec<&String> = view["members"].as_object().unwrap().keys().collect();
        assert_eq!(names, ["n1", "n2", "n3"], "{view}");
        assert_eq!(view["leader"], lab["leader"], "{view}");
    }

    // A write and a read through TLS with the lab's client certificate, from the root
    // namespace through the bridge.
    let put = etcdctl(&lab, true, &["put", "chaos-test-key", "through-tls"]);
    assert!(put.status.success(), "put: {}", String::from_utf8_lossy(&put.stderr));
    let get = etcdctl(&lab, true, &["get", "chaos-test-key", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "through-tls", "{}", String::from_utf8_lossy(&get.stderr));
    // TLS is really on: the same CA but no client certificate is refused.
    let refused = etcdctl(&lab, false, &["get", "chaos-test-key"]);
    assert!(!refused.status.success(), "a client without a certificate read the key");
    let why = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(why.contains("certificate") || why.contains("tls") || why.contains("deadline"), "{why}");

    // Prometheus scrapes all three members over TLS (the first scrape lands ~5 s after it
    // started).
    let url = lab["prometheus_url"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(40);
    let start = Instant::now();
    loop {
        let up = prometheus_query(&url, "up{job=\"etcd\"}");
        let ones = up.iter().filter(|s| s["value"][1] == "1").count();
        // The workload nodes (file_sd), with their write counters.
        let nodes_up = prometheus_query(&url, "up{job=\"lab-nodes\"}");
        let nodes_ones = nodes_up.iter().filter(|s| s["value"][1] == "1").count();
        let writes = prometheus_query(&url, "writes_total{job=\"lab-nodes\",result=\"ok\"} > 0");
        // The chaos-ebpf endpoint is a target too (down while no run serves it).
        let chaos = prometheus_query(&url, "up{job=\"chaos-ebpf\"}");
        if up.len() == 3 && ones == 3 && nodes_ones == 3 && writes.len() == 3 && chaos.len() == 1 {
            println!(
                "prometheus: up = 1 for 3 members and 3 workload nodes, writes_total scraped, after {:.1} s",
                start.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not scraped within 40 s: etcd {up:?}, nodes {nodes_up:?}, writes {writes:?}, chaos-ebpf {chaos:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A second lab up is refused and changes nothing.
    let (code, _, err) = chaos_run(&["lab", "up"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a lab is already up (3 nodes since") && err.contains("lab down` first"), "{err}");
    assert_healthy(3);

    // A member that died is reported as such (exit 1), and down still cleans all.
    let victim = lab["members"][1]["pid"].as_u64().unwrap() as i32;
    // SAFETY: kill(2); the pid is the lab's member, alive a moment ago.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let dead = loop {
        let (code, status) = status_json();
        if status["lab"]["members"][1]["alive"] == false {
            assert_eq!(code, 1);
            break status;
        }
        assert!(Instant::now() < deadline, "a killed member still reported alive: {status:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(dead["lab"]["dead"][0], "etcd n2", "{dead:#}");
    let (code, table, _) = chaos_run(&["lab", "status"]);
    assert_eq!(code, 1);
    assert!(table.contains("DEAD: etcd n2 not running"), "{table}");
    // The nodes keep writing through the two members left (quorum).
    let (_, status) = status_json();
    for w in status["lab"]["workloads"].as_array().unwrap() {
        assert!(w["alive"] == true && w["writes_per_s"].as_f64().unwrap() > 0.0, "{w:#}");
    }
    // A dead workload node is reported too.
    let node = lab["workloads"][2]["pid"].as_u64().unwrap() as i32;
    // SAFETY: kill(2); the pid is the lab's node n3, alive a moment ago.
    unsafe { libc::kill(node, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, status) = status_json();
        let w = &status["lab"]["workloads"][2];
        if w["alive"] == false {
            assert_eq!(code, 1);
            assert_eq!(w["healthy"], false, "{w:#}");
            assert!(status["lab"]["dead"].as_array().unwrap().iter().any(|d| d == "workload n3"), "{status:#}");
            break;
        }
        assert!(Instant::now() < deadline, "a killed workload node still reported alive: {status:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, table, _) = chaos_run(&["lab", "status"]);
    assert!(table.contains("DEAD: etcd n2, workload n3 not running"), "{table}");

    let out = lab_down(3);
    assert!(out.contains("removed: netns chaos-cluster-n3") && out.contains("removed: bridge chaos-lab-br0"), "{out}");
    // The nodes were stopped first (SIGTERM: they leave), and none is left.
    let (node, etcd) = (out.find("removed: workload n1").unwrap(), out.find("removed: etcd ").unwrap());
    assert!(node < etcd, "workload nodes stopped before etcd:\n{out}");
    assert!(node_processes("").is_empty(), "{:?}", node_processes(""));
    // Nothing is up any more: down and status say so.
    let (code, out, _) = chaos_run(&["lab", "down"]);
    assert_eq!((code, out.trim()), (0, "no lab is up"));
    let (code, status) = status_json();
    assert_eq!((code, &status["up"]), (1, &serde_json::Value::Bool(false)));
}

fn lab_cluster_one_member() {
    require_lab_programs();
    let _guard = LabDown;
    lab_up(1, &[]);
    let lab = assert_healthy(1);
    assert_eq!(lab["members"][0]["ip"], "198.51.100.1");
    assert_eq!(lab["bridge_address"], "198.51.100.62/26");
    let put = etcdctl(&lab, true, &["put", "k", "v"]);
    assert!(put.status.success(), "put: {}", String::from_utf8_lossy(&put.stderr));
    lab_down(1);
}

/// A veth pair in the root namespace (this kernel has no dummy driver), removed on drop.
struct Dummy(&'static str);

impl Drop for Dummy {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).output();
    }
}

fn lab_cluster_refuses_a_range_in_use() {
    require_lab_programs();
    let _guard = LabDown;
    must("ip", &["link", "add", "chaos-tdummy0", "type", "veth", "peer", "name", "chaos-tdummy1"]);
    let _dummy = Dummy("chaos-tdummy0");
    must("ip", &["addr", "add", "198.51.100.10/32", "dev", "chaos-tdummy0"]);
    let (code, out, err) = chaos_run(&["lab", "up"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("198.51.100.0/26 is already in use") && err.contains("198.51.100.10/32 on chaos-tdummy0"), "{err}");
    assert!(err.contains("--subnet"), "the fix names the flag: {err}");
    assert_no_lab_left();
    // Another /26 of the lab range is free: --subnet takes it (and down removes it).
    // (Only checked for refusal here: a bad --subnet is exit 2 as well.)
    let (code, _, err) = chaos_run(&["lab", "up", "--subnet", "198.51.100.8/26"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not the start of a /26"), "{err}");
    assert_no_lab_left();
}

fn lab_cluster_refuses_missing_programs() {
    require_lab_programs();
    let _guard = LabDown;
    // A PATH with `ip` but without etcd, etcdctl and prometheus.
    let dir = std::env::temp_dir().join(format!("chaos-lab-path-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let ip = String::from_utf8(sh("sh", &["-c", "command -v ip"]).stdout).unwrap();
    std::os::unix::fs::symlink(ip.trim(), dir.join("ip")).unwrap();
    let out = Command::new(bin()).args(["lab", "up"]).env("PATH", &dir).output().unwrap();
    fs::remove_dir_all(&dir).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("etcd-server, etcd-client, prometheus") && err.contains("bash scripts/setup.sh"), "{err}");
    assert_no_lab_left();
}

fn lab_cluster_refuses_a_missing_workload_binary() {
    require_lab_programs();
    let _guard = LabDown;
    // chaos-ebpf alone in a directory: a hard link (no copy of 100 MB), which
    // current_exe() reports under its own path.
    let dir = std::env::temp_dir().join(format!("chaos-lab-nobin-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let lone = dir.join("chaos-ebpf");
    if let Err(e) = fs::hard_link(bin(), &lone) {
        fs::remove_dir_all(&dir).unwrap();
        skip(&format!("cannot hard-link chaos-ebpf into {}: {e}", dir.display()));
    }
    let out = Command::new(&lone).args(["lab", "up"]).output().unwrap();
    fs::remove_dir_all(&dir).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("chaos-lab-node is not next to") && err.contains("cargo build --release -p chaos-lab"), "{err}");
    assert_no_lab_left();
}

/// `lab up --nodes 3`, returned once its first etcd member runs (the state records a
/// process before it is started, so the record alone is not enough).
fn lab_up_until_a_process_started() -> Chaos {
    let child = Command::new(bin())
        .args(["lab", "up", "--nodes", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chaos-ebpf");
    let chaos = Chaos { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = fs::read_to_string(format!("{STATE_DIR}/state.json")).unwrap_or_default();
        if state.contains("\"start_time\"") && !lab_processes().is_empty() {
            return chaos;
        }
        assert!(Instant::now() < deadline, "lab up started no process within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lab_cluster_killed_up_is_reported_and_cleaned_by_down() {
    require_lab_programs();
    let _guard = LabDown;
    let mut chaos = lab_up_until_a_process_started();
    chaos.signal(libc::SIGKILL);
    let _ = chaos.child.wait();
    // What it left is a lab: a second up is refused, status says it did not finish.
    let (code, _, err) = chaos_run(&["lab", "up"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("did not finish"), "{err}");
    let (code, status) = status_json();
    assert_eq!(code, 1, "{status:#}");
    assert_eq!(status["lab"]["complete"], false, "{status:#}");
    assert!(!lab_processes().is_empty(), "the killed up's members are still running");
    lab_down(0);
}

fn lab_cluster_interrupted_up_removes_what_it_created() {
    require_lab_programs();
    let _guard = LabDown;
    // Interrupted once its members are started (the state records their pids).
    let chaos = lab_up_until_a_process_started();
    let (code, _, err) = chaos.interrupt();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_no_lab_left();
}

/// `lab surge ARGS --output json` on a lab of 3: the report.
fn surge_report(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["lab", "surge"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--output", "json"]);
    let (code, out, err) = chaos_run(&all);
    assert_eq!(code, 0, "lab surge {args:?}:\n{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("surge JSON: {e}\n{out}{err}"))
}

fn lab_cluster_surge_joins_and_leaves() {
    require_lab_programs();
    let _guard = LabDown;
    lab_up(3, &[]);
    let report = surge_report(&["--count", "3", "--cycles", "2", "--rate", "10"]);
    assert_eq!(report["converged"], true, "{report:#}");
    let cycles = report["cycles"].as_array().unwrap();
    assert_eq!(cycles.len(), 2, "{report:#}");
    for cycle in cycles {
        assert_eq!(cycle["nodes"].as_array().unwrap().len(), 3, "{cycle:#}");
        for phase in ["join", "leave"] {
            let seen = cycle[phase].as_array().unwrap();
            let observers: Vec<&str> = seen.iter().map(|c| c["observer"].as_str().unwrap()).collect();
            assert_eq!(observers, ["n1", "n2", "n3"], "{cycle:#}");
            let times: Vec<u64> = seen.iter().map(|c| c["ms"].as_u64().expect("a time per observer")).collect();
            // Leaving is a lease revoke: well under the 5 s lease TTL it would take otherwise.
            assert!(times.iter().all(|ms| *ms < 5000), "{phase}: {times:?}");
            assert_eq!(cycle[&format!("{phase}_max_ms")].as_u64(), times.iter().max().copied(), "{cycle:#}");
            println!("REPORT|surge|cycle={}|{phase}_ms={times:?}", cycle["cycle"]);
        }
        assert!(cycle["killed"].as_array().unwrap().is_empty(), "every surge node left on SIGTERM: {cycle:#}");
    }
    assert!(report["join_max_ms"].is_u64() && report["leave_max_ms"].is_u64(), "{report:#}");
    // Nothing of the surge is left: no process, no target, and the lab's own nodes see
    // only themselves again.
    assert!(node_processes("surge-").is_empty(), "{:?}", node_processes("surge-"));
    let targets = fs::read_to_string(format!("{STATE_DIR}/prometheus/nodes.json")).unwrap();
    assert!(!targets.contains("surge-"), "{targets}");
    let lab = assert_healthy(3);
    let (_, view) = node_get(lab["workloads"][0]["listen"].as_str().unwrap(), "/members");
    assert_eq!(view["members"].as_object().unwrap().len(), 3, "{view}");
    // Bad parameters: exit 2, nothing started.
    for (args, expected) in [(&["--count", "0"][..], "surge count 0"), (&["--member", "n9"][..], "surge member n9")] {
        let mut all = vec!["lab", "surge"];
        all.extend_from_slice(args);
        let (code, _, err) = chaos_run(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert!(node_processes("surge-").is_empty());
    lab_down(3);
}

/// Starts `lab surge` with 3 nodes that stay 60 s and returns once all 3 run (recorded in
/// surge.json with their processes).
fn surge_running() -> Chaos {
    let child = Command::new(bin())
        .args(["lab", "surge", "--count", "3", "--rate", "20", "--settle", "60", "--member", "n2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chaos-ebpf lab surge");
    let chaos = Chaos { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    while node_processes("surge-").len() < 3 {
        assert!(Instant::now() < deadline, "3 surge nodes not running within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Each node is in surge.json before it starts; its process (pid, start time) is
    // written just after the spawn, so the last one may still be on its way.
    loop {
        let recorded = fs::read_to_string(format!("{STATE_DIR}/surge.json")).unwrap();
        if recorded.matches("\"start_time\"").count() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "3 running surge nodes not recorded within 20 s: {recorded}");
        std::thread::sleep(Duration::from_millis(20));
    }
    chaos
}

fn lab_cluster_surge_interrupted_or_killed_leaves_no_node() {
    require_lab_programs();
    let _guard = LabDown;
    lab_up(3, &[]);
    // Ctrl-C: the surge stops what it started.
    let (code, _, err) = surge_running().interrupt();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(node_processes("surge-").is_empty(), "{:?}", node_processes("surge-"));
    // Killed: its nodes run on; stop_surge (for the engine's cleanup) finds and stops them.
    let mut chaos = surge_running();
    chaos.signal(libc::SIGKILL);
    let _ = chaos.child.wait();
    assert_eq!(node_processes("surge-").len(), 3);
    let stopped = chaos_lab::surge::stop_surge(Path::new(STATE_DIR)).expect("stop_surge");
    assert_eq!(stopped.len(), 3, "{stopped:?}");
    assert!(node_processes("surge-").is_empty(), "{:?}", node_processes("surge-"));
    // Killed again: `lab down` stops them (before etcd) and leaves nothing.
    let mut chaos = surge_running();
    chaos.signal(libc::SIGKILL);
    let _ = chaos.child.wait();
    let out = lab_down(3);
    assert!(out.contains("removed: surge node surge-1-"), "{out}");
}
