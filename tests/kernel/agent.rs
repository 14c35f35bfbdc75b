//! The resident agent (`chaos-ebpf agent`): faults applied over its Unix-socket API cut
//! real UDP and TCP traffic and are applied by map writes (no program load), revert
//! brings traffic back, faults stack, a dead client's fault ends with its lease, other
//! users get 403, SIGTERM reverts everything, SIGKILL takes the TCX links with it and
//! `cleanup` removes the rest, the metrics endpoint serves the counters, and `inject`
//! and `run` go through the agent.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chaos_agent::{
    api::{FaultList, FaultWire},
    client::Client,
};
use chaos_model::spec::FaultSpec;

use crate::support::*;

pub const TESTS: &[Test] = tests![
    agent_applies_and_reverts_in_milliseconds,
    agent_reaps_the_fault_of_a_dead_client,
    agent_refuses_other_users,
    agent_sigkill_takes_its_links_and_cleanup_the_rest,
    inject_goes_through_the_agent,
    run_goes_through_the_agent,
    agent_max_peers_holds_a_million,
    agent_holds_1024_faults_and_8_on_the_same_packets,
];

fn spec(kind: &str, target: &str, extra: &str) -> FaultSpec {
    let text = format!(r#"{{"kind": "{kind}", "target": "{target}"{extra}}}"#);
    serde_json::from_str::<FaultWire>(&text).unwrap().to_spec().unwrap()
}

/// UDP and TCP from a to b both get through (a fresh TCP connection, echoed).
fn passes(pair: &Pair, port: u16) -> (bool, bool) {
    let udp = udp_passes(&pair.a, &pair.b, ADDR_B, port);
    let tcp = tcp_connect(&pair.a, sock(ADDR_B, port), Duration::from_millis(500))
        .is_ok_and(|mut s| tcp_echo(&mut s, Duration::from_millis(500)));
    (udp, tcp)
}

fn chaos_devices(ns: &str) -> Vec<String> {
    let out = sh("ip", &["-n", ns, "-o", "link", "show"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_owned()))
        .filter(|n| n.starts_with("chaos"))
        .collect()
}

fn faults(client: &Client) -> FaultList {
    client.list().expect("listing the agent's faults")
}

/// Apply over the API in milliseconds (programs loaded at the agent's start); UDP and
/// TCP cut; a second fault stacks; metrics serve the counters; revert brings traffic
/// back; a second agent on the same socket is refused; SIGTERM reverts everything.
fn agent_applies_and_reverts_in_milliseconds() {
    let pair = Pair::new("agt");
    let target = pair.target();
    let port = 7301;
    tcp_echo_server(&pair.b, sock(ADDR_B, port));
    assert_eq!(passes(&pair, port), (true, true), "traffic before any fault");
    let mut agent = Agent::start("main", &[&pair.a]);
    let mode = fs::metadata(&agent.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode");
    assert_eq!(fs::metadata(&agent.dir).unwrap().permissions().mode() & 0o777, 0o700, "socket directory mode");

    let (code, _, err) = chaos_run(&["agent", "--socket", agent.socket.to_str().unwrap(), "--metrics-addr", "off"]);
    assert_eq!(code, 2, "a second agent on a live socket: {err}");
    assert!(err.contains(&format!("an agent already runs (pid {})", agent.pid())), "{err}");

    let client = agent.client();
    let started = Instant::now();
    let applied = client.apply(&spec("partition", &target, ""), Duration::from_secs(5), Some(1)).expect("apply");
    let wall = started.elapsed();
    println!("agent apply: {} us in the agent, {:.2} ms wall time for the client", applied.apply_us, ms(wall));
    assert!(wall < timing_bound(), "apply took {wall:?}: programs loaded per fault again?");
    assert_eq!(passes(&pair, port), (false, false), "UDP and TCP under the partition");

    // A second fault stacks on the first: both listed, in their own slots.
    let second = client
        .apply(&spec("loss", &target, r#", "probability": 1.0, "proto": "udp""#), Duration::from_secs(5), None)
        .expect("second apply");
    let list = faults(&client);
    assert_eq!(list.faults.iter().map(|f| f.id).collect::<Vec<_>>(), vec![applied.id, second.id]);
    assert_ne!(list.faults[0].rules[0].slot, list.faults[1].rules[0].slot, "{list:?}");

    let (status, metrics) = http_get(agent.metrics, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("chaos_agent_faults_active 2"), "{metrics}");
    assert!(metrics.contains("chaos_agent_applies_total 2"), "{metrics}");
    assert!(metrics.contains("chaos_agent_namespaces 1") && metrics.contains("chaos_agent_programs_loaded 4"));
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("chaos_agent_fault_packets") && l.contains(r#"counter="dropped""#) && l.contains(r#"fault="1""#))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no dropped series of fault 1:\n{metrics}"));
    assert!(dropped > 0, "{metrics}");

    client.revert(second.id).expect("revert the loss");
    let started = Instant::now();
    let reverted = client.revert(applied.id).expect("revert");
    println!("agent revert: {} us in the agent, {:.2} ms wall time", reverted.revert_us, ms(started.elapsed()));
    assert!(reverted.counters.dropped > 0 && reverted.counters.matched >= reverted.counters.dropped, "{reverted:?}");
    assert_eq!(passes(&pair, port), (true, true), "traffic after the revert");
    assert!(faults(&client).faults.is_empty());
    assert_eq!(gso_max_segs(&pair.a, "va"), gso_max_segs(&pair.b, "vb"), "device settings restored when idle");

    // SIGTERM with a fault in force: reverted, everything removed, exit 0 at once.
    client.apply(&spec("partition", &target, ""), Duration::from_secs(5), None).expect("apply");
    agent.signal(libc::SIGTERM);
    let (code, took) = agent.wait(Duration::from_secs(10));
    let (_, err) = agent.output();
    println!("SIGTERM to exit: {:.1} ms", ms(took));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("applied fault 1") && err.contains("reverted fault 1") && err.contains("stopped fault 3"), "{err}");
    assert_eq!(passes(&pair, port), (true, true), "traffic after SIGTERM");
    assert!(!agent.socket.exists(), "the socket is removed");
    assert!(chaos_devices(&pair.a).is_empty(), "segmenter pairs left: {:?}", chaos_devices(&pair.a));
    assert!(pair.filters(&pair.a, "va", "ingress").is_empty());
    assert_nothing_left();
}

/// A one-way partition of a's egress from `n` peers: b first, the others every other
/// /32 of 10.0.0.0/8 (map keys only: nothing is sent to them; not adjacent, so none
/// merge into a shorter prefix and the trie holds `n`).
fn many_peers(target: &str, n: u32) -> FaultSpec {
    let mut peers = vec![format!("{ADDR_B}/32")];
    peers.extend((0..n - 1).map(|i| format!("{}/32", std::net::Ipv4Addr::from(0x0a00_0000 + 2 * i))));
    let wire = serde_json::json!({"kind": "partition", "target": target, "mode": "oneway", "direction": "egress", "peers": peers});
    serde_json::from_value::<FaultWire>(wire).unwrap().to_spec().unwrap()
}

/// `run` through the agent: the scenario's loss step is applied by the agent (the run
/// loads no program: none of its own is listed while the step is in force) and drops
/// exactly the packets the shared hash predicts for the step's seed and the scenario's
/// rule id, as the same run without the agent does; the report names the agent and
/// counts the drops; after it the agent holds nothing. A scenario the agent cannot
/// take (its own protect list) loads its own programs and says why.
fn run_goes_through_the_agent() {
    let pair = Pair::new("agtrun");
    let agent = Agent::start("run", &[&pair.a]);
    let socket = agent.socket.to_str().unwrap().to_owned();
    let receiver = udp_receiver(&pair.b, sock(ADDR_B, 5002));
    let count = 1000;
    // The scenarios and the three runs' directories, removed also after a failure.
    let tmp = TempDir::new("run-via-agent");
    let dir = &tmp.0;
    let scenario = |name: &str, extra: &str| {
        let path = dir.join(format!("{name}.yaml"));
        let text = format!(
            "apiVersion: chaos-ebpf/v1\nname: {name}\n{extra}steps:\n  - name: lossy\n    fault: loss\n    target: {}\n    probability: 0.3\n    direction: egress\n    proto: udp\n    ports: 5002\n    seed: 7\n    duration: 4s\n",
            pair.target()
        );
        fs::write(&path, text).unwrap();
        path
    };
    let through = scenario("through-agent", "");
    // One run: the dropped sequence numbers, its report, its stderr.
    let run = |file: &PathBuf, run_dir: &str, agent_args: &[&str], via_agent: bool| {
        let run_dir = dir.join(run_dir);
        let mut args: Vec<&str> = run_json_args(file, &run_dir).to_vec();
        args.extend(agent_args);
        let child = Command::new(bin()).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        own_pid(child.id());
        let pid = child.id();
        let chaos = Chaos { child };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let in_force = if via_agent {
                !faults(&agent.client()).faults.is_empty()
            } else {
                fs::read_to_string(format!("/run/chaos-ebpf/{pid}.json")).is_ok_and(|t| t.contains("\"rule_id\""))
            };
            if in_force {
                break;
            }
            assert!(Instant::now() < deadline, "the run's fault was not in force within 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        let programs = loaded_chaos_programs().len();
        let got = udp_run(&pair.a, sock(ADDR_A, 5001), &receiver, sock(ADDR_B, 5002), count);
        let (code, out, err) = chaos.finish(Duration::from_secs(30));
        assert_eq!(code, 0, "{err}");
        let dropped: Vec<u32> = (0..count).filter(|s| !got.contains(s)).collect();
        let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        (dropped, report, err, programs)
    };
    let before = loaded_chaos_programs().len();
    let (dropped, report, err, programs) = run(&through, "via-agent", &["--agent-socket", &socket], true);
    assert!(err.contains("the faults go through the agent at"), "{err}");
    assert_eq!(programs, before, "the run loaded programs of its own while the agent held its rule");
    assert!(report["agent"].as_str().is_some_and(|a| a.contains(&socket)), "{}", report["agent"]);
    assert_eq!(report["clean"], true, "the revert on the agent is verified");
    assert_eq!(dropped, predicted_drops(7, 0.3, count), "the agent's decisions differ from the shared hash");
    // Only this flow matches (udp port 5002): nothing else sent from a is counted.
    assert_eq!(counter(&report["steps"][0]["rules"][0]["counters"], "dropped"), dropped.len() as u64);
    assert_eq!(report["steps"][0]["rules"][0]["ran_its_course"], true);
    assert!(faults(&agent.client()).faults.is_empty(), "the agent still holds the run's fault");

    let (own, report, err, programs) = run(&through, "no-agent", &["--no-agent", "--agent-socket", &socket], false);
    assert!(!err.contains("go through the agent"), "{err}");
    assert!(programs > before, "--no-agent loads the run's own programs");
    assert!(report.get("agent").is_none(), "{report}");
    assert_eq!(own, dropped, "the same seed dropped other packets without the agent");

    // What the agent does not offer per fault: the run loads its programs, and says why.
    let protected = scenario("own-protect", "protect: [tcp:2222]\n");
    let (own, _, err, _) = run(&protected, "own-protect", &["--agent-socket", &socket], false);
    assert!(err.contains("not through the agent") && err.contains("protect"), "{err}");
    assert_eq!(own, dropped);
    println!("run through the agent dropped {} of {count}, as without it and as predicted", dropped.len());
    drop(agent);
    assert_nothing_left();
}

/// `--max-peers` sizes each namespace's peer trie: an agent started with 1,000,000
/// applies a partition from 1,000,000 peers (b among them: UDP to b is cut) and reverts
/// it (traffic back); 1,000,001 are refused with the count and the fix, nothing left in
/// force; a bad value exits 2 naming the option.
fn agent_max_peers_holds_a_million() {
    if emulated() {
        skip("a 1,000,000-peer trie under qemu's TCG emulation takes minutes and much of the VM's 2 GB; host only (agent_applies_and_reverts_in_milliseconds runs the batched trie writes in the VMs)");
    }
    for bad in ["0", "4194305", "many"] {
        let (code, _, err) = chaos_run(&["agent", "--max-peers", bad, "--socket", "/nonexistent/agent.sock"]);
        assert_eq!(code, 2, "--max-peers {bad}: {err}");
        assert!(err.contains("--max-peers") && err.contains("from 1 to 4194304"), "{err}");
        assert!(err.lines().all(|l| l.len() < 300), "{err}");
    }
    for bad in ["63", "4194305", "lots"] {
        let (code, _, err) = chaos_run(&["agent", "--flow-table", bad, "--socket", "/nonexistent/agent.sock"]);
        assert_eq!(code, 2, "--flow-table {bad}: {err}");
        assert!(err.contains("--flow-table") && err.contains("from 64 to 4194304"), "{err}");
    }
    let pair = Pair::new("amp");
    let target = pair.target();
    let port = 7321;
    let mut agent = Agent::start_with(
        std::env::temp_dir().join("cet-agent-maxpeers"),
        &[&pair.a],
        &["--max-peers", "1000000"],
    );
    assert!(udp_passes(&pair.a, &pair.b, ADDR_B, port), "traffic before the fault");
    let client = agent.client();
    let started = Instant::now();
    let applied = client.apply(&many_peers(&target, 1_000_000), Duration::from_secs(60), None).expect("1M peers");
    println!("1,000,000 peers: {} us in the agent, {:.0} ms wall time", applied.apply_us, ms(started.elapsed()));
    assert!(applied.fault.len() <= 403, "the description is cut to a line: {} bytes", applied.fault.len());
    assert!(!udp_passes(&pair.a, &pair.b, ADDR_B, port), "UDP to b under a partition from 1M peers");
    let started = Instant::now();
    let reverted = client.revert(applied.id).expect("revert");
    println!("revert: {} us in the agent, {:.0} ms wall time", reverted.revert_us, ms(started.elapsed()));
    assert!(udp_passes(&pair.a, &pair.b, ADDR_B, port), "traffic after the revert");

    let err = client.apply(&many_peers(&target, 1_000_001), Duration::from_secs(60), None).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("1000001 peer prefixes") && text.contains("holds 1000000"), "{text}");
    assert!(text.contains("--max-peers"), "the fix names the option: {text}");
    assert!(text.len() < 400, "{text}");
    assert!(faults(&client).faults.is_empty(), "nothing in force after the refusal");
    assert!(udp_passes(&pair.a, &pair.b, ADDR_B, port), "traffic after the refusal");

    agent.signal(libc::SIGTERM);
    let (code, _) = agent.wait(Duration::from_secs(20));
    let (_, err) = agent.output();
    assert_eq!(code, Some(0), "{err}");
    assert_nothing_left();
}

/// The limits of one namespace's instance, through the agent: 1,024 faults at once (1,023
/// partitions from peers that send nothing and a blackhole of one UDP port to b: that
/// port is cut, the next one is not), the 1,025th refused naming the limit; then 8 loss
/// faults on the same packets (p = 0.1 each: together 1 - 0.9^8 = 0.570 of them lost),
/// the 9th refused; every fault reverted, traffic back, nothing left. The agent runs with
/// the smallest flow table (`--flow-table 64`, one flow here).
fn agent_holds_1024_faults_and_8_on_the_same_packets() {
    if emulated() {
        skip("1,024 applies through the agent take minutes under qemu's TCG emulation; host only (the limits are the same code on every kernel)");
    }
    let pair = Pair::new("alim");
    let target = pair.target();
    let (cut, open) = (7331, 7332);
    // One flow in this test: the smallest flow table holds it.
    let mut agent = Agent::start_with(std::env::temp_dir().join("cet-agent-limits"), &[&pair.a], &["--flow-table", "64"]);
    let maps: Vec<serde_json::Value> =
        serde_json::from_slice(&sh("bpftool", &["-j", "map", "show"]).stdout).unwrap_or_default();
    let flow_tables: Vec<u64> = maps
        .iter()
        .filter(|m| m["name"] == "CHAOS_FLOWS")
        .filter_map(|m| m["max_entries"].as_u64())
        .collect();
    assert_eq!(flow_tables, [64], "the agent's flow table as --flow-table sized it");
    let client = agent.client();
    let lease = Duration::from_secs(120);
    let wire = |json: serde_json::Value| serde_json::from_value::<FaultWire>(json).unwrap().to_spec().unwrap();
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..1023u32 {
        let peer = format!("{}/32", std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let spec = wire(serde_json::json!({"kind": "partition", "target": target, "mode": "oneway",
            "direction": "egress", "peers": [peer]}));
        ids.push(client.apply(&spec, lease, None).unwrap_or_else(|e| panic!("fault {}: {e:#}", i + 1)).id);
    }
    let blackhole = wire(serde_json::json!({"kind": "blackhole", "target": target, "direction": "egress",
        "proto": "udp", "ports": {"lo": cut, "hi": cut}, "peers": [format!("{ADDR_B}/32")]}));
    ids.push(client.apply(&blackhole, lease, None).expect("the 1,024th fault").id);
    println!("1,024 faults applied in {:.0} ms", ms(started.elapsed()));
    assert!(!udp_passes(&pair.a, &pair.b, ADDR_B, cut), "the blackholed port among 1,024 faults");
    assert!(udp_passes(&pair.a, &pair.b, ADDR_B, open), "the next port");
    let extra = wire(serde_json::json!({"kind": "partition", "target": target, "peers": ["10.200.0.1/32"]}));
    let text = format!("{:#}", client.apply(&extra, lease, None).unwrap_err());
    assert!(text.contains("more than 1024 faults at once"), "{text}");
    assert_eq!(faults(&client).faults.len(), 1024);
    for id in ids {
        client.revert(id).expect("revert");
    }
    assert!(udp_passes(&pair.a, &pair.b, ADDR_B, cut), "the port after the revert");

    let loss = wire(serde_json::json!({"kind": "loss", "target": target, "direction": "egress",
        "proto": "udp", "probability": 0.1}));
    let ids: Vec<u64> = (0..8).map(|k| client.apply(&loss, lease, Some(40 + k)).expect("a stacked loss fault").id).collect();
    let text = format!("{:#}", client.apply(&loss, lease, None).unwrap_err());
    assert!(text.contains("run fewer faults on the same traffic"), "{text}");
    let receiver = udp_receiver(&pair.b, sock(ADDR_B, 5012));
    let n = 4000u32;
    let got = udp_run(&pair.a, sock(ADDR_A, 5011), &receiver, sock(ADDR_B, 5012), n);
    let lost = f64::from(n) - got.len() as f64;
    let p = 1.0 - 0.9f64.powi(8);
    let sigma = (f64::from(n) * p * (1.0 - p)).sqrt();
    println!("8 stacked loss faults of 0.1: lost {lost} of {n} ({:.2} sigma from {p:.3})", (lost - f64::from(n) * p) / sigma);
    assert!((lost - f64::from(n) * p).abs() <= 4.0 * sigma, "lost {lost} of {n}, expected {:.0}", f64::from(n) * p);
    let listed = faults(&client);
    assert!(listed.faults.iter().all(|f| f.counters.matched > 0 && f.counters.dropped > 0), "every one of the 8 acts: {listed:?}");
    let dropped: u64 = listed.faults.iter().map(|f| f.counters.dropped).sum();
    assert_eq!(dropped as f64, lost, "the faults dropped what was lost");
    for id in ids {
        client.revert(id).expect("revert");
    }
    assert!(udp_passes(&pair.a, &pair.b, ADDR_B, open), "traffic after every revert");
    agent.signal(libc::SIGTERM);
    let (code, _) = agent.wait(Duration::from_secs(20));
    let (_, err) = agent.output();
    assert_eq!(code, Some(0), "{err}");
    assert_nothing_left();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A client that applies with a 1 s lease and dies (SIGKILL): the fault stops acting
/// within the lease plus 1 s and the agent no longer lists it.
fn agent_reaps_the_fault_of_a_dead_client() {
    let pair = Pair::new("agtlease");
    let target = pair.target();
    let agent = Agent::start("lease", &[&pair.a]);
    let socket = agent.socket.to_str().unwrap().to_owned();
    let mut client = Command::new(bin())
        .args(["inject", "partition", "--target", &target, "--duration", "1m", "--lease", "1s"])
        .args(["--agent-socket", &socket])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the client");
    own_pid(client.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while faults(&agent.client()).faults.is_empty() {
        assert!(Instant::now() < deadline, "the client's fault never showed up");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Renewed past its first lease: the client keeps it alive.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(faults(&agent.client()).faults.len(), 1, "a live client's fault stays");
    assert!(!udp_passes(&pair.a, &pair.b, ADDR_B, 7302), "partition in force");
    client.kill().unwrap();
    client.wait().unwrap();
    let killed = Instant::now();
    let back = udp_time_until_passes(&pair.a, &pair.b, ADDR_B, 7303, Duration::from_secs(3))
        .expect("traffic back after the client died");
    println!("traffic back {:.0} ms after the client's death (lease 1 s)", ms(back));
    assert!(back < Duration::from_secs(2), "{back:?}");
    while !faults(&agent.client()).faults.is_empty() {
        assert!(killed.elapsed() < Duration::from_secs(2), "the dead client's fault is still listed");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("fault reaped {:.0} ms after the client's death", ms(killed.elapsed()));
    let (_, metrics) = http_get(agent.metrics, "/metrics").expect("metrics");
    assert!(metrics.contains("chaos_agent_lapses_total 1"), "{metrics}");
    drop(agent);
    assert_nothing_left();
}

/// A request from another uid (65534) gets 403 with a problem and a fix and changes
/// nothing, even when the socket's mode lets it connect.
fn agent_refuses_other_users() {
    let pair = Pair::new("agtcred");
    let target = pair.target();
    let dir = std::env::temp_dir().join("cet-agent-cred");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let agent = Agent::start_in(dir, &[&pair.a]);
    // Wider than the agent makes it: only the peer credentials stand in the way.
    fs::set_permissions(&agent.socket, fs::Permissions::from_mode(0o666)).unwrap();
    let socket = agent.socket.to_str().unwrap();
    let (code, out, err) = chaos_run_as(&["agent", "status", "--socket", socket], Some(65534));
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("uid 65534 may not use the agent") && err.contains("fix:"), "{err}");
    let (code, out, err) = chaos_run_as(
        &["inject", "partition", "--target", &target, "--duration", "5s", "--agent-socket", socket],
        Some(65534),
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("may not use the agent"), "{err}");
    assert!(faults(&agent.client()).faults.is_empty(), "nothing applied");
    assert!(udp_passes(&pair.a, &pair.b, ADDR_B, 7304));
    drop(agent);
    assert_nothing_left();
}

/// SIGKILL: the TCX links and programs go with the process at once; `cleanup` removes
/// what the ledger says is left (segmenter pairs, device settings) and the agent's
/// record; a new agent replaces the dead one's socket.
fn agent_sigkill_takes_its_links_and_cleanup_the_rest() {
    if !kernel_has_tcx() {
        skip("no TCX on this kernel: netlink filters outlive a killed agent (the lease ends them)");
    }
    let pair = Pair::new("agtkill");
    let target = pair.target();
    let mut agent = Agent::start("kill", &[&pair.a]);
    agent.client().apply(&spec("partition", &target, ""), Duration::from_secs(30), None).expect("apply");
    assert!(!udp_passes(&pair.a, &pair.b, ADDR_B, 7305));
    agent.signal(libc::SIGKILL);
    agent.wait(Duration::from_secs(5));
    let back = udp_time_until_passes(&pair.a, &pair.b, ADDR_B, 7306, Duration::from_secs(2))
        .expect("traffic back after SIGKILL");
    println!("traffic back {:.1} ms after SIGKILL", ms(back));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !loaded_chaos_programs().is_empty() {
        assert!(Instant::now() < deadline, "programs outlived the agent: {:?}", loaded_chaos_programs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(agent.socket.exists(), "a killed agent leaves its socket");
    let (code, out, err) = chaos_run(&["cleanup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(chaos_devices(&pair.a).is_empty(), "segmenter pairs left after cleanup: {:?}", chaos_devices(&pair.a));
    assert_nothing_left();
    // The dead agent's socket is replaced by a new agent.
    let mut again = Agent::start_in(agent.dir.clone(), &[]);
    assert!(again.client().health().is_ok());
    again.signal(libc::SIGTERM);
    assert_eq!(again.wait(Duration::from_secs(10)).0, Some(0));
    let (_, err) = again.output();
    assert!(err.contains("removed the stale socket"), "{err}");
    assert_nothing_left();
}

/// `inject` with an agent answering applies in the agent (listed there while it runs),
/// renews and reverts, and prints the counters; `--no-agent` loads programs itself.
/// Prints the wall time of both for one 500 ms fault.
fn inject_goes_through_the_agent() {
    let pair = Pair::new("agtinj");
    let target = pair.target();
    let agent = Agent::start("inject", &[&pair.a]);
    let socket = agent.socket.to_str().unwrap().to_owned();
    let started = Instant::now();
    let child = Command::new(bin())
        .args(["inject", "partition", "--target", &target, "--duration", "2s", "--lease", "600ms"])
        .args(["--agent-socket", &socket])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn inject");
    own_pid(child.id());
    let inject = Chaos { child };
    let deadline = Instant::now() + Duration::from_secs(10);
    while faults(&agent.client()).faults.is_empty() {
        assert!(Instant::now() < deadline, "inject's fault never showed up in the agent");
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("inject through the agent: fault listed {:.0} ms after the start", ms(started.elapsed()));
    assert!(!udp_passes(&pair.a, &pair.b, ADDR_B, 7307), "partition in force");
    // Past three leases: inject renews it.
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(faults(&agent.client()).faults.len(), 1);
    let (code, out, err) = inject.finish(Duration::from_secs(10));
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("applied by the agent"), "{err}");
    assert!(out.contains("completed") && out.contains("dropped"), "{out}");
    assert!(faults(&agent.client()).faults.is_empty());
    assert!(udp_passes(&pair.a, &pair.b, ADDR_B, 7308));

    // The same fault, 500 ms, through the agent and without it.
    for args in [vec!["--agent-socket", socket.as_str()], vec!["--no-agent"]] {
        let started = Instant::now();
        let (code, out, err) = chaos_run(
            &[&["inject", "partition", "--target", &target, "--duration", "500ms"][..], &args[..]].concat(),
        );
        assert_eq!(code, 0, "{out}{err}");
        println!("inject {} (500 ms fault): {:.0} ms wall time", args[0], ms(started.elapsed()));
        assert_eq!(err.contains("applied by the agent"), args[0] != "--no-agent", "{err}");
    }
    drop(agent);
    assert_nothing_left();
}
