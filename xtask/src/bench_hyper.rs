//! `cargo xtask bench hyper` (issue 11): partitions over a light-node lab of M nodes
//! (`chaos-ebpf lab up --workload echo --nodes M`, namespaces on bridges in a hub
//! namespace), applied and healed by chaos-ebpf and by the usual tools, measured in the
//! same run.
//!
//! Shapes, built with chaos-model's matrix helpers so the bench and scenarios mean the
//! same thing:
//! - half/half: `halves` + `halves_matrix` (nodes n1..n(M/2) and the rest, cut both ways);
//! - ring: `ring_cuts(RING_GROUPS)` over RING_GROUPS groups of consecutive nodes: each
//!   group reaches its two neighbours and itself, every other pair is cut both ways.
//!
//! Tools, each applying the shape, then healing it, REPS times (fewer when a tool's
//! repetitions at one size pass the budget, `--budget`; the JSON and the table say how many):
//! - chaos-ebpf: one datapath Instance in the hub namespace, attached to every node's
//!   hub-side veth port. The rule acts on the ports' *ingress* only: there every packet a
//!   node sends is seen once, before any bridge, with the node's own address as source,
//!   which is what the matrix's (from group, to group) pairs name. Apply = the
//!   `install_matrix` call (groups of /32 and /128 node addresses, DROP, one lease write
//!   turns it on); heal = `remove` (the lease write turns it off, then the entries go).
//! - iptables per namespace: in every node's namespace, iptables-restore and
//!   ip6tables-restore with one OUTPUT DROP rule per address of the groups it is cut from
//!   (heal: a restore of empty chains). Each tool runs in its node's namespace by setns
//!   before exec (no `ip netns exec` overhead), one node after the other.
//! - nft per namespace: the same with one `nft -f -` per node (inet table, an address set
//!   per family; heal: `delete table`).
//! - nft bridge table: one `nft -f` in the hub: family bridge, an address set per group
//!   and family, a rule per cut pair and family on the bridge's prerouting hook (nodes
//!   send to the gateway, the bridge's own MAC, so the hub routes their packets and the
//!   bridge forward hook would see none); heal: `delete table`.
//!
//! Every tool's partition is checked by traffic: for every ordered pair of groups, one
//! UDP echo from a node of the first to a node of the second (lab reach's probe, 200 ms,
//! 2 retry rounds, which only the pairs still unanswered take): cut pairs must get no
//! answer, the others must; after the heal all must answer. A wrong answer fails the
//! bench. chaos-ebpf is checked on its first repetition, each baseline once.
//!
//! Memory: the lab's kernel memory per node (what `lab up` measures: slab, per-CPU,
//! stacks, page tables, vmalloc before and after) and the echo responder's RSS; the
//! Instance's memory per node: the BPF memory (`memlock` in /proc/self/fdinfo of the
//! programs and maps it opened, as the kernel accounts it) plus this process's RSS growth,
//! with the larger matrix in force, divided by M. The RSS growth is exact only for the
//! first size of a run: later sizes reuse heap the earlier ones freed, so it reads low.
//!
//! Writes target/bench/hyper.json. `--nodes 32,128` limits the sizes, `--reps N` the
//! repetitions, `--budget SECONDS` the time the repetitions of one tool, shape and size
//! may take (default 20 s; at least one always runs).

use std::{
    fmt::Write as _,
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use chaos_datapath::{
    instance::{Capacity, Instance, PeerEntry},
    netns::{Interface, Netns, ARPHRD_ETHER},
    AttachMode,
};
use chaos_ebpf_common::{action, direction, family, Prefix, Rule};
use chaos_lab::hyper::{self, reach, HyperState, LightNode};
use chaos_model::matrix::{halves, halves_matrix, ring_cuts, GroupMember, MatrixGroup, PartitionMatrix};
use serde_json::{json, Value};

const SIZES: [u32; 4] = [32, 128, 256, 1024];
const REPS: usize = 5;
const RING_GROUPS: usize = 8;
/// Repetitions of one tool, shape and size stop once they took this long (at least one),
/// so the slow baselines at 1,024 nodes do not hold the kernel-test lock for long.
/// `--budget SECONDS` changes it.
static TOOL_BUDGET_SECONDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(20);

fn tool_budget() -> Duration {
    Duration::from_secs(TOOL_BUDGET_SECONDS.load(std::sync::atomic::Ordering::Relaxed))
}
/// One apply or heal of a per-namespace baseline gives up after this long.
const APPLY_LIMIT: Duration = Duration::from_secs(60);
/// One process of a baseline (iptables-restore, nft) is killed after this long.
const PROCESS_LIMIT: Duration = Duration::from_secs(20);
const STATE_DIR: &str = "/run/chaos-ebpf/bench-hyper";
const NETNS_PREFIX: &str = "chaos-hb-";
const NFT_TABLE: &str = "chaos_bench_hyper";
const LEASE: Duration = Duration::from_secs(600);
const SLOT: u32 = 0;
/// As bench_packet: the judged-by bit only matters to re-sent copies, which DROP makes none of.
const JUDGE_BIT: u32 = 31;
const PROBE: reach::Options = reach::Options { timeout: Duration::from_millis(200), retries: 2, ipv6: false };

const CHAOS: &str = "chaos-ebpf";
const IPTABLES: &str = "iptables per ns";
const NFT_NS: &str = "nft per ns";
const NFT_BRIDGE: &str = "nft bridge table";
const TOOLS: [&str; 4] = [CHAOS, IPTABLES, NFT_NS, NFT_BRIDGE];

fn bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).join("target/release/chaos-ebpf")
}

fn out_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).join("target/bench/hyper.json")
}

/// Times in ms of one tool's repetitions.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    fn median(&self) -> Option<f64> {
        let v = self.sorted();
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    fn json(&self) -> Value {
        let v = self.sorted();
        json!({
            "median_ms": self.median(),
            "min_ms": v.first(),
            "max_ms": v.last(),
            "reps": v.len(),
            "samples_ms": self.0,
        })
    }

    fn text(&self) -> String {
        let v = self.sorted();
        match self.median() {
            Some(m) => format!("{} ({}-{})", ms(m), ms(v[0]), ms(v[v.len() - 1])),
            None => "-".into(),
        }
    }
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// One tool's figures for one shape at one size.
#[derive(Default)]
struct ToolResult {
    apply: Samples,
    heal: Samples,
    /// The traffic checks: (pairs probed, answered, unanswered) while cut and after heal.
    verified: Option<Value>,
    /// Why fewer than REPS repetitions or an incomplete apply.
    notes: Vec<String>,
}

impl ToolResult {
    fn json(&self) -> Value {
        json!({
            "apply": self.apply.json(),
            "heal": self.heal.json(),
            "verified": self.verified,
            "notes": self.notes,
        })
    }
}

/// A partition shape over the lab's nodes.
struct Shape {
    name: &'static str,
    matrix: PartitionMatrix,
    /// Node numbers (1-based) of each group, in the matrix's order.
    groups: Vec<Vec<u32>>,
}

impl Shape {
    fn cut_either_way(&self, a: usize, b: usize) -> bool {
        self.matrix.is_cut(a, b) || self.matrix.is_cut(b, a)
    }

    /// For each node (at [n - 1]) its group.
    fn group_of(&self, nodes: usize) -> Vec<usize> {
        let mut out = vec![usize::MAX; nodes];
        for (g, members) in self.groups.iter().enumerate() {
            for &n in members {
                out[n as usize - 1] = g;
            }
        }
        out
    }

    /// The groups a group's packets are dropped towards.
    fn cut_targets(&self, from: usize) -> Vec<usize> {
        self.matrix.cut_pairs().iter().filter(|(a, _)| *a == from).map(|(_, b)| *b).collect()
    }
}

fn node_member(i: u32) -> GroupMember {
    GroupMember::Node(format!("n{i}"))
}

fn shape_groups(matrix: &PartitionMatrix) -> Result<Vec<Vec<u32>>> {
    matrix
        .groups()
        .iter()
        .map(|g| {
            g.members
                .iter()
                .map(|m| match m {
                    GroupMember::Node(name) => {
                        name.strip_prefix('n').and_then(|i| i.parse().ok()).ok_or_else(|| anyhow!("member {name}"))
                    }
                    other => Err(anyhow!("member {other:?} is not a light node")),
                })
                .collect()
        })
        .collect()
}

fn shapes(m: u32) -> Result<Vec<Shape>> {
    let (first, second) = halves((1..=m).map(node_member).collect(), None);
    let half = halves_matrix(first, second);
    let per = m as usize / RING_GROUPS;
    let ring_groups: Vec<MatrixGroup> = (0..RING_GROUPS)
        .map(|g| MatrixGroup {
            name: format!("ring-{g}"),
            members: (g * per + 1..=if g + 1 == RING_GROUPS { m as usize } else { (g + 1) * per })
                .map(|i| node_member(i as u32))
                .collect(),
        })
        .collect();
    let ring = PartitionMatrix::new(ring_groups, ring_cuts(RING_GROUPS));
    let mut out = Vec::new();
    for (name, matrix) in [("half/half", half), ("ring", ring)] {
        let groups = shape_groups(&matrix)?;
        out.push(Shape { name, matrix, groups });
    }
    Ok(out)
}

fn host4(node: &LightNode) -> PeerEntry {
    Prefix::new(family::IPV4, node.ipv4.to_ipv6_mapped().octets(), 128)
}

fn host6(node: &LightNode) -> PeerEntry {
    Prefix::new(family::IPV6, node.ipv6.octets(), 128)
}

/// The light-node lab of one size; dropping it runs `lab down` (which removes the
/// namespaces, and with them every baseline's rules and the bridge table).
struct Lab {
    up_wall_s: f64,
    down: Option<Value>,
}

fn lab_command(args: &[&str], limit: Duration) -> Result<(String, String)> {
    let dir = std::env::temp_dir();
    let out_file = dir.join(format!("chaos-bench-hyper-{}.out", std::process::id()));
    let err_file = out_file.with_extension("err");
    let mut child = Command::new(bin())
        .args(["lab", "--state-dir", STATE_DIR])
        .args(args)
        .stdout(fs::File::create(&out_file)?)
        .stderr(fs::File::create(&err_file)?)
        .spawn()
        .with_context(|| format!("starting {}", bin().display()))?;
    let status = wait_bounded(&mut child, limit).with_context(|| format!("chaos-ebpf lab {}", args.join(" ")))?;
    let out = fs::read_to_string(&out_file).unwrap_or_default();
    let err = fs::read_to_string(&err_file).unwrap_or_default();
    let _ = (fs::remove_file(&out_file), fs::remove_file(&err_file));
    if !status.success() {
        bail!("chaos-ebpf lab {} failed ({status}):\n{out}{}", args.join(" "), err.trim_end());
    }
    Ok((out, err))
}

fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not finish within {} s (killed)", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Lab {
    fn up(m: u32) -> Result<Lab> {
        if hyper::load(Path::new(STATE_DIR))?.is_some() {
            eprintln!("bench hyper: a lab of an earlier run is up in {STATE_DIR}: lab down first");
            lab_command(&["down"], Duration::from_secs(120))?;
        }
        let n = m.to_string();
        let start = Instant::now();
        let result = lab_command(
            &["up", "--workload", "echo", "--nodes", &n, "--netns-prefix", NETNS_PREFIX],
            Duration::from_secs(180),
        );
        let up_wall_s = start.elapsed().as_secs_f64();
        // Whatever part of it exists goes with the guard.
        let lab = Lab { up_wall_s, down: None };
        result?;
        Ok(lab)
    }

    /// `lab down`, timed; its JSON has the time until the last link was gone.
    fn down(&mut self) -> Result<()> {
        let start = Instant::now();
        let (out, _) = lab_command(&["down", "--output", "json"], Duration::from_secs(120))?;
        let wall = start.elapsed().as_secs_f64();
        let mut report: Value = serde_json::from_str(&out).with_context(|| format!("lab down's JSON: {out}"))?;
        if report["remaining"].as_array().is_some_and(|r| !r.is_empty()) {
            bail!("lab down left: {}", report["remaining"]);
        }
        report["wall_seconds"] = json!(wall);
        self.down = Some(report);
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.down.is_none() && Path::new(STATE_DIR).join(hyper::STATE_FILE).exists() {
            if let Err(e) = lab_command(&["down"], Duration::from_secs(120)) {
                eprintln!("bench hyper: lab down after an error: {e:#}");
            }
        }
    }
}

/// The UDP echo check of every ordered pair of groups, over IPv4 and over IPv6; fails
/// unless exactly the cut pairs (when `cut`) go unanswered.
fn verify(nodes: &[LightNode], port: u16, shape: &Shape, cut: bool, what: &str) -> Result<Value> {
    let pairs = reach::group_pairs(&shape.groups, 1, 0x6879_7065);
    let group = shape.group_of(nodes.len());
    let expect_blocked =
        |&(s, d): &(u32, u32)| cut && shape.cut_either_way(group[s as usize - 1], group[d as usize - 1]);
    let mut out = json!({ "probed": 0, "answered": 0, "unanswered": 0 });
    for ipv6 in [false, true] {
        let family = if ipv6 { "v6" } else { "v4" };
        let result = reach::udp(nodes, &pairs, port, reach::Options { ipv6, ..PROBE })?;
        let wrong_answered: Vec<_> = result.answered.iter().filter(|p| expect_blocked(p)).collect();
        let wrong_silent: Vec<_> = result.unanswered.iter().filter(|p| !expect_blocked(p)).collect();
        if !wrong_answered.is_empty() || !wrong_silent.is_empty() {
            bail!(
                "{what}, {} {} ({family}): {} cut pairs answered (e.g. {:?}), {} open pairs unanswered (e.g. {:?}) of {} probed",
                shape.name,
                if cut { "cut" } else { "healed" },
                wrong_answered.len(),
                wrong_answered.first(),
                wrong_silent.len(),
                wrong_silent.first(),
                pairs.len()
            );
        }
        for (key, n) in
            [("probed", pairs.len()), ("answered", result.answered.len()), ("unanswered", result.unanswered.len())]
        {
            out[key] = json!(out[key].as_u64().unwrap_or(0) + n as u64);
        }
        out[family] = json!({
            "probed": pairs.len(),
            "answered": result.answered.len(),
            "unanswered": result.unanswered.len(),
            "seconds": result.seconds,
        });
    }
    Ok(out)
}

/// The kernel's accounting (`memlock`, bytes) of the BPF programs and maps this process
/// holds open, in kB.
fn bpf_memlock_kb() -> u64 {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else { return 0 };
    let mut bytes = 0u64;
    for entry in dir.flatten() {
        let link = fs::read_link(entry.path()).unwrap_or_default();
        let link = link.to_string_lossy();
        if !(link.contains("bpf-map") || link.contains("bpf-prog")) {
            continue;
        }
        let info = fs::read_to_string(Path::new("/proc/self/fdinfo").join(entry.file_name())).unwrap_or_default();
        bytes += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    bytes / 1024
}

/// chaos-ebpf: apply and heal of every shape, REPS times, and the Instance's memory.
fn chaos_runs(
    state: &HyperState,
    nodes: &[LightNode],
    shapes: &[Shape],
    reps: usize,
) -> Result<(Vec<ToolResult>, Value)> {
    let m = nodes.len();
    // Every port (0..=65535: packets without ports too), every protocol.
    let rule = Rule {
        rule_id: 1,
        seed: 1,
        action: action::DROP,
        directions: direction::INGRESS,
        port_hi: u16::MAX,
        ..Rule::default()
    };
    let (bpf_before, rss_before) = (bpf_memlock_kb(), hyper::rss_kb(std::process::id()));
    let hub = Netns::open(&state.hub_path()).with_context(|| format!("opening the hub namespace {}", state.hub))?;
    let load_start = Instant::now();
    // Each node address is in the trie once per role (source and destination).
    let capacity = Capacity::for_rules([&rule], 4 * m);
    // As `run` chooses (engine run.rs): each TCX attach and detach waits for an RCU grace
    // period under rtnl (19 s for 1,024 ports), netlink's cls_bpf does not.
    let mode = if m > 64 { AttachMode::Netlink } else { AttachMode::Tcx };
    let mut instance = Instance::load_with(hub, mode, &[], JUDGE_BIT, capacity)
        .context("loading the chaos-ebpf programs into the hub namespace")?;
    let load_s = load_start.elapsed().as_secs_f64();
    let ports: Vec<Interface> = nodes
        .iter()
        .map(|n| Interface { name: n.hub_veth.clone(), index: n.hub_ifindex, hw_type: ARPHRD_ETHER, up: true })
        .collect();
    let attach_start = Instant::now();
    instance.attach(&ports).context("attaching to the hub-side node ports")?;
    let attach_s = attach_start.elapsed().as_secs_f64();
    let mut results = Vec::new();
    let mut memory = json!(null);
    let mut peak_kb = 0u64;
    for shape in shapes {
        let groups: Vec<Vec<PeerEntry>> = shape
            .groups
            .iter()
            .map(|g| g.iter().flat_map(|&i| [host4(&nodes[i as usize - 1]), host6(&nodes[i as usize - 1])]).collect())
            .collect();
        let cuts: Vec<(usize, usize)> = shape.matrix.cut_pairs().iter().copied().collect();
        let mut result = ToolResult::default();
        let started = Instant::now();
        for rep in 0..reps {
            let t = Instant::now();
            instance.install_matrix(SLOT, &rule, &groups, &cuts, LEASE).context("install_matrix")?;
            result.apply.0.push(t.elapsed().as_secs_f64() * 1e3);
            let mut verified = None;
            if rep == 0 {
                let (bpf, rss) = (bpf_memlock_kb(), hyper::rss_kb(std::process::id()));
                let total = bpf.saturating_sub(bpf_before) + rss.saturating_sub(rss_before);
                if total > peak_kb {
                    peak_kb = total;
                    memory = json!({
                        "shape": shape.name,
                        "bpf_memlock_kb": bpf.saturating_sub(bpf_before),
                        "rss_growth_kb": rss.saturating_sub(rss_before),
                        "per_node_kb": total as f64 / m as f64,
                    });
                }
                let cut = verify(nodes, state.echo_port, shape, true, CHAOS);
                if cut.is_err() {
                    let _ = instance.remove(SLOT);
                }
                verified = Some(cut?);
            }
            let t = Instant::now();
            instance.remove(SLOT).context("removing the matrix")?;
            result.heal.0.push(t.elapsed().as_secs_f64() * 1e3);
            if let Some(cut) = verified {
                let healed = verify(nodes, state.echo_port, shape, false, CHAOS)?;
                result.verified = Some(json!({ "cut": cut, "healed": healed }));
            }
            if started.elapsed() > tool_budget() && rep + 1 < reps {
                result.notes.push(format!("{} reps: the budget of {} s ran out", rep + 1, tool_budget().as_secs()));
                break;
            }
        }
        results.push(result);
    }
    instance.shutdown().context("detaching the chaos-ebpf programs")?;
    memory["load_seconds"] = json!(load_s);
    memory["attach_seconds"] = json!(attach_s);
    memory["attach_mode"] = json!(format!("{mode:?}"));
    Ok((results, memory))
}

/// Runs `program args` inside the namespace of `ns` (setns before exec), with `input` on
/// its stdin; bounded by PROCESS_LIMIT.
fn run_in(ns: &fs::File, program: &str, args: &[&str], input: &str) -> Result<()> {
    let mut command = crate::bench::command_in_netns(ns, program);
    command.args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = command.spawn().with_context(|| format!("starting {program}"))?;
    let write = child.stdin.take().expect("piped").write_all(input.as_bytes());
    let status = wait_bounded(&mut child, PROCESS_LIMIT).with_context(|| program.to_owned())?;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    write.with_context(|| format!("writing {program}'s input"))?;
    if !status.success() {
        let err: String = err.chars().take(300).collect();
        bail!("{program} {} failed ({status}): {}", args.join(" "), err.trim_end());
    }
    Ok(())
}

/// One process of a baseline: program, arguments, stdin.
type Invocation = (&'static str, Vec<&'static str>, String);

/// What one node's namespace gets from a per-namespace baseline to apply `shape`.
fn per_ns_inputs(tool: &str, nodes: &[LightNode], shape: &Shape) -> Vec<Vec<Invocation>> {
    let group = shape.group_of(nodes.len());
    nodes
        .iter()
        .map(|node| {
            let targets: Vec<&LightNode> = shape
                .cut_targets(group[node.index as usize - 1])
                .into_iter()
                .flat_map(|g| shape.groups[g].iter().map(|&i| &nodes[i as usize - 1]))
                .collect();
            if tool == IPTABLES {
                let rules = |addr: &dyn Fn(&LightNode) -> String| {
                    let mut text = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
                    for t in &targets {
                        text += &format!("-A OUTPUT -d {} -j DROP\n", addr(t));
                    }
                    text + "COMMIT\n"
                };
                vec![
                    ("iptables-restore", vec![], rules(&|t| format!("{}/32", t.ipv4))),
                    ("ip6tables-restore", vec![], rules(&|t| format!("{}/128", t.ipv6))),
                ]
            } else {
                let v4: Vec<String> = targets.iter().map(|t| t.ipv4.to_string()).collect();
                let v6: Vec<String> = targets.iter().map(|t| t.ipv6.to_string()).collect();
                let text = format!(
                    "table inet {NFT_TABLE} {{\n set cut4 {{ type ipv4_addr; elements = {{ {} }} }}\n set cut6 {{ type ipv6_addr; elements = {{ {} }} }}\n chain output {{ type filter hook output priority 0; policy accept;\n  ip daddr @cut4 drop\n  ip6 daddr @cut6 drop\n }}\n}}\n",
                    v4.join(", "),
                    v6.join(", ")
                );
                vec![("nft", vec!["-f", "-"], text)]
            }
        })
        .collect()
}

fn per_ns_heal(tool: &str) -> Vec<Invocation> {
    if tool == IPTABLES {
        let empty = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n".to_owned();
        vec![("iptables-restore", vec![], empty.clone()), ("ip6tables-restore", vec![], empty)]
    } else {
        vec![("nft", vec!["-f", "-"], format!("delete table inet {NFT_TABLE}\n"))]
    }
}

/// Runs each node's commands, one node after the other; Ok(None) when APPLY_LIMIT ran out
/// (with the number of nodes done).
fn run_per_ns(namespaces: &[fs::File], commands: &[Vec<Invocation>]) -> Result<std::result::Result<f64, (usize, f64)>> {
    let start = Instant::now();
    for (i, (ns, cmds)) in namespaces.iter().zip(commands).enumerate() {
        for (program, args, input) in cmds {
            run_in(ns, program, args, input).with_context(|| format!("in node n{}", i + 1))?;
        }
        if start.elapsed() > APPLY_LIMIT && i + 1 < namespaces.len() {
            return Ok(Err((i + 1, start.elapsed().as_secs_f64())));
        }
    }
    Ok(Ok(start.elapsed().as_secs_f64() * 1e3))
}

fn per_ns_runs(tool: &str, nodes: &[LightNode], port: u16, shape: &Shape, reps: usize) -> Result<ToolResult> {
    let namespaces: Vec<fs::File> = nodes
        .iter()
        .map(|n| fs::File::open(&n.netns_path).with_context(|| format!("opening {}", n.netns_path.display())))
        .collect::<Result<_>>()?;
    let apply = per_ns_inputs(tool, nodes, shape);
    let heal: Vec<_> = nodes.iter().map(|_| per_ns_heal(tool)).collect();
    let mut result = ToolResult::default();
    let started = Instant::now();
    for rep in 0..reps {
        match run_per_ns(&namespaces, &apply)? {
            Ok(t) => result.apply.0.push(t),
            Err((done, s)) => {
                result.notes.push(format!(
                    "apply stopped after {done} of {} nodes in {s:.1} s (limit {} s)",
                    nodes.len(),
                    APPLY_LIMIT.as_secs()
                ));
                // Heal the nodes done; the rest never got rules. nft's heal needs the table.
                let _ = run_per_ns(&namespaces[..done], &heal[..done]);
                break;
            }
        }
        if rep == 0 {
            let cut = verify(nodes, port, shape, true, tool);
            if cut.is_err() {
                let _ = run_per_ns(&namespaces, &heal);
            }
            result.verified = Some(json!({ "cut": cut? }));
        }
        match run_per_ns(&namespaces, &heal)? {
            Ok(t) => result.heal.0.push(t),
            Err((done, s)) => {
                result.notes.push(format!("heal stopped after {done} of {} nodes in {s:.1} s", nodes.len()));
                break;
            }
        }
        if rep == 0 {
            let healed = verify(nodes, port, shape, false, tool)?;
            result.verified.as_mut().expect("set above")["healed"] = healed;
        }
        if started.elapsed() > tool_budget() && rep + 1 < reps {
            result.notes.push(format!("{} reps: the budget of {} s ran out", rep + 1, tool_budget().as_secs()));
            break;
        }
    }
    Ok(result)
}

fn bridge_table(nodes: &[LightNode], shape: &Shape) -> String {
    let mut text = format!("table bridge {NFT_TABLE} {{\n");
    for (g, members) in shape.groups.iter().enumerate() {
        let v4: Vec<String> = members.iter().map(|&i| nodes[i as usize - 1].ipv4.to_string()).collect();
        let v6: Vec<String> = members.iter().map(|&i| nodes[i as usize - 1].ipv6.to_string()).collect();
        text += &format!(" set g{g}_4 {{ type ipv4_addr; elements = {{ {} }} }}\n", v4.join(", "));
        text += &format!(" set g{g}_6 {{ type ipv6_addr; elements = {{ {} }} }}\n", v6.join(", "));
    }
    // Prerouting, not forward: nodes send every packet to the gateway's MAC (the bridge's
    // own), so the hub routes them and the bridge's forward hook never sees them; the
    // bridge prerouting hook sees every frame a port brings in.
    text += " chain prerouting { type filter hook prerouting priority 0; policy accept;\n";
    for (a, b) in shape.matrix.cut_pairs() {
        text += &format!("  ip saddr @g{a}_4 ip daddr @g{b}_4 drop\n  ip6 saddr @g{a}_6 ip6 daddr @g{b}_6 drop\n");
    }
    text + " }\n}\n"
}

fn bridge_runs(state: &HyperState, nodes: &[LightNode], shape: &Shape, reps: usize) -> Result<ToolResult> {
    let hub = fs::File::open(state.hub_path()).with_context(|| format!("opening the hub namespace {}", state.hub))?;
    let table = bridge_table(nodes, shape);
    let file = std::env::temp_dir().join(format!("chaos-bench-hyper-{}.nft", std::process::id()));
    fs::write(&file, &table)?;
    let file_arg = file.to_string_lossy().into_owned();
    let delete = format!("delete table bridge {NFT_TABLE}\n");
    let mut result = ToolResult::default();
    let started = Instant::now();
    let outcome = (|| -> Result<()> {
        for rep in 0..reps {
            let t = Instant::now();
            run_in(&hub, "nft", &["-f", &file_arg], "")?;
            result.apply.0.push(t.elapsed().as_secs_f64() * 1e3);
            let cut = if rep == 0 { Some(verify(nodes, state.echo_port, shape, true, NFT_BRIDGE)) } else { None };
            let t = Instant::now();
            run_in(&hub, "nft", &["-f", "-"], &delete)?;
            result.heal.0.push(t.elapsed().as_secs_f64() * 1e3);
            if let Some(cut) = cut {
                let healed = verify(nodes, state.echo_port, shape, false, NFT_BRIDGE)?;
                result.verified = Some(json!({ "cut": cut?, "healed": healed }));
            }
            if started.elapsed() > tool_budget() && rep + 1 < reps {
                result.notes.push(format!("{} reps: the budget of {} s ran out", rep + 1, tool_budget().as_secs()));
                break;
            }
        }
        Ok(())
    })();
    let _ = fs::remove_file(&file);
    if outcome.is_err() {
        // The table goes with the hub at lab down anyway; remove it now so the error is the only trace.
        let _ = run_in(&hub, "nft", &["-f", "-"], &delete);
    }
    outcome.map(|()| result)
}

/// A shape's name, groups, cut pairs and each tool's figures.
type ShapeResult = (&'static str, usize, usize, Vec<(&'static str, ToolResult)>);

struct SizeResult {
    m: u32,
    up_wall_s: f64,
    up_s: Option<f64>,
    lab_kernel_kb: Option<u64>,
    responder_rss_kb: u64,
    down: Value,
    chaos_memory: Value,
    /// Per shape: name, groups, cut pairs, per tool.
    shapes: Vec<ShapeResult>,
}

fn one_size(m: u32, reps: usize) -> Result<SizeResult> {
    eprintln!("bench hyper: lab up --workload echo --nodes {m}");
    let mut lab = Lab::up(m)?;
    let (state, nodes) = hyper::nodes(Path::new(STATE_DIR))?;
    if nodes.len() != m as usize {
        bail!("lab up made {} nodes, {m} asked", nodes.len());
    }
    hyper::raise_fd_limit(m as u64 + 1024)?;
    let responder_rss_kb = state.responder.as_ref().map_or(0, |p| hyper::rss_kb(p.pid));
    let shapes = shapes(m)?;
    // Before anything: every pair of groups answers.
    for shape in &shapes {
        verify(&nodes, state.echo_port, shape, false, "the lab before any partition")?;
    }
    eprintln!("bench hyper: M={m}: chaos-ebpf");
    let (chaos, chaos_memory) = chaos_runs(&state, &nodes, &shapes, reps)?;
    let mut per_shape = Vec::new();
    for (shape, chaos) in shapes.iter().zip(chaos) {
        let mut tools = vec![(CHAOS, chaos)];
        for tool in [IPTABLES, NFT_NS] {
            eprintln!("bench hyper: M={m}: {} with {tool}", shape.name);
            tools.push((tool, per_ns_runs(tool, &nodes, state.echo_port, shape, reps)?));
        }
        eprintln!("bench hyper: M={m}: {} with {NFT_BRIDGE}", shape.name);
        tools.push((NFT_BRIDGE, bridge_runs(&state, &nodes, shape, reps)?));
        per_shape.push((shape.name, shape.groups.len(), shape.matrix.cut_pairs().len(), tools));
    }
    lab.down()?;
    Ok(SizeResult {
        m,
        up_wall_s: lab.up_wall_s,
        up_s: state.up_seconds,
        lab_kernel_kb: state.kernel_memory_kb,
        responder_rss_kb,
        down: lab.down.take().unwrap_or(Value::Null),
        chaos_memory,
        shapes: per_shape,
    })
}

fn parse_args(args: &[String]) -> Result<(Vec<u32>, usize)> {
    let mut sizes = SIZES.to_vec();
    let mut reps = REPS;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--nodes" => {
                let list = it.next().ok_or_else(|| anyhow!("--nodes needs a list, e.g. --nodes 32,128"))?;
                sizes = list
                    .split(',')
                    .map(|s| s.trim().parse::<u32>().ok().filter(|n| (8..=hyper::MAX_NODES).contains(n)))
                    .collect::<Option<_>>()
                    .ok_or_else(|| anyhow!("--nodes {list}: give sizes from 8 to {} like 32,128", hyper::MAX_NODES))?;
            }
            "--reps" => {
                reps = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|r| (1..=100).contains(r))
                    .ok_or_else(|| anyhow!("--reps needs a count from 1 to 100"))?;
            }
            "--budget" => {
                let seconds = it
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|s| (1..=3600).contains(s))
                    .ok_or_else(|| anyhow!("--budget needs seconds from 1 to 3600"))?;
                TOOL_BUDGET_SECONDS.store(seconds, std::sync::atomic::Ordering::Relaxed);
            }
            other => bail!("bench hyper: unknown argument {other}; use --nodes 32,128, --reps N, --budget SECONDS"),
        }
    }
    Ok((sizes, reps))
}

fn tool_median(shape: &[(&'static str, ToolResult)], tool: &str, heal: bool) -> Option<f64> {
    shape.iter().find(|(t, _)| *t == tool).and_then(|(_, r)| if heal { r.heal.median() } else { r.apply.median() })
}

pub fn run(args: &[String]) -> Result<()> {
    let (sizes, reps) = match parse_args(args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::exit(2);
        }
    };
    crate::require_root("the hyperscale benchmark")?;
    // `lab up` starts chaos-lab-node found next to chaos-ebpf.
    crate::cargo(&["build", "--release", "-p", "chaos-cli", "-p", "chaos-lab"])?;
    let mut results = Vec::new();
    for &m in &sizes {
        results.push(one_size(m, reps)?);
    }

    let mut md = String::from(
        "Light-node lab (`lab up --workload echo`), partitions applied and healed by chaos-ebpf (one \
         `install_matrix` on the hub-side node ports) and by iptables / nft in every node's namespace \
         and one nft bridge table in the hub, in the same run. Times in ms, median (min-max) of the \
         repetitions; ratio = chaos-ebpf / tool (of the medians). Every partition was checked by a UDP \
         echo over IPv4 and IPv6 between every ordered pair of groups, cut and healed.\n",
    );
    println!("\nhyperscale partitions: apply / heal in ms, median (min-max) of the reps; ratio = chaos-ebpf / tool");
    for r in &results {
        let _ = write!(
            md,
            "\n### {} nodes\n\nlab up {:.2} s, lab down {:.2} s (every link gone after {:.2} s); lab kernel memory \
             {:.0} kB per node, echo responder RSS {:.1} MB; chaos-ebpf Instance {} kB BPF + {} kB RSS = {:.1} kB \
             per node (attach to {} ports, {}, {:.2} s)\n",
            r.m,
            r.up_s.unwrap_or(f64::NAN),
            r.down["seconds"].as_f64().unwrap_or(f64::NAN),
            r.down["links_gone_seconds"].as_f64().unwrap_or(f64::NAN),
            r.lab_kernel_kb.map_or(f64::NAN, |k| k as f64 / r.m as f64),
            r.responder_rss_kb as f64 / 1024.0,
            r.chaos_memory["bpf_memlock_kb"],
            r.chaos_memory["rss_growth_kb"],
            r.chaos_memory["per_node_kb"].as_f64().unwrap_or(f64::NAN),
            r.m,
            r.chaos_memory["attach_mode"].as_str().unwrap_or("?"),
            r.chaos_memory["attach_seconds"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "\nM = {} nodes: lab up {:.2} s (wall {:.2} s), down {:.2} s (links gone {:.2} s); lab kernel memory {:.0} kB/node, responder RSS {:.1} MB",
            r.m,
            r.up_s.unwrap_or(f64::NAN),
            r.up_wall_s,
            r.down["seconds"].as_f64().unwrap_or(f64::NAN),
            r.down["links_gone_seconds"].as_f64().unwrap_or(f64::NAN),
            r.lab_kernel_kb.map_or(f64::NAN, |k| k as f64 / r.m as f64),
            r.responder_rss_kb as f64 / 1024.0
        );
        println!(
            "  chaos-ebpf Instance: {} kB BPF + {} kB RSS = {:.1} kB/node (attach to {} ports {:.2} s)",
            r.chaos_memory["bpf_memlock_kb"],
            r.chaos_memory["rss_growth_kb"],
            r.chaos_memory["per_node_kb"].as_f64().unwrap_or(f64::NAN),
            r.m,
            r.chaos_memory["attach_seconds"].as_f64().unwrap_or(f64::NAN)
        );
        for (shape, groups, cuts, tools) in &r.shapes {
            println!("  {shape} ({groups} groups, {cuts} cut pairs)");
            let _ = write!(
                md,
                "\n{shape} ({groups} groups, {cuts} cut pairs):\n\n| tool | apply ms | heal ms | reps | apply ratio | heal ratio | \
                 cut: answered/probed | healed: answered/probed |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
            );
            println!(
                "    {:<18} {:>24} {:>24} {:>5} {:>9} {:>9}  verified (cut: answered/probed; healed)",
                "tool", "apply ms", "heal ms", "reps", "apply x", "heal x"
            );
            let mut notes = Vec::new();
            for (tool, res) in tools {
                let ratio = |heal: bool| match (tool_median(tools, CHAOS, heal), tool_median(tools, tool, heal)) {
                    (Some(c), Some(t)) if t > 0.0 => format!("{:.2e}", c / t),
                    _ => "-".into(),
                };
                let verified = res.verified.as_ref().map_or("-".to_owned(), |v| {
                    format!(
                        "{}/{}; {}/{}",
                        v["cut"]["answered"], v["cut"]["probed"], v["healed"]["answered"], v["healed"]["probed"]
                    )
                });
                println!(
                    "    {tool:<18} {:>24} {:>24} {:>5} {:>9} {:>9}  {verified}",
                    res.apply.text(),
                    res.heal.text(),
                    res.apply.0.len(),
                    ratio(false),
                    ratio(true)
                );
                let _ = writeln!(
                    md,
                    "| {tool} | {} | {} | {} | {} | {} | {}/{} | {}/{} |",
                    res.apply.text(),
                    res.heal.text(),
                    res.apply.0.len(),
                    ratio(false),
                    ratio(true),
                    res.verified.as_ref().map_or(Value::Null, |v| v["cut"]["answered"].clone()),
                    res.verified.as_ref().map_or(Value::Null, |v| v["cut"]["probed"].clone()),
                    res.verified.as_ref().map_or(Value::Null, |v| v["healed"]["answered"].clone()),
                    res.verified.as_ref().map_or(Value::Null, |v| v["healed"]["probed"].clone()),
                );
                for note in &res.notes {
                    println!("      note: {note}");
                    notes.push(format!("{tool}: {note}"));
                }
            }
            for note in notes {
                let _ = writeln!(md, "\n{note}");
            }
        }
    }

    // Goals of issue 11, on the largest size measured.
    let mut goals = Vec::new();
    let mut goal = |text: String, figure: Option<f64>, limit: f64, unit: &str| {
        let pass = figure.is_some_and(|f| f < limit);
        let shown = figure.map_or("not measured".to_owned(), |f| format!("{f:.3} {unit}"));
        println!("GOAL {:<4} {text}: {shown}", if pass { "PASS" } else { "MISS" });
        goals.push(json!({
            "goal": text,
            "target": format!("< {limit} {unit}"),
            "measured": shown,
            "figure": figure,
            "limit": limit,
            "unit": unit,
            "pass": pass,
        }));
    };
    println!();
    if let Some(r) = results.iter().max_by_key(|r| r.m) {
        for (shape, _, _, tools) in &r.shapes {
            goal(
                format!("{shape} over {} nodes applied in < 5 ms (median)", r.m),
                tool_median(tools, CHAOS, false),
                5.0,
                "ms",
            );
            goal(
                format!("{shape} over {} nodes healed in < 5 ms (median)", r.m),
                tool_median(tools, CHAOS, true),
                5.0,
                "ms",
            );
        }
        goal(
            format!("agent (Instance) memory per node < 1 MB at {} nodes", r.m),
            r.chaos_memory["per_node_kb"].as_f64().map(|k| k / 1024.0),
            1.0,
            "MB",
        );
        goal(
            format!("lab kernel memory per node < 1 MB at {} nodes", r.m),
            r.lab_kernel_kb.map(|k| k as f64 / 1024.0 / r.m as f64),
            1.0,
            "MB",
        );
        goal(format!("lab up of {} light nodes < 10 s", r.m), r.up_s, 10.0, "s");
        goal(format!("lab down of {} light nodes < 2 s", r.m), r.down["seconds"].as_f64(), 2.0, "s");
    }
    println!("(every partition above was verified by UDP echo between every ordered pair of groups, cut and healed)");

    let sizes_json: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "nodes": r.m,
                "lab": {
                    "up_seconds": r.up_s,
                    "up_wall_seconds": r.up_wall_s,
                    "kernel_memory_kb": r.lab_kernel_kb,
                    "kernel_memory_kb_per_node": r.lab_kernel_kb.map(|k| k as f64 / r.m as f64),
                    "responder_rss_kb": r.responder_rss_kb,
                    "down": r.down,
                },
                "chaos_instance_memory": r.chaos_memory,
                "shapes": r.shapes.iter().map(|(shape, groups, cuts, tools)| json!({
                    "shape": shape,
                    "groups": groups,
                    "cut_pairs": cuts,
                    "tools": tools.iter().map(|(t, res)| (t.to_string(), res.json())).collect::<serde_json::Map<_, _>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let report = json!({
        "bench": "hyper",
        "reps": reps,
        "ring_groups": RING_GROUPS,
        "tools": TOOLS,
        "tool_budget_seconds": tool_budget().as_secs(),
        "sizes": sizes_json,
        "goals": goals,
        "markdown": md,
    });
    let path = out_path();
    fs::create_dir_all(path.parent().expect("has a parent"))?;
    fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}
