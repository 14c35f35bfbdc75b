//! The light-node lab (`chaos-ebpf lab up --workload echo --nodes N`, up to 4096): one
//! network namespace per node with a veth to a tree of bridges in a hub namespace, nothing
//! of it in the root namespace, an echo responder (one process, a UDP and a TCP socket per
//! node) and a reachability probe ([`reach`]). Built as docs/many-namespaces.md measured:
//! namespaces made by one thread (unshare + bind mount), the hub's links in batched
//! rtnetlink on one socket, the node side by one thread that enters each namespace.
//!
//! Routing, not a flat segment: every node reaches the others through the hub, which
//! routes between its bridge ports (the gateway address on the root bridge). A flat /15
//! would need a neighbour entry per pair (1024 nodes: a million per family); through the
//! gateway a node has one permanent entry (the gateway) and the hub one per node, all
//! installed by the lab, so no ARP or ND is sent. Node links are NOARP with IPv6 address
//! generation off and their addresses NODAD: no DAD, no router solicitation, no MLD report.

pub mod echo;
pub mod reach;
mod rtnl;

use std::{
    collections::HashSet,
    ffi::CString,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::{DirBuilderExt, MetadataExt},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use chaos_datapath::{
    error::Error,
    netns::{self, Netns},
};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressMessage},
    link::{
        AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridge, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags,
        LinkInfo, LinkMessage,
    },
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use serde::{Deserialize, Serialize};

use crate::cluster::{self, Proc};
use rtnl::Rtnl;

/// The state file of a light-node lab, in the lab's state directory (beside where the
/// etcd lab keeps `state.json`: one lab at a time).
pub const STATE_FILE: &str = "hyper.json";
pub const DEFAULT_PREFIX: &str = "chaos-hyper-";
pub const DEFAULT_SUBNET4: &str = "198.18.0.0/15";
pub const DEFAULT_SUBNET6: &str = "fd42:c4a0:100::/48";
pub const MAX_NODES: u32 = 4096;
/// The echo port of every node (UDP and TCP).
pub const ECHO_PORT: u16 = 7;
/// A Linux bridge takes at most 1023 ports: a leaf holds 1022 nodes and its uplink.
const BRIDGE_PORTS: u32 = 1023;
/// The device group of every link the lab creates in the hub: one RTM_DELLINK by group
/// removes them all in one kernel batch.
const LINK_GROUP: u32 = 0xc4a0;
/// The root bridge, which holds the gateway addresses.
const ROOT_BRIDGE: &str = "br0";

/// An IPv4 or IPv6 prefix of the lab: node i at `base + i`, the gateway at the last address
/// but one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub base: IpAddr,
    pub prefix: u8,
}

impl Range {
    fn bits(&self) -> u32 {
        if self.base.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn as_u128(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v4) => u32::from(v4) as u128,
            IpAddr::V6(v6) => u128::from(v6),
        }
    }

    fn at(&self, offset: u128) -> IpAddr {
        let value = Self::as_u128(self.base) + offset;
        match self.base {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
        }
    }

    /// Addresses in the range, capped at 2^32 (an IPv6 /48 has more than any lab needs:
    /// its gateway is then `::ffff:fffe`).
    fn size(&self) -> u128 {
        1u128 << (self.bits() - self.prefix as u32).min(32)
    }

    pub fn node(&self, index: u32) -> IpAddr {
        self.at(index as u128)
    }

    pub fn gateway(&self) -> IpAddr {
        self.at(self.size() - 2)
    }

    /// Whether `net/prefix` shares an address with this range.
    pub fn overlaps(&self, net: IpAddr, prefix: u8) -> bool {
        if net.is_ipv4() != self.base.is_ipv4() {
            return false;
        }
        let common = prefix.min(self.prefix) as u32;
        if common == 0 {
            return true;
        }
        let shift = self.bits() - common;
        (Self::as_u128(self.base) ^ Self::as_u128(net)) >> shift == 0
    }

    fn parse(flag: &str, text: &str, v4: bool, nodes: u32) -> Result<Range, Error> {
        let fix = if v4 {
            "give --subnet an IPv4 prefix /15 to /20 inside 198.18.0.0/15 that holds the nodes, such as 198.18.0.0/15 or 198.19.0.0/16"
        } else {
            "give --subnet6 an IPv6 ULA prefix /48 to /112 (inside fd00::/8) that holds the nodes, such as fd42:c4a0:100::/48"
        };
        let bad = |why: &str| Error::unsupported(format!("{flag} {}: {why}", cluster::short(text)), fix);
        let (addr, len) = text.split_once('/').ok_or_else(|| bad("not ADDRESS/PREFIX"))?;
        let base: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        if base.is_ipv4() != v4 {
            return Err(bad(if v4 { "not an IPv4 prefix" } else { "not an IPv6 prefix" }));
        }
        let prefix: u8 = len.parse().map_err(|_| bad("the prefix length is not a number"))?;
        let range = Range { base, prefix };
        let (low, high) = if v4 { (15, 20) } else { (48, 112) };
        if !(low..=high).contains(&prefix) {
            return Err(bad(&format!("the prefix length must be {low} to {high}")));
        }
        let host_bits = range.bits() - prefix as u32;
        if Self::as_u128(base) & ((1u128 << host_bits) - 1) != 0 {
            return Err(bad("not the start of the prefix (host bits set)"));
        }
        let inside = if v4 {
            Range { base: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 0)), prefix: 15 }
        } else {
            Range { base: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)), prefix: 8 }
        };
        if !inside.overlaps(base, prefix) || prefix < inside.prefix {
            return Err(bad("outside the hyperscale lab's ranges"));
        }
        if range.size() < nodes as u128 + 2 {
            return Err(bad(&format!("too small for {nodes} nodes and the gateway")));
        }
        Ok(range)
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

fn mac(kind: u8, index: u32) -> [u8; 6] {
    // Locally administered unicast (02:...), c4:a0 as in the lab's IPv6 prefix, then the
    // kind (node, hub side, bridge) and a 16-bit index.
    [0x02, 0xc4, 0xa0, kind, (index >> 8) as u8, index as u8]
}

const MAC_NODE: u8 = 1;
const MAC_HUB_SIDE: u8 = 2;
const MAC_BRIDGE: u8 = 3;

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A light node as the node agent and the probe need it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LightNode {
    /// `n1`...
    pub name: String,
    pub index: u32,
    /// The namespace's name (`ip netns` name) and file.
    pub netns: String,
    pub netns_path: PathBuf,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The node's `eth0` MAC.
    pub mac: String,
    /// Its veth's end in the hub namespace (a bridge port) and that end's ifindex there.
    pub hub_veth: String,
    pub hub_ifindex: u32,
    /// The bridge that port belongs to.
    pub bridge: String,
}

/// Everything a light-node lab created (planned in full before anything is created).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HyperState {
    pub version: u32,
    pub workload: String,
    pub nodes: u32,
    pub subnet4: String,
    pub subnet6: String,
    pub prefix: String,
    pub hub: String,
    pub bridges: Vec<String>,
    pub started_unix: u64,
    pub owner: Option<Proc>,
    pub complete: bool,
    pub dir: PathBuf,
    /// The hub-side ifindex of node i at [i - 1] (0 until created).
    pub hub_ifindexes: Vec<u32>,
    pub responder: Option<Proc>,
    pub echo_port: u16,
    pub up_seconds: Option<f64>,
    pub kernel_memory_kb: Option<u64>,
}

impl HyperState {
    fn save(&self) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    fn range4(&self) -> Range {
        Range::parse("--subnet", &self.subnet4, true, self.nodes).expect("recorded by lab up")
    }

    fn range6(&self) -> Range {
        Range::parse("--subnet6", &self.subnet6, false, self.nodes).expect("recorded by lab up")
    }

    pub fn hub_path(&self) -> PathBuf {
        netns::path_for(&self.hub)
    }

    fn node_netns(&self, index: u32) -> String {
        format!("{}n{index}", self.prefix)
    }

    /// The nodes, in order (node i at [i - 1]).
    pub fn node_list(&self) -> Vec<LightNode> {
        let (r4, r6) = (self.range4(), self.range6());
        let plan = Tree::new(self.nodes);
        (1..=self.nodes)
            .map(|i| {
                let netns = self.node_netns(i);
                let IpAddr::V4(ipv4) = r4.node(i) else { unreachable!() };
                let IpAddr::V6(ipv6) = r6.node(i) else { unreachable!() };
                LightNode {
                    name: format!("n{i}"),
                    index: i,
                    netns_path: netns::path_for(&netns),
                    netns,
                    ipv4,
                    ipv6,
                    mac: mac_text(mac(MAC_NODE, i)),
                    hub_veth: hub_veth(i),
                    hub_ifindex: self.hub_ifindexes.get(i as usize - 1).copied().unwrap_or(0),
                    bridge: plan.bridge_of(i),
                }
            })
            .collect()
    }

    /// The file listing every node namespace, one path a line (the responder's input).
    pub fn netns_list_file(&self) -> PathBuf {
        self.dir.join("netns.txt")
    }
}

fn hub_veth(index: u32) -> String {
    format!("h{index}")
}

/// The bridges: one (`br0`) up to 1023 nodes, else leaves `br1..` of at most 1022 nodes
/// each, joined to the root `br0` by veth pairs `up<k>` (leaf) / `dn<k>` (root).
struct Tree {
    leaves: u32,
    per_leaf: u32,
}

impl Tree {
    fn new(nodes: u32) -> Tree {
        if nodes <= BRIDGE_PORTS {
            Tree { leaves: 0, per_leaf: nodes }
        } else {
            let leaves = nodes.div_ceil(BRIDGE_PORTS - 1);
            Tree { leaves, per_leaf: nodes.div_ceil(leaves) }
        }
    }

    fn bridges(&self) -> Vec<String> {
        std::iter::once(ROOT_BRIDGE.to_owned()).chain((1..=self.leaves).map(|k| format!("br{k}"))).collect()
    }

    fn bridge_of(&self, node: u32) -> String {
        if self.leaves == 0 {
            ROOT_BRIDGE.to_owned()
        } else {
            format!("br{}", (node - 1) / self.per_leaf + 1)
        }
    }
}

/// The light-node lab's state in `dir`, if one is there.
pub fn load(dir: &Path) -> Result<Option<HyperState>> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?))
}

/// The nodes of the light-node lab in `dir` (for the node agent and tests): name, netns,
/// addresses, hub-side veth and ifindex. Refuses when none is up or its `lab up` did not finish.
pub fn nodes(dir: &Path) -> Result<(HyperState, Vec<LightNode>)> {
    let Some(state) = load(dir)? else {
        return Err(Error::unsupported(
            format!("no light-node lab is up ({} has no {STATE_FILE})", dir.display()),
            "start one: chaos-ebpf lab up --workload echo --nodes N",
        )
        .into());
    };
    if !state.complete {
        return Err(Error::unsupported(
            "the light-node lab's `lab up` did not finish",
            "`chaos-ebpf lab down`, then `lab up` again",
        )
        .into());
    }
    let nodes = state.node_list();
    Ok((state, nodes))
}

/// What `lab up --workload echo` is asked for.
pub struct UpOptions {
    pub nodes: u32,
    pub subnet4: String,
    pub subnet6: String,
    pub state_dir: PathBuf,
    /// Namespace name prefix: nodes `<prefix>n<i>`, the hub `<prefix>hub`.
    pub prefix: String,
}

/// `lab up` done: timings and memory.
#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub nodes: u32,
    pub seconds: f64,
    pub phases: Vec<(String, f64)>,
    /// Kernel memory the lab took: the growth of Slab + Percpu + KernelStack + PageTables +
    /// VmallocUsed in /proc/meminfo during `lab up`.
    pub kernel_memory_kb: u64,
    pub responder_pid: u32,
    pub responder_rss_kb: u64,
}

/// Addresses and routes of the root namespace that overlap `range` (default routes aside).
pub fn collisions(range: Range) -> Result<Vec<String>> {
    let family = if range.base.is_ipv4() { "-4" } else { "-6" };
    let mut found = Vec::new();
    let out = Command::new("ip").args(["-j", family, "addr", "show"]).output().context("running ip -j addr show")?;
    let links: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).context("reading ip -j addr show")?;
    for link in &links {
        for addr in link["addr_info"].as_array().into_iter().flatten() {
            let (Some(local), Some(len)) = (addr["local"].as_str(), addr["prefixlen"].as_u64()) else { continue };
            if let Ok(local) = local.parse::<IpAddr>() {
                if range.overlaps(local, len as u8) {
                    found.push(format!("address {local}/{len} on {}", link["ifname"].as_str().unwrap_or("?")));
                }
            }
        }
    }
    let out = Command::new("ip")
        .args(["-j", family, "route", "show", "table", "all"])
        .output()
        .context("running ip -j route show")?;
    let routes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for route in &routes {
        let Some(dst) = route["dst"].as_str() else { continue };
        if dst == "default" {
            continue;
        }
        let full = if range.base.is_ipv4() { "32" } else { "128" };
        let (net, len) = dst.split_once('/').unwrap_or((dst, full));
        let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u8>()) else { continue };
        if len > 0 && range.overlaps(net, len) {
            let dev = route["dev"].as_str().unwrap_or("?");
            if !found.iter().any(|f| f.ends_with(&format!(" on {dev}"))) {
                found.push(format!("route {dst} dev {dev}"));
            }
        }
    }
    Ok(found)
}

/// Refuses (exit 2, nothing created) what `lab up --workload echo` cannot do.
fn preflight(options: &UpOptions) -> Result<(Range, Range)> {
    if !(1..=MAX_NODES).contains(&options.nodes) {
        return Err(Error::unsupported(
            format!("--nodes {}: a light-node (echo) lab has 1 to {MAX_NODES} nodes", options.nodes),
            format!("give --nodes between 1 and {MAX_NODES}"),
        )
        .into());
    }
    let r4 = Range::parse("--subnet", &options.subnet4, true, options.nodes)?;
    let r6 = Range::parse("--subnet6", &options.subnet6, false, options.nodes)?;
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::unsupported(
            "`lab up` creates network namespaces and processes: it needs root",
            "run it as root (sudo chaos-ebpf lab up --workload echo ...)",
        )
        .into());
    }
    cluster::node_binary()?;
    if let Some(state) = load(&options.state_dir).unwrap_or(None) {
        return Err(Error::unsupported(
            format!(
                "a light-node lab is already up here ({} nodes since {})",
                state.nodes,
                cluster::since(state.started_unix)
            ),
            "`chaos-ebpf lab down` first",
        )
        .into());
    }
    if options.state_dir.exists() {
        return Err(Error::unsupported(
            format!("another lab is up: {} exists (the etcd lab's state)", options.state_dir.display()),
            "`chaos-ebpf lab down` first",
        )
        .into());
    }
    let hub = format!("{}hub", options.prefix);
    let taken: Vec<String> = std::iter::once(hub)
        .chain((1..=options.nodes).map(|i| format!("{}n{i}", options.prefix)))
        .filter(|n| netns::path_for(n).exists())
        .take(5)
        .collect();
    if !taken.is_empty() {
        return Err(Error::unsupported(
            format!("network namespace(s) {} already exist, not created by a lab this state knows", taken.join(", ")),
            "remove them (ip netns del NAME) if they are leftovers",
        )
        .into());
    }
    for range in [r4, r6] {
        let used = collisions(range)?;
        if !used.is_empty() {
            let flag = if range.base.is_ipv4() { "--subnet" } else { "--subnet6" };
            return Err(Error::unsupported(
                format!("the lab range {range} is already in use here: {}", used.join("; ")),
                format!("choose a free range with {flag}"),
            )
            .into());
        }
    }
    Ok((r4, r6))
}

/// The kernel's own memory from /proc/meminfo: slab, per-CPU, kernel stacks, page tables
/// and vmalloc (what namespaces, devices and sockets take), in kB.
fn kernel_memory_kb() -> u64 {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .filter(|l| {
            ["Slab:", "Percpu:", "KernelStack:", "PageTables:", "VmallocUsed:"].iter().any(|k| l.starts_with(k))
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

pub fn rss_kb(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn check(interrupted: &AtomicBool) -> Result<()> {
    if interrupted.load(Ordering::Relaxed) {
        return Err(cluster::Interrupted.into());
    }
    Ok(())
}

/// Raises the open-file limit to its hard limit: the lab holds a socket per node.
pub fn raise_fd_limit(needed: u64) -> Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Ok(());
    }
    if limit.rlim_max < needed {
        bail!(
            "the open-file hard limit ({}) is below the {needed} this lab needs; raise it (ulimit -Hn)",
            limit.rlim_max
        );
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads the struct we own.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    Ok(())
}

/// Builds the lab and starts its responder; on any error or interruption removes what it
/// created. Prints nothing: `progress` gets the phases.
pub fn up(options: &UpOptions, interrupted: &AtomicBool, progress: &mut dyn FnMut(&str)) -> Result<UpReport> {
    let (r4, r6) = preflight(options)?;
    raise_fd_limit(options.nodes as u64 * 2 + 256)?;
    let start = Instant::now();
    let kernel_before = kernel_memory_kb();
    if let Some(parent) = options.state_dir.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&options.state_dir)
        .with_context(|| format!("creating {}", options.state_dir.display()))?;
    let tree = Tree::new(options.nodes);
    let mut state = HyperState {
        version: 1,
        workload: "echo".into(),
        nodes: options.nodes,
        subnet4: r4.to_string(),
        subnet6: r6.to_string(),
        prefix: options.prefix.clone(),
        hub: format!("{}hub", options.prefix),
        bridges: tree.bridges(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        owner: Proc::of(std::process::id()),
        complete: false,
        dir: options.state_dir.clone(),
        hub_ifindexes: Vec::new(),
        responder: None,
        echo_port: ECHO_PORT,
        up_seconds: None,
        kernel_memory_kb: None,
    };
    let mut phases = Vec::new();
    let built = state.save().and_then(|()| build(&mut state, &tree, interrupted, progress, &mut phases));
    if let Err(e) = built {
        progress("removing what this lab up created");
        return match down_state(&state) {
            Ok(report) if report.remaining.is_empty() => Err(e),
            Ok(report) => Err(e.context(format!("and left behind: {}", report.remaining.join(", ")))),
            Err(d) => Err(e.context(format!("and removing it failed: {d:#}"))),
        };
    }
    let seconds = start.elapsed().as_secs_f64();
    let responder = state.responder.expect("started");
    let responder_rss_kb = rss_kb(responder.pid);
    let kernel_memory_kb = kernel_memory_kb().saturating_sub(kernel_before);
    state.complete = true;
    state.up_seconds = Some(seconds);
    state.kernel_memory_kb = Some(kernel_memory_kb);
    state.save()?;
    Ok(UpReport {
        nodes: state.nodes,
        seconds,
        phases,
        kernel_memory_kb,
        responder_pid: responder.pid,
        responder_rss_kb,
    })
}

fn build(
    state: &mut HyperState,
    tree: &Tree,
    interrupted: &AtomicBool,
    progress: &mut dyn FnMut(&str),
    phases: &mut Vec<(String, f64)>,
) -> Result<()> {
    let mut phase = |name: &str, since: Instant| phases.push((name.to_owned(), since.elapsed().as_secs_f64()));
    let nodes = state.node_list();
    progress(&format!(
        "{} network namespaces {}..{} and the hub {}",
        state.nodes,
        nodes[0].netns,
        nodes[nodes.len() - 1].netns,
        state.hub
    ));
    let t = Instant::now();
    let mut names: Vec<String> = vec![state.hub.clone()];
    names.extend(nodes.iter().map(|n| n.netns.clone()));
    create_namespaces(&names)?;
    phase("namespaces", t);
    check(interrupted)?;

    progress(&format!(
        "hub: {} bridge(s), {} veth pairs, gateway {} / {}",
        tree.bridges().len(),
        state.nodes,
        state.range4().gateway(),
        state.range6().gateway()
    ));
    let t = Instant::now();
    let hub = Netns::open(&state.hub_path()).context("opening the hub namespace")?;
    let hub_links = {
        let (r4, r6) = (state.range4(), state.range6());
        let nodes = nodes.clone();
        let bridges = tree.bridges();
        let leaves = tree.leaves;
        hub.run(move || build_hub(&nodes, &bridges, leaves, r4, r6))??
    };
    state.hub_ifindexes = nodes
        .iter()
        .map(|n| hub_links.iter().find(|(_, name)| *name == n.hub_veth).map(|(i, _)| *i).unwrap_or(0))
        .collect();
    state.save()?;
    phase("hub", t);
    check(interrupted)?;

    progress("node side: eth0 NOARP, no IPv6 address generation, addresses, gateway neighbours and routes");
    let t = Instant::now();
    let (r4, r6) = (state.range4(), state.range6());
    let nodes_for_thread = nodes.clone();
    std::thread::spawn(move || build_nodes(&nodes_for_thread, r4, r6))
        .join()
        .map_err(|_| anyhow::anyhow!("the node-side thread panicked"))??;
    phase("nodes", t);
    check(interrupted)?;

    progress(&format!("echo responder (UDP and TCP port {ECHO_PORT} in every node)"));
    let t = Instant::now();
    let list: String = nodes.iter().map(|n| format!("{}\n", n.netns_path.display())).collect();
    fs::write(state.netns_list_file(), list).context("writing the namespace list")?;
    let ready = state.dir.join("echo.ready");
    let binary = cluster::node_binary()?;
    let mut cmd = Command::new(binary);
    cmd.arg("echo")
        .arg("--netns-list")
        .arg(state.netns_list_file())
        .arg("--port")
        .arg(ECHO_PORT.to_string())
        .arg("--ready")
        .arg(&ready);
    let log = state.dir.join("echo.log");
    let process = cluster::spawn(&mut cmd, &log, None)?;
    state.responder = Some(process);
    state.save()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        check(interrupted)?;
        if !process.alive() {
            bail!("the echo responder exited: {}", cluster::last_lines(&log, 5));
        }
        if Instant::now() > deadline {
            bail!("the echo responder was not ready within 30 s: {}", cluster::last_lines(&log, 5));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    phase("responder", t);

    // Every node answers its successor: the lab works end to end before `up` says so.
    let t = Instant::now();
    let pairs: Vec<(u32, u32)> = (1..=state.nodes).map(|i| (i, i % state.nodes + 1)).filter(|(a, b)| a != b).collect();
    if !pairs.is_empty() {
        // Up to 1 s per round and two retries: right after a big lab is built the kernel may
        // still be busy (a 4096-node check once lost 318 replies in 300 ms); a round ends as
        // soon as every node answered.
        let options = reach::Options { timeout: Duration::from_secs(1), retries: 2, ipv6: false };
        let result = reach::udp(&nodes, &pairs, state.echo_port, options)?;
        if !result.unanswered.is_empty() {
            bail!(
                "{} of {} nodes did not answer their neighbour's echo (first: {:?})",
                result.unanswered.len(),
                pairs.len(),
                &result.unanswered[..result.unanswered.len().min(5)]
            );
        }
    }
    phase("check", t);
    Ok(())
}

/// Creates named network namespaces as `ip netns add` does (a file under /run/netns with
/// the namespace bind-mounted on it), all from one thread: unshare, mount, next.
fn create_namespaces(names: &[String]) -> Result<()> {
    let dir = Path::new(netns::NETNS_RUN_DIR);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    make_shared(dir)?;
    let names = names.to_vec();
    std::thread::spawn(move || -> Result<()> {
        for name in &names {
            let path = dir.join(name);
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            // SAFETY: unshare only changes this thread's namespace (a thread of our own that
            // ends after the loop).
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                let _ = fs::remove_file(&path);
                bail!("creating network namespace {name}: {e}");
            }
            let source = CString::new("/proc/thread-self/ns/net").unwrap();
            let target = CString::new(path.as_os_str().as_encoded_bytes()).context("namespace path")?;
            // SAFETY: valid C strings; a bind mount of our own namespace file.
            let rc = unsafe {
                libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
            };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                let _ = fs::remove_file(&path);
                bail!("mounting network namespace {name}: {e}");
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

/// /run/netns as iproute2 sets it up: a shared mount point, so that namespaces mounted
/// there are seen in other mount namespaces too.
fn make_shared(dir: &Path) -> Result<()> {
    let target = CString::new(dir.as_os_str().as_encoded_bytes()).context("path")?;
    let none = CString::new("none").unwrap();
    // SAFETY: valid C strings; changes propagation of the /run/netns mount only.
    let shared = || unsafe {
        libc::mount(none.as_ptr(), target.as_ptr(), none.as_ptr(), libc::MS_SHARED | libc::MS_REC, std::ptr::null())
    };
    if shared() == 0 {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself first.
    // SAFETY: as above.
    let rc = unsafe {
        libc::mount(target.as_ptr(), target.as_ptr(), none.as_ptr(), libc::MS_BIND | libc::MS_REC, std::ptr::null())
    };
    if rc != 0 || shared() != 0 {
        bail!("making {} a shared mount point: {}", dir.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

fn link(name: &str, mac: [u8; 6], up: bool) -> LinkMessage {
    let mut m = LinkMessage::default();
    if up {
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
    }
    m.attributes.push(LinkAttribute::IfName(name.to_owned()));
    m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    m.attributes.push(LinkAttribute::Group(LINK_GROUP));
    m
}

fn veth(name: &str, mac: [u8; 6], master: Option<u32>, peer: LinkMessage) -> LinkMessage {
    let mut m = link(name, mac, true);
    if let Some(master) = master {
        m.attributes.push(LinkAttribute::Controller(master));
    }
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    m
}

fn address(index: u32, ip: IpAddr, prefix: u8, flags: AddressFlags) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.prefix_len = prefix;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(ip));
    if ip.is_ipv4() {
        m.attributes.push(AddressAttribute::Address(ip));
    } else {
        m.attributes[0] = AddressAttribute::Address(ip);
    }
    m.attributes.push(AddressAttribute::Flags(flags));
    m
}

fn permanent_neighbour(index: u32, ip: IpAddr, mac: [u8; 6]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.attributes.push(NeighbourAttribute::Destination(match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }));
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m
}

/// A static entry of a bridge's forwarding table (`bridge fdb add MAC dev PORT master static`).
fn fdb_entry(port: u32, mac: [u8; 6]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = port;
    m.header.state = NeighbourState::Noarp;
    m.header.flags = NeighbourFlags::Controller;
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m
}

fn route_via(index: u32, range: Range, gateway: IpAddr) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = if gateway.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.destination_prefix_length = range.prefix;
    m.header.table = libc::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Static;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    // The gateway is not in a connected prefix of the node: it is on the link by design.
    m.header.flags = RouteFlags::Onlink;
    m.attributes.push(RouteAttribute::Destination(RouteAddress::from(range.base)));
    m.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
    m.attributes.push(RouteAttribute::Oif(index));
    m
}

/// IPv4 forwarding without redirects (a node must keep sending to the gateway), IPv6
/// forwarding, and no IPv6 address generation on the hub's links: a handful of writes in
/// the hub only (per node, netlink does it).
fn hub_sysctls() -> Result<()> {
    for (path, value) in [
        ("/proc/sys/net/ipv6/conf/default/addr_gen_mode", "1"),
        ("/proc/sys/net/ipv4/conf/all/send_redirects", "0"),
        ("/proc/sys/net/ipv4/conf/default/send_redirects", "0"),
        ("/proc/sys/net/ipv4/ip_forward", "1"),
        ("/proc/sys/net/ipv6/conf/all/forwarding", "1"),
    ] {
        fs::write(path, value).with_context(|| format!("writing {path} in the hub namespace"))?;
    }
    Ok(())
}

/// The hub's side, in the calling thread's namespace (the hub): bridges, uplinks, one
/// veth per node (its peer created in the node's namespace), the gateway addresses and a
/// permanent neighbour per node and family. Returns the hub's links.
fn build_hub(nodes: &[LightNode], bridges: &[String], leaves: u32, r4: Range, r6: Range) -> Result<Vec<(u32, String)>> {
    hub_sysctls()?;
    let mut rtnl = Rtnl::open().context("opening rtnetlink in the hub")?;
    let create = NLM_F_CREATE | NLM_F_EXCL;
    for (k, name) in bridges.iter().enumerate() {
        let mut m = link(name, mac(MAC_BRIDGE, k as u32), true);
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::MulticastSnooping(false)])),
        ]));
        rtnl.queue(RouteNetlinkMessage::NewLink(m), create, format!("creating bridge {name}"));
    }
    rtnl.flush()?;
    let index_of = |links: &[(u32, String)], name: &str| -> Result<u32> {
        links.iter().find(|(_, n)| n == name).map(|(i, _)| *i).with_context(|| format!("no link {name} in the hub"))
    };
    let links = rtnl.links()?;
    let root = index_of(&links, ROOT_BRIDGE)?;
    for k in 1..=leaves {
        let leaf = index_of(&links, &format!("br{k}"))?;
        let peer = link(&format!("dn{k}"), mac(MAC_BRIDGE, 0x100 + k), false);
        let m = veth(&format!("up{k}"), mac(MAC_BRIDGE, 0x200 + k), Some(leaf), peer);
        rtnl.queue(RouteNetlinkMessage::NewLink(m), create, format!("creating uplink up{k}"));
    }
    rtnl.flush()?;
    for k in 1..=leaves {
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(format!("dn{k}")));
        m.attributes.push(LinkAttribute::Controller(root));
        rtnl.queue(RouteNetlinkMessage::SetLink(m), 0, format!("setting dn{k} up on {ROOT_BRIDGE}"));
    }
    rtnl.queue(
        RouteNetlinkMessage::NewAddress(address(root, r4.gateway(), r4.prefix, AddressFlags::empty())),
        create,
        "adding the IPv4 gateway address",
    );
    rtnl.queue(
        RouteNetlinkMessage::NewAddress(address(root, r6.gateway(), r6.prefix, AddressFlags::Nodad)),
        create,
        "adding the IPv6 gateway address",
    );
    rtnl.flush()?;

    // The node veths, in chunks: each chunk's namespace files are open only while its
    // requests are in flight (4096 nodes would otherwise hold 4096 descriptors).
    for chunk in nodes.chunks(256) {
        let files: Vec<fs::File> = chunk
            .iter()
            .map(|n| fs::File::open(&n.netns_path).with_context(|| format!("opening {}", n.netns_path.display())))
            .collect::<Result<_>>()?;
        for (node, file) in chunk.iter().zip(&files) {
            use std::os::fd::AsRawFd;
            let master = index_of(&links, &node.bridge)?;
            let mut peer = link("eth0", mac(MAC_NODE, node.index), false);
            peer.attributes.push(LinkAttribute::NetNsFd(file.as_raw_fd()));
            let m = veth(&node.hub_veth, mac(MAC_HUB_SIDE, node.index), Some(master), peer);
            rtnl.queue(
                RouteNetlinkMessage::NewLink(m),
                create,
                format!("creating veth {} of {}", node.hub_veth, node.name),
            );
        }
        rtnl.flush()?;
    }
    // Static forwarding entries: each node's MAC on its port, and on the root bridge on
    // its leaf's uplink. Without them the first packet to a node that has not sent yet is
    // flooded to every port of the tree (1024 nodes: a million copies, 2 s measured).
    let links = rtnl.links()?;
    for node in nodes {
        let node_mac = mac(MAC_NODE, node.index);
        rtnl.queue(
            RouteNetlinkMessage::NewNeighbour(fdb_entry(index_of(&links, &node.hub_veth)?, node_mac)),
            create,
            format!("the forwarding entry of {}", node.name),
        );
        if leaves > 0 {
            let uplink = format!("dn{}", &node.bridge[2..]);
            rtnl.queue(
                RouteNetlinkMessage::NewNeighbour(fdb_entry(index_of(&links, &uplink)?, node_mac)),
                create,
                format!("the root's forwarding entry of {}", node.name),
            );
        }
    }
    for node in nodes {
        let node_mac = mac(MAC_NODE, node.index);
        rtnl.queue(
            RouteNetlinkMessage::NewNeighbour(permanent_neighbour(root, IpAddr::V4(node.ipv4), node_mac)),
            create,
            format!("the IPv4 neighbour {}", node.name),
        );
        rtnl.queue(
            RouteNetlinkMessage::NewNeighbour(permanent_neighbour(root, IpAddr::V6(node.ipv6), node_mac)),
            create,
            format!("the IPv6 neighbour {}", node.name),
        );
    }
    rtnl.flush()?;
    rtnl.links()
}

/// The nodes' side, one namespace after the other on this thread: a socket per namespace,
/// one batch each.
fn build_nodes(nodes: &[LightNode], r4: Range, r6: Range) -> Result<()> {
    let gateway_mac = mac(MAC_BRIDGE, 0);
    let create = NLM_F_CREATE | NLM_F_EXCL;
    for node in nodes {
        let ns = Netns::open(&node.netns_path).with_context(|| format!("opening {}", node.netns_path.display()))?;
        ns.run(|| -> Result<()> {
            let name = CString::new("eth0").unwrap();
            // SAFETY: a valid C string.
            let eth0 = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if eth0 == 0 {
                bail!("{}: no eth0 in {}", node.name, node.netns);
            }
            let mut rtnl = Rtnl::open()?;
            // IPv6 address generation off and NOARP before the link is up: no link-local
            // address, so no DAD, router solicitation or MLD report; NOARP also keeps the
            // solicited-node group (and its MLD reports) off.
            let mut quiet = LinkMessage::default();
            quiet.header.index = eth0;
            quiet.header.flags = LinkFlags::Noarp;
            quiet.header.change_mask = LinkFlags::Noarp;
            quiet.attributes.push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
                AfSpecInet6::AddrGenMode(In6AddrGenMode::None),
            ])]));
            rtnl.queue(RouteNetlinkMessage::SetLink(quiet), 0, "quieting eth0");
            for index in [eth0, 1] {
                let mut up = LinkMessage::default();
                up.header.index = index;
                up.header.flags = LinkFlags::Up;
                up.header.change_mask = LinkFlags::Up;
                rtnl.queue(RouteNetlinkMessage::SetLink(up), 0, "setting links up");
            }
            let no_prefix_route = AddressFlags::Noprefixroute;
            rtnl.queue(
                RouteNetlinkMessage::NewAddress(address(eth0, IpAddr::V4(node.ipv4), r4.prefix, no_prefix_route)),
                create,
                "the IPv4 address",
            );
            rtnl.queue(
                RouteNetlinkMessage::NewAddress(address(
                    eth0,
                    IpAddr::V6(node.ipv6),
                    r6.prefix,
                    no_prefix_route | AddressFlags::Nodad,
                )),
                create,
                "the IPv6 address",
            );
            for (range, gateway) in [(r4, r4.gateway()), (r6, r6.gateway())] {
                rtnl.queue(
                    RouteNetlinkMessage::NewNeighbour(permanent_neighbour(eth0, gateway, gateway_mac)),
                    create,
                    "the gateway neighbour",
                );
                rtnl.queue(
                    RouteNetlinkMessage::NewRoute(route_via(eth0, range, gateway)),
                    create,
                    "the route via the gateway",
                );
            }
            rtnl.flush().with_context(|| format!("node {}", node.name))
        })??;
    }
    Ok(())
}

/// What `lab down` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DownReport {
    pub removed: Vec<String>,
    pub remaining: Vec<String>,
    /// Until every link of the lab was gone (after the kernel deleted them).
    pub links_gone_seconds: Option<f64>,
}

/// Processes inside the lab's namespaces, and the responder.
fn lab_processes(state: &HyperState) -> Vec<(String, Proc)> {
    let mut found: Vec<(String, Proc)> = Vec::new();
    if let Some(p) = state.responder.filter(Proc::alive) {
        found.push((format!("echo responder (pid {})", p.pid), p));
    }
    let mut ids: HashSet<(u64, u64)> = HashSet::new();
    let hub = state.hub_path();
    for path in std::iter::once(hub).chain((1..=state.nodes).map(|i| netns::path_for(&state.node_netns(i)))) {
        if let Ok(m) = fs::metadata(&path) {
            ids.insert((m.dev(), m.ino()));
        }
    }
    let own = std::process::id();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == own || found.iter().any(|(_, p)| p.pid == pid) {
            continue;
        }
        let Ok(m) = fs::metadata(entry.path().join("ns/net")) else { continue };
        if ids.contains(&(m.dev(), m.ino())) {
            if let Some(p) = Proc::of(pid).filter(Proc::alive) {
                found.push((format!("process {pid} in a lab namespace"), p));
            }
        }
    }
    found
}

fn stop(processes: &[(String, Proc)], report: &mut DownReport) {
    for (_, p) in processes {
        p.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while processes.iter().any(|(_, p)| p.alive()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for (name, p) in processes {
        if p.alive() {
            p.signal(libc::SIGKILL);
            report.removed.push(format!("{name}: killed"));
        } else {
            report.removed.push(format!("{name}: stopped"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while processes.iter().any(|(_, p)| p.alive()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn delete_namespace(name: &str) -> std::io::Result<()> {
    let path = netns::path_for(name);
    let target = CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid C string; detaching our own namespace mount.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    fs::remove_file(&path)
}

/// Removes the light-node lab recorded in `dir` (None: none is there).
pub fn down(dir: &Path) -> Result<Option<DownReport>> {
    let Some(state) = load(dir)? else { return Ok(None) };
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::unsupported(
            "`lab down` stops processes and removes namespaces: it needs root",
            "run it as root (sudo chaos-ebpf lab down)",
        )
        .into());
    }
    down_state(&state).map(Some)
}

fn down_state(state: &HyperState) -> Result<DownReport> {
    let start = Instant::now();
    let mut report = DownReport::default();
    let processes = lab_processes(state);
    stop(&processes, &mut report);
    // Every link of the lab in the hub is in LINK_GROUP: one request deletes them all (and
    // the node ends of the veths with them) in one kernel batch; then the hub is listed
    // until none is left.
    let hub_path = state.hub_path();
    if hub_path.exists() {
        match Netns::open(&hub_path) {
            Ok(hub) => {
                let result = hub.run(|| -> Result<Vec<String>> {
                    let mut rtnl = Rtnl::open()?;
                    let mut m = LinkMessage::default();
                    m.attributes.push(LinkAttribute::Group(LINK_GROUP));
                    rtnl.queue(RouteNetlinkMessage::DelLink(m), 0, "deleting the lab's links");
                    // ENODEV: no link of the group (a lab up that failed before its links).
                    if let Err(e) = rtnl.flush() {
                        if !format!("{e:#}").contains("No such device") {
                            return Err(e);
                        }
                    }
                    let deadline = Instant::now() + Duration::from_secs(10);
                    loop {
                        let left: Vec<String> =
                            rtnl.links()?.into_iter().map(|(_, n)| n).filter(|n| n != "lo").collect();
                        if left.is_empty() || Instant::now() > deadline {
                            return Ok(left);
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                });
                match result {
                    Ok(Ok(left)) if left.is_empty() => {
                        report.links_gone_seconds = Some(start.elapsed().as_secs_f64());
                        report.removed.push(format!(
                            "{} veth pairs and {} bridge(s) in the hub",
                            state.nodes,
                            state.bridges.len()
                        ));
                    }
                    Ok(Ok(left)) => report.remaining.push(format!(
                        "{} links in the hub: {}",
                        left.len(),
                        left.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                    )),
                    Ok(Err(e)) | Err(e) => report.remaining.push(format!("links in the hub: {e:#}")),
                }
            }
            Err(e) => report.remaining.push(format!("hub namespace {}: {e}", state.hub)),
        }
    }
    let mut deleted = 0;
    for name in std::iter::once(state.hub.clone()).chain((1..=state.nodes).map(|i| state.node_netns(i))) {
        if netns::path_for(&name).exists() {
            match delete_namespace(&name) {
                Ok(()) => deleted += 1,
                Err(e) => report.remaining.push(format!("netns {name}: {e}")),
            }
        }
    }
    if deleted > 0 {
        report.removed.push(format!("{deleted} network namespaces ({}hub, {}n1..)", state.prefix, state.prefix));
    }
    match fs::remove_dir_all(&state.dir) {
        Ok(()) => report.removed.push(format!("state directory {}", state.dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => report.remaining.push(format!("state directory {}: {e}", state.dir.display())),
    }
    // Verify.
    for (name, p) in &processes {
        if p.alive() {
            report.remaining.push(format!("{name} still running"));
        }
    }
    let left: Vec<String> = std::iter::once(state.hub.clone())
        .chain((1..=state.nodes).map(|i| state.node_netns(i)))
        .filter(|n| netns::path_for(n).exists())
        .collect();
    if !left.is_empty() {
        report.remaining.push(format!("{} namespaces, such as {}", left.len(), left[0]));
    }
    if state.dir.exists() {
        report.remaining.push(format!("state directory {}", state.dir.display()));
    }
    Ok(report)
}

/// `lab status` of a light-node lab.
#[derive(Debug, Clone, Serialize)]
pub struct HyperStatus {
    pub workload: String,
    pub nodes: u32,
    pub subnet4: String,
    pub subnet6: String,
    pub hub: String,
    pub bridges: Vec<String>,
    pub started: String,
    pub started_unix: u64,
    pub up_seconds: Option<f64>,
    pub complete: bool,
    pub responder_pid: Option<u32>,
    pub responder_alive: bool,
    pub responder_rss_kb: u64,
    pub namespaces_present: u32,
    pub echo_port: u16,
    pub healthy: bool,
}

pub fn status(state: &HyperState) -> HyperStatus {
    let alive = state.responder.is_some_and(|p| p.alive());
    let present = (1..=state.nodes).filter(|i| netns::path_for(&state.node_netns(*i)).exists()).count() as u32;
    HyperStatus {
        workload: state.workload.clone(),
        nodes: state.nodes,
        subnet4: state.subnet4.clone(),
        subnet6: state.subnet6.clone(),
        hub: state.hub.clone(),
        bridges: state.bridges.clone(),
        started: cluster::since(state.started_unix),
        started_unix: state.started_unix,
        up_seconds: state.up_seconds,
        complete: state.complete,
        responder_pid: state.responder.map(|p| p.pid),
        responder_alive: alive,
        responder_rss_kb: state.responder.filter(|_| alive).map(|p| rss_kb(p.pid)).unwrap_or(0),
        namespaces_present: present,
        echo_port: state.echo_port,
        healthy: state.complete && alive && present == state.nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_sit_at_computed_addresses_and_the_gateway_at_the_end() {
        let r4 = Range::parse("--subnet", DEFAULT_SUBNET4, true, 4096).unwrap();
        assert_eq!(r4.node(1), "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(r4.node(1024), "198.18.4.0".parse::<IpAddr>().unwrap());
        assert_eq!(r4.gateway(), "198.19.255.254".parse::<IpAddr>().unwrap());
        let r6 = Range::parse("--subnet6", DEFAULT_SUBNET6, false, 4096).unwrap();
        assert_eq!(r6.node(1024), "fd42:c4a0:100::400".parse::<IpAddr>().unwrap());
        assert_eq!(r6.gateway(), "fd42:c4a0:100::ffff:fffe".parse::<IpAddr>().unwrap());
        assert!(r4.overlaps("198.18.5.1".parse().unwrap(), 24));
        assert!(!r4.overlaps("198.51.100.0".parse().unwrap(), 24));
        assert!(!r6.overlaps("fd00::2".parse().unwrap(), 64));
        for bad in ["198.18.0.0/24", "198.18.0.1/16", "10.0.0.0/16", "fd42::/48", "nonsense"] {
            assert!(Range::parse("--subnet", bad, true, 1024).is_err(), "{bad}");
        }
        assert!(Range::parse("--subnet", "198.19.0.0/20", true, 5000).is_err());
    }

    #[test]
    fn a_tree_of_bridges_above_1023_nodes() {
        assert_eq!(Tree::new(64).bridges(), vec!["br0"]);
        assert_eq!(Tree::new(1023).bridge_of(1023), "br0");
        let t = Tree::new(1024);
        assert_eq!(t.bridges(), vec!["br0", "br1", "br2"]);
        assert_eq!((t.bridge_of(512), t.bridge_of(513)), ("br1".to_owned(), "br2".to_owned()));
        let t = Tree::new(4096);
        assert_eq!(t.leaves, 5);
        assert!(t.per_leaf < BRIDGE_PORTS);
        assert_eq!(t.bridge_of(4096), "br5");
    }
}
