//! The light-node lab (`chaos-ebpf lab up --workload echo --nodes N`): namespaces on a tree
//! of bridges in a hub namespace, one echo responder, `lab reach`; `lab down` leaving
//! nothing; refusals that create nothing. Each test uses its own state directory and
//! namespace prefix (hidden `--state-dir`, `--netns-prefix`), so it meets neither a user's
//! lab nor another test's, and holds a guard that runs `lab down` even after a failure.
//! Traffic stays inside the lab's namespaces (the hub is not connected to the root one).

use crate::support::*;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

pub const TESTS: &[Test] = tests![
    hyper_lab_64_nodes_all_pairs_answer_and_down_leaves_nothing,
    hyper_lab_1024_nodes_up_sampled_reach_and_down,
    partition_matrices_cut_exactly_their_pairs_of_64_nodes,
    hyper_lab_refuses_bad_input_and_creates_nothing,
];

/// A light-node lab of this test: its state directory and namespace prefix; dropping it
/// runs `lab down` if the state is still there.
struct TestLab {
    dir: PathBuf,
    prefix: String,
}

impl TestLab {
    fn new(tag: &str) -> TestLab {
        let pid = std::process::id();
        TestLab {
            dir: PathBuf::from(format!("/run/chaos-ebpf/test-hyper-{tag}-{pid}")),
            prefix: format!("chaos-ht{pid}{tag}-"),
        }
    }

    /// `chaos-ebpf lab --state-dir DIR ARGS`, bounded to 120 s. Output goes through files:
    /// `lab reach --output json` lists thousands of pairs, more than a pipe holds while the
    /// caller only reads after the exit.
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out_file = std::env::temp_dir().join(format!("chaos-hyper-test-{}.out", std::process::id()));
        let err_file = out_file.with_extension("err");
        let mut child = Command::new(bin())
            .args(["lab", "--state-dir"])
            .arg(&self.dir)
            .args(args)
            .stdout(fs::File::create(&out_file).unwrap())
            .stderr(fs::File::create(&err_file).unwrap())
            .spawn()
            .expect("spawn chaos-ebpf");
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chaos-ebpf lab {args:?} did not exit within 120 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let out = fs::read_to_string(&out_file).unwrap_or_default();
        let err = fs::read_to_string(&err_file).unwrap_or_default();
        let _ = (fs::remove_file(&out_file), fs::remove_file(&err_file));
        (status.code().unwrap_or(-1), out, err)
    }

    fn up(&self, nodes: u32, extra: &[&str]) -> (i32, String, String) {
        let n = nodes.to_string();
        let mut args = vec!["up", "--workload", "echo", "--nodes", &n, "--netns-prefix", &self.prefix];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    fn namespaces(&self) -> Vec<String> {
        fs::read_dir("/run/netns")
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix))
            .collect()
    }

    /// Nothing of the lab is left: namespaces, state directory, responder.
    fn assert_nothing_left(&self, responder: Option<u32>) {
        let namespaces = self.namespaces();
        assert!(namespaces.is_empty(), "namespaces left: {} such as {:?}", namespaces.len(), namespaces.first());
        assert!(!self.dir.exists(), "state directory {} left", self.dir.display());
        if let Some(pid) = responder {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            assert!(stat.is_empty() || zombie || !stat.contains("chaos-lab-node"), "responder {pid} still runs");
        }
        let responders = responders_of(&self.dir);
        assert!(responders.is_empty(), "responders left: {responders:?}");
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if self.dir.exists() {
            let (code, out, err) = self.run(&["down"]);
            if code != 0 {
                eprintln!("lab down after the test: exit {code}\n{out}{err}");
            }
        }
    }
}

/// Running `chaos-lab-node echo` processes whose command line names `dir`.
fn responders_of(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if text.contains("chaos-lab-node echo") && text.contains(&dir) && !zombie {
            found.push(text.trim().to_owned());
        }
    }
    found
}

/// Skips where chaos-lab-node is not beside chaos-ebpf (the VM tests carry only the test
/// binaries); on the host a missing one is a build step left out, not a skip.
fn require_responder_binary() {
    require_root();
    let node = Path::new(bin()).with_file_name("chaos-lab-node");
    if !node.is_file() {
        if emulated() {
            skip("chaos-lab-node (the echo responder) is not in the VM");
        }
        panic!("{} is missing: cargo build (same profile) -p chaos-lab --bin chaos-lab-node", node.display());
    }
}

fn json(out: &str, err: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("JSON: {e}\n{out}{err}"))
}

fn pairs(value: &serde_json::Value) -> Vec<(u64, u64)> {
    value.as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_u64().unwrap())).collect()
}

/// `lab up` of `nodes`: asserts success and prints its time and memory line.
fn up_timed(lab: &TestLab, nodes: u32) -> f64 {
    let start = Instant::now();
    let (code, out, err) = lab.up(nodes, &[]);
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(code, 0, "lab up --workload echo --nodes {nodes}:\n{out}{err}");
    assert!(out.contains(&format!("{nodes} light nodes ready")), "{out}");
    assert!(out.contains("memory: kernel +") && out.contains("RSS"), "memory in the summary: {out}");
    println!("REPORT|hyper_lab_up|nodes={nodes}|seconds={seconds:.2}|{}", out.trim());
    seconds
}

fn down_timed(lab: &TestLab, nodes: u32) {
    let start = Instant::now();
    let (code, out, err) = lab.run(&["down"]);
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(code, 0, "lab down:\n{out}{err}");
    assert!(out.contains("verified, nothing is left"), "{out}");
    println!("REPORT|hyper_lab_down|nodes={nodes}|seconds={seconds:.2}");
}

fn hyper_lab_64_nodes_all_pairs_answer_and_down_leaves_nothing() {
    require_responder_binary();
    let lab = TestLab::new("a");
    let root_links_before = sh("ip", &["-o", "link", "show"]).stdout.len();
    up_timed(&lab, 64);

    // The agent's view: 64 nodes, each with its hub-side veth's ifindex in the hub.
    let (state, nodes) = chaos_lab::hyper::nodes(&lab.dir).expect("nodes of the lab");
    assert_eq!(nodes.len(), 64);
    let hub = String::from_utf8_lossy(&sh("ip", &["-n", &state.hub, "-o", "link", "show"]).stdout).into_owned();
    for node in [&nodes[0], &nodes[63]] {
        assert!(node.netns_path.exists(), "{}", node.netns_path.display());
        assert!(
            hub.contains(&format!("{}: {}@", node.hub_ifindex, node.hub_veth)),
            "{} ifindex {} in the hub:\n{hub}",
            node.hub_veth,
            node.hub_ifindex
        );
    }
    assert_eq!(nodes[9].ipv4.to_string(), "198.18.0.10");
    assert_eq!(nodes[9].ipv6.to_string(), "fd42:c4a0:100::a");
    // Nothing of it in the root namespace: no link, no route in the range.
    assert_eq!(sh("ip", &["-o", "link", "show"]).stdout.len(), root_links_before, "links added in the root namespace");
    let routes = String::from_utf8_lossy(&sh("ip", &["route", "show", "table", "all"]).stdout).into_owned();
    assert!(!routes.contains("198.18.") && !routes.contains("198.19."), "{routes}");

    let (code, out, err) = lab.run(&["status", "--output", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let status = json(&out, &err);
    assert_eq!(status["light_lab"]["nodes"], 64);
    assert_eq!(status["light_lab"]["responder_alive"], true);
    let responder = status["light_lab"]["responder_pid"].as_u64().map(|p| p as u32);
    assert!(status["light_lab"]["responder_rss_kb"].as_u64().unwrap() > 0);

    // Every ordered pair over UDP, 64 pairs over TCP, over IPv4 and IPv6.
    for family in [&[][..], &["--ipv6"][..]] {
        let mut args = vec!["reach", "--pairs", "all", "--tcp", "64", "--output", "json"];
        args.extend_from_slice(family);
        let (code, out, err) = lab.run(&args);
        let reach = json(&out, &err);
        assert_eq!(reach["udp"]["asked"], 64 * 63, "{family:?}");
        assert_eq!(pairs(&reach["udp"]["answered"]).len(), 64 * 63, "{family:?}: {}", reach["udp"]["unanswered"]);
        assert_eq!(pairs(&reach["tcp"]["answered"]).len(), 64, "{family:?}: {}", reach["tcp"]["unanswered"]);
        assert_eq!(code, 0, "{family:?}: {err}");
        println!("REPORT|hyper_lab_reach_all|nodes=64|family={family:?}|udp_seconds={}", reach["udp"]["seconds"]);
    }

    // A node whose link is down answers nothing, UDP or TCP, and the probe says so (exit 1):
    // the others still answer each other.
    must("ip", &["-n", &nodes[4].netns, "link", "set", "eth0", "down"]);
    let (code, out, err) =
        lab.run(&["reach", "--group", "5", "--group", "1-4", "--per-group", "4", "--tcp", "16", "--output", "json"]);
    assert_eq!(code, 1, "{out}{err}");
    let reach = json(&out, &err);
    for protocol in ["udp", "tcp"] {
        let answered = pairs(&reach[protocol]["answered"]);
        let unanswered = pairs(&reach[protocol]["unanswered"]);
        assert!(!unanswered.is_empty(), "{protocol}: {reach}");
        assert!(unanswered.iter().all(|(s, d)| *s == 5 || *d == 5), "{protocol}: {unanswered:?}");
        assert!(answered.iter().all(|(s, d)| *s != 5 && *d != 5), "{protocol}: {answered:?}");
    }
    assert!(!pairs(&reach["udp"]["answered"]).is_empty(), "n1..n4 answer each other: {reach}");

    down_timed(&lab, 64);
    lab.assert_nothing_left(responder);
    assert!(!Path::new(&state.hub_path()).exists());
    assert_eq!(sh("ip", &["-o", "link", "show"]).stdout.len(), root_links_before);
}

fn hyper_lab_1024_nodes_up_sampled_reach_and_down() {
    require_responder_binary();
    if emulated() {
        skip("1024 namespaces under qemu's TCG emulation take minutes and most of the VM's 2 GB: host only");
    }
    let lab = TestLab::new("b");
    up_timed(&lab, 1024);
    let (state, nodes) = chaos_lab::hyper::nodes(&lab.dir).expect("nodes of the lab");
    assert_eq!(nodes.len(), 1024);
    // Above 1023 ports, a tree: leaves br1, br2 under br0.
    assert_eq!(state.bridges, vec!["br0", "br1", "br2"]);
    assert!(nodes.iter().all(|n| n.hub_ifindex > 0), "every hub-side veth has an ifindex");
    let (code, out, err) = lab.run(&["reach", "--pairs", "sample:8", "--tcp", "32", "--output", "json"]);
    let reach = json(&out, &err);
    assert_eq!(reach["udp"]["asked"], 8 * 1024);
    assert!(pairs(&reach["udp"]["unanswered"]).is_empty(), "{}", reach["udp"]["unanswered"]);
    assert_eq!(pairs(&reach["tcp"]["answered"]).len(), 32, "{}", reach["tcp"]["unanswered"]);
    assert_eq!(code, 0, "{err}");
    println!("REPORT|hyper_lab_reach_sample|nodes=1024|pairs=8192|udp_seconds={}", reach["udp"]["seconds"]);
    // All pairs of 1024 nodes is refused, naming the sample mode.
    let (code, _, err) = lab.run(&["reach", "--pairs", "all"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sample:"), "{err}");
    ring_over_1024_nodes(&lab);
    let responder = chaos_lab::hyper::load(&lab.dir).unwrap().unwrap().responder.map(|p| p.pid);
    down_timed(&lab, 1024);
    lab.assert_nothing_left(responder);
}

/// A root-namespace veth with an address, removed on drop.
struct RootLink(&'static str);

impl Drop for RootLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).output();
    }
}

fn hyper_lab_refuses_bad_input_and_creates_nothing() {
    require_responder_binary();
    let lab = TestLab::new("c");
    for (args, expect) in [
        (&["--nodes", "5000"][..], "--nodes 5000"),
        (&["--nodes", "0"][..], "--nodes 0"),
        (&["--nodes", "4", "--subnet", "10.0.0.0/16"][..], "--subnet 10.0.0.0/16"),
        (&["--nodes", "4", "--subnet6", "fd42::/120"][..], "--subnet6 fd42::/120"),
    ] {
        let n = args[1];
        let mut full = vec!["up", "--workload", "echo", "--netns-prefix", &lab.prefix, "--nodes", n];
        full.extend_from_slice(&args[2..]);
        let (code, out, err) = lab.run(&full);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(expect) && err.contains("fix:"), "{args:?}: {err}");
        assert!(err.lines().all(|l| l.len() < 400), "{err}");
        assert!(lab.namespaces().is_empty() && !lab.dir.exists(), "{args:?} created something");
    }
    // The etcd lab's limit names the light-node lab.
    let (code, _, err) = lab.run(&["up", "--nodes", "5000"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--workload echo"), "{err}");

    // A host address inside the range: refused before anything is created, naming it and
    // the flag.
    must("ip", &["link", "add", "chaos-thyper0", "type", "veth", "peer", "name", "chaos-thyper1"]);
    let _link = RootLink("chaos-thyper0");
    must("ip", &["addr", "add", "198.18.200.1/24", "dev", "chaos-thyper0"]);
    let (code, out, err) = lab.up(4, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("198.18.0.0/15 is already in use") && err.contains("198.18.200.1/24 on chaos-thyper0"),
        "{err}"
    );
    assert!(err.contains("--subnet"), "the fix names the flag: {err}");
    assert!(lab.namespaces().is_empty() && !lab.dir.exists(), "the refused lab created something");
    assert!(responders_of(&lab.dir).is_empty());
    // `reach` and `down` with no lab: reach refuses (2), down says so (0).
    let (code, _, err) = lab.run(&["reach"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no light-node lab is up"), "{err}");
}

/// `chaos-ebpf run FILE` on the lab, in the background: its JSON report, no metrics.
fn run_on_lab(file: &Path, lab: &TestLab, run_dir: &Path) -> std::thread::JoinHandle<(i32, String, String)> {
    chaos_run_in_background(&[&run_json_args(file, run_dir)[..], &["--lab-dir", lab.dir.to_str().unwrap()]].concat())
}

/// Waits (at most 60 s) until the run's events.jsonl has event `kind` for `step`.
fn wait_for_event(events: &Path, kind: &str, step: &str, run: &std::thread::JoinHandle<(i32, String, String)>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = fs::read_to_string(events).unwrap_or_default();
        let seen = text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).any(|e| {
            e["event"] == kind && e["step"] == step
        });
        if seen {
            return;
        }
        assert!(!run.is_finished(), "the run ended before {kind} of step {step}:\n{text}");
        assert!(Instant::now() < deadline, "no {kind} of step {step} within 60 s:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every ordered pair of the lab's nodes over UDP (`--ipv6` too when asked): the pairs
/// that answered.
fn reach_all(lab: &TestLab, ipv6: bool) -> std::collections::BTreeSet<(u64, u64)> {
    let mut args = vec!["reach", "--pairs", "all", "--tcp", "0", "--timeout-ms", "200", "--output", "json"];
    if ipv6 {
        args.push("--ipv6");
    }
    let (_, out, err) = lab.run(&args);
    let reach = json(&out, &err);
    assert_eq!(reach["udp"]["asked"], 64 * 63, "{err}");
    pairs(&reach["udp"]["answered"]).into_iter().collect()
}

/// A ring of 8 groups of 128 nodes over the 1,024-node lab, as one matrix: while it is in
/// force, 8 sampled destinations per node (8,192 pairs, every ordered pair of groups
/// among them) answer exactly when neither direction is cut; after the run every sampled
/// pair answers.
fn ring_over_1024_nodes(lab: &TestLab) {
    let dir = std::env::temp_dir().join(format!("chaos-matrix-1024-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let mut scenario = String::from("apiVersion: chaos-ebpf/v1\nname: ring1024\nseed: 9\ngroups:\n");
    for g in 0..8 {
        scenario += &format!("  g{}: [node:n{}-n{}]\n", g + 1, 128 * g + 1, 128 * g + 128);
    }
    scenario += "steps:\n  - {name: ring, partition: {ring: [g1, g2, g3, g4, g5, g6, g7, g8]}, duration: 8s}\n";
    let file = dir.join("ring.yaml");
    fs::write(&file, &scenario).unwrap();
    let run_dir = dir.join("run");
    let run = run_on_lab(&file, lab, &run_dir);
    wait_for_event(&run_dir.join("events.jsonl"), "rules_installed", "ring", &run);
    let cuts = chaos_model::matrix::ring_cuts(8);
    let group = |node: u64| ((node - 1) / 128) as usize;
    let open = |s: u64, d: u64| !cuts.contains(&(group(s), group(d))) && !cuts.contains(&(group(d), group(s)));
    let (_, out, err) = lab.run(&["reach", "--pairs", "sample:8", "--tcp", "0", "--timeout-ms", "200", "--output", "json"]);
    let reach = json(&out, &err);
    let answered = pairs(&reach["udp"]["answered"]);
    let unanswered = pairs(&reach["udp"]["unanswered"]);
    assert_eq!(answered.len() + unanswered.len(), 8 * 1024);
    let wrong: Vec<_> = answered
        .iter()
        .filter(|&&(s, d)| !open(s, d))
        .chain(unanswered.iter().filter(|&&(s, d)| open(s, d)))
        .take(8)
        .collect();
    assert!(wrong.is_empty(), "pairs whose answer contradicts the ring: {wrong:?}");
    let group_pairs: std::collections::BTreeSet<(usize, usize)> =
        answered.iter().chain(&unanswered).map(|&(s, d)| (group(s), group(d))).collect();
    assert_eq!(group_pairs.len(), 64, "every ordered pair of groups (and each group with itself) sampled");
    println!(
        "REPORT|matrix_ring_1024|groups=8|sampled={}|answered={}|cut={}",
        answered.len() + unanswered.len(),
        answered.len(),
        unanswered.len()
    );
    let (code, out, err) = run.join().unwrap();
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["steps"][0]["ran_its_course"], true, "{report}");
    let (code, out, err) = lab.run(&["reach", "--pairs", "sample:8", "--tcp", "0", "--output", "json"]);
    assert_eq!(code, 0, "every sampled pair answers after the run: {out}{err}");
    assert_nothing_left();
}

/// A ring of 8 groups over 64 light nodes, then seeded halves, run as partition matrices
/// (one rule on the hub's bridge ports each): while each is in force, every ordered pair
/// of nodes is probed over UDP (IPv4, and IPv6 for the ring) and exactly the pairs whose
/// groups are not cut from each other answer; between and after them every pair answers.
/// The run reports both steps as run their course, and nothing is left.
fn partition_matrices_cut_exactly_their_pairs_of_64_nodes() {
    require_responder_binary();
    let lab = TestLab::new("m");
    up_timed(&lab, 64);
    let dir = std::env::temp_dir().join(format!("chaos-matrix-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let mut scenario = String::from("apiVersion: chaos-ebpf/v1\nname: matrix\nseed: 7\ngroups:\n");
    for g in 0..8 {
        scenario += &format!("  g{}: [node:n{}-n{}]\n", g + 1, 8 * g + 1, 8 * g + 8);
    }
    scenario += "steps:
  - {name: ring, partition: {ring: [g1, g2, g3, g4, g5, g6, g7, g8]}, duration: 10s}
  - {name: healed, fault: none, duration: 4s}
  - {name: halves, partition: {halves: {of: node:n1-n64, shuffle: true}}, duration: 6s}
";
    let file = dir.join("matrix.yaml");
    fs::write(&file, &scenario).unwrap();
    // The groups each node is in, as the run decides them (the halves with the step's seed).
    let plan = chaos_model::scenario::parse("matrix.yaml", &scenario).unwrap();
    let group_of = |step: usize| -> (Vec<usize>, chaos_model::matrix::PartitionMatrix) {
        let s = &plan.steps[step];
        let matrix = s.matrix.as_ref().unwrap().expand(s.seed(7));
        let mut of = vec![usize::MAX; 65];
        for (g, group) in matrix.groups().iter().enumerate() {
            for m in &group.members {
                let chaos_model::matrix::GroupMember::Node(name) = m else { panic!("{m:?}") };
                of[name[1..].parse::<usize>().unwrap()] = g;
            }
        }
        (of, matrix)
    };
    let expected = |step: usize| -> std::collections::BTreeSet<(u64, u64)> {
        let (of, matrix) = group_of(step);
        let mut out = std::collections::BTreeSet::new();
        for s in 1..=64usize {
            for d in (1..=64usize).filter(|&d| d != s) {
                // The echo's answer travels back: both directions must be open.
                if !matrix.is_cut(of[s], of[d]) && !matrix.is_cut(of[d], of[s]) {
                    out.insert((s as u64, d as u64));
                }
            }
        }
        out
    };
    let run_dir = dir.join("run");
    let run = run_on_lab(&file, &lab, &run_dir);
    let events = run_dir.join("events.jsonl");
    let everyone: std::collections::BTreeSet<(u64, u64)> =
        (1..=64u64).flat_map(|s| (1..=64u64).filter(move |&d| d != s).map(move |d| (s, d))).collect();

    wait_for_event(&events, "rules_installed", "ring", &run);
    let ring = expected(0);
    // A ring of 8: each group reaches itself and its 2 neighbours (24 nodes), both ways.
    assert_eq!(ring.len(), 64 * 23);
    for ipv6 in [false, true] {
        let answered = reach_all(&lab, ipv6);
        let wrong: Vec<_> = answered.symmetric_difference(&ring).take(8).collect();
        assert!(wrong.is_empty(), "ring (ipv6 {ipv6}): {} pairs answered, {} expected; differing: {wrong:?}", answered.len(), ring.len());
    }
    println!("REPORT|matrix_ring|nodes=64|groups=8|pairs_answered={}|pairs_cut={}", ring.len(), 64 * 63 - ring.len());

    wait_for_event(&events, "rules_removed", "ring", &run);
    let answered = reach_all(&lab, false);
    assert_eq!(answered.len(), everyone.len(), "after the ring healed: {:?}", everyone.difference(&answered).take(8).collect::<Vec<_>>());

    wait_for_event(&events, "rules_installed", "halves", &run);
    let halves = expected(2);
    assert_eq!(halves.len(), 2 * 32 * 31);
    let answered = reach_all(&lab, false);
    let wrong: Vec<_> = answered.symmetric_difference(&halves).take(8).collect();
    assert!(wrong.is_empty(), "halves: {} pairs answered, {} expected; differing: {wrong:?}", answered.len(), halves.len());
    let (of, _) = group_of(2);
    assert_ne!(of[1..=32].iter().filter(|&&g| g == 0).count(), 32, "the halves are shuffled, not n1-n32");

    let (code, out, err) = run.join().unwrap();
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    for step in report["steps"].as_array().unwrap() {
        assert_eq!(step["ran_its_course"], true, "{step}");
    }
    assert!(err.contains("partition matrix (ring): 8 groups, 64 members; 40 cut pairs (20 both ways)"), "{err}");
    let answered = reach_all(&lab, false);
    assert_eq!(answered.len(), everyone.len(), "after the run");
    assert_nothing_left();
    down_timed(&lab, 64);
    lab.assert_nothing_left(None);
}
