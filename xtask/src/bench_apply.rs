//! `cargo xtask bench apply`: how long a partition takes to apply and to revert, for N
//! peer prefixes, through the agent and with the two usual firewalls, measured in the
//! same run (issue 11).
//!
//! A namespace pair of its own (chaos-bapply-a and -b, a veth, 192.0.2.1 and .2, not
//! connected to the root namespace). For each N: one peer is 192.0.2.2 (b), the others
//! distinct /32s of 10.0.0.0/8, which are only set elements and map keys: nothing is
//! sent to them. Tools, each dropping what a sends to the peers:
//!
//! - agent: a running `chaos-ebpf agent` (this run starts it, --max-peers sized for the
//!   largest N) with a's programs loaded at its start; apply = POST /v1/faults of a
//!   one-way partition (egress) until its answer, revert = DELETE /v1/faults/ID until
//!   its answer. The answers' `apply_us` and `revert_us` (the agent's kernel thread)
//!   are reported too: the difference is the HTTP request, its JSON and the client.
//! - instance: the same rule installed and removed by `chaos_datapath::Instance` in this
//!   process (no HTTP, no JSON, no fault parsing): the datapath's own share.
//! - nft: `nft -f` of a table with a set of the N addresses and a drop rule on it;
//!   revert = `nft delete table`.
//! - iptables: `iptables-restore --noflush` of N `-A OUTPUT -d X -j DROP` rules; revert =
//!   `iptables-restore` of an empty OUTPUT chain. A size whose repetition would take
//!   longer than ITERATION_LIMIT (extrapolated from the size below it) is not measured,
//!   and the report says so with the extrapolation.
//!
//! Each figure is the median of REPS repetitions with min and max; the tools'
//! commands run inside a (setns before exec) and their inputs are written before the
//! clock starts. Before the sizes, the revert's traffic-back time: a UDP datagram from a
//! to b every 0.2 ms, the peer blocked, then the time from the revert's start until the
//! first datagram arrives at b, TRAFFIC_REPS (100) times per tool at N = 1 and 1000 (p50,
//! p99, max).
//!
//! BENCH_APPLY_MAX_N=1000 (say) stops at that size, for a quick look.
//!
//! Prints a table with the ratios agent/nft and agent/iptables per N and the issue's
//! goals (PASS/MISS with the figure); writes target/bench/apply.json.

use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, UdpSocket},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use crate::bench::{command_in_netns, ip};
use anyhow::{anyhow, bail, Context, Result};
use chaos_datapath::{
    instance::{Capacity, Instance},
    netns::Netns,
    AttachMode,
};
use chaos_ebpf_common::{action, direction, family, flags, Prefix, Rule};
use serde_json::{json, Value};

const NS_A: &str = "chaos-bapply-a";
const NS_B: &str = "chaos-bapply-b";
const ADDR_A: &str = "192.0.2.1";
const ADDR_B: &str = "192.0.2.2";
const SIZES: [usize; 6] = [1, 100, 1_000, 10_000, 100_000, 1_000_000];
const REPS: usize = 5;
/// 100, so that the p99 is the 99th of 100 and not the one slowest of 20.
const TRAFFIC_REPS: usize = 100;
const TRAFFIC_SIZES: [usize; 2] = [1, 1_000];
/// A repetition expected to take longer than this is not run.
const ITERATION_LIMIT: Duration = Duration::from_secs(60);
/// The longest one tool command or agent call may take before the benchmark gives up.
const CALL_LIMIT: Duration = Duration::from_secs(180);
const UDP_PORT: u16 = 9_411;
const SEND_EVERY: Duration = Duration::from_micros(200);
const NFT_TABLE: &str = "chaos_bapply";
const WORK_DIR: &str = "/run/chaos-bapply";
const LEASE_MS: u64 = 300_000;

/// The namespace pair, deleted on drop (with whatever nft and iptables state is inside).
struct Pair;

impl Pair {
    fn create() -> Result<Pair> {
        for ns in [NS_A, NS_B] {
            let _ = ip(&["netns", "del", ns]);
            ip(&["netns", "add", ns])?;
        }
        let pair = Pair;
        ip(&["link", "add", "bapa", "netns", NS_A, "type", "veth", "peer", "name", "bapb", "netns", NS_B])?;
        ip(&["-n", NS_A, "addr", "add", &format!("{ADDR_A}/24"), "dev", "bapa"])?;
        ip(&["-n", NS_B, "addr", "add", &format!("{ADDR_B}/24"), "dev", "bapb"])?;
        for (ns, dev) in [(NS_A, "bapa"), (NS_B, "bapb")] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [NS_A, NS_B] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn netns_fd(ns: &str) -> Result<OwnedFd> {
    Ok(fs::File::open(format!("/var/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?.into())
}

/// Runs a tool inside namespace a (setns between fork and exec), bounded by CALL_LIMIT.
fn tool_in_a(program: &str, args: &[&str]) -> Result<()> {
    let ns = netns_fd(NS_A)?;
    let mut command = command_in_netns(&ns, program);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = command.spawn().with_context(|| format!("starting {program}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                let mut err = String::new();
                child.stderr.take().map(|mut e| e.read_to_string(&mut err));
                bail!("{program} {}: {status}: {}", args.join(" "), err.chars().take(300).collect::<String>());
            }
            return Ok(());
        }
        if started.elapsed() > CALL_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{program} {} took over {} s", args.join(" "), CALL_LIMIT.as_secs());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The peers of size n: b first, then 10.0.0.0, 10.0.0.2, 10.0.0.4, ...: every other
/// address, so that chaos-ebpf's trie cannot merge them into shorter prefixes (nft's
/// interval sets and iptables get the same list: the comparison stays one of N entries).
fn peers(n: usize) -> Vec<Ipv4Addr> {
    let mut out = vec![ADDR_B.parse().expect("an address")];
    out.extend((0..n.saturating_sub(1) as u32).map(|i| Ipv4Addr::from(0x0a00_0000 + 2 * i)));
    out
}

/// The agent, stopped (SIGTERM: it reverts everything) on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    fn start(bin: &str, max_peers: usize) -> Result<Agent> {
        let socket = Path::new(WORK_DIR).join("agent.sock");
        let _ = fs::remove_file(&socket);
        let log = fs::File::create(Path::new(WORK_DIR).join("agent.log"))?;
        let child = Command::new(bin)
            .args(["agent", "--metrics-addr", "off", "--netns", NS_A, "--max-peers", &max_peers.to_string()])
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        let mut agent = Agent { child, socket };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(status) = agent.child.try_wait()? {
                bail!("the agent exited ({status}); see {WORK_DIR}/agent.log");
            }
            if agent.call("GET", "/v1/health", b"").is_ok() {
                return Ok(agent);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the agent did not answer within 30 s; see {WORK_DIR}/agent.log")
    }

    /// One HTTP/1.1 request on a fresh connection (as the agent's own client makes
    /// them): the status and the body as JSON.
    fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Value)> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(CALL_LIMIT))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: chaos-ebpf-agent\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("no HTTP header"))?;
        let head = String::from_utf8_lossy(&response[..split]);
        let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let value = serde_json::from_slice(&response[split + 4..]).unwrap_or(Value::Null);
        Ok((status, value))
    }

    fn apply_body(n: usize) -> Vec<u8> {
        let peers: Vec<String> = peers(n).iter().map(|a| format!("{a}/32")).collect();
        serde_json::to_vec(&json!({
            "fault": {"kind": "partition", "target": format!("netns:{NS_A}"), "mode": "oneway",
                      "direction": "egress", "peers": peers},
            "lease_ms": LEASE_MS,
        }))
        .expect("JSON")
    }

    /// POST the fault: (fault id, wall time, the agent's apply_us).
    fn apply(&self, body: &[u8]) -> Result<(u64, Duration, Duration)> {
        let started = Instant::now();
        let (status, answer) = self.call("POST", "/v1/faults", body)?;
        let wall = started.elapsed();
        if status != 201 {
            bail!(
                "the agent refused the fault ({status}): {}",
                answer.to_string().chars().take(300).collect::<String>()
            );
        }
        let id = answer["id"].as_u64().ok_or_else(|| anyhow!("no fault id in {answer}"))?;
        Ok((id, wall, Duration::from_micros(answer["apply_us"].as_u64().unwrap_or(0))))
    }

    fn revert(&self, id: u64) -> Result<(Duration, Duration)> {
        let started = Instant::now();
        let (status, answer) = self.call("DELETE", &format!("/v1/faults/{id}"), b"")?;
        let wall = started.elapsed();
        if status != 200 {
            bail!("the agent did not revert fault {id} ({status}): {answer}");
        }
        Ok((wall, Duration::from_micros(answer["revert_us"].as_u64().unwrap_or(0))))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tools' input files (tens of MB at a million peers), removed on drop; the agent's
/// log stays for a look after a failure.
struct WorkDir;

impl WorkDir {
    fn create() -> Result<WorkDir> {
        fs::create_dir_all(WORK_DIR).with_context(|| format!("creating {WORK_DIR}"))?;
        Ok(WorkDir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        for entry in fs::read_dir(WORK_DIR).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("nft-") || name.starts_with("iptables-") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// The nft table and the iptables rules in a, removed on drop (the namespace's deletion
/// would take them too; this keeps a failed repetition from skewing the next).
struct FirewallState;

impl Drop for FirewallState {
    fn drop(&mut self) {
        let _ = tool_in_a("nft", &["delete", "table", "ip", NFT_TABLE]);
        let _ = tool_in_a("iptables-restore", &[&iptables_empty_file()]);
    }
}

fn nft_file(n: usize) -> Result<String> {
    let path = format!("{WORK_DIR}/nft-{n}.nft");
    let mut text = String::with_capacity(n * 16 + 256);
    text.push_str(&format!("table ip {NFT_TABLE} {{\n  set peers {{\n    type ipv4_addr\n    elements = {{ "));
    for (i, addr) in peers(n).iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        text.push_str(&addr.to_string());
    }
    text.push_str(" }\n  }\n  chain out {\n    type filter hook output priority 0; policy accept;\n    ip daddr @peers drop\n  }\n}\n");
    fs::write(&path, text)?;
    Ok(path)
}

fn iptables_file(n: usize) -> Result<String> {
    let path = format!("{WORK_DIR}/iptables-{n}.rules");
    let mut text = String::with_capacity(n * 36 + 32);
    text.push_str("*filter\n");
    for addr in peers(n) {
        text.push_str(&format!("-A OUTPUT -d {addr}/32 -j DROP\n"));
    }
    text.push_str("COMMIT\n");
    fs::write(&path, text)?;
    Ok(path)
}

fn iptables_empty_file() -> String {
    let path = format!("{WORK_DIR}/iptables-empty.rules");
    let _ = fs::write(&path, "*filter\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
    path
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let started = Instant::now();
    f()?;
    Ok(started.elapsed())
}

/// A tool's way to apply and revert the partition of size n (inputs prepared first).
trait Tool {
    fn name(&self) -> &'static str;
    fn prepare(&mut self, n: usize) -> Result<()>;
    fn apply(&mut self) -> Result<Duration>;
    fn revert(&mut self) -> Result<Duration>;
}

struct AgentTool<'a> {
    agent: &'a Agent,
    body: Vec<u8>,
    fault: Option<u64>,
    /// The agent's own apply_us and revert_us of each repetition.
    inside: (Vec<f64>, Vec<f64>),
}

impl Tool for AgentTool<'_> {
    fn name(&self) -> &'static str {
        "agent"
    }
    fn prepare(&mut self, n: usize) -> Result<()> {
        self.body = Agent::apply_body(n);
        self.inside = (Vec::new(), Vec::new());
        Ok(())
    }
    fn apply(&mut self) -> Result<Duration> {
        let (id, wall, inside) = self.agent.apply(&self.body)?;
        self.fault = Some(id);
        self.inside.0.push(ms(inside));
        Ok(wall)
    }
    fn revert(&mut self) -> Result<Duration> {
        let id = self.fault.take().ok_or_else(|| anyhow!("no fault to revert"))?;
        let (wall, inside) = self.agent.revert(id)?;
        self.inside.1.push(ms(inside));
        Ok(wall)
    }
}

/// The datapath alone: an instance of its own in this process (not attached), the same
/// rule and peers installed into slot 0 and removed.
struct InstanceTool {
    instance: Instance,
    peers: Vec<Prefix>,
}

impl InstanceTool {
    fn new(max_peers: usize) -> Result<InstanceTool> {
        let capacity = Capacity { peers: max_peers as u32, ..Capacity::default() };
        let instance = Instance::load_with(Netns::current()?, AttachMode::Tcx, &[], 30, capacity)
            .context("loading the chaos-ebpf programs")?;
        Ok(InstanceTool { instance, peers: Vec::new() })
    }
}

impl Tool for InstanceTool {
    fn name(&self) -> &'static str {
        "instance"
    }
    fn prepare(&mut self, n: usize) -> Result<()> {
        self.peers = peers(n).iter().map(|a| Prefix::new(family::IPV4, a.to_ipv6_mapped().octets(), 128)).collect();
        Ok(())
    }
    fn apply(&mut self) -> Result<Duration> {
        let rule = Rule {
            rule_id: 1,
            action: action::DROP,
            directions: direction::EGRESS,
            flags: flags::PEERS,
            port_hi: u16::MAX,
            ..Rule::default()
        };
        timed(|| self.instance.install(0, &rule, &self.peers, Duration::from_millis(LEASE_MS)))
    }
    fn revert(&mut self) -> Result<Duration> {
        timed(|| self.instance.remove(0))
    }
}

struct NftTool {
    file: String,
}

impl Tool for NftTool {
    fn name(&self) -> &'static str {
        "nft"
    }
    fn prepare(&mut self, n: usize) -> Result<()> {
        self.file = nft_file(n)?;
        Ok(())
    }
    fn apply(&mut self) -> Result<Duration> {
        timed(|| tool_in_a("nft", &["-f", &self.file]))
    }
    fn revert(&mut self) -> Result<Duration> {
        timed(|| tool_in_a("nft", &["delete", "table", "ip", NFT_TABLE]))
    }
}

struct IptablesTool {
    file: String,
    empty: String,
}

impl Tool for IptablesTool {
    fn name(&self) -> &'static str {
        "iptables"
    }
    fn prepare(&mut self, n: usize) -> Result<()> {
        self.file = iptables_file(n)?;
        self.empty = iptables_empty_file();
        Ok(())
    }
    fn apply(&mut self) -> Result<Duration> {
        timed(|| tool_in_a("iptables-restore", &["--noflush", &self.file]))
    }
    fn revert(&mut self) -> Result<Duration> {
        timed(|| tool_in_a("iptables-restore", &[&self.empty]))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median, min, max.
fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    (median, v[0], v[n - 1])
}

/// Nearest-rank percentile.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn stats(values: &[f64]) -> Value {
    let (median, min, max) = summary(values);
    json!({"median_ms": median, "min_ms": min, "max_ms": max, "reps": values.len(), "samples_ms": values})
}

/// One tool at one size: REPS applies and reverts.
fn measure(tool: &mut dyn Tool, n: usize) -> Result<Times> {
    tool.prepare(n)?;
    let (mut applies, mut reverts) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        applies.push(ms(tool.apply()?));
        reverts.push(ms(tool.revert()?));
    }
    Ok((applies, reverts))
}

/// A UDP datagram from a to b every SEND_EVERY, and the arrival times at b, until drop.
struct Stream {
    stop: Arc<AtomicBool>,
    arrivals: mpsc::Receiver<Instant>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn thread_in(ns: &str, f: impl FnOnce() + Send + 'static) -> Result<std::thread::JoinHandle<()>> {
    let fd = netns_fd(ns)?;
    Ok(std::thread::spawn(move || {
        // SAFETY: a valid nsfs fd; affects this thread only.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return;
        }
        f()
    }))
}

impl Stream {
    fn start() -> Result<Stream> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, arrivals) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let stop_rx = stop.clone();
        let receiver = thread_in(NS_B, move || {
            let socket = match UdpSocket::bind((ADDR_B, UDP_PORT)) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = socket.set_read_timeout(Some(Duration::from_millis(5)));
            let _ = ready_tx.send(Ok(()));
            let mut buf = [0u8; 64];
            while !stop_rx.load(Ordering::Relaxed) {
                if socket.recv(&mut buf).is_ok() && tx.send(Instant::now()).is_err() {
                    return;
                }
            }
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the receiver did not start"))?
            .map_err(|e| anyhow!("binding the receiver: {e}"))?;
        let stop_tx = stop.clone();
        let sender = thread_in(NS_A, move || {
            let Ok(socket) = UdpSocket::bind((ADDR_A, 0)) else { return };
            let started = Instant::now();
            // Bounded: the benchmark stops it long before.
            while !stop_tx.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(1800) {
                let _ = socket.send_to(b"chaos-bapply", (ADDR_B, UDP_PORT));
                std::thread::sleep(SEND_EVERY);
            }
        })?;
        Ok(Stream { stop, arrivals, threads: vec![receiver, sender] })
    }

    /// Waits (up to 2 s: the first datagram waits for b's neighbour entry) for a datagram.
    fn wait_for_one(&self) -> Result<()> {
        self.arrivals
            .recv_timeout(Duration::from_secs(2))
            .map(drop)
            .map_err(|_| anyhow!("no datagram reached b within 2 s"))
    }

    fn drain(&self) -> usize {
        self.arrivals.try_iter().count()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Traffic back after the revert: apply, check the stream is cut, then the time from
/// the revert's start to the first datagram at b; TRAFFIC_REPS times.
fn traffic_back(tool: &mut dyn Tool, n: usize, stream: &Stream) -> Result<Vec<f64>> {
    tool.prepare(n)?;
    let mut out = Vec::new();
    for _ in 0..TRAFFIC_REPS {
        // The stream flows before the fault.
        stream.drain();
        stream.wait_for_one().with_context(|| format!("{}: before the fault", tool.name()))?;
        tool.apply()?;
        // Datagrams already in flight may still land; then none may.
        std::thread::sleep(Duration::from_millis(5));
        stream.drain();
        std::thread::sleep(Duration::from_millis(10));
        let leaked = stream.drain();
        if leaked > 0 {
            tool.revert()?;
            bail!("{}: {leaked} datagrams reached b with the partition in force", tool.name());
        }
        let started = Instant::now();
        tool.revert()?;
        let arrived = loop {
            let wait = Duration::from_secs(5).saturating_sub(started.elapsed());
            match stream.arrivals.recv_timeout(wait) {
                Ok(at) if at >= started => break at,
                Ok(_) => continue,
                Err(_) => bail!("{}: no datagram within 5 s of the revert", tool.name()),
            }
        };
        out.push(ms(arrived - started));
    }
    Ok(out)
}

/// The apply and revert times (ms) of each repetition.
type Times = (Vec<f64>, Vec<f64>);

/// Per N and tool: apply and revert (or why not measured).
struct Row {
    n: usize,
    tools: Vec<(String, Result<Times, String>)>,
}

fn median_of(row: &Row, tool: &str, apply: bool) -> Option<f64> {
    row.tools.iter().find(|(t, _)| t == tool).and_then(|(_, r)| r.as_ref().ok()).map(|(a, r)| {
        let values = if apply { a } else { r };
        summary(values).0
    })
}

pub fn run() -> Result<()> {
    crate::require_root("the apply benchmark")?;
    for tool in ["nft", "iptables-restore"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is not installed: run scripts/setup.sh (it installs nftables and iptables)");
        }
    }
    crate::cargo(&["build", "--release", "-p", "chaos-cli"])?;
    let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/chaos-ebpf");
    let _work = WorkDir::create()?;
    let limit = match std::env::var("BENCH_APPLY_MAX_N") {
        Ok(v) => v.parse::<usize>().map_err(|_| anyhow!("BENCH_APPLY_MAX_N={v} is not a count"))?,
        Err(_) => usize::MAX,
    };
    let sizes: Vec<usize> = SIZES.iter().copied().filter(|n| *n <= limit).collect();
    let max_n = *sizes.iter().max().ok_or_else(|| anyhow!("BENCH_APPLY_MAX_N={limit} leaves no size"))?;
    let _pair = Pair::create()?;
    let _firewalls = FirewallState;
    let agent = Agent::start(bin, max_n)?;
    let mut instance = InstanceTool::new(max_n)?;
    let mut agent_tool = AgentTool { agent: &agent, body: Vec::new(), fault: None, inside: (Vec::new(), Vec::new()) };
    let mut nft = NftTool { file: String::new() };
    let mut iptables = IptablesTool { file: String::new(), empty: String::new() };
    // Traffic back first, on a settled system: measured after the million-peer sizes,
    // one or two of 100 agent reverts at N = 1 took 28-116 ms (p50 0.35 ms); measured
    // after sizes up to 1,000 (BENCH_APPLY_MAX_N=1000) the slowest took 0.80 ms. The
    // aftermath of the big sizes (the kernel freeing a million trie nodes and set
    // elements, likely) is not the cost of a revert.
    let stream = Stream::start()?;
    stream.wait_for_one().context("the UDP stream from a to b")?;
    let mut traffic: Vec<(String, usize, Vec<f64>)> = Vec::new();
    for &n in &TRAFFIC_SIZES {
        for tool in [&mut agent_tool as &mut dyn Tool, &mut nft, &mut iptables] {
            eprintln!("xtask: traffic back after {} revert, N={n}: {TRAFFIC_REPS} repetitions", tool.name());
            match traffic_back(tool, n, &stream) {
                Ok(values) => traffic.push((tool.name().to_owned(), n, values)),
                // The apply and revert figures are still worth their report.
                Err(e) => eprintln!("xtask: traffic back after {} revert at N={n} not measured: {e:#}", tool.name()),
            }
        }
    }
    drop(stream);
    let mut rows = Vec::new();
    let mut inside_rows = Vec::new();
    // The last measured (N, seconds per repetition) of each tool, to skip what would
    // take longer than ITERATION_LIMIT.
    let mut last: std::collections::BTreeMap<&'static str, (usize, f64)> = Default::default();
    for &n in &sizes {
        let mut row = Row { n, tools: Vec::new() };
        for tool in [&mut agent_tool as &mut dyn Tool, &mut instance, &mut nft, &mut iptables] {
            let name = tool.name();
            if let Some(&(at, secs)) = last.get(name) {
                let expected = secs * n as f64 / at as f64;
                if expected > ITERATION_LIMIT.as_secs_f64() {
                    let why = format!(
                        "not measured: {secs:.1} s per repetition at N={at}, extrapolated {expected:.0} s at N={n} (over {} s)",
                        ITERATION_LIMIT.as_secs()
                    );
                    eprintln!("xtask: {name} N={n}: {why}");
                    row.tools.push((name.to_owned(), Err(why)));
                    continue;
                }
            }
            eprintln!("xtask: {name} N={n}: {REPS} repetitions");
            let started = Instant::now();
            let (applies, reverts) = measure(tool, n).with_context(|| format!("{name} at N={n}"))?;
            last.insert(name, (n, started.elapsed().as_secs_f64() / REPS as f64));
            eprintln!(
                "xtask: {name} N={n}: apply {:.2} ms, revert {:.2} ms (medians)",
                summary(&applies).0,
                summary(&reverts).0
            );
            row.tools.push((name.to_owned(), Ok((applies, reverts))));
        }
        inside_rows.push((n, agent_tool.inside.clone()));
        rows.push(row);
    }
    drop(instance);
    drop(agent);
    report(&rows, &inside_rows, &traffic)
}

fn cell(result: &Result<Times, String>, apply: bool) -> String {
    match result {
        Ok((a, r)) => {
            let (median, min, max) = summary(if apply { a } else { r });
            format!("{median:.2} ({min:.2}-{max:.2})")
        }
        Err(_) => "not measured".into(),
    }
}

fn report(rows: &[Row], inside: &[(usize, Times)], traffic: &[(String, usize, Vec<f64>)]) -> Result<()> {
    for (what, apply) in [("apply", true), ("revert", false)] {
        println!(
            "\n{what:<8} {:>9} {:>24} {:>24} {:>24} {:>24} {:>9} {:>9}",
            "N", "agent ms", "instance ms", "nft ms", "iptables ms", "ag/nft", "ag/ipt"
        );
        for row in rows {
            let get = |t: &str| row.tools.iter().find(|(name, _)| name == t).map(|(_, r)| cell(r, apply));
            let agent = median_of(row, "agent", apply);
            let ratio =
                |t: &str| agent.zip(median_of(row, t, apply)).map_or("-".to_owned(), |(a, b)| format!("{:.3}", a / b));
            println!(
                "{:<8} {:>9} {:>24} {:>24} {:>24} {:>24} {:>9} {:>9}",
                "",
                row.n,
                get("agent").unwrap_or_default(),
                get("instance").unwrap_or_default(),
                get("nft").unwrap_or_default(),
                get("iptables").unwrap_or_default(),
                ratio("nft"),
                ratio("iptables")
            );
        }
    }
    for row in rows {
        for (name, result) in &row.tools {
            if let Err(why) = result {
                println!("{name} at N={}: {why}", row.n);
            }
        }
    }
    println!("\ninside the agent (its answers' apply_us / revert_us, median ms) vs the client's wall time:");
    for ((n, (a, r)), row) in inside.iter().zip(rows) {
        if a.is_empty() {
            continue;
        }
        let (wall_a, wall_r) =
            (median_of(row, "agent", true).unwrap_or(0.0), median_of(row, "agent", false).unwrap_or(0.0));
        println!(
            "  N={n:>8}: apply {:.2} of {wall_a:.2} ms, revert {:.2} of {wall_r:.2} ms (the rest: HTTP, JSON, fault parsing)",
            summary(a).0,
            summary(r).0
        );
    }
    println!(
        "\ntraffic back after the revert (ms from the revert's start to the first datagram at b, one every 0.2 ms):"
    );
    println!("{:<10} {:>8} {:>8} {:>8} {:>8} {:>8}", "tool", "N", "p50", "p99", "max", "reps");
    for (tool, n, values) in traffic {
        println!(
            "{tool:<10} {n:>8} {:>8.2} {:>8.2} {:>8.2} {:>8}",
            percentile(values, 50.0),
            percentile(values, 99.0),
            summary(values).2,
            values.len()
        );
    }

    // The goals.
    let mut goals = Vec::new();
    let mut goal = |name: String, pass: bool, figure: String| {
        println!("goal {name}: {} ({figure})", if pass { "PASS" } else { "MISS" });
        goals.push(json!({"goal": name, "pass": pass, "figure": figure}));
    };
    println!();
    for row in rows {
        match (median_of(row, "agent", true), median_of(row, "nft", true)) {
            (Some(a), Some(b)) => goal(
                format!("apply agent <= nft at N={}", row.n),
                a <= b,
                format!("ratio {:.3}: {a:.2} vs {b:.2} ms", a / b),
            ),
            _ => goal(format!("apply agent <= nft at N={}", row.n), false, "not measured".into()),
        }
    }
    if let Some(row) = rows.iter().find(|r| r.n == 1) {
        let a = median_of(row, "agent", true).unwrap_or(f64::INFINITY);
        goal("apply < 5 ms at N=1".into(), a < 5.0, format!("median {a:.2} ms"));
    }
    let max_n = rows.iter().map(|r| r.n).max().unwrap_or(0);
    if let Some(row) = rows.iter().find(|r| r.n == max_n) {
        let a = median_of(row, "agent", true);
        goal(
            format!("{max_n} peers supported"),
            a.is_some() && max_n >= 1_000_000,
            a.map_or("not measured".into(), |a| format!("applied in {a:.0} ms")),
        );
    }
    for (tool, n, values) in traffic.iter().filter(|(t, _, _)| t == "agent") {
        let p99 = percentile(values, 99.0);
        goal(format!("revert: traffic back < 10 ms at p99, N={n} ({tool})"), p99 < 10.0, format!("p99 {p99:.2} ms"));
    }

    let sizes: Vec<Value> = rows
        .iter()
        .zip(inside)
        .map(|(row, (_, (a, r)))| {
            let tools: serde_json::Map<String, Value> = row
                .tools
                .iter()
                .map(|(name, result)| {
                    let value = match result {
                        Ok((applies, reverts)) => json!({"apply": stats(applies), "revert": stats(reverts)}),
                        Err(why) => json!({"not_measured": why}),
                    };
                    (name.clone(), value)
                })
                .collect();
            let ratio = |t: &str, apply: bool| {
                median_of(row, "agent", apply).zip(median_of(row, t, apply)).map(|(a, b)| a / b)
            };
            json!({
                "n": row.n,
                "tools": tools,
                "agent_inside": if a.is_empty() { Value::Null } else { json!({"apply": stats(a), "revert": stats(r)}) },
                "ratios": {
                    "apply_agent_over_nft": ratio("nft", true), "apply_agent_over_iptables": ratio("iptables", true),
                    "revert_agent_over_nft": ratio("nft", false), "revert_agent_over_iptables": ratio("iptables", false),
                },
            })
        })
        .collect();
    let traffic: Vec<Value> = traffic
        .iter()
        .map(|(tool, n, values)| {
            json!({"tool": tool, "n": n, "p50_ms": percentile(values, 50.0), "p99_ms": percentile(values, 99.0),
                   "max_ms": summary(values).2, "reps": values.len(), "samples_ms": values})
        })
        .collect();
    let out = json!({
        "what": "partition apply/revert: chaos-ebpf agent (HTTP), chaos_datapath::Instance (in process), nft set, iptables-restore",
        "reps": REPS,
        "sizes": sizes,
        "traffic_back": {"send_every_ms": ms(SEND_EVERY), "results": traffic},
        "goals": goals,
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "iptables": Command::new("iptables").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default(),
    });
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    fs::create_dir_all(dir)?;
    fs::write(format!("{dir}/apply.json"), serde_json::to_string_pretty(&out)?)?;
    println!("\nwrote target/bench/apply.json");
    Ok(())
}
